# zedcup.healthcheck: active checks with rise/fall, HTTPS, the effective healthcheck of a host,
# and the revival of hosts without one. Real nginx, dev-consul and backends (extra servers
# whose /health answer a location flips through a shared dict).
#
# Every block sets healthcheck_interval and host_revive_interval to 0.1s with zedcup.configure();
# the running timers pick the new intervals up at once (timer recheck).

# Every block but TEST 3: zedcup with its workers against the session's Consul (the
# preamble below); TEST 1 names its node and logs host events, TEST 7 reaches Consul
# through a proxy (--- vars).

--- vars
# more options of zedcup.init()
TEST_ZEDCUP_INIT_EXTRA =
# Lua run in init_by_lua after zedcup.init()
TEST_ZEDCUP_AFTER_INIT =
# where zedcup finds Consul (TEST 7: through a proxy that can hang)
TEST_ZEDCUP_CONSUL_AT = host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT
--- http_config
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_shared_dict flags 1m;
    init_by_lua_block {
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX", $TEST_ZEDCUP_INIT_EXTRA
            consul = { $TEST_ZEDCUP_CONSUL_AT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
        $TEST_ZEDCUP_AFTER_INIT
    }
    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }

__DATA__

=== TEST 1: fall failures mark a host down, rise passes bring it back; each transition fires once
--- timeout: 20
--- vars
TEST_ZEDCUP_INIT_EXTRA = node_name = "checker",
TEST_ZEDCUP_AFTER_INIT = require("zedcup_t").trace_host_events()
--- http_config
    lua_socket_log_errors off;
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location = /health {
            content_by_lua_block {
                local flags = ngx.shared.flags
                if flags:get("sick") then
                    flags:incr("sick_hits", 1, 0)
                    return ngx.exit(503)
                end
                flags:incr("ok_hits", 1, 0)
                ngx.say("ok")
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local flags = ngx.shared.flags
            local base = "$TEST_ZEDCUP_PREFIX/state/app/primary/web01/"
            local function wait_for(what, pred)
                local v = t.retry_until(ngx.now() + 8, 0.02, pred)
                if v then return v end
                ngx.say("timed out waiting for ", what)
                return ngx.exit(200)
            end

            assert(zedcup.configure({ healthcheck_interval = 0.1, host_revive_interval = 0.1 }))
            assert(zedcup.configure_instance("app", { pools = { {
                name = "primary",
                hosts = { {
                    name = "web01", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1,
                    healthcheck = { path = "/health", interval = 0.1, fall = 2, rise = 3 },
                } },
            } } }))

            -- check results stay in the checker node's shared dict (state.last_check)
            local state = require "zedcup.state"
            local function last_check() return state.last_check("app", "primary", "web01") end
            wait_for("a check", last_check)
            local what, at = last_check()
            ngx.say("first check: ", what, ", at about now: ", math.abs(at - ngx.time()) <= 2)
            ngx.say("not in Consul: ", kv.get(base .. "check"))

            flags:set("sick", true)
            local down = wait_for("down", function() return kv.get(base .. "down") end)
            ngx.say("down: ", down.Value)
            ngx.say("sick checks before: ", flags:get("sick_hits") >= 2)
            ngx.say("last check: ", (last_check()))

            flags:set("ok_hits", 0)
            flags:delete("sick")
            wait_for("up", function() return kv.get(base .. "down") == false end)
            -- not before rise (3) passing checks
            ngx.say("passing checks before up: ", flags:get("ok_hits") >= 3)
            ngx.say("last check: ", (last_check()))
            -- the checker counts a transition once Consul answered its write, a
            -- moment after the key changed there
            local hc = require "zedcup.healthcheck"
            t.retry_until(ngx.now() + 5, 0.02, function() return hc.stats().marked_up >= 1 end)
            local s = hc.stats()
            ngx.say("marked down: ", s.marked_down, ", marked up: ", s.marked_up)
        }
    }
