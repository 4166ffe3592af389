-- zedcup.discovery: the hosts of a pool from Consul's service catalog.
--
-- A pool's `service` = { name, tag (a string or a list: all must match),
-- datacenter, node_meta = { key = value }, passing_only (false) } is read from
-- /v1/health/service/<name>. Each instance becomes a host:
--
--   name    the service ID (a '/' in it becomes '_': host names are key segments)
--   host    the service's address, else its node's
--   port    the service's port
--   weight  Weights.Passing, or Weights.Warning while a check warns
--   up      false while a check is critical (or warns with a warning weight of 0)
--   status  "passing" | "warning" | "critical" (the worst check of the instance)
--   source  "consul:<service name>"
--
-- passing_only = true asks Consul for passing instances only (`?passing`).
--
--   discovery.fetch(service, index?, wait?, client?) -> hosts, index | nil, err
--   discovery.hosts(entries, service)                -> hosts (sorted by name)
--   discovery.merge(instance, conf)                  -> conf with each service pool's
--       discovered hosts added to its static ones (what zedcup.config compiles)
--   discovery.run_workers()                          in init_worker: one worker per
--       node watches every service pool with blocking queries; a change is stored
--       node-wide (zedcup.store) and reaches every worker like a config change
--   discovery.tracker(keep_for, what)                -> t; t:update(hosts | nil, now)
--       -> the hosts to use, changed: a service whose instances all vanish keeps
--          its last hosts for keep_for seconds (logged), then goes empty; a
--          failed fetch (nil) keeps them as long as it lasts.

local kv = require "zedcup.kv"
local store = require "zedcup.store"
local timer = require "zedcup.timer"
local cjson = require "cjson.safe"

local ngx = ngx
local ngx_now = ngx.now
local ngx_log = ngx.log
local WARN = ngx.WARN
local NOTICE = ngx.NOTICE
local gsub = string.gsub
local sort = table.sort
local tonumber = tonumber
local tostring = tostring
local ipairs = ipairs
local pairs = pairs
local type = type
local setmetatable = setmetatable
local error = error
local require = require
local json_encode = cjson.encode
local json_decode = cjson.decode
local spawn = ngx.thread.spawn
local wait = ngx.thread.wait
local kill = ngx.thread.kill
local ngx_sleep = ngx.sleep
local worker_exiting = ngx.worker.exiting


local _M = { _VERSION = "0.1.0" }

local RANK = { passing = 1, warning = 2, critical = 3, maintenance = 3 }


local function status_of(checks)
    local worst, rank = "passing", 1
    for _, c in ipairs(checks or {}) do
        local r = RANK[c.Status] or 3
        if r > rank then
            worst, rank = c.Status == "maintenance" and "critical" or c.Status, r
        end
    end
    return worst
end


function _M.hosts(entries, service)
    local out = {}
    local source = "consul:" .. service.name
    for _, e in ipairs(entries or {}) do
        local svc, node = e.Service or {}, e.Node or {}
        local addr = svc.Address
        if type(addr) ~= "string" or addr == "" then
            addr = node.Address
        end
        local status = status_of(e.Checks)
        local weights = type(svc.Weights) == "table" and svc.Weights or {}
        local weight = tonumber(weights.Passing) or 1
        if status == "warning" then
            weight = tonumber(weights.Warning) or 1
        end
        if type(svc.ID) == "string" and type(addr) == "string" and addr ~= ""
           and tonumber(svc.Port) and svc.Port > 0 then
            out[#out + 1] = {
                name = (gsub(svc.ID, "/", "_")),
                host = addr,
                port = svc.Port,
                weight = weight > 0 and weight or 1,
                up = status ~= "critical" and weight > 0,
                status = status,
                source = source,
            }
        end
    end
    sort(out, function(a, b) return a.name < b.name end)
    return out
end


