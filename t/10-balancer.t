# zedcup.balancer.weighted_rr and zedcup.select: host selection on its own,
# without sockets or Consul.

__DATA__

=== TEST 1: defect "weighted_rr split 10/20/30 as 1:2:2": exact 1:2:3 over every cycle of 60 picks
--- config
    location = /t {
        content_by_lua_block {
            local wrr = require "zedcup.balancer.weighted_rr"
            local hosts = { { name = "a", weight = 10 }, { name = "b", weight = 20 }, { name = "c", weight = 30 } }
            local all = function() return true end
            local b
            for cycle = 1, 4 do
                -- cycles 3 and 4 without the recorded schedule: the heap itself
                if cycle == 1 or cycle == 3 then
                    wrr.MAX_SCHEDULE = cycle == 1 and 2 ^ 18 or 0
                    b = wrr.new(hosts)
                end
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
cycle 4: a=10 b=20 c=30



=== TEST 2: weighted_rr is smooth: every host stays within one pick of its exact share at every pick
--- config
    location = /t {
        content_by_lua_block {
            local wrr = require "zedcup.balancer.weighted_rr"
            local function run(weights, picks)
                local hosts, total = {}, 0
                for i, w in ipairs(weights) do
                    hosts[i] = { name = "h" .. i, weight = w }
                    total = total + w
                end
                local b = wrr.new(hosts)
                local counts, worst = {}, 0
                for i = 1, #hosts do counts[hosts[i]] = 0 end
                local seq = {}
                for t = 1, picks do
                    local h = b:next(function() return true end)
                    counts[h] = counts[h] + 1
                    if t <= 7 then seq[t] = h.name end
                    for _, x in ipairs(hosts) do
                        local dev = math.abs(counts[x] - t * x.weight / total)
                        if dev > worst then worst = dev end
                    end
                end
                return worst, table.concat(seq, " ")
            end
            for _, mode in ipairs({ "schedule", "heap" }) do
                wrr.MAX_SCHEDULE = mode == "heap" and 0 or 2 ^ 18
                local worst, seq = run({ 5, 1, 1 }, 700)
                ngx.say(mode, ": 5/1/1: ", seq, "; within one pick: ", worst < 1)
                math.randomseed(7)
                local weights = {}
                for i = 1, 20 do weights[i] = math.random(1, 50) end
                worst = run(weights, 5000)
                ngx.say(mode, ": 20 random weights: within one pick: ", worst < 1)
            end
        }
    }
--- request
GET /t
--- response_body
schedule: 5/1/1: h1 h1 h1 h2 h3 h1 h1; within one pick: true
schedule: 20 random weights: within one pick: true
heap: 5/1/1: h1 h1 h1 h2 h3 h1 h1; within one pick: true
heap: 20 random weights: within one pick: true



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



=== TEST 6: weighted_rr: a down host is set aside (the others keep exact shares) and comes back with its share, not a burst
--- config
    location = /t {
        content_by_lua_block {
            local select = require "zedcup.select"
            local wrr = require "zedcup.balancer.weighted_rr"
            local hosts = { { name = "a", weight = 1, up = true }, { name = "b", weight = 1, up = true },
                            { name = "c", weight = 2, up = true } }
            for _, mode in ipairs({ "schedule", "heap" }) do
            wrr.MAX_SCHEDULE = mode == "heap" and 0 or 2 ^ 18
            local b = wrr.new(hosts)
            local function count(down, picks)
                local c = { a = 0, b = 0, c = 0 }
                for _ = 1, picks do
                    local h = b:next(select.usable, down)
                    c[h.name] = c[h.name] + 1
                end
                return c.a .. "/" .. c.b .. "/" .. c.c
            end
            ngx.say("all up: ", count(nil, 40))
            ngx.say("c down: ", count({ c = true }, 40), " parked: ", b.parking.n)
            ngx.say("back (a new down table): ", count({}, 40), " parked: ", b.parking.n)
            ngx.say("a down until expiry: ", count({ a = ngx.now() + 0.05 }, 30))
            ngx.sleep(0.1)
            local d = { a = ngx.now() - 1 }
            ngx.say("after expiry, same table: ", count(d, 40))
            end
        }
    }
--- request
GET /t
--- response_body
all up: 10/10/20
c down: 20/20/0 parked: 1
back (a new down table): 10/10/20 parked: 0
a down until expiry: 0/10/20
after expiry, same table: 10/10/20
all up: 10/10/20
c down: 20/20/0 parked: 1
back (a new down table): 10/10/20 parked: 0
a down until expiry: 0/10/20
after expiry, same table: 10/10/20



=== TEST 7: chash: 4 equal hosts each get 25% +- 3% of 100,000 random keys; weights 1:3 split 25/75 +- 3
--- config
    location = /t {
        content_by_lua_block {
            local chash = require "zedcup.balancer.chash"
            local all = function() return true end
            math.randomseed(ngx.now())
            local function shares(hosts)
                local b = chash.new(hosts, { hash_key = "$remote_addr" })
                local c, total = {}, 100000
                for _ = 1, total do
                    local key = tostring(math.random(0, 2^31)) .. "." .. math.random(1, 1000)
                    local h = b:next(all, nil, nil, key)
                    c[h.name] = (c[h.name] or 0) + 1
                end
                return c, total
            end
            local c, total = shares({ { name = "a", weight = 1 }, { name = "b", weight = 1 },
                                      { name = "c", weight = 1 }, { name = "d", weight = 1 } })
            for _, n in ipairs({ "a", "b", "c", "d" }) do
                local share = c[n] / total * 100
                ngx.say(n, ": ", share >= 22 and share <= 28 or share)
            end
            c, total = shares({ { name = "light", weight = 1 }, { name = "heavy", weight = 3 } })
            local share = c.heavy / total * 100
            ngx.say("heavy: ", share >= 72 and share <= 78 or share)
        }
    }
--- request
GET /t
--- response_body
a: true
b: true
c: true
d: true
heavy: true



=== TEST 8: chash: a key always gets the same host; a host going down moves only its own keys, and they return with it
--- config
    location = /t {
        content_by_lua_block {
            local select = require "zedcup.select"
            local chash = require "zedcup.balancer.chash"
            local hosts = {}
            for i = 1, 5 do hosts[i] = { name = "h" .. i, weight = 1, up = true } end
            local b = chash.new(hosts, {})
            local before = {}
            for k = 1, 5000 do before[k] = b:next(select.usable, nil, nil, "key" .. k) end
            local stable = true
            for k = 1, 5000 do stable = stable and b:next(select.usable, nil, nil, "key" .. k) == before[k] end
            ngx.say("same host again: ", stable)
            -- a new balancer over the same hosts: the same ring
            local b2 = chash.new(hosts, {})
            local same = true
            for k = 1, 5000 do same = same and b2:next(select.usable, nil, nil, "key" .. k) == before[k] end
            ngx.say("same ring in another worker: ", same)

            local down = { h3 = true }
            local moved_other, moved_own, own = 0, 0, 0
            for k = 1, 5000 do
                local h = b:next(select.usable, down, nil, "key" .. k)
                if before[k].name == "h3" then
                    own = own + 1
                    if h ~= before[k] then moved_own = moved_own + 1 end
                elseif h ~= before[k] then
                    moved_other = moved_other + 1
                end
            end
            ngx.say("h3 down: keys of other hosts moved: ", moved_other, ", h3's keys moved: ", moved_own == own and own > 0)
            -- failed in this request: the next host on the ring, the same for every try
            local failed = { [before[1]] = true }
            local alt = b:next(select.usable, nil, failed, "key1")
            ngx.say("retry after a failure: another host: ", alt ~= before[1],
                    ", always the same: ", b:next(select.usable, nil, failed, "key1") == alt)
            local back = 0
            for k = 1, 5000 do
                if b:next(select.usable, {}, nil, "key" .. k) ~= before[k] then back = back + 1 end
            end
            ngx.say("h3 back: keys not on their first host: ", back)
        }
    }
--- request
GET /t
--- response_body
same host again: true
same ring in another worker: true
h3 down: keys of other hosts moved: 0, h3's keys moved: true
retry after a failure: another host: true, always the same: true
h3 back: keys not on their first host: 0



=== TEST 9: chash: hash_key is an nginx variable expression evaluated in the request ($arg_, ${http_}, literals)
--- config
    location = /t {
        content_by_lua_block {
            local chash = require "zedcup.balancer.chash"
            ngx.say(chash.compile_key("$arg_a-${http_x_b}/x")())
            ngx.say(chash.compile_key("$remote_addr")())
            ngx.say("[", chash.compile_key("$cookie_none")(), "]")
            ngx.say(chash.compile_key("plain")())
            -- the key of a pick follows the expression: same value, same host
            local hosts = {}
            for i = 1, 8 do hosts[i] = { name = "h" .. i, weight = 1 } end
            local b = chash.new(hosts, { hash_key = "$arg_a" })
            local all = function() return true end
            ngx.say("expression = explicit key: ", b:next(all) == b:next(all, nil, nil, "1"))
        }
    }
--- request
GET /t?a=1
--- more_headers
X-B: 2
--- response_body
1-2/x
127.0.0.1
[]
plain
expression = explicit key: true



=== TEST 10: least_conn: (active + 1) / weight, released tries count no more, idle equal hosts take turns
--- config
    location = /t {
        content_by_lua_block {
            local lc = require "zedcup.balancer.least_conn"
            local all = function() return true end
            local hosts = { { name = "a", weight = 1 }, { name = "b", weight = 2 } }
            local b = lc.new(hosts)
            local held = {}
            for i = 1, 30 do held[i] = b:next(all) end
            ngx.say("30 in flight: a=", b:in_flight(hosts[1]), " b=", b:in_flight(hosts[2]))
            -- every try of b ends: the next 10 picks go to b
            for i = 1, 30 do if held[i] == hosts[2] then b:release(held[i]) end end
            local to_b = 0
            for _ = 1, 10 do
                if b:next(all) == hosts[2] then to_b = to_b + 1 end
            end
            ngx.say("after b's tries ended, of 10 picks b got ", to_b)
            -- sequential (pick, release) over equal hosts: round robin
            local eq = { { name = "x", weight = 1 }, { name = "y", weight = 1 }, { name = "z", weight = 1 } }
            local e = lc.new(eq)
            local seq = {}
            for i = 1, 6 do
                local h = e:next(all)
                seq[i] = h.name
                e:release(h)
            end
            ngx.say(table.concat(seq))
        }
    }
--- request
GET /t
--- response_body
30 in flight: a=10 b=20
after b's tries ended, of 10 picks b got 10
xyzxyz



=== TEST 11: ewma: the fast host gets the traffic, a slow one little, a recovered one is tried again after the decay
--- config
    location = /t {
        content_by_lua_block {
            local ewma = require "zedcup.balancer.ewma"
            local all = function() return true end
            local hosts = { { name = "fast", weight = 1 }, { name = "slow", weight = 1 } }
            local b = ewma.new(hosts, { ewma_decay = 0.2, timeout = 100 })
            local lat = { fast = 0.001, slow = 0.5 }
            local c = { fast = 0, slow = 0 }
            for _ = 1, 200 do
                local h = b:next(all)
                c[h.name] = c[h.name] + 1
                b:release(h, nil, lat[h.name])
            end
            ngx.say("fast=", c.fast > 190, " slow tried: ", c.slow >= 1)
            -- the slow host recovers; its average fades while it gets nothing
            lat.slow = 0.0005
            ngx.sleep(2)
            ngx.update_time()
            c = { fast = 0, slow = 0 }
            for _ = 1, 200 do
                local h = b:next(all)
                c[h.name] = c[h.name] + 1
                b:release(h, nil, lat[h.name])
            end
            ngx.say("recovered host (now the faster) gets most of the traffic again: ", c.slow > 100)
            -- failures count as at least the connect timeout
            local f = ewma.new({ { name = "a", weight = 1 }, { name = "b", weight = 1 } }, { ewma_decay = 10, timeout = 100 })
            local h = f:next(all)
            f:release(h, "connect", 0.0001)
            ngx.say("after a refused connect: ", string.format("%.2f", f:score(h)))
        }
    }
--- request
GET /t
--- response_body
fast=true slow tried: true
recovered host (now the faster) gets most of the traffic again: true
after a refused connect: 0.10



=== TEST 12: selection cost is flat in the host count: with 10,000 hosts, 9,990 of them down, each pick calls the filter a few times (every method)
--- config
    location = /t {
        content_by_lua_block {
            local select = require "zedcup.select"
            for _, method in ipairs({ "weighted_rr", "chash", "least_conn", "ewma" }) do
                local hosts, down = {}, {}
                for i = 1, 10000 do
                    hosts[i] = { name = "h" .. i, weight = 1 + i % 3, up = true }
                    if i > 10 then down["h" .. i] = true end
                end
                local b = require("zedcup.balancer." .. method).new(hosts, { hash_key = "$arg_k", timeout = 100 })
                local calls = 0
                local function filter(h, d, f)
                    calls = calls + 1
                    return select.usable(h, d, f)
                end
                for i = 1, 2000 do   -- warm-up: down hosts get set aside
                    local h = b:next(filter, down, nil, "k" .. i)
                    b:release(h)
                end
                calls = 0
                local up = 0
                for i = 1, 1000 do
                    local h = b:next(filter, down, nil, "k" .. i)
                    if not down[h.name] then up = up + 1 end
                    b:release(h, nil, 0.001)
                end
                ngx.say(method, ": picks of up hosts ", up, ", filter calls per pick <= 2: ", calls / 1000 <= 2)
            end
        }
    }
--- request
GET /t
--- response_body
weighted_rr: picks of up hosts 1000, filter calls per pick <= 2: true
chash: picks of up hosts 1000, filter calls per pick <= 2: true
least_conn: picks of up hosts 1000, filter calls per pick <= 2: true
ewma: picks of up hosts 1000, filter calls per pick <= 2: true
--- timeout: 30
