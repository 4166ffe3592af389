-- zedcup.balancer.weighted_rr: smooth weighted round robin (nginx's algorithm).
-- Over any run of sum(weights) picks with the same usable hosts, each host is
-- picked exactly `weight` times, and picks of one host are spread out rather
-- than bunched. Hosts that the filter refuses are skipped and keep their state.
--
-- The balancer interface (every file under zedcup/balancer/):
--   new(hosts) -> balancer           hosts: the pool's effective host list
--   balancer:next(filter, a, b) -> host, index | nil
--       filter(host, a, b) -> truthy when the host may be used now

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

local tab_new = require "table.new"


function _M.new(hosts)
    local n = #hosts
    local current = tab_new(n, 0)
    for i = 1, n do
        current[i] = 0
    end
    return setmetatable({ hosts = hosts, n = n, current = current }, mt)
end


function _M.next(self, filter, a, b)
    local hosts, current = self.hosts, self.current
    local best, best_cw
    local total = 0

    for i = 1, self.n do
        local host = hosts[i]
        if filter(host, a, b) then
            local w = host.weight
            local cw = current[i] + w
            current[i] = cw
            total = total + w
            if best == nil or cw > best_cw then
                best, best_cw = i, cw
            end
        end
    end

    if best == nil then
        return nil
    end

    current[best] = best_cw - total
    return hosts[best], best
end


return _M
