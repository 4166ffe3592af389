# Compatibility: zedcup's built-ins driven exactly as the READMEs of
# lua-resty-http, lua-resty-consul, lua-resty-mlcache and lua-resty-lock show
# their use, both through the seam (require "zedcup.deps" with the built-ins
# forced) and through require "zedcup.<module>" directly. Return values and
# argument orders are the documented ones; each block also pins a divergence
# that was found and fixed (see the block titles).

__DATA__

=== TEST 1: resty.http single-shot request_uri: README POST form, keepalive params, https with ssl_verify = false and a table query (deps and direct)
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2 ssl;
        ssl_certificate "data:-----BEGIN CERTIFICATE-----\nMIIBrTCCAVOgAwIBAgIUXL2VyxXl2P7QY62mxX/ALnPGbJYwCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRdGVzdC56ZWRjdXAubG9jYWwwIBcNMjYxMTIxMDgwNzI2WhgP\nMjEyNjEwMjgwODA3MjZaMBwxGjAYBgNVBAMMEXRlc3QuemVkY3VwLmxvY2FsMFkw\nEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+hA3fQz+Vo1XDdpNMee+G8mewS2R1qXT\nJTEVgP2aJbwiFVBF2xwU3wgJCfJBCYJShmgBl1/srmgpTPku+Wv3iqNxMG8wHQYD\nVR0OBBYEFH+fxS4QuIS4tLqxZoh6BDSS5gS2MB8GA1UdIwQYMBaAFH+fxS4QuIS4\ntLqxZoh6BDSS5gS2MA8GA1UdEwEB/wQFMAMBAf8wHAYDVR0RBBUwE4IRdGVzdC56\nZWRjdXAubG9jYWwwCgYIKoZIzj0EAwIDSAAwRQIhAKDlumZ/5awR4fMXvX6Ara17\n4RoteREv223eHxHDFbm1AiAPGLooa62PTyTiQe8cuytSTmLqbu/doArjOYaIzL0r\nLg==\n-----END CERTIFICATE-----";
        ssl_certificate_key "data:-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYa9azv2p/EebeIpg\nIhLtMb9yZr1qsVc5qr37bVAxttuhRANCAAT6EDd9DP5WjVcN2k0x574byZ7BLZHW\npdMlMRWA/ZolvCIVUEXbHBTfCAkJ8kEJglKGaAGXX+yuaClM+S75a/eK\n-----END PRIVATE KEY-----";
        location / {
            content_by_lua_block {
                ngx.req.read_body()
                local args = ngx.req.get_uri_args()
                local names = {}
                for k in pairs(args) do names[#names + 1] = k .. "=" .. tostring(args[k]) end
                table.sort(names)
                ngx.header["X-Conn-Requests"] = ngx.var.connection_requests
                local out = table.concat({ ngx.req.get_method(), " ", ngx.var.uri, " [",
                                           table.concat(names, "&"), "] ", tostring(ngx.var.content_type),
                                           " tls=", tostring(ngx.var.https == "on"),
                                           " body=", tostring(ngx.req.get_body_data()) })
                ngx.header["Content-Length"] = #out
                ngx.print(out)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            -- each path's lines; direct's are compared with deps' (blocks_t.sayer)
            local out = {}
            for _, via in ipairs({ "deps", "direct" }) do
                local say
                say, out[via] = require("blocks_t").sayer()
                local http = via == "deps" and deps.http or require "zedcup.http"
                for i = 1, 2 do
                    local httpc = http.new()
                    local res, err = httpc:request_uri("http://127.0.0.1:$TEST_NGINX_RAND_PORT_1/helloworld", {
                        method = "POST",
                        body = "a=1&b=2",
                        headers = {
                            ["Content-Type"] = "application/x-www-form-urlencoded",
                        },
                        keepalive_timeout = 60000,
                        keepalive_pool = 10,
                    })
                    if not res then
                        say("failed to request: ", err)
                        return
                    end
                    say(res.status, " ", res.headers["Content-Length"] == tostring(#res.body),
                            " n=", res.headers["X-Conn-Requests"], " ", res.body)
                end

                local httpc = http.new()
                local res, err = httpc:request_uri("https://127.0.0.1:$TEST_NGINX_RAND_PORT_2/ignored?x=1", {
                    ssl_verify = false,
                    path = "/tls",
                    query = { a = 1, b = "two words", flag = true },
                })
                if not res then
                    say("failed to request: ", err)
                    return
                end
                say(res.status, " ", res.body)
                -- the query in the uri is used when params has none
                res = assert(http.new():request_uri("http://127.0.0.1:$TEST_NGINX_RAND_PORT_1/q?x=1&y=2",
                                                    { keepalive = false }))
                say(res.body)
            end
            for _, line in ipairs(out.deps) do ngx.say(line) end
            ngx.say("direct, the same as deps: ", table.concat(out.direct, "\n") == table.concat(out.deps, "\n"))
        }
    }
--- request
GET /t
--- response_body
200 true n=1 POST /helloworld [] application/x-www-form-urlencoded tls=false body=a=1&b=2
200 true n=2 POST /helloworld [] application/x-www-form-urlencoded tls=false body=a=1&b=2
200 GET /tls [a=1&b=two words&flag=true] nil tls=true body=nil
GET /q [x=1&y=2] nil tls=false body=nil
direct, the same as deps: true
--- no_error_log
[error]



=== TEST 2: resty.http streamed request: body_reader is a function read in 8192-byte buffers, trailers merge into headers, the connection is pooled and reused (connect in both call forms)
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location /stream {
            content_by_lua_block {
                -- a chunked response (no Content-Length, flushed in pieces)
                for i = 1, 5 do
                    ngx.print(string.rep(string.char(96 + i), 5000))
                    ngx.flush(true)
                end
            }
        }
        location /host {
            content_by_lua_block { ngx.print("host=", ngx.var.http_host) }
        }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        location / {
            content_by_lua_block {
                local t = require "blocks_t"
                -- a chunked response with a trailer, byte by byte as the wire has it
                local sock = assert(ngx.req.socket(true))
                assert(sock:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                                 .. "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n"))
                -- hold the connection until the client drops it
                t.hold_open(sock)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            for _, via in ipairs({ "deps", "direct" }) do
                local http = via == "deps" and deps.http or require "zedcup.http"
                local httpc = http.new()

                -- the deprecated (but documented) TCP-only form
                httpc:set_timeout(500)
                ngx.say(via, " connect: ", httpc:connect("127.0.0.1", $TEST_NGINX_RAND_PORT_1))

                local res, err = httpc:request({
                    path = "/stream",
                    headers = {
                        ["Host"] = "example.com",
                    },
                })
                if not res then
                    ngx.say("failed to request: ", err)
                    return
                end

                local reader = res.body_reader
                local buffer_size = 8192
                local n, total, biggest = 0, 0, 0
                repeat
                    local buffer, err = reader(buffer_size)
                    if err then
                        ngx.log(ngx.ERR, err)
                        break
                    end

                    if buffer then
                        n, total = n + 1, total + #buffer
                        biggest = math.max(biggest, #buffer)
                    end
                until not buffer
                ngx.say(via, " body_reader is a ", type(reader), ": ", total, " bytes, ", n > 1,
                        " buffers, none over ", buffer_size, ": ", biggest <= buffer_size)

                local ok, err = httpc:set_keepalive()
                if not ok then
                    ngx.say("failed to set keepalive: ", err)
                    return
                end
                ngx.say(via, " set_keepalive: ", ok)

                -- the options-table form finds the pooled connection
                httpc = http.new()
                ok, err = httpc:connect({ scheme = "http", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 })
                ngx.say(via, " connect: ", ok, " ", err, " reused: ", httpc:get_reused_times() > 0)
                res = assert(httpc:request({ path = "/host" }))
                ngx.say(via, " ", res:read_body())
                assert(httpc:set_keepalive())

                -- trailers: after the body, read_trailers() merges them into res.headers
                httpc = http.new()
                assert(httpc:connect({ scheme = "http", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_2 }))
                res = assert(httpc:request({ path = "/" }))
                ngx.say(via, " before: ", res.headers["X-Sum"], " body: ", res:read_body())
                res:read_trailers()
                ngx.say(via, " after: ", res.headers["X-Sum"], " ", res.headers["x-sum"])
                httpc:close()
            end
        }
    }
--- request
GET /t
--- response_body_like
^deps connect: true
deps body_reader is a function: 25000 bytes, true buffers, none over 8192: true
deps set_keepalive: 1
deps connect: true nil reused: true
deps host=127.0.0.1:\d+
deps before: nil body: hello world
deps after: 42 42
direct connect: true
direct body_reader is a function: 25000 bytes, true buffers, none over 8192: true
direct set_keepalive: 1
direct connect: true nil reused: true
direct host=127.0.0.1:\d+
direct before: nil body: hello world
direct after: 42 42
$
--- no_error_log
[error]



=== TEST 3: resty.http request bodies: the client body reader proxied upstream, a response's body_reader as the next request's body, and Transfer-Encoding: chunked framed by the caller (not framed twice)
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.req.read_body()
                local out = table.concat({ ngx.var.uri, " cl=", tostring(ngx.var.http_content_length),
                                           " te=", tostring(ngx.var.http_transfer_encoding),
                                           " [", tostring(ngx.req.get_body_data()), "]" })
                ngx.header["Content-Length"] = #out
                ngx.print(out)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            local httpc = deps.http.new()
            assert(httpc:connect({ scheme = "http", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 }))

            local client_body_reader, err = httpc:get_client_body_reader()
            local res, err = httpc:request({
                method = "POST",
                path = "/helloworld",
                body = client_body_reader,
                headers = { ["Content-Length"] = ngx.var.http_content_length },
            })
            ngx.say(res:read_body())

            -- a response streamed into the next request as its body
            local direct = require("zedcup.http").new()
            assert(direct:connect({ scheme = "http", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 }))
            local first = assert(direct:request({ path = "/first" }))
            res = assert(httpc:request({
                method = "PUT",
                path = "/second",
                body = first.body_reader,
                headers = { ["Content-Length"] = first.headers["Content-Length"] },
            }))
            ngx.say(res:read_body())
            assert(direct:set_keepalive())

            -- README: with Transfer-Encoding: chunked the caller's iterator does the encoding
            local chunks = { "4\r\nWiki\r\n", "5\r\npedia\r\n", "0\r\n\r\n" }
            local i = 0
            res = assert(httpc:request({
                method = "POST",
                path = "/chunked",
                headers = { ["Transfer-Encoding"] = "chunked" },
                body = function() i = i + 1; return chunks[i] end,
            }))
            ngx.say(res:read_body())
            ngx.say("keepalive: ", httpc:set_keepalive())
        }
    }
