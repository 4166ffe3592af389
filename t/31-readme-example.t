# The seed README's example, end to end: its http_config and its two locations,
# verbatim but for the ports (the preamble below), on two workers; each block gives
# the backends and the requests (real nginx, dev-consul, real backends on RAND ports).

--- http_config
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;

    init_by_lua_block {
        require "resty.core"

        require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = {
                host = "127.0.0.1",
                port = $TEST_NGINX_CONSUL_PORT,
                token = "$TEST_NGINX_CONSUL_TOKEN",
            },
        })
    }

    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }

--- config
    location /_configure {
        content_by_lua_block {
            local conf = {
                pools = {
                    {
                        name = "primary",
                        timeout = 100,
                        healthcheck = {
                            path = "/_health"
                        },
                        hosts = {
                            { name = "web01", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 },
                            { name = "web02", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 }
                        }
                    },
                    {
                        name = "secondary",
                        hosts = {
                            {
                                name = "dr01", host = "127.0.0.1", weight = 10, port = "$TEST_NGINX_RAND_PORT_3",
                                healthcheck = {
                                    path = "/dr_check",
                                    headers = {
                                        ["Host"] = "www.example.com"
                                    }
                                },
                            }
                        }
                    },
                }
            }

            local ok, err = require("zedcup").configure_instance("test", conf)
            if not ok then error(err) end
        }
    }

    location / {
        content_by_lua_block {
            local handler, err = require("zedcup").create_handler("test")
            assert(handler, err)

            local res, err = handler:request({ path = "/test" })
            assert(res, err)

            ngx.say(res.status)
            ngx.say(res:read_body())

            handler:set_keepalive()

        }
    }
__DATA__

=== TEST 1: the seed README's example, verbatim locations, two workers: configure then request
--- workers: 2
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "web01"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / { return 200 "web02"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / { return 200 "dr01"; }
    }
--- pipelined_requests
GET /_configure
GET /
GET /
--- response_body_like
^200\nweb0[12]\n200\nweb0[12]\n$
--- no_error_log
[error]
[warn]



=== TEST 2: the seed README's example with the primary pool dead: every request fails over to dr01
--- workers: 2
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / { return 200 "dr01"; }
    }
--- pipelined_requests
GET /_configure
GET /
GET /
GET /
--- response_body
200
dr01
200
dr01
200
dr01
--- no_error_log
[error]



