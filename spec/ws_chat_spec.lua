-- Integration specs for examples/chat over raw WebSockets (the browser
-- spec covers the page): 4 loops, clients spread over them, rooms,
-- nicknames, join/leave notices.
local H = require "helper"
local U = require "fixtures.ws_util"
local cjson = require "cjson"

local function join(port, nick, room)
  local c = assert(H.connect(port))
  c:setoption("tcp-nodelay", true)
  assert.matches("^HTTP/1.1 101", assert(U.handshake(c, "/chat?nick=" .. nick .. "&room=" .. room)))
  c:settimeout(5)
  return c
end

-- Reads events until one satisfies pred; returns it.
local function until_event(c, pred)
  while true do
    local f = assert(U.read_frame(c))
    local ev = cjson.decode(f.payload)
    if pred(ev) then return ev end
  end
end

describe("chat example #integration", function()
  local srv
  setup(function()
    srv = H.start_server { script = "examples/chat/app.lua", loops = 4 }
  end)
  teardown(function() if srv then srv:stop() end end)

  it("serves its page", function()
    local c = assert(H.connect(srv.port))
    assert(c:send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    local resp = c:receive("*a")
    assert.matches("^HTTP/1.1 200", resp)
    assert.matches("new WebSocket", resp)
    c:close()
  end)

  it("broadcasts a room's messages to its members on every loop, once each", function()
    local members = {}
    for i = 1, 12 do
      members[i] = join(srv.port, "user" .. i, "r1")
      local w = until_event(members[i], function(ev) return ev.kind == "welcome" end)
      assert.equal("* you are user" .. i .. " in r1", w.line)
    end
    local outsider = join(srv.port, "other", "r2")
    until_event(outsider, function(ev) return ev.kind == "welcome" end)
    assert(members[1]:send(U.text("hello room")))
    assert(outsider:send(U.text("hello r2")))
    for i, c in ipairs(members) do
      local ev = until_event(c, function(e) return e.kind == "message" end)
      assert.same({ "r1", "user1", "hello room", "user1: hello room" }, { ev.room, ev.nick, ev.text, ev.line },
        "member " .. i)
    end
    -- The outsider sees its own room only.
    local ev = until_event(outsider, function(e) return e.kind == "message" end)
    assert.equal("other: hello r2", ev.line)

    -- /nick and /join, with notices.
    assert(members[2]:send(U.text("/nick bob")))
    ev = until_event(members[3], function(e) return e.kind == "notice" and e.line:find("is now") end)
    assert.equal("* user2 is now bob", ev.line)
    assert(members[2]:send(U.text("/join r2")))
    ev = until_event(outsider, function(e) return e.kind == "notice" end)
    assert.equal("* bob joined r2", ev.line)
    ev = until_event(members[3], function(e) return e.kind == "notice" end)
    assert.equal("* bob left r1", ev.line)

    -- Leaving: the others get a notice.
    members[4]:close()
    ev = until_event(members[5], function(e) return e.kind == "notice" and e.nick == "user4" end)
    assert.equal("* user4 left r1", ev.line)
    for i, c in ipairs(members) do if i ~= 4 then c:close() end end
    outsider:close()
  end)

  it("closes on binary messages with 1003", function()
    local c = join(srv.port, "bin", "r3")
    assert(c:send(U.binary("\0\1")))
    local f
    repeat f = assert(U.read_frame(c)) until f.op == 8
    assert.equal(1003, (U.close_code(f.payload)))
    c:close()
  end)
end)
