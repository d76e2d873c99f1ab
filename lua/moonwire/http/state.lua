-- moonwire.http.state: what an HTTP connection carries between events (conn._http).
--
-- An array of fixed slots rather than a table of named fields: LuaJIT keeps up to 15 array
-- slots inside the table's own allocation, so the state of an idle keep-alive connection is
-- one block of ~190 bytes instead of a table plus a 16-node hash part (~450 bytes); with
-- 10,000 idle connections that is 2.5 MB. Fields needed only while a body is read (ch, body)
-- or once a connection is a WebSocket (ws_route) stay named: they add a hash part only to
-- the connections that use them.
local _M = { _VERSION = "0.1.0" }

-- Layout version (slot V): a state written by an incompatible older module is replaced
-- between requests.
_M.VERSION = 3

-- Timeout modes (slot TMODE): reading a head, reading a body, idle between requests,
-- producing a response.
_M.T_HEADER, _M.T_BODY, _M.T_KEEPALIVE, _M.T_BUSY = 1, 2, 3, 4

_M.V = 1
_M.TMODE = 2
_M.DEADLINE = 3 -- loop time (ms) by which the current head must be complete
_M.SCAN = 4 -- bytes of an incomplete head already searched for its blank line
_M.REQ = 5 -- the request being read (its body), else nil
_M.CUR = 6 -- the response being produced, else nil
_M.STREAM = 7 -- a static file being sent, else nil
_M.PAUSED = 8 -- reading paused until the current response is done
_M.CONGESTED = 9 -- the write queue is over the high-water mark
_M.CLOSING = 10 -- the connection closes once the current response is out
_M.IN_INPUT = 11 -- inside on_input (a response finished there must not resume reading)
_M.NEED = 12 -- body bytes still to read; -1: a chunked body
_M.EXPECT = 13 -- answer "100 Continue" before reading the body
_M.OPTS = 14 -- the app's options (header_timeout, keepalive_timeout, max_body)

--- A fresh state for a connection of an app with options opts, at loop time now.
function _M.new(opts, now)
    return { _M.VERSION, _M.T_HEADER, now + opts.header_timeout, 0, nil, nil, nil, false, false, false, false,
        0, false, opts }
end

return _M
