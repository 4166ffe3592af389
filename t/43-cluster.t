# Cluster behaviour of the background work: two nginx nodes on one dev-consul.
# Requests go to node 1; node 1 drives node 2 through its locations over HTTP.

__DATA__

=== TEST 1: one node checks at a time; when the checker hangs, the other takes over within the session TTL
--- nodes: 2
--- timeout: 40
--- http_config
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;
    init_by_lua_block {
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX", node_name = "node$TEST_NGINX_NODE",
            consul = { host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                       token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }
--- config
    location = /health {
        return 200 "ok";
    }
    location = /_start {
        content_by_lua_block {
            require("zedcup").run_workers()
            ngx.print(ngx.worker.pid())
        }
    }
    location = /_stats {
        content_by_lua_block {
            local s = require("zedcup.healthcheck").stats()
            ngx.print(s.checks)
        }
    }
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local zedcup = require "zedcup"
            local session = require "zedcup.session"
            local hc = require "zedcup.healthcheck"
            local kv = require "zedcup.kv"

            local function node2(what)
                local httpc = require("zedcup.deps").http.new()
                httpc:set_timeout(2000)
                local res, err = httpc:request_uri("http://127.0.0.1:$TEST_NGINX_NODE_PORT_2/" .. what)
                if not res then return nil, err end
                return res.body
            end
            local function wait_for(what, limit, pred)
                if t.retry_until(ngx.now() + limit, 0.05, pred) then return true end
                ngx.say("timed out waiting for ", what)
                return false
            end

            -- short intervals and the shortest TTL Consul allows, before any session exists
            assert(zedcup.configure({ healthcheck_interval = 0.2, session_ttl = 10,
                                      session_renew_interval = 1 }))
            assert(zedcup.configure_instance("app", { pools = { { name = "p", hosts = { {
                name = "h", host = "127.0.0.1", port = $TEST_NGINX_NODE_PORT_1,
                healthcheck = { path = "/health", interval = 0.2 },
            } } } } }))

            -- node 2 starts first and becomes the checker
            local pid2 = assert(tonumber(node2("_start")))
            if not wait_for("node 2 to check", 10, function()
                return (tonumber(node2("_stats")) or 0) > 0
            end) then return end
            ngx.say("holder: ", (session.holder("healthcheck")))

            -- node 1 starts too, and stays idle while node 2 holds the lock
            zedcup.run_workers()
            local c2 = tonumber(node2("_stats"))
            if not wait_for("node 2 to check more", 10, function()
                return tonumber(node2("_stats")) >= c2 + 5
            end) then return end
            ngx.say("node 1 checks meanwhile: ", hc.stats().checks)
            local res = assert(kv.client():get_key("$TEST_ZEDCUP_PREFIX/registry/", { recurse = true }))
            local held = 0
            for _, e in ipairs(res.body) do
                if e.Session then held = held + 1 end
            end
            ngx.say("live nodes in the registry: ", held)

            -- node 2 hangs (SIGSTOP): its session lapses, its lock is released
            ngx.update_time()
            local t0 = ngx.now()
            os.execute("kill -STOP " .. pid2)
            local ok = wait_for("node 1 to take over", 25, function()
                return hc.stats().checks > 0
            end)
            local took = ngx.now() - t0
            os.execute("kill -CONT " .. pid2)
            if not ok then return end
            ngx.say("holder: ", (session.holder("healthcheck")))
            -- Consul invalidates after the TTL (10s), the key has a 1s lock delay
            ngx.say("took over after the TTL: ", took >= 9, " (", took >= 9 and "" or took, ")")

            -- node 2 wakes up, finds its session gone, and does not check any more
            wait_for("node 2 to answer again", 5, function() return node2("_stats") ~= nil end)
            -- a check in flight when it stopped may still complete (late, on a busy
            -- machine); after that its count must stay put for a whole second
            local idle = false
            local mine = hc.stats().checks
            for _ = 1, 4 do
                local after = tonumber(node2("_stats"))
                ngx.sleep(1)
                if tonumber(node2("_stats")) == after then
                    idle = true
                    break
                end
            end
            ngx.say("node 2 idle: ", idle)
            ngx.say("node 1 checking: ", hc.stats().checks > mine)
            ngx.say("holder: ", (session.holder("healthcheck")))
        }
    }
--- request
GET /t
--- response_body
holder: node2
node 1 checks meanwhile: 0
live nodes in the registry: 2
holder: node1
took over after the TTL: true ()
node 2 idle: true
node 1 checking: true
holder: node1
--- no_error_log
[error]
