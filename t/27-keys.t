# Names as Consul key segments: URL-escaped on every request, dot segments
# refused, folder-only keys not taken for instances; and init's builtin_deps.
#
# Every block but TEST 4 and 5 (which test init() itself): zedcup initialised against
# the session's Consul (the preamble below).

--- http_config
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;

    init_by_lua_block {
        require "resty.core"
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }

__DATA__

=== TEST 1: instance, pool and host names with ' ', '?', '%', '#' and '+' are escaped in every key URL: write, read, list, state, remove
--- http_config
    lua_socket_log_errors off;

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 503 "bad"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / { return 200 "good"; }
    }
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local state = require "zedcup.state"
            local P = "$TEST_ZEDCUP_PREFIX"
            local inst = "web 01?x=1#a%2F"
            assert(zedcup.configure_instance("a", { pools = { { hosts = { { host = "10.0.0.1", port = 1 } } } } }))
            assert(zedcup.configure_instance(inst, {
                pools = { { name = "p 1?", max_errors = 5,
                            hosts = { { name = "a?b", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 },
                                      { name = "a%2F+", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 } } } },
            }))
            -- the keys are what they say: one tree, nothing spilled into other keys
            local entries = assert(kv.get_tree(P .. "/instances/"))
            for _, e in ipairs(entries) do
                ngx.say(e.Key:sub(#P + 2), "=", e.Value)
            end
            local list = assert(zedcup.instance_list())
            ngx.say("list: ", table.concat(list, "|"), " named: ", list[inst])

            -- the node's cache is bypassed: a fresh worker reads from Consul
            ngx.shared.zedcup_cache:flush_all()
            require("zedcup.store").configs():purge()
            local h = assert(zedcup.create_handler(inst))
            ngx.say("pool: ", h:config().pools[1].name)
            for _ = 1, 2 do
                local res, err = h:request({ path = "/" })
                ngx.say(res and res.status, " ", err, " ", res and res:read_body())
                h = assert(zedcup.create_handler(inst))
            end
            -- the failure of host "a?b" goes to its state key and back
            assert(state.sync())
            local e = assert(kv.get(P .. "/state/" .. inst .. "/p 1?/a?b/errors"))
            -- (1, or 2 when the watcher's answer replaced the plan between the requests)
            ngx.say("state errors of a?b: ", tonumber(e.Value) >= 1)

            assert(zedcup.remove_instance(inst))
            ngx.say("after remove: ", #assert(kv.get_tree(P .. "/instances/" .. inst .. "/")),
                    " state: ", #assert(kv.get_tree(P .. "/state/" .. inst .. "/")),
                    " list: ", table.concat(assert(zedcup.instance_list()), "|"))
        }
    }
--- request
GET /t
--- response_body
instances/a/pools/1/hosts/1/host=10.0.0.1
instances/a/pools/1/hosts/1/port=1
instances/web 01?x=1#a%2F/pools/1/hosts/1/host=127.0.0.1
instances/web 01?x=1#a%2F/pools/1/hosts/1/name=a?b
instances/web 01?x=1#a%2F/pools/1/hosts/1/port=$TEST_NGINX_RAND_PORT_1
instances/web 01?x=1#a%2F/pools/1/hosts/2/host=127.0.0.1
instances/web 01?x=1#a%2F/pools/1/hosts/2/name=a%2F+
instances/web 01?x=1#a%2F/pools/1/hosts/2/port=$TEST_NGINX_RAND_PORT_2
instances/web 01?x=1#a%2F/pools/1/max_errors=5
instances/web 01?x=1#a%2F/pools/1/name=p 1?
list: a|web 01?x=1#a%2F named: true
pool: p 1?
200 nil good
200 nil good
state errors of a?b: true
after remove: 0 state: 0 list: a
--- no_error_log
[error]


=== TEST 2: names '.' and '..' are refused for instances, pools, hosts and header keys (dot segments would name other keys)
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local P = "$TEST_ZEDCUP_PREFIX"
            local good = { pools = { { hosts = { { host = "10.0.0.1", port = 1 } } } } }
            for _, name in ipairs({ ".", ".." }) do
                ngx.say(select(2, zedcup.configure_instance(name, good)))
                ngx.say(select(2, zedcup.remove_instance(name)))
                ngx.say(select(2, zedcup.create_handler(name)))
            end
            ngx.say(select(2, zedcup.configure_instance("i", { pools = { { name = "..", hosts = good.pools[1].hosts } } })))
            ngx.say(select(2, zedcup.configure_instance("i", { pools = { { hosts = { { name = ".", host = "h", port = 1 } } } } })))
            ngx.say(select(2, zedcup.configure_instance("i", { healthcheck = { headers = { [".."] = "x" } },
                                                               pools = good.pools })))
            ngx.say("dots inside names are fine: ",
                    zedcup.configure_instance("...", { pools = { { name = ".p.", hosts = good.pools[1].hosts } } }))
            local keys = {}
            for _, e in ipairs(assert(kv.get_tree(P .. "/"))) do keys[#keys + 1] = e.Key:sub(#P + 2) end
            table.sort(keys)
            ngx.say("nothing else written: ", table.concat(keys, " "))
        }
    }
