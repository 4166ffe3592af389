-- Lua helpers shared by the data-plane t/*.t blocks.
--
-- The harness puts t/lib/ on lua_package_path, so a block does
--     local T = require "zedcup_t"
-- `$TEST_NGINX_*` substitution does not reach this file: every port or key
-- prefix a helper needs is an argument.
--
-- The multi-worker blocks follow one pattern: a location (usually /which,
-- served by _M.which) answers "<worker id> <text>\n", and the block's /t asks
-- its own server over fresh connections until every worker gave the answer
-- it waits for.

local tcp = ngx.socket.tcp
local say = ngx.say
local sleep = ngx.sleep
local now = ngx.now
local update_time = ngx.update_time
local worker_id = ngx.worker.id
local type = type
local tonumber = tonumber
local tostring = tostring
local error = error
local assert = assert
local ipairs = ipairs

local _M = { _VERSION = "0.1.0" }

-- Content handler of the blocks' /which location: a zedcup handler for
-- instance `?i=` (default "inst") requests "/" and the body is said as
-- "<worker id> <backend body>"; a create_handler or request error is said as
-- "<worker id> <error>".
function _M.which()
    local handler, err = require("zedcup").create_handler(ngx.var.arg_i or "inst")
    if not handler then
        say(worker_id(), " ", err)
        return
    end
    local res, rerr = handler:request({ path = "/" })
    if not res then
        say(worker_id(), " ", rerr)
        return
    end
    say(worker_id(), " ", res:read_body())
    handler:set_keepalive()
end

-- GET `path` from 127.0.0.1:`port` over a fresh HTTP/1.0 connection
-- (timeout_ms, default 2000) and split a "<worker id> <text>\n" body.
-- -> worker id (number), text | nil, nil when the body has another shape.
-- A failed connect raises (the block fails).
function _M.ask(port, path, timeout_ms)
    if type(port) ~= "number" then
        error("zedcup_t.ask: port must be a number, got " .. type(port), 2)
    end
    local sock = tcp()
    sock:settimeout(timeout_ms or 2000)
    assert(sock:connect("127.0.0.1", port))
    sock:send("GET " .. path .. " HTTP/1.0\r\nHost: localhost\r\n\r\n")
    local data = sock:receive("*a")
    sock:close()
    local body = data:match("\r\n\r\n(.*)$") or ""
    local w, rest = body:match("^(%d+) (.-)\n?$")
    return tonumber(w), rest
end

-- Ask 127.0.0.1:`port` for `path` every 20 ms until workers 0 and 1 both
-- answered `want` as their latest answer, or `deadline` seconds passed.
-- -> seconds taken | nil on the deadline.
function _M.until_all(port, path, want, deadline)
    local ask = _M.ask
    local start = now()
    local seen = {}
    while now() - start < deadline do
        local w, body = ask(port, path)
        if w and body == want then
            seen[w] = true
        elseif w then
            seen[w] = nil
        end
        if seen[0] and seen[1] then
            return now() - start
        end
        sleep(0.02)
        update_time()
    end
    return nil
end

-- _M.ask and _M.until_all bound to one server port:
-- -> ask(path), until_all(path, want, deadline)
function _M.client(port)
    if type(port) ~= "number" then
        error("zedcup_t.client: port must be a number, got " .. type(port), 2)
    end
    local function ask(path)
        return _M.ask(port, path)
    end
    local function until_all(path, want, deadline)
        return _M.until_all(port, path, want, deadline)
    end
    return ask, until_all
end

local function check_wait(name, seconds, step, done)
    if type(seconds) ~= "number" then
        error("zedcup_t." .. name .. ": seconds must be a number, got " .. type(seconds), 3)
    end
    if type(step) ~= "number" or step <= 0 then
        error("zedcup_t." .. name .. ": step must be a positive number, got " .. tostring(step), 3)
    end
    if type(done) ~= "function" then
        error("zedcup_t." .. name .. ": done must be a function, got " .. type(done), 3)
    end
end

-- Call `done()` until it returns a truthy value or `seconds` pass, checking
-- first, then every `step` seconds (for a state that may already hold).
-- -> the last value done() returned.
function _M.wait_for(seconds, step, done)
    check_wait("wait_for", seconds, step, done)
    local deadline = now() + seconds
    local v = done()
    while not v and now() < deadline do
        sleep(step)
        update_time()
        v = done()
    end
    return v
end

-- Sleep `step` seconds, then call `done()`, until it returns a truthy value or
-- `seconds` pass (for a change that cannot have happened yet). Unlike
-- wait_for (and blocks_t.poll), the first check comes after the first sleep.
-- -> the last value done() returned.
function _M.wait_for_change(seconds, step, done)
    check_wait("wait_for_change", seconds, step, done)
    local deadline = now() + seconds
    local v
    repeat
        sleep(step)
        update_time()
        v = done()
    until v or now() > deadline
    return v
end

-- init_by_lua, after zedcup.init(): host_down and host_up logged at WARN as
-- "EVENT <event> <instance>/<pool>/<host>", and every connect error counted
-- in ngx.shared.flags as "connect_errors".
function _M.trace_host_events()
    local zedcup = require "zedcup"
    for _, ev in ipairs({ "host_down", "host_up" }) do
        zedcup.bind(ev, function(instance, data)
            ngx.log(ngx.WARN, "EVENT ", ev, " ", instance, "/", data.pool.name, "/", data.host.name)
        end)
    end
    zedcup.bind("host_connect_error", function()
        ngx.shared.flags:incr("connect_errors", 1, 0)
    end)
end

-- A proxy between zedcup and Consul that counts and can misbehave, for the
-- watcher and outage tests. A `location /` that proxy_passes to Consul calls:
--   access_by_lua_block { require("zedcup_t").consul_proxy_access("<prefix>") }
--   header_filter_by_lua_block { require("zedcup_t").consul_proxy_header_filter() }
--   log_by_lua_block { require("zedcup_t").consul_proxy_log() }
-- Counters in ngx.shared.flags: "requests"; "blocking:<tree>", the blocking
-- queries in flight per tree under the prefix (config, instances, state);
-- "writes:<uri>". Knobs in ngx.shared.flags: "status" answers that status
-- instead of proxying; "inflate" is added once to the X-Consul-Index of an
-- /instances/ answer (an index going backwards after it); "hold" = a tree name
-- (e.g. "state") holds every listing (?recurse) of that tree before it reaches
-- Consul until the knob is deleted (at most 20 s), counting them in "held" (a
-- watcher then misses whatever is written and deleted meanwhile); "hold" = "*"
-- holds every request the same way (a hung Consul: SIGSTOP).
function _M.consul_proxy_access(prefix)
    if type(prefix) ~= "string" then
        error("prefix must be a string (got " .. type(prefix) .. ")", 2)
    end
    local flags = ngx.shared.flags
    local uri = ngx.var.uri
    local what = uri:match("^/v1/kv/" .. prefix:gsub("%p", "%%%0") .. "/(%a+)/") or uri
    flags:incr("requests", 1, 0)
    if ngx.req.get_uri_args().index then
        ngx.ctx.blocking = "blocking:" .. what
        flags:incr(ngx.ctx.blocking, 1, 0)
    end
    if ngx.req.get_method() ~= "GET" then
        flags:incr("writes:" .. uri, 1, 0)
    end
    local hold = flags:get("hold")
    if hold == "*" or (hold == what and ngx.req.get_uri_args().recurse ~= nil) then
        flags:incr("held", 1, 0)
        local deadline = now() + 20
        while flags:get("hold") == hold and now() < deadline do
            sleep(0.01)
            update_time()
        end
    end
    local status = flags:get("status")
    if status then
        return ngx.exit(status)
    end
end

-- In init_by_lua, after zedcup.init(): the instances watcher's applier
-- (zedcup.config.apply.apply_instances) waits 0.5 s before it applies the next
-- listing that comes while ngx.shared.flags "slow" is set; it sets "applying"
-- when it starts waiting and deletes "slow" once it applied. (Widens the window
-- between a listing and its applying, for the races that happen there.)
function _M.slow_instances_applier()
    local apply = require "zedcup.config.apply"
    local orig = apply.apply_instances
    apply.apply_instances = function(...)
        local flags = ngx.shared.flags
        if not flags:get("slow") then
            return orig(...)
        end
        flags:set("applying", true)
        sleep(0.5)
        local ok, err = orig(...)
        flags:delete("slow")
        return ok, err
    end
end

function _M.consul_proxy_header_filter()
    local flags = ngx.shared.flags
    local inflate = flags:get("inflate")
    local index = tonumber(ngx.header["X-Consul-Index"])
    if inflate and index and ngx.var.uri:find("/instances/", 1, true) then
        flags:delete("inflate")
        ngx.header["X-Consul-Index"] = index + inflate
    end
end

function _M.consul_proxy_log()
    if ngx.ctx.blocking then
        ngx.shared.flags:incr(ngx.ctx.blocking, -1, 0)
    end
end

return _M
