# Failover and failure accounting: connect errors, request errors and bad
# status codes move on to the next host and count against the host; max_errors
# marks it down once for the whole cluster; marking up brings it back.
#
# The preamble below (zedcup initialised against the session's Consul, /which and
# /isdown) goes in front of each block's sections; blocks that run zedcup's workers add
# them, --- vars put a proxy in front of Consul or trace host events.

--- vars
# the port zedcup finds Consul on (TEST 5, 7: a proxy in front of it)
TEST_ZEDCUP_CONSUL_PORT = $TEST_NGINX_CONSUL_PORT
# Lua run in init_by_lua after zedcup.init() (TEST 3-5: zedcup_t.trace_host_events())
TEST_ZEDCUP_AFTER_INIT =
--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_shared_dict flags 1m;
    lua_socket_log_errors off;

    init_by_lua_block {
        require "resty.core"
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_ZEDCUP_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
        $TEST_ZEDCUP_AFTER_INIT
    }
--- config
    # "<worker id> <body of instance ?i= (default inst)>" or "<worker id> <error>"
    location = /which {
        content_by_lua_block { require("zedcup_t").which() }
    }
    # "<worker id> <whether host p/dead of instance inst is down on this worker>"
    location = /isdown {
        content_by_lua_block {
            ngx.say(ngx.worker.id(), " ", require("zedcup.state").is_down("inst", "p", "dead"))
        }
    }

__DATA__

=== TEST 1: connect errors fail over to the next host; events carry {pool, host, err}; handler listeners run before global ones; a throwing listener is logged
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "one"; }
    }

--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            assert(zedcup.configure_instance("inst", { pools = {
                { name = "first", hosts = { { name = "dead", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 } } },
                { name = "second", hosts = { { name = "live", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } },
            } }))
            assert(zedcup.bind("host_connect_error", function(instance, d)
                ngx.say("global connect_error ", instance, " ", d.pool.name, "/", d.host.name)
            end))
            local h = assert(zedcup.create_handler("inst"))
            ngx.say(h:bind("nope", print), " ", select(2, h:bind("nope", print)))
            ngx.say(zedcup.bind("host_up", 1), " ", select(2, zedcup.bind("host_up", 1)))
            assert(h:bind("host_connect_error", function(d)
                ngx.say("handler connect_error ", d.pool.name, "/", d.host.name, " refused: ",
                        d.err:find("refused", 1, true) ~= nil)
            end))
            assert(h:bind("host_connect_error", function() error("listener boom") end))
            assert(h:bind("host_connect", function(d) ngx.say("connect ", d.pool.name, "/", d.host.name) end))
            local res, err = h:request({ path = "/" })
            ngx.say(res.status, " ", res:read_body())
            ngx.say("config is the effective one: ", h:config().pools[2].hosts[1].weight)
        }
    }
--- request
GET /t
--- response_body
nil Event not found
nil Can only bind a function
handler connect_error first/dead refused: true
global connect_error inst first/dead
connect second/live
200 one
config is the effective one: 1
--- error_log
listener boom


=== TEST 2: defects "request() returned false" and "dropped the last response": bad status codes fail over, the last bad response is returned, no host at all is nil + error
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "one"; }
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / { return 503 "bad3"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_4;
        location / { return 500 "bad4"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_5;
        location / { return 444; }
    }

--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local function host(name, port) return { name = name, host = "127.0.0.1", port = port } end
            assert(zedcup.configure_instance("mixed", { pools = { { hosts = {
                host("closes", $TEST_NGINX_RAND_PORT_5), host("b500", $TEST_NGINX_RAND_PORT_4),
                host("ok", $TEST_NGINX_RAND_PORT_1) } } } }))
            assert(zedcup.configure_instance("allbad", { pools = {
                { hosts = { host("b503", $TEST_NGINX_RAND_PORT_3) } },
                { status_codes = { "50x" }, hosts = { host("b500", $TEST_NGINX_RAND_PORT_4) } } } }))
            assert(zedcup.configure_instance("badthenbroken", { pools = { { hosts = {
                host("b500", $TEST_NGINX_RAND_PORT_4), host("closes", $TEST_NGINX_RAND_PORT_5) } } } }))
            assert(zedcup.configure_instance("none", { pools = { { hosts = {
                host("dead", $TEST_NGINX_RAND_PORT_2) } } } }))

            local h = assert(zedcup.create_handler("mixed"))
            assert(h:bind("host_request_error", function(d) ngx.say("request_error ", d.host.name, ": ", d.err) end))
            local res, err = h:request({ path = "/" })
            ngx.say(res.status, " ", res:read_body())

            h = assert(zedcup.create_handler("allbad"))
            assert(h:bind("host_request_error", function(d) ngx.say("request_error ", d.host.name, ": ", d.err) end))
            res, err = h:request({ path = "/" })
            ngx.say("last response: ", res.status, " ", res:read_body(), " ", err)
            ngx.say("reused: ", h:get_reused_times())
            h:close()

            h = assert(zedcup.create_handler("badthenbroken"))
            res, err = h:request({ path = "/" })
            ngx.say("kept over a later request error: ", res.status, " ", res:read_body())

            h = assert(zedcup.create_handler("none"))
            res, err = h:request({ path = "/" })
            ngx.say(type(res), " ", err)
            res, err = h:connect()
            ngx.say(type(res), " ", err)
        }
    }
