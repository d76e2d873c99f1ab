-- WebSocket echo: accepts the upgrade on any path and sends every text and
-- binary message back unchanged.  It is the conformance endpoint for the
-- protocol specs and the server side of the WebSocket echo benchmark.
--
--   bin/moonwire run handlers/ws_echo.lua --listen 127.0.0.1:9001
local ws = require "moonwire.ws"

return ws.handler({
  on_message = function(sock, msg, kind)
    sock:send(msg, kind)
  end,
}, {
  -- The third-party client specs echo messages of up to 16 MiB.
  max_message = 16 * 1024 * 1024,
})
