# healthcheck.type through the health checker: http (also to a host given as
# a name), https, tcp, agent (haproxy's agent-check) and custom (a registered
# function); unhealthy_interval for hosts that are down.
#
# Every block: zedcup with its workers and both blocks' custom checks (the preamble).

--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_shared_dict flags 1m;
    lua_socket_log_errors off;
    init_by_lua_block {
        local zedcup = require "zedcup"
        assert(zedcup.init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                       token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
        -- TEST 1's custom check: fails while the flag custom_sick is set
        zedcup.register_check("flag", function(host, hc)
            if ngx.shared.flags:get("custom_sick") then
                return false, "custom says no for " .. host.name
            end
            return true
        end)
        -- TEST 2's: counts its runs, fails while the flag sick is set
        zedcup.register_check("counted", function()
            local flags = ngx.shared.flags
            flags:incr("checks", 1, 0)
            return not flags:get("sick"), "sick"
        end)
    }
    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }

__DATA__

=== TEST 1: each check kind marks its host down and brings it back; reasons name the kind's failure
--- timeout: 30
--- http_config
    # a throwaway self-signed certificate for CN=localhost: $test_cert, $test_key
    include $TEST_NGINX_REPO/t/lib/localhost_cert.conf;
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1 ssl;
        ssl_certificate data:$test_cert;
        ssl_certificate_key data:$test_key;
        location = /health { return 200 "tls"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location = /health {
            if ($http_host = "localhost:$TEST_NGINX_RAND_PORT_2") {
                return 200 "named";
            }
            return 421;
        }
        location = /agent {
            content_by_lua_block {
                local sock = assert(ngx.req.socket(true))
                sock:send((ngx.shared.flags:get("agent") or "up") .. "\n")
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local state = require "zedcup.state"
            local flags = ngx.shared.flags
            local base = "$TEST_ZEDCUP_PREFIX/state/kinds/p/"
            local function check_of(host)
                return t.retry_until(ngx.now() + 8, 0.02, function()
                    return (state.last_check("kinds", "p", host))
                end) or "no check"
            end
            local function down(host)
                local e = t.retry_until(ngx.now() + 8, 0.02, function() return kv.get(base .. host .. "/down") end)
                return e and e.Value or "not down"
            end
            local function up(host)
                return t.retry_until(ngx.now() + 8, 0.02, function() return kv.get(base .. host .. "/down") == false end)
                       or false
            end

            assert(zedcup.configure({ healthcheck_interval = 0.1 }))
            local hc = function(o)
                o.interval, o.fall, o.rise = 0.1, 1, 1
                return o
            end
            local agent_send = "GET /agent HTTP/1.0\r\n\r\n"
            assert(zedcup.configure_instance("kinds", { pools = { {
                name = "p",
                hosts = {
                    { name = "named", host = "localhost", port = $TEST_NGINX_RAND_PORT_2,
                      healthcheck = hc({ path = "/health" }) },
                    { name = "https", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1,
                      healthcheck = hc({ type = "https", path = "/health", ssl = { verify = false } }) },
                    { name = "http_on_tls", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1,
                      healthcheck = hc({ type = "http", path = "/health" }) },
                    { name = "tcp", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_3,
                      healthcheck = hc({ type = "tcp" }) },
                    { name = "tcp_port", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_3,
                      healthcheck = hc({ type = "tcp", port = $TEST_NGINX_RAND_PORT_2 }) },
                    { name = "agent", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_3,
                      healthcheck = hc({ type = "agent", port = $TEST_NGINX_RAND_PORT_2, send = agent_send }) },
                    { name = "custom", host = "127.0.0.1", port = 1,
                      healthcheck = hc({ type = "custom", custom = "flag" }) },
                    { name = "unregistered", host = "127.0.0.1", port = 1,
                      healthcheck = hc({ type = "custom", custom = "nope" }) },
                },
            } } }))
            for _, h in ipairs({ "named", "https", "tcp_port", "agent", "custom" }) do
                ngx.say(h, ": ", check_of(h))
            end
            ngx.say("http_on_tls: ", check_of("http_on_tls"))
            ngx.say("tcp down: ", down("tcp"))
            ngx.say("unregistered down: ", down("unregistered"))

            flags:set("agent", "down")
            ngx.say("agent down: ", down("agent"))
            flags:set("agent", "75%")
            ngx.say("agent 75%: back up ", up("agent"))
            flags:set("custom_sick", true)
            ngx.say("custom down: ", down("custom"))
            flags:delete("custom_sick")
            ngx.say("custom: back up ", up("custom"))
        }
    }
--- request
GET /t
--- response_body
named: ok
https: ok
tcp_port: ok
agent: ok
custom: ok
http_on_tls: Bad status code: 400
tcp down: health check failed 1 times: could not connect: connection refused
unregistered down: health check failed 1 times: no check registered as nope
agent down: health check failed 1 times: agent: down
agent 75%: back up true
custom down: health check failed 1 times: custom says no for custom
custom: back up true
--- no_error_log
[error]

=== TEST 2: unhealthy_interval: a host that is down is checked at its own pace, an up one at interval
--- timeout: 20
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local flags = ngx.shared.flags
            local key = "$TEST_ZEDCUP_PREFIX/state/u/p/h/down"
            assert(zedcup.configure({ healthcheck_interval = 0.05 }))
            flags:set("sick", true)
            assert(zedcup.configure_instance("u", { pools = { { name = "p", hosts = { {
                name = "h", host = "127.0.0.1", port = 1,
                healthcheck = { type = "custom", custom = "counted", interval = 3, unhealthy_interval = 0.1,
                                fall = 1, rise = 2 },
            } } } } }))
            local gone = t.retry_until(ngx.now() + 8, 0.02, function() return kv.get(key) end)
            ngx.say("down: ", gone and gone.Value)
            -- down: checked every 0.1 s (the 3 s interval would allow one check in 1.5 s)
            local n = flags:get("checks")
            ngx.sleep(1.5)
            ngx.say("checks while down in 1.5 s: ", flags:get("checks") - n >= 5)
            flags:delete("sick")
            ngx.say("back up: ", t.retry_until(ngx.now() + 8, 0.02, function() return kv.get(key) == false end)
                                 or false)
            -- up: back to the 3 s interval
            n = flags:get("checks")
            ngx.sleep(1)
            ngx.say("checks while up in 1 s: ", flags:get("checks") - n <= 1)
        }
    }
