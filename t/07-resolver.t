# zedcup.dns (the built-in DNS client) and zedcup.resolver (names to addresses,
# cached for the TTL, refreshed in the background), against a DNS server on
# loopback whose records files the blocks change ($TEST_NGINX_DNS_DIR).

__DATA__

=== TEST 1: the DNS client reads A and AAAA records with their TTL, and reports name errors, server failures and timeouts
--- http_config
    lua_socket_log_errors off;
--- config
    location = /t {
        content_by_lua_block {
            local dir = "$TEST_NGINX_DNS_DIR"
            local function records(name, text)
                local f = assert(io.open(dir .. "/" .. name, "w")); f:write(text); f:close()
            end
            records("two.test", "A 127.0.0.3\nA 127.0.0.2\nAAAA ::1\nAAAA 2001:db8::1\nTTL 7\n")
            records("broken.test", "SERVFAIL\n")
            records("silent.test", "DROP\n")

            local dns = require "zedcup.dns"
            local r = assert(dns:new({ nameservers = { { "127.0.0.1", $TEST_NGINX_DNS_PORT } },
                                       timeout = 300, retrans = 1 }))
            local function show(name, qtype)
                local answers, err = r:query(name, { qtype = qtype })
                if not answers then return ngx.say(name, ": ", err) end
                if answers.errcode then
                    return ngx.say(name, ": ", answers.errcode, " ", answers.errstr)
                end
                local out = {}
                for _, rr in ipairs(answers) do out[#out + 1] = rr.address .. "/" .. rr.ttl end
                table.sort(out)
                ngx.say(name, ": ", table.concat(out, " "))
            end
            show("two.test", dns.TYPE_A)
            show("two.test", dns.TYPE_AAAA)
            show("nowhere.test", dns.TYPE_A)
            show("broken.test", dns.TYPE_A)
            local answers, err = r:query("silent.test", { qtype = dns.TYPE_A })
            ngx.say("silent.test: ", answers, " ", err:find("timeout", 1, true) ~= nil)
        }
    }
--- request
GET /t
--- response_body
two.test: 127.0.0.2/7 127.0.0.3/7
two.test: 2001:db8::1/7 ::1/7
nowhere.test: 3 name error
broken.test: 2 server failure
silent.test: nil true
--- no_error_log
[error]

=== TEST 2: resolve() looks a name up once; peers() then answers from the cache without a query, sorted; literal addresses pass through
--- http_config
    lua_socket_log_errors off;
    init_by_lua_block {
        local f = assert(io.open("$TEST_NGINX_DNS_DIR/web.test", "w"))
        f:write("A 127.0.0.3\nA 127.0.0.2\nTTL 30\n"); f:close()
        require("zedcup.resolver").configure({ nameservers = { { "127.0.0.1", $TEST_NGINX_DNS_PORT } } })
        assert(require("zedcup.resolver").peers("early.test") == nil)  -- no timer in init: no error
    }
--- config
    location = /t {
        content_by_lua_block {
            local resolver = require "zedcup.resolver"
            local function queries()
                local f = io.open("$TEST_NGINX_DNS_DIR/web.test.queries")
                if not f then return 0 end
                local n = 0
                for _ in f:lines() do n = n + 1 end
                f:close()
                return n
            end
            ngx.say("before: ", resolver.peers("web.test"))
            local addrs = assert(resolver.resolve("web.test"))
            ngx.say("resolved: ", table.concat(addrs, " "))
            local n = queries()
            for _ = 1, 1000 do assert(resolver.peers("web.test")) end
            ngx.say("peers: ", table.concat(resolver.peers("web.test"), " "))
            ngx.say("queries during 1000 peers(): ", queries() - n)
            ngx.say("literal: ", resolver.peers("10.1.2.3")[1], " ", resolver.peers("::1")[1])
            ngx.say("unknown: ", resolver.resolve("nowhere.test"))
        }
    }
--- request
GET /t
--- response_body_like
^before: nilresolving
resolved: 127\.0\.0\.2 127\.0\.0\.3
peers: 127\.0\.0\.2 127\.0\.0\.3
queries during 1000 peers\(\): 0
literal: 10\.1\.2\.3 ::1
unknown: nildns: nowhere\.test: name error \(3\)
$
--- no_error_log
[error]

=== TEST 3: two workers follow a changed A record within its TTL plus a second, each on its own background timer
--- workers: 2
--- timeout: 10
--- http_config
    lua_socket_log_errors off;
    init_by_lua_block {
        local f = assert(io.open("$TEST_NGINX_DNS_DIR/api.test", "w"))
        f:write("A 127.0.0.2\nTTL 1\n"); f:close()
        require("zedcup.resolver").configure({ nameservers = { { "127.0.0.1", $TEST_NGINX_DNS_PORT } } })
    }
    init_worker_by_lua_block {
        require("zedcup.resolver").peers("api.test")  -- known from the start in every worker
    }
--- config
    location = /t {
        content_by_lua_block {
            local resolver = require "zedcup.resolver"
            local t = require "blocks_t"
            assert(t.retry_until(ngx.now() + 3, 0.05, function() return resolver.peers("api.test") end))
            ngx.update_time()
            local f = assert(io.open("$TEST_NGINX_DNS_DIR/api.test.tmp", "w"))
            f:write("A 127.0.0.4\nA 127.0.0.5\nTTL 1\n"); f:close()
            assert(os.rename("$TEST_NGINX_DNS_DIR/api.test.tmp", "$TEST_NGINX_DNS_DIR/api.test"))
            local changed = ngx.now()
            local ok = t.retry_until(ngx.now() + 5, 0.02, function()
                local p = resolver.peers("api.test")
                return p and p[1] == "127.0.0.4"
            end)
            ngx.update_time()
            ngx.say("followed: ", ok, " within ttl + 1 s: ", ngx.now() - changed <= 2)
            ngx.say(table.concat(resolver.peers("api.test"), " "))
        }
    }
--- request
GET /t
--- response_body
followed: true within ttl + 1 s: true
127.0.0.4 127.0.0.5
--- grep_error_log: api.test -> 127.0.0.4, 127.0.0.5
--- grep_error_log_out
api.test -> 127.0.0.4, 127.0.0.5
api.test -> 127.0.0.4, 127.0.0.5
--- no_error_log
[error]

=== TEST 4: a failed lookup keeps the last good addresses and is logged once, and once more when the name resolves again
--- timeout: 20
--- http_config
    lua_socket_log_errors off;
    init_by_lua_block {
        local f = assert(io.open("$TEST_NGINX_DNS_DIR/db.test", "w"))
        f:write("A 127.0.0.2\nTTL 1\n"); f:close()
        require("zedcup.resolver").configure({ nameservers = { { "127.0.0.1", $TEST_NGINX_DNS_PORT } },
                                               timeout = 0.2, retrans = 1, ttl_min = 0.2 })
    }
--- config
    location = /t {
        content_by_lua_block {
            local resolver = require "zedcup.resolver"
            local t = require "blocks_t"
            local dir = "$TEST_NGINX_DNS_DIR"
            local function records(text)
                local f = assert(io.open(dir .. "/db.test.tmp", "w")); f:write(text); f:close()
                assert(os.rename(dir .. "/db.test.tmp", dir .. "/db.test"))
            end
            local function queries()
                local n = 0
                for _ in io.lines(dir .. "/db.test.queries") do n = n + 1 end
                return n
            end
            assert(resolver.resolve("db.test"))
            records("SERVFAIL\n")
            -- several failed refreshes: the address stays
            local n = queries()
            assert(t.retry_until(ngx.now() + 6, 0.05, function() return queries() >= n + 3 end))
            ngx.say("during failures: ", table.concat(resolver.peers("db.test"), " "))
            records("A 127.0.0.9\nTTL 1\n")
            local ok = t.retry_until(ngx.now() + 8, 0.05, function()
                return resolver.peers("db.test")[1] == "127.0.0.9"
            end)
            ngx.say("recovered: ", ok)
        }
    }
--- request
GET /t
--- response_body
during failures: 127.0.0.2
recovered: true
--- grep_error_log: db.test: dns: db.test: server failure (2); keeping 127.0.0.2
--- grep_error_log_out
db.test: dns: db.test: server failure (2); keeping 127.0.0.2
--- error_log
db.test resolves again: 127.0.0.9
--- no_error_log
[error]

=== TEST 5: without nameservers the system's /etc/hosts answers first; options are checked with the field named
--- http_config
    init_by_lua_block {
        local f = assert(io.open("$TEST_NGINX_SERVROOT/hosts", "w"))
        f:write("# test hosts\n127.0.0.7  app.local app   # comment\n::7 app6.local\n"); f:close()
        require("zedcup.resolver").configure({ hosts_file = "$TEST_NGINX_SERVROOT/hosts" })
    }
--- config
    location = /t {
        content_by_lua_block {
            local resolver = require "zedcup.resolver"
            ngx.say("app.local: ", table.concat(assert(resolver.resolve("app.local")), " "))
            ngx.say("APP: ", table.concat(assert(resolver.resolve("APP")), " "))
            ngx.say("app6.local: ", table.concat(assert(resolver.resolve("app6.local")), " "))
            for _, bad in ipairs({ { nameservers = {} }, { ttl_min = -1 }, { ttl_min = 5, ttl_max = 1 },
                                   { nameservers = { 53 } }, { ipv6 = "yes" } }) do
                local ok, err = pcall(resolver.configure, bad)
                ngx.say(ok, " ", (err:gsub("^.-: ", "")))
            end
        }
    }
--- request
GET /t
--- response_body
app.local: 127.0.0.7
APP: 127.0.0.7
app6.local: ::7
false opts.resolver.nameservers must be a non-empty array
false opts.resolver.ttl_min must be a number >= 0 (got -1)
false opts.resolver.ttl_max must be >= ttl_min
false opts.resolver.nameservers[1] must be "addr" or { "addr", port } (got 53)
false opts.resolver.ipv6 must be a boolean (got yes)
--- no_error_log
[error]
