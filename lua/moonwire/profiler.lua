-- The sampling profiler behind /profile and /flamegraph.
--
-- Worker side: start()/stop() run jit.profile inside the loop's own thread and fold the
-- sampled Lua stacks into "loop N;frame;frame;... count" lines, the format flame-graph tools
-- read. Admin side: collect() drives the loops through their mailboxes.
--
-- LuaJIT's profiler can sample one Lua state of a process at a time, so profiling several
-- loops takes turns: each loop is profiled for a slice (SLICE_MS) in rotation until the time
-- is up, and the slices are merged. A single loop is profiled for the whole window.
local core = require "moonwire.core"

local C = core.C
local pairs = pairs
local concat = table.concat
local sort = table.sort
local format = string.format

local _M = { _VERSION = "0.1.0", SLICE_MS = 250, ANSWER_MS = 2000 }

-- ---- worker side -----------------------------------------------------------------------

local counts, prefix, running

function _M.start(loop_id)
  local profile = require "jit.profile"
  if running then
    profile.stop()
  end
  counts = {}
  prefix = "loop " .. loop_id
  running = true
  profile.start("i1", function(thread, samples, vmstate)
    local stack = profile.dumpstack(thread, "pF;", -64)
    -- Drop the C entry frame ("@0x...") and the trailing separator.
    stack = stack:gsub("^@0x%x+;", ""):gsub(";$", "")
    if vmstate == "G" then
      stack = stack .. ";[gc]"
    elseif vmstate == "J" then
      stack = stack .. ";[jit compiler]"
    end
    local key = prefix .. ";" .. stack
    counts[key] = (counts[key] or 0) + samples
  end)
end

function _M.stop()
  if running then
    require("jit.profile").stop()
    running = false
  end
  local lines = {}
  for stack, n in pairs(counts or {}) do
    lines[#lines + 1] = format("%s %d", stack, n)
  end
  counts = nil
  return concat(lines, "\n")
end

-- ---- admin side ------------------------------------------------------------------------

local job -- the collection in progress (one at a time)

local function merge(into, text)
  for stack, n in text:gmatch("([^\n]+) (%d+)") do
    into[stack] = (into[stack] or 0) + tonumber(n)
  end
end

local function finish()
  local j = job
  job = nil
  local lines = {}
  for stack, n in pairs(j.merged) do
    lines[#lines + 1] = format("%s %d", stack, n)
  end
  sort(lines)
  local text = concat(lines, "\n") .. (#lines > 0 and "\n" or "")
  for id in pairs(j.silent) do
    -- A loop stuck in a callback cannot stop its profiler or answer; say so rather than hang.
    text = text .. format("# loop %d did not answer within %d ms (stuck in a callback?)\n", id,
      _M.ANSWER_MS)
  end
  j.done(text)
end

local function next_slice()
  local j = job
  local mw = require "moonwire"
  if mw.loop.now() >= j.deadline then
    return finish()
  end
  -- Take the next loop that has not gone silent.
  local id
  for _ = 1, #j.loops do
    j.turn = j.turn % #j.loops + 1
    if not j.silent[j.loops[j.turn]] then
      id = j.loops[j.turn]
      break
    end
  end
  if id == nil then
    return finish()
  end
  j.current = id
  j.slice = (j.slice or 0) + 1
  local slice_no = j.slice
  C.mw_profile_control(id, 1)
  local left = j.deadline - mw.loop.now()
  local slice = #j.loops == 1 and left or math.min(_M.SLICE_MS, left)
  mw.loop.after(math.max(slice, 1), function()
    C.mw_profile_control(id, 0) -- the loop answers with on_result
    mw.loop.after(_M.ANSWER_MS, function()
      if job == j and j.slice == slice_no then
        j.silent[id] = true
        j.current = nil
        next_slice()
      end
    end, { persist = true })
  end, { persist = true })
end

--- Profiles `loops` (list of ids) for `seconds`, then calls done(folded_text).
function _M.collect(seconds, loops, done)
  if job then
    return nil, "a profile is already being collected"
  end
  local mw = require "moonwire"
  job = { loops = loops, deadline = mw.loop.now() + seconds * 1000, merged = {}, turn = 0,
    done = done, silent = {} }
  next_slice()
  return true
end

--- A loop's folded stacks arrived (admin loop).
function _M.on_result(from, text)
  if not job or job.current ~= from then
    return -- late answer from a loop already given up on
  end
  job.current = nil
  merge(job.merged, text)
  next_slice()
end

return _M
