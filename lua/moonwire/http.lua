-- moonwire.http: an HTTP/1.1 server and router written as a moonwire
-- handler.
--
--     local http = require "moonwire.http"
--     local app = http.router()
--     app:get("/", function(req, res) res:send("Hello, World!") end)
--     return app
--
-- An app is a handler table: the core calls app.on_open, app.on_input and
-- friends.  Everything that belongs to a connection (parse position, the
-- request being read, the response being written) lives in conn._http, not
-- in the app, because after a hot reload a new app receives the events of
-- connections that an older app accepted.  Its layout is moonwire.http.state.

local ffi = require "ffi"
local buffer = require "string.buffer"
local parser = require "moonwire.http.parser"
local request = require "moonwire.http.request"
local response = require "moonwire.http.response"
local router = require "moonwire.http.router"
local state = require "moonwire.http.state"
local static = require "moonwire.http.static"
local connmod = require "moonwire.conn"

local setmetatable, type, error, xpcall, tostring = setmetatable, type, error, xpcall, tostring
local lower, find, sub, byte, match = string.lower, string.find, string.sub, string.byte, string.match
local ffi_string = ffi.string
local traceback = debug.traceback

local parse_head, find_blank, check_partial = parser.parse_head, parser.find_blank, parser.check_partial
local req_mt = request.mt
local new_response, error_response = response.new, response.error_response

local _M = {
    _VERSION = "0.1.0",
    MAX_REQUEST_LINE = parser.MAX_REQUEST_LINE,
    MAX_HEADER_BLOCK = parser.MAX_HEADER_BLOCK,
    MAX_HEADERS = parser.MAX_HEADERS,
}

local DEFAULTS = {
    max_body = 1024 * 1024, -- bytes -> 413
    header_timeout = 10000, -- ms from the first byte of a request to its blank line -> 408
    keepalive_timeout = 60000, -- ms of silence between requests before the connection closes
}
_M.DEFAULTS = DEFAULTS

-- Timeout modes of a connection (st[S_TMODE]).
local T_HEADER, T_BODY, T_KEEPALIVE, T_BUSY = state.T_HEADER, state.T_BODY, state.T_KEEPALIVE,
    state.T_BUSY

-- Slots of conn._http (moonwire.http.state).
local STATE_V, S_V, S_OPTS = state.VERSION, state.V, state.OPTS
local S_TMODE, S_DEADLINE, S_SCAN, S_REQ, S_CUR = state.TMODE, state.DEADLINE, state.SCAN, state.REQ,
    state.CUR
local S_STREAM, S_PAUSED, S_CONGESTED, S_CLOSING = state.STREAM, state.PAUSED, state.CONGESTED,
    state.CLOSING
local S_IN_INPUT, S_NEED, S_EXPECT = state.IN_INPUT, state.NEED, state.EXPECT

local function log_error(fmt, ...)
    local ok, mw = pcall(require, "moonwire")
    if ok and type(mw) == "table" and mw.log and mw.log.error then
        mw.log.error(fmt, ...)
    else
        io.stderr:write(string.format(fmt, ...), "\n")
    end
end
_M._log_error = log_error

local function now(conn)
    local loop = conn.loop
    return loop and loop.now() or 0
end

local function new_state(conn, opts)
    local st = state.new(opts, now(conn))
    conn._http = st
    return st
end

local function set_tmode(conn, st, mode, ms)
    st[S_TMODE] = mode
    conn:set_timeout(ms)
end

-- Answers a protocol error and closes the connection.
local function fail(conn, st, code)
    st[S_CLOSING] = true
    st[S_REQ] = nil
    if not conn.closed then
        error_response(conn, code)
        conn:close()
    end
end

-- Called by the response module when a response is complete.
local function on_finish(res)
    local st = res._st
    if st[S_CUR] ~= res then
        return
    end
    st[S_CUR] = nil
    local conn = res.conn
    if res._close then
        st[S_CLOSING] = true
        if not conn.closed then
            conn:close()
        end
        return
    end
    if st[S_TMODE] ~= T_KEEPALIVE then
        set_tmode(conn, st, T_KEEPALIVE, st[S_OPTS].keepalive_timeout)
    end
    if st[S_PAUSED] and not st[S_CONGESTED] and not st[S_IN_INPUT] then
        -- Requests that arrived meanwhile are still buffered in the core;
        -- resuming presents them again.  Last, as it may re-enter on_input.
        st[S_PAUSED] = false
        conn:resume()
    end
end
response.on_finish = on_finish

