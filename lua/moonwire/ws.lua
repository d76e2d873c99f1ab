-- moonwire.ws: WebSocket server endpoints (RFC 6455, RFC 7692).
--
-- The HTTP router (moonwire.http) hands a matching GET to upgrade() and
-- afterwards forwards the connection's events to input(), drain(),
-- close() and timeout(), always with the route that is current at that
-- moment: a hot reload swaps route.handlers while connections live, so
-- everything that belongs to one connection lives in conn._ws (the ws
-- object handlers see) and nothing in closures.  handler() wraps the same
-- machinery into a raw runtime handler for endpoints without a router.
--
-- The frame parser runs on the C input buffer through the FFI.  A frame
-- that is complete in the buffer is unmasked into a per-loop scratch area
-- and turned into the message string in one step (the only allocation per
-- message); frames split across reads and fragmented messages are
-- reassembled in a per-connection string.buffer as their bytes arrive, so
-- a large message never has to fit into the C input buffer.

local ffi = require "ffi"
local bit = require "bit"
local buffer = require "string.buffer"
local frame = require "moonwire.ws.frame"
local utf8 = require "moonwire.ws.utf8"
local handshake = require "moonwire.ws.handshake"
local deflate = require "moonwire.ws.deflate"
local connmod = require "moonwire.conn"

local band, rshift = bit.band, bit.rshift
local copy, ffi_string = ffi.copy, ffi.string
local type, error, setmetatable, tostring, pcall, require = type, error, setmetatable, tostring, pcall, require
local rawget, rawset = rawget, rawset
local char = string.char
local header, unmask, rotate, put_header = frame.header, frame.unmask, frame.rotate, frame.put_header
local feed, ACCEPT, REJECT = utf8.feed, utf8.ACCEPT, utf8.REJECT
local header_of = handshake.header

local _M = { _VERSION = "0.1" }

-- Connection states.  CLOSING: a Close frame was sent (by ws:close() or
-- because the peer broke the protocol) and we wait for the peer's Close;
-- data frames are dropped meanwhile.  CLOSED: the closing handshake is
-- complete or the TCP connection is going away; input is discarded.
local OPEN, CLOSING, CLOSED = 1, 2, 3

local DEFAULTS = {
  max_message = 16 * 1024 * 1024,  -- bytes, applied to the reassembled (inflated) message
  ping_interval = 30000,           -- ms of silence before we ping; 0 disables keep-alive
  ping_timeout = 10000,            -- ms to wait for any input after a ping
  close_timeout = 5000,            -- ms to wait for the peer's Close after ours
  slow_subscriber = "drop",        -- pub/sub delivery past the high-water mark: "drop" or "close"
}
_M.defaults = DEFAULTS

local function opt(route, k)
  local o = route.opts
  local v = o and o[k]
  if v == nil then return DEFAULTS[k] end
  return v
end

-- Frames up to this size that are complete in the input buffer take the
-- fast path through the scratch area; larger ones are streamed.
local SCRATCH = 65536
local scratch = ffi.new("uint8_t[?]", SCRATCH)
-- Reassembly buffers bigger than this are dropped after their message.
local KEEP_BUF = 65536
-- A peer that broke the protocol may still send this much of the broken
-- frame while we wait for its Close; more and we just close.
local MAX_SKIP = 65536

local out = buffer.new(SCRATCH)  -- one outgoing frame at a time, per loop

-- Open WebSockets of this loop, for going_away() at shutdown.
local live = setmetatable({}, { __mode = "k" })

local EMPTY = {}

local log_mod
local function log(level, fmt, ...)
  if log_mod == nil then
    -- Only inside the runtime: a plain luajit (unit specs) stays quiet.
    local ok, mw = pcall(require, "moonwire")
    log_mod = ok and type(mw) == "table" and mw.loop and mw.log or false
  end
  if log_mod then log_mod[level](fmt, ...) end
end

