-- The runaway-handler watchdog: a callback stuck in `while true do end` on one loop.
local H = require "helper"
local socket = require "socket"

-- One connection on each of the two loops (the handler answers "loop N").
local function one_per_loop(port)
  return H.one_per_loop(port, 2, function(c)
    assert(c:send("hi"))
    return tonumber(assert(c:receive("*l")):match("loop (%d+)"))
  end)
end

describe("watchdog #integration", function()
  it("reports a loop stuck in a callback with file and line while the other loop serves", function()
    local srv = H.start_server { script = "spec/fixtures/spin.lua", loops = 2,
      args = { "--watchdog-ms", "500" } }
    local c = one_per_loop(srv.port)
    assert(c[1]:send("spin"))
    local report = H.wait_for(function() return srv:log():match("stuck for %d+ ms in [^\n]*") end, 5)
    assert.truthy(report, "no watchdog report")
    assert.matches("%[loop 1%] stuck", srv:log())
    assert.matches("on_data at [^\n]*spin%.lua:10", report)
    for i = 1, 3 do
      assert(c[2]:send("x" .. i))
      assert.equal("loop 2", c[2]:receive("*l"))
    end
    srv:kill() -- loop 1 never comes back; that is the point of the test
    c[2]:close()
  end)

  it("answers /profile even when a loop is stuck, naming the silent loop", function()
    local admin = H.free_port()
    local srv = H.start_server { script = "spec/fixtures/spin.lua", loops = 2,
      args = { "--admin", "127.0.0.1:" .. admin } }
    local c = one_per_loop(srv.port)
    assert(c[1]:send("spin"))
    socket.sleep(0.2)
    local t0 = socket.gettime()
    local out, rc = H.sh(("curl -s -m 15 'http://127.0.0.1:%d/profile?seconds=1&loop=all'"):format(admin))
    assert.equal(0, rc)
    assert.matches("# loop 1 did not answer within 2000 ms", out)
    assert.is_true(socket.gettime() - t0 < 10)
    srv:kill()
    c[2]:close()
  end)

  it("aborts the stuck callback with --max-callback-ms and the loop serves again", function()
    local srv = H.start_server { script = "spec/fixtures/spin.lua", loops = 2,
      args = { "--watchdog-ms", "300", "--max-callback-ms", "600" } }
    local c = one_per_loop(srv.port)
    local t0 = socket.gettime()
    assert(c[1]:send("spin"))
    local data, err = c[1]:receive("*l") -- closed by the error
    assert.is_nil(data)
    assert.equal("closed", err)
    assert.is_true(socket.gettime() - t0 < 4)
    local log = srv:log()
    assert.matches("stack traceback:\n[^\n]*spin%.lua:5: in function 'spin_forever'", log)
    assert.matches("callback aborted: it ran longer than %-%-max%-callback%-ms %(600 ms%)", log)
    -- Loop 1 takes new connections again.
    local again = one_per_loop(srv.port)
    assert(again[1]:send("x"))
    assert.equal("loop 1", again[1]:receive("*l"))
    again[1]:close()
    again[2]:close()
    c[2]:close()
    assert.equal(0, srv:stop())
  end)
end)
