# zedcup.cache: mlcache's API (new, get, peek, set, delete, purge, update) over
# a per-worker L1, a shared-dict L2 and a locked L3 callback.
#
# Every block: the shared dict `cache` (the preamble below); blocks add their own.

--- http_config
    lua_shared_dict cache 1m;

__DATA__

=== TEST 1: get() runs the callback once (hit level 3), then serves L1 (hit level 1); names keep values apart
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache"))
            local calls = 0
            local function cb(a, b) calls = calls + 1; return a .. b end
            ngx.say(c:get("k", nil, cb, "x", "y"))
            ngx.say(c:get("k", nil, cb, "z", "z"))
            local c2 = assert(cache.new("c", "cache"))
            ngx.say("same name: ", c2:get("k", nil, cb, "z", "z"))
            local other = assert(cache.new("other", "cache"))
            ngx.say("other name: ", other:get("k", nil, cb, "o", "k"))
            ngx.say("calls: ", calls)
        }
    }
--- request
GET /t
--- response_body
xynil3
xynil1
same name: xynil1
other name: oknil3
calls: 2
--- no_error_log
[error]

=== TEST 2: an L1 miss is served from the shared dict (hit level 2) without running the callback
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            -- an L1 of one slot: getting b evicts a from L1, but not from L2
            local c = assert(cache.new("c", "cache", { lru_size = 1 }))
            local calls = 0
            local function cb(v) calls = calls + 1; return v end
            ngx.say(c:get("a", nil, cb, "A"))
            ngx.say(c:get("b", nil, cb, "B"))
            ngx.say(c:get("a", nil, cb, "never"))
            ngx.say(c:get("a", nil, cb, "never"))
            ngx.say("calls: ", calls)
        }
    }
--- request
GET /t
--- response_body
Anil3
Bnil3
Anil2
Anil1
calls: 2
--- no_error_log
[error]

=== TEST 3: scalars of every type and nil survive the trip through L2 exactly
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache", { lru_size = 1 }))
            local values = { "", "a|b|c", 0.1 + 0.2, -7, 2^53, true, false }
            for i, v in ipairs(values) do
                c:get("k" .. i, nil, function() return v end)
                c:get("evict", nil, function() return 0 end)
                local got, err, lvl = c:get("k" .. i, nil, function() error("not again") end)
                ngx.say(i, ": ", type(got), " ", got == v, " ", err, " ", lvl)
            end
            c:get("nil", nil, function() return nil end)
            c:get("evict", nil, function() return 0 end)
            ngx.say("nil: ", c:get("nil", nil, function() error("not again") end))
        }
    }
--- request
GET /t
--- response_body
1: string true nil 2
2: string true nil 2
3: number true nil 2
4: number true nil 2
5: number true nil 2
6: boolean true nil 2
7: boolean true nil 2
nil: nilnil2
--- no_error_log
[error]

=== TEST 4: tables are stored once as JSON in L2 and decoded once per worker into L1
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local cjson = require "cjson"
            local c = assert(cache.new("c", "cache", { lru_size = 1 }))
            local t = { name = "x", list = { 1, 2, 3 } }
            local got, err, lvl = c:get("t", nil, function() return t end)
            ngx.say("L3 returns the callback's table: ", got == t, " ", lvl)
            local key
            for _, k in ipairs(ngx.shared.cache:get_keys()) do key = k end
            local raw = ngx.shared.cache:get(key)
            ngx.say("L2 holds JSON: ", raw:find('"name":"x"', 1, true) ~= nil)

            local decodes = 0
            local decode = cjson.decode
            package.loaded["cjson.safe"].decode = function(...) decodes = decodes + 1; return decode(...) end

            c:get("evict", nil, function() return 0 end)
            local a, _, la = c:get("t")
            local b, _, lb = c:get("t")
            ngx.say("from L2: ", la, " then L1: ", lb, " same table: ", a == b, " decodes: ", decodes)
            ngx.say("content: ", a.name, " ", table.concat(a.list, ","))
            ngx.say("uncacheable: ", c:get("f", nil, function() return function() end end))
            ngx.say("not JSON: ", c:get("s", nil, function() return { [1] = 1, [100] = 2 } end))
        }
    }
