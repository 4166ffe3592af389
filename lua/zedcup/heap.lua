-- zedcup.heap: an indexed binary min-heap of small integer ids (a balancer's
-- host indexes), ordered by key[id], then tie[id]. The balancers own the key
-- and tie arrays and call fix(id) after changing them: push, pop, remove and
-- fix are O(log n), top is O(1).

local setmetatable = setmetatable
local tab_new = require "table.new"


local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }


--- new(n, key, tie) -> heap of capacity n over the caller's key and tie arrays
function _M.new(n, key, tie)
    return setmetatable({
        items = tab_new(n, 0), -- heap order -> id
        pos = tab_new(n, 0),   -- id -> heap position (nil: not in the heap)
        size = 0,
        key = key,
        tie = tie,
    }, mt)
end


local function less(key, tie, a, b)
    local ka, kb = key[a], key[b]
    return ka < kb or (ka == kb and tie[a] < tie[b])
end


local function up(self, i)
    local items, pos, key, tie = self.items, self.pos, self.key, self.tie
    local id = items[i]
    while i > 1 do
        local parent = (i - i % 2) / 2
        local pid = items[parent]
        if not less(key, tie, id, pid) then
            break
        end
        items[i] = pid
        pos[pid] = i
        i = parent
    end
    items[i] = id
    pos[id] = i
end


local function down(self, i)
    local items, pos, key, tie, size = self.items, self.pos, self.key, self.tie, self.size
    local id = items[i]
    while true do
        local child = i * 2
        if child > size then
            break
        end
        local cid = items[child]
        if child < size then
            local rid = items[child + 1]
            if less(key, tie, rid, cid) then
                child, cid = child + 1, rid
            end
        end
        if not less(key, tie, cid, id) then
            break
        end
        items[i] = cid
        pos[cid] = i
        i = child
    end
    items[i] = id
    pos[id] = i
end


--- top() -> the smallest id | nil
function _M.top(self)
    return self.items[1]
end


--- push(id): id must not be in the heap
function _M.push(self, id)
    local size = self.size + 1
    self.size = size
    self.items[size] = id
    up(self, size)
end


--- remove(id): no-op when id is not in the heap
function _M.remove(self, id)
    local i = self.pos[id]
    if not i then
        return
    end
    local items, size = self.items, self.size
    local last = items[size]
    items[size] = nil
    self.pos[id] = nil
    self.size = size - 1
    if i < size then
        items[i] = last
        up(self, i)
        down(self, self.pos[last])
    end
end


--- pop() -> the smallest id (removed) | nil
function _M.pop(self)
    local id = self.items[1]
    if id then
        _M.remove(self, id)
    end
    return id
end


--- sift_down(i): restores the order after the key at heap position i grew
_M.sift_down = down

--- sift_up(i): restores the order after the key at heap position i shrank
_M.sift_up = up


--- fix(id): restores the order after key[id] or tie[id] changed
function _M.fix(self, id)
    local i = self.pos[id]
    if i then
        up(self, i)
        down(self, self.pos[id])
    end
end


--- contains(id) -> bool
function _M.contains(self, id)
    return self.pos[id] ~= nil
end


return _M
