-- Connection objects. A connection is a small Lua table { id, _c } whose methods call the C
-- core through the FFI; `loop` comes from the metatable and `state` is created on first use,
-- so an idle connection costs one table. `_c` is the address of the C connection as a
-- number (cast at each call: free in compiled code, and no cdata object kept per
-- connection). It is cleared when on_close is delivered, after which every method fails
-- softly with nil, "closed".
local ffi = require "ffi"
local core = require "moonwire.core"

local C = core.C
local type = type
local error = error
local rawset = rawset
local tonumber = tonumber
local tostring = tostring
local setmetatable = setmetatable
local ffi_string = ffi.string

local _M = { _VERSION = "0.1.0" }

local ENOBUFS = 105

local methods = {}

local connp = ffi.typeof("mw_conn_t *")
local cast = ffi.cast

local function check_open(self)
  local c = self._c
  if c == nil or self.closed then
    return nil
  end
  return cast(connp, c)
end

local function any_ptr(self)
  local c = self._c
  if c == nil then
    return nil
  end
  return cast(connp, c)
end

local function write_result(r)
  if r == 0 then
    return true
  elseif r == 1 then
    return false
  elseif r == -ENOBUFS then
    return nil, "write queue limit"
  end
  return nil, "closed"
end

--- Queues data; true, or false once the queue is over the high-water mark (on_drain follows).
function methods:write(data)
  local c = check_open(self)
  if c == nil then
    return nil, "closed"
  end
  if type(data) ~= "string" then
    if type(data) == "number" then
      data = tostring(data)
    else
      error("bad argument #1 to 'write' (string expected, got " .. type(data) .. ")", 2)
    end
  end
  local r = C.mw_conn_write(c, data, #data)
  if r < 0 then
    self.closed = true
  end
  return write_result(r)
end

--- Queues len bytes from a cdata pointer.
function methods:write_ptr(ptr, len)
  local c = check_open(self)
  if c == nil then
    return nil, "closed"
  end
  local r = C.mw_conn_write(c, ptr, len)
  if r < 0 then
    self.closed = true
  end
  return write_result(r)
end

local counters = { messages_in = 0, messages_out = 0 } -- the loop's C counters once running

--- Queues len bytes from a cdata pointer ahead of all output not yet handed to the kernel
-- (a control message that must not wait behind a full queue). Write whole messages with
-- single calls around it: the queue is only cut between calls.
function methods:write_ptr_urgent(ptr, len)
  local c = check_open(self)
  if c == nil then
    return nil, "closed"
  end
  local r = C.mw_conn_write_urgent(c, ptr, len)
  if r < 0 then
    self.closed = true
  end
  return write_result(r)
end

--- Frames msg with the handler's protocol and queues it.
function methods:send(msg)
  counters.messages_out = counters.messages_out + 1
  local proto = self._proto
  if proto == nil then
    error("conn:send needs a protocol in the handler (for example protocol = frame.lines())", 2)
  end
  local w = proto.write
  if w then
    return w(proto, self, msg)
  end
  local framed, err = proto:encode(msg)
  if framed == nil then
    return nil, err
  end
  return self:write(framed)
end

function methods:close()
  local c = check_open(self)
  if c == nil then
    return
  end
  self.closed = true
  C.mw_conn_close(c)
end

function methods:abort()
  local c = any_ptr(self)
  if c == nil then
    return
  end
  self.closed = true
  C.mw_conn_abort(c)
end

--- Closes after a protocol failure: reason "limit" (something over its bound) or "error".
function methods:fail(reason)
  local c = check_open(self)
  if c == nil then
    return
  end
  self.closed = true
  C.mw_conn_fail(c, reason == "limit" and core.REASON.limit or core.REASON.error)
end

function methods:pause()
  local c = check_open(self)
  if c then
    self._paused = true
    C.mw_conn_pause(c)
  end
end

function methods:resume()
  local c = check_open(self)
  if c then
    self._paused = nil
    C.mw_conn_resume(c)
  end
end

local ipbuf = ffi.new("char[64]")
local portbuf = ffi.new("int[1]")

--- Returns the peer's address and port, or nil, "closed".
function methods:peer()
  local c = any_ptr(self)
  if c == nil then
    return nil, "closed"
  end
  if C.mw_conn_peer(c, ipbuf, 64, portbuf) ~= 0 then
    return nil, "no peer address"
  end
  return ffi_string(ipbuf), tonumber(portbuf[0])
end

--- Idle timeout in milliseconds (0 disables); re-armed by every read.
function methods:set_timeout(ms)
  if type(ms) ~= "number" or ms < 0 then
    error("bad argument #1 to 'set_timeout' (milliseconds expected)", 2)
  end
  local c = check_open(self)
  if c then
    C.mw_conn_set_timeout(c, ms)
  end
end

--- Bytes waiting in the write queue.
function methods:queued()
  local c = any_ptr(self)
  if c == nil then
    return 0
  end
  return tonumber(C.mw_conn_queued(c))
end

local mt = {
  __name = "moonwire.conn",
  __index = function(t, k)
    local m = methods[k]
    if m ~= nil then
      return m
    end
    if k == "state" then
      local s = {}
      rawset(t, "state", s)
      return s
    end
    return nil
  end,
  __tostring = function(t)
    return "moonwire.conn " .. tostring(t.id)
  end,
}

--- Called once per loop: the loop table every connection refers to.
function _M.set_loop(loop)
  methods.loop = loop
end

--- Messages sent are counted in the loop's statistics (mw_lua_stats_t).
function _M.set_counters(c)
  counters = c
end

--- Counts messages handled outside conn:send and framers (HTTP requests and responses,
-- WebSocket messages), for the loop's statistics.
function _M.count_in(n)
  counters.messages_in = counters.messages_in + n
end

function _M.count_out(n)
  counters.messages_out = counters.messages_out + n
end

--- addr: the C connection's address as a number.
function _M.new(addr, id)
  return setmetatable({ id = id, _c = addr }, mt)
end

_M.methods = methods
_M.mt = mt

return _M
