"""The t/ harness end to end: pytest run on temporary .t files, in a subprocess.

Deliberately failing blocks must be reported as failing, with the generated
nginx.conf and the block's error-log slice in the report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
from zedctl.testnginx import NginxNotFound, find_nginx

FAILING_T = r"""
# deliberately failing (and a few passing) blocks
__DATA__

=== TEST 1: passes
--- config
    location = /t { content_by_lua_block { ngx.say("fine") } }
--- request
GET /t
--- response_body
fine

=== TEST 2: wrong body, with an error logged
--- config
    location = /t {
        content_by_lua_block {
            ngx.log(ngx.ERR, "marker-7f3a something broke")
            ngx.say("actual body")
        }
    }
--- request
GET /t
--- response_body
expected body

=== TEST 3: an unexpected alert fails the block
--- config
    location = /t {
        content_by_lua_block {
            ngx.log(ngx.ALERT, "marker-alert unexpected")
            ngx.say("ok")
        }
    }
--- request
GET /t
--- response_body
ok

=== TEST 4: a truncated body fails the block
--- config
    location = /t {
        content_by_lua_block {
            ngx.header["Content-Length"] = 100
            ngx.print("only a few bytes")
        }
    }
--- request
GET /t

=== TEST 5: wrong status and headers
--- config
    location = /t {
        content_by_lua_block {
            ngx.header["X-Present"] = "yes"
            ngx.status = 201
            ngx.say("created")
        }
    }
--- request
GET /t
--- response_headers
X-Present: no
!X-Present
X-Missing: 1

=== TEST 6: a bad nginx config fails at start with nginx's message
--- config
    location = /t { no_such_directive on; }
--- request
GET /t

=== TEST 7: missing error_log line fails after the timeout
--- config
    location = /t { return 200 "ok\n"; }
--- request
GET /t
--- timeout: 0.3
--- error_log
this line is never logged

=== TEST 8: no_error_log and grep_error_log_out mismatches fail
--- config
    location = /t {
        content_by_lua_block {
            ngx.log(ngx.WARN, "tick 1")
            ngx.log(ngx.WARN, "tick 2")
            ngx.say("ok")
        }
    }
--- request
GET /t
--- timeout: 0.3
--- no_error_log
tick 2
--- grep_error_log re
tick \d
--- grep_error_log_out
tick 1

=== TEST 9: a request slower than the timeout fails without abort
--- config
    location = /t { content_by_lua_block { ngx.sleep(1) ngx.say("late") } }
--- request
GET /t
--- timeout: 0.2

=== TEST 10: skipped
--- SKIP
--- request
GET /t
--- error_code: 599

