-- zedcup.prometheus: the Prometheus text exposition format (version 0.0.4).
--
-- Owns names, labels, escaping and the HELP/TYPE lines; knows nothing of what
-- zedcup measures (zedcup.metrics does). A family's samples are written
-- together, after its HELP and TYPE lines, as the format requires.
--
--   local out = prometheus.new()
--   out:family("zedcup_host_up", "gauge", "1 when the host is usable")
--   out:sample("zedcup_host_up", { "instance", "web", "pool", "a", "host", "b" }, 1)
--   local text = out:render()

local type = type
local error = error
local tostring = tostring
local setmetatable = setmetatable
local str_format = string.format
local str_gsub = string.gsub
local str_find = string.find
local math_floor = math.floor
local math_huge = math.huge
local tab_concat = table.concat


local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

-- the format's content type
_M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

local TYPES = { counter = true, gauge = true, untyped = true }

local NAME_PATTERN = "^[a-zA-Z_:][a-zA-Z0-9_:]*$"
local LABEL_PATTERN = "^[a-zA-Z_][a-zA-Z0-9_]*$"


--- escape_label(v) -> a label value for inside double quotes: \ " and newline escaped
local LABEL_ESCAPES = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }
local function escape_label(v)
    return (str_gsub(v, '[\\"\n]', LABEL_ESCAPES))
end
_M.escape_label = escape_label


--- escape_help(v) -> HELP text: \ and newline escaped
local HELP_ESCAPES = { ["\\"] = "\\\\", ["\n"] = "\\n" }
local function escape_help(v)
    return (str_gsub(v, "[\\\n]", HELP_ESCAPES))
end
_M.escape_help = escape_help


--- number(v) -> the format's text of a sample value
local function number(v)
    if v ~= v then
        return "NaN"
    elseif v == math_huge then
        return "+Inf"
    elseif v == -math_huge then
        return "-Inf"
    elseif v == math_floor(v) and v > -1e15 and v < 1e15 then
        return str_format("%d", v)
    end
    return str_format("%.15g", v)
end
_M.number = number


--- new() -> an empty exposition
function _M.new()
    return setmetatable({ buf = {}, n = 0, families = {}, current = nil }, mt)
end


local function put(self, s)
    local n = self.n + 1
    self.buf[n] = s
    self.n = n
end


--- family(name, type, help): starts a metric family; its samples follow.
-- For a counter, name ends in `_total` (the sample name) as Prometheus names them.
function _M.family(self, name, kind, help)
    if type(name) ~= "string" or not str_find(name, NAME_PATTERN) then
        error("metric name must match " .. NAME_PATTERN .. " (got " .. tostring(name) .. ")", 2)
    end
    if not TYPES[kind] then
        error("metric type must be counter, gauge or untyped (got " .. tostring(kind) .. ")", 2)
    end
    if type(help) ~= "string" then
        error("help must be a string (got " .. type(help) .. ")", 2)
    end
    if self.families[name] then
        error("metric family " .. name .. " written twice", 2)
    end
    self.families[name] = kind
    self.current = name
    put(self, "# HELP " .. name .. " " .. escape_help(help) .. "\n# TYPE " .. name .. " " .. kind .. "\n")
end


--- sample(name, labels, value): labels = { "name1", value1, "name2", value2, ... }
-- (an array keeps their order), or nil. name must be the current family's.
function _M.sample(self, name, labels, value)
    if name ~= self.current then
        error("sample " .. tostring(name) .. " outside its family (current: " .. tostring(self.current) .. ")", 2)
    end
    if type(value) ~= "number" then
        error("sample value must be a number (got " .. type(value) .. ")", 2)
    end
    local line
    if labels and labels[1] then
        local parts = {}
        for i = 1, #labels, 2 do
            local k, v = labels[i], labels[i + 1]
            if type(k) ~= "string" or not str_find(k, LABEL_PATTERN) or k:sub(1, 2) == "__" then
                error("label name must match " .. LABEL_PATTERN .. " and not start with __ (got "
                      .. tostring(k) .. ")", 2)
            end
            parts[#parts + 1] = k .. '="' .. escape_label(tostring(v)) .. '"'
        end
        line = name .. "{" .. tab_concat(parts, ",") .. "} " .. number(value) .. "\n"
    else
        line = name .. " " .. number(value) .. "\n"
    end
    put(self, line)
end


--- render() -> the exposition text
function _M.render(self)
    return tab_concat(self.buf, "", 1, self.n)
end


return _M
