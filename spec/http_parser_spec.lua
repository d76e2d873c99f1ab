-- moonwire.http request parsing, driven through app.on_input with C
-- buffers (no server): every case is fed whole, split at every byte
-- boundary, and byte by byte, and must give the same responses.

local ffi = require "ffi"
local http = require "moonwire.http"
local parser = require "moonwire.http.parser"
local fake = require "fixtures.http_fakeconn"

local function dump(req, res)
    local names = {}
    for k in pairs(req.headers) do
        names[#names + 1] = k
    end
    table.sort(names)
    local parts = {
        req.method, " ", req.path, " q=", tostring(req.rawquery), " v=1.", req.minor, " ka=", tostring(req.keepalive),
        "\n",
    }
    for _, k in ipairs(names) do
        parts[#parts + 1] = k .. "=" .. req.headers[k] .. "\n"
    end
    local xa = req:header_values("X-A")
    if #xa > 1 then
        parts[#parts + 1] = "x-a*=" .. table.concat(xa, "|") .. "\n"
    end
    parts[#parts + 1] = "body=" .. req.body
    res:send(table.concat(parts))
end

local function new_app(opts)
    local app = http.router(opts or { max_body = 100 })
    app:all("/echo", dump)
    app:all("/", dump)
    return app
end

-- Feeds pieces as separate reads; returns the raw output and the conn.
local function run(pieces, app)
    local c = fake.new(app or new_app())
    for _, p in ipairs(pieces) do
        c:feed(p)
    end
    return c:output():gsub("Date: [^\r]+", "Date: X"), c
end

local H = "Host: example.com\r\n"
local GET = "GET /echo HTTP/1.1\r\n" .. H
local POST = "POST /echo HTTP/1.1\r\n" .. H

-- { name, request, { expected statuses }, closed?, check(responses) }
local CASES = {
    { "simple GET", GET .. "\r\n", { 200 }, false,
        function(r)
            assert.matches("^GET /echo q=nil v=1.1 ka=true\n", r[1].body)
            assert.equal("moonwire", r[1].headers.server)
            assert.equal("X", r[1].headers.date) -- present; the spec output masks its value
            assert.equal(tostring(#r[1].body), r[1].headers["content-length"])
        end },
    { "HTTP/1.0 closes by default", "GET /echo HTTP/1.0\r\n\r\n", { 200 }, true,
        function(r)
            assert.matches("v=1.0 ka=false", r[1].body)
            assert.equal("close", r[1].headers.connection)
        end },
    { "HTTP/1.0 keep-alive", "GET /echo HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", { 200 }, false,
        function(r)
            assert.equal("keep-alive", r[1].headers.connection)
        end },
    { "Connection: close on 1.1", GET .. "Connection: close\r\n\r\n", { 200 }, true,
        function(r)
            assert.equal("close", r[1].headers.connection)
        end },
    { "connection token list", GET .. "Connection: foo, Close\r\n\r\n", { 200 }, true },
    { "header names are case-insensitive, values trimmed",
        "GET /echo HTTP/1.1\r\nhOsT:   example.com  \r\nX-Thing:\tv a l\t\r\n\r\n", { 200 }, false,
        function(r)
            assert.matches("\nhost=example.com\n", r[1].body, 1, true)
            assert.matches("\nx-thing=v a l\n", r[1].body, 1, true)
        end },
    { "repeated headers are kept", GET .. "X-A: 1\r\nx-a: 2\r\nX-A: 3\r\n\r\n", { 200 }, false,
        function(r)
            assert.matches("\nx-a=1, 2, 3\n", r[1].body, 1, true)
            assert.matches("\nx-a*=1|2|3\n", r[1].body, 1, true)
        end },
    { "query string", "GET /echo?a=1&b=x+y HTTP/1.1\r\n" .. H .. "\r\n", { 200 }, false,
        function(r)
            assert.matches("q=a=1&b=x+y", r[1].body, 1, true)
        end },
    { "bare LF line endings", "GET /echo HTTP/1.1\nHost: a\nX-A: 1\n\n", { 200 }, false },
    { "empty lines before the request line", "\r\n\r\nGET /echo HTTP/1.1\r\n" .. H .. "\r\n", { 200 }, false },
    { "absolute-form target", "GET http://example.com/echo?z=1 HTTP/1.1\r\n" .. H .. "\r\n", { 200 }, false,
        function(r)
            assert.matches("^GET /echo q=z=1 ", r[1].body)
        end },
    { "pipelined requests answered in order",
        "GET /echo?n=1 HTTP/1.1\r\n" .. H .. "\r\nPOST /echo?n=2 HTTP/1.1\r\n" .. H .. "Content-Length: 3\r\n\r\nabc" ..
        "GET /echo?n=3 HTTP/1.1\r\n" .. H .. "\r\n", { 200, 200, 200 }, false,
        function(r)
            assert.matches("q=n=1", r[1].body, 1, true)
            assert.matches("q=n=2", r[2].body, 1, true)
            assert.matches("body=abc$", r[2].body)
            assert.matches("q=n=3", r[3].body, 1, true)
        end },
    { "pipelined request after Connection: close is dropped",
        GET .. "Connection: close\r\n\r\nGET /echo HTTP/1.1\r\n" .. H .. "\r\n", { 200 }, true },
    { "Content-Length body", POST .. "Content-Length: 11\r\n\r\nhello world", { 200 }, false,
        function(r)
            assert.matches("body=hello world$", r[1].body)
        end },
    { "repeated equal Content-Length", POST .. "Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
        { 200 }, false },
    { "chunked body with extension and trailer",
        POST .. "Transfer-Encoding: chunked\r\n\r\n" ..
        "5;name=v\r\nhello\r\n1\r\n \r\nA \r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n", { 200 }, false,
        function(r)
            assert.matches("body=hello 0123456789$", r[1].body)
        end },
    { "chunked then pipelined", POST .. "Transfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" ..
        "GET /echo?after HTTP/1.1\r\n" .. H .. "\r\n", { 200, 200 }, false,
        function(r)
            assert.matches("body=abc$", r[1].body)
            assert.matches("q=after", r[2].body, 1, true)
        end },
    { "HEAD has the length but no body",
        "HEAD /echo HTTP/1.1\r\n" .. H .. "\r\nGET /echo?x HTTP/1.1\r\n" .. H .. "\r\n",
        { 200, 200 }, false,
        function(r)
            -- The HEAD response carries Content-Length but no bytes: the
            -- splitter would take the next response as its body, so check raw.
            assert.equal(2, #r)
        end, true },
    { "OPTIONS *", "OPTIONS * HTTP/1.1\r\n" .. H .. "\r\n", { 404 }, false },

    -- Errors: status, then close.
    { "garbage request line", "HELLO\r\n\r\n", { 400 }, true },
    { "missing version", "GET /echo\r\n" .. H .. "\r\n", { 400 }, true },
    { "bad version syntax", "GET /echo HTTP/1.x\r\n" .. H .. "\r\n", { 400 }, true },
    { "HTTP/2.0 -> 505", "GET /echo HTTP/2.0\r\n" .. H .. "\r\n", { 505 }, true },
    { "space before colon", "GET /echo HTTP/1.1\r\nHost : a\r\n\r\n", { 400 }, true },
    { "obs-fold", GET .. "X-A: 1\r\n  continued\r\n\r\n", { 400 }, true },
    { "NUL in a value", GET .. "X-A: a\0b\r\n\r\n", { 400 }, true },
    { "bare CR in a value", GET .. "X-A: a\rb\r\n\r\n", { 400 }, true },
    { "missing Host on 1.1", "GET /echo HTTP/1.1\r\n\r\n", { 400 }, true },
    { "two Host headers", GET .. H .. "\r\n", { 400 }, true },
    { "bad Content-Length", POST .. "Content-Length: 1x\r\n\r\n", { 400 }, true },
    { "differing Content-Length", POST .. "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        { 400 }, true },
    { "Content-Length with Transfer-Encoding",
        POST .. "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", { 400 }, true },
    { "bad chunk size", POST .. "Transfer-Encoding: chunked\r\n\r\nzz\r\n", { 400 }, true },
    { "chunk data not followed by CRLF",
        POST .. "Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", { 400 }, true },
    { "unsupported transfer coding -> 501",
        POST .. "Transfer-Encoding: gzip, chunked\r\n\r\n", { 501 }, true },
    { "unknown expectation -> 417", POST .. "Expect: magic\r\nContent-Length: 1\r\n\r\nx",
        { 417 }, true },
    { "Content-Length over max_body -> 413", POST .. "Content-Length: 101\r\n\r\n", { 413 }, true },
    { "chunked over max_body -> 413",
        POST .. "Transfer-Encoding: chunked\r\n\r\n40\r\n" .. ("x"):rep(64) .. "\r\n40\r\n" ..
        ("y"):rep(64) .. "\r\n0\r\n\r\n", { 413 }, true },
    { "error after a good pipelined request",
        GET .. "\r\nBROKEN\r\n\r\n", { 200, 400 }, true },
}

local function check(case, out, c)
    local name, _, statuses, closed, fn, raw_only = case[1], case[2], case[3], case[4], case[5], case[6]
    local r
    if raw_only then
        r = {}
        for st in out:gmatch("HTTP/1%.1 (%d%d%d) ") do
            r[#r + 1] = { status = tonumber(st) }
        end
    else
        r = fake.responses(out)
    end
    local got = {}
    for i, resp in ipairs(r) do
        got[i] = resp.status
    end
    assert.same(statuses, got, name)
    assert.equal(closed, c.closed, name .. ": closed")
    if fn then
        fn(r, out)
    end
end

describe("http parser", function()
    for _, case in ipairs(CASES) do
        it(case[1] .. " (whole, every split, byte by byte)", function()
            local req = case[2]
            local whole, c = run({ req })
            check(case, whole, c)
            for k = 1, #req - 1 do
                local out, c2 = run({ req:sub(1, k), req:sub(k + 1) })
                assert.equal(whole, out, case[1] .. ": split at " .. k)
                assert.equal(c.closed, c2.closed)
            end
            local bytes = {}
            for k = 1, #req do
                bytes[k] = req:sub(k, k)
            end
            local out = run(bytes)
            assert.equal(whole, out, case[1] .. ": byte by byte")
        end)
    end

    it("sends 100 Continue only while the body is still missing", function()
        local head = "POST /echo HTTP/1.1\r\n" .. H .. "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        local out = run({ head, "hello" })
        assert.matches("^HTTP/1%.1 100 Continue\r\n\r\nHTTP/1%.1 200 OK", out)
        assert.matches("body=hello$", out)
        out = run({ head .. "hello" })
        assert.not_matches("100 Continue", out, 1, true)
        -- Over the limit: straight to 413, no 100.
        out = run({ "POST /echo HTTP/1.1\r\n" .. H .. "Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n" })
        assert.matches("^HTTP/1%.1 413 ", out)
    end)

    describe("limits", function()
        local function status_of(req, app)
            local out, c = run(req, app)
            return tonumber(out:match("^HTTP/1%.1 (%d+)")), c.closed
        end

        it("request line over 8 KiB -> 414 (whole and while still arriving)", function()
            local line = "GET /" .. ("a"):rep(http.MAX_REQUEST_LINE) .. " HTTP/1.1\r\n"
            assert.same({ 414, true }, { status_of({ line .. H .. "\r\n" }) })
            -- No line end yet: refused as soon as it is too long.
            assert.same({ 414, true }, { status_of({ line:sub(1, 9000) }) })
            local pieces = {}
            for k = 1, 9000, 1000 do
                pieces[#pieces + 1] = line:sub(k, k + 999)
            end
            assert.same({ 414, true }, { status_of(pieces) })
            -- Just under the limit is fine.
            local ok = "GET /echo?" .. ("a"):rep(http.MAX_REQUEST_LINE - 30) .. " HTTP/1.1\r\n"
            assert.same({ 200, false }, { status_of({ ok .. H .. "\r\n" }) })
        end)

        it("more than 100 headers -> 431", function()
            local hs = {}
            for k = 1, 101 do
                hs[k] = "X-" .. k .. ": v\r\n"
            end
            local req = "GET /echo HTTP/1.1\r\n" .. H .. table.concat(hs) .. "\r\n"
            assert.same({ 431, true }, { status_of({ req }) })
            table.remove(hs)
            table.remove(hs)
            req = "GET /echo HTTP/1.1\r\n" .. H .. table.concat(hs) .. "\r\n"
            assert.same({ 200, false }, { status_of({ req }) })
        end)

        it("header block over 64 KiB -> 431 (whole and while still arriving)", function()
            local big = "X-Big: " .. ("b"):rep(8000) .. "\r\n"
            local req = "GET /echo HTTP/1.1\r\n" .. H .. big:rep(9) .. "\r\n"
            assert.same({ 431, true }, { status_of({ req }) })
            local pieces = {}
            for k = 1, #req - 2, 4096 do
                pieces[#pieces + 1] = req:sub(k, math.min(k + 4095, #req - 2))
            end
            assert.same({ 431, true }, { status_of(pieces) })
        end)

        it("body over max_body -> 413 (default 1 MiB)", function()
            local app = http.router()
            app:post("/", function(req, res)
                res:send(#req.body)
            end)
            local mib = 1024 * 1024
            assert.same({ 413, true },
                { status_of({ "POST / HTTP/1.1\r\n" .. H .. "Content-Length: " .. (mib + 1) .. "\r\n\r\n" }, app) })
            local out = run({ "POST / HTTP/1.1\r\n" .. H .. "Content-Length: " .. mib .. "\r\n\r\n",
                ("z"):rep(mib / 2), ("z"):rep(mib / 2) }, app)
            assert.matches("\r\n\r\n1048576$", out)
        end)
    end)

    describe("timeouts", function()
        before_each(function()
            fake.clock = 1000
        end)

        it("header timeout: a slow head gets 408 and a close", function()
            local app = new_app({ header_timeout = 500 })
            local c = fake.new(app)
            assert.equal(500, c.timeout)
            c:feed("GET /echo HTTP/1.1\r\n")
            fake.clock = 1300
            c:feed("Ho")
            -- Re-armed with what is left of the budget, not a fresh 500 ms.
            assert.equal(200, c.timeout)
            fake.clock = 1499
            c:feed("s")
            assert.equal(1, c.timeout)
            c:fire_timeout()
            assert.matches("^HTTP/1%.1 408 ", c:output())
            assert.is_true(c.closed)
        end)

        it("header timeout is absolute: bytes that keep trickling in do not extend it", function()
            local c = fake.new(new_app({ header_timeout = 500 }))
            for k = 1, 6 do
                fake.clock = 1000 + k * 100
                c:feed("G")
            end
            assert.matches("^HTTP/1%.1 408 ", c:output())
            assert.is_true(c.closed)
        end)

        it("an idle connection that never sent a byte is closed silently", function()
            local c = fake.new(new_app({ header_timeout = 500 }))
            c:fire_timeout()
            assert.equal("", c:output())
            assert.is_true(c.closed)
        end)

        it("keep-alive idle timeout after a response", function()
            local c = fake.new(new_app({ header_timeout = 500, keepalive_timeout = 7000 }))
            c:feed("GET /echo HTTP/1.1\r\n" .. H .. "\r\n")
            assert.equal(7000, c.timeout)
            assert.is_false(c.closed)
            local n = #c.out
            c:fire_timeout()
            assert.equal(n, #c.out)
            assert.is_true(c.closed)
        end)

        it("a body that stops arriving gets 408", function()
            local c = fake.new(new_app({ header_timeout = 500 }))
            c:feed("POST /echo HTTP/1.1\r\n" .. H .. "Content-Length: 10\r\n\r\nabc")
            assert.equal(500, c.timeout)
            c:fire_timeout()
            assert.matches("^HTTP/1%.1 408 ", c:output())
            assert.is_true(c.closed)
        end)
    end)

    it("a byte-by-byte head costs linear work (resumes its scan)", function()
        local c = fake.new(new_app())
        local req = "GET /echo HTTP/1.1\r\n" .. H .. ("X-Pad: " .. ("p"):rep(50) .. "\r\n"):rep(60) .. "\r\n"
        for k = 1, #req do
            c:feed(req:sub(k, k))
        end
        assert.equal(#req, c.calls)
        assert.matches("^HTTP/1%.1 200 ", c:output())
    end)

    describe("parse_head", function()
        local function parse(s)
            local buf = ffi.new("uint8_t[?]", #s)
            ffi.copy(buf, s, #s)
            local req = {}
            return parser.parse_head(ffi.cast("const uint8_t *", buf), #s, req), req
        end

        it("returns consumed bytes, 0 for partial, -status for errors", function()
            local s = "GET / HTTP/1.1\r\nHost: a\r\n\r\nextra"
            local n, req = parse(s)
            assert.equal(#s - 5, n)
            assert.equal("GET", req.method)
            assert.equal("/", req.target)
            assert.equal("a", req.headers.host)
            assert.equal(0, (parse("GET / HTTP/1.1\r\nHost: a\r\n")))
            assert.equal(0, (parse("GET / HTTP/1.1\r\nHost: a\r\n\r")))
            assert.equal(-400, (parse("GET / HTTP/1.1\r\nHost: a\r\n\rx")))
            assert.equal(-400, (parse(" / HTTP/1.1\r\n\r\n")))
            assert.equal(-400, (parse("GET  / HTTP/1.1\r\n\r\n")))
        end)

        it("parses Content-Length strictly", function()
            assert.equal(12, parser.content_length("12"))
            assert.equal(12, parser.content_length("12, 12"))
            assert.is_nil(parser.content_length("-1"))
            assert.is_nil(parser.content_length("1 2"))
            assert.is_nil(parser.content_length("12, 13"))
            assert.is_nil(parser.content_length("9999999999999999"))
            assert.is_nil(parser.content_length(""))
        end)
    end)
end)

-- The two alternatives moonwire.http.parser was measured against (see
-- docs/http.md).  They live here, not in lua/, because they lost; the spec
-- keeps them honest by checking all three agree.  MW_BENCH=1 prints timings.
local lpeg = require "lpeg"

local TYPICAL = "GET /plaintext?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n" ..
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0\r\n" ..
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\n" ..
    "Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nCookie: a=b; c=d\r\n\r\n"
local WRK = "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"

local function blank_line_end(buf, len)
    local i, lf1 = 0, -1
    while i < len do
        if buf[i] == 10 then
            if lf1 < 0 then
                lf1 = i
            else
                local p = buf[i - 1]
                if p == 10 or (p == 13 and buf[i - 2] == 10) then
                    return i + 1
                end
            end
        end
        i = i + 1
    end
    return 0
end

local function trim(v)
    local c = v:byte(-1)
    if c == 32 or c == 9 then
        return (v:match("^(.-)[ \t]+$"))
    end
    return v
end

local REQLINE = "^([!#$%%&'*+%-.^_`|~%w]+) ([^ \r\n%z]+) HTTP/(%d)%.(%d)\r?\n"
local HEADER = "^([!#$%%&'*+%-.^_`|~%w]+):[ \t]*([^\r\n%z]*)\r?\n"
local function parse_find(buf, len, req)
    local n = blank_line_end(buf, len)
    local s = ffi.string(buf, n)
    local _, e, m, t, _, minor = s:find(REQLINE)
    req.method, req.target, req.minor = m, t, tonumber(minor)
    local h = {}
    req.headers = h
    local pos = e + 1
    while true do
        local c = s:byte(pos)
        if c == 13 or c == 10 then
            break
        end
        local _, e2, name, value = s:find(HEADER, pos)
        h[parser.lname(name)] = trim(value)
        pos = e2 + 1
    end
    return n
end

local P, R, S, C, Carg = lpeg.P, lpeg.R, lpeg.S, lpeg.C, lpeg.Carg
local tchar = R("az", "AZ", "09") + S("!#$%&'*+-.^_`|~")
local eol = P"\r" ^ -1 * "\n"
local function set_line(req, m, t, _, minor)
    req.method, req.target, req.minor, req.headers = m, t, tonumber(minor), {}
end
local function add(req, name, value)
    req.headers[parser.lname(name)] = trim(value)
end
local line = (Carg(1) * C(tchar ^ 1) * " " * C((1 - S" \r\n\0") ^ 1) * " HTTP/" * C(R"09") * "." * C(R"09") * eol)
    / set_line
local field = (Carg(1) * C(tchar ^ 1) * ":" * S" \t" ^ 0 * C((1 - S"\r\n\0") ^ 0) * eol) / add
local head = line * field ^ 0 * eol * -1
local function parse_lpeg(buf, len, req)
    local n = blank_line_end(buf, len)
    lpeg.match(head, ffi.string(buf, n), 1, req)
    return n
end

describe("http parser speed #bench", function()
    it("the byte scanner, string.find and LPeg agree (MW_BENCH=1 prints timings)", function()
        local impls = { { "ffi byte scan", parser.parse_head }, { "string.find", parse_find }, { "lpeg", parse_lpeg } }
        for _, s in ipairs({ WRK, TYPICAL }) do
            local buf = ffi.new("uint8_t[?]", #s)
            ffi.copy(buf, s, #s)
            local p = ffi.cast("const uint8_t *", buf)
            local ref = {}
            assert.equal(#s, parser.parse_head(p, #s, ref))
            for _, impl in ipairs(impls) do
                local req = {}
                assert.equal(#s, impl[2](p, #s, req))
                assert.same({ ref.method, ref.target, ref.minor, ref.headers },
                    { req.method, req.target, req.minor, req.headers })
                if os.getenv("MW_BENCH") then
                    local f, n = impl[2], 1000000
                    for round = 1, 2 do
                        local t0 = os.clock()
                        for _ = 1, n do
                            f(p, #s, {})
                        end
                        local dt = os.clock() - t0
                        if round == 2 then
                            print(string.format("%-9s %-14s %6.0f ns/request", s == WRK and "wrk" or "typical", impl[1],
                                dt / n * 1e9))
                        end
                    end
                end
            end
        end
    end)
end)
