# zedcup.lock: lua-resty-lock's API in a shared dict (new, lock, unlock, expire).
#
# Every block: the shared dict `locks` (the preamble below).

--- http_config
    lua_shared_dict locks 1m;

__DATA__

=== TEST 1: lock() on a free key returns 0, unlock() returns 1, a second unlock() says "unlocked"
--- config
    location = /t {
        content_by_lua_block {
            local lock = require "zedcup.lock"
            local l = assert(lock.new("locks"))
            ngx.say("lock: ", l:lock("k"))
            ngx.say("held: ", ngx.shared.locks:get("k") ~= nil)
            ngx.say("unlock: ", l:unlock())
            ngx.say("held: ", ngx.shared.locks:get("k") ~= nil)
            ngx.say("unlock again: ", l:unlock())
            ngx.say("relock: ", l:lock("k"))
            ngx.say("unlock: ", l:unlock())
        }
    }
--- request
GET /t
--- response_body
lock: 0
held: true
unlock: 1
held: false
unlock again: nilunlocked
relock: 0
unlock: 1
--- no_error_log
[error]

=== TEST 2: new() works called as lock:new() too, and one object holds one lock at a time ("locked")
--- config
    location = /t {
        content_by_lua_block {
            local lock = require "zedcup.lock"
            local l = assert(lock:new("locks", { timeout = 0 }))
            ngx.say("lock a: ", l:lock("a"))
            ngx.say("lock b: ", l:lock("b"))
            ngx.say("b free: ", ngx.shared.locks:get("b") == nil)
            ngx.say("unlock: ", l:unlock())
        }
    }
--- request
GET /t
--- response_body
lock a: 0
lock b: nillocked
b free: true
unlock: 1
--- no_error_log
[error]

=== TEST 3: a busy lock times out after `timeout` seconds with "timeout"; timeout 0 does not wait
--- config
    location = /t {
        content_by_lua_block {
            -- the module's sleeps, counted (it localises ngx.sleep when loaded):
            -- how long it waits does not depend on how busy the machine is
            local real_sleep = ngx.sleep
            local naps, slept = 0, 0
            ngx.sleep = function(s)
                naps, slept = naps + 1, slept + s
                return real_sleep(s)
            end
            package.loaded["zedcup.lock"] = nil
            local lock = require "zedcup.lock"
            ngx.sleep = real_sleep
            local holder = assert(lock.new("locks"))
            assert(holder:lock("k") == 0)

            local l = assert(lock.new("locks", { timeout = 0 }))
            ngx.say("no wait: ", l:lock("k"))
            ngx.say("returned at once: ", naps == 0)

            l = assert(lock.new("locks", { timeout = 0.2 }))
            ngx.update_time()
            local t0 = ngx.now()
            ngx.say("wait: ", l:lock("k"))
            ngx.update_time()
            local waited = ngx.now() - t0
            -- at least the timeout, and never a sleep beyond it
            local right = waited >= 0.19 and math.abs(slept - 0.2) < 1e-9
            ngx.say("waited ~0.2s: ", right, right and "" or (" (" .. waited .. "s, slept " .. slept .. "s)"))
            ngx.say("still held by holder: ", holder:unlock())
        }
    }
--- request
GET /t
--- response_body
no wait: niltimeout
returned at once: true
wait: niltimeout
waited ~0.2s: true
still held by holder: 1
--- no_error_log
[error]

=== TEST 4: a waiter gets the lock once the holder unlocks; elapsed is the sum of its backoff steps
--- config
    location = /t {
        content_by_lua_block {
            local lock = require "zedcup.lock"
            local holder = assert(lock.new("locks"))
            assert(holder:lock("k") == 0)

            local th = ngx.thread.spawn(function()
                ngx.sleep(0.1)
                return holder:unlock()
            end)

            local l = assert(lock.new("locks", { step = 0.01, ratio = 2, max_step = 0.04 }))
            local elapsed, err = l:lock("k")
            ngx.say("holder unlocked: ", select(2, ngx.thread.wait(th)))
            ngx.say("err: ", err)
            -- steps 0.01, 0.02, 0.04, 0.04...: elapsed is a sum of them, >= 0.1
            ngx.say("elapsed >= 0.1: ", elapsed >= 0.1 - 1e-9)
            local steps = (elapsed - 0.07) / 0.04
            ngx.say("elapsed is a sum of steps: ", math.abs(steps - math.floor(steps + 0.5)) < 1e-6)
            ngx.say("unlock: ", l:unlock())
        }
    }
--- request
GET /t
--- response_body
holder unlocked: 1
err: nil
elapsed >= 0.1: true
elapsed is a sum of steps: true
unlock: 1
--- no_error_log
[error]

=== TEST 5: a lock that is never released expires after exptime; the old holder's unlock() then leaves the new holder alone
--- config
    location = /t {
        content_by_lua_block {
            local lock = require "zedcup.lock"
            local old = assert(lock.new("locks", { exptime = 0.1 }))
            assert(old:lock("k") == 0)

            local new = assert(lock.new("locks", { timeout = 2 }))
            local elapsed, err = new:lock("k")
            ngx.say("taken over after expiry: ", elapsed ~= nil and elapsed > 0.05 and elapsed < 1, " ", err)
            ngx.say("old unlock: ", old:unlock())
            local probe = assert(lock.new("locks", { timeout = 0 }))
            ngx.say("still held by new: ", probe:lock("k"))
            ngx.say("new unlock: ", new:unlock())
            ngx.say("free: ", probe:lock("k"))
        }
    }
