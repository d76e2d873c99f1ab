-- Hot reload through the real binary: editors' save patterns, failures, modules, the store,
-- every loop switching, and memory over many reloads.
local H = require "helper"
local socket = require "socket"
local signal = require "posix.signal"

local HANDLER = [[
local frame = require "moonwire.frame"
local mw = require "moonwire"
local tag = require "reload_mod"
local store = mw.store("counts", function() return { hits = 0 } end)
local upvalue_hits = 0
return {
  protocol = frame.lines(),
  on_message = function(conn, line)
    if line == "mem" then
      collectgarbage()
      collectgarbage()
      return conn:send(("mem=%d"):format(collectgarbage("count")))
    end
    if line == "timer" then
      conn.loop.every(10, function() conn:send("old timer") end)
      conn.loop.every(10000, function() end, { persist = true })
      return conn:send("armed")
    end
    store.hits = store.hits + 1
    upvalue_hits = upvalue_hits + 1
    conn.state.n = (conn.state.n or 0) + 1
    conn:send(("VERSION gen=%d loop=%d n=%d store=%d up=%d mod=%s"):format(conn.loop.generation,
      conn.loop.id, conn.state.n, store.hits, upvalue_hits, tag.tag))
  end,
}
]]

local function handler_text(version)
  return (HANDLER:gsub("VERSION", version))
end

local function setup(version, modtag)
  local dir = H.tmpdir()
  H.write_file(dir .. "/app.lua", handler_text(version))
  H.write_file(dir .. "/reload_mod.lua", ("return { tag = %q }\n"):format(modtag or "m1"))
  return dir
end

-- Editors' ways of saving a file.
local function save_rename(path, text)
  H.write_file(path .. ".tmp~", text)
  assert(os.rename(path .. ".tmp~", path))
end

