-- moonwire.ws.handshake: the opening handshake of RFC 6455 section 4.2.
--
-- Sec-WebSocket-Accept is SHA-1 + base64 from OpenSSL's libcrypto through
-- the FFI (never hand-rolled).  This module also parses the header lists
-- the handshake negotiates (Connection tokens, subprotocols, extension
-- offers) and holds a small request-head parser used when a WebSocket
-- endpoint runs without the HTTP router (see moonwire.ws.handler).

local ffi = require "ffi"

local find, sub, lower, gmatch, match = string.find, string.sub, string.lower,
  string.gmatch, string.match

local _M = { _VERSION = "0.1" }

ffi.cdef [[
unsigned char *SHA1(const unsigned char *d, size_t n, unsigned char *md);
int EVP_EncodeBlock(unsigned char *t, const unsigned char *f, int n);
]]

local crypto = ffi.load("crypto")
local GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
local digest = ffi.new("unsigned char[20]")
local b64 = ffi.new("unsigned char[32]")

--- Returns the Sec-WebSocket-Accept value for a Sec-WebSocket-Key.
function _M.accept_key(key)
  local s = key .. GUID
  crypto.SHA1(s, #s, digest)
  local n = crypto.EVP_EncodeBlock(b64, digest, 20)
  return ffi.string(b64, n)
end

--- True if key is a valid Sec-WebSocket-Key: base64 of 16 bytes
-- (section 4.1: 24 characters ending in "==").
function _M.valid_key(key)
  return type(key) == "string" and #key == 24 and match(key, "^[A-Za-z0-9+/]+==$") ~= nil
end

local function trim(s)
  return match(s, "^[ \t]*(.-)[ \t]*$")
end

--- True if the comma-separated header value list contains token
-- (case-insensitive), e.g. has_token("keep-alive, Upgrade", "upgrade").
function _M.has_token(value, token)
  if not value then return false end
  for item in gmatch(value, "[^,]+") do
    if lower(trim(item)) == token then return true end
  end
  return false
end

--- Splits a comma-separated list into trimmed non-empty items.
function _M.list(value)
  local out = {}
  if value then
    for item in gmatch(value, "[^,]+") do
      item = trim(item)
      if item ~= "" then out[#out + 1] = item end
    end
  end
  return out
end

--- Picks the subprotocol: the first of the server's protocols (in the
-- server's order of preference) that the client offered.  Returns nil
-- when there is nothing in common.
function _M.pick_protocol(offered, supported)
  if not offered or not supported then return nil end
  local set = {}
  for _, p in ipairs(_M.list(offered)) do set[p] = true end
  for _, p in ipairs(supported) do
    if set[p] then return p end
  end
  return nil
end

--- Parses a Sec-WebSocket-Extensions value (section 9.1) into a list of
-- offers { name = "permessage-deflate", params = { k = v or true } }.
-- Quoted parameter values are unquoted.  Returns nil, err on a malformed
-- value.
function _M.extensions(value)
  local offers = {}
  if not value then return offers end
  for item in gmatch(value, "[^,]+") do
    local parts = {}
    for part in gmatch(item, "[^;]+") do parts[#parts + 1] = trim(part) end
    local name = parts[1]
    if name and name ~= "" then
      if not match(name, "^[%w!#$%%&'*+.^_`|~-]+$") then return nil, "bad extension name" end
      local params = {}
      for i = 2, #parts do
        local k, v = match(parts[i], "^([%w!#$%%&'*+.^_`|~-]+)%s*=%s*(.*)$")
        if k then
          v = match(v, '^"(.*)"$') or v
          if v == "" then return nil, "bad extension parameter" end
        else
          k = match(parts[i], "^([%w!#$%%&'*+.^_`|~-]+)$")
          v = true
          if not k then return nil, "bad extension parameter" end
        end
        k = lower(k)
        if params[k] ~= nil then return nil, "duplicate extension parameter " .. k end
        params[k] = v
      end
      offers[#offers + 1] = { name = lower(name), params = params }
    end
  end
  return offers
end

-- A minimal request-head parser for endpoints served without the router.
-- It returns a request table shaped like the router's
-- { method, path, target, query, headers (lower-case names), version }.

local function hexchar(h) return string.char(tonumber(h, 16)) end

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", hexchar))
end

local function parse_query(qs)
  local q = {}
  if not qs then return q end
  for pair in gmatch(qs, "[^&]+") do
    local k, v = match(pair, "^([^=]*)=?(.*)$")
    k = unescape(k)
    if q[k] == nil then q[k] = unescape(v) end
  end
  return q
end
_M.parse_query = parse_query

--- Parses the request head in s (a Lua string holding at least the bytes
-- up to and including the blank line).  Returns the request table and the
-- head length, nil when the head is not complete yet, or false, status
-- when it is malformed (status is the HTTP status to answer).
function _M.parse_request(s, max_head)
  local e = find(s, "\r\n\r\n", 1, true)
  if not e then
    if #s > max_head then return false, 431 end
    return nil
  end
  if e > max_head then return false, 431 end
  local line_end = find(s, "\r\n", 1, true)
  local method, target, version = match(sub(s, 1, line_end - 1), "^(%u+) (%S+) HTTP/(%d%.%d)$")
  if not method then return false, 400 end
  local headers = {}
  local pos = line_end + 2
  while pos < e + 2 do
    local nl = find(s, "\r\n", pos, true)
    local name, value = match(sub(s, pos, nl - 1), "^([^:%s]+):[ \t]*(.-)[ \t]*$")
    if not name then return false, 400 end
    name = lower(name)
    local old = headers[name]
    headers[name] = old and (old .. ", " .. value) or value
    pos = nl + 2
  end
  local path, qs = match(target, "^([^?]*)%??(.*)$")
  local req = {
    method = method, target = target, path = path, version = version,
    query = parse_query(qs), headers = headers,
  }
  return req, e + 3
end

--- Reads header name (lower case) from a request built by the router or
-- by parse_request: both keep lower-cased names in req.headers; a router
-- request may also offer req:header(name).
function _M.header(req, name)
  local h = req.headers
  if h then
    local v = h[name]
    if v ~= nil then
      if type(v) == "table" then v = table.concat(v, ", ") end
      return v
    end
  end
  local get = req.header or req.get
  if type(get) == "function" then return get(req, name) end
  return nil
end

return _M
