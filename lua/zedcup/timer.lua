-- zedcup.timer: background jobs that cannot die.
--
-- Every job body runs under pcall. A job that throws, or returns `nil, err`, is
-- logged (rate-limited: the same message at most once per log_interval per job)
-- and rescheduled. An `every` job that failed runs again one interval later:
-- its back-off is its own interval, so a health check resumes within one
-- interval of Consul's return. A `loop` (long polls) backs off exponentially up
-- to its cap. A job that returns `false` did nothing this time (not its turn, no
-- work): that is neither a failure nor a recovery, so "recovered" is only logged
-- after a run that did its work. Intervals are read again before each
-- reschedule, so a changed global interval applies without a reload. A worker
-- keeps at most one pending timer per job name, and jobs stop when the worker
-- exits.
--
--   timer.every(name, get_interval, fn, ...)  fn(...) every get_interval() s
--   timer.loop(name, fn, ...)                 fn(...) again as soon as it returns
--                                             (long polls), at least min_gap apart
--
-- `name` is a string, or a table { name = , backoff = , backoff_cap = , min_gap = }
-- to tune one loop (backoff: the first delay after a failure, a number or a
-- function; backoff_cap: the longest).

local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_WARN = ngx.WARN
local ngx_NOTICE = ngx.NOTICE
local ngx_now = ngx.now
local ngx_update_time = ngx.update_time
local timer_at = ngx.timer.at
local worker_exiting = ngx.worker.exiting
local pcall = pcall
local select = select
local type = type
local tostring = tostring
local pairs = pairs
local math_min = math.min
local math_max = math.max
local unpack = unpack


local _M = {
    _VERSION = "0.1.0",
}

-- Tunables (per worker). Tests may lower them with timer.configure().
local options = {
    backoff_cap  = 60,   -- s, the longest delay after repeated failures
    loop_backoff = 1,    -- s, the first delay after a failed loop run
    min_gap      = 0.1,  -- s, the shortest time between two starts of a loop run
    log_interval = 30,   -- s, the same error of one job is logged at most this often
    recheck      = 1,    -- s, the longest sleep of an `every` job before it reads its interval again
}

-- name -> job. A job is present from every()/loop() until stopped or dead.
local jobs = {}


function _M.configure(opts)
    if type(opts) ~= "table" then
        error("opts must be a table", 2)
    end
    for k, v in pairs(opts) do
        if options[k] == nil then
            error("unknown timer option: " .. tostring(k), 2)
        end
        if type(v) ~= "number" or v < 0 then
            error("timer option " .. k .. " must be a non-negative number, got " .. tostring(v), 2)
        end
        if k == "recheck" and v == 0 then
            error("timer option recheck must be positive", 2)
        end
        options[k] = v
    end
end


local function resolve(v, default)
    if type(v) == "function" then
        local ok, res = pcall(v)
        if ok and type(res) == "number" and res > 0 then
            return res
        end
        return default, ok and ("bad value: " .. tostring(res)) or tostring(res)
    end
    if type(v) == "number" and v >= 0 then
        return v
    end
    return default
end


local function log_failure(job, err, delay)
    local now = ngx_now()
    local msg = tostring(err)

    if msg == job.last_logged and now - job.last_logged_at < options.log_interval then
        job.suppressed = job.suppressed + 1
        return
    end

    local repeated = ""
    if job.suppressed > 0 then
        repeated = " (" .. job.suppressed .. " similar errors not logged)"
    end

    ngx_log(job.thrown and ngx_ERR or ngx_WARN,
            "[zedcup] ", job.name, ": ", msg, repeated,
            " (failure ", job.consecutive_failures, ", next run in ", delay, "s)")

    job.last_logged = msg
    job.last_logged_at = now
    job.suppressed = 0
    job.logged = job.logged + 1
end


local schedule


-- the interval of an `every` job now (the last good one when get_interval fails)
local function current_interval(job)
    local interval, ierr = resolve(job.interval, job.last_interval or 1)
    if ierr and ierr ~= job.interval_err then
        ngx_log(ngx_WARN, "[zedcup] ", job.name, ": interval: ", ierr,
                ", keeping ", interval, "s")
    end
    job.interval_err = ierr
    job.last_interval = interval
    return interval
end


local function next_delay(job, failed)
    if job.kind == "every" then
        return current_interval(job)
    end

    -- loop
    if not failed then
        local gap = resolve(job.min_gap, options.min_gap)
        return math_max(0, job.started_at + gap - ngx_now())
    end
    local base = resolve(job.backoff, options.loop_backoff)
    local cap = math_max(resolve(job.backoff_cap, options.backoff_cap), base)
    return math_min(base * 2 ^ (job.consecutive_failures - 1), cap)
end


-- An `every` job waiting for a long interval wakes at least every
-- options.recheck seconds to read its interval again: a shortened interval
-- applies within that time, not one old interval later.
-- -> seconds still to wait before the next run (0: run now)
local function remaining(job)
    local now = ngx_now()
    if job.kind == "every" and job.ended_at then
        local interval = current_interval(job)
        job.last_delay = interval
        job.next_run = job.ended_at + interval
    end
    return math_max(0, (job.next_run or now) - now)
end


