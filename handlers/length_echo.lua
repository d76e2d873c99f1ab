-- 4-byte big-endian length prefix + payload; each message is echoed in the same framing.
local frame = require "moonwire.frame"

return {
  protocol = frame.length_prefixed { bytes = 4, max = 1024 * 1024 },
  on_message = function(conn, msg)
    conn:send(msg)
  end,
}
