-- zedcup.cache.ipc: invalidation events between the workers of one nginx,
-- as an event log in a lua_shared_dict of its own.
--
-- The dict holds a monotonic index ("idx", bumped with incr, created from
-- the clock) and one key per event ("ev<n>" = op .. channel .. "\0" .. key).
-- Each cache instance keeps a cursor: the last event it applied. poll() costs one dict read when
-- nothing happened. When an event is missing for good (evicted, expired, or
-- the dict was flushed) the worker cannot know what it said, so it empties
-- its whole L1 for that channel: slower, never stale.

local ngx = ngx
local ngx_now = ngx.now
local ngx_sleep = ngx.sleep
local ngx_update_time = ngx.update_time
local ngx_log = ngx.log
local WARN = ngx.WARN
local shared = ngx.shared
local byte = string.byte
local floor = math.floor
local format = string.format
local sub = string.sub
local pcall = pcall
local setmetatable = setmetatable
local tostring = tostring


local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

local IDX_KEY = "idx"
-- events only need to live until every worker has polled; a worker that
-- polls later than this recovers by flushing its L1
local EVENT_TTL = 300
-- how long to wait for an event whose index is taken but whose body is not
-- written yet (the publisher is between incr and set)
local MISSING_WAIT = 0.01

local OP_DELETE = byte("d")
local OP_PURGE = byte("p")


-- microseconds since the epoch: exact in a double, and larger than any index
-- reached from an older base unless events came faster than one per µs
local function index_base()
    return floor(ngx_now() * 1e6)
end


function _M.new(shm, channel)
    local dict = shared[shm]
    if not dict then
        return nil, "no such lua_shared_dict: " .. tostring(shm)
    end

    -- an index created now starts from the clock, so that the cursor of a
    -- worker is never ahead of an index recreated after a flush or eviction
    dict:add(IDX_KEY, index_base())

    local self = {
        dict = dict,
        shm = shm,
        channel = channel .. "\0",
        cursor = dict:get(IDX_KEY) or 0,
    }

    return setmetatable(self, mt)
end


local function publish(self, op, key)
    local dict = self.dict
    local idx, err = dict:incr(IDX_KEY, 1, index_base())
    if not idx then
        return nil, "lua_shared_dict '" .. self.shm .. "': " .. tostring(err)
    end

    local ok
    ok, err = dict:set(format("ev%d", idx), op .. self.channel .. (key or ""), EVENT_TTL)
    if not ok then
        return nil, "lua_shared_dict '" .. self.shm .. "': " .. tostring(err)
    end

    return true
end


function _M.publish_delete(self, key)
    return publish(self, "d", key)
end


function _M.publish_purge(self)
    return publish(self, "p")
end


local function wait_for(dict, ev_key)
    local waited = 0
    while waited < MISSING_WAIT do
        -- not every phase may sleep; then the event is treated as lost
        if not pcall(ngx_sleep, 0.001) then
            return nil
        end
        waited = waited + 0.001
        local ev = dict:get(ev_key)
        if ev ~= nil then
            return ev
        end
    end
    return nil
end


--- poll(lru, timeout) -> true | nil, err
function _M.poll(self, lru, timeout)
    local dict = self.dict
    local idx = dict:get(IDX_KEY) or 0
    local cursor = self.cursor

    if idx == cursor then
        return true
    end

    if idx < cursor then
        -- the index went backwards: the ipc dict was flushed or evicted
        ngx_log(WARN, "[zedcup] cache ipc '", self.shm, "': event index went back from ",
                format("%d to %d", cursor, idx), ", flushing L1")
        lru:flush_all()
        self.cursor = idx
        return true
    end

    ngx_update_time()
    local deadline = ngx_now() + timeout
    local channel = self.channel
    local clen = #channel

    for i = cursor + 1, idx do
        local ev_key = format("ev%d", i)
        local ev = dict:get(ev_key)
        if ev == nil then
            ev = wait_for(dict, ev_key)
            if ev == nil then
                ngx_log(WARN, "[zedcup] cache ipc '", self.shm, "': event ", format("%d", i),
                        " is lost, flushing L1")
                lru:flush_all()
                self.cursor = idx
                return true
            end
        end

        if sub(ev, 2, 1 + clen) == channel then
            local op = byte(ev, 1)
            if op == OP_DELETE then
                lru:delete(sub(ev, 2 + clen))

            elseif op == OP_PURGE then
                lru:flush_all()
            end
        end

        self.cursor = i

        if i < idx then
            ngx_update_time()
            if ngx_now() >= deadline then
                return nil, format("timeout: %d events left", idx - i)
            end
        end
    end

    return true
end


return _M
