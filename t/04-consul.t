# zedcup.consul: lua-resty-consul's API against the session's (dev-)Consul, and
# against an echo server for what Consul does not show (headers, query, timeouts)

__DATA__

=== TEST 1: put_key() then get_key(): Value comes back base64-decoded, status and headers as Consul sent them
--- config
    location = /t {
        content_by_lua_block {
            local consul = require "zedcup.consul"
            local c = consul.new({ host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                                   token = "$TEST_NGINX_CONSUL_TOKEN" })
            local key = "$TEST_ZEDCUP_PREFIX/a/b"
            local value = "h\0llo | wörld \255"
            local res, err = c:put_key(key, value)
            ngx.say("put: ", res.status, " ", res.body, " ", err)
            res, err = c:get_key(key)
            ngx.say("get: ", res.status, " ", err, " ", #res.body, " ", res.body[1].Key == key,
                    " ", res.body[1].Value == value)
            ngx.say("index header: ", tonumber(res.headers["X-Consul-Index"]) > 0)
            ngx.say("content type: ", res.headers["content-type"])
            ngx.say("flags: ", c:put_key(key, "x", { flags = 42 }).body, " ",
                    c:get_key(key).body[1].Flags)
            ngx.say("leading slash: ", c:get_key("/" .. key).body[1].Value)
        }
    }
--- request
GET /t
--- response_body
put: 200 true nil
get: 200 nil 1 true true
index header: true
content type: application/json
flags: true 42
leading slash: x
--- no_error_log
[error]

=== TEST 2: a missing key is an answer (404, empty body), not an error; an empty value stays null
--- config
    location = /t {
        content_by_lua_block {
            local consul = require "zedcup.consul"
            local cjson = require "cjson"
            local c = consul:new({ host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                                   token = "$TEST_NGINX_CONSUL_TOKEN" })
            local res, err = c:get_key("$TEST_ZEDCUP_PREFIX/missing")
            ngx.say("missing: ", res.status, " [", res.body, "] ", err)
            assert(c:put_key("$TEST_ZEDCUP_PREFIX/empty", ""))
            res = c:get_key("$TEST_ZEDCUP_PREFIX/empty")
            ngx.say("empty: ", res.status, " ", res.body[1].Value == cjson.null)
        }
    }
--- request
GET /t
--- response_body
missing: 404 [] nil
empty: 200 true
--- no_error_log
[error]

=== TEST 3: put_key() JSON-encodes tables and booleans; put() and get() take API paths; ?raw answers plain text
--- config
    location = /t {
        content_by_lua_block {
            local consul = require "zedcup.consul"
            local c = consul.new({ host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                                   token = "$TEST_NGINX_CONSUL_TOKEN" })
            local p = "$TEST_ZEDCUP_PREFIX"
            assert(c:put_key(p .. "/t", { list = { 1, 2 } }))
            ngx.say("table: ", c:get_key(p .. "/t").body[1].Value)
            assert(c:put_key(p .. "/b", true))
            ngx.say("boolean: ", c:get_key(p .. "/b").body[1].Value)
            local res = assert(c:put("/kv/" .. p .. "/raw", "plain"))
            ngx.say("put: ", res.status, " ", res.body)
            res = assert(c:get("/kv/" .. p .. "/raw", { raw = true }))
            ngx.say("raw: ", res.status, " ", res.body, " ", res.headers["Content-Type"])
            res = assert(c:get("kv/" .. p .. "/raw"))
            ngx.say("no leading slash: ", ngx.decode_base64(res.body[1].Value))
            res = assert(c:get("/status/leader"))
            ngx.say("leader is a string: ", type(res.body))
        }
    }
--- request
GET /t
--- response_body
table: {"list":[1,2]}
boolean: true
put: 200 true
raw: 200 plain text/plain
no leading slash: plain
leader is a string: string
--- no_error_log
[error]

