# zedcup.http: the cosocket HTTP/1.x client (lua-resty-http's API).
# Backends are extra servers in http_config: nginx+Lua for ordinary HTTP, and
# raw request sockets (ngx.req.socket(true)) for hand-crafted bytes.

__DATA__

=== TEST 1: a keepalive connection is reused by the next request
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.header["X-Conn-Requests"] = ngx.var.connection_requests
                ngx.say("hello ", ngx.var.uri)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            for i = 1, 2 do
                local httpc = assert(http.new())
                local ok, err = httpc:connect({ host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 })
                ngx.say("connect: ", ok, " ", err)
                ngx.say("reused: ", httpc:get_reused_times())
                local res = assert(httpc:request({ path = "/a" .. i }))
                ngx.say(res.status, " ", res.reason, " ", res.headers["content-type"], " ",
                        res.headers["X-CONN-REQUESTS"], " has_body=", res.has_body)
                ngx.say(res:read_body())
                ngx.say("keepalive: ", httpc:set_keepalive())
            end
        }
    }
--- request
GET /t
--- response_body
connect: true nil
reused: 0
200 OK text/plain 1 has_body=true
hello /a1

keepalive: 1
connect: true nil
reused: 1
200 OK text/plain 2 has_body=true
hello /a2

keepalive: 1
--- no_error_log
[error]



=== TEST 2: query (string or table), Host, methods and repeated headers both ways
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                local h = ngx.req.get_headers()
                local multi = h["x-multi"]
                if type(multi) == "table" then
                    multi = table.concat(multi, "|")
                end
                ngx.header["X-Rep"] = { "a", "b" }
                ngx.header["Set-Cookie"] = { "c=1", "d=2", "e=3" }
                ngx.say(ngx.req.get_method(), " ", ngx.var.request_uri, " host=", h.host,
                        " multi=", multi, " ua=", h["user-agent"])
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            local function show(params)
                local res, err = httpc:request(params)
                if not res then
                    ngx.say("request failed: ", err)
                    return
                end
                ngx.print(res:read_body())
                return res
            end
            show({ path = "/q", query = "a=1&b=%20x" })
            show({ path = "/q", query = "?a=2" })
            show({ path = "/q?x=1", query = { b = { "1", "2" } } })
            show({ path = "/q", query = { ["k y"] = "v&w" } })
            show({ path = "/q", query = {} })
            show({ method = "DELETE", path = "/d", headers = { host = "example.com", ["User-Agent"] = "me/1" } })
            local res = show({ path = "/m", headers = { ["X-Multi"] = { "one", "two", "three" } } })
            local rep = res.headers["x-rep"]
            ngx.say("x-rep: ", type(rep), " ", table.concat(rep, ","))
            ngx.say("set-cookie: ", table.concat(res.headers["SET-COOKIE"], ","))
            ngx.say("absent: ", res.headers["X-Nope"])
            -- writes under any spelling land on the same entry
            res.headers["x-rep"] = "z"
            ngx.say("after write: ", res.headers["X-Rep"])
            local n = 0
            for k in pairs(res.headers) do
                if k:lower() == "x-rep" then n = n + 1 end
            end
            ngx.say("x-rep keys: ", n)
            ngx.say(httpc:request({ path = "/bad path" }))
            ngx.say(httpc:request({ path = "/h", headers = { ["X-Evil"] = "a\r\nInjected: 1" } }))
        }
    }
--- request
GET /t
--- response_body_like chomp
^GET /q\?a=1&b=%20x host=127.0.0.1:\d+ multi=nil ua=zedcup.http/[\d.]+
GET /q\?a=2 host=127.0.0.1:\d+ multi=nil ua=zedcup.http/[\d.]+
GET /q\?x=1&b=1&b=2 host=127.0.0.1:\d+ multi=nil ua=zedcup.http/[\d.]+
GET /q\?k%20y=v%26w host=127.0.0.1:\d+ multi=nil ua=zedcup.http/[\d.]+
GET /q host=127.0.0.1:\d+ multi=nil ua=zedcup.http/[\d.]+
DELETE /d host=example.com multi=nil ua=me/1
GET /m host=127.0.0.1:\d+ multi=one\|two\|three ua=zedcup.http/[\d.]+
x-rep: table a,b
set-cookie: c=1,d=2,e=3
absent: nil
after write: z
x-rep keys: 1
nilsend request failed: invalid path "/bad path"
nilsend request failed: invalid value for header X-Evil
$
--- no_error_log
[error]



=== TEST 3: request bodies: string, table of strings, iterator (chunked by us or sized); with Transfer-Encoding: chunked the caller frames
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.req.read_body()
                ngx.say(ngx.req.get_method(), " cl=", ngx.var.http_content_length,
                        " te=", ngx.var.http_transfer_encoding,
                        " body=[", ngx.req.get_body_data(), "]")
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local httpc = http.new()
            assert(httpc:connect({ host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 }))
            local function iter(parts)
                local i = 0
                return function()
                    i = i + 1
                    return parts[i]
                end
            end
            local function show(params)
                local res, err = httpc:request(params)
                if not res then
                    ngx.say("request failed: ", err)
                    return
                end
                ngx.print(res:read_body())
            end
            show({ method = "POST", body = "a string" })
            show({ method = "PUT", body = { "a ", "table", "", " of strings" } })
            show({ method = "POST", body = iter({ "an ", "", "iterator" }) })
            show({ method = "POST", body = iter({ "sized ", "iterator" }),
                   headers = { ["Content-Length"] = 14 } })
            show({ method = "POST", body = "7\r\nchunked\r\nb\r\n by request\r\n0\r\n\r\n",
                   headers = { ["Transfer-Encoding"] = "chunked" } })
            show({ method = "POST", body = { "8\r\nchunked \r\n", "5\r\ntable\r\n", "0\r\n\r\n" },
                   headers = { ["transfer-encoding"] = "chunked" } })
            show({ method = "POST", body = iter({ "3\r\nit", "e\r\n", "0\r\n\r\n" }),
                   headers = { ["Transfer-Encoding"] = "chunked" } })
            show({ method = "POST" })
            show({ method = "POST", body = "" })
            ngx.say("reused on one connection: ", httpc:set_keepalive())

            -- an iterator that fails aborts the request
            httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            local n = 0
            ngx.say(httpc:request({ method = "POST", body = function()
                n = n + 1
                if n == 1 then return "first" end
                return nil, "disk on fire"
            end }))
            ngx.say(httpc:set_keepalive())

            -- a sized iterator that gives fewer bytes than promised
            httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            ngx.say(httpc:request({ method = "POST", body = iter({ "short" }),
                                    headers = { ["Content-Length"] = "10" } }))

            -- programmer errors raise
            ngx.say(pcall(httpc.request, httpc, { version = 1.0, body = iter({ "x" }) }))
            ngx.say(pcall(httpc.request, httpc, { body = 42 }))
            ngx.say(pcall(httpc.request, httpc, { body = "abc", headers = { ["Content-Length"] = 5 } }))
            ngx.say(pcall(httpc.request, httpc, { version = 2 }))
            ngx.say(pcall(httpc.request, httpc, "GET /"))
        }
    }
