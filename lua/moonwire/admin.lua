-- The admin listener (`--admin 127.0.0.1:PORT`): an HTTP app running in a loop of its own,
-- reading the worker loops' statistics through the FFI.
--
--   GET  /metrics      Prometheus text format
--   GET  /stats        JSON: process and per-loop counters
--   GET  /status       text: generation and last reload error per loop
--   GET  /top          text table with rates (what `moonwire top` shows)
--   POST /reload       reload every loop, answer once each has a result
--   POST /gc           full garbage collection in every loop: heap before and after
--   GET  /profile      folded stacks (?seconds=N&loop=K|all)
--   GET  /flamegraph   the same as an SVG flame graph
--   GET  /             live dashboard
local ffi = require "ffi"
local core = require "moonwire.core"
local http = require "moonwire.http"
local mw = require "moonwire"
local profiler = require "moonwire.profiler"
local dashboard = require "moonwire.admin_page"

local C = core.C
local ffi_string = ffi.string
local tonumber = tonumber
local concat = table.concat
local format = string.format

local app = http.router()

local snap = ffi.new("mw_loop_stats_t")

-- Per-loop counters as a Lua table.
local FIELDS = {
  "open_conns", "accepted", "closed", "rejected", "closed_eof", "closed_reset", "closed_timeout",
  "closed_error", "closed_limit", "closed_local", "bytes_in", "bytes_out", "reads", "writes",
  "messages_in", "messages_out", "handler_errors", "write_queue_bytes", "paused_conns", "timers",
  "iterations", "wakeups", "lag_us", "lag_max_us", "lua_bytes", "gc_cycles", "stuck", "stuck_ms",
  "spinning_fds", "lua_live_bytes", "gc_forced", "gc_forced_before",
}

local function loop_stats(i)
  if C.mw_stats_loop(i, snap) ~= 0 then
    return nil
  end
  local t = { id = snap.id, generation = tonumber(snap.generation), status_seq = tonumber(snap.status_seq) }
  for _, f in ipairs(FIELDS) do
    t[f] = tonumber(snap[f])
  end
  local err = ffi_string(snap.reload_error)
  t.reload_error = err ~= "" and err or nil
  return t
end

local function all_loops()
  local loops = {}
  for i = 1, C.mw_stats_nloops() do
    loops[i] = loop_stats(i)
  end
  return loops
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

local CLK_TCK = 100

