-- zedcup.check.tcp: healthcheck.type "tcp": the host passes when a TCP
-- connection to it opens within the pool's timeout (nothing is sent).
--
--   check(host, hc, pool) -> true | false, why
--
-- The port is hc.port, else the host's; a host given as a name is resolved
-- (zedcup.resolver) and its first address checked; "unix:/path" and "/path"
-- connect to the socket.

local resolver = require "zedcup.resolver"
local address = require("zedcup.select").address

local ngx = ngx
local tcp = ngx.socket.tcp
local tostring = tostring


local _M = { _VERSION = "0.1.0" }


--- target(host, hc) -> address, port | nil, why   (yields on an unknown name)
function _M.target(host, hc)
    local addr, unix = address(host.host)
    if unix then
        return addr
    end
    local addrs, err = resolver.resolve(addr)
    if not addrs then
        return nil, "could not resolve " .. addr .. ": " .. tostring(err)
    end
    return addrs[1], hc.port or host.port
end


--- connect(host, hc, pool) -> sock | nil, why
function _M.connect(host, hc, pool)
    local addr, port = _M.target(host, hc)
    if not addr then
        return nil, port
    end
    local sock = tcp()
    sock:settimeouts(pool.timeout or 2000, pool.read_timeout or 10000, pool.read_timeout or 10000)
    local ok, err
    if port then
        ok, err = sock:connect(addr, port)
    else
        ok, err = sock:connect(addr)
    end
    if not ok then
        sock:close()
        return nil, "could not connect: " .. tostring(err)
    end
    return sock
end


function _M.check(host, hc, pool)
    local sock, err = _M.connect(host, hc, pool)
    if not sock then
        return false, err
    end
    sock:close()
    return true
end


return _M