--- request
GET /t
--- response_body_like chomp
^POST cl=8 te=nil body=\[a string\]
PUT cl=18 te=nil body=\[a table of strings\]
POST cl=nil te=chunked body=\[an iterator\]
POST cl=14 te=nil body=\[sized iterator\]
POST cl=nil te=chunked body=\[chunked by request\]
POST cl=nil te=chunked body=\[chunked table\]
POST cl=nil te=chunked body=\[ite\]
POST cl=0 te=nil body=\[nil\]
POST cl=0 te=nil body=\[nil\]
reused on one connection: 1
nilread request body failed: disk on fire
nilkeepalive refused: not connected
nilsend request body failed: sent 5 bytes but Content-Length says 10
false.*params.body: an iterator body over HTTP/1.0 needs a Content-Length header
false.*params.body must be a string, a table of strings or an iterator, got number
false.*params.body is 3 bytes but Content-Length says 5
false.*params.version must be 1.0 or 1.1, got 2
false.*params must be a table, got string
$
--- no_error_log
[alert]



=== TEST 4: chunked response with extensions and trailers, read byte-exact, then keepalive
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                local t = require "blocks_t"
                local sock = assert(ngx.req.socket(true))
                assert(sock:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 .. "5\r\nhello\r\n"
                                 .. "7;name=val\r\n, world\r\n"
                                 .. "0\r\nX-Checksum: abc\r\nXY:  two \r\nX-Checksum: def\r\n\r\n"))
                -- the client's next request must arrive on the same connection,
                -- with nothing lost or left over in between
                ngx.log(ngx.WARN, "second request line: ", t.skip_head(sock))
                assert(sock:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 .. "4\r\nnext\r\n0\r\n\r\n"))
                t.skip_head(sock)
                assert(sock:send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast"))
                -- hold the connection until the client drops it
                t.hold_open(sock)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            local res = assert(httpc:request({ path = "/first" }))
            ngx.say(res.status, " has_body=", res.has_body, " te=", res.headers["transfer-encoding"])
            local reader = res.body_reader
            repeat
                local chunk, err = reader(3)
                if chunk then
                    ngx.say("chunk [", chunk, "]")
                elseif err then
                    ngx.say("err ", err)
                end
            until not chunk
            ngx.say("before read_trailers: ", res.headers["x-checksum"])
            local trailers = assert(res:read_trailers())
            local names = {}
            for k, v in pairs(trailers) do
                names[#names + 1] = "[" .. k .. "]=[" .. (type(v) == "table" and table.concat(v, "|") or v) .. "]"
            end
            table.sort(names)
            ngx.say("trailers: ", table.concat(names, " "))
            ngx.say("merged: ", table.concat(res.headers["X-CHECKSUM"], "|"), " ", res.headers["xy"])

            -- an empty trailer section, read through read_body
            res = assert(httpc:request({ path = "/second" }))
            ngx.say(res:read_body(), " trailers: ", next(res:read_trailers()))

            res = assert(httpc:request({ path = "/third" }))
            ngx.say(res:read_body(), " ", res.headers["content-length"])
            ngx.say("keepalive: ", httpc:set_keepalive())
            httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            ngx.say("pooled: ", httpc:get_reused_times())
            httpc:close()
        }
    }
--- request
GET /t
--- response_body
200 has_body=true te=chunked
chunk [hel]
chunk [lo]
chunk [, w]
chunk [orl]
chunk [d]
before read_trailers: nil
trailers: [X-Checksum]=[abc|def] [XY]=[two]
merged: abc|def two
next trailers: nil
last 4
keepalive: 1
pooled: 1
--- error_log
second request line: GET /second HTTP/1.1
--- no_error_log
[error]



=== TEST 5: broken servers: early close, bad status line, bad framing => errors, no pooling
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                local replies = {
                    ["/no-status"] = "",
                    ["/bad-status"] = "HTTP/1.1 abc\r\n\r\n",
                    ["/long-status"] = "HTTP/1.1 2000 OK\r\n\r\n",
                    ["/short-status"] = "HTTP/1.1 20\r\n\r\n",
                    ["/http2-status"] = "HTTP/2.0 200 OK\r\n\r\n",
                    ["/headers-cut"] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
                    ["/bad-header"] = "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                    ["/short-length"] = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
                    ["/short-chunk"] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
                    ["/no-last-chunk"] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                    ["/bad-chunk"] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                    ["/chunk-no-crlf"] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
                    ["/trailers-cut"] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n",
                    ["/bad-length"] = "HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n",
                    ["/two-lengths"] = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                }
                local sock = assert(ngx.req.socket(true))
                assert(sock:send(replies[ngx.var.uri]))
                -- returning closes the connection
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            for _, path in ipairs({ "/no-status", "/bad-status", "/long-status",
                                    "/short-status", "/http2-status", "/headers-cut", "/bad-header",
                                    "/short-length", "/short-chunk", "/no-last-chunk",
                                    "/bad-chunk", "/chunk-no-crlf", "/trailers-cut",
                                    "/bad-length", "/two-lengths" }) do
                local httpc = http.new()
                httpc:set_timeout(2000)
                assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
                local res, err = httpc:request({ path = path })
                if res then
                    res, err = res:read_body()
                end
                local ok, kerr = httpc:set_keepalive()
                ngx.say(path, ": ", err, " / ", kerr)
            end
        }
    }
