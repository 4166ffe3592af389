-- Lua helpers of the balancer-mode blocks (t/37-balance.t, t/38-methods.t,
-- t/45-49): zedcup initialised with its host events counted, the README's
-- balancer_by_lua body, and a raw HTTP client that reports the status and the
-- front worker that served a request.
--
-- t/lib/balance_proxy.conf holds the proxy settings of the blocks' proxied
-- locations (`include $TEST_NGINX_REPO/t/lib/balance_proxy.conf;`).

local tcp = ngx.socket.tcp
local type = type
local error = error
local tonumber = tonumber
local assert = assert
local pairs = pairs
local ipairs = ipairs
local spawn = ngx.thread.spawn
local wait = ngx.thread.wait
local sleep = ngx.sleep

local _M = { _VERSION = "0.1.0" }

-- GET `path` from 127.0.0.1:`port` over a fresh connection (5 s timeout).
-- -> status (number), body, worker id (from an X-Worker response header, or nil)
function _M.get(port, path)
    if type(port) ~= "number" then
        error("balance_t.get: port must be a number, got " .. type(port), 2)
    end
    local sock = tcp()
    sock:settimeout(5000)
    assert(sock:connect("127.0.0.1", port))
    assert(sock:send("GET " .. path .. " HTTP/1.0\r\nHost: localhost\r\n\r\n"))
    local data = assert(sock:receive("*a"))
    sock:close()
    local status = tonumber(data:match("^HTTP/1%.%d (%d+)"))
    local head, body = data:match("^(.-)\r\n\r\n(.*)$")
    local w = head and tonumber(head:match("\r\nX%-Worker: (%d+)"))
    return status, body, w
end

-- `n` GETs of `path` from 127.0.0.1:`port`, one after the other, counted by
-- body: -> { [body] = count }, with each body of the list `zeroes` at 0 when
-- it never came (e.g. { "a", "b" } for two backends answering "a" and "b").
function _M.split(port, path, n, zeroes)
    local c = {}
    for _, body in ipairs(zeroes or {}) do
        c[body] = 0
    end
    for _ = 1, n do
        local _, body = _M.get(port, path)
        c[body] = (c[body] or 0) + 1
    end
    return c
end

-- init_by_lua: zedcup.init(opts) (raises on an error), then every host event
-- counted in ngx.shared.flags as "<EVENT> <host name>" (CONNECT, CONNECT_ERROR,
-- REQUEST_ERROR, HOST_DOWN); each but CONNECT is also logged at WARN as
-- "<EVENT> <instance> <host name>: <err>".
function _M.init(opts)
    require "resty.core"
    local zedcup = require "zedcup"
    assert(zedcup.init(opts))
    local names = { host_connect = "CONNECT", host_connect_error = "CONNECT_ERROR",
                    host_request_error = "REQUEST_ERROR", host_down = "HOST_DOWN" }
    for event, name in pairs(names) do
        zedcup.bind(event, function(instance, d)
            ngx.shared.flags:incr(name .. " " .. d.host.name, 1, 0)
            if event ~= "host_connect" then
                ngx.log(ngx.WARN, name, " ", instance, " ", d.host.name, ": ", d.err)
            end
        end)
    end
end

-- The README's balancer_by_lua body: zedcup.balance(instance, key); when it
-- fails, the error is logged at `level` as "zedcup: <err>" (not logged without
-- a level) and nginx answers 502 (zedcup.NO_PEER).
function _M.balance(instance, key, level)
    local zedcup = require "zedcup"
    local ok, err = zedcup.balance(instance, key)
    if not ok then
        if level then
            ngx.log(level, "zedcup: ", err)
        end
        return ngx.exit(zedcup.NO_PEER)
    end
end

-- `n` GETs of `path` from 127.0.0.1:`port` at once (each in its own light
-- thread, started 5 ms apart); returns once all have been answered.
function _M.burst(port, path, n)
    local threads = {}
    for i = 1, n do
        threads[i] = spawn(_M.get, port, path)
        sleep(0.005)
    end
    for i = 1, n do
        wait(threads[i])
    end
end

return _M
