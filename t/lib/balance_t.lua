-- Lua helpers of the balancer-mode blocks (t/37-balance.t): a raw HTTP client
-- that reports the status and the front worker that served a request.

local tcp = ngx.socket.tcp
local type = type
local error = error
local tonumber = tonumber
local assert = assert

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

return _M
