# zedcup.timer: background jobs that keep running whatever their callbacks do

__DATA__

=== TEST 1: a callback that throws is logged and rescheduled one interval later (an every job's back-off is its own interval), again and again
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local timer = require "zedcup.timer"
            timer.configure({ backoff_cap = 0.1, log_interval = 60 })
            local runs = 0
            assert(timer.every("boom", 0.02, function()
                runs = runs + 1
                error("kaboom")
            end))

            t.poll(5, 0.01, function() return runs >= 6 end)
            local s = timer.stats().boom
            ngx.say("runs >= 6: ", runs >= 6)
            ngx.say("still pending: ", s.pending)
            ngx.say("consecutive failures: ", s.consecutive_failures == runs)
            ngx.say("last error has the message: ", s.last_error:find("kaboom", 1, true) ~= nil)
            ngx.say("next run one interval later: ", s.last_delay)
        }
    }
--- request
GET /t
--- response_body
runs >= 6: true
still pending: true
consecutive failures: true
last error has the message: true
next run one interval later: 0.02
--- grep_error_log
[zedcup] boom: 
--- grep_error_log_out
[zedcup] boom: 
--- error_log
(failure 1, next run in 0.02s)



=== TEST 2: the same error is logged once per log_interval, then with the count of the ones not logged
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local timer = require "zedcup.timer"
            timer.configure({ backoff_cap = 0.02, log_interval = 0.4 })
            local runs = 0
            assert(timer.every("flood", 0.01, function()
                runs = runs + 1
                return nil, "consul: could not connect"
            end))

            -- logged at 0, then once 0.4s later with the count; stopped as soon as
            -- that second line is out (the next would come 0.4s after it)
            t.poll(5, 0.01, function() return timer.stats().flood.logged >= 2 end)
            timer.stop("flood")
            ngx.say("ran many times: ", runs > 5)
        }
    }
--- request
GET /t
--- response_body
ran many times: true
--- grep_error_log re
\[zedcup\] flood: consul: could not connect|similar errors not logged
--- grep_error_log_out
[zedcup] flood: consul: could not connect
[zedcup] flood: consul: could not connect
similar errors not logged
--- no_error_log
[error]



=== TEST 3: a returned error counts as a failure, retried one interval later; returning false (nothing done) is no recovery, the first success is
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local timer = require "zedcup.timer"
            timer.configure({ backoff_cap = 10 })
            local runs = 0
            assert(timer.every("flaky", 0.02, function()
                runs = runs + 1
                if runs <= 3 then
                    return nil, "not yet (" .. runs .. ")"
                end
                if runs <= 5 then
                    return false -- not this worker's turn: nothing done
                end
                return true
            end))

            t.poll(5, 0.01, function() return runs >= 7 end)
            local s = timer.stats().flaky
            ngx.say("idle runs: ", s.idle)
            ngx.say("failures: ", s.failures)
            ngx.say("consecutive: ", s.consecutive_failures)
            ngx.say("delay back to the interval: ", s.last_delay)
            timer.stop("flaky")
        }
    }
--- request
GET /t
--- response_body
idle runs: 2
failures: 3
consecutive: 0
delay back to the interval: 0.02
--- error_log
[zedcup] flaky: not yet (1) (failure 1, next run in 0.02s)
[zedcup] flaky: not yet (3) (failure 3, next run in 0.02s)
[zedcup] flaky: recovered after 3 failures
--- no_error_log
[error]



=== TEST 4: the interval is read again before each run, so a change applies without a reload
--- http_config
    lua_shared_dict settings 1m;
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local timer = require "zedcup.timer"
            local settings = ngx.shared.settings
            settings:set("interval", 0.01)
            local times = {}
            assert(timer.every("tick", function() return settings:get("interval") end, function()
                ngx.update_time()
                times[#times + 1] = ngx.now()
            end))

            local function wait_runs(n)
                t.poll(5, 0.005, function() return #times >= n end)
            end

            wait_runs(5)
            ngx.say("fast runs: ", #times >= 5)

            settings:set("interval", 0.25)
            local n = #times
            wait_runs(n + 3)
            -- the run in flight may still use the old interval; the ones after it cannot
            local gap = times[#times] - times[#times - 1]
            ngx.say("new gap >= 0.25: ", gap >= 0.24)
            ngx.say("delay: ", timer.stats().tick.last_delay)
            timer.stop("tick")
        }
    }
--- request
GET /t
--- response_body
fast runs: true
new gap >= 0.25: true
delay: 0.25
--- no_error_log
[error]
[warn]



=== TEST 5: a long interval that is shortened applies at once, not one long interval later
--- http_config
    lua_shared_dict settings 1m;
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local timer = require "zedcup.timer"
            timer.configure({ recheck = 0.1 })
            local settings = ngx.shared.settings
            settings:set("interval", 3600)
            local runs = 0
            assert(timer.every("slow", function() return settings:get("interval") end,
                               function() runs = runs + 1 end))
            ngx.sleep(0.3)
            ngx.say("ran once: ", runs)
            settings:set("interval", 0.05)
            t.poll(3, 0.01, function() return runs >= 3 end)
            ngx.say("ran again: ", runs >= 3)
            ngx.say("delay: ", timer.stats().slow.last_delay)
            timer.stop("slow")
        }
    }
