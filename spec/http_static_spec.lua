-- app:static: content types, validators and 304s, path safety (traversal,
-- encoded traversal, symlinks out of the tree), streaming of large files.

local http = require "moonwire.http"
local static = require "moonwire.http.static"
local STREAM = require("moonwire.http.state").STREAM
local fake = require "fixtures.http_fakeconn"

local function sh(cmd)
    assert(os.execute(cmd) == 0, cmd)
end

local function write_file(path, data)
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
end

describe("http static", function()
    local base, root, big
    local app

    setup(function()
        base = os.tmpname()
        os.remove(base)
        root = base .. "/public"
        sh("mkdir -p " .. root .. "/sub " .. root .. "/noindex " .. base .. "/outside")
        write_file(root .. "/index.html", "<h1>home</h1>")
        write_file(root .. "/site.css", "body{}")
        write_file(root .. "/sub/app.js", "console.log(1)")
        write_file(root .. "/sub/index.html", "sub index")
        write_file(root .. "/noindex/data.bin", "\0\1\2")
        write_file(root .. "/.secret", "hidden")
        write_file(root .. "/file%2e%2e", "odd name")
        write_file(base .. "/outside/passwd", "root:x:0:0")
        write_file(base .. "/sibling.txt", "sibling")
        sh("ln -s " .. base .. "/outside/passwd " .. root .. "/escape.txt")
        sh("ln -s " .. base .. "/outside " .. root .. "/outdir")
        sh("ln -s ../public-evil " .. root .. "/dangling")
        sh("ln -s site.css " .. root .. "/alias.css")
        local parts = {}
        for k = 1, 5000 do
            parts[k] = string.format("%07d-the-quick-brown-fox-jumps-over-the-lazy-dog-0123456789\n", k)
        end
        big = table.concat(parts) -- ~320 KiB
        write_file(root .. "/big.txt", big)
        app = http.router()
        app:static("/assets", root)
        app:get("/after", function(_, res) res:send("after") end)
    end)

    teardown(function()
        sh("rm -rf " .. base)
    end)

    local function get(target, extra, method)
        local c = fake.new(app)
        c:feed((method or "GET") .. " " .. target .. " HTTP/1.1\r\nHost: t\r\n" .. (extra or "") .. "\r\n")
        local out = c:output()
        if method == "HEAD" then
            return { status = tonumber(out:match("^HTTP/1%.1 (%d+)")), raw = out }, c
        end
        local r = fake.responses(out)
        assert.equal(1, #r, out)
        return r[1], c
    end

    it("serves files with their content type, validators and length", function()
        local r = get("/assets/site.css")
        assert.equal(200, r.status)
        assert.equal("text/css; charset=utf-8", r.headers["content-type"])
        assert.equal("body{}", r.body)
        assert.equal("6", r.headers["content-length"])
        assert.matches('^"%x+%-%x+"$', r.headers.etag)
        assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$", r.headers["last-modified"])
        assert.equal("text/javascript; charset=utf-8", get("/assets/sub/app.js").headers["content-type"])
        assert.equal("application/octet-stream", get("/assets/noindex/data.bin").headers["content-type"])
        assert.equal("text/html; charset=utf-8", static.content_type("x/Y.HTML"))
        assert.equal("image/png", static.content_type("a.png"))
    end)

    it("serves index.html for directories", function()
        assert.equal("<h1>home</h1>", get("/assets").body)
        assert.equal("<h1>home</h1>", get("/assets/").body)
        assert.equal("sub index", get("/assets/sub/").body)
        assert.equal("sub index", get("/assets/sub").body)
        assert.equal(404, get("/assets/noindex/").status)
    end)

    it("answers 304 to If-None-Match and If-Modified-Since", function()
        local r = get("/assets/site.css")
        local etag, lm = r.headers.etag, r.headers["last-modified"]
        local n = get("/assets/site.css", "If-None-Match: " .. etag .. "\r\n")
        assert.equal(304, n.status)
        assert.equal("", n.body)
        assert.equal(etag, n.headers.etag)
        assert.equal(304, get("/assets/site.css", 'If-None-Match: "zzz", W/' .. etag .. "\r\n").status)
        assert.equal(304, get("/assets/site.css", "If-None-Match: *\r\n").status)
        assert.equal(200, get("/assets/site.css", 'If-None-Match: "other"\r\n').status)
        assert.equal(304, get("/assets/site.css", "If-Modified-Since: " .. lm .. "\r\n").status)
        assert.equal(304, get("/assets/site.css", "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n").status)
        assert.equal(200, get("/assets/site.css", "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n").status)
        assert.equal(200, get("/assets/site.css", "If-Modified-Since: garbage\r\n").status)
        -- If-None-Match wins over If-Modified-Since.
        assert.equal(200, get("/assets/site.css", 'If-None-Match: "x"\r\nIf-Modified-Since: ' .. lm .. "\r\n").status)
    end)

    -- { target, status }
    local SAFETY = {
        { "/assets/../sibling.txt", 403 },
        { "/assets/sub/../../sibling.txt", 403 },
        { "/assets/%2e%2e/sibling.txt", 403 },
        { "/assets/%2E%2E/%2e%2e/etc/passwd", 403 },
        { "/assets/..%2fsibling.txt", 403 },
        { "/assets/sub%2f..%2f..%2fsibling.txt", 403 },
        { "/assets/%252e%252e/sibling.txt", 404 }, -- decoded once: a literal "%2e%2e" directory
        { "/assets/file%252e%252e", 200 }, -- ... which is just a name
        { "/assets/escape.txt", 403 }, -- symlink to a file outside
        { "/assets/outdir/passwd", 403 }, -- symlinked directory outside
        { "/assets/dangling", 404 },
        { "/assets/alias.css", 200 }, -- symlink inside the tree is fine
        { "/assets/.secret", 404 },
        { "/assets/sub/.%73ecret", 404 },
        { "/assets/site.css%00.png", 400 },
        { "/assets/missing.txt", 404 },
        { "/assets/./site.css", 200 },
        { "/assets//site.css", 200 },
    }
    for _, case in ipairs(SAFETY) do
        it("path safety: " .. case[1] .. " -> " .. case[2], function()
            local r = get(case[1])
            assert.equal(case[2], r.status)
            assert.not_matches("root:x", r.body)
            assert.not_matches("sibling", r.body)
        end)
    end

    it("rejects a root that is not a directory", function()
        assert.has_error(function() http.router():static("/x", root .. "/site.css") end)
        assert.has_error(function() http.router():static("/x", base .. "/nope") end)
    end)

    it("answers HEAD with the length and no body", function()
        local r = get("/assets/big.txt", nil, "HEAD")
        assert.equal(200, r.status)
        assert.matches("Content%-Length: " .. #big .. "\r\n", r.raw)
        assert.matches("\r\n\r\n$", r.raw)
    end)

    it("streams a large file in 64 KiB pieces, waiting for on_drain", function()
        local c = fake.new(app)
        c.congest = true -- every write reports the queue over its high-water mark
        c:feed("GET /assets/big.txt HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        -- Head plus the first chunk, then it waits.
        assert.equal(2, #c.out)
        assert.equal(static.CHUNK, #c.out[2])
        assert.is_true(c.paused)
        local rounds = 0
        while c._http[STREAM] do
            rounds = rounds + 1
            c.congest = true
            c.app.on_drain(c)
            assert.is_true(rounds < 100)
        end
        for k = 2, #c.out - 1 do
            assert.is_true(#c.out[k] <= static.CHUNK)
        end
        c:drain()
        local r = fake.responses(c:output())
        assert.equal(2, #r)
        assert.equal(#big, #r[1].body)
        assert.equal(big, r[1].body)
        assert.equal("after", r[2].body)
        assert.equal(math.ceil(#big / static.CHUNK) - 1, rounds)
    end)

    it("closes the file when the connection goes away mid-stream", function()
        local c = fake.new(app)
        c.congest = true
        c:feed("GET /assets/big.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        local s = c._http[STREAM]
        assert.is_true(s.fd >= 0)
        c:finish("reset")
        assert.equal(-1, s.fd)
        assert.is_nil(c._http[STREAM])
    end)
end)
