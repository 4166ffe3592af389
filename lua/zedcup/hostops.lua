-- zedcup.hostops: runtime host operations from Lua, cluster-wide through
-- Consul, writing the keys `zedctl host down|up|weight` writes:
--
--   set_host_state(instance, pool, host, "down" | "up", reason?) -> true | nil, err
--       "down": <prefix>/state/<inst>/<pool>/<host>/admin_down = reason
--       (Flags = unix time); "up": that key deleted. An operator hold: health
--       checks and revival never bring the host back, only "up" does.
--   set_host_weight(instance, pool, host, weight) -> true | nil, err
--       <prefix>/instances/<inst>/pools/<p>/hosts/<h>/weight = weight
--
-- pool and host are names, or 1-based indexes given as numbers. Each write is
-- one Consul transaction that also checks the host is still where it was read
-- (the ModifyIndex of its `host` key) and that no large write is under way
-- (`_pending`), so a concurrent change is refused, never lost:
-- nil, "... changed while ... was being written ...: nothing written; try again".
-- Every node applies the change through its watchers, like a zedctl write.

local kv = require "zedcup.kv"
local require = require
local schema = require "zedcup.schema"

local ngx = ngx
local ngx_time = ngx.time
local type = type
local tostring = tostring
local tonumber = tonumber
local error = error
local ipairs = ipairs
local pairs = pairs
local math_floor = math.floor


local _M = { _VERSION = "0.1.0" }


local function check_args(instance, pool, host, level)
    if type(instance) ~= "string" or instance == "" then
        error("instance must be a non-empty string (got " .. tostring(instance) .. ")", level)
    end
    for what, v in pairs({ pool = pool, host = host }) do
        if (type(v) ~= "string" or v == "") and type(v) ~= "number" then
            error(what .. " must be a name or a 1-based index (got " .. tostring(v) .. ")", level)
        end
    end
end


-- the index (1-based) of the element named ref, else of the index ref
local function pick(list, ref)
    for i, el in ipairs(list) do
        if el.name == ref then
            return i
        end
    end
    local i = tonumber(ref)
    if i and i >= 1 and i == math_floor(i) and list[i] then
        return i
    end
    return nil
end


-- -> { base, p, h, pool, host, entries (by key), anchor (entry) } | nil, err
local function locate(instance, pool_ref, host_ref)
    local base = kv.instance_prefix(instance)
    local list, err = kv.get_tree(base)
    if not list then
        return nil, err
    end
    if #list == 0 then
        return nil, "instance " .. instance .. " not found"
    end
    local rel, pending = kv.relative(list, base)
    if pending then
        return nil, "writing " .. base .. " refused: another write is under way (" .. base .. kv.PENDING .. ")"
    end
    local normalised, problems = schema.unflatten("instance", rel)
    if not normalised then
        return nil, "the stored config of " .. instance .. " is not valid: "
                    .. kv.problem_message(problems[1], base)
    end
    local conf = schema.effective("instance", normalised)
    local p = pick(conf.pools, pool_ref)
    if not p then
        return nil, "pool " .. tostring(pool_ref) .. " not found in instance " .. instance
    end
    local pool = conf.pools[p]
    local h = pick(pool.hosts, host_ref)
    if not h then
        return nil, "host " .. tostring(host_ref) .. " not found in pool " .. pool.name
    end
    local entries = {}
    for _, e in ipairs(list) do
        entries[e.Key] = e
    end
    local host_tree = base .. "pools/" .. p .. "/hosts/" .. h .. "/"
    return {
        base = base,
        host_tree = host_tree,
        pool = pool,
        host = pool.hosts[h],
        entries = entries,
        anchor = entries[host_tree .. "host"],
    }
end


local function guarded(loc, ops, key)
    local checks = {
        { KV = { Verb = "check-not-exists", Key = loc.base .. kv.PENDING } },
        { KV = { Verb = "check-index", Key = loc.anchor.Key, Index = loc.anchor.ModifyIndex } },
    }
    for _, op in ipairs(ops) do
        checks[#checks + 1] = op
    end
    local ok, err = kv.txn(checks)
    if ok == false then
        return nil, key .. " or its host changed while it was being written (or a write is under way): "
                    .. "nothing written; try again"
    end
    if not ok then
        return nil, "writing " .. key .. " failed: " .. tostring(err)
    end
    return true
end


function _M.set_host_state(instance, pool, host, state, reason)
    check_args(instance, pool, host, 3)
    if state ~= "down" and state ~= "up" then
        error('state must be "down" or "up" (got ' .. tostring(state) .. ")", 2)
    end
    if reason ~= nil and type(reason) ~= "string" then
        error("reason must be a string (got " .. type(reason) .. ")", 2)
    end
    local loc, err = locate(instance, pool, host)
    if not loc then
        return nil, err
    end
    local key = kv.state_key(instance, loc.pool.name, loc.host.name, "admin_down")
    local ok
    if state == "down" then
        ok, err = guarded(loc, { kv.set_op(key, reason or "", ngx_time()) }, key)
    else
        local held
        held, err = kv.get(key)
        if held == nil then
            return nil, err
        end
        if not held then
            return true -- not held: nothing to write
        end
        ok, err = guarded(loc, { { KV = { Verb = "delete", Key = key } } }, key)
    end
    if not ok then
        return nil, err
    end
    -- the event zedctl host down|up records (best effort, in a timer)
    require("zedcup.state").record_event(state == "down" and "admin_host_down" or "admin_host_up",
                                         instance, loc.pool.name, loc.host.name,
                                         reason ~= "" and reason or nil)
    return true
end


function _M.set_host_weight(instance, pool, host, weight)
    check_args(instance, pool, host, 3)
    local spec = schema.records.host.fields.weight
    if type(weight) ~= "number" or weight ~= math_floor(weight) then
        error("weight must be an integer (got " .. tostring(weight) .. ")", 2)
    end
    if weight < spec.min or weight > spec.max then
        return nil, "weight: must be between " .. spec.min .. " and " .. spec.max .. " (got " .. weight .. ")"
    end
    local loc, err = locate(instance, pool, host)
    if not loc then
        return nil, err
    end
    local key = loc.host_tree .. "weight"
    local current = loc.entries[key]
    local text = tostring(weight)
    local ops
    if current then
        ops = { { KV = { Verb = "cas", Key = key, Value = text, Index = current.ModifyIndex } } }
    else
        ops = { { KV = { Verb = "check-not-exists", Key = key } }, kv.set_op(key, text) }
    end
    return guarded(loc, ops, key)
end


return _M
