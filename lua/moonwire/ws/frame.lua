-- moonwire.ws.frame: RFC 6455 section 5.2 framing primitives.
--
-- Everything here works on FFI pointers and returns plain numbers so the
-- parser in moonwire.ws allocates nothing per frame.  The functions are
-- small on purpose: LuaJIT inlines them into the caller's trace.

local ffi = require "ffi"
local bit = require "bit"
local core = require "moonwire.core"

local band, bxor, rshift, ror = bit.band, bit.bxor, bit.rshift, bit.ror
local cast = ffi.cast

local _M = { _VERSION = "0.1" }

-- Opcodes (section 5.2) and the close codes this module sends.
_M.CONT, _M.TEXT, _M.BINARY = 0x0, 0x1, 0x2
_M.CLOSE, _M.PING, _M.PONG = 0x8, 0x9, 0xA

local u8p = ffi.typeof("uint8_t *")
local cu8p = ffi.typeof("const uint8_t *")
local u64p = ffi.typeof("uint64_t *")
local cu64p = ffi.typeof("const uint64_t *")
local cu32p = ffi.typeof("const uint32_t *")
local u64 = ffi.typeof("uint64_t")
local u32 = ffi.typeof("uint32_t")
local HIGH = 0x8080808080808080ULL

--- Decodes the payload length and mask of the frame header at p + pos,
-- of which avail bytes are present.  Returns header_length,
-- payload_length, mask, or nil when the header is incomplete, or false
-- when the 64-bit length has its most significant bit set (section 5.2
-- forbids it).  mask is the four mask bytes read as a little-endian
-- uint32 (a Lua number), 0 for unmasked frames.  Lengths above 2^53 lose
-- precision as Lua numbers but stay far above any message size limit,
-- which is all the caller needs to know about them.
function _M.header(p, pos, avail)
  if avail < 2 then return nil end
  local b1 = p[pos + 1]
  local len = band(b1, 0x7F)
  local hl = 2
  if len == 126 then
    if avail < 4 then return nil end
    len = p[pos + 2] * 256 + p[pos + 3]
    hl = 4
  elseif len == 127 then
    if avail < 10 then return nil end
    if p[pos + 2] >= 0x80 then return false end
    len = ((p[pos + 2] * 256 + p[pos + 3]) * 256 + p[pos + 4]) * 256 + p[pos + 5]
    len = len * 4294967296 + (((p[pos + 6] * 256 + p[pos + 7]) * 256 + p[pos + 8]) * 256 + p[pos + 9])
    hl = 10
  end
  local mask = 0
  if b1 >= 0x80 then
    if avail < hl + 4 then return nil end
    mask = cast(cu32p, cast(cu8p, p) + pos + hl)[0]
    hl = hl + 4
  end
  return hl, len, mask
end

--- Rotates a little-endian mask word so that it starts at byte off (0..3)
-- of the mask: used when a payload is unmasked in several chunks.
local function rotate(mask, off)
  if off == 0 then return mask end
  return ror(mask, off * 8)
end
_M.rotate = rotate

--- Copies n bytes from src + soff to dst + doff XOR-ing them with mask (a
-- little-endian uint32 as returned by header(), already rotated to the
-- chunk's offset), 8 bytes at a time.  src and dst may be the same buffer.
-- Returns true when every unmasked byte is ASCII (< 0x80), which lets text
-- messages skip UTF-8 validation.
-- Pointers and offsets are passed separately and every cast happens
-- inside the loops: the loop's trace then receives only numbers and
-- cdata that already exist, so a JIT-compiled unmask allocates nothing.
function _M.unmask(dst, doff, src, soff, n, mask)
  local nw = (n - n % 8) / 8
  local ascii = true
  for i = 0, nw - 1 do
    -- The mask repeated in both halves of a 64-bit word.
    local m64 = cast(u64, cast(u32, mask)) * 0x100000001ULL
    local v = bxor(cast(cu64p, cast(cu8p, src) + soff)[i], m64)
    cast(u64p, cast(u8p, dst) + doff)[i] = v
    if band(v, HIGH) ~= 0ULL then ascii = false end
  end
  local m = mask
  for i = nw * 8, n - 1 do
    local v = bxor(cast(cu8p, src)[soff + i], band(m, 0xFF))
    cast(u8p, dst)[doff + i] = v
    if v >= 0x80 then ascii = false end
    m = ror(m, 8)
  end
  return ascii
end

-- Inside the runtime the same work is one FFI call (runtime/bytes.c): the JIT compiles it
-- into the caller's trace, where a Lua loop here would end that trace and leave the rest of
-- the frame's handling to the interpreter. The Lua version above serves plain luajit (the
-- unit specs) and is the reference the integration specs hold the C one to.
_M.unmask_lua = _M.unmask
if core.in_runtime then
  local C_unmask = core.C.mw_unmask
  function _M.unmask(dst, doff, src, soff, n, mask)
    return C_unmask(cast(u8p, dst) + doff, cast(cu8p, src) + soff, n, mask) ~= 0
  end
end

--- Writes a server frame header (never masked) at p and returns its
-- length (2, 4 or 10 bytes).  b0 is the first byte (FIN, RSV, opcode).
function _M.put_header(p, b0, len)
  p[0] = b0
  if len < 126 then
    p[1] = len
    return 2
  elseif len < 65536 then
    p[1] = 126
    p[2] = rshift(len, 8)
    p[3] = band(len, 0xFF)
    return 4
  end
  p[1] = 127
  local hi = (len - len % 4294967296) / 4294967296
  local lo = len % 4294967296
  p[2] = band(rshift(hi, 24), 0xFF)
  p[3] = band(rshift(hi, 16), 0xFF)
  p[4] = band(rshift(hi, 8), 0xFF)
  p[5] = band(hi, 0xFF)
  p[6] = band(rshift(lo, 24), 0xFF)
  p[7] = band(rshift(lo, 16), 0xFF)
  p[8] = band(rshift(lo, 8), 0xFF)
  p[9] = band(lo, 0xFF)
  return 10
end

--- Length of the header put_header() writes for a payload of len bytes.
function _M.header_len(len)
  if len < 126 then return 2 elseif len < 65536 then return 4 end
  return 10
end

--- True if code may appear in a Close frame received from a peer
-- (section 7.4: 1004-1006 and 1015 are reserved and must never be sent;
-- 1012-1014 are registered with IANA; 3000-4999 are for libraries and
-- applications; everything else is invalid).
function _M.valid_close_code(code)
  if code >= 3000 then return code <= 4999 end
  return code >= 1000 and code <= 1014 and code ~= 1004 and code ~= 1005 and code ~= 1006
end

return _M