--- request
GET /t
--- response_body
L3 returns the callback's table: true 3
L2 holds JSON: true
from L2: 2 then L1: 1 same table: true decodes: 0
content: x 1,2,3
uncacheable: nilcannot cache a value of type function
not JSON: nilcannot cache table: Cannot serialise table: excessively sparse array
--- no_error_log
[error]

=== TEST 5: a nil result is cached for neg_ttl, then the callback runs again
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache", { ttl = 10, neg_ttl = 0.1 }))
            local calls = 0
            local function cb() calls = calls + 1; return nil end
            ngx.say(c:get("k", nil, cb))
            ngx.say(c:get("k", nil, cb))
            ngx.say("calls: ", calls)
            ngx.sleep(0.15)
            ngx.say(c:get("k", nil, cb))
            ngx.say("calls: ", calls)
            ngx.say(c:get("k2", { neg_ttl = 0.05 }, cb))
            ngx.sleep(0.08)
            ngx.say(c:get("k2", nil, cb))
            ngx.say("calls: ", calls)
        }
    }
--- request
GET /t
--- response_body
nilnil3
nilnil1
calls: 1
nilnil3
calls: 2
nilnil3
nilnil3
calls: 4
--- no_error_log
[error]

=== TEST 6: values expire after ttl in L1 and L2; the callback's third return value overrides ttl, a negative one skips caching
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache", { ttl = 0.1, lru_size = 1 }))
            local n = 0
            local function cb(ttl) n = n + 1; return "v" .. n, nil, ttl end
            ngx.say(c:get("k", nil, cb))
            ngx.say(c:get("k", nil, cb))
            ngx.sleep(0.15)
            ngx.say("after ttl: ", c:get("k", nil, cb))
            ngx.say("per-call ttl: ", c:get("long", { ttl = 10 }, cb))
            ngx.say("callback ttl: ", c:get("cbttl", nil, cb, 10))
            ngx.sleep(0.15)
            ngx.say(c:get("long", nil, cb))
            ngx.say(c:get("cbttl", nil, cb))
            ngx.say("not cached: ", c:get("neg", nil, cb, -1))
            ngx.say("not cached: ", c:get("neg", nil, cb, -1))
            ngx.say("ttl 0 never expires: ", c:get("forever", { ttl = 0 }, cb))
            ngx.say("peek: ", c:peek("forever"))
        }
    }
--- request
GET /t
--- response_body
v1nil3
v1nil1
after ttl: v2nil3
per-call ttl: v3nil3
callback ttl: v4nil3
v3nil2
v4nil2
not cached: v5nil3
not cached: v6nil3
ttl 0 never expires: v7nil3
peek: 0nilv7false
--- no_error_log
[error]

=== TEST 7: callback errors are returned and not cached; a thrown error is caught
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache"))
            ngx.say(c:get("k", nil, function() return nil, "db down" end))
            ngx.say(c:get("k", nil, function() error("boom", 0) end))
            ngx.say(c:get("k", nil, function() return "ok" end))
            ngx.say("lock released: ", #ngx.shared.cache:get_keys() == 1)
        }
    }
--- request
GET /t
--- response_body
nildb down
nilcallback threw an error: boom
oknil3
lock released: true
--- no_error_log
[error]

