-- Line framing: each "\n"-terminated line comes back as one message.
local frame = require "moonwire.frame"

return {
  protocol = frame.lines { max = 64 * 1024 },
  on_message = function(conn, line)
    conn:send(line)
  end,
}
