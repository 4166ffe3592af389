-- zedcup.store: the node store. Owns every key zedcup's core keeps in the
-- shared dicts of a node, and the protocol by which its workers learn of
-- changes. No other core module spells a shared-dict key.
--
-- Dicts (init() options `dicts`): `cache` (configs, host state), `locks`
-- (session, worker locks, checker), `ipc` (the config cache's invalidations).
--
-- Configs live in an mlcache (deps.mlcache: lua-resty-mlcache when installed,
-- else zedcup.cache), `store.configs()`: L1 = the compiled plan of each
-- instance per worker (through l1_serializer), L2 = its normalised JSON in the
-- cache dict, L3 = Consul behind the reader's callback (run once per instance
-- for all requests and workers under mlcache's lock). The watcher's worker
-- writes L2 with set(), which broadcasts the invalidation through mlcache's
-- IPC in the ipc dict.
--
-- Change protocol: a writer bumps a generation after its change; every
-- worker's poll job (every POLL_INTERVAL s, off the request path) reads the
-- generations (one shm get each) and, when one moved, applies mlcache's IPC
-- events / reloads the state snapshot / the global config. So every worker of
-- a node acts on a change within about POLL_INTERVAL of the watcher's answer.
--
-- The API other modules (status, metrics, discovery) may use is documented
-- in README.md, "Node store".

local cjson = require "cjson.safe"
local deps = require "zedcup.deps"
local nodelock = require "zedcup.nodelock"

local ngx = ngx
local shared = ngx.shared
local ngx_time = ngx.time
local ngx_now = ngx.now
local tostring = tostring
local tonumber = tonumber
local error = error
local pcall = pcall
local str_match = string.match
local json_encode = cjson.encode
local json_decode = cjson.decode


local _M = { _VERSION = "0.1.0" }

-- how often every worker looks for changes (s); see README "Propagation"
_M.POLL_INTERVAL = 0.05

local names = { cache = "zedcup_cache", locks = "zedcup_locks", ipc = "zedcup_ipc" }
local cache, locks          -- the dict objects
local configs               -- the mlcache of instance configs

-- Keys of the cache dict ----------------------------------------------------
local K_CONFIG_GEN = "cgen"      -- bumped by every config change
local K_NAMES = "names"          -- JSON set of the instances the watcher listed
local K_SYNCED = "synced"        -- the instances watcher answered recently
local K_GSYNCED = "g_synced"     -- the config watcher answered recently
local K_GLOBAL = "g"             -- "<sig>\n<json>" of the normalised global config
local K_KEPT = "kept"            -- JSON: instances kept when Consul came back empty
local K_KEPT_GLOBAL = "kept_g"   -- the global config kept when Consul came back empty
local K_STATE = "state"          -- JSON of Consul's state tree
local K_STATE_GEN = "state_gen"  -- bumped when the set of down hosts changes
local K_UP_GEN = "up_gen"        -- bumped when Consul brought a host back (came_up)
local K_QUEUE = "errq"           -- list of host keys with failures not pushed yet
local P_OWN_WRITE = "w:"         -- .. inst: "<index> <time>" of this node's last write
local K_OWN_GLOBAL = "gw"        -- the same for the global config
local P_REMOVED = "rm:"          -- .. inst: when this node removed it (ngx.now(), for a minute)
local P_BAD = "bad:"             -- .. what .. ":" .. sig: a refused config, logged once
local P_ERRORS = "e:"            -- .. host key: failures in the window (TTL error_timeout)
local P_LAST_ERROR = "le:"       -- .. host key: the last failure's message
local P_QUEUED = "q:"            -- .. host key: failures queued for Consul
local P_UP_AT = "up:"            -- .. host key: when Consul last brought it back
local P_CHECK = "c:"             -- .. host key: "<unix time> ok|<why>" (checker node)
local P_WATCH_ERR = "werr:"      -- .. watch name: "<unix time> <error>" of its last failure
local P_DISCOVERED = "d:"        -- .. inst .. "/" .. pool: JSON hosts from Consul's catalog
local P_HOST_COUNT = "m:h/"      -- .. host key .. "/" .. field: request counters of a host
local P_INST_COUNT = "m:i/"      -- .. inst .. "/" .. field: request counters of an instance
local K_NODE_TICK = "n:tick"     -- token: one worker per node per node tick
local K_NODE_PUB = "n:pub"       -- token: one node round with Consul per publish interval
local K_NODE_NAMES = "n:names"   -- JSON sorted list of the instances the node knows
local K_NODE_CONFIGS = "n:configs"  -- JSON inst -> { sig =, at =, index = }: config changes seen
local K_NODE_HOSTS = "n:down"    -- JSON host key -> { state =, at = } as the node tick last saw it
local K_NODE_TRANS = "n:transitions" -- JSON list of host transitions, newest first
local P_NODE_TRANS = "n:tr/"     -- .. host key .. "/" .. state: transitions into a state
local K_NODE_CLUSTER = "n:cluster"  -- JSON { nodes = [...], at = } from <prefix>/nodes/
local K_NODE_CONTACT = "n:contact"  -- unix s of the node round's last Consul answer
local K_NODE_CONTACT_OK = "n:contact_ok" -- whether the last node round had an answer
local K_NODE_WRITTEN = "n:written"  -- "<session>\n<content md5>" of the last record write
local K_NODE_STARTED = "n:started"  -- unix s of the node's last start or reload

-- Keys of the locks dict ------------------------------------------------------
local K_SESSION = "zedcup:session:id"
local K_SESSION_CREATE = "zedcup:session:create"
local K_SESSION_RENEW = "zedcup:session:renew"
local K_SESSION_RENEWALS = "zedcup:session:renewals"
local K_SESSION_TTL = "zedcup:session:ttl"   -- the TTL (s) the session was created with
local K_GEN = "zedcup:gen"               -- bumped by init() (start, reload)
local P_QUIT = "zedcup:quit:"            -- .. gen
local P_WORKER_LOCK = "zedcup:wlock:"    -- .. job name
local P_WATCH_INDEX = "watch:"           -- .. watch name .. ":index"
local K_MAX_INDEX = "zedcup:max_index"   -- the highest Consul index the node's watches saw
local K_RESET_AT = "zedcup:reset_at"     -- when a watch last saw Consul's index go back
local K_HC_HOLDER = "zedcup:hc_holder"   -- session id holding the checker lock, "" when free
local K_HC_KICK = "zedcup:hc_kick"       -- this node just took the checker lock
local P_HC_STAT = "zedcup:hc:"           -- .. counter name
local K_LOAD_LOCK = "zedcup:names"       -- resty.lock key guarding the names set
local K_CONFIGS_LOCK = "zedcup:configs" -- resty.lock key: one changer of the configs at a time


--- init(dict_names): { cache =, locks =, ipc = } shared dict names (in
-- init_by_lua); each given name replaces the current one
function _M.init(dicts)
    if dicts.cache or dicts.ipc then
        configs = nil
    end
    names.cache = dicts.cache or names.cache
    names.locks = dicts.locks or names.locks
    names.ipc = dicts.ipc or names.ipc
    cache, locks = shared[names.cache], shared[names.locks]
end


function _M.cache_dict()
    return cache
end


function _M.locks_dict()
    return locks
end


---------------------------------------------------------------------------
-- Configs (mlcache)
---------------------------------------------------------------------------

--- configs_new(l1_serializer) -> the config mlcache (made once per process)
function _M.configs_new(serializer)
    if configs then
        return configs
    end
    local c, err = deps.mlcache.new("zedcup_configs", names.cache, {
        lru_size = 1000,
        ttl = 0,              -- a config stays until the watcher replaces it
        neg_ttl = 1,          -- "not found": asked again after 1 s (no Consul once synced)
        ipc_shm = names.ipc,
        l1_serializer = serializer,
        shm_locks = names.locks,
        resty_lock_opts = { exptime = 10, timeout = 3 },
    })
    if not c then
        error("zedcup: could not create the config cache: " .. tostring(err))
    end
    configs = c
    return c
end


function _M.configs()
    return configs
end


--- config_changed(): after a change of configs, names or the global config
function _M.config_changed()
    cache:incr(K_CONFIG_GEN, 1, 0)
end


function _M.config_gen()
    return cache:get(K_CONFIG_GEN)
end


-- the names set (only the watcher applier and this node's writers change it)
function _M.names()
    return json_decode(cache:get(K_NAMES) or "{}") or {}
end


local function set_names(set)
    cache:set(K_NAMES, json_encode(set))
end


--- update_names(fn): fn(set) changes the set in place; serialised per node
function _M.update_names(fn)
    local lock = _M.new_lock({ exptime = 5, timeout = 5 })
    local ok = lock and lock:lock(K_LOAD_LOCK)
    local set = _M.names()
    fn(set)
    set_names(set)
    if ok then
        lock:unlock()
    end
end


function _M.synced(ttl)
    if ttl then
        cache:set(K_SYNCED, true, ttl)
        return true
    end
    return cache:get(K_SYNCED) == true
end


function _M.global_synced(ttl)
    if ttl then
        cache:set(K_GSYNCED, true, ttl)
        return true
    end
    return cache:get(K_GSYNCED) == true
end


function _M.global_raw()
    return cache:get(K_GLOBAL)
end


function _M.set_global_raw(raw)
    return cache:set(K_GLOBAL, raw)
end


--- update_configs(fn, ...) -> fn's results: fn runs alone on the node among
-- the changers of configs (this node's writers and the watchers' appliers,
-- in different workers: an applier that checked for a newer own write just
-- before a writer recorded one must not store its older listing after the
-- writer stored the new config)
function _M.update_configs(fn, ...)
    local lock = _M.new_lock({ exptime = 5, timeout = 5 })
    local locked = lock and lock:lock(K_CONFIGS_LOCK)
    local ok, r1, r2 = pcall(fn, ...)
    if locked then
        lock:unlock()
    end
    if not ok then
        error(r1, 0) -- raised again once the lock is free
    end
    return r1, r2
end


function _M.kept()
    local raw = cache:get(K_KEPT)
    return raw and json_decode(raw) or nil
end


function _M.set_kept(v)
    if v == nil then
        cache:delete(K_KEPT)
    else
        cache:set(K_KEPT, json_encode(v))
    end
end


--- global_kept(on?) -> whether this node keeps its global config because a
-- Consul that came back empty has none
function _M.global_kept(on)
    if on == true then
        cache:set(K_KEPT_GLOBAL, true)
    elseif on == false then
        cache:delete(K_KEPT_GLOBAL)
    end
    return cache:get(K_KEPT_GLOBAL) == true
end


-- own writes: index and time of this node's last write of an instance
-- (name) or of the global config (name == nil)
function _M.own_write(name)
    local v = cache:get(name and (P_OWN_WRITE .. name) or K_OWN_GLOBAL)
    if not v then
        return 0, 0
    end
    local i, t = str_match(v, "^(%d+) (.+)$")
    return tonumber(i) or 0, tonumber(t) or 0
end


function _M.set_own_write(name, index, at)
    local key = name and (P_OWN_WRITE .. name) or K_OWN_GLOBAL
    if index == nil then
        cache:delete(key)
    else
        cache:set(key, index .. " " .. at)
    end
end


--- removed_at(name) -> when this node removed instance `name` (ngx.now(); 0: not lately)
function _M.removed_at(name)
    return cache:get(P_REMOVED .. name) or 0
end


--- set_removed(name, at | nil): records (for a minute) or forgets a removal by this node
function _M.set_removed(name, at)
    if at == nil then
        cache:delete(P_REMOVED .. name)
    else
        cache:set(P_REMOVED .. name, at, 60)
    end
end


--- first_bad(what, sig) -> true the first time a refused config is seen (a day)
function _M.first_bad(what, sig)
    return cache:add(P_BAD .. what .. ":" .. sig, true, 86400) == true
end


---------------------------------------------------------------------------
-- Watches
---------------------------------------------------------------------------

function _M.watch_index(name, index)
    if index then
        locks:set(P_WATCH_INDEX .. name .. ":index", index)
        return index
    end
    return locks:get(P_WATCH_INDEX .. name .. ":index") or 0
end


--- max_index(index?) -> the highest Consul index any watch of the node saw
-- (with index: records it when higher; reset: Consul's index went back, start
-- from this one)
function _M.max_index(index, reset)
    local cur = locks:get(K_MAX_INDEX) or 0
    if reset then
        locks:set(K_RESET_AT, ngx_now())
    end
    if index and (reset or index > cur) then
        locks:set(K_MAX_INDEX, index)
        return index
    end
    return cur
end


--- reset_at() -> unix time (ms precision) a watch of this node last saw Consul's index go back (0: never)
function _M.reset_at()
    return locks:get(K_RESET_AT) or 0
end


--- watch_error(name, err?) -> the last failure of watch `name` ("<why>", unix time) | nil;
-- with err: records it (false clears it)
function _M.watch_error(name, err)
    local key = P_WATCH_ERR .. name
    if err == false then
        cache:delete(key)
        return nil
    end
    if err then
        cache:set(key, ngx_time() .. " " .. tostring(err))
        return nil
    end
    local v = cache:get(key)
    if not v then
        return nil
    end
    local t, why = str_match(v, "^(%d+) (.*)$")
    return why, tonumber(t)
end


---------------------------------------------------------------------------
-- Host state (cache dict)
---------------------------------------------------------------------------

function _M.host_key(inst, pool, host)
    return inst .. "/" .. pool .. "/" .. host
end


--- add_failure(k, err, window) -> this node's count in the window
function _M.add_failure(k, err, window)
    local n = cache:incr(P_ERRORS .. k, 1, 0, window)
    cache:set(P_LAST_ERROR .. k, tostring(err))
    if cache:incr(P_QUEUED .. k, 1, 0) == 1 then
        cache:rpush(K_QUEUE, k)
    end
    return n
end


function _M.failures(k)
    return cache:get(P_ERRORS .. k) or 0, cache:get(P_LAST_ERROR .. k)
end


function _M.last_error(k)
    return cache:get(P_LAST_ERROR .. k)
end


function _M.forget_failures(k)
    cache:delete(P_ERRORS .. k)
end


--- next_queued() -> host key, failures to push | nil (queue empty)
function _M.next_queued()
    local k = cache:lpop(K_QUEUE)
    if not k then
        return nil
    end
    local qk = P_QUEUED .. k
    local delta = cache:get(qk) or 0
    if delta > 0 then
        local rest = cache:incr(qk, -delta) or 0
        if rest > 0 then
            cache:rpush(K_QUEUE, k)
        end
    end
    return k, delta
end


--- requeue(k, delta): failures that could not be pushed go back in the queue
function _M.requeue(k, delta)
    if cache:incr(P_QUEUED .. k, delta, 0) == delta then
        cache:rpush(K_QUEUE, k)
    end
end


--- came_up(k, at): Consul brought host k back (a mark_up won here, or the
-- state watcher saw its `down` go). Moves the up generation, so every worker's
-- state.refresh() drops its own marks made before `at`, even when no snapshot
-- ever held the host down (marked down and up between two listings of the
-- watcher). Not the state generation: the snapshot may not show it yet.
function _M.came_up(k, at)
    cache:set(P_UP_AT .. k, at, 3600)
    cache:incr(K_UP_GEN, 1, 0)
end


function _M.up_gen()
    return cache:get(K_UP_GEN)
end


--- discovered(inst, pool) -> JSON text | nil; set_discovered(inst, pool, json | nil):
-- the hosts zedcup.discovery found for a pool's service (node-wide)
function _M.discovered(inst, pool)
    return cache:get(P_DISCOVERED .. inst .. "/" .. pool)
end

function _M.set_discovered(inst, pool, json)
    local key = P_DISCOVERED .. inst .. "/" .. pool
    if json == nil then
        cache:delete(key)
        return true
    end
    local ok, err = cache:safe_set(key, json)
    if not ok then
        return nil, "store: discovered hosts of " .. inst .. "/" .. pool .. ": " .. tostring(err)
    end
    return true
end


function _M.up_at(k)
    return cache:get(P_UP_AT .. k) or 0
end


function _M.set_check(k, ok, msg)
    cache:set(P_CHECK .. k, ngx_time() .. " " .. (ok and "ok" or tostring(msg or "failed")), 86400)
end


--- check(k) -> "ok" | why, unix time | nil
function _M.check(k)
    local v = cache:get(P_CHECK .. k)
    if not v then
        return nil
    end
    local t, what = str_match(v, "^(%d+) (.*)$")
    return what, tonumber(t)
end


function _M.state_raw()
    return cache:get(K_STATE)
end


--- set_state(json, down_changed): the state tree; the generation moves only
-- when the set of down hosts changed (workers re-read nothing otherwise)
function _M.set_state(json, down_changed)
    local ok, err = cache:set(K_STATE, json)
    if not ok then
        return nil, "storing the state snapshot: " .. tostring(err)
    end
    if down_changed then
        cache:incr(K_STATE_GEN, 1, 0)
    end
    return true
end


function _M.state_gen()
    return cache:get(K_STATE_GEN)
end


---------------------------------------------------------------------------
-- Request counters (cache dict; zedcup.counters adds each worker's deltas)
---------------------------------------------------------------------------

local function add_count(key, n)
    local _, err = cache:incr(key, n, 0)
    if err then
        return nil, "store: adding to counter " .. key .. ": " .. tostring(err)
    end
    return true
end


--- add_host_count(inst, pool, host, field, n) -> true | nil, err
function _M.add_host_count(inst, pool, host, field, n)
    return add_count(P_HOST_COUNT .. inst .. "/" .. pool .. "/" .. host .. "/" .. field, n)
end


--- host_count(inst, pool, host, field) -> the node's count (0 when none)
function _M.host_count(inst, pool, host, field)
    return cache and cache:get(P_HOST_COUNT .. inst .. "/" .. pool .. "/" .. host .. "/" .. field) or 0
end


--- add_instance_count(inst, field, n) -> true | nil, err
function _M.add_instance_count(inst, field, n)
    return add_count(P_INST_COUNT .. inst .. "/" .. field, n)
end


function _M.instance_count(inst, field)
    return cache and cache:get(P_INST_COUNT .. inst .. "/" .. field) or 0
end


---------------------------------------------------------------------------
-- The node's view of itself and of the cluster (cache dict; zedcup.node)
---------------------------------------------------------------------------

local function get_json(key)
    local raw = cache and cache:get(key)
    if raw == nil then
        return nil
    end
    return json_decode(raw)
end


local function set_json(key, v)
    local ok, err = cache:set(key, json_encode(v))
    if not ok then
        return nil, "store: " .. key .. ": " .. tostring(err)
    end
    return true
end


-- an accessor of one JSON value of the node: f(v) stores v (true | nil, err),
-- f() reads it (nil when never stored)
local function json_value(key)
    return function(v)
        if v then
            return set_json(key, v)
        end
        return get_json(key)
    end
end


--- node_started(at?) -> unix s of the node's last start or reload; with at: records it
function _M.node_started(at)
    if at then
        cache:set(K_NODE_STARTED, at)
        return at
    end
    return cache and cache:get(K_NODE_STARTED)
end


--- node_tick_turn(ttl) -> true for the one worker of the node that ticks now
function _M.node_tick_turn(ttl)
    return cache:add(K_NODE_TICK, true, ttl) == true
end


--- node_publish_turn(ttl, hold?) -> true when this worker has the node's next
-- round with Consul (none for ttl s after); hold: no round for ttl s from now
function _M.node_publish_turn(ttl, hold)
    if hold then
        cache:set(K_NODE_PUB, true, ttl)
        return false
    end
    return cache:add(K_NODE_PUB, true, ttl) == true
end


--- node_instances(list?) -> sorted list of the instances the node knows | nil
_M.node_instances = json_value(K_NODE_NAMES)


--- node_configs(map?) -> inst -> { sig =, at =, index = }: when the node saw each config change
_M.node_configs = json_value(K_NODE_CONFIGS)


--- node_host_states(map?) -> host key -> { state =, at = } as the node last saw it
_M.node_host_states = json_value(K_NODE_HOSTS)


--- transitions(list?) -> the node's last host transitions, newest first
_M.transitions = json_value(K_NODE_TRANS)


--- count_transition(k, to): host k went into state `to` on this node
function _M.count_transition(k, to)
    cache:incr(P_NODE_TRANS .. k .. "/" .. to, 1, 0)
end


--- transition_count(k, to) -> how often host k went into state `to` on this node
function _M.transition_count(k, to)
    return cache and cache:get(P_NODE_TRANS .. k .. "/" .. to) or 0
end


--- cluster(c?) -> { nodes = [...], at = } as the node last read it | nil
_M.cluster = json_value(K_NODE_CLUSTER)


--- consul_contact(ok?) -> unix s of the node round's last Consul answer, whether the
-- last round had one; with ok (boolean): records a round's outcome
function _M.consul_contact(ok)
    if ok ~= nil then
        cache:set(K_NODE_CONTACT_OK, ok)
        if ok then
            cache:set(K_NODE_CONTACT, ngx_time())
        end
    end
    if not cache then
        return nil, nil
    end
    return cache:get(K_NODE_CONTACT), cache:get(K_NODE_CONTACT_OK)
end


--- record_written(mark?) -> the mark of the node record's last write; with mark: records it
function _M.record_written(mark)
    if mark then
        cache:set(K_NODE_WRITTEN, mark)
        return mark
    end
    return cache:get(K_NODE_WRITTEN)
end


---------------------------------------------------------------------------
-- Session, node generation, worker locks, checker (locks dict)
---------------------------------------------------------------------------

function _M.session_id()
    return locks:get(K_SESSION)
end


--- set_session_id(id, ttl): the node's session and the TTL (s) it was created with
function _M.set_session_id(id, ttl)
    if id == nil then
        locks:delete(K_SESSION_TTL)
        return locks:delete(K_SESSION)
    end
    locks:set(K_SESSION_TTL, ttl)
    return locks:set(K_SESSION, id)
end


--- session_ttl() -> the TTL (s) the node's session was created with, or nil
function _M.session_ttl()
    return locks:get(K_SESSION_TTL)
end


_M.SESSION_CREATE_LOCK = K_SESSION_CREATE


--- renew_turn(ttl) -> true when this worker renews the session this interval
function _M.renew_turn(ttl)
    return locks:add(K_SESSION_RENEW, true, ttl) == true
end


function _M.renew_turn_reset(ttl)
    if ttl then
        locks:set(K_SESSION_RENEW, true, ttl)
    else
        locks:delete(K_SESSION_RENEW)
    end
end


function _M.count_renewal()
    locks:incr(K_SESSION_RENEWALS, 1, 0)
end


function _M.renewals()
    return locks:get(K_SESSION_RENEWALS) or 0
end


--- bump_generation() -> the node's new generation (init(): start and reload)
function _M.bump_generation()
    return locks and locks:incr(K_GEN, 1, 0) or 0
end


function _M.generation()
    return locks:get(K_GEN) or 0
end


--- quit_token(gen) -> true for the one worker that cleans up on quit
function _M.quit_token(gen)
    return locks:add(P_QUIT .. gen, true, 60) == true
end


--- worker_lock(name, ttl) -> true (this worker holds it, renewed) | false | nil, err
-- (zedcup.nodelock in the locks dict: one worker of the node per job)
function _M.worker_lock(name, ttl)
    if not locks then
        return nil, "locks dictionary not found: " .. tostring(names.locks)
    end
    return nodelock.acquire(locks, P_WORKER_LOCK .. name, ttl)
end


--- worker_unlock(name) -> true when this worker held worker lock `name`
function _M.worker_unlock(name)
    return locks ~= nil and nodelock.release(locks, P_WORKER_LOCK .. name) == true
end


--- worker_lock_holder(name) -> pid of the worker holding worker lock `name` | nil
function _M.worker_lock_holder(name)
    return locks and locks:get(P_WORKER_LOCK .. name) or nil
end


--- new_lock(opts) -> a resty.lock-style mutex in the locks dict (deps.lock)
function _M.new_lock(opts)
    return deps.lock:new(names.locks, opts)
end


--- checker_holder(sid?) -> the session id holding the checker lock ("" free,
-- nil unknown); with sid: records it
function _M.checker_holder(sid)
    if sid then
        locks:set(K_HC_HOLDER, sid)
        return sid
    end
    return locks:get(K_HC_HOLDER)
end


--- checker_kick(on?) -> whether this node just took the checker lock
function _M.checker_kick(on)
    if on == true then
        locks:set(K_HC_KICK, true, 10)
    elseif on == false then
        locks:delete(K_HC_KICK)
    end
    return locks:get(K_HC_KICK) == true
end


function _M.count(name, n)
    if locks then
        locks:incr(P_HC_STAT .. name, n or 1, 0)
    end
end


function _M.counter(name)
    return locks and locks:get(P_HC_STAT .. name) or 0
end


return _M
