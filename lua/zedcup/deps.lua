-- zedcup.deps: the one place where zedcup gets its HTTP client, Consul
-- client, layered cache and shm lock. Each is the installed lua-resty-*
-- library when `require` finds it, else zedcup's built-in with the same API:
--
--   deps.http     resty.http     | zedcup.http    http.new()
--   deps.consul   resty.consul   | zedcup.consul  consul:new(opts)
--   deps.mlcache  resty.mlcache  | zedcup.cache   mlcache.new(name, shm, opts)
--   deps.lock     resty.lock     | zedcup.lock    lock:new(dict_name, opts)
--   deps.dns      resty.dns.resolver | zedcup.dns  resolver:new(opts)
--
-- Note the call forms: resty.consul and resty.lock take `self` in new(), so
-- callers must use `deps.consul:new(...)` and `deps.lock:new(...)` (the
-- built-ins accept both forms).
--
-- The choice is made on first use (or by init()) and logged once per worker.

local ngx = ngx
local ngx_log = ngx.log
local NOTICE = ngx.NOTICE
local ERR = ngx.ERR
local error = error
local find = string.find
local ipairs = ipairs
local pcall = pcall
local rawget = rawget
local rawset = rawset
local require = require
local setmetatable = setmetatable
local type = type


local _M = { _VERSION = "0.1.0" }

-- field -> { installed library, built-in }; ORDER fixes the log line
local CANDIDATES = {
    http = { "resty.http", "zedcup.http" },
    consul = { "resty.consul", "zedcup.consul" },
    mlcache = { "resty.mlcache", "zedcup.cache" },
    lock = { "resty.lock", "zedcup.lock" },
    dns = { "resty.dns.resolver", "zedcup.dns" },
}
local ORDER = { "http", "consul", "mlcache", "lock", "dns" }

-- field -> module name in use
local chosen


-- -> module table | nil when not installed (a broken install is logged)
local function try_require(name)
    local ok, mod = pcall(require, name)
    if ok then
        return mod
    end

    if not find(mod, "module '" .. name .. "' not found", 1, true) then
        ngx_log(ERR, "[zedcup] ", name, " is installed but failed to load, using the built-in: ", mod)
    end

    return nil
end


--- init(opts) -> names
-- opts.builtin = true: use zedcup's built-ins even when resty.* are installed.
-- The built-ins are loaded on first use, so a module that fails to load
-- raises where it is used, not here.
function _M.init(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("opts must be a table (got " .. type(opts) .. ")", 2)
    end

    local builtin = opts and opts.builtin
    if builtin ~= nil and type(builtin) ~= "boolean" then
        error("opts.builtin must be a boolean (got " .. type(builtin) .. ")", 2)
    end

    chosen = {}
    for _, field in ipairs(ORDER) do
        rawset(_M, field, nil)
        local installed, own = CANDIDATES[field][1], CANDIDATES[field][2]
        local mod = not builtin and try_require(installed)
        if mod then
            chosen[field] = installed
            rawset(_M, field, mod)
        else
            chosen[field] = own
        end
    end

    ngx_log(NOTICE, "[zedcup] using http=", chosen.http, " consul=", chosen.consul,
            " mlcache=", chosen.mlcache, " lock=", chosen.lock, " dns=", chosen.dns)

    return _M.names()
end


--- names() -> { http = "<module>", consul = ..., mlcache = ..., lock = ... }
function _M.names()
    if not chosen then
        _M.init()
    end

    return {
        http = chosen.http,
        consul = chosen.consul,
        mlcache = chosen.mlcache,
        lock = chosen.lock,
        dns = chosen.dns,
    }
end


setmetatable(_M, {
    __index = function(t, field)
        if not CANDIDATES[field] then
            return nil
        end

        if not chosen then
            _M.init()
            local mod = rawget(t, field)
            if mod then
                return mod
            end
        end

        -- a built-in, loaded on first use
        local mod = require(chosen[field])
        rawset(t, field, mod)
        return mod
    end,
})


return _M
