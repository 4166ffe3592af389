# The health check kinds, one file each under lua/zedcup/check/: tcp (a
# connection opens), agent (haproxy's agent-check protocol) and custom
# (a registered function), called directly.

__DATA__

=== TEST 1: tcp passes when a connection opens, by address, by name (resolved) and on hc.port; fails with the reason otherwise
--- http_config
    lua_socket_log_errors off;
--- config
    location = /t {
        content_by_lua_block {
            local tcp = require "zedcup.check.tcp"
            local pool = { timeout = 500, read_timeout = 500 }
            local port = $TEST_NGINX_SERVER_PORT
            ngx.say("by address: ", tcp.check({ host = "127.0.0.1", port = port }, {}, pool))
            ngx.say("by name: ", tcp.check({ host = "localhost", port = port }, {}, pool))
            ngx.say("hc.port: ", tcp.check({ host = "127.0.0.1", port = 1 }, { port = port }, pool))
            ngx.say("closed: ", tcp.check({ host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 }, {}, pool))
            local ok, err = tcp.check({ host = "no-such-host.invalid", port = port }, {}, pool)
            ngx.say("unknown name: ", ok, " ", err:match("^could not resolve no%-such%-host%.invalid") ~= nil)
        }
    }
--- request
GET /t
--- response_body
by address: true
by name: true
hc.port: true
closed: falsecould not connect: connection refused
unknown name: false true
--- no_error_log
[error]

=== TEST 2: agent reads one line: up, NN%, drain, down, maint, combinations and garbage
--- http_config
    lua_socket_log_errors off;
--- config
    location = /agent {
        content_by_lua_block {
            -- an agent behind nginx: the check sends "GET /agent?r=<reply> ..." (hc.send),
            -- the raw socket answers the bare line
            local sock = assert(ngx.req.socket(true))
            local reply = ngx.var.arg_r:gsub("_", " ")
            sock:send(reply .. "\n")
        }
    }
    location = /t {
        content_by_lua_block {
            local agent = require "zedcup.check.agent"
            local pool = { timeout = 500, read_timeout = 1000 }
            local host = { host = "127.0.0.1", port = $TEST_NGINX_SERVER_PORT }
            for _, reply in ipairs({ "up", "50%", "up_75%", "drain", "down", "MAINT", "stopped",
                                     "ready,maxconn:10,25%", "what" }) do
                local ok, err, info = agent.check(host, { send = "GET /agent?r=" .. reply .. " HTTP/1.0\r\n\r\n" }, pool)
                ngx.say(reply, ": ", ok, " ", err or "-", " ", info and info.state or "-",
                        " ", info and info.weight or "-")
            end
            local ok, err = agent.check({ host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 }, {}, pool)
            ngx.say("closed: ", ok, " ", err)
        }
    }
--- request
GET /t
--- response_body
up: true - up -
50%: true - up 0.5
up_75%: true - up 0.75
drain: true - drain 0
down: false agent: down down -
MAINT: false agent: maint maint -
stopped: false agent: down down -
ready,maxconn:10,25%: true - up 0.25
what: false agent: unrecognised reply: what - -
closed: false could not connect: connection refused
--- no_error_log
[error]

=== TEST 3: custom runs the registered function (under pcall) and names what failed
--- config
    location = /t {
        content_by_lua_block {
            local custom = require "zedcup.check.custom"
            custom.register("even_port", function(host, hc)
                if host.port % 2 == 0 then return true end
                return false, "odd port " .. host.port
            end)
            custom.register("boom", function() error("kaboom", 0) end)
            custom.register("silent", function() return nil end)
            ngx.say(custom.check({ port = 80 }, { custom = "even_port" }))
            ngx.say(custom.check({ port = 81 }, { custom = "even_port" }))
            ngx.say(custom.check({ port = 80 }, { custom = "boom" }))
            ngx.say(custom.check({ port = 80 }, { custom = "silent" }))
            ngx.say(custom.check({ port = 80 }, { custom = "nope" }))
            ngx.say(pcall(custom.register, "", function() end))
            ngx.say(pcall(custom.register, "x", "not a function"))
        }
    }
--- request
GET /t
--- response_body_like
^true
falseodd port 81
falsecheck boom raised: kaboom
falsecheck silent failed
falseno check registered as nope
false.*check name must be a non-empty string \(got \)
false.*check must be a function \(got string\)
$
--- no_error_log
[error]
