-- zedcup.metrics: what zedcup measures, as Prometheus metrics (README "metrics").
--
-- Every value comes from zedcup.status() (this node's memory, no Consul) and
-- the node's counters; zedcup.prometheus writes the text format. Names and
-- labels are documented in the README and follow Prometheus' conventions:
-- `zedcup_` prefix, `_total` counters, `_seconds` units, labels
-- instance, pool, host, kind, result, state.

local counters = require "zedcup.counters"
local healthcheck = require "zedcup.healthcheck"
local node = require "zedcup.node"
local prometheus = require "zedcup.prometheus"
local status = require "zedcup.status"

local ipairs = ipairs
local pairs = pairs


local _M = { _VERSION = "0.1.0" }

_M.CONTENT_TYPE = prometheus.CONTENT_TYPE

local FAILURE_KINDS = { "connect", "request", "status" }
local STATES = { "up", "down", "disabled" }


local function each_host(st, fn)
    for _, inst in ipairs(st.instances) do
        for _, pool in ipairs(inst.pools) do
            for _, host in ipairs(pool.hosts) do
                fn(inst, pool, host)
            end
        end
    end
end


local function host_labels(inst, pool, host)
    return { "instance", inst.name, "pool", pool.name, "host", host.name }
end


--- render(st?) -> the exposition text of this node (st: a status() table)
function _M.render(st)
    st = st or status.status()
    local out = prometheus.new()
    local n = st.node

    out:family("zedcup_info", "gauge", "zedcup on this node: 1, labelled with its version and node name")
    out:sample("zedcup_info", { "version", n.version, "node", n.name }, 1)

    out:family("zedcup_host_up", "gauge",
               "1 when this node sends requests to the host, 0 when it is down or disabled")
    each_host(st, function(inst, pool, host)
        out:sample("zedcup_host_up", host_labels(inst, pool, host), host.state == "up" and 1 or 0)
    end)

    out:family("zedcup_host_state", "gauge", "1 for the host's state as this node sees it (up, down, disabled)")
    each_host(st, function(inst, pool, host)
        for _, s in ipairs(STATES) do
            local l = host_labels(inst, pool, host)
            l[7], l[8] = "state", s
            out:sample("zedcup_host_state", l, host.state == s and 1 or 0)
        end
    end)

    out:family("zedcup_host_weight", "gauge", "the host's configured weight")
    each_host(st, function(inst, pool, host)
        out:sample("zedcup_host_weight", host_labels(inst, pool, host), host.weight)
    end)

    out:family("zedcup_host_errors", "gauge", "the host's failures in the current error_timeout window (cluster)")
    each_host(st, function(inst, pool, host)
        out:sample("zedcup_host_errors", host_labels(inst, pool, host), host.errors or 0)
    end)

    out:family("zedcup_host_requests_total", "counter", "tries sent to the host by this node (every outcome)")
    each_host(st, function(inst, pool, host)
        out:sample("zedcup_host_requests_total", host_labels(inst, pool, host), host.requests)
    end)

    out:family("zedcup_host_failures_total", "counter",
               "tries to the host that failed, by kind: connect, request (send or read error), "
               .. "status (an answer in status_codes)")
    each_host(st, function(inst, pool, host)
        for _, kind in ipairs(FAILURE_KINDS) do
            local l = host_labels(inst, pool, host)
            l[7], l[8] = "kind", kind
            out:sample("zedcup_host_failures_total", l, host.failures[kind])
        end
    end)

    out:family("zedcup_host_transitions_total", "counter",
               "state changes of the host this node saw, by the state it went to")
    each_host(st, function(inst, pool, host)
        for _, s in ipairs(STATES) do
            local l = host_labels(inst, pool, host)
            l[7], l[8] = "state", s
            out:sample("zedcup_host_transitions_total", l, node.transition_count(inst.name, pool.name, host.name, s))
        end
    end)

    out:family("zedcup_requests_total", "counter", "client requests balanced by this node")
    for _, inst in ipairs(st.instances) do
        out:sample("zedcup_requests_total", { "instance", inst.name }, inst.requests)
    end
    out:family("zedcup_tries_total", "counter", "tries of those requests (a retry on another host is one more)")
    for _, inst in ipairs(st.instances) do
        out:sample("zedcup_tries_total", { "instance", inst.name }, inst.tries)
    end
    out:family("zedcup_failovers_total", "counter", "requests answered by a pool other than the first")
    for _, inst in ipairs(st.instances) do
        out:sample("zedcup_failovers_total", { "instance", inst.name }, inst.failovers)
    end
    out:family("zedcup_unanswered_total", "counter",
               "requests no host answered (no usable host, or every try failed)")
    for _, inst in ipairs(st.instances) do
        out:sample("zedcup_unanswered_total", { "instance", inst.name }, inst.no_host)
    end

    out:family("zedcup_config_index", "gauge", "Consul index of the instance's config this node applied (0: unknown)")
    for _, inst in ipairs(st.instances) do
        out:sample("zedcup_config_index", { "instance", inst.name }, inst.config.index or 0)
    end
    out:family("zedcup_config_age_seconds", "gauge", "seconds since this node applied the instance's config")
    for _, inst in ipairs(st.instances) do
        if inst.config.age then
            out:sample("zedcup_config_age_seconds", { "instance", inst.name }, inst.config.age)
        end
    end

    local hc = healthcheck.stats()
    out:family("zedcup_healthchecks_total", "counter", "health checks run by this node, by result")
    out:sample("zedcup_healthchecks_total", { "result", "pass" }, (hc.checks or 0) - (hc.failed or 0))
    out:sample("zedcup_healthchecks_total", { "result", "fail" }, hc.failed or 0)
    out:family("zedcup_healthcheck_checker", "gauge", "1 when this node holds the health-check lock")
    out:sample("zedcup_healthcheck_checker", nil, n.checker.this_node and 1 or 0)

    out:family("zedcup_consul_up", "gauge", "1 when Consul answered this node's last read")
    out:sample("zedcup_consul_up", nil, n.consul.reachable and 1 or 0)
    out:family("zedcup_consul_last_contact_age_seconds", "gauge", "seconds since Consul last answered this node")
    if n.consul.age then
        out:sample("zedcup_consul_last_contact_age_seconds", nil, n.consul.age)
    end
    out:family("zedcup_nodes", "gauge", "live nodes of the cluster, as this node last read them")
    if n.nodes then
        out:sample("zedcup_nodes", nil, n.nodes)
    end

    local timers = 0
    for _ in pairs(require("zedcup.timer").stats()) do
        timers = timers + 1
    end
    out:family("zedcup_timers_running", "gauge", "background jobs running in the worker that answered")
    out:sample("zedcup_timers_running", nil, timers)

    return out:render()
end


--- metrics(): a content_by_lua handler answering the exposition (GET and HEAD)
function _M.metrics()
    -- this worker's own counts are current; others' are at most FLUSH_INTERVAL late
    counters.flush()
    local body = _M.render()
    ngx.header["Content-Type"] = prometheus.CONTENT_TYPE
    ngx.header["Cache-Control"] = "no-store"
    ngx.print(body)
end


return _M