--- request
POST /t
client body data
--- response_body
/helloworld cl=16 te=nil [client body data]
/second cl=26 te=nil [/first cl=nil te=nil [nil]]
/chunked cl=nil te=chunked [Wikipedia]
keepalive: 1
--- no_error_log
[error]



=== TEST 4: resty.http set_keepalive: 1 when pooled; 2, "connection must be closed" when HTTP/1.0 or Connection: close forbids reuse (was nil, err); a lower-case method goes out upper-cased (was sent as is)
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block { ngx.print("ok") }
        }
        location /bye {
            content_by_lua_block { ngx.header["Connection"] = "close"; ngx.print("bye") }
        }
        location /m {
            content_by_lua_block { ngx.print(ngx.req.get_method()) }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            -- each path's lines; direct's are compared with deps' (blocks_t.sayer)
            local out = {}
            for _, via in ipairs({ "deps", "direct" }) do
                local say
                say, out[via] = require("blocks_t").sayer()
                local http = via == "deps" and deps.http or require "zedcup.http"
                local function try(params)
                    local httpc = http.new()
                    assert(httpc:connect({ scheme = "http", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 }))
                    local res = assert(httpc:request(params))
                    assert(res:read_body())
                    local ok, err = httpc:set_keepalive()
                    say(params.path, " ", params.version or 1.1, ": ", ok, " ", err)
                end
                try({ path = "/" })
                try({ path = "/", version = 1.0 })
                try({ path = "/", version = 1.0, headers = { Connection = "Keep-Alive" } })
                try({ path = "/", headers = { Connection = "Close" } })
                try({ path = "/bye" })
                -- methods go out upper-cased, as lua-resty-http sends them
                local res = assert(http.new():request_uri("http://127.0.0.1:$TEST_NGINX_RAND_PORT_1/m",
                                                          { method = "post", body = "x" }))
                say("lower-case method: ", res.status, " ", res.body)
            end
            for _, line in ipairs(out.deps) do ngx.say(line) end
            ngx.say("direct, the same as deps: ", table.concat(out.direct, "\n") == table.concat(out.deps, "\n"))
        }
    }
