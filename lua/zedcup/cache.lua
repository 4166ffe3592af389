-- zedcup.cache: a layered cache with the API of lua-resty-mlcache (the
-- subset zedcup uses), so the two are interchangeable through zedcup.deps.
--
--   L1  a resty.lrucache per worker (and per cache name): an L1 hit touches
--       no shared dict and allocates nothing.
--   L2  a lua_shared_dict shared by all workers; tables are stored as JSON,
--       encoded once when cached and decoded once per worker on promotion.
--   L3  the caller's callback, run under a zedcup.lock (shm_locks) so that
--       concurrent misses in all workers and light threads run it once;
--       whoever waited re-checks L2 after getting the lock.
--
-- set(), delete() and purge() publish invalidation events in the ipc_shm
-- (zedcup.cache.ipc); every worker applies them to its L1 in update().
--
-- An L2 entry carries its own expiry, so an entry may outlive its ttl in the
-- dict: with resurrect_ttl, entries stay until the dict evicts them, and a
-- failing callback can serve them again (hit level 4).

local cjson = require "cjson.safe"
local lrucache = require "resty.lrucache"
local ipc_new = require("zedcup.cache.ipc").new
local deps = require "zedcup.deps"

local ngx = ngx
local ngx_now = ngx.now
local ngx_log = ngx.log
local WARN = ngx.WARN
local shared = ngx.shared
local json_encode = cjson.encode
local json_decode = cjson.decode
local error = error
local find = string.find
local format = string.format
local sub = string.sub
local pcall = pcall
local setmetatable = setmetatable
local tonumber = tonumber
local tostring = tostring
local type = type


local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

-- L1 marker for a cached nil (a negative hit): lrucache cannot hold nil
local CACHED_NIL = setmetatable({}, { __tostring = function() return "zedcup.cache nil" end })

-- L2 entries: flags = type of the value, value = "<expires at>|<payload>"
-- (expires at = 0 for entries that never expire)
local T_NIL, T_BOOLEAN, T_NUMBER, T_STRING, T_TABLE = 1, 2, 3, 4, 5
local TYPE_CODES = {
    ["nil"] = T_NIL,
    boolean = T_BOOLEAN,
    number = T_NUMBER,
    string = T_STRING,
    table = T_TABLE,
}

local SEP = "\31"   -- between an instance name and a key in shared dicts

