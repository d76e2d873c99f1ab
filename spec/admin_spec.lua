-- The admin listener (lua/moonwire/admin.lua) against the real binary: /metrics checked with
-- Python's prometheus_client parser, /stats, /status, /top, /reload, the client commands
-- (status, top, reload, profile), the loopback-only rule, the profiler and flame graphs, and
-- the idle-wakeups figure (an idle server must not spin).
local H = require "helper"
local cjson = require "cjson.safe"
local socket = require "socket"

local PY = "/usr/bin/python3"

-- ---- helpers ---------------------------------------------------------------------------

-- One HTTP/1.0 request (the admin listener closes after answering): status, body.
local function http(port, method, path, timeout)
  local c = assert(H.connect(port))
  c:settimeout(timeout or 5)
  assert(c:send(("%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"):format(method, path)))
  local data, err, partial = c:receive("*a")
  c:close()
  data = data or partial
  assert(data and data ~= "", "no response to " .. path .. ": " .. tostring(err))
  local status = tonumber(data:match("^HTTP/1%.%d (%d%d%d)"))
  local body = data:match("\r\n\r\n(.*)$") or ""
  return status, body
end

local function get(port, path)
  local status, body = http(port, "GET", path)
  assert.equal(200, status, path .. ": " .. body)
  return body
end

