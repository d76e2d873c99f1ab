-- A chat server: rooms, nicknames, join/leave notices, one HTML page.
--
--   bin/moonwire run examples/chat/app.lua --listen 127.0.0.1:8080 --loops 4
--   open http://127.0.0.1:8080/
--
-- Every message is published on the room's topic, so it reaches the
-- room's members on every loop.  Per-connection state (nick, room) lives
-- in ws.state, which survives a hot reload of this file: edit format()
-- below while people are chatting and the next message uses it.
local http = require "moonwire.http"
local cjson = require "cjson.safe"

local here = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
local app = http.router()
app:static("/", here .. "public")

-- How a chat line reads.  (The browser spec edits this line.)
local function format(nick, text) return nick .. ": " .. text end

local MAX_NICK, MAX_ROOM, MAX_TEXT = 24, 32, 2000

-- Keeps printable characters only and bounds the length.
local function clean(s, max)
  if type(s) ~= "string" then return nil end
  s = s:gsub("[%c]", " "):gsub("^%s+", ""):gsub("%s+$", "")
  if s == "" then return nil end
  if #s > max then s = s:sub(1, max) end
  return s
end

local function topic(room) return "chat:" .. room end

local function event(kind, room, nick, text, line)
  return cjson.encode({ kind = kind, room = room, nick = nick, text = text, line = line })
end

local function notice(ws, room, text)
  ws:publish(topic(room), event("notice", room, ws.state.nick, text, "* " .. text))
end

local function join(ws, room)
  local st = ws.state
  if st.room then
    notice(ws, st.room, st.nick .. " left " .. st.room)
    ws:unsubscribe(topic(st.room))
  end
  st.room = room
  ws:subscribe(topic(room))
  ws:send(event("welcome", room, st.nick, nil, "* you are " .. st.nick .. " in " .. room))
  notice(ws, room, st.nick .. " joined " .. room)
end

app:ws("/chat", {
  on_open = function(ws, req)
    -- Connection ids are unique per loop, loop ids per server.
    local loop = ws.conn.loop
    ws.state.nick = clean(req.query.nick, MAX_NICK) or ("guest" .. (loop and loop.id or 0) .. "-" .. ws.conn.id)
    join(ws, clean(req.query.room, MAX_ROOM) or "lobby")
  end,

  -- Text from the page: "/nick NAME", "/join ROOM" or a message.
  on_message = function(ws, msg, kind)
    if kind ~= "text" then return ws:close(1003, "text only") end
    local st = ws.state
    local cmd, arg = msg:match("^/(%a+)%s*(.*)$")
    if cmd == "nick" then
      local nick = clean(arg, MAX_NICK)
      if nick then
        notice(ws, st.room, st.nick .. " is now " .. nick)
        st.nick = nick
      end
    elseif cmd == "join" then
      local room = clean(arg, MAX_ROOM)
      if room and room ~= st.room then join(ws, room) end
    else
      local text = clean(msg, MAX_TEXT)
      if text then
        ws:publish(topic(st.room), event("message", st.room, st.nick, text, format(st.nick, text)))
      end
    end
  end,

  on_close = function(ws)
    local st = ws.state
    if st.room then
      -- Published from a connection that is going away: use the loop-level
      -- publish, the ws object can no longer send.
      require("moonwire.pubsub").publish(topic(st.room),
        event("notice", st.room, st.nick, nil, "* " .. st.nick .. " left " .. st.room))
    end
  end,
}, { max_message = 4096 })

return app