--- request
GET /t
--- response_body
taken over after expiry: true nil
old unlock: nilexpired
still held by new: niltimeout
new unlock: 1
free: 0
--- no_error_log
[error]

=== TEST 6: expire() extends or shortens the held lock; without a lock it says "unlocked"
--- config
    location = /t {
        content_by_lua_block {
            local lock = require "zedcup.lock"
            local l = assert(lock.new("locks", { exptime = 0.1 }))
            ngx.say("expire unlocked: ", l:expire(10))
            assert(l:lock("k") == 0)
            ngx.say("extend: ", l:expire(10))
            ngx.sleep(0.2)
            local probe = assert(lock.new("locks", { timeout = 0 }))
            ngx.say("held past exptime: ", probe:lock("k"))
            ngx.say("shorten: ", l:expire(0.05))
            ngx.sleep(0.1)
            ngx.say("expired: ", probe:lock("k"))
            ngx.say("expire after losing it: ", l:expire())
            ngx.say("unlock after losing it: ", l:unlock())
            ngx.say("probe unlock: ", probe:unlock())
            assert(l:lock("k") == 0)
            ngx.say("default expire: ", l:expire())
            local ttl = ngx.shared.locks:ttl("k")
            ngx.say("ttl reset to exptime: ", ttl > 0.05 and ttl <= 0.1)
        }
    }
--- request
GET /t
--- response_body
expire unlocked: nilunlocked
extend: true
held past exptime: niltimeout
shorten: true
expired: 0
expire after losing it: nilexpired
unlock after losing it: nilunlocked
probe unlock: 1
default expire: true
ttl reset to exptime: true
--- no_error_log
[error]

=== TEST 7: a lock object collected by the GC releases its lock
--- config
    location = /t {
        content_by_lua_block {
            local lock = require "zedcup.lock"
            do
                local l = assert(lock.new("locks"))
                assert(l:lock("k") == 0)
            end
            local probe = assert(lock.new("locks", { timeout = 0 }))
            collectgarbage()
            collectgarbage()
            ngx.say("free after gc: ", probe:lock("k"))
        }
    }
--- request
GET /t
--- response_body
free after gc: 0
--- no_error_log
[error]

=== TEST 8: new() returns nil, err for a missing dict and raises on bad arguments, naming them; lock(nil) is nil, "nil key" and a number key its text (as lua-resty-lock)
--- config
    location = /t {
        content_by_lua_block {
            local lock = require "zedcup.lock"
            ngx.say(lock.new("nope"))
            ngx.say(pcall(lock.new, 42))
            ngx.say(pcall(lock.new, "locks", "x"))
            ngx.say(pcall(lock.new, "locks", { timeout = -1 }))
            ngx.say(pcall(lock.new, "locks", { exptime = "30" }))
            local l = assert(lock.new("locks"))
            ngx.say(pcall(l.lock, l, {}))
            ngx.say(l:lock(nil))
            ngx.say(l:lock(1), " ", ngx.shared.locks:get("1") ~= nil, " ", l:unlock())
            ngx.say(pcall(l.expire, l, "x"))
        }
    }
--- request
GET /t
--- response_body
nildictionary not found: nope
falsedict_name must be a string (got number)
falseopts must be a table (got string)
falseopts.timeout must be a number >= 0 (got -1)
falseopts.exptime must be a number >= 0.001 (got 30)
falsekey must be a string (got table)
nilnil key
0 true 1
falsetimeout must be a number >= 0 (got x)
--- no_error_log
[error]

=== TEST 9: light threads contending for one key never overlap
--- config
    location = /t {
        content_by_lua_block {
            local lock = require "zedcup.lock"
            local inside, overlaps, done = 0, 0, 0
            local function worker()
                for _ = 1, 5 do
                    local l = assert(lock.new("locks", { max_step = 0.004 }))
                    assert(l:lock("k"))
                    inside = inside + 1
                    if inside > 1 then overlaps = overlaps + 1 end
                    ngx.sleep(0.002)
                    inside = inside - 1
                    assert(l:unlock() == 1)
                    done = done + 1
                end
            end
            local threads = {}
            for i = 1, 10 do threads[i] = ngx.thread.spawn(worker) end
            for i = 1, 10 do assert(ngx.thread.wait(threads[i])) end
            ngx.say("done: ", done, " overlaps: ", overlaps)
        }
    }
--- request
GET /t
--- response_body
done: 50 overlaps: 0
--- no_error_log
[error]

=== TEST 10: two workers contending for one key never overlap
--- workers: 2
--- http_config
    lua_shared_dict state 1m;
    init_worker_by_lua_block {
        local t = require "blocks_t"
        local lock = require "zedcup.lock"
        local state = ngx.shared.state
        assert(ngx.timer.at(0, function()
            state:incr("ready", 1, 0)
            t.wait_count(state, "ready", 2, 5, 0.005)
            for _ = 1, 10 do
                local l = assert(lock.new("locks"))
                assert(l:lock("k"))
                if state:incr("inside", 1, 0) > 1 then state:incr("overlaps", 1, 0) end
                state:incr("by_" .. ngx.worker.id(), 1, 0)
                ngx.sleep(0.003)
                state:incr("inside", -1)
                assert(l:unlock() == 1)
            end
            state:incr("finished", 1, 0)
        end))
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local state = ngx.shared.state
            t.wait_count(state, "finished", 2, 10, 0.01)
            ngx.say("worker 0: ", state:get("by_0"), " worker 1: ", state:get("by_1"),
                    " overlaps: ", state:get("overlaps") or 0)
        }
    }
--- request
GET /t
--- response_body
worker 0: 10 worker 1: 10 overlaps: 0
--- no_error_log
[error]
