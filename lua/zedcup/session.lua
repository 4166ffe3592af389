-- zedcup.session: this node's Consul session, cluster locks held with it, and
-- per-node worker locks.
--
-- One session per node (nginx instance), not per worker: the first worker that
-- needs it creates it under a shm lock and stores its id in the `locks` dict,
-- where every worker of the node finds it. Each session_renew_interval exactly
-- one worker renews it (a shm token per interval); a 404 on renew (the session
-- lapsed or was destroyed behind our back) creates a new one. The session holds
-- `<prefix>/registry/<id>` (value "<hostname> <master pid>") so live nodes can be
-- listed; behavior "delete" removes that entry and the node's lock keys with the
-- session, and a short LockDelay lets another node take over a cluster lock
-- soon after this node dies.
--
-- Takeover within session_ttl: Consul promises only that a session outlives
-- its TTL; it ends a lapsed one up to 2 x TTL after the last renewal, and then
-- holds its locks for the LockDelay (1 s). So the Consul TTL is
-- (session_ttl - 3) / 2 (1 s for the lock delay, 2 s for another node to see
-- the lock free and take it), at least Consul's minimum of 10 s: another node
-- takes a lock over within session_ttl of the holder's last renewal when
-- session_ttl >= 23, within 23 s below that. Sessions have no health checks (NodeChecks empty): they live by their
-- TTL alone, not by the serfHealth check of the Consul agent that created them
-- (a node talking to Consul servers directly lost its session with that
-- server). No session is created before the global config is known, and a
-- change of session_ttl replaces the session at its next renewal.
--
-- Clean stops: every worker leaves a timer pending that nginx runs
-- (prematurely) when the worker exits. `nginx -s quit`: the node's cluster
-- locks are released (no lock-delay: another node takes over at once) and its
-- session destroyed. `nginx -s reload`: the master runs init() again, which
-- bumps a generation in the locks dict; old workers that see a newer
-- generation only hand their worker locks to the new workers, and the node
-- keeps its session and its locks.
--
-- Cluster locks: acquire(name) / release(name) / holder(name) on
-- `<prefix>/locks/<name>`, value = the node name.
-- Worker locks: worker_lock(name, ttl) elects one worker of the node for a job;
-- the holder renews it each time it calls again.

local kv = require "zedcup.kv"
local timer = require "zedcup.timer"
local schema = require "zedcup.schema"
local config = require "zedcup.config"
local store = require "zedcup.store"

local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_WARN = ngx.WARN
local ngx_INFO = ngx.INFO
local worker_pid = ngx.worker.pid
local worker_exiting = ngx.worker.exiting
local type = type
local tostring = tostring
local ipairs = ipairs
local pairs = pairs
local pcall = pcall
local error = error
local math_min = math.min
local math_max = math.max
local math_huge = math.huge
local str_format = string.format
local json_encode = require("cjson.safe").encode
local io_open = io.open


local _M = {
    _VERSION = "0.1.0",
}

local LOCK_DELAY = "1s"
local LOCK_DELAY_S = 1
-- what another node needs to take a freed lock (its lock watch answers, it
-- acquires, retrying every 0.5 s through the lock delay)
local TAKEOVER_S = 2
local CONSUL_TTL_MIN = 10

-- keys in the locks dict

-- worker-local: worker locks this worker holds, handed over when it exits
local held_worker_locks = {}

-- Set by init() in the master (init_by_lua), inherited by every worker.
local conf = {
    locks = "zedcup_locks",
    hostname = nil,
    master_pid = nil,
    node_name = nil,
}


local function read_first_line(path)
    local f = io_open(path, "r")
    if not f then
        return nil
    end
    local line = f:read("*l")
    f:close()
    if line and line ~= "" then
        return line
    end
    return nil
end


local function get_hostname()
    return read_first_line("/proc/sys/kernel/hostname")
        or read_first_line("/etc/hostname")
        or os.getenv("HOSTNAME")
        or "localhost"
end


