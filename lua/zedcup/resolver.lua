-- zedcup.resolver: host names to addresses, cached per worker for the records'
-- TTL (clamped to [ttl_min, ttl_max]) and re-resolved in the background, so a
-- request never waits for DNS once a name is known.
--
--   resolver.configure(opts)  from init({ resolver = opts }): nameservers
--                             ({ "10.0.0.2", { "127.0.0.1", 5353 } }; absent:
--                             /etc/hosts, then /etc/resolv.conf's), ttl_min (1),
--                             ttl_max (300), timeout (s, 2), retrans (2), ipv6
--                             (false: AAAA only for a name without A records)
--   resolver.peers(host)      -> addresses (an array, shared: do not modify) |
--                             nil, "resolving". No I/O, never yields: usable in
--                             balancer_by_lua. A literal IP (or unix:) answers
--                             { host }. An unknown name is queued for the
--                             background and answers nil until resolved.
--   resolver.resolve(host)    -> addresses | nil, err. Like peers(), but looks an
--                             unknown name up at once (yields: cosocket phases).
--   resolver.version()        a number that changes whenever any name's
--                             addresses change (for callers caching plans)
--
-- A failed lookup keeps the last good addresses, is logged once (and once
-- more when the name resolves again), and is retried with back-off. Names not
-- asked for during ttl_max * 4 (at least 10 minutes) are forgotten.

local deps = require "zedcup.deps"
local timer = require "zedcup.timer"

local ngx = ngx
local ngx_log = ngx.log
local ngx_now = ngx.now
local get_phase = ngx.get_phase
local WARN = ngx.WARN
local NOTICE = ngx.NOTICE
local io_open = io.open
local find = string.find
local match = string.match
local lower = string.lower
local concat = table.concat
local sort = table.sort
local math_min = math.min
local math_max = math.max
local pairs = pairs
local ipairs = ipairs
local type = type
local error = error
local pcall = pcall
local tostring = tostring
local thread_spawn = ngx.thread.spawn
local thread_wait = ngx.thread.wait


local _M = { _VERSION = "0.1.0" }

local TICK = 0.25          -- s between background passes
local HOSTS_RELOAD = 5     -- s: /etc/hosts is read again at most this often
local FAIL_RETRY_MAX = 30  -- s: the longest wait before retrying a failing name

local options
local cache = {}       -- name -> entry { addrs, expires, used, failing, retry }
local literal = {}     -- host -> { host } for literal addresses
local version = 0
local hosts, hosts_read = nil, nil
local started = false


--- is_literal(host) -> whether `host` needs no name resolution: an IPv4 or
-- IPv6 literal (has a colon; names cannot) or unix:/path. The one reading.
local function is_literal(host)
    if find(host, "^%d+%.%d+%.%d+%.%d+$") or find(host, ":", 1, true) then
        return true
    end
    return false
end
_M.is_literal = is_literal


local function read_resolv_conf(path)
    local servers = {}
    local f = io_open(path, "r")
    if f then
        for line in f:lines() do
            local ns = match(line, "^%s*nameserver%s+([^%s#;]+)")
            if ns then
                servers[#servers + 1] = match(ns, "^(.-)%%") or ns  -- drop a zone id
            end
        end
        f:close()
    end
    if #servers == 0 then
        servers[1] = "127.0.0.1"  -- what the C library assumes
    end
    return servers
end


local function read_hosts(path)
    local out = {}
    local f = io_open(path, "r")
    if not f then
        return out
    end
    for line in f:lines() do
        line = match(line, "^([^#]*)")
        local addr, rest = match(line, "^%s*(%S+)%s+(.*)$")
        if addr then
            local v4 = not find(addr, ":", 1, true)
            for name in rest:gmatch("%S+") do
                name = lower(name)
                local e = out[name]
                if not e then
                    e = { v4 = {}, v6 = {} }
                    out[name] = e
                end
                local list = v4 and e.v4 or e.v6
                list[#list + 1] = addr
            end
        end
    end
    f:close()
    return out
end


local function check_number(opts, field, min)
    local v = opts[field]
    if v ~= nil and (type(v) ~= "number" or v < min) then
        error("opts.resolver." .. field .. " must be a number >= " .. min .. " (got " .. tostring(v) .. ")", 3)
    end
end


--- configure(opts?) — from zedcup.init; resets the cache.
function _M.configure(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("opts.resolver must be a table (got " .. type(opts) .. ")", 2)
    end
    opts = opts or {}
    if opts.nameservers ~= nil then
        if type(opts.nameservers) ~= "table" or #opts.nameservers == 0 then
            error("opts.resolver.nameservers must be a non-empty array", 2)
        end
        for i, ns in ipairs(opts.nameservers) do
            if type(ns) ~= "string" and not (type(ns) == "table" and type(ns[1]) == "string"
                                              and (ns[2] == nil or type(ns[2]) == "number")) then
                error("opts.resolver.nameservers[" .. i .. "] must be \"addr\" or { \"addr\", port } (got "
                      .. tostring(ns) .. ")", 2)
            end
        end
    end
    check_number(opts, "ttl_min", 0)
    check_number(opts, "ttl_max", 0)
    check_number(opts, "timeout", 0.001)
    check_number(opts, "retrans", 1)
    if opts.ipv6 ~= nil and type(opts.ipv6) ~= "boolean" then
        error("opts.resolver.ipv6 must be a boolean (got " .. tostring(opts.ipv6) .. ")", 2)
    end
    local o = {
        nameservers = opts.nameservers,
        system = opts.nameservers == nil,
        ttl_min = opts.ttl_min or 1,
        ttl_max = opts.ttl_max or 300,
        timeout = opts.timeout or 2,
        retrans = opts.retrans or 2,
        ipv6 = opts.ipv6 or false,
        hosts_file = opts.hosts_file or "/etc/hosts",
        resolv_conf = opts.resolv_conf or "/etc/resolv.conf",
    }
    if o.ttl_max < o.ttl_min then
        error("opts.resolver.ttl_max must be >= ttl_min", 2)
    end
    if o.system then
        o.nameservers = read_resolv_conf(o.resolv_conf)
    end
    options = o
    cache = {}
    hosts, hosts_read = nil, nil
end


local function opts()
    if not options then
        _M.configure()
    end
    return options
end


local function from_hosts(name)
    local o = opts()
    local now = ngx_now()
    if not hosts or now - hosts_read >= HOSTS_RELOAD then
        hosts, hosts_read = read_hosts(o.hosts_file), now
    end
    local e = hosts[name]
    if not e then
        return nil
    end
    if #e.v4 > 0 and not o.ipv6 then
        return e.v4
    end
    local out = {}
    for _, a in ipairs(e.v4) do out[#out + 1] = a end
    for _, a in ipairs(e.v6) do out[#out + 1] = a end
    return out
end


local function query(r, name, qtype, addrs)
    local answers, err = r:query(name, { qtype = qtype })
    if not answers then
        return nil, err
    end
    if answers.errcode then
        return nil, "dns: " .. name .. ": " .. tostring(answers.errstr) .. " (" .. answers.errcode .. ")"
    end
    local ttl
    for _, rr in ipairs(answers) do
        if rr.type == qtype and rr.address then
            addrs[#addrs + 1] = rr.address
            ttl = ttl and math_min(ttl, rr.ttl) or rr.ttl
        end
    end
    return ttl
end


-- -> addrs (sorted), ttl | nil, err. Yields.
local function lookup(name)
    local o = opts()
    if o.system then
        local found = from_hosts(lower(name))
        if found then
            local addrs = {}
            for i, a in ipairs(found) do addrs[i] = a end
            sort(addrs)
            return addrs, HOSTS_RELOAD
        end
    end

    local r, err = deps.dns:new({
        nameservers = o.nameservers,
        timeout = o.timeout * 1000,
        retrans = o.retrans,
    })
    if not r then
        return nil, "resolver: " .. tostring(err)
    end

    local addrs = {}
    local ttl, ttl6
    ttl, err = query(r, name, 1, addrs)
    if o.ipv6 or #addrs == 0 then
        local err6
        ttl6, err6 = query(r, name, 28, addrs)
        err = err or err6
        ttl = ttl and ttl6 and math_min(ttl, ttl6) or ttl or ttl6
    end
    if #addrs == 0 then
        return nil, err or ("dns: " .. name .. ": no A or AAAA records")
    end
    sort(addrs)
    return addrs, ttl
end


local function same(a, b)
    if not a or not b or #a ~= #b then
        return false
    end
    for i = 1, #a do
        if a[i] ~= b[i] then
            return false
        end
    end
    return true
end


local function refresh(name, e)
    local o = opts()
    local addrs, ttl_or_err = lookup(name)
    local now = ngx_now()
    if addrs then
        local ttl = math_min(math_max(ttl_or_err or o.ttl_min, o.ttl_min), o.ttl_max)
        if e.failing then
            ngx_log(NOTICE, "[zedcup] resolver: ", name, " resolves again: ", concat(addrs, ", "))
        elseif not same(addrs, e.addrs) then
            ngx_log(NOTICE, "[zedcup] resolver: ", name, " -> ", concat(addrs, ", "), " (ttl ", ttl, " s)")
        end
        if not same(addrs, e.addrs) then
            e.addrs = addrs
            version = version + 1
        end
        e.expires = now + ttl
        e.failing = false
        e.retry = nil
        return addrs
    end

    if not e.failing then
        ngx_log(WARN, "[zedcup] resolver: ", name, ": ", ttl_or_err,
                e.addrs and ("; keeping " .. concat(e.addrs, ", ")) or "; no address yet")
        e.failing = true
    end
    e.retry = math_min((e.retry or o.ttl_min / 2) * 2, FAIL_RETRY_MAX)
    e.retry = math_max(e.retry, 0.5)
    e.expires = now + e.retry
    return nil, ttl_or_err
end


local function pass()
    local now = ngx_now()
    local forget = math_max(opts().ttl_max * 4, 600)
    local threads = {}
    for name, e in pairs(cache) do
        if now - e.used > forget then
            cache[name] = nil
            version = version + 1
        elseif now >= e.expires and not e.busy then
            e.busy = true
            threads[#threads + 1] = thread_spawn(function()
                local ok, err = pcall(refresh, name, e)
                e.busy = false
                if not ok then
                    ngx_log(WARN, "[zedcup] resolver: ", name, ": ", err)
                end
            end)
        end
    end
    for _, t in ipairs(threads) do
        thread_wait(t)
    end
    return true
end


local function start()
    started = true
    timer.every("zedcup.resolver", function() return TICK end, pass)
end


local function entry(host)
    local e = cache[host]
    if not e then
        e = { expires = 0, used = ngx_now() }
        cache[host] = e
    end
    -- no timers in init_by_lua: a name asked for there is resolved once a
    -- worker asks again
    if not started and get_phase() ~= "init" then
        start()
    end
    return e
end


--- peers(host) -> addresses | nil, "resolving"   (no I/O)
function _M.peers(host)
    local lit = literal[host]
    if lit then
        return lit
    end
    local e = cache[host]
    if e and e.addrs then
        e.used = ngx_now()
        return e.addrs
    end
    if is_literal(host) then
        lit = { host }
        literal[host] = lit
        return lit
    end
    entry(host)
    return nil, "resolving"
end


--- resolve(host) -> addresses | nil, err   (yields on a name not known yet)
function _M.resolve(host)
    if type(host) ~= "string" or host == "" then
        error("host must be a non-empty string", 2)
    end
    local addrs = _M.peers(host)
    if addrs then
        return addrs
    end
    local e = entry(host)
    if e.busy then
        -- the background is on it: wait for it (bounded) rather than query twice
        local deadline = ngx_now() + opts().timeout * opts().retrans + 1
        while e.busy and ngx_now() < deadline do
            ngx.sleep(0.01)
        end
        if e.addrs then
            return e.addrs
        end
    end
    e.busy = true
    local ok, got, err = pcall(refresh, host, e)
    e.busy = false
    if not ok then
        return nil, "resolver: " .. tostring(got)
    end
    return got, err
end


function _M.version()
    return version
end


--- stats() -> { [name] = { addresses = {...}, expires_in = s, failing = bool } }
function _M.stats()
    local out = {}
    local now = ngx_now()
    for name, e in pairs(cache) do
        out[name] = { addresses = e.addrs, expires_in = e.expires - now, failing = e.failing or false }
    end
    return out
end


return _M