--- request
GET /t
--- response_body
/ 1.1: 1 nil
/ 1: 2 connection must be closed
/ 1: 1 nil
/ 1.1: 2 connection must be closed
/bye 1.1: 2 connection must be closed
lower-case method: 200 POST
direct, the same as deps: true
--- no_error_log
[error]



=== TEST 5: resty.http parse_uri: unpack()ed as documented, query_in_path both ways, scheme-relative URIs, IPv6 hosts keep their brackets, "bad uri: <uri>"
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            local uris = {
                "http://example.com",
                "https://example.com/foo/bar?a=1&b=2",
                "http://example.com?a=1&b=2",
                "//example.com/foo/bar?a=1&b=2",
                "https://[::1]/foo/bar?a=1&b=2",
                "//[0:0:0:0:0:0:0:0]?a=1",
            }
            -- each path's lines; direct's are compared with deps' (blocks_t.sayer)
            local out = {}
            for _, via in ipairs({ "deps", "direct" }) do
                local say
                say, out[via] = require("blocks_t").sayer()
                local http = via == "deps" and deps.http or require "zedcup.http"
                local httpc = http.new()
                for _, uri in ipairs(uris) do
                    local scheme, host, port, path, query = unpack(httpc:parse_uri(uri, false))
                    say(scheme, " ", host, " ", port, " ", path, " [", query, "]")
                    scheme, host, port, path = unpack(httpc:parse_uri(uri))
                    say("  in path: ", path)
                end
                say(httpc:parse_uri("http:///example.com"))
                say(http:parse_uri("ftp://example.com/"))
            end
            for _, line in ipairs(out.deps) do ngx.say(line) end
            ngx.say("direct, the same as deps: ", table.concat(out.direct, "\n") == table.concat(out.deps, "\n"))
        }
    }
--- request
GET /t
--- response_body
http example.com 80 / []
  in path: /
https example.com 443 /foo/bar [a=1&b=2]
  in path: /foo/bar?a=1&b=2
http example.com 80 / [a=1&b=2]
  in path: /?a=1&b=2
http example.com 80 /foo/bar [a=1&b=2]
  in path: /foo/bar?a=1&b=2
https [::1] 443 /foo/bar [a=1&b=2]
  in path: /foo/bar?a=1&b=2
http [0:0:0:0:0:0:0:0] 80 / [a=1]
  in path: /?a=1
nilbad uri: http:///example.com
nilbad uri: ftp://example.com/
direct, the same as deps: true
--- no_error_log
[error]




=== TEST 6: resty.http request_pipeline (README example): three requests on one connection, responses read in order; a response used before the previous body was read has no status (was missing)
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            content_by_lua_block {
                ngx.print(ngx.var.uri, " n=", ngx.var.connection_requests)
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            for _, via in ipairs({ "deps", "direct" }) do
                local http = via == "deps" and deps.http or require "zedcup.http"
                local httpc = http.new()
                assert(httpc:connect({ scheme = "http", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 }))
                local responses = httpc:request_pipeline({
                    { path = "/b" },
                    { path = "/c" },
                    { path = "/d" },
                })

                for _, r in ipairs(responses) do
                    if not r.status then
                        ngx.log(ngx.ERR, "socket read error")
                        break
                    end

                    ngx.say(r.status)
                    ngx.say(r:read_body())
                end
                ngx.say(via, " keepalive: ", httpc:set_keepalive())

                -- the second response is used while the first body is still on the wire
                httpc = http.new()
                assert(httpc:connect({ scheme = "http", host = "127.0.0.1", port = $TEST_NGINX_RAND_PORT_1 }))
                responses = assert(httpc:request_pipeline({ { path = "/x" }, { path = "/y" } }))
                ngx.say(via, " first: ", responses[1].status)
                ngx.say(via, " second: ", responses[2].status, " ", responses[2].err)
                ngx.say(via, " keepalive: ", httpc:set_keepalive())
            end
        }
    }
--- request
GET /t
--- response_body
200
/b n=1
200
/c n=2
200
/d n=3
deps keepalive: 1
deps first: 200
deps second: nil read status line failed: the previous response body was not fully read
deps keepalive: nilkeepalive refused: not connected
200
/b n=1
200
/c n=2
200
/d n=3
direct keepalive: 1
direct first: 200
direct second: nil read status line failed: the previous response body was not fully read
direct keepalive: nilkeepalive refused: not connected
--- no_error_log
[error]


