-- zedcup.consul: a client for Consul's HTTP API with the API of
-- lua-resty-consul, so the two are interchangeable through zedcup.deps.
--
-- Every method returns the HTTP client's response object with the body read
-- into res.body (JSON-decoded when Consul answers application/json), and
-- res.status and res.headers as sent; nil, err only when no answer came.
-- Non-2xx answers are answers: callers check res.status. As in
-- lua-resty-consul, a path or key that is not a string, a put_key() without
-- a value and a txn() without a payload are nil, err too, not raised errors.
--
-- The ACL token (opts.token, default_args.token or args.token, most specific
-- first) always travels as the X-Consul-Token header, never in the URL.
-- Blocking queries (args.index, args.wait in seconds) get a socket read
-- timeout of wait + wait/16 (Consul's jitter) + read_timeout.

local cjson = require "cjson.safe"
local deps = require "zedcup.deps"

local ngx = ngx
local encode_base64 = ngx.encode_base64
local decode_base64 = ngx.decode_base64
local escape_uri = ngx.escape_uri
local concat = table.concat
local json_encode = cjson.encode
local json_decode = cjson.decode
local error = error
local find = string.find
local lower = string.lower
local match = string.match
local sub = string.sub
local ipairs = ipairs
local pairs = pairs
local setmetatable = setmetatable
local tonumber = tonumber
local tostring = tostring
local type = type


local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

local API_PREFIX = "/v1"
-- Consul's default wait for a blocking query given an index but no wait
local DEFAULT_WAIT = 300

local DURATION_UNITS = { ns = 1e-9, us = 1e-6, ["µs"] = 1e-6, ms = 1e-3, s = 1, m = 60, h = 3600 }


local function check_type(opts, name, expected)
    local v = opts[name]
    if v ~= nil and type(v) ~= expected then
        error("opts." .. name .. " must be a " .. expected .. " (got " .. type(v)
              .. ": " .. tostring(v) .. ")", 3)
    end
    return v
end


--- new(opts) -> client
-- Also callable as consul:new(opts), like lua-resty-consul.
function _M.new(opts, ...)
    if opts == _M then
        return _M.new(...)
    end

    if opts == nil then
        opts = {}

    elseif type(opts) ~= "table" then
        error("opts must be a table (got " .. type(opts) .. ")", 2)
    end

    local port = check_type(opts, "port", "number")
    local default_args = check_type(opts, "default_args", "table") or {}
    local ssl_verify = check_type(opts, "ssl_verify", "boolean")

    local self = {
        host = check_type(opts, "host", "string") or "127.0.0.1",
        port = port or 8500,
        connect_timeout = check_type(opts, "connect_timeout", "number") or 60000,
        read_timeout = check_type(opts, "read_timeout", "number") or 60000,
        default_args = default_args,
        token = check_type(opts, "token", "string"),
        ssl = check_type(opts, "ssl", "boolean") or false,
        ssl_verify = ssl_verify == nil and true or ssl_verify,
        sni_host = check_type(opts, "sni_host", "string"),
    }

    return setmetatable(self, mt)
end


-- wait as a number of seconds, or a Go duration string -> seconds | nil
local function wait_seconds(wait)
    if type(wait) == "number" then
        return wait
    end

    if type(wait) == "string" then
        local n, unit = match(wait, "^(%d+%.?%d*)(%D*)$")
        n = tonumber(n)
        if n then
            local scale = unit == "" and 1 or DURATION_UNITS[unit]
            if scale then
                return n * scale
            end
        end
    end

    return nil
end


-- merges default_args and args into a fresh query table; returns the token
-- and the wait (seconds) separately
local function build_query(self, args)
    local query = {}
    local token = self.token

    for k, v in pairs(self.default_args) do
        query[k] = v
    end

    if args ~= nil then
        if type(args) ~= "table" then
            error("args must be a table (got " .. type(args) .. ")", 4)
        end
        for k, v in pairs(args) do
            query[k] = v
        end
    end

    if query.token ~= nil then
        token = query.token
        query.token = nil
    end

    local wait
    if query.wait ~= nil then
        wait = wait_seconds(query.wait)
        if not wait or wait < 0 then
            error("args.wait must be a number of seconds (got " .. tostring(query.wait) .. ")", 4)
        end
        if type(query.wait) == "number" then
            -- Consul wants a unit
            query.wait = tostring(wait) .. "s"
        end
    end

    if query.index ~= nil and wait == nil then
        wait = DEFAULT_WAIT
    end

    return query, token, wait
end


local function request(self, method, path, args, body)
    if type(path) ~= "string" then
        -- lua-resty-consul answers nil, err here (not a raised error)
        return nil, "consul: path must be a string (got " .. type(path) .. ")"
    end

    if sub(path, 1, 1) ~= "/" then
        path = "/" .. path
    end

    local query, token, wait = build_query(self, args)

    local headers = {}
    if token ~= nil and token ~= "" then
        headers["X-Consul-Token"] = token
    end

    local tbody = type(body)
    if tbody == "number" then
        body = tostring(body)
    elseif tbody == "table" or tbody == "boolean" then
        local err
        body, err = json_encode(body)
        if not body then
            return nil, "consul: could not encode the request body as JSON: " .. tostring(err)
        end
        headers["Content-Type"] = "application/json"
    end

    local read_timeout = self.read_timeout
    if wait then
        read_timeout = read_timeout + (wait + wait / 16) * 1000
    end

    local httpc, err = deps.http.new()
    if not httpc then
        return nil, "consul: could not create an HTTP client: " .. tostring(err)
    end

    httpc:set_timeouts(self.connect_timeout, self.read_timeout, read_timeout)

    local host, port = self.host, self.port
    local unix = sub(host, 1, 5) == "unix:"
    local ok
    ok, err = httpc:connect({
        scheme = self.ssl and "https" or "http",
        host = host,
        port = (not unix and port ~= 0) and port or nil,
        ssl_verify = self.ssl_verify,
        ssl_server_name = self.sni_host,
    })
    if not ok then
        return nil, "consul: could not connect to " .. host
                    .. (unix and "" or ":" .. port) .. ": " .. tostring(err)
    end

    local res
    res, err = httpc:request({
        method = method,
        path = API_PREFIX .. path,
        query = query,
        headers = headers,
        body = body,
    })
    if not res then
        httpc:close()
        return nil, "consul: " .. method .. " " .. path .. " failed: " .. tostring(err)
    end

    local raw
    raw, err = res:read_body()
    if not raw then
        httpc:close()
        return nil, "consul: reading the answer to " .. method .. " " .. path
                    .. " failed: " .. tostring(err)
    end

    httpc:set_keepalive()

    local ctype = res.headers["Content-Type"]
    if type(ctype) == "table" then
        ctype = ctype[1]
    end

    if raw ~= "" and ctype and find(lower(ctype), "application/json", 1, true) then
        local decoded
        decoded, err = json_decode(raw)
        if decoded == nil then
            return nil, "consul: invalid JSON in the answer to " .. method .. " " .. path
                        .. ": " .. tostring(err)
        end
        res.body = decoded
    else
        res.body = raw
    end

    return res
end


--- get(path, args) -> res | nil, err     (path without the /v1 prefix)
function _M.get(self, path, args)
    local res, err = request(self, "GET", path, args)
    return res, err
end


--- put(path, body, args) -> res | nil, err
-- Tables and booleans are sent JSON-encoded; strings as they are.
function _M.put(self, path, body, args)
    local res, err = request(self, "PUT", path, args, body)
    return res, err
end


--- delete(path, args) -> res | nil, err
function _M.delete(self, path, args)
    local res, err = request(self, "DELETE", path, args)
    return res, err
end


-- Each '/'-separated segment of a key URL-escaped on its own, so names such
-- as `web 01`, `a?b` or `a%2F` reach Consul as the keys they are (the
-- separators stay; empty segments and a trailing '/' are kept).
local function escape_key(key)
    if not find(key, "[^%w%-%._~/]") then
        return key
    end
    local out, n = {}, 0
    local pos = 1
    while true do
        local slash = find(key, "/", pos, true)
        n = n + 1
        out[n] = escape_uri(sub(key, pos, slash and slash - 1 or -1))
        if not slash then
            break
        end
        pos = slash + 1
    end
    return concat(out, "/")
end
_M.escape_key = escape_key


-- -> "/kv/<key>" | nil, err (a key that is not a string: lua-resty-consul
-- answers nil, err there, so callers check for it)
local function kv_path(key, what)
    if type(key) ~= "string" then
        return nil, "consul: " .. what .. " must be a string (got " .. type(key) .. ")"
    end

    if sub(key, 1, 1) == "/" then
        key = sub(key, 2)
    end

    return "/kv/" .. escape_key(key)
end


-- a value that is not base64 stays as it came (lua-resty-consul does the same)
local function decode_value(v)
    return decode_base64(v) or v
end


local function decode_values(entries)
    for _, entry in ipairs(entries) do
        if type(entry) == "table" and type(entry.Value) == "string" then
            entry.Value = decode_value(entry.Value)
        end
    end
end


--- get_key(key, args) -> res | nil, err
-- res.body is Consul's list of entries, each Value base64-decoded (an empty
-- value stays JSON null, as Consul sends it).
function _M.get_key(self, key, args)
    local path, err = kv_path(key, "key")
    if not path then
        return nil, err
    end

    local res
    res, err = request(self, "GET", path, args)
    if not res then
        return nil, err
    end

    if res.status == 200 and type(res.body) == "table" then
        decode_values(res.body)
    end

    return res
