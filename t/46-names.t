# Hosts given as names, end to end (balance() and the handler path): a pool host "svc.test" resolved through
# zedcup.resolver against a DNS server on loopback whose A record the block
# changes; two workers; requests counted per backend address.
#
# Every block (the preamble below): zedcup with that resolver, instance "inst" in the
# README's upstream block, backends "old" (127.0.0.2) and "new" (127.0.0.3), and /t,
# which follows the change through the block's /proxied (balance() or a handler).

--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;

    init_by_lua_block {
        local f = assert(io.open("$TEST_NGINX_DNS_DIR/svc.test", "w"))
        f:write("A 127.0.0.2\nTTL 1\n"); f:close()
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
            resolver = { nameservers = { { "127.0.0.1", $TEST_NGINX_DNS_PORT } } },
        }))
    }
    init_worker_by_lua_block {
        require("zedcup").run_workers()
        require("zedcup.resolver").peers("svc.test")  -- known before the first request
    }

    upstream zedcup_inst {
        server 0.0.0.1;
        balancer_by_lua_block { require("balance_t").balance("inst", nil, ngx.WARN) }
    }

    server {
        listen 127.0.0.2:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "old"; }
    }
    server {
        listen 127.0.0.3:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "new"; }
    }
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local get = require("balance_t").get
            local port = $TEST_NGINX_SERVER_PORT
            assert(zedcup.configure_instance("inst", { pools = {
                { name = "p", hosts = { { name = "svc", host = "svc.test", port = $TEST_NGINX_RAND_PORT_1 } } },
            } }))
            -- both workers answer from the old address first
            local seen = {}
            local deadline = ngx.now() + 10
            while not (seen[0] and seen[1]) and ngx.now() < deadline do
                local status, body, w = get(port, "/proxied")
                if status == 200 and body == "old" and w then seen[w] = true end
                ngx.sleep(0.02)
            end
            ngx.say("old address from both workers: ", seen[0] and seen[1] or false)

            local dir = "$TEST_NGINX_DNS_DIR"
            local f = assert(io.open(dir .. "/svc.test.tmp", "w"))
            f:write("A 127.0.0.3\nTTL 1\n"); f:close()
            assert(os.rename(dir .. "/svc.test.tmp", dir .. "/svc.test"))
            ngx.update_time()
            local changed = ngx.now()
            local last_old, new_from, other = nil, {}, 0
            while ngx.now() - changed < 3.5 do
                local status, body, w = get(port, "/proxied")
                ngx.update_time()
                if body == "old" then
                    last_old = ngx.now()
                elseif body == "new" and w then
                    new_from[w] = true
                else
                    other = other + 1
                end
                ngx.sleep(0.01)
            end
            ngx.say("old answers stop within ttl + 1 s: ", (last_old or changed) - changed <= 2)
            ngx.say("new address from both workers: ", new_from[0] and new_from[1] or false)
            ngx.say("other answers: ", other)
        }
    }

__DATA__

=== TEST 1: balance(): two workers follow an A record that changes, within its TTL plus 1 s
--- workers: 2
--- timeout: 20
--- config
    location /proxied {
        proxy_pass http://zedcup_inst/;
        header_filter_by_lua_block { ngx.header["X-Worker"] = ngx.worker.id() }
        log_by_lua_block { require("zedcup").log() }
    }
--- request
GET /t
--- response_body
old address from both workers: true
old answers stop within ttl + 1 s: true
new address from both workers: true
other answers: 0
--- error_log
svc.test -> 127.0.0.3
--- no_error_log
[error]

=== TEST 2: the handler path: two workers follow an A record that changes, within its TTL plus 1 s
--- workers: 2
--- timeout: 20
--- config
    location /proxied {
        content_by_lua_block {
            local handler = assert(require("zedcup").create_handler("inst"))
            local res, err = handler:request({ path = "/" })
            ngx.header["X-Worker"] = ngx.worker.id()
            if not res then
                ngx.status = 502
                return ngx.print(err)
            end
            local body = res:read_body()
            handler:set_keepalive()
            ngx.print(body)
        }
    }
--- request
GET /t
--- response_body
old address from both workers: true
old answers stop within ttl + 1 s: true
new address from both workers: true
other answers: 0
--- error_log
svc.test -> 127.0.0.3
--- no_error_log
[error]
