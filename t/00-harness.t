# Self-tests of the t/ harness (zedctl.testnginx): each block proves one feature a
# block can use. Failing behaviour (unknown sections, truncated bodies, unexpected
# alerts...) is proven by tests/test_harness_*.py on temporary .t files.

__DATA__

=== TEST 1: a plain content_by_lua block answers and logs no error
--- config
    location = /t {
        content_by_lua_block {
            ngx.say("ok")
        }
    }
--- request
GET /t
--- response_body
ok
--- no_error_log
[error]



=== TEST 2: more_headers are sent, Host and Connection: close are defaulted
--- config
    location = /t {
        content_by_lua_block {
            local h = ngx.req.get_headers()
            ngx.say("x-foo: ", h["x-foo"])
            ngx.say("x-bar: ", h["x-bar"])
            ngx.say("host: ", h["host"])
            ngx.say("connection: ", h["connection"])
        }
    }
--- request
GET /t
--- more_headers
X-Foo: foo value
X-Bar: 42
--- response_body
x-foo: foo value
x-bar: 42
host: localhost
connection: close



=== TEST 3: a request body is sent with its Content-Length, without the section's final newline
--- config
    location = /t {
        content_by_lua_block {
            ngx.req.read_body()
            local body = ngx.req.get_body_data()
            ngx.say("length: ", ngx.var.http_content_length)
            ngx.say("body: [", body, "]")
        }
    }
--- request
POST /t
hello
world
--- response_body
length: 11
body: [hello
world]



=== TEST 4: response_headers checks values and, with !Name, absence
--- config
    location = /t {
        content_by_lua_block {
            ngx.header["X-Zed"] = "cup"
            ngx.header["Cache-Control"] = "no-store"
            ngx.say("ok")
        }
    }
--- request
GET /t
--- response_headers
X-Zed: cup
Cache-Control: no-store
Content-Type: text/plain
!X-Absent
!Content-Length



=== TEST 5: error_code checks the status; the default location / answers from the html dir
--- request
GET /no-such-file.html
--- error_code: 404
--- response_body_like: 404 Not Found



=== TEST 6: error_log finds a message logged by a timer after the response (polled, not slept)
--- config
    location = /t {
        content_by_lua_block {
            assert(ngx.timer.at(0.3, function()
                ngx.log(ngx.WARN, "late message from timer")
            end))
            ngx.say("scheduled")
        }
    }
--- request
GET /t
--- response_body
scheduled
--- error_log
late message from timer
--- no_error_log
[error]



=== TEST 7: error_log and no_error_log take several lines, each checked on its own
--- config
    location = /t {
        content_by_lua_block {
            ngx.log(ngx.ERR, "first thing failed: bad value 7")
            ngx.log(ngx.INFO, "second thing, info only")
            ngx.say("ok")
        }
    }
--- request
GET /t
--- response_body
ok
--- error_log
first thing failed: bad value 7
second thing, info only
--- no_error_log
[crit]
third thing



=== TEST 8: the re filter makes error_log lines regular expressions
--- config
    location = /t {
        content_by_lua_block {
            ngx.log(ngx.ERR, "request id=", ngx.var.connection, " done")
            ngx.say("ok")
        }
    }
--- request
GET /t
--- error_log re
request id=\d+ done, client
--- no_error_log re
request id=\D+ done



=== TEST 9: grep_error_log collects every match, grep_error_log_out compares them in order
--- config
    location = /t {
        content_by_lua_block {
            for i = 1, 3 do
                ngx.log(ngx.WARN, "tick ", i)
            end
            ngx.say("ok")
        }
    }
--- request
GET /t
--- grep_error_log re
tick \d
--- grep_error_log_out
tick 1
tick 2
tick 3



=== TEST 10: $TEST_NGINX_* variables are substituted in every section, including the request
--- config
    location = /port {
        return 200 "port=$server_port servroot=$TEST_NGINX_SERVROOT\n";
    }
--- request
GET /port?p=$TEST_NGINX_SERVER_PORT
--- response_body_like chomp
^port=$TEST_NGINX_SERVER_PORT servroot=/.+$



