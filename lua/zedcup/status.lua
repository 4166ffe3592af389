-- zedcup.status: this node's view, as one documented table (README "status").
--
-- Built from this node's memory only (its shared dicts and this worker's
-- copies of them), never from Consul, so it answers while Consul is down and
-- costs no Consul load however often it is called. What it reads:
--   configs and host state   zedcup.config, zedcup.state (the node's copies)
--   requests and failures    zedcup.counters (this node's, flushed every 1 s)
--   transitions, Consul      zedcup.node (the node's background view)
--   contact, lock holder
-- Nothing secret is in it: no Consul token, TLS option, or configured
-- request header (health check headers may carry credentials).

local config = require "zedcup.config"
local counters = require "zedcup.counters"
local node = require "zedcup.node"
local schema = require "zedcup.schema"
local state = require "zedcup.state"
local store = require "zedcup.store"

local ngx = ngx
local ngx_now = ngx.now
local type = type
local ipairs = ipairs
local pairs = pairs
local tostring = tostring
local str_find = string.find
local tab_sort = table.sort


local _M = { _VERSION = "0.1.0" }


-- "<address>:<port>", or the unix socket path
local function address(host)
    local h = host.host
    if schema.is_unix(h) then
        return h
    end
    if str_find(h, ":", 1, true) then
        h = "[" .. h .. "]"
    end
    return h .. ":" .. tostring(host.port)
end


-- the reason class of a `down` value written by zedcup.state / the health checker
local function down_reason(value)
    if str_find(value, "^health check") then
        return "health check"
    elseif str_find(value, " errors within ", 1, true) then
        return "errors"
    end
    return "manual"
end


local function host_status(inst, pool, host, st, pool_hold, seen_down, transitions, now)
    local out = {
        name = host.name,
        address = address(host),
        weight = host.weight,
        state = "up",
    }
    local key = inst .. "/" .. pool.name .. "/" .. host.name
    if not pool.up then
        out.state, out.reason, out.detail = "disabled", "config", "pool up = false"
    elseif not host.up then
        out.state, out.reason, out.detail = "disabled", "config", "host up = false"
    elseif st and st.admin_down then
        -- an operator's hold (zedctl host down, zedcup.set_host_state)
        out.state, out.reason = "down", "manual"
        out.detail = st.admin_down ~= "" and st.admin_down or "host held down"
        out.since = st.admin_down_at
    elseif pool_hold then
        out.state, out.reason = "down", "manual"
        out.detail = "pool held down" .. (pool_hold.admin_down ~= "" and (": " .. pool_hold.admin_down) or "")
        out.since = pool_hold.admin_down_at
    elseif st and st.down then
        out.state, out.reason, out.detail = "down", down_reason(st.down), st.down
        out.since = st.down_at
    elseif seen_down then
        -- this worker stopped using it on its own count, Consul has not confirmed yet
        out.state, out.reason, out.detail = "down", "errors", "max_errors reached on this node"
    end
    if not out.since then
        local t = transitions[key]
        out.since = t and t.at or nil
    end
    if st then
        out.errors = st.errors or 0
        if st.errors_at and st.errors_at > 0 and now - st.errors_at >= pool.error_timeout then
            out.errors = 0 -- the window is over: the next failure starts from 0
        end
        out.last_error = st.last_error
        out.last_error_at = st.last_error_at
    else
        out.errors = 0
    end
    -- this node's own count in its window (it marks the host down here alone at max_errors)
    local k = store.host_key(inst, pool.name, host.name)
    out.node_errors = store.failures(k) or 0
    -- checks are kept in the checker node's memory only: other nodes show none
    local check, check_at = state.last_check(inst, pool.name, host.name)
    if check then
        out.check = { ok = check == "ok", result = check, at = check_at }
    end
    local c = counters.host(inst, pool.name, host.name)
    out.requests = c.tries
    out.failures = { connect = c.connect, request = c.request, status = c.status }
    return out
end


local function instance_status(name, plan, snapshot, transitions, now)
    local conf = plan.config
    local st_inst = snapshot[name] or {}
    local pools = {}
    for i, p in ipairs(plan.pools) do
        local pool = p.config
        local st_pool = st_inst[pool.name] or {}
        -- a pool's own hold is the snapshot's entry "" (no host is named "")
        local hold = st_pool[""]
        hold = hold and hold.admin_down and hold or nil
        local hosts = {}
        for j, host in ipairs(pool.hosts) do
            hosts[j] = host_status(name, pool, host, st_pool[host.name], hold,
                                   state.is_down(name, pool.name, host.name), transitions, now)
        end
        pools[i] = {
            name = pool.name, index = i, up = pool.up, hosts = hosts,
            held = hold and { reason = hold.admin_down, since = hold.admin_down_at } or nil,
        }
    end
    local c = counters.instance(name)
    local applied = node.config_applied(name)
    return {
        name = name,
        config = applied and {
            index = applied.index,
            applied = applied.at,
            age = applied.at and now - applied.at or nil,
        } or {},
        requests = c.requests,
        failovers = c.failovers,
        no_host = c.no_host,
        tries = c.tries,
        healthcheck = conf.healthcheck and true or false,
        pools = pools,
    }
end


--- status(instance?) -> table | nil, err
-- instance: only that instance (nil, "Instance not found" when this node
-- does not know it); nil: every instance this node knows.
function _M.status(instance)
    if instance ~= nil and type(instance) ~= "string" then
        error("instance must be a string (got " .. type(instance) .. ")", 2)
    end
    local now = ngx_now()
    local names
    if instance then
        -- this worker's plan, else the node's copy (never Consul)
        if not config.plan_local(instance) then
            return nil, "Instance not found"
        end
        names = { instance }
    else
        -- the node's listing of instances (shared memory), else the names the
        -- node's background job last saw
        names = {}
        for name in pairs(store.names()) do
            names[#names + 1] = name
        end
        if not names[1] then
            names = node.instance_names()
        end
    end

    local snapshot = state.snapshot()
    local transitions = node.last_transitions()
    local instances = {}
    for _, name in ipairs(names) do
        local plan = config.plan_local(name)
        if plan then
            instances[#instances + 1] = instance_status(name, plan, snapshot, transitions, now)
        end
    end
    tab_sort(instances, function(a, b)
        return a.name < b.name
    end)

    local info = node.info(now)
    -- instances this node keeps serving although Consul came back without them
    info.kept = config.kept()
    -- the cluster's live nodes as this node last read their records (every 5 s)
    local cluster = node.cluster()
    local nodes = {}
    if cluster then
        for i, rec in ipairs(cluster.nodes) do
            nodes[i] = {
                name = rec.name,
                version = rec.version,
                started = rec.started,
                written = rec.written,
                checker = rec.checker,
                down = type(rec.down) == "table" and rec.down or {},
                this_node = rec.name == info.name or nil,
            }
        end
    end
    return {
        node = info,
        cluster = { nodes = nodes, read_at = cluster and cluster.at or nil },
        instances = instances,
        transitions = node.transitions(),
        time = now,
    }
end


-- schema is required so that status() sees the same version string zedctl does
_M.VERSION = schema.VERSION


return _M
