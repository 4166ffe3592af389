# zedcup.balance() in balancer_by_lua and zedcup.log() in log_by_lua: the same
# host selection and failure accounting as handlers, with nginx's own proxy
# doing the request (real nginx, dev-consul, real backends).
#
# Every block: zedcup counting events in `flags` (balance_t.init), the README's
# upstream block, /ready and /count (the preamble below); blocks add their backends
# and locations (proxied ones include t/lib/balance_proxy.conf), TEST 5 a resolver.

--- vars
# more options of zedcup.init() (TEST 5: its resolver)
TEST_ZEDCUP_INIT_EXTRA =
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
            $TEST_ZEDCUP_INIT_EXTRA
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
--- config
    # "<worker id> yes" once this worker holds the plan of instance ?i= (default inst)
    location = /ready {
        content_by_lua_block {
            ngx.say(ngx.worker.id(), " ", require("zedcup.config").plan_local(ngx.var.arg_i or "inst") and "yes" or "no")
        }
    }
    location = /count {
        content_by_lua_block { ngx.say(ngx.shared.flags:get(ngx.unescape_uri(ngx.var.arg_k)) or 0) }
    }

__DATA__

=== TEST 1: balance() picks hosts like handlers do, retries the next host on connect errors and bad statuses, and log() counts each try with its own event
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "one"; }
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / { return 500 "bad"; }
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
        proxy_pass http://zedcup_inst/;
        proxy_next_upstream error timeout http_500;
        include $TEST_NGINX_REPO/t/lib/balance_proxy.conf;
    }
    location /missing {
        set $zedcup_instance nope;
        proxy_pass http://zedcup_inst/;
        include $TEST_NGINX_REPO/t/lib/balance_proxy.conf;
    }
--- pipelined_requests
GET /setup
GET /proxied
GET /proxied
GET /missing
GET /count?k=CONNECT_ERROR%20dead
GET /count?k=REQUEST_ERROR%20b500
GET /count?k=CONNECT%20ok
--- error_code
200
200
200
502
200
200
200
--- response_body_like
^oneone<html>.*502 Bad Gateway.*2\n2\n2\n$
--- error_log
zedcup: Instance not found
CONNECT_ERROR inst dead: upstream connect failed (502)
REQUEST_ERROR inst b500: Bad status code: 500



