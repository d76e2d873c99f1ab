-- Unit specs for moonwire.ws: the frame parser and connection state
-- machine, driven through ws.input() with an in-memory connection that
-- behaves like the C core (unconsumed bytes come back with the next
-- chunk).  Every protocol case runs with its input whole, split into two
-- pieces at every byte boundary, and byte by byte.
local buffer = require "string.buffer"
local ws = require "moonwire.ws"
local deflate = require "moonwire.ws.deflate"
local hs = require "moonwire.ws.handshake"
local U = require "fixtures.ws_util"

local T, B, F, CLOSE = U.text, U.binary, U.frame, U.close

local SPLITS = {
  whole = function(s) return { s } end,
  bytewise = function(s)
    local t = {}
    for i = 1, #s do t[i] = s:sub(i, i) end
    return t
  end,
}
-- Runs the client bytes in pieces and returns what happened: messages
-- delivered, frames the server wrote, whether it closed, on_close events.
-- When the server failed the connection it waits for the client's Close;
-- reply = true sends that Close so the connection ends.
local function run(input, pieces, opts, reply)
  local conn, route = U.open(opts, { echo = true })
  for _, piece in ipairs(pieces(input)) do
    if conn.closed then break end
    conn:feed(piece, route)
  end
  if reply and not conn.closed then
    -- The client answers our Close; a byte at a time to exercise the
    -- CLOSING state's parser too.
    for _, piece in ipairs(SPLITS.bytewise(CLOSE(1000))) do
      if not conn.closed then conn:feed(piece, route) end
    end
  end
  if conn.closed then ws.close(conn, "closed", route) end
  local r = { messages = {}, closed = conn.closed, frames = U.decode(conn:output()), events = route.events }
  for _, e in ipairs(route.events) do
    if e[1] == "message" then r.messages[#r.messages + 1] = { e[2], e[3] } end
    if e[1] == "close" then r.on_close = { e[2], e[3] } end
  end
  return r
end

local function at(cut) return function(s) return { s:sub(1, cut), s:sub(cut + 1) } end end

-- The close frame the server sent last, as code (nil when none).
local function server_close(r)
  for i = #r.frames, 1, -1 do
    local f = r.frames[i]
    if f.op == 8 then return (U.close_code(f.payload)) or 1005 end
  end
  return nil
end

-- Protocol cases: input bytes, messages expected (text unless kind
-- given), the close code the server must send (nil: none), extra checks.
local BIG = ("0123456789abcdef"):rep(20) -- 320 bytes: 16-bit length
local CASES = {
  { "a masked text frame", T "Hello", { { "Hello", "text" } } },
  { "a binary frame with every byte value", B((function()
      local t = {}
      for i = 0, 255 do t[#t + 1] = string.char(i) end
      return table.concat(t)
    end)()), "binary256" },
  { "an empty text frame", T "", { { "", "text" } } },
  { "a 16-bit length", T(BIG), { { BIG, "text" } } },
  { "a 64-bit length", F { op = 2, payload = "64-bit", len_bits = 64 }, { { "64-bit", "binary" } } },
  { "three messages in one read", T "a" .. B "b" .. T "c", { { "a", "text" }, { "b", "binary" }, { "c", "text" } } },
  { "a fragmented text message with a ping in between",
    F { op = 1, fin = false, payload = "Hel" } .. F { op = 9, payload = "p" } .. F { op = 0, payload = "lo" },
    { { "Hello", "text" } }, nil, function(r)
      assert.equal(0xA, r.frames[1].op)
      assert.equal("p", r.frames[1].payload)
    end },
  { "a fragmented binary message in three frames with empty middle",
    F { op = 2, fin = false, payload = "ab" } .. F { op = 0, fin = false } .. F { op = 0, payload = "cd" },
    { { "abcd", "binary" } } },
  { "empty fragments", F { op = 1, fin = false } .. F { op = 0 }, { { "", "text" } } },
  { "a UTF-8 sequence split across fragments",
    F { op = 1, fin = false, payload = "\xCE" } .. F { op = 0, payload = "\xBA" }, { { "\xCE\xBA", "text" } } },
  { "a continuation without a message", F { op = 0, payload = "x" }, {}, 1002 },
  { "a new message inside a fragmented one",
    F { op = 1, fin = false, payload = "a" } .. T "b", {}, 1002 },
  { "an unmasked frame", F { op = 1, payload = "x", masked = false }, {}, 1002 },
  { "RSV1 without an extension", F { op = 1, payload = "x", rsv = 4 }, {}, 1002 },
  { "RSV2", F { op = 1, payload = "x", rsv = 2 }, {}, 1002 },
  { "RSV3", F { op = 1, payload = "x", rsv = 1 }, {}, 1002 },
  { "RSV on a ping", F { op = 9, payload = "x", rsv = 4 }, {}, 1002 },
  { "a ping over 125 bytes", F { op = 9, payload = ("p"):rep(126) }, {}, 1002 },
  { "a close over 125 bytes", F { op = 8, payload = "\3\232" .. ("r"):rep(124) }, {}, 1002 },
  { "a fragmented ping", F { op = 9, fin = false, payload = "x" }, {}, 1002 },
  { "a 64-bit length with the top bit set", "\130\255\128\0\0\0\0\0\0\1\0\0\0\0", {}, 1002 },
  { "invalid UTF-8 in a text frame", T "ok\xC0\xAF", {}, 1007 },
  { "invalid UTF-8 across fragments",
    F { op = 1, fin = false, payload = "\xED" } .. F { op = 0, payload = "\xA0\x80" }, {}, 1007 },
  { "a text message ending inside a sequence",
    F { op = 1, fin = false, payload = "a" } .. F { op = 0, payload = "\xE2\x82" }, {}, 1007 },
  { "a ping answered with the same payload", F { op = 9, payload = "are you there" }, {}, nil, function(r)
      assert.equal(0xA, r.frames[1].op)
      assert.equal("are you there", r.frames[1].payload)
      assert.is_false(r.frames[1].masked)
    end },
  { "an unsolicited pong (ignored)", F { op = 10, payload = "x" } .. T "after", { { "after", "text" } } },
  { "an empty close", CLOSE(), {}, 1005, function(r)
      assert.equal("", r.frames[#r.frames].payload)
      assert.same({ 1005, "" }, r.on_close)
    end },
  { "a close with code and reason", CLOSE(1000, "bye"), {}, 1000, function(r)
      assert.same({ 1000, "bye" }, r.on_close)
    end },
  { "a close with an application code", CLOSE(4321), {}, 4321 },
  { "a close with a 1-byte payload", F { op = 8, payload = "\3" }, {}, 1002 },
  { "a close with invalid UTF-8 in the reason", CLOSE(1000, "\xFF"), {}, 1007 },
  { "data after the close is ignored", CLOSE(1000) .. T "late", {}, 1000 },
}
for _, code in ipairs({ 0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535 }) do
  CASES[#CASES + 1] = { "a close with invalid code " .. code, CLOSE(code), {}, 1002 }
end
for _, op in ipairs({ 3, 4, 5, 6, 7, 11, 12, 13, 14, 15 }) do
  CASES[#CASES + 1] = { "reserved opcode " .. op, F { op = op, payload = "x" }, {}, 1002 }
end

describe("moonwire.ws protocol #unit", function()
  for _, c in ipairs(CASES) do
    local name, input, want, code, check = c[1], c[2], c[3], c[4], c[5]
    if want == "binary256" then
      local t = {}
      for i = 0, 255 do t[#t + 1] = string.char(i) end
      want = { { table.concat(t), "binary" } }
    end
    it(name .. ", whole, at every split and byte by byte", function()
      local variants = { whole = SPLITS.whole, bytewise = SPLITS.bytewise }
      for cut = 1, #input - 1 do variants["cut " .. cut] = at(cut) end
      for vname, pieces in pairs(variants) do
        local r = run(input, pieces, nil, code ~= nil)
        local label = name .. " (" .. vname .. ")"
        assert.same(want, r.messages, label)
        assert.equal(code, server_close(r), label)
        if code then assert.is_true(r.closed or false, label) end
        -- Echoed messages come back unmasked, in order.
        local echoed = {}
        for _, f in ipairs(r.frames) do
          if f.op == 1 or f.op == 2 then echoed[#echoed + 1] = { f.payload, f.op == 1 and "text" or "binary" } end
          assert.is_false(f.masked, label)
        end
        assert.same(want, echoed, label)
        if check then check(r) end
      end
    end)
  end

  it("keeps waiting for the peer's Close after a protocol error, skipping the bad frame", function()
    local conn, route = U.open()
    -- An unmasked frame with a payload, then the client's Close.
    conn:feed(F { op = 1, payload = "garbage!", masked = false }, route)
    assert.is_falsy(conn.closed)
    local frames = U.decode(conn:output())
    assert.equal(1002, (U.close_code(frames[1].payload)))
    assert.equal(ws.defaults.close_timeout, conn.timeout)
    conn:feed(T "ignored" .. CLOSE(1002), route)
    assert.is_true(conn.closed)
    assert.equal("", conn:output()) -- no second Close, nothing echoed
    ws.close(conn, "closed", route)
    assert.same({ "close", 1002, "client frame is not masked" }, route.events[2])
  end)

  it("cuts off a peer whose broken frame is too long to skip", function()
    local conn, route = U.open()
    conn:feed(F { op = 1, len = 10 * 1024 * 1024, masked = false }, route)
    assert.is_true(conn.closed)
  end)
end)

describe("moonwire.ws message size #unit", function()
  local opts = { max_message = 100 }
  it("accepts a message of exactly max_message bytes", function()
    local r = run(T(("x"):rep(100)), SPLITS.whole, opts)
    assert.equal(1, #r.messages)
  end)
  it("closes with 1009 on a frame over the limit", function()
    local r = run(T(("x"):rep(101)), SPLITS.whole, opts)
    assert.same({}, r.messages)
    assert.equal(1009, server_close(r))
  end)
  it("applies the limit to the reassembled message", function()
    local input = F { op = 1, fin = false, payload = ("x"):rep(60) } .. F { op = 0, payload = ("y"):rep(41) }
    for _, pieces in pairs(SPLITS) do
      local r = run(input, pieces, opts)
      assert.same({}, r.messages)
      assert.equal(1009, server_close(r))
    end
  end)
  it("streams a 5 MiB message split into 1000-byte reads", function()
    local big = ("z"):rep(5 * 1024 * 1024)
    local input = B(big)
    local r = run(input, function(s)
      local t = {}
      for i = 1, #s, 1000 do t[#t + 1] = s:sub(i, i + 999) end
      return t
    end)
    assert.equal(1, #r.messages)
    assert.equal(#big, #r.messages[1][1])
    assert.is_true(r.messages[1][1] == big)
  end)
end)

describe("moonwire.ws permessage-deflate #unit", function()
  local OFFER = { ["sec-websocket-extensions"] = "permessage-deflate; client_max_window_bits" }
  local _, agreed = deflate.negotiate(hs.extensions("permessage-deflate"))

  -- A client-side compressor with the agreed parameters.
  local function compressor()
    local z = deflate.new(agreed)
    return function(s)
      local out = buffer.new()
      local n = z:compress(s, #s, out)
      return out:tostring():sub(1, n)
    end
  end

  local function open()
    local conn, route, head = U.open(nil, { echo = true }, OFFER)
    assert.matches("permessage%-deflate", head)
    return conn, route
  end

  local function inflate_frames(frames)
    local z = deflate.new(agreed)
    local msgs = {}
    for _, f in ipairs(frames) do
      if f.op == 1 or f.op == 2 then
        if f.rsv == 4 then
          local out = buffer.new()
          assert(z:decompress(f.payload, #f.payload, true, out, 1e9))
          msgs[#msgs + 1] = out:tostring()
        else
          msgs[#msgs + 1] = f.payload
        end
      end
    end
    return msgs
  end

  it("inflates compressed messages (with context takeover) at every split and echoes them compressed", function()
    local c = compressor()
    local m1, m2 = ("hello moonwire "):rep(20), ("hello moonwire "):rep(21)
    local input = F { op = 1, rsv = 4, payload = c(m1) } .. F { op = 1, rsv = 4, payload = c(m2) }
    for cut = 0, #input do
      local conn, route = open()
      if cut > 0 then conn:feed(input:sub(1, cut), route) end
      conn:feed(input:sub(cut + 1), route)
      local got = {}
      for _, e in ipairs(route.events) do if e[1] == "message" then got[#got + 1] = e[2] end end
      assert.same({ m1, m2 }, got, "cut " .. cut)
      local frames = U.decode(conn:output())
      assert.equal(4, frames[1].rsv) -- RSV1: compressed
      assert.same({ m1, m2 }, inflate_frames(frames))
    end
  end)

  it("inflates a compressed message sent in fragments (RSV1 on the first only)", function()
    local m = ("fragmented and compressed "):rep(30)
    local z = compressor()(m)
    local a, b = z:sub(1, 10), z:sub(11)
    local conn, route = open()
    conn:feed(F { op = 1, fin = false, rsv = 4, payload = a } .. F { op = 9 } .. F { op = 0, payload = b }, route)
    assert.same({ "message", m, "text" }, route.events[3])
  end)

  it("rejects RSV1 on a continuation frame", function()
    local conn, route = open()
    conn:feed(F { op = 1, fin = false, rsv = 4, payload = "\0" } .. F { op = 0, rsv = 4, payload = "" }, route)
    assert.equal(1002, (U.close_code(U.decode(conn:output())[1].payload)))
  end)

  it("closes with 1007 on compressed invalid UTF-8 and on corrupt data", function()
    local conn, route = open()
    conn:feed(F { op = 1, rsv = 4, payload = compressor()("abc\xFFdef") }, route)
    assert.equal(1007, (U.close_code(U.decode(conn:output())[1].payload)))
    conn, route = open()
    conn:feed(F { op = 2, rsv = 4, payload = "\255\255\255\255garbage" }, route)
    assert.equal(1007, (U.close_code(U.decode(conn:output())[1].payload)))
  end)

  it("closes with 1009 when the inflated message is over max_message (zip bomb)", function()
    local conn, route = U.open({ max_message = 1000 }, nil, OFFER)
    conn:output()
    conn:feed(F { op = 2, rsv = 4, payload = compressor()(("\0"):rep(100000)) }, route)
    assert.equal(1009, (U.close_code(U.decode(conn:output())[1].payload)))
  end)

  it("accepts an empty compressed message sent as no bytes", function()
    local conn, route = open()
    conn:feed(F { op = 1, rsv = 4, payload = "" }, route)
    assert.equal("", route.events[2][2])
  end)

  it("sends small messages uncompressed", function()
    local conn, route = open()
    conn:feed(T "hi", route)
    local f = U.decode(conn:output())[1]
    assert.same({ 0, "hi" }, { f.rsv, f.payload })
  end)
end)

describe("moonwire.ws connection #unit", function()
  it("send() reports backpressure and on_drain follows", function()
    local conn, route = U.open()
    local sock = conn._ws
    assert.is_true(sock:send("a"))
    conn.full = true
    assert.is_false(sock:send("b", "binary"))
    ws.drain(conn, route)
    assert.same({ "drain" }, route.events[2])
    local frames = U.decode(conn:output())
    assert.same({ 1, "a" }, { frames[1].op, frames[1].payload })
    assert.same({ 2, "b" }, { frames[2].op, frames[2].payload })
  end)

  it("answers pings even past the high-water mark", function()
    local conn, route = U.open()
    conn.full = true
    conn:feed(F { op = 9, payload = "hb" }, route)
    assert.equal(0xA, U.decode(conn:output())[1].op)
  end)

  it("send() checks its arguments and fails softly once closed", function()
    local conn, route = U.open()
    local sock = conn._ws
    assert.has_error(function() sock:send(42) end)
    assert.has_error(function() sock:send("x", "utf8") end)
    conn:feed(CLOSE(1000), route)
    assert.same({ nil, "closed" }, { sock:send("late") })
  end)

  it("close() runs the closing handshake", function()
    local conn, route = U.open({ close_timeout = 1234 })
    local sock = conn._ws
    assert.is_true(sock:close(4000, "done"))
    local f = U.decode(conn:output())[1]
    assert.equal(8, f.op)
    assert.same({ 4000, "done" }, { U.close_code(f.payload) })
    assert.equal(1234, conn.timeout)
    assert.is_falsy(conn.closed)
    conn:feed(T "dropped while closing" .. CLOSE(4000), route)
    assert.is_true(conn.closed)
    assert.equal("", conn:output())
    ws.close(conn, "closed", route)
    ws.close(conn, "closed", route) -- on_close runs once
    local closes = 0
    for _, e in ipairs(route.events) do
      if e[1] == "close" then closes = closes + 1; assert.same({ "close", 4000, "" }, e) end
      assert.are_not.equal("message", e[1])
    end
    assert.equal(1, closes)
  end)

  it("close() validates its arguments", function()
    local conn = U.open()
    assert.has_error(function() conn._ws:close(1005) end)
    assert.has_error(function() conn._ws:close(1000, ("r"):rep(124)) end)
  end)

  it("gives up on a peer that never answers the Close", function()
    local conn, route = U.open()
    conn._ws:close()
    ws.timeout(conn, route)
    assert.equal("abort", conn.how)
    ws.close(conn, "closed", route)
    assert.same({ "close", 1006, "close timeout" }, route.events[#route.events])
  end)

  it("pings a silent peer and drops it when the ping goes unanswered", function()
    local conn, route = U.open({ ping_interval = 1000, ping_timeout = 300 })
    assert.equal(1000, conn.timeout)
    ws.timeout(conn, route)
    assert.equal(9, U.decode(conn:output())[1].op)
    assert.equal(300, conn.timeout)
    conn:feed(F { op = 10 }, route) -- pong: back to the interval
    assert.equal(1000, conn.timeout)
    ws.timeout(conn, route)
    ws.timeout(conn, route)
    assert.equal("abort", conn.how)
    ws.close(conn, "aborted", route)
    assert.same({ "close", 1006, "ping timeout" }, route.events[#route.events])
  end)

  it("reports 1006 when the TCP connection drops without a Close", function()
    local conn, route = U.open()
    ws.close(conn, "eof", route)
    assert.same({ "close", 1006, "eof" }, route.events[#route.events])
  end)

  it("uses the current route's handlers (hot reload) and keeps ws.state", function()
    local conn = U.open()
    conn._ws.state.n = 41
    local seen
    local route2 = { path = "/", opts = {}, handlers = {
      on_message = function(sock, msg) sock.state.n = sock.state.n + 1; seen = msg .. sock.state.n end,
    } }
    conn:feed(T "v", route2)
    assert.equal("v42", seen)
  end)

  it("stops delivering once a handler closes the connection", function()
    local conn = U.open()
    local got = {}
    local route = { opts = {}, handlers = { on_message = function(sock, msg)
      got[#got + 1] = msg
      sock.conn:close()
    end } }
    conn:feed(T "one" .. T "two", route)
    assert.same({ "one" }, got)
  end)

  it("allocates nothing per frame beyond the message string", function()
    -- The same payload every time: LuaJIT interns strings, so the message
    -- string costs nothing after the first and whatever is left is the
    -- parser's own garbage.
    local conn, route = U.open()
    route.handlers.on_message = function() end
    local input = (T(("m"):rep(64))):rep(1000)
    local ffi = require "ffi"
    local buf = ffi.new("uint8_t[?]", #input)
    ffi.copy(buf, input, #input)
    for _ = 1, 100 do ws.input(conn, buf, #input, route) end
    collectgarbage()
    collectgarbage("stop")
    local before = collectgarbage("count")
    for _ = 1, 100 do ws.input(conn, buf, #input, route) end
    local per_frame = (collectgarbage("count") - before) * 1024 / 100000
    collectgarbage("restart")
    assert.is_true(per_frame < 1, per_frame .. " bytes per frame")
  end)

  it("compiles the parser without trace aborts", function()
    local conn, route = U.open()
    local input = (T "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"):rep(100)
    local ffi = require "ffi"
    local buf = ffi.new("uint8_t[?]", #input)
    ffi.copy(buf, input, #input)
    local n = 0
    route.handlers.on_message = function() n = n + 1 end
    -- While LuaJIT is still choosing its traces an outer trace may abort once or twice
    -- waiting for an inner loop to compile ("inner loop in root trace"); when that happens
    -- depends on what ran before in this process (hot counters are shared by all code). The
    -- steady state must not abort: rounds of 200 inputs are run until one has no abort, at
    -- most 10; a parser that keeps aborting fails every round.
    local aborts = {}
    jit.attach(function(what, _, func, _, otr, oex)
      if what == "abort" then
        local info = require("jit.util").funcinfo(func)
        if info.source and info.source:find("moonwire/ws", 1, true) then
          aborts[#aborts + 1] = info.source .. ":" .. tostring(info.currentline) .. " " .. tostring(otr) .. " "
            .. tostring(oex)
        end
      end
    end, "trace")
    local rounds = 0
    repeat
      rounds = rounds + 1
      aborts = {}
      n = 0
      for _ = 1, 200 do ws.input(conn, buf, #input, route) end
    until #aborts == 0 or rounds == 10
    jit.attach(function() end)
    assert.equal(20000, n)
    assert.same({}, aborts)
  end)
end)
