-- zedcup.select: host selection, independent of how the request is sent.
-- Compiles an instance's effective config into a "plan" (per worker: pools in
-- order, one balancer per pool (its `method`), status-code sets), then picks
-- hosts: pools in order, `up = false` pools and hosts skipped, hosts marked
-- down or already failed in this request skipped, the next pool when a pool has
-- nothing left. Used by zedcup.handler (cosockets) and zedcup.balance
-- (balancer_by_lua); each try a pick starts ends with release().

local ngx = ngx
local ngx_now = ngx.now
local require = require
local pcall = pcall
local tostring = tostring
local pairs = pairs
local ipairs = ipairs
local str_byte = string.byte
local str_sub = string.sub

local resolver_peers = require("zedcup.resolver").peers


local _M = { _VERSION = "0.1.0" }


-- status_codes patterns ("500", "50x", "5xx") -> set of matching statuses
local function status_set(patterns)
    local set = {}
    for _, p in ipairs(patterns or {}) do
        for status = 100, 599 do
            local s = tostring(status)
            local match = true
            for i = 1, 3 do
                local c = str_sub(p, i, i)
                if c ~= "x" and c ~= str_sub(s, i, i) then
                    match = false
                    break
                end
            end
            if match then
                set[status] = true
            end
        end
    end
    return set
end
_M.status_set = status_set


local function balancer_module(method)
    local ok, mod = pcall(require, "zedcup.balancer." .. method)
    if not ok then
        return nil, "unknown balancing method: " .. tostring(method)
    end
    return mod
end


-- an IPv4 or IPv6 literal: what balancer_by_lua can set as a peer without DNS
local is_ip = require("zedcup.resolver").is_literal


--- address(host) -> the address to connect to, whether it is a unix socket:
-- "unix:/path" and "/path" are unix sockets (the one reading of a host's
-- `host` field)
function _M.address(h)
    if str_byte(h, 1) == 47 then -- "/"
        return "unix:" .. h, true
    end
    return h, str_sub(h, 1, 5) == "unix:"
end


--- compile(name, effective, version) -> plan | nil, err
function _M.compile(name, effective, version)
    local pools = {}
    local targets = {}
    local pool_of = {}
    local nhosts = 0
    local npeers_all = 0
    for i, pool in ipairs(effective.pools) do
        local mod, err = balancer_module(pool.method)
        if not mod then
            return nil, "pools[" .. i .. "]: " .. err
        end
        local up = {}
        local by_name = {}
        local npeers = 0
        for _, host in ipairs(pool.hosts) do
            -- how to reach the host, kept apart from its config (which users see)
            local address, unix = _M.address(host.host)
            local target = { address = address, unix = unix, peer = unix or is_ip(host.host) }
            -- lua-resty-http connect() options, built once per config version;
            -- none when TLS takes its SNI from each request's Host. No pool_size:
            -- set_keepalive() gives the pool's keepalive_pool when it makes the
            -- pool, and ngx_lua's connect() with pool_size costs ~2,000
            -- instructions per request (bench_balance_ir's handler figures)
            local ssl = effective.ssl
            if not ssl or ssl.sni_name then
                target.http_connect = {
                    scheme = ssl and "https" or "http",
                    host = address,
                    port = not unix and host.port or nil,
                    ssl_verify = ssl and ssl.verify,
                    ssl_server_name = ssl and ssl.sni_name or nil,
                }
            end
            if not target.peer then
                -- a name: queue it for zedcup.resolver's background lookup now (no
                -- I/O here), so the first request already finds its addresses
                -- (balance() passes over a name it does not know yet)
                resolver_peers(host.host)
            end
            targets[host] = target
            pool_of[host] = i
            nhosts = nhosts + 1
            if host.up then
                up[#up + 1] = host
                by_name[host.name] = host
                npeers = npeers + 1
            end
        end
        npeers_all = npeers_all + npeers
        pools[i] = {
            config = pool,
            balancer = mod.new(up, pool),
            codes = status_set(pool.status_codes),
            by_name = by_name,  -- up hosts by name
            npeers = npeers,    -- up hosts
        }
    end
    return {
        name = name,
        version = version,
        config = effective,
        pools = pools,
        npools = #pools,
        targets = targets, -- host config -> { address =, unix =, peer = (IP or unix: no DNS), http_connect = }
        pool_of = pool_of, -- host config -> pool index
        nhosts = nhosts,
        npeers = npeers_all, -- hosts up in the config, every pool (at most 1: never a retry)
    }
end


-- filter for balancers: a = the pool's down table (or nil), b = failed set (or
-- nil). A down host is refused with its mark (true or expiry): the balancer
-- sets it aside; a failed one only for this pick. Balancers hold only the
-- hosts that are up in the config, so with nothing down or failed this reads
-- nothing of the host (a pool of 10,000 hosts stays out of the CPU's caches).
local function usable(host, down, failed)
    if failed and failed[host] then
        return false
    end
    if down then
        local d = down[host.name]
        if d and (d == true or d > ngx_now()) then
            return false, d
        end
    end
    return true
end
_M.usable = usable


--- next(plan, down, failed, key) -> pool, host, pool_index | nil
-- down: { [pool name] = { [host name] = true | expiry } } for this instance, or nil.
-- failed: { [host table] = true } for this request, or nil.
-- key: the request's key for hashing methods, or nil (the pool's hash_key).
-- Every host returned is a try that must end with release().
function _M.next(plan, down, failed, key)
    local pools = plan.pools
    for i = 1, plan.npools do
        local p = pools[i]
        local conf = p.config
        if conf.up then
            local host = p.balancer:next(usable, down and down[conf.name], failed, key)
            if host then
                return p, host, i
            end
        end
    end
    return nil
end


--- release(p, host, outcome, elapsed): a try of next()'s ended (see balancer/weighted_rr)
function _M.release(p, host, outcome, elapsed)
    p.balancer:release(host, outcome, elapsed)
end


--- peers_left(plan, down, failed, current) -> bool: whether next() can still
-- return a host other than `current` (the host of the try starting now).
-- O(pools + down hosts + failed hosts), not O(hosts): balance() asks on every try.
function _M.peers_left(plan, down, failed, current)
    local pools = plan.pools
    local now
    for i = 1, plan.npools do
        local p = pools[i]
        local conf = p.config
        if conf.up and p.npeers > 0 then
            local left = p.npeers
            if current and plan.pool_of[current] == i and not (failed and failed[current]) then
                left = left - 1
            end
            if failed then
                for host in pairs(failed) do
                    if plan.pool_of[host] == i and host.up then
                        left = left - 1
                    end
                end
            end
            local d = down and down[conf.name]
            if d then
                for name, mark in pairs(d) do
                    local host = p.by_name[name]
                    if host and host ~= current and not (failed and failed[host]) then
                        now = now or ngx_now()
                        if mark == true or mark > now then
                            left = left - 1
                        end
                    end
                end
            end
            if left > 0 then
                return true
            end
        end
    end
    return false
end


--- usable_count(plan, down, failed) -> number of hosts next() could still return
function _M.usable_count(plan, down, failed)
    local n = 0
    for i = 1, plan.npools do
        local p = plan.pools[i]
        local conf = p.config
        if conf.up then
            local d = down and down[conf.name]
            for _, host in ipairs(conf.hosts) do
                if host.up and usable(host, d, failed) then
                    n = n + 1
                end
            end
        end
    end
    return n
end


return _M
