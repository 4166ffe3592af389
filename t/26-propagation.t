# Every worker acts on a change within 0.2 s of the write reaching Consul (the node
# store's poll, zedcup.store.POLL_INTERVAL), and a cold node shares one Consul lookup
# per instance among all its requests when Consul hangs. Writes here go straight to
# Consul (zedcup.kv), not through the node's own configure_instance(), so what is
# measured is the watcher's answer plus every worker's poll.
#
# Every block: zedcup with its workers, and /which (the preamble below).
# TEST 3 proves a race closed, so it widens the race's window on purpose.

--- vars
# where zedcup finds Consul (TEST 2: a proxy that hangs; TEST 3: a proxy that can hold listings)
TEST_ZEDCUP_CONSUL = { host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" }
# more Lua at the end of init_by_lua (TEST 3: a slow instances applier)
TEST_ZEDCUP_INIT =
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
            consul = $TEST_ZEDCUP_CONSUL,
        }))
        $TEST_ZEDCUP_INIT
    }
    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }
--- config
    location = /which {
        content_by_lua_block { require("zedcup_t").which() }
    }

__DATA__

=== TEST 1: two workers: a reconfigure, a host marked down in Consul and a removal reach both workers within 0.2 s (median of 3)
--- workers: 2
--- timeout: 40
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "one"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / { return 200 "two"; }
    }
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local _, until_all = require("zedcup_t").client($TEST_NGINX_SERVER_PORT)
            local P = "$TEST_ZEDCUP_PREFIX"
            local function median(t)
                table.sort(t)
                return t[2]
            end
            local function port_of(p)
                return kv.txn({ kv.set_op(P .. "/instances/inst/pools/1/hosts/1/port", tostring(p)) })
            end
            local one, two = $TEST_NGINX_RAND_PORT_1, $TEST_NGINX_RAND_PORT_2
            -- a reconfigure: the only host moves to another backend
            assert(zedcup.configure_instance("inst", { pools = { { name = "p", hosts = {
                { name = "h", host = "127.0.0.1", port = one } } } } }))
            assert(until_all("/which", "one", 10), "not served")
            local took = {}
            for i = 1, 3 do
                assert(port_of(i % 2 == 1 and two or one))
                took[i] = until_all("/which", i % 2 == 1 and "two" or "one", 5) or 99
            end
            ngx.say("reconfigure on every worker within 0.2 s: ", median(took) < 0.2,
                    " (", string.format("%.3f", median(took)), " s)")

            -- Consul marks the host down (as another node's failure sync would):
            -- the pool has no usable host left
            assert(port_of(one))
            assert(until_all("/which", "one", 5))
            local down = {}
            local key = P .. "/state/inst/p/h/down"
            for i = 1, 3 do
                assert(kv.put(key, "test", { cas = 0 }))
                down[i] = until_all("/which", "No available upstream hosts", 5) or 99
                assert(kv.delete(key))
                assert(until_all("/which", "one", 5))
            end
            ngx.say("host down on every worker within 0.2 s: ", median(down) < 0.2,
                    " (", string.format("%.3f", median(down)), " s)")

            -- a removal: every worker forgets the instance
            local gone = {}
            for i = 1, 3 do
                assert(kv.txn({ kv.delete_tree_op(P .. "/instances/inst/") }))
                gone[i] = until_all("/which", "Instance not found", 5) or 99
                assert(zedcup.configure_instance("inst", { pools = { { name = "p", hosts = {
                    { name = "h", host = "127.0.0.1", port = one } } } } }))
                assert(until_all("/which", "one", 5))
            end
            ngx.say("removal on every worker within 0.2 s: ", median(gone) < 0.2,
                    " (", string.format("%.3f", median(gone)), " s)")
        }
    }
--- request
GET /t
--- response_body_like
^reconfigure on every worker within 0.2 s: true \(0\.\d+ s\)
host down on every worker within 0.2 s: true \(0\.\d+ s\)
removal on every worker within 0.2 s: true \(0\.\d+ s\)
$
--- no_error_log
[error]



=== TEST 2: cold start against a hung Consul: concurrent requests on both workers share one lookup and answer "Could not retrieve config: <why>" quickly; so does balance()
--- workers: 2
--- timeout: 30
--- vars
TEST_ZEDCUP_CONSUL = { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_3 }
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        # Consul hangs from the start: the proxy accepts and answers only once released
        location / {
            access_by_lua_block {
                local flags = ngx.shared.flags
                if ngx.var.uri:find("/instances/inst/", 1, true) then
                    flags:incr("lookups", 1, 0)
                end
                while not flags:get("released") do ngx.sleep(0.05) end
            }
            proxy_pass http://127.0.0.1:$TEST_NGINX_CONSUL_PORT;
        }
    }
    upstream via_balance {
        server 0.0.0.1;
        balancer_by_lua_block {
            local ok, err = require("zedcup").balance("inst")
            if not ok then
                ngx.log(ngx.WARN, "balance said: ", err)
                return ngx.exit(require("zedcup").NO_PEER or 502)
            end
        }
    }
