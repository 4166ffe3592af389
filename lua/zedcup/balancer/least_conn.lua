-- zedcup.balancer.least_conn: the host with the fewest active requests scaled
-- by weight, (active + 1) / weight, in O(log n) (a heap keyed on that score).
-- Ties go to the host picked longest ago, so idle equal hosts take turns.
--
-- Counts are per worker: a try is counted from next() to release() in the
-- worker that sends it. Node-wide counts would cost two shared-dict writes
-- under its lock on every try, and a worker that dies would leave its
-- requests counted for ever; nginx hands connections to workers evenly, so each
-- worker's view tracks the node's. (The interface: zedcup/balancer/weighted_rr.)

local heap = require "zedcup.heap"
local parking = require "zedcup.parking"

local setmetatable = setmetatable
local tab_new = require "table.new"


local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }


function _M.new(hosts)
    local n = #hosts
    local key, tie, active, weight = tab_new(n, 0), tab_new(n, 0), tab_new(n, 0), tab_new(n, 0)
    local index = tab_new(0, n)
    local self = setmetatable({
        hosts = hosts,
        index = index,
        key = key,
        tie = tie,
        active = active,
        weight = weight,    -- the hosts' weights, packed (no host table read per pick)
        seq = 0,
        aside = {},
        parking = parking.new(),
    }, mt)
    local h = heap.new(n, key, tie)
    self.heap = h
    for i = 1, n do
        local host = hosts[i]
        index[host] = i
        active[i] = 0
        weight[i] = host.weight
        tie[i] = i - n
        key[i] = 1 / host.weight
        h:push(i)
    end
    return self
end


local function unpark(self, id)
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
            local active = self.active
            local n = active[id] + 1
            active[id] = n
            local seq = self.seq + 1
            self.seq = seq
            self.tie[id] = seq
            self.key[id] = (n + 1) / self.weight[id]
            h:sift_down(1) -- the top's key grew
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


function _M.release(self, host)
    local id = self.index[host]
    if not id then
        return
    end
    local active = self.active
    local n = active[id] - 1
    if n < 0 then
        n = 0
    end
    active[id] = n
    self.key[id] = (n + 1) / self.weight[id]
    local h = self.heap
    local i = h.pos[id]
    if i then
        h:sift_up(i) -- the key shrank (parked hosts are not in the heap)
    end
end


--- in_flight(host) -> this worker's count of the host's tries in progress
function _M.in_flight(self, host)
    local id = self.index[host]
    return id and self.active[id] or 0
end


return _M
