-- HTTP/1.x request parser working directly on the core's input buffer.
--
-- The parser follows picohttpparser's contract: it is handed a pointer and a
-- length, returns the number of bytes the request head occupies, 0 when the
-- head is not complete yet (call again with more bytes) or a negative HTTP
-- status when the head is invalid.  It never copies the buffer: it scans the
-- bytes through the FFI and only turns the pieces a handler needs (method,
-- target, header names and values) into Lua strings.
--
-- A byte scanner beats both string.find patterns and an LPeg grammar on
-- typical requests, and it is shaped so the JIT compiles a request's whole
-- parse into one trace (no Lua loops on the way); docs/http.md has the
-- measurements.

local ffi = require "ffi"
local core = require "moonwire.core"

local ffi_string, ffi_cast = ffi.string, ffi.cast
local lower, byte, find = string.lower, string.byte, string.find
local tonumber = tonumber
local new_tab = require "table.new"

ffi.cdef [[
void *mw_http_memchr(const void *s, int c, size_t n) __asm__("memchr");
]]

local C = ffi.C
local memchr = C.mw_http_memchr
local u8p = ffi.typeof("const uint8_t *")

-- span(p, n, set): how many leading bytes of p[0, n) are in set (a uint8_t[256] of 0/1).
-- Inside the runtime it is one FFI call (runtime/bytes.c), which keeps the request's trace
-- whole: a Lua loop per token would give each scan a trace of its own and leave the code
-- after it to the interpreter. Plain luajit (the unit specs) gets the same loop in Lua.
local span
if core.in_runtime then
    local C_span = core.C.mw_span
    span = function(p, n, set)
        return tonumber(C_span(p, n, set))
    end
else
    span = function(p, n, set)
        local i = 0
        while i < n and set[p[i]] ~= 0 do
            i = i + 1
        end
        return i
    end
end

local _M = { _VERSION = "0.1.0" }

-- Limits, shared with moonwire.http so the docs and the code cannot drift.
_M.MAX_REQUEST_LINE = 8192 -- bytes, excluding the line ending -> 414
_M.MAX_HEADER_BLOCK = 65536 -- bytes after the request line -> 431
_M.MAX_HEADERS = 100 -- header fields -> 431
_M.MAX_CHUNK_LINE = 1024 -- a chunk-size line with extensions -> 400

local MAX_REQUEST_LINE = _M.MAX_REQUEST_LINE
local MAX_HEADER_BLOCK = _M.MAX_HEADER_BLOCK
local MAX_HEADERS = _M.MAX_HEADERS
local MAX_CHUNK_LINE = _M.MAX_CHUNK_LINE

-- tchar from RFC 9110 section 5.6.2.
local TOKEN = ffi.new("uint8_t[256]")
for c in ("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"):gmatch(".") do
    TOKEN[byte(c)] = 1
end

-- Field values may hold HTAB, SP, visible ASCII and obs-text (>= 0x80); any
-- other control byte (NUL, a bare CR...) is rejected.
local VCHAR = ffi.new("uint8_t[256]")
for c = 0, 255 do
    if c == 9 or (c >= 32 and c ~= 127) then
        VCHAR[c] = 1
    end
end

-- A request-target is any run of visible bytes; whitespace after a field's colon.
local TARGET, OWS = ffi.new("uint8_t[256]"), ffi.new("uint8_t[256]")
for c = 33, 255 do
    TARGET[c] = c ~= 127 and 1 or 0
end
OWS[9], OWS[32] = 1, 1

-- Header names arrive in whatever case the client used; lower-casing them
-- through a cache keeps the common names from allocating.  The cache is
-- bounded so that a client inventing names cannot grow it.
local lname_cache, lname_count = {}, 0
local function lname(name)
    local l = lname_cache[name]
    if l then
        return l
    end
    l = lower(name)
    if lname_count < 1024 then
        lname_count = lname_count + 1
        lname_cache[name] = l
    end
    return l
end
_M.lname = lname

-- Finds a blank line (LF LF or LF CR LF) in buf[from, len).  Returns the
-- index just past it, or 0 and the offset at which a later call may resume.
-- Used to avoid re-parsing an incomplete head byte by byte (slowloris).
local function find_blank(buf, len, from)
    local i = from > 2 and from - 2 or 0
    while i < len do
        local p = memchr(buf + i, 10, len - i)
        if p == nil then
            return 0, len
        end
        i = ffi_cast(u8p, p) - buf
        if i >= 1 then
            local c = buf[i - 1]
            if c == 10 or (c == 13 and i >= 2 and buf[i - 2] == 10) then
                return i + 1, i + 1
            end
        end
        i = i + 1
    end
    return 0, len
