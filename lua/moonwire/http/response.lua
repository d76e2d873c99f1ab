-- The response object handed to route handlers, and the response writer.
--
-- Responses are assembled in one string.buffer per loop (each loop has its
-- own Lua state) and handed to the core with conn:write_ptr, so a response
-- creates no Lua string.  The status line, Server and Date headers are
-- cached per status code and rebuilt once per second.

local ffi = require "ffi"
local buffer = require "string.buffer"

local setmetatable, tostring, tonumber, type, error = setmetatable, tostring, tonumber, type, error
local lower, find, format = string.lower, string.find, string.format
local os_date = os.date
local clear = require "table.clear"
local S_CONGESTED = require("moonwire.http.state").CONGESTED

ffi.cdef [[
long mw_http_time(void *t) __asm__("time");
]]
local C = ffi.C

local _M = { _VERSION = "0.1.0" }

-- Set by moonwire.http: called once a response has been written completely.
_M.on_finish = nil

local REASONS = {
    [100] = "Continue", [101] = "Switching Protocols",
    [200] = "OK", [201] = "Created", [202] = "Accepted", [204] = "No Content", [206] = "Partial Content",
    [301] = "Moved Permanently", [302] = "Found", [303] = "See Other", [304] = "Not Modified",
    [307] = "Temporary Redirect", [308] = "Permanent Redirect",
    [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
    [405] = "Method Not Allowed", [406] = "Not Acceptable", [408] = "Request Timeout", [409] = "Conflict",
    [410] = "Gone", [411] = "Length Required", [412] = "Precondition Failed", [413] = "Content Too Large",
    [414] = "URI Too Long", [415] = "Unsupported Media Type", [416] = "Range Not Satisfiable",
    [417] = "Expectation Failed", [422] = "Unprocessable Content", [426] = "Upgrade Required",
    [429] = "Too Many Requests", [431] = "Request Header Fields Too Large",
    [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
    [503] = "Service Unavailable", [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
}
_M.REASONS = REASONS

local DAYS = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }

-- IMF-fixdate (RFC 9110 section 5.6.7), independent of the C locale.
function _M.httpdate(t)
    local d = os_date("!*t", t)
    return format("%s, %02d %s %04d %02d:%02d:%02d GMT", DAYS[d.wday], d.day, MONTHS[d.month], d.year, d.hour,
        d.min, d.sec)
end

-- Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
local function days_from_civil(y, m, d)
    if m <= 2 then
        y = y - 1
    end
    local era = math.floor(y / 400)
    local yoe = y - era * 400
    local mp = (m + 9) % 12
    local doy = math.floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end

local MONTH_NUM = {}
for i, m in ipairs(MONTHS) do
    MONTH_NUM[m] = i
end

-- Parses an IMF-fixdate into seconds since the epoch; nil for anything else.
function _M.parse_httpdate(s)
    local d, mon, y, h, mi, sec = s:match("^%a%a%a, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    local m = mon and MONTH_NUM[mon]
    if not m then
        return nil
    end
    return days_from_civil(tonumber(y), m, tonumber(d)) * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60
        + tonumber(sec)
end

local date_sec, date_line = -1, nil
local prefix_cache = {}

-- "HTTP/1.1 200 OK\r\nServer: moonwire\r\nDate: ...\r\n", cached per second.
local function prefix(code)
    local now = tonumber(C.mw_http_time(nil))
    if now ~= date_sec then
        date_sec = now
        date_line = "Date: " .. _M.httpdate(now) .. "\r\n"
        clear(prefix_cache)
    end
    local p = prefix_cache[code]
    if not p then
        p = "HTTP/1.1 " .. code .. " " .. (REASONS[code] or "Status") .. "\r\nServer: moonwire\r\n" .. date_line
        prefix_cache[code] = p
    end
    return p
end
_M.prefix = prefix

local out = buffer.new(4096)

local function flush(conn, b)
    local p, n = b:ref()
    local ok, err = conn:write_ptr(p, n)
    b:reset()
    return ok, err
end

local TEXT = "text/plain; charset=utf-8"
local CT_TEXT_CL = "Content-Type: text/plain; charset=utf-8\r\nContent-Length: "

local Res = {}
local mt = { __index = Res, __name = "moonwire.http.response" }
_M.mt = mt

-- Creates the response for req on conn.  st is the connection's HTTP
-- state (conn._http); keepalive is false when the connection must close
-- after this response.
function _M.new(conn, st, req, keepalive)
    return setmetatable({
        conn = conn,
        code = 200,
        headers_sent = false,
        finished = false,
        _st = st,
        _req = req,
        _close = not keepalive,
        _head = req.method == "HEAD",
    }, mt)
end

local function check_value(s, what, level)
    if find(s, "[\r\n%z]") then
        error("bad argument (" .. what .. " must not contain CR, LF or NUL)", level + 1)
    end
end

-- res:status(code) -> res
function Res:status(code)
    code = tonumber(code)
    if not code or code < 100 or code > 999 or code % 1 ~= 0 then
        error("bad argument #1 to 'status' (integer 100-999 expected)", 2)
    end
    if self.headers_sent then
        error("response headers already sent", 2)
    end
    self.code = code
    return self
end

local function set_header(self, name, value, append, level)
    if type(name) ~= "string" or not find(name, "^[!#$%%&'*+%-.^_`|~%w]+$") then
        error("bad argument #1 (header name expected)", level + 1)
    end
    if self.headers_sent then
        error("response headers already sent", level + 1)
    end
    value = tostring(value)
    check_value(value, "header value", level + 1)
    local l = lower(name)
    if l == "content-type" then
        self._ctype = value
        return self
    elseif l == "content-length" then
        local n = tonumber(value)
        if not n or n < 0 or n % 1 ~= 0 then
            error("bad argument #2 (Content-Length must be a non-negative integer)", level + 1)
        end
        self._clen = n
        return self
    elseif l == "connection" then
        if lower(value) == "close" then
            self._close = true
        end
        return self
    elseif l == "transfer-encoding" or l == "date" or l == "server" then
        -- Framing and these two are the server's business.
        error("bad argument #1 ('" .. name .. "' is set by the server)", level + 1)
    end
    local h = self._h
    if not h then
        h = {}
        self._h = h
    end
    if not append then
        for i = 1, #h, 2 do
            if lower(h[i]) == l then
                h[i + 1] = value
                return self
            end
        end
    end
    h[#h + 1] = name
    h[#h + 1] = value
    return self
end

-- res:set(name, value) -> res; replaces an earlier value of the header.
function Res:set(name, value)
    return set_header(self, name, value, false, 2)
end

-- res:add(name, value) -> res; adds another field (e.g. Set-Cookie).
function Res:add(name, value)
    return set_header(self, name, value, true, 2)
end

-- res:get(name) -> the value set so far, or nil.
function Res:get(name)
    local l = lower(name)
    if l == "content-type" then
        return self._ctype
    elseif l == "content-length" then
        return self._clen
    end
    local h = self._h
    if h then
        for i = 1, #h, 2 do
            if lower(h[i]) == l then
                return h[i + 1]
            end
        end
    end
    return nil
end

local function no_body_status(code)
    return code < 200 or code == 204 or code == 304
end

-- Writes the status line and headers into b.  clen: the body length, or
-- nil for a streamed body (chunked on HTTP/1.1, close-delimited on 1.0).
local function put_head(self, b, clen, default_ctype)
    local code = self.code
    b:put(prefix(code))
    local ctype = self._ctype or default_ctype
    local nobody = no_body_status(code)
    if clen and not nobody and ctype == TEXT then
        b:put(CT_TEXT_CL, clen, "\r\n")
    else
        if ctype and not nobody then
            b:put("Content-Type: ", ctype, "\r\n")
        end
        if clen then
            if not nobody then
                b:put("Content-Length: ", clen, "\r\n")
            end
        elseif not nobody then
            if self._req.minor == 1 then
                self._chunked = true
                b:put("Transfer-Encoding: chunked\r\n")
            else
                self._close = true
            end
        end
    end
    local h = self._h
    if h then
        for i = 1, #h, 2 do
            b:put(h[i], ": ", h[i + 1], "\r\n")
        end
    end
    if self._close then
        b:put("Connection: close\r\n\r\n")
    elseif self._req.minor == 0 then
        b:put("Connection: keep-alive\r\n\r\n")
    else
        b:put("\r\n")
    end
    self.headers_sent = true
end

local function complete(self)
    self.finished = true
    local f = _M.on_finish
    if f then
        f(self)
    end
end
Res._complete = complete

-- res:send([body]) -> res; writes the whole response with Content-Length.
function Res:send(body)
    if self.headers_sent then
        error("response already sent", 2)
    end
    if body == nil then
        body = ""
    elseif type(body) ~= "string" then
        if type(body) == "number" then
            body = tostring(body)
        else
            error("bad argument #1 to 'send' (string expected, got " .. type(body) .. ")", 2)
        end
    end
    local b = out
    put_head(self, b, #body, #body > 0 and TEXT or nil)
    if not self._head and not no_body_status(self.code) then
        b:put(body)
    end
    local ok = flush(self.conn, b)
    if ok == false then
        self._st[S_CONGESTED] = true
    end
    complete(self)
    return self
end

local cjson
-- res:json(value) -> res; encodes with lua-cjson.
function Res:json(value)
    cjson = cjson or require "cjson"
    if self._ctype == nil then
        self._ctype = "application/json"
    end
    return self:send(cjson.encode(value))
end

-- res:redirect(url[, code]) -> res; code defaults to 302.
function Res:redirect(url, code)
    if type(url) ~= "string" then
        error("bad argument #1 to 'redirect' (string expected)", 2)
    end
    check_value(url, "url", 2)
    code = code or 302
    if code ~= 301 and code ~= 302 and code ~= 303 and code ~= 307 and code ~= 308 then
        error("bad argument #2 to 'redirect' (301, 302, 303, 307 or 308 expected)", 2)
    end
    self.code = code
    set_header(self, "Location", url, false, 2)
    return self:send("Redirecting to " .. url .. "\n")
end

-- Writes the head only; the caller streams the body itself (static files).
-- Returns the write result.
function Res:_send_head(clen)
    local b = out
    put_head(self, b, clen, nil)
    return flush(self.conn, b)
end

-- res:write(chunk) -> true, false (over the high-water mark: wait for
-- res:on_drain) or nil, "closed".  The first call sends the head: chunked
-- on HTTP/1.1, or raw with the Content-Length the handler set.
function Res:write(chunk)
    if self.finished then
        error("response already finished", 2)
    end
    if type(chunk) ~= "string" then
        error("bad argument #1 to 'write' (string expected)", 2)
    end
    local b = out
    if not self.headers_sent then
        put_head(self, b, self._clen, "application/octet-stream")
    end
    local n = #chunk
    if n > 0 and not self._head and not no_body_status(self.code) then
        if self._chunked then
            b:putf("%x\r\n", n)
            b:put(chunk, "\r\n")
        else
            b:put(chunk)
        end
    end
    if #b == 0 then
        return true
    end
    return flush(self.conn, b)
end

-- res:finish() -> res; ends a streamed response (or sends an empty one).
function Res:finish()
    if self.finished then
        error("response already finished", 2)
    end
    if not self.headers_sent then
        return self:send("")
    end
    if self._chunked and not self._head then
        local ok = self.conn:write("0\r\n\r\n")
        if ok == false then
            self._st[S_CONGESTED] = true
        end
    end
    complete(self)
    return self
end

-- res:on_drain(fn): fn(res) is called when the write queue has emptied
-- after a write returned false.
function Res:on_drain(fn)
    self._ondrain = fn
    return self
end

-- Writes a complete error response and marks the connection for closing.
-- Used for protocol errors, before or without a request object.
function _M.error_response(conn, code)
    local b = out
    local body = (REASONS[code] or "Error") .. "\n"
    b:put(prefix(code), CT_TEXT_CL, #body, "\r\nConnection: close\r\n\r\n", body)
    return flush(conn, b)
end

return _M
