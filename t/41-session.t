# zedcup.session: one Consul session per node, cluster locks held with it, worker locks
#
# Every block but TEST 6 sets up zedcup.kv and zedcup.session directly (no instances
# needed; the preamble below); --- vars change the Consul, the session's options or
# the global config values the session reads (shortened intervals, through the
# session.global seam, before the workers start).

--- vars
TEST_ZEDCUP_CONSUL = { host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT }
TEST_ZEDCUP_SESSION = { dicts = { locks = "locks" } }
TEST_ZEDCUP_GLOBALS = {}
--- http_config
    lua_shared_dict locks 1m;
    init_by_lua_block {
        require("zedcup.kv").init("$TEST_ZEDCUP_PREFIX", $TEST_ZEDCUP_CONSUL)
        local session = require "zedcup.session"
        session.init($TEST_ZEDCUP_SESSION)
        local global, over = session.global, $TEST_ZEDCUP_GLOBALS
        session.global = function(name)
            if over[name] ~= nil then return over[name] end
            return global(name)
        end
    }

__DATA__

=== TEST 1: both workers of a node share one session, named after the node, holding its registry key
--- workers: 2
--- http_config
    lua_shared_dict seen 1m;
    init_worker_by_lua_block {
        local session = require "zedcup.session"
        assert(session.run_workers())
        -- each worker asks for the session itself, as a job that needs it would
        assert(require("zedcup.timer").every("report", 0.05, function()
            local id, err = session.ensure()
            if not id then return nil, err end
            ngx.shared.seen:set(ngx.worker.id(), id)
        end))
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local seen = ngx.shared.seen
            t.poll(5, 0.02, function() return seen:get(0) and seen:get(1) end)
            local id0, id1 = seen:get(0), seen:get(1)
            ngx.say("both workers have one: ", id0 ~= nil and id1 ~= nil)
            ngx.say("the same: ", id0 == id1)

            local session = require "zedcup.session"
            local kv = require "zedcup.kv"
            local c = kv.client()
            local f = io.open("/proc/sys/kernel/hostname")
            local hostname = f:read("*l")
            f:close()
            local mpid = require("ngx.process").get_master_pid()

            local res = assert(c:get("/session/info/" .. id0))
            local info = res.body[1]
            ngx.say("name: ", info.Name == "zedcup " .. hostname .. " " .. mpid)
            -- session_ttl 30 (the default): Consul's worst case, 2 x 13.5 s + 1 s lock delay, fits
            ngx.say("TTL: ", info.TTL, ", behavior: ", info.Behavior,
                    ", lock delay: ", info.LockDelay / 1e9, "s")
            -- no serfHealth (Consul's default): the TTL alone ends it
            local function none(v) return v == nil or v == ngx.null or (type(v) == "table" and #v == 0) end
            ngx.say("health checks: ", none(info.NodeChecks) and none(info.Checks) and "none"
                    or require("cjson").encode(info.NodeChecks or info.Checks))

            res = assert(c:get("/session/list"))
            local same_name = 0
            for _, s in ipairs(res.body) do
                if s.Name == info.Name then same_name = same_name + 1 end
            end
            ngx.say("sessions of this node: ", same_name)

            local e = assert(kv.get("$TEST_ZEDCUP_PREFIX/registry/" .. id0))
            ngx.say("registry held by it: ", e.Session == id0)
            ngx.say("registry value: ", e.Value == hostname .. " " .. mpid)
            ngx.say("node name: ", session.node_name() == hostname .. ":" .. mpid)
        }
    }
--- request
GET /t
--- response_body
both workers have one: true
the same: true
name: true
TTL: 13.5s, behavior: delete, lock delay: 1s
health checks: none
sessions of this node: 1
registry held by it: true
registry value: true
node name: true
--- no_error_log
[error]
[warn]



=== TEST 2: renewal keeps the session alive past its TTL, one worker renewing per interval
--- workers: 2
--- timeout: 30
--- vars
TEST_ZEDCUP_GLOBALS = { session_ttl = 10, session_renew_interval = 1 }
--- http_config
    init_worker_by_lua_block {
        assert(require("zedcup.session").run_workers())
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local session = require "zedcup.session"
            t.poll(5, 0.02, function() return session.id() end)
            local id = session.id()
            ngx.say("have a session: ", id ~= nil)
            local renewals0 = require("zedcup.store").renewals()

            -- Consul invalidates a 10s session after 10s without renewal
            ngx.sleep(12)

            local res = assert(require("zedcup.kv").client():get("/session/info/" .. id))
            ngx.say("alive after 12s: ", type(res.body) == "table" and res.body[1] ~= nil)
            ngx.say("same id: ", session.id() == id)
            local n = (require("zedcup.store").renewals()) - renewals0
            -- one renewal per second: both workers renewing would make ~24
            ngx.say("renewals in range: ", n >= 8 and n <= 15, " (", n, ")")
        }
    }
