# The balancing methods end to end, on both request paths (handlers and
# balance()): who gets the requests when hosts are busy or slow (real nginx,
# dev-consul, real backends).
#
# Every block: zedcup counting events in `flags` (balance_t.init), the README's
# upstream block, a slow (RAND_PORT_1) and a fast (RAND_PORT_2) backend, and instance
# "inst" on both request paths: /proxied (balance()) and /handled (a handler) (the
# preamble below).

--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_shared_dict flags 1m;
    lua_socket_log_errors off;

    init_by_lua_block {
        require("balance_t").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        })
    }

    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }

    # the README's upstream block, with the instance from a variable
    upstream zedcup_inst {
        server 0.0.0.1;   # placeholder: balancer_by_lua sets the peer
        balancer_by_lua_block { require("balance_t").balance(ngx.var.zedcup_instance, nil, ngx.ERR) }
        keepalive 16;
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.sleep(tonumber(ngx.var.arg_slow) or 0.3)
                ngx.shared.flags:incr("hit slow", 1, 0)
                ngx.say("slow")
            }
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / {
            content_by_lua_block {
                ngx.shared.flags:incr("hit fast", 1, 0)
                ngx.say("fast")
            }
        }
    }
--- config
    location /proxied {
        set $zedcup_instance inst;
        proxy_pass http://zedcup_inst;
        log_by_lua_block { require("zedcup").log() }
    }
    location /handled {
        content_by_lua_block {
            local h = assert(require("zedcup").create_handler("inst"))
            local res, err = h:request({ path = ngx.var.request_uri:gsub("^/handled", "/") })
            if not res then
                ngx.status = 502
                return ngx.say(err)
            end
            ngx.print(res:read_body())
            h:set_keepalive()
        }
    }

__DATA__

=== TEST 1: least_conn prefers the idle host under concurrency, on both paths (a host busy for 300 ms gets few of 30 requests sent within 150 ms)
--- timeout: 30
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local flags = ngx.shared.flags
            local get = require("balance_t").get
            local port = $TEST_NGINX_SERVER_PORT
            assert(zedcup.configure_instance("inst", { pools = { { name = "p", method = "least_conn", hosts = {
                { name = "slow", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 },
                { name = "fast", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 } } } } }))
            -- n requests at once on `path`, then the hits of each backend
            local function burst(path, n)
                flags:set("hit slow", 0)
                flags:set("hit fast", 0)
                require("balance_t").burst(port, path, n)
                return flags:get("hit slow") or 0, flags:get("hit fast") or 0
            end
            for _, path in ipairs({ "/handled", "/proxied" }) do
                local slow, fast = burst(path, 30)
                ngx.say(path, ": fast host >= 27 of 30: ", fast >= 27, ", total ", slow + fast)
            end
            -- every try was released: one at a time, the hosts take turns
            flags:set("hit slow", 0)
            flags:set("hit fast", 0)
            for _ = 1, 4 do get(port, "/proxied?slow=0") end
            for _ = 1, 4 do get(port, "/handled?slow=0") end
            ngx.say("sequential: slow ", flags:get("hit slow"), ", fast ", flags:get("hit fast"))
        }
    }
--- request
GET /t
--- response_body
/handled: fast host >= 27 of 30: true, total 30
/proxied: fast host >= 27 of 30: true, total 30
sequential: slow 4, fast 4



=== TEST 2: ewma prefers the fast host, sequentially and under concurrency, on both paths
--- timeout: 30
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local flags = ngx.shared.flags
            local get = require("balance_t").get
            local port = $TEST_NGINX_SERVER_PORT
            assert(zedcup.configure_instance("inst", { pools = { { name = "p", method = "ewma", ewma_decay = 10, hosts = {
                { name = "slow", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 },
                { name = "fast", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 } } } } }))
            -- n requests at once on `path`, then the hits of each backend
            local function burst(path, n)
                flags:set("hit slow", 0)
                flags:set("hit fast", 0)
                require("balance_t").burst(port, path, n)
                return flags:get("hit slow") or 0, flags:get("hit fast") or 0
            end
            for _, path in ipairs({ "/handled", "/proxied" }) do
                -- one at a time: each host is tried once, then the fast one is preferred (the
                -- paths share the worker's balancer: /proxied knows the hosts already)
                flags:set("hit slow", 0)
                flags:set("hit fast", 0)
                for _ = 1, 10 do get(port, path .. "?slow=0.05") end
                ngx.say(path, ": sequential: slow ", flags:get("hit slow"), ", fast ", flags:get("hit fast"))
                local slow, fast = burst(path .. "?slow=0.05", 30)
                ngx.say(path, ": at once: slow ", slow, ", fast ", fast)
            end
        }
    }
--- request
GET /t
--- response_body
/handled: sequential: slow 1, fast 9
/handled: at once: slow 0, fast 30
/proxied: sequential: slow 0, fast 10
/proxied: at once: slow 0, fast 30



=== TEST 3: weighted_rr on both paths: exact shares across the two request paths of one worker
--- timeout: 30
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local flags = ngx.shared.flags
            local get = require("balance_t").get
            local port = $TEST_NGINX_SERVER_PORT
            assert(zedcup.configure_instance("inst", { pools = { { name = "p", method = "weighted_rr", hosts = {
                { name = "slow", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 },
                { name = "fast", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 } } } } }))
            flags:set("hit slow", 0)
            flags:set("hit fast", 0)
            for _ = 1, 5 do get(port, "/handled?slow=0") end
            for _ = 1, 5 do get(port, "/proxied?slow=0") end
            ngx.say("slow ", flags:get("hit slow"), ", fast ", flags:get("hit fast"))
        }
    }
--- request
GET /t
--- response_body
slow 5, fast 5
