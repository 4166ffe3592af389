-- zedcup.balancer.weighted_rr: smooth weighted round robin in O(log n).
-- Earliest deadline first: the k-th pick of a host of weight w is due at
-- (k - 0.5) / w (the midpoints of its share), and a binary heap hands out the
-- earliest. Over every run of sum(weights) picks with the same usable hosts,
-- each host is picked exactly `weight` times (no deadline falls on a cycle's
-- edge), and at any moment every host is within one pick of its exact share, so
-- picks of a heavy host are spread out, not bunched.
--
-- The balancer interface (every file under zedcup/balancer/):
--   new(hosts, pool) -> balancer    hosts: the pool's usable-by-config hosts,
--                                   pool: the pool's effective config
--   balancer:next(filter, a, b, key) -> host, index | nil
--       filter(host, a, b) -> true | false[, lasting]: lasting (true, or the
--       time a down mark expires) sets the host aside (zedcup.parking) instead
--       of refusing it for this pick only; key: the request's key (or nil)
--   balancer:release(host, outcome, elapsed)
--       once per host next() returned, when that try ends: outcome nil (a
--       response) or "connect" | "request" | "status"; elapsed: seconds
-- A host refused for this pick only keeps its place; a parked host comes back
-- with a fresh deadline, so it gets its share from then on, not a burst.

local heap = require "zedcup.heap"
local parking = require "zedcup.parking"

local setmetatable = setmetatable
local tab_new = require "table.new"


local _M = { _VERSION = "0.2.0" }
local mt = { __index = _M }


function _M.new(hosts)
    local n = #hosts
    local key, tie = tab_new(n, 0), tab_new(n, 0)
    local base, count = tab_new(n, 0), tab_new(n, 0)
    local self = setmetatable({
        hosts = hosts,
        key = key,
        tie = tie,
        base = base,
        count = count,
        vt = 0,             -- the deadline of the last pick: "now" in deadline time
        aside = {},
        parking = parking.new(),
    }, mt)
    local h = heap.new(n, key, tie)
    self.heap = h
    for i = 1, n do
        base[i], count[i], tie[i] = 0, 0, i
        key[i] = 0.5 / hosts[i].weight
        h:push(i)
    end
    return self
end


local function unpark(self, id)
    local vt = self.vt
    self.base[id] = vt
    self.count[id] = 0
    self.key[id] = vt + 0.5 / self.hosts[id].weight
    self.heap:push(id)
end


function _M.next(self, filter, a, b)
    local pk = self.parking
    if pk.n > 0 and pk:due(a) then
        pk:recheck(self.hosts, filter, a, b, unpark, self)
    end

    local h, hosts, aside = self.heap, self.hosts, self.aside
    local items = h.items
    local naside = 0
    local host, id
    while true do
        id = items[1]
        if not id then
            break
        end
        host = hosts[id]
        local ok, lasting = filter(host, a, b)
        if ok then
            local key, count = self.key, self.count
            self.vt = key[id]
            local c = count[id] + 1
            count[id] = c
            key[id] = self.base[id] + (c + 0.5) / host.weight
            h:fix(id)
            break
        end
        h:pop()
        if lasting then
            pk:park(id, lasting, a)
        else
            naside = naside + 1
            aside[naside] = id
        end
        host = nil
    end

    for i = 1, naside do
        h:push(aside[i])
        aside[i] = nil
    end
    if not host then
        return nil
    end
    return host, id
end


function _M.release()
end


return _M
