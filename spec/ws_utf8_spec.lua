-- Unit specs for moonwire.ws.utf8: the incremental UTF-8 validator.
local ffi = require "ffi"
local utf8 = require "moonwire.ws.utf8"

local ACCEPT, REJECT = utf8.ACCEPT, utf8.REJECT

-- Feeds s in two pieces split at every position and returns the set of
-- outcomes ("valid", "invalid", "incomplete").
local function split_results(s)
  local seen = {}
  for cut = 0, #s do
    local a, b = s:sub(1, cut), s:sub(cut + 1)
    local st = utf8.feed(ACCEPT, a, 0, #a)
    if st ~= REJECT then st = utf8.feed(st, b, 0, #b) end
    seen[st == ACCEPT and "valid" or st == REJECT and "invalid" or "incomplete"] = true
  end
  return seen
end

local VALID = {
  { "empty", "" },
  { "ascii", "Hello, world" },
  { "long ascii (word loop)", ("0123456789abcdef"):rep(9) .. "xyz" },
  { "2-byte", "\xC2\x80\xDF\xBF" },
  { "3-byte", "\xE0\xA0\x80\xEF\xBF\xBF\xE2\x82\xAC" },
  { "last before surrogates", "\xED\x9F\xBF" },
  { "first after surrogates", "\xEE\x80\x80" },
  { "4-byte", "\xF0\x90\x80\x80\xF4\x8F\xBF\xBF" },
  { "Greek kosme (Autobahn 6.2)", "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5" },
  { "mixed after 8 ascii bytes", "abcdefgh\xCE\xBAabcdefgh\xF0\x9F\x98\x80" },
  { "U+FFFE and U+FFFF are valid", "\xEF\xBF\xBE\xEF\xBF\xBF" },
}

local INVALID = {
  { "lone continuation", "\x80" },
  { "continuation after ascii word", "abcdefgh\xBF" },
  { "overlong 2-byte", "\xC0\xAF" },
  { "overlong C1", "\xC1\xBF" },
  { "overlong 3-byte", "\xE0\x80\xAF" },
  { "overlong 3-byte (9F)", "\xE0\x9F\xBF" },
  { "overlong 4-byte", "\xF0\x80\x80\xAF" },
  { "overlong 4-byte (8F)", "\xF0\x8F\xBF\xBF" },
  { "high surrogate", "\xED\xA0\x80" },
  { "low surrogate", "\xED\xBF\xBF" },
  { "above U+10FFFF", "\xF4\x90\x80\x80" },
  { "F5 lead", "\xF5\x80\x80\x80" },
  { "FF byte", "\xFF" },
  { "FE byte", "\xFE" },
  { "truncated then ascii", "\xE2\x82a" },
  { "Autobahn 6.3.1", "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5\xED\xA0\x80\x65\x64\x69\x74\x65\x64" },
}

describe("moonwire.ws.utf8 #unit", function()
  for _, c in ipairs(VALID) do
    it("accepts " .. c[1] .. " at every split", function()
      assert.is_true(utf8.valid(c[2]))
      assert.same({ valid = true }, split_results(c[2]))
    end)
  end

  for _, c in ipairs(INVALID) do
    it("rejects " .. c[1] .. " at every split", function()
      assert.is_false(utf8.valid(c[2]))
      assert.same({ invalid = true }, split_results(c[2]))
    end)
  end

  it("reports an incomplete sequence at the end of a chunk", function()
    for _, s in ipairs({ "\xC3", "\xE2\x82", "\xF0\x9F\x98", "abc\xE0" }) do
      local st = utf8.feed(ACCEPT, s, 0, #s)
      assert.are_not.equal(ACCEPT, st)
      assert.are_not.equal(REJECT, st)
    end
  end)

  it("rejects at the first impossible byte (fail fast)", function()
    -- The validator must not need the rest of the sequence to say no.
    assert.equal(REJECT, utf8.feed(ACCEPT, "\xED\xA0", 0, 2))
    assert.equal(REJECT, utf8.feed(ACCEPT, "\xF4\x90", 0, 2))
    assert.equal(REJECT, utf8.feed(ACCEPT, "\xE0\x80", 0, 2))
    assert.equal(REJECT, utf8.feed(ACCEPT, "\xC0", 0, 1))
  end)

  it("validates at an offset into a buffer", function()
    local s = "xx\xE2\x82\xACyy\xC0"
    assert.equal(ACCEPT, utf8.feed(ACCEPT, s, 2, 4))
    assert.equal(REJECT, utf8.feed(ACCEPT, s, 2, 6))
    assert.equal(ACCEPT, utf8.feed(ACCEPT, s, 0, 7))
    local long = ("abcdefgh"):rep(3) .. "\xFF" .. ("abcdefgh"):rep(3)
    assert.equal(ACCEPT, utf8.feed(ACCEPT, long, 25, 24))
    assert.equal(REJECT, utf8.feed(ACCEPT, long, 1, 24))
  end)

  it("allocates nothing when JIT-compiled", function()
    local b = ffi.new("uint8_t[64]")
    ffi.copy(b, ("\xCE\xBAabcdef"):rep(8), 64)
    local function run(n) for _ = 1, n do utf8.feed(ACCEPT, b, 0, 64) end end
    run(20000)
    collectgarbage()
    collectgarbage("stop")
    local before = collectgarbage("count")
    run(20000)
    local after = collectgarbage("count")
    collectgarbage("restart")
    assert.is_true((after - before) * 1024 / 20000 < 1, "bytes per call: " .. (after - before) * 1024 / 20000)
  end)

  it("works on FFI buffers and is sticky once rejected", function()
    local buf = ffi.new("uint8_t[4]", { 0xE2, 0x82, 0xAC, 0x41 })
    assert.equal(ACCEPT, utf8.feed(ACCEPT, buf, 0, 4))
    assert.equal(REJECT, utf8.feed(REJECT, buf, 0, 4))
  end)

  it("agrees with a reference decoder on every 1-, 2- and 3-byte sequence prefix", function()
    -- A slow, obviously correct decoder checks the DFA on all sequences
    -- that start with each lead byte and continue with interesting bytes.
    local function ref(s)
      local i, n = 1, #s
      while i <= n do
        local c = s:byte(i)
        local need, min, cp
        if c < 0x80 then need, cp, min = 0, c, 0
        elseif c >= 0xC2 and c <= 0xDF then need, cp, min = 1, c - 0xC0, 0x80
        elseif c >= 0xE0 and c <= 0xEF then need, cp, min = 2, c - 0xE0, 0x800
        elseif c >= 0xF0 and c <= 0xF4 then need, cp, min = 3, c - 0xF0, 0x10000
        else return false end
        if i + need > n then return false end
        for k = 1, need do
          local d = s:byte(i + k)
          if d < 0x80 or d > 0xBF then return false end
          cp = cp * 64 + (d - 0x80)
        end
        if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return false end
        i = i + need + 1
      end
      return true
    end
    local probes = { 0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xE0, 0xED, 0xF0, 0xF4, 0xFF }
    for lead = 0, 255 do
      for _, b in ipairs(probes) do
        for _, c in ipairs(probes) do
          for _, d in ipairs({ 0x80, 0xBF, 0x41 }) do
            local s = string.char(lead, b, c, d)
            assert.equal(ref(s), utf8.valid(s), ("%02X %02X %02X %02X"):format(lead, b, c, d))
          end
        end
      end
    end
  end)
end)
