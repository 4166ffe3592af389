-- zedcup.nodelock: a lock held by one worker of this nginx node, in a shared
-- dict, for background jobs that must run once per node (Consul watchers).
-- A building block: the caller gives the dict and the key (zedcup.store's
-- worker locks), and `<key>:steal` next to it guards a takeover.
-- The holder renews it each loop with a TTL longer than its blocking wait;
-- a lock whose holder process is gone (crashed worker) is taken over at once.

local ffi = require "ffi"

local ngx = ngx
local worker_pid = ngx.worker.pid

local _M = { _VERSION = "0.1.0" }

ffi.cdef [[ int kill(int pid, int sig); ]]
local ESRCH = 3


local function alive(pid)
    if ffi.C.kill(pid, 0) == 0 then
        return true
    end
    return ffi.errno() ~= ESRCH
end


--- acquire(dict, key, ttl) -> true (held by this worker, renewed) | false | nil, err
function _M.acquire(dict, key, ttl)
    local pid = worker_pid()
    local ok, err = dict:add(key, pid, ttl)
    if ok then
        return true
    end
    if err ~= "exists" then
        return nil, "lock " .. key .. ": " .. tostring(err)
    end

    local holder = dict:get(key)
    if holder == pid then
        dict:set(key, pid, ttl)
        return true
    end

    if holder and not alive(holder) then
        -- one taker only: the steal itself is guarded by a short add()
        if dict:add(key .. ":steal", pid, 2) then
            if dict:get(key) == holder then
                dict:set(key, pid, ttl)
                dict:delete(key .. ":steal")
                return true
            end
            dict:delete(key .. ":steal")
        end
    end
    return false
end


--- release(dict, key) -> true when this worker held the lock (now dropped)
function _M.release(dict, key)
    if dict:get(key) == worker_pid() then
        dict:delete(key)
        return true
    end
    return false
end


return _M