local function args_of(service, index, wait)
    local args = {}
    if service.passing_only then
        args.passing = true
    end
    local tag = service.tag
    if type(tag) == "string" then
        args.tag = tag
    elseif type(tag) == "table" and #tag > 0 then
        args.tag = tag  -- repeated: every tag must match
    end
    if service.datacenter then
        args.dc = service.datacenter
    end
    if type(service.node_meta) == "table" then
        local metas = {}
        for k, v in pairs(service.node_meta) do
            metas[#metas + 1] = k .. ":" .. tostring(v)
        end
        sort(metas)
        if #metas > 0 then
            args["node-meta"] = metas
        end
    end
    if index and index > 0 then
        args.index = index
        args.wait = wait or 60
    end
    return args
end
_M.args = args_of


function _M.fetch(service, index, wait, c)
    if type(service) ~= "table" or type(service.name) ~= "string" or service.name == "" then
        error("service.name must be a non-empty string", 2)
    end
    c = c or kv.client()  -- the client adds a blocking query's wait to its read timeout
    local res, err = c:get("/health/service/" .. ngx.escape_uri(service.name), args_of(service, index, wait))
    if not res then
        return nil, "reading service " .. service.name .. " failed: " .. tostring(err)
    end
    if res.status ~= 200 or type(res.body) ~= "table" then
        local body = type(res.body) == "string" and res.body:match("^[^\r\n]*") or ""
        return nil, "reading service " .. service.name .. ": Consul answered " .. tostring(res.status)
                    .. (body ~= "" and (" " .. body) or "")
    end
    return _M.hosts(res.body, service), tonumber(res.headers["X-Consul-Index"])
end


local tracker_mt = { __index = {} }

--- t:update(hosts | nil, now?) -> hosts to use, changed (bool)
function tracker_mt.__index.update(t, hosts, now)
    now = now or ngx_now()
    if hosts and #hosts > 0 then
        if t.since then
            ngx_log(NOTICE, "[zedcup] discovery: ", t.what, " has instances again")
        end
        t.last, t.since = hosts, nil
        return hosts, true
    end
    if not hosts then
        return t.last or {}, false  -- Consul unreachable: the last good hosts stay
    end
    if not t.last or #t.last == 0 then
        local changed = t.last == nil
        t.last = hosts
        return hosts, changed
    end
    if not t.since then
        t.since = now
        ngx_log(WARN, "[zedcup] discovery: ", t.what, " has no instances; keeping its last ",
                #t.last, " hosts for ", t.keep_for, " s")
        return t.last, false
    end
    if now - t.since >= t.keep_for then
        ngx_log(WARN, "[zedcup] discovery: ", t.what, " still empty after ", t.keep_for, " s: dropping its hosts")
        t.last, t.since = {}, nil
        return t.last, true
    end
    return t.last, false
end


function _M.tracker(keep_for, what)
    return setmetatable({ keep_for = keep_for or 60, what = what or "service" }, tracker_mt)
end


---------------------------------------------------------------------------
-- Into the config: merge
---------------------------------------------------------------------------

local HOST_FIELDS = { "name", "host", "port", "weight", "up" }

--- merge(name, conf) -> conf (the same table when no pool has a service)
function _M.merge(name, conf)
    local pools = conf and conf.pools
    local any = false
    for _, pool in ipairs(pools or {}) do
        if pool.service then
            any = true
            break
        end
    end
    if not any then
        return conf
    end
    local out = {}
    for k, v in pairs(conf) do
        out[k] = v
    end
    out.pools = {}
    for i, pool in ipairs(pools) do
        if pool.service then
            local p = {}
            for k, v in pairs(pool) do
                p[k] = v
            end
            local hosts, names = {}, {}
            for j, h in ipairs(pool.hosts or {}) do
                hosts[#hosts + 1] = h
                names[h.name or tostring(j)] = true
            end
            local found = json_decode(store.discovered(name, pool.name or tostring(i)) or "[]")
            for _, h in ipairs(type(found) == "table" and found or {}) do
                if not names[h.name] then  -- a static host of that name wins
                    local rec = {}
                    for _, f in ipairs(HOST_FIELDS) do
                        rec[f] = h[f]
                    end
                    hosts[#hosts + 1] = rec
                    names[h.name] = true
                end
            end
            p.hosts = hosts
            out.pools[i] = p
        else
            out.pools[i] = pool
        end
    end
    return out
end


---------------------------------------------------------------------------
-- Watching: one worker per node, one loop per service pool
---------------------------------------------------------------------------

local MANAGE_INTERVAL = 0.25  -- s between looks at which pools have a service
local STANDBY = 0.5        -- s a worker without the lock waits before looking again

local running = {}  -- worker-local: "<inst>/<pool>" -> true (a loop runs)
local watches = {}  -- worker-local: "<inst>/<pool>" -> { index, tracker, sig }


local function job_name(key)
    return "zedcup discovery " .. key
end


-- the effective service of a pool as this worker's config has it
local function service_of(inst, pool_name)
    local plan = require("zedcup.config").plan_local(inst)
    if not plan then
        return nil
    end
    for _, pool in ipairs(plan.config.pools) do
        if pool.name == pool_name then
            return pool.service
        end
    end
    return nil
end


-- every worker recompiles the instance: its L2 value set again (same config,
-- dgen + 1) invalidates the L1 plans, and the config generation makes every
-- worker apply the invalidation
local function recompile(inst)
    local configs = store.configs()
    local _, _, v = configs:peek(inst)
    if type(v) ~= "table" or v.err or not v.conf then
        return
    end
    local ok, err = configs:set(inst, nil, { name = v.name, sig = v.sig, conf = v.conf,
                                             dgen = (v.dgen or 0) + 1 })
    if not ok then
        ngx_log(WARN, "[zedcup] discovery: ", inst, ": ", err)
        return nil, err
    end
    store.config_changed()
    return true
end
-- also for zedcup.weights: whatever changes what a plan merges in
_M.recompile = recompile


local function exit_watch()
    while not worker_exiting() do
        ngx_sleep(0.2)
    end
    return "exiting"
end


local function step(inst, pool_name)
    local key = inst .. "/" .. pool_name
    local service = service_of(inst, pool_name)
    if not service then
        ngx_sleep(STANDBY)
        return true
    end
    local g = require("zedcup.config").global()
    local wait_s = math.min(g.consul_wait_time, 300)
    local session = require "zedcup.session"
    local mine, lerr = session.worker_lock("discovery:" .. key, wait_s + wait_s / 16 + 15)
    local w = watches[key]
    if not mine then
        watches[key] = nil  -- the next holder starts afresh
        if lerr then
            return nil, lerr
        end
        ngx_sleep(STANDBY)
        return true
    end

    local sig = json_encode(service)
    if not w or w.sig ~= sig then
        local stored = json_decode(store.discovered(inst, pool_name) or "null")
        w = { index = 0, sig = sig, tracker = _M.tracker(service.keep_for, "service " .. service.name
                                                          .. " of " .. key) }
        w.tracker.last = type(stored) == "table" and stored or nil
        watches[key] = w
    end

    -- a service kept after it emptied is looked at again when keep_for ends
    local since = w.tracker.since
    if since then
        wait_s = math.max(math.min(wait_s, since + w.tracker.keep_for - ngx_now()), 0.1)
    end
    local q = spawn(_M.fetch, service, w.index, wait_s)
    local e = spawn(exit_watch)
    local ok, hosts, index = wait(q, e)
    kill(q)
    kill(e)
    if worker_exiting() then
        return true
    end
    if not ok or not hosts then
        w.index = 0
        w.tracker:update(nil)
        return nil, "discovery " .. key .. ": " .. tostring(index or hosts)
    end
    if not index or index < w.index then
        index = 0  -- Consul's index went back: start over
    end
    w.index = index

    local use = w.tracker:update(hosts)
    local text = json_encode(use)
    if text ~= store.discovered(inst, pool_name) then
        local sok, serr = store.set_discovered(inst, pool_name, text)
        if not sok then
            return nil, serr
        end
        ngx_log(NOTICE, "[zedcup] discovery: ", key, ": ", #use, " host(s) from service ", service.name)
        recompile(inst)
    end
    return true
end


--- local_instances() -> { [name] = effective config }: what this node serves,
-- from its own memory (never Consul: background jobs must not add to an outage)
function _M.local_instances()
    local config = require "zedcup.config"
    local out = {}
    for name in pairs(store.names() or {}) do
        local plan = config.plan_local(name)
        if plan then
            out[name] = plan.config
        end
    end
    return out
end


local function manage()
    local insts = _M.local_instances()
    local want = {}
    for inst, conf in pairs(insts) do
        for _, pool in ipairs(conf.pools or {}) do
            if pool.service then
                want[inst .. "/" .. pool.name] = { inst, pool.name }
            end
        end
    end
    for key, ip in pairs(want) do
        if not running[key] then
            local ok, err = timer.loop({ name = job_name(key), min_gap = 0.1 }, step, ip[1], ip[2])
            if ok then
                running[key] = true
            else
                ngx_log(WARN, "[zedcup] discovery: ", key, ": ", err)
            end
        end
    end
    for key in pairs(running) do
        if not want[key] then
            timer.stop(job_name(key))
            running[key] = nil
            watches[key] = nil
        end
    end
    return true
end


--- run_workers(): in init_worker (zedcup.run_workers calls it)
function _M.run_workers()
    return timer.every("zedcup discovery", function() return MANAGE_INTERVAL end, manage)
end


return _M