local pubsub_mod
local function pubsub()
  if pubsub_mod == nil then
    local ok, m = pcall(require, "moonwire.pubsub")
    if not ok then error("moonwire.pubsub is not available: " .. tostring(m), 3) end
    pubsub_mod = m
  end
  return pubsub_mod
end

---------------------------------------------------------------------------
-- Writing frames
---------------------------------------------------------------------------

-- Queues one frame: b0 is FIN|RSV|opcode, the payload is len bytes of the
-- Lua string or pointer data.  Returns conn:write's result: true, false
-- past the high-water mark (the frame is queued all the same), or
-- nil, "closed".
local function write_frame(conn, b0, data, len)
  if len > SCRATCH then
    -- Big payloads are not copied into the frame buffer: header first,
    -- then the string itself (the C queue keeps them in order).
    local p = out:reset():reserve(10)
    local hl = put_header(p, b0, len)
    out:commit(hl)
    conn:write_ptr(p, hl)
    if type(data) == "string" then return conn:write(data) end
    return conn:write_ptr(data, len)
  end
  local p = out:reset():reserve(len + 10)
  local hl = put_header(p, b0, len)
  if len > 0 then copy(p + hl, data, len) end
  local op = band(b0, 0x0F)
  if op == 0x9 or op == 0xA then
    -- Pings and pongs (at most 125 bytes, so always this path) go ahead of queued data
    -- frames so they never wait behind a full queue. A Close frame keeps its place: data
    -- queued before it must not end up after it.
    return conn:write_ptr_urgent(p, hl + len)
  end
  return conn:write_ptr(p, hl + len)
end

-- Queues a data message, compressed when permessage-deflate was agreed
-- and the message is worth it.
local function write_message(ws, b0, msg)
  local len = #msg
  local z = ws._z
  if z and len >= z.agreed.threshold then
    out:reset():reserve(10)
    out:commit(10)
    local n, err = z:compress(msg, len, out)
    if not n then
      log("error", "ws: conn %s: %s", tostring(ws.conn.id), err)
      return nil, err
    end
    local hl = frame.header_len(n)
    local p = out:ref() + 10 - hl
    put_header(p, b0 + 0x40, n)  -- RSV1 marks a compressed message
    local ok, werr = ws.conn:write_ptr(p, hl + n)
    if n > KEEP_BUF then out:free() end
    return ok, werr
  end
  return write_frame(ws.conn, b0, msg, len)
end

local function close_payload(code, reason)
  if not code then return "" end
  return char(rshift(code, 8), band(code, 0xFF)) .. (reason or "")
end

---------------------------------------------------------------------------
-- The ws object handlers see
---------------------------------------------------------------------------

local WS = {}
-- Fields every connection would rarely use are computed on first access
-- instead of stored: an idle WebSocket is a table of three or four fields.
local ws_mt = { __name = "moonwire.ws" }
ws_mt.__index = function(self, k)
  local m = WS[k]
  if m ~= nil then return m end
  if k == "state" then
    local st = {}
    rawset(self, "state", st)
    return st
  elseif k == "extensions" then
    local z = rawget(self, "_z")
    return z and z.agreed.response
  end
  return nil
end

local function check_kind(kind)
  if kind == nil or kind == "text" then return 0x81 end
  if kind == "binary" then return 0x82 end
  error("bad argument #2 to 'send' (\"text\" or \"binary\" expected, got " .. tostring(kind) .. ")", 3)
end

--- Sends a message.  kind is "text" (default) or "binary".  Returns true,
-- false when the connection's write queue is over its high-water mark (the
-- message is queued; on_drain fires once it has emptied), or nil, "closed".
function WS:send(msg, kind)
  if type(msg) ~= "string" then
    error("bad argument #1 to 'send' (string expected, got " .. type(msg) .. ")", 2)
  end
  local b0 = check_kind(kind)
  if self._st ~= OPEN then return nil, "closed" end
  connmod.count_out(1)
  local ok, err = write_message(self, b0, msg)
  if ok == false then self._full = true end
  return ok, err
end

