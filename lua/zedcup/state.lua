-- zedcup.state: host state and failure accounting.
--
-- Request path (failures only): a failure increments the node's count for the
-- host in the shared dict (window = the pool's error_timeout) and queues the
-- increment; when the node alone reaches max_errors the worker stops using the
-- host at once. A timer (every worker, off the request path) drains the queue
-- in batches into Consul with CAS on <prefix>/state/<inst>/<pool>/<host>/errors
-- (Flags = last error time) and writes last_error. Reaching max_errors there
-- marks the host down: CAS-create of `down` (cas=0); only the winner (one
-- worker on one node of the cluster) fires host_down. Marking up is a
-- CAS-delete; only its winner fires host_up.
--
-- Every worker learns state changes from a per-node watcher on <prefix>/state/
-- (zedcup.watch) that stores a snapshot in the node store; the store's
-- generation moves only when the set of down hosts changes, and each worker's
-- poll job then copies it into worker-local tables (refresh()), which is all
-- that host selection reads. Shared-dict keys belong to zedcup.store.
--
-- Operator holds (`zedctl host down|pool down`, zedcup.set_host_state) are
-- <prefix>/state/<inst>/<pool>/<host>/admin_down and <prefix>/state/<inst>/<pool>/admin_down:
-- a held host, or every host of a held pool, reads as down to selection until the
-- key is deleted; health checks and revives never lift a hold (it is not `down`).
-- The snapshot keeps a pool's hold as the entry "" of its hosts (no host is named "").
--
-- Transitions are also written to the event log <prefix>/events/<inst>/<id>
-- (README, "Consul key layout") by the winner that fires host_down / host_up.

local cjson = require "cjson.safe"
local config = require "zedcup.config"
local events = require "zedcup.events"
local kv = require "zedcup.kv"
local store = require "zedcup.store"

local ngx = ngx
local ngx_log = ngx.log
local ngx_WARN = ngx.WARN
local ngx_now = ngx.now
local ngx_time = ngx.time
local pairs = pairs
local type = type
local tostring = tostring
local tonumber = tonumber
local str_match = string.match
local str_sub = string.sub
local str_format = string.format
local math_floor = math.floor
local math_random = math.random
local tab_sort = table.sort
local setmetatable = setmetatable
local json_encode = cjson.encode
local json_decode = cjson.decode


local _M = { _VERSION = "0.1.0" }

-- A worker's own mark bridges the time until Consul confirms. It lasts the
-- pool's error_timeout (as nginx's fail_timeout would), so a slow state watcher
-- cannot send traffic back to a host this node has just seen fail; a node cut off
-- from Consul retries the host once per error_timeout. Consul bringing the host
-- back (mark_up, revive) clears it earlier.


-- worker-local
local down = {}             -- inst -> pool -> host -> true (Consul) | expiry (this worker)
local marked_at = {}        -- host key -> when this worker marked it down on its own
local gen = -1
local up_gen = nil          -- store.up_gen() this worker last looked at


local host_key = store.host_key


--- down_for(inst) -> { [pool] = { [host] = true | expiry } } | nil (worker-local, read-only)
function _M.down_for(inst)
    return down[inst]
end


--- snapshot() -> the node's last state tree from Consul (decoded on each
-- call: for background jobs and status pages, not the request path):
-- inst -> pool -> host -> { down = reason, down_at = t, errors = n, errors_at = t,
--                           last_error = msg, last_error_at = t }
function _M.snapshot()
    local tree = json_decode(store.state_raw() or "{}")
    return type(tree) == "table" and tree or {}
end


--- is_down(inst, pool, host) -> bool (as this worker sees it)
function _M.is_down(inst, pool, host)
    local d = down[inst]
    d = d and d[pool]
    d = d and d[host]
    return d ~= nil and (d == true or d > ngx_now())
end


local function set_local(inst, pool, host, value)
    local di = down[inst]
    if not di then
        if value == nil then
            return
        end
        di = {}
        down[inst] = di
    end
    local dp = di[pool]
    if not dp then
        if value == nil then
            return
        end
        dp = {}
        di[pool] = dp
    end
    if value == nil or dp[host] ~= true then
        dp[host] = value
    end
end


local function fire(event, inst, pool_name, host_name)
    if not events.wanted(event) then
        return
    end
    local pool, host = config.find_host(inst, pool_name, host_name)
    events.fire(event, inst, {
        pool = pool or { name = pool_name },
        host = host or { name = host_name },
    })
end


---------------------------------------------------------------------------
-- Request path
---------------------------------------------------------------------------

