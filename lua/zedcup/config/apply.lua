-- zedcup.config.apply: the watcher's answers into the node store.
--
-- Runs in the one worker of the node that holds the watch (zedcup.watch).
-- A listing of <prefix>/instances/ writes each changed instance into the
-- config mlcache (L2 + an IPC invalidation), drops removed ones, and bumps the
-- node's config generation; a listing of <prefix>/config/ replaces the global
-- config. A tree holding `_pending` is never read; a value the schema refuses
-- is logged once per node (with its key) and the last good config stays.
--
-- Consul's index going back (info.reset), or a listing asked for after this
-- node's own write but older than it, means Consul restarted or was rebuilt:
-- then an empty listing does not wipe what the node serves (kept, loudly,
-- until anything is written under <prefix>/instances/ again).

local kv = require "zedcup.kv"
local schema = require "zedcup.schema"
local config = require "zedcup.config"
local state = require "zedcup.state"
local store = require "zedcup.store"

local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_WARN = ngx.WARN
local ngx_time = ngx.time
local pairs = pairs
local next = next
local tostring = tostring
local str_sub = string.sub
local tab_concat = table.concat
local tab_sort = table.sort


local _M = { _VERSION = "0.1.0" }

-- s after a watch saw Consul's index go back during which an empty global
-- config counts as Consul having come back empty
local RESET_WINDOW = 60


local function synced_ttl()
    local g = config.global()
    return g.consul_wait_time + g.worker_lock_ttl + 5
end


--- instances_alive() / global_alive(): the watchers got an answer (changed
-- or not): what this node holds is still Consul's view
function _M.instances_alive()
    store.synced(synced_ttl())
    store.watch_error("instances", false)
end

function _M.global_alive()
    store.global_synced(synced_ttl())
end


local function current_sig(configs, name)
    local _, _, v = configs:peek(name)
    return v and v.sig
end


