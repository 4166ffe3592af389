# Consul unavailable: the background work of every worker fails quietly (each
# job logs a repeated error at most once per log interval), requests go on.
# Covers the data plane's jobs: watchers, update, errors sync, health checks.

__DATA__

=== TEST 1: a Consul outage with every interval at its tightest: logs are rate-limited (a few lines per job, not one per pass) and requests keep being served
--- workers: 2
--- timeout: 30
--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;

    init_by_lua_block {
        require "resty.core"
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_3, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }

    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "one"; }
    }

    lua_shared_dict flags 1m;
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
    location = /which {
        content_by_lua_block {
            local h, err = require("zedcup").create_handler("inst")
            if not h then ngx.say("none: ", err) return end
            local res, rerr = h:request({ path = "/" })
            if not res then ngx.say("failed: ", rerr) return end
            ngx.print(res:read_body())
            h:set_keepalive()
        }
    }

    # "yes" once this worker's background jobs run at the tight intervals
    location = /ready {
        content_by_lua_block {
            local st = require("zedcup.timer").stats()
            local ready = true
            for _, job in ipairs({ "healthcheck", "revive" }) do
                local j = st[job]
                if not (j and j.last_delay and j.last_delay <= 0.2) then ready = false end
            end
            ngx.print(ready and "yes" or "no")
        }
    }

    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local function ask(path)
                local sock = ngx.socket.tcp()
                assert(sock:connect("127.0.0.1", ngx.var.server_port))
                sock:send("GET " .. path .. " HTTP/1.0\r\nHost: x\r\n\r\n")
                local resp = sock:receive("*a")
                sock:close()
                return resp and resp:match("\r\n\r\n(.*)$")
            end
            -- polls until every worker answers `want` (or the deadline) -> true | nil
            local function until_all(path, want, deadline)
                local stop = ngx.now() + deadline
                local streak = 0
                while ngx.now() < stop do
                    -- a streak of answers through fresh connections reaches both workers
                    if ask(path) == want then streak = streak + 1 else streak = 0 end
                    if streak >= 10 then return true end
                    ngx.sleep(0.02)
                    ngx.update_time()
                end
                return nil
            end

            assert(zedcup.configure({ consul_wait_time = 1, watcher_interval = 1, cache_update_interval = 0.1,
                                      healthcheck_interval = 0.2, host_revive_interval = 0.2,
                                      session_renew_interval = 0.2 }))
            assert(zedcup.configure_instance("inst", { healthcheck = { interval = 0.2 }, pools = { { hosts = {
                { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
            ngx.say("served: ", until_all("/which", "one", 10))
            -- both workers' jobs have picked up the intervals: each will meet the outage
            ngx.say("ready: ", until_all("/ready", "yes", 10))

            local logfile = "$TEST_NGINX_SERVROOT/logs/error.log"
            local function log_size()
                local f = assert(io.open(logfile))
                local n = f:seek("end")
                f:close()
                return n
            end
            local from = log_size()
            ngx.shared.flags:set("down", true)
            local stop = ngx.now() + 4
            local served, asked = 0, 0
            while ngx.now() < stop do
                asked = asked + 1
                if ask("/which") == "one" then served = served + 1 end
                ngx.sleep(0.1)
                ngx.update_time()
            end
            ngx.shared.flags:delete("down")

            local f = assert(io.open(logfile))
            f:seek("set", from)
            local lines, per_job = 0, {}
            for line in f:lines() do
                if line:find("[zedcup]", 1, true) and (line:find("[warn]", 1, true) or line:find("[error]", 1, true)) then
                    lines = lines + 1
                    local job = line:match("%[zedcup%] ([^:]+):") or "?"
                    per_job[job] = (per_job[job] or 0) + 1
                end
            end
            f:close()
            local worst, worst_job = 0, nil
            for job, n in pairs(per_job) do
                ngx.log(ngx.NOTICE, "outage log lines of ", job, ": ", n)
                if n > worst then worst, worst_job = n, job end
            end
            ngx.say("served during the outage: ", served == asked, " (", served, "/", asked, ")")
            ngx.say("something was logged: ", lines > 0)
            -- each job of each worker: its first failure, and a changed message at most
            ngx.say("at most 4 lines per job (2 workers) in 4 s: ", worst <= 4, " (", worst_job, ": ", worst, ")")
            ngx.say("recovered: ", zedcup.configure_instance("inst", { pools = { { hosts = {
                { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 } } } } }))
        }
    }
--- request
GET /t
--- response_body_like
^served: true
ready: true
served during the outage: true \(\d+/\d+\)
something was logged: true
at most 4 lines per job \(2 workers\) in 4 s: true \(.*\)
recovered: true
$