-- A route raised: log the traceback, answer 500 without it.
local function route_error(res, err)
    log_error("http: error in route %s %s: %s", tostring(res._req.method), tostring(res._req.path), tostring(err))
    if res.finished then
        return
    end
    local st, conn = res._st, res.conn
    if res.headers_sent then
        -- Part of the body is out; the only honest end is to close.
        st[S_CUR] = nil
        st[S_CLOSING] = true
        if st[S_STREAM] then
            static.close_stream(st, st[S_STREAM])
        end
        if not conn.closed then
            conn:close()
        end
        return
    end
    res.code = 500
    res._h, res._ctype, res._clen = nil, nil, nil
    res:send("Internal Server Error\n")
end
_M._route_error = route_error

local function not_found(_, res)
    res:status(404):send("Not Found\n")
end

local function make_not_allowed(allow)
    return function(req, res)
        res:set("Allow", allow)
        if req.method == "OPTIONS" then
            res:status(204):send()
        else
            res:status(405):send("Method Not Allowed\n")
        end
    end
end

local function ws_module()
    return package.loaded["moonwire.ws"] or require "moonwire.ws"
end

-- Runs the middleware chain then final(req, res).  Only apps that use
-- middleware pay for the closure.
local function run_chain(global, route_mw, final, req, res)
    local i = 0
    local n1 = global and #global or 0
    local n2 = route_mw and #route_mw or 0
    local function nxt(err)
        if err ~= nil then
            return route_error(res, err)
        end
        i = i + 1
        if i <= n1 then
            return global[i](req, res, nxt)
        elseif i <= n1 + n2 then
            return route_mw[i - n1](req, res, nxt)
        elseif i == n1 + n2 + 1 then
            return final(req, res)
        end
    end
    return nxt()
end

local function upgrade(conn, req, res, route)
    local ws = ws_module()
    ws.upgrade(conn, req, res, route)
    if conn._ws then
        local st = conn._http
        st.ws_route = route
        if st[S_CUR] == res then
            st[S_CUR] = nil
        end
    end
end

-- The upgrade itself runs after global middleware, if any.  A separate
-- function, so that the closure (and its upvalue) stays off the hot path.
local function make_upgrade(route)
    return function(req, res)
        return upgrade(req.conn, req, res, route)
    end
end

local function run(app, req, res)
    local h, params, seen = app._routes:match(req.method, req.path)
    if params then
        req.params = params
    end
    local final, route_mw
    if h then
        if h.ws then
            if req.method == "GET" then
                final = make_upgrade(h.ws)
            else -- HEAD, which falls back to GET routes, cannot upgrade.
                final = make_not_allowed("GET, OPTIONS")
            end
        else
            final, route_mw = h.fn, h.mw
        end
    elseif seen then
        final = make_not_allowed(router.allow(seen))
    else
        final = app._not_found or not_found
    end
    local global = app._mw
    if global or route_mw then
        return run_chain(global, route_mw, final, req, res)
    end
    return final(req, res)
end

-- Works out what the parsed head means: the path, keep-alive, and the body
-- framing, which goes to the connection state (st[S_NEED], st[S_EXPECT]) rather
-- than the request, so that a request keeps to the eight fields its
-- constructor sizes it for.  Returns nil, or an error status.
local function prepare(req, st)
    local target = req.target
    if byte(target, 1) ~= 47 then
        if target == "*" and req.method == "OPTIONS" then
            target = nil
            req.path = "*"
        else
            -- absolute-form (RFC 9112 3.2.2): keep the path and query only.
            local rest = match(target, "^[hH][tT][tT][pP][sS]?://[^/?#]*(.*)$")
            if not rest then
                return 400
            end
            if byte(rest, 1) ~= 47 then
                rest = "/" .. rest
            end
            target = rest
        end
    end
    -- req.rawquery is computed on first use (moonwire.http.request).
    local q = target and find(target, "?", 1, true)
    if not target then -- luacheck: ignore 542
    elseif q then
        req.path = sub(target, 1, q - 1)
    else
        req.path = target
    end

    local h = req.headers
    local multi = req._multi
    if req.minor == 1 and h.host == nil then
        return 400
    end
    if multi and multi.host then
        return 400
    end

    local keepalive = req.minor == 1
    local ch = h.connection
    if ch then
        local l = lower(ch)
        if l == "close" then
            keepalive = false
        elseif l == "keep-alive" then
            keepalive = true
        elseif l ~= "upgrade" then
            for token in l:gmatch("[^,%s]+") do
                if token == "close" then
                    keepalive = false
                    break
                elseif token == "keep-alive" then
                    keepalive = true
                end
            end
        end
    end
    req.keepalive = keepalive

    local te = h["transfer-encoding"]
    local cl = h["content-length"]
    if te then
        if cl then
            return 400 -- both framings: a smuggling attempt or a broken client
        end
        if lower(te) ~= "chunked" then
            return 501
        end
        st[S_NEED] = -1
    elseif cl then
        local n = parser.content_length(cl)
        if not n then
            return 400
        end
        if n > st[S_OPTS].max_body then
            return 413
        end
        st[S_NEED] = n
    else
        st[S_NEED] = 0
    end

    local expect = h.expect
    if expect then
        if lower(expect) ~= "100-continue" then
            return 417
        end
        st[S_EXPECT] = req.minor == 1
    else
        st[S_EXPECT] = false
    end
    return nil
