-- zedcup.slowstart: pool.slow_start, a host that comes back (its down mark
-- cleared, zedcup.store's up_at) ramps its weight up linearly over
-- slow_start seconds instead of taking a full share at once.
--
--   slowstart.merge(instance, conf) -> conf with the weights of ramping hosts
--       lowered (what zedcup.config compiles; the same table when nothing ramps)
--   slowstart.run_workers()         in init_worker: one worker per node has the
--       plans of instances with ramping hosts recompiled as the ramp moves (in
--       STEPS steps), and once more when it ends
--
-- While a host of a pool ramps, every weight of the pool is multiplied by
-- STEPS and the ramping host's by the fraction of slow_start passed (at least
-- 1), so shares keep their ratios at a finer grain.

local store = require "zedcup.store"
local timer = require "zedcup.timer"

local ngx = ngx
local ngx_now = ngx.now
local ngx_log = ngx.log
local WARN = ngx.WARN
local pairs = pairs
local ipairs = ipairs
local require = require
local type = type
local concat = table.concat
local math_floor = math.floor
local math_max = math.max


local _M = { _VERSION = "0.1.0" }

local STEPS = 10       -- weight grain while a pool ramps
local TICK = 0.25      -- s between looks at the ramps


-- -> fraction in (0, 1) while the host ramps, else nil
local function ramp(inst, pool, host, now)
    local up = store.up_at(store.host_key(inst, pool.name, host.name))
    if not up or up <= 0 then
        return nil
    end
    local f = (now - up) / pool.slow_start
    if f >= 1 or f < 0 then
        return nil
    end
    return f
end


--- merge(name, conf) -> conf
function _M.merge(name, conf)
    local pools = conf and conf.pools
    local now
    local out
    for i, pool in ipairs(pools or {}) do
        local ss = pool.slow_start
        if type(ss) == "number" and ss > 0 then
            now = now or ngx_now()
            local fractions, any = {}, false
            for j, host in ipairs(pool.hosts or {}) do
                local f = host.name and ramp(name, pool, host, now)
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
                    local w = (host.weight or 1) * STEPS
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
    end
    return out or conf
end


-- a signature of every ramp of the instance (its step), "" when none
local function ramps_of(name, conf, now)
    local parts = {}
    for _, pool in ipairs(conf.pools or {}) do
        local ss = pool.slow_start
        if type(ss) == "number" and ss > 0 then
            for _, host in ipairs(pool.hosts or {}) do
                local f = ramp(name, pool, host, now)
                if f then
                    parts[#parts + 1] = pool.name .. "/" .. host.name .. "=" .. math_floor(f * STEPS)
                end
            end
        end
    end
    return concat(parts, ",")
end


local seen = {}  -- worker-local: instance -> the ramps signature its plans have


local function tick()
    local session = require "zedcup.session"
    if not session.worker_lock("slow_start", 10) then
        seen = {}
        return true
    end
    local config = require "zedcup.config"
    local insts = config.instances()
    if not insts then
        return true
    end
    local now = ngx_now()
    for name, conf in pairs(insts) do
        -- conf is the compiled (merged) config: its pools carry slow_start and
        -- the hosts' names; ramps are computed from up_at, not from its weights
        local sig = ramps_of(name, conf, now)
        if sig ~= (seen[name] or "") then
            seen[name] = sig
            local ok, err = require("zedcup.discovery").recompile(name)
            if ok == nil and err then
                ngx_log(WARN, "[zedcup] slow_start: ", name, ": ", err)
            end
        end
    end
    return true
end


function _M.run_workers()
    return timer.every("zedcup slow_start", function() return TICK end, tick)
end


return _M