=== TEST 8: with resurrect_ttl a failing callback serves the stale value (hit level 4) for resurrect_ttl seconds
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache", { ttl = 0.1, resurrect_ttl = 0.2 }))
            local fail = false
            local calls = 0
            local function cb()
                calls = calls + 1
                if fail then return nil, "db down" end
                return "v" .. calls
            end
            ngx.say(c:get("k", nil, cb))
            ngx.sleep(0.15)
            fail = true
            ngx.say("stale: ", c:get("k", nil, cb))
            ngx.say("stale from L1: ", c:get("k", nil, cb))
            ngx.say("calls: ", calls)
            ngx.sleep(0.25)
            ngx.say("resurrected again: ", c:get("k", nil, cb))
            fail = false
            ngx.sleep(0.25)
            ngx.say("fresh: ", c:get("k", nil, cb))
            ngx.say("no stale value: ", c:get("never", nil, function() return nil, "db down" end))
            local plain = assert(cache.new("plain", "cache", { ttl = 0.05 }))
            plain:get("k", nil, function() return "old" end)
            ngx.sleep(0.1)
            ngx.say("without resurrect_ttl: ", plain:get("k", nil, function() return nil, "db down" end))
        }
    }
--- request
GET /t
--- response_body
v1nil3
stale: v1nil4
stale from L1: v1nil1
calls: 2
resurrected again: v1nil4
fresh: v4nil3
no stale value: nildb down
without resurrect_ttl: nildb down
--- error_log
callback for 'k' failed (db down), serving the stale value for 0.2s
--- no_error_log
[error]

=== TEST 9: get() without a callback reports a miss as hit level -1
--- http_config
    lua_shared_dict ipc 1m;
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache", { ipc_shm = "ipc" }))
            ngx.say(c:get("k"))
            assert(c:set("k", nil, "v"))
            ngx.say(c:get("k"))
            assert(c:set("n", nil, nil))
            ngx.say(c:get("n"))
        }
    }
--- request
GET /t
--- response_body
nilnil-1
vnil1
nilnil1
--- no_error_log
[error]

=== TEST 10: peek() reads L2 only: remaining ttl and value, stale entries only when asked, no promotion to L1
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache", { ttl = 0.2 }))
            ngx.say("absent: ", c:peek("k"))
            c:get("k", nil, function() return "v" end)
            local ttl, err, v, stale = c:peek("k")
            ngx.say("fresh: ", ttl > 0.1 and ttl <= 0.201, " ", err, " ", v, " ", stale)
            ngx.sleep(0.25)
            ngx.say("stale hidden: ", c:peek("k"))
            ttl, err, v, stale = c:peek("k", true)
            ngx.say("stale shown: ", ttl < 0, " ", err, " ", v, " ", stale)

            local p = assert(cache.new("p", "cache", { lru_size = 1 }))
            p:get("a", nil, function() return 1 end)
            p:get("b", nil, function() return 2 end)
            ngx.say("peek a: ", (select(3, p:peek("a"))))
            ngx.say("get b stays in L1: ", select(3, p:get("b")))
        }
    }
--- request
GET /t
--- response_body
absent: nil
fresh: true nil v false
stale hidden: nil
stale shown: true nil v true
peek a: 1
get b stays in L1: 1
--- no_error_log
[error]

=== TEST 11: set(), delete() and purge() in one worker; they and update() need ipc_shm (they raise without, as mlcache's do)
--- http_config
    lua_shared_dict ipc 1m;
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache", { ipc_shm = "ipc" }))
            c:get("k", nil, function() return "old" end)
            ngx.say("set: ", c:set("k", nil, "new"))
            ngx.say(c:get("k", nil, function() return "never" end))
            ngx.say("peek: ", c:peek("k") ~= nil)
            ngx.say("delete: ", c:delete("k"))
            ngx.say(c:get("k"))
            ngx.say("peek: ", c:peek("k"))
            c:set("a", nil, 1)
            c:set("b", { ttl = 5 }, { x = 1 })
            ngx.say("purge: ", c:purge(true))
            ngx.say(c:get("a"))
            ngx.say(c:get("b"))
            local noipc = assert(cache.new("noipc", "cache"))
            ngx.say(pcall(noipc.set, noipc, "k", nil, 1))
            ngx.say(pcall(noipc.delete, noipc, "k"))
            ngx.say(pcall(noipc.purge, noipc))
            ngx.say(pcall(noipc.update, noipc))
        }
    }
