# zedcup.status(), status_page() and metrics(): this node's view from its own
# memory (no Consul call), as a table, JSON, a dashboard and Prometheus text.

# Every block: zedcup with its workers (the preamble below); --- vars name the node or
# put a counting proxy in front of Consul.

--- vars
# more options of zedcup.init()
TEST_ZEDCUP_INIT_EXTRA =
# the port zedcup finds Consul on
TEST_ZEDCUP_CONSUL_PORT = $TEST_NGINX_CONSUL_PORT
--- http_config
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_shared_dict flags 1m;
    init_by_lua_block {
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX", $TEST_ZEDCUP_INIT_EXTRA
            consul = { host = "127.0.0.1", port = $TEST_ZEDCUP_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }
    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }

__DATA__

=== TEST 1: status() shows pools in order, host states with reasons, counts, and the node; no Consul call
--- workers: 2
--- timeout: 20
--- vars
TEST_ZEDCUP_INIT_EXTRA = node_name = "node-a",
--- http_config
    lua_socket_log_errors off;
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "web01"; }
    }
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local T = require "zedcup_t"
            assert(zedcup.configure({ healthcheck_interval = 0.2 }))
            assert(zedcup.configure_instance("web", {
                pools = {
                    { name = "primary", max_errors = 1, error_timeout = 30, hosts = {
                        { name = "web01", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1, weight = 3 },
                        { name = "gone", host = "127.0.0.1", port = 1 },
                        { name = "off", host = "127.0.0.1", port = 2, up = false } } },
                    { name = "backup", up = false, hosts = { { name = "dr01", host = "/tmp/none.sock" } } },
                },
            }))
            -- a failing host marked down by errors (max_errors = 1), through Consul
            assert(T.wait_for(5, 0.05, function() return zedcup.create_handler("web") end))
            for _ = 1, 4 do
                local h = assert(zedcup.create_handler("web"))
                local res = h:request({ path = "/" })
                if res then res:read_body() end
                h:close()
            end
            local counters = require "zedcup.counters"
            local st
            assert(T.wait_for(8, 0.1, function()
                st = zedcup.status("web")
                local h = st and st.instances[1].pools[1].hosts[2]
                -- marked down in Consul (not only this worker's own mark before that)
                return h and h.state == "down" and h.reason == "errors" and st.node.consul.reachable
                       and h.detail:find(" errors within ", 1, true)
                       and #zedcup.status().instances == 1
            end), "gone never reported down by errors")

            -- no Consul call: Consul is made unreachable for this worker's client
            local kv = require "zedcup.kv"
            local real = kv.client
            kv.client = function() error("status() called Consul") end
            local ok, err = pcall(zedcup.status)
            kv.client = real
            assert(ok, err)
            st = err

            local inst = st.instances[1]
            ngx.say("instances: ", #st.instances, " ", inst.name)
            ngx.say("pools: ", inst.pools[1].name, " ", inst.pools[1].index, " ", tostring(inst.pools[1].up),
                    ", ", inst.pools[2].name, " ", inst.pools[2].index, " ", tostring(inst.pools[2].up))
            for _, p in ipairs(inst.pools) do
                for _, h in ipairs(p.hosts) do
                    ngx.say(p.name, "/", h.name, " ", h.address, " w", h.weight, " ", h.state, " ",
                            tostring(h.reason), " since:", type(h.since))
                end
            end
            local g = inst.pools[1].hosts[2]
            ngx.say("gone errors: ", g.errors, ", last_error: ", g.last_error and "yes" or "no")
            ngx.say("node: ", st.node.name, " ", st.node.version, " started:", type(st.node.started),
                    " consul:", tostring(st.node.consul.reachable), " contact:", type(st.node.consul.last_contact))
            ngx.say("missing: ", select(2, zedcup.status("nope")))
            ngx.say("transition: ", st.transitions[1] and (st.transitions[1].host .. " "
                    .. st.transitions[1].from .. "->" .. st.transitions[1].to) or "none")
        }
    }
--- request
GET /t
--- response_body_like
^instances: 1 web
pools: primary 1 true, backup 2 false
primary/web01 127.0.0.1:\d+ w3 up nil since:(number|nil)
primary/gone 127.0.0.1:1 w1 down errors since:number
primary/off 127.0.0.1:2 w1 disabled config since:(number|nil)
backup/dr01 /tmp/none.sock w1 disabled config since:(number|nil)
gone errors: [1-9]\d*, last_error: yes
node: node-a 0.1.0 started:number consul:true contact:number
missing: Instance not found
transition: (gone up->down|none)
$
--- no_error_log
[error]