--- record_failure(inst, pool, host, err)
-- pool, host: effective config records. Touches the shared dict (failures only).
function _M.record_failure(inst, pool, host, err)
    local k = host_key(inst, pool.name, host.name)
    local n = store.add_failure(k, err, pool.error_timeout)
    if n and n >= pool.max_errors then
        -- this node alone has seen enough: stop using the host here now; the
        -- sync timer makes it cluster-wide
        local now = ngx_now()
        set_local(inst, pool.name, host.name, now + pool.error_timeout)
        marked_at[k] = now
    end
end


---------------------------------------------------------------------------
-- Consul writes
---------------------------------------------------------------------------

local EVENTS_KEEP = 100
local EVENTS_SLACK = 10

local function by_key(a, b)
    return a.Key < b.Key
end

-- (also when premature: a worker that exits right after a transition still says so)
local function write_event(_, now, event, inst, pool_name, host_name, reason)
    local ms = math_floor(now * 1000)
    local base = kv.prefix() .. "/events/" .. inst .. "/"
    local id = str_format("%013d-%04x%04x", ms, ngx.worker.pid() % 65536, math_random(0, 65535))
    local ok, session = pcall(require, "zedcup.session")
    local node = ok and session.node_name() or "?"
    local res, err = kv.put(base .. id, json_encode({
        time = ms / 1000, node = node, event = event,
        pool = pool_name, host = host_name, reason = reason,
    }))
    if not res then
        ngx_log(ngx_WARN, "[zedcup] event ", event, " of ", inst, "/", pool_name, "/", host_name,
                " not recorded: ", tostring(err))
        return
    end
    local entries = kv.get_tree(base)
    if not entries or #entries <= EVENTS_KEEP + EVENTS_SLACK then
        return
    end
    tab_sort(entries, by_key)
    local ops = {}
    for i = 1, #entries - EVENTS_KEEP do
        ops[#ops + 1] = { KV = { Verb = "delete", Key = entries[i].Key } }
        if #ops == 64 then
            kv.txn(ops)
            ops = {}
        end
    end
    if #ops > 0 then
        kv.txn(ops)
    end
end


-- Best effort, in a timer of its own: a transition is never held up or undone by
-- its event.
local function record_event(event, inst, pool_name, host_name, reason)
    local ok, err = ngx.timer.at(0, write_event, ngx_now(), event, inst, pool_name, host_name, reason)
    if not ok then
        ngx_log(ngx_WARN, "[zedcup] event ", event, " of ", inst, "/", pool_name, "/", host_name,
                " not recorded: ", tostring(err))
    end
end
_M.record_event = record_event -- also zedcup.hostops' admin_host_down / admin_host_up


--- mark_down(inst, pool_name, host_name, reason) -> true (won: host_down fired) | false | nil, err
function _M.mark_down(inst, pool_name, host_name, reason)
    local now = ngx_time()
    local ok, err = kv.put(kv.state_key(inst, pool_name, host_name, "down"), tostring(reason or ""),
                           { cas = 0, flags = now })
    if ok == nil then
        return nil, err
    end
    if not ok then
        return false
    end
    set_local(inst, pool_name, host_name, true)
    marked_at[host_key(inst, pool_name, host_name)] = ngx_now()
    ngx_log(ngx_WARN, "[zedcup] host down: ", inst, "/", pool_name, "/", host_name, ": ", tostring(reason))
    fire("host_down", inst, pool_name, host_name)
    record_event("host_down", inst, pool_name, host_name, reason and tostring(reason) or nil)
    return true
end


--- mark_up(inst, pool_name, host_name, reason?) -> true (won: host_up fired) | false | nil, err
-- Deletes `down` (CAS on its ModifyIndex) and the error count in one transaction.
function _M.mark_up(inst, pool_name, host_name, reason)
    local down_key = kv.state_key(inst, pool_name, host_name, "down")
    local e, err = kv.get(down_key)
    if e == nil then
        return nil, err
    end
    if not e then
        return false
    end
    local res
    res, err = kv.txn({
        { KV = { Verb = "delete-cas", Key = down_key, Index = e.ModifyIndex } },
        { KV = { Verb = "delete", Key = kv.state_key(inst, pool_name, host_name, "errors") } },
    })
    if res == nil then
        return nil, err
    end
    if res == false then
        return false
    end
    local di = down[inst]
    if di and di[pool_name] then
        di[pool_name][host_name] = nil
    end
    local k = host_key(inst, pool_name, host_name)
    store.forget_failures(k)
    store.came_up(k, ngx_now())
    ngx_log(ngx.NOTICE, "[zedcup] host up: ", inst, "/", pool_name, "/", host_name)
    fire("host_up", inst, pool_name, host_name)
    record_event("host_up", inst, pool_name, host_name, reason)
    return true
end


--- record_check(inst, pool_name, host_name, ok, msg) -> true
-- The result stays in this node's shared dict (Consul is written only on
-- transitions): "<unix time> ok" or "<unix time> <why it failed>".
function _M.record_check(inst, pool_name, host_name, ok, msg)
    store.set_check(host_key(inst, pool_name, host_name), ok, msg)
    return true
