-- zedcup.discovery: the hosts of a pool from Consul's service catalog.
--
-- A pool's `service` = { name, tag (a string or a list: all must match),
-- datacenter, node_meta = { key = value }, passing_only (false) } is read from
-- /v1/health/service/<name>. Each instance becomes a host:
--
--   name    the service ID (a '/' in it becomes '_': host names are key segments)
--   host    the service's address, else its node's
--   port    the service's port
--   weight  Weights.Passing, or Weights.Warning while a check warns
--   up      false while a check is critical (or warns with a warning weight of 0)
--   status  "passing" | "warning" | "critical" (the worst check of the instance)
--   source  "consul:<service name>"
--
-- passing_only = true asks Consul for passing instances only (`?passing`).
--
--   discovery.fetch(service, index?, wait?, client?) -> hosts, index | nil, err
--   discovery.hosts(entries, service)                -> hosts (sorted by name)
--   discovery.tracker(keep_for, what)                -> t; t:update(hosts | nil, now)
--       -> the hosts to use, changed: a service whose instances all vanish keeps
--          its last hosts for keep_for seconds (logged), then goes empty; a
--          failed fetch (nil) keeps them as long as it lasts.

local kv = require "zedcup.kv"

local ngx = ngx
local ngx_now = ngx.now
local ngx_log = ngx.log
local WARN = ngx.WARN
local NOTICE = ngx.NOTICE
local gsub = string.gsub
local sort = table.sort
local tonumber = tonumber
local tostring = tostring
local ipairs = ipairs
local pairs = pairs
local type = type
local setmetatable = setmetatable


local _M = { _VERSION = "0.1.0" }

local RANK = { passing = 1, warning = 2, critical = 3, maintenance = 3 }


local function status_of(checks)
    local worst, rank = "passing", 1
    for _, c in ipairs(checks or {}) do
        local r = RANK[c.Status] or 3
        if r > rank then
            worst, rank = c.Status == "maintenance" and "critical" or c.Status, r
        end
    end
    return worst
end


function _M.hosts(entries, service)
    local out = {}
    local source = "consul:" .. service.name
    for _, e in ipairs(entries or {}) do
        local svc, node = e.Service or {}, e.Node or {}
        local addr = svc.Address
        if type(addr) ~= "string" or addr == "" then
            addr = node.Address
        end
        local status = status_of(e.Checks)
        local weights = type(svc.Weights) == "table" and svc.Weights or {}
        local weight = tonumber(weights.Passing) or 1
        if status == "warning" then
            weight = tonumber(weights.Warning) or 1
        end
        if type(svc.ID) == "string" and type(addr) == "string" and addr ~= ""
           and tonumber(svc.Port) and svc.Port > 0 then
            out[#out + 1] = {
                name = (gsub(svc.ID, "/", "_")),
                host = addr,
                port = svc.Port,
                weight = weight > 0 and weight or 1,
                up = status ~= "critical" and weight > 0,
                status = status,
                source = source,
            }
        end
    end
    sort(out, function(a, b) return a.name < b.name end)
    return out
end


local function args_of(service, index, wait)
    local args = {}
    if service.passing_only then
        args.passing = true
    end
    local tag = service.tag
    if type(tag) == "string" then
        args.tag = tag
    elseif type(tag) == "table" and #tag > 0 then
        args.tag = tag  -- repeated: every tag must match
    end
    if service.datacenter then
        args.dc = service.datacenter
    end
    if type(service.node_meta) == "table" then
        local metas = {}
        for k, v in pairs(service.node_meta) do
            metas[#metas + 1] = k .. ":" .. tostring(v)
        end
        sort(metas)
        if #metas > 0 then
            args["node-meta"] = metas
        end
    end
    if index and index > 0 then
        args.index = index
        args.wait = wait or 60
    end
    return args
end
_M.args = args_of


function _M.fetch(service, index, wait, c)
    if type(service) ~= "table" or type(service.name) ~= "string" or service.name == "" then
        error("service.name must be a non-empty string", 2)
    end
    c = c or kv.client()  -- the client adds a blocking query's wait to its read timeout
    local res, err = c:get("/health/service/" .. ngx.escape_uri(service.name), args_of(service, index, wait))
    if not res then
        return nil, "reading service " .. service.name .. " failed: " .. tostring(err)
    end
    if res.status ~= 200 or type(res.body) ~= "table" then
        local body = type(res.body) == "string" and res.body:match("^[^\r\n]*") or ""
        return nil, "reading service " .. service.name .. ": Consul answered " .. tostring(res.status)
                    .. (body ~= "" and (" " .. body) or "")
    end
    return _M.hosts(res.body, service), tonumber(res.headers["X-Consul-Index"])
end


local tracker_mt = { __index = {} }

--- t:update(hosts | nil, now?) -> hosts to use, changed (bool)
function tracker_mt.__index.update(t, hosts, now)
    now = now or ngx_now()
    if hosts and #hosts > 0 then
        if t.since then
            ngx_log(NOTICE, "[zedcup] discovery: ", t.what, " has instances again")
        end
        t.last, t.since = hosts, nil
        return hosts, true
    end
    if not hosts then
        return t.last or {}, false  -- Consul unreachable: the last good hosts stay
    end
    if not t.last or #t.last == 0 then
        local changed = t.last == nil
        t.last = hosts
        return hosts, changed
    end
    if not t.since then
        t.since = now
        ngx_log(WARN, "[zedcup] discovery: ", t.what, " has no instances; keeping its last ",
                #t.last, " hosts for ", t.keep_for, " s")
        return t.last, false
    end
    if now - t.since >= t.keep_for then
        ngx_log(WARN, "[zedcup] discovery: ", t.what, " still empty after ", t.keep_for, " s: dropping its hosts")
        t.last, t.since = {}, nil
        return t.last, true
    end
    return t.last, false
end


function _M.tracker(keep_for, what)
    return setmetatable({ keep_for = keep_for or 60, what = what or "service" }, tracker_mt)
end


return _M
