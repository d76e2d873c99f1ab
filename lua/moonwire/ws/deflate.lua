-- moonwire.ws.deflate: permessage-deflate (RFC 7692) over zlib via the FFI.
--
-- A message is compressed with raw deflate (negative window bits), flushed
-- with Z_SYNC_FLUSH, and sent without the trailing 00 00 FF FF; the
-- receiver appends those four bytes before inflating (section 7.2).
--
-- Memory per connection is bounded by the negotiated parameters: zlib's
-- deflate state takes 2^(wbits+2) + 2^(mem_level+9) bytes and inflate
-- about 2^wbits + 7 KiB.  Each stream is created the first time it is
-- needed (a connection that never sends a compressed message never pays
-- for a deflater), inflated output is produced into the message buffer in
-- chunks and stops at the message size limit (a "zip bomb" costs at most
-- max_message bytes), and both streams are freed when the connection
-- closes.

local ffi = require "ffi"

local tonumber = tonumber

local _M = { _VERSION = "0.1" }

ffi.cdef [[
typedef struct mw_z_stream_s {
  const uint8_t *next_in;
  unsigned int avail_in;
  unsigned long total_in;
  uint8_t *next_out;
  unsigned int avail_out;
  unsigned long total_out;
  const char *msg;
  void *state;
  void *zalloc;
  void *zfree;
  void *opaque;
  int data_type;
  unsigned long adler;
  unsigned long reserved;
} mw_z_stream;
const char *zlibVersion(void);
int deflateInit2_(mw_z_stream *strm, int level, int method, int windowBits, int memLevel,
                  int strategy, const char *version, int stream_size);
int deflate(mw_z_stream *strm, int flush);
int deflateReset(mw_z_stream *strm);
int deflateEnd(mw_z_stream *strm);
int inflateInit2_(mw_z_stream *strm, int windowBits, const char *version, int stream_size);
int inflate(mw_z_stream *strm, int flush);
int inflateReset(mw_z_stream *strm);
int inflateEnd(mw_z_stream *strm);
]]

local z = ffi.load("z")
local Z_OK, Z_STREAM_END, Z_BUF_ERROR = 0, 1, -5
local Z_SYNC_FLUSH = 2
local Z_DEFLATED, Z_DEFAULT_STRATEGY = 8, 0
local VERSION = z.zlibVersion()
local STREAM_SIZE = ffi.sizeof("mw_z_stream")
local TAIL = "\0\0\255\255"
local CHUNK = 16384

local stream_t = ffi.typeof("mw_z_stream")

-- Defaults for the server's side of the negotiation; every field can be
-- overridden with opts.deflate = { ... } on the route.
_M.defaults = {
  level = -1,                        -- zlib's default (6)
  mem_level = 8,
  server_max_window_bits = 15,       -- our compressor's window (9..15)
  client_max_window_bits = 15,       -- asked of the client if it allows it
  server_no_context_takeover = false,
  client_no_context_takeover = false,
  threshold = 32,                    -- smaller messages are sent uncompressed
}

local function conf_get(conf, k)
  local v = conf and conf[k]
  if v == nil then v = _M.defaults[k] end
  return v
end

local function bits(v)
  if v == true then return true end
  local n = tonumber(v)
  if not n or n ~= math.floor(n) or n < 8 or n > 15 or not v:match("^%d+$") then return nil end
  return n
end

-- Agreed parameter sets are shared by every connection that negotiated
-- the same thing with the same route configuration, so a connection holds
-- a reference instead of its own table.
local shared = setmetatable({}, { __mode = "k" })
local DEFAULT_CONF = {}
local function intern(agreed, conf)
  local byconf = shared[conf or DEFAULT_CONF]
  if not byconf then
    byconf = setmetatable({}, { __mode = "v" })
    shared[conf or DEFAULT_CONF] = byconf
  end
  local key = agreed.response .. "|" .. agreed.server_bits .. "|" .. agreed.client_bits
  local have = byconf[key]
  if have then return have end
  -- Only what the codec needs is kept.
  local a = {
    response = agreed.response, server_bits = agreed.server_bits, client_bits = agreed.client_bits,
    server_no_context_takeover = agreed.server_no_context_takeover,
    client_no_context_takeover = agreed.client_no_context_takeover,
    level = agreed.level, mem_level = agreed.mem_level, threshold = agreed.threshold,
  }
  byconf[key] = a
  return a
