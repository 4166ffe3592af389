-- zedcup.balancer.ewma: peak EWMA of response time with the power of two
-- choices, in O(1). Each try's time to the response header is folded into the
-- host's average with weight 1 - exp(-dt / decay) (dt: the time since the
-- host's previous sample), except that a slower sample replaces the average at
-- once (peak): a host that turns slow loses traffic on the next response. A
-- failed try counts as at least the pool's connect timeout. The score is
-- average * (active + 1) / weight, and the average fades towards 0 while the
-- host gets no samples (the same decay), so a slow host that recovered is tried
-- again after a few decay times. Each pick draws two distinct usable hosts at
-- random and takes the lower score; a host never sampled goes first, one try
-- at a time.
-- Per worker, like least_conn. (The interface: zedcup/balancer/weighted_rr.)

local parking = require "zedcup.parking"

local ngx_now = ngx.now
local math_exp = math.exp
local math_random = math.random
local setmetatable = setmetatable
local tab_new = require "table.new"


local _M = { _VERSION = "0.1.0", timed = true } -- timed: release() wants elapsed
local mt = { __index = _M }

local DRAWS = 4 -- random draws before a linear scan, when the request's failures are in the way
local UNKNOWN = 1e9 -- the score of a host never sampled while a try to it is in progress


function _M.new(hosts, pool)
    local n = #hosts
    local self = setmetatable({
        hosts = hosts,
        index = tab_new(0, n),
        avg = tab_new(n, 0),
        stamp = tab_new(n, 0),
        active = tab_new(n, 0),
        weight = tab_new(n, 0), -- packed, as the scores read them
        set = tab_new(n, 0),    -- the hosts not parked, in any order
        pos = tab_new(n, 0),    -- id -> position in set
        nset = n,
        decay = pool and pool.ewma_decay or 10,
        penalty = pool and pool.timeout and pool.timeout / 1000 or 1,
        parking = parking.new(),
    }, mt)
    local now = ngx_now()
    for i = 1, n do
        self.index[hosts[i]] = i
        self.weight[i] = hosts[i].weight
        self.avg[i], self.stamp[i], self.active[i] = -1, now, 0
        self.set[i], self.pos[i] = i, i
    end
    return self
end


local function score(self, id, now)
    local avg = self.avg[id]
    if avg < 0 then
        -- never answered: one probe at a time
        return self.active[id] == 0 and 0 or UNKNOWN
    end
    avg = avg * math_exp((self.stamp[id] - now) / self.decay)
    return avg * (self.active[id] + 1) / self.weight[id]
end


local function unpark(self, id)
    local n = self.nset + 1
    self.nset = n
    self.set[n] = id
    self.pos[id] = n
end


local function park(self, id, lasting, a)
    local set, pos = self.set, self.pos
    local i, n = pos[id], self.nset
    local last = set[n]
    set[i] = last
    pos[last] = i
    set[n] = nil
    pos[id] = nil
    self.nset = n - 1
    self.parking:park(id, lasting, a)
end


-- filter one candidate: id if usable now, nil otherwise (parked when lasting)
local function try(self, id, filter, a, b)
    local ok, lasting = filter(self.hosts[id], a, b)
    if ok then
        return id
    end
    if lasting then
        park(self, id, lasting, a)
    end
    return nil
end


local function take(self, id)
    self.active[id] = self.active[id] + 1
    return self.hosts[id], id
end


function _M.next(self, filter, a, b)
    local pk = self.parking
    if pk.n > 0 and pk:due(a) then
        pk:recheck(self.hosts, filter, a, b, unpark, self)
    end

    local set = self.set
    for _ = 1, DRAWS do
        local n = self.nset
        if n == 0 then
            return nil
        end
        if n == 1 then
            local id = try(self, set[1], filter, a, b)
            if id then
                return take(self, id)
            end
            if self.nset == 1 then
                return nil -- refused for this pick only
            end
        else
            local i = math_random(n)
            local j = math_random(n - 1)
            if j >= i then
                j = j + 1
            end
            local x, y = set[i], set[j]
            x = try(self, x, filter, a, b)
            y = try(self, y, filter, a, b)
            if x and y then
                local now = ngx_now()
                if score(self, y, now) < score(self, x, now) then
                    x = y
                end
                return take(self, x)
            end
            if x or y then
                return take(self, x or y)
            end
        end
    end

    -- the request's own failures keep coming up: look at every host left
    local best, best_score
    local now = ngx_now()
    local i = 1
    while i <= self.nset do
        local id = set[i]
        if try(self, id, filter, a, b) then
            local s = score(self, id, now)
            if not best or s < best_score then
                best, best_score = id, s
            end
            i = i + 1
        elseif set[i] == id then
            i = i + 1 -- refused for this pick only (a parked host's place is refilled)
        end
    end
    if best then
        return take(self, best)
    end
    return nil
end


function _M.release(self, host, outcome, elapsed)
    local id = self.index[host]
    if not id then
        return
    end
    local active = self.active[id] - 1
    self.active[id] = active < 0 and 0 or active

    local sample = elapsed or 0
    if outcome and sample < self.penalty then
        sample = self.penalty
    end
    local now = ngx_now()
    local avg = self.avg[id]
    if avg < 0 or sample > avg then
        avg = sample
    else
        local w = math_exp((self.stamp[id] - now) / self.decay)
        avg = avg * w + sample * (1 - w)
    end
    self.avg[id] = avg
    self.stamp[id] = now
end


--- score(host) -> the host's current score in this worker (lower is preferred)
function _M.score(self, host)
    local id = self.index[host]
    return id and score(self, id, ngx_now())
end


return _M
