-- luv_echo.lua: the luv (Lua over libuv) peer for the TCP echo and idle
-- benchmarks, written the way a luv user would write it.
--
-- Usage: luajit bench/luv_echo.lua HOST PORT
local uv = require "luv"

local host, port = arg[1], tonumber(arg[2])
if not host or not port then
    io.stderr:write("usage: luajit luv_echo.lua HOST PORT\n")
    os.exit(2)
end

-- Queued bytes past this pause reading until the client catches up.
local HIGH_WATER = 1024 * 1024

local server = uv.new_tcp()
assert(server:bind(host, port))
assert(server:listen(4096, function(err)
    if err then
        io.stderr:write("luv_echo: accept: ", err, "\n")
        return
    end
    local client = uv.new_tcp()
    if not server:accept(client) then
        client:close()
        return
    end
    client:nodelay(true)

    local on_read
    local function on_write(werr)
        if werr then
            if not client:is_closing() then client:close() end
        elseif client:get_write_queue_size() == 0 and not client:is_closing() then
            client:read_start(on_read)
        end
    end
    function on_read(rerr, chunk)
        if rerr or not chunk then
            if not client:is_closing() then client:close() end
            return
        end
        client:write(chunk, on_write)
        if client:get_write_queue_size() > HIGH_WATER then
            client:read_stop()
        end
    end
    client:read_start(on_read)
end))

uv.run()