--- request
GET /t
--- response_body_like
^request_error closes: .+
request_error b500: Bad status code: 500
200 one
request_error b503: Bad status code: 503
request_error b500: Bad status code: 500
last response: 500 bad4 nil
reused: 0
kept over a later request error: 500 bad4
nil No available upstream hosts
nil No available upstream hosts
$


=== TEST 3: max_errors within error_timeout marks the host down once (two workers), in the state tree and not the config tree; it is then skipped everywhere; mark_up brings it back once
--- workers: 2
--- timeout: 25
--- vars
TEST_ZEDCUP_AFTER_INIT = require("zedcup_t").trace_host_events()
--- http_config
    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "one"; }
    }

--- config

    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local state = require "zedcup.state"
            local P = "$TEST_ZEDCUP_PREFIX"

            -- ask(path) -> worker id, text; until_all(path, want, deadline) polls until
            -- every worker answers `want` -> seconds taken | nil (t/lib/zedcup_t.lua)
            local ask, until_all = require("zedcup_t").client($TEST_NGINX_SERVER_PORT)

            assert(zedcup.configure_instance("inst", { pools = { { name = "p", max_errors = 3, error_timeout = 60, hosts = {
                { name = "dead", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 },
                { name = "live", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            local function config_index()
                local max = 0
                for _, e in ipairs(assert(kv.get_tree(P .. "/instances/inst/"))) do
                    if e.ModifyIndex > max then max = e.ModifyIndex end
                end
                return max
            end
            local before = config_index()
            local served = 0
            for _ = 1, 12 do
                local _, body = ask("/which")
                if body == "one" then served = served + 1 end
            end
            ngx.say("served despite the dead host: ", served, "/12")
            local down_key = P .. "/state/inst/p/dead/down"
            require("zedcup_t").wait_for(5, 0.05, function() return kv.get(down_key) end)
            local e = kv.get(down_key)
            ngx.say("down in Consul: ", e and true, ", Flags is a unix time: ", e and math.abs(e.Flags - ngx.time()) < 10)
            ngx.say("errors counted: ", tonumber(kv.get(P .. "/state/inst/p/dead/errors").Value) >= 3)
            ngx.say("last_error: ", kv.get(P .. "/state/inst/p/dead/last_error").Value:find("refused", 1, true) ~= nil)
            ngx.say("config tree untouched: ", config_index() == before)
            ngx.say("every worker sees it down: ", until_all("/isdown", "true", 5) ~= nil)
            ngx.shared.flags:set("connect_errors", 0)
            for _ = 1, 10 do ask("/which") end
            ngx.say("connect errors once down: ", ngx.shared.flags:get("connect_errors"))
            ngx.say("mark_up: ", state.mark_up("inst", "p", "dead"), " then ", state.mark_up("inst", "p", "dead"))
            ngx.say("down key gone: ", kv.get(down_key) == false, ", errors reset: ",
                    kv.get(P .. "/state/inst/p/dead/errors") == false)
            ngx.say("every worker sees it up: ", until_all("/isdown", "false", 5) ~= nil)
            ngx.say("mark_down: ", state.mark_down("inst", "p", "dead", "test"), " then ",
                    state.mark_down("inst", "p", "dead", "test"))
            ngx.say("record_check: ", state.record_check("inst", "p", "dead", false, "timeout"),
                    " ", (state.last_check("inst", "p", "dead")), ", not in Consul: ",
                    kv.get(P .. "/state/inst/p/dead/check"))
        }
    }
--- request
GET /t
--- response_body
served despite the dead host: 12/12
down in Consul: true, Flags is a unix time: true
errors counted: true
last_error: true
config tree untouched: true
every worker sees it down: true
connect errors once down: 0
mark_up: true then false
down key gone: true, errors reset: true
every worker sees it up: true
mark_down: true then false
record_check: true timeout, not in Consul: false
--- grep_error_log
EVENT host_
--- grep_error_log_out
EVENT host_
EVENT host_
EVENT host_
--- error_log
EVENT host_down inst/p/dead
EVENT host_up inst/p/dead


=== TEST 4: defect "every node fired host_down": two nodes failing on the same host fire host_down exactly once cluster-wide
--- nodes: 2
--- workers: 2
--- timeout: 15
--- vars
TEST_ZEDCUP_AFTER_INIT = require("zedcup_t").trace_host_events()
--- http_config
    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1 reuseport;
        location / { return 200 "one"; }
    }

--- config

    # "<worker id> yes" once this worker holds the instance's plan (no request to a host)
    location = /has {
        content_by_lua_block {
            ngx.say(ngx.worker.id(), " ", require("zedcup.config").plan_local("inst") and "yes" or "no")
        }
    }

    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local P = "$TEST_ZEDCUP_PREFIX"
            local T = require "zedcup_t"
            -- the text of the "<worker id> <text>" answer of the node at `port`
            local function ask(port, path) return select(2, T.ask(port, path)) end
            assert(zedcup.configure_instance("inst", { pools = { { name = "p", max_errors = 2, error_timeout = 60, hosts = {
                { name = "dead", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 },
                { name = "live", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            -- every worker of both nodes has the instance (node 2 through its watcher)
            -- before the failures start: a worker that has not would answer "Instance not found"
            ngx.say("every worker has it: ", T.until_all($TEST_NGINX_NODE_PORT_1, "/has", "yes", 5) ~= nil
                    and T.until_all($TEST_NGINX_NODE_PORT_2, "/has", "yes", 5) ~= nil)
            -- both nodes fail on the dead host at the same time
            local threads = {}
            for i = 1, 8 do
                local port = i % 2 == 0 and $TEST_NGINX_NODE_PORT_1 or $TEST_NGINX_NODE_PORT_2
                threads[i] = ngx.thread.spawn(ask, port, "/which")
            end
            local served = 0
            for i = 1, 8 do
                local _, body = ngx.thread.wait(threads[i])
                if body == "one" then served = served + 1 end
            end
            ngx.say("served: ", served, "/8")
            T.wait_for(5, 0.05, function() return kv.get(P .. "/state/inst/p/dead/down") end)
            ngx.say("down: ", kv.get(P .. "/state/inst/p/dead/down") ~= false)
            -- more failures reported late by either node change nothing
            for i = 1, 6 do ask(i % 2 == 0 and $TEST_NGINX_NODE_PORT_1 or $TEST_NGINX_NODE_PORT_2, "/which") end
            ngx.sleep(0.6)
        }
    }
--- request
GET /t
--- response_body
every worker has it: true
served: 8/8
down: true
--- grep_error_log
EVENT host_down
--- grep_error_log_out
EVENT host_down


=== TEST 5: defects "concurrent failures were lost" and "each failure cost Consul round trips": every failure of two busy workers is counted, in fewer writes than failures
--- workers: 2
--- timeout: 15
--- vars
TEST_ZEDCUP_AFTER_INIT = require("zedcup_t").trace_host_events()
TEST_ZEDCUP_CONSUL_PORT = $TEST_NGINX_RAND_PORT_3
--- http_config
    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "one"; }
    }

    # the path to Consul goes through this proxy, which counts and can misbehave
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / {
            access_by_lua_block { require("zedcup_t").consul_proxy_access("$TEST_ZEDCUP_PREFIX") }
            header_filter_by_lua_block { require("zedcup_t").consul_proxy_header_filter() }
            log_by_lua_block { require("zedcup_t").consul_proxy_log() }
            proxy_pass http://127.0.0.1:$TEST_NGINX_CONSUL_PORT;
            proxy_read_timeout 700s;
            proxy_buffering off;
        }
    }
--- config

    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local P = "$TEST_ZEDCUP_PREFIX"

            -- ask(path) -> worker id, text; until_all(path, want, deadline) polls until
            -- every worker answers `want` -> seconds taken | nil (t/lib/zedcup_t.lua)
            local ask, until_all = require("zedcup_t").client($TEST_NGINX_SERVER_PORT)

            assert(zedcup.configure_instance("inst", { pools = { { name = "p", max_errors = 100000, hosts = {
                { name = "dead", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 },
                { name = "live", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            local flags = ngx.shared.flags
            flags:set("connect_errors", 0)
            local threads = {}
            for i = 1, 40 do threads[i] = ngx.thread.spawn(ask, "/which") end
            local served = 0
            for i = 1, 40 do
                local _, _, body = ngx.thread.wait(threads[i])
                if body == "one" then served = served + 1 end
            end
            local failures = flags:get("connect_errors")
            local key = P .. "/state/inst/p/dead/errors"
            local counted
            require("zedcup_t").wait_for_change(5, 0.05, function()
                local e = kv.get(key)
                counted = e and tonumber(e.Value)
                return counted == failures
            end)
            ngx.say("served: ", served, "/40, failures: ", failures >= 10)
            ngx.say("every failure counted in Consul: ", counted == failures)
            if counted ~= failures then ngx.log(ngx.ERR, "counted ", counted, " failures ", failures) end
            local writes = flags:get("writes:/v1/kv/" .. key) or 0
            ngx.say("fewer writes than failures: ", writes < failures, " (", writes > 0, ")")
        }
    }
--- request
GET /t
--- response_body
served: 40/40, failures: true
every failure counted in Consul: true
fewer writes than failures: true (true)
--- no_error_log
[error]



=== TEST 6: defect ""Pool is down" logged at ERR on every request": pools that are off or exhausted cost no log line
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            assert(zedcup.configure_instance("inst", { pools = {
                { up = false, hosts = { { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } },
                { hosts = { { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1, up = false } } } } }))
            for _ = 1, 5 do
                local h = assert(zedcup.create_handler("inst"))
                local res, err = h:request({ path = "/" })
                ngx.say(res, " ", err)
            end
        }
    }
--- request
GET /t
--- response_body
nil No available upstream hosts
nil No available upstream hosts
nil No available upstream hosts
nil No available upstream hosts
nil No available upstream hosts
--- no_error_log
[error]
[warn]


=== TEST 7: flake "every worker sees it up" (t/35 TEST 3): when the node's state watcher never saw a host down (marked down and up between two of its listings), a mark_up on this node still clears every worker's own mark at once
--- workers: 2
--- timeout: 25
--- vars
TEST_ZEDCUP_CONSUL_PORT = $TEST_NGINX_RAND_PORT_3
--- http_config
    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }

    # zedcup reaches Consul through this proxy, which can hold the state watcher's listings
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / {
            access_by_lua_block { require("zedcup_t").consul_proxy_access("$TEST_ZEDCUP_PREFIX") }
            log_by_lua_block { require("zedcup_t").consul_proxy_log() }
            proxy_pass http://127.0.0.1:$TEST_NGINX_CONSUL_PORT;
            proxy_read_timeout 700s;
            proxy_buffering off;
        }
    }
--- config
    # one failure of host "dead" on the worker this lands on -> "<worker id> <is_down>"
    location = /fail {
        content_by_lua_block {
            local config = require "zedcup.config"
            local state = require "zedcup.state"
            local pool, host = config.find_host("inst", "p", "dead")
            state.record_failure("inst", pool, host, "test failure")
            ngx.say(ngx.worker.id(), " ", state.is_down("inst", "p", "dead"))
        }
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local state = require "zedcup.state"
            local T = require "zedcup_t"
            local P = "$TEST_ZEDCUP_PREFIX"
            local flags = ngx.shared.flags
            local ask, until_all = T.client($TEST_NGINX_SERVER_PORT)

            assert(zedcup.configure_instance("inst", { pools = { { name = "p", max_errors = 2, error_timeout = 60, hosts = {
                { name = "dead", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 },
                { name = "live", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            ngx.say("every worker has the instance: ", until_all("/isdown", "false", 5) ~= nil)

            -- hold the state watcher: its next listing waits in the proxy
            flags:set("hold", "state")
            assert(kv.put(P .. "/state/other/p/h/last_error", "nudge"))
            ngx.say("watcher held: ", T.wait_for(5, 0.01, function() return (flags:get("held") or 0) > 0 end))

            -- both workers mark the host down on their own; the sync marks it down in Consul
            ngx.say("every worker marked it: ", until_all("/fail", "true", 5) ~= nil)
            ngx.say("down in Consul: ", T.wait_for(5, 0.05, function() return kv.get(P .. "/state/inst/p/dead/down") end) and true)
            ngx.say("mark_up: ", state.mark_up("inst", "p", "dead"))
            flags:delete("hold")
            ngx.say("every worker uses it again: ", until_all("/isdown", "false", 2) ~= nil)
        }
    }
--- request
GET /t
--- response_body
every worker has the instance: true
watcher held: true
every worker marked it: true
down in Consul: true
mark_up: true
every worker uses it again: true