=== TEST 30: passes too
--- request
GET /missing
--- error_code: 404
"""


@dataclass
class Outcome:
    status: str  # passed, failed, skipped, error
    text: str


@dataclass
class Run:
    returncode: int
    output: str
    outcomes: dict[str, Outcome]


PLUGIN = "zedctl.testnginx.plugin"


def run_pytest(
    tmp_path: Path,
    files: dict[str, str],
    *args: str,
    env: dict[str, str] | None = None,
    plugin: bool = True,
) -> Run:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            *(["-p", PLUGIN] if plugin else []),
            f"--basetemp={tmp_path / 'basetemp'}",
            f"--junitxml={junit}",
            "--rootdir",
            str(tmp_path),
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    outcomes: dict[str, Outcome] = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            status, text = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    status = {"failure": "failed"}.get(tag, tag)
                    text = (el.get("message") or "") + "\n" + (el.text or "")
            outcomes[case.get("name", "")] = Outcome(status, text)
    return Run(proc.returncode, proc.stdout + proc.stderr, outcomes)


@pytest.fixture(scope="module")
def nginx_available() -> None:
    try:
        find_nginx()
    except NginxNotFound as err:
        pytest.skip(f"no nginx with Lua: {err}")


@pytest.fixture(scope="module")
def failing_run(nginx_available: None, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_pytest(tmp_path_factory.mktemp("failing"), {"t/01-failing.t": FAILING_T})


def outcome(run: Run, prefix: str) -> Outcome:
    matches = [o for name, o in run.outcomes.items() if name.startswith(prefix + ":")]
    assert len(matches) == 1, f"{prefix}: {sorted(run.outcomes)}\n{run.output[-3000:]}"
    return matches[0]


def test_each_block_is_an_item_named_after_its_title(failing_run: Run) -> None:
    assert failing_run.returncode == 1
    assert "TEST 1: passes" in failing_run.outcomes
    assert "TEST 2: wrong body, with an error logged" in failing_run.outcomes
    assert outcome(failing_run, "TEST 1").status == "passed"
    assert outcome(failing_run, "TEST 30").status == "passed"
    assert outcome(failing_run, "TEST 10").status == "skipped"


def test_failure_report_shows_conf_and_log_slice(failing_run: Run) -> None:
    o = outcome(failing_run, "TEST 2")
    assert o.status == "failed"
    assert "response_body differs" in o.text
    assert "-expected body" in o.text and "+actual body" in o.text
    # the generated nginx.conf, numbered
    assert "----- nginx.conf (port " in o.text
    assert "daemon off;" in o.text and "lua_package_path" in o.text
    assert 'ngx.log(ngx.ERR, "marker-7f3a something broke")' in o.text
    # the block's error log slice, without the debug noise
    assert "----- error.log" in o.text
    assert "[error]" in o.text and "marker-7f3a something broke" in o.text
    assert "[debug]" not in o.text


def test_unexpected_alert_fails(failing_run: Run) -> None:
    o = outcome(failing_run, "TEST 3")
    assert o.status == "failed"
    assert "unexpected [alert] in the error log" in o.text and "marker-alert" in o.text


def test_truncated_body_fails(failing_run: Run) -> None:
    o = outcome(failing_run, "TEST 4")
    assert o.status == "failed"
    assert "truncated body: Content-Length 100, 16 bytes received" in o.text


def test_status_and_header_mismatches_fail(failing_run: Run) -> None:
    o = outcome(failing_run, "TEST 5")
    assert o.status == "failed"
    assert "status 201, expected 200" in o.text
    assert "header X-Present is 'yes', expected 'no'" in o.text
    assert "header X-Present present ('yes'), expected absent" in o.text
    assert "header X-Missing missing" in o.text


def test_bad_config_reports_nginx_message(failing_run: Run) -> None:
    o = outcome(failing_run, "TEST 6")
    assert o.status == "failed"
    assert "nginx exited with status 1 while starting" in o.text
    assert 'unknown directive "no_such_directive"' in o.text
    assert "----- nginx.conf" in o.text


def test_log_check_failures(failing_run: Run) -> None:
    o7 = outcome(failing_run, "TEST 7")
    assert o7.status == "failed"
    assert "error_log: 'this line is never logged' not found" in o7.text
    o8 = outcome(failing_run, "TEST 8")
    assert o8.status == "failed"
    assert "no_error_log: 'tick 2' found in the error log" in o8.text
    assert "grep_error_log_out differs" in o8.text and "+tick 2" in o8.text


def test_client_timeout_fails_without_abort(failing_run: Run) -> None:
    o = outcome(failing_run, "TEST 9")
    assert o.status == "failed"
    assert "request failed: timeout after 0.2s" in o.text


def test_k_test_number_selects_exactly_that_block(nginx_available: None, tmp_path: Path) -> None:
    run = run_pytest(tmp_path, {"t/01-failing.t": FAILING_T}, "-k", "TEST 3 or TEST 1")
    assert set(run.outcomes) == {
        "TEST 1: passes",
        "TEST 3: an unexpected alert fails the block",
    }, run.output[-2000:]


def test_k_test_number_with_colon(nginx_available: None, tmp_path: Path) -> None:
    run = run_pytest(tmp_path, {"t/01-failing.t": FAILING_T}, "-k", "TEST 30:")
    assert set(run.outcomes) == {"TEST 30: passes too"}, run.output[-2000:]


def test_only_runs_just_that_block(nginx_available: None, tmp_path: Path) -> None:
    text = (
        "__DATA__\n=== TEST 1: a\n--- request\nGET /x\n--- error_code: 599\n"
        "=== TEST 2: b\n--- ONLY\n--- request\nGET /x\n--- error_code: 404\n"
        "=== TEST 3: c\n--- LAST\n--- request\nGET /x\n--- error_code: 599\n"
    )
    run = run_pytest(tmp_path, {"t/a.t": text})
    assert {n: o.status for n, o in run.outcomes.items()} == {
        "TEST 1: a": "skipped",
        "TEST 2: b": "passed",
        "TEST 3: c": "skipped",
    }


def test_unknown_section_is_a_collection_error(tmp_path: Path) -> None:
    text = "__DATA__\n=== TEST 1: good\n--- request\nGET /\n=== TEST 2: bad\n--- reqest\nGET /\n"
    run = run_pytest(tmp_path, {"t/bad.t": text})
    assert run.returncode == 2, run.output
    assert "ERROR collecting t/bad.t" in run.output
    assert "t/bad.t:6, block 'TEST 2: bad', section 'reqest': unknown section" in run.output


def test_undefined_variable_is_a_collection_error(tmp_path: Path) -> None:
    text = "__DATA__\n=== TEST 1: x\n--- request\nGET /$TEST_NGINX_NOT_DEFINED_ANYWHERE\n"
    run = run_pytest(tmp_path, {"t/var.t": text})
    assert run.returncode == 2, run.output
    assert "undefined variable $TEST_NGINX_NOT_DEFINED_ANYWHERE" in run.output
    assert "block 'TEST 1: x', section 'request'" in run.output


def test_the_plugin_is_opt_in(tmp_path: Path) -> None:
    # installing zedctl registers no pytest plugin: without `-p`, .t files are not
    # collected and the harness's options do not exist
    run = run_pytest(tmp_path, {"t/x.t": "__DATA__\n=== TEST 1: x\n--- bogus\n"}, plugin=False)
    assert run.returncode == 5, run.output  # no tests collected (no collection error either)
    run = run_pytest(tmp_path, {}, "--consul=real", plugin=False)
    assert run.returncode == 4, run.output  # usage error: unknown option
    assert "unrecognized arguments: --consul=real" in run.output


def test_a_bad_consul_option_is_a_usage_error(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, {}, "--consul=nowhere")
    assert run.returncode == 4, run.output
    assert "--consul: expected dev, real or a URL, got 'nowhere'" in run.output


SELECTION_T = """
__DATA__
=== TEST 1: talks to Consul
--- config
    location = /t { return 200 "$TEST_NGINX_CONSUL_PORT"; }
