-- Integration specs: WebSocket pub/sub across loops.  Clients spread over
-- 4 loops subscribe to one topic; publishers on several loops publish;
-- every subscriber must get every message exactly once, in order per
-- publisher.
local H = require "helper"
local U = require "fixtures.ws_util"

local function open(port, path)
  local c = assert(H.connect(port))
  c:setoption("tcp-nodelay", true)
  assert.matches("^HTTP/1.1 101", assert(U.handshake(c, path or "/")))
  local f = assert(U.read_frame(c))
  local loop = tonumber(f.payload:match("^ready (%d+)$"))
  assert.is_number(loop)
  return c, loop
end

describe("WebSocket pub/sub across loops #integration", function()
  local srv
  setup(function()
    srv = H.start_server { script = "spec/fixtures/ws_pubsub.lua", loops = 4, args = { "--high-water", "64k" } }
  end)
  teardown(function() if srv then srv:stop() end end)

  it("delivers every message to every subscriber on every loop exactly once, in order per publisher", function()
    local clients, loops, client_loop = {}, {}, {}
    for i = 1, 40 do
      local c, loop = open(srv.port)
      clients[i], client_loop[i] = c, loop
      loops[loop] = (loops[loop] or 0) + 1
    end
    assert.equal(4, #loops, "clients landed on loops: " .. table.concat(loops, ","))
    -- Four publishers: the first client seen on each loop.
    local pubs, taken = {}, {}
    for i, c in ipairs(clients) do
      if not taken[client_loop[i]] then
        taken[client_loop[i]] = true
        pubs[#pubs + 1] = c
      end
    end
    local N = 50
    for i = 1, N do
      for p, c in ipairs(pubs) do
        assert(c:send(U.text("pub p" .. p .. "-" .. i)))
      end
    end
    for idx, c in ipairs(clients) do
      c:settimeout(10)
      local next_of = { 1, 1, 1, 1 }
      for _ = 1, N * #pubs do
        local f = assert(U.read_frame(c))
        assert.equal(1, f.op)
        local p, i = f.payload:match("^p(%d+)%-(%d+)$")
        p, i = tonumber(p), tonumber(i)
        assert.equal(next_of[p], i, ("client %d: publisher %d message %d out of order"):format(idx, p, i))
        next_of[p] = i + 1
      end
      -- Nothing more (no duplicates).
      c:settimeout(0.05)
      local extra = U.read_frame(c)
      assert.is_nil(extra, "client " .. idx .. " got an extra message")
    end
    for _, c in ipairs(clients) do c:close() end
  end)

  it("drops deliveries to a subscriber that does not read instead of buffering without bound", function()
    local slow = open(srv.port)
    local pub = open(srv.port, "/pub")
    local chunk = ("x"):rep(10000)
    local N = 3000 -- 30 MB in total: more than any socket buffer
    for _ = 1, N do assert(pub:send(U.text("pub " .. chunk))) end
    -- Let the server process every publish while the subscriber sleeps.
    H.wait_for(function() return false end, 1.5)
    local rss = H.rss_kb(srv.pid)
    local got = 0
    slow:settimeout(1)
    while true do
      local f = U.read_frame(slow)
      if not f then break end
      assert.equal(chunk, f.payload)
      got = got + 1
    end
    assert(slow:send(U.text("dropped?")))
    slow:settimeout(5)
    local dropped = tonumber(assert(U.read_frame(slow)).payload:match("^dropped (%d+)$"))
    assert.is_true(dropped > 0, "nothing dropped")
    -- Every message was either delivered or counted as dropped.
    assert.equal(N, got + dropped)
    assert.is_true(rss < 200 * 1024, "server RSS " .. rss .. " KiB")
    slow:close(); pub:close()
  end)
end)