end


--- last_check(inst, pool_name, host_name) -> "ok" | why, unix time | nil
-- (the checker node's last result; other nodes have none)
function _M.last_check(inst, pool_name, host_name)
    return store.check(host_key(inst, pool_name, host_name))
end


-- Adds `delta` failures of host key k to its Consul count; marks it down
-- when the count reaches max_errors.
local function push_errors(k, delta)
    local inst, pool_name, host_name = str_match(k, "^([^/]+)/([^/]+)/([^/]+)$")
    local pool = config.find_host(inst, pool_name, host_name)
    if not pool then
        return true -- instance, pool or host gone: nothing to account
    end

    local key = kv.state_key(inst, pool_name, host_name, "errors")
    local count, now
    for _ = 1, 10 do
        local e, err = kv.get(key)
        if e == nil then
            return nil, err
        end
        now = ngx_time()
        local base, cas = 0, 0
        if e then
            cas = e.ModifyIndex
            if now - (tonumber(e.Flags) or 0) < pool.error_timeout then
                base = tonumber(e.Value) or 0
            end
        end
        local ok
        ok, err = kv.put(key, tostring(base + delta), { cas = cas, flags = now })
        if ok == nil then
            return nil, err
        end
        if ok then
            count = base + delta
            break
        end
    end
    if not count then
        return nil, "errors of " .. k .. ": compare-and-set kept losing"
    end

    local msg = store.last_error(k) or ""
    kv.put(kv.state_key(inst, pool_name, host_name, "last_error"), msg, { flags = now })

    if count >= pool.max_errors then
        local _, err = _M.mark_down(inst, pool_name, host_name,
                                    count .. " errors within " .. pool.error_timeout .. "s, last: " .. msg)
        if err then
            return nil, err
        end
    end
    return true
end


--- sync() -> true | nil, err: drains queued failures into Consul (timer job)
function _M.sync()
    local pushed = false
    for _ = 1, 10000 do
        local k, delta = store.next_queued()
        if not k then
            -- false: nothing to push, Consul was not asked (not a recovery)
            return pushed
        end
        if delta > 0 then
            local ok, err = push_errors(k, delta)
            pushed = true
            if not ok then
                store.requeue(k, delta) -- for the next run
                return nil, "syncing errors of " .. k .. ": " .. tostring(err)
            end
        end
    end
    return true
end


---------------------------------------------------------------------------
-- State watcher (node) and refresh (worker)
---------------------------------------------------------------------------

local FIELDS = { down = true, errors = true, last_error = true, admin_down = true,
                 weight = true } -- weight: an agent check's (zedcup.weights)
local POOL = ""  -- the snapshot entry of a pool's own state (its hold): no host is named ""

-- a held pool: every host of it reads as down
local HELD = { __index = function() return true end }

local function held(tree, inst, pool, host)
    local st = tree[inst] and tree[inst][pool] and tree[inst][pool][host]
    return st and st.admin_down ~= nil or false
end

--- apply(entries) -> true: a listing of <prefix>/state/ into the shared dict
function _M.apply(entries)
    local base = kv.state_prefix()
    local blen = #base
    local tree = {}
    for _, e in ipairs(entries) do
        local rel = str_sub(e.Key, blen + 1)
        local inst, pool, host, field = str_match(rel, "^([^/]+)/([^/]+)/([^/]+)/([^/]+)$")
        if not inst then
            inst, pool, field = str_match(rel, "^([^/]+)/([^/]+)/(admin_down)$")
            host = POOL
        end
        if inst and FIELDS[field] then
            local ti = tree[inst]
            if not ti then
                ti = {}
                tree[inst] = ti
            end
            local tp = ti[pool]
            if not tp then
                tp = {}
                ti[pool] = tp
            end
            local th = tp[host]
            if not th then
                th = {}
                tp[host] = th
            end
            local value = e.Value or ""
            if field == "errors" then
                th.errors = tonumber(value) or 0
            else
                th[field] = value
            end
            th[field .. "_at"] = tonumber(e.Flags) or 0
        end
    end
    -- hosts that came back since the last snapshot: forget this node's counts
    -- and any worker's own marks made before now; and whether the set of
    -- down hosts changed at all (else no worker needs to look)
    local prev = json_decode(store.state_raw() or "{}")
    local down_changed = type(prev) ~= "table"
    if not down_changed then
        local now = ngx_now()
        for inst, pools in pairs(prev) do
            for pool, hosts in pairs(pools) do
                for host, st in pairs(hosts) do
                    local cur = tree[inst] and tree[inst][pool] and tree[inst][pool][host]
                    if st.down and not (cur and cur.down) then
                        local k = host_key(inst, pool, host)
                        store.forget_failures(k)
                        store.came_up(k, now)
                        down_changed = true
                    end
                    if st.admin_down and not held(tree, inst, pool, host) then
                        down_changed = true
                    end
                end
            end
        end
        for inst, pools in pairs(tree) do
            for pool, hosts in pairs(pools) do
                for host, st in pairs(hosts) do
                    local was = prev[inst] and prev[inst][pool] and prev[inst][pool][host]
                    if (st.down and not (was and was.down))
                       or (st.admin_down and not held(prev, inst, pool, host)) then
                        down_changed = true
                    end
                end
            end
        end
    end

    local ok, err = store.set_state(json_encode(tree), down_changed or store.state_gen() == nil)
    if not ok then
        return nil, err
    end
    _M.refresh()
    return true
end


-- drops this worker's own marks (its failures' expiry marks, and the mark of a
-- mark_down it won) of hosts Consul brought back after they were made
-- (store.came_up), whatever the snapshot says yet
local function drop_own_marks()
    for inst, pools in pairs(down) do
        for pool, hosts in pairs(pools) do
            for host in pairs(hosts) do
                local k = host_key(inst, pool, host)
                local at = marked_at[k]
                if at and store.up_at(k) >= at then
                    hosts[host] = nil
                    marked_at[k] = nil
                end
            end
        end
    end