local function get_master_pid()
    local ok, process = pcall(require, "ngx.process")
    if ok and process.get_master_pid then
        local pid = process.get_master_pid()
        if pid then
            return pid
        end
    end
    -- no master process (master_process off), or an older ngx_lua
    return worker_pid()
end


--- init(opts): zedcup.init()'s opts; uses opts.dicts.locks and opts.node_name
-- (both optional). Called in init_by_lua. Consul access and the key prefix
-- come from zedcup.kv (kv.init).
function _M.init(opts)
    if opts == nil then
        opts = {}
    elseif type(opts) ~= "table" then
        error("opts must be a table (got " .. type(opts) .. ")", 2)
    end
    if opts.node_name ~= nil and (type(opts.node_name) ~= "string" or opts.node_name == "") then
        error("opts.node_name must be a non-empty string (got " .. tostring(opts.node_name) .. ")", 2)
    end

    conf.locks = opts.dicts and opts.dicts.locks or "zedcup_locks"
    conf.hostname = get_hostname()
    conf.node_name = opts.node_name
    -- in init_by_lua (the master, on start and on every reload): workers
    -- forked from here carry this generation
    store.init({ locks = conf.locks })
    conf.gen = store.bump_generation()
    return true
end


local function master_pid()
    if not conf.master_pid then
        conf.master_pid = get_master_pid()
    end
    return conf.master_pid
end


function _M.hostname()
    if not conf.hostname then
        conf.hostname = get_hostname()
    end
    return conf.hostname
end


--- node_name() -> the name this node uses for cluster locks
function _M.node_name()
    return conf.node_name or (_M.hostname() .. ":" .. master_pid())
end




