-- Fuzz spec for the frame parser (STYLE point 18): the seed corpus in
-- spec/fixtures/ws_corpus/ is mutated (bit flips, byte changes,
-- truncation, duplication, splicing) and fed to ws.input() in random
-- pieces, with and without permessage-deflate.  Whatever the bytes, the
-- parser must not raise, must report a consumed count within the input,
-- must deliver only valid UTF-8 as text, and must end either open, closing
-- or closed with a Close frame sent first.  The seed is fixed so a failure
-- is reproducible; MOONWIRE_FUZZ_ITERATIONS raises the count.
local ws = require "moonwire.ws"
local utf8 = require "moonwire.ws.utf8"
local U = require "fixtures.ws_util"

local ITER = tonumber(os.getenv("MOONWIRE_FUZZ_ITERATIONS")) or 3000

local function corpus()
  local list = {}
  local p = io.popen("ls spec/fixtures/ws_corpus/*.bin")
  for path in p:lines() do
    local f = assert(io.open(path, "rb"))
    list[#list + 1] = f:read("*a")
    f:close()
  end
  p:close()
  assert(#list > 0, "empty corpus")
  return list
end

local function mutate(s, seeds)
  local r = math.random(6)
  if #s == 0 then return seeds[math.random(#seeds)] end
  local i = math.random(#s)
  if r == 1 then -- flip a bit
    local b = bit.bxor(s:byte(i), bit.lshift(1, math.random(0, 7)))
    return s:sub(1, i - 1) .. string.char(b) .. s:sub(i + 1)
  elseif r == 2 then -- random byte
    return s:sub(1, i - 1) .. string.char(math.random(0, 255)) .. s:sub(i + 1)
  elseif r == 3 then -- truncate
    return s:sub(1, i)
  elseif r == 4 then -- duplicate a slice
    local j = math.random(i, #s)
    return s:sub(1, j) .. s:sub(i, j) .. s:sub(j + 1)
  elseif r == 5 then -- splice another seed
    return s:sub(1, i) .. seeds[math.random(#seeds)]
  end
  -- random garbage
  local t = {}
  for k = 1, math.random(1, 40) do t[k] = string.char(math.random(0, 255)) end
  return s:sub(1, i) .. table.concat(t)
end

local function pieces(s)
  local out, pos = {}, 1
  while pos <= #s do
    local n = math.random(1, 12)
    out[#out + 1] = s:sub(pos, pos + n - 1)
    pos = pos + n
  end
  return out
end

describe("moonwire.ws parser fuzz #unit", function()
  it("survives " .. ITER .. " mutated inputs in random pieces", function()
    math.randomseed(6455)
    local seeds = corpus()
    local offer = { ["sec-websocket-extensions"] = "permessage-deflate" }
    for n = 1, ITER do
      local input = seeds[math.random(#seeds)]
      for _ = 1, math.random(1, 4) do input = mutate(input, seeds) end
      local conn, route = U.open({ max_message = 4096 }, { echo = true }, n % 2 == 0 and offer or nil)
      local ok, err = pcall(function()
        for _, piece in ipairs(pieces(input)) do
          if conn.closed then break end
          conn:feed(piece, route)
        end
      end)
      assert(ok, ("iteration %d: %s; input %q"):format(n, tostring(err), input))
      for _, e in ipairs(route.events) do
        if e[1] == "message" and e[3] == "text" then
          assert(utf8.valid(e[2]), ("iteration %d delivered invalid UTF-8"):format(n))
        end
        assert(e[1] ~= "message" or #e[2] <= 4096, "message over max_message delivered")
      end
      local frames = U.decode(conn:output())
      local st = conn._ws._st
      if conn.closed or st ~= 1 then
        -- Closing or closed: a Close frame went out unless the peer's own
        -- Close was echoed (also a Close).
        local last = frames[#frames]
        assert(last and last.op == 8, ("iteration %d: closed without a Close frame"):format(n))
      end
      ws.close(conn, "closed", route)
    end
  end)
end)