--- request
GET /t
--- response_body
set: true
newnil1
peek: true
delete: true
nilnil-1
peek: nil
purge: true
nilnil-1
nilnil-1
falseno ipc to propagate set(): create the cache with opts.ipc_shm
falseno ipc to propagate delete(): create the cache with opts.ipc_shm
falseno ipc to propagate purge(): create the cache with opts.ipc_shm
falseno ipc to propagate update(): create the cache with opts.ipc_shm
--- no_error_log
[error]

=== TEST 12: l1_serializer transforms values on their way into L1, once per promotion; its errors are returned
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local runs = 0
            local c = assert(cache.new("c", "cache", { lru_size = 1, l1_serializer = function(v)
                runs = runs + 1
                return { upper = v:upper() }
            end }))
            ngx.say(c:get("k", nil, function() return "abc" end).upper)
            ngx.say(c:get("k").upper, " runs: ", runs)
            c:get("evict", nil, function() return "x" end)
            ngx.say(c:get("k").upper, " runs: ", runs)
            ngx.say("raw in L2: ", (select(3, c:peek("k"))))
            ngx.say("per call: ", c:get("o", { l1_serializer = function(v) return v .. "!" end },
                                          function() return "hi" end))
            ngx.say(c:get("e", { l1_serializer = function() return nil, "bad row" end },
                          function() return "x" end))
            ngx.say(c:get("t", { l1_serializer = function() error("oops", 0) end },
                          function() return "x" end))
        }
    }
--- request
GET /t
--- response_body
ABC
ABC runs: 1
ABC runs: 3
raw in L2: abc
per call: hi!nil3
nill1_serializer returned an error: bad row
nill1_serializer threw an error: oops
--- no_error_log
[error]

=== TEST 13: concurrent misses in one worker run the callback once; the others wait and read L2
--- http_config
    lua_shared_dict locks 1m;
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache", { shm_locks = "locks" }))
            local calls = 0
            local function cb() calls = calls + 1; ngx.sleep(0.1); return "v" end
            local threads = {}
            for i = 1, 10 do
                threads[i] = ngx.thread.spawn(function() return c:get("k", nil, cb) end)
            end
            local levels = {}
            for i = 1, 10 do
                local _, v, err, lvl = ngx.thread.wait(threads[i])
                assert(v == "v" and err == nil, err)
                levels[lvl] = (levels[lvl] or 0) + 1
            end
            ngx.say("calls: ", calls, " L3: ", levels[3], " L2: ", levels[2])
            ngx.say("locks dict used: ", ngx.shared.locks:get_keys() ~= nil)
        }
    }
--- request
GET /t
--- response_body
calls: 1 L3: 1 L2: 9
locks dict used: true
--- no_error_log
[error]

=== TEST 14: concurrent misses in two workers run the callback once
--- workers: 2
--- http_config
    lua_shared_dict state 1m;
    init_worker_by_lua_block {
        local t = require "blocks_t"
        local cache = require "zedcup.cache"
        local state = ngx.shared.state
        local c = assert(cache.new("c", "cache"))
        local function cb()
            state:incr("calls", 1, 0)
            ngx.sleep(0.2)
            return "v"
        end
        assert(ngx.timer.at(0, function()
            state:incr("ready", 1, 0)
            t.wait_count(state, "ready", 2, 5, 0.002)
            local threads = {}
            for i = 1, 5 do
                threads[i] = ngx.thread.spawn(function() return c:get("k", nil, cb) end)
            end
            for i = 1, 5 do
                local _, v, err, lvl = ngx.thread.wait(threads[i])
                state:incr(v == "v" and ("level_" .. tostring(lvl)) or ("error_" .. tostring(err)), 1, 0)
            end
            state:incr("workers_" .. ngx.worker.id(), 1, 0)
            state:incr("finished", 1, 0)
        end))
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local state = ngx.shared.state
            t.wait_count(state, "finished", 2, 10, 0.01)
            ngx.say("workers: ", state:get("workers_0"), " ", state:get("workers_1"))
            ngx.say("calls: ", state:get("calls"), " L3: ", state:get("level_3"),
                    " L2: ", state:get("level_2"))
        }
    }