--- request
GET /t
--- response_body_like
have a session: true
alive after 12s: true
same id: true
renewals in range: true \(\d+\)
--- no_error_log
[error]
[warn]



=== TEST 3: a session destroyed behind the node's back is replaced; the dead one's registry entry goes
--- vars
TEST_ZEDCUP_GLOBALS = { session_renew_interval = 0.2 }
--- http_config
    init_worker_by_lua_block {
        assert(require("zedcup.session").run_workers())
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local session = require "zedcup.session"
            local kv = require "zedcup.kv"
            t.poll(5, 0.02, function() return session.id() end)
            local old = session.id()
            local res = assert(kv.client():put("/session/destroy/" .. old, ""))
            ngx.say("destroyed: ", res.status)

            t.poll(5, 0.02, function() return session.id() ~= old end)
            local new = session.id()
            ngx.say("replaced: ", new ~= nil and new ~= old)
            res = assert(kv.client():get("/session/info/" .. new))
            ngx.say("new one exists: ", res.body[1] ~= nil and res.body[1].ID == new)
            local e = assert(kv.get("$TEST_ZEDCUP_PREFIX/registry/" .. new))
            ngx.say("new registry entry held: ", e.Session == new)
            ngx.say("old registry entry reaped: ", kv.get("$TEST_ZEDCUP_PREFIX/registry/" .. old))
        }
    }
--- request
GET /t
--- response_body
destroyed: 200
replaced: true
new one exists: true
new registry entry held: true
old registry entry reaped: false
--- error_log
is gone, creating a new one
--- no_error_log
[error]



=== TEST 4: cluster locks: acquire, holder, release, and acquire again at once after a release
--- vars
TEST_ZEDCUP_SESSION = { dicts = { locks = "locks" }, node_name = "edge-1" }
--- config
    location = /t {
        content_by_lua_block {
            local session = require "zedcup.session"
            ngx.say("holder before: ", session.holder("healthcheck"))
            ngx.say("acquire: ", session.acquire("healthcheck"))
            local name, sid = session.holder("healthcheck")
            ngx.say("holder: ", name, ", with our session: ", sid == session.id())
            ngx.say("holds: ", session.holds("healthcheck"))
            ngx.say("acquire again: ", session.acquire("healthcheck"))
            ngx.say("release: ", session.release("healthcheck"))
            ngx.say("holder after: ", session.holder("healthcheck"))
            ngx.say("release again: ", session.release("healthcheck"))
            ngx.say("acquire after release: ", session.acquire("healthcheck"))
            -- a session Consul no longer knows: acquire fails (500), and the
            -- node learns it from session/info (not from the message's words)
            local old = session.id()
            assert(require("zedcup.kv").client():put("/session/destroy/" .. old, ""))
            local ok, err = session.acquire("other")
            ngx.say("acquire with a destroyed session: ", ok, ", ",
                    tostring(err):find("Consul answered 500", 1, true) ~= nil)
            ngx.say("replaced at once: ", session.id() ~= nil and session.id() ~= old)
            ngx.say("acquire with the new one: ", session.acquire("other"))
            ngx.say(select(2, pcall(session.acquire, "a/b")))
            ngx.say(select(2, pcall(session.acquire, "..")))
        }
    }
--- request
GET /t
--- response_body
holder before: nil
acquire: true
holder: edge-1, with our session: true
holds: true
acquire again: true
release: true
holder after: nil
release again: false
acquire after release: true
acquire with a destroyed session: nil, true
replaced at once: true
acquire with the new one: true
lock name: must be a non-empty name without '/', not '.' or '..' (got a/b)
lock name: must be a non-empty name without '/', not '.' or '..' (got ..)
--- no_error_log
[error]
[warn]



=== TEST 5: two nodes: one holds a lock; when its session dies the other gets it after the lock delay
--- nodes: 2
--- vars
TEST_ZEDCUP_SESSION = { dicts = { locks = "locks" }, node_name = "node$TEST_NGINX_NODE" }
--- config
    location = /acquire {
        content_by_lua_block {
            ngx.print(tostring(require("zedcup.session").acquire("x")))
        }
    }
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local session = require "zedcup.session"
            local function node2(what)
                local httpc = require("zedcup.deps").http.new()
                local res = assert(httpc:request_uri("http://127.0.0.1:$TEST_NGINX_NODE_PORT_2/" .. what))
                return res.body
            end

            ngx.say("node1 acquire: ", session.acquire("x"))
            ngx.say("node2 acquire: ", node2("acquire"))
            ngx.say("holder: ", (session.holder("x")))

            -- node 1's session dies (as when its TTL lapses)
            ngx.update_time()
            local t0 = ngx.now()
            assert(session.destroy())
            ngx.say("node2 acquire in lock delay: ", node2("acquire"))
            local got
            t.retry_until(t0 + 5, 0.05, function()
                got = node2("acquire")
                return got == "true"
            end)
            ngx.say("node2 acquire after it: ", got, ", waited about the delay: ", ngx.now() - t0 >= 0.9)
            ngx.say("holder: ", (session.holder("x")))
            ngx.say("node1 acquire: ", session.acquire("x"))
        }
    }