--- request
GET /t
--- response_body
down: health check failed 1 times: sick
checks while down in 1.5 s: true
back up: true
checks while up in 1 s: true
--- no_error_log
[error]

=== TEST 3: an agent's NN% and drain set the host's weight on the balancer, cluster-wide through Consul; up restores it
--- timeout: 30
--- http_config
    upstream zedcup_inst {
        server 0.0.0.1;
        balancer_by_lua_block { require("balance_t").balance("ag") }
    }
    server {
        listen 127.0.0.2:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "a"; }
        location = /agent {
            content_by_lua_block {
                local sock = assert(ngx.req.socket(true))
                sock:send((ngx.shared.flags:get("agent") or "up") .. "\n")
            }
        }
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
            local kv = require "zedcup.kv"
            local t = require "blocks_t"
            local B = require "balance_t"
            local flags = ngx.shared.flags
            local port = $TEST_NGINX_SERVER_PORT
            assert(zedcup.configure({ healthcheck_interval = 0.1 }))
            assert(zedcup.configure_instance("ag", { pools = { { name = "p", hosts = {
                { name = "a", host = "127.0.0.2", port = $TEST_NGINX_RAND_PORT_1,
                  healthcheck = { type = "agent", send = "GET /agent HTTP/1.0\r\n\r\n", interval = 0.1 } },
                { name = "b", host = "127.0.0.3", port = $TEST_NGINX_RAND_PORT_1 },
            } } } }))
            local function split(n)
                return B.split(port, "/proxied", n, { "a", "b" })
            end
            local c
            local function until_split(n, a, limit)
                local ok = t.retry_until(ngx.now() + limit, 0.05, function() c = split(n); return c.a == a end)
                return ok or false
            end
            ngx.say("up: ", until_split(20, 10, 8), " a ", c.a, " of 20")
            flags:set("agent", "50%")
            ngx.say("50%: ", until_split(30, 10, 8), " a ", c.a, " of 30")
            ngx.say("in Consul: ", kv.get("$TEST_ZEDCUP_PREFIX/state/ag/p/a/weight").Value)
            flags:set("agent", "drain")
            ngx.say("drain: ", until_split(30, 0, 8), " a ", c.a, " of 30")
            flags:set("agent", "up")
            ngx.say("up again: ", until_split(20, 10, 8), " a ", c.a, " of 20")
            ngx.say("key gone: ", kv.get("$TEST_ZEDCUP_PREFIX/state/ag/p/a/weight"))
        }
    }
--- request
GET /t
--- response_body
up: true a 10 of 20
50%: true a 10 of 30
in Consul: 0.5
drain: true a 0 of 30
up again: true a 10 of 20
key gone: false
--- error_log
agent weight of ag/p/a: 50%
--- no_error_log
[error]
