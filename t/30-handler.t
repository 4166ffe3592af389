# zedcup.handler: the handler API, end to end (real nginx, dev-consul, real backends on
# RAND ports). The seed README's example is t/31-readme-example.t.
#
# The preamble below (zedcup initialised against the session's Consul) goes in front of
# each block's http_config, except where a block says `own`.

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
    }

__DATA__

=== TEST 1: hot path: a cache-hit create_handler + request touches no shared dict, JSON or timer (counted by wrapping them)
--- http_config own
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;

    init_by_lua_block {
        require "resty.core"
        -- counters for the hot-path test: installed before zedcup's modules
        -- load, counting only calls made by the coroutine under test
        local counted = {}
        package.loaded.hot_counts = counted
        local function counting(name, fn)
            return function(...)
                if package.loaded.hot_co == coroutine.running() then
                    counted[name] = (counted[name] or 0) + 1
                end
                return fn(...)
            end
        end
        local mt = getmetatable(ngx.shared.zedcup_cache).__index
        for _, m in ipairs({ "get", "get_stale", "set", "safe_set", "add", "safe_add", "replace", "incr",
                             "delete", "lpush", "rpush", "lpop", "rpop", "llen", "ttl", "expire",
                             "flush_all", "flush_expired", "get_keys" }) do
            if mt[m] then mt[m] = counting("shdict." .. m, mt[m]) end
        end
        ngx.timer.at = counting("ngx.timer.at", ngx.timer.at)
        for _, mod in ipairs({ "cjson", "cjson.safe" }) do
            local c = require(mod)
            c.encode = counting(mod .. ".encode", c.encode)
            c.decode = counting(mod .. ".decode", c.decode)
        end
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }

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
            assert(zedcup.configure_instance("inst", { pools = { { hosts = {
                { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1, weight = 2 },
                { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            local function one()
                local h = assert(zedcup.create_handler("inst"))
                local res = assert(h:request({ path = "/" }))
                assert(res:read_body() == "one")
                h:set_keepalive()
            end
            one() -- warm: the worker's plan is built here
            local counts = package.loaded.hot_counts
            package.loaded.hot_co = coroutine.running()
            ngx.shared.zedcup_cache:get("probe") -- proves the counters count
            local probe = counts["shdict.get"]
            for k in pairs(counts) do counts[k] = nil end
            for _ = 1, 50 do one() end
            package.loaded.hot_co = nil
            ngx.say("probe counted: ", probe ~= nil and probe >= 1)
            local names = {}
            for k, n in pairs(counts) do names[#names + 1] = k .. "=" .. n end
            table.sort(names)
            ngx.say("calls on the hot path: [", table.concat(names, " "), "]")
            ngx.say("config() is cached, not copied: ",
                    zedcup.create_handler("inst"):config() == zedcup.create_handler("inst"):config())
        }
    }
--- request
GET /t
--- response_body
probe counted: true
calls on the hot path: []
config() is cached, not copied: true
--- no_error_log
[error]



=== TEST 2: connect(): a raw cosocket, a lua-resty style driver (connect + set_timeout) and a unix socket host
--- http_config
    server {
        listen unix:$TEST_NGINX_SERVROOT/logs/b.sock;
        location / { return 200 "unix"; }
    }

--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            assert(zedcup.configure_instance("inst", { pools = { {
                timeout = 123, read_timeout = 4567,
                hosts = { { host = "unix:$TEST_NGINX_SERVROOT/logs/b.sock" } } } } }))
            local h = assert(zedcup.create_handler("inst"))
            local sock = assert(h:connect())
            sock:send("GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            local data = sock:receive("*a")
            ngx.say("raw: ", data:match("\r\n\r\n(.*)$"))
            h:close()

            local driver = { sock = ngx.socket.tcp(), timeouts = {} }
            function driver:set_timeout(ms)
                self.timeouts[#self.timeouts + 1] = ms
                return self.sock:settimeout(ms)
            end
            function driver:connect(...)
                self.nargs = select("#", ...)
                return self.sock:connect(...)
            end
            h = assert(zedcup.create_handler("inst"))
            local d = assert(h:connect(driver))
            ngx.say("driver: ", d == driver, " args: ", driver.nargs, " timeouts: ", table.concat(driver.timeouts, ","))
            driver.sock:send("GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            ngx.say("driver read: ", driver.sock:receive("*a"):match("\r\n\r\n(.*)$"))
            driver.sock:close()

            h = assert(zedcup.create_handler("inst"))
            local res = assert(h:request({ path = "/" }))
            ngx.say("http over unix: ", res:read_body(), " keepalive: ", h:set_keepalive())
        }
    }
--- request
GET /t
--- response_body
raw: unix
driver: true args: 1 timeouts: 123,4567
driver read: unix
http over unix: unix keepalive: 1
--- no_error_log
[error]



=== TEST 3: ssl: verify defaults to true (a self-signed backend fails), ssl_verify = false accepted, SNI defaults to the request's Host, sni_name overrides it
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1 ssl;
        ssl_certificate "data:-----BEGIN CERTIFICATE-----\nMIIBsjCCAVmgAwIBAgIUKtqOjLtMoOqLpp/3GEToD3sg11kwCgYIKoZIzj0EAwIw\nHjEcMBoGA1UEAwwTYmFja2VuZC56ZWRjdXAudGVzdDAgFw0yNjExMjEwODExNTla\nGA8yMTI2MTAyODA4MTE1OVowHjEcMBoGA1UEAwwTYmFja2VuZC56ZWRjdXAudGVz\ndDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABHOTykyPSgxHqtS69f1anZ0iJ9MW\nJ3Iau9vTB4LkTlwM6rb+d0H6rST+Efp7UdEolwQIM33YuayV35r1EYytqp6jczBx\nMB0GA1UdDgQWBBTwuRw42Fxdpj3WxWSHugarJs1GijAfBgNVHSMEGDAWgBTwuRw4\n2Fxdpj3WxWSHugarJs1GijAPBgNVHRMBAf8EBTADAQH/MB4GA1UdEQQXMBWCE2Jh\nY2tlbmQuemVkY3VwLnRlc3QwCgYIKoZIzj0EAwIDRwAwRAIgLKj/K0LKrJecV6t4\nVZSKgsJNPOBzeJ0Eg+jd8m6ut2sCIG1gUV0gT+ABwPjrUPqcBoCYUNouhi9fxNMP\nt11zmQb1\n-----END CERTIFICATE-----";
        ssl_certificate_key "data:-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgRCGfHj9s1vuHXDOL\nyXdCB7JQF+wd3ogMj5oWGpWBS5ShRANCAARzk8pMj0oMR6rUuvX9Wp2dIifTFidy\nGrvb0weC5E5cDOq2/ndB+q0k/hH6e1HRKJcECDN92Lmsld+a9RGMraqe\n-----END PRIVATE KEY-----";
        location / { return 200 "sni=$ssl_server_name"; }
    }

--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local hosts = { { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } }
            assert(zedcup.configure_instance("verify", { ssl = true, pools = { { hosts = hosts } } }))
            assert(zedcup.configure_instance("noverify", { ssl = { ssl_verify = false }, pools = { { hosts = hosts } } }))
            assert(zedcup.configure_instance("sni", { ssl = { verify = false, sni_name = "backend.zedcup.test" },
                                                      pools = { { hosts = hosts } } }))
            local h = assert(zedcup.create_handler("verify"))
            assert(h:bind("host_connect_error", function(d) ngx.say("verify: ", d.err) end))
            ngx.say(h:request({ path = "/" }))
            for _, name in ipairs({ "noverify", "sni" }) do
                h = assert(zedcup.create_handler(name))
                local res, err = h:request({ path = "/" })
                ngx.say(name, ": ", res and res:read_body() or err)
            end
            h = assert(zedcup.create_handler("noverify"))
            local sock = assert(h:connect())
            sock:send("GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            ngx.say("raw socket over tls: ", sock:receive("*a"):match("\r\n\r\n(.*)$"))
        }
    }
--- request
GET /t
--- more_headers
Host: front.example:8080
--- response_body_like
^verify: .*self.signed certificate.*
nilNo available upstream hosts
noverify: sni=front.example
sni: sni=backend.zedcup.test
raw socket over tls: sni=front.example
$



=== TEST 4: request() streams the client body with get_client_body_reader() (one attempt: a stream cannot be replayed)
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.req.read_body()
                ngx.print(ngx.req.get_method(), " ", ngx.req.get_body_data())
            }
        }
    }

--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            assert(zedcup.configure_instance("inst", { pools = { { hosts = {
                { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            local h = assert(zedcup.create_handler("inst"))
            local reader = assert(h:get_client_body_reader())
            local res = assert(h:request({ method = "POST", path = "/", body = reader,
                                           headers = { ["Content-Length"] = ngx.var.http_content_length } }))
            ngx.say(res.status, " ", res:read_body())
            ngx.say("keepalive: ", h:set_keepalive())
        }
    }
--- request
POST /t
hello upstream
--- response_body
200 POST hello upstream
keepalive: 1
--- no_error_log
[error]
