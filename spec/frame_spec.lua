-- Framers, fed every input split at every byte boundary.
local ffi = require "ffi"
local frame = require "moonwire.frame"

-- Feeds `chunks` to a framer the way the runtime does: unconsumed bytes stay in front of the
-- next chunk. Returns the messages, and the error if the framer rejected the stream.
local function feed(f, chunks)
  local pending = ""
  local out = {}
  for _, chunk in ipairs(chunks) do
    pending = pending .. chunk
    local buf = ffi.new("uint8_t[?]", #pending + 1)
    ffi.copy(buf, pending, #pending)
    local p = ffi.cast("const uint8_t *", buf)
    local off = 0
    while off < #pending do
      local msg, used, err = f:decode(p + off, #pending - off)
      if msg == nil then
        if used < 0 then
          return out, err
        end
        break
      end
      assert.is_true(used > 0)
      out[#out + 1] = msg
      off = off + used
    end
    pending = pending:sub(off + 1)
  end
  return out, nil, pending
end

local function splits(s)
  local all = { { s } }
  for i = 1, #s - 1 do
    all[#all + 1] = { s:sub(1, i), s:sub(i + 1) }
  end
  -- and byte by byte
  local bytes = {}
  for i = 1, #s do
    bytes[i] = s:sub(i, i)
  end
  all[#all + 1] = bytes
  return all
end

describe("moonwire.frame #unit", function()
  describe("lines", function()
    local cases = {
      { "one\n", { "one" } },
      { "a\nbb\r\nccc\n", { "a", "bb", "ccc" } },
      { "\n\n", { "", "" } },
      { "partial\nrest", { "partial" }, "rest" },
      { "crlf\r\n\r\n", { "crlf", "" } },
    }
    for _, case in ipairs(cases) do
      it("decodes " .. string.format("%q", case[1]) .. " at every split", function()
        for _, chunks in ipairs(splits(case[1])) do
          local msgs, err, rest = feed(frame.lines(), chunks)
          assert.is_nil(err)
          assert.same(case[2], msgs)
          assert.equal(case[3] or "", rest)
        end
      end)
    end

    it("rejects a line over max, wherever the stream is split", function()
      local s = string.rep("x", 11) .. "\n"
      for _, chunks in ipairs(splits(s)) do
        local msgs, err = feed(frame.lines { max = 10 }, chunks)
        assert.same({}, msgs)
        assert.matches("longer than 10", err)
      end
    end)

    it("accepts a line of exactly max bytes, with or without \\r", function()
      for _, s in ipairs { string.rep("y", 10) .. "\n", string.rep("y", 10) .. "\r\n" } do
        for _, chunks in ipairs(splits(s)) do
          local msgs, err = feed(frame.lines { max = 10 }, chunks)
          assert.is_nil(err)
          assert.same({ string.rep("y", 10) }, msgs)
        end
      end
    end)

    it("encodes with the end-of-line", function()
      assert.equal("hi\n", frame.lines():encode("hi"))
      assert.equal("hi\r\n", frame.lines { eol = "\r\n" }:encode("hi"))
    end)

    it("rejects a bad max", function()
      assert.has_error(function() frame.lines { max = 0 } end)
    end)
  end)

  describe("length_prefixed", function()
    for _, width in ipairs { 1, 2, 4 } do
      it("round-trips with a " .. width .. "-byte header at every split", function()
        local f = frame.length_prefixed { bytes = width, max = 200 }
        local msgs = { "", "a", string.rep("z", 200), "\0\1\2\255" }
        local stream = ""
        for _, m in ipairs(msgs) do
          stream = stream .. f:encode(m)
        end
        for _, chunks in ipairs(splits(stream)) do
          local got, err, rest = feed(f, chunks)
          assert.is_nil(err)
          assert.same(msgs, got)
          assert.equal("", rest)
        end
      end)
    end

    it("reads 4-byte lengths big-endian, including the top bit", function()
      local f = frame.length_prefixed { bytes = 4, max = 2 ^ 32 }
      local msgs, err = feed(f, { "\128\0\0\0" })
      assert.is_nil(err)
      assert.same({}, msgs) -- 2 GiB announced: waits for more
      local g = frame.length_prefixed { bytes = 4, max = 1000 }
      local _, err2 = feed(g, { "\128\0\0\0" })
      assert.matches("2147483648 bytes over max 1000", err2)
    end)

    it("rejects a frame over max as soon as the header is in", function()
      local f = frame.length_prefixed { bytes = 2, max = 100 }
      local _, err = feed(f, { "\0", "\101" })
      assert.matches("101 bytes over max 100", err)
    end)

    it("refuses to encode over max", function()
      local f = frame.length_prefixed { bytes = 1 }
      assert.is_nil((f:encode(string.rep("x", 256))))
      assert.equal(255, f.max)
    end)

    it("rejects a bad width", function()
      assert.has_error(function() frame.length_prefixed { bytes = 3 } end)
    end)
  end)

  describe("raw", function()
    it("returns whatever is there", function()
      local got = feed(frame.raw(), { "ab", "c" })
      assert.same({ "ab", "c" }, got)
    end)
  end)
end)
