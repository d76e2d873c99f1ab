-- A line-based chat: every line a client sends goes to every client on the same loop.
--   bin/moonwire run examples/chat_lines/chat.lua --listen 127.0.0.1:9000
--   nc 127.0.0.1 9000
-- Commands: /nick NAME, /who, /quit. Try editing the format below while clients are
-- connected: the next message uses it, and nobody is disconnected.
local frame = require "moonwire.frame"
local mw = require "moonwire"

-- Connections of this loop, kept in the per-loop store so a reload keeps the room.
local room = mw.store("chat-room")

local function say(line, except)
  for conn in pairs(room) do
    if conn ~= except then
      conn:send(line)
    end
  end
end

local function format(conn, text)
  return ("[%s] %s"):format(conn.state.nick, text)
end

local commands = {}

function commands.nick(conn, name)
  name = name and name:match("^%s*(%S+)")
  if not name or #name > 32 then
    return conn:send("* usage: /nick NAME (up to 32 characters)")
  end
  say(("* %s is now %s"):format(conn.state.nick, name))
  conn.state.nick = name
end

function commands.who(conn)
  local names = {}
  for c in pairs(room) do
    names[#names + 1] = c.state.nick
  end
  table.sort(names)
  conn:send("* here: " .. table.concat(names, ", "))
end

function commands.quit(conn)
  conn:send("* bye")
  conn:close()
end

return {
  protocol = frame.lines { max = 4096 },

  on_open = function(conn)
    conn.state.nick = "guest" .. conn.id
    room[conn] = true
    conn:send(("* welcome %s (loop %d). /nick NAME, /who, /quit"):format(conn.state.nick, conn.loop.id))
    say(("* %s joined"):format(conn.state.nick), conn)
  end,

  on_message = function(conn, line)
    local cmd, rest = line:match("^/(%a+)%s*(.*)$")
    if cmd then
      local f = commands[cmd]
      if f then
        return f(conn, rest)
      end
      return conn:send("* unknown command /" .. cmd)
    end
    if line ~= "" then
      say(format(conn, line))
    end
  end,

  on_close = function(conn)
    if room[conn] then
      room[conn] = nil
      say(("* %s left"):format(conn.state.nick))
    end
  end,

  on_shutdown = function()
    say("* server shutting down")
    for conn in pairs(room) do
      conn:close()
    end
  end,
}
