"""The embedded server itself: DevConsul lifecycle, `zedctl dev-consul` (ready line,
signals, errors) and `--data` persistence and crash safety. Embedded-only by nature:
each test starts its own server, so these run the same with or without --consul-url."""

from __future__ import annotations

import base64
import json
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from zedctl.devconsul import DataFileError, DevConsul
from zedctl.devconsul.testing import RawConsul, wait_for

pytestmark = pytest.mark.devconsul_only("its lifecycle, CLI, --data persistence and HTTP server")

# ------------------------------------------------------------------ lifecycle


def test_start_stop_is_idempotent_and_frees_the_port() -> None:
    server = DevConsul(port=0)
    assert server.start() is server
    assert server.start() is server
    host, port = server.address
    assert port != 0
    assert server.url == f"http://{host}:{port}"
    assert requests.get(server.url + "/v1/status/leader", timeout=5).status_code == 200
    server.stop()
    server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/v1/status/leader", timeout=5)
    with socket.socket() as sock:  # the port can be bound again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


def test_stop_answers_held_blocking_queries() -> None:
    server = DevConsul(port=0).start()
    raw = RawConsul(server.url)
    raw.put("/v1/kv/k", data=b"v")
    idx = raw.get("/v1/kv/k").headers["X-Consul-Index"]
    answers: list[Any] = []

    def block() -> None:
        answers.append(requests.get(f"{server.url}/v1/kv/k?index={idx}&wait=5m", timeout=30))

    thread = threading.Thread(target=block, daemon=True)
    thread.start()
    wait_for(lambda: server.store.watch_count() == 1, 10, "the query to block")
    server.stop()
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert len(answers) == 1
    assert answers[0].status_code == 200  # answered with the current data, not cut off
    assert answers[0].headers["X-Consul-Index"] == idx
    raw.close()


def test_context_manager() -> None:
    with DevConsul(port=0) as server:
        url = server.url
        assert requests.put(url + "/v1/kv/cm", data=b"v", timeout=5).json() is True
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/v1/kv/cm", timeout=5)


# ------------------------------------------------------------------ CLI


def test_cli_prints_one_ready_line_and_exits_0_on_sigterm(devconsul_process: Any) -> None:
    proc = devconsul_process()
    assert proc.ready_line == f"dev-consul listening on {proc.url}\n"
    assert requests.put(proc.url + "/v1/kv/cli", data=b"v", timeout=5).json() is True
    assert proc.stop(signal.SIGTERM) == 0
    assert proc.proc.stdout.read() == ""  # nothing after the ready line
    assert "Traceback" not in proc.proc.stderr.read()


def test_cli_exits_0_on_sigint(devconsul_process: Any) -> None:
    proc = devconsul_process()
    assert proc.stop(signal.SIGINT) == 0
    assert "Traceback" not in proc.proc.stderr.read()


def test_cli_with_acl_token(devconsul_process: Any) -> None:
    proc = devconsul_process("--acl-token", "tok")
    assert requests.get(proc.url + "/v1/kv/x", timeout=5).status_code == 403
    resp = requests.get(proc.url + "/v1/kv/x", headers={"X-Consul-Token": "tok"}, timeout=5)
    assert resp.status_code == 404


