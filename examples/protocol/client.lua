-- Command-line client for examples/protocol/server.lua.
--   luajit examples/protocol/client.lua [--host H] [--port P] ping | set KEY VALUE | get KEY | del KEY
local socket = require "socket"

local host, port = "127.0.0.1", 9000
local args = {}
local i = 1
while i <= #arg do
  if arg[i] == "--host" then
    host, i = arg[i + 1], i + 2
  elseif arg[i] == "--port" then
    port, i = tonumber(arg[i + 1]), i + 2
  else
    args[#args + 1], i = arg[i], i + 1
  end
end

local function usage()
  io.stderr:write("usage: client.lua [--host H] [--port P] ping | set KEY VALUE | get KEY | del KEY\n")
  os.exit(2)
end

local cmd = args[1]
local payload
if cmd == "ping" then
  payload = "P"
elseif cmd == "set" and args[3] then
  payload = "S" .. args[2] .. "\0" .. args[3]
elseif cmd == "get" and args[2] then
  payload = "G" .. args[2]
elseif cmd == "del" and args[2] then
  payload = "D" .. args[2]
else
  usage()
end

local function be32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

local c = assert(socket.connect(host, port))
c:settimeout(5)
assert(c:send(be32(#payload) .. payload))
local hdr = assert(c:receive(4))
local len = ((hdr:byte(1) * 256 + hdr:byte(2)) * 256 + hdr:byte(3)) * 256 + hdr:byte(4)
local reply = len > 0 and assert(c:receive(len)) or ""
c:close()

local kind, body = reply:sub(1, 1), reply:sub(2)
if kind == "P" or kind == "V" then
  print(body)
elseif kind == "O" then
  print("OK")
elseif kind == "N" then
  print("(not found)")
  os.exit(1)
else
  io.stderr:write("error: ", body, "\n")
  os.exit(1)
end