--- request
GET /t
--- response_body
workers: 1 1
calls: 1 L3: 1 L2: 9
--- no_error_log
[error]

=== TEST 15: set/delete/purge in one worker reach the other worker's L1 through update()
--- workers: 2
--- http_config
    lua_shared_dict ipc 1m;
    lua_shared_dict state 1m;
    init_worker_by_lua_block {
        local t = require "blocks_t"
        local cache = require "zedcup.cache"
        local state = ngx.shared.state
        local c = assert(cache.new("c", "cache", { ipc_shm = "ipc" }))
        local id = ngx.worker.id()

        local function wait_for(key, n)
            t.wait_count(state, key, n, 5, 0.002)
        end
        local function record(step, a, b, c3)
            state:set(id .. ":" .. step, tostring(a) .. " " .. tostring(b) .. " " .. tostring(c3))
        end

        assert(ngx.timer.at(0, function()
            record("prime k", c:get("k", nil, function() return "v1" end))
            record("prime d", c:get("d", nil, function() return "d1" end))
            state:incr("primed", 1, 0)
            wait_for("primed", 2)

            if id == 0 then
                assert(c:set("k", nil, "v2"))
                assert(c:delete("d"))
                state:set("changed", 1)
                wait_for("checked", 1)
                assert(c:purge())
                state:set("purged", 1)
            else
                wait_for("changed", 1)
                record("k before update", c:get("k"))
                record("d before update", c:get("d"))
                record("update", c:update())
                record("k after update", c:get("k"))
                record("d after update", c:get("d"))
                state:set("checked", 1)
                wait_for("purged", 1)
                c:update()
                record("k after purge", c:get("k"))
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
            local primes = { state:get("0:prime k"), state:get("1:prime k") }
            table.sort(primes)
            ngx.say("primed: ", table.concat(primes, ", "))
            for _, step in ipairs({ "k before update", "d before update", "update", "k after update",
                                    "d after update", "k after purge" }) do
                ngx.say(step, ": ", state:get("1:" .. step))
            end
        }
    }
--- request
GET /t
--- response_body
primed: v1 nil 2, v1 nil 3
k before update: v1 nil 1
d before update: d1 nil 1
update: true nil nil
k after update: v2 nil 2
d after update: nil nil -1
k after purge: nil nil -1
--- no_error_log
[error]

=== TEST 16: an L1 hit touches no shared dict and allocates nothing (3 rounds of 200k hits, GC stopped)
--- http_config
    lua_shared_dict ipc 1m;
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache", { ipc_shm = "ipc" }))
            c:get("k", nil, function() return { a = 1 } end)
            c:get("n", nil, function() return nil end)

            -- count every shared dict method call, in every dict
            local methods = getmetatable(ngx.shared.cache).__index
            local saved, calls = {}, 0
            for name, f in pairs(methods) do
                if type(f) == "function" then
                    saved[name] = f
                    methods[name] = function(...) calls = calls + 1; return f(...) end
                end
            end

            local get = c.get
            local N = 100000
            -- warm up first: compiling the loop's traces allocates GC objects once
            for _ = 1, N do
                get(c, "k")
                get(c, "n", nil, error)
            end
            collectgarbage("collect")
            collectgarbage("stop")
            -- the least of three rounds: a side trace the JIT compiles late is a
            -- GC object allocated once (seen up to 20 KB under load), while an
            -- allocation per hit would show in every round (>= 3 MB each)
            local delta
            for _ = 1, 3 do
                local before = collectgarbage("count")
                for _ = 1, N do
                    get(c, "k")
                    get(c, "n", nil, error)
                end
                local d = collectgarbage("count") - before
                delta = delta and math.min(delta, d) or d
            end
            local l1_calls = calls

            -- the instruments work: an L1 miss is seen, and allocation is seen
            c:get("miss")
            local miss_calls = calls - l1_calls
            local before = collectgarbage("count")
            local t
            for i = 1, N do t = { i } end
            local control = collectgarbage("count") - before
            collectgarbage("restart")
            for name, f in pairs(saved) do methods[name] = f end

            ngx.say("shared dict calls in ", 6 * N, " L1 hits: ", l1_calls)
            ngx.say("KB allocated: ", delta < 16 and "< 16" or delta)
            ngx.say("an L1 miss reads the dict: ", miss_calls > 0)
            ngx.say("a table per iteration is seen: ", control > 1000, " ", t ~= nil)
        }
    }
