-- The request object handed to route handlers.
--
-- A request is one table filled by the parser (method, target, path, minor,
-- headers, body) plus fields computed on first use through __index
-- (query, params), so a request that never looks at its query string does
-- not pay for a table.

local parser = require "moonwire.http.parser"

local lname, decode_form = parser.lname, parser.decode_form
local rawget, rawset, setmetatable = rawget, rawset, setmetatable
local gmatch, find, sub = string.gmatch, string.find, string.sub

local _M = { _VERSION = "0.1.0" }

local methods = {}

-- req:header(name) -> value or nil; name is case-insensitive.  A repeated
-- header comes back as its values joined with ", ".
function methods.header(self, name)
    if type(name) ~= "string" then
        error("bad argument #1 to 'header' (string expected)", 2)
    end
    return self.headers[lname(name)]
end

-- req:header_values(name) -> a list with every value of a header, in the
-- order received (empty when absent).
function methods.header_values(self, name)
    if type(name) ~= "string" then
        error("bad argument #1 to 'header_values' (string expected)", 2)
    end
    local l = lname(name)
    local multi = self._multi
    local list = multi and multi[l]
    if list then
        return { unpack(list) }
    end
    local v = self.headers[l]
    return v and { v } or {}
end

local function each_pair(raw, fn, arg)
    for item in gmatch(raw, "[^&]+") do
        local eq = find(item, "=", 1, true)
        local k, v
        if eq then
            k, v = sub(item, 1, eq - 1), sub(item, eq + 1)
        else
            k, v = item, ""
        end
        fn(arg, decode_form(k), decode_form(v))
    end
end

local function put_first(q, k, v)
    if q[k] == nil then
        q[k] = v
    end
end

-- Parses "a=1&b=x+y" into { a = "1", b = "x y" }.  A repeated key keeps its
-- first value; req:query_values(key) returns all of them.
function _M.parse_query(raw)
    local q = {}
    if raw and raw ~= "" then
        each_pair(raw, put_first, q)
    end
    return q
end

-- req:query_values(name) -> every value of a query parameter, in order.
function methods.query_values(self, name)
    local out = {}
    local raw = self.rawquery
    if raw then
        each_pair(raw, function(list, k, v)
            if k == name then
                list[#list + 1] = v
            end
        end, out)
    end
    return out
end

local mt = { __name = "moonwire.http.request" }
mt.__index = function(self, k)
    local m = methods[k]
    if m ~= nil then
        return m
    end
    if k == "rawquery" then
        -- The text after the first "?" of the target (an absolute-form
        -- target's authority cannot hold one).
        local target = rawget(self, "target")
        local q = target and find(target, "?", 1, true)
        if q then
            local raw = sub(target, q + 1)
            rawset(self, "rawquery", raw)
            return raw
        end
        return nil
    elseif k == "query" then
        local q = _M.parse_query(self.rawquery)
        rawset(self, "query", q)
        return q
    elseif k == "params" then
        local p = {}
        rawset(self, "params", p)
        return p
    end
    return nil
end
mt.__tostring = function(self)
    return "moonwire.http.request: " .. tostring(rawget(self, "method")) .. " " .. tostring(rawget(self, "target"))
end
_M.mt = mt

function _M.new(conn)
    return setmetatable({ conn = conn }, mt)
end

return _M