=== TEST 2: does not
--- config
    location = /t { return 200; }
"""

SELECTION_PY = """
import pytest

@pytest.fixture
def own_consul():
    return None

def test_uses_the_session_consul(consul):
    pass

def test_does_not(own_consul):
    pass

@pytest.mark.devconsul_only("checks dev-consul's own thing")
def test_dev_only(consul):
    pass
"""


def test_consul_only_keeps_what_talks_to_the_session_consul(tmp_path: Path) -> None:
    # an external URL that is never contacted: nothing runs, collection only
    files = {"t/a.t": SELECTION_T, "test_sel.py": SELECTION_PY}
    run = run_pytest(
        tmp_path, files, "--consul=http://127.0.0.1:9", "--consul-only", "--collect-only", "-q"
    )
    assert run.returncode == 0, run.output
    assert "t/a.t::TEST 1: talks to Consul" in run.output
    assert "test_sel.py::test_uses_the_session_consul" in run.output
    assert "TEST 2" not in run.output and "test_does_not" not in run.output
    assert "test_dev_only" not in run.output
    assert "2/5 tests collected (3 deselected)" in run.output


def test_devconsul_only_tests_are_skipped_with_the_reason_on_another_consul(
    tmp_path: Path,
) -> None:
    files = {"test_sel.py": SELECTION_PY}
    run = run_pytest(tmp_path, files, "--consul=http://127.0.0.1:9", "-rs", "-k", "dev_only")
    assert run.returncode == 0, run.output
    assert [o.status for o in run.outcomes.values()] == ["skipped"]
    assert "dev-consul only: checks dev-consul's own thing" in run.output


def test_t_files_outside_a_t_directory_are_not_collected(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, {"other/x.t": "__DATA__\n=== TEST 1: x\n--- bogus\n"}, "other")
    assert run.returncode == 5, run.output  # no tests collected


def test_without_nginx_the_blocks_are_skipped_with_the_reason(tmp_path: Path) -> None:
    text = "__DATA__\n=== TEST 1: x\n--- request\nGET /\n=== TEST 2: y\n--- request\nGET /\n"
    missing = str(tmp_path / "no-such-nginx")
    run = run_pytest(tmp_path, {"t/a.t": text}, "-rs", env={"TEST_NGINX_BINARY": missing})
    assert run.returncode == 0, run.output
    assert [o.status for o in run.outcomes.values()] == ["skipped", "skipped"]
    assert f"no nginx with Lua: TEST_NGINX_BINARY={missing!r} is not an executable" in run.output


HANGING_T = r"""
__DATA__

=== TEST 1: a block still waiting when the run is terminated
--- timeout: 60
--- config
    location = /t {
        content_by_lua_block {
            ngx.sleep(50)
            ngx.say("late")
        }
    }
--- request
GET /t
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_nginx_of_the_block_in_progress(
    nginx_available: None, tmp_path: Path
) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "hang.t").write_text(HANGING_T)
    basetemp = tmp_path / "basetemp"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            PLUGIN,
            f"--basetemp={basetemp}",
            "--rootdir",
            str(tmp_path),
            "t",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # the block is under way once its nginx wrote its pid and took the request
        deadline = time.monotonic() + 60
        pid = 0
        while time.monotonic() < deadline and proc.poll() is None:
            for pid_file in basetemp.glob("*/servroot/logs/nginx.pid"):
                log = pid_file.with_name("error.log")
                if log.exists() and "/t HTTP/1.1" in log.read_text(errors="replace"):
                    pid = int(pid_file.read_text().strip() or 0)
            if pid:
                break
            time.sleep(0.05)
        assert pid and _alive(pid), "the block's nginx never took the request"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, output  # interrupted
    assert "KeyboardInterrupt: signal 15 (SIGTERM)" in output
    assert not _alive(pid), f"nginx {pid} outlived the run"
