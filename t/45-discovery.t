# zedcup.discovery: hosts from Consul's service catalog (/v1/health/service),
# against the session's Consul (dev-consul, or a real one with --consul-url).

__DATA__

=== TEST 1: instances become hosts: service address else node address, port, passing or warning weight, critical down; tag, passing_only and blocking
--- http_config
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    init_by_lua_block {
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                       token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }
--- config
    location = /t {
        content_by_lua_block {
            local discovery = require "zedcup.discovery"
            local c = require("zedcup.kv").client()
            local svc = ("$TEST_ZEDCUP_PREFIX"):gsub("/", "-")
            local function put(path, body)
                local res = assert(c:put(path, body))
                assert(res.status == 200, path .. ": " .. res.status .. " " .. tostring(res.body))
            end
            local function show(hosts)
                for _, h in ipairs(hosts) do
                    ngx.say("  ", h.name:sub(#svc + 2), " ", h.host, ":", h.port, " w=", h.weight,
                            " up=", h.up, " ", h.status, " ", h.source == "consul:" .. svc)
                end
            end
            put("/agent/service/register", { ID = svc .. "-a", Name = svc, Address = "127.0.0.2", Port = 8001,
                 Tags = { "blue", "v1" }, Weights = { Passing = 5, Warning = 2 }, Check = { TTL = "60s" } })
            put("/agent/service/register", { ID = svc .. "-b", Name = svc, Port = 8002, Tags = { "green" },
                 Check = { TTL = "60s", Status = "passing" } })
            put("/agent/service/register", { ID = svc .. "-c", Name = svc, Address = "127.0.0.4", Port = 8003,
                 Weights = { Passing = 3, Warning = 0 }, Check = { TTL = "60s" } })
            put("/agent/check/warn/service:" .. svc .. "-a")
            put("/agent/check/warn/service:" .. svc .. "-c")

            local hosts, index = assert(discovery.fetch({ name = svc }))
            ngx.say("all (index > 0: ", index > 0, "):")
            show(hosts)
            ngx.say("tag blue:")
            show(assert(discovery.fetch({ name = svc, tag = "blue" })))
            ngx.say("tags blue+v1, green:")
            show(assert(discovery.fetch({ name = svc, tag = { "blue", "v1" } })))
            show(assert(discovery.fetch({ name = svc, tag = { "green" } })))
            ngx.say("passing_only:")
            show(assert(discovery.fetch({ name = svc, passing_only = true })))
            ngx.say("node_meta nowhere: ", #assert(discovery.fetch({ name = svc, node_meta = { rack = "r9" } })))

            -- a blocking fetch wakes when a check changes
            local th = ngx.thread.spawn(discovery.fetch, { name = svc }, index, 10)
            ngx.sleep(0.2)
            put("/agent/check/pass/service:" .. svc .. "-a")
            local ok, after, index2 = ngx.thread.wait(th)
            ngx.say("woken: ", ok, " ", index2 > index, " a now w=", after[1].weight, " ", after[1].status)

            for _, id in ipairs({ "a", "b", "c" }) do put("/agent/service/deregister/" .. svc .. "-" .. id) end
            ngx.say("gone: ", #assert(discovery.fetch({ name = svc })))
        }
    }
--- request
GET /t
--- response_body_like
^all \(index > 0: true\):
  a 127\.0\.0\.2:8001 w=2 up=true warning true
  b 127\.0\.0\.1:8002 w=1 up=true passing true
  c 127\.0\.0\.4:8003 w=1 up=false warning true
tag blue:
  a 127\.0\.0\.2:8001 w=2 up=true warning true
tags blue\+v1, green:
  a 127\.0\.0\.2:8001 w=2 up=true warning true
  b 127\.0\.0\.1:8002 w=1 up=true passing true
passing_only:
  b 127\.0\.0\.1:8002 w=1 up=true passing true
node_meta nowhere: 0
woken: true true a now w=5 passing
gone: 0
$
--- no_error_log
[error]

=== TEST 2: a tracker keeps the last hosts of a service that empties for keep_for seconds (logged once), and as long as fetches fail
--- config
    location = /t {
        content_by_lua_block {
            local discovery = require "zedcup.discovery"
            local t = discovery.tracker(10, "service web")
            local two = { { name = "a" }, { name = "b" } }
            local function show(label, hosts, changed)
                local names = {}
                for _, h in ipairs(hosts) do names[#names + 1] = h.name end
                ngx.say(label, ": ", table.concat(names, ","), " changed=", changed)
            end
            show("first", t:update(two, 100))
            show("empty", t:update({}, 101))
            show("still empty", t:update({}, 105))
            show("fetch failed", t:update(nil, 200))
            show("back", t:update({ { name = "c" } }, 106))
            show("empty again", t:update({}, 107))
            show("after keep_for", t:update({}, 117))
            show("fetch failed", t:update(nil, 300))
        }
    }
--- request
GET /t
--- response_body
first: a,b changed=true
empty: a,b changed=false
still empty: a,b changed=false
fetch failed: a,b changed=false
back: c changed=true
empty again: c changed=false
after keep_for:  changed=true
fetch failed:  changed=false
--- grep_error_log: has no instances
--- grep_error_log_out
has no instances
has no instances
--- error_log
service web still empty after 10 s: dropping its hosts

=== TEST 3: a pool naming a Consul service, two workers: registered instances take traffic, a critical one stops, new ones join, a vanished service keeps its hosts for keep_for
--- workers: 2
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
        balancer_by_lua_block {
            local zedcup = require "zedcup"
            local ok, err = zedcup.balance("disc")
            if not ok then
                return ngx.exit(zedcup.NO_PEER)
            end
        }
    }
    server {
        listen 127.0.0.2:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "a"; }
    }
    server {
        listen 127.0.0.3:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "b"; }
    }
    server {
        listen 127.0.0.4:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "c"; }
    }
