-- zedcup.watch: one Consul blocking query loop per node for a key prefix.
-- Each worker runs the loop; only the holder of the node lock queries, the
-- others stand by and take over when the lock lapses or its holder is gone.
--
-- Surviving Consul: after any failed or refused request the next one is not
-- blocking (index 0): it resyncs the whole prefix, and the appliers compare
-- contents, so a Consul restarted with a lower or an equal index cannot hide
-- a change behind an old index. Consul's index going backwards is told to the
-- applier (`info.reset`), which decides what an empty answer then means.
-- Loops are at least timer's min_gap apart; failures back off (zedcup.timer)
-- up to the settings' backoff_cap and recover by themselves.

local kv = require "zedcup.kv"
local session = require "zedcup.session"
local store = require "zedcup.store"
local timer = require "zedcup.timer"

local ngx = ngx
local ngx_sleep = ngx.sleep
local ngx_now = ngx.now
local ngx_update_time = ngx.update_time
local worker_exiting = ngx.worker.exiting
local spawn = ngx.thread.spawn
local wait = ngx.thread.wait
local kill = ngx.thread.kill

local _M = { _VERSION = "0.1.0" }

-- what the exit watcher returns: values no query answer can be
local EXITING = {}
local RESET = {}

-- how often a standby worker looks at the lock
local STANDBY_INTERVAL = 0.5


local function query(w, wait_s)
    local c = kv.client((wait_s + wait_s / 16 + 5) * 1000)
    return kv.get_tree(w.path(), w.index, wait_s, c)
end


-- Returns when the worker starts exiting, so that a long blocking query never
-- holds up a graceful shutdown; or when another watch of this node saw
-- Consul's index go back after this query was sent: a restarted Consul whose
-- index is below ours would hold this query until its index caught up (or
-- `wait` ran out), hiding every change made meanwhile.
local function exit_watch(w)
    local sent_at = w.info.sent_at
    while not worker_exiting() do
        if store.reset_at() > sent_at then
            return RESET
        end
        ngx_sleep(0.2)
    end
    return EXITING
end


local function step(w)
    local s = w.settings()
    -- one worker of the node watches (session's worker election)
    local lock_name = "watch " .. w.name
    local ok, err = session.worker_lock(lock_name, s.wait + s.lock_ttl)
    if not ok then
        if err then
            return nil, err
        end
        w.index = 0 -- a new holder starts from scratch
        ngx_sleep(STANDBY_INTERVAL)
        return false -- standing by: neither a success nor a failure
    end

    ngx_update_time()
    w.info.sent_at = ngx_now()
    local q = spawn(query, w, s.wait)
    local e = spawn(exit_watch, w)
    local okq, entries, index = wait(q, e)
    kill(q)
    kill(e)
    if entries == EXITING then
        session.worker_unlock(lock_name)
        return false
    end
    if entries == RESET then
        w.index = 0 -- resync at once, not blocking
        return false
    end
    if not okq or not entries then
        -- whatever Consul is now (restarted, restored, another server), the
        -- next request must not block on an index it may never reach
        w.index = 0
        local err = okq and index or ("watch " .. w.name .. ": " .. tostring(entries))
        store.watch_error(w.name, err)
        return nil, err
    end

    index = index or 0
    -- the highest index this node saw (kept in the dict: it outlives a reload)
    local seen = store.watch_index(w.name)
    local node_max = store.max_index()
    local info = w.info
    -- Consul's index went back: this prefix's, or (for an empty listing, whose
    -- index is Consul's whole KV index) the highest any watch of the node saw
    info.reset = index < seen or (#entries == 0 and index < node_max)
    info.resync = w.index == 0
    info.seen = seen
    store.watch_index(w.name, index)
    store.max_index(index, info.reset)

    if index == w.index and w.applied then
        if w.alive then
            w.alive()
        end
        return true
    end

    local aok, aerr = w.apply(entries, index, info)
    if not aok then
        w.index = 0
        return nil, aerr
    end
    w.applied = true
    w.index = index
    if w.alive then
        w.alive()
    end
    return true
end


--- running(name) -> whether this worker runs watch `name`
function _M.running(name)
    return timer.running("zedcup watch " .. name)
end


--- start(name, path_fn, apply_fn, settings_fn, alive_fn?)
-- apply_fn(entries, index, info) -> true | nil, err: on every change and every
-- resync; info = { reset = Consul's index went below the highest seen,
-- resync = the first answer after a start or a failure, seen = that highest index,
-- sent_at = when the request was sent (ngx.now()) };
-- alive_fn(): after every answer, changed or not;
-- settings_fn() -> { wait =, lock_ttl =, backoff_cap = }
function _M.start(name, path_fn, apply_fn, settings_fn, alive_fn)
    local w = {
        alive = alive_fn,
        name = name,
        path = path_fn,
        apply = apply_fn,
        settings = settings_fn,
        index = 0,
        applied = false,
        info = {},
    }
    return timer.loop({
        name = "zedcup watch " .. name,
        backoff = 0.5,
        backoff_cap = function()
            return settings_fn().backoff_cap
        end,
    }, step, w)
end


return _M