-- A request whose answer is awaited without blocking: :poll() returns status, body once the
-- server has answered and closed, nil before.
local function start_request(port, path)
  local c = assert(H.connect(port))
  assert(c:send(("GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"):format(path)))
  c:settimeout(0)
  local buf = {}
  return {
    poll = function()
      local data, err, partial = c:receive(65536)
      buf[#buf + 1] = data or partial
      if err == "closed" then
        c:close()
        local all = table.concat(buf)
        return tonumber(all:match("^HTTP/1%.%d (%d%d%d)")), all:match("\r\n\r\n(.*)$") or ""
      end
      assert(not err or err == "timeout", err)
    end,
  }
end

-- Starts `script` with an admin listener; waits until the admin port answers.
local function start(script, loops, extra)
  local admin = H.free_port()
  local args = { "--admin", "127.0.0.1:" .. admin }
  for _, a in ipairs(extra or {}) do
    args[#args + 1] = a
  end
  local srv = H.start_server { script = script, loops = loops or 2, args = args }
  local up = H.wait_for(function()
    local c = H.connect(admin)
    if c then
      c:close()
      return true
    end
  end, 5)
  assert(up, "admin listener did not come up: " .. srv:log())
  srv.admin = admin
  srv.admin_addr = "127.0.0.1:" .. admin
  return srv
end

local function stats(srv)
  return assert(cjson.decode(get(srv.admin, "/stats")))
end

-- Parses Prometheus text with the reference parser; returns { family name = { type, samples =
-- { { name, labels, value } } } }.
local PARSE = [[
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out[fam.name] = {"type": fam.type,
                     "samples": [{"name": s.name, "labels": s.labels, "value": s.value}
                                 for s in fam.samples]}
print(json.dumps(out))
]]

local function parse_metrics(text)
  local dir = H.tmpdir()
  H.write_file(dir .. "/parse.py", PARSE)
  H.write_file(dir .. "/metrics.txt", text)
  local out, rc = H.sh(("%s %s/parse.py < %s/metrics.txt"):format(PY, dir, dir))
  H.sh("rm -rf " .. dir)
  assert.equal(0, rc, "prometheus_client rejected /metrics:\n" .. out .. "\n---\n" .. text)
  return assert(cjson.decode(out))
end

-- Sum of one family's samples whose labels include `match` (a table), by sample name.
local function total(families, family, sample, match)
  local sum = 0
  for _, s in ipairs(assert(families[family], "no family " .. family).samples) do
    local ok = s.name == sample
    for k, v in pairs(match or {}) do
      ok = ok and s.labels[k] == v
    end
    if ok then
      sum = sum + s.value
    end
  end
  return sum
end

-- Echoes `rounds` messages of `size` bytes over `nconns` connections, then closes them.
local function echo_traffic(port, nconns, rounds, size)
  local payload = ("x"):rep(size)
  for _ = 1, nconns do
    local c = assert(H.connect(port))
    for _ = 1, rounds do
      assert(c:send(payload))
      assert.equal(payload, H.recv_exact(c, size))
    end
    c:close()
  end
  return nconns * rounds * size
end

-- ---- metrics, stats, status, top -------------------------------------------------------

-- Every family admin.lua exports, with its type. prometheus_client names a counter family
-- without its _total suffix.
local FAMILIES = {
  moonwire_connections_open = "gauge",
  moonwire_connections_accepted = "counter",
  moonwire_connections_rejected = "counter",
  moonwire_connections_closed = "counter",
  moonwire_bytes_received = "counter",
  moonwire_bytes_sent = "counter",
  moonwire_messages_received = "counter",
  moonwire_messages_sent = "counter",
  moonwire_reads = "counter",
  moonwire_writes = "counter",
  moonwire_handler_errors = "counter",
  moonwire_write_queue_bytes = "gauge",
  moonwire_connections_paused = "gauge",
  moonwire_timers = "gauge",
  moonwire_loop_iterations = "counter",
  moonwire_loop_wakeups = "counter",
  moonwire_loop_lag_seconds = "gauge",
  moonwire_loop_lag_max_seconds = "gauge",
  moonwire_lua_memory_bytes = "gauge",
  moonwire_lua_gc_cycles = "counter",
  moonwire_lua_live_bytes = "gauge",
  moonwire_lua_gc_forced = "counter",
  moonwire_stuck_callbacks = "counter",
  moonwire_stuck_callback_seconds = "gauge",
  moonwire_spinning_fds = "gauge",
  moonwire_handler_generation = "gauge",
  moonwire_reload_error = "gauge",
  moonwire_process_resident_memory_bytes = "gauge",
  moonwire_process_open_fds = "gauge",
  moonwire_process_malloc_bytes = "gauge",
  moonwire_process_cpu_seconds = "counter",
  moonwire_process_threads = "gauge",
  moonwire_loops = "gauge",
}

describe("admin listener #integration", function()
  local srv

  setup(function()
    srv = start("handlers/echo.lua", 2)
  end)

  teardown(function()
    if srv then
      srv:stop()
    end
  end)

  it("serves /metrics that a Prometheus parser accepts, with counters that move", function()
    -- The start-up probe's connection may still be on its way through accept and close.
    local before = H.wait_for(function()
      local m = parse_metrics(get(srv.admin, "/metrics"))
      return total(m, "moonwire_connections_accepted", "moonwire_connections_accepted_total") >= 1
        and total(m, "moonwire_connections_open", "moonwire_connections_open") == 0 and m
    end, 5)
    for name, kind in pairs(FAMILIES) do
      local fam = before[name]
      assert.is_table(fam, "missing family " .. name)
      assert.equal(kind, fam.type, name)
      assert.is_true(#fam.samples >= 1, name)
    end
    for name in pairs(before) do
      assert.is_string(FAMILIES[name], "family not in the spec's list: " .. name)
    end
    -- Per-loop families carry loop="1" and loop="2"; closed also carries the reason.
    for _, name in ipairs { "moonwire_connections_open", "moonwire_bytes_received",
      "moonwire_loop_iterations", "moonwire_handler_generation", "moonwire_reload_error" } do
      local loops = {}
      for _, s in ipairs(before[name].samples) do
        loops[s.labels.loop] = true
      end
      assert.same({ ["1"] = true, ["2"] = true }, loops, name)
    end
    local reasons = {}
    for _, s in ipairs(before.moonwire_connections_closed.samples) do
      assert.equal("moonwire_connections_closed_total", s.name)
      reasons[s.labels.reason] = true
    end
    assert.same({ eof = true, reset = true, timeout = true, error = true, limit = true, ["local"] = true },
      reasons)
    assert.equal(2, total(before, "moonwire_loops", "moonwire_loops"))
    assert.is_true(total(before, "moonwire_process_resident_memory_bytes",
      "moonwire_process_resident_memory_bytes") > 1e6)

    local sent = echo_traffic(srv.port, 6, 20, 1000)
    local after
    H.wait_for(function()
      after = parse_metrics(get(srv.admin, "/metrics"))
      -- A close is counted when it starts and the connection leaves "open" when its
      -- socket is closed a moment later: wait for both.
      return total(after, "moonwire_connections_closed", "moonwire_connections_closed_total",
        { reason = "eof" }) - total(before, "moonwire_connections_closed",
        "moonwire_connections_closed_total", { reason = "eof" }) >= 6
        and total(after, "moonwire_connections_open", "moonwire_connections_open") == 0
    end, 5)
    local function delta(fam, sample)
      return total(after, fam, sample) - total(before, fam, sample)
    end
    assert.equal(6, delta("moonwire_connections_accepted", "moonwire_connections_accepted_total"))
    assert.equal(sent, delta("moonwire_bytes_received", "moonwire_bytes_received_total"))
    assert.equal(sent, delta("moonwire_bytes_sent", "moonwire_bytes_sent_total"))
    assert.is_true(delta("moonwire_reads", "moonwire_reads_total") >= 6 * 20)
    assert.is_true(delta("moonwire_writes", "moonwire_writes_total") >= 1)
    assert.is_true(delta("moonwire_loop_iterations", "moonwire_loop_iterations_total") > 0)
    assert.equal(0, total(after, "moonwire_connections_open", "moonwire_connections_open"))
    assert.equal(0, total(after, "moonwire_handler_errors", "moonwire_handler_errors_total"))
  end)

  it("serves /stats as JSON with per-loop entries and process fields", function()
    echo_traffic(srv.port, 2, 5, 100)
    -- Wait for the closes to land: counters are read one by one, not as one snapshot.
    local s = H.wait_for(function()
      local t = stats(srv)
      return t.loops[1].open_conns + t.loops[2].open_conns == 0 and t
    end, 5)
    assert.equal(2, #s.loops)
    for i, l in ipairs(s.loops) do
      assert.equal(i, l.id)
      for _, f in ipairs { "open_conns", "accepted", "closed", "bytes_in", "bytes_out", "iterations",
        "wakeups", "lag_us", "lua_bytes", "generation", "stuck", "spinning_fds" } do
        assert.is_number(l[f], "loop " .. i .. " " .. f)
      end
      assert.is_table(l.rates)
      -- Every close has exactly one reason (rejections, none here, are counted apart).
      assert.equal(l.closed, l.closed_eof + l.closed_reset + l.closed_timeout + l.closed_error
        + l.closed_limit + l.closed_local, "loop " .. i)
    end
    local p = s.process
    assert.equal(2, p.loops)
    assert.is_true(p.rss_bytes > 1e6)
    assert.is_true(p.open_fds > 3)
    assert.is_true(p.threads >= 3) -- main, two loops and the admin loop
    assert.is_number(p.cpu_seconds)
    -- After the once-a-second sample the Lua heap is known and rates are present.
    H.wait_for(function()
      s = stats(srv)
      return s.loops[1].lua_bytes > 0 and s.loops[1].rates.iterations
    end, 3)
    assert.is_true(s.loops[1].lua_bytes > 0)
    assert.is_number(s.loops[1].rates.iterations)
  end)

  it("moonwire top --count 1 prints one row per loop", function()
    local out, rc = H.sh(("%s top --admin %s --count 1"):format(H.bin, srv.admin_addr))
    assert.equal(0, rc, out)
    assert.matches("msg/s in", out)
    assert.matches("\n1%s+%d+%s", out)
    assert.matches("\n2%s+%d+%s", out)
  end)

  it("answers unknown paths with 404 and bad profile arguments with 400", function()
    assert.equal(404, (http(srv.admin, "GET", "/nope")))
    assert.equal(400, (http(srv.admin, "GET", "/profile?seconds=0")))
    assert.equal(400, (http(srv.admin, "GET", "/profile?seconds=1&loop=3")))
  end)
end)

-- ---- full garbage collection ------------------------------------------------------------

describe("admin /gc #integration", function()
  local srv

  setup(function()
    srv = start("spec/fixtures/gc_pacing.lua", 2)
  end)

  teardown(function()
    if srv then
      srv:stop()
    end
  end)

  local ask = H.ask

  it("POST /gc and moonwire gc collect every loop and report the heap left", function()
    -- 200 strings of 1 KB held per loop (equal strings are one copy) and 20 MB of garbage,
    -- spread over the loops by reuseport.
    local conns = {}
    for i = 1, 16 do
      conns[i] = assert(H.connect(srv.port))
      assert.equal("held", ask(conns[i], "hold 200"))
      assert.equal("churned", ask(conns[i], "churn 1300"))
    end
    local status, body = http(srv.admin, "POST", "/gc")
    assert.equal(200, status, body)
    local fams = parse_metrics(get(srv.admin, "/metrics"))
    local after = {}
    for _, s in ipairs(fams.moonwire_lua_live_bytes.samples) do
      after[tonumber(s.labels.loop)] = s.value
    end
    for loop = 1, 2 do
      local from, to = body:match("loop " .. loop .. ": Lua heap ([%d.]+) KiB %-> ([%d.]+) KiB")
      assert.is_string(from, body)
      from, to = tonumber(from), tonumber(to)
      assert.is_true(to <= from, body)
      assert.is_true(math.abs(to - after[loop] / 1024) < 0.1, body)
      assert.equal(1, total(fams, "moonwire_lua_gc_forced", "moonwire_lua_gc_forced_total",
        { loop = tostring(loop) }))
    end
    -- What is held survives, the garbage does not.
    local live = (after[1] + after[2]) / 1024
    assert.is_true(live > 200 and live < 4096, "live " .. live .. " KiB")

    local out, rc = H.sh(("%s gc --admin %s"):format(H.bin, srv.admin_addr))
    assert.equal(0, rc, out)
    assert.matches("loop 1: Lua heap [%d.]+ KiB %-> [%d.]+ KiB\nloop 2: ", out)
    fams = parse_metrics(get(srv.admin, "/metrics"))
    assert.equal(4, total(fams, "moonwire_lua_gc_forced", "moonwire_lua_gc_forced_total")) -- 2 per loop
    for _, c in ipairs(conns) do
      c:close()
    end
  end)
end)

-- ---- reload, status, broken saves ------------------------------------------------------

describe("admin reload and status #integration", function()
  local srv, dir, app

  setup(function()
    dir = H.tmpdir()
    app = dir .. "/app.lua"
    H.write_file(app, assert(H.read_file("handlers/echo.lua")))
    srv = start(app, 2)
  end)

  teardown(function()
    if srv then
      srv:stop()
    end
    H.sh("rm -rf " .. dir)
  end)

  local function generations()
    local g = {}
    for i, l in ipairs(stats(srv).loops) do
      g[i] = l.generation
    end
    return g
  end

  it("POST /reload and moonwire reload --admin bump every loop's generation", function()
    assert.same({ 1, 1 }, generations())
    local out = get(srv.admin, "/status")
    assert.matches("loop 1: generation 1, 0 connection%(s%), last reload ok", out)
    assert.matches("loop 2: generation 1, 0 connection%(s%), last reload ok", out)

    local status, body = http(srv.admin, "POST", "/reload")
    assert.equal(200, status, body)
    local r = assert(cjson.decode(body))
    assert.is_true(r.ok)
    assert.equal(2, #r.loops)
    for i, l in ipairs(r.loops) do
      assert.equal(i, l.loop)
      assert.equal(2, l.generation)
    end
    assert.same({ 2, 2 }, generations())

    local cli, rc = H.sh(("%s reload --admin %s"):format(H.bin, srv.admin_addr))
    assert.equal(0, rc, cli)
    assert.same({ 3, 3 }, generations())
    cli, rc = H.sh(("%s status --admin %s"):format(H.bin, srv.admin_addr))
    assert.equal(0, rc, cli)
    assert.matches("loop 1: generation 3", cli)
    assert.matches("loop 2: generation 3", cli)
  end)

  it("shows a broken save's error with file:line on every loop, and 409 from /reload", function()
    local good = assert(H.read_file(app))
    local before = generations()
    -- Save the way editors do: write a temporary file, rename it over the handler.
    -- The missing ")" is reported at line 5, where "end" arrives.
    H.write_file(app .. ".tmp", "-- broken\nreturn {\n  on_data = function(conn, data)\n" ..
      "    conn:write(data\n  end,\n}\n")
    assert(os.rename(app .. ".tmp", app))
    local want = app:gsub("%p", "%%%0") .. ":5:"
    local out = H.wait_for(function()
      local s = get(srv.admin, "/status")
      local _, n = s:gsub("last reload failed: [^\n]*" .. want, "")
      return n == 2 and s
    end, 5)
    assert.is_string(out, "status never showed the error: " .. get(srv.admin, "/status"))
    assert.matches("loop 1: generation " .. before[1] .. ", 0 connection%(s%), last reload failed: .*" .. want,
      out)
    assert.matches("loop 2: generation " .. before[2] .. ", 0 connection%(s%), last reload failed: .*" .. want,
      out)
    local cli, rc = H.sh(("%s status --admin %s"):format(H.bin, srv.admin_addr))
    assert.equal(0, rc, cli)
    assert.matches("loop 1: .*last reload failed: .*" .. want, cli)
    assert.matches("loop 2: .*last reload failed: .*" .. want, cli)
    -- The old code keeps serving.
    echo_traffic(srv.port, 1, 1, 10)

    local status, body = http(srv.admin, "POST", "/reload")
    assert.equal(409, status, body)
    local r = assert(cjson.decode(body))
    assert.is_false(r.ok)
    assert.matches(want, r.loops[1].error)
    cli, rc = H.sh(("%s reload --admin %s"):format(H.bin, srv.admin_addr))
    assert.equal(1, rc, cli)

    -- A fixed save clears the error.
    H.write_file(app .. ".tmp", good)
    assert(os.rename(app .. ".tmp", app))
    out = H.wait_for(function()
      local s = get(srv.admin, "/status")
      local _, n = s:gsub("last reload ok", "")
      return n == 2 and s
    end, 5)
    assert.is_string(out, "status never cleared: " .. get(srv.admin, "/status"))
    local after = generations()
    assert.is_true(after[1] > before[1] and after[2] > before[2])
  end)
end)

describe("admin reload while a loop is busy #integration", function()
  -- Regression: POST /reload used to answer as soon as it saw an error, so a loop still busy
  -- in a callback was reported with the error of the previous, failed reload (409) although
  -- the file had been fixed and the reload it asked for succeeded.
  it("waits for the loop's own answer instead of a stale error", function()
    local dir = H.tmpdir()
    local app = dir .. "/app.lua"
    local good = assert(H.read_file("spec/fixtures/cpu_burn.lua"))
    H.write_file(app, good)
    local srv = start(app, 1)
    H.write_file(app .. ".tmp", "return {\n")
    assert(os.rename(app .. ".tmp", app))
    assert.is_string(H.wait_for(function()
      return get(srv.admin, "/status"):match("last reload failed")
    end, 5))
    -- Keep the loop busy for a while (about 0.3 s of burning), fix the file, ask for a reload.
    local c = assert(H.connect(srv.port))
    assert(c:send("40000000\n"))
    socket.sleep(0.02)
    H.write_file(app .. ".tmp", good)
    assert(os.rename(app .. ".tmp", app))
    local status, body = http(srv.admin, "POST", "/reload")
    assert.matches("^done %d+ loop=1$", assert(c:receive("*l")))
    c:close()
    srv:stop()
    H.sh("rm -rf " .. dir)
    assert.equal(200, status, body)
    local r = assert(cjson.decode(body))
    assert.is_true(r.ok)
    assert.is_nil(r.loops[1].error)
    assert.is_true(r.loops[1].generation >= 2)
  end)
end)

-- ---- loopback only ---------------------------------------------------------------------

describe("admin address check #integration", function()
  it("refuses a non-loopback --admin with a clear message and exit code 2", function()
    local admin = H.free_port()
    local srv = H.start_server { script = "handlers/echo.lua", expect_fail = true,
      args = { "--admin", "0.0.0.0:" .. admin } }
    local code = srv:wait_exit(5)
    local log = srv:log()
    srv:kill()
    assert.equal(2, code, log)
    assert.matches("%-%-admin 0%.0%.0%.0:" .. admin .. " is not a loopback address", log)
    assert.matches("%-%-admin%-allow%-remote", log)
  end)

  it("lets --admin-allow-remote through the check", function()
    -- 192.0.2.1 (TEST-NET-1) is not an address of this host: with the flag the check passes and
    -- binding fails instead, so nothing listens beyond loopback during the spec.
    local srv = H.start_server { script = "handlers/echo.lua", expect_fail = true,
      args = { "--admin", "192.0.2.1:" .. H.free_port(), "--admin-allow-remote" } }
    local code = srv:wait_exit(5)
    local log = srv:log()
    srv:kill()
    assert.equal(2, code, log)
    assert.not_matches("not a loopback address", log)
    assert.matches("%-%-admin: ", log)
  end)
end)

-- ---- profiler --------------------------------------------------------------------------

describe("profiler #integration", function()
  local srv, busy

  setup(function()
    srv = start("spec/fixtures/cpu_burn.lua", 2)
    -- A connection served by loop 1 (the fixture's reply names the loop).
    for _ = 1, 16 do
      local c = assert(H.connect(srv.port))
      assert(c:send("1000\n"))
      local line = assert(c:receive("*l"))
      if line:match("loop=1$") then
        busy = c
        break
      end
      c:close()
    end
    assert(busy, "no connection landed on loop 1")
  end)

  teardown(function()
    if busy then
      busy:close()
    end
    if srv then
      srv:stop()
    end
  end)

  -- Keeps loop 1 burning CPU, one message at a time, until done() returns a value or
  -- `seconds` pass; returns done()'s values.
  local function keep_busy(done, seconds)
    local deadline = H.now() + (seconds or 10)
    local a, b
    for _ = 1, 1000 do
      a, b = done()
      if a or H.now() > deadline then
        break
      end
      assert(busy:send("\n"))
      assert.matches("^done %d+ loop=1$", assert(busy:receive("*l")))
    end
    return a, b
  end

  it("GET /profile on a busy loop returns folded stacks dominated by the hot function", function()
    local req = start_request(srv.admin, "/profile?seconds=2&loop=1")
    local status, body = keep_busy(req.poll, 10)
    assert.equal(200, status, body)
    local all, hot = 0, 0
    for stack, n in body:gmatch("([^\n]+) (%d+)\n") do
      assert.matches("^loop 1;", stack)
      n = tonumber(n)
      all = all + n
      if stack:find("cpu_burn.lua:burn_cpu_for_profile", 1, true) then
        hot = hot + n
      end
    end
    assert.is_true(all >= 100, "too few samples: " .. all .. "\n" .. body)
    assert.is_true(hot > all / 2, ("burn_cpu_for_profile in %d of %d samples:\n%s"):format(hot, all, body))
  end)

  it("GET /flamegraph returns an SVG that parses as XML and names the hot function", function()
    local req = start_request(srv.admin, "/flamegraph?seconds=1&loop=1")
    local status, svg = keep_busy(req.poll, 10)
    assert.equal(200, status, svg)
    assert.matches("^<%?xml", svg)
    assert.matches("burn_cpu_for_profile", svg)
    local dir = H.tmpdir()
    H.write_file(dir .. "/f.svg", svg)
    local out, rc = H.sh(PY .. [[ -c "import sys, xml.etree.ElementTree as E; ]] ..
      [[r = E.parse(sys.argv[1]).getroot(); print(r.tag, len(list(r.iter())))" ]] .. dir .. "/f.svg")
    H.sh("rm -rf " .. dir)
    assert.equal(0, rc, out)
    assert.matches("^{http://www.w3.org/2000/svg}svg %d+", out)
  end)

  it("moonwire profile --seconds 1 writes an SVG flame graph, --folded the stacks", function()
    local dir = H.tmpdir()
    local cmd = ("(%s profile --admin %s --seconds 1 --loop 1 > %s/out.svg 2> %s/err; echo $? > %s/rc) &"
      ):format(H.bin, srv.admin_addr, dir, dir, dir)
    os.execute(cmd)
    local rc = keep_busy(function()
      return tonumber(H.read_file(dir .. "/rc") or "")
    end, 10)
    local svg = H.read_file(dir .. "/out.svg") or ""
    assert.equal(0, rc, H.read_file(dir .. "/err"))
    assert.matches("^<%?xml", svg)
    assert.matches("</svg>%s*$", svg)
    assert.matches("burn_cpu_for_profile", svg)

    os.execute(("(%s profile --admin %s --seconds 1 --folded > %s/out.txt; echo $? > %s/rc2) &")
      :format(H.bin, srv.admin_addr, dir, dir))
    rc = keep_busy(function()
      return tonumber(H.read_file(dir .. "/rc2") or "")
    end, 10)
    local folded = H.read_file(dir .. "/out.txt") or ""
    H.sh("rm -rf " .. dir)
    assert.equal(0, rc)
    assert.matches("loop 1;[^\n]*burn_cpu_for_profile %d+\n", folded)
  end)
end)

-- ---- idle wake-ups ---------------------------------------------------------------------

describe("idle server #integration", function()
  it("wakes each loop at most a few times a second with 2,000 idle connections", function()
    local srv = start("handlers/echo.lua", 2)
    local conns = {}
    for i = 1, 2000 do
      conns[i] = assert(H.connect(srv.port))
    end
    local open = H.wait_for(function()
      local n = 0
      for _, l in ipairs(stats(srv).loops) do
        n = n + l.open_conns
      end
      return n == 2000 and n
    end, 10)
    assert.equal(2000, open)
    socket.sleep(0.5) -- let the accept burst settle
    local t0, s0 = H.now(), stats(srv)
    socket.sleep(3)
    local t1, s1 = H.now(), stats(srv)
    local dt = t1 - t0
    local report = {}
    for i, l in ipairs(s1.loops) do
      local rate = (l.iterations - s0.loops[i].iterations) / dt
      report[#report + 1] = ("loop %d: %d conns, %.1f iterations/s, %.1f wakeups/s"):format(i,
        l.open_conns, rate, (l.wakeups - s0.loops[i].wakeups) / dt)
      assert.is_true(rate <= 5, table.concat(report, "\n"))
    end
    print("\nidle wake-ups: " .. table.concat(report, "; "))
    for _, c in ipairs(conns) do
      c:close()
    end
    srv:stop()
  end)
end)