--- global(name) -> the effective global config value `name`
-- (Consul's `<prefix>/config/<name>` as the config module caches it, else the default)
function _M.global(name)
    local v = config.global()[name]
    if v ~= nil then
        return v
    end
    local field = schema.records.global.fields[name]
    local v = field and field.default
    if v == nil then
        error("unknown global config field: " .. tostring(name), 2)
    end
    return v
end


local function dict()
    local d = store.locks_dict()
    if not d then
        return nil, "locks dictionary not found: " .. tostring(conf.locks)
    end
    return d
end


local function consul()
    return kv.client()
end


local answer_error = kv.answer_error


local function registry_key(id)
    return kv.prefix() .. "/registry/" .. id
end


local function lock_key(name)
    return kv.prefix() .. "/locks/" .. name
end
_M.lock_key = lock_key


-- Deletes registry entries that no session holds any more (their node died):
-- best effort, each with a CAS on the index we saw.
local function reap_registry(c)
    local res = c:get_key(kv.prefix() .. "/registry/", { recurse = true })
    if not res or res.status ~= 200 or type(res.body) ~= "table" then
        return
    end
    for _, entry in ipairs(res.body) do
        if type(entry) == "table" and not entry.Session and entry.Key then
            c:delete_key(entry.Key, { cas = entry.ModifyIndex })
        end
    end
end


local function destroy_remote(c, id)
    local res, err = c:put("/session/destroy/" .. id, "")
    if not res or res.status ~= 200 then
        return nil, answer_error("session: destroy " .. id, res, err)
    end
    return true
end


--- consul_ttl() -> the TTL (s) of the node's Consul session for the current
-- session_ttl: Consul's worst case (2 x TTL + lock delay) plus 2 s to take
-- the lock over fits within session_ttl, never under Consul's minimum (10 s)
function _M.consul_ttl()
    return math_max(CONSUL_TTL_MIN, (_M.global("session_ttl") - LOCK_DELAY_S - TAKEOVER_S) / 2)
end


-- Releases the cluster locks session `id` holds (a release has no lock-delay).
local function release_all(c, id)
    local res = c:get_key(kv.prefix() .. "/locks/", { recurse = true })
    if res and res.status == 200 and type(res.body) == "table" then
        for _, e in ipairs(res.body) do
            if type(e) == "table" and e.Session == id then
                c:put_key(e.Key, e.Value or "", { release = id })
            end
        end
    end
end


-- Creates a session and its registry entry. Callers hold the create lock.
local function create(d)
    local c = consul()
    -- a session's TTL is fixed when it is created: no session before the
    -- global config was read once (a worker that just started may not have it)
    if store.cache_dict() then
        local g, lerr = config.load_global()
        if not g or not (store.global_raw() or store.global_synced()) then
            return nil, "session: not created before the global config is known: "
                .. tostring(lerr or "its keys are being written")
        end
    end
    local ttl = _M.consul_ttl()
    local name = "zedcup " .. _M.hostname() .. " " .. master_pid()

    -- NodeChecks empty: only the TTL ends it (Consul's default binds it to
    -- serfHealth); spelled out, as a Lua table cannot say "empty array"
    local res, err = c:put("/session/create", str_format(
        '{"Name":%s,"TTL":"%ss","Behavior":"delete","LockDelay":"%s","NodeChecks":[]}',
        json_encode(name), tostring(ttl), LOCK_DELAY))
    if not res or res.status ~= 200 or type(res.body) ~= "table" or type(res.body.ID) ~= "string" then
        return nil, answer_error("session: create", res, err)
    end
    local id = res.body.ID

    res, err = c:put_key(registry_key(id), _M.hostname() .. " " .. master_pid(), { acquire = id })
    if not res or res.status ~= 200 or res.body ~= true then
        local msg = answer_error("session: registry " .. registry_key(id), res, err)
        destroy_remote(c, id)
        return nil, msg
    end

    -- before the id is published: whoever sees the new session also sees the
    -- dead sessions' entries gone
    reap_registry(c)

    local ok
    ok, err = store.set_session_id(id, ttl)
    if not ok then
        destroy_remote(c, id)
        return nil, "session: storing the id in shm: " .. tostring(err)
    end
    -- creation counts as this interval's renewal
    store.renew_turn_reset(_M.renew_interval() * 0.9)

    ngx_log(ngx_INFO, "[zedcup] session: created ", id, " (", name, ", TTL ", ttl,
            "s for session_ttl ", _M.global("session_ttl"), ")")
    return id
end


-- Returns the node's session id, creating the session when there is none
-- (or when it is `stale`, an id known to be invalid).
local function ensure(stale)
    local d, err = dict()
    if not d then
        return nil, err
    end

    local id = store.session_id()
    if id and id ~= stale then
        return id
    end
    if worker_exiting() then
        -- a stopping node makes no new session (its last one was destroyed)
        return nil, "session: none (nginx is stopping)"
    end

    local lock
    lock, err = store.new_lock({ exptime = 30, timeout = 15 })
    if not lock then
        return nil, "session: lock: " .. tostring(err)
    end
    local elapsed
    elapsed, err = lock:lock(store.SESSION_CREATE_LOCK)
    if not elapsed then
        return nil, "session: waiting for the create lock: " .. tostring(err)
    end

    id = store.session_id()
    if stale and id == stale then
        -- left in place until the new one replaces it: no worker ever sees
        -- the node without a session id while another is being created
        id = nil
    end
    if not id then
        id, err = create(d)
    end

    lock:unlock()
    return id, err
end


--- id() -> the node's session id, or nil when there is none yet (never creates)
function _M.id()
    return dict() and store.session_id() or nil
end


--- ensure() -> id | nil, err: the node's session, created if needed
function _M.ensure()
    return ensure()
end


--- renew_interval() -> seconds between renewals: session_renew_interval, but at
-- most half the session's Consul TTL (two chances before it may lapse).
function _M.renew_interval()
    local interval = _M.global("session_renew_interval")
    return math_min(interval, math_min(store.session_ttl() or math_huge, _M.consul_ttl()) / 2)
end


-- session_ttl changed since the session was created: a new session with the
-- new TTL takes over, then the old one's locks are released and it is destroyed.
local function replace(old)
    local id, err = ensure(old)
    if not id then
        return nil, err
    end
    local c = consul()
    release_all(c, old)
    local ok
    ok, err = destroy_remote(c, old)
    if not ok then
        ngx_log(ngx_WARN, "[zedcup] ", err)
    end
    ngx_log(ngx_INFO, "[zedcup] session: ", old, " replaced by ", id, " (session_ttl changed)")
    return true
end


--- renew(force) -> true | nil, err
-- Renews the node's session unless another worker did so this interval (force
-- skips that check); creates a new session when Consul no longer knows it.
function _M.renew(force)
    local d, err = dict()
    if not d then
        return nil, err
    end

    local id = store.session_id()
    if not id then
        id, err = ensure()
        if not id then
            return nil, err
        end
        return true
    end

    if not force then
        local ok = store.renew_turn(_M.renew_interval() * 0.9)
        if not ok then
            return false -- another worker's turn: nothing done
        end
    end

    local res
    res, err = consul():put("/session/renew/" .. id, "")
    if res and res.status == 200 then
        store.count_renewal()
        if store.cache_dict() then
            -- this worker's view of the global config may lag the node's: no
            -- replacing a session another worker just made for the new one
            config.load_global()
        end
        local ttl = store.session_ttl()
        if ttl and ttl ~= _M.consul_ttl() then
            return replace(id)
        end
        return true
    end

    if res and res.status == 404 then
        ngx_log(ngx_WARN, "[zedcup] session: ", id, " is gone, creating a new one")
        store.renew_turn_reset()
        id, err = ensure(id)
        if not id then
            return nil, err
        end
        return true
    end

    -- let the next worker that ticks try again at once
    store.renew_turn_reset()
    return nil, answer_error("session: renew " .. id, res, err)