--- config
    location /proxied {
        proxy_pass http://zedcup_inst/;
        header_filter_by_lua_block { ngx.header["X-Worker"] = ngx.worker.id() }
        log_by_lua_block { require("zedcup").log() }
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local t = require "blocks_t"
            local get = require("balance_t").get
            local c = require("zedcup.kv").client()
            local port = $TEST_NGINX_SERVER_PORT
            local svc = ("$TEST_ZEDCUP_PREFIX"):gsub("/", "-")
            local function put(path, body)
                local res = assert(c:put(path, body))
                assert(res.status == 200, path .. ": " .. res.status .. " " .. tostring(res.body))
            end
            local function register(id, addr)
                put("/agent/service/register", { ID = svc .. "-" .. id, Name = svc, Address = addr,
                     Port = $TEST_NGINX_RAND_PORT_1, Check = { TTL = "60s", Status = "passing" } })
            end
            -- the answers of n requests: { [body] = { [worker] = count } }
            local function answers(n)
                local seen = {}
                for _ = 1, n do
                    local status, body, w = get(port, "/proxied")
                    local key = status == 200 and body or tostring(status)
                    seen[key] = seen[key] or {}
                    seen[key][w or -1] = true
                end
                return seen
            end
            local function wait_for(what, limit, pred)
                local seen
                local ok = t.retry_until(ngx.now() + limit, 0.05, function()
                    seen = answers(20)
                    return pred(seen)
                end)
                local keys = {}
                for k in pairs(seen) do keys[#keys + 1] = k end
                table.sort(keys)
                ngx.say(what, ": ", ok and "yes" or "NO", " (", table.concat(keys, ","), ")")
            end
            local function both(s, k) return s[k] and s[k][0] and s[k][1] end

            register("a", "127.0.0.2")
            register("b", "127.0.0.3")
            assert(zedcup.configure_instance("disc", { pools = {
                { name = "p", service = { name = svc, keep_for = 2 } },
            } }))
            wait_for("a and b answer on both workers", 10, function(s)
                return both(s, "a") and both(s, "b") and not s.c and not s["502"]
            end)

            put("/agent/check/fail/service:" .. svc .. "-a")
            wait_for("a critical: only b", 10, function(s) return both(s, "b") and not s.a and not s["502"] end)

            register("c", "127.0.0.4")
            put("/agent/service/deregister/" .. svc .. "-b")
            wait_for("b gone, c joined", 10, function(s) return both(s, "c") and not s.b and not s["502"] end)

            put("/agent/service/deregister/" .. svc .. "-a")
            put("/agent/service/deregister/" .. svc .. "-c")
            ngx.update_time()
            local gone_at = ngx.now()
            local seen = answers(10)
            ngx.say("right after the service vanished, c still answers: ", seen.c ~= nil and seen["502"] == nil)
            wait_for("after keep_for: no host left (502)", 10, function(s) return s["502"] and not s.c end)
            ngx.update_time()
            ngx.say("not before keep_for: ", ngx.now() - gone_at >= 2)
        }
    }
--- request
GET /t
--- response_body
a and b answer on both workers: yes (a,b)
a critical: only b: yes (b)
b gone, c joined: yes (c)
right after the service vanished, c still answers: true
after keep_for: no host left (502): yes (502)
not before keep_for: true
--- error_log re
has no instances; keeping its last [12] hosts for 2 s
still empty after 2 s: dropping its hosts
