-- Publish/subscribe by topic across every loop. Subscriptions are per loop (they hold Lua
-- functions); a publish travels through the C core to every loop, batched per loop turn, and
-- is delivered here to the topic's subscribers, in subscription order.
local core = require "moonwire.core"
local log = require "moonwire.log"

local C = core.C
local type = type
local error = error
local xpcall = xpcall
local traceback = debug.traceback

local _M = { _VERSION = "0.1.0" }

-- topic -> { n = count, keys = { key... }, fns = { key -> fn } }
local topics = {}
-- key -> { topic -> true }, so a closing connection can leave every topic at once
local by_key = setmetatable({}, { __mode = "k" })
local loop_ptr

function _M._set_loop(ptr)
  loop_ptr = ptr
end

function _M.subscribe(topic, key, fn)
  if type(topic) ~= "string" then
    error("bad argument #1 to 'subscribe' (topic string expected)", 2)
  end
  if key == nil then
    error("bad argument #2 to 'subscribe' (subscriber key expected)", 2)
  end
  if type(fn) ~= "function" then
    error("bad argument #3 to 'subscribe' (function expected)", 2)
  end
  local t = topics[topic]
  if t == nil then
    t = { n = 0, keys = {}, fns = {} }
    topics[topic] = t
  end
  if t.fns[key] == nil then
    t.n = t.n + 1
    t.keys[t.n] = key
  end
  t.fns[key] = fn
  local ks = by_key[key]
  if ks == nil then
    ks = {}
    by_key[key] = ks
  end
  ks[topic] = true
end

function _M.unsubscribe(topic, key)
  local t = topics[topic]
  if t == nil or t.fns[key] == nil then
    return false
  end
  t.fns[key] = nil
  local keys = t.keys
  for i = 1, t.n do
    if keys[i] == key then
      table.remove(keys, i)
      break
    end
  end
  t.n = t.n - 1
  if t.n == 0 then
    topics[topic] = nil
  end
  local ks = by_key[key]
  if ks then
    ks[topic] = nil
  end
  return true
end

function _M.unsubscribe_all(key)
  local ks = by_key[key]
  if ks == nil then
    return
  end
  by_key[key] = nil
  for topic in pairs(ks) do
    _M.unsubscribe(topic, key)
  end
end

function _M.subscribers(topic)
  local t = topics[topic]
  return t and t.n or 0
end

function _M.publish(topic, msg)
  if type(topic) ~= "string" then
    error("bad argument #1 to 'publish' (topic string expected)", 2)
  end
  if type(msg) ~= "string" then
    error("bad argument #2 to 'publish' (string expected, got " .. type(msg) .. ")", 2)
  end
  if loop_ptr == nil then
    error("moonwire.pubsub.publish needs the moonwire runtime", 2)
  end
  if C.mw_publish(loop_ptr, topic, #topic, msg, #msg) ~= 0 then
    return nil, "out of memory"
  end
  return true
end

--- Called by the runtime for every message that reaches this loop.
function _M._deliver(topic, msg)
  local t = topics[topic]
  if t == nil then
    return
  end
  local keys, fns = t.keys, t.fns
  -- Iterate over a snapshot count: subscribers may unsubscribe while we deliver.
  local n = t.n
  for i = 1, n do
    local key = keys[i]
    local fn = key ~= nil and fns[key]
    if fn then
      local ok, err = xpcall(fn, traceback, msg, topic)
      if not ok then
        log.error("subscriber of '%s' failed: %s", topic, err)
      end
    end
  end
end

return _M
