# zedcup.balance(): the same host selection and failure accounting in
# balancer_by_lua, with nginx's own proxy doing the request.

__DATA__

=== TEST 1: balance() picks hosts like handlers do and retries the next host on connect errors and bad statuses
--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;

    init_by_lua_block {
        require "resty.core"
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
        require("zedcup").bind("host_request_error", function(instance, d)
            ngx.log(ngx.WARN, "REQUEST_ERROR ", instance, " ", d.host.name, ": ", d.err)
        end)
    }

    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "one"; }
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / { return 500 "bad"; }
    }

    upstream zedcup_inst {
        server 0.0.0.1; # a placeholder: balance() sets every peer
        balancer_by_lua_block {
            local ok, err = require("zedcup").balance(ngx.var.zedcup_instance)
            if not ok then
                ngx.log(ngx.ERR, "balance: ", err)
                return ngx.exit(500)
            end
        }
    }
--- config
    location = /setup {
        content_by_lua_block {
            local function host(name, port) return { name = name, host = "127.0.0.1", port = port } end
            assert(require("zedcup").configure_instance("inst", { pools = {
                { name = "off", up = false, hosts = { host("never", $TEST_NGINX_RAND_PORT_3) } },
                { name = "p", max_errors = 100, hosts = {
                    host("dead", $TEST_NGINX_RAND_PORT_2), host("b500", $TEST_NGINX_RAND_PORT_3),
                    host("ok", $TEST_NGINX_RAND_PORT_1) } } } }))
        }
    }
    location /proxied {
        set $zedcup_instance inst;
        proxy_next_upstream error timeout http_500;
        proxy_pass http://zedcup_inst/;
    }
    location /missing {
        set $zedcup_instance nope;
        proxy_pass http://zedcup_inst/;
    }
--- pipelined_requests
GET /setup
GET /proxied
GET /proxied
GET /missing
--- error_code
200
200
200
500
--- response_body_like
^oneone<html>.*500 Internal Server Error
--- error_log
balance: Instance not found
REQUEST_ERROR inst dead: upstream failed 502
REQUEST_ERROR inst b500: upstream failed 500