local function process_stats()
  local status = read("/proc/self/status") or ""
  local stat = read("/proc/self/stat") or ""
  local rest = stat:match("%) (.*)$") or ""
  local fields = {}
  for w in rest:gmatch("%S+") do
    fields[#fields + 1] = w
  end
  local fds = 0
  local ok, dirent = pcall(require, "posix.dirent")
  if ok then
    for name in dirent.files("/proc/self/fd") do
      if name ~= "." and name ~= ".." then
        fds = fds + 1
      end
    end
    fds = fds - 1 -- the directory being listed
  end
  return {
    rss_bytes = (tonumber(status:match("VmRSS:%s+(%d+)")) or 0) * 1024,
    threads = tonumber(status:match("Threads:%s+(%d+)")) or 0,
    cpu_seconds = ((tonumber(fields[12]) or 0) + (tonumber(fields[13]) or 0)) / CLK_TCK,
    open_fds = fds,
    malloc_bytes = tonumber(C.mw_process_malloc_bytes()),
    loops = tonumber(C.mw_stats_nloops()),
  }
end

-- ---- rates, sampled once a second by this loop ------------------------------------------

local last, prev -- { at = seconds, loops = {...} }
local RATE_FIELDS = { "messages_in", "messages_out", "bytes_in", "bytes_out", "accepted", "wakeups",
  "iterations" }

local function sample()
  prev = last
  last = { at = C.mw_loop_update_time(mw.loop._ptr) / 1000, loops = all_loops() }
end

local function rates()
  local out = {}
  if not (last and prev) then
    return out
  end
  local dt = last.at - prev.at
  if dt <= 0 then
    return out
  end
  for i, l in ipairs(last.loops) do
    local p = prev.loops[i]
    local r = {}
    for _, f in ipairs(RATE_FIELDS) do
      r[f] = p and (l[f] - p[f]) / dt or 0
    end
    out[i] = r
  end
  return out
end

-- ---- JSON ------------------------------------------------------------------------------


app:get("/stats", function(req, res)
  local r = rates()
  local loops = all_loops()
  for i, l in ipairs(loops) do
    l.rates = r[i] or {}
  end
  res:set("Cache-Control", "no-store")
  res:json { process = process_stats(), loops = loops }
end)

-- ---- Prometheus ------------------------------------------------------------------------

local METRICS = {
  { "moonwire_connections_open", "gauge", "Open connections.", "open_conns" },
  { "moonwire_connections_accepted_total", "counter", "Connections accepted.", "accepted" },
  { "moonwire_connections_rejected_total", "counter", "Connections closed at once: over --max-conns.",
    "rejected" },
  { "moonwire_bytes_received_total", "counter", "Bytes read from sockets.", "bytes_in" },
  { "moonwire_bytes_sent_total", "counter", "Bytes written to sockets.", "bytes_out" },
  { "moonwire_messages_received_total", "counter", "Messages decoded by framers and protocols.",
    "messages_in" },
  { "moonwire_messages_sent_total", "counter", "Messages sent with conn:send or protocols.",
    "messages_out" },
  { "moonwire_reads_total", "counter", "Socket reads.", "reads" },
  { "moonwire_writes_total", "counter", "Socket writes.", "writes" },
  { "moonwire_handler_errors_total", "counter", "Lua errors raised by handler callbacks.",
    "handler_errors" },
  { "moonwire_write_queue_bytes", "gauge", "Bytes queued for writing, not yet taken by the kernel.",
    "write_queue_bytes" },
  { "moonwire_connections_paused", "gauge", "Connections not reading (paused or backpressure).",
    "paused_conns" },
  { "moonwire_timers", "gauge", "Active Lua timers.", "timers" },
  { "moonwire_loop_iterations_total", "counter", "Event-loop turns.", "iterations" },
  { "moonwire_loop_wakeups_total", "counter", "Cross-thread wake-ups (mailbox).", "wakeups" },
  { "moonwire_loop_lag_seconds", "gauge", "How late the last 100 ms probe timer fired.", "lag_us", 1e-6 },
  { "moonwire_loop_lag_max_seconds", "gauge", "Largest lag seen.", "lag_max_us", 1e-6 },
  { "moonwire_lua_memory_bytes", "gauge", "Lua heap size.", "lua_bytes" },
  { "moonwire_lua_gc_cycles_total", "counter", "Completed Lua garbage-collector cycles.", "gc_cycles" },
  { "moonwire_lua_live_bytes", "gauge",
    "Lua heap when the last garbage-collector cycle ended: live data plus what was allocated during the cycle.",
    "lua_live_bytes" },
  { "moonwire_lua_gc_forced_total", "counter", "Full collections asked for with POST /gc.", "gc_forced" },
  { "moonwire_stuck_callbacks_total", "counter", "Callbacks that ran past the watchdog threshold.",
    "stuck" },
  { "moonwire_stuck_callback_seconds", "gauge", "How long the current callback has run, when stuck.",
    "stuck_ms", 1e-3 },
  { "moonwire_spinning_fds", "gauge", "Sockets that keep waking the loop without progress.",
    "spinning_fds" },
  { "moonwire_handler_generation", "gauge", "Handler code generation (1 + successful reloads).",
    "generation" },
}

local REASONS = { "eof", "reset", "timeout", "error", "limit", "local" }

local function num(v)
  if v == math.floor(v) and v < 1e15 then
    return format("%d", v)
  end
  return format("%.9g", v)
end

local function metrics_text()
  local out = {}
  local loops = all_loops()
  for _, m in ipairs(METRICS) do
    local name, kind, help, field, scale = m[1], m[2], m[3], m[4], m[5]
    out[#out + 1] = "# HELP " .. name .. " " .. help
    out[#out + 1] = "# TYPE " .. name .. " " .. kind
    for _, l in ipairs(loops) do
      out[#out + 1] = format('%s{loop="%d"} %s', name, l.id, num(l[field] * (scale or 1)))
    end
  end
  out[#out + 1] = "# HELP moonwire_connections_closed_total Connections closed, by reason."
  out[#out + 1] = "# TYPE moonwire_connections_closed_total counter"
  for _, l in ipairs(loops) do
    for _, r in ipairs(REASONS) do
      out[#out + 1] = format('moonwire_connections_closed_total{loop="%d",reason="%s"} %s', l.id, r,
        num(l["closed_" .. r]))
    end
  end
  out[#out + 1] = "# HELP moonwire_reload_error Whether the loop's last reload failed (1) or not (0)."
  out[#out + 1] = "# TYPE moonwire_reload_error gauge"
  for _, l in ipairs(loops) do
    out[#out + 1] = format('moonwire_reload_error{loop="%d"} %d', l.id, l.reload_error and 1 or 0)
  end
  local p = process_stats()
  local proc = {
    { "moonwire_process_resident_memory_bytes", "gauge", "Resident set size.", p.rss_bytes },
    { "moonwire_process_open_fds", "gauge", "Open file descriptors.", p.open_fds },
    { "moonwire_process_malloc_bytes", "gauge",
      "C heap in use (malloc): connections, buffers, queues; the Lua heaps are apart.", p.malloc_bytes },
    { "moonwire_process_cpu_seconds_total", "counter", "User and system CPU time.", p.cpu_seconds },
    { "moonwire_process_threads", "gauge", "Threads.", p.threads },
    { "moonwire_loops", "gauge", "Worker loops.", p.loops },
  }
  for _, m in ipairs(proc) do
    out[#out + 1] = "# HELP " .. m[1] .. " " .. m[3]
    out[#out + 1] = "# TYPE " .. m[1] .. " " .. m[2]
    out[#out + 1] = m[1] .. " " .. num(m[4])
  end
  out[#out + 1] = ""
  return concat(out, "\n")
end

app:get("/metrics", function(req, res)
  res:set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
  res:send(metrics_text())
end)

-- ---- status and top ----------------------------------------------------------------------

local function status_text()
  local out = {}
  local p = process_stats()
  out[#out + 1] = format("moonwire: %d loop(s), rss %.1f MiB, %d fds, cpu %.2f s", p.loops,
    p.rss_bytes / 1048576, p.open_fds, p.cpu_seconds)
  for _, l in ipairs(all_loops()) do
    out[#out + 1] = format("loop %d: generation %d, %d connection(s), %s", l.id, l.generation,
      l.open_conns, l.reload_error and ("last reload failed: " .. l.reload_error) or "last reload ok")
  end
  out[#out + 1] = ""
  return concat(out, "\n")
end

app:get("/status", function(req, res)
  res:set("Content-Type", "text/plain; charset=utf-8")
  res:send(status_text())
end)

app:get("/top", function(req, res)
  local out = {}
  local p = process_stats()
  out[#out + 1] = format("moonwire top  rss %.1f MiB  fds %d  cpu %.2f s  (rates over the last second)",
    p.rss_bytes / 1048576, p.open_fds, p.cpu_seconds)
  out[#out + 1] = format("%-5s %8s %10s %10s %11s %11s %8s %8s %9s %4s", "loop", "conns", "msg/s in",
    "msg/s out", "bytes/s in", "bytes/s out", "lag ms", "lua KiB", "wakeup/s", "gen")
  local r = rates()
  for i, l in ipairs(all_loops()) do
    local x = r[i] or {}
    out[#out + 1] = format("%-5d %8d %10.0f %10.0f %11.0f %11.0f %8.1f %8.0f %9.1f %4d", l.id,
      l.open_conns, x.messages_in or 0, x.messages_out or 0, x.bytes_in or 0, x.bytes_out or 0,
      l.lag_us / 1000, l.lua_bytes / 1024, x.wakeups or 0, l.generation)
  end
  out[#out + 1] = ""
  res:set("Content-Type", "text/plain; charset=utf-8")
  res:send(concat(out, "\n"))
end)

-- ---- asking every loop -----------------------------------------------------------------

-- Asks every worker loop for something (ask() posts the request) and calls
-- answer(loops, done, before) once each loop's counter `field` has moved past its value at
-- the time of asking, or after limit_ms with done = false. A loop answers between two events,
-- so a loop busy in a long callback is late; the counter, not the loop's other fields, tells
-- a fresh answer from what an earlier request left.
local function ask_loops(field, ask, limit_ms, answer)
  local before = {}
  for i, l in ipairs(all_loops()) do
    before[i] = l[field]
  end
  ask()
  local waited = 0
  local timer
  timer = mw.loop.every(10, function()
    waited = waited + 10
    local loops = all_loops()
    local done = true
    for i, l in ipairs(loops) do
      if l[field] <= before[i] then
        done = false
      end
    end
    if done or waited >= limit_ms then
      timer:cancel()
      answer(loops, done, before)
    end
  end)
end

-- ---- reload ------------------------------------------------------------------------------

-- A loop has answered when it has set its status since the request. Its generation and error
-- alone cannot tell: an error left by an earlier failed reload looks the same as a new one,
-- and a loop busy in a long callback would be reported with that stale error.
app:post("/reload", function(req, res)
  ask_loops("status_seq", C.mw_reload_all, 5000, function(loops, done)
    local out = {}
    local ok = true
    for _, l in ipairs(loops) do
      out[#out + 1] = { loop = l.id, generation = l.generation, error = l.reload_error }
      ok = ok and not l.reload_error and done
    end
    res:status(ok and 200 or 409)
    res:json { ok = ok, loops = out }
  end)
end)

-- ---- garbage collection -----------------------------------------------------------------

-- A full collection in every worker loop, run between two events like a reload. It answers
-- what the heap holds once garbage is gone: the figure to compare over time when looking for
-- a leak (the heap between collections is mostly garbage, by the runtime's GC pacing).
app:post("/gc", function(req, res)
  ask_loops("gc_forced", C.mw_gc_all, 10000, function(loops, done, before)
    local out = {}
    for i, l in ipairs(loops) do
      if l.gc_forced > before[i] then
        out[#out + 1] = format("loop %d: Lua heap %.1f KiB -> %.1f KiB", l.id,
          l.gc_forced_before / 1024, l.lua_live_bytes / 1024)
      else
        out[#out + 1] = format("loop %d: busy, no answer within 10 s", l.id)
      end
    end
    out[#out + 1] = ""
    res:status(done and 200 or 504)
    res:set("Content-Type", "text/plain; charset=utf-8")
    res:send(concat(out, "\n"))
  end)
end)

-- ---- profiler ----------------------------------------------------------------------------

local function profile_args(req)
  local seconds = tonumber(req.query.seconds or "10")
  if not seconds or seconds <= 0 or seconds > 300 then
    return nil, "seconds must be a number from 0 to 300"
  end
  local which = req.query.loop or "all"
  local n = tonumber(C.mw_stats_nloops())
  local loops = {}
  if which == "all" then
    for i = 1, n do
      loops[i] = i
    end
  else
    local k = tonumber(which)
    if not k or k < 1 or k > n or k ~= math.floor(k) then
      return nil, "loop must be all or a number from 1 to " .. n
    end
    loops[1] = k
  end
  return seconds, loops
end

local function profile_route(render)
  return function(req, res)
    local seconds, loops = profile_args(req)
    if not seconds then
      res:status(400)
      return res:send(loops .. "\n")
    end
    local ok, err = profiler.collect(seconds, loops, function(folded)
      render(res, folded, seconds, loops)
    end)
    if not ok then
      res:status(409)
      res:send(err .. "\n")
    end
  end
end

app:get("/profile", profile_route(function(res, folded)
  res:set("Content-Type", "text/plain; charset=utf-8")
  res:send(folded)
end))

app:get("/flamegraph", profile_route(function(res, folded, seconds, loops)
  res:set("Content-Type", "image/svg+xml")
  res:send(require("moonwire.flamegraph").svg(folded, {
    title = format("moonwire: %g s, loop %s", seconds, #loops == 1 and loops[1] or "all"),
  }))
end))

-- ---- dashboard ---------------------------------------------------------------------------

app:get("/", function(req, res)
  res:set("Content-Type", "text/html; charset=utf-8")
  res:send(dashboard.html)
end)

app.init = function(loop)
  sample()
  loop.every(1000, sample, { persist = true })
end

return app