--- request
GET /t
--- response_body
instance: must be a non-empty name without '/', not '.' or '..' (got ".")
instance: must be a non-empty name without '/', not '.' or '..' (got ".")
Instance not found
instance: must be a non-empty name without '/', not '.' or '..' (got "..")
instance: must be a non-empty name without '/', not '.' or '..' (got "..")
Instance not found
pools[1].name: must be a non-empty name without '/', not '.' or '..' (got "..")
pools[1].hosts[1].name: must be a non-empty name without '/', not '.' or '..' (got ".")
healthcheck.headers...: keys must be non-empty strings without '/', not '.' or '..' (got "x")
dots inside names are fine: true
nothing else written: instances/.../pools/1/hosts/1/host instances/.../pools/1/hosts/1/port instances/.../pools/1/name
--- no_error_log
[error]


=== TEST 3: a folder-only key (`ghost/`, as Consul's UI makes) is no instance: instance_list agrees with the watcher, listing only trees with keys
--- timeout: 15
--- workers: 2
--- http_config
    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local P = "$TEST_ZEDCUP_PREFIX"
            assert(kv.put(P .. "/instances/ghost/", ""))
            assert(kv.put(P .. "/instances/ghost2/pools/", ""))
            assert(zedcup.configure_instance("real", { pools = { { hosts = { { host = "10.0.0.1", port = 1 } } } } }))
            local list = assert(zedcup.instance_list())
            ngx.say("list: ", table.concat(list, ","), " ghost=", list.ghost, " ghost2=", list.ghost2)
            -- the background jobs' view (the watcher's listing) holds the same names
            local config = require "zedcup.config"
            local names = require("zedcup_t").wait_for_change(5, 0.05, function()
                return require("zedcup.store").synced() and config.instances()
            end)
            local seen = {}
            for name in pairs(names or {}) do seen[#seen + 1] = name end
            table.sort(seen)
            ngx.say("watcher: ", table.concat(seen, ","))
            ngx.say(select(2, zedcup.create_handler("ghost")))
        }
    }
--- request
GET /t
--- response_body
list: real ghost=nil ghost2=nil
watcher: real
Instance not found
--- no_error_log
[error]


=== TEST 4: init({ builtin_deps = true }) forces zedcup's built-in building blocks even when lua-resty-* are installed; a non-boolean is refused
--- http_config own
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;

    init_by_lua_block {
        require "resty.core"
        -- stand-ins for installed libraries, as require finds them
        package.preload["resty.http"] = function() return { installed = "http" } end
        package.preload["resty.lock"] = function() return { installed = "lock" } end
        local zedcup = require "zedcup"
        local ok, err = pcall(zedcup.init, { builtin_deps = "yes" })
        BAD_OPT = tostring(err)
        assert(zedcup.init({
            builtin_deps = true,
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            local names = deps.names()
            ngx.say(names.http, " ", names.consul, " ", names.mlcache, " ", names.lock)
            ngx.say("http is the built-in: ", deps.http == require("zedcup.http"))
            ngx.say("option recorded: ", require("zedcup").options().builtin_deps)
            ngx.say(BAD_OPT)
            -- and it works: a Consul round trip through the built-ins
            ngx.say("config: ", require("zedcup").config().session_ttl)
        }
    }
--- request
GET /t
--- response_body_like
^zedcup.http zedcup.consul zedcup.cache zedcup.lock
http is the built-in: true
option recorded: true
.*opts.builtin_deps must be a boolean \(got string\)
config: 30
$
--- no_error_log
[error]


=== TEST 5: init() refuses a prefix with empty, '.' or '..' segments (as zedctl does): Consul's router would resolve them to other keys
--- http_config own
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;

    init_by_lua_block {
        require "resty.core"
        local zedcup = require "zedcup"
        PREFIX_ERRORS = {}
        for _, p in ipairs({ "a//b", "a/./b", "../zedcup", "zedcup/..", "/zedcup", "a/b/", "" }) do
            local ok, err = pcall(zedcup.init, { prefix = p })
            PREFIX_ERRORS[#PREFIX_ERRORS + 1] = p .. " -> " .. tostring(ok) .. " " .. tostring(err):gsub("^.-opts", "opts")
        end
        assert(zedcup.init({ prefix = "a.b/.c/d..", consul = { port = $TEST_NGINX_CONSUL_PORT } }))
    }
--- config
    location = /t {
        content_by_lua_block {
            ngx.say(table.concat(PREFIX_ERRORS, "\n"))
            ngx.say("dots inside segments: ", require("zedcup.kv").prefix())
        }
    }
--- request
GET /t
--- response_body
a//b -> false opts.prefix must not have empty, '.' or '..' segments (got a//b)
a/./b -> false opts.prefix must not have empty, '.' or '..' segments (got a/./b)
../zedcup -> false opts.prefix must not have empty, '.' or '..' segments (got ../zedcup)
zedcup/.. -> false opts.prefix must not have empty, '.' or '..' segments (got zedcup/..)
/zedcup -> false opts.prefix must not have empty, '.' or '..' segments (got /zedcup)
a/b/ -> false opts.prefix must be a non-empty string not ending in '/' (got a/b/)
 -> false opts.prefix must be a non-empty string not ending in '/' (got )
dots inside segments: a.b/.c/d..
--- no_error_log
[error]