--- request
GET /t
--- response_body
first check: ok, at about now: true
not in Consul: false
down: health check failed 2 times: Bad status code: 503
sick checks before: true
last check: Bad status code: 503
passing checks before up: true
last check: ok
marked down: 1, marked up: 1
--- grep_error_log re
EVENT host_\w+ [\w/]+
--- grep_error_log_out
EVENT host_down app/primary/web01
EVENT host_up app/primary/web01
--- no_error_log
[error]



=== TEST 2: HTTPS checks: the healthcheck's ssl (or the instance's) applies, and certificates are verified unless told not to
--- timeout: 20
--- http_config
    lua_socket_log_errors off;
    # a throwaway self-signed certificate for CN=localhost: $test_cert, $test_key
    include $TEST_NGINX_REPO/t/lib/localhost_cert.conf;
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1 ssl;
        ssl_certificate data:$test_cert;
        ssl_certificate_key data:$test_key;
        location = /health { return 200 "tls $ssl_server_name"; }
        location = /sni {
            if ($ssl_server_name = "checks.example") {
                return 200 "sni ok";
            }
            return 421;
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local state = require "zedcup.state"
            local function check_of(host)
                return t.retry_until(ngx.now() + 8, 0.02, function()
                    return (state.last_check("tls", "p", host))
                end) or "no check"
            end

            assert(zedcup.configure({ healthcheck_interval = 0.1 }))
            local port = $TEST_NGINX_RAND_PORT_1
            assert(zedcup.configure_instance("tls", {
                ssl = { verify = false },
                pools = { {
                    name = "p",
                    healthcheck = { path = "/health", interval = 0.1, fall = 1 },
                    hosts = {
                        -- the instance's ssl
                        { name = "inherit", host = "127.0.0.1", port = port },
                        -- the healthcheck's own ssl: verify by default, the self-signed cert fails
                        { name = "verify", host = "127.0.0.1", port = port,
                          healthcheck = { path = "/health", interval = 0.1, fall = 1, ssl = true } },
                        -- no TLS at all against a TLS port
                        { name = "plain", host = "127.0.0.1", port = port,
                          healthcheck = { path = "/health", interval = 0.1, fall = 1, ssl = false } },
                        -- SNI: the ssl's sni_name, else the Host header
                        { name = "sni", host = "127.0.0.1", port = port,
                          healthcheck = { path = "/sni", interval = 0.1, fall = 1,
                                          ssl = { verify = false, sni_name = "checks.example" } } },
                        { name = "sni_host", host = "127.0.0.1", port = port,
                          healthcheck = { path = "/sni", interval = 0.1, fall = 1,
                                          headers = { Host = "checks.example:443" } } },
                        { name = "no_sni", host = "127.0.0.1", port = port,
                          healthcheck = { path = "/sni", interval = 0.1, fall = 1 } },
                    },
                } },
            }))
            ngx.say("inherit: ", check_of("inherit"))
            local v = check_of("verify")
            ngx.say("verify: ", v:find("could not connect", 1, true) ~= nil
                                and v:find("certificate", 1, true) ~= nil, " (", v, ")")
            ngx.say("plain: ", check_of("plain"))
            ngx.say("sni: ", check_of("sni"))
            ngx.say("sni from Host: ", check_of("sni_host"))
            ngx.say("no sni: ", check_of("no_sni"))
        }
    }
--- request
GET /t
--- response_body_like
^inherit: ok
verify: true \(.*\)
plain: Bad status code: 400
sni: ok
sni from Host: ok
no sni: Bad status code: 421
$
--- no_error_log
[error]



=== TEST 3: the effective healthcheck: host beats pool beats instance, true means the defaults, status codes default to the pool's
--- http_config own
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    init_by_lua_block {
        assert(require("zedcup").init({ prefix = "$TEST_ZEDCUP_PREFIX" }))
    }