--- Starts the closing handshake (section 7.1.2) with an optional status
-- code (1000 by default; 1000-1014 registered codes or 3000-4999) and
-- reason (at most 123 bytes).  The connection closes when the peer answers
-- or after opts.close_timeout.
function WS:close(code, reason)
  if code ~= nil and (type(code) ~= "number" or not frame.valid_close_code(code)) then
    error("bad argument #1 to 'close' (invalid close code " .. tostring(code) .. ")", 2)
  end
  if reason ~= nil and (type(reason) ~= "string" or #reason > 123) then
    error("bad argument #2 to 'close' (reason must be a string of at most 123 bytes)", 2)
  end
  if self._st ~= OPEN then return nil, "closed" end
  code = code or 1000
  local payload = close_payload(code, reason)
  self._st = CLOSING
  write_frame(self.conn, 0x88, payload, #payload)
  local t = self._ct or DEFAULTS.close_timeout
  self.conn:set_timeout(t)
  return true
end

--- Sends a ping with up to 125 bytes of application data.
function WS:ping(data)
  data = data or ""
  if type(data) ~= "string" or #data > 125 then
    error("bad argument #1 to 'ping' (string of at most 125 bytes expected)", 2)
  end
  if self._st ~= OPEN then return nil, "closed" end
  return write_frame(self.conn, 0x89, data, #data)
end

-- Pub/sub delivery.  Text or binary is decided once per message and loop:
-- Lua strings are interned, so the cache check is a pointer comparison.
local last_msg, last_b0
local function deliver(ws, msg)
  if ws._st ~= OPEN then return end
  if ws._full then
    -- The policy for slow subscribers: never buffer without bound.
    if ws._slow == "close" then
      ws:close(1008, "subscriber too slow")
    else
      ws.dropped = (ws.dropped or 0) + 1
    end
    return
  end
  if msg ~= last_msg then
    last_msg, last_b0 = msg, utf8.valid(msg) and 0x81 or 0x82
  end
  if write_message(ws, last_b0, msg) == false then ws._full = true end
end

--- Subscribes this connection to topic: every message published on it
-- from any loop is sent to this client (as text when it is valid UTF-8,
-- binary otherwise).
function WS:subscribe(topic)
  if type(topic) ~= "string" then
    error("bad argument #1 to 'subscribe' (string expected, got " .. type(topic) .. ")", 2)
  end
  local subs = self._subs
  if not subs then subs = {}; self._subs = subs end
  if subs[topic] then return true end
  local fn = self._deliver
  if not fn then
    fn = function(msg) deliver(self, msg) end
    self._deliver = fn
  end
  pubsub().subscribe(topic, self, fn)
  subs[topic] = true
  return true
end

function WS:unsubscribe(topic)
  local subs = self._subs
  if not subs or not subs[topic] then return false end
  subs[topic] = nil
  pubsub().unsubscribe(topic, self)
  return true
end

--- Publishes msg on topic to every subscriber on every loop (this
-- connection included when it is subscribed).
function WS.publish(_, topic, msg)
  if type(topic) ~= "string" or type(msg) ~= "string" then
    error("bad argument to 'publish' (topic and message strings expected)", 2)
  end
  return pubsub().publish(topic, msg)
end

--- The topics this connection is subscribed to, as a list.
function WS:topics()
  local t = {}
  for k in pairs(self._subs or EMPTY) do t[#t + 1] = k end
  table.sort(t)
  return t
end

function WS:peer() return self.conn:peer() end

---------------------------------------------------------------------------
-- Failing and finishing
---------------------------------------------------------------------------

-- Fails the connection (section 7.1.7): sends a Close with code and
-- reason, then waits for the peer's Close after skipping the skip payload
-- bytes of the offending frame; a peer that would have us skip more than
-- MAX_SKIP is cut off at once.  Returns consumed, for the caller's
-- convenience.
local function fail(ws, conn, route, code, reason, skip, consumed)
  log("info", "ws: conn %s: closing with %d: %s", tostring(conn.id), code, reason)
  local was_open = ws._st == OPEN
  if was_open then
    local payload = close_payload(code, reason)
    write_frame(conn, 0x88, payload, #payload)
    ws._failed = true
    ws._ccode, ws._creason = code, reason
  end
  ws._mop, ws._mz, ws._inf, ws._rem = nil, nil, nil, nil
  if not was_open or not skip or skip > MAX_SKIP then
    ws._st = CLOSED
    conn:close()
    return consumed
  end
  ws._st = CLOSING
  ws._skip = skip > 0 and skip or nil
  conn:set_timeout(opt(route, "close_timeout"))
  return consumed
end

-- Handles a complete control frame whose unmasked payload is at p.
local function control(ws, conn, route, op, p, len)
  if op == 0x9 then -- ping
    if ws._st == OPEN then write_frame(conn, 0x8A, p, len) end
    local cb = route.handlers.on_ping
    if cb then cb(ws, ffi_string(p, len)) end
    return
  elseif op == 0xA then -- pong
    ws._pinged = nil
    local cb = route.handlers.on_pong
    if cb then cb(ws, ffi_string(p, len)) end
    return
  end
  -- Close (section 5.5.1).
  local code, reason = 1005, ""
  if len == 1 then
    return fail(ws, conn, route, 1002, "close frame with a 1-byte payload", 0)
  elseif len >= 2 then
    code = p[0] * 256 + p[1]
    if not frame.valid_close_code(code) then
      return fail(ws, conn, route, 1002, "invalid close code " .. code, 0)
    end
    if feed(ACCEPT, p, 2, len - 2) ~= ACCEPT then
      return fail(ws, conn, route, 1007, "close reason is not valid UTF-8", 0)
    end
    reason = ffi_string(p + 2, len - 2)
  end
  if ws._st == OPEN then
    -- Echo the status code (section 5.5.1), then close the TCP
    -- connection: the server closes first (section 7.1.1).
    local payload = len >= 2 and close_payload(code) or ""
    write_frame(conn, 0x88, payload, #payload)
  end
  ws._st = CLOSED
  ws._pcode, ws._preason = code, reason
  conn:close()
end

-- Delivers a complete message.
local function message(ws, route, msg, op)
  connmod.count_in(1)
  local cb = route.handlers.on_message
  if cb then cb(ws, msg, op == 1 and "text" or "binary") end
end

---------------------------------------------------------------------------
-- Input
---------------------------------------------------------------------------

-- Consumes payload bytes of the frame in progress (ws._rem bytes left)
-- and returns how many it consumed.  On a failure the connection leaves
-- the OPEN state and the rest of the frame is skipped.
local function payload(ws, conn, route, buf, pos, avail)
  local n = ws._rem
  if n > avail then n = avail end
  local mbuf = ws._mbuf
  if ws._mz then
    -- Compressed: unmask into scratch piece by piece, inflate into mbuf.
    local limit = opt(route, "max_message")
    local done = 0
    while done < n do
      local k = n - done
      if k > SCRATCH then k = SCRATCH end
      unmask(scratch, 0, buf, pos + done, k, ws._mask)
      ws._mask = rotate(ws._mask, k % 4)
      done = done + k
      local ok, err = ws._z:decompress(scratch, k, ws._ffin and done == ws._rem, mbuf, limit)
      if not ok then
        if err == "too big" then
          fail(ws, conn, route, 1009, "message over " .. limit .. " bytes", ws._rem - done)
        else
          fail(ws, conn, route, 1007, "permessage-deflate: " .. err, ws._rem - done)
        end
        return done
      end
    end
  else
    local dst = mbuf:reserve(n)
    local ascii = unmask(dst, 0, buf, pos, n, ws._mask)
    ws._mask = rotate(ws._mask, n % 4)
    if ws._mop == 1 and not (ascii and ws._u8 == ACCEPT) then
      local st = feed(ws._u8, dst, 0, n)
      if st == REJECT then
        fail(ws, conn, route, 1007, "text message is not valid UTF-8", ws._rem - n)
        return n
      end
      ws._u8 = st
    end
    mbuf:commit(n)
  end
  ws._rem = ws._rem - n
  return n
end

-- Finishes the message in ws._mbuf and delivers it.
local function finish(ws, conn, route)
  local mbuf, op = ws._mbuf, ws._mop
  ws._mop = nil
  if ws._mz then
    ws._mz = nil
    local p, n = mbuf:ref()
    if op == 1 and feed(ACCEPT, p, 0, n) ~= ACCEPT then
      return fail(ws, conn, route, 1007, "text message is not valid UTF-8", 0)
    end
  elseif op == 1 and ws._u8 ~= ACCEPT then
    return fail(ws, conn, route, 1007, "text message ends inside a UTF-8 sequence", 0)
  end
  local msg = mbuf:get()
  if #msg > KEEP_BUF then ws._mbuf = nil end
  message(ws, route, msg, op)
end

-- Starts a frame whose header (hl bytes) is complete at p.  Returns the
-- bytes consumed (the header, and the payload when it could be handled at
-- once); on a protocol violation the connection is failed.
local function start_frame(ws, conn, route, buf, pos, avail, hl, plen, mask)
  local b0 = buf[pos]
  local op = band(b0, 0x0F)
  local fin = b0 >= 0x80
  local rsv = band(b0, 0x70)
  if buf[pos + 1] < 0x80 then
    return fail(ws, conn, route, 1002, "client frame is not masked", plen, hl)
  end
  if op >= 0x8 then
    -- Control frame: never fragmented, at most 125 bytes, no RSV bits.
    if op > 0xA then return fail(ws, conn, route, 1002, "reserved opcode " .. op, plen, hl) end
    if not fin then return fail(ws, conn, route, 1002, "fragmented control frame", plen, hl) end
    if plen > 125 then return fail(ws, conn, route, 1002, "control frame over 125 bytes", plen, hl) end
    if rsv ~= 0 then return fail(ws, conn, route, 1002, "RSV bits set on a control frame", plen, hl) end
    if avail < hl + plen then return 0 end
    unmask(scratch, 0, buf, pos + hl, plen, mask)
    if ws._st == OPEN or op == 0x8 then control(ws, conn, route, op, scratch, plen) end
    return hl + plen
  end
  if op > 0x2 then return fail(ws, conn, route, 1002, "reserved opcode " .. op, plen, hl) end
  if ws._st ~= OPEN then
    -- Waiting for the peer's Close: data frames are dropped unread.
    ws._skip = plen
    return hl
  end
  local mop = ws._mop
  if op == 0 then
    if not mop then return fail(ws, conn, route, 1002, "continuation frame without a message", plen, hl) end
    if rsv ~= 0 then return fail(ws, conn, route, 1002, "RSV bits set on a continuation frame", plen, hl) end
  else
    if mop then return fail(ws, conn, route, 1002, "new message inside a fragmented message", plen, hl) end
    if rsv ~= 0 and (rsv ~= 0x40 or not ws._z) then
      return fail(ws, conn, route, 1002, "RSV bits set without a negotiated extension", plen, hl)
    end
  end
  local limit = opt(route, "max_message")
  if fin and op ~= 0 and rsv == 0 and plen <= SCRATCH and avail >= hl + plen then
    -- Fast path: a whole unfragmented message in the buffer.
    if plen > limit then
      return fail(ws, conn, route, 1009, "message over " .. limit .. " bytes", plen, hl)
    end
    local ascii = unmask(scratch, 0, buf, pos + hl, plen, mask)
    if op == 1 and not ascii and feed(ACCEPT, scratch, 0, plen) ~= ACCEPT then
      return fail(ws, conn, route, 1007, "text message is not valid UTF-8", 0, hl + plen)
    end
    message(ws, route, ffi_string(scratch, plen), op)
    return hl + plen
  end
  -- Streaming path: the payload is consumed as it arrives.
  local mbuf = ws._mbuf
  if op ~= 0 then
    if mbuf then mbuf:reset() else mbuf = buffer.new(); ws._mbuf = mbuf end
    ws._mop, ws._mz, ws._u8 = op, rsv ~= 0 or nil, ACCEPT
  end
  if #mbuf + plen > limit then
    return fail(ws, conn, route, 1009, "message over " .. limit .. " bytes", plen, hl)
  end
  ws._rem, ws._mask, ws._ffin = plen, mask, fin
  if plen > 0 then
    ws._inf = true
  elseif fin then
    if ws._mz then
      -- An empty final fragment of a compressed message still ends the
      -- deflate stream.
      local ok = ws._z:decompress(scratch, 0, true, mbuf, limit)
      if not ok then return fail(ws, conn, route, 1007, "permessage-deflate: corrupt data", 0, hl) end
    end
    finish(ws, conn, route)
  end
  return hl
end

--- Feeds len bytes of input at buf (a const uint8_t * valid only during
-- the call) to the connection's WebSocket; returns the bytes consumed.
function _M.input(conn, buf, len, route)
  local ws = conn._ws
  if not ws or ws._st == CLOSED then return len end
  if ws._pinged then
    ws._pinged = nil
    conn:set_timeout(opt(route, "ping_interval"))
  end
  local pos = 0
  while pos < len do
    local avail = len - pos
    local skip = ws._skip
    if skip then
      -- The rest of a frame we do not look at.
      if skip > avail then ws._skip = skip - avail; return len end
      ws._skip = nil
      pos = pos + skip
    elseif ws._inf then
      -- Payload of a frame started earlier.
      pos = pos + payload(ws, conn, route, buf, pos, avail)
      if ws._rem == 0 and ws._st == OPEN then
        ws._inf = nil
        if ws._ffin then finish(ws, conn, route) end
      end
    else
      local hl, plen, mask = header(buf, pos, avail)
      if hl == nil then return pos end
      if hl == false then
        fail(ws, conn, route, 1002, "64-bit payload length with the top bit set")
        return len
      end
      local n = start_frame(ws, conn, route, buf, pos, avail, hl, plen, mask)
      if n == 0 then return pos end
      pos = pos + n
    end
    if ws._st == CLOSED or conn.closed then return len end
  end
  return pos
end

---------------------------------------------------------------------------
-- Upgrade (section 4.2.2)
---------------------------------------------------------------------------

local function reject(res, status, body, name, value)
  res:status(status)
  if name then res:set(name, value) end
  res:set("Content-Type", "text/plain")
  res:send(body .. "\n")
  return false
end

--- Completes the opening handshake for req on conn, or answers with an
-- HTTP error and returns false.  route = { path, handlers, opts }.
function _M.upgrade(conn, req, res, route)
  local opts = route.opts or EMPTY
  if req.method ~= "GET" then
    return reject(res, 405, "WebSocket upgrades use GET", "Allow", "GET")
  end
  if not handshake.has_token(header_of(req, "upgrade"), "websocket") then
    return reject(res, 400, "missing or invalid Upgrade header (expected websocket)")
  end
  if not handshake.has_token(header_of(req, "connection"), "upgrade") then
    return reject(res, 400, "missing or invalid Connection header (expected Upgrade)")
  end
  if header_of(req, "sec-websocket-version") ~= "13" then
    return reject(res, 426, "unsupported WebSocket version (13 expected)", "Sec-WebSocket-Version", "13")
  end
  local key = header_of(req, "sec-websocket-key")
  if not handshake.valid_key(key) then
    return reject(res, 400, "missing or invalid Sec-WebSocket-Key")
  end
  if opts.check_origin then
    local ok, why = opts.check_origin(header_of(req, "origin"), req)
    if not ok then return reject(res, 403, "origin not allowed" .. (why and (": " .. why) or "")) end
  end
  local protocol
  if opts.protocols then
    protocol = handshake.pick_protocol(header_of(req, "sec-websocket-protocol"), opts.protocols)
  end
  local ext, agreed
  if opts.deflate ~= false then
    local offers, err = handshake.extensions(header_of(req, "sec-websocket-extensions"))
    if not offers then return reject(res, 400, "malformed Sec-WebSocket-Extensions: " .. err) end
    ext, agreed = deflate.negotiate(offers, type(opts.deflate) == "table" and opts.deflate or nil)
  end

  local head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    .. "Sec-WebSocket-Accept: " .. handshake.accept_key(key) .. "\r\n"
  if protocol then head = head .. "Sec-WebSocket-Protocol: " .. protocol .. "\r\n" end
  if ext then head = head .. "Sec-WebSocket-Extensions: " .. ext .. "\r\n" end
  local ok = conn:write(head .. "\r\n")
  if ok == nil then return false end

  local ws = setmetatable({
    conn = conn, path = route.path, protocol = protocol, _st = OPEN,
  }, ws_mt)
  if agreed then ws._z = deflate.new(agreed) end
  -- Only a non-default close timeout costs a field (ws:close needs it
  -- outside any event of this route).
  if opts.close_timeout then ws._ct = opts.close_timeout end
  if opts.slow_subscriber == "close" then ws._slow = "close" end
  conn._ws = ws
  live[ws] = true
  conn:set_timeout(opt(route, "ping_interval"))
  local cb = route.handlers.on_open
  if cb then cb(ws, req) end
  return true
end

---------------------------------------------------------------------------
-- Connection events forwarded by the router
---------------------------------------------------------------------------

--- The write queue emptied after a send returned false.
function _M.drain(conn, route)
  local ws = conn._ws
  if not ws then return end
  ws._full = nil
  local cb = route.handlers.on_drain
  if cb and ws._st == OPEN then cb(ws) end
end

--- The TCP connection is gone: on_close(ws, code, reason) runs exactly
-- once.  code and reason are the ones we failed the connection with after
-- a protocol error, or the peer's Close (1005 when it had no status
-- code), or 1006 when no closing handshake took place (reason then says
-- why: "ping timeout", "close timeout", or the runtime's close reason).
function _M.close(conn, reason, route)
  local ws = conn._ws
  if not ws or ws._done then return end
  ws._done = true
  ws._st = CLOSED
  live[ws] = nil
  if ws._subs and pubsub_mod then pubsub_mod.unsubscribe_all(ws) end
  ws._subs, ws._deliver = nil, nil
  if ws._z then ws._z:free() end
  ws._mbuf = nil
  local code, why
  if ws._failed then
    code, why = ws._ccode, ws._creason
  elseif ws._pcode then
    code, why = ws._pcode, ws._preason
  else
    code, why = 1006, ws._why or reason or ""
  end
  local cb = route.handlers.on_close
  if cb then cb(ws, code, why) end
end

--- The idle timer fired: ping a silent peer, drop one that did not answer,
-- or give up waiting for the peer's Close.
function _M.timeout(conn, route)
  local ws = conn._ws
  if not ws then conn:close(); return end
  if ws._st == OPEN then
    if ws._pinged then
      log("info", "ws: conn %s: no answer to ping, closing", tostring(conn.id))
      ws._st = CLOSED
      ws._why = "ping timeout"
      conn:abort()
      return
    end
    write_frame(conn, 0x89, "", 0)
    ws._pinged = true
    conn:set_timeout(opt(route, "ping_timeout"))
  else
    ws._st = CLOSED
    ws._why = ws._why or "close timeout"
    conn:abort()
  end
end

--- Starts the closing handshake with every open WebSocket of this loop
-- (default 1001 "going away"): called from the handler's on_shutdown so
-- clients learn that the server is stopping while the runtime drains.
-- Returns how many connections were told.
function _M.going_away(code, reason)
  local n = 0
  for sock in pairs(live) do
    if sock._st == OPEN and not sock.conn.closed then
      sock:close(code or 1001, reason or "server shutting down")
      n = n + 1
    end
  end
  return n
end

---------------------------------------------------------------------------
-- Endpoints without the router
---------------------------------------------------------------------------

local res_mt = { __index = {}, __name = "moonwire.ws.response" }
local STATUS = { [400] = "Bad Request", [403] = "Forbidden", [404] = "Not Found", [405] = "Method Not Allowed",
  [426] = "Upgrade Required", [431] = "Request Header Fields Too Large" }
function res_mt.__index:status(n) self._status = n; return self end
function res_mt.__index:set(k, v) self._head = self._head .. k .. ": " .. v .. "\r\n"; return self end
function res_mt.__index:send(body)
  body = body or ""
  local s = self._status or 200
  self.conn:write("HTTP/1.1 " .. s .. " " .. (STATUS[s] or "Error") .. "\r\n" .. self._head
    .. "Content-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body)
  self.conn:close()
  return true
end
local function response(conn) return setmetatable({ conn = conn, _head = "" }, res_mt) end

local MAX_HEAD = 8192

--- Returns a raw runtime handler table (on_input, on_drain, on_close,
-- on_timeout) serving handlers as a WebSocket endpoint on any path (or
-- only opts.path), without the HTTP router.  Plain HTTP requests get an
-- error answer.
function _M.handler(handlers, opts)
  opts = opts or {}
  local route = { path = opts.path or "*", handlers = handlers, opts = opts }
  local H = { idle_timeout = opts.handshake_timeout or 10000 }
  function H.on_input(conn, buf, len)
    if conn._ws then return _M.input(conn, buf, len, route) end
    local s = ffi_string(buf, len > MAX_HEAD + 4 and MAX_HEAD + 4 or len)
    local req, n = handshake.parse_request(s, MAX_HEAD)
    if req == nil then return 0 end
    local res = response(conn)
    if req == false then
      reject(res, n, n == 431 and "request head too large" or "malformed request")
      return len
    end
    if opts.path and req.path ~= opts.path then
      reject(res, 404, "no WebSocket endpoint at " .. req.path)
      return len
    end
    if not _M.upgrade(conn, req, res, route) then return len end
    if len > n then return n + _M.input(conn, buf + n, len - n, route) end
    return n
  end
  function H.on_drain(conn) _M.drain(conn, route) end
  function H.on_close(conn, reason) _M.close(conn, reason, route) end
  function H.on_timeout(conn) _M.timeout(conn, route) end
  function H.on_shutdown() _M.going_away() end
  return H
end

-- Route options a handler table may carry itself (for `moonwire ws`).
local OPTION_KEYS = { "max_message", "ping_interval", "ping_timeout", "close_timeout", "deflate",
  "protocols", "check_origin", "slow_subscriber" }

--- A moonwire.http app serving handlers as a WebSocket endpoint at "/"
-- and, with opts.static = dir, static files from dir; GET / without an
-- Upgrade header then serves dir/index.html.  This is what
-- `moonwire ws handler.lua --static dir` runs.  Route options come from
-- opts, else from fields of the same name in the handler table.
function _M.app(handlers, opts)
  if type(handlers) ~= "table" then
    error("bad argument #1 to 'app' (handler table expected, got " .. type(handlers) .. ")", 2)
  end
  opts = opts or {}
  local http = require "moonwire.http"
  local app = http.router()
  local route_opts = {}
  for _, k in ipairs(OPTION_KEYS) do
    local v = opts[k]
    if v == nil then v = handlers[k] end
    route_opts[k] = v
  end
  local dir = opts.static
  if dir then
    app:static("/", dir)
    local static = require "moonwire.http.static"
    local root = static.root(dir)
    local sopts = { index = "index.html" }
    -- "/" is the WebSocket endpoint; a plain GET of it gets the page.
    app:use(function(req, res, nxt)
      if req.path == "/" and not handshake.has_token(header_of(req, "upgrade"), "websocket") then
        return static.serve(req, res, root, "", sopts)
      end
      return nxt()
    end)
  end
  app:ws("/", handlers, route_opts) -- replaces the static GET "/" route
  return app -- the router's own on_shutdown sends the close frames
end

return _M