--- request
GET /t
--- response_body
/no-status: read status line failed: closed / keepalive refused: not connected
/bad-status: read status line failed: invalid status line "HTTP/1.1 abc" / keepalive refused: not connected
/long-status: read status line failed: invalid status line "HTTP/1.1 2000 OK" / keepalive refused: not connected
/short-status: read status line failed: invalid status line "HTTP/1.1 20" / keepalive refused: not connected
/http2-status: read status line failed: invalid status line "HTTP/2.0 200 OK" / keepalive refused: not connected
/headers-cut: read headers failed: closed / keepalive refused: not connected
/bad-header: read headers failed: invalid field line "no colon here" / keepalive refused: not connected
/short-length: read body failed: closed / keepalive refused: not connected
/short-chunk: read body failed: closed / keepalive refused: not connected
/no-last-chunk: read body failed: closed / keepalive refused: not connected
/bad-chunk: read body failed: invalid chunk size line "zz" / keepalive refused: not connected
/chunk-no-crlf: read body failed: chunk not followed by CRLF / keepalive refused: not connected
/trailers-cut: read trailers failed: closed / keepalive refused: not connected
/bad-length: read headers failed: invalid Content-Length "12abc" / keepalive refused: not connected
/two-lengths: read headers failed: conflicting Content-Length values / keepalive refused: not connected
--- no_error_log
[alert]



=== TEST 6: HEAD, 204 and 304 have no body; the connection stays usable
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location = /head {
            content_by_lua_block {
                ngx.header["Content-Length"] = 4
                ngx.header["X-Conn-Requests"] = ngx.var.connection_requests
                ngx.print("body")
            }
        }
        location = /204 {
            content_by_lua_block { ngx.exit(204) }
        }
        location = /304 {
            content_by_lua_block {
                ngx.header["ETag"] = '"v1"'
                ngx.exit(304)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local httpc = http.new()
            httpc:set_timeout(2000)
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            for _, req in ipairs({ { "HEAD", "/head" }, { "GET", "/204" }, { "GET", "/304" },
                                   { "HEAD", "/head" }, { "GET", "/head" } }) do
                local res, err = httpc:request({ method = req[1], path = req[2] })
                if not res then
                    ngx.say(err)
                    return
                end
                local body, berr = res:read_body()
                ngx.say(req[1], " ", req[2], ": ", res.status, " has_body=", res.has_body,
                        " body=[", body, "] cl=", res.headers["content-length"],
                        " n=", res.headers["x-conn-requests"])
            end
            ngx.say("keepalive: ", httpc:set_keepalive())
        }
    }
--- request
GET /t
--- response_body
HEAD /head: 200 has_body=false body=[] cl=4 n=1
GET /204: 204 has_body=false body=[] cl=nil n=nil
GET /304: 304 has_body=false body=[] cl=0 n=nil
HEAD /head: 200 has_body=false body=[] cl=4 n=4
GET /head: 200 has_body=true body=[body] cl=4 n=5
keepalive: 1
--- no_error_log
[error]



=== TEST 7: HTTP/1.0 keepalive rules, both for requests and for responses
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.header["X-Conn-Requests"] = ngx.var.connection_requests
                ngx.say("version ", ngx.req.http_version())
            }
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / {
            content_by_lua_block {
                local t = require "blocks_t"
                local sock = assert(ngx.req.socket(true))
                if ngx.var.arg_keep then
                    assert(sock:send("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok"))
                else
                    assert(sock:send("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
                end
                -- hold the connection until the client drops it
                t.hold_open(sock)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local function try(port, params)
                local httpc = http.new()
                assert(httpc:connect("127.0.0.1", port))
                local res = assert(httpc:request(params))
                local body = assert(res:read_body())
                ngx.say(body:gsub("\n", ""), " connection=", res.headers["connection"],
                        " n=", res.headers["x-conn-requests"], " keepalive: ", httpc:set_keepalive())
                if port == $TEST_NGINX_RAND_PORT_2 then
                    -- take a pooled connection back out and close it: the raw
                    -- backend waits for that
                    httpc = http.new()
                    assert(httpc:connect("127.0.0.1", port))
                    if httpc:get_reused_times() > 0 then
                        ngx.say("pooled, closing")
                    end
                    httpc:close()
                end
            end
            try($TEST_NGINX_RAND_PORT_1, { version = 1.0 })
            try($TEST_NGINX_RAND_PORT_1, { version = 1.0, headers = { Connection = "keep-alive" } })
            try($TEST_NGINX_RAND_PORT_1, { version = 1.0, headers = { Connection = "keep-alive" } })
            try($TEST_NGINX_RAND_PORT_1, { version = 1.1, headers = { Connection = "close" } })
            try($TEST_NGINX_RAND_PORT_2, { version = 1.1 })
            try($TEST_NGINX_RAND_PORT_2, { version = 1.1, query = "keep=1" })
        }
    }
--- request
GET /t
--- response_body
version 1 connection=close n=1 keepalive: 2connection must be closed
version 1 connection=keep-alive n=1 keepalive: 1
version 1 connection=keep-alive n=2 keepalive: 1
version 1.1 connection=close n=3 keepalive: 2connection must be closed
ok connection=nil n=nil keepalive: 2connection must be closed
ok connection=Keep-Alive n=nil keepalive: 1
pooled, closing
--- error_log
connection closed, not pooled: HTTP/1.0 request without keep-alive
connection closed, not pooled: request has Connection: close
connection closed, not pooled: HTTP/1.0 response without keep-alive
--- no_error_log
[error]



=== TEST 8: set_keepalive closes connections that cannot be reused: 2, "connection must be closed" (the protocol's reasons) or nil, err (unread body, no connection)
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location = /big {
            content_by_lua_block { ngx.print(string.rep("x", 10)) }
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        keepalive_requests 1;
        location / {
            content_by_lua_block { ngx.print("bye") }
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
        location / {
            content_by_lua_block {
                local sock = assert(ngx.req.socket(true))
                assert(sock:send("HTTP/1.1 200 OK\r\n\r\nuntil the end"))
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"

            -- body not fully read
            local httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            local res = assert(httpc:request({ path = "/big" }))
            ngx.say("partial read: ", res.body_reader(4))
            ngx.say("not fully read: ", httpc:set_keepalive())
            ngx.say("then: ", httpc:get_reused_times())
            ngx.say("stale reader: ", res.body_reader())
            -- a reader of an older response never reads a newer one
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            local res2 = assert(httpc:request({ path = "/big" }))
            ngx.say("old reader: ", res.body_reader())
            ngx.say("new body: ", res2:read_body(), " ", httpc:set_keepalive())

            -- a request on a connection whose previous body is unread fails
            httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            assert(httpc:request({ path = "/big" }))
            ngx.say("next request: ", httpc:request({ path = "/big" }))

            -- server says Connection: close
            httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_2))
            res = assert(httpc:request({ path = "/" }))
            ngx.say(res.headers["Connection"], " ", res:read_body(), ": ", httpc:set_keepalive())

            -- body delimited by the close
            httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_3))
            res = assert(httpc:request({ path = "/" }))
            ngx.say("has_body=", res.has_body, " [", res:read_body(), "]: ", httpc:set_keepalive())

            -- the same, read in pieces
            httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_3))
            res = assert(httpc:request({ path = "/" }))
            local parts = {}
            repeat
                local chunk = res.body_reader(5)
                parts[#parts + 1] = chunk
            until not chunk
            ngx.say(table.concat(parts, "|"), ": ", httpc:set_keepalive())

            -- closed by hand, or never connected
            httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            ngx.say("close: ", httpc:close())
            ngx.say("after close: ", httpc:set_keepalive())
            ngx.say("close again: ", httpc:close())
            ngx.say("request: ", httpc:request({}))
            ngx.say("reused: ", httpc:get_reused_times())
            ngx.say("fresh: ", http.new():set_keepalive())
        }
    }