def test_cli_port_in_use_exits_1_with_a_message(devconsul_process: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(pytest.fail.Exception, match="exited with 1"):
            devconsul_process(port=port)


def test_cli_unloadable_data_file_exits_1_without_traceback(
    tmp_path: Path, devconsul_process: Any
) -> None:
    bad = tmp_path / "data.json"
    bad.write_text("{ not json")
    with pytest.raises(pytest.fail.Exception) as err:
        devconsul_process("--data", str(bad))
    assert "exited with 1" in str(err.value)
    assert str(bad) in str(err.value)
    assert "Traceback" not in str(err.value)


def test_unloadable_data_file_raises_data_file_error(tmp_path: Path) -> None:
    bad = tmp_path / "data.json"
    bad.write_text(json.dumps({"version": 1, "kv": "nope"}))
    with pytest.raises(DataFileError, match=r"data\.json"):
        DevConsul(port=0, data=str(bad)).start()


# ------------------------------------------------------------------ --data


def test_data_survives_a_restart_with_indexes_and_sessions(tmp_path: Path) -> None:
    data = str(tmp_path / "store.json")
    with DevConsul(port=0, data=data) as first:
        raw = RawConsul(first.url)
        raw.put("/v1/kv/keep/a?flags=5", data=b"alpha")
        raw.put("/v1/kv/keep/b", data=bytes(range(256)))
        raw.put("/v1/kv/keep/gone", data=b"x")
        raw.delete("/v1/kv/keep/gone")
        sid = raw.put("/v1/session/create", json={"Name": "kept"}).json()["ID"]
        assert raw.put(f"/v1/kv/keep/lock?acquire={sid}", data=b"l").json() is True
        before = raw.get("/v1/kv/keep/?recurse")
        raw.close()
    assert json.loads(Path(data).read_text())  # flushed on stop
    with DevConsul(port=0, data=data) as second:
        raw = RawConsul(second.url)
        after = raw.get("/v1/kv/keep/?recurse")
        assert after.json() == before.json()
        assert after.headers["X-Consul-Index"] == before.headers["X-Consul-Index"]
        assert [s["ID"] for s in raw.get("/v1/session/list").json()] == [sid]
        # the index keeps going forward from where it was
        raw.put("/v1/kv/keep/c", data=b"c")
        newest = raw.get("/v1/kv/keep/c").json()[0]["ModifyIndex"]
        assert newest > max(e["ModifyIndex"] for e in before.json())
        raw.close()


def test_data_is_saved_soon_after_a_change_without_stop(
    tmp_path: Path, devconsul_process: Any
) -> None:
    data = tmp_path / "live.json"
    proc = devconsul_process("--data", str(data))
    raw = RawConsul(proc.url)
    raw.put("/v1/kv/live", data=b"v")

    def saved() -> bool:
        try:
            return any(e["Key"] == "live" for e in json.loads(data.read_text())["kv"])
        except (OSError, ValueError, KeyError):
            return False

    wait_for(saved, 10, "the data file to hold the key")
    proc.proc.kill()  # no chance to flush: what was saved must load
    proc.proc.wait(timeout=10)
    with DevConsul(port=0, data=str(data)) as again:
        assert RawConsul(again.url).get("/v1/kv/live?raw").content == b"v"
    raw.close()


def test_a_crash_at_any_moment_leaves_a_loadable_file(
    tmp_path: Path, devconsul_process: Callable[..., Any]
) -> None:
    data = tmp_path / "crash.json"
    blob = base64.b64encode(b"x" * 1024).decode()
    rng = random.Random(7)
    for round_no in range(3):
        proc = devconsul_process("--data", str(data))
        raw = RawConsul(proc.url)
        # a big store makes each save long, so the kill lands inside one sometimes
        for chunk in range(8):
            ops = [
                {"KV": {"Verb": "set", "Key": f"bulk/{round_no}/{chunk}/{i}", "Value": blob}}
                for i in range(64)
            ]
            assert raw.put("/v1/txn", json=ops).status_code == 200
        stop_writing = threading.Event()

        def writer(raw: RawConsul = raw, stop: threading.Event = stop_writing) -> None:
            n = 0
            while not stop.is_set():
                try:
                    raw.put(f"/v1/kv/w/{n}", data=b"v")
                except requests.RequestException:
                    return
                n += 1

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        time.sleep(rng.uniform(0.1, 0.4))  # a random moment, on purpose
        proc.proc.kill()
        proc.proc.wait(timeout=10)
        stop_writing.set()
        thread.join(timeout=10)
        raw.close()
        snapshot = json.loads(data.read_text())  # complete JSON, whatever the moment
        assert snapshot["version"] == 1
        with DevConsul(port=0, data=str(data)) as check:
            assert RawConsul(check.url).get("/v1/status/leader").status_code == 200
    # the last start removed any temporary file a crash left; only the lock file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == [".crash.json.lock", "crash.json"]


def test_a_leftover_temp_file_does_not_matter_and_is_removed(tmp_path: Path) -> None:
    data = tmp_path / "d.json"
    with DevConsul(port=0, data=str(data)) as server:
        RawConsul(server.url).put("/v1/kv/k", data=b"v")
    leftover = tmp_path / ".d.json.99999.tmp"
    leftover.write_text('{"half": ')
    with DevConsul(port=0, data=str(data)) as server:
        assert RawConsul(server.url).get("/v1/kv/k?raw").content == b"v"
        assert not leftover.exists()


def test_two_servers_cannot_share_a_data_file(tmp_path: Path) -> None:
    data = str(tmp_path / "shared.json")
    with (
        DevConsul(port=0, data=data),
        pytest.raises(DataFileError, match="in use by another dev-consul"),
    ):
        DevConsul(port=0, data=data).start()
    with DevConsul(port=0, data=data) as again:  # free once the first one stopped
        assert RawConsul(again.url).get("/v1/status/leader").status_code == 200


def test_a_missing_data_directory_is_a_data_file_error(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="cannot create"):
        DevConsul(port=0, data=str(tmp_path / "no" / "such" / "dir.json")).start()
