-- zedcup: zero-configuration upstream load balancing and failover for
-- OpenResty, with its configuration and shared state in Consul.
--
-- The public API of the seed README: init, initted, run_workers, config,
-- configure, configure_instance, remove_instance, instance_list, bind,
-- create_handler; plus balance(instance, key?) for balancer_by_lua and log()
-- for log_by_lua (zedcup.balance).
-- Module map: schema (config schema), kv (Consul keys and writes), store
-- (every shared-dict key of the node and the change protocol), config
-- (reading configs) + config.apply (watcher answers) + config.write (this
-- node's writes), select + balancer/* (host selection),
-- handler (per-request object), balance (balancer_by_lua), report (what a try
-- did, both paths), state (failure accounting, host state),
-- events, watch (one watcher per node and prefix), session (the node's Consul
-- session, cluster and worker locks, clean stops), healthcheck, timer
-- (background jobs).

local balance = require "zedcup.balance"
local config = require "zedcup.config"
local events = require "zedcup.events"
local handler = require "zedcup.handler"
local healthcheck = require "zedcup.healthcheck"
local kv = require "zedcup.kv"
local schema = require "zedcup.schema"
local session = require "zedcup.session"
local state = require "zedcup.state"

local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local shared = ngx.shared
local type = type
local pairs = pairs
local ipairs = ipairs
local require = require
local tostring = tostring
local error = error
local str_find = string.find

local config_plan = config.plan
local handler_new = handler.new


local _M = {
    _VERSION = schema.VERSION,
}

local DEFAULTS = {
    prefix = "zedcup",
    consul = {},
    dicts = {
        cache = "zedcup_cache",
        locks = "zedcup_locks",
        ipc = "zedcup_ipc",
    },
}

local initted = false
local opts -- merged init options


--- init(opts?) -> true | false, err
-- opts: prefix, consul, dicts (the README's), node_name, and builtin_deps
-- (true: use zedcup's built-in HTTP client, Consul client, cache and lock even
-- when lua-resty-http/consul/mlcache/lock are installed; see zedcup.deps).
function _M.init(user)
    if user ~= nil and type(user) ~= "table" then
        error("opts must be a table (got " .. type(user) .. ")", 2)
    end
    user = user or {}
    if user.prefix ~= nil and (type(user.prefix) ~= "string" or user.prefix == ""
                               or str_find(user.prefix, "/$")) then
        error("opts.prefix must be a non-empty string not ending in '/' (got " .. tostring(user.prefix) .. ")", 2)
    end
    if user.prefix ~= nil then
        -- key paths are URLs: empty, '.' and '..' segments would name other keys
        -- (as zedctl's Layout.for_prefix refuses them)
        for seg in (user.prefix .. "/"):gmatch("([^/]*)/") do
            if seg == "" or seg == "." or seg == ".." then
                error("opts.prefix must not have empty, '.' or '..' segments (got " .. user.prefix .. ")", 2)
            end
        end
    end
    if user.consul ~= nil and type(user.consul) ~= "table" then
        error("opts.consul must be a table (got " .. type(user.consul) .. ")", 2)
    end
    if user.dicts ~= nil and type(user.dicts) ~= "table" then
        error("opts.dicts must be a table (got " .. type(user.dicts) .. ")", 2)
    end
    if user.builtin_deps ~= nil and type(user.builtin_deps) ~= "boolean" then
        error("opts.builtin_deps must be a boolean (got " .. type(user.builtin_deps) .. ")", 2)
    end

    local o = {
        builtin_deps = user.builtin_deps,
        prefix = user.prefix or DEFAULTS.prefix,
        consul = user.consul or DEFAULTS.consul,
        dicts = {},
        node_name = user.node_name,
    }
    for k, v in pairs(DEFAULTS.dicts) do
        o.dicts[k] = user.dicts and user.dicts[k] or v
    end
    for _, k in ipairs({ "cache", "locks", "ipc" }) do
        if not shared[o.dicts[k]] then
            return false, "[zedcup] " .. k .. " dictionary not found: " .. tostring(o.dicts[k])
        end
    end

    -- Choose the building blocks here, in init_by_lua, so the choice is logged
    -- once and forked into every worker. builtin_deps = true: zedcup's own HTTP
    -- client, Consul client, cache and lock even when lua-resty-* are installed.
    require("zedcup.deps").init({ builtin = user.builtin_deps })

    -- host names: the resolver in opts.resolver, else the system's
    require("zedcup.resolver").configure(user.resolver)

    kv.init(o.prefix, o.consul)
    require("zedcup.store").init(o.dicts)
    config.init()

    session.init(o)
    require("zedcup.node").init()

    opts = o
    initted = true
    return true
end


--- initted() -> bool
function _M.initted()
    return initted
end


--- options() -> the merged init options (read-only)
function _M.options()
    return opts
end


local function update()
    local ok, err = config.refresh()
    if not ok then
        return nil, err
    end
    return state.refresh()
end


local settings = {}
local function watch_settings()
    local g = config.global()
    settings.wait = g.consul_wait_time
    settings.lock_ttl = g.worker_lock_ttl
    -- a watch retries at most 1 s apart, so a change made after Consul
    -- returns reaches every worker within 2 s of its first answer
    settings.backoff_cap = math.min(g.watcher_interval, 1)
    return settings
end




-- failures are pushed to Consul this often (s), batched
local SYNC_INTERVAL = 0.25


--- run_workers(): starts this worker's background jobs (init_worker_by_lua)
function _M.run_workers()
    if not initted then
        ngx_log(ngx_ERR, "[zedcup] run_workers() called before init()")
        return nil
    end
    local timer = require "zedcup.timer"
    local watch = require "zedcup.watch"

    -- every worker acts on the node's changes within POLL_INTERVAL (zedcup.store)
    timer.every("zedcup update", require("zedcup.store").POLL_INTERVAL, update)
    -- a failed sync retries one interval later: queued failures go out as
    -- soon as Consul is back
    timer.every("zedcup errors sync", SYNC_INTERVAL, state.sync)
    local apply = require "zedcup.config.apply"
    watch.start("config", kv.config_prefix, apply.apply_global, watch_settings, apply.global_alive)
    watch.start("instances", kv.instances_prefix, apply.apply_instances, watch_settings,
                apply.instances_alive)
    watch.start("state", kv.state_prefix, state.apply, watch_settings)

    session.run_workers()
    healthcheck.run_workers()
    require("zedcup.discovery").run_workers()  -- pools with a Consul service
    require("zedcup.weights").run_workers()  -- slow start ramps, agent weights
    require("zedcup.counters").run_workers()
    require("zedcup.node").run_workers()
    return nil
end


--- config() -> the effective global config | nil, err (cached: read-only)
function _M.config()
    return config.load_global()
end


--- configure(config) -> true | nil, err
function _M.configure(conf)
    return require("zedcup.config.write").global(conf)
end


local function bad_name(instance)
    if type(instance) ~= "string" then
        error("instance must be a string (got " .. type(instance) .. ")", 3)
    end
    if not schema.valid_name(instance) then
        return "instance: must be a non-empty name without '/', not '.' or '..' (got "
               .. schema.show(instance) .. ")"
    end
    return nil
end


--- configure_instance(instance, config) -> true | nil, err
function _M.configure_instance(instance, conf)
    local err = bad_name(instance)
    if err then
        return nil, err
    end
    return require("zedcup.config.write").instance(instance, conf)
end


--- remove_instance(instance) -> true | nil, err
function _M.remove_instance(instance)
    local err = bad_name(instance)
    if err then
        return nil, err
    end
    return require("zedcup.config.write").remove_instance(instance)
end


--- instance_list() -> { "a", a = true, ... } | nil, err
function _M.instance_list()
    return config.list()
end


--- bind(event, callback) -> true | nil, err (this worker's global listeners)
function _M.bind(event, callback)
    return events.bind(event, callback)
end


--- set_host_state(instance, pool, host, "down" | "up", reason?) -> true | nil, err
--- set_host_weight(instance, pool, host, weight) -> true | nil, err
-- cluster-wide through Consul, the keys zedctl host down|up|weight writes
-- (see zedcup.hostops)
function _M.set_host_state(instance, pool, host, state, reason)
    return require("zedcup.hostops").set_host_state(instance, pool, host, state, reason)
end

function _M.set_host_weight(instance, pool, host, weight)
    return require("zedcup.hostops").set_host_weight(instance, pool, host, weight)
end


--- register_check(name, fn) -> true: a check for healthcheck.type "custom",
-- custom = name; fn(host, hc) -> ok, err runs in the health checker's timer
-- (see zedcup.check.custom). Call it in init_by_lua.
function _M.register_check(name, fn)
    return require("zedcup.check.custom").register(name, fn)
end


--- create_handler(instance, opts?) -> handler | nil, err
-- opts.key: the request's key for hashing methods (default: the pool's hash_key)
function _M.create_handler(instance, o)
    local plan, err = config_plan(instance)
    if not plan then
        if type(instance) ~= "string" then
            error("instance must be a string (got " .. type(instance) .. ")", 2)
        end
        return nil, err
    end
    local key
    if o ~= nil then
        if type(o) ~= "table" then
            error("opts must be a table (got " .. type(o) .. ")", 2)
        end
        key = o.key
        if key ~= nil and type(key) ~= "string" then
            error("opts.key must be a string (got " .. type(key) .. ")", 2)
        end
    end
    -- not a tail call: LuaJIT then compiles the request path in one trace
    local h = handler_new(plan, key)
    return h
end


---------------------------------------------------------------------------
-- Observability (README "status, dashboard, metrics"): this node's memory only
---------------------------------------------------------------------------

--- status(instance?) -> table | nil, err: this node's view (zedcup.status)
function _M.status(instance)
    return require("zedcup.status").status(instance)
end


--- status_page(): content_by_lua: JSON or the live HTML dashboard (zedcup.dashboard)
function _M.status_page()
    return require("zedcup.dashboard").status_page()
end


--- metrics(): content_by_lua: the Prometheus text format (zedcup.metrics)
function _M.metrics()
    return require("zedcup.metrics").metrics()
end


--- balance(instance, key?) -> true | nil, err: in balancer_by_lua (zedcup.balance)
_M.balance = balance.balance

--- log(): in log_by_lua, accounts for the tries of balance() (zedcup.balance)
_M.log = balance.log

-- ngx.exit() this in balancer_by_lua when balance() fails: nginx answers 502
_M.NO_PEER = balance.NO_PEER


return _M