--- request
GET /t
--- response_body
partial read: xxxx
not fully read: nilkeepalive refused: response body not fully read
then: nilget reused times failed: not connected
stale reader: nilread body failed: closed
old reader: nilread body failed: the connection has moved on to another request
new body: xxxxxxxxxx 1
next request: nilsend request failed: the previous response body was not fully read
close bye: 2connection must be closed
has_body=true [until the end]: 2connection must be closed
until| the |end: 2connection must be closed
close: 1
after close: nilkeepalive refused: not connected
close again: nilclose failed: not connected
request: nilsend request failed: not connected
reused: nilget reused times failed: not connected
fresh: nilkeepalive refused: not connected
--- error_log
connection closed, not pooled: response has Connection: close
connection closed, not pooled: response body delimited by connection close
--- no_error_log
[alert]



=== TEST 9: connect, send and read timeouts, and a refused connect
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        client_max_body_size 0;
        location = /slow {
            content_by_lua_block {
                ngx.sleep(0.5)
                ngx.say("late")
            }
        }
        location = /slow-body {
            content_by_lua_block {
                local sock = assert(ngx.req.socket(true))
                assert(sock:send("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
                ngx.sleep(0.5)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local ffi = require "ffi"
            local bit = require "bit"
            pcall(ffi.cdef, [[
                struct zc_sockaddr_in { uint16_t family; uint16_t port; uint32_t addr; char zero[8]; };
                int socket(int domain, int type, int protocol);
                int bind(int fd, const struct zc_sockaddr_in *addr, uint32_t len);
                int listen(int fd, int backlog);
                int close(int fd);
            ]])

            -- connect: a listener that never accepts; once its queue is full,
            -- SYNs go unanswered
            local port = $TEST_NGINX_RAND_PORT_2
            local fd = ffi.C.socket(2, 1, 0)
            local sa = ffi.new("struct zc_sockaddr_in")
            sa.family = 2
            sa.port = bit.bor(bit.rshift(port, 8), bit.lshift(bit.band(port, 0xff), 8))
            sa.addr = 0x0100007f
            assert(ffi.C.bind(fd, sa, ffi.sizeof(sa)) == 0, "bind")
            assert(ffi.C.listen(fd, 0) == 0, "listen")
            local conns, err = {}
            for _ = 1, 10 do
                local httpc = http.new()
                httpc:set_timeouts(100, 1000, 1000)
                local ok
                ok, err = httpc:connect("127.0.0.1", port)
                if not ok then
                    break
                end
                conns[#conns + 1] = httpc
            end
            ngx.say(err)
            for _, c in ipairs(conns) do
                c:close()
            end
            ffi.C.close(fd)

            -- send: the backend does not read the body
            local httpc = http.new()
            httpc:set_timeouts(1000, 100, 1000)
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            local mb = string.rep("x", 1024 * 1024)
            local n = 0
            ngx.say(httpc:request({ method = "POST", path = "/slow",
                                    headers = { ["Content-Length"] = 64 * 1024 * 1024 },
                                    body = function()
                                        n = n + 1
                                        if n <= 64 then return mb end
                                    end }))
            ngx.say("then: ", httpc:set_keepalive())

            -- read: the status line comes too late
            httpc = http.new()
            httpc:set_timeouts(1000, 1000, 100)
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            ngx.say(httpc:request({ path = "/slow" }))

            -- read: the body stalls
            httpc = http.new()
            httpc:set_timeout(100)
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            local res = assert(httpc:request({ path = "/slow-body" }))
            ngx.say(res:read_body())

            -- refused
            ngx.say(http.new():connect({ host = "127.0.0.1", port = 1 }))
        }
    }
--- request
GET /t
--- response_body
connect to 127.0.0.1:$TEST_NGINX_RAND_PORT_2 failed: timeout
nilsend request body failed: timeout
then: nilkeepalive refused: not connected
nilread status line failed: timeout
nilread body failed: timeout
nilconnect to 127.0.0.1:1 failed: connection refused
--- error_log
lua tcp socket connect timed out



=== TEST 10: unix domain socket backend: connect, keepalive, request_uri
--- http_config
    server {
        listen unix:$TEST_NGINX_SERVROOT/http-test.sock;
        location / {
            content_by_lua_block {
                ngx.say("unix ", ngx.var.request_uri, " host=", ngx.var.http_host,
                        " n=", ngx.var.connection_requests)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local sock = "unix:$TEST_NGINX_SERVROOT/http-test.sock"
            local httpc = http.new()
            assert(httpc:connect({ host = sock }))
            local res = assert(httpc:request({ path = "/a" }))
            ngx.print(res:read_body())
            assert(httpc:set_keepalive())

            httpc = http.new()
            assert(httpc:connect(sock))
            ngx.say("reused: ", httpc:get_reused_times())
            res = assert(httpc:request({ path = "/b" }))
            ngx.print(res:read_body())
            assert(httpc:set_keepalive())

            res = assert(http.new():request_uri("http://" .. sock .. ":/c?d=e"))
            ngx.print(res.status, " ", res.body)

        }
    }
--- request
GET /t
--- response_body
unix /a host=localhost n=1
reused: 1
unix /b host=localhost n=2
200 unix /c?d=e host=localhost n=3
--- no_error_log
[error]



=== TEST 11: get_client_body_reader streams the client's body to a backend
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.req.read_body()
                ngx.say("backend got cl=", ngx.var.http_content_length, " te=", ngx.var.http_transfer_encoding,
                        " [", ngx.req.get_body_data(), "]")
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local httpc = http.new()
            local reader, err = httpc:get_client_body_reader(5)
            assert(reader, err)
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            local pieces = 0
            local res = assert(httpc:request({
                method = "POST",
                path = "/",
                body = function()
                    local chunk, rerr = reader()
                    if chunk then
                        pieces = pieces + 1
                    end
                    return chunk, rerr
                end,
                headers = { ["Content-Length"] = ngx.var.http_content_length },
            }))
            ngx.print(res:read_body())
            ngx.say("pieces: ", pieces, " reader after the end: ", reader())
            ngx.say("keepalive: ", httpc:set_keepalive())
        }
    }
--- request
POST /t
the body of the client, 32 bytes
--- response_body
backend got cl=32 te=nil [the body of the client, 32 bytes]
pieces: 7 reader after the end: nil
keepalive: 1
--- no_error_log
[error]



=== TEST 12: get_client_body_reader also serves a chunked client body (de-chunked by nginx), in memory or spooled to disk
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        client_max_body_size 10m;
        location / {
            content_by_lua_block {
                ngx.req.read_body()
                local body = ngx.req.get_body_data()
                if not body then
                    local f = assert(io.open(ngx.req.get_body_file(), "rb"))
                    body = f:read("*a")
                    f:close()
                end
                ngx.say("backend got cl=", ngx.var.http_content_length, " te=", ngx.var.http_transfer_encoding,
                        " ", #body, " bytes [", body:sub(1, 20), "]")
            }
        }
    }
--- config
    client_body_buffer_size 16k;
    location = /proxy {
        content_by_lua_block {
            local http = require "zedcup.http"
            local httpc = http.new()
            local reader = assert(httpc:get_client_body_reader(1000))
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            local res = assert(httpc:request({ method = "POST", body = reader }))
            ngx.print(res:read_body())
            assert(httpc:set_keepalive())
        }
    }
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            for _, size in ipairs({ 30, 100000 }) do
                local piece = string.rep("0123456789", size / 10)
                local sent = false
                local res = assert(http.new():request_uri("http://127.0.0.1:$TEST_NGINX_SERVER_PORT/proxy", {
                    method = "POST",
                    body = function()
                        if sent then return nil end
                        sent = true
                        return piece
                    end,
                }))
                ngx.print(res.status, " ", res.body)
            end
        }
    }