=== TEST 7: resty.consul README flow against dev-consul: new() with every documented option, get/put of API paths, put_key, list_keys(prefix) then get_key of each, delete_key with recurse (deps and direct)
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            local token = "$TEST_NGINX_CONSUL_TOKEN"
            -- each path's lines; direct's are compared with deps' (blocks_t.sayer)
            local out = {}
            for _, via in ipairs({ "deps", "direct" }) do
                local say
                say, out[via] = require("blocks_t").sayer()
                local resty_consul = via == "deps" and deps.consul or require "zedcup.consul"
                local consul = resty_consul:new({
                    host            = "$TEST_NGINX_CONSUL_HOST",
                    port            = $TEST_NGINX_CONSUL_PORT,
                    connect_timeout = (60*1000), -- 60s
                    read_timeout    = (60*1000), -- 60s
                    default_args    = {
                        token = token ~= "" and token or nil,
                    },
                    ssl             = false,
                    ssl_verify      = true,
                    sni_host        = nil,
                })
                local prefix = "$TEST_ZEDCUP_PREFIX/" .. via

                local res, err = consul:get("/status/leader")
                if not res then
                    ngx.log(ngx.ERR, err)
                    return
                end
                say("leader: ", res.status, " ", type(res.body))

                res = assert(consul:put("/kv/" .. prefix .. "/json", { a = { 1, 2 } }))
                say("put table: ", res.status, " ", res.body, " ", type(res.headers))

                for i, v in ipairs({ "one", 2, true }) do
                    res = assert(consul:put_key(prefix .. "/k" .. i, v))
                    say("put_key ", type(v), ": ", res.status, " ", res.body)
                end

                res, err = consul:list_keys(prefix .. "/")
                if not res then
                    ngx.log(ngx.ERR, err)
                    return
                end
                local keys = {}
                if res.status == 200 then
                    keys = res.body
                end
                for _, key in ipairs(keys) do
                    local res, err = consul:get_key(key)
                    if not res then
                        ngx.log(ngx.ERR, err)
                        return
                    end
                    say(key:sub(#prefix + 2), " = ", res.body[1].Value) -- base64-decoded
                end
                say("index header: ", tonumber(res.headers["X-Consul-Index"]) > 0)

                res = assert(consul:list_keys(prefix .. "/", { separator = "/" }))
                say("with separator: ", #res.body)
                res = assert(consul:delete_key(prefix, { recurse = true }))
                say("delete_key recurse: ", res.status, " ", res.body)
                say("gone: ", consul:get_key(prefix .. "/k1").status)
            end
            for _, line in ipairs(out.deps) do ngx.say(line) end
            ngx.say("direct, the same as deps: ", table.concat(out.direct, "\n") == table.concat(out.deps, "\n"))
        }
    }
--- request
GET /t
--- response_body
leader: 200 string
put table: 200 true table
put_key string: 200 true
put_key number: 200 true
put_key boolean: 200 true
json = {"a":[1,2]}
k1 = one
k2 = 2
k3 = true
index header: true
with separator: 4
delete_key recurse: 200 true
gone: 404
direct, the same as deps: true
--- no_error_log
[error]



=== TEST 8: resty.consul txn README example (values base64 both ways), a JSON string payload sent as is, and the nil, err answers for missing or non-string paths, keys, values and payloads (were raised errors or requests)
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            local token = "$TEST_NGINX_CONSUL_TOKEN"
            local opts = { host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                           default_args = { token = token ~= "" and token or nil } }
            -- each path's lines; direct's are compared with deps' (blocks_t.sayer)
            local out = {}
            for _, via in ipairs({ "deps", "direct" }) do
                local say
                say, out[via] = require("blocks_t").sayer()
                local resty_consul = via == "deps" and deps.consul or require "zedcup.consul"
                local p = "$TEST_ZEDCUP_PREFIX/" .. via .. "/"
                local txn_payload = {
                    {
                        KV = {
                            Verb   = "set",
                            Key    = p .. "foo",
                            Value  = "bar",
                        }
                    },
                    {
                        KV = {
                            Verb   = "get",
                            Key    = p .. "foo",
                        }
                    }
                }

                local consul = resty_consul:new(opts)

                local res, err = consul:txn(txn_payload)
                if not res then
                    say(err)
                    return
                end

                say(res.status, " ", res.body.Results[2].KV.Value) -- "bar"

                res = assert(consul:txn(require("cjson").encode({
                    { KV = { Verb = "set", Key = p .. "raw", Value = ngx.encode_base64("pre-encoded") } },
                    { KV = { Verb = "get", Key = p .. "raw" } },
                }), { dc = "dc1" }))
                say("json payload: ", res.status, " ", res.body.Results[2].KV.Value)

                -- lua-resty-consul's own test suite expects nil (not a raised error) for these
                local function show(what, res, err)
                    say(what, ": ", res == nil, " ", err ~= nil)
                end
                show("get_key()", consul:get_key())
                show("get_key({})", consul:get_key({}))
                show("put_key()", consul:put_key())
                show("put_key('foo')", consul:put_key(p .. "foo"))
                show("put_key({})", consul:put_key({}))
                show("delete_key()", consul:delete_key())
                show("delete_key({})", consul:delete_key({}))
                show("list_keys({})", consul:list_keys({}))
                show("get(42)", consul:get(42))
                show("txn()", consul:txn())
                say("foo untouched: ", consul:get_key(p .. "foo").body[1].Value)
            end
            for _, line in ipairs(out.deps) do ngx.say(line) end
            ngx.say("direct, the same as deps: ", table.concat(out.direct, "\n") == table.concat(out.deps, "\n"))
        }
    }
--- request
GET /t
--- response_body
200 bar
json payload: 200 pre-encoded
get_key(): true true
get_key({}): true true
put_key(): true true
put_key('foo'): true true
put_key({}): true true
delete_key(): true true
delete_key({}): true true
list_keys({}): true true
get(42): true true
txn(): true true
foo untouched: bar
direct, the same as deps: true
--- no_error_log
[error]



