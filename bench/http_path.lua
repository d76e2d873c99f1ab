-- The HTTP request path without sockets: an app's on_input called in a loop, inside the
-- runtime (so the FFI byte primitives and JIT settings are the server's), against a
-- connection whose methods do nothing. Prints the time per request and the bytes of Lua
-- memory each request allocates, then exits.
--
--   bin/moonwire run bench/http_path.lua --listen 127.0.0.1:19190 --loops 1
--
-- Environment: MW_PATH_APP (default handlers/hello_http.lua), MW_PATH_N (requests timed,
-- default 3000000), MW_PATH_REQUEST (the request bytes, default wrk's GET /).
local ffi = require "ffi"

local APP = os.getenv("MW_PATH_APP") or "handlers/hello_http.lua"
local N = tonumber(os.getenv("MW_PATH_N") or "3000000")
local REQUEST = os.getenv("MW_PATH_REQUEST") or "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"

local app = dofile(APP)
local request = ffi.new("uint8_t[?]", #REQUEST)
ffi.copy(request, REQUEST, #REQUEST)
local ptr = ffi.cast("const uint8_t *", request)
local len = #REQUEST

local written = 0
local function ok()
    return true
end
local conn = setmetatable({ id = 1, closed = false, loop = { now = function() return 0 end } }, {
    __index = {
        write_ptr = function(_, _, n)
            written = written + n
            return true
        end,
        write = function(_, s)
            written = written + #s
            return true
        end,
        set_timeout = ok,
        pause = ok,
        resume = ok,
        close = ok,
    },
})

local function run(n)
    local on_input = app.on_input
    for _ = 1, n do
        if on_input(conn, ptr, len) ~= len then
            local st = conn._http
            error("the app did not consume the request (closing: " .. tostring(st and st.closing) .. ")")
        end
    end
    return request -- keeps the buffer alive while ptr is in use
end

return {
    init = function()
        run(200000)
        -- Bytes allocated per request, with the collector stopped for a short run.
        collectgarbage()
        collectgarbage("stop")
        local kb0 = collectgarbage("count")
        run(10000)
        local bytes = (collectgarbage("count") - kb0) * 1024 / 10000
        collectgarbage("restart")
        written = 0
        local t0 = os.clock()
        run(N)
        local t = os.clock() - t0
        io.stdout:write(("%s: %.0f ns per request, %.0f bytes allocated per request, %.0f response bytes\n")
            :format(APP, t / N * 1e9, bytes, written / N))
        io.stdout:flush()
        os.exit(0)
    end,
}
