-- zedcup.dns: a small DNS stub client on ngx.socket.udp, the built-in used by
-- zedcup.deps when lua-resty-dns (resty.dns.resolver) is not installed. It
-- speaks the same subset of that library's API:
--
--   local r, err = dns.new({ nameservers = { "127.0.0.1", { "::1", 5353 } },
--                            timeout = 2000, retrans = 2 })
--   local answers, err = r:query("example.com", { qtype = dns.TYPE_A })
--
-- answers: an array of { name, type, class, ttl, address | cname, section },
-- with answers.errcode / answers.errstr set when the server answered an error
-- (3 = name error). nil, "what: why" when no server answered. Queries go to the
-- nameservers in turn, `retrans` rounds; a truncated answer is used as far as it
-- goes (no TCP retry). CNAME records in the answer are returned as they are.

local ngx = ngx
local udp = ngx.socket.udp
local byte = string.byte
local char = string.char
local sub = string.sub
local fmt = string.format
local concat = table.concat
local random = math.random
local floor = math.floor
local type = type
local error = error
local tostring = tostring
local ipairs = ipairs
local setmetatable = setmetatable


local _M = {
    _VERSION = "0.1.0",
    TYPE_A = 1,
    TYPE_CNAME = 5,
    TYPE_AAAA = 28,
    CLASS_IN = 1,
    SECTION_AN = 1,
}

local mt = { __index = _M }

local ERRSTR = {
    [1] = "format error",
    [2] = "server failure",
    [3] = "name error",
    [4] = "not implemented",
    [5] = "refused",
}


--- new(opts) -> resolver | nil, err (also callable as dns:new(opts))
function _M.new(self_or_opts, maybe_opts)
    local opts = maybe_opts
    if self_or_opts ~= _M then
        opts = self_or_opts
    end
    if type(opts) ~= "table" then
        error("opts must be a table", 2)
    end
    local servers = opts.nameservers
    if type(servers) ~= "table" or #servers == 0 then
        return nil, "dns: no nameservers"
    end

    local list = {}
    for i, ns in ipairs(servers) do
        if type(ns) == "string" then
            list[i] = { ns, 53 }
        elseif type(ns) == "table" and type(ns[1]) == "string" then
            list[i] = { ns[1], ns[2] or 53 }
        else
            error("opts.nameservers[" .. i .. "] must be a string or { host, port }", 2)
        end
    end

    return setmetatable({
        servers = list,
        timeout = opts.timeout or 2000,
        retrans = opts.retrans or 2,
        next_server = 1,
    }, mt)
end


local function u16(n)
    return char(floor(n / 256) % 256, n % 256)
end