=== TEST 9: resty.consul blocking queries: index + wait (a number of seconds) returns as soon as the key changes, or after wait with the same index
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            local token = "$TEST_NGINX_CONSUL_TOKEN"
            local consul = deps.consul:new({ host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                                             read_timeout = 2000,
                                             default_args = { token = token ~= "" and token or nil } })
            local key = "$TEST_ZEDCUP_PREFIX/watched"
            assert(consul:put_key(key, "v1"))
            local res = assert(consul:get_key(key))
            local index = tonumber(res.headers["X-Consul-Index"])

            -- a change made 0.2 s later by someone else (here: a timer with the direct module)
            assert(ngx.timer.at(0.2, function()
                local c = require("zedcup.consul"):new({ host = "$TEST_NGINX_CONSUL_HOST",
                                                         port = $TEST_NGINX_CONSUL_PORT,
                                                         token = token ~= "" and token or nil })
                assert(c:put_key(key, "v2"))
            end))

            ngx.update_time()
            local t0 = ngx.now()
            res = assert(consul:get_key(key, { index = index, wait = 10 }))
            ngx.update_time()
            local new_index = tonumber(res.headers["X-Consul-Index"])
            ngx.say("changed: ", res.status, " ", res.body[1].Value, " index grew: ", new_index > index,
                    " early: ", ngx.now() - t0 < 5)

            t0 = ngx.now()
            res = assert(consul:get_key(key, { index = new_index, wait = 1 }))
            ngx.update_time()
            local waited = ngx.now() - t0
            ngx.say("unchanged: ", res.status, " ", res.body[1].Value, " same index: ",
                    tonumber(res.headers["X-Consul-Index"]) == new_index,
                    " waited: ", waited >= 0.9 and waited < 3)
        }
    }
--- request
GET /t
--- response_body
changed: 200 v2 index grew: true early: true
unchanged: 200 v2 same index: true waited: true
--- no_error_log
[error]



=== TEST 10: mlcache README get(): callback args, tables, negative caching, the err return and thrown errors, the callback's ttl, per-call opts, l1_serializer compiling code once, get() without a callback (deps and direct)
--- http_config
    lua_shared_dict cache_shared_dict 1m;
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            local users = { [3] = { name = "John Doe", raw_lua_code = "return 'hi from ' .. ...", custom_code = true } }
            local queries = 0
            local db = {}
            function db:query_user(id)
                queries = queries + 1
                if id == 13 then
                    return nil, "db timeout"
                end
                local row = users[id]
                -- a fresh row per query, as a database would give
                return row and { name = row.name, raw_lua_code = row.raw_lua_code,
                                 custom_code = row.custom_code }
            end
            local function fetch_user(user_id)
                local user, err = db:query_user(user_id)
                if err then
                    return nil, err
                end
                return user -- table or nil
            end

            -- each path's lines; direct's are compared with deps' (blocks_t.sayer)
            local out = {}
            for _, via in ipairs({ "deps", "direct" }) do
                local say
                say, out[via] = require("blocks_t").sayer()
                local mlcache = via == "deps" and deps.mlcache or require "zedcup.cache"
                local cache, err = mlcache.new("my_cache_" .. via, "cache_shared_dict", {
                    lru_size = 1000,
                    ttl      = 3600,
                    neg_ttl  = 60,
                })
                if not cache then
                    error("could not create mlcache: " .. err)
                end
                queries = 0

                local user_id = 3
                local user, err, hit = cache:get("users:" .. user_id, nil, fetch_user, user_id)
                say("user exists: ", user.name, " ", err, " ", hit)
                user, err, hit = cache:get("users:" .. user_id, nil, fetch_user, user_id)
                say("again: ", user.name, " ", hit)

                user, err, hit = cache:get("users:4", nil, fetch_user, 4)
                say("user does not exist: ", user, " ", err, " ", hit)
                say("cached miss: ", cache:get("users:4", nil, fetch_user, 4))

                user, err, hit = cache:get("users:13", nil, fetch_user, 13)
                say("failing callback: ", user, " ", err, " ", hit)
                say("not cached: ", select(3, cache:get("users:13")))

                local ok, thrown = cache:get("boom", nil, function() error("kaboom") end)
                say("thrown: ", ok, " ", thrown:find("callback threw an error: ", 1, true) == 1,
                        " ", thrown:find("kaboom", 1, true) ~= nil)

                -- the callback's third value overrides ttl; a negative one skips caching
                say("ttl -1: ", cache:get("nocache", nil, function() return "v", nil, -1 end))
                say("ttl -1 again: ", select(3, cache:get("nocache")))
                cache:get("short", nil, function() return "s", nil, 0.2 end)
                cache:get("perkey", { ttl = 0.2 }, function() return "p" end)
                cache:get("negkey", { neg_ttl = 0.2 }, function() return nil end)
                say("cached: ", select(3, cache:get("perkey")), " ", select(3, cache:get("negkey")))
                ngx.sleep(0.25)
                say("expired: ", select(3, cache:get("short")), " ", select(3, cache:get("perkey")),
                        " ", select(3, cache:get("negkey")))

                -- README's l1_serializer: compile code once, when the value enters L1
                local compiled = 0
                local function load_code(user_row)
                    if user_row.custom_code ~= nil then
                        local f, err = loadstring(user_row.raw_lua_code)
                        if not f then
                            return nil, "failed to compile custom code: " .. err
                        end
                        compiled = compiled + 1
                        user_row.f = f
                    end
                    return user_row
                end
                for _ = 1, 3 do
                    user, err = cache:get("users:code:" .. user_id, { l1_serializer = load_code },
                                          fetch_user, user_id)
                    if err then
                        ngx.log(ngx.ERR, "could not retrieve user: ", err)
                        return
                    end
                end
                say(user.f("lua"), ", compiled ", compiled, " time(s)")
                say("serializer error: ", cache:get("bad", { l1_serializer = function()
                    return nil, "nope"
                end }, function() return {} end))

                local value, err, hit_lvl = cache:get("key")
                if value == nil and hit_lvl == -1 then
                    say("miss (no value): ", err)
                end
                say("queries: ", queries)
            end
            for _, line in ipairs(out.deps) do ngx.say(line) end
            ngx.say("direct, the same as deps: ", table.concat(out.direct, "\n") == table.concat(out.deps, "\n"))
        }
    }