--- request
GET /t
--- response_body
200 backend got cl=nil te=chunked 30 bytes [01234567890123456789]
200 backend got cl=nil te=chunked 100000 bytes [01234567890123456789]
--- error_log
a client request body is buffered to a temporary file
--- no_error_log
[error]



=== TEST 13: get_client_body_reader without a body returns nil
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            ngx.say("no body: ", http.new():get_client_body_reader())
            ngx.say(pcall(http.get_client_body_reader, http.new(), 0))
        }
    }
--- request
GET /t
--- response_body_like chomp
^no body: nil
false.*chunksize must be a positive number, got 0
$



=== TEST 14: request_uri: one-shot requests, keepalive between them, errors
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.req.read_body()
                ngx.header["X-Conn-Requests"] = ngx.var.connection_requests
                ngx.say(ngx.req.get_method(), " ", ngx.var.request_uri, " host=", ngx.var.http_host,
                        " [", ngx.req.get_body_data(), "]")
            }
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / {
            content_by_lua_block {
                local sock = assert(ngx.req.socket(true))
                assert(sock:send("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 .. "3\r\nabc\r\n0\r\nX-Digest: 42\r\n\r\n"))
            }
        }
    }
--- config
    location = /t {
        lua_socket_log_errors off;
        content_by_lua_block {
            local http = require "zedcup.http"
            local base = "http://127.0.0.1:$TEST_NGINX_RAND_PORT_1"
            local res = assert(http.new():request_uri(base .. "/a?b=c#frag"))
            ngx.print(res.status, " n=", res.headers["x-conn-requests"], " ", res.body)
            res = assert(http.new():request_uri(base .. "/p", {
                method = "POST", body = "payload", query = { x = "y" },
                keepalive_timeout = 10000, keepalive_pool = 4,
                headers = { ["Content-Type"] = "text/plain" },
            }))
            ngx.print(res.status, " n=", res.headers["x-conn-requests"], " ", res.body)
            res = assert(http.new():request_uri(base, { keepalive = false }))
            ngx.print(res.status, " n=", res.headers["x-conn-requests"], " ", res.body)
            res = assert(http.new():request_uri(base .. "/after-close", { path = "/override" }))
            ngx.print(res.status, " n=", res.headers["x-conn-requests"], " ", res.body)
            -- trailers are merged into the headers
            res = assert(http.new():request_uri("http://127.0.0.1:$TEST_NGINX_RAND_PORT_2/"))
            ngx.say(res.status, " ", res.body, " x-digest=", res.headers["x-digest"])
            ngx.say(http.new():request_uri("ftp://127.0.0.1/"))
            ngx.say(http.new():request_uri("http://127.0.0.1:1/"))
        }
    }
--- request
GET /t
--- response_body
200 n=1 GET /a?b=c host=127.0.0.1:$TEST_NGINX_RAND_PORT_1 [nil]
200 n=2 POST /p?x=y host=127.0.0.1:$TEST_NGINX_RAND_PORT_1 [payload]
200 n=3 GET / host=127.0.0.1:$TEST_NGINX_RAND_PORT_1 [nil]
200 n=1 GET /override host=127.0.0.1:$TEST_NGINX_RAND_PORT_1 [nil]
201 abc x-digest=42
nilbad uri: ftp://127.0.0.1/
nilconnect to 127.0.0.1:1 failed: connection refused
--- no_error_log
[error]



=== TEST 15: parse_uri: lua-resty-http's results (scheme-relative URIs, IPv6 hosts in brackets, "bad uri: <uri>")
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local httpc = http.new()
            local function show(uri, query_in_path)
                local parts, err = httpc:parse_uri(uri, query_in_path)
                if not parts then
                    ngx.say(err)
                    return
                end
                ngx.say(table.concat({ parts[1], parts[2], tostring(parts[3]), parts[4], parts[5] }, " | "))
            end
            show("http://example.com")
            show("https://example.com/")
            show("HTTP://Example.com:8080/a/b?c=d&e=f#frag")
            show("http://example.com:8080/a/b?c=d&e=f", false)
            show("http://user:pw@example.com/x")
            show("http://[::1]:81/v6")
            show("https://[::1]?q=1", false)
            show("http://unix:/tmp/a.sock:/p?q")
            show("http://unix:/tmp/a.sock")
            show("example.com/x")
            show("gopher://example.com/")
            show("http://example.com:0/")
            show("http://example.com:99999/")
            show("http://:80/")
            show("http:///example.com")
            show("//example.com")
            show("//example.com/foo/bar?a=1&b=2", false)
            show("//[0:0:0:0:0:0:0:0]?a=1&b=2", false)
            -- also callable as a plain function
            local parts = http.parse_uri("http://h/p?q", false)
            ngx.say(parts[2], " ", parts[4], " ", parts[5])
        }
    }
