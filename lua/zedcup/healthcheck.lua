-- zedcup.healthcheck: active health checks and the revival of hosts. The
-- check kinds (healthcheck.type): http and https here, tcp, agent and custom
-- in lua/zedcup/check/<type>.lua (run_check dispatches).
--
-- One node of the cluster checks at a time: the holder of the cluster lock
-- `healthcheck` (zedcup.session), and within it one worker (a worker lock).
-- Every node watches the lock key (one blocking query per node, zedcup.watch)
-- and tries to take the lock as soon as it is free: at once after a holder's
-- clean stop (which releases it), lock-delay (1 s) after its session ended.
-- Only a node that sees the lock free writes to Consul for it; the holder
-- keeps checking through a Consul outage (transitions are written when Consul
-- answers again).
--
-- Every healthcheck_interval the checker looks at every host that has an
-- effective healthcheck (host level beats pool level beats instance level;
-- `true` means the defaults) and checks those whose own `interval` has passed.
-- Each result stays in this node's shared dict (state.record_check); `fall` consecutive failures
-- of an up host mark it down, `rise` consecutive passes of a down host mark it
-- up. Marking is a cluster-wide CAS in zedcup.state, so each transition fires
-- host_down / host_up once; it is written off the checks (one writer per
-- host, retried until Consul takes it), so Consul's latency never slows them.
--
-- Every host_revive_interval the same worker brings back hosts that failure
-- accounting marked down and that have no healthcheck, once error_timeout has
-- passed since their last error. Hosts with a healthcheck come back only
-- through `rise`.

local config = require "zedcup.config"
local deps = require "zedcup.deps"
local resolver = require "zedcup.resolver"
local selection = require "zedcup.select"
local session = require "zedcup.session"
local state = require "zedcup.state"
local store = require "zedcup.store"
local timer = require "zedcup.timer"
local watch = require "zedcup.watch"
local weights = require "zedcup.weights"

local ngx = ngx
local ngx_log = ngx.log
local ngx_WARN = ngx.WARN
local ngx_INFO = ngx.INFO
local ngx_now = ngx.now
local ngx_update_time = ngx.update_time
local spawn = ngx.thread.spawn
local wait = ngx.thread.wait
local worker_exiting = ngx.worker.exiting
local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local math_max = math.max
local math_min = math.min
local ngx_sleep = ngx.sleep
local str_lower = string.lower
local str_gsub = string.gsub


local _M = {
    _VERSION = "0.1.0",
}

local EMPTY = {}
local LOCK = "healthcheck"          -- cluster lock and worker lock name
local CONCURRENCY = 16              -- checks in flight at once

-- worker-local: "<inst>/<pool>/<host>" -> { next_at, passes, fails }
local hosts = {}
local holding = false


local counter = store.count


--- stats() -> this node's counters (all workers): passes (as the checker),
-- checks, failed, marked_down, marked_up, revived
function _M.stats()
    local out = {}
    for _, k in ipairs({ "passes", "checks", "failed", "marked_down", "marked_up", "revived" }) do
        out[k] = store.counter(k)
    end
    out.holding = holding
    return out
end


---------------------------------------------------------------------------
-- Effective healthcheck of a host
---------------------------------------------------------------------------

--- effective(inst_conf, pool, host) -> the host's healthcheck with defaults, or nil
-- inst_conf, pool, host: effective records (zedcup.schema applied every
-- healthcheck default at every level). Host level beats pool level beats
-- instance level; `false` at a level means "none" there; status_codes default
-- to the pool's.
function _M.effective(inst_conf, pool, host)
    local hc = host.healthcheck
    if hc == nil then
        hc = pool.healthcheck
    end
    if hc == nil then
        hc = inst_conf.healthcheck
    end
    if not hc then
        return nil
    end
    if hc.status_codes ~= nil then
        return hc
    end
    local out = {}
    for k, v in pairs(hc) do
        out[k] = v
    end
    out.status_codes = pool.status_codes
    return out
end


---------------------------------------------------------------------------
-- One check
---------------------------------------------------------------------------

-- status-code sets of the checks' patterns, made once per pattern list
-- (zedcup.select.status_set is the one reading of "500", "50x", "5xx")
local code_sets = setmetatable({}, { __mode = "k" })

local function bad_status(codes, status)
    local set = code_sets[codes]
    if not set then
        set = selection.status_set(codes)
        code_sets[codes] = set
    end
    return set[status] == true
end