--- config
    location = /proxy {
        proxy_pass http://via_balance/;
    }
    location = /t {
        content_by_lua_block {
            local T = require "zedcup_t"
            local port = $TEST_NGINX_SERVER_PORT
            local threads, answers = {}, {}
            ngx.update_time()
            local t0 = ngx.now()
            for i = 1, 16 do
                threads[i] = ngx.thread.spawn(function()
                    -- (the block's limit is "all within 3 s", below)
                    local w, text = T.ask(port, "/which", 10000)
                    return w, text
                end)
            end
            local workers, slowest = {}, 0
            for i = 1, 16 do
                local _, w, text = ngx.thread.wait(threads[i])
                ngx.update_time()
                slowest = math.max(slowest, ngx.now() - t0)
                answers[text or "?"] = (answers[text or "?"] or 0) + 1
                if w then workers[w] = true end
            end
            for text, n in pairs(answers) do
                ngx.say(n, " x ", (text:gsub("127%.0%.0%.1:%d+", "CONSUL")))
            end
            ngx.say("both workers answered: ", workers[0] and workers[1] or false)
            ngx.say("all within 3 s: ", slowest < 3)
            ngx.say("Consul lookups of the instance: ", ngx.shared.flags:get("lookups"))
            -- the failure is remembered briefly: asked again at once, no new lookup
            T.ask(port, "/which")
            ngx.say("lookups after one more request: ", ngx.shared.flags:get("lookups"))

            local sock = ngx.socket.tcp()
            assert(sock:connect("127.0.0.1", port))
            sock:send("GET /proxy HTTP/1.0\r\nHost: x\r\n\r\n")
            local line = sock:receive("*l")
            sock:close()
            ngx.say("balance path: ", line)
            ngx.shared.flags:set("released", true)
        }
    }
--- request
GET /t
--- response_body_like
^16 x Could not retrieve config: reading \S+/instances/inst/ failed: consul: .*timeout
both workers answered: true
all within 3 s: true
Consul lookups of the instance: 1
lookups after one more request: 1
balance path: HTTP/1.1 50[02] .*
$
--- error_log
balance said: Could not retrieve config:



=== TEST 3: a listing of the instances asked for before remove_instance and applied after it does not bring the instance back (the removal's index is unknown: its time decides)
--- workers: 2
--- timeout: 30
--- vars
TEST_ZEDCUP_CONSUL = { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_3, token = "$TEST_NGINX_CONSUL_TOKEN" }
TEST_ZEDCUP_INIT = require("zedcup_t").slow_instances_applier()
--- http_config
    # zedcup reaches Consul through this proxy, which can hold the watcher's next listings
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
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "one"; }
    }
--- config
    location = /has {
        content_by_lua_block {
            ngx.say(ngx.worker.id(), " ", require("zedcup.config").plan_local("inst") ~= nil)
        }
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local T = require "zedcup_t"
            local flags = ngx.shared.flags
            local _, until_all = T.client($TEST_NGINX_SERVER_PORT)
            local direct = require("zedcup.consul"):new({ host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT,
                                                          token = "$TEST_NGINX_CONSUL_TOKEN" })
            local conf = { pools = { { hosts = { { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }
            assert(zedcup.configure_instance("inst", conf))
            assert(zedcup.configure_instance("other", conf))
            ngx.say("served: ", until_all("/which", "one", 5) ~= nil)

            -- a listing that still holds inst reaches the node; its applier waits 0.5 s
            flags:set("slow", true)
            assert(direct:put_key("$TEST_ZEDCUP_PREFIX/instances/other/pools/1/hosts/1/weight", "2"))
            ngx.say("a listing with inst is being applied: ",
                    T.wait_for(5, 0.01, function() return flags:get("applying") end))
            -- no later listing comes to correct it; this node removes inst meanwhile
            flags:set("hold", "instances")
            assert(zedcup.remove_instance("inst"))
            T.wait_for(5, 0.01, function() return not flags:get("slow") end)
            ngx.say("applied: ", not flags:get("slow"))
            ngx.say("every worker still without inst: ", until_all("/has", "false", 1) ~= nil)
            flags:delete("hold")
        }
    }
--- request
GET /t
--- response_body
served: true
a listing with inst is being applied: true
applied: true
every worker still without inst: true
