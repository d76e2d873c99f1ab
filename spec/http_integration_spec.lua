-- moonwire.http against the real binary and real clients: curl, Python's
-- http.client, raw sockets (slowloris, keep-alive, pipelining) and wrk.

local H = require "helper"
local socket = require "socket"

local PY = "/usr/bin/python3"

-- Reads one response from a LuaSocket client: status, headers, body.
local function read_response(c)
    local line, err = c:receive("*l")
    if not line then
        return nil, err
    end
    local status = tonumber(line:match("^HTTP/1%.1 (%d%d%d) "))
    local headers = {}
    while true do
        local l = assert(c:receive("*l"))
        if l == "" then
            break
        end
        local k, v = l:match("^([^:]+):%s*(.*)$")
        headers[k:lower()] = v
    end
    local body = ""
    if headers["content-length"] then
        local n = tonumber(headers["content-length"])
        body = n > 0 and assert(c:receive(n)) or ""
    elseif headers["transfer-encoding"] == "chunked" then
        local parts = {}
        while true do
            local n = tonumber(assert(c:receive("*l")), 16)
            if n == 0 then
                assert(c:receive("*l"))
                break
            end
            parts[#parts + 1] = assert(c:receive(n))
            assert(c:receive("*l"))
        end
        body = table.concat(parts)
    end
    return { status = status, headers = headers, body = body }
end

local function closed_by_peer(c, seconds)
    c:settimeout(seconds or 3)
    local data, err, partial = c:receive("*a")
    return (data ~= nil or err == "closed"), (data or partial)
end

describe("http server #integration", function()
    local srv

    setup(function()
        srv = H.start_server({ script = "spec/fixtures/http_app.lua", loops = 1 })
    end)

    teardown(function()
        if srv then
            srv:stop()
        end
    end)

    local function url(path)
        return "http://127.0.0.1:" .. srv.port .. path
    end

    it("serves curl", function()
        local out, rc = H.sh("curl -s " .. url("/"))
        assert.equal(0, rc)
        assert.equal("Hello, World!", out)
        out = H.sh("curl -s -i " .. url("/json/7?q=a%20b"))
        assert.matches("^HTTP/1%.1 200 OK\r\n", out)
        assert.matches("\r\nServer: moonwire\r\n", out)
        assert.matches("\r\nDate: %a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT\r\n", out)
        local cjson = require "cjson"
        assert.same({ id = "7", q = "a b" }, cjson.decode(out:match("\r\n\r\n(.*)$")))
        out = H.sh("curl -s -X POST --data-binary 'hello there' " .. url("/echo"))
        assert.equal("hello there", out)
        out = H.sh("curl -s " .. url("/stream"))
        assert.equal("line 1\nline 2\nline 3\n", out)
        out = H.sh("curl -s -o /dev/null -w '%{http_code}' " .. url("/nothing"))
        assert.equal("404", out)
        out = H.sh("curl -s -o /dev/null -w '%{http_code}' -X DELETE " .. url("/"))
        assert.equal("405", out)
    end)

    it("takes chunked uploads and Expect: 100-continue from curl", function()
        local dir = H.tmpdir()
        local data = ("0123456789abcdef"):rep(2000) -- 32000 bytes
        H.write_file(dir .. "/up.bin", data)
        local out = H.sh("curl -s -H 'Transfer-Encoding: chunked' --data-binary @" .. dir .. "/up.bin " .. url("/echo"))
        assert.equal(#data, #out)
        assert.equal(data, out)
        out = H.sh("curl -s -v -o " .. dir .. "/down.bin -H 'Expect: 100-continue' --data-binary @" .. dir ..
            "/up.bin " .. url("/echo"))
        assert.truthy(out:find("< HTTP/1.1 100 Continue", 1, true), "no 100 Continue")
        assert.truthy(H.read_file(dir .. "/down.bin") == data, "body differs")
        -- Over max_body (64 KiB in the fixture): 413.
        H.write_file(dir .. "/big.bin", ("x"):rep(70000))
        out = H.sh("curl -s -o /dev/null -w '%{http_code}' --data-binary @" .. dir .. "/big.bin " .. url("/echo"))
        assert.equal("413", out)
        os.execute("rm -rf " .. dir)
    end)

    it("serves static files with 304s to curl", function()
        local out = H.sh("curl -s -i " .. url("/static/"))
        assert.matches("Content%-Type: text/html; charset=utf%-8\r\n", out)
        assert.matches("static fixture", out, 1, true)
        local etag = out:match("\r\nETag: ([^\r]+)\r\n")
        assert.truthy(etag)
        out = H.sh("curl -s -o /dev/null -w '%{http_code}' -H 'If-None-Match: " .. etag .. "' " ..
            url("/static/index.html"))
        assert.equal("304", out)
        out = H.sh("curl -s --path-as-is -o /dev/null -w '%{http_code}' " .. url("/static/../http_app.lua"))
        assert.equal("403", out)
        out = H.sh("curl -s --path-as-is -o /dev/null -w '%{http_code}' " .. url("/static/%2e%2e/http_app.lua"))
        assert.equal("403", out)
    end)

    it("serves Python's http.client over one keep-alive connection", function()
        local script = table.concat({
            "import http.client, json, sys",
            "c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]), timeout=5)",
            "c.request('GET', '/')",
            "r = c.getresponse(); b = r.read()",
            "assert r.status == 200 and b == b'Hello, World!', (r.status, b)",
            "sock = c.sock",
            "c.request('GET', '/json/42?q=x')",
            "r = c.getresponse(); d = json.loads(r.read())",
            "assert d == {'id': '42', 'q': 'x'}, d",
            "c.request('POST', '/echo', body=b'abc' * 1000, headers={'Content-Type': 'text/plain'})",
            "r = c.getresponse(); b = r.read()",
            "assert r.status == 200 and b == b'abc' * 1000 and r.getheader('X-Body-Length') == '3000'",
            "c.request('HEAD', '/')",
            "r = c.getresponse(); b = r.read()",
            "assert r.status == 200 and b == b'' and r.getheader('Content-Length') == '13'",
            "c.request('GET', '/boom')",
            "r = c.getresponse(); b = r.read()",
            "assert r.status == 500 and b'secret' not in b and b'traceback' not in b, b",
            "c.request('GET', '/')",
            "r = c.getresponse(); r.read()",
            "assert c.sock is sock, 'connection was not kept alive'",
            "print('ok')",
        }, "\n")
        local out, rc = H.sh(PY .. " -c \"" .. script:gsub('"', '\\"') .. "\" " .. srv.port)
        assert.equal(0, rc, out)
        assert.equal("ok\n", out)
    end)

    it("answers pipelined requests in order on a kept-alive socket", function()
        local c = assert(H.connect(srv.port))
        local req = "GET /json/%d HTTP/1.1\r\nHost: t\r\n\r\n"
        local post = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nping"
        assert(c:send(req:format(1) .. req:format(2) .. post .. req:format(3)))
        assert.equal('{"id":"1"}', read_response(c).body) -- one key: a stable encoding
        assert.equal('{"id":"2"}', read_response(c).body)
        assert.equal("ping", read_response(c).body)
        assert.equal('{"id":"3"}', read_response(c).body)
        -- Still open: one more, in pieces.
        assert(c:send("GET / HT"))
        socket.sleep(0.05)
        assert(c:send("TP/1.1\r\nHost: t\r\n\r\n"))
        assert.equal("Hello, World!", read_response(c).body)
        c:close()
    end)

    it("a route error answers 500 without the traceback, logs it, and keeps the connection", function()
        local c = assert(H.connect(srv.port))
        assert(c:send("GET /boom HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n"))
        local r = read_response(c)
        assert.equal(500, r.status)
        assert.equal("Internal Server Error\n", r.body)
        assert.equal("Hello, World!", read_response(c).body)
        c:close()
        assert.truthy(H.wait_for(function()
            return srv:log():find("secret-internal-detail", 1, true)
        end, 3))
        assert.matches("stack traceback", srv:log())
    end)

    it("closes a slowloris client at the header timeout with 408", function()
        local c = assert(H.connect(srv.port))
        local t0 = H.now()
        assert(c:send("GET / HTTP/1.1\r\n"))
        -- One byte every 100 ms would keep a plain idle timer alive forever;
        -- the header timeout (400 ms in the fixture) counts from the start.
        local line, elapsed
        c:settimeout(0.1)
        for ch in ("Host: slow\r\nX-A: b\r\nX-B: c\r\n"):gmatch(".") do
            c:send(ch)
            line = c:receive("*l")
            if line then
                elapsed = H.now() - t0
                break
            end
        end
        assert.equal("HTTP/1.1 408 Request Timeout", line)
        assert.is_true(elapsed > 0.3 and elapsed < 1.0, "took " .. tostring(elapsed))
        local closed, data = closed_by_peer(c, 5)
        assert.is_true(closed)
        assert.matches("Connection: close\r\n", data)
        c:close()
    end)

    it("closes an idle keep-alive connection and a silent one", function()
        local c = assert(H.connect(srv.port))
        assert(c:send("GET / HTTP/1.1\r\nHost: t\r\n\r\n"))
        assert.equal("Hello, World!", read_response(c).body)
        local t0 = H.now()
        local closed, data = closed_by_peer(c, 6)
        assert.is_true(closed)
        assert.equal("", data)
        local elapsed = H.now() - t0
        assert.is_true(elapsed > 2 and elapsed < 5, "took " .. elapsed)
        c:close()
        -- Connected, never sent a byte: closed at the header timeout, silently.
        c = assert(H.connect(srv.port))
        closed, data = closed_by_peer(c, 3)
        assert.is_true(closed)
        assert.equal("", data)
        c:close()
    end)

    it("answers every limit with its status, then closes", function()
        local cases = {
            { "GET /" .. ("a"):rep(9000) .. " HTTP/1.1\r\nHost: t\r\n\r\n", 414 },
            { "GET / HTTP/1.1\r\nHost: t\r\n" .. ("X-H: v\r\n"):rep(101) .. "\r\n", 431 },
            { "GET / HTTP/1.1\r\nHost: t\r\n" .. ("X-Big: " .. ("b"):rep(8000) .. "\r\n"):rep(9) .. "\r\n", 431 },
            { "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 70000\r\n\r\n", 413 },
            { "GET / HTTP/1.1\r\nHost t\r\n\r\n", 400 },
            { "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: br\r\n\r\n", 501 },
        }
        for _, case in ipairs(cases) do
            local c = assert(H.connect(srv.port))
            c:send(case[1])
            local closed, data = closed_by_peer(c, 3)
            assert.is_true(closed)
            assert.equal(case[2], tonumber(data:match("^HTTP/1%.1 (%d+)")), data:sub(1, 60))
            assert.matches("Connection: close\r\n", data)
            c:close()
        end
        -- The server carries on.
        assert.equal("Hello, World!", (H.sh("curl -s " .. url("/"))))
    end)

    it("survives a bounded wrk run with no errors", function()
        local out, rc = H.sh("wrk -t1 -c10 -d1s " .. url("/"))
        assert.equal(0, rc, out)
        local n = tonumber(out:match("(%d+) requests in"))
        assert.truthy(n, out)
        assert.is_true(n > 0, out)
        assert.not_matches("Socket errors", out)
        assert.not_matches("Non%-2xx", out)
    end)
end)
