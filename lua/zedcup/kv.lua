-- zedcup.kv: zedcup's Consul KV access. Knows the key layout (README.md),
-- checks the status of every answer, and writes configs as whole trees:
-- in one transaction when they fit, else bracketed by `_pending`.
--
-- All functions return nil, "what failed: why" when Consul gave no usable
-- answer; CAS-style functions return false when the CAS lost.

local deps = require "zedcup.deps"
local schema = require "zedcup.schema"

local ngx = ngx
local ngx_time = ngx.time
local type = type
local ipairs = ipairs
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local str_sub = string.sub
local tab_concat = table.concat
local tab_insert = table.insert
local tab_sort = table.sort

local function by_key(a, b)
    return a[1] < b[1]
end
local error = error


local _M = { _VERSION = "0.1.0" }

-- Consul's transaction limit before 1.14; newer ones allow 128.
local TXN_MAX_OPS = 64
_M.TXN_MAX_OPS = TXN_MAX_OPS
_M.PENDING = "_pending"
-- s after which a `_pending` left by a writer that died is taken over
local PENDING_STALE = 60
_M.PENDING_STALE = PENDING_STALE

local opts = {
    prefix = "zedcup",
    consul = {},
}
local client -- per worker, created on first use

-- connect and read timeouts (ms) for ordinary (non-blocking) calls
local DEFAULT_CONNECT_TIMEOUT = 2000
local DEFAULT_READ_TIMEOUT = 5000


function _M.init(prefix, consul_opts)
    if type(prefix) ~= "string" or prefix == "" then
        error("prefix must be a non-empty string", 2)
    end
    opts.prefix = prefix
    opts.consul = consul_opts or {}
    client = nil
end


function _M.prefix()
    return opts.prefix
end


--- client(read_timeout?) -> a Consul client (resty.consul API)
function _M.client(read_timeout)
    if not read_timeout and client then
        return client
    end
    local o = {}
    for k, v in pairs(opts.consul) do
        o[k] = v
    end
    o.connect_timeout = o.connect_timeout or DEFAULT_CONNECT_TIMEOUT
    o.read_timeout = read_timeout or o.read_timeout or DEFAULT_READ_TIMEOUT
    local c = deps.consul:new(o)
    if not read_timeout then
        client = c
    end
    return c
end


-- Key builders -------------------------------------------------------------

function _M.instances_prefix()
    return opts.prefix .. "/instances/"
end

function _M.instance_prefix(inst)
    return opts.prefix .. "/instances/" .. inst .. "/"
end

function _M.config_prefix()
    return opts.prefix .. "/config/"
end

function _M.state_prefix(inst)
    if inst then
        return opts.prefix .. "/state/" .. inst .. "/"
    end
    return opts.prefix .. "/state/"
end

function _M.state_key(inst, pool, host, what)
    return opts.prefix .. "/state/" .. inst .. "/" .. pool .. "/" .. host .. "/" .. what
end


local function status_error(what, res)
    local body = res.body
    if type(body) == "table" then
        local errs = body.Errors
        if type(errs) == "table" and errs[1] then
            body = tostring(errs[1].What)
        else
            body = ""
        end
    elseif type(body) == "string" then
        -- Consul's errors are one short line; an HTML page (a proxy's) is noise
        body = body:match("^[^\r\n]*")
        if body:sub(1, 1) == "<" or #body > 200 then
            body = ""
        end
    else
        body = ""
    end
    return what .. ": Consul answered " .. tostring(res.status)
           .. (body ~= "" and (" " .. tostring(body)) or "")
end