end
_M.find_blank = find_blank

-- Checks an incomplete head for the limits it may already have broken.
-- Returns an error status or nil.
function _M.check_partial(buf, len)
    local lf = memchr(buf, 10, len)
    if lf == nil then
        if len > MAX_REQUEST_LINE + 2 then
            return 414
        end
        return nil
    end
    local le = ffi_cast(u8p, lf) - buf
    if le > MAX_REQUEST_LINE + 1 then
        return 414
    end
    if len - le > MAX_HEADER_BLOCK then
        return 431
    end
    return nil
end

-- Adds one header to req.headers; a repeated name keeps every value in
-- req._multi[name] and joins them with ", " in req.headers[name].
local function add_header(req, headers, name, value)
    local old = headers[name]
    if old == nil then
        headers[name] = value
        return
    end
    local multi = req._multi
    if not multi then
        multi = {}
        req._multi = multi
    end
    local list = multi[name]
    if not list then
        list = { old }
        multi[name] = list
    end
    list[#list + 1] = value
    headers[name] = old .. ", " .. value
end

-- Parses the header field at buf[pos] and then, by a tail call, the next one, until the
-- blank line; returns what parse_head returns.  A tail call rather than a loop: the JIT
-- unrolls it into the request's trace, where a loop would end that trace and leave the rest of
-- the request to the interpreter.  n counts the fields so far; limit is where the header block
-- must end.
local function fields(buf, len, req, headers, pos, n, limit)
    if pos >= len then
        return len > limit and -431 or 0
    end
    local c = buf[pos]
    if c == 10 then
        return pos + 1
    elseif c == 13 then
        if pos + 1 >= len then
            return 0
        end
        if buf[pos + 1] == 10 then
            return pos + 2
        end
        return -400
    end
    local lf = memchr(buf + pos, 10, len - pos)
    if lf == nil then
        return len > limit and -431 or 0
    end
    local le = ffi_cast(u8p, lf) - buf
    if le >= limit then
        return -431
    end
    if n >= MAX_HEADERS then
        return -431
    end
    local i = pos + span(buf + pos, le - pos, TOKEN)
    if i == pos or buf[i] ~= 58 then
        return -400 -- also rejects obs-fold and "Name :"
    end
    local name = lname(ffi_string(buf + pos, i - pos))
    i = i + 1
    i = i + span(buf + i, le - i, OWS)
    local e = le
    if e > i and buf[e - 1] == 13 then
        e = e - 1
    end
    while e > i and (buf[e - 1] == 32 or buf[e - 1] == 9) do
        e = e - 1
    end
    if span(buf + i, e - i, VCHAR) ~= e - i then
        return -400
    end
    add_header(req, headers, name, ffi_string(buf + i, e - i))
    return fields(buf, len, req, headers, le + 1, n + 1, limit)
end

-- Parses the request head at buf[0, len).
-- Returns head_len (> 0) and fills req.method, req.target, req.minor (0 or 1)
-- and req.headers; returns 0 when more bytes are needed; returns -status on
-- error (400 malformed, 414 request line too long, 431 header block too
-- large or too many fields, 505 unsupported version).
function _M.parse_head(buf, len, req)
    local lf = memchr(buf, 10, len)
    if lf == nil then
        if len > MAX_REQUEST_LINE + 2 then
            return -414
        end
        return 0
    end
    local le = ffi_cast(u8p, lf) - buf
    if le > MAX_REQUEST_LINE + 1 then
        return -414
    end

    -- method SP request-target SP HTTP-version
    local i = span(buf, le, TOKEN)
    if i == 0 or buf[i] ~= 32 then
        return -400
    end
    -- GET and POST, spelled out, skip the string interning of ffi.string.
    local method
    if i == 3 and buf[0] == 71 and buf[1] == 69 and buf[2] == 84 then
        method = "GET"
    elseif i == 4 and buf[0] == 80 and buf[1] == 79 and buf[2] == 83 and buf[3] == 84 then
        method = "POST"
    else
        method = ffi_string(buf, i)
    end
    local ts = i + 1
    i = ts + span(buf + ts, le - ts, TARGET)
    if i == ts or buf[i] ~= 32 then
        return -400
    end
    local target = (i - ts == 1 and buf[ts] == 47) and "/" or ffi_string(buf + ts, i - ts)
    i = i + 1
    local e = le
    if buf[e - 1] == 13 then
        e = e - 1
    end
    if e - i ~= 8 or buf[i] ~= 72 or buf[i + 1] ~= 84 or buf[i + 2] ~= 84 or buf[i + 3] ~= 80 or buf[i + 4] ~= 47
        or buf[i + 6] ~= 46 then
        return -400
    end
    local major, minor = buf[i + 5] - 48, buf[i + 7] - 48
    if major < 0 or major > 9 or minor < 0 or minor > 9 then
        return -400
    end
    if major ~= 1 then
        return -505
    end
    req.method, req.target, req.minor = method, target, minor > 0 and 1 or 0

    local headers = new_tab(0, 8)
    req.headers = headers
    return fields(buf, len, req, headers, le + 1, 0, le + 1 + MAX_HEADER_BLOCK)
end

-- Parses a Content-Length value: digits only, repeated copies must agree
-- ("5, 5" is accepted, "5, 6" is not).  Returns the length or nil.
function _M.content_length(v)
    if find(v, "^%d+$") then
        if #v > 15 then
            return nil
        end
        return tonumber(v)
    end
    local first
    for item in v:gmatch("[^,]+") do
        local d = item:match("^[ \t]*(%d+)[ \t]*$")
        if not d or #d > 15 or (first and d ~= first) then
            return nil
        end
        first = d
    end
    return first and tonumber(first) or nil
end

-- Chunked transfer coding (RFC 9112 section 7.1) decoder states.
local CH_SIZE, CH_DATA, CH_DATA_END, CH_TRAILER = 0, 1, 2, 3

-- Decodes chunked body bytes from buf[pos, len) into ch.body (a
-- string.buffer).  ch holds the state between calls: ch.state, ch.left,
-- ch.size (decoded so far), ch.tsize (trailer bytes).  Returns
-- new_pos, done; or nil, status on error.
function _M.dechunk(ch, buf, pos, len, max_body)
    local state = ch.state
    while pos < len do
        if state == CH_DATA then
            local n = len - pos
            if n > ch.left then
                n = ch.left
            end
            ch.body:putcdata(buf + pos, n)
            pos = pos + n
            ch.left = ch.left - n
            if ch.left == 0 then
                state = CH_DATA_END
            end
        else
            local lf = memchr(buf + pos, 10, len - pos)
            if lf == nil then
                if len - pos > MAX_CHUNK_LINE then
                    return nil, state == CH_TRAILER and 431 or 400
                end
                break
            end
            local le = ffi_cast(u8p, lf) - buf
            local e = le
            if e > pos and buf[e - 1] == 13 then
                e = e - 1
            end
            if state == CH_SIZE then
                if le - pos > MAX_CHUNK_LINE then
                    return nil, 400
                end
                local size, i, digits = 0, pos, 0
                while i < e do
                    local c = buf[i]
                    local d
                    if c >= 48 and c <= 57 then
                        d = c - 48
                    elseif c >= 97 and c <= 102 then
                        d = c - 87
                    elseif c >= 65 and c <= 70 then
                        d = c - 55
                    else
                        break
                    end
                    size = size * 16 + d
                    digits = digits + 1
                    i = i + 1
                end
                if digits == 0 or digits > 12 then
                    return nil, 400
                end
                -- Only whitespace or a chunk extension may follow the size.
                while i < e and (buf[i] == 32 or buf[i] == 9) do
                    i = i + 1
                end
                if i < e and buf[i] ~= 59 then
                    return nil, 400
                end
                if size == 0 then
                    state = CH_TRAILER
                else
                    if ch.size + size > max_body then
                        return nil, 413
                    end
                    ch.size = ch.size + size
                    ch.left = size
                    state = CH_DATA
                end
            elseif state == CH_DATA_END then
                if e ~= pos then
                    return nil, 400
                end
                state = CH_SIZE
            else -- CH_TRAILER: fields are read and dropped.
                ch.tsize = ch.tsize + (le - pos + 1)
                if ch.tsize > MAX_HEADER_BLOCK then
                    return nil, 431
                end
                if e == pos then
                    ch.state = state
                    return le + 1, true
                end
            end
            pos = le + 1
        end
    end
    ch.state = state
    return pos, false
end

-- Percent-decoding ("+" is left alone; query strings are decoded with
-- decode_form).
local function hexval(h)
    return string.char(tonumber(h, 16))
end
function _M.decode(s)
    if not find(s, "%", 1, true) then
        return s
    end
    return (s:gsub("%%(%x%x)", hexval))
end
function _M.decode_form(s)
    if find(s, "+", 1, true) then
        s = s:gsub("+", " ")
    end
    return _M.decode(s)
end

return _M
