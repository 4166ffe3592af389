# zedcup.config and zedcup.kv: how configs are written to Consul, read back,
# cached per worker and per node, and watched.
#
# The preamble below (zedcup with its workers, backends "one" on RAND_PORT_1 and
# "two" on RAND_PORT_2, /which) goes in front of each block's sections; --- vars
# leave the workers out (TEST 1, 8) or put a proxy in front of Consul (TEST 5);
# TEST 7 has its own http_config.

--- vars
# the port zedcup finds Consul on (TEST 5: a switchable proxy in front of it)
TEST_ZEDCUP_CONSUL_PORT = $TEST_NGINX_CONSUL_PORT
# init_worker_by_lua (TEST 1, 8: nothing, no background work)
TEST_ZEDCUP_RUN_WORKERS = require("zedcup").run_workers()
--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_shared_dict flags 1m;
    lua_socket_log_errors off;

    init_by_lua_block {
        require "resty.core"
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_ZEDCUP_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }

    init_worker_by_lua_block {
        $TEST_ZEDCUP_RUN_WORKERS
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "one"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / { return 200 "two"; }
    }
--- config
    # "<worker id> <body of instance ?i= (default inst)>" or "<worker id> <error>"
    location = /which {
        content_by_lua_block { require("zedcup_t").which() }
    }

__DATA__

=== TEST 1: configure_instance writes the documented key layout (no defaults, 1-based lists); defect "delete-tree without trailing slash" removed state of instance "ab" when configuring "a"
--- vars
TEST_ZEDCUP_RUN_WORKERS =
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local P = "$TEST_ZEDCUP_PREFIX"
            assert(zedcup.configure_instance("ab", { pools = { { hosts = { { host = "10.0.0.9", port = 1 } } } } }))
            assert(kv.put(P .. "/state/ab/1/1/errors", "2"))
            assert(kv.put(P .. "/state/a/1/1/errors", "2"))
            assert(zedcup.configure_instance("a", {
                ssl = { ssl_verify = false },
                pools = { { name = "p", status_codes = { "50x" },
                            hosts = { { host = "10.0.0.1", port = "80" }, { name = "1x", host = "/run/s.sock" } } } },
            }))
            local entries = assert(kv.get_tree(P .. "/instances/a/"))
            for _, e in ipairs(entries) do
                ngx.say(e.Key:sub(#P + 2), "=", e.Value)
            end
            ngx.say("state of ab kept: ", kv.get(P .. "/state/ab/1/1/errors") ~= false)
            ngx.say("state of a cleared: ", kv.get(P .. "/state/a/1/1/errors") == false)
            local list = assert(zedcup.instance_list())
            ngx.say("list: ", table.concat(list, ","), " a=", list.a, " ab=", list.ab, " b=", list.b)
            assert(zedcup.remove_instance("a"))
            list = assert(zedcup.instance_list())
            ngx.say("after remove: ", table.concat(list, ","))
            local h, err = zedcup.create_handler("a")
            ngx.say(h, " ", err)
        }
    }
--- request
GET /t
--- response_body
instances/a/pools/1/hosts/1/host=10.0.0.1
instances/a/pools/1/hosts/1/port=80
instances/a/pools/1/hosts/2/host=/run/s.sock
instances/a/pools/1/hosts/2/name=1x
instances/a/pools/1/name=p
instances/a/pools/1/status_codes/1=50x
instances/a/ssl/verify=false
state of ab kept: true
state of a cleared: true
list: a,ab a=true ab=true b=nil
after remove: ab
nil Instance not found
--- no_error_log
[error]


