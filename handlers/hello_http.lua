-- The HTTP benchmark endpoint: GET / -> "Hello, World!".
--   bin/moonwire run handlers/hello_http.lua --listen 127.0.0.1:8080
local http = require "moonwire.http"

local app = http.router()

app:get("/", function(_, res)
    res:send("Hello, World!")
end)

return app
