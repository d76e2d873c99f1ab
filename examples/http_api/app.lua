-- A small JSON API: an in-memory todo list, plus a static page.
--   bin/moonwire run examples/http_api/app.lua --listen 127.0.0.1:8080
-- then open http://127.0.0.1:8080/ or use curl (see README.md).
local http = require "moonwire.http"
local mw = require "moonwire"

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

local app = http.router({ max_body = 16 * 1024 })

-- The list is per loop (each loop has its own Lua state); run with
-- --loops 1 to see one list, or keep shared state in a store of your own.
local todos, next_id = {}, 1

local function find(id)
    for i, t in ipairs(todos) do
        if t.id == id then
            return t, i
        end
    end
    return nil
end

local function decode_body(req, res)
    local cjson = require "cjson"
    local ok, value = pcall(cjson.decode, req.body)
    if not ok or type(value) ~= "table" then
        res:status(400):json({ error = "body must be a JSON object" })
        return nil
    end
    return value
end

-- Global middleware: a one-line access log.
app:use(function(req, res, nxt)
    nxt()
    mw.log.info("%s %s -> %d", req.method, req.path, res.code)
end)

-- Per-route middleware: :id must be a positive integer.
local function numeric_id(req, res, nxt)
    local id = tonumber(req.params.id)
    if not id or id < 1 or id % 1 ~= 0 then
        return res:status(400):json({ error = "id must be a positive integer" })
    end
    req.params.id = id
    nxt()
end

app:get("/api/todos", function(req, res)
    local done = req.query.done
    local list = {}
    for _, t in ipairs(todos) do
        if done == nil or tostring(t.done) == done then
            list[#list + 1] = t
        end
    end
    if #list == 0 then
        -- lua-cjson encodes an empty table as {}; the API promises a list.
        return res:set("Content-Type", "application/json"):send("[]")
    end
    res:json(list)
end)

app:post("/api/todos", function(req, res)
    local body = decode_body(req, res)
    if not body then
        return
    end
    if type(body.title) ~= "string" or body.title == "" then
        return res:status(422):json({ error = "title is required" })
    end
    local t = { id = next_id, title = body.title, done = false }
    next_id = next_id + 1
    todos[#todos + 1] = t
    res:status(201):set("Location", "/api/todos/" .. t.id):json(t)
end)

app:get("/api/todos/:id", numeric_id, function(req, res)
    local t = find(req.params.id)
    if not t then
        return res:status(404):json({ error = "no such todo" })
    end
    res:json(t)
end)

app:patch("/api/todos/:id", numeric_id, function(req, res)
    local t = find(req.params.id)
    if not t then
        return res:status(404):json({ error = "no such todo" })
    end
    local body = decode_body(req, res)
    if not body then
        return
    end
    if body.title ~= nil then
        t.title = tostring(body.title)
    end
    if body.done ~= nil then
        t.done = body.done == true
    end
    res:json(t)
end)

app:delete("/api/todos/:id", numeric_id, function(req, res)
    local _, i = find(req.params.id)
    if not i then
        return res:status(404):json({ error = "no such todo" })
    end
    table.remove(todos, i)
    res:status(204):send()
end)

app:get("/health", function(_, res)
    res:json({ ok = true, loop = mw.loop and mw.loop.id })
end)

app:static("/", dir .. "/public")

return app
