# pool.slow_start: a host that comes back ramps its weight up linearly.

__DATA__

=== TEST 1: a host back from down takes a small share at first and its full share after slow_start
--- timeout: 40
--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;
    init_by_lua_block {
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                       token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }
    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }
    upstream zedcup_inst {
        server 0.0.0.1;
        balancer_by_lua_block { require("balance_t").balance("ss") }
    }
    server {
        listen 127.0.0.2:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "a"; }
    }
    server {
        listen 127.0.0.3:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "b"; }
    }
--- config
    location /proxied {
        proxy_pass http://zedcup_inst/;
        log_by_lua_block { require("zedcup").log() }
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local state = require "zedcup.state"
            local t = require "blocks_t"
            local B = require "balance_t"
            local get = B.get
            local port = $TEST_NGINX_SERVER_PORT
            assert(zedcup.configure_instance("ss", { pools = { { name = "p", slow_start = 6, hosts = {
                { name = "a", host = "127.0.0.2", port = $TEST_NGINX_RAND_PORT_1 },
                { name = "b", host = "127.0.0.3", port = $TEST_NGINX_RAND_PORT_1 },
            } } } }))
            local function split(n)
                return B.split(port, "/proxied", n, { "a", "b" })
            end
            local c
            t.retry_until(ngx.now() + 8, 0.05, function() c = split(20); return c.a == 10 end)
            ngx.say("before: a ", c.a, " of 20")

            assert(state.mark_down("ss", "p", "a", "test"))
            t.retry_until(ngx.now() + 8, 0.05, function() c = split(10); return c.a == 0 end)
            ngx.say("down: a ", c.a, " of 10")

            assert(state.mark_up("ss", "p", "a"))
            -- from a's first answer on: the next 40 requests (well within the ramp)
            t.retry_until(ngx.now() + 8, 0.001, function() local _, body = get(port, "/proxied"); return body == "a" end)
            c = split(40)
            ngx.say("just back: a takes at most a quarter: ", c.a <= 10, " (", c.a, " of 40)")
            local ok = t.retry_until(ngx.now() + 12, 0.1, function() c = split(20); return c.a == 10 end)
            ngx.say("after slow_start: a ", c.a, " of 20 (", ok, ")")
        }
    }
--- request
GET /t
--- response_body_like
^before: a 10 of 20
down: a 0 of 10
just back: a takes at most a quarter: true \(([1-9]|10) of 40\)
after slow_start: a 10 of 20 \(true\)
$
--- no_error_log
[error]