--- request
GET /t
--- response_body
shared dict calls in 600000 L1 hits: 0
KB allocated: < 16
an L1 miss reads the dict: true
a table per iteration is seen: true true
--- no_error_log
[error]

=== TEST 17: a lost invalidation event (evicted, or the ipc dict flushed) makes the worker drop its whole L1
--- http_config
    lua_shared_dict ipc 1m;
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local a = assert(cache.new("c", "cache", { ipc_shm = "ipc" }))
            local b = assert(cache.new("c", "cache", { ipc_shm = "ipc" }))
            a:get("x", nil, function() return "x" end)
            assert(a:set("k", nil, "v"))
            -- b shares this worker's L1; lose the event before b polls it
            local ipc = ngx.shared.ipc
            for _, key in ipairs(ipc:get_keys()) do
                if key:sub(1, 2) == "ev" then ipc:delete(key) end
            end
            ngx.say("update: ", b:update())
            ngx.say("x: ", b:get("x"))

            -- the ipc dict loses everything, then a new event comes
            b:get("x")
            ipc:flush_all()
            assert(a:delete("other"))
            ngx.say("update: ", b:update())
            ngx.say("x: ", b:get("x"))

            -- the index goes back in time
            b:get("x")
            ipc:set("idx", 5)
            ngx.say("update: ", b:update())
            ngx.say("x: ", b:get("x"))
            ngx.say("x: ", b:get("x"))
        }
    }
--- request
GET /t
--- response_body
update: true
x: xnil2
update: true
x: xnil2
update: true
x: xnil2
x: xnil1
--- error_log
is lost, flushing L1
event index went back from
--- no_error_log
[error]

=== TEST 18: update() stops at its timeout and resumes where it stopped
--- http_config
    lua_shared_dict ipc 1m;
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local a = assert(cache.new("c", "cache", { ipc_shm = "ipc" }))
            local b = assert(cache.new("other", "cache", { ipc_shm = "ipc" }))
            for i = 1, 2000 do assert(a:delete("k" .. i)) end
            local ok, err = b:update(0)
            ngx.say("timed out: ", ok, " ", err and err:match("^timeout: %d+ events left$") ~= nil)
            ngx.say("resumed: ", b:update(5))
            ngx.say("nothing left: ", b:update(0))
        }
    }
--- request
GET /t
--- response_body
timed out: nil true
resumed: true
nothing left: true
--- no_error_log
[error]

=== TEST 19: nil results go to shm_miss when given, values to shm
--- http_config
    lua_shared_dict miss 1m;
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local c = assert(cache.new("c", "cache", { shm_miss = "miss", lru_size = 1 }))
            c:get("hit", nil, function() return 1 end)
            c:get("none", nil, function() return nil end)
            ngx.say("cache: ", #ngx.shared.cache:get_keys(), " miss: ", #ngx.shared.miss:get_keys())
            c:get("evict", nil, function() return 2 end)
            ngx.say(c:get("none", nil, function() error("not again") end))
        }
    }
