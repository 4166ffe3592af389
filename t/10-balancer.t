# zedcup.balancer.weighted_rr and zedcup.select: host selection on its own,
# without sockets or Consul.

__DATA__

=== TEST 1: defect "weighted_rr split 10/20/30 as 1:2:2": exact 1:2:3 over every cycle of 60 picks
--- config
    location = /t {
        content_by_lua_block {
            local wrr = require "zedcup.balancer.weighted_rr"
            local hosts = { { name = "a", weight = 10 }, { name = "b", weight = 20 }, { name = "c", weight = 30 } }
            local b = wrr.new(hosts)
            local all = function() return true end
            for cycle = 1, 3 do
                local counts = { a = 0, b = 0, c = 0 }
                for _ = 1, 60 do
                    local h = b:next(all)
                    counts[h.name] = counts[h.name] + 1
                end
                ngx.say("cycle ", cycle, ": a=", counts.a, " b=", counts.b, " c=", counts.c)
            end
        }
    }
--- request
GET /t
--- response_body
cycle 1: a=10 b=20 c=30
cycle 2: a=10 b=20 c=30
cycle 3: a=10 b=20 c=30



=== TEST 2: weighted_rr is smooth: weights 5/1/1 never pick the heavy host more than 3 times in a row
--- config
    location = /t {
        content_by_lua_block {
            local wrr = require "zedcup.balancer.weighted_rr"
            local b = wrr.new({ { name = "a", weight = 5 }, { name = "b", weight = 1 }, { name = "c", weight = 1 } })
            local seq = {}
            for i = 1, 7 do seq[i] = b:next(function() return true end).name end
            ngx.say(table.concat(seq))
        }
    }
--- request
GET /t
--- response_body
aabacaa



=== TEST 3: weighted_rr skips hosts the filter refuses (with its two arguments) and returns nil when none is usable
--- config
    location = /t {
        content_by_lua_block {
            local wrr = require "zedcup.balancer.weighted_rr"
            local b = wrr.new({ { name = "a", weight = 1 }, { name = "b", weight = 3 } })
            local function not_named(h, x, y) return h.name ~= x and h.name ~= y end
            local seq = {}
            for i = 1, 4 do seq[i] = b:next(not_named, "b").name end
            ngx.say(table.concat(seq))
            ngx.say(b:next(not_named, "a", "b"))
        }
    }
--- request
GET /t
--- response_body
aaaa
nil



=== TEST 4: select: pools in order, up=false pools and hosts skipped, down and failed hosts skipped, then the next pool
--- config
    location = /t {
        content_by_lua_block {
            local schema = require "zedcup.schema"
            local select = require "zedcup.select"
            local norm = assert(schema.check("instance", { pools = {
                { name = "off", up = false, hosts = { { name = "x", host = "h", port = 1 } } },
                { name = "p1", hosts = { { name = "a", host = "h", port = 1 },
                                         { name = "b", host = "h", port = 2, up = false },
                                         { name = "c", host = "h", port = 3 } } },
                { name = "p2", hosts = { { name = "d", host = "/run/d.sock" } } },
            } }))
            local plan = assert(select.compile("i", schema.effective("instance", norm), "v1"))
            local function pick(down, failed)
                local p, h = select.next(plan, down, failed)
                return p and (p.config.name .. "/" .. h.name) or "none"
            end
            ngx.say(pick(), " ", pick(), " ", pick())
            local down = { p1 = { a = true, c = ngx.now() + 60 } }
            ngx.say(pick(down))
            ngx.say(pick({ p1 = { a = ngx.now() - 1 } }))
            local failed = {}
            local p, h = select.next(plan, nil, failed)
            failed[h] = true
            p, h = select.next(plan, nil, failed)
            failed[h] = true
            ngx.say(pick(nil, failed), " usable left: ", select.usable_count(plan, nil, failed))
            failed[plan.pools[3].config.hosts[1]] = true
            ngx.say(pick(nil, failed))
            local d = plan.pools[3].config.hosts[1]
            ngx.say("unix address: ", plan.targets[d].address, ", config untouched: ", d.address, " ", d.host)
        }
    }
--- request
GET /t
--- response_body
p1/a p1/c p1/a
p2/d
p1/c
p2/d usable left: 1
none
unix address: unix:/run/d.sock, config untouched: nil /run/d.sock



=== TEST 5: status_codes patterns match exactly what they say (500, 50x, 5xx)
--- config
    location = /t {
        content_by_lua_block {
            local set = require("zedcup.select").status_set({ "404", "50x", "3xx" })
            for _, s in ipairs({ 200, 301, 399, 403, 404, 500, 509, 510, 599 }) do
                ngx.print(s, "=", set[s] and "bad" or "ok", " ")
            end
            ngx.say()
        }
    }
--- request
GET /t
--- response_body
200=ok 301=bad 399=bad 403=ok 404=bad 500=bad 509=bad 510=ok 599=ok 