=== TEST 11: the variables are in nginx's environment too (env lines), the prefix is fresh
--- config
    location = /t {
        content_by_lua_block {
            ngx.say(os.getenv("TEST_NGINX_SERVER_PORT") == ngx.var.server_port)
            ngx.say(os.getenv("TEST_NGINX_REPO") == "$TEST_NGINX_REPO")
            ngx.say(os.getenv("TEST_NGINX_HTML_DIR") == "$TEST_NGINX_SERVROOT/html")
            ngx.say(os.getenv("TEST_NGINX_NODE"))
            ngx.say(("$TEST_ZEDCUP_PREFIX"):match("^zt/%x%x%x%x%x%x%x%x$") ~= nil)
        }
    }
--- request
GET /t
--- response_body
true
true
true
1
true



=== TEST 12: $TEST_NGINX_RAND_PORT_N are free ports for extra servers
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "backend 1\n"; }
    }
    server {
        listen 127.0.0.1:${TEST_NGINX_RAND_PORT_2};
        location / { return 200 "backend 2\n"; }
    }
--- config
    location /b1 { proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_1; }
    location /b2 { proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_2; }
--- pipelined_requests
GET /b1
GET /b2
--- response_body
backend 1
backend 2
--- no_error_log
[error]



=== TEST 13: pipelined_requests go over one connection, error_code per response
--- config
    location = /a { return 200 "a$connection\n"; }
    location = /gone { return 410; }
--- pipelined_requests
GET /a
GET /gone
HEAD /a
--- error_code
200
410
200
--- response_body_like
^a(\d+)\n<html>.*410 Gone.*</html>\r?\n$



=== TEST 14: chomp drops the final newline of response_body
--- config
    location = /t {
        content_by_lua_block {
            ngx.print("no newline")
        }
    }
--- request
GET /t
--- response_body chomp
no newline



=== TEST 15: main_config goes to the top level of nginx.conf
--- main_config
    env ZEDCUP_HARNESS_CHECK=from-main-config;
--- config
    location = /t {
        content_by_lua_block {
            ngx.say(os.getenv("ZEDCUP_HARNESS_CHECK"))
        }
    }
--- request
GET /t
--- response_body
from-main-config



=== TEST 16: an [alert] listed in error_log is expected, not a failure
--- config
    location = /t {
        content_by_lua_block {
            ngx.log(ngx.ALERT, "expected alert")
            ngx.say("ok")
        }
    }
--- request
GET /t
--- error_log
expected alert



=== TEST 17: abort: a request slower than the timeout is not a failure
--- config
    location = /t {
        content_by_lua_block {
            ngx.sleep(2)
            ngx.say("too late")
        }
    }
--- request
GET /t
--- timeout: 300ms
--- abort
--- no_error_log
[error]



=== TEST 18: wait sleeps before the log checks
--- config
    location = /t {
        content_by_lua_block {
            assert(ngx.timer.at(0.1, function() ngx.log(ngx.WARN, "after wait") end))
            ngx.say("ok")
        }
    }
--- request
GET /t
--- wait: 0.2
--- error_log
after wait



=== TEST 19: SKIP skips a block (this one would fail)
--- SKIP
--- config
    location = /t { return 500; }
--- request
GET /t
--- response_body
never



=== TEST 20: workers: 2 answers from two different worker pids over several connections
--- workers: 2
--- config
    location = /pid {
        content_by_lua_block { ngx.print(ngx.worker.pid()) }
    }
    location = /t {
        content_by_lua_block {
            local pids, n = {}, 0
            for _ = 1, 40 do
                local sock = ngx.socket.tcp()
                assert(sock:connect("127.0.0.1", $TEST_NGINX_SERVER_PORT))
                assert(sock:send("GET /pid HTTP/1.0\r\nHost: localhost\r\n\r\n"))
                local resp = assert(sock:receive("*a"))
                sock:close()
                local pid = resp:match("\r\n\r\n(%d+)$")
                if pid and not pids[pid] then
                    pids[pid] = true
                    n = n + 1
                end
                if n == 2 then break end
            end
            ngx.say("workers: ", ngx.worker.count())
            ngx.say("distinct pids: ", n)
            ngx.say("master: ", require("ngx.process").get_master_pid() ~= nil)
        }
    }
--- request
GET /t
--- response_body
workers: 2
distinct pids: 2
master: true
--- no_error_log
[error]



