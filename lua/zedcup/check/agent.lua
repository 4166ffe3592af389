-- zedcup.check.agent: healthcheck.type "agent", haproxy's agent-check
-- protocol: connect to hc.port (else the host's port), send hc.send if set
-- (haproxy's agent-send), read one line, close.
-- The line holds words separated by spaces or commas, case-insensitive:
--
--   up, ready            the host is up (at its configured weight)
--   down, fail, stopped  the host fails the check
--   maint                the host fails the check (maintenance)
--   drain                the host stays up but takes no new requests (weight 0)
--   NN%                  the host's weight becomes NN % of its configured weight
--
-- Other words (maxconn:N, ...) are ignored; a line with none of these fails.
--
--   check(host, hc, pool) -> true, nil, info | false, why, info
--   info = { state = "up" | "down" | "drain" | "maint", weight = fraction | nil }

local tcp_check = require "zedcup.check.tcp"

local lower = string.lower
local match = string.match
local gmatch = string.gmatch
local tonumber = tonumber
local tostring = tostring


local _M = { _VERSION = "0.1.0" }

local STATES = {
    up = "up", ready = "up",
    down = "down", fail = "down", stopped = "down",
    maint = "maint",
    drain = "drain",
}


--- parse(line) -> info | nil, why
function _M.parse(line)
    local info = {}
    local understood = false
    for word in gmatch(lower(line or ""), "[^%s,]+") do
        local state = STATES[word]
        if state then
            info.state = state
            understood = true
        else
            local pct = match(word, "^(%d+%.?%d*)%%$")
            if pct then
                info.weight = tonumber(pct) / 100
                understood = true
            end
        end
    end
    if not understood then
        return nil, "agent: unrecognised reply: " .. tostring(line)
    end
    if info.state == "drain" then
        info.weight = 0
    end
    return info
end


function _M.check(host, hc, pool)
    local sock, err = tcp_check.connect(host, hc, pool)
    if not sock then
        return false, err
    end
    if hc.send then
        local ok, serr = sock:send(hc.send)
        if not ok then
            sock:close()
            return false, "agent: sending failed: " .. tostring(serr)
        end
    end
    local line, rerr, partial = sock:receive("*l")
    sock:close()
    if not line then
        if partial and partial ~= "" then
            line = partial  -- an agent that closes without a newline
        else
            return false, "agent: no reply: " .. tostring(rerr)
        end
    end
    local info, perr = _M.parse(line)
    if not info then
        return false, perr
    end
    if info.state == "down" or info.state == "maint" then
        return false, "agent: " .. info.state, info
    end
    info.state = info.state or "up"
    return true, nil, info
end


return _M
