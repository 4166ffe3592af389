-- zedcup.check.custom: healthcheck.type "custom": a check function the user
-- registered, named by healthcheck.custom.
--
--   register(name, fn)           fn(host, hc) -> ok, err   (zedcup.register_check)
--   check(host, hc, pool)        -> true | false, why
--
-- fn runs in the health checker's timer (cosockets allowed), under pcall: an
-- error it raises fails the check with the message. Registration is per
-- worker: do it in init_by_lua (inherited by every worker) or init_worker_by_lua.

local pcall = pcall
local type = type
local error = error
local tostring = tostring


local _M = { _VERSION = "0.1.0" }

local registry = {}


function _M.register(name, fn)
    if type(name) ~= "string" or name == "" then
        error("check name must be a non-empty string (got " .. tostring(name) .. ")", 2)
    end
    if type(fn) ~= "function" then
        error("check must be a function (got " .. type(fn) .. ")", 2)
    end
    registry[name] = fn
    return true
end


function _M.registered(name)
    return registry[name] ~= nil
end


function _M.check(host, hc)
    local name = hc.custom
    local fn = registry[name]
    if not fn then
        return false, "no check registered as " .. tostring(name)
    end
    local ok, res, err = pcall(fn, host, hc)
    if not ok then
        return false, "check " .. name .. " raised: " .. tostring(res)
    end
    if not res then
        return false, err and tostring(err) or ("check " .. name .. " failed")
    end
    return true
end


return _M