local is_ip = resolver.is_literal


local function header(headers, name)
    local lname = str_lower(name)
    for k, v in pairs(headers) do
        if str_lower(k) == lname then
            return v
        end
    end
    return nil
end


--- check(inst_conf, pool, host, hc) -> true | false, why
function _M.check(inst_conf, pool, host, hc)
    local httpc, err = deps.http.new()
    if not httpc then
        return false, "could not create an HTTP client: " .. tostring(err)
    end
    httpc:set_timeouts(pool.timeout, pool.read_timeout, pool.read_timeout)

    local ssl = hc.ssl
    if ssl == nil then
        ssl = inst_conf.ssl
    end
    local verify, sni = true, nil
    if type(ssl) == "table" then
        if ssl.verify ~= nil then
            verify = ssl.verify -- (the schema stores the ssl_verify spelling as verify)
        end
        sni = ssl.sni_name
    end
    local headers = hc.headers or {}

    local port = host.port
    local addr, unix = selection.address(host.host)
    if ssl and not sni then
        local h = header(headers, "Host")
        if h then
            sni = (str_gsub(h, ":%d+$", ""))
        elseif not unix and not is_ip(addr) then
            sni = addr
        end
    end

    if not unix and not is_ip(addr) then
        -- a name: its first address from zedcup.resolver, the name as Host
        local addrs, rerr = resolver.resolve(addr)
        if not addrs then
            return false, "could not resolve " .. addr .. ": " .. tostring(rerr)
        end
        if not header(headers, "Host") then
            local with_host = { Host = addr }
            for k, v in pairs(headers) do
                with_host[k] = v
            end
            if port and port ~= (ssl and 443 or 80) then
                with_host.Host = addr .. ":" .. port
            end
            headers = with_host
        end
        addr = addrs[1]
    end

    local copts = {
        scheme = "http",
        host = addr,
        port = not unix and port or nil,
    }
    if ssl then
        copts.scheme = "https"
        copts.ssl_verify = verify
        copts.ssl_server_name = sni
    end
    local ok
    ok, err = httpc:connect(copts)
    if not ok then
        httpc:close()
        return false, "could not connect: " .. tostring(err)
    end

    local res
    res, err = httpc:request({
        method = hc.method,
        path = hc.path,
        headers = headers,
    })
    if not res then
        httpc:close()
        return false, "request failed: " .. tostring(err)
    end

    local _, berr = res:read_body()
    httpc:close()
    if berr then
        return false, "reading the body failed: " .. tostring(berr)
    end

    if bad_status(hc.status_codes or EMPTY, res.status) then
        return false, "Bad status code: " .. tostring(res.status)
    end
    return true
end


-- healthcheck.type -> the module of that kind (lua/zedcup/check/<type>.lua)
local KINDS = {
    tcp = "zedcup.check.tcp",
    agent = "zedcup.check.agent",
    custom = "zedcup.check.custom",
}


--- run_check(inst_conf, pool, host, hc) -> true | false, why, info: the check
-- of hc.type (http when absent; https is http with TLS on); info: an agent
-- check's { state, weight }
function _M.run_check(inst_conf, pool, host, hc)
    local kind = hc.type
    if kind == nil or kind == "http" then
        return _M.check(inst_conf, pool, host, hc)
    end
    if kind == "https" then
        if not hc.ssl then
            local tls = { ssl = (inst_conf.ssl ~= false and inst_conf.ssl) or true }
            for k, v in pairs(hc) do
                if k ~= "ssl" then
                    tls[k] = v
                end
            end
            hc = tls
        end
        return _M.check(inst_conf, pool, host, hc)
    end
    local mod = KINDS[kind]
    if not mod then
        return false, "unknown healthcheck type " .. tostring(kind)
    end
    return require(mod).check(host, hc, pool)
end


---------------------------------------------------------------------------
-- Passes
---------------------------------------------------------------------------

-- The effective configs of every instance: { [name] = config } | nil, err
local function instances()
    return config.instances()
end


-- Down cluster-wide, as this worker knows it: Consul's state (through the
-- node's state watcher) or this worker's own mark_down. A node-local mark
-- from request failures (an expiry) does not count: only Consul's does.
local function host_down(inst, pool_name, host_name)
    local d = state.down_for(inst)
    d = d and d[pool_name]
    return d ~= nil and d[host_name] == true
end


