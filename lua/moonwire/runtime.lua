-- The Lua half of a loop: loads the handler script and returns the dispatcher that the C core
-- calls for every event (runtime/lua_loop.c). One dispatcher call per event, with plain
-- numbers as arguments; the handler's callbacks are looked up on every event, so a reloaded
-- handler takes over live connections on their next event.
local ffi = require "ffi"
local core = require "moonwire.core"
local mw = require "moonwire"
local log = require "moonwire.log"
local connmod = require "moonwire.conn"
local pubsub = require "moonwire.pubsub"

local C = core.C
local cast = ffi.cast
local ffi_string = ffi.string
local type = type
local error = error
local pairs = pairs
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local newproxy = newproxy
local co_create = coroutine.create
local co_resume = coroutine.resume
local co_running = coroutine.running
local co_yield = coroutine.yield
local traceback = debug.traceback
local new_conn = connmod.new

local u8p = ffi.typeof("const uint8_t *")
local connp = ffi.typeof("mw_conn_t *")

-- Events, as in runtime/internal.h.
local EV_OPEN, EV_INPUT, EV_DRAIN, EV_TIMEOUT = 1, 2, 3, 4
local EV_CLOSE, EV_TIMER, EV_SHUTDOWN, EV_PUBLISH, EV_RELOAD = 5, 6, 7, 8, 9
local EV_PROFILE, EV_PROFILE_DONE = 10, 11

local _M = { _VERSION = "0.1.0" }

local conns = {}     -- id -> conn
local handler        -- the current handler table
local loop           -- this loop's table
local loop_ptr       -- mw_loop_t *
local timers = {}    -- ref -> timer
local next_ref = 0
local generation = 1 -- bumped by every successful reload
local script_path, run_mode, static_path, lib_dir
local app_modules = {} -- module name -> file, for modules loaded from the application's dirs
local interruptible = false -- --max-callback-ms is set

local HANDLER_FIELDS = {
  init = "function", on_open = "function", on_data = "function", on_message = "function",
  on_input = "function", on_drain = "function", on_timeout = "function", on_close = "function",
  on_shutdown = "function", on_reload = "function", protocol = "table", idle_timeout = "number",
}

--- Checks a handler table; returns it, or raises an error that names the problem.
local function validate(h, script)
  if type(h) ~= "table" then
    error(script .. ": a handler script must return a table of callbacks (got " .. type(h) .. ")", 0)
  end
  for k, want in pairs(HANDLER_FIELDS) do
    local v = h[k]
    if v ~= nil and type(v) ~= want and not (want == "function" and type(v) == "table"
        and getmetatable(v) and getmetatable(v).__call) then
      error(script .. ": handler field '" .. k .. "' must be a " .. want .. " (got " .. type(v) .. ")", 0)
    end
  end
  if h.on_message and not h.protocol and not h.on_input then
    error(script .. ": on_message needs a protocol (for example protocol = frame.lines())", 0)
  end
  local p = h.protocol
  if p and type(p.decode) ~= "function" then
    error(script .. ": protocol must have a decode(self, buf, len) method (see moonwire.frame)", 0)
  end
  return h
end

-- ---- application modules -------------------------------------------------------------
-- A searcher placed before Lua's own file searcher records which modules come from the
-- application (anything outside the moonwire library and system directories): those are
-- watched, and reloaded with the handler.

local cwd_buf = ffi.new("char[4096]")

local function absolute(path)
  if path:sub(1, 1) == "/" then
    return path
  end
  local cwd = C.getcwd(cwd_buf, 4096) ~= nil and ffi_string(cwd_buf) or "."
  return (cwd .. "/" .. path):gsub("/%./", "/")
end