--- config
    location = /t {
        content_by_lua_block {
            local schema = require "zedcup.schema"
            local hc = require "zedcup.healthcheck"
            local conf = schema.effective("instance", assert(schema.check("instance", {
                healthcheck = { path = "/inst", interval = 5 },
                pools = {
                    { name = "a", status_codes = { "500" }, healthcheck = true, hosts = {
                        { host = "h1", port = 1 },
                        { host = "h2", port = 1, healthcheck = { path = "/host", rise = 5,
                                                                 headers = { Host = "x.test" } } },
                        { host = "h3", port = 1, healthcheck = false },
                    } },
                    { name = "b", hosts = { { host = "h4", port = 1 } } },
                },
            })))
            local function show(h)
                if not h then return "none" end
                local hdrs = {}
                for k, v in pairs(h.headers) do hdrs[#hdrs + 1] = k .. "=" .. v end
                table.sort(hdrs)
                return table.concat({ h.method, h.path, h.interval, h.rise, h.fall,
                                      table.concat(h.status_codes, ","), table.concat(hdrs, ";") }, " ")
            end
            local a, b = conf.pools[1], conf.pools[2]
            ngx.say("pool true:  ", show(hc.effective(conf, a, a.hosts[1])))
            ngx.say("host:       ", show(hc.effective(conf, a, a.hosts[2])))
            ngx.say("host false: ", show(hc.effective(conf, a, a.hosts[3])))
            ngx.say("instance:   ", show(hc.effective(conf, b, b.hosts[1])))
            conf.healthcheck = nil
            ngx.say("nothing:    ", show(hc.effective(conf, b, b.hosts[1])))
            local set = require("zedcup.select").status_set
            ngx.say(set({ "5xx" })[503] == true, set({ "50x" })[510] == true,
                    set({ "404" })[404] == true, set({ "4xx", "500" })[200] == true)
        }
    }
--- request
GET /t
--- response_body
pool true:  GET / 60 2 3 500 User-Agent=zedcup/0.1.0 HTTP Check (lua)
host:       GET /host 60 5 3 500 Host=x.test;User-Agent=zedcup/0.1.0 HTTP Check (lua)
host false: none
instance:   GET /inst 5 2 3 5xx,4xx User-Agent=zedcup/0.1.0 HTTP Check (lua)
nothing:    none
truefalsetruefalse
--- no_error_log
[error]



=== TEST 4: a check sends the configured method, path and headers, with zedcup's User-Agent by default
--- timeout: 20
--- http_config
    lua_shared_dict seen 1m;
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.shared.seen:set("req", table.concat({ ngx.req.get_method(), ngx.var.request_uri,
                    ngx.var.http_host, ngx.var.http_user_agent, ngx.var.http_x_check or "-" }, " | "))
                -- pool status_codes are { "500" }: a 404 is a pass
                ngx.exit(404)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            assert(zedcup.configure({ healthcheck_interval = 0.1 }))
            assert(zedcup.configure_instance("hdr", {
                healthcheck = { method = "HEAD", path = "/status?full=1", interval = 0.1,
                                headers = { Host = "www.example.com", ["X-Check"] = "yes" } },
                pools = { { name = "p", status_codes = { "500" },
                            hosts = { { name = "h", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } },
            }))
            local state = require "zedcup.state"
            t.poll(8, 0.02, function() return state.last_check("hdr", "p", "h") end)
            ngx.say(ngx.shared.seen:get("req"))
            ngx.say("check: ", (state.last_check("hdr", "p", "h")))
        }
    }
--- request
GET /t
--- response_body
HEAD | /status?full=1 | www.example.com | zedcup/0.1.0 HTTP Check (lua) | yes
check: ok
--- no_error_log
[error]



=== TEST 5: revive: a down host without a healthcheck comes back after error_timeout; one with a failing healthcheck stays down
--- timeout: 20
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location = /health {
            content_by_lua_block {
                if ngx.shared.flags:get("sick") then return ngx.exit(503) end
                ngx.say("ok")
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
            local port = $TEST_NGINX_RAND_PORT_1
            local base = "$TEST_ZEDCUP_PREFIX/state/rev/p/"
            ngx.shared.flags:set("sick", true)
            assert(zedcup.configure({ healthcheck_interval = 0.1, host_revive_interval = 0.1 }))
            assert(zedcup.configure_instance("rev", { pools = { {
                name = "p", error_timeout = 1.5,
                hosts = {
                    { name = "plain", host = "127.0.0.1", port = port },
                    { name = "checked", host = "127.0.0.1", port = port,
                      healthcheck = { path = "/health", interval = 0.1, rise = 2, fall = 50 } },
                },
            } } }))
            ngx.update_time()
            local t0 = ngx.now()
            assert(state.mark_down("rev", "p", "plain", "test"))
            assert(state.mark_down("rev", "p", "checked", "test"))

            -- polls until `down` is gone; a failed read is reported, never taken
            -- for "gone"
            local function wait_up(host, deadline)
                t.retry_until(deadline, 0.02, function()
                    local e, err = kv.get(base .. host .. "/down")
                    if e == nil then
                        ngx.say("reading ", host, "/down failed: ", err)
                    end
                    return e == false
                end)
            end
            wait_up("plain", t0 + 8)
            local waited = ngx.now() - t0
            ngx.say("plain revived: ", kv.get(base .. "plain/down") == false)
            ngx.say("not before error_timeout: ", waited >= 1.4, " (", waited >= 1.4 and "" or waited, ")")
            ngx.say("checked still down: ", kv.get(base .. "checked/down") ~= false)
            ngx.say("its check: ", (require("zedcup.state").last_check("rev", "p", "checked")))

            ngx.shared.flags:delete("sick")
            wait_up("checked", ngx.now() + 8)
            ngx.say("checked up through rise: ", kv.get(base .. "checked/down") == false)
            local s = require("zedcup.healthcheck").stats()
            ngx.say("revived: ", s.revived, ", marked up: ", s.marked_up)
        }
    }
--- request
GET /t
--- response_body
plain revived: true
not before error_timeout: true ()
checked still down: true
its check: Bad status code: 503
checked up through rise: true
revived: 1, marked up: 1
--- no_error_log
[error]



=== TEST 6: unix socket hosts (unix:/path and /path) are checked over the socket; a refused connection is a failure
--- timeout: 20
--- http_config
    lua_socket_log_errors off;
    server {
        listen unix:$TEST_NGINX_SERVROOT/logs/backend.sock;
        location = /health { return 200 "ok"; }
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            assert(zedcup.configure({ healthcheck_interval = 0.1 }))
            assert(zedcup.configure_instance("sock", {
                healthcheck = { path = "/health", interval = 0.1 },
                pools = { { name = "p", hosts = {
                    { name = "prefixed", host = "unix:$TEST_NGINX_SERVROOT/logs/backend.sock" },
                    { name = "path", host = "$TEST_NGINX_SERVROOT/logs/backend.sock" },
                    { name = "refused", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 },
                } } },
            }))
            local state = require "zedcup.state"
            for _, h in ipairs({ "prefixed", "path", "refused" }) do
                t.poll(8, 0.02, function() return state.last_check("sock", "p", h) end)
                local what = state.last_check("sock", "p", h)
                ngx.say(h, ": ", what and what:gsub("127.0.0.1:%d+", "127.0.0.1:PORT") or "no check")
            end
        }
    }
