-- Framers: turn the byte stream into messages (decode) and messages into bytes (encode).
--
-- A framer is a table with
--   decode(self, buf, len) -> msg, used     a whole message and the bytes it took
--                          -> nil, 0        not enough bytes yet
--                          -> nil, -1, err  the stream is bad (over max, malformed): close
--   encode(self, msg)      -> bytes         used by conn:send
--   write(self, conn, msg) (optional)       conn:send's fast path, writing without concatenating
-- buf is a `const uint8_t *` into the connection's input buffer, valid only during the call.
-- Any table with these methods is a framer: see docs/handlers.md for a custom one.
local ffi = require "ffi"
local bit = require "bit"

local C = ffi.C
local ffi_string = ffi.string
local cast = ffi.cast
local type = type
local error = error
local tostring = tostring
local setmetatable = setmetatable
local band, rshift, lshift, bor = bit.band, bit.rshift, bit.lshift, bit.bor
local char = string.char

ffi.cdef [[
void *memchr(const void *s, int c, size_t n);
]]

local _M = { _VERSION = "0.1.0" }

local charp = ffi.typeof("const char *")

-- ---- raw: every read is a message --------------------------------------------------------

local raw_mt = { __name = "moonwire.frame.raw" }
raw_mt.__index = raw_mt

function raw_mt:decode(buf, len)
  if len == 0 then
    return nil, 0
  end
  return ffi_string(buf, len), len
end

function raw_mt:encode(msg)
  return msg
end

function _M.raw()
  return setmetatable({}, raw_mt)
end

-- ---- lines: "\n"-terminated, an optional "\r" before it is dropped ------------------------

local lines_mt = { __name = "moonwire.frame.lines" }
lines_mt.__index = lines_mt

function lines_mt:decode(buf, len)
  local max = self.max
  local scan = len
  if scan > max + 2 then
    scan = max + 2 -- a line of max bytes plus "\r\n"
  end
  local nl = C.memchr(buf, 10, scan)
  if nl == nil then
    if len > max + 1 then
      return nil, -1, "line longer than " .. max .. " bytes"
    end
    return nil, 0
  end
  local n = cast(charp, nl) - cast(charp, buf)
  local used = n + 1
  if n > 0 and buf[n - 1] == 13 then
    n = n - 1
  end
  if n > max then
    return nil, -1, "line longer than " .. max .. " bytes"
  end
  return ffi_string(buf, n), used
end

function lines_mt:encode(msg)
  return msg .. self.eol
end

function lines_mt:write(conn, msg)
  local ok, err = conn:write(msg)
  if ok == nil then
    return nil, err
  end
  return conn:write(self.eol)
end

--- lines{ max = 64 KiB by default, eol = "\n" by default }
function _M.lines(opts)
  opts = opts or {}
  local max = opts.max or 65536
  if type(max) ~= "number" or max < 1 then
    error("bad argument to 'lines' (max must be a positive number)", 2)
  end
  return setmetatable({ max = max, eol = opts.eol or "\n" }, lines_mt)
end

-- ---- length_prefixed: a big-endian unsigned length, then the payload ----------------------

local lp_mt = { __name = "moonwire.frame.length_prefixed" }
lp_mt.__index = lp_mt

function lp_mt:decode(buf, len)
  local hb = self.bytes
  if len < hb then
    return nil, 0
  end
  local size
  if hb == 1 then
    size = buf[0]
  elseif hb == 2 then
    size = bor(lshift(buf[0], 8), buf[1])
  else
    -- 4 bytes: avoid the sign bit of bit.* by combining in doubles.
    size = buf[0] * 16777216 + bor(lshift(buf[1], 16), lshift(buf[2], 8), buf[3])
  end
  if size > self.max then
    return nil, -1, "frame of " .. tostring(size) .. " bytes over max " .. self.max
  end
  local total = hb + size
  if len < total then
    return nil, 0
  end
  return ffi_string(buf + hb, size), total
end

local function header(hb, n)
  if hb == 1 then
    return char(n)
  elseif hb == 2 then
    return char(rshift(n, 8), band(n, 255))
  end
  return char(band(rshift(n, 24), 255), band(rshift(n, 16), 255), band(rshift(n, 8), 255),
    band(n, 255))
end

function lp_mt:encode(msg)
  local n = #msg
  if n > self.max then
    return nil, "message of " .. n .. " bytes over max " .. self.max
  end
  return header(self.bytes, n) .. msg
end

function lp_mt:write(conn, msg)
  local n = #msg
  if n > self.max then
    return nil, "message of " .. n .. " bytes over max " .. self.max
  end
  local ok, err = conn:write(header(self.bytes, n))
  if ok == nil then
    return nil, err
  end
  return conn:write(msg)
end

--- length_prefixed{ bytes = 1|2|4 (default 4), max = 1 MiB by default (capped by the width) }
function _M.length_prefixed(opts)
  opts = opts or {}
  local hb = opts.bytes or 4
  if hb ~= 1 and hb ~= 2 and hb ~= 4 then
    error("bad argument to 'length_prefixed' (bytes must be 1, 2 or 4)", 2)
  end
  local limit = hb == 1 and 255 or hb == 2 and 65535 or 4294967295
  local max = opts.max or 1048576
  if type(max) ~= "number" or max < 0 then
    error("bad argument to 'length_prefixed' (max must be a number)", 2)
  end
  if max > limit then
    max = limit
  end
  return setmetatable({ bytes = hb, max = max }, lp_mt)
end

return _M
