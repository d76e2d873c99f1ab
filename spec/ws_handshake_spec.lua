-- Unit specs for moonwire.ws.handshake and for moonwire.ws.upgrade().
local hs = require "moonwire.ws.handshake"
local ws = require "moonwire.ws"
local U = require "fixtures.ws_util"

describe("moonwire.ws.handshake #unit", function()
  it("computes Sec-WebSocket-Accept (RFC 6455 section 1.3 example)", function()
    assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", hs.accept_key("dGhlIHNhbXBsZSBub25jZQ=="))
  end)

  it("validates Sec-WebSocket-Key", function()
    assert.is_true(hs.valid_key("dGhlIHNhbXBsZSBub25jZQ=="))
    assert.is_false(hs.valid_key("dGhlIHNhbXBsZSBub25jZQ"))
    assert.is_false(hs.valid_key("not base64 at all!!!!!=="))
    assert.is_false(hs.valid_key(nil))
  end)

  it("finds tokens in comma lists case-insensitively", function()
    assert.is_true(hs.has_token("keep-alive, Upgrade", "upgrade"))
    assert.is_true(hs.has_token("WebSocket", "websocket"))
    assert.is_false(hs.has_token("keep-alive", "upgrade"))
    assert.is_false(hs.has_token(nil, "upgrade"))
  end)

  it("picks the server's preferred subprotocol among the offered ones", function()
    assert.equal("chat.v2", hs.pick_protocol("chat.v1, chat.v2", { "chat.v2", "chat.v1" }))
    assert.equal("chat.v1", hs.pick_protocol("chat.v1", { "chat.v2", "chat.v1" }))
    assert.is_nil(hs.pick_protocol("mqtt", { "chat.v2" }))
    assert.is_nil(hs.pick_protocol(nil, { "chat.v2" }))
  end)

  it("parses extension offers", function()
    local o = hs.extensions('permessage-deflate; client_max_window_bits; server_max_window_bits="10", x-foo')
    assert.same({
      { name = "permessage-deflate", params = { client_max_window_bits = true, server_max_window_bits = "10" } },
      { name = "x-foo", params = {} },
    }, o)
    assert.same({}, hs.extensions(nil))
    assert.is_nil(hs.extensions("permessage-deflate; a=1; a=2"))
    assert.is_nil(hs.extensions("permessage-deflate; =1"))
  end)

  it("parses a request head, in any number of pieces", function()
    local head = "GET /chat?room=a%20b&x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    for cut = 0, #head - 1 do
      assert.is_nil((hs.parse_request(head:sub(1, cut), 8192)))
    end
    local req, n = hs.parse_request(head .. "extra", 8192)
    assert.equal(#head, n)
    assert.equal("GET", req.method)
    assert.equal("/chat", req.path)
    assert.equal("a b", req.query.room)
    assert.equal("websocket", req.headers.upgrade)
    assert.equal("1, 2", req.headers["x-a"])
    assert.same({ false, 400 }, { hs.parse_request("BAD\r\n\r\n", 8192) })
    assert.same({ false, 431 }, { hs.parse_request(("x"):rep(9000), 8192) })
  end)
end)

describe("moonwire.ws.upgrade #unit", function()
  local function try(headers, opts, method)
    local conn, route, res = U.conn(), U.route(opts), U.response()
    local req = U.request(headers)
    req.method = method or "GET"
    local ok = ws.upgrade(conn, req, res, route)
    return ok, res, conn:output(), conn, route
  end

  it("answers 101 with the accept key and calls on_open", function()
    local ok, res, head, conn, route = try({})
    assert.is_true(ok)
    assert.is_nil(res.code)
    assert.matches("^HTTP/1.1 101 Switching Protocols\r\n", head)
    assert.matches("Sec%-WebSocket%-Accept: s3pPLMBiTxaQ9kYGzzhZRbK%+xOo=\r\n", head)
    assert.matches("\r\n\r\n$", head)
    assert.equal("open", route.events[1][1])
    assert.equal(conn._ws, route.events[1][2])
    assert.equal("/", conn._ws.path)
    assert.is_table(conn._ws.state)
  end)

  local REJECTS = {
    { "a POST", {}, "POST", 405 },
    { "a missing Upgrade header", { upgrade = false }, nil, 400 },
    { "a wrong Upgrade header", { upgrade = "h2c" }, nil, 400 },
    { "a missing Connection: Upgrade", { connection = "keep-alive" }, nil, 400 },
    { "version 8", { ["sec-websocket-version"] = "8" }, nil, 426 },
    { "a missing version", { ["sec-websocket-version"] = false }, nil, 426 },
    { "a missing key", { ["sec-websocket-key"] = false }, nil, 400 },
    { "a short key", { ["sec-websocket-key"] = "abc" }, nil, 400 },
    { "malformed extensions", { ["sec-websocket-extensions"] = "permessage-deflate; a=1; a=1" }, nil, 400 },
  }
  for _, c in ipairs(REJECTS) do
    it("rejects " .. c[1] .. " with " .. c[4], function()
      local ok, res, head, conn = try(c[2], nil, c[3])
      assert.is_false(ok)
      assert.equal(c[4], res.code)
      assert.is_true(res.sent)
      assert.equal("", head)
      assert.is_nil(conn._ws)
      if c[4] == 426 then assert.equal("13", res.headers["Sec-WebSocket-Version"]) end
    end)
  end

  it("runs the origin check hook", function()
    local seen
    local opts = { check_origin = function(origin, req) seen = { origin, req.path }; return origin == "https://ok" end }
    local ok, res = try({ origin = "https://evil" }, opts)
    assert.is_false(ok)
    assert.equal(403, res.code)
    assert.same({ "https://evil", "/" }, seen)
    assert.is_true((try({ origin = "https://ok" }, opts)))
  end)

  it("negotiates a subprotocol", function()
    local ok, _, head, conn = try({ ["sec-websocket-protocol"] = "v1, v2" }, { protocols = { "v2", "v1" } })
    assert.is_true(ok)
    assert.matches("Sec%-WebSocket%-Protocol: v2\r\n", head)
    assert.equal("v2", conn._ws.protocol)
    local _, _, head2 = try({ ["sec-websocket-protocol"] = "v3" }, { protocols = { "v2" } })
    assert.not_matches("Sec%-WebSocket%-Protocol", head2)
  end)

  it("negotiates permessage-deflate unless disabled", function()
    local ext = { ["sec-websocket-extensions"] = "permessage-deflate; client_max_window_bits" }
    local _, _, head, conn = try(ext)
    assert.matches("Sec%-WebSocket%-Extensions: permessage%-deflate\r\n", head)
    assert.is_not_nil(conn._ws._z)
    local _, _, head2, conn2 = try(ext, { deflate = false })
    assert.not_matches("Extensions", head2)
    assert.is_nil(conn2._ws._z)
  end)
end)
