-- zedcup.config: reading configs (the hot path and background jobs).
--
--   worker  L1 of the config mlcache (zedcup.store): the compiled plan of each
--           instance (zedcup.select), made by l1_serializer once per worker
--           and change; the effective global config. All a cache-hit request
--           reads: one lrucache lookup.
--   node    L2 of the mlcache in the cache dict: each instance's normalised
--           config and content signature, kept without TTL so that a Consul
--           outage never expires it; the global config (store).
--   Consul  the source of truth. The watcher's worker applies its answers
--           (zedcup.config.apply); this node's own writes go through
--           zedcup.config.write. On a cold node (no watcher answer yet) a
--           missing instance is read from Consul by the mlcache callback,
--           once per instance for all requests and workers (mlcache's lock),
--           with a short timeout; a failure is remembered for FAIL_TTL s.
-- Every worker's poll job calls refresh(): it applies the mlcache's IPC
-- events, re-warms the plans and reloads the global config when the node's
-- config generation moved (zedcup.store's protocol).

local discovery = require "zedcup.discovery"
local weights = require "zedcup.weights"
local kv = require "zedcup.kv"
local schema = require "zedcup.schema"
local selection = require "zedcup.select"
local store = require "zedcup.store"

local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local pairs = pairs
local ipairs = ipairs
local type = type
local tostring = tostring
local str_find = string.find
local str_sub = string.sub
local tab_concat = table.concat
local json_decode = require("cjson.safe").decode
local json_encode = require("cjson.safe").encode


local _M = { _VERSION = "0.1.0" }

-- the cold lookup's Consul read timeout (ms): a hung Consul answers quickly
local COLD_READ_TIMEOUT = 1000
-- s a failed cold lookup is remembered (shared by every request and worker)
local FAIL_TTL = 2

local configs -- the mlcache

-- worker-local
local global_eff = schema.effective("global", {})
local global_sig = nil
local cgen = -1


local valid_name = schema.valid_name


--- compile(name, normalised, sig) -> plan | nil, err
local function compile(name, normalised, sig)
    return selection.compile(name, schema.effective("instance", normalised), sig)
end
_M.compile = compile


-- l1_serializer: the L2 value { name, sig, conf } (or a remembered failure
-- { err }) -> what L1 holds: the plan (or the failure)
local function to_plan(v)
    if v.err then
        return v
    end
    -- pools with a `service`: the hosts zedcup.discovery found join the config
    -- and run-time weights (slow start ramps, agent checks) apply
    local plan, err = compile(v.name, weights.merge(v.name, discovery.merge(v.name, v.conf)), v.sig)
    if not plan then
        return { err = "Could not retrieve config: " .. err }
    end
    return plan
end


--- log_bad_once(what, sig, problems, base): a config the schema refuses, once per node
function _M.log_bad_once(what, sig, problems, base)
    if not store.first_bad(what, sig) then
        return
    end
    local msgs = {}
    for i, p in ipairs(problems) do
        msgs[i] = kv.problem_message(p, base)
    end
    ngx_log(ngx_ERR, "[zedcup] ignoring the config of ", what, " in Consul, keeping the last good one: ",
            tab_concat(msgs, "; "))
end


function _M.init()
    configs = store.configs_new(to_plan)
end


-- The mlcache callback of a miss: nothing (not found) once the watcher has
-- listed the instances; else a read of Consul (cold start). "Not found" is not
-- cached (ttl -1): a worker must not keep it after the watcher put the
-- instance in L2 (the poll's invalidation would come up to 0.05 s later).
local NOT_CACHED = -1

local function load(name)
    if not valid_name(name) or store.synced() then
        return nil, nil, NOT_CACHED
    end
    local base = kv.instance_prefix(name)
    local entries, err = kv.get_tree(base, nil, nil, kv.client(COLD_READ_TIMEOUT))
    if not entries then
        return { err = "Could not retrieve config: " .. err }, nil, FAIL_TTL
    end
    local rel, pending, sig = kv.relative(entries, base)
    if #rel == 0 and not pending then
        return nil, nil, NOT_CACHED
    end
    if pending then
        return { err = "Could not retrieve config: instance " .. name .. " is being written" }, nil, FAIL_TTL
    end
    local normalised, problems = schema.unflatten("instance", rel)
    if not normalised then
        _M.log_bad_once("instance " .. name, sig, problems, base)
        return { err = "Could not retrieve config: " .. kv.problem_message(problems[1], base) }, nil, FAIL_TTL
    end
    return { name = name, sig = sig, conf = normalised }
end


--- plan(name) -> plan | nil, err   (the hot path: an L1 hit is one lrucache lookup)
function _M.plan(name)
    if type(name) ~= "string" then
        return nil, "Instance not found"
    end
    local v, err = configs:get(name, nil, load, name)
    if v then
        local e = v.err
        if e == nil then
            return v
        end
        return nil, e
    end
    if err then
        return nil, "Could not retrieve config: " .. err
    end
    return nil, "Instance not found"
end


--- plan_local(name) -> plan | nil, err: this worker or this node, never Consul
-- and never yields (balancer_by_lua). err: "Instance not found" once the
-- watcher listed the instances, else "Could not retrieve config: <why>".
function _M.plan_local(name)
    if type(name) ~= "string" then
        return nil, "Instance not found"
    end
    local v = configs:get(name)
    if v then
        local e = v.err
        if e == nil then
            return v
        end
        return nil, e
    end
    if store.synced() then
        return nil, "Instance not found"
    end
    local why = store.watch_error("instances")
    return nil, "Could not retrieve config: " .. (why or "no answer from Consul yet")
end


--- find_host(inst, pool_name, host_name) -> pool, host (effective records) | nil
function _M.find_host(inst, pool_name, host_name)
    local plan = _M.plan(inst)
    if not plan then
        return nil
    end
    for _, p in ipairs(plan.pools) do
        local pool = p.config
        if pool.name == pool_name then
            for _, host in ipairs(pool.hosts) do
                if host.name == host_name then
                    return pool, host
                end
            end
            return pool
        end
    end
    return nil
end


--- instances() -> { [name] = effective config } | nil, err
-- Every instance this node knows, for background jobs such as health checks:
-- the watcher's last listing, also while Consul does not answer (a job must
-- not stop, or wait on Consul, because the watcher has not answered for a
-- while); Consul only before any listing.
function _M.instances()
    local names = store.names()
    local get = _M.plan_local
    if next(names) == nil and not store.synced() then
        local list, err = _M.list()
        if not list then
            return nil, err
        end
        for _, name in ipairs(list) do
            names[name] = true
        end
        get = _M.plan
    end
    local out = {}
    for name in pairs(names) do
        local plan = get(name)
        if plan then
            out[name] = plan.config
        end
    end
    return out
end


--- kept() -> nil | { since =, index =, seen =, names = { ... } }: this node
-- serves instances that a Consul which came back empty no longer lists
function _M.kept()
    return store.kept()
end


--- global() -> the effective global config (worker-local, read-only; defaults
-- until one is loaded)
function _M.global()
    return global_eff
end


local function load_global_raw(raw)
    local nl = str_find(raw, "\n", 1, true)
    local sig, json = str_sub(raw, 1, nl - 1), str_sub(raw, nl + 1)
    if sig == global_sig then
        return true
    end
    local normalised = json_decode(json)
    if type(normalised) ~= "table" then
        return nil, "stored global config unreadable"
    end
    global_eff = schema.effective("global", normalised)
    global_sig = sig
    return true
end


--- load_global() -> effective | nil, err: makes sure a global config was read
-- once (from the node, else Consul) and returns it
function _M.load_global()
    local raw = store.global_raw()
    if raw then
        local ok, err = load_global_raw(raw)
        if not ok then
            return nil, "Could not retrieve config: " .. err
        end
        return global_eff
    end
    if store.global_synced() then
        return global_eff
    end
    local base = kv.config_prefix()
    local entries, index = kv.get_tree(base, nil, nil, kv.client(COLD_READ_TIMEOUT))
    if not entries then
        return nil, "Could not retrieve config: " .. tostring(index)
    end
    local rel, pending, sig = kv.relative(entries, base)
    if not pending then
        local ok, err = _M.accept_global(rel, sig, base, index)
        if not ok then
            return nil, "Could not retrieve config: " .. err
        end
    end
    return global_eff
end


local function accept_global(rel, sig, base, index)
    if index and (store.own_write(nil)) > index then
        -- this node wrote the global config after Consul made this listing
        return true
    end
    local raw = store.global_raw()
    if raw and str_sub(raw, 1, #sig + 1) == sig .. "\n" then
        -- another worker stored it first: this worker's copy may still be older
        return load_global_raw(raw)
    end
    local normalised, problems = schema.unflatten("global", rel)
    if not normalised then
        _M.log_bad_once("the global config", sig, problems, base)
        return true
    end
    local ok, err = store.set_global_raw(sig .. "\n" .. json_encode(normalised))
    if not ok then
        return nil, "storing the global config failed: " .. tostring(err)
    end
    return true, true
end


--- accept_global(rel, sig, base, index?) -> true | nil, err: a listing of
-- <prefix>/config/ (relative keys, signature; Consul's index of it) into the
-- store, unless the schema refuses it (logged once; the last good one stays)
-- or this node wrote the global config since Consul made the listing
function _M.accept_global(rel, sig, base, index)
    local ok, stored = store.update_configs(accept_global, rel, sig, base, index)
    if stored then
        store.config_changed()
        _M.refresh()
    end
    return ok, not ok and stored or nil
end


--- refresh() -> true: this worker acts on the node's config changes (poll job)
function _M.refresh()
    local g = store.config_gen()
    if g == nil or g == cgen then
        return true
    end
    cgen = g
    configs:update()
    local raw = store.global_raw()
    if raw then
        local ok, err = load_global_raw(raw)
        if not ok then
            ngx_log(ngx_ERR, "[zedcup] keeping the last global config: ", err)
        end
    end
    -- compile the changed plans here, not in the next request
    for name in pairs(store.names()) do
        configs:get(name, nil, load, name)
    end
    return true
end


--- list() -> { "a", "b", a = true, b = true } | nil, err (from Consul)
-- An instance exists when it has a key (folder keys ending in '/' made by
-- UIs do not count), as for kv.split_instances and zedctl.
function _M.list()
    local base = kv.instances_prefix()
    local res, err = kv.client():list_keys(base)
    if not res then
        return nil, "listing instances failed: " .. tostring(err)
    end
    local out = {}
    if res.status == 404 then
        return out
    end
    if res.status ~= 200 or type(res.body) ~= "table" then
        return nil, "listing instances failed: Consul answered " .. tostring(res.status)
    end
    local blen = #base
    for _, key in ipairs(res.body) do
        local name, rel = str_sub(key, blen + 1):match("^([^/]+)/(.*)$")
        if name and rel ~= "" and str_sub(rel, -1) ~= "/" and not out[name] then
            out[#out + 1] = name
            out[name] = true
        end
    end
    return out
end


return _M
