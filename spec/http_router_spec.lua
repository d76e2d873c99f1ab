-- moonwire.http routing, middleware and responses, driven through the
-- app's callbacks with a fake connection.

local http = require "moonwire.http"
local router = require "moonwire.http.router"
local response = require "moonwire.http.response"
local fake = require "fixtures.http_fakeconn"

local H = "Host: t\r\n"

local function request(app, method, target, extra)
    local c = fake.new(app)
    c:feed(method .. " " .. target .. " HTTP/1.1\r\n" .. H .. (extra or "") .. "\r\n")
    local out = c:output()
    if method == "HEAD" then
        return { status = tonumber(out:match("^HTTP/1%.1 (%d+)")), raw = out }, c
    end
    local r = fake.responses(out)
    assert.equal(1, #r, out)
    r[1].raw = out
    return r[1], c
end

local function tag(name)
    return function(req, res)
        local keys = {}
        for k, v in pairs(req.params) do
            keys[#keys + 1] = k .. "=" .. v
        end
        table.sort(keys)
        res:send(name .. (#keys > 0 and " " .. table.concat(keys, " ") or ""))
    end
end

describe("http router", function()
    describe("patterns", function()
        it("compiles literal, :param and *splat paths", function()
            assert.equal(router.LITERAL, (router.compile("/a/b")))
            assert.equal(router.PARAM, (router.compile("/a/:id")))
            assert.equal(router.SPLAT, (router.compile("/a/*rest")))
            local _, patt = router.compile("/u/:id/files/*path")
            local lpeg = require "lpeg"
            assert.same({ id = "7", path = "x/y.txt" }, lpeg.match(patt, "/u/7/files/x/y.txt"))
            assert.same({ id = "7", path = "" }, lpeg.match(patt, "/u/7/files/"))
            assert.is_nil(lpeg.match(patt, "/u//files/x"))
            _, patt = router.compile("/f/:name.:ext")
            assert.same({ name = "report", ext = "pdf" }, lpeg.match(patt, "/f/report.pdf"))
        end)

        it("names the culprit in bad paths", function()
            assert.has_error(function() router.compile("nope") end, "bad route path nope (must start with '/')")
            assert.has_error(function() router.compile("/a/*x/b") end,
                "bad route path '/a/*x/b' (the splat must come last)")
            assert.has_error(function() router.compile("/a/:") end,
                "bad route path '/a/:' (parameter name expected at 4)")
            assert.has_error(function() router.compile("/:a/:a") end,
                "bad route path '/:a/:a' (parameter 'a' repeated)")
        end)
    end)

    describe("matching", function()
        local app = http.router()
        app:get("/users/:id", tag("user"))
        app:get("/users/me", tag("me"))
        app:get("/files/*path", tag("files"))
        app:get("/files/special", tag("special"))
        app:get("/a/:x/c", tag("axc"))
        app:get("/a/:y/:z", tag("ayz"))
        app:post("/users/:id", tag("post-user"))
        app:put("/things/:id", tag("put"))
        app:delete("/things/:id", tag("delete"))
        app:patch("/things/:id", tag("patch"))
        app:options("/opt", tag("options"))
        app:head("/h", function(_, res) res:set("X-Head", "yes"):send("ignored") end)
        app:all("/any", tag("any"))
        app:get("/*", tag("catchall"))

        it("prefers literal paths, then params, then splats, each in registration order", function()
            assert.equal("me", request(app, "GET", "/users/me").body)
            assert.equal("user id=42", request(app, "GET", "/users/42").body)
            assert.equal("special", request(app, "GET", "/files/special").body)
            assert.equal("files path=a/b/c.txt", request(app, "GET", "/files/a/b/c.txt").body)
            assert.equal("axc x=b", request(app, "GET", "/a/b/c").body)
            assert.equal("ayz y=b z=d", request(app, "GET", "/a/b/d").body)
            assert.equal("catchall splat=else/where", request(app, "GET", "/else/where").body)
        end)

        it("decodes parameters but matches the raw path", function()
            assert.equal("user id=john doe", request(app, "GET", "/users/john%20doe").body)
            assert.equal("files path=a/b", request(app, "GET", "/files/a%2Fb").body)
        end)

        it("routes by method", function()
            assert.equal("post-user id=1", request(app, "POST", "/users/1").body)
            assert.equal("put id=1", request(app, "PUT", "/things/1").body)
            assert.equal("delete id=1", request(app, "DELETE", "/things/1").body)
            assert.equal("patch id=1", request(app, "PATCH", "/things/1").body)
            assert.equal("options", request(app, "OPTIONS", "/opt").body)
            for _, m in ipairs({ "GET", "POST", "PUT", "DELETE", "PATCH", "FOO" }) do
                assert.equal("any", request(app, m, "/any").body)
            end
        end)

        it("answers HEAD with a HEAD route, or the GET route without its body", function()
            local r = request(app, "HEAD", "/h")
            assert.equal(200, r.status)
            assert.matches("X%-Head: yes", r.raw)
            assert.matches("Content%-Length: 7\r\n", r.raw)
            assert.matches("\r\n\r\n$", r.raw)
            r = request(app, "HEAD", "/users/5")
            assert.matches("Content%-Length: 9\r\n", r.raw)
            assert.matches("\r\n\r\n$", r.raw)
        end)

        it("gives 405 with Allow when the path matches but the method does not", function()
            -- /things/ is not /things/:id, but the GET-only catch-all matches.
            assert.equal("catchall splat=things/", request(app, "GET", "/things/").body)
            local r = request(app, "DELETE", "/things/")
            assert.equal(405, r.status)
            assert.equal("GET, HEAD, OPTIONS", r.headers.allow)
            local app2 = http.router()
            app2:get("/x/:id", tag("get"))
            app2:put("/x/:name", tag("put"))
            app2:post("/x/1", tag("post"))
            r = request(app2, "DELETE", "/x/1")
            assert.equal(405, r.status)
            assert.equal("GET, HEAD, OPTIONS, POST, PUT", r.headers.allow)
            r = request(app2, "OPTIONS", "/x/2")
            assert.equal(204, r.status)
            assert.equal("GET, HEAD, OPTIONS, PUT", r.headers.allow)
        end)

        it("gives 404 when nothing matches, and keeps the connection", function()
            local app2 = http.router()
            app2:get("/only", tag("only"))
            local r, c = request(app2, "GET", "/other")
            assert.equal(404, r.status)
            assert.is_false(c.closed)
            app2:not_found(function(_, res) res:status(404):json({ error = "nope" }) end)
            r = request(app2, "GET", "/other")
            assert.equal('{"error":"nope"}', r.body)
        end)
    end)

    describe("middleware", function()
        it("runs global then per-route middleware in order, and may stop the chain", function()
            local app = http.router()
            local trail = {}
            app:use(function(req, _, nxt)
                trail[#trail + 1] = "g1 " .. req.path
                nxt()
            end)
            app:use(function(req, res, nxt)
                trail[#trail + 1] = "g2"
                if req:header("x-deny") then
                    return res:status(403):send("denied")
                end
                res:set("X-Seen", "g2")
                nxt()
            end)
            local function auth(_, _, nxt)
                trail[#trail + 1] = "route-mw"
                nxt()
            end
            app:get("/p/:id", auth, function(req, res)
                trail[#trail + 1] = "handler " .. req.params.id
                res:send("ok")
            end)
            local r = request(app, "GET", "/p/3")
            assert.equal("ok", r.body)
            assert.equal("g2", r.headers["x-seen"])
            assert.same({ "g1 /p/3", "g2", "route-mw", "handler 3" }, trail)
            trail = {}
            r = request(app, "GET", "/p/3", "X-Deny: 1\r\n")
            assert.equal(403, r.status)
            assert.same({ "g1 /p/3", "g2" }, trail)
            -- Global middleware also sees requests that end in 404.
            trail = {}
            r = request(app, "GET", "/missing")
            assert.equal(404, r.status)
            assert.same({ "g1 /missing", "g2" }, trail)
        end)

        it("next(err) answers 500", function()
            package.loaded.moonwire = { log = { error = function() end } }
            finally(function() package.loaded.moonwire = nil end)
            local app = http.router()
            app:use(function(_, _, nxt) nxt("broken") end)
            app:get("/", tag("x"))
            assert.equal(500, request(app, "GET", "/").status)
        end)
    end)

    describe("responses", function()
        it("json, redirect, status, set, streaming", function()
            local app = http.router()
            app:get("/json", function(_, res) res:status(201):json({ a = 1 }) end)
            app:get("/go", function(_, res) res:redirect("/there") end)
            app:get("/go301", function(_, res) res:redirect("https://x.example/", 301) end)
            app:get("/stream", function(_, res)
                res:set("Content-Type", "text/csv")
                res:write("a,b\n")
                res:write("")
                res:write("1,2\n")
                res:finish()
            end)
            app:get("/cookies", function(_, res)
                res:add("Set-Cookie", "a=1"):add("Set-Cookie", "b=2"):set("X-One", "1"):set("x-one", "2")
                res:send()
            end)
            local r = request(app, "GET", "/json")
            assert.equal(201, r.status)
            assert.equal("application/json", r.headers["content-type"])
            assert.equal('{"a":1}', r.body)
            r = request(app, "GET", "/go")
            assert.equal(302, r.status)
            assert.equal("/there", r.headers.location)
            assert.equal(301, request(app, "GET", "/go301").status)
            r = request(app, "GET", "/stream")
            assert.equal("chunked", r.headers["transfer-encoding"])
            assert.is_nil(r.headers["content-length"])
            assert.equal("text/csv", r.headers["content-type"])
            assert.equal("a,b\n1,2\n", r.body)
            assert.matches("\r\n4\r\na,b\n\r\n4\r\n1,2\n\r\n0\r\n\r\n$", r.raw)
            r = request(app, "GET", "/cookies")
            local _, n = r.raw:gsub("Set%-Cookie: ", "")
            assert.equal(2, n)
            assert.matches("X%-One: 2\r\n", r.raw)
            assert.equal("0", r.headers["content-length"])
        end)

        it("streams close-delimited to HTTP/1.0 clients", function()
            local app = http.router()
            app:get("/s", function(_, res)
                res:write("one ")
                res:write("two")
                res:finish()
            end)
            local c = fake.new(app)
            c:feed("GET /s HTTP/1.0\r\n\r\n")
            local out = c:output()
            assert.not_matches("chunked", out)
            assert.matches("Connection: close\r\n\r\none two$", out)
            assert.is_true(c.closed)
        end)

        it("finishes asynchronous responses in order and resumes pipelined requests", function()
            local app = http.router()
            local pending = {}
            app:get("/later", function(_, res)
                pending[#pending + 1] = res
                res:write("part1 ")
            end)
            app:get("/now", function(_, res) res:send("now") end)
            local c = fake.new(app)
            c:feed("GET /later HTTP/1.1\r\n" .. H .. "\r\nGET /now HTTP/1.1\r\n" .. H .. "\r\n")
            assert.equal(1, #pending)
            assert.is_true(c.paused)
            assert.not_matches("now", c:output())
            pending[1]:write("part2")
            pending[1]:finish()
            c:settle()
            local r = fake.responses(c:output())
            assert.equal(2, #r)
            assert.equal("part1 part2", r[1].body)
            assert.equal("now", r[2].body)
            assert.is_false(c.paused)
        end)

        it("validates arguments", function()
            local res = response.new(fake.new(http.router()), {}, { minor = 1, method = "GET" }, true)
            assert.has_error(function() res:status(99) end, "bad argument #1 to 'status' (integer 100-999 expected)")
            assert.has_error(function() res:set("Bad Name", "x") end, "bad argument #1 (header name expected)")
            assert.has_error(function() res:set("X-A", "a\r\nInjected: 1") end,
                "bad argument (header value must not contain CR, LF or NUL)")
            assert.has_error(function() res:redirect("/x", 200) end)
            res:send("x")
            assert.has_error(function() res:send("again") end, "response already sent")
        end)

        it("formats and parses HTTP dates", function()
            assert.equal("Sun, 06 Nov 1994 08:49:37 GMT", response.httpdate(784111777))
            assert.equal(784111777, response.parse_httpdate("Sun, 06 Nov 1994 08:49:37 GMT"))
            assert.equal(951782400, response.parse_httpdate("Tue, 29 Feb 2000 00:00:00 GMT"))
            assert.is_nil(response.parse_httpdate("Sunday, 06-Nov-94 08:49:37 GMT"))
        end)
    end)

    describe("route errors", function()
        local logged
        local app = http.router()
        app:get("/boom", function() error("secret detail") end)
        app:get("/half", function(_, res)
            res:write("partial")
            error("late failure")
        end)
        app:get("/ok", function(_, res) res:send("fine") end)

        before_each(function()
            logged = {}
            package.loaded.moonwire = { log = { error = function(fmt, ...) logged[#logged + 1] = fmt:format(...) end } }
        end)
        after_each(function()
            package.loaded.moonwire = nil
        end)

        it("answer 500 without a traceback and keep the connection usable", function()
            local c = fake.new(app)
            c:feed("GET /boom HTTP/1.1\r\n" .. H .. "\r\nGET /ok HTTP/1.1\r\n" .. H .. "\r\n")
            local r = fake.responses(c:output())
            assert.equal(500, r[1].status)
            assert.equal("Internal Server Error\n", r[1].body)
            assert.not_matches("secret", c:output())
            assert.equal("fine", r[2].body)
            assert.is_false(c.closed)
            assert.equal(1, #logged)
            assert.matches("secret detail", logged[1])
            assert.matches("stack traceback", logged[1])
        end)

        it("close the connection when the head was already sent", function()
            local c = fake.new(app)
            c:feed("GET /half HTTP/1.1\r\n" .. H .. "\r\nGET /ok HTTP/1.1\r\n" .. H .. "\r\n")
            assert.is_true(c.closed)
            assert.not_matches("fine", c:output())
            assert.matches("late failure", logged[1])
        end)
    end)

    describe("hot reload", function()
        it("a new app picks up a connection opened under the old one, mid-request", function()
            local old = http.router()
            old:post("/v", function(_, res) res:send("old") end)
            local new = http.router()
            new:post("/v", function(req, res) res:send("new " .. req.body) end)
            local c = fake.new(old)
            c:feed("POST /v HTTP/1.1\r\n" .. H .. "Content-Length: 4\r\n\r\nab")
            c.app = new
            c:feed("cd")
            assert.equal("new abcd", fake.responses(c:output())[1].body)
        end)

        it("a state from an incompatible module version is replaced", function()
            local app = http.router()
            app:get("/", function(_, res) res:send("ok") end)
            local c = fake.new(app)
            c._http = { -1, junk = true } -- slot 1: the layout version
            c:feed("GET / HTTP/1.1\r\n" .. H .. "\r\n")
            assert.equal("ok", fake.responses(c:output())[1].body)
        end)
    end)

    describe("websocket hand-off", function()
        local calls
        local fake_ws = {
            upgrade = function(conn, req, res, route)
                calls[#calls + 1] = "upgrade " .. route.path .. " " .. req.method
                if req:header("upgrade") ~= "websocket" then
                    return res:status(426):send("upgrade required")
                end
                conn:write("HTTP/1.1 101 Switching Protocols\r\n\r\n")
                conn._ws = { path = route.path }
            end,
            input = function(_, _, len, route)
                calls[#calls + 1] = "input " .. len .. " " .. route.handlers.name
                return len
            end,
            drain = function(_, route) calls[#calls + 1] = "drain " .. route.handlers.name end,
            timeout = function(_, route) calls[#calls + 1] = "timeout " .. route.handlers.name end,
            close = function(_, reason, route) calls[#calls + 1] = "close " .. reason .. " " .. route.handlers.name end,
        }
        before_each(function()
            calls = {}
            package.loaded["moonwire.ws"] = fake_ws
        end)
        after_each(function()
            package.loaded["moonwire.ws"] = nil
        end)

        it("upgrades, forwards trailing bytes and later events to the current app's route", function()
            local app = http.router()
            app:ws("/chat", { name = "v1" })
            local c = fake.new(app)
            c:feed("GET /chat HTTP/1.1\r\n" .. H .. "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\nFRAME")
            assert.same({ "upgrade /chat GET", "input 5 v1" }, calls)
            assert.matches("^HTTP/1%.1 101 ", c:output())
            -- Reload: the new app's handlers receive the events.
            local app2 = http.router()
            app2:ws("/chat", { name = "v2" })
            c.app = app2
            c:feed("MORE")
            app2.on_drain(c)
            app2.on_timeout(c)
            app2.on_close(c, "eof")
            assert.same({ "upgrade /chat GET", "input 5 v1", "input 4 v2", "drain v2", "timeout v2", "close eof v2" },
                calls)
            -- A reload that dropped the route falls back to the one upgraded with.
            calls = {}
            c.app = http.router()
            c:feed("X")
            assert.same({ "input 1 v1" }, calls)
        end)

        it("lets the ws module refuse through res", function()
            local app = http.router()
            app:ws("/chat", { name = "v1" })
            local r, c = request(app, "GET", "/chat")
            assert.equal(426, r.status)
            assert.is_nil(c._ws)
        end)
    end)
end)
