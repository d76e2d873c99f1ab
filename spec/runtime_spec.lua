-- The core runtime through the real binary: loops, echo, framing, limits, timeouts, peer
-- closes, errors, shutdown. Every client is a real socket on 127.0.0.1.
local H = require "helper"
local socket = require "socket"

local function lines_client(port)
  local c = assert(H.connect(port))
  return c
end

local ask = H.ask

describe("runtime #integration", function()
  describe("command line", function()
    it("prints --help and --version", function()
      local out, rc = H.sh(H.bin .. " --help")
      assert.equal(0, rc)
      assert.matches("usage: moonwire", out)
      assert.matches("%-%-loops N|auto", out)
      out, rc = H.sh(H.bin .. " --version")
      assert.equal(0, rc)
      assert.matches("^moonwire %d+%.%d+%.%d+", out)
    end)

    local failures = {
      { "an unknown flag", "run handlers/echo.lua --bogus", "unknown option '%-%-bogus'" },
      { "a missing script", "run spec/fixtures/nope.lua", "cannot read handler script" },
      { "a bad address", "run handlers/echo.lua --listen nothere:1", "bad listen address" },
      { "a bad loop count", "run handlers/echo.lua --loops 0", "%-%-loops" },
      { "a bad size", "run handlers/echo.lua --max-input lots", "expected a size" },
    }
    for _, f in ipairs(failures) do
      it("fails with one clear line on " .. f[1], function()
        local out, rc = H.sh(H.bin .. " " .. f[2])
        assert.is_true(rc ~= 0)
        assert.matches(f[3], out)
        assert.equal(1, select(2, out:gsub("\n", "")))
      end)
    end

    it("names file and line for a handler with a syntax error", function()
      local out, rc = H.sh(H.bin .. " run spec/fixtures/syntax_error.lua --listen 127.0.0.1:0")
      assert.equal(1, rc)
      assert.matches("syntax_error.lua:3:", out)
    end)

    it("reports a handler whose top level raises", function()
      local out, rc = H.sh(H.bin .. " run spec/fixtures/top_level_error.lua --listen 127.0.0.1:0")
      assert.equal(1, rc)
      assert.matches("top_level_error.lua:2:", out)
      out, rc = H.sh(H.bin .. " run spec/fixtures/not_a_table.lua --listen 127.0.0.1:0")
      assert.equal(1, rc)
      assert.matches("must return a table", out)
    end)

    it("refuses a port that is in use", function()
      local srv = H.start_server { script = "handlers/echo.lua" }
      local out, rc = H.sh(H.bin .. " run handlers/echo.lua --listen 127.0.0.1:" .. srv.port)
      srv:stop()
      assert.equal(2, rc)
      assert.matches("cannot listen on 127.0.0.1:" .. srv.port .. ": address already in use", out)
    end)

    it("--loops auto follows the cgroup quota, rounded up", function()
      local dir = H.tmpdir()
      H.write_file(dir .. "/cpu.max", "150000 100000\n")
      local srv = H.start_server { script = "handlers/echo.lua", loops = "auto",
        env = { MOONWIRE_CGROUP_CPU_MAX = dir .. "/cpu.max" } }
      srv:stop()
      assert.matches("2 loop%(s%) %(auto: cgroup cpu.max quota 150000/100000%)", srv:log())
      H.write_file(dir .. "/cpu.max", "max 100000\n")
      srv = H.start_server { script = "handlers/echo.lua", loops = "auto",
        env = { MOONWIRE_CGROUP_CPU_MAX = dir .. "/cpu.max" } }
      srv:stop()
      assert.matches("loop%(s%) %(auto: %d+ available CPUs%)", srv:log())
    end)
  end)

  for _, loops in ipairs { 1, 4 } do
    it("echoes for 200 concurrent clients on " .. loops .. " loop(s)", function()
      local srv = H.start_server { script = "handlers/echo.lua", loops = loops }
      local clients = {}
      for i = 1, 200 do
        clients[i] = assert(H.connect(srv.port))
      end
      for round = 1, 3 do
        for i, c in ipairs(clients) do
          assert(c:send(("client %03d round %d|"):format(i, round)))
        end
        for i, c in ipairs(clients) do
          local want = ("client %03d round %d|"):format(i, round)
          assert.equal(want, c:receive(#want))
        end
      end
      -- A bigger message in pieces.
      local big = string.rep("0123456789abcdef", 16384) -- 256 KiB
      assert(clients[1]:send(big))
      assert.equal(big, clients[1]:receive(#big))
      for _, c in ipairs(clients) do
        c:close()
      end
      assert.equal(0, srv:stop())
    end)
  end

  for _, mode in ipairs { {}, { "--no-reuseport" } } do
    it("spreads connections over every loop" .. (mode[1] and " (single acceptor)" or ""), function()
      local srv = H.start_server { script = "spec/fixtures/loop_id.lua", loops = 4, args = mode }
      local seen = {}
      local clients = {}
      for i = 1, 64 do
        local c = lines_client(srv.port)
        clients[i] = c
        local reply = ask(c, "hi")
        seen[tonumber(reply:match("loop=(%d+)"))] = true
      end
      for _, c in ipairs(clients) do
        c:close()
      end
      srv:stop()
      assert.same({ true, true, true, true }, seen)
    end)
  end

  it("frames lines and length-prefixed messages", function()
    local srv = H.start_server { script = "handlers/lines_echo.lua" }
    local c = lines_client(srv.port)
    assert(c:send("one\ntwo\r\nthr"))
    assert.equal("one", c:receive("*l"))
    assert.equal("two", c:receive("*l"))
    assert(c:send("ee\n"))
    assert.equal("three", c:receive("*l"))
    c:close()
    srv:stop()

    srv = H.start_server { script = "handlers/length_echo.lua" }
    c = assert(H.connect(srv.port))
    local msg = string.rep("m", 70000)
    local hdr = string.char(0, 1, 0x11, 0x70) -- 70000 big-endian
    assert(c:send(hdr .. msg:sub(1, 100)))
    socket.sleep(0.05)
    assert(c:send(msg:sub(101) .. "\0\0\0\3abc"))
    assert.equal(hdr .. msg, c:receive(4 + 70000))
    assert.equal("\0\0\0\3abc", c:receive(7))
    c:close()
    srv:stop()
  end)

  it("runs the custom framer from docs/handlers.md", function()
    local srv = H.start_server { script = "spec/fixtures/netstring.lua" }
    local c = assert(H.connect(srv.port))
    assert(c:send("5:hel"))
    socket.sleep(0.05)
    assert(c:send("lo,3:abc,"))
    assert.equal("5:hello,3:abc,", c:receive(14))
    assert(c:send("x:"))
    local data, err = c:receive(1)
    assert.is_nil(data)
    assert.equal("closed", err)
    srv:stop()
    assert.matches("bad or oversized length, closing", srv:log())
  end)

  it("closes a connection whose frame is over max, with a logged reason", function()
    local srv = H.start_server { script = "handlers/length_echo.lua" }
    local c = assert(H.connect(srv.port))
    local ok = assert(H.connect(srv.port))
    assert(c:send("\0\32\0\0")) -- 2 MiB announced, max is 1 MiB
    local data, err = c:receive(1)
    assert.is_nil(data)
    assert.equal("closed", err)
    assert(ok:send("\0\0\0\2hi"))
    assert.equal("\0\0\0\2hi", ok:receive(6))
    ok:close()
    srv:stop()
    assert.matches("frame of 2097152 bytes over max 1048576, closing", srv:log())
  end)

  it("closes a connection over max-input with a logged reason", function()
    local srv = H.start_server { script = "spec/fixtures/hoard.lua", args = { "--max-input", "4k" } }
    local c = assert(H.connect(srv.port))
    c:send(string.rep("a", 3000))
    socket.sleep(0.05)
    c:send(string.rep("b", 3000))
    local data, err = c:receive(1)
    assert.is_nil(data)
    assert.equal("closed", err)
    srv:stop()
    local log = srv:log()
    assert.matches("input buffer over limit %(6000 bytes unconsumed > max%-input 4096%), closing", log)
    assert.matches("hoard closed reason=limit", log)
  end)

  it("closes connections over --max-conns at once, and accepts again when one leaves", function()
    local srv = H.start_server { script = "handlers/echo.lua", args = { "--max-conns", "2" } }
    socket.sleep(0.1) -- the start-up probe connection is gone
    local a = assert(H.connect(srv.port))
    local b = assert(H.connect(srv.port))
    assert(a:send("a"))
    assert.equal("a", a:receive(1))
    assert(b:send("b"))
    assert.equal("b", b:receive(1))
    local c = assert(H.connect(srv.port)) -- accepted by the kernel, closed by moonwire
    local data, err = c:receive(1)
    assert.is_nil(data)
    assert.equal("closed", err)
    a:close()
    local d = H.wait_for(function()
      local x = assert(H.connect(srv.port))
      x:send("d")
      if x:receive(1) == "d" then
        return x
      end
      x:close()
    end, 5)
    assert.truthy(d, "no connection accepted after one left")
    d:close()
    b:close()
    srv:stop()
    assert.matches("connection limit reached %(max%-conns 2%), rejecting", srv:log())
  end)

  it("pauses accepting while out of file descriptors, then takes the waiting connections", function()
    local srv = H.start_server { script = "handlers/echo.lua" }
    finally(function() srv:kill() end) -- a failed step must not leave it running
    local fds = 0
    for _ in H.sh("ls /proc/" .. srv.pid .. "/fd"):gmatch("%S+") do
      fds = fds + 1
    end
    -- Room for 10 more descriptors: the 11th connection finds the process out of them.
    local limit = fds + 10
    local out, rc = H.sh(("prlimit --pid %d --nofile=%d:%d"):format(srv.pid, limit, limit))
    assert.equal(0, rc, out)
    local conns = {}
    for i = 1, 20 do
      conns[i] = assert(H.connect(srv.port)) -- the kernel completes them all (backlog)
    end
    assert.truthy(H.wait_for(function()
      return srv:log():find("accept: Too many open files; accepting paused for 100 ms", 1, true)
    end, 5), srv:log())
    -- Paused, not spinning on the connection it cannot take; the accepted ones are served.
    local cpu0 = H.cpu_seconds(srv.pid)
    socket.sleep(1)
    assert.is_true(H.cpu_seconds(srv.pid) - cpu0 < 0.5, "the loop spins while out of fds")
    assert(conns[1]:send("a"))
    assert.equal("a", conns[1]:receive(1))
    -- Free descriptors: the connections waiting in the backlog are accepted and answered.
    for i = 1, 10 do
      conns[i]:close()
    end
    for i = 11, 20 do
      conns[i]:settimeout(5)
      assert(conns[i]:send(tostring(i % 10)))
      assert.equal(tostring(i % 10), conns[i]:receive(1), "connection " .. i)
      conns[i]:close()
    end
    srv:stop()
  end)

  it("reports a directory it cannot watch and carries on", function()
    local srv = H.start_server { script = "spec/fixtures/watch_missing_dir.lua" }
    finally(function() srv:kill() end)
    assert.truthy(H.wait_for(function()
      return srv:log():find("cannot watch /nonexistent-moonwire-spec-dir for changes", 1, true)
    end, 5), srv:log())
    local c = lines_client(srv.port)
    assert.equal("still here", ask(c, "still here"))
    c:close()
    srv:stop()
  end)

  it("a handler error closes only its connection", function()
    local srv = H.start_server { script = "spec/fixtures/errors.lua", loops = 2 }
    local others = {}
    for i = 1, 6 do
      others[i] = lines_client(srv.port)
      assert.equal("hello " .. i, ask(others[i], "hello " .. i))
    end
    local bad = lines_client(srv.port)
    assert(bad:send("boom\n"))
    local data, err = bad:receive("*l")
    assert.is_nil(data)
    assert.equal("closed", err)
    for i = 1, 6 do
      assert.equal("still " .. i, ask(others[i], "still " .. i))
      others[i]:close()
    end
    srv:stop()
    local log = srv:log()
    local _, count = log:gsub("handler error", "")
    assert.equal(1, count)
    assert.matches("errors.lua:8: attempt to index", log)
    assert.matches("stack traceback", log)
    assert.matches("reason=error", log)
  end)

  it("write() returns false past high water and on_drain fires when the queue empties", function()
    local srv = H.start_server { script = "spec/fixtures/backpressure.lua",
      args = { "--high-water", "256k", "--max-write-queue", "64m" } }
    local c = assert(H.connect(srv.port))
    assert(c:send("fill\n"))
    socket.sleep(0.2) -- the client reads nothing for a while: the queue fills
    local got = {}
    local total = 0
    c:settimeout(5)
    repeat
      local data, err, partial = c:receive(65536)
      data = data or partial
      if data and #data > 0 then
        got[#got + 1] = data
        total = total + #data
      end
      local tail = table.concat(got, "", math.max(1, #got - 1))
    until tail:find("DRAINED %d+\n") or err == "closed" or total > 80 * 65536
    local all = table.concat(got)
    local n = tonumber(all:match("DRAINED (%d+)"))
    assert.truthy(n, "on_drain did not fire")
    assert.is_true(n >= 4 and n <= 1000) -- 256 KiB / 64 KiB: false after a few chunks
    assert.equal(n * 65536, #all:match("^(x*)"))
    c:close()
    srv:stop()
  end)

  it("closes a connection whose write queue goes over its hard limit", function()
    local srv = H.start_server { script = "spec/fixtures/backpressure.lua",
      args = { "--high-water", "256k", "--max-write-queue", "1m" } }
    local c = assert(H.connect(srv.port))
    assert(c:send("flood\n"))
    socket.sleep(0.3)
    srv:stop()
    assert.matches("write queue over limit %(%d+ bytes queued > max%-write%-queue 1048576%), closing", srv:log())
    c:close()
  end)

  it("fires idle timeouts, through on_timeout or by closing", function()
    local srv = H.start_server { script = "spec/fixtures/timeouts.lua" }
    local c = lines_client(srv.port)
    assert.equal("ok", ask(c, "custom"))
    local t0 = socket.gettime()
    assert.equal("TIMEOUT", c:receive("*l"))
    local waited = socket.gettime() - t0
    assert.is_true(waited > 0.1 and waited < 3)
    assert.is_nil(c:receive("*l"))
    -- Activity keeps a connection alive past its timeout.
    local d = lines_client(srv.port)
    for _ = 1, 5 do
      socket.sleep(0.1)
      assert.equal("ok", ask(d, "ping"))
    end
    local data, err = d:receive("*l") -- then the default handler aborts it
    assert.is_nil(data)
    assert.equal("closed", err)
    srv:stop()

    srv = H.start_server { script = "spec/fixtures/plain_timeout.lua" }
    c = assert(H.connect(srv.port))
    data, err = c:receive(1)
    assert.is_nil(data)
    assert.equal("closed", err)
    srv:stop()
    assert.matches("closed reason=timeout", srv:log())
  end)

  it("runs timers, cancels them, and lets spawned coroutines sleep", function()
    local srv = H.start_server { script = "spec/fixtures/timers.lua" }
    local c = lines_client(srv.port)
    assert(c:send("after\n"))
    assert.equal("after fired", c:receive("*l"))
    assert(c:send("every\n"))
    assert.equal("tick 1", c:receive("*l"))
    assert.equal("tick 2", c:receive("*l"))
    assert.equal("tick 3", c:receive("*l"))
    assert(c:send("cancel\n"))
    assert.equal("cancelled ok", c:receive("*l"))
    assert(c:send("sleep\n"))
    assert.equal("before", c:receive("*l"))
    assert.equal("after sleep", c:receive("*l"))
    c:close()
    srv:stop()
  end)

  it("paces the GC from the live heap and keeps a handler's own pause", function()
    local function pause_of(c)
      local p, live = ask(c, "pause"):match("^pause=(%d+) live=(%d+)$")
      return tonumber(p), tonumber(live)
    end
    -- A small heap: cycles start at live + 4 MB, far above LuaJIT's 2x.
    local srv = H.start_server { script = "spec/fixtures/gc_pacing.lua" }
    local c = lines_client(srv.port)
    assert.equal("churned", ask(c, "churn 30000"))
    local p, live = pause_of(c)
    assert.is_true(live < 4096, "live heap " .. live .. " KB")
    assert.is_true(p >= 100 + 100 * 4096 / (2 * live), ("pause %d with %d KB live"):format(p, live))
    -- A large heap (~20 MB live): LuaJIT's 2x, not live + 4 MB (a pause of ~120).
    assert.equal("held", ask(c, "hold 20000"))
    assert.equal("churned", ask(c, "churn 60000"))
    p = pause_of(c)
    assert.equal(200, p)
    c:close()
    srv:stop()
    -- A handler that sets its own pause keeps it across cycles; also when it sets LuaJIT's
    -- default (200) back, where a small heap would otherwise get ~1,000+.
    for _, own in ipairs { 150, 200 } do
      srv = H.start_server { script = "spec/fixtures/gc_pacing.lua" }
      c = lines_client(srv.port)
      assert.equal("own", ask(c, "own " .. own))
      assert.equal("churned", ask(c, "churn 30000"))
      assert.equal(own, (pause_of(c)))
      c:close()
      srv:stop()
    end
  end)

  it("pauses and resumes reading, delivering buffered input after resume", function()
    local srv = H.start_server { script = "spec/fixtures/pause.lua" }
    local c = lines_client(srv.port)
    assert(c:send("pause\nafter-1\nafter-2\n"))
    assert.equal("resumed", c:receive("*l"))
    assert.equal("got after-1", c:receive("*l"))
    assert.equal("got after-2", c:receive("*l"))
    c:close()
    srv:stop()
  end)

  it("delivers a publish to every subscriber on every loop exactly once", function()
    local srv = H.start_server { script = "spec/fixtures/pubsub_fanout.lua", loops = 4 }
    local clients, loops_seen = {}, {}
    for i = 1, 40 do
      local c = lines_client(srv.port)
      clients[i] = c
      local ready = c:receive("*l")
      loops_seen[tonumber(ready:match("loop=(%d+)"))] = true
    end
    assert.same({ true, true, true, true }, loops_seen)
    -- 3 publishers on (probably) different loops, 5 messages each.
    for p = 1, 3 do
      for m = 1, 5 do
        assert(clients[p * 10]:send(("pub p%d-m%d\n"):format(p, m)))
      end
    end
    for _, c in ipairs(clients) do
      local got, per = {}, { {}, {}, {} }
      for _ = 1, 15 do
        local line = assert(c:receive("*l"))
        assert.is_nil(got[line], "duplicate " .. line)
        got[line] = true
        local p, m = line:match("p(%d)%-m(%d)")
        table.insert(per[tonumber(p)], tonumber(m))
      end
      for p = 1, 3 do
        assert.same({ 1, 2, 3, 4, 5 }, per[p]) -- in order per publisher
      end
      c:settimeout(0.1)
      assert.is_nil(c:receive("*l")) -- and nothing more
    end
    for _, c in ipairs(clients) do
      c:close()
    end
    srv:stop()
  end)

  describe("peer closes", function()
    it("closes half-closed and reset peers: no CLOSE_WAIT, no spinning", function()
      local srv = H.start_server { script = "handlers/echo.lua", loops = 2 }
      local half, reset = {}, {}
      for i = 1, 500 do
        local c = assert(H.connect(srv.port))
        c:send("x")
        half[i] = c
      end
      for i = 1, 500 do
        local c = assert(H.connect(srv.port))
        c:send("y")
        reset[i] = c
      end
      for _, c in ipairs(half) do
        assert.equal("x", c:receive(1))
        c:shutdown("send") -- FIN, keep our side open
      end
      for _, c in ipairs(reset) do
        assert.equal("y", c:receive(1))
        c:setoption("linger", { on = true, timeout = 0 })
        c:close() -- RST
      end
      -- The server must close its side of every half-closed connection.
      local closed = 0
      for _, c in ipairs(half) do
        c:settimeout(5)
        local data, err = c:receive(1)
        if data == nil and err == "closed" then
          closed = closed + 1
        end
      end
      assert.equal(500, closed)
      local states = H.wait_for(function()
        local s = H.server_socket_states(srv.port)
        for _, st in ipairs(s) do
          if st == "CLOSE_WAIT" or st == "ESTABLISHED" then
            return nil
          end
        end
        return s
      end, 5)
      assert.truthy(states, "server sockets left in CLOSE_WAIT or ESTABLISHED")
      -- Idle afterwards: the server uses (almost) no CPU. A spinning loop would use ~1 s/s.
      local before = H.cpu_seconds(srv.pid)
      socket.sleep(1.5)
      local used = H.cpu_seconds(srv.pid) - before
      assert.is_true(used < 0.3, "server used " .. used .. " CPU seconds while idle")
      for _, c in ipairs(half) do
        c:close()
      end
      assert.equal(0, srv:stop())
    end)

    it("survives connect-and-close probes", function()
      local srv = H.start_server { script = "handlers/echo.lua" }
      for _ = 1, 200 do
        local c = assert(H.connect(srv.port))
        c:close()
      end
      local c = assert(H.connect(srv.port))
      assert(c:send("alive"))
      assert.equal("alive", c:receive(5))
      c:close()
      assert.equal(0, srv:stop())
    end)
  end)

  describe("shutdown", function()
    it("SIGTERM stops accepting, calls on_shutdown, drains and exits 0", function()
      local srv = H.start_server { script = "spec/fixtures/shutdown.lua", loops = 2 }
      local c = assert(H.connect(srv.port))
      assert(c:send("before"))
      assert.equal("before", c:receive(6))
      srv:signal(require("posix.signal").SIGTERM)
      H.wait_for(function() return srv:log():find("on_shutdown loop=2") end, 5)
      -- The live connection still works during the drain; new ones are refused.
      assert(c:send("during"))
      assert.equal("during", c:receive(6))
      assert.is_nil(H.wait_for(function() return H.connect(srv.port) == nil end, 3) and nil)
      c:close()
      local code = srv:wait_exit(5)
      assert.equal(0, code)
      local log = srv:log()
      assert.matches("on_shutdown loop=1", log)
      assert.matches("closed reason=eof", log)
    end)

    it("closes what is left after the drain timeout and exits 0", function()
      local srv = H.start_server { script = "spec/fixtures/shutdown.lua",
        args = { "--drain-timeout", "300" } }
      local c = assert(H.connect(srv.port))
      assert(c:send("x"))
      assert.equal("x", c:receive(1))
      local t0 = socket.gettime()
      local code = srv:stop()
      assert.equal(0, code)
      assert.is_true(socket.gettime() - t0 < 4)
      assert.matches("closed reason=shutdown", srv:log())
      c:close()
    end)
  end)
end)
