-- Logging from handlers: one line per call on stderr, with the level and the loop id, in the
-- same stream as the runtime's own lines. Formatting is skipped below the current level.
local core = require "moonwire.core"

local C = core.C
local in_runtime = core.in_runtime
local format = string.format
local select = select
local tostring = tostring
local io_stderr = io.stderr

local _M = { _VERSION = "0.1.0", DEBUG = 0, INFO = 1, WARN = 2, ERROR = 3 }

local loop_id = 0

function _M._set_loop(id)
  loop_id = id
end

local function level_on(level)
  if in_runtime then
    return level >= C.mw_log_get_level()
  end
  return level >= 1
end

local function emit(level, fmt, ...)
  if not level_on(level) then
    return
  end
  local msg
  if select("#", ...) > 0 then
    msg = format(fmt, ...)
  else
    msg = tostring(fmt)
  end
  if in_runtime then
    C.mw_log_write(level, loop_id, msg)
  else
    io_stderr:write(msg, "\n")
  end
end
_M.write = emit

function _M.debug(fmt, ...) emit(0, fmt, ...) end
function _M.info(fmt, ...) emit(1, fmt, ...) end
function _M.warn(fmt, ...) emit(2, fmt, ...) end
function _M.error(fmt, ...) emit(3, fmt, ...) end

return _M