end


--- destroy() -> true | nil, err: destroys the node's session (releasing its locks)
function _M.destroy()
    local d, err = dict()
    if not d then
        return nil, err
    end
    local id = store.session_id()
    if not id then
        return true
    end
    store.set_session_id(nil)
    return destroy_remote(consul(), id)
end


local function check_name(name)
    if not schema.valid_name(name) then
        error("lock name: must be a non-empty name without '/', not '.' or '..' (got "
              .. tostring(name) .. ")", 3)
    end
end


-- -> whether Consul no longer knows session `id`, asked after an acquire it
-- refused with 500 (its answer to a session it does not know, whatever the
-- wording): session/info lists it, or answers an empty list (Consul 1.8: `[]`,
-- older versions `null`) | nil when Consul did not say
local function session_gone(c, id)
    local res = c:get("/session/info/" .. id)
    if not res or res.status ~= 200 then
        return nil
    end
    local body = res.body
    return type(body) ~= "table" or body[1] == nil
end


--- acquire(name) -> true | false | nil, err
-- Takes the cluster lock `name` with the node's session (true when this node
-- holds it, also when it already did; false when another node holds it or the
-- key is in lock-delay).
function _M.acquire(name)
    check_name(name)
    local id, err = ensure()
    if not id then
        return nil, err
    end

    local res
    res, err = consul():put_key(lock_key(name), _M.node_name(), { acquire = id })
    if res and res.status == 200 then
        return res.body == true
    end

    if res and res.status == 500 and session_gone(consul(), id) then
        -- our session is gone: replace it now, the caller retries next time
        local _, cerr = ensure(id)
        if cerr then
            ngx_log(ngx_ERR, "[zedcup] ", cerr)
        end
    end
    return nil, answer_error("session: acquire " .. lock_key(name), res, err)
end


--- release(name) -> true | false | nil, err (false: this node did not hold it)
function _M.release(name)
    check_name(name)
    local id = _M.id()
    if not id then
        return false
    end
    local res, err = consul():put_key(lock_key(name), _M.node_name(), { release = id })
    if res and res.status == 200 then
        -- false also for a session Consul no longer knows
        return res.body == true
    end
    return nil, answer_error("session: release " .. lock_key(name), res, err)
end


