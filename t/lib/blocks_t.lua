-- Helpers shared by the building-block and background tests (t/01-06, t/40-43).
--
-- The harness puts t/lib on lua_package_path, so a block loads this with
-- `local t = require "blocks_t"`. `$TEST_NGINX_*` variables are not substituted
-- in here: ports, keys and limits are always passed in by the block.
--
-- Everything here is test plumbing (waiting, raw sockets); what a block
-- proves stays in the block.

local ngx = ngx
local ngx_now = ngx.now
local ngx_sleep = ngx.sleep
local ngx_update_time = ngx.update_time
local type = type
local error = error
local tostring = tostring
local assert = assert
local select = select
local concat = table.concat

local _M = {}


-- Raises (at the caller of the public function) on a bad deadline, step or
-- callback: these are programmer errors in a block.
local function check_wait_args(deadline, step, fn, fn_name)
    if type(deadline) ~= "number" then
        error("deadline must be a number, got " .. type(deadline), 3)
    end
    if type(step) ~= "number" or step <= 0 then
        error("step must be a positive number, got " .. tostring(step), 3)
    end
    if type(fn) ~= "function" then
        error(fn_name .. " must be a function, got " .. type(fn), 3)
    end
end


-- Polls until cond() returns a truthy value or the clock passes `deadline`
-- (an absolute ngx.now() time, seconds), sleeping `step` seconds in between.
-- cond() is called first, then the deadline is checked, as in
-- `while not cond() and ngx.now() < deadline do ... end`.
-- Returns cond()'s last value: truthy when met, falsy at the deadline.
local function poll_until(deadline, step, cond)
    local v = cond()
    while not v and ngx_now() < deadline do
        ngx_sleep(step)
        ngx_update_time()
        v = cond()
    end
    return v
end

function _M.poll_until(deadline, step, cond)
    check_wait_args(deadline, step, cond, "cond")
    return poll_until(deadline, step, cond)
end


-- Like poll_until(), but checks the clock first: pred() is only called while
-- ngx.now() is before `deadline`, never after it, as in
-- `while ngx.now() < deadline do local v = pred() if v then return v end ... end`.
-- Returns pred()'s first truthy value, or nil once the deadline has passed.
function _M.retry_until(deadline, step, pred)
    check_wait_args(deadline, step, pred, "pred")
    while ngx_now() < deadline do
        local v = pred()
        if v then
            return v
        end
        ngx_sleep(step)
        ngx_update_time()
    end
    return nil
end


-- poll_until() with a deadline `timeout` seconds from now.
function _M.poll(timeout, step, cond)
    if type(timeout) ~= "number" then
        error("timeout must be a number, got " .. type(timeout), 2)
    end
    local deadline = ngx_now() + timeout
    check_wait_args(deadline, step, cond, "cond")
    return poll_until(deadline, step, cond)
end


-- Waits until the counter `key` in shared dict `dict` (missing = 0) reaches `n`,
-- for at most `timeout` seconds, checking every `step` seconds.
-- Returns true when it did, false at the deadline.
function _M.wait_count(dict, key, n, timeout, step)
    return _M.poll(timeout, step, function()
        return (dict:get(key) or 0) >= n
    end)
end


-- A stand-in for ngx.say that keeps the lines: -> say(...), lines. say()
-- joins its arguments as ngx.say does (nil, booleans and numbers as text) and
-- appends the line to `lines`; a block runs the same code through two paths
-- and compares their lines instead of printing them twice.
function _M.sayer()
    local lines = {}
    local function say(...)
        local parts = {}
        for i = 1, select("#", ...) do
            parts[i] = tostring((select(i, ...)))
        end
        lines[#lines + 1] = concat(parts)
    end
    return say, lines
end


-- Reads one HTTP request head (request line and headers, up to the blank
-- line) off a raw request socket (ngx.req.socket(true)). Raises when the
-- socket fails. Returns the request line.
function _M.skip_head(sock)
    local first = assert(sock:receive("*l"))
    local line = first
    while line ~= "" do
        line = assert(sock:receive("*l"))
    end
    return first
end


-- Holds a raw connection open until the peer drops it, or `ms` milliseconds
-- (default 5000) pass without a byte: a backend that must not close first.
function _M.hold_open(sock, ms)
    sock:settimeout(ms or 5000)
    sock:receive(1)
end


return _M
