-- zedcup.dashboard: status_page(), for a content_by_lua location.
--
-- JSON (zedcup.status() of this node) for `Accept: application/json` or
-- `?format=json`; otherwise one self-contained HTML page (no external assets,
-- no page reloads) that fetches the JSON from its own URL every REFRESH ms and
-- redraws: instances, pools in priority order, hosts coloured by state with
-- the reason, request and failure rates, the checker node, and the last
-- transitions. Every text it shows is inserted as text, never as HTML.

local cjson = require "cjson.safe"
local status = require "zedcup.status"

local ngx = ngx
local type = type
local pairs = pairs
local next = next
local tostring = tostring
local str_find = string.find
local str_gsub = string.gsub


local _M = { _VERSION = "0.1.0" }

local REFRESH = 1000 -- ms between two fetches of the page
local CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            .. "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


-- cjson writes an empty table as {}: the lists of status() are lists
local EMPTY = "\1zedcup empty list\1"
local LISTS = { instances = true, pools = true, hosts = true, transitions = true, down = true, nodes = true }

local function mark_empty(t, depth)
    if depth > 8 then
        return
    end
    for k, v in pairs(t) do
        if type(v) == "table" then
            if LISTS[k] and next(v) == nil then
                t[k] = EMPTY
            else
                mark_empty(v, depth + 1)
            end
        end
    end
end


--- json(st) -> the JSON text of a status() table (lists stay JSON arrays when empty)
function _M.json(st)
    mark_empty(st, 0)
    local text = cjson.encode(st)
    return (str_gsub(text, '"\\u0001zedcup empty list\\u0001"', "[]"))
end


local function wants_json()
    local fmt = ngx.var.arg_format
    if fmt == "json" then
        return true
    end
    if fmt == "html" then
        return false
    end
    local accept = ngx.var.http_accept
    if type(accept) == "table" then
        accept = accept[1]
    end
    return type(accept) == "string" and str_find(accept, "application/json", 1, true) ~= nil
           and not str_find(accept, "text/html", 1, true)
end


