"""`make run`'s demo, driven end to end: real dev-consul, nginx and backends."""

from __future__ import annotations

import subprocess
import sys

from zedctl.devconsul.testing import free_port


def test_demo_smoke_walkthrough_holds() -> None:
    """Balancing, failover to the secondary pool and recovery through health checks."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zedctl.demo",
            "--smoke",
            "--port",
            str(free_port()),
            "--consul-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "balancing, failover and recovery all held; the printed zedctl commands ran" in (
        proc.stdout
    )
