# zedcup.deps: the seam that picks the installed lua-resty-* libraries or
# zedcup's built-ins, and says which once

__DATA__

=== TEST 1: on this machine (no lua-resty-http/consul/mlcache/lock) every dependency is the built-in, chosen on first use and logged once
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            ngx.say("http: ", deps.http == require("zedcup.http"))
            ngx.say("consul: ", deps.consul == require("zedcup.consul"))
            ngx.say("mlcache: ", deps.mlcache == require("zedcup.cache"))
            ngx.say("lock: ", deps.lock == require("zedcup.lock"))
            local names = deps.names()
            ngx.say(names.http, " ", names.consul, " ", names.mlcache, " ", names.lock)
            ngx.say("unknown field: ", deps.redis)
        }
    }
--- request
GET /t
--- response_body
http: true
consul: true
mlcache: true
lock: true
zedcup.http zedcup.consul zedcup.cache zedcup.lock
unknown field: nil
--- grep_error_log
[zedcup] using
--- grep_error_log_out
[zedcup] using
--- error_log
[zedcup] using http=zedcup.http consul=zedcup.consul mlcache=zedcup.cache lock=zedcup.lock
--- no_error_log
[error]

=== TEST 2: an installed library is preferred; init({ builtin = true }) forces the built-ins
--- config
    location = /t {
        content_by_lua_block {
            -- stand-ins for installed libraries, as require finds them
            package.preload["resty.lock"] = function() return { installed = "lock" } end
            package.preload["resty.mlcache"] = function() return { installed = "mlcache" } end
            local deps = require "zedcup.deps"
            local names = deps.init()
            ngx.say("lock: ", names.lock, " ", deps.lock.installed)
            ngx.say("mlcache: ", names.mlcache, " ", deps.mlcache.installed)
            ngx.say("http: ", names.http, " consul: ", names.consul)

            names = deps.init({ builtin = true })
            ngx.say("forced: ", names.lock, " ", names.mlcache, " ", deps.lock == require("zedcup.lock"),
                    " ", deps.mlcache == require("zedcup.cache"))
            ngx.say("names() agrees: ", deps.names().lock)

            names = deps.init()
            ngx.say("back: ", names.lock, " ", deps.lock.installed)
        }
    }
--- request
GET /t
--- response_body
lock: resty.lock lock
mlcache: resty.mlcache mlcache
http: zedcup.http consul: zedcup.consul
forced: zedcup.lock zedcup.cache true true
names() agrees: zedcup.lock
back: resty.lock lock
--- grep_error_log
[zedcup] using
--- grep_error_log_out
[zedcup] using
[zedcup] using
[zedcup] using
--- error_log
[zedcup] using http=zedcup.http consul=zedcup.consul mlcache=resty.mlcache lock=resty.lock
[zedcup] using http=zedcup.http consul=zedcup.consul mlcache=zedcup.cache lock=zedcup.lock
--- no_error_log
[error]

=== TEST 3: an installed library that fails to load is logged and the built-in used
--- config
    location = /t {
        content_by_lua_block {
            package.preload["resty.http"] = function() error("broken install") end
            local deps = require "zedcup.deps"
            ngx.say(deps.names().http, " ", deps.http == require("zedcup.http"))
        }
    }
--- request
GET /t
--- response_body
zedcup.http true
--- error_log
resty.http is installed but failed to load, using the built-in
broken install

=== TEST 4: the built-ins reached through the seam work with the call forms of the resty.* libraries
--- http_config
    lua_shared_dict cache 1m;
    lua_shared_dict locks 1m;
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            local lock = assert(deps.lock:new("locks"))
            ngx.say("lock: ", lock:lock("k"), " ", lock:unlock())
            local cache = assert(deps.mlcache.new("c", "cache", { shm_locks = "locks" }))
            ngx.say("mlcache: ", cache:get("k", nil, function() return "v" end))
            local consul = deps.consul:new({ port = $TEST_NGINX_CONSUL_PORT, host = "$TEST_NGINX_CONSUL_HOST",
                                             token = "$TEST_NGINX_CONSUL_TOKEN" })
            ngx.say("consul: ", consul:put_key("$TEST_ZEDCUP_PREFIX/k", "v").body,
                    " ", consul:get_key("$TEST_ZEDCUP_PREFIX/k").body[1].Value)
            local httpc = deps.http.new()
            local headers = {}
            if #"$TEST_NGINX_CONSUL_TOKEN" > 0 then headers["X-Consul-Token"] = "$TEST_NGINX_CONSUL_TOKEN" end
            local res = assert(httpc:request_uri("http://$TEST_NGINX_CONSUL_HOST:$TEST_NGINX_CONSUL_PORT/v1/kv/"
                                                 .. "$TEST_ZEDCUP_PREFIX/k?raw", { headers = headers }))
            ngx.say("http: ", res.status, " ", res.body)
        }
    }
--- request
GET /t
--- response_body
lock: 0 1
mlcache: vnil3
consul: true v
http: 200 v
--- no_error_log
[error]

=== TEST 5: init() raises on bad options, naming them
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            ngx.say(pcall(deps.init, "builtin"))
            ngx.say(pcall(deps.init, { builtin = "yes" }))
        }
    }
--- request
GET /t
--- response_body
falseopts must be a table (got string)
falseopts.builtin must be a boolean (got string)
--- no_error_log
[error]
