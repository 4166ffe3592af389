-- zedcup.parking: the hosts a balancer has set aside because they are marked
-- down, so that picks never walk over them (selection stays flat in the number
-- of down hosts). A filter refuses a host for good with a second value: true
-- (down until further notice) or the time its down mark expires. Parked hosts
-- are looked at again when the down table handed to next() is another table
-- (the worker copied a new state snapshot), when the earliest expiry passes,
-- and at least every RECHECK seconds (a mark lifted in place).

local ngx_now = ngx.now
local type = type
local setmetatable = setmetatable


local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

local RECHECK = 1
_M.RECHECK = RECHECK


function _M.new()
    return setmetatable({ n = 0, list = {}, pos = {}, at = 0, seen = nil }, mt)
end


--- park(id, lasting, a): id is refused for good (lasting: true | expiry)
function _M.park(self, id, lasting, a)
    if self.pos[id] then
        return
    end
    local n = self.n + 1
    self.n = n
    self.list[n] = id
    self.pos[id] = n
    local at = type(lasting) == "number" and lasting or ngx_now() + RECHECK
    if n == 1 or at < self.at then
        self.at = at
    end
    self.seen = a
end


--- due(a) -> bool: whether parked hosts must be looked at again now
function _M.due(self, a)
    return self.n > 0 and (a ~= self.seen or ngx_now() >= self.at)
end


--- recheck(hosts, filter, a, b, unpark, owner): calls unpark(owner, id) for
-- every parked host the filter no longer refuses for good
function _M.recheck(self, hosts, filter, a, b, unpark, owner)
    local list, pos = self.list, self.pos
    local now = ngx_now()
    local at = now + RECHECK
    local i = 1
    while i <= self.n do
        local id = list[i]
        local ok, lasting = filter(hosts[id], a, b)
        if ok or not lasting then
            local n = self.n
            local last = list[n]
            list[i] = last
            pos[last] = i
            list[n] = nil
            pos[id] = nil
            self.n = n - 1
            unpark(owner, id)
        else
            if type(lasting) == "number" and lasting < at then
                at = lasting
            end
            i = i + 1
        end
    end
    self.at = at
    self.seen = a
end


--- is_parked(id) -> bool
function _M.is_parked(self, id)
    return self.pos[id] ~= nil
end


return _M
