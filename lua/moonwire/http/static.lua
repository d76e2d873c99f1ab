-- Static files for app:static(prefix, dir).
--
-- Safety rules (docs/http.md): the request path is percent-decoded once and
-- split on "/"; a ".." segment is 403, a NUL byte is 400, a dot-file is 404;
-- the file's real path (symlinks resolved with realpath(3)) must lie inside
-- the real path of dir, or the answer is 403.  Only regular files are
-- served.  Files are read in 64 KiB chunks straight into a C buffer and
-- handed to the core; when the core's write queue is over its high-water
-- mark the transfer resumes from on_drain, so a large file is never held in
-- memory whole.

local ffi = require "ffi"
local parser = require "moonwire.http.parser"
local response = require "moonwire.http.response"
local state = require "moonwire.http.state"

local find, sub, byte, lower, format, gmatch = string.find, string.sub, string.byte, string.lower, string.format,
    string.gmatch
local tonumber = tonumber

ffi.cdef [[
int mw_http_open(const char *path, int flags) __asm__("open");
long mw_http_read(int fd, void *buf, size_t n) __asm__("read");
int mw_http_close(int fd) __asm__("close");
]]
local C = ffi.C

local O_RDONLY_CLOEXEC = 0x80000 -- O_RDONLY | O_CLOEXEC on Linux
local CHUNK = 65536
local chunk_buf = ffi.new("uint8_t[?]", CHUNK)

local stdlib = require "posix.stdlib"
local pstat = require "posix.sys.stat"

local S_STREAM, S_CLOSING = state.STREAM, state.CLOSING

local realpath = stdlib.realpath

local _M = { _VERSION = "0.1.0", CHUNK = CHUNK }

local TYPES = {
    html = "text/html; charset=utf-8", htm = "text/html; charset=utf-8", css = "text/css; charset=utf-8",
    js = "text/javascript; charset=utf-8", mjs = "text/javascript; charset=utf-8",
    json = "application/json", map = "application/json", txt = "text/plain; charset=utf-8",
    md = "text/markdown; charset=utf-8", csv = "text/csv; charset=utf-8", xml = "application/xml",
    svg = "image/svg+xml", png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif",
    webp = "image/webp", avif = "image/avif", ico = "image/x-icon", wasm = "application/wasm",
    pdf = "application/pdf", woff = "font/woff", woff2 = "font/woff2", ttf = "font/ttf", otf = "font/otf",
    mp4 = "video/mp4", webm = "video/webm", mp3 = "audio/mpeg", wav = "audio/wav", ogg = "audio/ogg",
    zip = "application/zip", gz = "application/gzip", tar = "application/x-tar",
}
_M.TYPES = TYPES

function _M.content_type(path)
    local ext = path:match("%.([%w]+)$")
    return ext and TYPES[lower(ext)] or "application/octet-stream"
end

-- Resolves dir for app:static; raises when it is not a directory.
function _M.root(dir)
    local real = realpath(dir)
    local st = real and pstat.stat(real)
    if not st or pstat.S_ISDIR(st.st_mode) == 0 then
        error("bad argument #2 to 'static' (" .. tostring(dir) .. " is not a directory)", 3)
    end
    return real
end

local function inside(root, real)
    return real == root or sub(real, 1, #root + 1) == root .. "/"
end

-- Maps the raw (still percent-encoded) path below the prefix to a file.
-- Returns real_path, stat or nil, status.
function _M.resolve(root, raw, index)
    local rel = parser.decode(raw)
    if find(rel, "%z") then
        return nil, 400
    end
    for seg in gmatch(rel, "[^/]+") do
        if seg == ".." then
            return nil, 403
        end
        if byte(seg, 1) == 46 and seg ~= "." then
            return nil, 404
        end
    end
    local real = realpath(root .. "/" .. rel)
    if not real then
        return nil, 404
    end
    if not inside(root, real) then
        return nil, 403
    end
    local st = pstat.stat(real)
    if st and pstat.S_ISDIR(st.st_mode) ~= 0 then
        if not index then
            return nil, 404
        end
        real = realpath(real .. "/" .. index)
        if not real then
            return nil, 404
        end
        if not inside(root, real) then
            return nil, 403
        end
        st = pstat.stat(real)
    end
    if not st or pstat.S_ISREG(st.st_mode) == 0 then
        return nil, 404
    end
    return real, st
end

-- True when the request's validators say the client's copy is current.
-- If-None-Match takes precedence over If-Modified-Since (RFC 9110 13.2.2).
function _M.not_modified(headers, etag, mtime)
    local inm = headers["if-none-match"]
    if inm then
        if inm == "*" then
            return true
        end
        for tag in gmatch(inm, "[^,]+") do
            tag = tag:match("^%s*(.-)%s*$")
            if tag == etag or tag == "W/" .. etag then
                return true
            end
        end
        return false
    end
    local ims = headers["if-modified-since"]
    if ims then
        local t = response.parse_httpdate(ims)
        return t ~= nil and mtime <= t
    end
    return false
end

local function close_stream(st, s)
    if s.fd >= 0 then
        C.mw_http_close(s.fd)
        s.fd = -1
    end
    if st[S_STREAM] == s then
        st[S_STREAM] = nil
    end
end
_M.close_stream = close_stream

-- Sends the file while the core accepts data; returns when the file is
-- done or a write reported backpressure (on_drain calls pump again).
function _M.pump(conn, st, s)
    while s.left > 0 do
        local want = s.left < CHUNK and s.left or CHUNK
        local n = tonumber(C.mw_http_read(s.fd, chunk_buf, want))
        if n <= 0 then
            -- The file shrank or failed under us: the promised length
            -- cannot be met, so the connection must end.
            close_stream(st, s)
            st[S_CLOSING] = true
            conn:close()
            return
        end
        s.left = s.left - n
        s.sent = s.sent + n
        local ok = conn:write_ptr(chunk_buf, n)
        if ok == nil then
            close_stream(st, s)
            return
        end
        if ok == false and s.left > 0 then
            return
        end
    end
    close_stream(st, s)
    s.res:_complete()
end

-- Serves the file below root named by raw for req/res.
function _M.serve(req, res, root, raw, opts)
    local path, st = _M.resolve(root, raw, opts.index)
    if not path then
        return res:status(st):send(response.REASONS[st] .. "\n")
    end
    local size, mtime = st.st_size, st.st_mtime
    local etag = format('"%x-%x"', size, mtime)
    res:set("ETag", etag)
    res:set("Last-Modified", response.httpdate(mtime))
    if opts.max_age then
        res:set("Cache-Control", "public, max-age=" .. opts.max_age)
    end
    if _M.not_modified(req.headers, etag, mtime) then
        return res:status(304):send()
    end
    local fd = C.mw_http_open(path, O_RDONLY_CLOEXEC)
    if fd < 0 then
        return res:status(403):send("Forbidden\n")
    end
    if res._ctype == nil then
        res._ctype = _M.content_type(path)
    end
    res:_send_head(size)
    local cst = res._st
    local s = { fd = fd, left = size, sent = 0, mark = 0, res = res }
    if res._head or size == 0 then
        s.left = 0
    end
    cst[S_STREAM] = s
    return _M.pump(res.conn, cst, s)
end

return _M