--- request
GET /t
--- response_body_like
^prefixed: ok
path: ok
refused: could not connect: .*connection refused
$
--- no_error_log
[error]



=== TEST 7: with Consul hung, checks keep their cadence (also once the node's listing is old): transitions are written off the checks, retried until Consul takes them
--- timeout: 60
--- vars
TEST_ZEDCUP_INIT_EXTRA = node_name = "checker",
TEST_ZEDCUP_CONSUL_AT = host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_3
--- http_config
    lua_socket_log_errors off;
    # zedcup reaches Consul through this proxy; "hold" = "*" holds every request (a hung Consul)
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / {
            access_by_lua_block { require("zedcup_t").consul_proxy_access("$TEST_ZEDCUP_PREFIX") }
            log_by_lua_block { require("zedcup_t").consul_proxy_log() }
            proxy_pass http://127.0.0.1:$TEST_NGINX_CONSUL_PORT;
            proxy_read_timeout 700s;
            proxy_buffering off;
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location = /health {
            content_by_lua_block {
                if ngx.shared.flags:get("sick") then
                    return ngx.exit(503)
                end
                ngx.say("ok")
            }
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location = /health { return 200 "ok"; }
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local zedcup = require "zedcup"
            local store = require "zedcup.store"
            local healthcheck = require "zedcup.healthcheck"
            local flags = ngx.shared.flags
            -- the test reads Consul itself, not through the proxy
            local consul = require("zedcup.consul"):new({ host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT,
                                                          token = "$TEST_NGINX_CONSUL_TOKEN" })
            local function down_value(host)
                local res = assert(consul:get_key("$TEST_ZEDCUP_PREFIX/state/app/p/" .. host .. "/down"))
                return res.status == 200 and res.body[1].Value or nil
            end

            -- the node's listing counts as current for consul_wait_time + worker_lock_ttl + 5 = 7 s
            assert(zedcup.configure({ healthcheck_interval = 0.1, consul_wait_time = 1, worker_lock_ttl = 1 }))
            local hc = { path = "/health", interval = 0.1, fall = 1, rise = 1 }
            assert(zedcup.configure_instance("app", { pools = { { name = "p", hosts = {
                { name = "a", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1, healthcheck = hc },
                { name = "b", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2, healthcheck = hc },
            } } } }))
            local state = require "zedcup.state"
            ngx.say("both checked: ", t.poll(10, 0.05, function()
                return state.last_check("app", "p", "a") and state.last_check("app", "p", "b")
            end) and true)

            -- a listing after the global config took effect: the node's listing now
            -- counts as current for 7 s after the watcher's last answer
            local index = store.watch_index("instances")
            assert(consul:put_key("$TEST_ZEDCUP_PREFIX/instances/nudge", "x"))
            t.poll(5, 0.02, function() return store.watch_index("instances") ~= index end)

            -- Consul hangs; host a fails from now on
            flags:set("hold", "*")
            flags:set("sick", true)
            ngx.update_time()
            local t0, c0 = ngx.now(), store.counter("checks")
            local n
            t.poll(15, 0.05, function()
                n = store.counter("checks") - c0
                return n >= 30
            end)
            ngx.update_time()
            local rate = n / (ngx.now() - t0)
            -- 2 hosts every 0.1 s: 20/s; blocked on each write's 5 s read timeout it was below 1/s
            ngx.say("checks per second while Consul hangs >= 5: ", rate >= 5,
                    rate >= 5 and "" or (" (" .. n .. " checks, " .. rate .. "/s)"))
            ngx.say("a's down waits to be written: ", healthcheck.transitions_pending() == 1)

            -- the watchers have not answered for a while: checks go on from the node's listing
            ngx.say("the node's listing is old: ", t.poll(15, 0.1, function() return not store.synced() end) and true)
            ngx.update_time()
            t0, c0 = ngx.now(), store.counter("checks")
            t.poll(10, 0.05, function()
                n = store.counter("checks") - c0
                return n >= 20
            end)
            ngx.update_time()
            rate = n / (ngx.now() - t0)
            ngx.say("checks per second then >= 5: ", rate >= 5,
                    rate >= 5 and "" or (" (" .. n .. " checks, " .. rate .. "/s)"))
            ngx.say("not in Consul yet: ", down_value("a"))

            flags:delete("hold")
            ngx.say("a down once Consul answers: ", t.poll(15, 0.05, function() return down_value("a") end))
            flags:delete("sick")
            ngx.say("a up again: ", t.poll(10, 0.05, function() return down_value("a") == nil end))
            ngx.say("b never down: ", down_value("b"))
            t.poll(5, 0.02, function() return healthcheck.transitions_pending() == 0 end)
            local s = healthcheck.stats()
            ngx.say("marked down: ", s.marked_down, ", marked up: ", s.marked_up,
                    ", pending: ", healthcheck.transitions_pending())
        }
    }
--- request
GET /t
--- response_body
both checked: true
checks per second while Consul hangs >= 5: true
a's down waits to be written: true
the node's listing is old: true
checks per second then >= 5: true
not in Consul yet: nil
a down once Consul answers: health check failed 1 times: Bad status code: 503
a up again: true
b never down: nil
marked down: 1, marked up: 1, pending: 0
