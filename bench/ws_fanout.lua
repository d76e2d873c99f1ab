-- WebSocket broadcast fan-out: every connection subscribes to the topic "all"
-- and every message it sends is published to "all", so pub/sub delivers it to
-- every connection on every loop, the sender included. The server side of the
-- fan-out benchmark (bench/run.sh fanout, loadgen --mode ws-fanout).
--
--   bin/moonwire run bench/ws_fanout.lua --listen 127.0.0.1:9001 --loops 2
local ws = require "moonwire.ws"

local TOPIC = "all"

return ws.handler({
  on_open = function(sock)
    sock:subscribe(TOPIC)
  end,
  on_message = function(sock, msg)
    sock:publish(TOPIC, msg)
  end,
}, {
  -- The benchmark measures framing and delivery, not compression.
  deflate = false,
  max_message = 1024 * 1024,
})