end

local function dispatch(app, conn, st, req)
    local res = new_response(conn, st, req, req.keepalive)
    st[S_CUR] = res
    connmod.count_in(1)
    connmod.count_out(1)
    local ok, err = xpcall(run, traceback, app, req, res)
    if not ok then
        route_error(res, err)
    end
end

-- Reads body bytes for st[S_REQ] from buf[pos, len).  Returns new pos and
-- true when the body is complete, or nil, status.
local function read_body(st, req, buf, pos, len)
    if st[S_NEED] < 0 then
        local ch = st.ch
        local npos, done = parser.dechunk(ch, buf, pos, len, st[S_OPTS].max_body)
        if not npos then
            return nil, done
        end
        if done then
            req.body = ch.body:tostring()
            st.ch = nil
        end
        return npos, done
    end
    local need = st[S_NEED]
    local avail = len - pos
    local body = st.body
    if body == nil and avail >= need then
        req.body = ffi_string(buf + pos, need)
        return pos + need, true
    end
    if body == nil then
        body = buffer.new()
        st.body = body
    end
    local take = avail < need and avail or need
    body:putcdata(buf + pos, take)
    st[S_NEED] = need - take
    if st[S_NEED] == 0 then
        req.body = body:tostring()
        st.body = nil
        return pos + take, true
    end
    return pos + take, false
end

local function ws_route_of(app, conn)
    local st = conn._http
    local r = app._ws_routes[conn._ws.path]
    return r or (st and st.ws_route)
end

-- Handles the request (or body bytes) at buf[pos]. Returns the new position and what to
-- do next: CONTINUE with the next pipelined request, STOP, or RETURN a value to the core.
-- One request per read is the common case; keeping it out of a Lua loop lets LuaJIT
-- compile the whole request path (a loop that runs once per call would abort the trace).
local CONTINUE, STOP, RETURN = 1, 2, 3

