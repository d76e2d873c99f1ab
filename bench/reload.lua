-- Reload benchmarks (run by bench/run.sh reload, or: luajit bench/reload.lua latency|load).
--
-- latency: a 4-loop server; one connection per loop asks "which generation?"; the handler is
--   saved by rename N times and each time we measure from the rename to the moment every
--   loop answers with the new generation.
-- load: 1,000 echo connections ping-pong 64-byte messages (bench/bin/loadgen, every echo
--   checked) for a fixed time, once without reloads and once while the handler is reloaded
--   100 times; compares p99 round trips and counts errors.
package.path = "spec/?.lua;" .. package.path
local H = require "helper"
local socket = require "socket"
local signal = require "posix.signal"

local mode = arg[1] or "latency"
local N = tonumber(os.getenv("RELOADS") or "100")

local HANDLER = [[
-- generation %d
return {
  on_data = function(conn, data)
    if data == "gen?" then
      return conn:write(conn.loop.generation .. " " .. conn.loop.id .. "\n")
    end
    conn:write(data)
  end,
}
]]

local function percentile(list, p)
  table.sort(list)
  return list[math.max(1, math.ceil(#list * p))]
end

local function save(dir, n)
  H.write_file(dir .. "/h.lua.tmp", HANDLER:format(n))
  os.rename(dir .. "/h.lua.tmp", dir .. "/h.lua")
end

local function latency()
  local dir = H.tmpdir()
  save(dir, 1)
  local srv = H.start_server { script = dir .. "/h.lua", loops = 4, args = { "--log-level", "warn" } }
  -- One connection on each of the 4 loops (SO_REUSEPORT spreads them; the handler says
  -- which loop answers): a reload is complete when all four answer with the new generation.
  local function ask(c)
    assert(c:send("gen?"))
    local gen, loop = assert(c:receive("*l")):match("(%d+) (%d+)")
    return tonumber(gen), tonumber(loop)
  end
  local conns, seen = {}, {}
  for _ = 1, 200 do
    local c = assert(H.connect(srv.port))
    local _, loop = ask(c)
    if seen[loop] then
      c:close()
    else
      seen[loop] = true
      conns[#conns + 1] = c
    end
    if #conns == 4 then break end
  end
  assert(#conns == 4, "could not reach all 4 loops")
  local function gen_of(c)
    return (ask(c))
  end
  local times = {}
  for i = 1, N do
    local want = i + 1
    local t0 = socket.gettime()
    save(dir, want)
    for _, c in ipairs(conns) do
      while gen_of(c) < want do
        if socket.gettime() - t0 > 5 then
          error("reload " .. i .. " did not reach every loop within 5 s")
        end
      end
    end
    times[#times + 1] = (socket.gettime() - t0) * 1000
    socket.sleep(0.03) -- let the debounce window of this save close before the next
  end
  for _, c in ipairs(conns) do
    c:close()
  end
  srv:stop()
  print(("reload-latency loops=4 probes=%d reloads=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f"):format(
    #conns, #times, percentile(times, 0.5), percentile(times, 0.99), percentile(times, 1.0)))
end

local function loadgen(port, seconds)
  local p = io.popen(("taskset -c 1 bench/bin/loadgen --mode tcp --host 127.0.0.1 --port %d " ..
    "--conns 1000 --seconds %d --warmup 1 --size 64 2>&1"):format(port, seconds))
  return p
end

local function load()
  local dir = H.tmpdir()
  save(dir, 1)
  local srv = H.start_server { script = dir .. "/h.lua", loops = 1,
    args = { "--log-level", "warn", "--no-watch" } }
  -- Pin the server to CPU 0 like the other benchmarks.
  os.execute("taskset -pc 0 " .. srv.pid .. " >/dev/null")
  local base = loadgen(srv.port, 10):read("*a")
  local p = loadgen(srv.port, 12)
  socket.sleep(1.5)
  for _ = 1, 100 do
    srv:signal(signal.SIGHUP)
    socket.sleep(0.1)
  end
  local during = p:read("*a")
  p:close()
  local c = assert(H.connect(srv.port))
  assert(c:send("gen?"))
  local reloads = tonumber(c:receive("*l"):match("^(%d+)")) - 1
  c:close()
  srv:stop()
  print("reload-load baseline: " .. base:gsub("\n$", ""))
  print("reload-load reloading: " .. during:gsub("\n$", ""))
  local b99 = tonumber(base:match("p99_us=(%d+)"))
  local d99 = tonumber(during:match("p99_us=(%d+)"))
  print(("reload-load reloads_seen=%d p99_ratio=%.2f errors_baseline=%s errors_reloading=%s"):format(
    reloads, d99 / b99, base:match("errors=(%d+)") or "?", during:match("errors=(%d+)") or "?"))
end

if mode == "latency" then
  latency()
elseif mode == "load" then
  load()
else
  io.stderr:write("usage: luajit bench/reload.lua latency|load\n")
  os.exit(2)
end