local function apply_instances(entries, index, info)
    index = index or 0
    local configs = store.configs()
    local base = kv.instances_prefix()
    local groups = kv.split_instances(entries, base)
    local old = store.names()

    -- This node's own writes hold back a listing asked for before the write
    -- and older than it. One asked for after the write but older than it
    -- means Consul's index went back.
    local sent_at = info and info.sent_at or 0
    local reset = info and info.reset
    -- an instance this node removed after the listing was asked for: the
    -- listing is older than the removal (whose index Consul does not give)
    if info then
        for name in pairs(groups) do
            if store.removed_at(name) > sent_at then
                groups[name] = nil
            end
        end
    end
    for name in pairs(old) do
        local wi, wt = store.own_write(name)
        if wi > index and wt < sent_at then
            reset = true
        end
    end
    if reset then
        -- (however it was seen: the global config's watch, which may answer
        -- later with an index past everything it saw, reads this)
        store.max_index(index, true)
        for name in pairs(old) do
            store.set_own_write(name, nil)
        end
        for name in pairs(groups) do
            store.set_own_write(name, nil)
        end
    end
    local function newer_own_write(name)
        return (store.own_write(name)) > index
    end

    if next(groups) == nil and next(old) ~= nil then
        local kept = store.kept()
        if kept or reset then
            if not kept then
                local list = {}
                for name in pairs(old) do
                    list[#list + 1] = name
                end
                tab_sort(list)
                store.set_kept({ since = ngx_time(), index = index, seen = info and info.seen or 0,
                                 names = list })
                ngx_log(ngx_ERR, "[zedcup] Consul came back empty: nothing under ", base,
                        " and its index went back (to ", index, ")",
                        " (restarted without its data?): keeping the ", #list,
                        " instance(s) this node serves (", tab_concat(list, ", "),
                        "); Consul is followed again once anything is written under ", base)
            end
            _M.instances_alive()
            return true
        end
    end
    if next(groups) ~= nil and store.kept() then
        store.set_kept(nil)
        ngx_log(ngx_WARN, "[zedcup] ", base, " holds instances again: following Consul's listing,",
                " instances absent from it are removed")
    end

    local names = {}
    local changed = false
    for name, g in pairs(groups) do
        names[name] = true
        if not old[name] then
            changed = true
        end
        if not g.pending and not newer_own_write(name) and current_sig(configs, name) ~= g.sig then
            local ibase = base .. name .. "/"
            local normalised, problems = schema.unflatten("instance", g)
            local plan_ok, perr = true, nil
            if normalised then
                plan_ok, perr = config.compile(name, normalised, g.sig)
            end
            if not normalised then
                config.log_bad_once("instance " .. name, g.sig, problems, ibase)
            elseif not plan_ok then
                config.log_bad_once("instance " .. name, g.sig,
                                    { { path = { "pools" }, value = nil, problem = perr } }, ibase)
            else
                local ok, err = configs:set(name, nil, { name = name, sig = g.sig, conf = normalised })
                if not ok then
                    return nil, "storing instance " .. name .. ": " .. tostring(err)
                end
                changed = true
            end
        end
    end

    for name in pairs(old) do
        if not names[name] then
            if newer_own_write(name) then
                names[name] = true -- this node wrote it after the listing
            else
                configs:delete(name)
                state.forget(name)
                changed = true
            end
        end
    end

    store.update_names(function(set)
        for name in pairs(set) do
            if not names[name] and not newer_own_write(name) then
                set[name] = nil -- (a name this node wrote meanwhile stays)
            end
        end
        for name in pairs(names) do
            set[name] = true
        end
    end)
    _M.instances_alive()
    return true, changed
end


--- apply_instances(entries, index, info) -> true | nil, err: a listing of <prefix>/instances/
function _M.apply_instances(entries, index, info)
    local ok, changed = store.update_configs(apply_instances, entries, index, info)
    if not ok then
        return nil, changed
    end
    if changed then
        store.config_changed()
        config.refresh()
    end
    return true
end


-- -> whether this node serves instances of which Consul lists none (one read;
-- nil when Consul did not answer: then the empty config is not taken either)
local function instances_gone()
    if next(store.names()) == nil then
        return false
    end
    local entries = kv.get_tree(kv.instances_prefix())
    return entries == nil or #entries == 0
end


--- apply_global(entries, index?, info?) -> true | nil, err: a listing of <prefix>/config/
function _M.apply_global(entries, index, info)
    local gwi, gwt = store.own_write(nil)
    local reset_by_own_write = index and gwi > index and gwt < (info and info.sent_at or 0)
    if (info and info.reset) or reset_by_own_write then
        store.set_own_write(nil, nil)
        gwi = 0
    end
    local base = kv.config_prefix()
    local rel, pending, sig = kv.relative(entries, base)
    _M.global_alive()
    if pending or (index and gwi > index) then
        return true
    end
    -- a Consul that came back empty does not reset the intervals either:
    -- the global config is kept until anything is written under <prefix>/config/
    local raw = store.global_raw()
    if #rel == 0 and raw and str_sub(raw, -3) ~= "\n{}" then
        if store.global_kept() then
            return true
        end
        -- (so does an empty config found on the first answer after a failure,
        -- or soon after another watch saw Consul's index go back, or while
        -- Consul lists none of the instances this node serves: an empty global
        -- config is rarely meant. The last: a blocking query sent to a
        -- restarted Consul is answered once its new index passes the old one,
        -- like a change, maybe before the other watches noticed the restart.)
        if (info and (info.reset or info.resync)) or reset_by_own_write or store.kept()
           or ngx_time() - store.reset_at() < RESET_WINDOW or instances_gone() then
            store.global_kept(true)
            ngx_log(ngx_ERR, "[zedcup] Consul came back empty: nothing under ", base,
                    " after a restart: keeping this node's global config;",
                    " Consul is followed again once anything is written under ", base)
            return true
        end
    elseif #rel > 0 and store.global_kept() then
        store.global_kept(false)
    end
    return config.accept_global(rel, sig, base, index)
end


return _M