=== TEST 2: a 300-host instance (more than one 64-op transaction) reconfigured while requests flow: no reader ever sees a mix
--- workers: 2
--- timeout: 30
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local cjson = require "cjson"
            local P = "$TEST_ZEDCUP_PREFIX"
            local function big(tag)
                local hosts = {}
                for i = 1, 300 do
                    hosts[i] = { name = tag .. i, host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 }
                end
                return { pools = { { hosts = hosts } } }
            end
            -- -> "ok" | "mixed" for a list of host names
            local function consistent(names)
                if #names ~= 300 then return "mixed" end
                local tag = names[1]:sub(1, 1)
                for _, n in ipairs(names) do
                    if n:sub(1, 1) ~= tag then return "mixed" end
                end
                return "ok"
            end
            assert(zedcup.configure_instance("big", big("a")))

            local done = false
            local seen = { ok = 0, mixed = 0, pending = 0, requests = 0, failed = 0 }
            local reader = ngx.thread.spawn(function()
                while not done do
                    -- Consul as any reader sees it
                    local entries = assert(kv.get_tree(P .. "/instances/big/"))
                    local rel, pending = kv.relative(entries, P .. "/instances/big/")
                    if pending then
                        seen.pending = seen.pending + 1
                    else
                        local names = {}
                        for _, e in ipairs(rel) do
                            local i, field = e[1]:match("^pools/1/hosts/(%d+)/(%a+)$")
                            if field == "name" then names[#names + 1] = e[2] end
                        end
                        seen[consistent(names)] = seen[consistent(names)] + 1
                    end
                    -- the node's cached copy (written by the watcher)
                    local _, _, cached = require("zedcup.store").configs():peek("big")
                    if cached and cached.conf then
                        local conf = cached.conf
                        local names = {}
                        for i, h in ipairs(conf.pools[1].hosts) do names[i] = h.name end
                        seen[consistent(names)] = seen[consistent(names)] + 1
                    end
                    -- and requests
                    local h = assert(zedcup.create_handler("big"))
                    local names = {}
                    for i, host in ipairs(h:config().pools[1].hosts) do names[i] = host.name end
                    seen[consistent(names)] = seen[consistent(names)] + 1
                    local res = h:request({ path = "/" })
                    if res and res.status == 200 then
                        seen.requests = seen.requests + 1
                        res:read_body()
                        h:set_keepalive()
                    else
                        seen.failed = seen.failed + 1
                    end
                    ngx.sleep(0.001)
                end
            end)

            for i = 1, 6 do
                assert(zedcup.configure_instance("big", big(i % 2 == 0 and "a" or "b")))
                ngx.sleep(0.05)
            end
            done = true
            ngx.thread.wait(reader)
            ngx.say("mixed: ", seen.mixed)
            ngx.say("consistent reads: ", seen.ok > 10)
            ngx.say("writes bracketed by _pending seen: ", seen.pending > 0)
            ngx.say("requests ok: ", seen.requests > 0, ", failed: ", seen.failed)
            local entries = assert(kv.get_tree(P .. "/instances/big/"))
            ngx.say("final keys: ", #entries)
        }
    }
--- request
GET /t
--- response_body
mixed: 0
consistent reads: true
writes bracketed by _pending seen: true
requests ok: true, failed: 0
final keys: 900
--- no_error_log
[error]


