-- zedcup.http: an HTTP/1.x client on ngx_lua cosockets.
--
-- Its public surface is lua-resty-http's, so code written for that library runs
-- unchanged:
--
--   local httpc = http.new()
--   httpc:set_timeouts(connect_ms, send_ms, read_ms)        -- or set_timeout(ms)
--   ok, err, ssl_session = httpc:connect({ scheme, host, port, pool, pool_size,
--             backlog, ssl_verify (default true), ssl_server_name,
--             ssl_reused_session, ssl_send_status_req })
--             -- also connect(host, port?, opts?); host may be "unix:/path"
--   res, err = httpc:request({ version = 1.1, method, path, query, headers, body })
--             -- body: string, array of strings, or an iterator returning strings
--             -- (with Transfer-Encoding: chunked the caller frames the body,
--             -- as with lua-resty-http; an iterator without Content-Length
--             -- or Transfer-Encoding is sent chunked, framed by us)
--   res.status, res.reason, res.headers (case-insensitive; repeats as arrays),
--   res.has_body, res.body_reader(max) (chunks, then nil), res:read_body(),
--   res:read_trailers() (merges trailers into res.headers, returns them)
--   ok, err = httpc:set_keepalive(timeout_ms, pool_size)
--             -- 1 pooled; 2, "connection must be closed" when the exchange
--             -- forbids reuse (closed instead); nil, err otherwise
--   httpc:get_reused_times(), httpc:close()
--   res, err = httpc:request_uri(uri, params)   -- res.body holds the whole body
--   responses, err = httpc:request_pipeline({ params, ... })  -- read in order
--   parts = http.parse_uri(uri, query_in_path)  -- { scheme, host, port, path, query }
--   reader = httpc:get_client_body_reader(chunksize)
--
-- Runtime failures return nil and "<step> failed: <why>", the steps being
-- "connect to <host:port>", "ssl handshake with <host:port>", "send request",
-- "send request body", "read request body" (the caller's iterator), "read status
-- line", "read headers", "read body", "read trailers"; and "keepalive refused:
-- <why>" when set_keepalive finds no connection or an unread body (it closes
-- the connection then).
--
-- A response head is read with one receiveany() and parsed here; the bytes
-- that came with it (often the whole body) wait in httpc.buf from httpc.bpos and
-- every later read takes them first (after a 101, they are the new protocol's).
--
-- What it adds is strictness about connection reuse: a connection only goes back
-- to the pool when the framing of the last exchange guarantees that the next byte
-- on the wire starts a new response. The chunked decoder reads the trailer section
-- byte-exact, so trailers neither get lost nor corrupt the next response.

local ngx = ngx
local tcp = ngx.socket.tcp
local ngx_req = ngx.req
local req_socket = ngx.req.socket
local encode_args = ngx.encode_args
local ngx_var = ngx.var
local ngx_log = ngx.log
local DEBUG = ngx.DEBUG

local type = type
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local rawget = rawget
local rawset = rawset
local pairs = pairs
local error = error
local pcall = pcall
local io_open = io.open
local str_find = string.find
local str_sub = string.sub
local str_byte = string.byte
local str_lower = string.lower
local str_upper = string.upper
local str_match = string.match
local str_format = string.format
local tab_concat = table.concat
local tab_clear = require "table.clear"
local tab_new = require "table.new"

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

local USER_AGENT = "zedcup.http/" .. _M._VERSION
local USER_AGENT_LINE = "User-Agent: " .. USER_AGENT .. "\r\n"
local DEFAULT_CHUNKSIZE = 65536

-- Methods whose requests carry a meaningful body: without one they still get a
-- "Content-Length: 0" so that servers need not guess.
local BODY_METHODS = { POST = true, PUT = true, PATCH = true }
local KNOWN_METHODS = {
    GET = true, HEAD = true, POST = true, PUT = true, PATCH = true, DELETE = true,
    OPTIONS = true, TRACE = true, CONNECT = true,
}


---------------------------------------------------------------------------
-- Case-insensitive header tables
--
-- Keys keep the spelling first seen (so pairs() shows what the peer sent);
-- lookups and assignments under any spelling hit the same entry. The
-- lower-case -> stored-name map lives in each table's own metatable.
---------------------------------------------------------------------------

-- Peers send the same few field names over and over: remember their lower
-- case (a bounded cache, so hostile peers cannot grow it without limit).
local lower_cache = {}
local lower_cache_size = 0

local function lower_name(name)
    local lname = lower_cache[name]
    if lname then
        return lname
    end
    lname = str_lower(name)
    if lower_cache_size < 512 then
        lower_cache[name] = lname
        lower_cache_size = lower_cache_size + 1
    end
    return lname
end

local function header_index(t, k)
    if type(k) ~= "string" then
        return nil
    end
    local name = getmetatable(t).names[lower_name(k)]
    if name then
        return rawget(t, name)
    end
end

local function header_newindex(t, k, v)
    if type(k) == "string" then
        local names = getmetatable(t).names
        local lk = lower_name(k)
        local name = names[lk]
        if name then
            rawset(t, name, v)
            return
        end
        if v ~= nil then
            names[lk] = k
        end
    end
    rawset(t, k, v)
end

-- Sized for a typical response's fields (8): filling an empty table
-- rehashes it at 1, 2, 4 and 8 entries, and names likewise.
local function new_headers()
    return setmetatable(tab_new(0, 8), {
        __index = header_index,
        __newindex = header_newindex,
        names = tab_new(0, 8),
    })
end
_M.new_headers = new_headers

-- Adds one received field: a repeated name turns the value into an array.
local function add_header(t, names, name, value)
    local lname = lower_name(name)
    local stored = names[lname]
    if not stored then
        names[lname] = name
        rawset(t, name, value)
        return lname
    end
    local old = rawget(t, stored)
    if type(old) == "table" then
        old[#old + 1] = value
    else
        rawset(t, stored, { old, value })
    end
    return lname
end

-- Whether a comma-separated header (string or array of strings) has `token`.
local function has_token(value, token)
    if value == nil then
        return false
    end
    if type(value) == "table" then
        for i = 1, #value do
            if has_token(value[i], token) then
                return true
            end
        end
        return false
    end
    value = str_lower(tostring(value))
    if value == token then
        return true
    end
    local from = 1
    while true do
        local s, e = str_find(value, token, from, true)
        if not s then
            return false
        end
        local before = s == 1 and 44 or str_byte(value, s - 1)
        local after = str_byte(value, e + 1) or 44
        if (before == 44 or before == 32 or before == 9)
            and (after == 44 or after == 32 or after == 9 or after == 59)
        then
            return true
        end
        from = e + 1
    end
end


---------------------------------------------------------------------------
-- Reading heads (status line + fields, also used for trailers)
---------------------------------------------------------------------------

-- Adds one field line (not a continuation) to a header table -> its lower-case
-- name | nil when the line has no field name
local function add_line(headers, names, line)
    local colon = str_find(line, ":", 1, true)
    if not colon or colon == 1 then
        return nil
    end
    local name = str_sub(line, 1, colon - 1)
    local from = colon + 1
    local b = str_byte(line, from)
    while b == 32 or b == 9 do
        from = from + 1
        b = str_byte(line, from)
    end
    local value = str_sub(line, from)
    b = str_byte(value, -1)
    if b == 32 or b == 9 then
        value = str_match(value, "^(.-)[ \t]*$")
    end
    return add_header(headers, names, name, value)
end

-- A continuation line (obs-fold): RFC 7230 3.2.4 says to join it with a space.
local function add_continuation(headers, names, last, line)
    local more = str_match(line, "^[ \t]*(.-)[ \t]*$")
    local stored = names[last]
    local old = rawget(headers, stored)
    if type(old) == "table" then
        old[#old] = old[#old] .. " " .. more
    else
        rawset(headers, stored, old .. " " .. more)
    end
end

-- The header table of the field lines of a head (a string of lines, each
-- ending with LF or CRLF), already checked by read_head.
local function parse_lines(fields)
    local headers = new_headers()
    local names = getmetatable(headers).names
    local last
    local pos, len = 1, #fields
    while pos <= len do
        local e = str_find(fields, "\n", pos, true) or len + 1
        local stop = e - 1
        if stop >= pos and str_byte(fields, stop) == 13 then
            stop = stop - 1
        end
        local line = str_sub(fields, pos, stop)
        local c = str_byte(line, 1)
        if c == 32 or c == 9 then
            add_continuation(headers, names, last, line)
        else
            last = add_line(headers, names, line)
        end
        pos = e + 1
    end
    return headers
end

local read_line

-- Reads field lines up to the empty line into a new header table (trailers).
local function read_fields(self, sock, what)
    local headers = new_headers()
    local names = getmetatable(headers).names
    local last
    while true do
        local line, err = read_line(self, sock)
        if not line then
            return nil, "read " .. what .. " failed: " .. err
        end
        if line == "" then
            return headers
        end

        local c = str_byte(line, 1)
        if c == 32 or c == 9 then
            if not last then
                return nil, "read " .. what .. " failed: continuation line without a field"
            end
            add_continuation(headers, names, last, line)
        else
            last = add_line(headers, names, line)
            if not last then
                return nil, "read " .. what .. " failed: invalid field line \"" .. line .. "\""
            end
        end
    end
end

-- Byte tests instead of patterns on the per-request path: string.find with
-- a pattern is not compiled by the JIT (each call ends the trace).

-- whether s[from..to] is one or more ASCII digits
local function all_digits(s, from, to)
    if to < from then
        return false
    end
    for i = from, to do
        local c = str_byte(s, i)
        if not c or c < 48 or c > 57 then
            return false
        end
    end
    return true
end

-- whether s has a byte %s matches (space, \t, \n, \v, \f, \r)
local function has_space(s)
    for i = 1, #s do
        local c = str_byte(s, i)
        if c == 32 or (c <= 13 and c >= 9) then
            return true
        end
    end
    return false
end

-- the value of a field whose line holds it in s[from..stop], without the
-- blanks around it
local function field_value(s, from, stop)
    local b = str_byte(s, from)
    while from <= stop and (b == 32 or b == 9) do
        from = from + 1
        b = str_byte(s, from)
    end
    b = str_byte(s, stop)
    while stop >= from and (b == 32 or b == 9) do
        stop = stop - 1
        b = str_byte(s, stop)
    end
    return str_sub(s, from, stop)
end

-- Parses the response head in buf from pos. Field lines are kept as they came
-- (res.headers is built from them on first use: a caller that never looks pays
-- nothing for it); only the fields that frame the exchange are read now.
-- -> status, reason, minor version, fields (the field lines, one string),
-- connection, transfer-encoding, content-length (nil when absent), eager (a
-- field was folded or framing fields repeat: the caller parses the fields at
-- once and reads them there), the position after the head
-- | nil, "status line" | "headers" (the head goes on past buf) | false, err
local function parse_head(buf, pos)
    local e = str_find(buf, "\n", pos, true)
    if not e then
        return nil, "status line"
    end
    local stop = e - 1
    if stop >= pos and str_byte(buf, stop) == 13 then
        stop = stop - 1
    end
    local line = str_sub(buf, pos, stop)
    local minor = str_byte(line, 8)
    local after = str_byte(line, 13)
    if str_byte(line, 1) ~= 72 or str_byte(line, 2) ~= 84 or str_byte(line, 3) ~= 84
        or str_byte(line, 4) ~= 80 or str_byte(line, 5) ~= 47 or str_byte(line, 6) ~= 49
        or str_byte(line, 7) ~= 46 or (minor ~= 48 and minor ~= 49)
        or str_byte(line, 9) ~= 32 or not all_digits(line, 10, 12)
        or (after and after ~= 32)
    then
        return false, "read status line failed: invalid status line \"" .. line .. "\""
    end
    local b1, b2, b3 = str_byte(line, 10, 12)
    local reason = str_sub(line, 14)

    local from = e + 1
    local p = from
    local nfields = 0
    local conn, te, cl, eager
    while true do
        e = str_find(buf, "\n", p, true)
        if not e then
            return nil, "headers"
        end
        stop = e - 1
        if stop >= p and str_byte(buf, stop) == 13 then
            stop = stop - 1
        end
        if stop < p then
            break   -- the empty line
        end
        local c = str_byte(buf, p)
        if c == 32 or c == 9 then
            if nfields == 0 then
                return false, "read headers failed: continuation line without a field"
            end
            eager = true
        else
            local colon = str_find(buf, ":", p, true)
            if not colon or colon > stop or colon == p then
                return false, "read headers failed: invalid field line \""
                              .. str_sub(buf, p, stop) .. "\""
            end
            -- Connection (10 bytes), Content-Length (14), Transfer-Encoding (17)
            local nlen = colon - p
            if (nlen == 10 or nlen == 14 or nlen == 17)
                and (c == 67 or c == 99 or c == 84 or c == 116)
            then
                local lname = lower_name(str_sub(buf, p, colon - 1))
                if lname == "connection" then
                    eager = eager or conn ~= nil
                    conn = field_value(buf, colon + 1, stop)
                elseif lname == "content-length" then
                    eager = eager or cl ~= nil
                    cl = field_value(buf, colon + 1, stop)
                elseif lname == "transfer-encoding" then
                    eager = eager or te ~= nil
                    te = field_value(buf, colon + 1, stop)
                end
            end
        end
        nfields = nfields + 1
        p = e + 1
    end
    return (b1 - 48) * 100 + (b2 - 48) * 10 + b3 - 48, reason, minor - 48,
           str_sub(buf, from, p - 1), conn, te, cl, eager, e + 1
end

-- Bytes the client has read but not used yet: the head is read with one
-- receiveany(), and what came with it (often the whole body) waits in
-- self.buf from self.bpos; every read takes from there first. (After a 101,
-- the new protocol's first bytes may be there.)
local HEAD_READ = 16384          -- receiveany()'s limit
local HEAD_MAX = 1048576         -- a response head longer than this is refused

local function keep_rest(self, buf, pos)
    if pos <= #buf then
        self.buf, self.bpos = buf, pos
    end
end

-- the head did not come whole with the first read: read on
local function read_head_more(self, sock, buf, pos, what)
    buf = str_sub(buf, pos)
    while true do
        if #buf > HEAD_MAX then
            return nil, "read " .. what .. " failed: longer than " .. HEAD_MAX .. " bytes"
        end
        local more, err = sock:receiveany(HEAD_READ)
        if not more then
            return nil, "read " .. what .. " failed: " .. err
        end
        buf = buf .. more
        local status, reason, minor, fields, conn, te, cl, eager, after = parse_head(buf, 1)
        if status then
            keep_rest(self, buf, after)
            return status, reason, minor, fields, conn, te, cl, eager
        end
        if status == false then
            return nil, reason
        end
        what = reason
    end
end

-- -> parse_head's values (without the position) | nil, err
local function read_head(self, sock)
    local buf, pos = self.buf, self.bpos
    if buf then
        self.buf = nil
    else
        local err
        buf, err = sock:receiveany(HEAD_READ)
        if not buf then
            return nil, "read status line failed: " .. err
        end
        pos = 1
    end
    local status, reason, minor, fields, conn, te, cl, eager, after = parse_head(buf, pos)
    if not status then
        if status == false then
            return nil, reason
        end
        return read_head_more(self, sock, buf, pos, reason)
    end
    keep_rest(self, buf, after)
    return status, reason, minor, fields, conn, te, cl, eager
end

-- -> up to n (or all) of the bytes read ahead | nil when there are none
local function take_buffered(self, n)
    local buf = self.buf
    if not buf then
        return nil
    end
    local pos = self.bpos
    if n and pos + n <= #buf then
        self.bpos = pos + n
        return str_sub(buf, pos, pos + n - 1)
    end
    self.buf = nil
    if pos == 1 then
        return buf
    end
    return str_sub(buf, pos)
end

-- at most n bytes (at least one): what was read ahead, else n from the socket
local function read_some(self, sock, n)
    local data = take_buffered(self, n)
    if data then
        return data
    end
    local err
    data, err = sock:receive(n) -- not a tail call: those end JIT traces
    return data, err
end

-- receive("*l") after the bytes read ahead
function read_line(self, sock)
    local buf = self.buf
    if not buf then
        return sock:receive("*l")
    end
    local pos = self.bpos
    local e = str_find(buf, "\n", pos, true)
    if e then
        local stop = e - 1
        if stop >= pos and str_byte(buf, stop) == 13 then
            stop = stop - 1
        end
        if e == #buf then
            self.buf = nil
        else
            self.bpos = e + 1
        end
        return str_sub(buf, pos, stop)
    end
    -- a line begun in what was read ahead
    self.buf = nil
    local begun = str_sub(buf, pos)
    local line, err, partial = sock:receive("*l")
    if not line then
        return nil, err, begun .. (partial or "")
    end
    line = begun .. line
    if str_byte(line, -1) == 13 then
        line = str_sub(line, 1, -2)
    end
    return line
end


---------------------------------------------------------------------------
-- Client object
---------------------------------------------------------------------------

function _M.new()
    local sock, err = tcp()
    if not sock then
        return nil, "create socket failed: " .. tostring(err)
    end
    -- sized for what a request adds: host_header, no_reuse (why the current
    -- connection may not be pooled, nil = it may), buf and bpos (read_head)
    local self = tab_new(0, 8)
    self.sock = sock
    self.connected = false
    -- true while a response body is still on the wire
    self.pending = false
    -- bumped per request: stale body readers must not read a newer response
    self.gen = 0
    -- not a tail call: a trace that returns from setmetatable aborts (LuaJIT)
    setmetatable(self, mt)
    return self
end

function _M.set_timeout(self, ms)
    self.sock:settimeout(ms)
end

function _M.set_timeouts(self, connect_ms, send_ms, read_ms)
    self.sock:settimeouts(connect_ms, send_ms, read_ms)
end

-- Drops the connection after a failure: its protocol state is unknown.
local function fail(self, err)
    self.connected = false
    self.pending = false
    self.no_reuse = nil
    self.buf = nil
    self.sock:close()
    return nil, err
end

-- The Host header of the last connect is cached: the same client code
-- connects to the same few backends again and again.
local hh_host, hh_port, hh_value

local function host_header(host, port, scheme)
    if host == hh_host and port == hh_port then
        return hh_value
    end
    local value
    if str_sub(host, 1, 5) == "unix:" then
        value = "localhost"
    else
        value = host
        if str_find(host, ":", 1, true) and str_byte(host, 1) ~= 91 then
            value = "[" .. host .. "]"
        end
        if not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)) then
            value = value .. ":" .. port
        end
    end
    hh_host, hh_port, hh_value = host, port, value
    return value
end

local connect_opts = {}

-- copts: the caller's options table (connect's, or request_uri's params), or
-- nil: pool, pool_size, backlog, ssl_verify, ssl_server_name,
-- ssl_reused_session, ssl_send_status_req
local function do_connect(self, scheme, host, port, copts)
    if type(host) ~= "string" or host == "" then
        error("host must be a non-empty string, got " .. tostring(host), 3)
    end
    scheme = scheme or "http"
    if scheme ~= "http" and scheme ~= "https" then
        error("scheme must be \"http\" or \"https\", got " .. tostring(scheme), 3)
    end
    local pool, pool_size, backlog, ssl_verify, sni, reused_session, status_req
    if copts then
        pool, pool_size, backlog = copts.pool, copts.pool_size, copts.backlog
        ssl_verify, sni = copts.ssl_verify, copts.ssl_server_name
        reused_session, status_req = copts.ssl_reused_session, copts.ssl_send_status_req
    end
    local unix = str_sub(host, 1, 5) == "unix:"
    if not unix then
        if port == nil then
            port = scheme == "https" and 443 or 80
        else
            local p = tonumber(port)
            if not p or p < 1 or p > 65535 or p % 1 ~= 0 then
                error("port must be an integer in 1..65535, got " .. tostring(port), 3)
            end
            port = p
        end
        -- cosockets want IPv6 literals in brackets
        if str_byte(host, 1) ~= 91 and str_find(host, ":", 1, true) then
            host = "[" .. host .. "]"
        end
    end
    if ssl_verify == nil then
        ssl_verify = true
    end
    if scheme == "https" then
        if sni == nil and not str_find(host, "^[%d.]+$") and not str_find(host, ":", 1, true) then
            sni = host
        end
        -- TLS connections must not be shared with plain ones or across
        -- verification settings
        pool = pool or ((unix and host or host .. ":" .. port) .. ":https:"
                        .. tostring(sni) .. ":" .. tostring(ssl_verify))
    end

    local opts
    if pool or pool_size or backlog then
        opts = connect_opts
        opts.pool, opts.pool_size, opts.backlog = pool, pool_size, backlog
    end

    local sock = self.sock
    local ok, err
    if unix then
        ok, err = sock:connect(host, opts)
    else
        ok, err = sock:connect(host, port, opts)
    end
    if not ok then
        self.connected = false
        return nil, "connect to " .. (unix and host or host .. ":" .. port) .. " failed: " .. err
    end

    self.connected = true
    self.no_reuse = nil
    self.pending = false
    self.buf = nil
    self.host_header = host_header(host, port, scheme)

    if scheme == "https" and sock:getreusedtimes() == 0 then
        local sess
        sess, err = sock:sslhandshake(reused_session, sni, ssl_verify, status_req)
        if not sess then
            fail(self)
            return nil, "ssl handshake with " .. (unix and host or host .. ":" .. port)
                        .. " failed: " .. tostring(err)
        end
        -- lua-resty-http's third return value
        return true, nil, sess
    end
    return true
end

-- connect(opts) or the older connect(host, port?, opts?)
-- -> true, nil, ssl_session (https, fresh connection) | nil, err
function _M.connect(self, opts, port, more)
    if type(opts) == "table" then
        return do_connect(self, opts.scheme, opts.host, opts.port, opts)
    end
    if type(opts) ~= "string" then
        error("opts must be a table (or a host string), got " .. type(opts), 2)
    end
    if type(port) == "table" then
        more, port = port, nil
    end
    if more ~= nil and type(more) ~= "table" then
        error("connect options must be a table, got " .. type(more), 2)
    end
    return do_connect(self, more and more.scheme or "http", opts, port, more)
end

function _M.get_reused_times(self)
    if not self.connected then
        return nil, "get reused times failed: not connected"
    end
    return self.sock:getreusedtimes()
end

function _M.close(self)
    local was = self.connected
    self.connected = false
    self.pending = false
    self.no_reuse = nil
    self.buf = nil
    local ok, err = self.sock:close()
    if not ok then
        return nil, "close failed: " .. (was and err or "not connected")
    end
    return ok
end

-- lua-resty-http's answer when the protocol forbids reuse (Connection: close,
-- HTTP/1.0 without keep-alive, a body delimited by the close...): the
-- connection is closed and set_keepalive returns 2 and this string.
local MUST_CLOSE = "connection must be closed"

-- -> 1 (pooled) | 2, "connection must be closed" (closed, as the exchange
-- requires) | nil, err (not connected, or the caller left the body unread)
function _M.set_keepalive(self, timeout, pool_size)
    local why = self.no_reuse
    if not self.connected then
        if why then
            -- a body read up to the server's close: closed already, as it had to be
            self.no_reuse = nil
            ngx_log(DEBUG, "[zedcup] http: connection closed, not pooled: ", why)
            return 2, MUST_CLOSE
        end
        return nil, "keepalive refused: not connected"
    end
    if self.pending then
        self:close()
        return nil, "keepalive refused: response body not fully read"
    end
    if why then
        self:close()
        ngx_log(DEBUG, "[zedcup] http: connection closed, not pooled: ", why)
        return 2, MUST_CLOSE
    end
    if self.buf then
        -- the server sent more than the response (ngx_lua's answer, when the
        -- bytes are still in its buffer)
        self:close()
        return nil, "set keepalive failed: unread data in buffer"
    end
    self.connected = false
    local ok, err = self.sock:setkeepalive(timeout, pool_size)
    if not ok then
        return nil, "set keepalive failed: " .. err
    end
    return ok
end


---------------------------------------------------------------------------
-- Request
---------------------------------------------------------------------------

-- Filled and handed to sock:send() without yielding in between (send copies
-- its argument before it can yield), so one buffer serves every request.
local req_buf = {}
local chunk_buf = {}

local function bad_value(s)
    return str_find(s, "[\r\n]") ~= nil
end

-- appends "name: value\r\n" to the buffer b after index n -> the new n, or
-- nil when the value would break the framing (CR or LF)
local function put_header(b, n, name, value)
    local v = tostring(value)
    if bad_value(v) then
        return nil
    end
    b[n + 1] = name
    b[n + 2] = ": "
    b[n + 3] = v
    b[n + 4] = "\r\n"
    return n + 4
end

local function send_chunk(sock, data)
    chunk_buf[1] = str_format("%x\r\n", #data)
    chunk_buf[2] = data
    chunk_buf[3] = "\r\n"
    return sock:send(chunk_buf)
end

-- Sends the request body and checks it against the Content-Length the
-- caller promised. `chunked` is true only when we chose chunked framing (an
-- iterator without a Content-Length): then we frame. A caller who sets
-- Transfer-Encoding: chunked frames the body itself, as with lua-resty-http,
-- and its bytes go out as they are.
-- t: "string", "table" (of strings) or "function" (anything callable)
local function send_body(sock, body, t, chunked, clen)
    local sent = 0
    local ok, err
    if t == "string" then
        if chunked then
            if body ~= "" then
                ok, err = send_chunk(sock, body)
                if not ok then
                    return nil, "send request body failed: " .. err
                end
            end
        else
            ok, err = sock:send(body)
            if not ok then
                return nil, "send request body failed: " .. err
            end
        end
        sent = #body
    elseif t == "table" then
        if chunked then
            for i = 1, #body do
                local part = body[i]
                if part ~= "" then
                    ok, err = send_chunk(sock, part)
                    if not ok then
                        return nil, "send request body failed: " .. err
                    end
                    sent = sent + #part
                end
            end
        else
            ok, err = sock:send(body)
            if not ok then
                return nil, "send request body failed: " .. err
            end
            for i = 1, #body do
                sent = sent + #body[i]
            end
        end
    else
        while true do
            local data, rerr = body()
            if data == nil then
                if rerr then
                    return nil, "read request body failed: " .. tostring(rerr)
                end
                break
            end
            if type(data) ~= "string" then
                return nil, "read request body failed: the iterator returned a " .. type(data)
            end
            if data ~= "" then
                if chunked then
                    ok, err = send_chunk(sock, data)
                else
                    ok, err = sock:send(data)
                end
                if not ok then
                    return nil, "send request body failed: " .. err
                end
                sent = sent + #data
            end
        end
    end
    if chunked then
        ok, err = sock:send("0\r\n\r\n")
        if not ok then
            return nil, "send request body failed: " .. err
        end
    elseif clen ~= nil and sent ~= clen then
        return nil, "send request body failed: sent " .. sent
                    .. " bytes but Content-Length says " .. clen
    end
    return true
end

local function body_length(body)
    if type(body) == "string" then
        return #body
    end
    local n = 0
    for i = 1, #body do
        local part = body[i]
        if type(part) ~= "string" then
            error("params.body[" .. i .. "] must be a string, got " .. type(part), 4)
        end
        n = n + #part
    end
    return n
end

-- res.body_reader is a plain function (as lua-resty-http's is), made on
-- first access, so responses read with read_body() make no closure; a
-- response is also callable as its own reader. The reader's state lives in
-- fields: _client, _gen (the client's request counter when it was made),
-- _kind ("length", "chunked", "close", "none", or "done" once the body was
-- read to its end) and _left (bytes left in the body or current chunk). Eight
-- fields in all, so a response fits a hash part of 8 (a ninth doubles it).

local STALE = "read body failed: the connection has moved on to another request"

local function body_chunk(res, max)
    local kind = res._kind
    if kind == "none" or kind == "done" then
        return nil
    end
    local self = res._client
    if self.gen ~= res._gen then
        return nil, STALE
    end
    local sock = self.sock

    if kind == "length" then
        local n = res._left
        if max and max < n then
            n = max
        end
        local data, err = read_some(self, sock, n)
        if not data then
            return fail(self, "read body failed: " .. err)
        end
        n = res._left - #data
        res._left = n
        if n == 0 then
            res._kind = "done"
            self.pending = false
        end
        return data

    elseif kind == "chunked" then
        local left = res._left
        if left == 0 then
            local line, err = read_line(self, sock)
            if not line then
                return fail(self, "read body failed: " .. err)
            end
            local hex = str_match(line, "^[ \t]*(%x+)[ \t]*;?")
            if not hex or #hex > 12 then
                return fail(self, "read body failed: invalid chunk size line \"" .. line .. "\"")
            end
            left = tonumber(hex, 16)
            if left == 0 then
                -- last-chunk: the trailer section (maybe empty) follows, ending
                -- with an empty line; consume all of it now so the connection
                -- is clean for the next request
                local trailers
                trailers, err = read_fields(self, sock, "trailers")
                if not trailers then
                    return fail(self, err)
                end
                res.trailers = trailers
                res._kind = "done"
                self.pending = false
                return nil
            end
        end
        local n = left
        if max and max < n then
            n = max
        end
        local data, err = read_some(self, sock, n)
        if not data then
            return fail(self, "read body failed: " .. err)
        end
        left = left - #data
        res._left = left
        if left == 0 then
            local crlf, err = read_line(self, sock)
            if crlf ~= "" then
                return fail(self, "read body failed: " .. (err or "chunk not followed by CRLF"))
            end
        end
        return data
    end

    -- "close": the body ends where the server closes the connection
    local ahead = take_buffered(self, max)
    if ahead and max then
        return ahead
    end
    local data, err, partial = sock:receive(max or "*a")
    if ahead then
        -- everything up to the close was asked for
        if data then
            data = ahead .. data
        else
            partial = ahead .. (partial or "")
        end
    end
    local done = false
    if not data then
        if err ~= "closed" then
            return fail(self, "read body failed: " .. err)
        end
        data = partial
        done = true
    elseif max == nil then
        done = true       -- "*a" returns everything up to the close
    end
    if done then
        res._kind = "done"
        self.pending = false
        self.connected = false
        sock:close()
        if data == "" then
            data = nil
        end
    end
    return data
end

local response_mt

local function header_value(names, headers, lname)
    local name = names[lname]
    if name then
        return rawget(headers, name)
    end
end

-- res: a pipelined response to fill in (request_pipeline), else a new one.
-- fields..eager: read_head's. Eight fields, so a response fits a hash part of
-- 8; res.headers (on first use) and res.trailers (chunked bodies) add to them.
local function new_response(self, method, status, reason, minor, fields, conn, te, cl, eager, res)
    if res then
        res.status, res.reason, res.has_body, res._lines = status, reason, false, fields
        res._client, res._gen, res._kind, res._left = self, self.gen, "none", 0
    else
        -- no nil fields here: they would count in the size of the hash part
        res = setmetatable({
            status = status,
            reason = reason,
            _lines = fields,
            has_body = false,
            _client = self,
            _gen = self.gen,
            _kind = "none",
            _left = 0,
        }, response_mt)
    end
    if eager then
        -- folded or repeated framing fields: the header table decides
        local headers = parse_lines(fields)
        local names = getmetatable(headers).names
        conn = header_value(names, headers, "connection")
        te = header_value(names, headers, "transfer-encoding")
        cl = header_value(names, headers, "content-length")
        res._lines = nil
        res.headers = headers
    end

    if status == 101 then
        self.no_reuse = "protocol switched (101)"
        return res
    end

    if conn ~= nil then
        if has_token(conn, "close") then
            self.no_reuse = self.no_reuse or "response has Connection: close"
        elseif minor == 0 and not has_token(conn, "keep-alive") then
            self.no_reuse = self.no_reuse or "HTTP/1.0 response without keep-alive"
        end
    elseif minor == 0 then
        self.no_reuse = self.no_reuse or "HTTP/1.0 response without keep-alive"
    end

    if method == "HEAD" or status < 200 or status == 204 or status == 304 then
        return res
    end

    if te ~= nil then
        if type(te) == "table" then
            te = tab_concat(te, ",")
        end
        if str_find(str_lower(te), "chunked[ \t]*$") then
            res._kind = "chunked"
        else
            res._kind = "close"
        end
    else
        if cl == nil then
            res._kind = "close"
        else
            if type(cl) == "table" then
                for i = 2, #cl do
                    if cl[i] ~= cl[1] then
                        return fail(self, "read headers failed: conflicting Content-Length values")
                    end
                end
                cl = cl[1]
            end
            if #cl > 15 or not all_digits(cl, 1, #cl) then
                return fail(self, "read headers failed: invalid Content-Length \"" .. cl .. "\"")
            end
            res._kind = "length"
            res._left = tonumber(cl)
        end
    end

    res.has_body = true
    if res._kind == "close" then
        self.no_reuse = "response body delimited by connection close"
    end
    if res._left == 0 and res._kind == "length" then
        res._kind = "done"
    else
        self.pending = true
    end
    return res
end

local pipelined_mt
local interim, receive_response

-- Request heads of plain GETs (no headers, body or query: what a proxying
-- handler sends most), by Host header and path: one string to send, nothing
-- to build. Bounded: emptied when full.
local head_cache = {}
local head_cache_n = 0
local HEAD_CACHE_MAX = 512

local function plain_get_head(self, path)
    local hh = self.host_header
    local by_host = head_cache[hh]
    local head = by_host and by_host[path]
    if head then
        return head
    end
    if type(path) ~= "string" or has_space(path) then
        return nil    -- the general path says what is wrong
    end
    head = "GET " .. path .. " HTTP/1.1\r\nHost: " .. hh .. "\r\n" .. USER_AGENT_LINE .. "\r\n"
    if head_cache_n >= HEAD_CACHE_MAX then
        tab_clear(head_cache)
        head_cache_n = 0
        by_host = nil
    end
    if not by_host then
        by_host = {}
        head_cache[hh] = by_host
    end
    by_host[path] = head
    head_cache_n = head_cache_n + 1
    return head
end

-- pipelined: send only, and return a response read on first use
-- (request_pipeline)
local function do_request(self, params, path, query, pipelined)
    if params.headers == nil and params.body == nil and (query == nil or query == "")
        and not pipelined and self.connected and not self.pending and not self.no_reuse
    then
        local method, version = params.method, params.version
        if (method == nil or method == "GET") and (version == nil or version == 1.1) then
            local head = plain_get_head(self, path)
            if head then
                local sock = self.sock
                self.gen = self.gen + 1
                local ok, err = sock:send(head)
                if not ok then
                    return fail(self, "send request failed: " .. err)
                end
                return receive_response(self, "GET", sock, nil, nil, nil, nil, nil, true)
            end
        end
    end

    local version = params.version or 1.1
    if version ~= 1.1 and version ~= 1 then
        error("params.version must be 1.0 or 1.1, got " .. tostring(version), 3)
    end
    local method = params.method or "GET"
    if not KNOWN_METHODS[method] then
        if type(method) ~= "string" or not str_find(method, "^[%w!#$%%&'*+.^_`|~-]+$") then
            error("params.method must be an HTTP token, got " .. tostring(method), 3)
        end
        -- lua-resty-http sends methods upper-cased, so callers write "post"
        method = str_upper(method)
    end
    if type(path) ~= "string" then
        error("params.path must be a string, got " .. type(path), 3)
    end
    if has_space(path) then
        return nil, "send request failed: invalid path \"" .. path .. "\""
    end

    local body = params.body
    local btype = type(body)
    if btype == "table" then
        -- a callable table is an iterator (a response of ours is one)
        local bmt = getmetatable(body)
        if bmt and bmt.__call then
            btype = "function"
        end
    end
    if body ~= nil and btype ~= "string" and btype ~= "table" and btype ~= "function" then
        error("params.body must be a string, a table of strings or an iterator, got " .. btype, 3)
    end

    local b = req_buf
    tab_clear(b)
    b[1] = method
    b[2] = " "
    b[3] = path
    local n = 3
    if query ~= nil and query ~= "" then
        if type(query) == "table" then
            query = encode_args(query)
        elseif type(query) ~= "string" then
            error("params.query must be a string or a table, got " .. type(query), 3)
        elseif str_byte(query, 1) == 63 then   -- '?'
            query = str_sub(query, 2)
        end
        if query ~= "" then
            if bad_value(query) or str_find(query, " ", 1, true) then
                return nil, "send request failed: invalid query \"" .. query .. "\""
            end
            n = n + 1
            b[n] = str_find(path, "?", 1, true) and "&" or "?"
            n = n + 1
            b[n] = query
        end
    end
    n = n + 1
    b[n] = version == 1 and " HTTP/1.0\r\n" or " HTTP/1.1\r\n"

    -- chunked: the caller's Transfer-Encoding says chunked (the caller frames);
    -- frame: we chose chunked framing and frame the body ourselves
    local has_host, has_ua, has_clen, clen, chunked, frame, expect, req_close, req_keep
    local headers = params.headers
    if headers ~= nil then
        if type(headers) ~= "table" then
            error("params.headers must be a table, got " .. type(headers), 3)
        end
        for name, value in pairs(headers) do
            if type(name) ~= "string" then
                error("params.headers keys must be strings, got " .. type(name), 3)
            end
            local lname = str_lower(name)
            if lname == "host" then
                has_host = true
            elseif lname == "user-agent" then
                has_ua = true
            elseif lname == "content-length" then
                has_clen = true
                clen = tonumber(type(value) == "table" and value[1] or value)
            elseif lname == "transfer-encoding" then
                chunked = has_token(value, "chunked")
            elseif lname == "expect" then
                expect = has_token(value, "100-continue")
            elseif lname == "connection" then
                req_close = has_token(value, "close")
                req_keep = has_token(value, "keep-alive")
            end
            if bad_value(name) then
                return nil, "send request failed: invalid header name \"" .. name .. "\""
            end
            if type(value) == "table" then
                for i = 1, #value do
                    n = put_header(b, n, name, value[i])
                    if not n then
                        return nil, "send request failed: invalid value for header " .. name
                    end
                end
            else
                n = put_header(b, n, name, value)
                if not n then
                    return nil, "send request failed: invalid value for header " .. name
                end
            end
        end
    end

    if not has_host then
        b[n + 1] = "Host: "
        b[n + 2] = self.host_header
        b[n + 3] = "\r\n"
        n = n + 3
    end
    if not has_ua then
        n = n + 1
        b[n] = USER_AGENT_LINE
    end
    if not has_clen and not chunked then
        if body == nil then
            if BODY_METHODS[method] then
                n = n + 1
                b[n] = "Content-Length: 0\r\n"
            end
        elseif btype == "function" then
            if version == 1 then
                error("params.body: an iterator body over HTTP/1.0 needs a Content-Length header", 3)
            end
            frame = true
            n = n + 1
            b[n] = "Transfer-Encoding: chunked\r\n"
        else
            clen = body_length(body)
            b[n + 1] = "Content-Length: "
            b[n + 2] = clen
            b[n + 3] = "\r\n"
            n = n + 3
        end
    end
    n = n + 1
    b[n] = "\r\n"

    -- Small bodies go out with the head in one send.
    local body_sent = body == nil
    if not body_sent and not frame and not expect and btype ~= "function" then
        if clen ~= nil and clen ~= body_length(body) then
            error("params.body is " .. body_length(body) .. " bytes but Content-Length says "
                  .. clen, 3)
        end
        b[n + 1] = body
        body_sent = true
    end

    if not self.connected then
        return nil, "send request failed: not connected"
    end
    if self.pending then
        return fail(self, "send request failed: the previous response body was not fully read")
    end
    if self.no_reuse then
        return nil, "send request failed: connection not reusable: " .. self.no_reuse
    end

    if req_close then
        self.no_reuse = "request has Connection: close"
    elseif version == 1 and not req_keep then
        self.no_reuse = "HTTP/1.0 request without keep-alive"
    end

    if pipelined and expect then
        error("params.headers: a pipelined request cannot use Expect: 100-continue", 3)
    end

    local sock = self.sock
    if not pipelined then
        self.gen = self.gen + 1
    end
    local ok, err = sock:send(b)
    if not ok then
        return fail(self, "send request failed: " .. err)
    end

    if not body_sent and not expect then
        ok, err = send_body(sock, body, btype, frame, clen)
        if not ok then
            return fail(self, err)
        end
        body_sent = true
    end

    if pipelined then
        return setmetatable({ _client = self, _method = method }, pipelined_mt)
    end

    return receive_response(self, method, sock, body, btype, frame, clen, expect, body_sent)
end

-- the response to the request, once its final head is read
local function final_response(self, method, body_sent, status, reason, minor, fields, conn, te,
                              cl, eager)
    if not body_sent then
        -- a final answer to "Expect: 100-continue": the body was never sent,
        -- and the server may or may not be waiting for it
        self.no_reuse = self.no_reuse or "request body not sent (final status before 100 Continue)"
    end
    return new_response(self, method, status, reason, minor, fields, conn, te, cl, eager)
end

-- Reads the response to the request just sent (see do_request for the body
-- arguments: a body withheld for Expect: 100-continue goes out on a 100).
function receive_response(self, method, sock, body, btype, frame, clen, expect, body_sent)
    local status, reason, minor, fields, conn, te, cl, eager = read_head(self, sock)
    if not status then
        return fail(self, reason)
    end
    if status < 200 and status ~= 101 then
        -- interim responses (apart from the common path: a loop there would
        -- end LuaJIT's traces of every request)
        return interim(self, method, sock, status, body, btype, frame, clen, expect,
                       body_sent)
    end
    return final_response(self, method, body_sent, status, reason, minor, fields, conn, te, cl,
                          eager)
end

-- Reads past 1xx responses: a 100 Continue sends a withheld body (Expect);
-- other interim responses (102, 103...) carry nothing for us.
function interim(self, method, sock, status, body, btype, frame, clen, expect, body_sent)
    local reason, minor, fields, conn, te, cl, eager, ok, err
    while true do
        if status == 100 and expect and not body_sent then
            ok, err = send_body(sock, body, btype, frame, clen)
            if not ok then
                return fail(self, err)
            end
            body_sent = true
        end
        status, reason, minor, fields, conn, te, cl, eager = read_head(self, sock)
        if not status then
            return fail(self, reason)
        end
        if status >= 200 or status == 101 then
            break
        end
    end
    return final_response(self, method, body_sent, status, reason, minor, fields, conn, te, cl,
                          eager)
end

function _M.request(self, params)
    if type(params) ~= "table" then
        error("params must be a table, got " .. type(params), 2)
    end
    return do_request(self, params, params.path or "/", params.query)
end


-- Reads the head of a pipelined response, on first use of any of its
-- fields; the previous response's body must have been read by then. On
-- failure res.status stays nil (lua-resty-http's documented check) and
-- res.err says why.
local function load_pipelined(res)
    setmetatable(res, response_mt)
    local self = res._client
    res._kind, res.has_body = "none", false

    local _, err
    if self.pending then
        _, err = fail(self, "read status line failed: the previous response body was not fully read")
    elseif not self.connected then
        err = "read status line failed: not connected"
    end
    if err then
        res.err = err
        return
    end

    local sock = self.sock
    local status, reason, minor, fields, conn, te, cl, eager
    repeat
        status, reason, minor, fields, conn, te, cl, eager = read_head(self, sock)
        if not status then
            _, err = fail(self, reason)
            res.err = err
            return
        end
    until status >= 200 or status == 101

    self.gen = self.gen + 1
    local ok
    ok, err = new_response(self, res._method, status, reason, minor, fields, conn, te, cl, eager, res)
    if not ok then
        res.status, res.err = nil, err
    end
end

pipelined_mt = {
    __index = function(res, k)
        load_pipelined(res)
        return res[k]
    end,
}

--- request_pipeline(params_list) -> responses | nil, err
-- Sends every request at once; each response is read when one of its fields
-- is first used, in order, so read each body before using the next response.
function _M.request_pipeline(self, requests)
    if type(requests) ~= "table" then
        error("requests must be a table of params tables, got " .. type(requests), 2)
    end
    local responses = {}
    for i = 1, #requests do
        local params = requests[i]
        if type(params) ~= "table" then
            error("requests[" .. i .. "] must be a table, got " .. type(params), 2)
        end
        local res, err = do_request(self, params, params.path or "/", params.query, true)
        if not res then
            return nil, err
        end
        responses[i] = res
    end
    return responses
end


---------------------------------------------------------------------------
-- Response methods
---------------------------------------------------------------------------

local function read_body(res)
    if not res.has_body then
        return ""
    end
    local first, err = body_chunk(res)
    if not first then
        if err then
            return nil, err
        end
        return ""
    end
    local second
    second, err = body_chunk(res)
    if not second then
        if err then
            return nil, err
        end
        return first
    end
    local parts = { first, second }
    local n = 2
    while true do
        local chunk
        chunk, err = body_chunk(res)
        if not chunk then
            if err then
                return nil, err
            end
            return tab_concat(parts, "", 1, n)
        end
        n = n + 1
        parts[n] = chunk
    end
end

-- Merges the trailers (read along with the body) into res.headers and
-- returns them.
local function read_trailers(res)
    if res.has_body and res._kind ~= "done" then
        return nil, "read trailers failed: response body not fully read"
    end
    local trailers = res.trailers
    if not trailers then
        return new_headers()
    end
    local headers = res.headers
    local names = getmetatable(headers).names
    for name, value in pairs(trailers) do
        if type(value) == "table" then
            for i = 1, #value do
                add_header(headers, names, name, value[i])
            end
        else
            add_header(headers, names, name, value)
        end
    end
    return trailers
end

local response_methods = { read_body = read_body, read_trailers = read_trailers }

-- apart from __index: a function that makes a closure cannot be compiled by
-- the JIT (its UCLO aborts every trace through res:read_body())
local function make_reader(res)
    local function reader(max)
        return body_chunk(res, max)
    end
    rawset(res, "body_reader", reader)
    return reader
end

-- res.headers on first use: built from the field lines read_head kept
local function make_headers(res)
    local lines = rawget(res, "_lines")
    if not lines then
        return nil
    end
    local headers = parse_lines(lines)
    res._lines = nil
    res.headers = headers
    return headers
end

response_mt = {
    __index = function(res, k)
        if k == "headers" then
            return make_headers(res)
        end
        if k == "body_reader" then
            return make_reader(res)
        end
        return response_methods[k]
    end,
    __call = body_chunk,
}


---------------------------------------------------------------------------
-- One-shot requests
---------------------------------------------------------------------------

-- -> { scheme, host, port, path, query } | nil, "bad uri: <uri>"
-- As lua-resty-http: a scheme-relative "//host/..." is http; IPv6 hosts keep
-- their brackets; with query_in_path (the default) the query stays in path
-- and query is "". Also nginx's "http://unix:/path/to.sock:/request/path".
local function parse_uri(self, uri, query_in_path)
    if type(self) == "string" then
        -- called as http.parse_uri(uri, query_in_path?)
        uri, query_in_path = self, uri
    end
    if type(uri) ~= "string" then
        error("uri must be a string, got " .. type(uri), 2)
    end
    local bad = "bad uri: " .. uri
    local scheme, rest = str_match(uri, "^(%a[%w+.-]*)://(.*)$")
    if scheme then
        scheme = str_lower(scheme)
        if scheme ~= "http" and scheme ~= "https" then
            return nil, bad
        end
    else
        rest = str_match(uri, "^//(.*)$")
        if not rest then
            return nil, bad
        end
        scheme = "http"
    end

    local host, port, tail
    if str_sub(rest, 1, 5) == "unix:" then
        local stop = str_find(rest, ":", 6, true)
        host = str_sub(rest, 1, (stop or 0) - 1)
        tail = stop and str_sub(rest, stop + 1) or ""
        if #host <= 5 then
            return nil, bad
        end
    else
        local authority = str_match(rest, "^[^/?#]*")
        tail = str_sub(rest, #authority + 1)
        authority = str_match(authority, "[^@]*$")   -- drop userinfo
        local port_s
        if str_byte(authority, 1) == 91 then
            host, port_s = str_match(authority, "^(%[[^%]]+%]):?(%d*)$")
        else
            host, port_s = str_match(authority, "^([^:]+):?(%d*)$")
        end
        if not host then
            return nil, bad
        end
        if port_s ~= "" then
            port = tonumber(port_s)
            if port < 1 or port > 65535 then
                return nil, bad
            end
        else
            port = scheme == "https" and 443 or 80
        end
    end

    tail = str_match(tail, "^[^#]*")
    local path, query = str_match(tail, "^([^?]*)%??(.*)$")
    if path == "" then
        path = "/"
    end
    if query_in_path ~= false then
        if query ~= "" then
            path = path .. "?" .. query
        end
        query = ""
    end
    return { scheme, host, port, path, query }
end
_M.parse_uri = parse_uri

local EMPTY = {}

function _M.request_uri(self, uri, params)
    params = params or EMPTY
    local parsed, err = parse_uri(self, uri, false)
    if not parsed then
        return nil, err
    end
    -- params may carry connect()'s options too (pool, ssl_verify...)
    local ok
    ok, err = do_connect(self, parsed[1], parsed[2], parsed[3], params)
    if not ok then
        return nil, err
    end

    local query = params.query
    if query == nil and parsed[5] ~= "" then
        query = parsed[5]
    end
    local res
    res, err = do_request(self, params, params.path or parsed[4], query)
    if not res then
        self:close()
        return nil, err
    end

    local body
    body, err = read_body(res)
    if not body then
        self:close()
        return nil, err
    end
    res.body = body
    read_trailers(res)

    if params.keepalive == false then
        self:close()
    else
        -- a refusal closes the connection, which is all we want here
        self:set_keepalive(params.keepalive_timeout, params.keepalive_pool)
    end
    return res
end


---------------------------------------------------------------------------
-- The downstream request body as an iterator (for proxying it upstream)
---------------------------------------------------------------------------

-- ngx.req.socket() cannot stream a chunked body (ngx_lua < 0.10.25) nor one
-- already read: then nginx reads it whole (de-chunked; maybe into a file) and
-- we iterate over that.
local function buffered_body_reader(chunksize)
    local ok, err = pcall(ngx_req.read_body)
    if not ok then
        return nil, "client body reader failed: " .. tostring(err)
    end
    local data = ngx_req.get_body_data()
    if data then
        local pos = 1
        return function(max)
            if pos > #data then
                return nil
            end
            local n = max or chunksize
            local piece = str_sub(data, pos, pos + n - 1)
            pos = pos + n
            return piece
        end
    end
    local path = ngx_req.get_body_file()
    if not path then
        return nil
    end
    local f
    f, err = io_open(path, "rb")
    if not f then
        return nil, "client body reader failed: " .. tostring(err)
    end
    return function(max)
        if not f then
            return nil
        end
        local piece = f:read(max or chunksize)
        if not piece then
            f:close()
            f = nil
        end
        return piece
    end
end

function _M.get_client_body_reader(self, chunksize, sock)
    chunksize = chunksize or DEFAULT_CHUNKSIZE
    if type(chunksize) ~= "number" or chunksize < 1 then
        error("chunksize must be a positive number, got " .. tostring(chunksize), 2)
    end
    local remaining = tonumber(ngx_var.http_content_length)
    if not remaining then
        if ngx_var.http_transfer_encoding then
            return buffered_body_reader(chunksize)
        end
        return nil
    end
    if remaining == 0 then
        return nil
    end
    if not sock then
        local err
        sock, err = req_socket()
        if not sock then
            if err == "no body" then
                return nil
            end
            return buffered_body_reader(chunksize)
        end
    end
    return function(max)
        if remaining == 0 then
            return nil
        end
        local n = max or chunksize
        if n > remaining then
            n = remaining
        end
        local data, err = sock:receive(n)
        if not data then
            remaining = 0
            return nil, "read client body failed: " .. err
        end
        remaining = remaining - n
        return data
    end
end

return _M
