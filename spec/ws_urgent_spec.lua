-- Pongs go ahead of queued data: a peer that asks for a pong while it has not read a pile of
-- echoed messages gets the pong before the messages it has not read yet (RFC 6455 5.5: the
-- control frame must not wait behind a full queue), and no frame is split or lost.
local H = require "helper"
local U = require "fixtures.ws_util"

describe("WebSocket control frames #integration", function()
  it("sends a pong ahead of data queued behind a full socket", function()
    local srv = H.start_server { script = "handlers/ws_echo.lua",
      args = { "--max-write-queue", "64m", "--high-water", "32m" } }
    local c = assert(H.connect(srv.port))
    c:setoption("tcp-nodelay", true)
    assert.matches("^HTTP/1.1 101", assert(U.handshake(c, "/")))
    local size, count = 256 * 1024, 24 -- 6 MiB of echo: more than the socket buffers hold
    local payload = string.rep("d", size)
    for i = 1, count do
      assert(c:send(U.binary(payload:sub(1, size - 3) .. ("%03d"):format(i))))
    end
    H.sleep(0.3) -- the server has read and queued the echoes; we read nothing yet
    assert(c:send(U.frame { op = 9, payload = "are you there" }))
    H.sleep(0.1)
    local order, pong_at = {}, nil
    c:settimeout(10)
    for _ = 1, count + 1 do
      local f = assert(U.read_frame(c))
      if f.op == 10 then
        pong_at = #order + 1
        assert.equal("are you there", f.payload)
      else
        assert.equal(2, f.op)
        assert.equal(size, #f.payload)
        order[#order + 1] = tonumber(f.payload:sub(-3))
      end
    end
    -- Every echo arrived whole and in order; the pong came before the last of them.
    for i = 1, count do
      assert.equal(i, order[i])
    end
    assert.truthy(pong_at, "no pong")
    assert.is_true(pong_at <= count, "the pong waited behind all " .. count .. " queued messages")
    c:close()
    srv:stop()
  end)
end)
