# zedctl and the Lua writer share one `_pending` protocol for writes larger
# than one transaction (README.md, "Consul key layout"): check-not-exists (or
# take over a stale marker with check-index), Flags = unix time, check-index
# on every later transaction, delete-cas at the end. zedctl runs as a real
# process next to the Lua writer.
#
# Every block: zedcup initialised against the session's Consul (the preamble below).

--- http_config
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;

    init_by_lua_block {
        require "resty.core"
        assert(require("zedcup").init({
            prefix = "$TEST_ZEDCUP_PREFIX",
            consul = { host = "127.0.0.1", port = $TEST_NGINX_CONSUL_PORT, token = "$TEST_NGINX_CONSUL_TOKEN" },
        }))
    }

__DATA__

=== TEST 1: a zedctl write racing Lua writes of the same 300-host instance: each write is whole or refused, the tree is never a mix, no `_pending` is left
--- timeout: 60
--- http_config
    lua_socket_log_errors off;
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local cjson = require "cjson"
            local P = "$TEST_ZEDCUP_PREFIX"
            local base = P .. "/instances/big/"
            local function big(tag)
                local hosts = {}
                for i = 1, 300 do
                    hosts[i] = { name = tag .. i, host = "127.0.0.1", port = 8000 + i }
                end
                return { pools = { { hosts = hosts } } }
            end
            -- -> "l" | "z" | "mixed" | "pending" | "empty" for the stored tree
            local function whole()
                local entries = assert(kv.get_tree(base))
                local tags, n = {}, 0
                for _, e in ipairs(entries) do
                    if e.Key == base .. "_pending" then return "pending" end
                    if e.Key:match("/name$") and e.Key:match("/hosts/") then
                        tags[e.Value:sub(1, 1)] = true
                        n = n + 1
                    end
                end
                if n == 0 then return "empty" end
                local only = next(tags)
                if next(tags, only) or n ~= 300 then return "mixed" end
                return only
            end

            local dir = "$TEST_NGINX_SERVROOT"
            local f = assert(io.open(dir .. "/big.json", "w"))
            f:write(cjson.encode({ instances = { big = big("z") } }))
            f:close()
            local function zedctl(out)
                local cmd = table.concat({
                    "CONSUL_HTTP_ADDR=127.0.0.1:$TEST_NGINX_CONSUL_PORT",
                    "CONSUL_HTTP_TOKEN='$TEST_NGINX_CONSUL_TOKEN'",
                    "ZEDCUP_PREFIX=" .. P,
                    "$TEST_NGINX_REPO/.venv/bin/zedctl configure", dir .. "/big.json",
                    ">", out, "2>&1; echo $? >", out .. ".rc",
                }, " ")
                os.execute("(" .. cmd .. ") &")
            end
            local function finished(out)
                local rc = io.open(out .. ".rc")
                if not rc then return nil end
                local code = rc:read("*n")
                rc:close()
                if not code then return nil end
                local o = io.open(out)
                local text = o:read("*a")
                o:close()
                return code, text
            end

            -- 1. deterministic: a fresh marker of the Lua writer makes zedctl refuse
            assert(kv.put(base .. "_pending", tostring(ngx.time()), { flags = ngx.time() }))
            zedctl(dir .. "/z1")
            local code, text
            local deadline = ngx.now() + 30
            repeat ngx.sleep(0.05); ngx.update_time(); code, text = finished(dir .. "/z1")
            until code or ngx.now() > deadline
            ngx.say("zedctl on a fresh Lua marker: exit ", code, ", ",
                    text and text:match("is being written by another writer") or text)
            ngx.say("tree: ", whole())
            assert(kv.delete(base .. "_pending"))

            -- 2. the race: Lua writes "l" trees back to back while zedctl writes a "z" tree
            local outcomes = { ok = 0, refused = 0, lost = 0 }
            local mixes, pendings = 0, 0
            zedctl(dir .. "/z2")
            deadline = ngx.now() + 30
            repeat
                local ok, err = zedcup.configure_instance("big", big("l"))
                if ok then
                    outcomes.ok = outcomes.ok + 1
                elseif err:find("another write is under way", 1, true) then
                    outcomes.refused = outcomes.refused + 1
                elseif err:find("failed after", 1, true) then
                    -- zedctl replaced the tree between our transactions: we stop
                    outcomes.lost = outcomes.lost + 1
                else
                    error(err)
                end
                local w = whole()
                if w == "mixed" then mixes = mixes + 1 end
                if w == "pending" then pendings = pendings + 1 end
                -- gaps of varying length, so that zedctl gets the marker at times
                ngx.sleep(math.random() * 0.03)
                ngx.update_time()
                code, text = finished(dir .. "/z2")
            until code or ngx.now() > deadline
            ngx.log(ngx.NOTICE, "race: lua ", cjson.encode(outcomes), " zedctl exit ", code, ": ", text)
            ngx.say("zedctl finished: ", code ~= nil)
            ngx.say("zedctl wrote or was refused by the protocol: ",
                    code == 0 and text:find("wrote instance big: 900 keys", 1, true) ~= nil
                    or code == 1 and (text:find("by another writer", 1, true) ~= nil
                                      or text:find("taken over by another writer", 1, true) ~= nil))
            ngx.say("lua writes completed: ", outcomes.ok > 0)
            -- one last Lua write after zedctl is done always succeeds: nothing was left behind
            ngx.say("last lua write: ", zedcup.configure_instance("big", big("l")))
            ngx.say("final tree: ", whole(), ", mixes seen between writes: ", mixes)
        }
    }
--- request
GET /t
--- response_body
zedctl on a fresh Lua marker: exit 1, is being written by another writer
tree: pending
zedctl finished: true
zedctl wrote or was refused by the protocol: true
lua writes completed: true
last lua write: true
final tree: l, mixes seen between writes: 0
--- no_error_log
[error]


=== TEST 2: the Lua writer respects a fresh `_pending` that zedctl left, takes over a stale one, and zedctl reads the result
--- timeout: 20
--- config
    location = /t {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local kv = require "zedcup.kv"
            local P = "$TEST_ZEDCUP_PREFIX"
            local base = P .. "/instances/big/"
            local hosts = {}
            for i = 1, 100 do hosts[i] = { host = "10.0.0." .. i, port = 80 } end
            -- as zedctl marks it: "zedctl <host> <time>", Flags = the time
            assert(kv.put(base .. "_pending", "zedctl elsewhere " .. ngx.time(), { flags = ngx.time() }))
            ngx.say(select(2, zedcup.configure_instance("big", { pools = { { hosts = hosts } } })))
            assert(kv.put(base .. "_pending", "zedctl elsewhere 1", { flags = ngx.time() - 61 }))
            ngx.say("stale taken over: ", zedcup.configure_instance("big", { pools = { { hosts = hosts } } }))
            local p = io.popen(table.concat({
                "CONSUL_HTTP_ADDR=127.0.0.1:$TEST_NGINX_CONSUL_PORT",
                "CONSUL_HTTP_TOKEN='$TEST_NGINX_CONSUL_TOKEN'",
                "ZEDCUP_PREFIX=" .. P,
                "$TEST_NGINX_REPO/.venv/bin/zedctl list 2>&1",
            }, " "))
            ngx.print(p:read("*a"))
            p:close()
        }
    }
--- request
GET /t
--- response_body_like
^writing \S+/instances/big/ refused: another write is under way \(for [0-2] s\)
stale taken over: true
.*big\s+1\s+100\b.*$
--- no_error_log
[error]
