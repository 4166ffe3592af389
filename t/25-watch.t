# The Consul watchers (zedcup.watch): one per node and prefix, blocking on
# their own index, resetting it when it goes backwards; and every Consul answer's
# status checked. Consul is reached through a counting proxy in the same nginx
# (RAND_PORT_3), set up with zedcup by the preamble below (TEST 2 runs no workers).

--- vars
# init_worker_by_lua (TEST 2: nothing)
TEST_ZEDCUP_RUN_WORKERS = require("zedcup").run_workers()
--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;

    init_by_lua_block {
        require "resty.core"
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_3, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }

    init_worker_by_lua_block {
        $TEST_ZEDCUP_RUN_WORKERS
    }

    lua_shared_dict flags 1m;
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

__DATA__

=== TEST 1: defects "several workers watched at once" and "the watcher never saw its own index": an idle node of two workers holds exactly one blocking query per prefix and sends almost nothing
--- workers: 2
--- timeout: 10
--- config
    location = /t {
        content_by_lua_block {
            local flags = ngx.shared.flags
            -- let both workers start their watchers, then watch an idle node
            require("zedcup_t").wait_for_change(5, 0.1, function()
                return flags:get("blocking:instances") == 1 and flags:get("blocking:config") == 1
                       and flags:get("blocking:state") == 1
            end)
            -- past the node's start-up work (session, checker lock, the node record:
            -- on a real Consul each KV write also wakes the watches of empty prefixes)
            ngx.sleep(2)
            local before = flags:get("requests")
            ngx.sleep(1.5)
            ngx.say("blocking queries in flight: instances=", flags:get("blocking:instances"),
                    " config=", flags:get("blocking:config"), " state=", flags:get("blocking:state"))
            ngx.say("requests while idle for 1.5 s <= 3: ", flags:get("requests") - before <= 3)
        }
    }
--- request
GET /t
--- response_body
blocking queries in flight: instances=1 config=1 state=1
requests while idle for 1.5 s <= 3: true
--- no_error_log
[error]


=== TEST 2: defect "configure() ignored Consul's HTTP status": every write checks it and fails with the status
--- vars
TEST_ZEDCUP_RUN_WORKERS =
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local conf = { pools = { { hosts = { { host = "127.0.0.1", port = 1 } } } } }
            assert(zedcup.configure_instance("inst", conf))
            ngx.shared.flags:set("status", 500)
            ngx.say(zedcup.configure({ session_ttl = 20 }))
            ngx.say(zedcup.configure_instance("inst", conf))
            ngx.say(zedcup.remove_instance("inst"))
            ngx.say(zedcup.instance_list())
            ngx.shared.flags:set("status", 403)
            ngx.say(zedcup.configure_instance("inst", conf))
            ngx.shared.flags:delete("status")
            ngx.say(zedcup.remove_instance("inst"))
        }
    }
--- request
GET /t
--- response_body
nilwriting $TEST_ZEDCUP_PREFIX/config/ failed: transaction: Consul answered 500
nilwriting $TEST_ZEDCUP_PREFIX/instances/inst/ failed: transaction: Consul answered 500
nilremoving instance inst failed: transaction: Consul answered 500
nillisting instances failed: Consul answered 500
nilwriting $TEST_ZEDCUP_PREFIX/instances/inst/ failed: transaction: Consul answered 403
true


=== TEST 3: defect "an index going backwards was never reset": after Consul's index drops, the watcher starts over and changes still arrive
--- workers: 2
--- timeout: 30
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

    # "<worker id> <body of instance ?i= (default inst)>" or "<worker id> <error>"
    location = /which {
        content_by_lua_block { require("zedcup_t").which() }
    }

    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local P = "$TEST_ZEDCUP_PREFIX"

            -- ask(path) -> worker id, text; until_all(path, want, deadline) polls until
            -- every worker answers `want` -> seconds taken | nil (t/lib/zedcup_t.lua)
            local ask, until_all = require("zedcup_t").client($TEST_NGINX_SERVER_PORT)

            assert(zedcup.configure({ consul_wait_time = 1 }))
            assert(zedcup.configure_instance("inst", { pools = { { hosts = {
                { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            ngx.say("served: ", until_all("/which", "one", 5) ~= nil)
            -- the next answer claims an index far ahead (as before a snapshot restore);
            -- every answer after it is "backwards"
            ngx.shared.flags:set("inflate", 1000000)
            assert(kv.put(P .. "/instances/other/pools/1/hosts/1/host", "/run/other.sock"))
            require("zedcup_t").wait_for(5, 0.05, function() return not ngx.shared.flags:get("inflate") end)
            ngx.say("inflated answer sent: ", ngx.shared.flags:get("inflate") == nil)
            assert(kv.put(P .. "/instances/inst/pools/1/hosts/1/port", "$TEST_NGINX_RAND_PORT_2"))
            ngx.say("change seen after the reset: ", until_all("/which", "two", 8) ~= nil)
        }
    }
--- request
GET /t
--- response_body
served: true
inflated answer sent: true
change seen after the reset: true
--- no_error_log
[error]