-- luacheck: push ignore 631 (the page's lines are HTML, CSS and JS)
local PAGE = [==[<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>zedcup status</title>
<style>
:root { --up: #1a7f37; --down: #cf222e; --disabled: #8c959f; --bg: #f6f8fa; --fg: #1f2328; --muted: #656d76; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg); color: var(--fg); }
header { background: #24292f; color: #fff; padding: 10px 18px; display: flex; flex-wrap: wrap; gap: 6px 22px; align-items: baseline; }
header h1 { font-size: 18px; margin: 0 8px 0 0; }
header .kv { color: #d0d7de; } header .kv b { color: #fff; font-weight: 600; }
main { padding: 12px 18px; display: grid; gap: 14px; }
.card { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 14px; }
.card h2 { font-size: 16px; margin: 0 0 4px; }
.meta { color: var(--muted); font-size: 12px; margin-bottom: 6px; }
.pool { margin-top: 8px; }
.pool h3 { font-size: 13px; margin: 6px 0 4px; color: var(--muted); font-weight: 600; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th:nth-child(1) { width: 15%; } th:nth-child(2) { width: 22%; } th:nth-child(3) { width: 8%; }
th:nth-child(4), th:nth-child(5), th:nth-child(6), th:nth-child(7) { width: 6%; }
td { overflow-wrap: anywhere; }
#cluster table { table-layout: auto; } #cluster th { width: auto; }
th, td { text-align: left; padding: 4px 8px; border-top: 1px solid #eaeef2; vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; border-top: none; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; min-width: 66px; text-align: center; padding: 1px 8px; border-radius: 10px; color: #fff; font-weight: 600; font-size: 12px; }
.badge.up { background: var(--up); } .badge.down { background: var(--down); } .badge.disabled { background: var(--disabled); }
tr.down td { background: #fff5f5; }
.reason { color: var(--muted); font-size: 12px; }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 4px; }
.dot.ok { background: #2da44e; } .dot.bad { background: #fa4549; }
#kept { display: none; background: #fff8c5; border: 1px solid #d4a72c; color: #4d2d00; padding: 8px 12px; border-radius: 6px; }
#error { display: none; background: #ffebe9; border: 1px solid #ff8182; color: #82071e; padding: 8px 12px; border-radius: 6px; }
.empty { color: var(--muted); }
</style>
</head>
<body>
<header>
  <h1>zedcup</h1>
  <span class="kv">node <b id="node">-</b></span>
  <span class="kv">version <b id="version">-</b></span>
  <span class="kv"><span id="consul-dot" class="dot"></span>Consul <b id="consul">-</b></span>
  <span class="kv">checker <b id="checker">-</b></span>
  <span class="kv">nodes <b id="nodes">-</b></span>
  <span class="kv">updated <b id="updated">-</b></span>
</header>
<main>
  <div id="error"></div>
  <div id="kept" class="warn"></div>
  <div id="instances"></div>
  <div class="card"><h2>Last transitions</h2><div id="transitions" class="empty">none seen</div></div>
  <div class="card"><h2>Cluster</h2><div class="meta" id="cluster-meta"></div><div id="cluster"></div></div>
</main>
<script>
"use strict";
var REFRESH = @REFRESH@;
var prev = null;

function el(tag, attrs) {
  var e = document.createElement(tag);
  for (var k in (attrs || {})) { e.setAttribute(k, attrs[k]); }
  for (var i = 2; i < arguments.length; i++) {
    var c = arguments[i];
    if (c === null || c === undefined) continue;
    e.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
  return e;
}
function text(id, v) { document.getElementById(id).textContent = v; }
function list(v) { return Array.isArray(v) ? v : []; }
function ago(t, now) {
  if (!t) return "-";
  var s = Math.max(0, now - t);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function rate(key, value, now) {
  if (!prev || prev.values[key] === undefined || now <= prev.time) return "-";
  var r = (value - prev.values[key]) / (now - prev.time);
  return r < 0 ? "-" : (r >= 10 ? r.toFixed(0) : r.toFixed(1));
}

function render(st) {
  var now = st.time, n = st.node, values = {};
  text("node", n.name); text("version", n.version);
  var reachable = n.consul && n.consul.reachable;
  document.getElementById("consul-dot").className = "dot " + (reachable ? "ok" : "bad");
  text("consul", reachable ? "reachable (" + ago(n.consul.last_contact, now) + ")"
                           : (n.consul && n.consul.last_contact ? "unreachable since " + ago(n.consul.last_contact, now) : "not yet contacted"));
  var ck = n.checker || {};
  text("checker", ck.holder ? ck.holder + (ck.this_node ? " (this node)" : "") : "nobody");
  text("nodes", n.nodes === undefined || n.nodes === null ? "-" : n.nodes);
  text("updated", new Date(now * 1000).toLocaleTimeString());
  var kept = document.getElementById("kept");
  if (n.kept) {
    kept.textContent = "Consul came back without " + list(n.kept.names).join(", ") +
      "; this node keeps serving the last good config (since " + ago(n.kept.since, now) + ")";
    kept.style.display = "block";
  } else {
    kept.style.display = "none";
  }

  var box = document.getElementById("instances");
  var cards = [];
  list(st.instances).forEach(function (inst) {
    var cfg = inst.config || {};
    var card = el("div", { "class": "card", "data-instance": inst.name },
      el("h2", null, inst.name),
      el("div", { "class": "meta" },
        "requests/s " + rate(inst.name + "/requests", inst.requests, now) +
        " · failovers/s " + rate(inst.name + "/failovers", inst.failovers, now) +
        " · unanswered/s " + rate(inst.name + "/no_host", inst.no_host, now) +
        " · " + inst.requests + " requests, " + inst.failovers + " failovers, " + inst.no_host + " unanswered" +
        " · config applied " + ago(cfg.applied, now) + (cfg.index ? " (index " + cfg.index + ")" : "")));
    values[inst.name + "/requests"] = inst.requests;
    values[inst.name + "/failovers"] = inst.failovers;
    values[inst.name + "/no_host"] = inst.no_host;
    list(inst.pools).forEach(function (pool) {
      var rows = el("tbody");
      list(pool.hosts).forEach(function (h) {
        var key = inst.name + "/" + pool.name + "/" + h.name;
        var fails = h.failures.connect + h.failures.request + h.failures.status;
        values[key + "/req"] = h.requests; values[key + "/fail"] = fails;
        var detail = h.detail && h.detail.indexOf(h.reason) !== 0 ? h.reason + ": " + h.detail : (h.detail || h.reason);
        var why = h.reason ? el("div", { "class": "reason" }, detail) : null;
        var check = h.check ? (h.check.ok ? "ok" : h.check.result) + " (" + ago(h.check.at, now) + ")" : "-";
        rows.appendChild(el("tr", { "class": h.state, "data-host": key, "data-state": h.state },
          el("td", null, h.name, el("div", { "class": "reason" }, h.address)),
          el("td", null, el("span", { "class": "badge " + h.state }, h.state), why),
          el("td", null, ago(h.since, now)),
          el("td", { "class": "num" }, h.weight),
          el("td", { "class": "num" }, rate(key + "/req", h.requests, now)),
          el("td", { "class": "num" }, rate(key + "/fail", fails, now)),
          el("td", { "class": "num" }, h.errors),
          el("td", null, h.last_error ? h.last_error + " (" + ago(h.last_error_at, now) + ")" : "-"),
          el("td", null, check)));
      });
      card.appendChild(el("div", { "class": "pool", "data-pool": pool.name },
        el("h3", null, pool.index + ". " + pool.name + (pool.up ? "" : " (pool disabled)")),
        el("table", null,
          el("thead", null, el("tr", null, el("th", null, "host"), el("th", null, "state"), el("th", null, "since"),
            el("th", null, "weight"), el("th", null, "req/s"), el("th", null, "fail/s"), el("th", null, "errors"),
            el("th", null, "last error"), el("th", null, "last check"))),
          rows)));
    });
    cards.push(card);
  });
  box.replaceChildren.apply(box, cards.length ? cards : [el("div", { "class": "card empty" }, "no instance known to this node")]);

  var tr = document.getElementById("transitions");
  var items = list(st.transitions).slice(0, 20).map(function (t) {
    return el("div", { "class": "transition" },
      new Date(t.at * 1000).toLocaleTimeString() + "  " + t.instance + "/" + t.pool + "/" + t.host + ": ",
      el("span", { "class": "badge " + t.from }, t.from), " \u2192 ", el("span", { "class": "badge " + t.to }, t.to),
      t.reason ? el("span", { "class": "reason" }, "  " + t.reason) : null);
  });
  tr.className = items.length ? "" : "empty";
  tr.replaceChildren.apply(tr, items.length ? items : [document.createTextNode("none seen")]);
  prev = { time: now, values: values };

  // the cluster's nodes, from their records; a node whose down list differs from this node's view is marked
  var mine = {};
  list(st.instances).forEach(function (inst) { list(inst.pools).forEach(function (pool) { list(pool.hosts).forEach(function (h) {
    if (h.state === "down") mine[inst.name + "/" + pool.name + "/" + h.name] = true; }); }); });
  var cl = st.cluster || {};
  text("cluster-meta", cl.read_at ? "records read " + ago(cl.read_at, now) : "not read yet");
  var rows = list(cl.nodes).map(function (nd) {
    var down = list(nd.down), differs = down.length !== Object.keys(mine).length || down.some(function (k) { return !mine[k]; });
    return el("tr", { "data-node": nd.name, "class": differs ? "down" : "" },
      el("td", null, nd.name + (nd.this_node ? " (this node)" : "")), el("td", null, nd.version || "-"),
      el("td", null, nd.checker ? "checker" : "-"), el("td", null, ago(nd.started, now)),
      el("td", null, down.length ? down.join(", ") : "none"), el("td", null, ago(nd.written, now)));
  });
  var ctable = el("table", null, el("thead", null, el("tr", null, el("th", null, "node"), el("th", null, "version"),
    el("th", null, "role"), el("th", null, "started"), el("th", null, "sees down"), el("th", null, "record written"))),
    el("tbody", null));
  rows.forEach(function (r) { ctable.tBodies[0].appendChild(r); });
  var cbox = document.getElementById("cluster");
  cbox.replaceChildren(rows.length ? ctable : el("div", { "class": "empty" }, "no node records read yet"));
}

function poll() {
  var url = window.location.pathname + "?format=json";
  fetch(url, { headers: { "Accept": "application/json" }, cache: "no-store" })
    .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
    .then(function (st) {
      document.getElementById("error").style.display = "none";
      render(st);
      document.body.setAttribute("data-updated", String(st.time));
    })
    .catch(function (e) {
      var box = document.getElementById("error");
      box.textContent = "status unavailable (" + e.message + "); showing the last answer";
      box.style.display = "block";
    })
    .then(function () { setTimeout(poll, REFRESH); });
}
poll();
</script>
</body>
</html>
]==]
-- luacheck: pop

PAGE = str_gsub(PAGE, "@REFRESH@", tostring(REFRESH))


--- page() -> the dashboard's HTML
function _M.page()
    return PAGE
end


--- status_page(): a content_by_lua handler; JSON or the dashboard (see above)
function _M.status_page()
    ngx.header["Cache-Control"] = "no-store"
    if wants_json() then
        local st, err = status.status()
        if not st then
            ngx.status = 500
            ngx.header["Content-Type"] = "application/json"
            ngx.print(cjson.encode({ error = err }))
            return
        end
        ngx.header["Content-Type"] = "application/json"
        ngx.print(_M.json(st))
        return
    end
    ngx.header["Content-Type"] = "text/html; charset=utf-8"
    -- the page loads nothing from anywhere: the browser is told so too
    ngx.header["Content-Security-Policy"] = CSP
    ngx.header["X-Content-Type-Options"] = "nosniff"
    ngx.print(PAGE)
end


return _M
