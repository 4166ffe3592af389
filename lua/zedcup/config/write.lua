-- zedcup.config.write: this node's writes of configs to Consul (the Lua API's
-- configure, configure_instance, remove_instance).
--
-- A config is validated by the schema, written as a whole tree (zedcup.kv),
-- and then put into this node's store at once (the watcher confirms it
-- later): the writer's node serves its own write without waiting for Consul's
-- answer to come back through the watch.

local kv = require "zedcup.kv"
local schema = require "zedcup.schema"
local config = require "zedcup.config"
local state = require "zedcup.state"
local store = require "zedcup.store"

local ngx = ngx
local ngx_now = ngx.now
local ngx_update_time = ngx.update_time
local tostring = tostring
local json_encode = require("cjson.safe").encode


local _M = { _VERSION = "0.1.0" }


local signature = kv.signature


--- instance(name, config) -> true | nil, err
function _M.instance(name, conf)
    local normalised, err = schema.check("instance", conf)
    if not normalised then
        return nil, err
    end
    local plan
    plan, err = config.compile(name, normalised, "")
    if not plan then
        return nil, err
    end

    local entries = schema.flatten("instance", normalised)
    local index
    index, err = kv.write_tree(kv.instance_prefix(name), entries, { kv.state_prefix(name) })
    if not index then
        return nil, err
    end
    local ok
    ok, err = store.update_configs(function()
        store.set_own_write(name, index, ngx_now())
        store.set_removed(name, nil)
        return store.configs():set(name, nil, { name = name, sig = signature(entries), conf = normalised })
    end)
    if not ok then
        return nil, "storing instance " .. name .. " in the shared dict failed: " .. tostring(err)
    end
    store.update_names(function(set)
        set[name] = true
    end)
    state.forget(name)
    store.config_changed()
    config.refresh()
    return true
end


--- remove_instance(name) -> true | nil, err
function _M.remove_instance(name)
    local ok, err = kv.txn({
        kv.delete_tree_op(kv.instance_prefix(name)),
        kv.delete_tree_op(kv.state_prefix(name)),
    })
    if not ok then
        return nil, "removing instance " .. name .. " failed: " .. tostring(err)
    end
    store.update_configs(function()
        ngx_update_time()
        store.set_removed(name, ngx_now())
        store.update_names(function(set)
            set[name] = nil
        end)
        store.configs():delete(name)
    end)
    state.forget(name)
    store.config_changed()
    config.refresh()
    return true
end


--- global(config) -> true | nil, err
function _M.global(conf)
    local normalised, err = schema.check("global", conf)
    if not normalised then
        return nil, err
    end
    local entries = schema.flatten("global", normalised)
    local index
    index, err = kv.write_tree(kv.config_prefix(), entries)
    if not index then
        return nil, err
    end
    store.update_configs(function()
        store.set_own_write(nil, index, ngx_now())
        store.set_global_raw(signature(entries) .. "\n" .. json_encode(normalised))
    end)
    store.config_changed()
    config.refresh()
    return true
end


return _M