end


--- put_key(key, value, args) -> res | nil, err   (res.body: true/false)
-- value: a string as it is; a number as its decimal text; a table or a
-- boolean JSON-encoded. A nil value is an error (nil, err).
function _M.put_key(self, key, value, args)
    local path, err = kv_path(key, "key")
    if not path then
        return nil, err
    end

    if value == nil then
        return nil, "consul: put_key " .. key .. ": value required"
    end

    local res
    res, err = request(self, "PUT", path, args, value)
    return res, err
end


--- delete_key(key, args) -> res | nil, err
function _M.delete_key(self, key, args)
    local path, err = kv_path(key, "key")
    if not path then
        return nil, err
    end

    local res
    res, err = request(self, "DELETE", path, args)
    return res, err
end


--- list_keys(prefix, args) -> res | nil, err   (res.body: list of keys)
function _M.list_keys(self, prefix, args)
    if args ~= nil and type(args) ~= "table" then
        error("args must be a table (got " .. type(args) .. ")", 2)
    end

    local query = { keys = true }
    if args then
        for k, v in pairs(args) do
            query[k] = v
        end
    end

    local path, err = kv_path(prefix or "", "prefix")
    if not path then
        return nil, err
    end

    local res
    res, err = request(self, "GET", path, query)
    return res, err
