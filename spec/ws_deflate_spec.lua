-- Unit specs for moonwire.ws.deflate: negotiation (RFC 7692) and the codec.
local buffer = require "string.buffer"
local deflate = require "moonwire.ws.deflate"
local hs = require "moonwire.ws.handshake"

local function negotiate(offer, conf)
  return deflate.negotiate(assert(hs.extensions(offer)), conf)
end

describe("moonwire.ws.deflate #unit", function()
  describe("negotiate()", function()
    local CASES = {
      { "permessage-deflate", nil, "permessage-deflate" },
      { "permessage-deflate; client_max_window_bits", nil, "permessage-deflate" },
      { "permessage-deflate; client_max_window_bits=10", nil, "permessage-deflate; client_max_window_bits=10" },
      { "permessage-deflate; server_max_window_bits=10", nil, "permessage-deflate; server_max_window_bits=10" },
      { "permessage-deflate; server_no_context_takeover", nil, "permessage-deflate; server_no_context_takeover" },
      { "permessage-deflate; client_no_context_takeover", nil, "permessage-deflate; client_no_context_takeover" },
      { "permessage-deflate", { server_no_context_takeover = true },
        "permessage-deflate; server_no_context_takeover" },
      { "permessage-deflate; client_max_window_bits", { client_max_window_bits = 9 },
        "permessage-deflate; client_max_window_bits=9" },
      { "permessage-deflate", { server_max_window_bits = 11 }, "permessage-deflate; server_max_window_bits=11" },
      -- Unacceptable offers are declined; a later acceptable one is taken.
      { "permessage-deflate; server_max_window_bits=8", nil, nil },
      { "permessage-deflate; server_max_window_bits=16", nil, nil },
      { "permessage-deflate; server_max_window_bits", nil, nil },
      { "permessage-deflate; client_max_window_bits=7", nil, nil },
      { "permessage-deflate; server_no_context_takeover=1", nil, nil },
      { "permessage-deflate; foo=1, permessage-deflate", nil, "permessage-deflate" },
      { "x-webkit-deflate-frame", nil, nil },
    }
    for _, c in ipairs(CASES) do
      it(("%q -> %s"):format(c[1], tostring(c[3])), function()
        assert.equal(c[3], (negotiate(c[1], c[2])))
      end)
    end
  end)

  local function roundtrip(offer, conf, msgs)
    local _, agreed = negotiate(offer, conf)
    -- Two contexts stand for the two peers: the server compresses with
    -- one, the "client" side inflates with the other.
    local a, b = deflate.new(agreed), deflate.new(agreed)
    for _, m in ipairs(msgs) do
      local out = buffer.new()
      local n = assert(a:compress(m, #m, out))
      local c = out:tostring():sub(1, n)
      assert.are_not.equal("\0\0\255\255", c:sub(-4))
      local plain = buffer.new()
      assert.is_true(b:decompress(c, #c, true, plain, 1e9))
      assert.equal(m, plain:tostring())
    end
    a:free(); b:free()
  end

  it("round-trips messages with context takeover", function()
    roundtrip("permessage-deflate", nil, { ("hello "):rep(100), ("hello "):rep(100), "", "x", ("\0\1\2"):rep(5000) })
  end)

  it("round-trips with no context takeover and small windows", function()
    roundtrip("permessage-deflate; server_no_context_takeover; server_max_window_bits=9", nil,
      { ("abc"):rep(1000), ("abc"):rep(1000) })
  end)

  it("shrinks repetitive messages", function()
    local _, agreed = negotiate("permessage-deflate", nil)
    local out = buffer.new()
    local m = ("moonwire "):rep(1000)
    assert.is_true(deflate.new(agreed):compress(m, #m, out) < 100)
  end)

  it("stops inflating at the size limit (zip bomb)", function()
    local _, agreed = negotiate("permessage-deflate", nil)
    local out = buffer.new()
    local m = ("\0"):rep(4 * 1024 * 1024)
    local n = deflate.new(agreed):compress(m, #m, out)
    local c = out:tostring():sub(1, n)
    local plain = buffer.new()
    assert.same({ nil, "too big" }, { deflate.new(agreed):decompress(c, #c, true, plain, 65536) })
    assert.is_true(#plain <= 65536 + 16384)
  end)

  it("reports corrupt data", function()
    local _, agreed = negotiate("permessage-deflate", nil)
    local plain = buffer.new()
    local ok, err = deflate.new(agreed):decompress("\255\255\255\255garbage", 11, true, plain, 1e6)
    assert.is_nil(ok)
    assert.equal("corrupt", err)
  end)

  it("states the zlib memory bound of the agreed parameters", function()
    local _, agreed = negotiate("permessage-deflate; server_max_window_bits=10; client_max_window_bits=10",
      { mem_level = 4 })
    assert.equal(2 ^ 12 + 2 ^ 13 + 2 ^ 10 + 7168, deflate.memory(agreed))
  end)
end)