=== TEST 3: a hand-edited bad value in Consul is logged once, with its key, and the last good config stays in use until it is fixed
--- workers: 2
--- timeout: 30
--- config

    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local P = "$TEST_ZEDCUP_PREFIX"

            -- ask(path) -> worker id, text; until_all(path, want, deadline) polls until
            -- every worker answers `want` -> seconds taken | nil (t/lib/zedcup_t.lua)
            local ask, until_all = require("zedcup_t").client($TEST_NGINX_SERVER_PORT)

            assert(zedcup.configure_instance("inst", { pools = { { hosts = {
                { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            ngx.say("served: ", until_all("/which", "one", 5) ~= nil)
            assert(kv.put(P .. "/instances/inst/pools/1/hosts/1/port", "eighty"))
            -- a write that touches another instance wakes the watcher again: still logged once
            assert(kv.put(P .. "/instances/other/pools/1/hosts/1/host", "/run/other.sock"))
            local logged = require("zedcup_t").wait_for_change(5, 0.05, function()
                for _, k in ipairs(ngx.shared.zedcup_cache:get_keys(0)) do
                    if k:find("^bad:instance inst:") then return true end
                end
            end)
            ngx.say("bad value seen by the watcher: ", logged)
            ngx.say("still served from the last good config: ", until_all("/which", "one", 5) ~= nil)
            assert(kv.put(P .. "/instances/inst/pools/1/hosts/1/port", "$TEST_NGINX_RAND_PORT_2"))
            ngx.say("fixed value applied: ", until_all("/which", "two", 5) ~= nil)
        }
    }
--- request
GET /t
--- response_body
served: true
bad value seen by the watcher: true
still served from the last good config: true
fixed value applied: true
--- grep_error_log
$TEST_ZEDCUP_PREFIX/instances/inst/pools/1/hosts/1/port: must be an integer (got "eighty")
--- grep_error_log_out
$TEST_ZEDCUP_PREFIX/instances/inst/pools/1/hosts/1/port: must be an integer (got "eighty")


=== TEST 4: defect "the first instance took minutes to appear": an instance written by another node appears in every worker within a second, and so does a change
--- workers: 2
--- timeout: 20
--- config

    location = /t {
        content_by_lua_block {
            local kv = require "zedcup.kv"
            local P = "$TEST_ZEDCUP_PREFIX"

            -- ask(path) -> worker id, text; until_all(path, want, deadline) polls until
            -- every worker answers `want` -> seconds taken | nil (t/lib/zedcup_t.lua)
            local ask, until_all = require("zedcup_t").client($TEST_NGINX_SERVER_PORT)

            local w, err = ask("/which")
            ngx.say("before: ", err)
            -- give the watchers time to block on an empty tree, as on an idle cluster
            ngx.sleep(1)
            -- written as zedctl or another node would: straight to Consul
            assert(kv.write_tree(P .. "/instances/inst/", {
                { "pools/1/hosts/1/host", "127.0.0.1" },
                { "pools/1/hosts/1/port", "$TEST_NGINX_RAND_PORT_1" },
            }))
            local took = until_all("/which", "one", 5)
            ngx.say("first instance in every worker within 1.5 s: ", took ~= nil and took < 1.5)
            assert(kv.put(P .. "/instances/inst/pools/1/hosts/1/port", "$TEST_NGINX_RAND_PORT_2"))
            took = until_all("/which", "two", 5)
            ngx.say("change in every worker within 1.5 s: ", took ~= nil and took < 1.5)
        }
    }
--- request
GET /t
--- response_body
before: Instance not found
first instance in every worker within 1.5 s: true
change in every worker within 1.5 s: true
--- no_error_log
[error]


=== TEST 5: Consul unreachable: requests keep being served from the last good config in every worker; watchers recover by themselves
--- workers: 2
--- timeout: 20
--- vars
TEST_ZEDCUP_CONSUL_PORT = $TEST_NGINX_RAND_PORT_3
--- http_config
    # a switchable path to Consul: 444 closes the connection, like a dead agent
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / {
            access_by_lua_block {
                if ngx.shared.flags:get("down") then return ngx.exit(444) end
            }
            proxy_pass http://127.0.0.1:$TEST_NGINX_CONSUL_PORT;
            proxy_read_timeout 700s;
            proxy_buffering off;
        }
    }
--- config

    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local P = "$TEST_ZEDCUP_PREFIX"

            -- ask(path) -> worker id, text; until_all(path, want, deadline) polls until
            -- every worker answers `want` -> seconds taken | nil (t/lib/zedcup_t.lua)
            local ask, until_all = require("zedcup_t").client($TEST_NGINX_SERVER_PORT)

            -- short blocking queries and back-off, so the outage is noticed and left quickly
            assert(zedcup.configure({ consul_wait_time = 1, watcher_interval = 1 }))
            assert(zedcup.configure_instance("inst", { pools = { { hosts = {
                { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            ngx.say("served: ", until_all("/which", "one", 5) ~= nil)
            ngx.shared.flags:set("down", true)
            ngx.sleep(1.5)
            local c, e = zedcup.config()
            ngx.say("global config still known: ", c and c.consul_wait_time)
            local ok = 0
            for _ = 1, 20 do
                local _, body = ask("/which")
                if body == "one" then ok = ok + 1 end
            end
            ngx.say("served while Consul is down: ", ok, "/20")
            ngx.say("writes fail: ", zedcup.configure_instance("inst", { pools = { { hosts = {
                { host = "127.0.0.1", port = 1 } } } } }) == nil)
            ngx.shared.flags:delete("down")
            -- another node changes the instance once Consul is back
            local direct = require("zedcup.deps").consul:new({ host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT,
                                                                 token = "$TEST_NGINX_CONSUL_TOKEN" })
            assert(direct:put_key(P .. "/instances/inst/pools/1/hosts/1/port", "$TEST_NGINX_RAND_PORT_2").body == true)
            ngx.say("recovered: ", until_all("/which", "two", 8) ~= nil)
        }
    }
--- request
GET /t
--- response_body
served: true
global config still known: 1
served while Consul is down: 20/20
writes fail: true
recovered: true


=== TEST 6: config() returns the cached global config (defect: deep-copied on every call); configure() replaces it; removal reaches every worker
--- workers: 2
--- timeout: 20
--- config

    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"

            -- ask(path) -> worker id, text; until_all(path, want, deadline) polls until
            -- every worker answers `want` -> seconds taken | nil (t/lib/zedcup_t.lua)
            local ask, until_all = require("zedcup_t").client($TEST_NGINX_SERVER_PORT)

            local c1 = assert(zedcup.config())
            ngx.say("defaults: ", c1.consul_wait_time, " ", c1.session_ttl, " ", c1.cache_update_interval)
            ngx.say("same table: ", zedcup.config() == zedcup.config())
            assert(zedcup.configure({ session_ttl = "20", cache_update_interval = 0.5 }))
            local c2 = assert(zedcup.config())
            ngx.say("configured: ", c2.session_ttl, " ", c2.cache_update_interval, " ", c2.consul_wait_time)
            assert(zedcup.configure_instance("inst", { pools = { { hosts = {
                { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            ngx.say("served: ", until_all("/which", "one", 5) ~= nil)
            assert(zedcup.remove_instance("inst"))
            ngx.say("gone everywhere: ", until_all("/which", "Instance not found", 5) ~= nil)
        }
    }
--- request
GET /t
--- response_body
defaults: 600 30 1
same table: true
configured: 20 0.5 600
served: true
gone everywhere: true
--- no_error_log
[error]



=== TEST 7: init(): defaults, "[zedcup] <kind> dictionary not found: <name>", initted(), _VERSION, option types
--- http_config own
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_shared_dict other 1m;
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            ngx.say("version: ", zedcup._VERSION, ", initted: ", zedcup.initted())
            ngx.say(zedcup.init({ dicts = { cache = "nope" } }))
            ngx.say(zedcup.init({ dicts = { locks = "missing_locks" } }))
            ngx.say(zedcup.init({ dicts = { ipc = "missing_ipc" } }))
            ngx.say("initted after failures: ", zedcup.initted())
            ngx.say(pcall(zedcup.init, "x"))
            ngx.say(pcall(zedcup.init, { consul = 1 }))
            ngx.say(zedcup.init({ dicts = { ipc = "other" } }), " ", zedcup.initted())
            local o = zedcup.options()
            ngx.say(o.prefix, " ", o.dicts.cache, " ", o.dicts.locks, " ", o.dicts.ipc)
        }
    }
--- request
GET /t
--- response_body_like
^version: 0.1.0, initted: false
false\[zedcup\] cache dictionary not found: nope
false\[zedcup\] locks dictionary not found: missing_locks
false\[zedcup\] ipc dictionary not found: missing_ipc
initted after failures: false
false.*opts must be a table \(got string\)
false.*opts.consul must be a table \(got number\)
true true
zedcup zedcup_cache zedcup_locks other
$



=== TEST 8: large writes are exclusive: a fresh `_pending` of another writer is respected, a stale one (a writer that died) is taken over
--- vars
TEST_ZEDCUP_RUN_WORKERS =
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local P = "$TEST_ZEDCUP_PREFIX"
            local hosts = {}
            for i = 1, 100 do hosts[i] = { host = "10.0.0.1", port = i } end
            local big = { pools = { { hosts = hosts } } }
            local pending = P .. "/instances/big/_pending"
            assert(kv.put(pending, "another writer", { flags = ngx.time() }))
            ngx.say(zedcup.configure_instance("big", big))
            assert(kv.put(pending, "a dead writer", { flags = ngx.time() - 120 }))
            ngx.say(zedcup.configure_instance("big", big))
            local entries = assert(kv.get_tree(P .. "/instances/big/"))
            local _, has_pending = kv.relative(entries, P .. "/instances/big/")
            ngx.say(#entries, " keys, _pending left: ", has_pending)
        }
    }
--- request
GET /t
--- response_body_like
^nilwriting \S+/instances/big/ refused: another write is under way \(for [01] s\)
true
200 keys, _pending left: false
$
--- no_error_log
[error]