--- request
GET /t
--- response_body_like
^user exists: John Doe nil 3
again: John Doe 1
user does not exist: nil nil 3
cached miss: nilnil1
failing callback: nil db timeout nil
not cached: -1
thrown: nil true true
ttl -1: vnil3
ttl -1 again: -1
cached: 1 1
expired: -1 -1 -1
hi from lua, compiled 1 time\(s\)
serializer error: nill1_serializer returned an error: nope
miss \(no value\): nil
queries: 4
direct, the same as deps: true
$
--- no_error_log
[error]



=== TEST 11: mlcache peek(): ttl, err, value, stale (the README example, stale values only when asked, 0 for no expiry, negative hits); resurrect_ttl serves hit level 4
--- http_config
    lua_shared_dict cache_shared_dict 1m;
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            -- each path's lines; direct's are compared with deps' (blocks_t.sayer)
            local out = {}
            for _, via in ipairs({ "deps", "direct" }) do
                local say
                say, out[via] = require("blocks_t").sayer()
                local mlcache = via == "deps" and deps.mlcache or require "zedcup.cache"
                local cache = mlcache.new("my_cache_" .. via, "cache_shared_dict")

                local ttl, err, value = cache:peek("key")
                if err then
                    ngx.log(ngx.ERR, "could not peek cache: ", err)
                    return
                end
                say(ttl, " ", value) -- nil nil

                cache:get("key", { ttl = 1 }, function() return "some value" end)
                ngx.update_time()
                local t0 = ngx.now()
                ngx.sleep(0.2)
                local ttl, err, value, stale = cache:peek("key")
                say("ttl left <= 0.8: ", ttl > 0 and ttl <= 0.81, " ", err, " ", value, " ", stale)

                ngx.update_time()
                ngx.sleep(math.max(0.01, t0 + 1.05 - ngx.now()))
                say("expired, not asked for stale: ", cache:peek("key"))
                ttl, err, value, stale = cache:peek("key", true)
                say("stale: ", ttl < 0, " ", err, " ", value, " ", stale)

                cache:get("forever", { ttl = 0 }, function() return 1 end)
                say("no expiry: ", cache:peek("forever"))
                cache:get("neg", nil, function() return nil end)
                ttl, err, value, stale = cache:peek("neg")
                say("negative: ", ttl > 0, " ", err, " ", value, " ", stale)

                -- resurrect_ttl: a failing callback serves the stale value, hit level 4
                local c2 = mlcache.new("res_" .. via, "cache_shared_dict", { ttl = 0.1, resurrect_ttl = 5 })
                c2:get("r", nil, function() return "old" end)
                ngx.sleep(0.15)
                -- the L1 copy expired with the ttl; the L2 entry is kept for resurrection
                say("resurrected: ", c2:get("r", nil, function() return nil, "backend down" end))
            end
            for _, line in ipairs(out.deps) do ngx.say(line) end
            ngx.say("direct, the same as deps: ", table.concat(out.direct, "\n") == table.concat(out.deps, "\n"))
        }
    }
--- request
GET /t
--- response_body
nil nil
ttl left <= 0.8: true nil some value false
expired, not asked for stale: nil
stale: true nil some value true
no expiry: 0nil1false
negative: true nil nil false
resurrected: oldnil4
direct, the same as deps: true
--- error_log
serving the stale value
--- no_error_log
[error]



=== TEST 12: mlcache across two workers: set(key, nil, value) and delete(key) in one worker, update() before get() in the other (README pattern), through the seam
--- workers: 2
--- timeout: 15
--- http_config
    lua_shared_dict cache_shared_dict 1m;
    lua_shared_dict ipc_shared_dict 1m;
    lua_shared_dict state 1m;
    init_worker_by_lua_block {
        local t = require "blocks_t"
        local deps = require "zedcup.deps"
        deps.init({ builtin = true })
        local state = ngx.shared.state
        local cache = assert(deps.mlcache.new("my_cache_with_ipc", "cache_shared_dict", {
            lru_size = 1000,
            ipc_shm = "ipc_shared_dict",
        }))
        local id = ngx.worker.id()

        local function wait_for(key, n)
            if not t.wait_count(state, key, n, 5, 0.002) then
                ngx.log(ngx.ERR, "worker ", id, ": timed out waiting for ", key, " to reach ", n)
            end
        end
        local function record(step, value, err, hit)
            state:set(id .. ":" .. step, require("cjson").encode(value) .. " " .. tostring(err)
                                         .. " " .. tostring(hit))
        end
        local function cb1() return 1 end
        local function cb2() return { v = "from the callback" } end

        assert(ngx.timer.at(0, function()
            -- both workers warm their L1
            cache:get("key_1", nil, cb1)
            cache:get("key_2", nil, cb2)
            state:incr("warm", 1, 0)
            wait_for("warm", 2)

            if id == 0 then
                -- /set and /delete of the README
                local ok, err = cache:set("key_1", nil, 123)
                if not ok then
                    ngx.log(ngx.ERR, "failed to set value in cache: ", err)
                end
                ok, err = cache:delete("key_2")
                if not ok then
                    ngx.log(ngx.ERR, "failed to delete value from cache: ", err)
                end
                state:set("changed", 1)
            else
                wait_for("changed", 1)
                -- without update() the L1 still has the old values
                record("stale key_1", cache:get("key_1", nil, cb1))
                -- make sure L1 cache is evicted of stale values before calling get()
                local ok, err = cache:update()
                if not ok then
                    ngx.log(ngx.ERR, "failed to poll eviction events: ", err)
                end
                record("update", ok, err)
                record("key_1", cache:get("key_1", nil, cb1))
                record("key_2", cache:get("key_2", nil, cb2))
                record("key_1 again", cache:get("key_1", nil, cb1))
            end
            state:incr("finished", 1, 0)
        end))
    }
