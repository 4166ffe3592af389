-- zedcup.node: this node's background view of itself and of the cluster, and
-- its record in Consul (README "cluster view").
--
-- One worker per node (a shm token per tick) does, every TICK s:
--   * transitions: compares the host state this node sees with the last tick's
--     and keeps the last MAX_TRANSITIONS changes (and each host's latest) in
--     the node store, for status() and the dashboard;
--   * configs: notes when each instance's config changed on this node;
-- and every PUBLISH_INTERVAL s:
--   * reads <prefix>/nodes/ (one read): the cluster's live nodes and whether
--     Consul answers (who checks comes from the node's lock watch, zedcup.store);
--   * writes this node's record <prefix>/nodes/<node name> (JSON, held by the
--     node's session, so it loses its session when the node dies) when its
--     content changed or the session is new: never per request, at most once
--     per PUBLISH_INTERVAL. Records whose session is gone are deleted (CAS).
-- Everything status() needs from here is read from the node store, so any
-- worker answers without Consul.

local cjson = require "cjson.safe"
local config = require "zedcup.config"
local kv = require "zedcup.kv"
local schema = require "zedcup.schema"
local session = require "zedcup.session"
local state = require "zedcup.state"
local store = require "zedcup.store"

local ngx = ngx
local ngx_now = ngx.now
local ngx_time = ngx.time
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_md5 = ngx.md5
local worker_exiting = ngx.worker.exiting
local type = type
local pairs = pairs
local next = next
local ipairs = ipairs
local tostring = tostring
local tab_sort = table.sort
local tab_concat = table.concat
local tab_remove = table.remove
local json_encode = cjson.encode
local json_decode = cjson.decode


local _M = { _VERSION = "0.1.0" }

local TICK = 1                -- s between transition checks
local PUBLISH_INTERVAL = 5    -- s, the shortest time between two record writes (and Consul reads)
local MAX_TRANSITIONS = 50
_M.PUBLISH_INTERVAL = PUBLISH_INTERVAL

-- everything lives in the node store (zedcup.store)
local info = {
    started = nil,
    hostname = nil,
    pid = nil,
}


--- init(): in init_by_lua, after store.init() (a reload starts a new "started")
function _M.init()
    info.started = ngx_time()
    store.node_started(info.started)
    -- the first Consul round comes one interval after a (re)load, not in the
    -- burst of a starting node (a KV write wakes the watchers of empty prefixes)
    store.node_publish_turn(PUBLISH_INTERVAL, true)
end


---------------------------------------------------------------------------
-- Readers (any worker, shared dict only)
---------------------------------------------------------------------------

--- instance_names() -> sorted list of the instances this node knows
function _M.instance_names()
    local names = store.node_instances()
    if type(names) ~= "table" then
        return {}
    end
    return names
end


--- config_applied(inst) -> { index =, at = } | nil: when this node's config of inst last changed
function _M.config_applied(inst)
    local all = store.node_configs()
    local c = type(all) == "table" and all[inst]
    if type(c) ~= "table" then
        return nil
    end
    return { index = c.index, at = c.at }
end


--- transitions() -> the last host transitions this node saw, newest first:
-- { { at =, instance =, pool =, host =, from =, to =, reason = }, ... }
function _M.transitions()
    local list = store.transitions()
    return type(list) == "table" and list or {}
end


--- last_transitions() -> { ["inst/pool/host"] = { at =, state = } }
function _M.last_transitions()
    local m = store.node_host_states()
    return type(m) == "table" and m or {}
end


--- transition_count(inst, pool, host, to) -> how often this node saw the host become `to`
function _M.transition_count(inst, pool, host, to)
    return store.transition_count(store.host_key(inst, pool, host), to)
end


--- cluster() -> { nodes = { record (with its session), ... }, at = } | nil
function _M.cluster()
    local c = store.cluster()
    return type(c) == "table" and c or nil
end


--- info(now) -> the node part of status()
function _M.info(now)
    now = now or ngx_now()
    local contact, reachable = store.consul_contact()
    local cluster = _M.cluster()
    local sid = session.id()
    -- who holds the checker lock right now (the node's lock watch), by session id;
    -- named from the records
    local holder_sid = store.checker_holder()
    local holder
    if holder_sid and holder_sid ~= "" then
        if holder_sid == sid then
            holder = session.node_name()
        else
            holder = "session " .. holder_sid
            for _, n in ipairs(cluster and cluster.nodes or {}) do
                if n.session == holder_sid then
                    holder = n.name
                end
            end
        end
    end
    return {
        name = session.node_name(),
        hostname = session.hostname(),
        version = schema.VERSION,
        started = store.node_started() or info.started,
        consul = {
            reachable = reachable,
            last_contact = contact,
            age = contact and now - contact or nil,
        },
        checker = {
            holder = holder,
            this_node = sid ~= nil and holder_sid == sid,
            seen_at = cluster and cluster.at or nil,
        },
        nodes = cluster and #cluster.nodes or nil,
    }
end


---------------------------------------------------------------------------
-- The tick (one worker per node)
---------------------------------------------------------------------------

-- host key -> "up" | "down" | "disabled" as this worker sees the node now
local function current_states(names)
    local snapshot = state.snapshot()
    local out, reasons = {}, {}
    for _, name in ipairs(names) do
        local plan = config.plan_local(name)
        if plan then
            local si = snapshot[name] or {}
            for _, p in ipairs(plan.pools) do
                local pool = p.config
                local sp = si[pool.name] or {}
                local hold = sp[""] -- the pool's own hold (no host is named "")
                hold = hold and hold.admin_down
                for _, host in ipairs(pool.hosts) do
                    local key = name .. "/" .. pool.name .. "/" .. host.name
                    local st = sp[host.name]
                    if not pool.up or not host.up then
                        out[key] = "disabled"
                        reasons[key] = "config"
                    elseif st and st.admin_down then
                        out[key] = "down"
                        reasons[key] = "manual" .. (st.admin_down ~= "" and (": " .. st.admin_down) or "")
                    elseif hold then
                        out[key] = "down"
                        reasons[key] = "manual: pool held down" .. (hold ~= "" and (": " .. hold) or "")
                    elseif st and st.down then
                        out[key] = "down"
                        reasons[key] = st.down
                    elseif state.is_down(name, pool.name, host.name) then
                        out[key] = "down"
                        reasons[key] = "max_errors reached on this node"
                    else
                        out[key] = "up"
                    end
                end
            end
        end
    end
    return out, reasons
end


local function split_key(key)
    return key:match("^(.-)/([^/]+)/([^/]+)$")
end


local function note_transitions(names)
    local now = ngx_now()
    local cur, reasons = current_states(names)
    local prev = store.node_host_states()
    local list = nil
    local changed = false
    local last = {}
    if type(prev) ~= "table" then
        -- first tick of this node: what is, without transitions
        for key, s in pairs(cur) do
            last[key] = { state = s, at = now }
        end
        changed = true
    else
        for key, s in pairs(cur) do
            local p = prev[key]
            if p and p.state ~= s then
                list = list or _M.transitions()
                local inst, pool, host = split_key(key)
                for i = MAX_TRANSITIONS, 1, -1 do
                    list[i + 1] = list[i]
                end
                list[1] = { at = now, instance = inst, pool = pool, host = host,
                            from = p.state, to = s, reason = reasons[key] }
                last[key] = { state = s, at = now }
                changed = true
                store.count_transition(key, s)
            else
                last[key] = p or { state = s, at = now }
                changed = changed or p == nil
            end
        end
        for key in pairs(prev) do
            if not cur[key] then
                changed = true
            end
        end
    end
    if list then
        while #list > MAX_TRANSITIONS do
            tab_remove(list)
        end
        store.transitions(list)
    end
    if changed then
        store.node_host_states(last)
    end
    return cur
end


local function note_configs(names)
    local configs = store.node_configs()
    if type(configs) ~= "table" then
        configs = {}
    end
    local changed = false
    local seen = {}
    for _, name in ipairs(names) do
        seen[name] = true
        local plan = config.plan_local(name)
        local c = configs[name]
        if plan and (type(c) ~= "table" or c.sig ~= plan.version) then
            -- the index of the instances listing this node has applied: the config
            -- changed at or before it
            local index = store.watch_index("instances")
            configs[name] = { sig = plan.version, at = ngx_time(), index = index > 0 and index or nil }
            changed = true
        end
    end
    for name in pairs(configs) do
        if not seen[name] then
            configs[name] = nil
            changed = true
        end
    end
    if changed then
        store.node_configs(configs)
    end
    return configs
end


local function known_names()
    -- the node's listing (no Consul call); until the first listing, the instances
    -- config knows (which may ask Consul once)
    local set = store.synced() and store.names()
    if type(set) ~= "table" or next(set) == nil then
        local all, err = config.instances()
        if not all then
            return nil, err
        end
        set = all
    end
    local names = {}
    for name in pairs(set) do
        names[#names + 1] = name
    end
    tab_sort(names)
    return names
end


local function nodes_prefix()
    return kv.prefix() .. "/nodes/"
end


--- record_key() -> this node's record key
function _M.record_key()
    return nodes_prefix() .. session.node_name()
end


-- Reads the cluster's node records (one read); deletes records whose session is
-- gone (sessions are created with behavior delete: only records of older nodes)
local function read_cluster(c)
    local res, err = c:get_key(nodes_prefix(), { recurse = true })
    if not res or (res.status ~= 200 and res.status ~= 404) then
        return nil, "node: reading " .. nodes_prefix() .. ": " .. tostring(res and res.status or err)
    end
    local nodes = {}
    if res.status == 200 and type(res.body) == "table" then
        for _, e in ipairs(res.body) do
            if type(e) == "table" and e.Key then
                if e.Session then
                    local rec = type(e.Value) == "string" and json_decode(e.Value)
                    if type(rec) == "table" then
                        rec.session = e.Session
                        nodes[#nodes + 1] = rec
                    end
                else
                    c:delete_key(e.Key, { cas = e.ModifyIndex })
                end
            end
        end
    end
    tab_sort(nodes, function(a, b)
        return tostring(a.name) < tostring(b.name)
    end)
    return { nodes = nodes, at = ngx_time() }
end


local function down_list(cur)
    local down = {}
    for key, s in pairs(cur) do
        if s == "down" then
            down[#down + 1] = key
        end
    end
    tab_sort(down)
    return down
end


local function publish(cur, configs, cluster)
    local sid = session.id()
    if not sid then
        return true -- the session went away since the tick looked: next round
    end
    local cfg = {}
    for name, c in pairs(configs) do
        cfg[name] = { index = c.index, applied = c.at }
    end
    local down = down_list(cur)
    local rec = {
        name = session.node_name(),
        hostname = session.hostname(),
        version = schema.VERSION,
        started = store.node_started() or info.started,
        checker = store.checker_holder() == sid,
        configs = cfg,
        down = down,
        consul = { reachable = cluster ~= nil },
    }
    -- the content that decides a rewrite: everything but the times of contact and writing
    local content = json_encode(rec)
    local parts = { sid, ngx_md5(content) }
    local mark = tab_concat(parts, "\n")
    if store.record_written() == mark then
        return true
    end
    rec.written = ngx_time()
    rec.consul.last_contact = store.consul_contact()
    local body = json_encode(rec)
    if #down == 0 then
        -- cjson writes an empty table as an object: keep `down` a list
        body = body:gsub('"down":{}', '"down":[]')
    end
    local res, err = kv.client():put_key(_M.record_key(), body, { acquire = sid })
    if not res or res.status ~= 200 then
        return nil, "node: writing " .. _M.record_key() .. ": " .. tostring(res and res.status or err)
    end
    if res.body ~= true then
        -- another session holds it (a node of the same name): say it, once per content
        store.record_written(mark)
        return nil, "node: " .. _M.record_key() .. " is held by another session (two nodes named "
                    .. session.node_name() .. "?)"
    end
    store.record_written(mark)
    -- this node's view of the cluster has its own new record at once
    if cluster then
        rec.session = sid
        local mine = false
        for i, n in ipairs(cluster.nodes) do
            if n.name == rec.name then
                cluster.nodes[i], mine = rec, true
            end
        end
        if not mine then
            cluster.nodes[#cluster.nodes + 1] = rec
            tab_sort(cluster.nodes, function(a, b)
                return tostring(a.name) < tostring(b.name)
            end)
        end
        store.cluster(cluster)
    end
    return true
end


--- tick() -> true | false (idle: Consul not asked) | nil, err (timer job, every
-- worker; one per node acts)
function _M.tick()
    if worker_exiting() or not store.cache_dict() then
        return false
    end
    if not store.node_tick_turn(TICK * 0.9) then
        return false
    end
    local names, err = known_names()
    if not names then
        return nil, err
    end
    store.node_instances(names)
    local cur = note_transitions(names)
    local configs = note_configs(names)

    -- no Consul round before the node has its session (the record would be tied to
    -- nothing), nor more often than every PUBLISH_INTERVAL
    if not session.id() or not store.node_publish_turn(PUBLISH_INTERVAL - 0.1) then
        return false -- neither a success nor a failure
    end
    local cluster
    cluster, err = read_cluster(kv.client())
    store.consul_contact(cluster ~= nil)
    if not cluster then
        return nil, err
    end
    store.cluster(cluster)
    return publish(cur, configs, cluster)
end


--- run_workers(): starts the tick in this worker (init_worker_by_lua)
function _M.run_workers()
    local timer = require "zedcup.timer"
    if timer.running("zedcup node") then
        return true
    end
    local ok, err = timer.every({ name = "zedcup node", backoff_cap = PUBLISH_INTERVAL }, TICK, _M.tick)
    if not ok then
        ngx_log(ngx_ERR, "[zedcup] node: ", err)
        return nil, err
    end
    return true
end



return _M
