-- zedcup.events: event names, global (per worker) listeners and firing.
-- Handler listeners get (data) and run first; global ones get (instance, data).
-- A listener that throws is logged and never breaks the request.

local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local pcall = pcall
local type = type
local tostring = tostring


local _M = { _VERSION = "0.1.0" }

local EVENTS = {
    host_connect = true,
    host_connect_error = true,
    host_request_error = true,
    host_up = true,
    host_down = true,
}
_M.EVENTS = EVENTS

-- event -> list of global listeners
local global = {}
for name in pairs(EVENTS) do
    global[name] = {}
end


--- check(event, callback) -> true | nil, err (the README's bind errors)
function _M.check(event, callback)
    if not EVENTS[event] then
        return nil, "Event not found"
    end
    if type(callback) ~= "function" then
        return nil, "Can only bind a function"
    end
    return true
end


--- bind(event, callback) -> true | nil, err
function _M.bind(event, callback)
    local ok, err = _M.check(event, callback)
    if not ok then
        return nil, err
    end
    local list = global[event]
    list[#list + 1] = callback
    return true
end


--- wanted(event, local_listeners?) -> true when anything listens (so callers
-- build event data only when someone will read it)
function _M.wanted(event, local_listeners)
    return global[event][1] ~= nil or (local_listeners ~= nil and local_listeners[event] ~= nil)
end


--- fire(event, instance, data, local_listeners?)
-- local_listeners: { [event] = { fn, ... } } of one handler.
function _M.fire(event, instance, data, local_listeners)
    local list = local_listeners and local_listeners[event]
    if list then
        for i = 1, #list do
            local ok, err = pcall(list[i], data)
            if not ok then
                ngx_log(ngx_ERR, "[zedcup] ", event, " listener of instance ", instance, " failed: ", tostring(err))
            end
        end
    end

    list = global[event]
    for i = 1, #list do
        local ok, err = pcall(list[i], instance, data)
        if not ok then
            ngx_log(ngx_ERR, "[zedcup] global ", event, " listener failed for instance ", instance, ": ",
                    tostring(err))
        end
    end
end


return _M