--- config
    location = /t {
        content_by_lua_block {
            local t = require "blocks_t"
            local state = ngx.shared.state
            if not t.wait_count(state, "finished", 2, 10, 0.01) then
                ngx.say("workers finished within 10s: ", state:get("finished"), " of 2")
            end
            for _, step in ipairs({ "stale key_1", "update", "key_1", "key_2", "key_1 again" }) do
                ngx.say(step, ": ", state:get("1:" .. step))
            end
        }
    }
--- request
GET /t
--- response_body
stale key_1: 1 nil 1
update: true nil nil
key_1: 123 nil 2
key_2: {"v":"from the callback"} nil 3
key_1 again: 123 nil 1
--- no_error_log
[error]



=== TEST 13: an L1 hit touches no shared dict and allocates nothing, in the call forms mlcache users write: get(key, nil, cb, arg), get(key, opts, cb), cached tables, cached nil, l1_serializer'd values (deps and direct; 4 x 100k hits, GC stopped)
--- http_config
    lua_shared_dict cache_shared_dict 1m;
    lua_shared_dict ipc_shared_dict 1m;
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })

            -- count every call of every shared dict method (they share one metatable)
            local methods = getmetatable(ngx.shared.cache_shared_dict).__index
            local saved, calls = {}, 0
            for name, f in pairs(methods) do
                if type(f) == "function" then
                    saved[name] = f
                    methods[name] = function(...) calls = calls + 1; return f(...) end
                end
            end

            local function fetch(id) return { id = id, name = "user " .. id } end
            local function fetch_nil() return nil end
            local function serialize(row) return setmetatable(row, { __index = { kind = "user" } }) end
            local opts = { ttl = 60, l1_serializer = serialize }
            local N = 100000
            local jit_events = 0
            local function on_trace() jit_events = jit_events + 1 end
            jit.attach(on_trace, "trace")

            for _, via in ipairs({ "deps", "direct" }) do
                local mlcache = via == "deps" and deps.mlcache or require "zedcup.cache"
                local cache = assert(mlcache.new("l1_" .. via, "cache_shared_dict",
                                                 { lru_size = 100, ipc_shm = "ipc_shared_dict" }))
                -- fill L1 (these calls do use the dicts)
                assert(cache:get("users:1", nil, fetch, 1))
                assert(cache:get("users:2", opts, fetch, 2))
                cache:get("users:none", nil, fetch_nil)
                local function loop()
                    local hits = 0
                    for _ = 1, N do
                        local a, _, l1 = cache:get("users:1", nil, fetch, 1)
                        local b, _, l2 = cache:get("users:2", opts, fetch, 2)
                        local c, err, l3 = cache:get("users:none", nil, fetch_nil)
                        if a.id == 1 and b.kind == "user" and c == nil and err == nil
                           and l1 == 1 and l2 == 1 and l3 == 1
                        then
                            hits = hits + 3
                        end
                    end
                    return hits
                end
                -- Compiling a trace allocates (its GC object), and when LuaJIT compiles
                -- a side trace has a random element: warm up until a whole loop
                -- compiles nothing more, and take a measurement during which the JIT
                -- did nothing (repeated otherwise, a few times at most).
                for _ = 1, 20 do
                    local ev = jit_events
                    loop()
                    if jit_events == ev then break end
                end
                local hits, delta, dict_calls
                for _ = 1, 5 do
                    collectgarbage("collect")
                    collectgarbage("stop")
                    local ev = jit_events
                    local calls_before = calls
                    local before = collectgarbage("count")
                    hits = loop()
                    delta = collectgarbage("count") - before
                    dict_calls = calls - calls_before
                    collectgarbage("restart")
                    if jit_events == ev then break end
                end
                ngx.say(via, ": ", hits, " L1 hits, ", dict_calls, " shared dict calls, ",
                        delta == 0 and "0" or delta, " KB allocated")

                -- the instruments see what they look for: an L2 read, and allocation
                local miss_before = calls
                cache:get("users:3")
                ngx.say(via, ": an L1 miss calls the dict: ", calls > miss_before)
            end
            for name, f in pairs(saved) do methods[name] = f end
            jit.attach(on_trace)

            collectgarbage("stop")
            local before = collectgarbage("count")
            local t
            for i = 1, N do t = { i } end
            local control = collectgarbage("count") - before
            collectgarbage("restart")
            ngx.say("a table per iteration is seen: ", control > 1000, " ", t ~= nil)
        }
    }
--- request
GET /t
--- response_body
deps: 300000 L1 hits, 0 shared dict calls, 0 KB allocated
deps: an L1 miss calls the dict: true
direct: 300000 L1 hits, 0 shared dict calls, 0 KB allocated
direct: an L1 miss calls the dict: true
a table per iteration is seen: true true
--- no_error_log
[error]



