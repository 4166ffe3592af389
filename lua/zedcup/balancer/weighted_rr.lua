-- zedcup.balancer.weighted_rr: smooth weighted round robin in O(log n).
-- Earliest deadline first: the k-th pick of a host of weight w is due at
-- (k - 0.5) / w (the midpoints of its share), and a binary heap hands out the
-- earliest. Over every run of sum(weights) picks with the same usable hosts,
-- each host is picked exactly `weight` times (no deadline falls on a cycle's
-- edge), and at any moment every host is within one pick of its exact share, so
-- picks of a heavy host are spread out, not bunched.
-- When one cycle (sum(weights) / their gcd) has at most MAX_SCHEDULE picks, the
-- heap's cycle is recorded once and picks walk it: O(1). A refused host's turn
-- is passed to the next one in the schedule, so among the usable hosts the
-- shares stay exact, and a host that comes back takes its turns from then on.
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

_M.MAX_SCHEDULE = 2 ^ 18 -- picks per recorded cycle (longer: the heap, O(log n))


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


-- the top host was refused: set it and any further refused ones aside
local function next_slow(self, filter, a, b)
    local h, hosts, aside, pk = self.heap, self.hosts, self.aside, self.parking
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
    if host then
        self:take(id)
    end
    for i = 1, naside do
        h:push(aside[i])
        aside[i] = nil
    end
    return host, id
end


-- the pick of `id` (the heap's top)
function _M.take(self, id)
    local key, count = self.key, self.count
    self.vt = key[id]
    local c = count[id] + 1
    count[id] = c
    key[id] = self.base[id] + (c + 0.5) / self.hosts[id].weight
    self.heap:sift_down(1)
end


---------------------------------------------------------------------------
-- the precomputed schedule
---------------------------------------------------------------------------

local function gcd(x, y)
    while y > 0 do
        x, y = y, x % y
    end
    return x
end


local function build_schedule(self)
    local hosts = self.hosts
    local g, total = 0, 0
    for i = 1, #hosts do
        local w = hosts[i].weight
        g = gcd(w, g)
        total = total + w
    end
    local len = g > 0 and total / g or 0
    if len == 0 or len > _M.MAX_SCHEDULE then
        self.sched_len = 0
        return
    end
    local sched = tab_new(len, 0)
    local take = _M.take
    local items = self.heap.items
    for i = 1, len do
        local id = items[1]
        sched[i] = id
        take(self, id)
    end
    self.sched, self.sched_len, self.cursor = sched, len, 0
    self.stamp, self.epoch = tab_new(#hosts, 0), 0
end


local function noop()
end


-- walks the schedule past refused turns
local function sched_slow(self, filter, a, b, cursor)
    local sched, len, hosts, pk = self.sched, self.sched_len, self.hosts, self.parking
    local stamp = self.stamp
    local epoch = self.epoch + 1
    self.epoch = epoch
    local n = #hosts
    local refused = 0
    for _ = 1, len do
        cursor = cursor + 1
        if cursor > len then
            cursor = 1
        end
        local id = sched[cursor]
        if not pk:is_parked(id) and stamp[id] ~= epoch then
            local host = hosts[id]
            local ok, lasting = filter(host, a, b)
            if ok then
                self.cursor = cursor
                return host, id
            end
            if lasting then
                pk:park(id, lasting, a)
            else
                stamp[id] = epoch
                refused = refused + 1
            end
            if refused + pk.n >= n then
                break
            end
        end
    end
    self.cursor = cursor
    return nil
end


local function next_scheduled(self, filter, a, b)
    local pk = self.parking
    if pk.n > 0 and pk:due(a) then
        pk:recheck(self.hosts, filter, a, b, noop, self)
    end
    local cursor = self.cursor + 1
    if cursor > self.sched_len then
        cursor = 1
    end
    local id = self.sched[cursor]
    local host = self.hosts[id]
    if not pk.pos[id] and filter(host, a, b) then
        self.cursor = cursor
        return host, id
    end
    if pk.n >= #self.hosts then
        return nil
    end
    return sched_slow(self, filter, a, b, cursor - 1)
end


function _M.next(self, filter, a, b)
    local len = self.sched_len
    if len == nil then
        build_schedule(self)
        len = self.sched_len
    end
    if len > 0 then
        return next_scheduled(self, filter, a, b)
    end
    local pk = self.parking
    if pk.n > 0 and pk:due(a) then
        pk:recheck(self.hosts, filter, a, b, unpark, self)
    end
    -- the usual case, without a loop (LuaJIT then compiles the caller's loop
    -- with this inlined)
    local id = self.heap.items[1]
    if not id then
        return nil
    end
    local host = self.hosts[id]
    if filter(host, a, b) then
        self:take(id)
        return host, id
    end
    return next_slow(self, filter, a, b)
end


function _M.release()
end


return _M