=== TEST 4: list_keys() lists keys under a prefix, with a separator when given; delete_key() and delete() remove keys
--- config
    location = /t {
        content_by_lua_block {
            local consul = require "zedcup.consul"
            local c = consul.new({ host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                                   token = "$TEST_NGINX_CONSUL_TOKEN" })
            local p = "$TEST_ZEDCUP_PREFIX/"
            for _, k in ipairs({ "x/1", "x/2", "y", "x/sub/3" }) do assert(c:put_key(p .. k, k)) end
            local function short(res)
                local out = {}
                for i, k in ipairs(res.body) do out[i] = k:sub(#p + 1) end
                return res.status .. " " .. table.concat(out, ",")
            end
            ngx.say("all: ", short(c:list_keys(p)))
            ngx.say("separator: ", short(c:list_keys(p, { separator = "/" })))
            local res = c:delete_key(p .. "y")
            ngx.say("delete_key: ", res.status, " ", res.body)
            res = c:delete("/kv/" .. p .. "x/sub/3")
            ngx.say("delete: ", res.status, " ", res.body)
            ngx.say("left: ", short(c:list_keys(p)))
            ngx.say("recurse: ", c:delete_key(p .. "x/", { recurse = true }).body)
            ngx.say("none left: ", c:list_keys(p).status)
        }
    }
--- request
GET /t
--- response_body
all: 200 x/1,x/2,x/sub/3,y
separator: 200 x/,y
delete_key: 200 true
delete: 200 true
left: 200 x/1,x/2
recurse: true
none left: 404
--- no_error_log
[error]

=== TEST 5: txn() base64-encodes values on the way in and decodes them in the results; a failed txn is a 409 answer
--- config
    location = /t {
        content_by_lua_block {
            local consul = require "zedcup.consul"
            local c = consul.new({ host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                                   token = "$TEST_NGINX_CONSUL_TOKEN" })
            local p = "$TEST_ZEDCUP_PREFIX/"
            local payload = {
                { KV = { Verb = "set", Key = p .. "a", Value = "alpha" } },
                { KV = { Verb = "set", Key = p .. "b", Value = "beta", Flags = 7 } },
                { KV = { Verb = "get", Key = p .. "a" } },
            }
            local res, err = c:txn(payload)
            ngx.say("status: ", res.status, " ", err)
            ngx.say("get result: ", res.body.Results[3].KV.Value)
            ngx.say("payload untouched: ", payload[1].KV.Value)
            ngx.say("stored: ", c:get_key(p .. "b").body[1].Value, " ", c:get_key(p .. "b").body[1].Flags)

            res = c:txn({
                { KV = { Verb = "set", Key = p .. "c", Value = "gamma" } },
                { KV = { Verb = "cas", Key = p .. "a", Value = "x", Index = 1 } },
            })
            ngx.say("failed: ", res.status, " ", res.body.Errors[1].OpIndex, " ", #res.body.Errors)
            ngx.say("nothing applied: ", c:get_key(p .. "c").status)
            ngx.say("empty txn: ", c:txn({}).status)
            res = c:txn('[{"KV":{"Verb":"get","Key":"' .. p .. 'b"}}]')
            ngx.say("string payload: ", res.status, " ", res.body.Results[1].KV.Value)
            -- numbers and booleans are sent as their text, like lua-resty-consul does
            res = c:txn({ { KV = { Verb = "set", Key = p .. "d", Value = 1 } },
                          { KV = { Verb = "set", Key = p .. "e", Value = true } } })
            ngx.say("number and boolean: ", res.status, " ", c:get_key(p .. "d").body[1].Value,
                    " ", c:get_key(p .. "e").body[1].Value)
            ngx.say(pcall(c.txn, c, { { KV = { Verb = "set", Key = p .. "d", Value = {} } } }))
            ngx.say(c:txn())
        }
    }
--- request
GET /t
--- response_body
status: 200 nil
get result: alpha
payload untouched: alpha
stored: beta 7
failed: 409 1 1
nothing applied: 404
empty txn: 200
string payload: 200 beta
number and boolean: 200 1 true
falsepayload[1].KV.Value must be a string, number or boolean (got table)
nilconsul: txn: payload required
--- no_error_log
[error]

=== TEST 6: a blocking query (index + wait) returns as soon as the key changes, or after wait with the same index
--- config
    location = /t {
        content_by_lua_block {
            local consul = require "zedcup.consul"
            local c = consul.new({ host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                                   token = "$TEST_NGINX_CONSUL_TOKEN" })
            local key = "$TEST_ZEDCUP_PREFIX/watched"
            assert(c:put_key(key, "v1"))
            local res = assert(c:get_key(key))
            local index = tonumber(res.headers["X-Consul-Index"])

            local writer = ngx.thread.spawn(function()
                ngx.sleep(0.2)
                local w = consul.new({ host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                                       token = "$TEST_NGINX_CONSUL_TOKEN" })
                return w:put_key(key, "v2")
            end)
            ngx.update_time()
            local t0 = ngx.now()
            res = assert(c:get_key(key, { index = index, wait = 10 }))
            ngx.update_time()
            local took = ngx.now() - t0
            ngx.thread.wait(writer)
            local new_index = tonumber(res.headers["X-Consul-Index"])
            ngx.say("woke on change: ", res.body[1].Value, " ", new_index > index, " ",
                    took >= 0.15 and took < 5)

            t0 = ngx.now()
            res = assert(c:get_key(key, { index = new_index, wait = "300ms" }))
            ngx.update_time()
            took = ngx.now() - t0
            ngx.say("timed out: ", res.status, " ", res.body[1].Value, " ",
                    tonumber(res.headers["X-Consul-Index"]) == new_index, " ", took >= 0.25 and took < 3)
        }
    }
--- request
GET /t
--- response_body
woke on change: v2 true true
timed out: 200 v2 true true
--- no_error_log
[error]

=== TEST 7: a blocking query gets wait + wait/16 + read_timeout to answer; a plain request only read_timeout
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location /v1/ {
            content_by_lua_block {
                ngx.sleep(tonumber(ngx.var.arg_delay))
                ngx.header["Content-Type"] = "application/json"
                ngx.say('"slow"')
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local consul = require "zedcup.consul"
            local c = consul.new({ host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                                   token = "$TEST_NGINX_CONSUL_TOKEN", read_timeout = 100 })
            local key = "$TEST_ZEDCUP_PREFIX/k"
            assert(c:put_key(key, "v"))
            local index = tonumber(c:get_key(key).headers["X-Consul-Index"])
            -- Consul holds this one for 0.5 s (plus up to 1/16 jitter), well past read_timeout
            local res, err = c:get_key(key, { index = index, wait = 0.5 })
            ngx.say("blocking query: ", res and res.status, " ", err)

            local slow = consul.new({ port = $TEST_NGINX_RAND_PORT_1, read_timeout = 100 })
            ngx.say("plain request: ", slow:get("/slow", { delay = 0.3 }))
            ngx.say("within wait: ", slow:get("/slow", { delay = 0.3, index = 1, wait = 1 }).body)
        }
    }
--- request
GET /t
--- response_body_like
^blocking query: 200 nil
plain request: nilconsul: GET /slow failed: .*timeout.*
within wait: slow
$
--- error_log
lua tcp socket read timed out

=== TEST 8: the token travels as X-Consul-Token (args over default_args over opts), never in the query; wait gets a unit
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location /v1/ {
            content_by_lua_block {
                ngx.req.read_body()
                ngx.header["Content-Type"] = "application/json; charset=utf-8"
                ngx.print(require("cjson").encode({
                    method = ngx.req.get_method(),
                    uri = ngx.var.uri,
                    args = (function()
                        local out = {}
                        for k, v in pairs(ngx.req.get_uri_args()) do
                            out[#out + 1] = v == true and k or k .. "=" .. v
                        end
                        table.sort(out)
                        return table.concat(out, "&")
                    end)(),
                    token = ngx.var.http_x_consul_token or "-",
                    ctype = ngx.var.http_content_type or "-",
                    body = ngx.req.get_body_data() or "-",
                }))
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local consul = require "zedcup.consul"
            local port = $TEST_NGINX_RAND_PORT_1
            local function show(res)
                local b = res.body
                ngx.say(b.method, " ", b.uri, " [", b.args, "] token=", b.token, " ctype=", b.ctype,
                        " body=", b.body)
            end
            local c = consul.new({ port = port, token = "from-opts" })
            show(c:get("/agent/self"))
            c = consul.new({ port = port, token = "from-opts",
                             default_args = { token = "from-defaults", dc = "dc1" } })
            show(c:get("/agent/self"))
            show(c:get("/agent/self", { token = "from-args", dc = "dc2" }))
            show(c:put("/agent/service/register", { Name = "web" }))
            show(c:delete_key("a/b", { cas = 5 }))
            show(c:get_key("k", { index = 12, wait = 2.5, stale = true }))
            show(c:list_keys("p/"))
            show(c:txn({}))
            show(consul.new({ port = port }):get("/x"))
        }
    }
--- request
GET /t
--- response_body
GET /v1/agent/self [] token=from-opts ctype=- body=-
GET /v1/agent/self [dc=dc1] token=from-defaults ctype=- body=-
GET /v1/agent/self [dc=dc2] token=from-args ctype=- body=-
PUT /v1/agent/service/register [dc=dc1] token=from-defaults ctype=application/json body={"Name":"web"}
DELETE /v1/kv/a/b [cas=5&dc=dc1] token=from-defaults ctype=- body=-
GET /v1/kv/k [dc=dc1&index=12&stale&wait=2.5s] token=from-defaults ctype=- body=-
GET /v1/kv/p/ [dc=dc1&keys] token=from-defaults ctype=- body=-
PUT /v1/txn [dc=dc1] token=from-defaults ctype=- body=[]
GET /v1/x [] token=- ctype=- body=-
--- no_error_log
[error]

=== TEST 9: no answer is nil, err naming the address; bad options raise; a path or key that is not a string is nil, err (as in lua-resty-consul)
--- config
    location = /t {
        content_by_lua_block {
            local consul = require "zedcup.consul"
            local c = consul.new({ port = $TEST_NGINX_RAND_PORT_1, connect_timeout = 500 })
            ngx.say(c:get_key("k"))
            ngx.say(pcall(consul.new, { port = "8500" }))
            ngx.say(pcall(consul.new, "x"))
            ngx.say(c:get(42))
            ngx.say(pcall(c.get, c, "/kv/k", "args"))
            ngx.say(c:get_key(42))
            ngx.say(pcall(c.get, c, "/kv/k", { wait = "soon" }))
            local d = consul.new()
            ngx.say("defaults: ", d.host, ":", d.port, " ", d.connect_timeout, " ", d.read_timeout,
                    " ssl=", d.ssl, " verify=", d.ssl_verify)
        }
    }
--- request
GET /t
--- response_body_like
^nilconsul: could not connect to 127.0.0.1:\d+: .*connection refused
falseopts.port must be a number \(got string: 8500\)
falseopts must be a table \(got string\)
nilconsul: path must be a string \(got number\)
falseargs must be a table \(got string\)
nilconsul: key must be a string \(got number\)
falseargs.wait must be a number of seconds \(got soon\)
defaults: 127.0.0.1:8500 60000 60000 ssl=false verify=true
$
--- error_log
connect() failed (111: Connection refused)

=== TEST 10: ssl = true speaks TLS with sni_host as the server name; the certificate is verified unless ssl_verify = false
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1 ssl;
        # a self-signed certificate for consul.zedcup.test, inline (\n: nginx's escape)
        ssl_certificate "data:-----BEGIN CERTIFICATE-----\nMIIBsDCCAVagAwIBAgIUI1MAQVywWK4Ev5/dXe2vXiirQoAwCgYIKoZIzj0EAwIw\nHTEbMBkGA1UEAwwSY29uc3VsLnplZGN1cC50ZXN0MCAXDTI2MTEyMTA4MTAyMFoY\nDzIxMjYxMDI4MDgxMDIwWjAdMRswGQYDVQQDDBJjb25zdWwuemVkY3VwLnRlc3Qw\nWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATvAnVj94sVwglyRuFE/eXWpGC508B4\n5Rrse7XOar+YdN1Men+4pV2vjNmfSM8sYjv6A7qTqQca2EOHgmDFXV6Zo3IwcDAd\nBgNVHQ4EFgQU9ZRzDmG2yEELYh9nA6UO2SO8W3MwHwYDVR0jBBgwFoAU9ZRzDmG2\nyEELYh9nA6UO2SO8W3MwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHREEFjAUghJjb25z\ndWwuemVkY3VwLnRlc3QwCgYIKoZIzj0EAwIDSAAwRQIgSq028eX4ECvrh+7LgQco\n2/edKpaki3MNWK9iZyU0tzwCIQCBdub8ZqQgr21lVwKSDHgXXba8NKUw25VQCoit\n9br8iw==\n-----END CERTIFICATE-----";
        ssl_certificate_key "data:-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+nFBRo1c666uBuaG\nOUr+WzchClLe1GM/TsIrE9wlAa2hRANCAATvAnVj94sVwglyRuFE/eXWpGC508B4\n5Rrse7XOar+YdN1Men+4pV2vjNmfSM8sYjv6A7qTqQca2EOHgmDFXV6Z\n-----END PRIVATE KEY-----";
        location /v1/ {
            content_by_lua_block {
                ngx.header["Content-Type"] = "application/json"
                ngx.say(require("cjson").encode({ tls = ngx.var.ssl_protocol ~= nil,
                                                  sni = ngx.var.ssl_server_name or "-",
                                                  token = ngx.var.http_x_consul_token or "-" }))
            }
        }
    }
--- config
    location = /t {
        lua_socket_log_errors off;
        content_by_lua_block {
            local consul = require "zedcup.consul"
            local port = $TEST_NGINX_RAND_PORT_1
            local c = consul.new({ port = port, ssl = true, ssl_verify = false,
                                   sni_host = "consul.zedcup.test", token = "t" })
            local res = assert(c:get("/agent/self"))
            ngx.say("tls: ", res.body.tls, " sni: ", res.body.sni, " token: ", res.body.token)
            c = consul.new({ port = port, ssl = true, sni_host = "consul.zedcup.test" })
            ngx.say(c:get("/agent/self"))
        }
    }
--- request
GET /t
--- response_body_like chomp
^tls: true sni: consul.zedcup.test token: t
nilconsul: could not connect to 127.0.0.1:\d+: .*self.signed certificate
$
--- no_error_log
[error]

=== TEST 11: get_client_body_reader() streams the client's request body (here into a key)
--- config
    location = /t {
        content_by_lua_block {
            local consul = require "zedcup.consul"
            local c = consul.new({ host = "$TEST_NGINX_CONSUL_HOST", port = $TEST_NGINX_CONSUL_PORT,
                                   token = "$TEST_NGINX_CONSUL_TOKEN" })
            local reader = assert(c:get_client_body_reader(4))
            local chunks = {}
            repeat
                local chunk = reader()
                chunks[#chunks + 1] = chunk
            until not chunk
            ngx.say("chunks: ", #chunks)
            assert(c:put_key("$TEST_ZEDCUP_PREFIX/body", table.concat(chunks)))
            ngx.say(c:get_key("$TEST_ZEDCUP_PREFIX/body").body[1].Value)
        }
    }
--- request
PUT /t
hello, consul
--- response_body
chunks: 4
hello, consul
--- no_error_log
[error]