local function one_request(app, conn, st, buf, pos, len)
    if st[S_CUR] or st[S_CONGESTED] then
        -- A response is still being produced: keep the rest in the
        -- core's buffer, and stop reading, until it is done.
        if not st[S_PAUSED] then
            st[S_PAUSED] = true
            conn:pause()
        end
        return pos, STOP
    end
    local req = st[S_REQ]
    if req == nil then
        local p, avail = buf + pos, len - pos
        local c = p[0]
        if (c == 13 or c == 10) and st[S_SCAN] == 0 then
            -- Empty lines before a request line are ignored (RFC 9112 2.2).
            return pos + 1, CONTINUE
        end
        if st[S_TMODE] == T_HEADER and now(conn) >= st[S_DEADLINE] then
            fail(conn, st, 408)
            return pos, STOP
        end
        if st[S_SCAN] > 0 then
            -- The head was incomplete last time: parse only once its
            -- blank line is here, so a slow client costs O(n).
            local e, scan = find_blank(p, avail, st[S_SCAN])
            if e == 0 then
                st[S_SCAN] = scan
                local status = check_partial(p, avail)
                if status then
                    fail(conn, st, status)
                    return pos, STOP
                end
                local left = st[S_DEADLINE] - now(conn)
                conn:set_timeout(left > 1 and left or 1)
                return pos, STOP
            end
        end
        -- Every field a request gets is in the constructor, so the
        -- table is allocated at its final size once.
        req = setmetatable({
            conn = conn, method = false, target = false, path = false, minor = false, headers = false,
            body = false, keepalive = false,
        }, req_mt)
        local n = parse_head(p, avail, req)
        if n == 0 then
            st[S_SCAN] = avail
            if st[S_TMODE] ~= T_HEADER then
                st[S_DEADLINE] = now(conn) + st[S_OPTS].header_timeout
                set_tmode(conn, st, T_HEADER, st[S_OPTS].header_timeout)
            else
                local left = st[S_DEADLINE] - now(conn)
                conn:set_timeout(left > 1 and left or 1)
            end
            return pos, STOP
        elseif n < 0 then
            fail(conn, st, -n)
            return pos, STOP
        end
        st[S_SCAN] = 0
        pos = pos + n
        local status = prepare(req, st)
        if status then
            fail(conn, st, status)
            return pos, STOP
        end
        if st[S_NEED] == 0 then
            req.body = ""
        else
            st[S_REQ] = req
            if st[S_NEED] < 0 then
                st.ch = { state = 0, left = 0, size = 0, tsize = 0, body = buffer.new() }
            end
        end
    end
    if st[S_REQ] then
        local npos, done = read_body(st, req, buf, pos, len)
        if not npos then
            fail(conn, st, done)
            return pos, STOP
        end
        pos = npos
        if not done then
            if st[S_EXPECT] then
                st[S_EXPECT] = false
                conn:write("HTTP/1.1 100 Continue\r\n\r\n")
            end
            if st[S_TMODE] ~= T_BODY then
                set_tmode(conn, st, T_BODY, st[S_OPTS].header_timeout)
            end
            return pos, STOP
        end
        st[S_REQ] = nil
    end
    dispatch(app, conn, st, req)
    if st[S_CLOSING] then
        return pos, STOP
    end
    if conn._ws then
        -- Bytes after the upgrade request belong to the WebSocket.
        st[S_IN_INPUT] = false
        if pos < len then
            local n = ws_module().input(conn, buf + pos, len - pos, ws_route_of(app, conn))
            if type(n) ~= "number" or n < 0 then
                return pos, RETURN, n
            end
            return pos, RETURN, pos + n
        end
        return pos, RETURN, pos
    end
    if st[S_CUR] and st[S_TMODE] ~= T_BUSY then
        set_tmode(conn, st, T_BUSY, st[S_OPTS].keepalive_timeout)
    end
    return pos, CONTINUE
end

local function on_input(app, conn, buf, len)
    if conn._ws then
        return ws_module().input(conn, buf, len, ws_route_of(app, conn))
    end
    local opts = app.opts
    local st = conn._http
    if st == nil or st[S_V] ~= STATE_V then
        st = new_state(conn, opts)
    end
    if st[S_CLOSING] then
        return len
    end
    st[S_OPTS] = opts -- a reloaded app's options apply from its first event
    st[S_IN_INPUT] = true
    local pos, act, ret = one_request(app, conn, st, buf, 0, len)
    while act == CONTINUE and pos < len do
        pos, act, ret = one_request(app, conn, st, buf, pos, len)
    end
    if act == RETURN then
        return ret
    end
    st[S_IN_INPUT] = false
    if st[S_CLOSING] then
        return len
    end
    return pos
end

local function on_open(app, conn)
    local st = new_state(conn, app.opts)
    conn:set_timeout(st[S_OPTS].header_timeout)
end

local function on_drain(app, conn)
    if conn._ws then
        return ws_module().drain(conn, ws_route_of(app, conn))
    end
    local st = conn._http
    if not st then
        return
    end
    local s = st[S_STREAM]
    if s then
        return static.pump(conn, st, s)
    end
    local res = st[S_CUR]
    if res and res._ondrain then
        res._ondrain(res)
    end
    if st[S_CONGESTED] then
        st[S_CONGESTED] = false
        if st[S_PAUSED] and not st[S_CUR] and not conn.closed then
            st[S_PAUSED] = false
            conn:resume()
        end
    end
end

local function on_timeout(app, conn)
    if conn._ws then
        return ws_module().timeout(conn, ws_route_of(app, conn))
    end
    local st = conn._http
    if not st then
        return conn:close()
    end
    if st[S_CUR] then
        local s = st[S_STREAM]
        if s and s.sent ~= s.mark then
            -- A file is still flowing out: silence on the read side is fine.
            s.mark = s.sent
            conn:set_timeout(st[S_OPTS].keepalive_timeout)
            return
        end
        st[S_CLOSING] = true
        return conn:close()
    end
    if st[S_REQ] or st[S_SCAN] > 0 then
        return fail(conn, st, 408)
    end
    st[S_CLOSING] = true
    return conn:close()
end

local function on_close(app, conn, reason)
    if conn._ws then
        return ws_module().close(conn, reason, ws_route_of(app, conn))
    end
    local st = conn._http
    if not st then
        return
    end
    st[S_CLOSING] = true
    if st[S_STREAM] then
        static.close_stream(st, st[S_STREAM])
    end
    local res = st[S_CUR]
    if res then
        res.aborted = true
        st[S_CUR] = nil
    end
