-- zedcup.balance: host selection for nginx's own proxy. balance(instance, key?)
-- runs in balancer_by_lua once per try: it picks a host with zedcup.select
-- (never one that already failed in this request while another can be used,
-- the next pool once a pool is exhausted), sets it as the peer with the pool's
-- timeouts, and allows nginx one more try whenever another host is left.
-- log() runs in log_by_lua and accounts for every try of the request, the last
-- one included, from nginx's $upstream_status, $upstream_connect_time and
-- $upstream_header_time lists: a connect failure or timeout is a connect error,
-- a failure after connecting or a status in the pool's status_codes a request
-- error (zedcup.report: counts, events, host_down), and the try is released
-- to the pool's balancer. A request of one try whose response status (ngx.status)
-- is a 2xx not in status_codes, with no internal redirect, was answered by that
-- host with that status: log() then reads no nginx variable ($upstream_header_time
-- only when the pool's balancer learns response times).
-- Hosts given as names get their addresses from zedcup.resolver (never waiting
-- in balancer_by_lua: a name not resolved yet is passed over for this request,
-- as if it failed).
--
-- The request's tries are kept in worker memory by the request's address, not
-- in ngx.ctx (whose table, reference and cleanup cost more than all of
-- balance()'s own work): the state is found again on nginx's retries and, after
-- an internal redirect (error_page), by log() and by a location proxying again.
-- A state left by an earlier request at the same address (one whose log() never
-- ran) is told apart by the request's start time and, on a first try, by
-- $upstream_status (a later upstream of the same request finds the earlier
-- one's tries there). States are reused, so a request allocates nothing.

local config = require "zedcup.config"
local report = require "zedcup.report"
local resolver = require "zedcup.resolver"
local selection = require "zedcup.select"
local state = require "zedcup.state"

local base = require "resty.core.base"
local ffi = require "ffi"
require "resty.core.request" -- ngx.req.start_time() through the FFI

local ngx = ngx
local ngx_var = ngx.var
local ngx_req = ngx.req
local ngx_log = ngx.log
local ngx_WARN = ngx.WARN
local tonumber = tonumber
local tostring = tostring
local type = type
local error = error
local setmetatable = setmetatable
local str_find = string.find
local str_sub = string.sub
local tab_new = require "table.new"
local ffi_cast = ffi.cast
local get_request = base.get_request
local start_time = ngx_req.start_time
local uintptr_t = ffi.typeof("uintptr_t")

-- r->internal through the FFI where this ngx_lua has it (ngx.req.is_internal()
-- is a plain C function, which ends JIT traces)
local is_internal = function() return ngx_req.is_internal() end
do
    local C = ffi.C
    pcall(ffi.cdef, "int ngx_http_lua_ffi_req_is_internal(void *r);")
    local ok, f = pcall(function() return C.ngx_http_lua_ffi_req_is_internal end)
    if ok and f then
        is_internal = function(r)
            return f(r) == 1
        end
    end
end

local plan_local = config.plan_local
local down_for = state.down_for
local select_next = selection.next
local select_release = selection.release
local peers_left = selection.peers_left
local resolve_peers = resolver.peers
local connected = report.connected
local failed = report.failed
local done = report.done

local ngx_balancer -- required on first use: only balancer_by_lua has it


local _M = { _VERSION = "0.1.0" }

local NO_HOSTS = "No available upstream hosts"

-- ngx.exit() this in balancer_by_lua when balance() fails: nginx answers 502
-- ("no live upstreams"). Any HTTP status given to ngx.exit() there is a 500.
_M.NO_PEER = -3 -- NGX_BUSY

-- request address -> the request's state (below), from its first try until log()
local live = {}
-- states log() is done with, for the next requests (a request allocates no table)
local spare, nspare = {}, 0
local MAX_SPARE = 64

local warned = setmetatable({}, { __mode = "k" }) -- host -> true: unresolved names warned about
local turns = setmetatable({}, { __mode = "k" })  -- host (a name) -> index of its last address


local function set_peer(b, p, host, addr)
    local pool = p.config
    local target = b.plan.targets[host]
    local ok, err
    if target.unix then
        ok, err = ngx_balancer.set_current_peer(target.address)
    else
        ok, err = ngx_balancer.set_current_peer(addr or host.host, host.port)
    end
    if not ok then
        return nil, "setting the peer " .. host.name .. " failed: " .. tostring(err)
    end
    ngx_balancer.set_timeouts(pool.timeout / 1000, pool.read_timeout / 1000, pool.read_timeout / 1000)
    return true
end


-- a state for a new request: b.plan, b.key, b.start (the request's start
-- time), b.n tries as pairs in the array part (b[2k - 1] = pool entry,
-- b[2k] = host), b.failed = { [host] = true } (hosts that failed in this
-- request), b.repeated = the try that repeated the last host, if any
local function new_state(rk, plan, key, start)
    local b
    if nspare > 0 then
        b = spare[nspare]
        spare[nspare] = nil
        nspare = nspare - 1
    else
        b = tab_new(4, 5)
    end
    b.plan, b.key, b.start, b.n = plan, key, start, 0
    live[rk] = b
    return b
end


local function recycle(b)
    for i = 1, b.n * 2 do
        b[i] = nil
    end
    b.plan, b.key, b.failed, b.repeated, b.prev = nil, nil, nil, nil, nil
    if nspare < MAX_SPARE then
        nspare = nspare + 1
        spare[nspare] = b
    end
end


-- records that host failed in b's request -> b.failed
local function set_failed(b, host)
    local fails = b.failed
    if not fails then
        fails = {}
        b.failed = fails
    end
    fails[host] = true
    return fails
end


-- the try's host is a name: its addresses from zedcup.resolver (no I/O here),
-- one after another; while it is being resolved, the other hosts
local function pick_named(b, plan, down, p, host)
    while true do
        local addrs = resolve_peers(host.host)
        if addrs then
            local turn = (turns[host] or 0) % #addrs + 1
            turns[host] = turn
            return p, host, addrs[turn]
        end
        select_release(p, host, "connect", 0)
        local fails = set_failed(b, host)
        if not warned[host] then
            warned[host] = true
            ngx_log(ngx_WARN, "[zedcup] balance(): ", plan.name, "/", p.config.name, "/", host.name,
                    ": the name ", host.host, " is not resolved yet: skipped")
        end
        p, host = select_next(plan, down, fails, b.key)
        if not p or plan.targets[host].peer then
            return p, host
        end
    end
end


--- balance(instance, key?) -> true | nil, err
function _M.balance(instance, key)
    if not ngx_balancer then
        ngx_balancer = require "ngx.balancer"
    end
    local rk = tonumber(ffi_cast(uintptr_t, get_request()))
    local b = live[rk]
    local plan, fails
    -- a state here is this request's on nginx's retries (a last failure);
    -- on a first try it is an earlier upstream's of this request (an
    -- error_page's location proxying again: its tries are kept) or a state an
    -- earlier request at this address left
    local start, prev
    if b and not ngx_balancer.get_last_failure() then
        -- a first try finding a state: this request's only if an earlier
        -- upstream of this request made its tries, which nginx's list then
        -- holds ("503 : -"); else another request's whose log() never ran,
        -- even at the same address in the same millisecond
        start = start_time()
        local list = b.start == start and ngx_var.upstream_status
        if not (list and str_find(list, " : ", 1, true)) then
            live[rk] = nil
            recycle(b)
            b = nil
        elseif b.plan.name ~= instance then
            -- this request's earlier upstream was another instance's (an
            -- error_page proxying to a fallback instance): its tries are
            -- kept for log(), before this upstream's
            prev = b
            b = nil
        end
    end
    if not b then
        local perr
        plan, perr = plan_local(instance)
        if not plan then
            if type(instance) ~= "string" then
                error("instance must be a string (got " .. type(instance) .. ")", 2)
            end
            -- "Instance not found", or "Could not retrieve config: <why>"
            -- while this node has not heard from Consul yet
            return nil, perr
        end
        if key ~= nil and type(key) ~= "string" then
            error("key must be a string (got " .. type(key) .. ")", 2)
        end
        b = new_state(rk, plan, key, start or start_time())
        b.prev = prev
    else
        -- nginx retries: the previous try failed (or gave a status nginx
        -- retries), or an earlier upstream of this request ended with it
        plan = b.plan
        fails = b.failed
        local last = b[b.n * 2]
        if last then
            fails = set_failed(b, last)
        end
    end

    local down = down_for(plan.name)
    local p, host = select_next(plan, down, fails, b.key)
    local addr
    if p and not plan.targets[host].peer then
        p, host, addr = pick_named(b, plan, down, p, host)
        fails = b.failed
    end

    local n = b.n
    if not p then
        if n == 0 then
            return nil, NO_HOSTS
        end
        -- the hosts left went away during the request: nginx already holds
        -- no more tries for it, so repeat the last host and let its answer stand
        p, host = b[n * 2 - 1], b[n * 2]
        b.repeated = n + 1 -- not a pick of the balancer: nothing to release
    elseif plan.npeers > 1 and peers_left(plan, down, fails, host) then
        ngx_balancer.set_more_tries(1)
    end

    n = n + 1
    b.n = n
    b[n * 2 - 1], b[n * 2] = p, host
    return set_peer(b, p, host, addr)
end


-- the entries of nginx's list variable ("a, b : c") that belong to our tries
-- (the last n), as an array
local function last_entries(list, n, out)
    local m = 0
    local pos = 1
    while true do
        local from, to = str_find(list, ", ", pos, true)
        local from2, to2 = str_find(list, " : ", pos, true)
        if from2 and (not from or from2 < from) then
            from, to = from2, to2
        end
        m = m + 1
        out[m] = str_sub(list, pos, (from or 0) - 1)
        if not from then
            break
        end
        pos = to + 1
    end
    local shift = m - n
    if shift > 0 then
        for i = 1, n do
            out[i] = out[i + shift]
        end
    elseif shift < 0 then
        -- fewer entries than tries (tries nginx never made): the entries are
        -- the last tries'
        for i = n, 1, -1 do
            out[i] = i + shift >= 1 and out[i + shift] or nil
        end
    end
    return out
end


local status_l, connect_l, header_l = {}, {}, {}

-- accounts for one try: status, connect_time, header_time are nginx's entries
-- for it; header_time is also the elapsed time balancers learn from
local function account(inst, p, host, status, connect_time, header_time, picked)
    local pool = p.config
    local code = tonumber(status)
    local kind, err
    if not code then
        kind = nil -- no answer recorded (the client went away): nothing to count
    elseif (code == 502 or code == 504) and (connect_time == "-" or header_time == "-") then
        if connect_time == "-" then
            kind = "connect"
            err = code == 504 and "upstream connect timed out (504)" or "upstream connect failed (502)"
        else
            kind = "request"
            err = code == 504 and "upstream timed out (504)" or "upstream failed (502)"
        end
    elseif p.codes[code] then
        kind = "status"
        err = "Bad status code: " .. code
    end
    if kind ~= "connect" and code then
        connected(inst, pool, host)
    end
    if kind then
        failed(inst, kind, pool, host, err)
    end
    if picked then
        select_release(p, host, kind, tonumber(header_time))
    end
    return code ~= nil and kind == nil
end


-- accounts for the tries of b (n > 0) from nginx's variables; skip: the
-- number of entries after b's (tries of a later upstream of the request)
local function account_all(b, n, inst, skip)
    local status = ngx_var.upstream_status
    if not status then
        -- nginx made no try (the client went away first)
        for i = 1, n do
            if i ~= b.repeated then
                select_release(b[i * 2 - 1], b[i * 2], nil, nil)
            end
        end
        done(inst, nil)
        return
    end

    if n == 1 and skip == 0 and #status == 3 then
        -- one try: no lists to split
        local p = b[1]
        local code = tonumber(status)
        local ct, ht
        if code == 502 or code == 504 then
            ct, ht = ngx_var.upstream_connect_time, ngx_var.upstream_header_time
        elseif p.balancer.timed then
            ht = ngx_var.upstream_header_time
        end
        local good = account(inst, p, b[2], status, ct, ht, true)
        done(inst, good and b.plan.pool_of[b[2]] or nil)
        return
    end

    last_entries(status, n + skip, status_l)
    last_entries(ngx_var.upstream_connect_time or "", n + skip, connect_l)
    last_entries(ngx_var.upstream_header_time or "", n + skip, header_l)
    local repeated = b.repeated
    local good
    for i = 1, n do
        good = account(inst, b[i * 2 - 1], b[i * 2], status_l[i], connect_l[i], header_l[i], i ~= repeated)
    end
    done(inst, good and b.plan.pool_of[b[n * 2]] or nil)
end


-- accounts for the tries of b and of the request's earlier upstreams of
-- other instances (b.prev chain, oldest first), whose entries precede the
-- `skip` entries of the later ones, and recycles their states
local function account_chain(b, skip)
    local prev = b.prev
    local n = b.n
    if prev then
        account_chain(prev, skip + n)
    end
    if n == 0 then
        done(b.plan.name, nil)
    else
        account_all(b, n, b.plan.name, skip)
    end
    recycle(b)
end


--- log(): in log_by_lua, after a request that balance() served
function _M.log()
    local r = get_request()
    local rk = tonumber(ffi_cast(uintptr_t, r))
    local b = live[rk]
    if not b then
        return
    end
    live[rk] = nil
    if b.start ~= start_time() then
        recycle(b) -- an earlier request's, whose log() never ran
        return
    end
    if b.n == 1 then
        -- one try (the usual case): a 2xx status not in status_codes, with
        -- no internal redirect after the proxying (error_page), is the host's
        -- answer: nothing to read from nginx's variables
        local p, host = b[1], b[2]
        local status = ngx.status
        if status >= 200 and status < 300 and not p.codes[status] and not is_internal(r) then
            local inst = b.plan.name
            connected(inst, p.config, host)
            select_release(p, host, nil, p.balancer.timed and tonumber(ngx_var.upstream_header_time) or nil)
            done(inst, b.plan.pool_of[host])
            recycle(b)
            return
        end
    end
    -- no usable host (done), or tries to account for from nginx's variables
    account_chain(b, 0)
end


return _M
