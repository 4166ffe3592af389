-- zedcup.handler: the short-lived per-request object of create_handler().
-- Picks hosts with zedcup.select, connects (plain, TLS or unix sockets, or any
-- lua-resty driver), sends HTTP requests with the HTTP client from
-- zedcup.deps, fails over to the next host on connect errors, request errors
-- and bad status codes, and reports every try with zedcup.report. A try ends
-- (release() to the pool's balancer) when its response header arrived or it
-- failed; with connect(), at set_keepalive() or close().
--
-- Nothing here touches a shared dict, JSON or Consul unless a host fails.

local deps = require "zedcup.deps"
local events = require "zedcup.events"
local report = require "zedcup.report"
local resolver = require "zedcup.resolver"
local selection = require "zedcup.select"
local state = require "zedcup.state"

local ngx = ngx
local ngx_var = ngx.var
local ngx_now = ngx.now
local tcp = ngx.socket.tcp
local pcall = pcall
local pairs = pairs
local tostring = tostring
local resolve = resolver.resolve
local type = type
local setmetatable = setmetatable
local tab_new = require "table.new"
local str_match = string.match

local select_next = selection.next
local select_release = selection.release
local down_for = state.down_for
local report_failed = report.failed
local report_connected = report.connected
local report_done = report.done


local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

local NO_HOSTS = "No available upstream hosts"

local function http_new()
    return deps.http.new()
end

-- host config -> the last of its addresses used (hosts given as names)
local turns = setmetatable({}, { __mode = "k" })


--- new(plan, key?) -> handler
-- key: the request's key for hashing methods (default: the pool's hash_key).
-- The table is sized for the fields a successful request sets (plan, name, p,
-- pool, host, httpc, open, and key or an ewma pool's t0), so it is never
-- resized on the common path.
function _M.new(plan, key)
    local self = tab_new(0, 8)
    self.plan = plan
    self.name = plan.name
    self.key = key
    -- not a tail call: a trace that returns from setmetatable aborts (LuaJIT)
    setmetatable(self, mt)
    return self
end


--- bind(event, callback) -> true | nil, err (for this handler only)
function _M.bind(self, event, callback)
    local ok, err = events.check(event, callback)
    if not ok then
        return nil, err
    end
    local listeners = self.listeners
    if not listeners then
        listeners = {}
        self.listeners = listeners
    end
    local list = listeners[event]
    if not list then
        list = {}
        listeners[event] = list
    end
    list[#list + 1] = callback
    return true
end


--- config() -> the instance's effective config. Shared and cached: read-only.
function _M.config(self)
    return self.plan.config
end


-- the end of the try on self.p/self.host: kind nil (a response) or a failure kind
local function end_try(self, kind)
    if self.open then
        self.open = false
        local p = self.p
        select_release(p, self.host, kind, p.balancer.timed and ngx_now() - self.t0 or nil)
    end
end


local function failure(self, kind, pool, host, err)
    local failed = self.failed
    if not failed then
        failed = {}
        self.failed = failed
    end
    failed[host] = true
    report_failed(self.name, kind, pool, host, err, self.listeners)
end


local function var_host()
    return ngx_var.host
end

local function request_host()
    -- ngx.var is unavailable outside requests (timers): then no default SNI
    local ok, host = pcall(var_host)
    if ok and host and host ~= "" then
        return str_match(host, "^%[?([^%]]+)%]?$") or host
    end
    return nil
end


local function set_timeout(sock, ms)
    if sock.settimeout then
        sock:settimeout(ms)
    elseif sock.set_timeout then
        sock:set_timeout(ms)
    end
end


-- Connects `sock` to one host; the HTTP client gets lua-resty-http's
-- connect(options) (it does TLS itself), others host/port connect + sslhandshake.
-- a host given as a name: its next address from zedcup.resolver (a lookup
-- only the first time; cached for its TTL and refreshed in the background)
local function named_address(host)
    local addrs, err = resolve(host.host)
    if not addrs then
        return nil, "could not resolve " .. host.host .. ": " .. tostring(err)
    end
    local turn = (turns[host] or 0) % #addrs + 1
    turns[host] = turn
    return addrs[turn]
end


local function connect_host(self, sock, is_http, pool, host)
    local plan = self.plan
    local target = plan.targets[host]
    local ssl = plan.config.ssl
    local sni
    if ssl and not (is_http and target.http_connect) then
        sni = ssl.sni_name or request_host() or host.host
    end

    local address, http_connect = target.address, target.http_connect
    if not target.peer then
        local err
        address, err = named_address(host)
        if not address then
            return nil, err
        end
        if is_http and http_connect then
            local opts = {}
            for k, v in pairs(http_connect) do
                opts[k] = v
            end
            opts.host = address
            http_connect = opts
        end
    end

    -- a plain HTTP client: one call sets the connect timeout and the read
    -- timeout of what follows (with TLS the handshake reads under pool.timeout)
    local plain = is_http and not ssl and sock.set_timeouts
    if plain then
        sock:set_timeouts(pool.timeout, pool.read_timeout, pool.read_timeout)
    else
        set_timeout(sock, pool.timeout)
    end

    local ok, err
    if is_http then
        ok, err = sock:connect(http_connect or {
            scheme = "https",
            host = address,
            port = not target.unix and host.port or nil,
            ssl_verify = ssl.verify,
            ssl_server_name = sni,
        })
    else
        if target.unix then
            ok, err = sock:connect(address)
        else
            ok, err = sock:connect(address, host.port)
        end
        if ok and ssl then
            if not sock.sslhandshake then
                sock:close()
                return nil, "ssl is configured but the driver has no sslhandshake()"
            end
            if sock.getreusedtimes == nil or sock:getreusedtimes() == 0 then
                ok, err = sock:sslhandshake(nil, sni, ssl.verify)
            end
        end
    end
    if not ok then
        return nil, err
    end

    if not plain then
        set_timeout(sock, pool.read_timeout)
    end
    return true
end


-- connects the picked host -> sock | nil (the failure is reported and released)
local function try_host(self, sock, is_http, p, host)
    local pool = p.config
    local s = sock or tcp()
    local t0 = p.balancer.timed and ngx_now() or nil
    local ok, err = connect_host(self, s, is_http, pool, host)
    if ok then
        self.p, self.pool, self.host = p, pool, host
        self.open, self.t0 = true, t0
        report_connected(self.name, pool, host, self.listeners)
        return s
    end
    select_release(p, host, "connect", t0 and ngx_now() - t0 or nil)
    failure(self, "connect", pool, host, err or "connect failed")
    return nil
end


-- picks and connects hosts until one connects -> sock | nil, err
local function connect_next(self, sock, is_http)
    local plan = self.plan
    local down = down_for(self.name)
    while true do
        local p, host = select_next(plan, down, self.failed, self.key)
        if not p then
            return nil, NO_HOSTS
        end
        local s = try_host(self, sock, is_http, p, host)
        if s then
            return s
        end
    end
end


-- The usual case, a first host that connects, has no loop (a loop here would
-- end LuaJIT's trace of every request); connect_next() does the rest.
local function connect(self, sock, is_http)
    if self.open then
        end_try(self, nil)
    end
    local p, host = select_next(self.plan, down_for(self.name), self.failed, self.key)
    if not p then
        return nil, NO_HOSTS
    end
    local s = try_host(self, sock, is_http, p, host)
    if s then
        return s
    end
    return connect_next(self, sock, is_http)
end


--- connect(sock?) -> connected sock | nil, err
-- sock: an ngx.socket.tcp, or a lua-resty driver with connect() and
-- settimeout()/set_timeout(); a new ngx.socket.tcp when absent.
function _M.connect(self, sock)
    local s, err = connect(self, sock, false)
    if s then
        self.sock = s
    end
    return s, err
end


--- request(params) -> res | nil, err  (lua-resty-http's request())
-- Connect errors, request errors and status codes listed in the pool's
-- status_codes count against the host and move on to the next host. When
-- no host gives a good response, the last response received is returned. A
-- streamed body (a function) cannot be replayed, so it gets one attempt.
-- The rest of request() once a try failed (res nil, err) or answered with a
-- status in the pool's status_codes: the next hosts, until one answers well
-- or none is left.
local function request_more(self, params, res, err)
    local replayable = type(params) ~= "table" or type(params.body) ~= "function"
    local last_res, last_httpc, last_p, last_pool, last_host
    local last_err

    while true do
        local httpc = self.httpc
        local pool, host = self.pool, self.host
        if not res then
            httpc:close()
            self.httpc = nil
            last_err = err
            end_try(self, "request")
            failure(self, "request", pool, host, err or "request failed")
            if not replayable then
                report_done(self.name, nil)
                return nil, err
            end
        else
            -- a newer response replaces the one kept from an earlier host
            if last_httpc then
                last_httpc:close()
            end
            if not self.p.codes[res.status] then
                end_try(self, nil)
                report_done(self.name, self.plan.pool_of[host])
                return res
            end
            end_try(self, "status")
            failure(self, "status", pool, host, "Bad status code: " .. res.status)
            if not replayable then
                report_done(self.name, nil)
                return res
            end
            last_res, last_httpc, last_p, last_pool, last_host = res, httpc, self.p, pool, host
            self.httpc = nil
        end

        httpc = http_new()
        local ok
        ok, err = connect(self, httpc, true)
        if not ok then
            report_done(self.name, nil)
            if last_res then
                self.httpc, self.p, self.pool, self.host = last_httpc, last_p, last_pool, last_host
                return last_res
            end
            return nil, last_err or err
        end
        self.httpc = httpc
        res, err = httpc:request(params)
    end
end


--- request(params) -> res | nil, err  (lua-resty-http's request())
-- Connect errors, request errors and status codes listed in the pool's
-- status_codes count against the host and move on to the next host. When
-- no host gives a good response, the last response received is returned. A
-- streamed body (a function) cannot be replayed, so it gets one attempt.
function _M.request(self, params)
    local httpc = self.httpc
    if httpc then
        -- a connection of an earlier request() on this handler (a kept-alive
        -- one is already back in its pool: close is a no-op)
        httpc:close()
        self.httpc = nil
    end
    httpc = http_new()
    local ok, err = connect(self, httpc, true)
    if not ok then
        report_done(self.name, nil)
        return nil, err
    end
    self.httpc = httpc
    local res
    res, err = httpc:request(params)
    if res and not self.p.codes[res.status] then
        end_try(self, nil)
        report_done(self.name, self.plan.pool_of[self.host])
        return res
    end
    return request_more(self, params, res, err)
end


--- get_client_body_reader(chunksize?, sock?) -> reader | nil, err
-- (the reader reads the downstream request: it needs no connection of ours)
function _M.get_client_body_reader(_, ...)
    return http_new():get_client_body_reader(...)
end


--- set_keepalive(timeout?, pool_size?) -> ok | nil, err (defaults from the pool)
function _M.set_keepalive(self, timeout, size)
    local pool = self.pool
    if not pool then
        return nil, "not connected"
    end
    end_try(self, nil)
    timeout = timeout or pool.keepalive_timeout
    size = size or pool.keepalive_pool
    if self.httpc then
        return self.httpc:set_keepalive(timeout, size)
    end
    local sock = self.sock
    if sock then
        if sock.setkeepalive then
            return sock:setkeepalive(timeout, size)
        end
        return sock:set_keepalive(timeout, size)
    end
    return nil, "not connected"
end


--- get_reused_times() -> count | nil, err
function _M.get_reused_times(self)
    if self.httpc then
        return self.httpc:get_reused_times()
    end
    local sock = self.sock
    if sock then
        if sock.getreusedtimes then
            return sock:getreusedtimes()
        end
        return sock:get_reused_times()
    end
    return nil, "not connected"
end


--- close() -> ok | nil, err
function _M.close(self)
    end_try(self, nil)
    if self.httpc then
        return self.httpc:close()
    end
    if self.sock then
        return self.sock:close()
    end
    return nil, "not connected"
end


--- current() -> pool, host the handler is connected to (effective records)
function _M.current(self)
    return self.pool, self.host
end


return _M
