-- zedcup.balancer.chash: consistent hashing on a ring. Each host owns points
-- of a 32-bit ring, up to POINTS per unit of weight (fewer when the pool is so
-- large that the ring would pass MAX_POINTS), placed by MD5 of the host's name,
-- so the ring depends only on the names and weights of the pool's hosts. A
-- request's key (CRC32) lands on the first point at or after it; a host that is
-- down or already failed in this request is passed over for the next point's
-- host. The ring holds every host of the pool whatever its health, so a host
-- going down moves only the keys that were on it, and they come back with it.
-- Lookups are O(1): a table of 2^k buckets points into the sorted ring.
--
-- The key: the `key` given to balance() or create_handler(), else the pool's
-- hash_key, an nginx variable expression ("$remote_addr", "$cookie_id",
-- "${http_x_user}:$arg_v") evaluated in the request. Outside a request (a
-- timer) an expression evaluates to "". (The interface: zedcup/balancer/weighted_rr.)

local parking = require "zedcup.parking"

local ngx = ngx
local ngx_var = ngx.var
local crc32 = ngx.crc32_long
local md5_bin = ngx.md5_bin
local pcall = pcall
local floor = math.floor
local str_byte = string.byte
local str_find = string.find
local str_sub = string.sub
local tab_concat = table.concat
local tab_sort = table.sort
local setmetatable = setmetatable
local tab_new = require "table.new"


local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

local POINTS = 1000         -- per unit of weight: 4 equal hosts get 25% +- 1%
local MAX_POINTS = 131072   -- per ring
local ID_SPAN = 2 ^ 20      -- ids packed under the point's hash for one numeric sort
_M.POINTS = POINTS
_M.MAX_POINTS = MAX_POINTS


--- compile_key(expr) -> function() -> string: an nginx variable expression
function _M.compile_key(expr)
    local parts, vars = {}, {}
    local n, pos = 0, 1
    while true do
        local from, to, name = str_find(expr, "%${([%w_]+)}", pos)
        local from2, to2, name2 = str_find(expr, "%$([%w_]+)", pos)
        if from2 and (not from or from2 < from) then
            from, to, name = from2, to2, name2
        end
        if not from then
            break
        end
        if from > pos then
            n = n + 1
            parts[n] = str_sub(expr, pos, from - 1)
        end
        n = n + 1
        parts[n] = ""
        vars[n] = name
        pos = to + 1
    end
    if pos <= #expr then
        n = n + 1
        parts[n] = str_sub(expr, pos)
    end

    if n == 1 and vars[1] then
        local name = vars[1]
        return function()
            return ngx_var[name] or ""
        end
    end
    local buf = tab_new(n, 0)
    return function()
        for i = 1, n do
            local v = vars[i]
            if v then
                buf[i] = ngx_var[v] or ""
            else
                buf[i] = parts[i]
            end
        end
        return tab_concat(buf, "", 1, n)
    end
end


local function u32(s, i)
    local b1, b2, b3, b4 = str_byte(s, i, i + 3)
    return ((b1 * 256 + b2) * 256 + b3) * 256 + b4
end


local function build(self)
    local hosts = self.hosts
    local n = #hosts
    local total = 0
    for i = 1, n do
        total = total + hosts[i].weight
    end
    local per_unit = POINTS
    if total * per_unit > MAX_POINTS then
        per_unit = MAX_POINTS / total
    end

    local packed, np = {}, 0
    for id = 1, n do
        local host = hosts[id]
        local count = floor(host.weight * per_unit)
        if count < 1 then
            count = 1
        end
        local name = host.name
        local r, group = 0, 0
        while r < count do
            local digest = md5_bin(name .. "#" .. group)
            group = group + 1
            for off = 1, 13, 4 do
                if r >= count then
                    break
                end
                np = np + 1
                packed[np] = u32(digest, off) * ID_SPAN + id
                r = r + 1
            end
        end
    end
    tab_sort(packed)

    local points, owner = tab_new(np, 0), tab_new(np, 0)
    for i = 1, np do
        local v = packed[i]
        local id = v % ID_SPAN
        owner[i] = id
        points[i] = (v - id) / ID_SPAN
    end

    -- buckets: 2^k >= np slices of the ring, each -> its first point
    local nb = 1
    while nb < np do
        nb = nb * 2
    end
    local width = 2 ^ 32 / nb
    local first = tab_new(nb + 1, 0)
    local p = 1
    for b = 0, nb - 1 do
        local start = b * width
        while p <= np and points[p] < start do
            p = p + 1
        end
        first[b] = p
    end
    first[nb] = np + 1

    self.points, self.owner, self.np = points, owner, np
    self.first, self.width = first, width
end


function _M.new(hosts, pool)
    local n = #hosts
    local self = setmetatable({
        hosts = hosts,
        n = n,
        seen = tab_new(8, 0),
        parking = parking.new(),
    }, mt)
    local expr = pool and pool.hash_key or "$remote_addr"
    self.key_fn = _M.compile_key(expr)
    return self
end


local function unpark()
end


function _M.next(self, filter, a, b, key)
    if not self.points then
        build(self)
    end
    local pk = self.parking
    if pk.n > 0 and pk:due(a) then
        pk:recheck(self.hosts, filter, a, b, unpark, self)
    end
    local n = self.n
    if pk.n >= n then
        return nil
    end

    if key == nil then
        local ok, k = pcall(self.key_fn)
        key = ok and k or ""
    end
    local h = crc32(key)
    local points, owner, np = self.points, self.owner, self.np
    local i = self.first[floor(h / self.width)]
    while i <= np and points[i] < h do
        i = i + 1
    end

    -- walk clockwise to the first point of a usable host
    local hosts, seen = self.hosts, self.seen
    local nseen = 0
    local refused = pk.n
    for _ = 1, np do
        if i > np then
            i = 1
        end
        local id = owner[i]
        if not pk:is_parked(id) then
            local known = false
            for s = 1, nseen do
                if seen[s] == id then
                    known = true
                    break
                end
            end
            if not known then
                local host = hosts[id]
                local ok, lasting = filter(host, a, b)
                if ok then
                    for s = 1, nseen do
                        seen[s] = nil
                    end
                    return host, id
                end
                if lasting then
                    pk:park(id, lasting, a)
                else
                    nseen = nseen + 1
                    seen[nseen] = id
                end
                refused = refused + 1
                if refused >= n then
                    break
                end
            end
        end
        i = i + 1
    end
    for s = 1, nseen do
        seen[s] = nil
    end
    return nil
end


function _M.release()
end


return _M