--- request
GET /t
--- response_body
http | example.com | 80 | / | 
https | example.com | 443 | / | 
http | Example.com | 8080 | /a/b?c=d&e=f | 
http | example.com | 8080 | /a/b | c=d&e=f
http | example.com | 80 | /x | 
http | [::1] | 81 | /v6 | 
https | [::1] | 443 | / | q=1
http | unix:/tmp/a.sock | nil | /p?q | 
http | unix:/tmp/a.sock | nil | / | 
bad uri: example.com/x
bad uri: gopher://example.com/
bad uri: http://example.com:0/
bad uri: http://example.com:99999/
bad uri: http://:80/
bad uri: http:///example.com
http | example.com | 80 | / | 
http | example.com | 80 | /foo/bar | a=1&b=2
http | [0:0:0:0:0:0:0:0] | 80 | / | a=1&b=2
h /p q



=== TEST 16: Expect: 100-continue sends the body only after 100 Continue
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location = /nginx {
            content_by_lua_block {
                ngx.req.read_body()
                ngx.say("nginx read [", ngx.req.get_body_data(), "]")
            }
        }
        location = /continue {
            content_by_lua_block {
                local t = require "blocks_t"
                local sock = assert(ngx.req.socket(true))
                -- an early hint first, then the go-ahead
                assert(sock:send("HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                                 .. "HTTP/1.1 100 Continue\r\n\r\n"))
                local body = assert(sock:receive(tonumber(ngx.var.http_content_length)))
                assert(sock:send("HTTP/1.1 200 OK\r\nContent-Length: " .. (#body + 6)
                                 .. "\r\n\r\nraw [" .. body .. "]"))
                -- hold the connection until the client drops it
                t.hold_open(sock)
            }
        }
        location = /refuse {
            content_by_lua_block {
                local sock = assert(ngx.req.socket(true))
                assert(sock:send("HTTP/1.1 417 Expectation Failed\r\nContent-Length: 4\r\n\r\nnope"))
                sock:settimeout(2000)
                local data, err, partial = sock:receive(1)
                ngx.log(ngx.WARN, "after refusal: data=", data, " err=", err, " partial=[", partial, "]")
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            for _, path in ipairs({ "/nginx", "/continue", "/refuse" }) do
                local httpc = http.new()
                httpc:set_timeout(3000)
                assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
                local res, err = httpc:request({
                    method = "POST", path = path, body = "the payload",
                    headers = { Expect = "100-continue" },
                })
                if not res then
                    ngx.say(err)
                else
                    ngx.say(path, ": ", res.status, " ", res:read_body(), " link=", res.headers["link"])
                    ngx.say("keepalive: ", httpc:set_keepalive())
                    httpc = http.new()
                    assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
                    httpc:close()
                end
            end
        }
    }
--- request
GET /t
--- response_body
/nginx: 200 nginx read [the payload]
 link=nil
keepalive: 1
/continue: 200 raw [the payload] link=nil
keepalive: 1
/refuse: 417 nope link=nil
keepalive: 2connection must be closed
--- error_log
after refusal: data=nil err=closed partial=[]



=== TEST 17: response header parsing: obs-fold, empty values, whitespace, no reason phrase
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                local sock = assert(ngx.req.socket(true))
                assert(sock:send("HTTP/1.1 299\r\n"
                                 .. "X-Folded: first\r\n"
                                 .. "   second  \r\n"
                                 .. "X-Empty:\r\n"
                                 .. "X-Spaces: \t padded \t\r\n"
                                 .. "x-dup: 1\r\n"
                                 .. "X-DUP: 2\r\n"
                                 .. "Content-Length: 0\r\n\r\n"))
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local httpc = http.new()
            assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
            local res = assert(httpc:request({}))
            ngx.say(res.status, " reason=[", res.reason, "] has_body=", res.has_body,
                    " body=[", res:read_body(), "]")
            ngx.say("folded=[", res.headers["x-folded"], "] empty=[", res.headers["x-empty"],
                    "] spaces=[", res.headers["x-spaces"], "] dup=", table.concat(res.headers["X-Dup"], ","))
            local names = {}
            for k in pairs(res.headers) do names[#names + 1] = k end
            table.sort(names)
            ngx.say(table.concat(names, " "))

            -- the same table type, for callers building their own headers
            local h = http.new_headers()
            h["Content-Type"] = "text/plain"
            h["CONTENT-TYPE"] = "text/html"
            h["x-new"] = "1"
            h["X-New"] = nil
            local n = 0
            for _ in pairs(h) do n = n + 1 end
            ngx.say(h["content-type"], " ", h["x-new"], " ", n)
        }
    }
--- request
GET /t
--- response_body
299 reason=[] has_body=true body=[]
folded=[first second] empty=[] spaces=[padded] dup=1,2
Content-Length X-Empty X-Folded X-Spaces x-dup
text/html nil 1
--- no_error_log
[error]



=== TEST 18: connect checks its arguments and pools by scheme, host and port
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block { ngx.say(ngx.var.http_host) }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local httpc = http.new()
            ngx.say(pcall(httpc.connect, httpc))
            ngx.say(pcall(httpc.connect, httpc, { host = "" }))
            ngx.say(pcall(httpc.connect, httpc, { host = "127.0.0.1", port = 70000 }))
            ngx.say(pcall(httpc.connect, httpc, { host = "127.0.0.1", scheme = "ftp" }))
            ngx.say(pcall(httpc.connect, httpc, "127.0.0.1", 80, "opts"))

            -- a named pool with size and backlog
            local opts = { host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1, pool = "mine",
                           pool_size = 2, backlog = 4 }
            assert(httpc:connect(opts))
            local res = assert(httpc:request({ path = "/" }))
            ngx.print(res:read_body())
            assert(httpc:set_keepalive(10000, 2))
            httpc = http.new()
            assert(httpc:connect(opts))
            ngx.say("same pool: ", httpc:get_reused_times())
            httpc:close()
            httpc = http.new()
            assert(httpc:connect({ host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1, pool_size = 3 }))
            ngx.say("default pool: ", httpc:get_reused_times())
            -- the port string form works too
            httpc = http.new()
            assert(httpc:connect("127.0.0.1", "$TEST_NGINX_RAND_PORT_1"))
            res = assert(httpc:request({ headers = { Host = "other" } }))
            ngx.print(res:read_body())
        }
    }
