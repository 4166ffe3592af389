"""Test::Nginx-style tests for zedcup, run by pytest, and nginx for Python code.

The harness's pytest plugin (zedctl.testnginx.plugin) collects every `t/**/*.t` file;
each block is one test item named after its title, so `pytest t -k "TEST 3"` runs block
`TEST 3: ...` (the plugin rewrites `TEST <n>` in -k to that block's keyword). Blocks
run in file order, each against its own freshly started nginx in its own servroot
(a pytest tmp_path), and stand alone. The plugin is opt-in: the zedcup checkout's root
conftest.py loads it; elsewhere `pytest -p zedctl.testnginx.plugin`. It also gives the
session's Consul (`--consul=dev|real|URL`, see zedctl.testnginx.plugin) and the
`nginx_server` fixture.

Block format::

    === TEST 1: title
    --- http_config
        lua_shared_dict cache 1m;
    --- config
        location = /t { content_by_lua_block { ngx.say("ok") } }
    --- request
    GET /t
    --- response_body
    ok
    --- no_error_log
    [error]

Values: CRLF normalised, leading/trailing blank lines dropped, one final newline kept;
`--- name: value` is the one-line form (no final newline). Filter words after the
section name: `chomp` (drop the final newline), `re` (error_log, no_error_log and
grep_error_log lines are Python regexes, searched per line / multiline), `own` (see
the preamble).

The preamble (what Test::Nginx files do with add_block_preprocessor and
`$::HttpConfig`): `--- main_config`, `--- http_config` and `--- config` sections before
`__DATA__` go in front of the same section of every block of the file (or stand for it
when the block has none), so blocks give only what is their own; a block section with
the filter `own` (`--- http_config own`) replaces the preamble's instead. Variables are
substituted after the merge, per block. Header lines before the first `---` are
comments::

    # zedcup with its dicts, against the session's Consul
    --- http_config
        lua_shared_dict zedcup_cache 1m;
        init_by_lua_block { ... $TEST_NGINX_CONSUL_PORT ... }
    __DATA__

    === TEST 1: a backend of its own
    --- http_config
        server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1; return 200 "one"; }

Block variables change one place inside the preamble per block (where appending is not
enough, e.g. one more option of a Lua call): a `--- vars` section of `NAME = value`
lines (`#` lines are comments, the value may be empty and may use the harness's
variables), in the preamble for the defaults and in a block for its own values, which
win (`--- vars own` drops the defaults). NAME is a TEST_NGINX_* or TEST_ZEDCUP_* name
the harness does not define; `$NAME` is replaced in every section of the block when the
file is parsed::

    --- vars
    TEST_ZEDCUP_INIT_EXTRA =
    --- http_config
        init_by_lua_block { init({ port = $TEST_NGINX_CONSUL_PORT, $TEST_ZEDCUP_INIT_EXTRA }) }
    __DATA__

    === TEST 1: with a resolver
    --- vars
    TEST_ZEDCUP_INIT_EXTRA = resolver = { nameservers = { { "127.0.0.1", 53 } } },

Unknown sections or filters, duplicate sections or titles, bad numbers, bad regexes
and undefined variables are collection errors naming file, line, block and section.

Sections:
    main_config, http_config, config   nginx.conf parts (see below)
    vars             block variables (see above)
    request          `METHOD URI [VERSION]` (default HTTP/1.1); further lines are the
                     body, sent without the section's final newline, with Content-Length
    more_headers     `Name: value` lines; Host and `Connection: close` are added unless given
    pipelined_requests  one `METHOD URI [VERSION]` per line, sent on one connection
    error_code       expected status (default 200); for pipelined requests one per
                     line (the last applies to the rest)
    response_body    the exact body (pipelined: all bodies concatenated)
    response_body_like  a Python regex searched in the body (re.MULTILINE | re.DOTALL),
                     without the section's final newline
    response_headers `Name: value` (equal) or `!Name` (absent), checked on every response
    error_log        each line must appear in the block's error log (all nodes); the log
                     is polled until the block's timeout
    no_error_log     each line must not appear (checked after the response, after
                     `wait`, once the log has been quiet for 50 ms); start/stop notices
                     never count
    grep_error_log   a substring (or regex with `re`); every match in the log, one per
                     line, must equal grep_error_log_out (polled until the timeout)
    wait             seconds to sleep before the log checks
    timeout          client timeout and log-poll deadline (default 5; `1.5`, `300ms`)
    abort            a client timeout is not a failure
    SKIP / ONLY / LAST  skip this block / run only this block of the file / skip the rest
    workers: N       master_process on, N workers (`listen ... reuseport`, so connections
                     spread over the workers); ready when all N workers are up
    nodes: N         N nginx servers from the same block, each with its own servroot,
                     port and error log; the request goes to node 1; log checks look at
                     every node

Every block also fails on an [alert], [crit] or [emerg] line unless one of its
error_log lines matches it, on a truncated body (Content-Length or chunked framing),
and when nginx dies during the block. The failure report shows the response, the
generated nginx.conf(s) with line numbers and the block's error.log (non-debug lines,
the last 150; the full log path is given).

Variables, substituted in every section as `$NAME` or `${NAME}`:
    TEST_NGINX_SERVER_PORT   the port of this node's test server
    TEST_NGINX_NODE          1-based node number (1 without `nodes`)
    TEST_NGINX_NODE_PORT_k   the server port of node k (k <= nodes)
    TEST_NGINX_RAND_PORT_n   free ports, fresh per block, the same on every node
    TEST_NGINX_SERVROOT, TEST_NGINX_HTML_DIR   this node's servroot and html dir
    TEST_NGINX_REPO          the zedcup checkout (lua/ is on lua_package_path)
    TEST_ZEDCUP_PREFIX       a fresh Consul key prefix per block, `zt/<8 hex>`
    TEST_NGINX_CONSUL_HOST, TEST_NGINX_CONSUL_PORT, TEST_NGINX_CONSUL_TOKEN
                             the session's Consul (--consul: dev-consul, a real
                             `consul agent -dev`, or a URL); using one of these (the
                             preamble's count) is what starts it, and what keeps the
                             block in a --consul-only run
    TEST_NGINX_DNS_PORT, TEST_NGINX_DNS_DIR
                             a DNS server on 127.0.0.1 for this block (zedctl.testdns):
                             one records file per name in the directory (`A 1.2.3.4`,
                             `AAAA ::1`, `TTL 2`, `SERVFAIL`, `DROP` lines), read on
                             every query; using one of these is what starts it
    any TEST_NGINX_* / TEST_ZEDCUP_* from the environment
They are also in nginx's environment (with `env` lines for them and for ZEDCUP_*).

Generated nginx.conf: load_module lines when needed, worker_processes, master_process,
daemon off, `user root root` (root with a master only), error_log <servroot>/logs/
error.log debug, pid, env lines, main_config; http { temp paths in the servroot,
access_log off, lua_package_path "<repo>/lua/?.lua;<repo>/lua/?/init.lua;<repo>/t/lib/?.lua;;"
(shared Lua helpers of the t/ files live in t/lib/) (unless
http_config sets one), http_config, server { listen 127.0.0.1:<port>; server_name
localhost; config; `location /` serving the html dir unless config has one } }; events.

The nginx: $TEST_NGINX_BINARY, else `openresty` on PATH, else `nginx` (plus Debian's
ndk_http_module.so and ngx_http_lua_module.so when Lua is not built in), proven by an
`nginx -t` with Lua. Without one the t/ blocks are skipped with the reason.
Readiness: the pid file, a TCP connect (from 127.0.0.2, so the probe's own log lines
are dropped before any check) and, with workers, every worker forked. Ports are
picked free, at random from below the kernel's ephemeral port range (so outgoing
connections never take them); when nginx still finds one in use, the block is
retried with new ports (3 tries). SIGTERM and SIGHUP end a run like Ctrl-C, so the
block in progress stops its nginx.

Python API (for bench/ and tests)::

    from zedctl.testnginx import NginxServer, find_nginx, http_request

    with NginxServer(tmp_path, config="location = /t { return 200 ok; }", workers=2) as srv:
        resp = http_request(srv.port, "GET", "/t")      # HttpResponse: status, headers, body
        assert resp.status == 200 and resp.problem is None
        log = srv.error_log_text()                      # or srv.error_log.read(offset)

`NginxServer(servroot, config=, http_config=, main_config=, workers=,
master_process=, port=0 (picked), binary=find_nginx(), env={},
error_log_level="debug", conf_text=None)`: `.start()` (ready when it returns;
NginxStartError with the log otherwise), `.stop()`, `.port`, `.url`, `.render()`
(the nginx.conf), `.error_log` (an ErrorLog: `mark()`, `read(start)`,
`wait_for(predicate, deadline, start)`), `.error_log_text()`, `.worker_pids()`.
With `conf_text` the config is used as given (port required; log to
<servroot>/logs/error.log and write the pid to <servroot>/logs/nginx.pid).
The pytest fixture `nginx_server` (zedctl.testnginx.plugin) is a factory of started
NginxServers, stopped at teardown.
`find_nginx()` returns an NginxBinary (path, version, modules) or raises NginxNotFound.
`parse_file(path)` / `parse_text(text)` return the Blocks of a .t file, and
`BlockRun(block, binary, tmp, repo).run()` runs one (raises BlockFailure).
"""

from .block import BlockFailure, BlockRun
from .client import HttpResponse, RequestSpec, http_request, parse_responses
from .config import ConfParts, NginxBinary, NginxNotFound, find_nginx
from .parser import Block, ParseError, Section, parse_file, parse_text, substitute
from .runner import ErrorLog, NginxServer, NginxStartError, PortPicker

__all__ = [
    "Block",
    "BlockFailure",
    "BlockRun",
    "ConfParts",
    "ErrorLog",
    "HttpResponse",
    "NginxBinary",
    "NginxNotFound",
    "NginxServer",
    "NginxStartError",
    "ParseError",
    "PortPicker",
    "RequestSpec",
    "Section",
    "find_nginx",
    "http_request",
    "parse_file",
    "parse_responses",
    "parse_text",
    "substitute",
]