local function run(premature, job)
    job.pending = false

    if premature or job.stopped or worker_exiting() then
        if jobs[job.name] == job then
            jobs[job.name] = nil
        end
        return
    end

    ngx_update_time()
    local wait_more = remaining(job)
    if wait_more > 0.001 then
        schedule(job, math_min(wait_more, options.recheck))
        return
    end

    job.started_at = ngx_now()
    job.runs = job.runs + 1
    job.running = true

    local ok, res, err = pcall(job.fn, unpack(job.args, 1, job.nargs))

    job.running = false
    ngx_update_time()

    local failed, idle = false, false
    if not ok then
        failed = true
        job.thrown = true
        err = res
    elseif res == nil and err ~= nil then
        failed = true
        job.thrown = false
    elseif res == false then
        job.idle = job.idle + 1
        idle = true -- neither a failure nor a recovery
    end

    if failed then
        job.failures = job.failures + 1
        job.consecutive_failures = job.consecutive_failures + 1
        job.last_error = tostring(err)
    elseif not idle and job.consecutive_failures > 0 then
        -- The rate limit outlives a recovery: a job that alternates between
        -- failing and succeeding (Consul flapping, or a worker whose turn it
        -- is not) must not log every failure and every recovery.
        local now = ngx_now()
        if now - (job.recovered_logged_at or 0) >= options.log_interval then
            ngx_log(ngx_NOTICE, "[zedcup] ", job.name, ": recovered after ",
                    job.consecutive_failures, " failures")
            job.recovered_logged_at = now
        end
        job.consecutive_failures = 0
    end

    -- Reschedule whatever happened above; nothing below may throw.
    local delay = next_delay(job, failed)
    if failed then
        log_failure(job, err, delay)
    end
    job.ended_at = ngx_now()
    job.last_delay = delay
    job.next_run = job.ended_at + delay

    if job.stopped or worker_exiting() then
        if jobs[job.name] == job then
            jobs[job.name] = nil
        end
        return
    end

    schedule(job, math_min(delay, options.recheck))
end


schedule = function(job, delay)
    local ok, err = timer_at(delay, run, job)
    if not ok then
        -- Only happens when the worker is out of timers or exiting: nothing to
        -- reschedule with. Drop the job so that a later every()/loop() can start it.
        if not worker_exiting() then
            ngx_log(ngx_ERR, "[zedcup] ", job.name, ": could not schedule the next run: ", err)
        end
        if jobs[job.name] == job then
            jobs[job.name] = nil
        end
        job.dead = true
        return nil, err
    end
    job.pending = true
    return true
end


local function start(kind, spec, interval, fn, ...)
    local name, tune
    if type(spec) == "table" then
        name, tune = spec.name, spec
    else
        name, tune = spec, nil
    end
    if type(name) ~= "string" or name == "" then
        error("name must be a non-empty string", 3)
    end
    if type(fn) ~= "function" then
        error("fn must be a function", 3)
    end

    local existing = jobs[name]
    if existing and not existing.stopped then
        return nil, "timer already running: " .. name
    end

    local job = {
        kind = kind,
        name = name,
        fn = fn,
        args = { ... },
        nargs = select("#", ...),
        interval = interval,
        backoff = tune and tune.backoff,
        backoff_cap = tune and tune.backoff_cap,
        min_gap = tune and tune.min_gap,
        runs = 0,
        idle = 0,
        failures = 0,
        consecutive_failures = 0,
        suppressed = 0,
        logged = 0,
        last_logged_at = 0,
        started_at = 0,
        pending = false,
        running = false,
        stopped = false,
    }

    -- The first run of a periodic job is immediate: a node starts its work at
    -- once instead of one interval after start.
    local ok, err = schedule(job, 0)
    if not ok then
        return nil, "could not start timer " .. name .. ": " .. tostring(err)
    end
    jobs[name] = job
    return true
end


function _M.every(name, get_interval, fn, ...)
    local t = type(get_interval)
    if t ~= "function" and not (t == "number" and get_interval > 0) then
        error("get_interval must be a function or a positive number", 2)
    end
    -- not a tail call: start() raises at level 3, our caller
    local ok, err = start("every", name, get_interval, fn, ...)
    if not ok then
        return nil, err
    end
    return true
end


function _M.loop(name, fn, ...)
    local ok, err = start("loop", name, nil, fn, ...)
    if not ok then
        return nil, err
    end
    return true
end


-- Stops a job: its pending timer exits without running it. A run in progress
-- finishes, then is not rescheduled.
function _M.stop(name)
    local job = jobs[name]
    if not job then
        return nil, "timer not running: " .. tostring(name)
    end
    job.stopped = true
    jobs[name] = nil
    return true
end


function _M.running(name)
    return jobs[name] ~= nil
end


-- Per-worker counters, for tests and status pages.
function _M.stats()
    local out = {}
    for name, job in pairs(jobs) do
        out[name] = {
            kind = job.kind,
            runs = job.runs,
            idle = job.idle,             -- runs that returned false (nothing to do)
            failures = job.failures,
            consecutive_failures = job.consecutive_failures,
            last_error = job.last_error,
            logged = job.logged,         -- failure lines written to the log
            suppressed = job.suppressed, -- failures not logged since the last line
            last_delay = job.last_delay,
            next_run = job.next_run,
            pending = job.pending,
            running = job.running,
        }
    end
    return out
end


return _M