-- one L1 per cache name in each worker, so that all instances of a name see
-- the same L1 and the same invalidations (its size is the first instance's)
local lrus = {}


-- level: of the caller to blame, counted from here
local function check_number(opts, name, min_value, level)
    local v = opts[name]
    if v ~= nil and (type(v) ~= "number" or v < min_value) then
        error("opts." .. name .. " must be a number >= " .. min_value
              .. " (got " .. tostring(v) .. ")", level)
    end
    return v
end


-- the options of one get() or set() call; raises on the caller of those
local function check_call_opts(opts)
    if type(opts) ~= "table" then
        error("opts must be a table (got " .. type(opts) .. ")", 3)
    end

    check_number(opts, "ttl", 0, 4)
    check_number(opts, "neg_ttl", 0, 4)
    check_number(opts, "resurrect_ttl", 0.001, 4)
    check_number(opts, "shm_set_tries", 1, 4)

    local serializer = opts.l1_serializer
    if serializer ~= nil and type(serializer) ~= "function" then
        error("opts.l1_serializer must be a function (got " .. type(serializer) .. ")", 3)
    end
end


local function check_dict(opts, name)
    local v = opts[name]
    if v == nil then
        return nil
    end

    if type(v) ~= "string" then
        error("opts." .. name .. " must be a string (got " .. type(v) .. ")", 3)
    end

    local dict = shared[v]
    if not dict then
        return nil, "no such lua_shared_dict for opts." .. name .. ": " .. v
    end

    return dict
end


--- new(name, shm, opts) -> cache | nil, err
function _M.new(name, shm, opts)
    if type(name) ~= "string" then
        error("name must be a string (got " .. type(name) .. ")", 2)
    end

    if type(shm) ~= "string" then
        error("shm must be a string (got " .. type(shm) .. ")", 2)
    end

    if opts == nil then
        opts = {}

    elseif type(opts) ~= "table" then
        error("opts must be a table (got " .. type(opts) .. ")", 2)
    end

    local lru_size = check_number(opts, "lru_size", 1, 3) or 100
    local ttl = check_number(opts, "ttl", 0, 3) or 30
    local neg_ttl = check_number(opts, "neg_ttl", 0, 3) or 5
    local resurrect_ttl = check_number(opts, "resurrect_ttl", 0.001, 3)
    local shm_set_tries = check_number(opts, "shm_set_tries", 1, 3) or 3

    if opts.l1_serializer ~= nil and type(opts.l1_serializer) ~= "function" then
        error("opts.l1_serializer must be a function (got "
              .. type(opts.l1_serializer) .. ")", 2)
    end

    if opts.ipc ~= nil then
        -- silently ignoring it would leave other workers' L1 stale
        error("opts.ipc (a custom IPC library) is not supported by zedcup.cache:"
              .. " use opts.ipc_shm", 2)
    end

    if opts.lru ~= nil and (type(opts.lru) ~= "table" or type(opts.lru.get) ~= "function") then
        error("opts.lru must be a resty.lrucache instance (got " .. type(opts.lru) .. ")", 2)
    end

    if opts.resty_lock_opts ~= nil and type(opts.resty_lock_opts) ~= "table" then
        error("opts.resty_lock_opts must be a table (got "
              .. type(opts.resty_lock_opts) .. ")", 2)
    end

    local dict = shared[shm]
    if not dict then
        return nil, "no such lua_shared_dict: " .. shm
    end

    local miss_dict, err = check_dict(opts, "shm_miss")
    if err then
        return nil, err
    end

    local _, lerr = check_dict(opts, "shm_locks")
    if lerr then
        return nil, lerr
    end

    local ipc
    if opts.ipc_shm ~= nil then
        if opts.ipc_shm == shm then
            error("opts.ipc_shm must be a dict of its own, not the cache shm ("
                  .. shm .. ")", 2)
        end

        local _, ierr = check_dict(opts, "ipc_shm")
        if ierr then
            return nil, ierr
        end

        ipc = ipc_new(opts.ipc_shm, name)
    end

    -- opts.lru: the caller's own lrucache (e.g. resty.lrucache.pureffi), which
    -- then becomes the L1 of this name in this worker
    local lru = opts.lru or lrus[name]
    if opts.lru then
        lrus[name] = lru
    elseif not lru then
        local lerr2
        lru, lerr2 = lrucache.new(lru_size)
        if not lru then
            return nil, "failed to create the L1 cache: " .. tostring(lerr2)
        end
        lrus[name] = lru
    end

    local self = {
        name = name,
        shm = shm,
        dict = dict,
        miss_dict = miss_dict,
        locks_shm = opts.shm_locks or shm,
        lock_opts = opts.resty_lock_opts,
        prefix = name .. SEP,
        lru = lru,
        ttl = ttl,
        neg_ttl = neg_ttl,
        resurrect_ttl = resurrect_ttl,
        shm_set_tries = shm_set_tries,
        l1_serializer = opts.l1_serializer,
        ipc = ipc,
    }

    return setmetatable(self, mt)
end


-- L2 ----------------------------------------------------------------------

local function encode(value, expires_at)
    local t = type(value)
    local code = TYPE_CODES[t]
    if not code then
        return nil, nil, "cannot cache a value of type " .. t
    end

    local payload
    if code == T_NIL then
        payload = ""

    elseif code == T_BOOLEAN then
        payload = value and "1" or "0"

    elseif code == T_NUMBER then
        payload = format("%.17g", value)

    elseif code == T_STRING then
        payload = value

    else
        local err
        payload, err = json_encode(value)
        if not payload then
            return nil, nil, "cannot cache table: " .. tostring(err)
        end
    end

    return format("%.3f", expires_at) .. "|" .. payload, code
end


-- -> value, expires_at | nil, nil, err
local function decode(raw, code)
    local bar = find(raw, "|", 1, true)
    if not bar then
        return nil, nil, "corrupt L2 entry"
    end

    local expires_at = tonumber(sub(raw, 1, bar - 1))
    local payload = sub(raw, bar + 1)

    if code == T_NIL then
        return nil, expires_at

    elseif code == T_BOOLEAN then
        return payload == "1", expires_at

    elseif code == T_NUMBER then
        return tonumber(payload), expires_at

    elseif code == T_STRING then
        return payload, expires_at

    elseif code == T_TABLE then
        local v, err = json_decode(payload)
        if v == nil then
            return nil, nil, "corrupt L2 table: " .. tostring(err)
        end
        return v, expires_at
    end

    return nil, nil, "corrupt L2 entry type: " .. tostring(code)
end


-- -> true, value, expires_at | false (absent) | nil, err
-- Entries are read with get_stale: whether one is stale is decided by the
-- expiry in its header, so that entries kept for resurrect_ttl past their
-- ttl stay readable.
local function l2_get(self, nskey)
    local raw, code = self.dict:get_stale(nskey)
    if raw == nil and self.miss_dict then
        raw, code = self.miss_dict:get_stale(nskey)
    end

    if raw == nil then
        return false
    end

    local value, expires_at, err = decode(raw, code)
    if err then
        return nil, "lua_shared_dict '" .. self.shm .. "': " .. err
    end

    return true, value, expires_at
end


local function is_stale(expires_at)
    return expires_at > 0 and expires_at <= ngx_now()
end


local function l2_store(self, nskey, value, ttl, resurrect_ttl, tries)
    local expires_at = ttl > 0 and ngx_now() + ttl or 0
    local raw, code, err = encode(value, expires_at)
    if not raw then
        return nil, err
    end

    local dict = self.dict
    if value == nil and self.miss_dict then
        dict = self.miss_dict
    end

    -- with resurrect_ttl the dict keeps the entry past its ttl (until it is
    -- evicted) so that a failing callback can fall back on it
    local exptime = resurrect_ttl and 0 or ttl

    local ok
    for _ = 1, tries or self.shm_set_tries do
        -- a full dict evicts its least recently used entries; a large value
        -- may need several rounds of that
        ok, err = dict:set(nskey, raw, exptime, code)
        if ok or err ~= "no memory" then
            break
        end
    end

    if not ok then
        return nil, "could not write to lua_shared_dict '" .. self.shm .. "': " .. tostring(err)
    end

    return true
end


-- L1 ----------------------------------------------------------------------

local function serialize(serializer, value)
    if value == nil or not serializer then
        return value
    end

    local ok, res, err = pcall(serializer, value)
    if not ok then
        return nil, "l1_serializer threw an error: " .. tostring(res)
    end

    if res == nil then
        return nil, "l1_serializer returned an error: " .. tostring(err or "nil value")
    end

    return res
end


local function l1_store(self, key, value, ttl, serializer)
    local v, err = serialize(serializer, value)
    if err then
        return nil, err
    end

    self.lru:set(key, v == nil and CACHED_NIL or v, ttl > 0 and ttl or nil)
    return v
end


-- promotes a fresh L2 entry into L1 -> value, err
local function promote(self, key, value, expires_at, serializer)
    local ttl = 0
    if expires_at > 0 then
        -- the L1 copy must not outlive the L2 entry
        ttl = expires_at - ngx_now()
        if ttl <= 0 then
            ttl = 0.001
        end
    end

    return l1_store(self, key, value, ttl, serializer)
end


-- get ---------------------------------------------------------------------

local function opt(opts, name, default)
    if opts then
        local v = opts[name]
        if v ~= nil then
            return v
        end
    end
    return default
end


local function resurrect(self, key, nskey, serializer, resurrect_ttl, cb_err)
    local found, value = l2_get(self, nskey)
    if not found then
        return nil
    end

    local ok, serr = l2_store(self, nskey, value, resurrect_ttl, resurrect_ttl)
    if not ok then
        ngx_log(WARN, "[zedcup] cache ", self.name, ": could not resurrect '",
                key, "': ", serr)
        return nil
    end

    local v, lerr = l1_store(self, key, value, resurrect_ttl, serializer)
    if lerr then
        return nil
    end

    ngx_log(WARN, "[zedcup] cache ", self.name, ": callback for '", key,
            "' failed (", tostring(cb_err), "), serving the stale value for ",
            resurrect_ttl, "s")

    return true, v
end


local function run_callback(self, key, nskey, opts, cb, ...)
    local ttl = opt(opts, "ttl", self.ttl)
    local neg_ttl = opt(opts, "neg_ttl", self.neg_ttl)
    local resurrect_ttl = opt(opts, "resurrect_ttl", self.resurrect_ttl)
    local serializer = opt(opts, "l1_serializer", self.l1_serializer)

    local lock, err = deps.lock:new(self.locks_shm, self.lock_opts)
    if not lock then
        return nil, "could not create the callback lock: " .. tostring(err)
    end

    local elapsed
    elapsed, err = lock:lock("lk" .. SEP .. nskey)
    if not elapsed then
        if err == "timeout" and resurrect_ttl then
            -- another worker is still running the callback: serve stale,
            -- without resurrecting it (that worker owns the entry)
            local found, value = l2_get(self, nskey)
            if found then
                local v, serr = serialize(serializer, value)
                if not serr then
                    return v, nil, 4
                end
            end
        end
        return nil, "could not acquire the callback lock: " .. tostring(err)
    end

    -- whoever held the lock before us may have filled L2 meanwhile
    local found, value, expires_at = l2_get(self, nskey)
    if found and not is_stale(expires_at) then
        local v, perr = promote(self, key, value, expires_at, serializer)
        lock:unlock()
        if perr then
            return nil, perr
        end
        return v, nil, 2
    end

    local ok, cb_err, cb_ttl
    ok, value, cb_err, cb_ttl = pcall(cb, ...)
    if not ok then
        lock:unlock()
        return nil, "callback threw an error: " .. tostring(value)
    end

    if cb_err ~= nil then
        if resurrect_ttl then
            local done, v = resurrect(self, key, nskey, serializer, resurrect_ttl, cb_err)
            if done then
                lock:unlock()
                return v, nil, 4
            end
        end
        lock:unlock()
        return value, tostring(cb_err)
    end

    if value == nil then
        ttl = neg_ttl
    end

    if type(cb_ttl) == "number" then
        if cb_ttl < 0 then
            -- the callback asked for this value not to be cached
            lock:unlock()
            return value, nil, 3
        end
        ttl = cb_ttl
    end

    local stored, serr = l2_store(self, nskey, value, ttl, resurrect_ttl,
                                  opt(opts, "shm_set_tries", nil))
    if not stored then
        lock:unlock()
        return nil, serr
    end

    local v, lerr = l1_store(self, key, value, ttl, serializer)
    lock:unlock()
    if lerr then
        return nil, lerr
    end

    return v, nil, 3
end


--- get(key, opts, cb, ...) -> value, err, hit_level
-- hit_level: 1 L1, 2 L2, 3 callback, 4 stale value resurrected, -1 miss
-- (no callback given). On error: nil, err.
function _M.get(self, key, opts, cb, ...)
    if type(key) ~= "string" then
        error("key must be a string (got " .. type(key) .. ")", 2)
    end

    -- L1: one table lookup, no shared dict, no allocation
    local v = self.lru:get(key)
    if v ~= nil then
        if v == CACHED_NIL then
            return nil, nil, 1
        end
        return v, nil, 1
    end

    if opts ~= nil then
        check_call_opts(opts)
    end

    if cb ~= nil and type(cb) ~= "function" then
        error("callback must be a function (got " .. type(cb) .. ")", 2)
    end

    local nskey = self.prefix .. key
    local found, value, expires_at = l2_get(self, nskey)
    if found == nil then
        return nil, value
    end

    if found and not is_stale(expires_at) then
        local err
        value, err = promote(self, key, value, expires_at, opt(opts, "l1_serializer", self.l1_serializer))
        if err then
            return nil, err
        end
        return value, nil, 2
    end

    if cb == nil then
        return nil, nil, -1
    end

    return run_callback(self, key, nskey, opts, cb, ...)
end


--- peek(key, stale) -> remaining_ttl, nil, value, is_stale | nil (not cached)
-- Looks into L2 only. remaining_ttl is negative for a stale entry and 0 for
-- one that never expires.
function _M.peek(self, key, stale)
    if type(key) ~= "string" then
        error("key must be a string (got " .. type(key) .. ")", 2)
    end

    local found, value, expires_at = l2_get(self, self.prefix .. key)
    if found == nil then
        return nil, value
    end

    if not found then
        return nil
    end

    local old = is_stale(expires_at)
    if old and not stale then
        return nil
    end

    local remaining = 0
    if expires_at > 0 then
        remaining = expires_at - ngx_now()
    end

    return remaining, nil, value, old
end


local function require_ipc(self, what)
    if not self.ipc then
        error("no ipc to propagate " .. what .. ": create the cache with opts.ipc_shm", 3)
    end
end


--- set(key, opts, value) -> true | nil, err
-- Writes L2 and this worker's L1; other workers drop their L1 copy in update().
function _M.set(self, key, opts, value)
    if type(key) ~= "string" then
        error("key must be a string (got " .. type(key) .. ")", 2)
    end

    if opts ~= nil then
        check_call_opts(opts)
    end

    require_ipc(self, "set()")

    local ttl
    if value == nil then
        ttl = opt(opts, "neg_ttl", self.neg_ttl)
    else
        ttl = opt(opts, "ttl", self.ttl)
    end

    local nskey = self.prefix .. key
    local ok, err = l2_store(self, nskey, value, ttl, opt(opts, "resurrect_ttl", self.resurrect_ttl),
                             opt(opts, "shm_set_tries", nil))
    if not ok then
        return nil, err
    end

    if self.miss_dict then
        -- a value replaces a cached miss and the other way round
        if value == nil then
            self.dict:delete(nskey)
        else
            self.miss_dict:delete(nskey)
        end
    end

    local _, lerr = l1_store(self, key, value, ttl, opt(opts, "l1_serializer", self.l1_serializer))
    if lerr then
        self.lru:delete(key)
    end

    ok, err = self.ipc:publish_delete(key)
    if not ok then
        return nil, "could not broadcast the invalidation of '" .. key .. "': " .. err
    end

    return true
end


--- delete(key) -> true | nil, err
function _M.delete(self, key)
    if type(key) ~= "string" then
        error("key must be a string (got " .. type(key) .. ")", 2)
    end

    require_ipc(self, "delete()")

    local nskey = self.prefix .. key
    self.dict:delete(nskey)
    if self.miss_dict then
        self.miss_dict:delete(nskey)
    end
    self.lru:delete(key)

    local ok, err = self.ipc:publish_delete(key)
    if not ok then
        return nil, "could not broadcast the invalidation of '" .. key .. "': " .. err
    end

    return true
end


--- purge(flush_expired) -> true | nil, err
-- Empties L1 and the whole L2 shared dict (like mlcache: every instance on
-- the same shm loses its entries), then tells the other workers.
function _M.purge(self, flush_expired)
    require_ipc(self, "purge()")

    self.lru:flush_all()
    self.dict:flush_all()
    if self.miss_dict then
        self.miss_dict:flush_all()
    end

    if flush_expired then
        self.dict:flush_expired()
        if self.miss_dict then
            self.miss_dict:flush_expired()
        end
    end

    local ok, err = self.ipc:publish_purge()
    if not ok then
        return nil, "could not broadcast the purge: " .. err
    end

    return true
end


--- update(timeout) -> true | nil, err
-- Applies the invalidations published by any worker since the last call.
-- Costs one shared dict read when there is nothing new. Like mlcache, it
-- raises when the cache has no ipc_shm.
function _M.update(self, timeout)
    if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
        error("timeout must be a number >= 0 (got " .. tostring(timeout) .. ")", 2)
    end

    require_ipc(self, "update()")

    return self.ipc:poll(self.lru, timeout or 0.3)
end


return _M