=== TEST 21: nodes: 2 starts two servers; the request goes to node 1, which calls node 2
--- nodes: 2
--- config
    location = /whoami {
        return 200 "node $TEST_NGINX_NODE on $TEST_NGINX_SERVER_PORT\n";
    }
    location = /t {
        content_by_lua_block {
            ngx.log(ngx.WARN, "node $TEST_NGINX_NODE handles /t")
            local sock = ngx.socket.tcp()
            assert(sock:connect("127.0.0.1", $TEST_NGINX_NODE_PORT_2))
            assert(sock:send("GET /whoami HTTP/1.0\r\nHost: localhost\r\n\r\n"))
            local resp = assert(sock:receive("*a"))
            ngx.say("me: node $TEST_NGINX_NODE")
            ngx.print("other: ", resp:match("\r\n\r\n(.*)$"))
            ngx.say($TEST_NGINX_NODE_PORT_1 == ngx.var.server_port + 0)
        }
    }
--- request
GET /t
--- response_body_like chomp
\Ame: node 1\nother: node 2 on \d+\ntrue\n\Z
--- error_log
node 1 handles /t
--- no_error_log
node 2 handles /t
[error]



=== TEST 22: Consul is reachable from Lua on the CONSUL_HOST and CONSUL_PORT variables
--- config
    location = /t {
        content_by_lua_block {
            local function call(method, path, body)
                local sock = ngx.socket.tcp()
                sock:settimeout(3000)
                local ok, err = sock:connect("$TEST_NGINX_CONSUL_HOST", $TEST_NGINX_CONSUL_PORT)
                if not ok then
                    return nil, "connect to consul failed: " .. err
                end
                local token = "$TEST_NGINX_CONSUL_TOKEN"
                local req = method .. " " .. path .. " HTTP/1.0\r\nHost: consul\r\n"
                    .. (token ~= "" and ("X-Consul-Token: " .. token .. "\r\n") or "")
                    .. "Content-Length: " .. #(body or "") .. "\r\n\r\n" .. (body or "")
                assert(sock:send(req))
                local resp = assert(sock:receive("*a"))
                sock:close()
                -- a real `consul agent -dev` ends its JSON answers with a newline
                local body = resp:match("\r\n\r\n(.*)$"):gsub("\n$", "")
                return resp:match("^HTTP/1%.%d (%d+)"), body
            end
            local key = "/v1/kv/$TEST_ZEDCUP_PREFIX/harness"
            ngx.say("put: ", call("PUT", key, "hello"))
            ngx.say("get: ", call("GET", key .. "?raw"))
            ngx.say("delete: ", call("DELETE", key))
            ngx.say("gone: ", call("GET", key))
        }
    }
--- request
GET /t
--- response_body
put: 200true
get: 200hello
delete: 200true
gone: 404
--- no_error_log
[error]



=== TEST 23: the harness's readiness probe (a connection closed unused) is invisible to the checks
--- config
    location = /t { return 200 "ok\n"; }
--- request
GET /t
--- no_error_log
client closed connection while waiting for request
127.0.0.2



=== TEST 24: grep_error_log without re is a plain substring, [ and all
--- config
    location = /t {
        content_by_lua_block {
            ngx.log(ngx.WARN, "[zedcup] one")
            ngx.log(ngx.WARN, "[zedcup] two [zedcup] three")
            ngx.say("ok")
        }
    }
--- request
GET /t
--- grep_error_log chomp
[zedcup]
--- grep_error_log_out
[zedcup]
[zedcup]
[zedcup]



=== TEST 25: workers and nodes combine: two nodes of two workers each
--- nodes: 2
--- workers: 2
--- config
    location = /count {
        content_by_lua_block { ngx.say(ngx.worker.count(), " workers on node $TEST_NGINX_NODE") }
    }
    location = /t {
        content_by_lua_block {
            local sock = ngx.socket.tcp()
            assert(sock:connect("127.0.0.1", $TEST_NGINX_NODE_PORT_2))
            assert(sock:send("GET /count HTTP/1.0\r\n\r\n"))
            local resp = assert(sock:receive("*a"))
            ngx.say(ngx.worker.count(), " workers on node $TEST_NGINX_NODE")
            ngx.print(resp:match("\r\n\r\n(.*)$"))
        }
    }
--- request
GET /t
--- response_body
2 workers on node 1
2 workers on node 2
--- no_error_log
[error]