local function save_inplace(path, text)
  local f = assert(io.open(path, "r+b"))
  f:seek("set", 0)
  f:write(text)
  f:flush()
  f:close()
  -- truncate to the new length if it shrank
  os.execute(("truncate -s %d %q"):format(#text, path))
end

local function save_in_pieces(path, text)
  local f = assert(io.open(path, "wb")) -- truncate
  local third = math.floor(#text / 3)
  f:write(text:sub(1, third))
  f:flush()
  socket.sleep(0.004)
  f:write(text:sub(third + 1, 2 * third))
  f:flush()
  socket.sleep(0.004)
  f:write(text:sub(2 * third + 1))
  f:close()
end

local ask = H.ask

local function loop_of(c)
  return tonumber(ask(c, "q"):match("loop=(%d+)"))
end

local function wait_reply(c, pattern, seconds)
  return H.wait_for(function()
    local r = ask(c, "q")
    return r:match(pattern) and r
  end, seconds or 5)
end

local function count(s, pattern)
  return select(2, s:gsub(pattern, ""))
end

describe("hot reload #integration", function()
  it("switches a live connection to the new code for rename-style and in-place saves", function()
    local dir = setup("v1")
    local srv = H.start_server { script = dir .. "/app.lua" }
    local c = assert(H.connect(srv.port))
    assert.matches("^v1 gen=1 .* n=1 ", ask(c, "q"))
    save_rename(dir .. "/app.lua", handler_text("v2"))
    local r = wait_reply(c, "^v2 ")
    assert.truthy(r, "no reply from v2")
    assert.matches("gen=2", r)
    local n = tonumber(r:match(" n=(%d+)"))
    assert.is_true(n >= 2) -- conn.state survived the reload
    save_inplace(dir .. "/app.lua", handler_text("v3"))
    r = wait_reply(c, "^v3 ")
    assert.truthy(r, "no reply from v3")
    assert.matches("gen=3", r)
    assert.is_true(tonumber(r:match(" n=(%d+)")) > n)
    c:close()
    srv:stop()
    assert.equal(2, count(srv:log(), "reloaded "))
  end)

  it("turns a save made of several writes into exactly one reload", function()
    local dir = setup("v1")
    local srv = H.start_server { script = dir .. "/app.lua" }
    save_in_pieces(dir .. "/app.lua", handler_text("pieces"))
    local c = assert(H.connect(srv.port))
    assert.truthy(wait_reply(c, "^pieces gen=2"))
    socket.sleep(0.2)
    assert.matches("^pieces gen=2", ask(c, "q"))
    c:close()
    srv:stop()
    local log = srv:log()
    assert.equal(1, count(log, "reloaded "))
    assert.equal(0, count(log, "reload failed"))
  end)

  local bad_versions = {
    { "a syntax error", "return { on_data = function(c, d) c:write(d) }\n", "app.lua:1: unexpected symbol near '}'" },
    { "a top level that raises", "local t = nil\nlocal x = t.field\nreturn {}\n", "app.lua:2: attempt to index" },
    { "a handler that is not a table", "return 'nope'\n", "must return a table" },
  }
  for _, bad in ipairs(bad_versions) do
    it("keeps the old code on every loop after " .. bad[1] .. ", then reloads once fixed", function()
      local dir = setup("good")
      local srv = H.start_server { script = dir .. "/app.lua", loops = 4 }
      local clients = H.one_per_loop(srv.port, 4, loop_of)
      save_rename(dir .. "/app.lua", bad[2])
      assert.truthy(H.wait_for(function() return srv:log():find("reload failed", 1, true) end, 5))
      for _, c in ipairs(clients) do
        assert.matches("^good gen=1", ask(c, "q"))
      end
      local fresh = assert(H.connect(srv.port)) -- new connections get the old code too
      assert.matches("^good gen=1", ask(fresh, "q"))
      fresh:close()
      local log = srv:log()
      assert.equal(1, count(log, "error [^\n]*reload failed")) -- logged once, not per loop
      assert.matches("reload failed, generation 1 keeps serving: [^\n]*" .. bad[3], log)
      save_rename(dir .. "/app.lua", handler_text("fixed"))
      for _, c in ipairs(clients) do
        assert.truthy(wait_reply(c, "^fixed gen=2"))
      end
      for _, c in ipairs(clients) do
        c:close()
      end
      srv:stop()
    end)
  end

  it("reloads when a required module changes, and every loop reports the new generation", function()
    local dir = setup("v1", "m1")
    local srv = H.start_server { script = dir .. "/app.lua", loops = 4 }
    local clients = H.one_per_loop(srv.port, 4, loop_of)
    save_rename(dir .. "/reload_mod.lua", 'return { tag = "m2" }\n')
    for _, c in ipairs(clients) do
      local r = wait_reply(c, "mod=m2")
      assert.truthy(r)
      assert.matches("gen=2", r)
    end
    for _, c in ipairs(clients) do
      c:close()
    end
    srv:stop()
  end)

  it("keeps the per-loop store across reloads; module upvalues start over", function()
    local dir = setup("v1")
    local srv = H.start_server { script = dir .. "/app.lua" }
    local c = assert(H.connect(srv.port))
    for _ = 1, 4 do
      ask(c, "q")
    end
    assert.matches("store=5 up=5", ask(c, "q"))
    save_rename(dir .. "/app.lua", handler_text("v2"))
    local r = wait_reply(c, "^v2 ")
    assert.matches("store=%d+ up=1", r)
    assert.is_true(tonumber(r:match("store=(%d+)")) >= 6)
    c:close()
    srv:stop()
  end)

  it("cancels the old code's timers (unless persist) and reloads on SIGHUP and `moonwire reload`", function()
    local dir = setup("v1")
    local pidfile = dir .. "/pid"
    local srv = H.start_server { script = dir .. "/app.lua", args = { "--pid-file", pidfile, "--no-watch" } }
    local c = assert(H.connect(srv.port))
    assert.equal("armed", ask(c, "timer"))
    assert.equal("old timer", c:receive("*l"))
    srv:signal(signal.SIGHUP)
    assert.truthy(H.wait_for(function() return srv:log():find("generation 2", 1, true) end, 5))
    assert.matches("cancelled 1 timer%(s%) of the old code", srv:log())
    -- Drain what the timer sent before the reload, then expect silence from it.
    c:settimeout(0.2)
    repeat
      local line = c:receive("*l")
    until line == nil
    c:settimeout(5)
    local out, rc = H.sh(H.bin .. " reload --pid-file " .. pidfile)
    assert.equal(0, rc, out)
    assert.truthy(H.wait_for(function() return srv:log():find("generation 3", 1, true) end, 5))
    assert.matches("^v1 gen=3", ask(c, "q"))
    c:close()
    srv:stop()
  end)

  it("keeps Lua memory flat over 1,000 reloads", function()
    local dir = setup("v1")
    local srv = H.start_server { script = dir .. "/app.lua", args = { "--no-watch" } }
    local c = assert(H.connect(srv.port))
    local function reload_n(n)
      for _ = 1, n do
        local before = tonumber(ask(c, "q"):match("gen=(%d+)"))
        srv:signal(signal.SIGHUP)
        assert.truthy(H.wait_for(function()
          return tonumber(ask(c, "q"):match("gen=(%d+)")) > before
        end, 5))
      end
    end
    -- "mem" runs a full collection: asked every 100 reloads, it keeps the garbage below the
    -- GC's headroom (live + 4 MiB, moonwire.runtime), so RSS only grows if something leaks.
    reload_n(200)
    local mem200 = tonumber(ask(c, "mem"):match("mem=(%d+)"))
    local rss200 = H.rss_kb(srv.pid)
    for _ = 1, 8 do
      reload_n(100)
      ask(c, "mem")
    end
    local mem1000 = tonumber(ask(c, "mem"):match("mem=(%d+)"))
    local rss1000 = H.rss_kb(srv.pid)
    assert.matches("gen=1001", ask(c, "q"))
    c:close()
    srv:stop()
    -- Lua heap within 10% (+64 KiB of slack for interned strings); RSS within 10% + 1 MiB.
    assert.is_true(mem1000 <= mem200 * 1.10 + 64, ("Lua memory %d KiB -> %d KiB"):format(mem200, mem1000))
    -- (AddressSanitizer keeps freed memory in quarantine, so RSS says nothing under it.)
    if os.getenv("MOONWIRE_SANITIZER") == nil then
      assert.is_true(rss1000 <= rss200 * 1.10 + 1024, ("RSS %d KiB -> %d KiB"):format(rss200, rss1000))
    end
  end)
end)