=== TEST 14: resty.lock README: the synopsis loop, the cache-lock workflow (a waiter's elapsed > 0 and it finds the value), "locked", expire() and "unlocked", timeout capped at exptime (deps and direct)
--- http_config
    lua_shared_dict my_locks 100k;
    lua_shared_dict my_cache 100k;
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            -- each path's lines; direct's are compared with deps' (blocks_t.sayer)
            local out = {}
            for _, via in ipairs({ "deps", "direct" }) do
                local say
                say, out[via] = require("blocks_t").sayer()
                local resty_lock = via == "deps" and deps.lock or require "zedcup.lock"
                for i = 1, 2 do
                    local lock, err = resty_lock:new("my_locks")
                    if not lock then
                        say("failed to create lock: ", err)
                    end

                    local elapsed, err = lock:lock("my_key")
                    say("lock: ", elapsed, ", ", err)

                    local ok, err = lock:unlock()
                    if not ok then
                        say("failed to unlock: ", err)
                    end
                    say("unlock: ", ok)
                end

                -- the cache-lock workflow, two light threads missing the same key
                local cache = ngx.shared.my_cache
                local key = "k_" .. via
                local fetches = 0
                local function handler(name)
                    local val = cache:get(key)
                    if val then
                        return name .. " hit " .. val
                    end
                    local lock = assert(resty_lock:new("my_locks"))
                    local elapsed, err = lock:lock(key)
                    if not elapsed then
                        return name .. " failed to acquire the lock: " .. err
                    end
                    val = cache:get(key)
                    if val then
                        assert(lock:unlock())
                        return name .. " waited " .. tostring(elapsed > 0) .. ", then hit " .. val
                    end
                    fetches = fetches + 1
                    ngx.sleep(0.05) -- the backend query
                    assert(cache:set(key, "fetched", 1))
                    assert(lock:unlock())
                    return name .. " fetched at once: " .. tostring(elapsed == 0)
                end
                local t1 = ngx.thread.spawn(handler, "a")
                local t2 = ngx.thread.spawn(handler, "b")
                say(select(2, ngx.thread.wait(t1)))
                say(select(2, ngx.thread.wait(t2)))
                say("fetches: ", fetches)

                -- one object holds one lock
                local lock = assert(resty_lock:new("my_locks", { exptime = 10 }))
                say("lock: ", lock:lock("a_" .. via))
                say("again: ", lock:lock("b_" .. via))

                -- expire(timeout) resets the ttl of the held lock
                say("expire: ", lock:expire(0.05))
                ngx.sleep(0.1)
                local other = assert(resty_lock:new("my_locks", { timeout = 0 }))
                say("taken after expiry: ", other:lock("a_" .. via))
                say("other expire(): ", other:expire(), " unlock: ", other:unlock())
                say("unlocked expire: ", other:expire())
                say("unlocked unlock: ", other:unlock())

                -- "timeout cannot be bigger than exptime": the wait stops at exptime
                local holder = assert(resty_lock:new("my_locks", { exptime = 10 }))
                assert(holder:lock("held_" .. via))
                local waiter = assert(resty_lock:new("my_locks", { exptime = 0.05, timeout = 5 }))
                ngx.update_time()
                local t0 = ngx.now()
                local elapsed, err = waiter:lock("held_" .. via)
                ngx.update_time()
                say("capped wait: ", elapsed, " ", err, " ", ngx.now() - t0 < 1)
                assert(holder:unlock())
            end
            for _, line in ipairs(out.deps) do ngx.say(line) end
            ngx.say("direct, the same as deps: ", table.concat(out.direct, "\n") == table.concat(out.deps, "\n"))
        }
    }
--- request
GET /t
--- response_body
lock: 0, nil
unlock: 1
lock: 0, nil
unlock: 1
a fetched at once: true
b waited true, then hit fetched
fetches: 1
lock: 0
again: nillocked
expire: true
taken after expiry: 0
other expire(): true unlock: 1
unlocked expire: nilunlocked
unlocked unlock: nilunlocked
capped wait: nil timeout true
direct, the same as deps: true
--- no_error_log
[error]



=== TEST 15: mlcache new() options as documented: lru (the caller's own lrucache, was ignored), shm_miss, shm_locks, resty_lock_opts, shm_set_tries per call; a custom ipc table is refused loudly (was ignored)
--- http_config
    lua_shared_dict cache_shared_dict 1m;
    lua_shared_dict miss_dict 1m;
    lua_shared_dict lock_dict 1m;
--- config
    location = /t {
        content_by_lua_block {
            local deps = require "zedcup.deps"
            deps.init({ builtin = true })
            local lrucache = require "resty.lrucache.pureffi"
            -- each path's lines; direct's are compared with deps' (blocks_t.sayer)
            local out = {}
            for _, via in ipairs({ "deps", "direct" }) do
                local say
                say, out[via] = require("blocks_t").sayer()
                local mlcache = via == "deps" and deps.mlcache or require "zedcup.cache"
                local lru = lrucache.new(10)
                local cache = assert(mlcache.new("opts_" .. via, "cache_shared_dict", {
                    lru = lru,
                    shm_miss = "miss_dict",
                    shm_locks = "lock_dict",
                    resty_lock_opts = { timeout = 1 },
                }))
                say("value: ", cache:get("hit", { shm_set_tries = 1 }, function() return "v" end))
                say("in the given lru: ", (lru:get("hit")))
                cache:get("miss", nil, function() return nil end)
                say("miss in shm_miss: ", ngx.shared.miss_dict:get_stale("opts_" .. via .. "\31miss") ~= nil,
                        " not in shm: ", ngx.shared.cache_shared_dict:get("opts_" .. via .. "\31miss") == nil)
                local ok, err = pcall(mlcache.new, "x", "cache_shared_dict", { ipc = {} })
                say("custom ipc: ", ok, " ", err)
                ok, err = pcall(cache.get, cache, "k", { shm_set_tries = 0 }, function() return 1 end)
                say("bad shm_set_tries: ", ok, " ", err)
            end
            for _, line in ipairs(out.deps) do ngx.say(line) end
            ngx.say("direct, the same as deps: ", table.concat(out.direct, "\n") == table.concat(out.deps, "\n"))
        }
    }
--- request
GET /t
--- response_body
value: vnil3
in the given lru: v
miss in shm_miss: true not in shm: true
custom ipc: false opts.ipc (a custom IPC library) is not supported by zedcup.cache: use opts.ipc_shm
bad shm_set_tries: false opts.shm_set_tries must be a number >= 1 (got 0)
direct, the same as deps: true
--- no_error_log
[error]