--- request
GET /t
--- response_body
cache: 1 miss: 1
nilnil2
--- no_error_log
[error]

=== TEST 20: new() returns nil, err for missing dicts and raises on bad arguments, naming them
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            ngx.say(cache.new("c", "nope"))
            ngx.say(cache.new("c", "cache", { ipc_shm = "nope" }))
            ngx.say(cache.new("c", "cache", { shm_locks = "nope" }))
            ngx.say(cache.new("c", "cache", { shm_miss = "nope" }))
            ngx.say(pcall(cache.new, 1, "cache"))
            ngx.say(pcall(cache.new, "c", "cache", { ttl = "10" }))
            ngx.say(pcall(cache.new, "c", "cache", { lru_size = 0 }))
            ngx.say(pcall(cache.new, "c", "cache", { resurrect_ttl = 0 }))
            ngx.say(pcall(cache.new, "c", "cache", { l1_serializer = "x" }))
            ngx.say(pcall(cache.new, "c", "cache", { ipc_shm = "cache" }))
            local c = assert(cache.new("c", "cache"))
            ngx.say(pcall(c.get, c, 1))
            ngx.say(pcall(c.get, c, "k", "opts"))
            ngx.say(pcall(c.get, c, "k", nil, "cb"))
            ngx.say(pcall(c.get, c, "k", { ttl = "1" }, function() end))
            ngx.say(pcall(c.get, c, "k", { l1_serializer = 1 }, function() end))
            -- the error points at the line that called get()
            local ok, err = pcall(function() local v = c:get("k", { neg_ttl = -1 }, function() end); return v end)
            ngx.say(ok, " ", err:match("^content_by_lua%(nginx%.conf:%d+%):%d+: opts%.neg_ttl must be") ~= nil)
        }
    }
--- request
GET /t
--- response_body
nilno such lua_shared_dict: nope
nilno such lua_shared_dict for opts.ipc_shm: nope
nilno such lua_shared_dict for opts.shm_locks: nope
nilno such lua_shared_dict for opts.shm_miss: nope
falsename must be a string (got number)
falseopts.ttl must be a number >= 0 (got 10)
falseopts.lru_size must be a number >= 1 (got 0)
falseopts.resurrect_ttl must be a number >= 0.001 (got 0)
falseopts.l1_serializer must be a function (got string)
falseopts.ipc_shm must be a dict of its own, not the cache shm (cache)
falsekey must be a string (got number)
falseopts must be a table (got string)
falsecallback must be a function (got string)
falseopts.ttl must be a number >= 0 (got 1)
falseopts.l1_serializer must be a function (got number)
false true
--- no_error_log
[error]

=== TEST 21: a get() that times out waiting for another's callback serves the stale value with resurrect_ttl, else an error
--- config
    location = /t {
        content_by_lua_block {
            local cache = require "zedcup.cache"
            local opts = { ttl = 0.05, resty_lock_opts = { timeout = 0.05 } }
            local with = assert(cache.new("with", "cache", { ttl = 0.05, resurrect_ttl = 1,
                                                             resty_lock_opts = { timeout = 0.05 } }))
            local without = assert(cache.new("without", "cache", opts))
            for _, c in ipairs({ with, without }) do
                assert(c:get("k", nil, function() return "old" end))
            end
            ngx.sleep(0.1)
            for _, c in ipairs({ with, without }) do
                local slow = ngx.thread.spawn(function()
                    return c:get("k", nil, function() ngx.sleep(0.3); return "new" end)
                end)
                ngx.say(c.name, " waiting: ", c:get("k", nil, function() return "never" end))
                local _, v, err, lvl = ngx.thread.wait(slow)
                ngx.say(c.name, " slow one: ", v, " ", err, " ", lvl)
            end
        }
    }
--- request
GET /t
--- response_body
with waiting: oldnil4
with slow one: new nil 3
without waiting: nilcould not acquire the callback lock: timeout
without slow one: new nil 3
--- no_error_log
[error]
