-- zedcup.weights: the weights hosts get at run time, beside their config's:
--
--   slow start  pool.slow_start: a host that comes back (its down mark cleared,
--               zedcup.store's up_at) ramps its weight up linearly over
--               slow_start seconds instead of taking a full share at once
--   agent       a healthcheck of type agent answering `NN%` (or `drain`) sets
--               the host's weight to that part of its configured weight,
--               cluster-wide: the checker keeps it in Consul at
--               <prefix>/state/<inst>/<pool>/<host>/weight (a fraction as
--               decimal text; absent = 1), every node reads it with the state
--
--   weights.merge(instance, conf) -> conf with those weights applied (what
--       zedcup.config compiles; the same table when none applies)
--   weights.agent_result(instance, pool, host, info) -> from the checker
--   weights.run_workers()  in init_worker: one worker per node has the plans of
--       an instance recompiled when a ramp moves a step or an agent weight changes
--
-- While any host of a pool has a run-time weight, every weight of the pool is
-- multiplied by SCALE and each such host's by its fraction (at least 1), so the
-- shares keep their ratios at a fine grain. `drain` is the smallest weight
-- (1 / SCALE of the configured one), not 0: the host stays checked and in use
-- for nothing much until the agent says otherwise.

local kv = require "zedcup.kv"
local store = require "zedcup.store"
local timer = require "zedcup.timer"
local cjson = require "cjson.safe"

local ngx = ngx
local ngx_now = ngx.now
local ngx_log = ngx.log
local WARN = ngx.WARN
local NOTICE = ngx.NOTICE
local pairs = pairs
local ipairs = ipairs
local require = require
local type = type
local tonumber = tonumber
local tostring = tostring
local concat = table.concat
local math_floor = math.floor
local math_max = math.max
local math_abs = math.abs
local json_decode = cjson.decode


local _M = { _VERSION = "0.1.0" }

local SCALE = 100      -- weight grain while a pool has run-time weights
local STEPS = 10       -- a slow start moves in this many steps
local TICK = store.POLL_INTERVAL  -- s between looks at the generations
local RAMP_TICK = 0.25            -- s between looks at ramps (and anything else)
local MIN_FRACTION = 1 / SCALE

-- the node's state snapshot, decoded once per change of its JSON
local snap_raw, snap = nil, {}

local function snapshot()
    local raw = store.state_raw()
    if raw ~= snap_raw then
        snap_raw = raw
        local t = raw and json_decode(raw)
        snap = type(t) == "table" and t or {}
    end
    return snap
end


local function agent_fraction(inst, pool, host)
    local ti = snapshot()[inst]
    local st = ti and ti[pool] and ti[pool][host]
    local f = st and tonumber(st.weight)
    if not f or f >= 1 or f < 0 then
        return nil
    end
    return math_max(f, MIN_FRACTION)
end


-- -> the slow start's fraction (in steps) while the host ramps, else nil
local function ramp(inst, pool, host, now)
    local ss = pool.slow_start
    if type(ss) ~= "number" or ss <= 0 then
        return nil
    end
    local up = store.up_at(store.host_key(inst, pool.name, host.name))
    if not up or up <= 0 then
        return nil
    end
    local f = (now - up) / ss
    if f >= 1 or f < 0 then
        return nil
    end
    return math_max(math_floor(f * STEPS), 1) / STEPS
end


-- -> fraction (nil = full weight) of a host now
local function fraction(inst, pool, host, now)
    local fs = ramp(inst, pool, host, now)
    local fa = agent_fraction(inst, pool.name, host.name)
    if not fs and not fa then
        return nil
    end
    return (fs or 1) * (fa or 1)
end


--- merge(name, conf) -> conf
function _M.merge(name, conf)
    local pools = conf and conf.pools
    local now = ngx_now()
    local out
    for i, pool in ipairs(pools or {}) do
        local fractions, any = {}, false
        for j, host in ipairs(pool.hosts or {}) do
            local f = host.name and pool.name and fraction(name, pool, host, now)
            fractions[j] = f
            any = any or f ~= nil
        end
        if any then
            if not out then
                out = {}
                for k, v in pairs(conf) do
                    out[k] = v
                end
                out.pools = {}
                for k, p in ipairs(pools) do
                    out.pools[k] = p
                end
            end
            local p = {}
            for k, v in pairs(pool) do
                p[k] = v
            end
            p.hosts = {}
            for j, host in ipairs(pool.hosts) do
                local h = {}
                for k, v in pairs(host) do
                    h[k] = v
                end
                local w = (host.weight or 1) * SCALE
                local f = fractions[j]
                if f then
                    w = math_max(1, math_floor(w * f))
                end
                h.weight = w
                p.hosts[j] = h
            end
            out.pools[i] = p
        end
    end
    return out or conf
end


-- -> true, the weight fraction the agent asks for (nil: full) when it is not
-- the cluster's yet | false
local function agent_change(inst, pool, host, info)
    if type(info) ~= "table" then
        return false
    end
    local want = info.weight
    if want == nil or want >= 1 then
        want = nil
    end
    local ti = snapshot()[inst]
    local st = ti and ti[pool] and ti[pool][host]
    local have = st and tonumber(st.weight)
    if (want == nil and have == nil) or (want and have and math_abs(want - have) < 1e-6) then
        return false
    end
    return true, want
end


--- agent_changed(inst, pool, host, info) -> whether the checker's agent answer
-- asks for another weight than the cluster's (no I/O)
function _M.agent_changed(inst, pool, host, info)
    return (agent_change(inst, pool, host, info))
end


--- agent_result(inst, pool, host, info): the checker's agent answer; keeps
-- the cluster's weight key in step (written only when it changes)
function _M.agent_result(inst, pool, host, info)
    local changed, want = agent_change(inst, pool, host, info)
    if not changed then
        return true
    end
    local key = kv.state_key(inst, pool, host, "weight")
    local ok, err
    if want == nil then
        ok, err = kv.delete(key)
    else
        ok, err = kv.put(key, tostring(want))
    end
    if not ok then
        return nil, "weights: " .. key .. ": " .. tostring(err)
    end
    ngx_log(NOTICE, "[zedcup] agent weight of ", inst, "/", pool, "/", host, ": ",
            want and (want * 100 .. "%") or "full")
    return true
end


-- a signature of the run-time weights of an instance, "" when none
local function signature(name, conf, now)
    local parts = {}
    for _, pool in ipairs(conf.pools or {}) do
        for _, host in ipairs(pool.hosts or {}) do
            local f = fraction(name, pool, host, now)
            if f then
                parts[#parts + 1] = pool.name .. "/" .. host.name .. "=" .. f
            end
        end
    end
    return concat(parts, ",")
end


local seen = {}  -- worker-local: instance -> the signature its plans have
local seen_gens = ""    -- the state and config generations last looked at
local next_full = 0     -- when ramps under way need their next look


local function tick()
    local session = require "zedcup.session"
    if not session.worker_lock("weights", 10) then
        seen, seen_gens = {}, ""
        return true
    end
    -- a host coming back moves the state generation: look at once; a ramp
    -- under way moves on its own: look every RAMP_TICK
    local now = ngx_now()
    local gens = tostring(store.state_gen()) .. "/" .. tostring(store.config_gen())
    if gens == seen_gens and now < next_full then
        return true
    end
    seen_gens, next_full = gens, now + RAMP_TICK
    local insts = require("zedcup.discovery").local_instances()
    for name, conf in pairs(insts) do
        local sig = signature(name, conf, now)
        if sig ~= (seen[name] or "") then
            seen[name] = sig
            local ok, err = require("zedcup.discovery").recompile(name)
            if ok == nil and err then
                ngx_log(WARN, "[zedcup] weights: ", name, ": ", err)
            end
        end
    end
    return true
end


function _M.run_workers()
    return timer.every("zedcup weights", function() return TICK end, tick)
end


return _M
