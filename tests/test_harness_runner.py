"""The t/ harness: NginxServer, the error log, the client and BlockRun on real nginx."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from zedctl.testnginx import (
    BlockFailure,
    BlockRun,
    ErrorLog,
    NginxBinary,
    NginxNotFound,
    NginxServer,
    NginxStartError,
    PortPicker,
    find_nginx,
    http_request,
    parse_responses,
    parse_text,
)
from zedctl.testnginx.block import Consul
from zedctl.testnginx.runner import (
    PORT_FLOOR,
    default_repo,
    ephemeral_range,
    is_lifecycle_line,
    severe_lines,
    summarize_log,
    without_probe_lines,
)


@pytest.fixture(scope="module")
def binary() -> NginxBinary:
    try:
        return find_nginx()
    except NginxNotFound as err:
        pytest.skip(f"no nginx with Lua: {err}")


@pytest.fixture
def server_factory(binary: NginxBinary, tmp_path: Path) -> Iterator:
    started: list[NginxServer] = []

    def make(name: str = "s", **kw) -> NginxServer:
        server = NginxServer(tmp_path / name, binary=binary, **kw)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


# -- client framing (bytes in, responses out) -----------------------------------------


def test_parse_content_length_and_chunked_pipelined() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhe\r\n3;ext=1\r\nllo\r\n0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nuntil close"
    )
    r = parse_responses(data, ["GET", "GET", "HEAD", "GET"])
    assert [x.status for x in r] == [200, 201, 200, 404]
    assert [x.body for x in r] == [b"abc", b"hello", b"", b"until close"]
    assert all(x.problem is None for x in r)
    assert r[3].header("server") == "x" and r[3].reason == "Not Found"


def test_parse_detects_truncation() -> None:
    (r,) = parse_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", ["GET"])
    assert r.problem == "truncated body: Content-Length 10, 3 bytes received"
    (r,) = parse_responses(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", ["GET"])
    assert r.problem is not None and "truncated chunked body" in r.problem
    (r,) = parse_responses(b"HTTP/1.1 200 OK\r\nContent-Le", ["GET"])
    assert r.problem == "truncated response header"
    r = parse_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", ["GET", "GET"])
    assert r[1].status == 0 and r[1].problem == "no response to request 2"


# -- log helpers -------------------------------------------------------------------------


def test_error_log_slices_by_offset(tmp_path: Path) -> None:
    log = ErrorLog(tmp_path / "error.log")
    assert log.size() == 0 and log.read() == ""
    log.path.write_text("line 1\n")
    mark = log.mark()
    with log.path.open("a") as f:
        f.write("line 2\nline 3\n")
    assert log.read(mark) == "line 2\nline 3\n"
    assert log.read(0, mark) == "line 1\n"
    found, text = log.wait_for(lambda t: "line 3" in t, time.monotonic() + 1, start=mark)
    assert found and "line 1" not in text
    t0 = time.monotonic()
    found, _ = log.wait_for(lambda t: "never" in t, time.monotonic() + 0.2)
    assert not found and time.monotonic() - t0 >= 0.2


def test_lifecycle_and_severe_lines() -> None:
    text = "\n".join(
        [
            "2026/01/01 00:00:00 [notice] 1#1: start worker process 7",
            "2026/01/01 00:00:00 [notice] 1#1: signal 3 (SIGQUIT) received from 9, shutting down",
            "2026/01/01 00:00:00 [alert] 1#1: worker process 7 exited on signal 11",
            "2026/01/01 00:00:00 [crit] 7#7: *1 something critical",
            "2026/01/01 00:00:00 [error] 7#7: *1 just an error",
            "2026/01/01 00:00:00 [debug] 7#7: *1 noise",
        ]
    )
    lines = text.splitlines()
    assert is_lifecycle_line(lines[0]) and is_lifecycle_line(lines[1])
    assert not is_lifecycle_line(lines[2])
    assert severe_lines(text) == [lines[2], lines[3]]
    summary = summarize_log(text, max_lines=3)
    assert "[debug]" not in summary and "[notice]" not in summary
    assert summary.startswith("[... 2 earlier lines omitted ...]")
    assert summary.endswith("just an error")


def test_probe_connection_lines_are_dropped() -> None:
    text = "\n".join(
        [
            "2026/01/01 00:00:00 [debug] 5#5: *1 accept: 127.0.0.2:4000 fd:7",
            "2026/01/01 00:00:00 [debug] 5#5: *1 event timer add: 7: 60000:1",
            "2026/01/01 00:00:00 [info] 5#5: *1 client closed connection while waiting for "
            "request, client: 127.0.0.2, server: 127.0.0.1:1984",
            "2026/01/01 00:00:00 [debug] 5#5: *2 accept: 127.0.0.1:4001 fd:7",
            "2026/01/01 00:00:00 [debug] 5#5: *2 event timer add: 7: 60000:1",
            "2026/01/01 00:00:00 [debug] 5#5: *12 event timer add: 7: 60000:1",
        ]
    )
    kept = without_probe_lines(text).splitlines()
    assert [line.split(": ", 1)[1].split(" ", 1)[0] for line in kept] == ["*2", "*2", "*12"]


# -- NginxServer ----------------------------------------------------------------------


def test_server_starts_answers_and_stops(server_factory) -> None:
    server = server_factory(config='location = /t { content_by_lua_block { ngx.say("hi") } }')
    assert server.pid_path.read_text().strip() == str(server.proc.pid)
    mark = server.error_log.mark()
    resp = http_request(server.port, "GET", "/t")
    assert (resp.status, resp.text, resp.problem) == (200, "hi\n", None)
    assert "GET /t" in server.error_log.read(mark)
    assert 'content_by_lua_block { ngx.say("hi") }' in server.render()
    server.stop()
    assert not server.running
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server.port)) != 0


def test_workers_2_are_ready_and_both_answer(server_factory) -> None:
    server = server_factory(
        workers=2, config="location = /pid { content_by_lua_block { ngx.print(ngx.worker.pid()) } }"
    )
    workers = server.worker_pids()
    assert len(workers) == 2
    seen = set()
    for _ in range(60):
        seen.add(int(http_request(server.port, "GET", "/pid").text))
        if len(seen) == 2:
            break
    assert seen == set(workers)
    server.stop()
    assert not server.running


def test_start_failure_carries_the_log(server_factory) -> None:
    with pytest.raises(NginxStartError) as err:
        server_factory(config="location = /t { bogus_directive; }")
    assert 'unknown directive "bogus_directive"' in err.value.log
    assert not err.value.address_in_use


def test_port_in_use_is_detected(server_factory) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(NginxStartError) as err:
            server_factory(port=port, start_timeout=10)
    assert err.value.address_in_use


def test_picked_ports_are_free_distinct_and_outside_the_ephemeral_range() -> None:
    low, _high = ephemeral_range()
    picker = PortPicker()
    ports = picker.pick_many(50)
    assert len(set(ports)) == 50
    if low - PORT_FLOOR >= 1000:
        # an outgoing connection's local port can never take one of these
        assert all(PORT_FLOOR <= p < low for p in ports), ports
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free: binds


def test_a_port_in_use_is_never_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    taken, free = PortPicker().pick_many(2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", taken))
        picker = PortPicker()
        draws = iter([taken, taken, free])
        monkeypatch.setattr(picker, "_span", (PORT_FLOOR, PORT_FLOOR + 1))
        monkeypatch.setattr(picker._random, "randint", lambda _a, _b: next(draws))
        assert picker.pick() == free


def test_raw_conf_text(binary: NginxBinary, tmp_path: Path) -> None:
    port = PortPicker().pick()
    root = tmp_path / "raw"
    conf = (
        "".join(f"load_module {m};\n" for m in binary.modules)
        + f"daemon off; master_process off; error_log {root}/logs/error.log info;\n"
        + f"pid {root}/logs/nginx.pid;\nevents {{}}\nhttp {{ access_log off;\n"
        + f"server {{ listen 127.0.0.1:{port}; location / {{ return 200 raw; }} }} }}\n"
    )
    with NginxServer(root, conf_text=conf, port=port, binary=binary) as server:
        assert http_request(port).text == "raw"
        assert server.render() == conf
    assert not server.running


# -- BlockRun ---------------------------------------------------------------------------


def run_block(binary: NginxBinary, tmp_path: Path, text: str, picker: PortPicker | None = None):
    (block,) = parse_text("__DATA__\n" + text, "t/x.t")
    block.validate()
    run = BlockRun(
        block=block,
        binary=binary,
        tmp=tmp_path,
        repo=default_repo(),
        picker=picker or PortPicker(),
    )
    run.run()
    return run


def test_nodes_2_start_and_answer(binary: NginxBinary, tmp_path: Path) -> None:
    run = run_block(
        binary,
        tmp_path,
        "=== TEST 1: nodes\n--- nodes: 2\n--- config\n"
        "    location = /t {\n"
        "        content_by_lua_block {\n"
        '            ngx.log(ngx.WARN, "hello from node $TEST_NGINX_NODE")\n'
        "            local s = ngx.socket.tcp()\n"
        '            assert(s:connect("127.0.0.1", $TEST_NGINX_NODE_PORT_2))\n'
        '            s:send("GET /n HTTP/1.0\\r\\n\\r\\n")\n'
        '            ngx.print(s:receive("*a"):match("\\r\\n\\r\\n(.*)"))\n'
        "        }\n"
        "    }\n"
        "    location = /n {\n"
        '        return 200 "node $TEST_NGINX_NODE servroot $TEST_NGINX_SERVROOT\\n";\n'
        "    }\n"
        "--- request\nGET /t\n"
        "--- response_body_like: ^node 2 servroot \\S+/node2$\n"
        "--- error_log\nhello from node 1\n"
        "--- no_error_log\nhello from node 2\n",
    )
    assert len(run.servers) == 2
    ports = {s.port for s in run.servers}
    assert len(ports) == 2
    assert [v["TEST_NGINX_NODE"] for v in run.variables] == ["1", "2"]
    assert run.variables[0]["TEST_NGINX_NODE_PORT_2"] == str(run.servers[1].port)
    assert run.servers[0].servroot != run.servers[1].servroot
    assert "hello from node 1" in run.servers[0].error_log_text()
    assert not any(s.running for s in run.servers)


def test_nodes_log_checks_see_every_node(binary: NginxBinary, tmp_path: Path) -> None:
    with pytest.raises(BlockFailure) as err:
        run_block(
            binary,
            tmp_path,
            "=== TEST 1: x\n--- nodes: 2\n--- config\n"
            "    location = /t { return 200; }\n"
            "--- main_config\n    env TEST_NGINX_NODE;\n"
            "--- http_config\n"
            "    init_worker_by_lua_block {\n"
            '        ngx.log(ngx.WARN, "up: node ", os.getenv("TEST_NGINX_NODE"))\n'
            "    }\n"
            "--- request\nGET /t\n--- no_error_log\nup: node 2\n",
        )
    assert "no_error_log: 'up: node 2' found in the error log (node 2)" in str(err.value)
    assert len(err.value.confs) == 2 and len(err.value.logs) == 2


class BusyFirstPicker(PortPicker):
    """Hands out a port that is in use first, then free ones: a lost port race."""

    def __init__(self, busy_port: int) -> None:
        super().__init__()
        self.busy_port = busy_port
        self.calls = 0

    def pick(self) -> int:
        self.calls += 1
        return self.busy_port if self.calls == 1 else super().pick()


def test_address_in_use_is_retried_with_new_ports(binary: NginxBinary, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        picker = BusyFirstPicker(busy.getsockname()[1])
        run = run_block(
            binary,
            tmp_path,
            "=== TEST 1: x\n--- config\n    location = /t { return 200 ok; }\n"
            "--- request\nGET /t\n--- response_body chomp\nok\n",
            picker=picker,
        )
    assert picker.calls == 2
    assert run.servers[0].port != picker.busy_port


def test_consul_block_gets_a_fresh_prefix_that_is_deleted_after(
    binary: NginxBinary, tmp_path: Path, consul
) -> None:
    (block,) = parse_text(
        "__DATA__\n=== TEST 1: consul\n--- config\n"
        "    location = /t {\n"
        "        content_by_lua_block {\n"
        "            local s = ngx.socket.tcp()\n"
        '            assert(s:connect("$TEST_NGINX_CONSUL_HOST", $TEST_NGINX_CONSUL_PORT))\n'
        '            local token = "$TEST_NGINX_CONSUL_TOKEN"\n'
        '            s:send("PUT /v1/kv/$TEST_ZEDCUP_PREFIX/a/b HTTP/1.0\\r\\n"\n'
        '                .. (token ~= "" and "X-Consul-Token: " .. token .. "\\r\\n" or "")\n'
        '                .. "Content-Length: 1\\r\\n\\r\\nx")\n'
        # a real `consul agent -dev` ends its JSON answers with a newline
        '            ngx.print((s:receive("*a"):match("\\r\\n\\r\\n(.*)"):gsub("\\n$", "")))\n'
        "        }\n"
        "    }\n"
        "--- request\nGET /t\n--- response_body chomp\ntrue\n",
        "t/x.t",
    )
    run = BlockRun(
        block=block,
        binary=binary,
        tmp=tmp_path,
        repo=default_repo(),
        consul=Consul(consul.host, consul.port, consul.token, consul.scheme),
    )
    run.run()
    prefix = run.variables[0]["TEST_ZEDCUP_PREFIX"]
    assert prefix.startswith("zt/") and len(prefix) == 11
    req = urllib.request.Request(f"{consul.url}/v1/kv/{prefix}/?recurse")
    if consul.token:
        req.add_header("X-Consul-Token", consul.token)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 404


def test_nginx_server_fixture_starts_and_stops(nginx_server) -> None:
    a = nginx_server(config="location = /t { return 200 a; }")
    b = nginx_server(config="location = /t { return 200 b; }", workers=2, name="second")
    assert a.port != b.port and len(b.worker_pids()) == 2
    assert http_request(a.port, uri="/t").text == "a"
    assert http_request(b.port, uri="/t").text == "b"
    assert b.servroot.name == "second"
