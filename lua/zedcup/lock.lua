-- zedcup.lock: a non-blocking mutex in a lua_shared_dict, shared by every
-- worker and light thread of one nginx instance.
--
-- Follows lua-resty-lock's documented API so that the two are interchangeable
-- through zedcup.deps: new(dict_name, opts), lock(key) -> elapsed,
-- unlock() -> 1, expire(timeout) -> true. Waiting is a stepwise ngx.sleep with
-- exponential backoff, so no OS thread ever blocks.
--
-- Unlike a plain add/delete lock, each acquisition stores a token unique to
-- this worker and object: an unlock() or expire() after our entry expired
-- never releases a lock that another holder has taken since.

local ffi = require "ffi"

local ngx = ngx
local ngx_sleep = ngx.sleep
local shared = ngx.shared
local worker_pid = ngx.worker.pid
local ffi_gc = ffi.gc
local ffi_new = ffi.new
local setmetatable = setmetatable
local tostring = tostring
local type = type
local min = math.min


local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

local DEFAULTS = {
    exptime = 30,
    timeout = 5,
    step = 0.001,
    ratio = 2,
    max_step = 0.5,
}

-- the tokens only need to be unique among the holders of one nginx instance
local token_seq = 0


local function next_token()
    token_seq = token_seq + 1
    return worker_pid() .. ":" .. token_seq
end


-- Releases the entry if (and only if) we still own it. Also used as the GC
-- finalizer, so that a lock object dropped while holding a lock frees it.
local function release(held)
    local key = held.key
    if not key then
        return nil
    end

    local dict = held.dict
    local current = dict:get(key)
    held.key = nil

    if current == held.token then
        dict:delete(key)
        return 1
    end

    if current == nil then
        -- expired, and nobody took it since: nothing left to release
        return 1
    end

    return nil, "expired"
end


local function check_opt(opts, name, min_value)
    local v = opts[name]
    if v == nil then
        return DEFAULTS[name]
    end

    if type(v) ~= "number" or v < min_value then
        error("opts." .. name .. " must be a number >= " .. min_value
              .. " (got " .. tostring(v) .. ")", 3)
    end

    return v
end


--- new(dict_name, opts) -> lock | nil, err
-- Also callable as lock:new(dict_name, opts), like lua-resty-lock.
function _M.new(dict_name, opts, ...)
    if dict_name == _M then
        return _M.new(opts, ...)
    end

    if type(dict_name) ~= "string" then
        error("dict_name must be a string (got " .. type(dict_name) .. ")", 2)
    end

    if opts == nil then
        opts = DEFAULTS

    elseif type(opts) ~= "table" then
        error("opts must be a table (got " .. type(opts) .. ")", 2)
    end

    local dict = shared[dict_name]
    if not dict then
        return nil, "dictionary not found: " .. dict_name
    end

    local exptime = check_opt(opts, "exptime", 0.001)
    local ratio = check_opt(opts, "ratio", 1)
    -- as documented for lua-resty-lock: the wait never exceeds exptime
    local timeout = min(check_opt(opts, "timeout", 0), exptime)

    local held = { dict = dict, key = nil, token = nil }

    local self = {
        held = held,
        exptime = exptime,
        timeout = timeout,
        step = check_opt(opts, "step", 0.001),
        ratio = ratio,
        max_step = check_opt(opts, "max_step", 0.001),
        -- the finalizer closes over `held` only, never over `self`, or the
        -- object could never be collected
        gc = ffi_gc(ffi_new("char[1]"), function() release(held) end),
    }

    return setmetatable(self, mt)
end


--- lock(key) -> elapsed | nil, "timeout" | "locked" | "nil key" | shdict error
-- elapsed is the sum of the sleeps, 0 when the lock was free at once.
-- A number key is used as its text, as shared dicts do.
function _M.lock(self, key)
    local ktype = type(key)
    if ktype ~= "string" then
        if key == nil then
            -- lua-resty-lock answers this one, it does not raise
            return nil, "nil key"
        end
        if ktype ~= "number" then
            error("key must be a string (got " .. ktype .. ")", 2)
        end
        key = tostring(key)
    end

    local held = self.held
    if held.key then
        return nil, "locked"
    end

    local dict = held.dict
    local token = next_token()
    local exptime = self.exptime

    local ok, err = dict:add(key, token, exptime)
    if ok then
        held.key = key
        held.token = token
        return 0
    end

    if err ~= "exists" then
        return nil, err
    end

    local remaining = self.timeout
    local step = self.step
    local ratio = self.ratio
    local max_step = self.max_step
    local elapsed = 0

    while remaining > 0 do
        local nap = min(step, remaining)
        ngx_sleep(nap)
        elapsed = elapsed + nap
        remaining = remaining - nap

        ok, err = dict:add(key, token, exptime)
        if ok then
            held.key = key
            held.token = token
            return elapsed
        end

        if err ~= "exists" then
            return nil, err
        end

        step = min(step * ratio, max_step)
    end

    return nil, "timeout"
end


--- unlock() -> 1 | nil, "unlocked" | nil, "expired"
-- "expired": our entry expired and another holder owns the key now; it is
-- left alone.
function _M.unlock(self)
    local held = self.held
    if not held.key then
        return nil, "unlocked"
    end

    return release(held)
end


--- expire(timeout) -> true | nil, "unlocked" | nil, "expired"
-- Resets the time to live of the held lock to `timeout` seconds (default:
-- the exptime given to new(); 0 = never expires).
function _M.expire(self, timeout)
    if timeout == nil then
        timeout = self.exptime

    elseif type(timeout) ~= "number" or timeout < 0 then
        error("timeout must be a number >= 0 (got " .. tostring(timeout) .. ")", 2)
    end

    local held = self.held
    local key = held.key
    if not key then
        return nil, "unlocked"
    end

    local dict = held.dict
    local current = dict:get(key)

    if current == held.token then
        local ok, err = dict:set(key, held.token, timeout)
        if not ok then
            return nil, err
        end

        return true
    end

    if current == nil then
        -- it lapsed but nobody took it: take it back
        local ok = dict:add(key, held.token, timeout)
        if ok then
            return true
        end
    end

    held.key = nil
    return nil, "expired"
end


return _M
