-- `require "moonwire"`: what a handler uses besides its connections: the current loop,
-- timers, logging, publish/subscribe, coroutines that may sleep.
local log = require "moonwire.log"

local type = type
local error = error

local _M = { _VERSION = "0.1.0", log = log }

-- Filled in by moonwire.runtime when a loop starts (nil under a plain luajit).
_M.loop = nil

local function need_loop(what)
  local loop = _M.loop
  if loop == nil then
    error(what .. " needs the moonwire runtime (run the script with `moonwire run`)", 3)
  end
  return loop
end

function _M.after(ms, fn)
  return need_loop("moonwire.after").after(ms, fn)
end

function _M.every(ms, fn)
  return need_loop("moonwire.every").every(ms, fn)
end

function _M.now()
  return need_loop("moonwire.now").now()
end

--- Publishes msg on topic to subscribers on every loop (see moonwire.pubsub).
function _M.publish(topic, msg)
  return require("moonwire.pubsub").publish(topic, msg)
end

-- Per-loop stores: state that must outlive a reload (module upvalues do not).
local stores = {}

--- Returns the loop's store called name, creating it with init_fn() (or {}) the first time.
-- The same table is returned after every reload of the handler.
function _M.store(name, init_fn)
  if type(name) ~= "string" then
    error("bad argument #1 to 'store' (name string expected)", 2)
  end
  local s = stores[name]
  if s == nil then
    if init_fn ~= nil then
      s = init_fn()
      if s == nil then
        error("store '" .. name .. "': init function returned nil", 2)
      end
    else
      s = {}
    end
    stores[name] = s
  end
  return s
end

--- Runs fn(...) in a coroutine that may call moonwire.sleep(ms).
function _M.spawn(fn, ...)
  return need_loop("moonwire.spawn").spawn(fn, ...)
end

--- Suspends the calling coroutine (started with moonwire.spawn) for ms milliseconds.
function _M.sleep(ms)
  return need_loop("moonwire.sleep").sleep(ms)
end

return _M