--- holder(name) -> node name, session id | nil (no holder) | nil, err
function _M.holder(name)
    check_name(name)
    local res, err = consul():get_key(lock_key(name))
    if not res then
        return nil, "session: holder of " .. lock_key(name) .. ": " .. tostring(err)
    end
    if res.status == 404 then
        return nil
    end
    if res.status ~= 200 or type(res.body) ~= "table" or type(res.body[1]) ~= "table" then
        return nil, answer_error("session: holder of " .. lock_key(name), res, err)
    end
    local entry = res.body[1]
    if not entry.Session then
        return nil
    end
    return entry.Value, entry.Session
end


--- holds(name) -> whether this node's session holds cluster lock `name` (one read)
function _M.holds(name)
    local _, sid = _M.holder(name)
    return sid ~= nil and sid == _M.id()
end


--- worker_lock(name, ttl) -> true | false | nil, err
-- Elects one worker of this node for job `name`: true when this worker holds
-- the lock (taken now, or renewed for another `ttl` seconds). A holder whose
-- process is gone is replaced at once (zedcup.nodelock); one that stops
-- calling is replaced once `ttl` has passed, so `ttl` must be longer than
-- anything the holder does between two calls (for a blocking query: its wait
-- plus a margin).
function _M.worker_lock(name, ttl)
    if type(name) ~= "string" or name == "" then
        error("name must be a non-empty string (got " .. tostring(name) .. ")", 2)
    end
    if type(ttl) ~= "number" or ttl <= 0 then
        error("ttl must be a positive number (got " .. tostring(ttl) .. ")", 2)
    end
    local ok, err = store.worker_lock(name, ttl)
    if ok == nil then
        return nil, "worker lock " .. name .. ": " .. tostring(err)
    end
    held_worker_locks[name] = ok or nil
    return ok
end


--- worker_unlock(name) -> true when this worker held the lock
function _M.worker_unlock(name)
    return store.worker_unlock(name)
end


--- worker_lock_holder(name) -> pid of the worker holding it, or nil
function _M.worker_lock_holder(name)
    return store.worker_lock_holder(name)
end


local function renew_job()
    if worker_exiting() then
        return false
    end
    return _M.renew()
end


local exit_timer
local EXIT_TIMER_DELAY = 10 * 365 * 86400


-- Runs when this worker exits (a pending timer nginx fires prematurely).
local function on_exit(premature)
    if not premature then
        return
    end
    local d = dict()
    if not d then
        return
    end
    for name in pairs(held_worker_locks) do
        _M.worker_unlock(name)
    end
    if store.generation() ~= conf.gen then
        return -- a reload: the new workers carry on with this node's session
    end
    -- `nginx -s quit` (or stop): the first worker out releases the node's
    -- locks and destroys its session, once
    if not store.quit_token(conf.gen) then
        return
    end
    local id = store.session_id()
    if not id then
        return
    end
    -- a release, unlike the session's end, has no lock-delay
    release_all(consul(), id)
    local ok, err = _M.destroy()
    if ok then
        ngx_log(ngx_INFO, "[zedcup] session: ", id, " destroyed, locks released (nginx stopping)")
    else
        ngx_log(ngx_WARN, "[zedcup] session: destroying ", id, " on exit: ", err)
    end
end


--- run_workers(): starts the renewal timer in this worker (init_worker_by_lua).
-- Every worker runs it; the shm token lets one of them renew per interval.
function _M.run_workers()
    -- no back-off beyond the interval: a session lapses if renewals stop
    local ok, err = true, nil
    if not timer.running("session renewal") then
        ok, err = timer.every("session renewal", _M.renew_interval, renew_job)
    end
    if not ok then
        ngx_log(ngx_ERR, "[zedcup] session: ", err)
        return nil, err
    end
    if not exit_timer then
        -- nginx runs pending timers, with premature = true, when the worker exits
        exit_timer, err = ngx.timer.at(EXIT_TIMER_DELAY, on_exit)
        if not exit_timer then
            ngx_log(ngx_ERR, "[zedcup] session: could not set the exit timer: ", err)
        end
    end
    return true
end



return _M