=== TEST 2: counters: tries and requests counted in worker memory reach status() and metrics() from every worker
--- workers: 2
--- timeout: 20
--- config
    location = /count {
        content_by_lua_block {
            local counters = require "zedcup.counters"
            local h = assert(require("zedcup").create_handler("web"))
            local pools = h:config().pools
            counters.try("web", pools[1], pools[1].hosts[1])
            counters.failure("web", pools[1], pools[1].hosts[2], "connect")
            counters.try("web", pools[2], pools[2].hosts[1])
            counters.failure("web", pools[2], pools[2].hosts[1], "status")
            counters.request("web", 2)
            counters.request("web", nil)
            ngx.say(ngx.worker.id(), " counted")
        }
    }
    location = /metrics {
        content_by_lua_block { require("zedcup").metrics() }
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local T = require "zedcup_t"
            assert(zedcup.configure_instance("web", {
                pools = {
                    { name = "a", hosts = { { name = "h1", host = "127.0.0.1", port = 1 },
                                            { name = "h2", host = "127.0.0.1", port = 2 } } },
                    { name = "b", hosts = { { name = "h3", host = "127.0.0.1", port = 3 } } },
                },
            }))
            assert(T.wait_for(5, 0.05, function() return zedcup.create_handler("web") end))
            -- requests to /count over fresh connections until both workers counted (10 at least)
            local workers, n = {}, 0
            while n < 10 or not (workers[0] and workers[1]) and n < 200 do
                local w = T.ask($TEST_NGINX_SERVER_PORT, "/count")
                workers[w or -1] = true
                n = n + 1
            end
            ngx.say("both workers: ", tostring(workers[0] and workers[1] or false))
            local st
            assert(T.wait_for(5, 0.1, function()
                st = zedcup.status("web")
                return st and st.instances[1].requests == 2 * n
            end), "counts never reached 20")
            local i = st.instances[1]
            local a1, a2 = i.pools[1].hosts[1], i.pools[1].hosts[2]
            local b3 = i.pools[2].hosts[1]
            local function per(v) return v / n end
            ngx.say("per /count: requests ", per(i.requests), " tries ", per(i.tries), " failovers ", per(i.failovers),
                    " unanswered ", per(i.no_host))
            ngx.say("h1 ", per(a1.requests), " ", a1.failures.connect, a1.failures.request, a1.failures.status)
            ngx.say("h2 ", per(a2.requests), " ", per(a2.failures.connect), a2.failures.request, a2.failures.status)
            ngx.say("h3 ", per(b3.requests), " ", b3.failures.connect, b3.failures.request, per(b3.failures.status))
            local text = require("zedcup.metrics").render()
            for _, pat in ipairs({
                'zedcup_requests_total{instance="web"} ' .. 2 * n,
                'zedcup_tries_total{instance="web"} ' .. 3 * n,
                'zedcup_failovers_total{instance="web"} ' .. n,
                'zedcup_unanswered_total{instance="web"} ' .. n,
                'zedcup_host_requests_total{instance="web",pool="a",host="h1"} ' .. n,
                'zedcup_host_failures_total{instance="web",pool="a",host="h2",kind="connect"} ' .. n,
                'zedcup_host_failures_total{instance="web",pool="b",host="h3",kind="status"} ' .. n,
                'zedcup_host_failures_total{instance="web",pool="b",host="h3",kind="connect"} 0',
                '# TYPE zedcup_host_requests_total counter',
            }) do
                ngx.say(text:find(pat .. "\n", 1, true) and "has " or "MISSING ", (pat:gsub("%d+$", "N")))
            end
        }
    }
--- request
GET /t
--- response_body
both workers: true
per /count: requests 2 tries 3 failovers 1 unanswered 1
h1 1 000
h2 1 100
h3 1 001
has zedcup_requests_total{instance="web"} N
has zedcup_tries_total{instance="web"} N
has zedcup_failovers_total{instance="web"} N
has zedcup_unanswered_total{instance="web"} N
has zedcup_host_requests_total{instance="web",pool="a",host="h1"} N
has zedcup_host_failures_total{instance="web",pool="a",host="h2",kind="connect"} N
has zedcup_host_failures_total{instance="web",pool="b",host="h3",kind="status"} N
has zedcup_host_failures_total{instance="web",pool="b",host="h3",kind="connect"} N
has # TYPE zedcup_host_requests_total counter
--- no_error_log
[error]