=== TEST 2: the last try counts: a one-host pool on a closed port, two workers: every request 502, host_down once after max_errors, then "no live upstreams" without a connect
--- workers: 2
--- timeout: 30
--- config
    location /proxied {
        set $zedcup_instance inst;
        proxy_pass http://zedcup_inst/;
        include $TEST_NGINX_REPO/t/lib/balance_proxy.conf;
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local T = require "zedcup_t"
            local get = require("balance_t").get
            local port = $TEST_NGINX_SERVER_PORT
            assert(zedcup.configure_instance("inst", { pools = { { name = "p", max_errors = 4, error_timeout = 60,
                hosts = { { name = "only", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            ngx.say("both workers have the instance: ", T.until_all(port, "/ready", "yes", 10) ~= nil)
            -- until both workers served and 4 requests failed: the node's count reaches max_errors
            local per_worker, statuses = { [0] = 0, [1] = 0 }, {}
            local n = 0
            while (per_worker[0] < 1 or per_worker[1] < 1 or n < 4) and n < 200 do
                n = n + 1
                local status, _, w = get(port, "/proxied")
                statuses[status] = (statuses[status] or 0) + 1
                if w then
                    per_worker[w] = per_worker[w] + 1
                end
            end
            ngx.say("every worker served failures: ", per_worker[0] >= 1 and per_worker[1] >= 1)
            ngx.say("statuses: only 502: ", statuses[502] == n)
            local connect_errors = ngx.shared.flags:get("CONNECT_ERROR only") or 0
            ngx.say("connect errors counted: ", connect_errors >= 4 and connect_errors <= n)
            local P = "$TEST_ZEDCUP_PREFIX"
            local down = T.wait_for(10, 0.05, function() return kv.get(P .. "/state/inst/p/only/down") end)
            ngx.say("down in Consul: ", down and true)
            ngx.say("every worker sees it down: ",
                    T.until_all(port, "/isdown", "true", 10) ~= nil)
            local before = ngx.shared.flags:get("CONNECT_ERROR only")
            local status = get(port, "/proxied")
            ngx.say("once down: ", status, ", connect errors since: ", ngx.shared.flags:get("CONNECT_ERROR only") - before)
        }
    }
    location = /isdown {
        content_by_lua_block {
            ngx.say(ngx.worker.id(), " ", require("zedcup.state").is_down("inst", "p", "only"))
        }
    }
--- request
GET /t
--- response_body
both workers have the instance: true
every worker served failures: true
statuses: only 502: true
connect errors counted: true
down in Consul: true
every worker sees it down: true
once down: 502, connect errors since: 0
--- grep_error_log
HOST_DOWN inst only
--- grep_error_log_out
HOST_DOWN inst only
--- error_log
zedcup: No available upstream hosts
no live upstreams



=== TEST 3: status_codes from $upstream_status: a host answering 503 with proxy_next_upstream (client gets 200 from the other) and without (client gets the 503); one-host pool: its 503 counts too
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.shared.flags:incr("served busy", 1, 0)
                ngx.status = 503
                ngx.say("busy")
            }
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / { return 200 "ok"; }
    }

--- config
    location /next {
        set $zedcup_instance inst;
        proxy_pass http://zedcup_inst/;
        proxy_next_upstream error timeout http_503;
        include $TEST_NGINX_REPO/t/lib/balance_proxy.conf;
    }
    location /nonext {
        set $zedcup_instance inst;
        proxy_pass http://zedcup_inst/;
        proxy_next_upstream error timeout;
        include $TEST_NGINX_REPO/t/lib/balance_proxy.conf;
    }
    location /solo {
        set $zedcup_instance solo;
        proxy_pass http://zedcup_inst/;
        proxy_next_upstream error timeout http_503;
        include $TEST_NGINX_REPO/t/lib/balance_proxy.conf;
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local flags = ngx.shared.flags
            local get = require("balance_t").get
            local port = $TEST_NGINX_SERVER_PORT
            local busy = { name = "busy", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 }
            local ok = { name = "ok", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 }
            assert(zedcup.configure_instance("inst", { pools = { { name = "p", max_errors = 1000, hosts = { busy, ok } } } }))
            assert(zedcup.configure_instance("solo", { pools = { { name = "p", max_errors = 1000, hosts = { busy } } } }))
            local function run(path, n)
                local c = {}
                for _ = 1, n do
                    local status = get(port, path)
                    c[status] = (c[status] or 0) + 1
                end
                local served = flags:get("served busy") or 0
                local counted = flags:get("REQUEST_ERROR busy") or 0
                flags:set("served busy", 0)
                flags:set("REQUEST_ERROR busy", 0)
                return c, served, counted
            end
            local c, served, counted = run("/next", 6)
            ngx.say("with proxy_next_upstream: 200 x", c[200], ", 503s served ", served, ", counted ", counted)
            c, served, counted = run("/nonext", 6)
            ngx.say("without: 200 x", c[200], ", 503 x", c[503], ", 503s served ", served, ", counted ", counted)
            c, served, counted = run("/solo", 3)
            ngx.say("one-host pool: 503 x", c[503], ", counted ", counted)
            ngx.say("connects of ok: ", flags:get("CONNECT ok"), ", connect errors: ",
                    (flags:get("CONNECT_ERROR ok") or 0) + (flags:get("CONNECT_ERROR busy") or 0))
        }
    }
--- request
GET /t
--- response_body
with proxy_next_upstream: 200 x6, 503s served 6, counted 6
without: 200 x3, 503 x3, 503s served 3, counted 3
one-host pool: 503 x3, counted 3
connects of ok: 9, connect errors: 0
--- error_log
REQUEST_ERROR inst busy: Bad status code: 503
REQUEST_ERROR solo busy: Bad status code: 503



=== TEST 4: retries reach the next pool when the first is exhausted (dead hosts, a unix socket); a host given as a name that joins the first pool takes requests, never a 500
--- http_config
    server {
        listen unix:$TEST_NGINX_SERVROOT/balance-test.sock;
        location / { return 200 "unix"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / { return 200 "named"; }
    }

--- config
    location /proxied {
        set $zedcup_instance inst;
        proxy_pass http://zedcup_inst/;
        proxy_next_upstream error timeout;
        include $TEST_NGINX_REPO/t/lib/balance_proxy.conf;
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local flags = ngx.shared.flags
            local get = require("balance_t").get
            local port = $TEST_NGINX_SERVER_PORT
            local primary = { name = "primary", max_errors = 1000, hosts = {
                { name = "dead1", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 },
                { name = "dead2", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 } } }
            local secondary = { name = "secondary", hosts = { { name = "sock", host = "unix:$TEST_NGINX_SERVROOT/balance-test.sock" } } }
            assert(zedcup.configure_instance("inst", { pools = { primary, secondary } }))
            -- both dead hosts fail, the secondary pool answers
            local status, body = get(port, "/proxied")
            ngx.say("first: ", status, " ", body, "; connect errors: dead1 ", flags:get("CONNECT_ERROR dead1"),
                    ", dead2 ", flags:get("CONNECT_ERROR dead2"))
            -- a host given as a name joins the first pool
            table.insert(primary.hosts, 2, { name = "named", host = "localhost", port = $TEST_NGINX_RAND_PORT_3 })
            assert(zedcup.configure_instance("inst", { pools = { primary, secondary } }))
            local statuses, named = {}, false
            local deadline = ngx.now() + 10
            while not named and ngx.now() < deadline do
                status, body = get(port, "/proxied")
                statuses[status] = true
                named = body == "named"
                ngx.sleep(0.05)
            end
            ngx.say("then the name's host answers: ", named, ", only 200s: ", statuses[200] and next(statuses, 200) == nil)
        }
    }
--- request
GET /t
--- response_body
first: 200 unix; connect errors: dead1 1, dead2 1
then the name's host answers: true, only 200s: true
--- no_error_log
[crit]



=== TEST 5: a pool whose only host is a name that does not resolve: nginx answers 502 (NO_PEER), never 500
--- vars
TEST_ZEDCUP_INIT_EXTRA = resolver = { nameservers = { { "127.0.0.1", $TEST_NGINX_RAND_PORT_1 } }, timeout = 0.2, retrans = 1 },
--- config
    location /names {
        set $zedcup_instance names;
        proxy_pass http://zedcup_inst/;
        include $TEST_NGINX_REPO/t/lib/balance_proxy.conf;
    }
    location = /t {
        content_by_lua_block {
            local get = require("balance_t").get
            assert(require("zedcup").configure_instance("names", { pools = {
                { name = "p", hosts = { { name = "n1", host = "nowhere.test", port = 80 } } } } }))
            for i = 1, 3 do
                ngx.say(i, ": ", (get($TEST_NGINX_SERVER_PORT, "/names")))
                ngx.sleep(0.3)
            end
        }
    }
--- request
GET /t
--- response_body
1: 502
2: 502
3: 502
--- error_log
the name nowhere.test is not resolved yet: skipped
zedcup: No available upstream hosts



=== TEST 6: chash in balancer mode: hash_key $arg_user sends a user to one host, balance()'s key argument overrides it
--- http_config
    upstream zedcup_keyed {
        server 0.0.0.1;
        balancer_by_lua_block { require("balance_t").balance("inst", ngx.var.arg_key, ngx.ERR) }
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "a"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / { return 200 "b"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / { return 200 "c"; }
    }

--- config
    location /proxied {
        set $zedcup_instance inst;
        proxy_pass http://zedcup_inst/;
        include $TEST_NGINX_REPO/t/lib/balance_proxy.conf;
    }
    location /keyed {
        proxy_pass http://zedcup_keyed/;
        log_by_lua_block { require("zedcup").log() }
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local get = require("balance_t").get
            local port = $TEST_NGINX_SERVER_PORT
            local hosts = {}
            for i, name in ipairs({ "a", "b", "c" }) do
                hosts[i] = { name = name, host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 + 0 }
            end
            hosts[2].port = $TEST_NGINX_RAND_PORT_2
            hosts[3].port = $TEST_NGINX_RAND_PORT_3
            assert(zedcup.configure_instance("inst", { pools = { { name = "p", method = "chash",
                hash_key = "$arg_user", hosts = hosts } } }))
            local same, seen = true, {}
            for u = 1, 30 do
                local _, first = get(port, "/proxied?user=u" .. u)
                for _ = 1, 3 do
                    local _, again = get(port, "/proxied?user=u" .. u)
                    same = same and again == first
                end
                seen[first] = true
            end
            ngx.say("each user always on one host: ", same, ", users spread: ", seen.a and seen.b and seen.c and true)
            local _, by_key = get(port, "/keyed?user=u1&key=k7")
            local _, again = get(port, "/keyed?user=u2&key=k7")
            ngx.say("balance(instance, key): the key decides: ", by_key == again)
        }
    }
--- request
GET /t
--- response_body
each user always on one host: true, users spread: true
balance(instance, key): the key decides: true



=== TEST 7: defect "the next pool was never reached": a host of the first pool becoming usable during the request takes a try, and the secondary pool still answers
--- http_config

    upstream zedcup_lifting {
        server 0.0.0.1;
        balancer_by_lua_block {
            local zedcup = require "zedcup"
            if require("ngx.balancer").get_last_failure() then
                -- a retry: the down mark of b is lifted (a new state copy, as a worker gets)
                local d = require("zedcup.state").down_for("inst")
                d.primary = {}
            end
            local ok, err = zedcup.balance("inst")
            if not ok then
                ngx.log(ngx.ERR, "zedcup: ", err)
                return ngx.exit(zedcup.NO_PEER)
            end
        }
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / { return 200 "secondary"; }
    }
--- config
    location /lifting {
        proxy_pass http://zedcup_lifting/;
        proxy_next_upstream error timeout;
        log_by_lua_block { require("zedcup").log() }
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local flags = ngx.shared.flags
            local get = require("balance_t").get
            assert(zedcup.configure_instance("inst", { pools = {
                { name = "primary", max_errors = 1000, hosts = {
                    { name = "a", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 },
                    { name = "b", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 } } },
                { name = "secondary", hosts = { { name = "s", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_3 } } },
            } }))
            assert(require("zedcup.state").mark_down("inst", "primary", "b", "test"))
            local status, body = get($TEST_NGINX_SERVER_PORT, "/lifting")
            ngx.say(status, " ", body, "; connect errors: a ", flags:get("CONNECT_ERROR a"),
                    ", b ", flags:get("CONNECT_ERROR b"), "; connects of s ", flags:get("CONNECT s"))
        }
    }
--- request
GET /t
--- response_body
200 secondary; connect errors: a 1, b 1; connects of s 1



=== TEST 8: a host given as a name is looked up as soon as a worker compiles the instance, so a one-host pool answers from the first request on every worker (no 502 "not resolved yet")
--- workers: 2
--- timeout: 15
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "named"; }
    }

