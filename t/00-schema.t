# zedcup.schema: validation, typing, defaults and the Consul key mapping, held to
# the vectors shared with zedctl (tests/vectors/schema.json).

__DATA__

=== TEST 1: every shared schema vector: problems (path and value), effective config, keys, and keys read back
--- config
    location = /t {
        content_by_lua_block {
            local cjson = require "cjson"
            local schema = require "zedcup.schema"
            local f = assert(io.open("$TEST_NGINX_REPO/tests/vectors/schema.json"))
            local doc = cjson.decode(f:read("*a"))
            f:close()

            local function eq(a, b)
                if a == cjson.null then a = nil end
                if b == cjson.null then b = nil end
                if type(a) ~= type(b) then return false end
                if type(a) ~= "table" then return a == b end
                for k, v in pairs(a) do if not eq(v, b[k]) then return false end end
                for k, v in pairs(b) do if a[k] == nil and v ~= cjson.null then return false end end
                return true
            end

            local failures = 0
            local function fail(case, why)
                failures = failures + 1
                ngx.say("FAIL ", case.name, ": ", why)
            end

            for _, case in ipairs(doc.cases) do
                local norm, problems = schema.normalise(case.kind, case.config)
                if case.valid then
                    if #problems > 0 then
                        fail(case, schema.message(problems[1]))
                    elseif case.effective and not eq(schema.effective(case.kind, norm), case.effective) then
                        fail(case, "effective " .. cjson.encode(schema.effective(case.kind, norm)))
                    elseif case.kv then
                        local flat = schema.flatten(case.kind, norm)
                        local kv = {}
                        for _, e in ipairs(flat) do kv[e[1]] = e[2] end
                        local back, p2 = schema.unflatten(case.kind, flat)
                        if not eq(kv, case.kv) then
                            fail(case, "kv " .. cjson.encode(kv))
                        elseif not back or not eq(back, norm) then
                            fail(case, "read back: " .. (p2[1] and schema.message(p2[1]) or cjson.encode(back)))
                        end
                    end
                else
                    for _, want in ipairs(case.errors) do
                        local found = false
                        for _, p in ipairs(problems) do
                            local path = {}
                            for i, seg in ipairs(p.path) do
                                path[i] = type(seg) == "number" and seg - 1 or seg
                            end
                            if eq(path, want.path) and eq(p.value, want.value) then
                                found = true
                            end
                        end
                        if not found then
                            fail(case, "missing problem " .. cjson.encode(want))
                        end
                    end
                end
            end
            ngx.say("cases >= 40: ", #doc.cases >= 40)
            ngx.say("failures: ", failures)
        }
    }
--- request
GET /t
--- response_body
cases >= 40: true
failures: 0
--- no_error_log
[error]



=== TEST 2: configure_instance refuses a bad config with every problem as "<path>: <problem> (got <value>)" and writes nothing
--- http_config
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    init_by_lua_block {
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local ok, err = zedcup.configure_instance("bad", {
                pools = { { method = "hash", hosts = { { host = "10.0.0.1", port = 80 },
                                                       { host = "10.0.0.2", port = 70000 } } } },
            })
            ngx.say(ok, " | ", err)
            ngx.say(#zedcup.instance_list())
            ok, err = zedcup.configure({ consul_wait_time = 601 })
            ngx.say(ok, " | ", err)
            ok, err = zedcup.configure_instance("a/b", { pools = {} })
            ngx.say(ok, " | ", err)
            ok, err = pcall(zedcup.configure_instance, 42, {})
            ngx.say(ok, " | ", err)
        }
    }
--- request
GET /t
--- response_body_like
^nil \| pools\[1\]\.hosts\[2\]\.port: must be at most 65535 \(got 70000\); pools\[1\]\.method: must be one of weighted_rr, chash, least_conn, ewma \(got "hash"\)
0
nil \| consul_wait_time: must be at most 600 \(got 601\)
nil \| instance: must be a non-empty name without '/', not '\.' or '\.\.' \(got "a/b"\)
false \| .*instance must be a string \(got number\)
$
--- no_error_log
[error]



=== TEST 3: defect "values typed by guessing": a host named "1" stays a string, ports come back as integers
--- config
    location = /t {
        content_by_lua_block {
            local schema = require "zedcup.schema"
            local conf, problems = schema.unflatten("instance", {
                { "pools/1/hosts/1/name", "1" },
                { "pools/1/hosts/1/host", "10.0.0.1" },
                { "pools/1/hosts/1/port", "8080" },
                { "pools/1/hosts/1/up", "false" },
                { "pools/1/name", "true" },
            })
            local h = conf.pools[1].hosts[1]
            ngx.say(type(h.name), " ", h.name, " ", type(h.port), " ", h.port, " ", type(h.up), " ", h.up)
            ngx.say(type(conf.pools[1].name), " ", conf.pools[1].name)
            local bad
            bad, problems = schema.unflatten("instance", {
                { "pools/1/hosts/1/host", "10.0.0.1" },
                { "pools/1/hosts/1/port", "eighty" },
            })
            ngx.say(bad, " ", schema.message(problems[1], "zedcup/instances/x/" .. schema.path_key(problems[1].path)))
        }
    }
--- request
GET /t
--- response_body
string 1 number 8080 boolean false
string true
nil zedcup/instances/x/pools/1/hosts/1/port: must be an integer (got "eighty")



=== TEST 4: defects "defaults merged into arrays index by index" and "instance healthcheck never merged with defaults"
--- config
    location = /t {
        content_by_lua_block {
            local schema = require "zedcup.schema"
            local norm = assert(schema.check("instance", {
                healthcheck = { path = "/hc" },
                pools = { { status_codes = { "50x" }, hosts = { { host = "h", port = 1 } } } },
            }))
            local eff = schema.effective("instance", norm)
            ngx.say(table.concat(eff.pools[1].status_codes, ","))
            ngx.say(eff.healthcheck.path, " ", eff.healthcheck.interval, " ", eff.healthcheck.method, " ",
                    eff.healthcheck.headers["User-Agent"])
            -- the stored form has no defaults
            for _, e in ipairs(schema.flatten("instance", norm)) do ngx.say(e[1], "=", e[2]) end
        }
    }
--- request
GET /t
--- response_body
50x
/hc 60 GET zedcup/0.1.0 HTTP Check (lua)
healthcheck/path=/hc
pools/1/hosts/1/host=h
pools/1/hosts/1/port=1
pools/1/status_codes/1=50x