--- request
GET /t
--- response_body_like chomp
^false.*opts must be a table \(or a host string\), got nil
false.*host must be a non-empty string, got 
false.*port must be an integer in 1..65535, got 70000
false.*scheme must be "http" or "https", got ftp
false.*connect options must be a table, got string
127.0.0.1:\d+
same pool: 1
default pool: 0
other
$
--- no_error_log
[error]



=== TEST 19: https: the certificate is verified by default; ssl_verify = false skips it
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1 ssl;
        # a self-signed certificate for test.zedcup.local, inline (\n: nginx's escape)
        ssl_certificate "data:-----BEGIN CERTIFICATE-----\nMIIBrTCCAVOgAwIBAgIUXL2VyxXl2P7QY62mxX/ALnPGbJYwCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRdGVzdC56ZWRjdXAubG9jYWwwIBcNMjYxMTIxMDgwNzI2WhgP\nMjEyNjEwMjgwODA3MjZaMBwxGjAYBgNVBAMMEXRlc3QuemVkY3VwLmxvY2FsMFkw\nEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+hA3fQz+Vo1XDdpNMee+G8mewS2R1qXT\nJTEVgP2aJbwiFVBF2xwU3wgJCfJBCYJShmgBl1/srmgpTPku+Wv3iqNxMG8wHQYD\nVR0OBBYEFH+fxS4QuIS4tLqxZoh6BDSS5gS2MB8GA1UdIwQYMBaAFH+fxS4QuIS4\ntLqxZoh6BDSS5gS2MA8GA1UdEwEB/wQFMAMBAf8wHAYDVR0RBBUwE4IRdGVzdC56\nZWRjdXAubG9jYWwwCgYIKoZIzj0EAwIDSAAwRQIhAKDlumZ/5awR4fMXvX6Ara17\n4RoteREv223eHxHDFbm1AiAPGLooa62PTyTiQe8cuytSTmLqbu/doArjOYaIzL0r\nLg==\n-----END CERTIFICATE-----";
        ssl_certificate_key "data:-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYa9azv2p/EebeIpg\nIhLtMb9yZr1qsVc5qr37bVAxttuhRANCAAT6EDd9DP5WjVcN2k0x574byZ7BLZHW\npdMlMRWA/ZolvCIVUEXbHBTfCAkJ8kEJglKGaAGXX+yuaClM+S75a/eK\n-----END PRIVATE KEY-----";
        location / {
            content_by_lua_block {
                ngx.say("tls ", ngx.var.ssl_protocol ~= nil, " sni=", ngx.var.ssl_server_name,
                        " host=", ngx.var.http_host)
            }
        }
    }
--- config
    location = /t {
        lua_socket_log_errors off;
        content_by_lua_block {
            local http = require "zedcup.http"
            local port = $TEST_NGINX_RAND_PORT_1
            local httpc = http.new()
            ngx.say(httpc:connect({ scheme = "https", host = "127.0.0.1", port = port }))

            httpc = http.new()
            assert(httpc:connect({ scheme = "https", host = "127.0.0.1", port = port,
                                   ssl_verify = false, ssl_server_name = "test.zedcup.local" }))
            local res = assert(httpc:request({ path = "/" }))
            ngx.print(res:read_body())
            assert(httpc:set_keepalive())

            -- the pooled TLS connection is reused with the same settings only
            httpc = http.new()
            assert(httpc:connect({ scheme = "https", host = "127.0.0.1", port = port,
                                   ssl_verify = false, ssl_server_name = "test.zedcup.local" }))
            ngx.say("same settings reused: ", httpc:get_reused_times())
            res = assert(httpc:request({ path = "/" }))
            ngx.print(res:read_body())
            assert(httpc:set_keepalive())
            httpc = http.new()
            ngx.say(httpc:connect({ scheme = "https", host = "127.0.0.1", port = port,
                                    ssl_server_name = "test.zedcup.local" }))

            res = assert(http.new():request_uri("https://127.0.0.1:" .. port .. "/u", { ssl_verify = false }))
            ngx.print(res.body)
            ngx.say(http.new():request_uri("https://127.0.0.1:" .. port .. "/u"))
        }
    }
--- request
GET /t
--- response_body_like chomp
^nilssl handshake with 127.0.0.1:\d+ failed: 18: self.signed certificate
tls true sni=test.zedcup.local host=127.0.0.1:\d+
same settings reused: 1
tls true sni=test.zedcup.local host=127.0.0.1:\d+
nilssl handshake with 127.0.0.1:\d+ failed: 18: self.signed certificate
tls true sni=nil host=127.0.0.1:\d+
nilssl handshake with 127.0.0.1:\d+ failed: 18: self.signed certificate
$
--- no_error_log
[error]



