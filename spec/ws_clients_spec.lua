-- Integration specs: third-party WebSocket clients against the real binary
-- serving handlers/ws_echo.lua: Python `websockets` (Debian's, 10.x) and
-- Node's `ws`.  Each client script prints "ok <check>" lines and "done".
local H = require "helper"

local PY = "/usr/bin/python3"
local NODE = "env NODE_PATH=/usr/share/nodejs node"

local function have(cmd)
  local _, rc = H.sh(cmd)
  return rc == 0
end

describe("third-party WebSocket clients #integration", function()
  local srv
  setup(function()
    -- 16 MiB echoes need a write queue above the 8 MiB default.
    srv = H.start_server { script = "handlers/ws_echo.lua", loops = 2, args = { "--max-write-queue", "64m" } }
  end)
  teardown(function() if srv then srv:stop() end end)

  local function run(cmd)
    local out, rc = H.sh("timeout 120 " .. cmd)
    return out, rc
  end

  it("Python websockets: echo up to 16 MiB, fragments, permessage-deflate, close codes", function()
    assert.is_true(have(PY .. " -c 'import websockets'"), "python3-websockets is not installed")
    local out, rc = run(PY .. " spec/fixtures/ws_client_python.py " .. srv.port)
    assert.equal(0, rc, out .. "\n" .. srv:log())
    for _, check in ipairs({ "echo text%+binary 0%.%.16MiB uncompressed",
      "echo text%+binary 0%.%.16MiB permessage%-deflate", "fragmented messages", "fragmented compressed messages",
      "permessage%-deflate permessage%-deflate; server_no", "client_max_window_bits=10", "close codes echoed",
      "ping answered", "done" }) do
      assert.matches(check, out)
    end
  end)

  it("Node ws: echo up to 16 MiB, fragments, permessage-deflate, close codes", function()
    assert.is_true(have(NODE .. " -e 'require(\"ws\")'"), "node-ws is not installed")
    local out, rc = run(NODE .. " spec/fixtures/ws_client_node.js " .. srv.port)
    assert.equal(0, rc, out .. "\n" .. srv:log())
    for _, check in ipairs({ "echo text%+binary 0%.%.16MiB uncompressed",
      "echo text%+binary 0%.%.16MiB permessage%-deflate", "fragmented messages", "close codes echoed",
      "ping answered", "done" }) do
      assert.matches(check, out)
    end
  end)

  it("leaves the server healthy: no errors logged", function()
    assert.not_matches("%[error%]", srv:log())
    assert.not_matches("traceback", srv:log())
  end)
end)