--- request
GET /t
--- response_body
node1 acquire: true
node2 acquire: false
holder: node1
node2 acquire in lock delay: false
node2 acquire after it: true, waited about the delay: true
holder: node2
node1 acquire: false
--- no_error_log
[error]



=== TEST 6: worker locks: one worker of the node holds one, another takes it when it lets go
--- workers: 2
--- http_config own
    lua_shared_dict locks 1m;
    lua_shared_dict held 1m;
    lua_shared_dict ticks 1m;
    init_by_lua_block {
        require("zedcup.session").init({ dicts = { locks = "locks" } })
    }
    init_worker_by_lua_block {
        local session = require "zedcup.session"
        local held = ngx.shared.held
        local pid = ngx.worker.pid()
        assert(require("zedcup.timer").every("contender", 0.02, function()
            ngx.shared.ticks:incr(pid, 1, 0)
            if held:get("quit") == pid then
                session.worker_unlock("job")
                return
            end
            local mine, err = session.worker_lock("job", 5)
            if mine == nil then return nil, err end
            if mine then held:incr(pid, 1, 0) end
        end))
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local held = ngx.shared.held
            local session = require "zedcup.session"
            local function holders()
                local out = {}
                for _, k in ipairs(held:get_keys()) do
                    if k ~= "quit" then out[#out + 1] = tonumber(k) end
                end
                return out
            end

            local ticks = ngx.shared.ticks
            -- both workers contended a few times
            t.poll(5, 0.01, function()
                local keys = ticks:get_keys()
                return #keys == 2 and ticks:get(keys[1]) >= 5 and ticks:get(keys[2]) >= 5
            end)
            local first = holders()
            ngx.say("one holder: ", #first == 1)
            ngx.say("it is the lock's holder: ", session.worker_lock_holder("job") == first[1])

            held:set("quit", first[1])
            t.poll(5, 0.01, function() return #holders() >= 2 end)
            local count = held:get(first[1])
            -- the first worker ran a few more times since
            local ticks0 = ticks:get(first[1])
            t.poll(5, 0.01, function() return ticks:get(first[1]) >= ticks0 + 3 end)
            ngx.say("taken over: ", #holders() == 2)
            ngx.say("first stopped: ", held:get(first[1]) == count)
            ngx.say("new holder: ", session.worker_lock_holder("job") ~= first[1])
        }
    }
--- request
GET /t
--- response_body
one holder: true
it is the lock's holder: true
taken over: true
first stopped: true
new holder: true
--- no_error_log
[error]



=== TEST 7: with Consul unreachable, renewal keeps retrying every interval and logs the failure once, not a flood
--- vars
# nothing listens on this port
TEST_ZEDCUP_CONSUL = { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 }
TEST_ZEDCUP_GLOBALS = { session_renew_interval = 0.05 }
--- http_config
    lua_socket_log_errors off;
    init_worker_by_lua_block {
        assert(require("zedcup.session").run_workers())
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local timer = require "zedcup.timer"
            t.poll(5, 0.02, function() return timer.stats()["session renewal"].runs >= 5 end)
            local s = timer.stats()["session renewal"]
            ngx.say("still scheduled: ", s.pending or s.running)
            ngx.say("kept trying: ", s.runs >= 5, " (", s.runs, ")")
            ngx.say("no back-off past the interval: ", s.last_delay)
            ngx.say("no session: ", require("zedcup.session").id())
        }
    }
--- request
GET /t
--- response_body_like
still scheduled: true
kept trying: true \(\d+\)
no back-off past the interval: 0.05
no session: nil
--- grep_error_log
[zedcup] session renewal: session: create: consul: could not connect to 127.0.0.1:$TEST_NGINX_RAND_PORT_1
--- grep_error_log_out
[zedcup] session renewal: session: create: consul: could not connect to 127.0.0.1:$TEST_NGINX_RAND_PORT_1
--- no_error_log
[error]