end


--- txn(payload, args) -> res | nil, err
-- A table payload is a list of operations; each KV.Value is base64-encoded
-- on the way (the caller's table is left untouched). KV values in the
-- answer's Results are base64-decoded.
function _M.txn(self, payload, args)
    if payload == nil then
        return nil, "consul: txn: payload required"
    end

    local body = payload

    if type(payload) == "table" then
        body = {}
        for i, op in ipairs(payload) do
            if type(op) ~= "table" then
                error("payload[" .. i .. "] must be a table (got " .. type(op) .. ")", 2)
            end

            local copy = {}
            for k, v in pairs(op) do
                copy[k] = v
            end

            local kv = op.KV
            if type(kv) == "table" and kv.Value ~= nil then
                local kv_copy = {}
                for k, v in pairs(kv) do
                    kv_copy[k] = v
                end
                local value = kv.Value
                local vtype = type(value)
                if vtype == "number" or vtype == "boolean" then
                    value = tostring(value)
                elseif vtype ~= "string" then
                    error("payload[" .. i .. "].KV.Value must be a string, number or boolean (got "
                          .. vtype .. ")", 2)
                end
                kv_copy.Value = encode_base64(value)
                copy.KV = kv_copy
            end

            body[i] = copy
        end

        if #body == 0 then
            -- an empty Lua table would be encoded as an object
            body = "[]"
        end
    end

    local res, err = request(self, "PUT", "/txn", args, body)
    if not res then
        return nil, err
    end

    local results = type(res.body) == "table" and res.body.Results
    if type(results) == "table" then
        for _, result in ipairs(results) do
            local kv = type(result) == "table" and result.KV
            if type(kv) == "table" and type(kv.Value) == "string" then
                kv.Value = decode_value(kv.Value)
            end
        end
    end

    return res
end


--- get_client_body_reader(...) -> proxied to the HTTP client
function _M.get_client_body_reader(_, ...)
    local httpc = deps.http.new()
    return httpc:get_client_body_reader(...)
end


return _M
