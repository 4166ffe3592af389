# handler:request() as a stand-in for lua-resty-http's request(): what it
# returns, and that no HTTP object it gave up on is left open.

__DATA__

=== TEST 1: every HTTP object request() gives up on is closed (request errors, replaced bad responses, a second request() on the same handler); the one returned stays usable
--- timeout: 15
--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;

    init_by_lua_block {
        require "resty.core"
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 502 "bad gateway"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / { return 503 "unavailable"; }
    }
    server {
        # answers nothing: a request error (timeout) after the connect
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / { content_by_lua_block { ngx.sleep(2) } }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_4;
        location / { return 200 "fine"; }
    }
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local deps = require "zedcup.deps"
            -- every HTTP object the handler creates, kept to look at afterwards
            local real = deps.http
            local created = {}
            rawset(deps, "http", setmetatable({ new = function()
                local c = assert(real.new())
                created[#created + 1] = c
                return c
            end }, { __index = real }))
            local function open(c)
                -- a closed cosocket answers "closed"; an open one sends
                local ok, err = c.sock:send("")
                return ok ~= nil or err ~= "closed"
            end

            assert(zedcup.configure_instance("bad", { pools = {
                { name = "p", read_timeout = 200, max_errors = 100, hosts = {
                    { name = "502", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 },
                    { name = "silent", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_3, weight = 1 },
                    { name = "503", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 },
                } },
            } }))
            local h = assert(zedcup.create_handler("bad"))
            created = {}
            local res, err = h:request({ path = "/" })
            ngx.say("all failed: ", res.status, " ", err, " ", res:read_body())
            local still = {}
            for i, c in ipairs(created) do
                if open(c) then still[#still + 1] = i end
            end
            ngx.say("objects: ", #created >= 3, ", open: ", #still,
                    ", the returned one is open: ", #still == 1 and created[still[1]] == h.httpc)

            assert(zedcup.configure_instance("good", { pools = {
                { hosts = { { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_4 } } } } }))
            created = {}
            h = assert(zedcup.create_handler("good"))
            res = assert(h:request({ path = "/" }))
            ngx.say("first: ", res.status, " ", res:read_body())
            -- a second request() on the same handler, without set_keepalive():
            -- the first connection is closed, not left behind
            res = assert(h:request({ path = "/" }))
            ngx.say("second: ", res.status, " ", res:read_body(), " first closed: ", not open(created[1]),
                    " second open: ", open(created[2]))
            ngx.say("keepalive: ", h:set_keepalive())
            -- and after set_keepalive() a third request() is fine
            res = assert(h:request({ path = "/" }))
            ngx.say("third: ", res.status, " ", res:read_body(), " reused: ", h:get_reused_times())
            h:close()
            local n = 0
            for _, c in ipairs(created) do if open(c) then n = n + 1 end end
            ngx.say("open at the end: ", n)
        }
    }
--- request
GET /t
--- response_body_like
^all failed: 50[23] nil (bad gateway|unavailable)
objects: true, open: 1, the returned one is open: true
first: 200 fine
second: 200 fine first closed: true second open: true
keepalive: 1
third: 200 fine reused: 1
open at the end: 0
$
--- no_error_log
[error]
