-- Integration specs: RFC 6455 conformance of the real binary serving
-- handlers/ws_echo.lua, checked with a raw-socket client that sends exact
-- bytes, whole and split at every byte boundary (each piece flushed on its
-- own so the server sees it in a separate read).
local H = require "helper"
local U = require "fixtures.ws_util"
local socket = require "socket"

local T, B, F, CLOSE = U.text, U.binary, U.frame, U.close

local function open(port, path, headers)
  local c = assert(H.connect(port))
  c:setoption("tcp-nodelay", true)
  local head = assert(U.handshake(c, path, headers))
  assert.matches("^HTTP/1.1 101", head)
  return c, head
end

-- Reads frames until a Close arrives or the socket ends/times out.
local function read_until_close(c, timeout)
  c:settimeout(timeout or 3)
  local frames = {}
  while true do
    local f, err = U.read_frame(c)
    if not f then return frames, err end
    frames[#frames + 1] = f
    if f.op == 8 then return frames end
  end
end

-- True when the server closes the TCP connection within `seconds`.
local function expect_eof(c, seconds)
  c:settimeout(seconds or 3)
  local data, err = c:receive(1)
  return data == nil and err == "closed"
end

-- Cases: bytes, echoed messages { payload, op }, expected server close code.
local CASES = {
  { "a text frame", T "Hello", { { "Hello", 1 } } },
  { "a binary frame", B "\0\1\2\255", { { "\0\1\2\255", 2 } } },
  { "an empty frame", T "", { { "", 1 } } },
  { "a 16-bit length", B(("x"):rep(300)), { { ("x"):rep(300), 2 } } },
  { "a 64-bit length", F { op = 1, payload = "sixty-four", len_bits = 64 }, { { "sixty-four", 1 } } },
  { "fragments with a ping between",
    F { op = 1, fin = false, payload = "frag" } .. F { op = 9, payload = "P" } .. F { op = 0, payload = "ment" },
    { { "P", 10 }, { "fragment", 1 } } },
  { "a UTF-8 character split across fragments",
    F { op = 1, fin = false, payload = "\xF0\x9F" } .. F { op = 0, payload = "\x98\x80" },
    { { "\xF0\x9F\x98\x80", 1 } } },
  { "a ping", F { op = 9, payload = "ping!" }, { { "ping!", 10 } } },
  { "an unmasked frame", F { op = 1, payload = "x", masked = false }, {}, 1002 },
  { "a continuation without a start", F { op = 0, payload = "x" }, {}, 1002 },
  { "a new message inside a fragmented one", F { op = 1, fin = false, payload = "a" } .. T "b", {}, 1002 },
  { "RSV1 without an extension", F { op = 1, rsv = 4, payload = "x" }, {}, 1002 },
  { "RSV2", F { op = 1, rsv = 2, payload = "x" }, {}, 1002 },
  { "RSV3", F { op = 2, rsv = 1, payload = "x" }, {}, 1002 },
  { "reserved data opcode 3", F { op = 3, payload = "x" }, {}, 1002 },
  { "reserved control opcode 11", F { op = 11, payload = "x" }, {}, 1002 },
  { "a ping of 126 bytes", F { op = 9, payload = ("p"):rep(126) }, {}, 1002 },
  { "a fragmented ping", F { op = 9, fin = false, payload = "x" }, {}, 1002 },
  { "invalid UTF-8", T "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5\xED\xA0\x80\x65\x64\x69\x74\x65\x64", {}, 1007 },
  { "invalid UTF-8 across fragments", F { op = 1, fin = false, payload = "\xF4" } .. F { op = 0, payload = "\x90" },
    {}, 1007 },
  { "a close with a 1-byte payload", F { op = 8, payload = "\3" }, {}, 1002 },
  { "a close with code 1005", CLOSE(1005), {}, 1002 },
  { "a close with code 999", CLOSE(999), {}, 1002 },
  { "a close with code 5000", CLOSE(5000), {}, 1002 },
  { "a close with an invalid UTF-8 reason", CLOSE(1000, "\xC0"), {}, 1007 },
  { "a close with code 1000 and a reason", CLOSE(1000, "bye"), {}, 1000 },
  { "a close with code 3000", CLOSE(3000), {}, 3000 },
  { "an empty close", CLOSE(), {}, "empty" },
}


local function run_cases(port_of)
  for _, c in ipairs(CASES) do
    local name, input, want, code = c[1], c[2], c[3], c[4]
    it(name .. " (whole and split at every byte boundary)", function()
      local cuts = { {} }
      for i = 1, #input - 1 do cuts[#cuts + 1] = { i } end
      if #input > 1 then
        local ones = {}
        for i = 1, #input do ones[i] = 1 end
        cuts[#cuts + 1] = ones
      end
      for _, cut in ipairs(cuts) do
        local label = name .. " cut " .. table.concat(cut, ",")
        local sock = open(port_of())
        U.send_split(sock, input, cut, 0.001)
        local got = {}
        local closef
        if not code then
          -- Nothing closes by itself: ask for the close afterwards.
          assert(sock:send(CLOSE(1000)))
        end
        local frames = read_until_close(sock)
        for _, f in ipairs(frames) do
          assert.is_false(f.masked, label)
          if f.op == 8 then closef = f else got[#got + 1] = { f.payload, f.op } end
        end
        assert.same(want, got, label)
        assert.is_not_nil(closef, label)
        if code == "empty" then
          assert.equal("", closef.payload, label)
        else
          assert.equal(code or 1000, (U.close_code(closef.payload)), label)
        end
        if code and code ~= 1000 and code ~= 3000 and code ~= "empty" then
          -- We answer the server's Close; it then closes the TCP connection.
          sock:send(CLOSE(1000))
        end
        assert.is_true(expect_eof(sock), label)
        sock:close()
      end
    end)
  end

end

describe("WebSocket protocol against the binary (raw handler) #integration", function()
  local srv
  setup(function()
    srv = H.start_server { script = "handlers/ws_echo.lua", loops = 1, args = { "--max-write-queue", "64m" } }
  end)
  teardown(function() if srv then srv:stop() end end)

  describe("opening handshake", function()
    local function raw(req)
      local c = assert(H.connect(srv.port))
      assert(c:send(req))
      local status = c:receive("*l")
      local head = { status }
      while true do
        local l = c:receive("*l")
        if not l or l == "" then break end
        head[#head + 1] = l
      end
      c:close()
      return table.concat(head, "\n")
    end
    local GOOD = "Host: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
      .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"

    it("answers 101 with the RFC's accept key, on any path", function()
      for _, path in ipairs({ "/", "/anything/here?x=1" }) do
        local head = raw("GET " .. path .. " HTTP/1.1\r\n" .. GOOD .. "Sec-WebSocket-Version: 13\r\n\r\n")
        assert.matches("^HTTP/1.1 101 Switching Protocols", head)
        assert.matches("Sec%-WebSocket%-Accept: s3pPLMBiTxaQ9kYGzzhZRbK%+xOo=", head)
      end
    end)

    it("answers 426 with Sec-WebSocket-Version: 13 to other versions", function()
      local head = raw("GET / HTTP/1.1\r\n" .. GOOD .. "Sec-WebSocket-Version: 8\r\n\r\n")
      assert.matches("^HTTP/1.1 426", head)
      assert.matches("Sec%-WebSocket%-Version: 13", head)
    end)

    it("answers 400 without a key and to plain HTTP", function()
      local head = raw("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        .. "Sec-WebSocket-Version: 13\r\n\r\n")
      assert.matches("^HTTP/1.1 400", head)
      assert.matches("^HTTP/1.1 400", raw("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
      assert.matches("^HTTP/1.1 405", raw("POST / HTTP/1.1\r\n" .. GOOD .. "Sec-WebSocket-Version: 13\r\n\r\n"))
    end)

    it("handles a handshake split at every byte and a frame sent in the same packet", function()
      local req = "GET / HTTP/1.1\r\n" .. GOOD .. "Sec-WebSocket-Version: 13\r\n\r\n"
      for cut = 1, #req - 1, 7 do
        local c = assert(H.connect(srv.port))
        c:setoption("tcp-nodelay", true)
        U.send_split(c, req .. T "pipelined", { cut }, 0.001)
        local l = c:receive("*l")
        assert.matches("^HTTP/1.1 101", l)
        repeat l = c:receive("*l") until l == ""
        local f = U.read_frame(c)
        assert.same({ 1, "pipelined" }, { f.op, f.payload })
        c:close()
      end
    end)
  end)

  run_cases(function() return srv.port end)

  it("echoes a 70000-byte frame sent in 1000-byte pieces and a 1 MiB binary message", function()
    local sock = open(srv.port)
    local msg = ("abcdefghij"):rep(7000)
    local cuts = {}
    for i = 1, 70 do cuts[i] = 1000 end
    U.send_split(sock, T(msg), cuts, 0)
    local f = U.read_frame(sock)
    assert.equal(1, f.op)
    assert.is_true(f.payload == msg)
    local big = ("\1\2\3\4\5\6\7\8"):rep(131072)
    assert(sock:send(B(big)))
    f = U.read_frame(sock)
    assert.is_true(f.op == 2 and f.payload == big)
    sock:close()
  end)

  it("keeps serving other connections while one client misbehaves", function()
    local good = open(srv.port)
    local bad = open(srv.port)
    assert(bad:send(F { op = 1, payload = "x", masked = false }))
    assert(good:send(T "still here"))
    assert.equal("still here", U.read_frame(good).payload)
    local f = U.read_frame(bad)
    assert.equal(1002, (U.close_code(f.payload)))
    good:close(); bad:close()
  end)
end)

describe("WebSocket timeouts against the binary #integration", function()
  local srv
  setup(function()
    srv = H.start_server { script = "spec/fixtures/ws_timeouts.lua", loops = 1 }
  end)
  teardown(function() if srv then srv:stop() end end)

  it("pings a silent client and drops it when it never answers", function()
    -- From before the handshake: the server's clock starts when it accepts, and a slow
    -- handshake (under valgrind) must not make the drop look early.
    local t0 = socket.gettime()
    local sock = open(srv.port)
    sock:settimeout(3)
    local f = U.read_frame(sock)
    assert.equal(9, f.op)
    assert.is_true(expect_eof(sock, 3))
    local dt = socket.gettime() - t0
    assert.is_true(dt > 0.4 and dt < 2.5, "dropped after " .. dt .. " s")
  end)

  it("keeps a client that answers pings", function()
    local sock = open(srv.port)
    sock:settimeout(3)
    for _ = 1, 4 do
      local f = U.read_frame(sock)
      assert.equal(9, f.op)
      assert(sock:send(F { op = 10, payload = f.payload }))
    end
    assert(sock:send(T "alive"))
    local f = U.read_frame(sock)
    while f.op == 9 do f = U.read_frame(sock) end
    assert.equal("alive", f.payload)
    sock:close()
  end)

  it("closes with 1009 when a message is over max_message", function()
    local sock = open(srv.port)
    assert(sock:send(T(("x"):rep(600), { fin = false }) .. F { op = 0, payload = ("y"):rep(401) }))
    local frames = read_until_close(sock)
    assert.equal(1009, (U.close_code(frames[#frames].payload)))
    sock:close()
  end)

  it("runs the server-initiated closing handshake", function()
    local sock = open(srv.port)
    assert(sock:send(T "close-me"))
    local frames = read_until_close(sock)
    assert.same({ 4001, "as you wish" }, { U.close_code(frames[#frames].payload) })
    assert(sock:send(CLOSE(4001)))
    assert.is_true(expect_eof(sock, 2))
  end)

  it("closes the TCP connection when the client never answers our Close", function()
    local sock = open(srv.port)
    assert(sock:send(T "close-me"))
    local t0 = socket.gettime()
    read_until_close(sock)
    assert.is_true(expect_eof(sock, 3))
    local dt = socket.gettime() - t0
    assert.is_true(dt > 0.2 and dt < 2, "closed after " .. dt .. " s")
  end)

  it("sends pings on request with the application data", function()
    local sock = open(srv.port)
    assert(sock:send(T "ping-me"))
    local f = U.read_frame(sock)
    assert.same({ 9, "hb" }, { f.op, f.payload })
    sock:close()
  end)
end)

describe("WebSocket protocol through the HTTP router (moonwire ws) #integration", function()
  local srv, dir
  setup(function()
    dir = H.tmpdir()
    H.write_file(dir .. "/index.html", "<h1>static page</h1>\n")
    H.write_file(dir .. "/echo.lua", "return { on_message = function(ws, msg, kind) ws:send(msg, kind) end,"
      .. " max_message = 1024 * 1024 }\n")
    srv = H.start_server { command = "ws", script = dir .. "/echo.lua", loops = 1, args = { "--static", dir } }
  end)
  teardown(function()
    if srv then srv:stop() end
    H.sh("rm -rf " .. dir)
  end)

  it("serves the static page at / and the WebSocket at the same path", function()
    local c = assert(H.connect(srv.port))
    assert(c:send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    local resp = c:receive("*a")
    assert.matches("^HTTP/1.1 200", resp)
    assert.matches("static page", resp)
    c:close()
    local sock = open(srv.port)
    assert(sock:send(T "through the router"))
    assert.equal("through the router", U.read_frame(sock).payload)
    sock:close()
  end)

  it("keeps frames sent in the same packet as the upgrade request", function()
    local c = assert(H.connect(srv.port))
    assert(c:send("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" .. T "early" .. T "bird"))
    repeat local l = c:receive("*l") until l == ""
    assert.equal("early", U.read_frame(c).payload)
    assert.equal("bird", U.read_frame(c).payload)
    c:close()
  end)

  it("takes route options from the handler table (max_message)", function()
    local sock = open(srv.port)
    assert(sock:send(B(("x"):rep(1024 * 1024 + 1))))
    local f = U.read_frame(sock)
    assert.equal(1009, (U.close_code(f.payload)))
    sock:close()
  end)

  run_cases(function() return srv.port end)
end)

describe("WebSocket server shutdown #integration", function()
  it("sends 1001 going away to open WebSockets on SIGTERM", function()
    local srv = H.start_server { script = "handlers/ws_echo.lua", loops = 2 }
    local socks = {}
    for i = 1, 4 do socks[i] = open(srv.port) end
    srv:signal(require("posix.signal").SIGTERM)
    for _, sock in ipairs(socks) do
      local f = assert(U.read_frame(sock))
      assert.equal(8, f.op)
      assert.equal(1001, (U.close_code(f.payload)))
      assert(sock:send(CLOSE(1001)))
      assert.is_true(expect_eof(sock, 3))
    end
    assert.equal(0, (srv:wait_exit(10)))
  end)
end)
