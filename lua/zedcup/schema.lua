-- zedcup.schema: the configuration schema (schema.json, next to this file) as
-- code: validation with every problem named by path and value, typing of
-- decimal strings, defaults ("effective" config), and the mapping to and from
-- Consul keys. Types always come from the schema, never from the values.
--
-- Shapes used below:
--   normalised  the user's config, typed, aliases mapped, no defaults
--   effective   normalised + defaults (names from indexes, `true` unions expanded)
--   problem     { path = { "pools", 1, "hosts", 2, "port" }, value = <v>, problem = "<text>" }
--               (list indexes in paths are 1-based, as in Lua and in Consul keys)

local cjson = require "cjson.safe"

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local tostring = tostring
local tonumber = tonumber
local error = error
local str_find = string.find
local str_format = string.format
local str_gsub = string.gsub
local str_match = string.match
local str_sub = string.sub
local tab_concat = table.concat
local tab_sort = table.sort
local math_huge = math.huge


local _M = {
    _VERSION = "0.1.0",
    VERSION = "0.1.0", -- zedcup's version, substituted for {version} in defaults
}


local function load_schema()
    local source = debug.getinfo(1, "S").source
    local dir = str_match(source, "^@(.*/)") or "./"
    local path = dir .. "schema.json"

    local f, err = io.open(path, "rb")
    if not f then
        error("zedcup.schema: could not open " .. path .. ": " .. tostring(err))
    end
    local text = f:read("*a")
    f:close()

    local doc, derr = cjson.decode(text)
    if type(doc) ~= "table" or type(doc.records) ~= "table" then
        error("zedcup.schema: could not parse " .. path .. ": " .. tostring(derr or "no records"))
    end
    return doc
end

local doc = load_schema()
local records = doc.records
local scalars = doc.scalars or {}

_M.records = records


-- Field specs keyed by the type names used in `items` / `values`.
local function element_spec(name)
    if records[name] then
        return { type = name }
    end
    return scalars[name] or { type = name }
end

-- Per field spec, its list of types (unions are arrays in the JSON).
local function types_of(spec)
    local t = spec.type
    if type(t) == "table" then
        return t
    end
    return { t }
end

local function record_of(spec)
    for _, t in ipairs(types_of(spec)) do
        if records[t] then
            return t
        end
    end
    return nil
end

local function has_type(spec, name)
    for _, t in ipairs(types_of(spec)) do
        if t == name then
            return true
        end
    end
    return false
end


---------------------------------------------------------------------------
-- Paths and messages
---------------------------------------------------------------------------

