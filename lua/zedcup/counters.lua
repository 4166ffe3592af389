-- zedcup.counters: per-request counting, in worker memory, flushed to the
-- node's shared dict off the request path.
--
-- The request path (handler and balancer alike, through zedcup.report) calls:
--   counters.try(inst, pool, host)        a try connected to the host
--   counters.failure(inst, pool, host, kind)  a try failed: "connect" (a try that
--                                         never connected), "request" or "status"
--   counters.request(inst, pool_index)    once per client request, at its end:
--                                         the index of the pool whose host gave
--                                         a good answer, nil when none did
-- Both are a table lookup and a few increments of worker-local numbers: no
-- shared dict, no allocation once a host has its entry. Every worker's flush
-- timer (every FLUSH_INTERVAL s, and before a scrape in the scraping worker)
-- adds the deltas to node-wide counters in the node store, which readers
-- (zedcup.status, zedcup.metrics) read by name; counts are per node and
-- survive reloads, not restarts.

local store = require "zedcup.store"

local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local pairs = pairs
local tostring = tostring


local _M = { _VERSION = "0.1.0" }

-- s between flushes of a worker's counts to the shared dict
local FLUSH_INTERVAL = 1
_M.FLUSH_INTERVAL = FLUSH_INTERVAL

-- what a try or a request can add to, in order (the store's counter fields)
local HOST_FIELDS = { "tries", "connect", "request", "status" }
local INSTANCE_FIELDS = { "requests", "failovers", "no_host", "tries" }
_M.HOST_FIELDS = HOST_FIELDS
_M.INSTANCE_FIELDS = INSTANCE_FIELDS

-- worker-local, keyed by the effective host record (a config change makes new
-- records: their counts go on under the same names)
local hosts = {}     -- host record -> { inst, pool name, host name, tries, connect, request, status }
local insts = {}     -- instance name -> { requests, failovers, no_host, tries }
local dirty = false
local enabled = true -- per-request counting in this worker (enable())


local function host_entry(inst, pool, host)
    local e = { inst = inst, pool = pool.name, host = host.name, tries = 0, connect = 0, request = 0, status = 0 }
    hosts[host] = e
    return e
end


local function instance_entry(inst)
    local e = { requests = 0, failovers = 0, no_host = 0, tries = 0 }
    insts[inst] = e
    return e
end


--- try(inst, pool, host): a try connected to `host` (effective records)
function _M.try(inst, pool, host)
    if not enabled then
        return
    end
    local e = hosts[host] or host_entry(inst, pool, host)
    e.tries = e.tries + 1
    local ie = insts[inst] or instance_entry(inst)
    ie.tries = ie.tries + 1
    dirty = true
end


local KINDS = { connect = true, request = true, status = true }

--- failure(inst, pool, host, kind): a try on `host` failed; kind "connect" (it
-- never connected: it counts as a try here), "request" or "status"
function _M.failure(inst, pool, host, kind)
    if not enabled then
        return
    end
    if not KINDS[kind] then
        error("kind must be \"connect\", \"request\" or \"status\" (got " .. tostring(kind) .. ")", 2)
    end
    local e = hosts[host] or host_entry(inst, pool, host)
    e[kind] = e[kind] + 1
    if kind == "connect" then
        e.tries = e.tries + 1
        local ie = insts[inst] or instance_entry(inst)
        ie.tries = ie.tries + 1
    end
    dirty = true
end


--- request(inst, pool_index?): a client request ended, answered well by a host
-- of the pool at pool_index (nil: no host did); pool_index > 1 is a failover
function _M.request(inst, pool_index)
    if not enabled then
        return
    end
    local ie = insts[inst] or instance_entry(inst)
    ie.requests = ie.requests + 1
    if not pool_index then
        ie.no_host = ie.no_host + 1
    elseif pool_index > 1 then
        ie.failovers = ie.failovers + 1
    end
    dirty = true
end


--- enable(on): per-request counting on (the default) or off in this worker; off, try()
-- and request() return at once (bench/bench_metrics.py compares the two)
function _M.enable(on)
    enabled = on and true or false
end


local add_host_count = store.add_host_count
local add_instance_count = store.add_instance_count


--- flush() -> true | nil, err: adds this worker's counts to the node's (timer job)
function _M.flush()
    if not dirty or not store.cache_dict() then
        return true
    end
    dirty = false
    local first_err
    -- entries idle since the last flush are dropped, so records of old
    -- configs do not pile up; a busy host keeps its entry (no allocation)
    for host, e in pairs(hosts) do
        if e.tries == 0 then
            hosts[host] = nil
        else
            for i = 1, #HOST_FIELDS do
                local f = HOST_FIELDS[i]
                local n = e[f]
                if n > 0 then
                    local ok, err = add_host_count(e.inst, e.pool, e.host, f, n)
                    if ok then
                        e[f] = 0
                    else
                        first_err = first_err or err
                        dirty = true
                    end
                end
            end
        end
    end
    for inst, e in pairs(insts) do
        local any = false
        for i = 1, #INSTANCE_FIELDS do
            local f = INSTANCE_FIELDS[i]
            local n = e[f]
            if n > 0 then
                any = true
                local ok, err = add_instance_count(inst, f, n)
                if ok then
                    e[f] = 0
                else
                    first_err = first_err or err
                    dirty = true
                end
            end
        end
        if not any then
            insts[inst] = nil
        end
    end
    if first_err then
        return nil, first_err
    end
    return true
end


--- host(inst, pool_name, host_name) -> { tries =, connect =, request =, status = } (node-wide, flushed)
function _M.host(inst, pool_name, host_name)
    local out = {}
    for i = 1, #HOST_FIELDS do
        local f = HOST_FIELDS[i]
        out[f] = store.host_count(inst, pool_name, host_name, f)
    end
    return out
end


--- instance(inst) -> { requests =, failovers =, no_host =, tries = } (node-wide, flushed)
function _M.instance(inst)
    local out = {}
    for i = 1, #INSTANCE_FIELDS do
        local f = INSTANCE_FIELDS[i]
        out[f] = store.instance_count(inst, f)
    end
    return out
end


--- pending() -> whether this worker holds counts not flushed yet
function _M.pending()
    return dirty
end


-- A timer left pending: nginx runs it (premature) when the worker exits, so a
-- reload or a clean stop keeps the counts of its last second.
local EXIT_WAIT = 3600

local function on_exit(premature)
    if premature then
        local ok, err = _M.flush()
        if not ok then
            ngx_log(ngx_ERR, "[zedcup] counters: flushing at exit: ", err)
        end
        return
    end
    local ok, err = ngx.timer.at(EXIT_WAIT, on_exit)
    if not ok then
        ngx_log(ngx_ERR, "[zedcup] counters: ", err)
    end
end


--- run_workers(): starts this worker's flush timer (init_worker_by_lua)
function _M.run_workers()
    local timer = require "zedcup.timer"
    if timer.running("zedcup counters flush") then
        return true
    end
    local ok, err = timer.every("zedcup counters flush", FLUSH_INTERVAL, _M.flush)
    if not ok then
        ngx_log(ngx_ERR, "[zedcup] counters: ", err)
        return nil, err
    end
    ok, err = ngx.timer.at(EXIT_WAIT, on_exit)
    if not ok then
        ngx_log(ngx_ERR, "[zedcup] counters: ", err)
    end
    return true
end


return _M
