-- zedcup.config: loading, caching and watching the global and instance configs.
--
-- Three layers:
--   worker  plans[name]: the compiled effective config (zedcup.select) and the
--           effective global config; all a cache-hit request reads.
--   node    the cache shared dict: the last good normalised config of each
--           instance ("i:<name>" = "<sig>\n<json>") and of the global config
--           ("g"), kept without TTL so that a Consul outage never expires them;
--           "cgen" is bumped on every change.
--   Consul  the source of truth, watched by one worker per node
--           (zedcup.watch) with blocking queries on <prefix>/instances/ and
--           <prefix>/config/.
-- Each worker's update timer calls refresh(), which rebuilds what changed.
-- A tree holding `_pending` is never read; a bad value is logged once per
-- node (with its key) and the last good config stays in use.

local cjson = require "cjson.safe"
local kv = require "zedcup.kv"
local schema = require "zedcup.schema"
local selection = require "zedcup.select"
local state = require "zedcup.state"

local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_WARN = ngx.WARN
local next = next
local ngx_md5 = ngx.md5
local pairs = pairs
local ipairs = ipairs
local type = type
local error = error
local tostring = tostring
local str_find = string.find
local str_sub = string.sub
local str_match = string.match
local tonumber = tonumber
local tab_concat = table.concat
local tab_sort = table.sort
local json_encode = cjson.encode
local json_decode = cjson.decode


local _M = { _VERSION = "0.1.0" }

local CGEN = "cgen"
local NAMES = "names"
local SYNCED = "synced"
local GLOBAL = "g"

local dict

-- worker-local
local plans = {}
local global_eff = schema.effective("global", {})
local global_sig = nil
local cgen = -1


function _M.init(cache_dict)
    dict = cache_dict
end


--- check_name(name): instance names are schema names (no '/', not empty)
function _M.check_name(name, level)
    if type(name) ~= "string" or name == "" or name == "." or name == ".." or str_find(name, "/", 1, true) then
        error("instance must be a non-empty string without '/', not '.' or '..' (got " .. schema.show(name) .. ")",
              (level or 1) + 1)
    end
end