end


--- refresh(): copies the node's down hosts into this worker's tables when
-- they changed, and drops its own marks of hosts that came back (the poll job)
function _M.refresh()
    local ug = store.up_gen()
    if ug ~= up_gen then
        up_gen = ug
        drop_own_marks()
    end
    local g = store.state_gen()
    if g == nil or g == gen then
        return true
    end
    local json = store.state_raw()
    local tree = json and json_decode(json)
    if type(tree) ~= "table" then
        return nil, "state snapshot unreadable"
    end

    local now = ngx_now()
    local new = {}
    for inst, pools in pairs(tree) do
        for pool, hosts in pairs(pools) do
            for host, st in pairs(hosts) do
                if st.down or st.admin_down then
                    local ni = new[inst] or {}
                    new[inst] = ni
                    local np = ni[pool] or {}
                    ni[pool] = np
                    if host == POOL then
                        -- real entries for the pool's hosts (select.peers_left counts
                        -- them), and any host added since reads as down too
                        setmetatable(np, HELD)
                        local plan = config.plan_local(inst)
                        for _, p in ipairs(plan and plan.pools or {}) do
                            if p.config.name == pool then
                                for _, h in ipairs(p.config.hosts) do
                                    np[h.name] = true
                                end
                            end
                        end
                    else
                        np[host] = true
                    end
                end
            end
        end
    end

    -- carry this worker's own unconfirmed marks; forget node counts of hosts
    -- that Consul just brought back
    for inst, pools in pairs(down) do
        for pool, hosts in pairs(pools) do
            for host, v in pairs(hosts) do
                local now_down = new[inst] and new[inst][pool] and new[inst][pool][host]
                if v == true and not now_down then
                    store.forget_failures(host_key(inst, pool, host))
                elseif v ~= true and not now_down then
                    -- keep this worker's own mark unless it expired or the
                    -- host came back after it was made
                    local k = host_key(inst, pool, host)
                    if v > now and store.up_at(k) < (marked_at[k] or 0) then
                        local ni = new[inst] or {}
                        new[inst] = ni
                        local np = ni[pool] or {}
                        ni[pool] = np
                        np[host] = v
                    else
                        marked_at[k] = nil
                    end
                end
            end
        end
    end

    down = new
    gen = g
    return true
end


--- forget(inst): drops worker-local state of a removed instance
function _M.forget(inst)
    down[inst] = nil
end


return _M