end

-- The app -----------------------------------------------------------------

local App = {}
local app_mt = { __index = App, __name = "moonwire.http.app" }

local function check_fn(fn, n, name)
    if type(fn) ~= "function" then
        error("bad argument #" .. n .. " to '" .. name .. "' (function expected, got " .. type(fn) .. ")", 3)
    end
end

local function add_route(self, method, name, path, ...)
    local n = select("#", ...)
    if n == 0 then
        error("bad argument #2 to '" .. name .. "' (function expected)", 3)
    end
    local fns = { ... }
    for i = 1, n do
        check_fn(fns[i], i + 1, name)
    end
    local fn = fns[n]
    fns[n] = nil
    self._routes:add(method, path, { fn = fn, mw = n > 1 and fns or nil })
    return self
end

for _, m in ipairs({ "get", "post", "put", "delete", "patch", "head", "options" }) do
    local method = m:upper()
    App[m] = function(self, path, ...)
        return add_route(self, method, m, path, ...)
    end
end

-- app:all(path, [mw...,] fn): every method.
function App:all(path, ...)
    return add_route(self, "*", "all", path, ...)
end

-- app:use(fn): global middleware, fn(req, res, next), in registration order.
function App:use(fn)
    check_fn(fn, 1, "use")
    local mw = self._mw
    if not mw then
        mw = {}
        self._mw = mw
    end
    mw[#mw + 1] = fn
    return self
end

-- app:not_found(fn): replaces the default 404 handler.
function App:not_found(fn)
    check_fn(fn, 1, "not_found")
    self._not_found = fn
    return self
end

-- app:static(prefix, dir[, opts]): serve files below dir at prefix.
-- opts.index (default "index.html", false to disable), opts.max_age.
function App:static(prefix, dir, opts)
    if type(prefix) ~= "string" or byte(prefix, 1) ~= 47 then
        error("bad argument #1 to 'static' (path starting with '/' expected)", 2)
    end
    if type(dir) ~= "string" then
        error("bad argument #2 to 'static' (string expected)", 2)
    end
    opts = opts or {}
    local sopts = { index = opts.index == nil and "index.html" or opts.index, max_age = opts.max_age }
    local root = static.root(dir)
    prefix = prefix:gsub("/+$", "")
    local plen = #prefix
    local function serve(req, res)
        -- The raw path below the prefix, still percent-encoded: static
        -- decodes it once, itself, before checking it.
        return static.serve(req, res, root, sub(req.path, plen + 2), sopts)
    end
    self._routes:add("GET", prefix == "" and "/" or prefix, { fn = serve })
    self._routes:add("GET", prefix .. "/*", { fn = serve })
    return self
end

-- app:ws(path, handlers[, opts]): a WebSocket endpoint (moonwire.ws).
function App:ws(path, handlers, opts)
    if type(handlers) ~= "table" then
        error("bad argument #2 to 'ws' (table expected)", 2)
    end
    local route = { path = path, handlers = handlers, opts = opts }
    self._routes:add("GET", path, { ws = route })
    self._ws_routes[path] = route
    return self
end

-- http.router([opts]) -> app.  opts: max_body (bytes), header_timeout and
-- keepalive_timeout (ms).
function _M.router(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #1 to 'router' (table expected)", 2)
    end
    local o = {}
    for k, v in pairs(DEFAULTS) do
        local given = opts and opts[k]
        if given ~= nil and (type(given) ~= "number" or given <= 0) then
            error("bad argument #1 to 'router' (" .. k .. " must be a positive number)", 2)
        end
        o[k] = given or v
    end
    local app = setmetatable({ opts = o, _routes = router.new(), _ws_routes = {} }, app_mt)
    -- The core calls these as plain functions; they find the app through
    -- their upvalue and everything else through conn.
    app.on_open = function(conn)
        return on_open(app, conn)
    end
    app.on_input = function(conn, buf, len)
        return on_input(app, conn, buf, len)
    end
    app.on_drain = function(conn)
        return on_drain(app, conn)
    end
    app.on_timeout = function(conn)
        return on_timeout(app, conn)
    end
    app.on_close = function(conn, reason)
        return on_close(app, conn, reason)
    end
    -- At SIGTERM, open WebSockets get a close frame (1001 going away) before the drain;
    -- an app that sets its own on_shutdown can call require("moonwire.ws").going_away().
    app.on_shutdown = function()
        local ws = package.loaded["moonwire.ws"]
        if ws then
            ws.going_away()
        end
    end
    return app
end

return _M
