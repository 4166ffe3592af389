-- zedcup.report: what a try on a host did, told once, the same way on both
-- request paths (zedcup.handler's cosockets, and zedcup.balance's log() after
-- nginx's proxy): a failure counts against the host (zedcup.state: max_errors
-- within error_timeout marks it down) and fires its event; a connection fires
-- host_connect. Event data is built only when someone listens. Every try and
-- every request is counted in worker memory (zedcup.counters, for status() and
-- metrics()).

local counters = require "zedcup.counters"
local events = require "zedcup.events"
local state = require "zedcup.state"

local fire = events.fire
local wanted = events.wanted
local record_failure = state.record_failure
local count_try = counters.try
local count_failure = counters.failure


local _M = { _VERSION = "0.1.0" }

-- the event of each kind of failure
local EVENT = {
    connect = "host_connect_error",   -- connect failed or timed out
    request = "host_request_error",   -- sending or reading failed, no response
    status = "host_request_error",    -- a response whose status is in status_codes
}
_M.EVENT = EVENT


--- connected(inst, pool, host, listeners?): a connection to host succeeded
function _M.connected(inst, pool, host, listeners)
    count_try(inst, pool, host)
    if wanted("host_connect", listeners) then
        fire("host_connect", inst, { pool = pool, host = host }, listeners)
    end
end


--- failed(inst, kind, pool, host, err, listeners?): a try failed
-- kind: "connect" | "request" | "status"; pool, host: effective config records
function _M.failed(inst, kind, pool, host, err, listeners)
    count_failure(inst, pool, host, kind)
    record_failure(inst, pool, host, err)
    local event = EVENT[kind]
    if wanted(event, listeners) then
        fire(event, inst, { pool = pool, host = host, err = err }, listeners)
    end
end


--- done(inst, pool_index?): a client request ended, answered well by a host of
-- the pool at pool_index, or by none (nil)
_M.done = counters.request


return _M