local function path_append(path, seg)
    local p = {}
    for i = 1, #path do
        p[i] = path[i]
    end
    p[#path + 1] = seg
    return p
end

--- path_string({ "pools", 1, "hosts", 2, "port" }) -> "pools[1].hosts[2].port"
function _M.path_string(path)
    local out = {}
    for i, seg in ipairs(path) do
        if type(seg) == "number" then
            out[#out + 1] = "[" .. seg .. "]"
        elseif i == 1 then
            out[#out + 1] = seg
        else
            out[#out + 1] = "." .. seg
        end
    end
    return tab_concat(out)
end

--- path_key({ "pools", 1, "port" }) -> "pools/1/port" (the relative Consul key)
function _M.path_key(path)
    local out = {}
    for i, seg in ipairs(path) do
        out[i] = tostring(seg)
    end
    return tab_concat(out, "/")
end

local function show(v)
    if type(v) == "table" then
        local s = cjson.encode(v)
        return s or "table"
    end
    if type(v) == "string" then
        return '"' .. v .. '"'
    end
    return tostring(v)
end
_M.show = show

--- message(problem, where?) -> "<where or path>: <problem> (got <value>)"
function _M.message(p, where)
    where = where or _M.path_string(p.path)
    if where == "" then
        where = "config"
    end
    return where .. ": " .. p.problem .. " (got " .. show(p.value) .. ")"
end


---------------------------------------------------------------------------
-- Scalars
---------------------------------------------------------------------------

local function is_finite(n)
    return n == n and n ~= math_huge and n ~= -math_huge
end

-- decimal text: optional sign, digits, optional fraction
local function decimal(s)
    if str_find(s, "^%-?%d+$") or str_find(s, "^%-?%d+%.%d+$") or str_find(s, "^%-?%.%d+$") then
        return tonumber(s)
    end
    return nil
end

local function to_integer(v)
    if type(v) == "number" then
        if is_finite(v) and v % 1 == 0 then
            return v
        end
        return nil
    end
    if type(v) == "string" and str_find(v, "^%-?%d+$") then
        return tonumber(v)
    end
    return nil
end

local function to_number(v)
    if type(v) == "number" then
        return is_finite(v) and v or nil
    end
    if type(v) == "string" then
        return decimal(v)
    end
    return nil
end

--- valid_name(s) -> whether s is a name (of an instance, pool, host, cluster
-- lock...): one Consul key segment, so not empty, no '/', not '.' or '..'
function _M.valid_name(s)
    return type(s) == "string" and s ~= "" and s ~= "." and s ~= ".."
           and not str_find(s, "/", 1, true)
end

local FORMATS = {
    status_code = function(s)
        return str_find(s, "^[1-5]%d%d$") or str_find(s, "^[1-5]%dx$") or str_find(s, "^[1-5]xx$"),
               "must be a status code like 500, 50x or 5xx"
    end,
    name = function(s)
        return _M.valid_name(s), "must be a non-empty name without '/', not '.' or '..'"
    end,
    path = function(s)
        return str_sub(s, 1, 1) == "/", "must start with '/'"
    end,
}

local function is_unix(host)
    return type(host) == "string"
        and (str_sub(host, 1, 6) == "unix:/" or str_sub(host, 1, 1) == "/")
end
_M.is_unix = is_unix

-- a hostname, IP address or unix socket path: no scheme, no '/', no whitespace, no ':port'
FORMATS.host = function(s)
    if is_unix(s) then
        return true
    end
    if str_find(s, "://", 1, true) then
        return false, "must be a hostname, IP address or unix socket path, without a scheme"
    end
    if str_find(s, "[/%s]") then
        return false, "must be a hostname, IP address or unix socket path ('unix:/...' or '/...')"
    end
    if str_find(s, "^[^:]+:%d+$") then
        return false, "must not hold a port: give it in port"
    end
    return true
end


---------------------------------------------------------------------------
-- Normalise + validate (one walk)
---------------------------------------------------------------------------

local normalise_value

local function add(problems, path, value, problem)
    problems[#problems + 1] = { path = path, value = value, problem = problem }
end

local function check_limits(spec, v, path, problems)
    if spec.min ~= nil then
        if spec.exclusive_min and v <= spec.min then
            add(problems, path, v, "must be greater than " .. spec.min)
            return nil
        elseif v < spec.min then
            add(problems, path, v, "must be at least " .. spec.min)
            return nil
        end
    end
    if spec.max ~= nil and v > spec.max then
        add(problems, path, v, "must be at most " .. spec.max)
        return nil
    end
    return v
end

local function is_array(t)
    local n = #t
    local count = 0
    for k in pairs(t) do
        if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
            return false
        end
        count = count + 1
    end
    return count == n
end

local function element_name(el, i)
    if type(el) == "table" and type(el.name) == "string" then
        return el.name
    end
    return tostring(i)
end

local function run_checks(rec, raw, out, path, problems)
    local checks = rec.checks
    if not checks then
        return
    end
    for _, check in ipairs(checks) do
        local small, large = str_match(check, "^at_most_half:([^:]+):([^:]+)$")
        if small then
            -- effective values: session_ttl = 10 alone breaks the default renew interval
            local a, b = out[small], out[large]
            if a == nil then
                a = rec.fields[small].default
            end
            if b == nil then
                b = rec.fields[large].default
            end
            if type(a) == "number" and type(b) == "number" and a > b / 2 then
                add(problems, path_append(path, small), a,
                    "must be at most " .. large .. " / 2 (" .. b / 2 .. ")")
            end
        elseif check == "port_unless_unix" then
            if raw.port == nil and type(out.host) == "string" and out.host ~= "" and not is_unix(out.host) then
                add(problems, path_append(path, "port"), nil, "is required unless host is a unix socket path")
            end
        else
            local list_field = str_match(check, "^unique_names:(.+)$")
            local list = list_field and out[list_field]
            if type(list) == "table" then
                local seen = {}
                for i = 1, #list do
                    local name = element_name(list[i], i)
                    if seen[name] then
                        add(problems, path_append(path_append(path_append(path, list_field), i), "name"),
                            name, "duplicates the name of " .. list_field .. "[" .. seen[name] .. "]")
                    else
                        seen[name] = i
                    end
                end
            end
        end
    end
end

local function normalise_record(rname, v, path, problems)
    local rec = records[rname]
    if type(v) ~= "table" or (next(v) ~= nil and is_array(v)) then
        add(problems, path, v, "must be a " .. rname .. " record (a table)")
        return nil
    end
    local fields = rec.fields
    local out = {}
    local ok = true

    for k, val in pairs(v) do
        local spec = type(k) == "string" and fields[k]
        if not spec then
            add(problems, path_append(path, k), val, "unknown field")
            ok = false
        else
            local target = k
            if spec.alias_of then
                target = spec.alias_of
                if v[target] ~= nil then
                    add(problems, path_append(path, k), val, "conflicts with " .. target .. " (an alias of it)")
                    ok = false
                    target = nil
                end
            end
            if target then
                local n = normalise_value(spec, val, path_append(path, k), problems)
                if n == nil then
                    ok = false
                else
                    out[target] = n
                end
            end
        end
    end

    for fname, spec in pairs(fields) do
        if spec.required and v[fname] == nil
           and not (spec.required_unless and v[spec.required_unless] ~= nil) then
            add(problems, path_append(path, fname), nil, "is required")
            ok = false
        end
    end

    local before = #problems
    run_checks(rec, v, out, path, problems)
    if #problems > before then
        ok = false
    end

    return out, ok
end

normalise_value = function(spec, v, path, problems)
    local types = types_of(spec)
    local single = types[1]

    -- boolean | record unions
    if #types > 1 then
        local rname = record_of(spec)
        if has_type(spec, "boolean") and type(v) == "boolean" then
            return v
        end
        if rname and type(v) == "table" then
            local out = normalise_record(rname, v, path, problems)
            if out and next(out) == nil and has_type(spec, "boolean") then
                return true
            end
            return out
        end
        add(problems, path, v, "must be " .. tab_concat(types, " or "))
        return nil
    end

    if records[single] then
        return (normalise_record(single, v, path, problems))
    end

    if single == "list" then
        if type(v) ~= "table" or not is_array(v) then
            add(problems, path, v, "must be a list")
            return nil
        end
        if spec.min_items and #v < spec.min_items then
            add(problems, path, v, "must have at least " .. spec.min_items .. " element(s)")
            return nil
        end
        local item = element_spec(spec.items)
        local out = {}
        local ok = true
        for i = 1, #v do
            local n = normalise_value(item, v[i], path_append(path, i), problems)
            if n == nil then
                ok = false
            end
            out[i] = n
        end
        return ok and out or nil
    end

    if single == "map" then
        if type(v) ~= "table" or (next(v) ~= nil and is_array(v)) then
            add(problems, path, v, "must be a map (a table of string keys)")
            return nil
        end
        local vspec = element_spec(spec.values)
        local out = {}
        local ok = true
        for k, val in pairs(v) do
            if type(k) ~= "string" or k == "" or k == "." or k == ".." or str_find(k, "/", 1, true) then
                add(problems, path_append(path, k), val, "keys must be non-empty strings without '/', not '.' or '..'")
                ok = false
            else
                local n = normalise_value(vspec, val, path_append(path, k), problems)
                if n == nil then
                    ok = false
                end
                out[k] = n
            end
        end
        return ok and out or nil
    end

    if single == "boolean" then
        if type(v) ~= "boolean" then
            add(problems, path, v, "must be a boolean")
            return nil
        end
        return v
    end

    if single == "integer" then
        local n = to_integer(v)
        if n == nil then
            add(problems, path, v, "must be an integer")
            return nil
        end
        return check_limits(spec, n, path, problems)
    end

    if single == "number" then
        local n = to_number(v)
        if n == nil then
            add(problems, path, v, "must be a number")
            return nil
        end
        return check_limits(spec, n, path, problems)
    end

    if single == "string" then
        if spec.from_integer and type(v) == "number" and v % 1 == 0 and is_finite(v) then
            v = str_format("%d", v) -- 500 and "500" are the same status code
        end
        if type(v) ~= "string" then
            add(problems, path, v, "must be a string")
            return nil
        end
        if spec.min_length and #v < spec.min_length then
            add(problems, path, v, "must not be empty")
            return nil
        end
        if spec.enum then
            local found = false
            for _, e in ipairs(spec.enum) do
                if e == v then
                    found = true
                    break
                end
            end
            if not found then
                add(problems, path, v, "must be one of " .. tab_concat(spec.enum, ", "))
                return nil
            end
        end
        if spec.format then
            local f = FORMATS[spec.format]
            if f then
                local ok, what = f(v)
                if not ok then
                    add(problems, path, v, what)
                    return nil
                end
            end
        end
        return v
    end

    if scalars[single] then
        return normalise_value(scalars[single], v, path, problems)
    end

    error("zedcup.schema: unknown type " .. tostring(single))
end


local function check_kind(kind)
    if not records[kind] then
        error("unknown config kind: " .. tostring(kind), 3)
    end
end

--- normalise(kind, config) -> normalised, problems
-- `problems` is an empty table when the config is valid. `normalised` holds
-- whatever could be typed (only meaningful when there are no problems).
function _M.normalise(kind, config)
    check_kind(kind)
    local problems = {}
    local out = normalise_record(kind, config, {}, problems)
    return out, problems
end

--- validate(kind, config) -> ok, problems
function _M.validate(kind, config)
    local _, problems = _M.normalise(kind, config)
    return #problems == 0, problems
end

--- check(kind, config) -> normalised | nil, "<path>: <problem> (got <value>)"
-- The first problem in path order makes the message; every problem is logged
-- by callers that need them all (see normalise).
function _M.check(kind, config)
    local out, problems = _M.normalise(kind, config)
    if #problems == 0 then
        return out
    end
    local msgs = {}
    for i, p in ipairs(problems) do
        msgs[i] = _M.message(p)
    end
    tab_sort(msgs)
    return nil, tab_concat(msgs, "; ")
end


---------------------------------------------------------------------------
-- Effective config (defaults applied)
---------------------------------------------------------------------------

local function copy_default(v)
    if type(v) == "string" then
        return (str_gsub(v, "{version}", _M.VERSION))
    end
    if type(v) == "table" then
        local out = {}
        for k, x in pairs(v) do
            out[k] = copy_default(x)
        end
        return out
    end
    return v
end

local effective_value

local function effective_record(rname, v, index)
    local fields = records[rname].fields
    local out = {}
    for fname, spec in pairs(fields) do
        if not spec.alias_of then
            local x = v and v[fname]
            if x == nil then
                if spec.default ~= nil then
                    x = copy_default(spec.default)
                elseif spec.default_from_index and index then
                    x = tostring(index)
                end
            end
            if x ~= nil then
                out[fname] = effective_value(spec, x)
            end
        end
    end
    return out
end

effective_value = function(spec, v)
    local rname = record_of(spec)
    if rname then
        if v == true then
            return effective_record(rname, {})
        end
        if type(v) == "table" then
            return effective_record(rname, v)
        end
        return v
    end

    local single = types_of(spec)[1]
    if single == "list" then
        local item = element_spec(spec.items)
        local irec = records[spec.items]
        local out = {}
        for i = 1, #v do
            if irec then
                out[i] = effective_record(spec.items, v[i], i)
            else
                out[i] = effective_value(item, v[i])
            end
        end
        return out
    end

    if single == "map" then
        local out = {}
        if spec.default ~= nil then
            for k, x in pairs(spec.default) do
                out[k] = copy_default(x)
            end
        end
        for k, x in pairs(v) do
            out[k] = x
        end
        return out
    end

    return v
end

--- effective(kind, normalised) -> a new table with every default applied
function _M.effective(kind, normalised)
    check_kind(kind)
    return effective_record(kind, normalised or {})
end


---------------------------------------------------------------------------
-- Consul keys
---------------------------------------------------------------------------

-- "1.5e-06" -> "0.0000015", "1e+20" -> "100000000000000000000"
local function without_exponent(s)
    local sign, int, frac, exp = str_match(s, "^(%-?)(%d+)%.?(%d*)e([-+]%d+)$")
    if not sign then
        return s
    end
    local digits = int .. frac
    local point = #int + tonumber(exp)
    if point <= 0 then
        return sign .. "0." .. string.rep("0", -point) .. digits
    end
    if point >= #digits then
        return sign .. digits .. string.rep("0", point - #digits)
    end
    return sign .. str_sub(digits, 1, point) .. "." .. str_sub(digits, point + 1)
end

--- number_text(n) -> plain decimal text (no exponent), integers without
-- ".0", the shortest that reads back as the same number
local function number_text(n)
    if n % 1 == 0 and n > -1e15 and n < 1e15 then
        return str_format("%d", n)
    end
    for digits = 1, 17 do
        local s = str_format("%." .. digits .. "g", n)
        if tonumber(s) == n then
            return without_exponent(s)
        end
    end
    return without_exponent(str_format("%.17g", n))
end
_M.number_text = number_text

local function scalar_text(v)
    if type(v) == "boolean" then
        return v and "true" or "false"
    end
    if type(v) == "number" then
        return number_text(v)
    end
    return tostring(v)
end

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do
        keys[#keys + 1] = k
    end
    tab_sort(keys, function(a, b)
        return tostring(a) < tostring(b)
    end)
    return keys
end

local flatten_value

local function join(base, seg)
    if base == "" then
        return seg
    end
    return base .. "/" .. seg
end

local function flatten_record(rname, v, base, out)
    local fields = records[rname].fields
    for _, fname in ipairs(sorted_keys(v)) do
        flatten_value(fields[fname] or { type = "string" }, v[fname], join(base, fname), out)
    end
end

flatten_value = function(spec, v, key, out)
    local rname = record_of(spec)
    if rname and type(v) == "table" then
        if next(v) == nil then
            out[#out + 1] = { key, "true" }
            return
        end
        return flatten_record(rname, v, key, out)
    end

    if type(v) == "table" then
        if next(v) == nil then
            out[#out + 1] = { key, "" }
            return
        end
        local single = types_of(spec)[1]
        if single == "list" then
            local item = element_spec(spec.items)
            for i = 1, #v do
                flatten_value(item, v[i], key .. "/" .. i, out)
            end
        else
            local vspec = spec.values and element_spec(spec.values) or { type = "string" }
            for _, k in ipairs(sorted_keys(v)) do
                flatten_value(vspec, v[k], key .. "/" .. k, out)
            end
        end
        return
    end

    out[#out + 1] = { key, scalar_text(v) }
end

--- flatten(kind, normalised) -> { { "pools/1/hosts/1/port", "80" }, ... }
-- Keys are relative to the config's prefix; only what the user set is stored.
function _M.flatten(kind, normalised)
    check_kind(kind)
    local out = {}
    flatten_record(kind, normalised or {}, "", out)
    return out
end


-- Builds a tree of { value = <text|nil>, children = { seg = node } }.
local function kv_tree(entries)
    local root = { children = {} }
    for _, e in ipairs(entries) do
        local key, value = e[1], e[2]
        local node = root
        for seg in string.gmatch(key, "[^/]+") do
            local child = node.children[seg]
            if not child then
                child = { children = {}, nchildren = 0 }
                node.children[seg] = child
                node.nchildren = (node.nchildren or 0) + 1
            end
            node = child
        end
        if node ~= root then
            node.exists = true
            node.value = value or ""
        end
    end
    return root
end

local unflatten_value

local function raw(node)
    if next(node.children) then
        local out = {}
        for k, c in pairs(node.children) do
            out[k] = raw(c)
        end
        return out
    end
    return node.value or ""
end

local function unflatten_record(rname, node, path, problems)
    local fields = records[rname].fields
    local out = {}
    for seg, child in pairs(node.children) do
        local spec = fields[seg]
        if not spec or spec.alias_of then
            out[seg] = raw(child) -- validation names it
        else
            out[seg] = unflatten_value(spec, child, path_append(path, seg), problems)
        end
    end
    return out
end

unflatten_value = function(spec, node, path, problems)
    local text = node.value or ""
    if next(node.children) then
        if node.exists then
            add(problems, path, text, "key has both a value and sub-keys")
        end
        local rname = record_of(spec)
        if rname then
            return unflatten_record(rname, node, path, problems)
        end
        if has_type(spec, "list") then
            local item = element_spec(spec.items)
            local out = {}
            local n = 0
            for seg in pairs(node.children) do
                n = n + 1
                if not str_find(seg, "^[1-9]%d*$") then
                    n = -math_huge
                end
            end
            for i = 1, n do
                local child = node.children[tostring(i)]
                if not child then
                    n = -1
                    break
                end
                out[i] = unflatten_value(item, child, path_append(path, i), problems)
            end
            if n < 0 then
                add(problems, path, sorted_keys(node.children),
                    "list keys must be the 1-based indexes 1..n without gaps")
                return nil
            end
            return out
        end
        if has_type(spec, "map") then
            local vspec = element_spec(spec.values)
            local out = {}
            for seg, child in pairs(node.children) do
                out[seg] = unflatten_value(vspec, child, path_append(path, seg), problems)
            end
            return out
        end
        add(problems, path, text, "a scalar field must not have sub-keys")
        return text
    end

    if has_type(spec, "boolean") and (text == "true" or text == "false") then
        return text == "true"
    end
    if (has_type(spec, "list") or has_type(spec, "map")) and text == "" then
        return {}
    end
    -- scalars stay text: normalise types decimal text and names the rest
    return text
end

--- unflatten(kind, entries) -> normalised | nil, problems
-- entries: { { "<relative key>", "<value or nil>" }, ... } from a Consul listing.
-- Problems' paths map back to keys with path_key().
function _M.unflatten(kind, entries)
    check_kind(kind)
    local problems = {}
    local root = kv_tree(entries)
    local value = unflatten_record(kind, root, {}, problems)
    if #problems > 0 then
        return nil, problems
    end
    local out
    out, problems = _M.normalise(kind, value)
    if #problems > 0 then
        return nil, problems
    end
    return out, problems
end


return _M