--- answer_error(what, res, err) -> "<what>: <why>" for a call that gave no
-- answer (res nil: err) or not the expected one (Consul's status and message)
function _M.answer_error(what, res, err)
    if not res then
        return what .. ": " .. tostring(err)
    end
    return status_error(what, res)
end


--- get_tree(prefix, index?, wait?, c?) -> entries, index | nil, err
-- entries: Consul's list (Key, Value as text or nil, Flags, ModifyIndex); {} when nothing.
function _M.get_tree(prefix, index, wait, c)
    c = c or _M.client()
    local args = { recurse = true }
    if index and index > 0 then
        args.index = index
        args.wait = wait
    end
    local res, err = c:get_key(prefix, args)
    if not res then
        return nil, "reading " .. prefix .. " failed: " .. tostring(err)
    end
    local new_index = tonumber(res.headers["X-Consul-Index"])
    if res.status == 404 then
        return {}, new_index
    end
    if res.status ~= 200 or type(res.body) ~= "table" then
        return nil, status_error("reading " .. prefix, res)
    end
    for _, e in ipairs(res.body) do
        if type(e.Value) ~= "string" then
            e.Value = nil
        end
    end
    return res.body, new_index
end


--- get(key) -> entry | false (absent) | nil, err
function _M.get(key)
    local res, err = _M.client():get_key(key)
    if not res then
        return nil, "reading " .. key .. " failed: " .. tostring(err)
    end
    if res.status == 404 then
        return false
    end
    if res.status ~= 200 or type(res.body) ~= "table" or not res.body[1] then
        return nil, status_error("reading " .. key, res)
    end
    local e = res.body[1]
    if type(e.Value) ~= "string" then
        e.Value = nil
    end
    return e
end


--- put(key, value, args?) -> true | false (CAS lost) | nil, err
function _M.put(key, value, args)
    local res, err = _M.client():put_key(key, value, args)
    if not res then
        return nil, "writing " .. key .. " failed: " .. tostring(err)
    end
    if res.status ~= 200 then
        return nil, status_error("writing " .. key, res)
    end
    return res.body == true or res.body == "true"
end


--- delete(key, args?) -> true | false | nil, err
function _M.delete(key, args)
    local res, err = _M.client():delete_key(key, args)
    if not res then
        return nil, "deleting " .. key .. " failed: " .. tostring(err)
    end
    if res.status ~= 200 then
        return nil, status_error("deleting " .. key, res)
    end
    return res.body == true or res.body == "true"
end


--- txn(ops) -> results | false, why (a check failed: 409) | nil, err
function _M.txn(ops)
    if #ops > TXN_MAX_OPS then
        error("transaction of " .. #ops .. " operations (at most " .. TXN_MAX_OPS .. ")", 2)
    end
    local res, err = _M.client():txn(ops)
    if not res then
        return nil, "transaction failed: " .. tostring(err)
    end
    if res.status == 409 then
        return false, status_error("transaction", res)
    end
    if res.status ~= 200 then
        return nil, status_error("transaction", res)
    end
    return type(res.body) == "table" and res.body.Results or {}
end


-- the highest ModifyIndex among a transaction's results (0 when none)
local function max_index(results)
    local max = 0
    for _, r in ipairs(results or {}) do
        local e = type(r) == "table" and r.KV
        local i = type(e) == "table" and tonumber(e.ModifyIndex)
        if i and i > max then
            max = i
        end
    end
    return max
end


local function set_op(key, value, flags)
    return { KV = { Verb = "set", Key = key, Value = value, Flags = flags } }
end
_M.set_op = set_op

local function delete_tree_op(prefix)
    -- the trailing slash keeps `a` from deleting `ab`
    if str_sub(prefix, -1) ~= "/" then
        error("delete-tree prefix must end with '/': " .. prefix, 2)
    end
    return { KV = { Verb = "delete-tree", Key = prefix } }
end
_M.delete_tree_op = delete_tree_op


--- write_tree(base, entries, extra_deletes) -> index | nil, err
-- (index: Consul's index of the write, so readers can tell older listings)
-- Replaces everything under `base` (ending in '/') by `entries`
-- ({ {relative key, text}, ... }), and deletes the `extra_deletes` trees.
-- One transaction when it fits; otherwise `_pending` is set in the first
-- transaction (with the deletes) and removed in the last, so a reader that
-- ignores trees holding `_pending` never sees a mix.
function _M.write_tree(base, entries, extra_deletes)
    local head = { delete_tree_op(base) }
    for _, p in ipairs(extra_deletes or {}) do
        head[#head + 1] = delete_tree_op(p)
    end

    if #head + #entries <= TXN_MAX_OPS then
        local ops = head
        for _, e in ipairs(entries) do
            ops[#ops + 1] = set_op(base .. e[1], e[2])
        end
        local res, err = _M.txn(ops)
        if not res then
            return nil, "writing " .. base .. " failed: " .. tostring(err)
        end
        return max_index(res)
    end

    -- Several transactions: `_pending` marks the tree as being written and
    -- makes the writer exclusive. A fresh `_pending` of another writer is
    -- respected; one older than PENDING_STALE is a crashed writer's and is
    -- taken over. Every later transaction checks that `_pending` is still
    -- ours, so a writer that lost it stops instead of mixing trees.
    local pending = base .. _M.PENDING
    local cur, err = _M.get(pending)
    if cur == nil then
        return nil, "writing " .. base .. " failed: " .. tostring(err)
    end
    local now = ngx_time()
    if cur then
        local age = now - (tonumber(cur.Flags) or 0)
        if age < PENDING_STALE then
            return nil, "writing " .. base .. " refused: another write is under way (for " .. age .. " s)"
        end
        tab_insert(head, 1, { KV = { Verb = "check-index", Key = pending, Index = cur.ModifyIndex } })
    else
        tab_insert(head, 1, { KV = { Verb = "check-not-exists", Key = pending } })
    end
    head[#head + 1] = set_op(pending, tostring(now), now)
    local res
    res, err = _M.txn(head)
    if res == false then
        -- another writer set (or renewed) `_pending` since we read it
        return nil, "writing " .. base .. " refused: another write is under way (it began just now: "
                    .. tostring(err) .. ")"
    end
    if not res then
        return nil, "writing " .. base .. " (start) failed: " .. tostring(err)
    end
    local mine = max_index(res)
    local function ours()
        return { KV = { Verb = "check-index", Key = pending, Index = mine } }
    end

    local ops = { ours() }
    local last
    for i, e in ipairs(entries) do
        ops[#ops + 1] = set_op(base .. e[1], e[2])
        if #ops == TXN_MAX_OPS or i == #entries then
            last, err = _M.txn(ops)
            if not last then
                -- `_pending` stays (until a writer takes it over): readers
                -- keep the last good config
                return nil, "writing " .. base .. " failed after " .. (i - #ops + 1) .. " of "
                            .. #entries .. " keys: " .. tostring(err)
            end
            ops = { ours() }
        end
    end

    local ok
    ok, err = _M.txn({ { KV = { Verb = "delete-cas", Key = pending, Index = mine } } })
    if not ok then
        return nil, "writing " .. base .. " (finish) failed: " .. tostring(err)
    end
    -- the delete's own index is not in its result: one past the last set is
    -- a lower bound that listings showing the whole write reach
    return max_index(last) + 1
end


--- signature(list) -> the content signature of a tree: list = { { rel, value }, ... }
-- in any order (sorted here by key, as Consul lists them). The one definition:
-- listings (split_instances, relative) and this node's writes compare equal.
local function signature(list)
    local sorted = {}
    for i, e in ipairs(list) do
        sorted[i] = e
    end
    tab_sort(sorted, by_key)
    local parts = {}
    for i, e in ipairs(sorted) do
        parts[i] = e[1] .. "\0" .. (e[2] or "")
    end
    return ngx.md5(tab_concat(parts, "\0"))
end
_M.signature = signature


--- split(entries, base) -> { ["<inst>"] = { { rel, value }, ..., pending = bool, sig = "..." } }
-- Groups a listing of <prefix>/instances/ by instance. `sig` identifies the
-- content (keys and values), so an unchanged instance is not rebuilt.
function _M.split_instances(entries, base)
    local groups = {}
    local blen = #base
    for _, e in ipairs(entries) do
        local key = e.Key
        local rest = str_sub(key, blen + 1)
        local name, rel = rest:match("^([^/]+)/(.*)$")
        if name and rel ~= "" and str_sub(rel, -1) ~= "/" then
            local g = groups[name]
            if not g then
                g = {}
                groups[name] = g
            end
            if rel == _M.PENDING then
                g.pending = true
            else
                g[#g + 1] = { rel, e.Value }
            end
        end
    end
    for _, g in pairs(groups) do
        g.sig = signature(g)
    end
    return groups
end


--- entries_of(entries, base) -> { { rel, value }, ... }, pending, sig (one tree)
function _M.relative(entries, base)
    local out = {}
    local pending = false
    local blen = #base
    for _, e in ipairs(entries) do
        local rel = str_sub(e.Key, blen + 1)
        if rel == _M.PENDING then
            pending = true
        elseif rel ~= "" and str_sub(rel, -1) ~= "/" then
            out[#out + 1] = { rel, e.Value }
        end
    end
    return out, pending, signature(out)
end


--- problem_message(problem, base) -> "<consul key>: <problem> (got <value>)"
function _M.problem_message(p, base)
    return schema.message(p, base .. schema.path_key(p.path))
end


return _M
