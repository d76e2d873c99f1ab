-- A binary protocol server: every frame is a 4-byte big-endian length and a payload.
-- The payload's first byte is the operation:
--   "P"            ping          -> "P" .. "pong"
--   "S" key \0 val set           -> "O"
--   "G" key        get           -> "V" .. value, or "N" when missing
--   "D" key        delete        -> "O"
-- Anything else gets "E" .. message. The key/value table lives in a per-loop store, so it
-- survives a reload of this file (each loop has its own; see docs/reload.md).
local frame = require "moonwire.frame"
local mw = require "moonwire"

local db = mw.store("protocol-db")
local log = mw.log

local ops = {}

function ops.P()
  return "Ppong"
end

function ops.S(body)
  local key, value = body:match("^([^%z]+)%z(.*)$")
  if not key then
    return "Eset needs key\\0value"
  end
  db[key] = value
  return "O"
end

function ops.G(body)
  local value = db[body]
  if value == nil then
    return "N"
  end
  return "V" .. value
end

function ops.D(body)
  db[body] = nil
  return "O"
end

return {
  protocol = frame.length_prefixed { bytes = 4, max = 1024 * 1024 },
  idle_timeout = 60000,

  on_open = function(conn)
    log.debug("client %s:%d connected", conn:peer())
  end,

  on_message = function(conn, msg)
    local op = ops[msg:sub(1, 1)]
    if op == nil then
      return conn:send("Eunknown operation")
    end
    conn:send(op(msg:sub(2)))
  end,

  on_close = function(conn, reason)
    log.debug("client %d gone (%s)", conn.id, reason)
  end,
}