end

--- Chooses a response to the client's permessage-deflate offers
-- (section 5 of RFC 7692).  offers is the list from
-- handshake.extensions(); conf is the route's opts.deflate table (or nil).
-- Returns the Sec-WebSocket-Extensions response value and the agreed
-- parameters, or nil when no offer is acceptable.
function _M.negotiate(offers, conf)
  for _, offer in ipairs(offers) do
    if offer.name == "permessage-deflate" then
      local p, ok = offer.params, true
      local agreed = {
        server_no_context_takeover = conf_get(conf, "server_no_context_takeover"),
        client_no_context_takeover = conf_get(conf, "client_no_context_takeover"),
        server_bits = conf_get(conf, "server_max_window_bits"),
        client_bits = 15,
      }
      for k, v in pairs(p) do
        if k == "server_no_context_takeover" or k == "client_no_context_takeover" then
          if v ~= true then ok = false end
          agreed[k] = true
        elseif k == "server_max_window_bits" then
          local n = bits(v)
          -- zlib cannot produce a raw deflate stream with a 256-byte
          -- window, so an offer that insists on 8 is declined.
          if not n or n == true or n == 8 then ok = false
          elseif n < agreed.server_bits then agreed.server_bits = n end
          agreed.server_bits_sent = true
        elseif k == "client_max_window_bits" then
          local n = bits(v)
          if not n then ok = false end
          agreed.client_may_limit = true
          if n ~= true then agreed.client_offer_bits = n end
        else
          ok = false -- an unknown parameter makes the offer unacceptable
        end
      end
      if ok then
        local resp = { "permessage-deflate" }
        if agreed.server_no_context_takeover then resp[#resp + 1] = "server_no_context_takeover" end
        if agreed.client_no_context_takeover then resp[#resp + 1] = "client_no_context_takeover" end
        if agreed.server_bits_sent or agreed.server_bits < 15 then
          resp[#resp + 1] = "server_max_window_bits=" .. agreed.server_bits
        end
        if agreed.client_may_limit then
          local want = conf_get(conf, "client_max_window_bits")
          if agreed.client_offer_bits and agreed.client_offer_bits < want then want = agreed.client_offer_bits end
          if want < 15 or agreed.client_offer_bits then
            resp[#resp + 1] = "client_max_window_bits=" .. want
          end
          agreed.client_bits = want
        end
        agreed.level = conf_get(conf, "level")
        agreed.mem_level = conf_get(conf, "mem_level")
        agreed.threshold = conf_get(conf, "threshold")
        agreed.response = table.concat(resp, "; ")
        return agreed.response, intern(agreed, conf)
      end
    end
  end
  return nil
end

--- Bytes of zlib memory one connection may hold with the agreed params.
function _M.memory(agreed)
  return 2 ^ (agreed.server_bits + 2) + 2 ^ (agreed.mem_level + 9) + 2 ^ agreed.client_bits + 7168
end

local ctx_mt = { __index = {}, __name = "moonwire.ws.deflate" }
local ctx = ctx_mt.__index

--- A per-connection compression context for the agreed parameters.
function _M.new(agreed)
  return setmetatable({ agreed = agreed }, ctx_mt)
end

local function end_deflate(s) z.deflateEnd(s) end
local function end_inflate(s) z.inflateEnd(s) end

local function deflater(self)
  local s = self.d
  if s then return s end
  s = stream_t()
  local a = self.agreed
  -- The compressor's window must not exceed what the client allowed.
  local rc = z.deflateInit2_(s, a.level, Z_DEFLATED, -a.server_bits, a.mem_level,
    Z_DEFAULT_STRATEGY, VERSION, STREAM_SIZE)
  if rc ~= Z_OK then return nil, "deflateInit2 failed: " .. rc end
  self.d = ffi.gc(s, end_deflate)
  return s
end

local function inflater(self)
  local s = self.i
  if s then return s end
  s = stream_t()
  -- A window of the size we told the client to use; zlib needs at least
  -- that much, more only costs memory.
  local rc = z.inflateInit2_(s, -self.agreed.client_bits, VERSION, STREAM_SIZE)
  if rc ~= Z_OK then return nil, "inflateInit2 failed: " .. rc end
  self.i = ffi.gc(s, end_inflate)
  return s
end

--- Compresses len bytes at ptr into the string.buffer out (appended) and
-- returns the compressed length, or nil, err.  The buffer may hold four
-- more bytes after those (the sync-flush marker, which permessage-deflate
-- leaves out): callers send exactly the returned length.
function ctx:compress(ptr, len, out)
  if len == 0 then
    -- zlib emits nothing for an empty sync flush right after another
    -- one; an empty message is a single 0x00 (RFC 7692 section 7.2.3.6).
    out:put("\0")
    return 1
  end
  local s, err = deflater(self)
  if not s then return nil, err end
  s.next_in, s.avail_in = ptr, len
  local start = #out
  repeat
    local p, room = out:reserve(len + 64 > CHUNK and CHUNK or len + 64)
    s.next_out, s.avail_out = p, room
    local rc = z.deflate(s, Z_SYNC_FLUSH)
    if rc ~= Z_OK and rc ~= Z_BUF_ERROR then return nil, "deflate failed: " .. rc end
    out:commit(room - s.avail_out)
  until s.avail_in == 0 and s.avail_out ~= 0
  local n = #out - start
  -- Leave out the empty stored block Z_SYNC_FLUSH ends with (00 00 FF FF).
  if n >= 4 then
    local e = out:ref() + start + n - 4
    if e[0] == 0 and e[1] == 0 and e[2] == 0xFF and e[3] == 0xFF then n = n - 4 end
  end
  if self.agreed.server_no_context_takeover then z.deflateReset(s) end
  return n
end

--- Inflates len compressed bytes at ptr, appending the output to the
-- string.buffer out.  fin marks the message's last fragment (the sync
-- tail is added then).  Fails with nil, "too big" when out would grow past
-- limit bytes, or nil, "corrupt" on bad data.
function ctx:decompress(ptr, len, fin, out, limit)
  local s, err = inflater(self)
  if not s then return nil, err end
  local nin = (self.nin or 0) + len
  self.nin = not fin and nin or nil
  -- A peer may send an empty message as no bytes at all; the sync tail
  -- alone would not be valid deflate data.
  if fin and nin == 0 then return true end
  for pass = 1, fin and 2 or 1 do
    if pass == 2 then ptr, len = TAIL, 4 end
    s.next_in, s.avail_in = ptr, len
    while true do
      local p, room = out:reserve(CHUNK)
      -- Never produce more than one byte past the limit.
      local cap = limit + 1 - #out
      if room > cap then room = cap end
      s.next_out, s.avail_out = p, room
      local rc = z.inflate(s, Z_SYNC_FLUSH)
      local produced = room - s.avail_out
      out:commit(produced)
      if #out > limit then return nil, "too big" end
      if rc == Z_STREAM_END then
        -- A final deflate block inside a message: legal, the next message
        -- starts a new stream.
        z.inflateReset(s)
        if s.avail_in == 0 then break end
      elseif rc == Z_BUF_ERROR then
        break -- no progress possible: input consumed, output drained
      elseif rc ~= Z_OK then
        return nil, "corrupt"
      elseif s.avail_in == 0 and s.avail_out ~= 0 then
        break
      end
    end
  end
  if fin and self.agreed.client_no_context_takeover then z.inflateReset(s) end
  return true
end

--- Frees both zlib streams now (they are also freed by the GC).
function ctx:free()
  if self.d then z.deflateEnd(ffi.gc(self.d, nil)); self.d = nil end
  if self.i then z.inflateEnd(ffi.gc(self.i, nil)); self.i = nil end
end

return _M