=== TEST 3: Consul answering errors: status() and metrics() keep answering from memory and say Consul is unreachable
--- timeout: 30
--- vars
TEST_ZEDCUP_INIT_EXTRA = node_name = "node-c",
TEST_ZEDCUP_CONSUL_PORT = $TEST_NGINX_RAND_PORT_3
--- http_config
    lua_socket_log_errors off;
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / {
            access_by_lua_block { require("zedcup_t").consul_proxy_access("$TEST_ZEDCUP_PREFIX") }
            header_filter_by_lua_block { require("zedcup_t").consul_proxy_header_filter() }
            log_by_lua_block { require("zedcup_t").consul_proxy_log() }
            proxy_pass http://127.0.0.1:$TEST_NGINX_CONSUL_PORT;
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "web01"; }
    }
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local T = require "zedcup_t"
            assert(zedcup.configure_instance("web", { pools = { { name = "p", hosts = {
                { name = "web01", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            assert(T.wait_for(10, 0.1, function()
                local st = zedcup.status()
                return st.node.consul.reachable and st.instances[1] and st.instances[1].name == "web"
            end), "never reachable")
            ngx.shared.flags:set("status", 500)
            local st
            assert(T.wait_for(12, 0.1, function()
                st = zedcup.status()
                return st.node.consul.reachable == false
            end), "never said unreachable")
            local h = st.instances[1].pools[1].hosts[1]
            ngx.say("unreachable; still serving ", st.instances[1].name, ": ", h.name, " ", h.state,
                    "; last contact known: ", type(st.node.consul.last_contact))
            local text = require("zedcup.metrics").render()
            ngx.say(text:find("\nzedcup_consul_up 0\n", 1, true) and "zedcup_consul_up 0" or "MISSING")
            ngx.say(text:find('zedcup_host_up{instance="web",pool="p",host="web01"} 1', 1, true)
                    and "host up in /metrics" or "MISSING")
            local handler = assert(zedcup.create_handler("web"))
            local res = assert(handler:request({ path = "/" }))
            ngx.say("request: ", res:read_body())
            ngx.shared.flags:delete("status")
            assert(T.wait_for(12, 0.1, function()
                return zedcup.status().node.consul.reachable == true
            end), "never reachable again")
            ngx.say("reachable again")
        }
    }
--- request
GET /t
--- response_body
unreachable; still serving web: web01 up; last contact known: number
zedcup_consul_up 0
host up in /metrics
request: web01
reachable again



=== TEST 4: operator holds: a host and a pool held down show as down for a manual reason, with since
--- timeout: 20
--- http_config
    lua_socket_log_errors off;
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local T = require "zedcup_t"
            assert(zedcup.configure_instance("web", { pools = {
                { name = "a", hosts = { { name = "h1", host = "127.0.0.1", port = 1 },
                                        { name = "h2", host = "127.0.0.1", port = 2 } } },
                { name = "b", hosts = { { name = "h3", host = "127.0.0.1", port = 3 } } } } }))
            assert(T.wait_for(5, 0.05, function() return zedcup.status("web") end))
            assert(zedcup.set_host_state("web", "a", "h1", "down", "maintenance"))
            assert(kv.put(kv.state_prefix("web") .. "b/admin_down", "draining", { flags = ngx.time() }))
            local st
            assert(T.wait_for(5, 0.05, function()
                st = zedcup.status("web")
                local p = st.instances[1].pools
                return p[1].hosts[1].state == "down" and p[2].hosts[1].state == "down"
            end), "holds never shown")
            local p = st.instances[1].pools
            for _, h in ipairs({ p[1].hosts[1], p[1].hosts[2], p[2].hosts[1] }) do
                ngx.say(h.name, " ", h.state, " ", tostring(h.reason), " ", tostring(h.detail),
                        h.state == "down" and (" since:" .. type(h.since)) or "")
            end
            ngx.say("pool b held: ", p[2].held and p[2].held.reason or "no")
            local text = require("zedcup.metrics").render()
            ngx.say(text:find('zedcup_host_up{instance="web",pool="b",host="h3"} 0', 1, true) and "h3 not up in metrics"
                    or "MISSING")
        }
    }
--- request
GET /t
--- response_body
h1 down manual maintenance since:number
h2 up nil nil
h3 down manual pool held down: draining since:number
pool b held: draining
h3 not up in metrics
--- no_error_log
[error]
