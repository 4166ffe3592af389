# zedcup.set_host_state / set_host_weight: runtime host operations from Lua,
# cluster-wide through Consul, with the keys zedctl host down|up|weight writes.
#
# Every block: zedcup initialised (the preamble); TEST 2 also runs its workers.

--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    init_by_lua_block {
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                       token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }

__DATA__

=== TEST 1: the keys written, by name or 1-based index; refusals name what is wrong and write nothing
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local p = "$TEST_ZEDCUP_PREFIX"
            assert(zedcup.configure_instance("web", { pools = {
                { name = "main", hosts = { { name = "a", host = "127.0.0.1", port = 81 },
                                           { name = "b", host = "127.0.0.1", port = 82, weight = 2 } } },
            } }))
            local wkey = p .. "/instances/web/pools/1/hosts/2/weight"
            local hold = p .. "/state/web/main/a/admin_down"

            ngx.say("weight b 5: ", zedcup.set_host_weight("web", "main", "b", 5), " -> ", kv.get(wkey).Value)
            ngx.say("weight by index 1/2: ", zedcup.set_host_weight("web", 1, 2, 7), " -> ", kv.get(wkey).Value)
            ngx.say("weight a (no key yet): ", zedcup.set_host_weight("web", "main", "a", 3), " -> ",
                    kv.get(p .. "/instances/web/pools/1/hosts/1/weight").Value)

            ngx.say("down: ", zedcup.set_host_state("web", "main", "a", "down", "maintenance window"))
            local e = kv.get(hold)
            ngx.say("  admin_down = ", e.Value, ", flags about now: ", math.abs(e.Flags - ngx.time()) <= 5)
            local ev = require("blocks_t").retry_until(ngx.now() + 5, 0.05, function()
                for _, e in ipairs(kv.get_tree(p .. "/events/web/") or {}) do
                    local j = require("cjson").decode(e.Value)
                    if j.event == "admin_host_down" then return j end
                end
            end)
            ngx.say("  event: ", ev and (ev.event .. " " .. ev.pool .. "/" .. ev.host .. " " .. ev.reason))
            ngx.say("up: ", zedcup.set_host_state("web", "main", "a", "up"), " -> ", kv.get(hold))
            ngx.say("up again: ", zedcup.set_host_state("web", "main", "a", "up"))

            ngx.say(zedcup.set_host_weight("nope", "main", "a", 2))
            ngx.say(zedcup.set_host_weight("web", "other", "a", 2))
            ngx.say(zedcup.set_host_weight("web", "main", 3, 2))
            ngx.say(zedcup.set_host_weight("web", "main", "a", 0))
            ngx.say(pcall(zedcup.set_host_weight, "web", "main", "a", "2"))
            ngx.say(pcall(zedcup.set_host_state, "web", "main", "a", "sideways"))

            -- a large write under way (_pending): refused, nothing written
            assert(kv.put(p .. "/instances/web/_pending", "zedctl test"))
            local ok, err = zedcup.set_host_weight("web", "main", "b", 9)
            ngx.say(ok, " ", err, " -> ", kv.get(wkey).Value)
            ok, err = zedcup.set_host_state("web", "main", "a", "down")
            ngx.say(ok, " ", err:match("refused") ~= nil, " -> ", kv.get(hold))
        }
    }
--- request
GET /t
--- response_body_like
^weight b 5: true -> 5
weight by index 1/2: true -> 7
weight a \(no key yet\): true -> 3
down: true
  admin_down = maintenance window, flags about now: true
  event: admin_host_down main/a maintenance window
up: true -> false
up again: true
nilinstance nope not found
nilpool other not found in instance web
nilhost 3 not found in pool main
nilweight: must be between 1 and 1000000 \(got 0\)
false.*weight must be an integer \(got 2\)
false.*state must be "down" or "up" \(got sideways\)
nil writing zt/\w+/instances/web/ refused: another write is under way \(zt/\w+/instances/web/_pending\) -> 7
nil true -> false
$
--- no_error_log
[error]

=== TEST 2: a weight set from Lua reaches the balancer: requests split by the new weights
--- timeout: 20
--- http_config
    lua_socket_log_errors off;
    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }
    upstream zedcup_inst {
        server 0.0.0.1;
        balancer_by_lua_block { require("balance_t").balance("web", nil, ngx.WARN) }
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
            local t = require "blocks_t"
            local B = require "balance_t"
            local port = $TEST_NGINX_SERVER_PORT
            assert(zedcup.configure_instance("web", { pools = { { name = "p", hosts = {
                { name = "a", host = "127.0.0.2", port = $TEST_NGINX_RAND_PORT_1 },
                { name = "b", host = "127.0.0.3", port = $TEST_NGINX_RAND_PORT_1 },
            } } } }))
            local function split(n)
                return B.split(port, "/proxied", n, { "a", "b" })
            end
            local c
            t.retry_until(ngx.now() + 8, 0.05, function() c = split(20); return c.a == 10 end)
            ngx.say("before: a ", c.a, ", b ", c.b)
            assert(zedcup.set_host_weight("web", "p", "a", 3))
            local ok = t.retry_until(ngx.now() + 8, 0.05, function() c = split(40); return c.a == 30 end)
            ngx.say("after weight 3: a ", c.a, ", b ", c.b, " (", ok, ")")
            assert(zedcup.set_host_state("web", "p", "a", "down", "draining for a deploy"))
            ok = t.retry_until(ngx.now() + 8, 0.05, function() c = split(20); return c.b == 20 end)
            ngx.say("a held down: a ", c.a, ", b ", c.b, " (", ok, ")")
            assert(zedcup.set_host_state("web", "p", "a", "up"))
            ok = t.retry_until(ngx.now() + 8, 0.05, function() c = split(40); return c.a == 30 end)
            ngx.say("a up again: a ", c.a, ", b ", c.b, " (", ok, ")")
        }
    }
--- request
GET /t
--- response_body
before: a 10, b 10
after weight 3: a 30, b 10 (true)
a held down: a 0, b 20 (true)
a up again: a 30, b 10 (true)
--- no_error_log
[error]
