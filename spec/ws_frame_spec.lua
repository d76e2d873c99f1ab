-- Unit specs for moonwire.ws.frame: header decoding, unmasking, header encoding.
local ffi = require "ffi"
local frame = require "moonwire.ws.frame"
local U = require "fixtures.ws_util"

local function buf(s)
  local b = ffi.new("uint8_t[?]", #s + 1)
  ffi.copy(b, s, #s)
  return b
end

describe("moonwire.ws.frame #unit", function()
  describe("header()", function()
    it("decodes 7-, 16- and 64-bit lengths and the mask", function()
      for _, n in ipairs({ 0, 1, 125, 126, 127, 65535, 65536, 70000 }) do
        for _, bits in ipairs({ 7, 16, 64 }) do
          if not (bits == 7 and n > 125) and not (bits == 16 and n > 65535) then
            local s = U.frame({ op = 2, len = n, len_bits = bits, key = "\1\2\3\4" })
            local hl, len, mask = frame.header(buf(s), 0, #s)
            assert.equal(({ [7] = 2, [16] = 4, [64] = 10 })[bits] + 4, hl)
            assert.equal(n, len)
            assert.equal(0x04030201, mask)
          end
        end
      end
    end)

    it("needs the whole header, at every byte boundary", function()
      local s = U.frame({ op = 1, len = 70000, len_bits = 64 })
      for cut = 0, 13 do
        assert.is_nil(frame.header(buf(s), 0, cut), "cut " .. cut)
      end
      assert.equal(14, (frame.header(buf(s), 0, 14)))
    end)

    it("rejects a 64-bit length with the most significant bit set", function()
      local s = "\130\255\128\0\0\0\0\0\0\1" .. "\1\2\3\4"
      assert.is_false(frame.header(buf(s), 0, #s))
    end)

    it("decodes lengths above 2^32", function()
      local s = "\130\255\0\0\0\1\0\0\0\5" .. "\1\2\3\4"
      local _, len = frame.header(buf(s), 0, #s)
      assert.equal(2 ^ 32 + 5, len)
    end)

    it("reports mask 0 for unmasked frames", function()
      local s = U.frame({ op = 1, payload = "hi", masked = false })
      local hl, len, mask = frame.header(buf(s), 0, #s)
      assert.same({ 2, 2, 0 }, { hl, len, mask })
    end)
  end)

  describe("unmask()", function()
    local key = "\55\250\33\61"
    local mask = ffi.cast("const uint32_t *", key)[0]

    it("unmasks every length from 0 to 40 and reports ASCII", function()
      for n = 0, 40 do
        local plain = ("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"):sub(1, n)
        local masked = U.mask(plain, key)
        local dst = ffi.new("uint8_t[?]", n + 1)
        local ascii = frame.unmask(dst, 0, buf(masked), 0, n, mask)
        assert.equal(plain, ffi.string(dst, n))
        assert.is_true(ascii)
      end
    end)

    it("reports non-ASCII bytes in the word part and in the tail", function()
      for _, plain in ipairs({ "abcdefg\200", "abcdefgh\200", "\200bcdefghijk", "abcdefghijklmnop\255" }) do
        local dst = ffi.new("uint8_t[?]", #plain)
        assert.is_false(frame.unmask(dst, 0, buf(U.mask(plain, key)), 0, #plain, mask))
        assert.equal(plain, ffi.string(dst, #plain))
      end
    end)

    it("unmasks in chunks split at every offset using rotate()", function()
      local plain = ("The quick brown fox jumps over the lazy dog"):rep(3)
      local masked = U.mask(plain, key)
      for cut = 0, #plain do
        local dst = ffi.new("uint8_t[?]", #plain)
        local src = buf(masked)
        frame.unmask(dst, 0, src, 0, cut, mask)
        frame.unmask(dst, cut, src, cut, #plain - cut, frame.rotate(mask, cut % 4))
        assert.equal(plain, ffi.string(dst, #plain), "cut " .. cut)
      end
    end)

    it("matches a byte-wise reference for random masks, lengths and offsets (JIT on)", function()
      math.randomseed(6455)
      for _ = 1, 3000 do
        local k = string.char(math.random(0, 255), math.random(0, 255), math.random(0, 255), math.random(0, 255))
        local n = math.random(0, 70)
        local t = {}
        for i = 1, n do t[i] = string.char(math.random(0, 255)) end
        local plain = table.concat(t)
        local off = math.random(0, 3)
        -- Unmask starting at byte off of the mask, as a later chunk would.
        local shifted = k:sub(off + 1) .. k:sub(1, off)
        local m = frame.rotate(ffi.cast("const uint32_t *", k)[0], off)
        local dst = ffi.new("uint8_t[?]", n + 1)
        frame.unmask(dst, 0, buf(U.mask(plain, shifted)), 0, n, m)
        assert.equal(plain, ffi.string(dst, n))
      end
    end)

    it("allocates nothing when JIT-compiled", function()
      local src = ffi.cast("const uint8_t *", buf(("y"):rep(80)))
      local dst = ffi.new("uint8_t[80]")
      local function run(n) for _ = 1, n do frame.unmask(dst, 0, src, 3, 64, mask) end end
      run(20000)
      collectgarbage()
      collectgarbage("stop")
      local before = collectgarbage("count")
      run(20000)
      local after = collectgarbage("count")
      collectgarbage("restart")
      assert.is_true((after - before) * 1024 / 20000 < 1, "bytes per call: " .. (after - before) * 1024 / 20000)
    end)

    it("unmasks in place", function()
      local plain = "in place unmasking, twenty+ bytes"
      local b = buf(U.mask(plain, key))
      frame.unmask(b, 0, b, 0, #plain, mask)
      assert.equal(plain, ffi.string(b, #plain))
    end)

    it("is compiled by the JIT without aborts", function()
      -- Hot-path check (STYLE point 15): the unmask loop must not abort
      -- trace recording (an NYI would make every frame interpreted).
      -- Only traces that start in the frame module count: a finalizer of an earlier spec's
      -- objects may run (and record) inside the loop too.
      local jutil = require "jit.util"
      local aborts = {}
      local function on_trace(what, _, func, _, _, why)
        local src = jutil.funcinfo(func).source or ""
        if what == "abort" and src:find("ws/frame.lua", 1, true) then
          aborts[#aborts + 1] = tostring(why)
        end
      end
      jit.attach(on_trace, "trace")
      local src = buf(("x"):rep(256))
      local dst = ffi.new("uint8_t[256]")
      for _ = 1, 2000 do frame.unmask(dst, 0, src, 0, 256, mask) end
      jit.attach(on_trace)
      assert.same({}, aborts)
    end)
  end)

  describe("put_header()", function()
    it("writes 2-, 4- and 10-byte headers", function()
      for _, c in ipairs({ { 0, 2 }, { 125, 2 }, { 126, 4 }, { 65535, 4 }, { 65536, 10 }, { 2 ^ 32 + 1, 10 } }) do
        local b = ffi.new("uint8_t[10]")
        local hl = frame.put_header(b, 0x81, c[1])
        assert.equal(c[2], hl)
        assert.equal(c[2], frame.header_len(c[1]))
        local s = ffi.string(b, hl) .. "\0\0\0\0"
        -- header() wants a mask; feed it a masked copy of the same length.
        local m = s:sub(1, 1) .. string.char(s:byte(2) + 128) .. s:sub(3, hl) .. "\0\0\0\0"
        local _, len = frame.header(buf(m), 0, #m)
        assert.equal(c[1], len)
      end
    end)
  end)

  describe("valid_close_code()", function()
    it("accepts the codes a peer may send", function()
      local codes = { 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999 }
      for _, c in ipairs(codes) do
        assert.is_true(frame.valid_close_code(c), c)
      end
    end)
    it("rejects reserved and unassigned codes", function()
      for _, c in ipairs({ 0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535 }) do
        assert.is_false(frame.valid_close_code(c), c)
      end
    end)
  end)
end)