--- signature(entries): the same signature kv.split_instances computes from a
-- Consul listing (keys in Consul's byte order)
local function signature(entries)
    local sorted = {}
    for i, e in ipairs(entries) do
        sorted[i] = e
    end
    tab_sort(sorted, function(a, b)
        return a[1] < b[1]
    end)
    local parts = {}
    for i, e in ipairs(sorted) do
        parts[i] = e[1] .. "\0" .. (e[2] or "")
    end
    return ngx_md5(tab_concat(parts, "\0"))
end


local function split_raw(raw)
    local nl = str_find(raw, "\n", 1, true)
    return str_sub(raw, 1, nl - 1), str_sub(raw, nl + 1)
end


local function compile(name, normalised, sig)
    local eff = schema.effective("instance", normalised)
    return selection.compile(name, eff, sig)
end


local function log_bad_once(what, sig, problems, base)
    if not dict:add("bad:" .. what .. ":" .. sig, true, 86400) then
        return
    end
    local msgs = {}
    for i, p in ipairs(problems) do
        msgs[i] = kv.problem_message(p, base)
    end
    ngx_log(ngx_ERR, "[zedcup] ignoring the config of ", what, " in Consul, keeping the last good one: ",
            tab_concat(msgs, "; "))
end


local function store_instance(name, sig, normalised)
    local json = json_encode(normalised)
    local ok, err = dict:set("i:" .. name, sig .. "\n" .. json)
    if not ok then
        return nil, "storing instance " .. name .. " in the shared dict failed: " .. tostring(err)
    end
    return true
end


local function plan_from_raw(name, raw)
    local sig, json = split_raw(raw)
    local normalised = json_decode(json)
    if type(normalised) ~= "table" then
        return nil, "Could not retrieve config: stored config of " .. name .. " unreadable"
    end
    local plan, err = compile(name, normalised, sig)
    if not plan then
        return nil, "Could not retrieve config: " .. err
    end
    return plan
end


-- Loads one instance on a worker cache miss: from the node's shared dict,
-- else (no watcher has synced) straight from Consul.
local function load_plan(name)
    if type(name) ~= "string" or name == "" or name == "." or name == ".." or str_find(name, "/", 1, true) then
        return nil, "Instance not found"
    end
    local raw = dict:get("i:" .. name)
    if raw then
        local plan, err = plan_from_raw(name, raw)
        if plan then
            plans[name] = plan
        end
        return plan, err
    end

    if dict:get(SYNCED) then
        return nil, "Instance not found"
    end

    local base = kv.instance_prefix(name)
    local entries, err = kv.get_tree(base)
    if not entries then
        return nil, "Could not retrieve config: " .. err
    end
    local rel, pending, sig = kv.relative(entries, base)
    if #rel == 0 and not pending then
        return nil, "Instance not found"
    end
    if pending then
        return nil, "Could not retrieve config: instance " .. name .. " is being written"
    end
    local normalised, problems = schema.unflatten("instance", rel)
    if not normalised then
        log_bad_once("instance " .. name, sig, problems, base)
        return nil, "Could not retrieve config: " .. kv.problem_message(problems[1], base)
    end
    local plan
    plan, err = compile(name, normalised, sig)
    if not plan then
        return nil, "Could not retrieve config: " .. err
    end
    store_instance(name, sig, normalised)
    plans[name] = plan
    return plan
end


--- plan(name) -> plan | nil, err   (the hot path: a worker-local lookup)
function _M.plan(name)
    local plan = plans[name]
    if plan then
        return plan
    end
    return load_plan(name)
end


--- plan_local(name) -> plan | nil   (worker, else node; never Consul: for balancer_by_lua)
function _M.plan_local(name)
    local plan = plans[name]
    if plan then
        return plan
    end
    local raw = type(name) == "string" and dict:get("i:" .. name)
    if raw then
        plan = plan_from_raw(name, raw)
        plans[name] = plan
    end
    return plan
end


--- peek(name) -> plan | nil   (worker-local only, never loads)
function _M.peek(name)
    return plans[name]
end


--- find_host(inst, pool_name, host_name) -> pool, host (effective records) | nil
function _M.find_host(inst, pool_name, host_name)
    local plan = plans[inst] or load_plan(inst)
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
-- Every instance this node knows (the watcher's listing; Consul when no
-- watcher has synced), for background jobs such as health checks.
function _M.instances()
    local names = dict:get(SYNCED) and json_decode(dict:get(NAMES) or "{}")
    if type(names) ~= "table" then
        local list, err = _M.list()
        if not list then
            return nil, err
        end
        names = {}
        for _, name in ipairs(list) do
            names[name] = true
        end
    end
    local out = {}
    for name in pairs(names) do
        local plan = _M.plan(name)
        if plan then
            out[name] = plan.config
        end
    end
    return out
end


--- global() -> the effective global config (worker-local, read-only; defaults
-- until one is loaded)
function _M.global()
    return global_eff
end


local function load_global_raw(raw)
    local sig, json = split_raw(raw)
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
    local raw = dict:get(GLOBAL)
    if raw then
        local ok, err = load_global_raw(raw)
        if not ok then
            return nil, "Could not retrieve config: " .. err
        end
        return global_eff
    end
    if dict:get("g_synced") then
        return global_eff
    end
    local base = kv.config_prefix()
    local entries, err = kv.get_tree(base)
    if not entries then
        return nil, "Could not retrieve config: " .. err
    end
    local ok
    ok, err = _M.apply_global(entries)
    if not ok then
        return nil, "Could not retrieve config: " .. err
    end
    return global_eff
end


---------------------------------------------------------------------------
-- Worker refresh
---------------------------------------------------------------------------

--- refresh(): rebuilds this worker's plans and global config when the node's changed
function _M.refresh()
    local g = dict:get(CGEN)
    if g == nil or g == cgen then
        return true
    end
    cgen = g

    local names
    if dict:get(SYNCED) then
        names = json_decode(dict:get(NAMES) or "{}")
    end

    for name, plan in pairs(plans) do
        local raw = dict:get("i:" .. name)
        if not raw then
            if names then
                plans[name] = nil
                state.forget(name)
            end
        elseif type(names) == "table" and not names[name] then
            plans[name] = nil
            state.forget(name)
        else
            local sig = split_raw(raw)
            if sig ~= plan.version then
                local new, err = plan_from_raw(name, raw)
                if new then
                    plans[name] = new
                else
                    ngx_log(ngx_ERR, "[zedcup] keeping the last config of instance ", name, ": ", err)
                end
            end
        end
    end

    local raw = dict:get(GLOBAL)
    if raw then
        local ok, err = load_global_raw(raw)
        if not ok then
            ngx_log(ngx_ERR, "[zedcup] keeping the last global config: ", err)
        end
    end
    return true
end


---------------------------------------------------------------------------
-- Watcher appliers (the node's watching worker)
---------------------------------------------------------------------------

-- an own write's record: index, time (0, 0 when none)
local function own_write(key)
    local v = dict:get(key)
    if not v then
        return 0, 0
    end
    local i, t = str_match(v, "^(%d+) (.+)$")
    return tonumber(i) or 0, tonumber(t) or 0
end


local function synced_ttl()
    return global_eff.consul_wait_time + global_eff.worker_lock_ttl + 5
end


--- instances_alive() / global_alive(): the watchers got an answer (changed
-- or not): what this node holds is still Consul's view
function _M.instances_alive()
    dict:set(SYNCED, true, synced_ttl())
end

function _M.global_alive()
    dict:set("g_synced", true, synced_ttl())
end


-- "kept": set while this node keeps serving instances that a Consul restarted
-- empty no longer lists: JSON { since =, index =, seen =, names = { ... } }
local KEPT = "kept"

--- kept() -> nil | { since = unix time, index = Consul's index then, seen = the
-- index before, names = { instance names kept } }: this node serves instances
-- that Consul forgot when it came back empty (for status pages)
function _M.kept()
    local raw = dict:get(KEPT)
    return raw and json_decode(raw) or nil
end


--- apply_instances(entries, index, info) -> true | nil, err: a listing of <prefix>/instances/
-- A Consul that comes back with its index reset and nothing under the prefix
-- (a -dev agent restarted, a cluster rebuilt without a snapshot) does not wipe
-- what this node serves: the instances are kept, loudly, until anything is
-- written under <prefix>/instances/ again; from that listing on, Consul is
-- authoritative again and instances absent from it are removed.
function _M.apply_instances(entries, index, info)
    index = index or 0
    local base = kv.instances_prefix()
    local groups = kv.split_instances(entries, base)
    local old = json_decode(dict:get(NAMES) or "{}") or {}

    -- This node's own writes ("w:<name>" = "<index> <time>") hold back a listing
    -- that was asked for before the write and is older than it. A listing asked
    -- for after the write but older than it means Consul's index went back.
    local sent_at = info and info.sent_at or 0
    local reset = info and info.reset
    for name in pairs(old) do
        local wi, wt = own_write("w:" .. name)
        if wi > index and wt < sent_at then
            reset = true
        end
    end
    if reset then
        for name in pairs(old) do
            dict:delete("w:" .. name)
        end
        for name in pairs(groups) do
            dict:delete("w:" .. name)
        end
    end
    local function newer_own_write(name)
        local wi = own_write("w:" .. name)
        return wi > index
    end

    if next(groups) == nil and next(old) ~= nil then
        local kept = dict:get(KEPT)
        if kept or reset then
            if not kept then
                local list = {}
                for name in pairs(old) do
                    list[#list + 1] = name
                end
                tab_sort(list)
                local seen = info and info.seen or 0
                dict:set(KEPT, json_encode({ since = ngx.time(), index = index, seen = seen,
                                             names = list }))
                ngx_log(ngx_ERR, "[zedcup] Consul came back empty: nothing under ", base,
                        " and its index went back (to ", index, ")",
                        " (restarted without its data?): keeping the ", #list,
                        " instance(s) this node serves (", tab_concat(list, ", "),
                        "); Consul is followed again once anything is written under ", base)
            end
            dict:set(SYNCED, true, synced_ttl())
            return true
        end
    end
    if next(groups) ~= nil and dict:get(KEPT) then
        dict:delete(KEPT)
        ngx_log(ngx_WARN, "[zedcup] ", base, " holds instances again: following Consul's listing,",
                " instances absent from it are removed")
    end
    local names = {}
    local changed = false

    for name, g in pairs(groups) do
        names[name] = true
        if not old[name] then
            changed = true
        end
        -- a listing older than this node's own last write of the instance
        -- must not undo it
        if not g.pending and not newer_own_write(name) then
            local raw = dict:get("i:" .. name)
            local cur = raw and split_raw(raw)
            if cur ~= g.sig then
                local ibase = base .. name .. "/"
                local normalised, problems = schema.unflatten("instance", g)
                local plan_ok, perr = true, nil
                if normalised then
                    plan_ok, perr = compile(name, normalised, g.sig)
                end
                if not normalised then
                    log_bad_once("instance " .. name, g.sig, problems, ibase)
                elseif not plan_ok then
                    log_bad_once("instance " .. name, g.sig,
                                 { { path = { "pools" }, value = nil, problem = perr } }, ibase)
                else
                    local ok, err = store_instance(name, g.sig, normalised)
                    if not ok then
                        return nil, err
                    end
                    changed = true
                end
            end
        end
    end

    for name in pairs(old) do
        if not names[name] and not newer_own_write(name) then
            dict:delete("i:" .. name)
            changed = true
        end
    end

    for name in pairs(old) do
        if not names[name] and newer_own_write(name) then
            names[name] = true
        end
    end
    dict:set(NAMES, json_encode(names))
    dict:set(SYNCED, true, synced_ttl())
    if changed then
        dict:incr(CGEN, 1, 0)
        _M.refresh()
    end
    return true
end


--- apply_global(entries) -> true | nil, err: a listing of <prefix>/config/
function _M.apply_global(entries, index, info)
    local gwi, gwt = own_write("gw")
    if (info and info.reset) or (index and gwi > index and gwt < (info and info.sent_at or 0)) then
        dict:delete("gw")
        gwi = 0
    end
    local base = kv.config_prefix()
    local rel, pending, sig = kv.relative(entries, base)
    dict:set("g_synced", true, synced_ttl())
    if pending or (index and gwi > index) then
        return true
    end
    local raw = dict:get(GLOBAL)
    if raw and split_raw(raw) == sig then
        return true
    end
    local normalised, problems = schema.unflatten("global", rel)
    if not normalised then
        log_bad_once("the global config", sig, problems, base)
        return true
    end
    local ok, err = dict:set(GLOBAL, sig .. "\n" .. json_encode(normalised))
    if not ok then
        return nil, "storing the global config failed: " .. tostring(err)
    end
    dict:incr(CGEN, 1, 0)
    _M.refresh()
    return true
end


---------------------------------------------------------------------------
-- Writers
---------------------------------------------------------------------------

--- write_instance(name, config) -> true | nil, err
function _M.write_instance(name, conf)
    local normalised, err = schema.check("instance", conf)
    if not normalised then
        return nil, err
    end
    local plan
    plan, err = compile(name, normalised, "")
    if not plan then
        return nil, err
    end

    local entries = schema.flatten("instance", normalised)
    local index
    index, err = kv.write_tree(kv.instance_prefix(name), entries, { kv.state_prefix(name) })
    if not index then
        return nil, err
    end
    dict:set("w:" .. name, index .. " " .. ngx.now())

    -- this node sees its own write at once; the watcher confirms it
    local sig = signature(entries)
    plan.version = sig
    store_instance(name, sig, normalised)
    local names = json_decode(dict:get(NAMES) or "{}") or {}
    names[name] = true
    dict:set(NAMES, json_encode(names))
    dict:incr(CGEN, 1, 0)
    plans[name] = plan
    state.forget(name)
    return true
end


--- remove_instance(name) -> true | nil, err
function _M.remove_instance(name)
    local ok, err = kv.txn({
        kv.delete_tree_op(kv.instance_prefix(name)),
        kv.delete_tree_op(kv.state_prefix(name)),
    })
    if not ok then
        return nil, "removing instance " .. name .. " failed: " .. tostring(err)
    end
    dict:delete("i:" .. name)
    local names = json_decode(dict:get(NAMES) or "{}") or {}
    names[name] = nil
    dict:set(NAMES, json_encode(names))
    dict:incr(CGEN, 1, 0)
    plans[name] = nil
    state.forget(name)
    return true
end


--- write_global(config) -> true | nil, err
function _M.write_global(conf)
    local normalised, err = schema.check("global", conf)
    if not normalised then
        return nil, err
    end
    local entries = schema.flatten("global", normalised)
    local index
    index, err = kv.write_tree(kv.config_prefix(), entries)
    if not index then
        return nil, err
    end
    dict:set("gw", index .. " " .. ngx.now())
    dict:set(GLOBAL, signature(entries) .. "\n" .. json_encode(normalised))
    dict:incr(CGEN, 1, 0)
    _M.refresh()
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