local function is_library(path)
  return (lib_dir and path:sub(1, #lib_dir + 1) == lib_dir .. "/") or path:sub(1, 5) == "/usr/"
end

local function watch(path)
  if core.in_runtime and run_mode ~= "admin" then
    C.mw_watch_file(path)
  end
end

--- Compiles one of the application's files; raises "file:line: message" on a syntax error.
local function compile(path)
  local chunk, err = loadfile(path)
  if chunk == nil then
    error(err, 0)
  end
  if interruptible and jit then
    -- --max-callback-ms: keep the application's functions in the interpreter, where the
    -- watchdog's hook can stop them (LuaJIT checks no hooks inside compiled loops).
    jit.off(chunk, true)
  end
  return chunk
end

local function app_searcher(name)
  local path = package.searchpath(name, package.path)
  if path == nil then
    return nil
  end
  path = absolute(path)
  if is_library(path) then
    return nil
  end
  watch(path)
  local chunk = compile(path)
  app_modules[name] = path
  return chunk
end

--- Loads a handler script in this state: compile, run its top level, validate.
function _M.load(script, mode, static_dir)
  local chunk = compile(script)
  local ok, h = xpcall(chunk, traceback)
  if not ok then
    error(h, 0)
  end
  if mode == "ws" then
    h = require("moonwire.ws").app(h, { static = static_dir })
  end
  return validate(h, script)
end

-- ---- timers and coroutines ------------------------------------------------------------

local timer_methods = {}
local timer_mt = { __index = timer_methods, __name = "moonwire.timer" }

function timer_methods:cancel()
  local h = self._h
  if h == nil then
    return false
  end
  self._h = nil
  timers[self.ref] = nil
  C.mw_timer_cancel(h)
  return true
end

local function start_timer(ms, every, fn, what, opts)
  if type(ms) ~= "number" or ms < 0 then
    error("bad argument #1 to '" .. what .. "' (milliseconds expected)", 3)
  end
  if type(fn) ~= "function" then
    error("bad argument #2 to '" .. what .. "' (function expected)", 3)
  end
  next_ref = next_ref + 1
  local t = setmetatable({ ref = next_ref, fn = fn, every = every, gen = generation,
    persist = opts ~= nil and opts.persist or nil }, timer_mt)
  local h = C.mw_timer_start(loop_ptr, ms, every and ms or 0, next_ref)
  if h == nil then
    return nil, "out of memory"
  end
  t._h = h
  timers[next_ref] = t
  return t
end

local function fire_timer(ref)
  local t = timers[ref]
  if t == nil then
    return
  end
  if not t.every then
    timers[ref] = nil
    local h = t._h
    t._h = nil
    C.mw_timer_cancel(h)
  end
  t.fn(t)
end

local function resume(co, ...)
  local ok, err = co_resume(co, ...)
  if not ok then
    log.error("coroutine failed: %s", traceback(co, tostring(err)))
  end
end

local function spawn(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'spawn' (function expected)", 2)
  end
  local co = co_create(fn)
  resume(co, ...)
  return co
end

local function sleep(ms)
  local co, main = co_running()
  if co == nil or main then
    error("moonwire.sleep must be called inside moonwire.spawn (a callback cannot block)", 2)
  end
  -- A sleep is part of a running coroutine: it survives reloads and finishes its old code.
  start_timer(ms, false, function() resume(co) end, "sleep", { persist = true })
  return co_yield()
end

-- ---- framing ---------------------------------------------------------------------------

local counters -- mw_lua_stats_t *: messages in/out, read by the admin listener

local function framed_input(conn, h, proto, p, n)
  local buf = cast(u8p, p)
  local off = 0
  local ctr = counters
  local on_message = h.on_message
  local decode = proto.decode
  while off < n do
    local msg, used, err = decode(proto, buf + off, n - off)
    if msg == nil then
      if used == nil or used < 0 then
        log.warn("conn %d: %s, closing", conn.id, tostring(err or "malformed frame"))
        conn:fail(proto.error_reason or "limit")
        return n
      end
      break
    end
    off = off + used
    ctr.messages_in = ctr.messages_in + 1 -- counted here rather than via conn.count_in: hot
    if on_message then
      on_message(conn, msg)
    end
    if conn.closed or conn._paused then
      break
    end
  end
  return off
end

-- ---- what the watchdog reports ------------------------------------------------------------

local function where(name, f)
  if type(f) ~= "function" then
    return name
  end
  local info = debug.getinfo(f, "S")
  return ("%s at %s:%d"):format(name, info.short_src, info.linedefined)
end

local function describe_callbacks(h)
  if not core.in_runtime then
    return
  end
  local input = h.on_input and where("on_input", h.on_input) or h.on_data and where("on_data", h.on_data)
    or h.protocol and where("on_message", h.on_message) or "input"
  local info = {
    [EV_OPEN] = where("on_open", h.on_open), [EV_INPUT] = input,
    [EV_DRAIN] = where("on_drain", h.on_drain), [EV_TIMEOUT] = where("on_timeout", h.on_timeout),
    [EV_CLOSE] = where("on_close", h.on_close), [EV_TIMER] = "a timer callback",
    [EV_SHUTDOWN] = where("on_shutdown", h.on_shutdown), [EV_PUBLISH] = "a pubsub subscriber",
    [EV_RELOAD] = "a reload of " .. tostring(script_path),
  }
  for ev, text in pairs(info) do
    C.mw_loop_set_callback_info(loop_ptr, ev, text)
  end
end

-- ---- reload -------------------------------------------------------------------------------

local function first_line(msg)
  msg = tostring(msg)
  return msg:match("^([^\n]*)") or msg
end

--- Reloads the handler in this loop. All or nothing: the new code is compiled and its top
-- level run with the application's modules loaded afresh; on any error the previous modules
-- are put back and the old handler keeps serving.
function _M.reload()
  local saved = {}
  for name in pairs(app_modules) do
    saved[name] = package.loaded[name]
    package.loaded[name] = nil
  end
  local old_modules = app_modules
  app_modules = {}
  local ok, h = xpcall(_M.load, traceback, script_path, run_mode, static_path)
  if not ok then
    for name in pairs(app_modules) do
      package.loaded[name] = nil
    end
    for name, mod in pairs(saved) do
      package.loaded[name] = mod
    end
    app_modules = old_modules
    local msg = first_line(h)
    -- One line for the whole server: every loop compiles the same files.
    log.write(loop.id == 1 and log.ERROR or log.DEBUG,
      "reload failed, generation %d keeps serving: %s", generation, msg)
    C.mw_loop_set_status(loop_ptr, generation, msg)
    return false, msg
  end
  local old = handler
  describe_callbacks(h)
  generation = generation + 1
  loop.generation = generation
  handler = h
  local cancelled = 0
  for _, t in pairs(timers) do
    if not t.persist and t.gen < generation then
      t:cancel()
      cancelled = cancelled + 1
    end
  end
  log.write(loop.id == 1 and log.INFO or log.DEBUG, "reloaded %s: generation %d%s", script_path,
    generation, cancelled > 0 and (", cancelled " .. cancelled .. " timer(s) of the old code") or "")
  C.mw_loop_set_status(loop_ptr, generation, "")
  -- Compiled traces keep the old code's prototypes alive: drop them so the old version can
  -- be collected (the new code is compiled again as it runs hot).
  if jit then
    jit.flush()
  end
  if h.init then
    h.init(loop)
  end
  if h.on_reload then
    h.on_reload(old, loop)
  end
  return true
end

-- ---- the dispatcher ----------------------------------------------------------------------

local function dispatch(ev, id, a, b)
  if ev == EV_INPUT then
    local conn = conns[id]
    if conn == nil then
      return b
    end
    local h = handler
    local f = h.on_input
    if f then
      return f(conn, cast(u8p, a), b)
    end
    f = h.on_data
    if f then
      f(conn, ffi_string(cast(u8p, a), b))
      return b
    end
    local proto = h.protocol
    if proto then
      conn._proto = proto
      return framed_input(conn, h, proto, a, b)
    end
    return b
  elseif ev == EV_OPEN then
    local cptr = cast(connp, a)
    local conn = new_conn(a, id)
    conns[id] = conn
    local h = handler
    conn._proto = h.protocol
    if h.idle_timeout then
      C.mw_conn_set_timeout(cptr, h.idle_timeout)
    end
    local f = h.on_open
    if f then
      f(conn)
    end
    return 0
  elseif ev == EV_CLOSE then
    local conn = conns[id]
    if conn == nil then
      return 0
    end
    conns[id] = nil
    conn.closed = true
    conn._c = nil
    pubsub.unsubscribe_all(conn)
    local f = handler.on_close
    if f then
      f(conn, a)
    end
    return 0
  elseif ev == EV_DRAIN then
    local conn = conns[id]
    local f = handler.on_drain
    if conn and f then
      f(conn)
    end
    return 0
  elseif ev == EV_TIMEOUT then
    local conn = conns[id]
    local f = handler.on_timeout
    if conn and f then
      f(conn)
      return 1
    end
    return 0
  elseif ev == EV_TIMER then
    fire_timer(id)
    return 0
  elseif ev == EV_PUBLISH then
    pubsub._deliver(id, a)
    return 0
  elseif ev == EV_RELOAD then
    _M.reload()
    return 0
  elseif ev == EV_PROFILE then
    local profiler = require "moonwire.profiler"
    if id == 1 then
      profiler.start(loop.id)
    else
      local folded = profiler.stop()
      C.mw_profile_result(loop_ptr, folded, #folded)
    end
    return 0
  elseif ev == EV_PROFILE_DONE then
    require("moonwire.profiler").on_result(id, a)
    return 0
  elseif ev == EV_SHUTDOWN then
    local f = handler.on_shutdown
    if f then
      f(loop)
    end
    return 0
  end
  return 0
end

-- ---- garbage-collector pacing -----------------------------------------------------------

-- Each cycle marks everything live, so the cost of marking per allocated byte is
-- live / (threshold - live). LuaJIT starts a cycle at 2x the live heap; the runtime lets it
-- grow to at least live + 4 MB, so a loop with a small heap (an HTTP server's is ~0.4 MB)
-- does not run a cycle every ~1,000 requests (+2.6% requests per CPU-second, both settings
-- serving at once). Past 4 MB live it keeps LuaJIT's 2x: a 4x floor gained nothing measurable
-- at 50 or 1,000 WebSocket connections and left 10,000 idle ones at 1,564 bytes of RSS each
-- instead of 1,390 (handshake garbage). Set after every cycle.
local GC_PAUSE_MIN, GC_HEADROOM_KB = 200, 4096
local gc_pause_set -- what the runtime last set; nil once a handler has set its own

local function gc_pause()
  if gc_pause_set == nil then
    return
  end
  local kb = collectgarbage("count")
  local want = math.floor(100 + 100 * GC_HEADROOM_KB / (kb > 1 and kb or 1))
  if want < GC_PAUSE_MIN then
    want = GC_PAUSE_MIN
  end
  local prev = collectgarbage("setpause", want)
  if prev ~= gc_pause_set then
    -- The handler chose its own pause (collectgarbage("setpause", n)): keep it.
    collectgarbage("setpause", prev)
    gc_pause_set = nil
    return
  end
  gc_pause_set = want
end

--- Number of open connections on this loop.
local function count_conns()
  local n = 0
  for _ in pairs(conns) do
    n = n + 1
  end
  return n
end

--- Called once by the C core in each loop's own thread. Returns the dispatcher.
function _M.start(lud, id, nloops, script, mode, static_dir, lua_dir)
  loop_ptr = cast("mw_loop_t *", lud)
  counters = C.mw_loop_lua_stats(loop_ptr)
  connmod.set_counters(counters)
  script_path, run_mode, static_path, lib_dir = script, mode, static_dir, lua_dir
  -- Count garbage-collector cycles: a sentinel whose finalizer re-arms itself each cycle.
  -- The same finalizer sizes the next cycle (gc_pause).
  local function gc_sentinel()
    local proxy = newproxy(true)
    getmetatable(proxy).__gc = function()
      C.mw_stats_gc_cycle(loop_ptr, collectgarbage("count") * 1024)
      gc_pause()
      gc_sentinel()
    end
  end
  gc_sentinel()
  table.insert(package.loaders, 2, app_searcher)
  loop = {
    id = id,
    loops = nloops,
    script = script,
    generation = generation,
    after = function(ms, fn, opts) return start_timer(ms, false, fn, "after", opts) end,
    every = function(ms, fn, opts) return start_timer(ms, true, fn, "every", opts) end,
    now = function() return C.mw_loop_now(loop_ptr) end,
    spawn = spawn,
    sleep = sleep,
    _ptr = loop_ptr,
    log = log,
    connections = count_conns,
    each_connection = function() return pairs(conns) end,
  }
  -- Paced from the start: the first cycle too waits for live + 4 MB, and what the runtime
  -- sets is then far from LuaJIT's default of 200, which a handler may well set back.
  collectgarbage("setpause", GC_PAUSE_MIN)
  gc_pause_set = GC_PAUSE_MIN
  gc_pause()
  -- A request's whole path (parse, route, respond) is one trace only if the recorder may
  -- follow it that far: LuaJIT's default of 4,000 IR instructions per trace cut the HTTP
  -- path in pieces, one of which fell back to the interpreter ("trace too long").
  if jit then
    jit.opt.start("maxrecord=16000", "maxirconst=1000", "maxside=200", "maxsnap=1000",
      "maxtrace=4000", "maxmcode=16384")
  end
  log._set_loop(id)
  connmod.set_loop(loop)
  pubsub._set_loop(loop_ptr)
  mw.loop = loop
  watch(script)
  interruptible = C.mw_config_max_callback_ms() > 0
  handler = _M.load(script, mode, static_dir)
  describe_callbacks(handler)
  C.mw_loop_set_status(loop_ptr, generation, "")
  local init = handler.init
  if init then
    init(loop)
  end
  return dispatch
end

return _M