---------------------------------------------------------------------------
-- Transitions: written to Consul off the checks, so a slow or hung Consul
-- (every write waits out the read timeout) never slows the check cadence.
-- One writer (a timer) per host with a transition to write: it retries until
-- Consul takes it, one write at a time, so the up/down of a host are written
-- in the order the checks saw them; a newer transition of the host replaces
-- one not written yet (latest wins: an unwritten down followed by an up
-- writes nothing).
---------------------------------------------------------------------------

-- worker-local (the checker's worker): host key -> { up =, inst =, pool =, host =, reason = }
local pending = {}
local writing = {}   -- host key -> true while its writer runs
local WRITE_RETRY = 0.5  -- s between two tries of a transition Consul did not take


local function write_one(t)
    if t.up then
        return state.mark_up(t.inst, t.pool, t.host, t.reason)
    end
    return state.mark_down(t.inst, t.pool, t.host, t.reason)
end


local function writer_loop(key)
    while not worker_exiting() do
        local t = pending[key]
        if not t then
            return
        end
        local won, err = write_one(t)
        if won == nil then
            if not t.logged then
                t.logged = true
                ngx_log(ngx_WARN, "[zedcup] healthcheck: marking ", key, t.up and " up: " or " down: ",
                        err, " (retrying until Consul takes it)")
            end
            ngx_sleep(WRITE_RETRY)
        else
            if won then
                counter(t.up and "marked_up" or "marked_down")
            end
            if pending[key] == t then
                pending[key] = nil
            end
        end
    end
end


local function writer(premature, key)
    if not premature then
        local ok, err = pcall(writer_loop, key)
        if not ok then
            ngx_log(ngx.ERR, "[zedcup] healthcheck: writing the transition of ", key, ": ", err)
        end
    end
    writing[key] = nil
end


local function start_writer(key)
    if writing[key] or not pending[key] then
        return
    end
    local ok, err = ngx.timer.at(0, writer, key)
    if not ok then
        -- the next check of the host tries again
        ngx_log(ngx_WARN, "[zedcup] healthcheck: writing the transition of ", key, ": ", err)
        return
    end
    writing[key] = true
end


local function transition(job, up, reason)
    local key = job.key
    pending[key] = { up = up, inst = job.inst, pool = job.pool.name, host = job.host.name, reason = reason }
    start_writer(key)
end


--- transitions_pending() -> how many host transitions this worker has not written yet
function _M.transitions_pending()
    local n = 0
    for _ in pairs(pending) do
        n = n + 1
    end
    return n
end


-- Down as the checks last decided (a transition not written yet), else as
-- the cluster knows it
local function wanted_down(key, inst, pool_name, host_name)
    local t = pending[key]
    if t then
        return not t.up
    end
    return host_down(inst, pool_name, host_name)
end


local function account(job, ok, why)
    local inst, pool, host, hc, hs = job.inst, job.pool, job.host, job.hc, job.hs
    counter("checks")

    local _, err = state.record_check(inst, pool.name, host.name, ok, why)
    if err then
        ngx_log(ngx_WARN, "[zedcup] healthcheck: recording the check of ", job.key, ": ", err)
    end

    start_writer(job.key) -- one that could not start before
    local down = wanted_down(job.key, inst, pool.name, host.name)
    if ok then
        hs.fails = 0
        if not down then
            hs.passes = 0
            return
        end
        hs.passes = hs.passes + 1
        if hs.passes >= hc.rise then
            transition(job, true, hs.passes .. " passing health check(s)")
            hs.passes = 0
        end
        return
    end

    counter("failed")
    hs.passes = 0
    if down then
        hs.fails = 0
        return
    end
    hs.fails = hs.fails + 1
    if hs.fails >= hc.fall then
        transition(job, false, "health check failed " .. hs.fails .. " times: " .. tostring(why))
        hs.fails = 0
    end
end


local weight_writing = {} -- host key -> true while its agent weight is being written

local function write_weight(premature, key, inst, pool_name, host_name, info)
    if not premature then
        local ok, res, werr = pcall(weights.agent_result, inst, pool_name, host_name, info)
        if not ok then
            werr = res -- what it raised
        end
        if werr then
            ngx_log(ngx_WARN, "[zedcup] healthcheck: ", key, ": ", werr)
        end
    end
    weight_writing[key] = nil
end


local function run_one(job)
    local ok, pok, why, info = pcall(_M.run_check, job.inst_conf, job.pool, job.host, job.hc)
    if not ok then
        pok, why = false, "check raised: " .. tostring(pok)
    elseif info then
        -- an agent's NN% / drain: the host's run-time weight (zedcup.weights),
        -- written off the checks like transitions; a write that failed is
        -- tried again after the host's next check
        local key = job.key
        if not weight_writing[key]
           and weights.agent_changed(job.inst, job.pool.name, job.host.name, info) then
            local tok, terr = ngx.timer.at(0, write_weight, key, job.inst, job.pool.name, job.host.name, info)
            if tok then
                weight_writing[key] = true
            else
                ngx_log(ngx_WARN, "[zedcup] healthcheck: ", key, ": ", terr)
            end
        end
    end
    local aok, aerr = pcall(account, job, pok, why)
    if not aok then
        ngx_log(ngx.ERR, "[zedcup] healthcheck: accounting ", job.key, ": ", aerr)
    end
    return true
end


local function worker_lock_ttl()
    return math_max(session.global("worker_lock_ttl"), 3 * session.global("healthcheck_interval"))
end


-- -> true when this worker of this node is the cluster's checker now
local function elected()
    local mine, err = session.worker_lock(LOCK, worker_lock_ttl())
    if not mine then
        holding = false
        return false, err
    end
    local holder = store.checker_holder() -- nil until the lock watch answered
    local id = session.id()
    local held
    if holder and holder ~= "" and holder == id then
        held = true -- ours, as the lock watch last saw it: nothing to write
    elseif holder and holder ~= "" then
        held = false -- another node's
    else
        held, err = session.acquire(LOCK)
        if held then
            store.checker_holder(session.id() or "")
        elseif holding and (store.checker_holder() or "") == "" then
            -- this node was the checker and its session lapsed (Consul was
            -- away): nobody else checks, so go on while the lock is taken
            -- back (lock-delay, a new session), instead of a gap
            return true
        end
    end
    if not held then
        if holding then
            ngx_log(ngx_INFO, "[zedcup] healthcheck: this node no longer holds the lock")
        end
        holding = false
        hosts = {}
        pending = {} -- the new checker decides from its own checks
        return false, err
    end
    if not holding then
        ngx_log(ngx_INFO, "[zedcup] healthcheck: this node (", session.node_name(), ") checks the cluster")
        hosts = {}
    end
    holding = true
    store.checker_kick(false)
    return true
end


-- The lock watch's applier: who holds the lock now; a free lock is taken.
local function lock_seen(entries)
    local key = session.lock_key(LOCK)
    local sid = ""
    for _, e in ipairs(entries) do
        if e.Key == key and type(e.Session) == "string" then
            sid = e.Session
        end
    end
    store.checker_holder(sid)
    if sid ~= "" then
        return true
    end
    -- free: a session's end leaves the key in lock-delay for 1 s, so retry a little
    for _ = 1, 8 do
        if worker_exiting() then
            return true
        end
        local held, err = session.acquire(LOCK)
        if held then
            store.checker_holder(session.id() or "")
            store.checker_kick(true)
            return true
        end
        if held == nil then
            return nil, "healthcheck lock: " .. tostring(err)
        end
        local _, other = session.holder(LOCK)
        if other then
            store.checker_holder(other)
            return true
        end
        ngx_sleep(0.5)
    end
    return true
end


--- pass() -> true | false (not the checker) | nil, err: one healthcheck pass
-- (timer job, every worker)
function _M.pass()
    if worker_exiting() then
        return false
    end
    local ok, err = elected()
    if not ok then
        if err then
            return nil, err
        end
        return false
    end
    counter("passes")

    local insts
    insts, err = instances()
    if not insts then
        return nil, "healthcheck: instances: " .. tostring(err)
    end

    ngx_update_time()
    local now = ngx_now()
    local due = {}
    local seen = {}
    for inst, conf in pairs(insts) do
        for _, pool in ipairs(conf.pools or {}) do
            for _, host in ipairs(pool.hosts or {}) do
                local hc = pool.up ~= false and host.up ~= false and _M.effective(conf, pool, host)
                if hc then
                    local key = inst .. "/" .. pool.name .. "/" .. host.name
                    local hs = hosts[key]
                    if not hs then
                        hs = { next_at = 0, passes = 0, fails = 0 }
                    end
                    seen[key] = hs
                    -- a host that is down is checked every unhealthy_interval (also
                    -- when it went down after its next check was scheduled)
                    local sick = hc.unhealthy_interval and wanted_down(key, inst, pool.name, host.name)
                    if sick and hs.next_at > now + hc.unhealthy_interval then
                        hs.next_at = now + hc.unhealthy_interval
                    end
                    if now >= hs.next_at then
                        hs.next_at = now + (sick and hc.unhealthy_interval or hc.interval)
                        due[#due + 1] = {
                            key = key, inst = inst, inst_conf = conf,
                            pool = pool, host = host, hc = hc, hs = hs,
                        }
                    end
                end
            end
        end
    end
    hosts = seen -- forgets hosts that left the config
    for key in pairs(pending) do
        if not seen[key] then
            pending[key] = nil -- and their transitions not written yet (its writer stops)
        end
    end

    -- at most CONCURRENCY checks in flight; the worker lock is renewed
    -- between batches so a long pass never loses it
    local i = 1
    while i <= #due do
        if worker_exiting() then
            return true
        end
        local threads = {}
        for j = i, math.min(i + CONCURRENCY - 1, #due) do
            local th, serr = spawn(run_one, due[j])
            if th then
                threads[#threads + 1] = th
            else
                ngx_log(ngx_WARN, "[zedcup] healthcheck: ", due[j].key, ": ", serr)
            end
        end
        for _, th in ipairs(threads) do
            wait(th)
        end
        i = i + CONCURRENCY
        session.worker_lock(LOCK, worker_lock_ttl())
    end
    return true
end


--- revive() -> true | nil, err: brings back hosts without a healthcheck whose
-- error_timeout has passed since their last error (timer job, every worker)
function _M.revive()
    if worker_exiting() then
        return false
    end
    local ok, err = elected()
    if not ok then
        if err then
            return nil, err
        end
        return false
    end

    local insts
    insts, err = instances()
    if not insts then
        return nil, "revive: instances: " .. tostring(err)
    end

    -- state times are whole seconds (Consul Flags): count from the end of that
    -- second, so that no host comes back before its error_timeout
    ngx_update_time()
    local now = ngx_now() - 1
    local snap = state.snapshot()
    for inst, conf in pairs(insts) do
        local si = snap[inst]
        for _, pool in ipairs(si and conf.pools or {}) do
            local sp = si[pool.name]
            for _, host in ipairs(sp and pool.hosts or {}) do
                local st = sp[host.name]
                if st and st.down and not _M.effective(conf, pool, host) then
                    local last = math_max(st.errors_at or 0, st.last_error_at or 0, st.down_at or 0)
                    if now - last >= pool.error_timeout then
                        local won, merr = state.mark_up(inst, pool.name, host.name,
                            "revived: no error for " .. pool.error_timeout .. "s")
                        if won == nil then
                            ngx_log(ngx_WARN, "[zedcup] revive: ", inst, "/", pool.name, "/",
                                    host.name, ": ", merr)
                        elseif won then
                            counter("revived")
                            ngx_log(ngx_INFO, "[zedcup] revive: ", inst, "/", pool.name, "/",
                                    host.name, ": no error since ", last, " (error_timeout ",
                                    pool.error_timeout, "s)")
                        end
                    end
                end
            end
        end
    end
    return true
end


local function healthcheck_interval()
    if store.locks_dict() and store.checker_kick() then
        return 0.1 -- this node just took the lock: start checking now
    end
    return session.global("healthcheck_interval")
end


local watch_settings = {}
local function lock_watch_settings()
    watch_settings.wait = session.global("consul_wait_time")
    watch_settings.lock_ttl = session.global("worker_lock_ttl")
    watch_settings.backoff_cap = math_min(session.global("watcher_interval"), 1)
    return watch_settings
end


local function lock_path()
    return session.lock_key(LOCK)
end


local function revive_interval()
    return session.global("host_revive_interval")
end


--- run_workers(): starts the checker and reviver timers in this worker
-- (init_worker_by_lua, every worker; the locks elect one of them).
function _M.run_workers()
    local ok, err = true, nil
    if not timer.running("healthcheck") then
        ok, err = timer.every("healthcheck", healthcheck_interval, _M.pass)
    end
    if ok and not timer.running("revive") then
        ok, err = timer.every("revive", revive_interval, _M.revive)
    end
    if ok and not watch.running("healthcheck lock") then
        ok, err = watch.start("healthcheck lock", lock_path, lock_seen, lock_watch_settings)
    end
    if not ok then
        ngx_log(ngx.ERR, "[zedcup] healthcheck: ", err)
        return nil, err
    end
    return true
end


return _M
