-- Route patterns compiled once with LPeg, and the route table lookup.
--
-- A pattern is a path made of literal text, ":name" parameters (one or more
-- characters up to the next "/" or the literal character that follows the
-- parameter) and an optional trailing "*name" (or bare "*") that matches
-- the rest of the path, slashes included, possibly empty.
--
-- Match order (documented in docs/http.md):
--   1. literal paths, by exact string comparison;
--   2. patterns with parameters but no splat, in registration order;
--   3. patterns with a splat, in registration order.
-- The first pattern that matches the path and has a handler for the method
-- wins; when patterns match but none handles the method the answer is 405
-- with the union of their methods in Allow.

local lpeg = require "lpeg"
local parser = require "moonwire.http.parser"

local P, C, Cg, Ct = lpeg.P, lpeg.C, lpeg.Cg, lpeg.Ct
local lpeg_match = lpeg.match
local find, sub, byte = string.find, string.sub, string.byte
local decode = parser.decode

local _M = { _VERSION = "0.1.0" }

_M.LITERAL, _M.PARAM, _M.SPLAT = 1, 2, 3

-- Compiles a route path.  Returns kind, pattern (nil for literal paths),
-- names (the parameter names, in order).  Raises on a malformed path,
-- naming it.
function _M.compile(path)
    if type(path) ~= "string" or byte(path, 1) ~= 47 then
        error("bad route path " .. tostring(path) .. " (must start with '/')", 3)
    end
    if not find(path, "[:*]") then
        return _M.LITERAL, nil, {}
    end
    local patt = P(true)
    local names = {}
    local kind = _M.PARAM
    local i, n = 1, #path
    while i <= n do
        local c = sub(path, i, i)
        if c == ":" then
            local _, e, name = find(path, "^([%a_][%w_]*)", i + 1)
            if not name then
                error("bad route path '" .. path .. "' (parameter name expected at " .. i .. ")", 3)
            end
            for _, other in ipairs(names) do
                if other == name then
                    error("bad route path '" .. path .. "' (parameter '" .. name .. "' repeated)", 3)
                end
            end
            local stop = sub(path, e + 1, e + 1)
            if stop == ":" or stop == "*" then
                error("bad route path '" .. path .. "' (parameter '" .. name .. "' needs a separator after it)", 3)
            end
            local seg = 1 - P"/"
            if stop ~= "" and stop ~= "/" then
                seg = seg - P(stop)
            end
            patt = patt * Cg(C(seg ^ 1) / decode, name)
            names[#names + 1] = name
            i = e + 1
        elseif c == "*" then
            local _, e, name = find(path, "^([%a_][%w_]*)", i + 1)
            e = e or i
            name = name or "splat"
            if e ~= n then
                error("bad route path '" .. path .. "' (the splat must come last)", 3)
            end
            patt = patt * Cg(C(P(1) ^ 0) / decode, name)
            names[#names + 1] = name
            kind = _M.SPLAT
            i = n + 1
        else
            local _, e = find(path, "^[^:*]+", i)
            patt = patt * P(sub(path, i, e))
            i = e + 1
        end
    end
    return kind, Ct(patt * -1), names
end

-- A table of routes: entries keyed by their path text, each with a
-- handler per method.
local Table = {}
local mt = { __index = Table, __name = "moonwire.http.routes" }

function _M.new()
    return setmetatable({ exact = {}, param = {}, splat = {}, by_path = {} }, mt)
end

-- Returns the entry for a path, creating it on first use.
function Table:entry(path)
    local e = self.by_path[path]
    if e then
        return e
    end
    local kind, patt, names = _M.compile(path)
    e = { path = path, kind = kind, patt = patt, names = names, methods = {} }
    self.by_path[path] = e
    if kind == _M.LITERAL then
        self.exact[path] = e
    elseif kind == _M.PARAM then
        self.param[#self.param + 1] = e
    else
        self.splat[#self.splat + 1] = e
    end
    return e
end

-- Registers handler h (any value) for method (upper case, or "*" for
-- all methods) on path.
function Table:add(method, path, h)
    local e = self:entry(path)
    e.methods[method] = h
    return e
end

local function pick(e, method)
    local m = e.methods
    local h = m[method]
    if h == nil and method == "HEAD" then
        h = m.GET
    end
    if h == nil then
        h = m["*"]
    end
    return h
end

local function scan(list, method, path, seen)
    for i = 1, #list do
        local e = list[i]
        local params = lpeg_match(e.patt, path)
        if params then
            local h = pick(e, method)
            if h ~= nil then
                return h, params, seen
            end
            seen = seen or {}
            seen[#seen + 1] = e
        end
    end
    return nil, nil, seen
end

-- Looks a request up.  Returns h, params, nil on a match; nil, nil, list
-- of the matching entries when the path matches but not the method; nil
-- when nothing matches.
function Table:match(method, path)
    local e = self.exact[path]
    local seen
    if e then
        local h = pick(e, method)
        if h ~= nil then
            return h, nil, nil
        end
        seen = { e }
    end
    local h, params
    h, params, seen = scan(self.param, method, path, seen)
    if h ~= nil then
        return h, params, nil
    end
    h, params, seen = scan(self.splat, method, path, seen)
    if h ~= nil then
        return h, params, nil
    end
    return nil, nil, seen
end

-- The Allow header value for a list of matching entries.
function _M.allow(seen)
    local set, list = { OPTIONS = true }, { "OPTIONS" }
    for _, e in ipairs(seen) do
        for m in pairs(e.methods) do
            local names = m == "*" and { "DELETE", "GET", "HEAD", "PATCH", "POST", "PUT" } or { m }
            if m == "GET" then
                names[2] = "HEAD"
            end
            for _, name in ipairs(names) do
                if not set[name] then
                    set[name] = true
                    list[#list + 1] = name
                end
            end
        end
    end
    table.sort(list)
    return table.concat(list, ", ")
end

return _M
