-- moonwire.ws.utf8: incremental UTF-8 validation over FFI buffers.
--
-- A table-driven DFA (one byte-class lookup and one transition lookup per
-- byte) so a text message can be validated fragment by fragment as its
-- bytes arrive: the state returned for one chunk is passed in with the
-- next.  The tables are built below from the UTF-8 grammar of RFC 3629
-- section 4 rather than written out by hand, so a reader can check them
-- against the RFC.  Overlong forms, surrogates (U+D800..U+DFFF) and code
-- points above U+10FFFF are rejected at the first byte that makes the
-- sequence impossible, which is what RFC 6455 section 8.1 ("fail fast")
-- and the Autobahn 6.x cases expect.

local ffi = require "ffi"
local bit = require "bit"

local band = bit.band
local cast = ffi.cast

local _M = { _VERSION = "0.1" }

-- Byte classes.
local C_ASCII, C_80_8F, C_90_9F, C_A0_BF, C_BAD, C_LEAD2, C_E0, C_LEAD3,
      C_ED, C_F0, C_LEAD4, C_F4 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
local NCLASS = 12

-- States; ACCEPT means "between characters".  Every other state except
-- REJECT means "inside a multi-byte sequence" and records which
-- continuation bytes are still allowed.
local S_ACCEPT, S_REJECT = 0, 1
local S_NEED1, S_NEED2, S_NEED3 = 2, 3, 4   -- any 80..BF continuation(s)
local S_E0, S_ED, S_F0, S_F4 = 5, 6, 7, 8  -- restricted second byte
local NSTATE = 9

-- The DFA works on premultiplied states (state * NCLASS) so one step is
-- trans[state + class[byte]].
_M.ACCEPT = S_ACCEPT * NCLASS
_M.REJECT = S_REJECT * NCLASS

local class = ffi.new("uint8_t[256]")
local trans = ffi.new("uint8_t[?]", NSTATE * NCLASS)

do
  local function range(a, b, c)
    for i = a, b do class[i] = c end
  end
  range(0x00, 0x7F, C_ASCII)
  range(0x80, 0x8F, C_80_8F)
  range(0x90, 0x9F, C_90_9F)
  range(0xA0, 0xBF, C_A0_BF)
  range(0xC0, 0xC1, C_BAD)    -- would only encode overlong ASCII
  range(0xC2, 0xDF, C_LEAD2)
  range(0xE0, 0xE0, C_E0)     -- E0 must be followed by A0..BF (no overlongs)
  range(0xE1, 0xEC, C_LEAD3)
  range(0xED, 0xED, C_ED)     -- ED must be followed by 80..9F (no surrogates)
  range(0xEE, 0xEF, C_LEAD3)
  range(0xF0, 0xF0, C_F0)     -- F0 must be followed by 90..BF (no overlongs)
  range(0xF1, 0xF3, C_LEAD4)
  range(0xF4, 0xF4, C_F4)     -- F4 must be followed by 80..8F (<= U+10FFFF)
  range(0xF5, 0xFF, C_BAD)

  local function set(s, c, to) trans[s * NCLASS + c] = to * NCLASS end
  for s = 0, NSTATE - 1 do
    for c = 0, NCLASS - 1 do set(s, c, S_REJECT) end
  end
  -- Between characters: a byte starts a new character.
  set(S_ACCEPT, C_ASCII, S_ACCEPT)
  set(S_ACCEPT, C_LEAD2, S_NEED1)
  set(S_ACCEPT, C_E0, S_E0)
  set(S_ACCEPT, C_LEAD3, S_NEED2)
  set(S_ACCEPT, C_ED, S_ED)
  set(S_ACCEPT, C_F0, S_F0)
  set(S_ACCEPT, C_LEAD4, S_NEED3)
  set(S_ACCEPT, C_F4, S_F4)
  -- Inside a sequence: only continuation bytes of the allowed range.
  local conts = { C_80_8F, C_90_9F, C_A0_BF }
  for _, c in ipairs(conts) do
    set(S_NEED1, c, S_ACCEPT)
    set(S_NEED2, c, S_NEED1)
    set(S_NEED3, c, S_NEED2)
  end
  set(S_E0, C_A0_BF, S_NEED1)
  set(S_ED, C_80_8F, S_NEED1)
  set(S_ED, C_90_9F, S_NEED1)
  set(S_F0, C_90_9F, S_NEED2)
  set(S_F0, C_A0_BF, S_NEED2)
  set(S_F4, C_80_8F, S_NEED2)
  -- REJECT is absorbing: every transition out of it was set to REJECT.
end

local ACCEPT, REJECT = _M.ACCEPT, _M.REJECT
local cu8p = ffi.typeof("const uint8_t *")
local cu64p = ffi.typeof("const uint64_t *")
local HIGH = 0x8080808080808080ULL

--- Feeds the len bytes at ptr + off to the validator in state and returns
-- the new state: ACCEPT (complete characters only), REJECT (invalid,
-- sticky), or another value (a character continues in the next chunk).
-- ptr is a pointer cdata or a Lua string; the bytes are not modified.
-- The base pointer and offset are passed separately, and the casts are
-- done inside the loops, so that a JIT-compiled caller hands the loop's
-- trace only numbers and an existing cdata: nothing is allocated.
local function feed(state, ptr, off, len)
  local i = 0
  if state == ACCEPT then
    -- Skip whole 8-byte words of ASCII; most text is ASCII.
    local nw = (len - len % 8) / 8
    while i < nw and band(cast(cu64p, cast(cu8p, ptr) + off)[i], HIGH) == 0ULL do i = i + 1 end
    i = i * 8
  end
  for j = off + i, off + len - 1 do
    state = trans[state + class[cast(cu8p, ptr)[j]]]
    if state == REJECT then return REJECT end
  end
  return state
end
_M.feed = feed

--- True if the Lua string s is entirely valid UTF-8.
function _M.valid(s)
  return feed(ACCEPT, s, 0, #s) == ACCEPT
end

return _M