=== TEST 20: framing fields in any case, folded or repeated still frame the body; res.headers, built on first use, has every field
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                local replies = {
                    ["/lower"] = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nX-A: 1\r\n\r\nabc",
                    ["/upper-te"] = "HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                    ["/folded-close"] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive,\r\n close\r\n\r\nabc",
                    ["/two-connections"] = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\nconnection: close\r\n\r\nabc",
                    ["/same-lengths"] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
                    ["/te-and-length"] = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                }
                local sock = assert(ngx.req.socket(true))
                assert(sock:send(replies[ngx.var.uri]))
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            for _, path in ipairs({ "/lower", "/upper-te", "/folded-close", "/two-connections",
                                    "/same-lengths", "/te-and-length" }) do
                local httpc = http.new()
                assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))
                local res = assert(httpc:request({ path = path }))
                local body = res:read_body()
                local headers = res.headers
                local names = {}
                for k, v in pairs(headers) do
                    names[#names + 1] = k .. "=" .. (type(v) == "table" and table.concat(v, "|") or v)
                end
                table.sort(names)
                -- (the server closes once it answered: pooling may find it closed)
                local ka, why = httpc:set_keepalive()
                local reuse = (ka == 2 or (why and why:find("refused", 1, true))) and why or "reusable"
                local length = headers["CONTENT-LENGTH"]
                ngx.say(path, ": ", body, " ", reuse, " [", table.concat(names, " "),
                        "] same table: ", rawequal(res.headers, headers), " length: ",
                        type(length) == "table" and table.concat(length, "|") or tostring(length))
            end
        }
    }
--- request
GET /t
--- response_body
/lower: abc reusable [X-A=1 content-length=3] same table: true length: 3
/upper-te: abc reusable [TRANSFER-ENCODING=chunked] same table: true length: nil
/folded-close: abc connection must be closed [Connection=keep-alive, close Content-Length=3] same table: true length: 3
/two-connections: abc connection must be closed [Connection=keep-alive|close Content-Length=3] same table: true length: 3
/same-lengths: abc reusable [Content-Length=3|3] same table: true length: 3|3
/te-and-length: abc reusable [Content-Length=100 Transfer-Encoding=chunked] same table: true length: 100
--- no_error_log
[error]



=== TEST 21: plain GETs (their request heads are cached) carry each server's Host and each path
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / {
            content_by_lua_block {
                ngx.print(ngx.var.request_method, " ", ngx.var.http_host, " ", ngx.var.request_uri, " ",
                          ngx.var.http_user_agent)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            local ports = { $TEST_NGINX_RAND_PORT_1, $TEST_NGINX_RAND_PORT_2 }
            for i, path in ipairs({ "/a", "/a", "/b?x=1", "/b?x=1", "/a", "/a%20b" }) do
                local port = ports[(i - 1) % 2 + 1]
                local httpc = http.new()
                assert(httpc:connect("127.0.0.1", port))
                local res = assert(httpc:request({ path = path, method = i == 6 and "GET" or nil }))
                local body = res:read_body()
                ngx.say(body == "GET 127.0.0.1:" .. port .. " " .. path .. " zedcup.http/0.1.0"
                        or body)
                httpc:set_keepalive()
            end
            local httpc = http.new()
            assert(httpc:connect("127.0.0.1", ports[1]))
            ngx.say(httpc:request({ path = "/bad path" }))
        }
    }
--- request
GET /t
--- response_body
true
true
true
true
true
true
nilsend request failed: invalid path "/bad path"
--- no_error_log
[error]



=== TEST 22: a head and body split across reads anywhere, bare LF line ends, bytes after the response (not pooled, as ngx_lua refuses it)
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                -- each part is written on its own, a moment apart, so the client's
                -- reads end where the parts end
                local big = string.rep("x", 100000)
                local replies = {
                    ["/split-status"] = { "HTTP/1.1 20", "0 OK\r\nContent-Length: 3\r\n\r\nabc" },
                    ["/split-fields"] = { "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Le", "ngth: 3\r", "\n\r\nabc" },
                    ["/split-body"] = { "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc", "def" },
                    ["/big-body"] = { "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" .. big },
                    ["/split-chunks"] = { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
                                          "c\r", "\n4\r\ndefg\r\n0\r\nX-T", "railer: 1\r\n\r\n" },
                    ["/close-body"] = { "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc", "def" },
                    ["/bare-lf"] = { "HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 3\n\nabc" },
                    ["/extra"] = { "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcGARBAGE" },
                }
                local sock = assert(ngx.req.socket(true))
                local parts = replies[ngx.var.uri]
                for i, part in ipairs(parts) do
                    if i > 1 then
                        ngx.sleep(0.02)
                    end
                    assert(sock:send(part))
                end
                if ngx.var.uri ~= "/close-body" then
                    -- keep the connection until the client is done
                    sock:settimeout(2000)
                    sock:receive(1)
                end
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local http = require "zedcup.http"
            for _, path in ipairs({ "/split-status", "/split-fields", "/split-body", "/big-body",
                                    "/split-chunks", "/close-body", "/bare-lf", "/extra" }) do
                local httpc = http.new()
                -- a pool per path: a pooled connection's server has stopped answering
                assert(httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1, { pool = path }))
                local res, err = httpc:request({ path = path })
                if not res then
                    ngx.say(path, ": ", err)
                else
                    local body
                    if path == "/close-body" then
                        -- through body_reader, a byte at a time at first
                        local parts = { res.body_reader(1), res.body_reader(2) }
                        parts[3] = res:read_body()
                        body = table.concat(parts)
                    else
                        body, err = res:read_body()
                    end
                    local trailers = res:read_trailers()
                    local ka, why = httpc:set_keepalive()
                    ngx.say(path, ": ", res.status, " ", #body > 10 and #body .. " bytes" or body, " ",
                            tostring(err), " X-A=", tostring(res.headers["x-a"]), " trailer=",
                            tostring(trailers["X-Trailer"]), " keepalive: ", tostring(ka), " ", tostring(why))
                end
                httpc:close()
            end
        }
    }
--- request
GET /t
--- response_body
/split-status: 200 abc nil X-A=nil trailer=nil keepalive: 1 nil
/split-fields: 200 abc nil X-A=1 trailer=nil keepalive: 1 nil
/split-body: 200 abcdef nil X-A=nil trailer=nil keepalive: 1 nil
/big-body: 200 100000 bytes nil X-A=nil trailer=nil keepalive: 1 nil
/split-chunks: 200 abcdefg nil X-A=nil trailer=1 keepalive: 1 nil
/close-body: 200 abcdef nil X-A=nil trailer=nil keepalive: 2 connection must be closed
/bare-lf: 200 abc nil X-A=1 trailer=nil keepalive: 1 nil
/extra: 200 abc nil X-A=nil trailer=nil keepalive: nil set keepalive failed: unread data in buffer
--- no_error_log
[error]