--- config
    location /proxied {
        set $zedcup_instance inst;
        proxy_pass http://zedcup_inst/;
        proxy_next_upstream error timeout;
        log_by_lua_block { require("zedcup").log() }
    }
    # "<worker id> yes" once this worker holds the plan (L1) and the name's addresses
    location = /known {
        content_by_lua_block {
            local r = require("zedcup.resolver").stats()["localhost"]
            ngx.say(ngx.worker.id(), " ", require("zedcup.config").plan_local("inst") and r and r.addresses and "yes" or "no")
        }
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local get = require("balance_t").get
            local _, until_all = require("zedcup_t").client($TEST_NGINX_SERVER_PORT)
            assert(zedcup.configure_instance("inst", { pools = { { name = "p", hosts = {
                { name = "named", host = "localhost", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            ngx.say("every worker knows the name without a request: ", until_all("/known", "yes", 3) ~= nil)
            local answers = {}
            for _ = 1, 8 do
                local status, body = get($TEST_NGINX_SERVER_PORT, "/proxied")
                answers[status .. " " .. body] = (answers[status .. " " .. body] or 0) + 1
            end
            for k, n in pairs(answers) do
                ngx.say(n, " x ", k)
            end
        }
    }
--- request
GET /t
--- response_body
every worker knows the name without a request: true
8 x 200 named
--- no_error_log
not resolved yet
[crit]



=== TEST 9: defect "an error_page redirect cleared the tries": proxy_intercept_errors with error_page 503 = @fb; log() at the server level still counts each intercepted 503 (the client gets the fallback), and a 2xx answer counts as a connect without reading nginx's variables
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.shared.flags:incr("served busy", 1, 0)
                ngx.status = 503
                ngx.say("busy")
            }
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / { return 200 "ok"; }
    }

--- config
    # at the server level: log() also runs in the location the error_page leads to
    log_by_lua_block { require("zedcup").log() }
    location /icept {
        set $zedcup_instance icept;
        proxy_pass http://zedcup_inst/;
        proxy_intercept_errors on;
        error_page 503 = @fb;
    }
    location @fb {
        return 200 "fallback";
    }
    # the error_page's location proxies to the same instance again: the host
    # that answered 503 is not picked again in this request
    location /again {
        set $zedcup_instance again;
        proxy_pass http://zedcup_inst/;
        proxy_intercept_errors on;
        error_page 503 = @again;
    }
    location @again {
        set $zedcup_instance again;
        proxy_pass http://zedcup_inst;
    }
    location /fine {
        set $zedcup_instance fine;
        proxy_pass http://zedcup_inst/;
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local flags = ngx.shared.flags
            local get = require("balance_t").get
            local port = $TEST_NGINX_SERVER_PORT
            assert(zedcup.configure_instance("icept", { pools = { { name = "p", max_errors = 1000, hosts = {
                { name = "busy", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            assert(zedcup.configure_instance("again", { pools = { { name = "p", max_errors = 1000, hosts = {
                { name = "busy", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1, weight = 3 },
                { name = "ok", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 } } } } }))
            assert(zedcup.configure_instance("fine", { pools = { { name = "p", hosts = {
                { name = "ok", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 } } } } }))
            local answers = {}
            for _ = 1, 4 do
                local status, body = get(port, "/icept")
                answers[#answers + 1] = status .. " " .. body
            end
            ngx.say("client got: ", table.concat(answers, ", "))
            ngx.say("503s served ", flags:get("served busy"), ", counted ", flags:get("REQUEST_ERROR busy"),
                    ", connects ", flags:get("CONNECT busy"))
            for _ = 1, 3 do
                get(port, "/fine")
            end
            ngx.say("2xx: connects ", flags:get("CONNECT ok"), ", errors ", flags:get("REQUEST_ERROR ok") or 0)
            flags:set("served busy", 0)
            flags:set("REQUEST_ERROR busy", 0)
            answers = {}
            for _ = 1, 4 do
                local status, body = get(port, "/again")
                answers[status .. " " .. body] = (answers[status .. " " .. body] or 0) + 1
            end
            local served = flags:get("served busy")
            ngx.say("proxied again: 200 ok x", answers["200 ok"], ", 503s served ", served,
                    ", all counted: ", served == flags:get("REQUEST_ERROR busy"))
            local c = require("zedcup.counters")
            assert(c.flush())
            local ic = c.instance("icept")
            ngx.say("icept requests ", ic.requests, ", answered by no host ", ic.no_host, "; fine requests ",
                    c.instance("fine").requests)
        }
    }
--- request
GET /t
--- response_body
client got: 200 fallback, 200 fallback, 200 fallback, 200 fallback
503s served 4, counted 4, connects 4
2xx: connects 3, errors 0
proxied again: 200 ok x4, 503s served 4, all counted: true
icept requests 4, answered by no host 4; fine requests 3
--- error_log
REQUEST_ERROR icept busy: Bad status code: 503



=== TEST 10: balance() without log(): a request never inherits the tries of an earlier one left at the same address (every request still reaches the live host of two, one of them dead)
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "ok"; }
    }

--- config
    location /nolog {
        set $zedcup_instance nolog;
        proxy_pass http://zedcup_inst/;
        proxy_next_upstream error timeout;
    }
    location = /t {
        content_by_lua_block {
            assert(require("zedcup").configure_instance("nolog", { pools = { { name = "p", max_errors = 100000, hosts = {
                { name = "ok", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 },
                { name = "dead", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 } } } } }))
            -- pipelined on one connection: nginx starts each request as the one
            -- before ends, often at the same address and in the same millisecond
            local c = {}
            for _ = 1, 4 do
                local sock = ngx.socket.tcp()
                sock:settimeout(5000)
                assert(sock:connect("127.0.0.1", $TEST_NGINX_SERVER_PORT))
                assert(sock:send(string.rep("GET /nolog HTTP/1.1\r\nHost: localhost\r\n\r\n", 49)
                    .. "GET /nolog HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
                local data = assert(sock:receive("*a"))
                sock:close()
                for status in data:gmatch("HTTP/1%.1 (%d+)") do
                    c[status] = (c[status] or 0) + 1
                end
            end
            ngx.say("200 x", c["200"] or 0, ", 502 x", c["502"] or 0)
        }
    }
--- request
GET /t
--- response_body
200 x200, 502 x0



=== TEST 11: defect "a fallback instance dropped the first one's tries": error_page 503 = @other proxies to another instance; the first instance's 503s are still counted, the fallback's answer too, a chain of three instances (recursive_error_pages) included
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.shared.flags:incr("served busy", 1, 0)
                ngx.status = 503
                ngx.say("busy")
            }
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / { return 200 "ok"; }
    }

--- config
    log_by_lua_block { require("zedcup").log() }
    location /first {
        set $zedcup_instance first;
        proxy_pass http://zedcup_inst/;
        proxy_intercept_errors on;
        error_page 503 = @second;
    }
    location @second {
        set $zedcup_instance second;
        proxy_pass http://zedcup_inst;
        proxy_intercept_errors on;
        error_page 503 = @third;
    }
    location @third {
        set $zedcup_instance third;
        proxy_pass http://zedcup_inst;
    }
    location /chain {
        set $zedcup_instance first;
        proxy_pass http://zedcup_inst/;
        proxy_intercept_errors on;
        recursive_error_pages on;
        error_page 503 = @busy2;
    }
    location @busy2 {
        set $zedcup_instance busy2;
        proxy_pass http://zedcup_inst;
        proxy_intercept_errors on;
        error_page 503 = @third;
    }
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local flags = ngx.shared.flags
            local get = require("balance_t").get
            local function pool(name, port, max_errors)
                return { pools = { { name = "p", max_errors = max_errors, hosts = {
                    { name = name, host = "127.0.0.1", port = port } } } } }
            end
            assert(zedcup.configure_instance("first", pool("busy", $TEST_NGINX_RAND_PORT_1, 1000)))
            assert(zedcup.configure_instance("second", pool("ok", $TEST_NGINX_RAND_PORT_2, 1000)))
            assert(zedcup.configure_instance("third", pool("ok", $TEST_NGINX_RAND_PORT_2, 1000)))
            assert(zedcup.configure_instance("busy2", pool("busy", $TEST_NGINX_RAND_PORT_1, 1000)))
            local answers = {}
            for _ = 1, 3 do
                local status, body = get($TEST_NGINX_SERVER_PORT, "/first")
                answers[#answers + 1] = status .. " " .. body
            end
            ngx.say("client got: ", table.concat(answers, ", "))
            ngx.say("503s served ", flags:get("served busy"), ", counted ", flags:get("REQUEST_ERROR busy") or 0,
                    "; fallback connects ", flags:get("CONNECT ok"))
            -- first (503) -> busy2 (503) -> third
            flags:set("served busy", 0)
            flags:set("REQUEST_ERROR busy", 0)
            flags:set("CONNECT ok", 0)
            answers = {}
            for _ = 1, 3 do
                local status, body = get($TEST_NGINX_SERVER_PORT, "/chain")
                answers[#answers + 1] = status .. " " .. body
            end
            ngx.say("chain of three: ", table.concat(answers, ", "), "; 503s served ", flags:get("served busy"),
                    ", counted ", flags:get("REQUEST_ERROR busy") or 0, "; third's connects ", flags:get("CONNECT ok"))
        }
    }
--- request
GET /t
--- response_body
client got: 200 ok, 200 ok, 200 ok
503s served 3, counted 3; fallback connects 3
chain of three: 200 ok, 200 ok, 200 ok; 503s served 6, counted 6; third's connects 3
--- no_error_log
[error]