--- request
GET /t
--- response_body
ran once: 1
ran again: true
delay: 0.05
--- no_error_log
[error]
[warn]



=== TEST 6: a bad interval keeps the last good one and says so
--- http_config
    lua_shared_dict settings 1m;
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local timer = require "zedcup.timer"
            local settings = ngx.shared.settings
            settings:set("interval", 0.02)
            local runs = 0
            assert(timer.every("bad_interval", function()
                local v = settings:get("interval")
                if v == "boom" then error("no interval") end
                return v
            end, function() runs = runs + 1 end))
            local function wait_runs(n)
                t.poll(5, 0.01, function() return runs >= n end)
            end
            wait_runs(3)
            settings:set("interval", "boom")
            local before = runs
            wait_runs(before + 3)
            ngx.say("still running: ", runs > before + 2)
            ngx.say("delay: ", timer.stats().bad_interval.last_delay)
            timer.stop("bad_interval")
        }
    }
--- request
GET /t
--- response_body
still running: true
delay: 0.02
--- error_log
[zedcup] bad_interval: interval: 
no interval, keeping 0.02s



=== TEST 7: a loop re-runs at once after a normal return, but never closer than min_gap
--- config
    location = /t {
        content_by_lua_block {
            local timer = require "zedcup.timer"
            local runs = 0
            assert(timer.loop({ name = "poll", min_gap = 0.1 }, function(a, b)
                assert(a == "x" and b == nil, "arguments passed through")
                runs = runs + 1
                return true
            end, "x", nil))
            ngx.sleep(0.55)
            timer.stop("poll")
            -- runs at 0, 0.1, ... 0.5: never more than 6, and never fewer than 2
            ngx.say("runs in range: ", runs >= 2 and runs <= 6, " (", runs >= 2, ", ", runs <= 6, ")")
        }
    }
--- request
GET /t
--- response_body
runs in range: true (true, true)
--- no_error_log
[error]
[warn]



=== TEST 8: a loop that fails fast backs off exponentially instead of spinning
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local timer = require "zedcup.timer"
            local runs = 0
            local at = {}
            assert(timer.loop({ name = "failing", backoff = 0.1, backoff_cap = 2 }, function()
                runs = runs + 1
                ngx.update_time()
                at[runs] = ngx.now()
                return nil, "connection refused"
            end))
            -- runs at 0, 0.1, 0.3, 0.7, then 1.5: read right after the 4th, however
            -- late the timers fire on a busy machine
            t.poll(5, 0.01, function() return runs >= 4 end)
            ngx.say("runs: ", runs)
            ngx.say("next delay: ", timer.stats().failing.last_delay)
            timer.stop("failing")
            local grew = true
            for i = 2, #at do
                if at[i] - at[i - 1] < 0.1 * 2 ^ (i - 2) - 0.005 then
                    grew = false
                end
            end
            ngx.say("gaps at least 0.1, 0.2, 0.4: ", grew)
        }
    }
--- request
GET /t
--- response_body
runs: 4
next delay: 0.8
gaps at least 0.1, 0.2, 0.4: true
--- error_log
[zedcup] failing: connection refused (failure 1, next run in 0.1s)



=== TEST 9: one job per name per worker; stop() ends a job and frees its name
--- config
    location = /t {
        content_by_lua_block {
            local timer = require "zedcup.timer"
            local runs = 0
            local function job() runs = runs + 1 end
            assert(timer.every("once", 0.02, job))
            ngx.say("second: ", timer.every("once", 0.02, job))
            ngx.say("running: ", timer.running("once"))
            ngx.sleep(0.1)
            ngx.say("stop: ", timer.stop("once"))
            local after = runs
            ngx.sleep(0.1)
            ngx.say("no run after stop: ", runs == after)
            ngx.say("stop again: ", timer.stop("once"))
            ngx.say("restart: ", timer.every("once", 0.02, job))
            timer.stop("once")
        }
    }
--- request
GET /t
--- response_body
second: niltimer already running: once
running: true
stop: true
no run after stop: true
stop again: niltimer not running: once
restart: true
--- no_error_log
[error]



=== TEST 10: programmer errors raise at once
--- config
    location = /t {
        content_by_lua_block {
            local timer = require "zedcup.timer"
            ngx.say(select(2, pcall(timer.every, "x", 0, function() end)))
            ngx.say(select(2, pcall(timer.every, "x", 1, "nope")))
            ngx.say(select(2, pcall(timer.loop, "", function() end)))
            ngx.say(select(2, pcall(timer.configure, { bogus = 1 })))
        }
    }
--- request
GET /t
--- response_body
get_interval must be a function or a positive number
fn must be a function
name must be a non-empty string
unknown timer option: bogus



=== TEST 11: jobs keep running in every worker of a multi-worker nginx, and stop cleanly with it
--- workers: 2
--- http_config
    init_worker_by_lua_block {
        local timer = require "zedcup.timer"
        assert(timer.every("heartbeat", 0.05, function()
            ngx.log(ngx.INFO, "heartbeat of ", ngx.worker.id())
        end))
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local timer = require "zedcup.timer"
            t.poll(5, 0.01, function() return timer.stats().heartbeat.runs > 1 end)
            ngx.say(timer.stats().heartbeat.runs > 1)
        }
    }
--- request
GET /t
--- response_body
true
--- error_log
heartbeat of 0
heartbeat of 1
--- no_error_log
[error]