local function encode_query(id, qname, qtype)
    local parts = { u16(id), "\1\0", "\0\1", "\0\0", "\0\0", "\0\0" }  -- RD, 1 question
    for label in qname:gmatch("[^%.]+") do
        if #label > 63 then
            return nil, "dns: label too long in " .. qname
        end
        parts[#parts + 1] = char(#label) .. label
    end
    parts[#parts + 1] = "\0"
    parts[#parts + 1] = u16(qtype)
    parts[#parts + 1] = "\0\1"
    return concat(parts)
end


local function rd16(buf, pos)
    local a, b = byte(buf, pos, pos + 1)
    if not b then
        return nil
    end
    return a * 256 + b
end


-- -> name, next position | nil (malformed). Follows compression pointers.
local function read_name(buf, pos)
    local labels = {}
    local jumps = 0
    local after
    while true do
        local len = byte(buf, pos)
        if not len then
            return nil
        end
        if len >= 192 then
            local lo = byte(buf, pos + 1)
            if not lo then
                return nil
            end
            after = after or pos + 2
            pos = (len - 192) * 256 + lo + 1
            jumps = jumps + 1
            if jumps > 64 then
                return nil
            end
        elseif len == 0 then
            return concat(labels, "."), after or pos + 1
        else
            labels[#labels + 1] = sub(buf, pos + 1, pos + len)
            pos = pos + len + 1
        end
    end
end


local function ipv6_text(raw)
    local words = {}
    for i = 1, 16, 2 do
        words[#words + 1] = byte(raw, i) * 256 + byte(raw, i + 1)
    end
    -- the first longest run of two or more zero words becomes "::", as inet_ntop does
    local best_at, best_len, at, len = 0, 1, 0, 0
    for i = 1, 8 do
        if words[i] == 0 then
            if len == 0 then
                at = i
            end
            len = len + 1
            if len > best_len then
                best_at, best_len = at, len
            end
        else
            len = 0
        end
    end
    local out = {}
    local i = 1
    while i <= 8 do
        if i == best_at then
            out[#out + 1] = (i == 1) and "::" or ":"
            i = i + best_len
        else
            out[#out + 1] = fmt("%x", words[i]) .. (i < 8 and ":" or "")
            i = i + 1
        end
    end
    return concat(out)
end
_M.ipv6_text = ipv6_text


local function parse(buf, id)
    if #buf < 12 then
        return nil, "dns: short answer"
    end
    if rd16(buf, 1) ~= id then
        return nil, "dns: answer id mismatch"
    end
    local flags = rd16(buf, 3)
    local rcode = flags % 16
    local qd, an = rd16(buf, 5), rd16(buf, 7)
    local pos = 13
    for _ = 1, qd do
        local _, nxt = read_name(buf, pos)
        if not nxt then
            return nil, "dns: malformed question"
        end
        pos = nxt + 4
    end

    local answers = {}
    if rcode ~= 0 then
        answers.errcode = rcode
        answers.errstr = ERRSTR[rcode] or ("error " .. rcode)
        return answers
    end

    for _ = 1, an do
        local name, nxt = read_name(buf, pos)
        if not name then
            break  -- truncated: keep what was read
        end
        local typ, class = rd16(buf, nxt), rd16(buf, nxt + 2)
        local hi, lo = rd16(buf, nxt + 4), rd16(buf, nxt + 6)
        local rdlen = rd16(buf, nxt + 8)
        if not rdlen or #buf < nxt + 9 + rdlen then
            break
        end
        local rdata = nxt + 10
        local rr = { name = name, type = typ, class = class, ttl = hi * 65536 + lo,
                     section = _M.SECTION_AN }
        if typ == _M.TYPE_A and rdlen == 4 then
            local a, b, c, d = byte(buf, rdata, rdata + 3)
            rr.address = a .. "." .. b .. "." .. c .. "." .. d
        elseif typ == _M.TYPE_AAAA and rdlen == 16 then
            rr.address = ipv6_text(sub(buf, rdata, rdata + 15))
        elseif typ == _M.TYPE_CNAME then
            rr.cname = read_name(buf, rdata)
        end
        answers[#answers + 1] = rr
        pos = rdata + rdlen
    end
    return answers
end


--- r:query(name, { qtype = }) -> answers | nil, err
function _M.query(self, qname, opts)
    if type(qname) ~= "string" or qname == "" then
        error("name must be a non-empty string", 2)
    end
    local qtype = opts and opts.qtype or _M.TYPE_A
    local id = random(0, 65535)
    local packet, err = encode_query(id, qname, qtype)
    if not packet then
        return nil, err
    end

    local last_err
    local n = #self.servers
    for _ = 1, self.retrans * n do
        local server = self.servers[self.next_server]
        self.next_server = self.next_server % n + 1
        local sock = udp()
        sock:settimeout(self.timeout)
        local ok
        ok, err = sock:setpeername(server[1], server[2])
        if ok then
            ok, err = sock:send(packet)
        end
        if ok then
            -- a stray datagram (an old id) is skipped, not taken for the answer
            for _ = 1, 4 do
                local buf
                buf, err = sock:receive(4096)
                if not buf then
                    break
                end
                local answers, perr = parse(buf, id)
                if answers then
                    sock:close()
                    return answers
                end
                err = perr
                if perr ~= "dns: answer id mismatch" then
                    break
                end
            end
        end
        sock:close()
        last_err = "dns: " .. server[1] .. ":" .. server[2] .. ": " .. tostring(err)
    end
    return nil, last_err
end


return _M
