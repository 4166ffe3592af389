"""Fixtures of the Docker test suite (`make test-docker`), on pytest-docker's.

The suite runs only when ZEDCUP_TEST_DOCKER=1 (make test-docker sets it); `make test`
skips it, saying so. It then needs a Docker engine: the one `docker` reaches, or its own
dockerd when it is root (tests/docker/engine.py); without either it skips, with the
reason. pytest-docker's `docker_services` brings up docker-compose.yml under a project
name of its own, and takes it down (with its networks) at the end, also on a failure,
Ctrl-C or SIGTERM; the dockerd this suite started is stopped after that.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerengine import Engine, Unavailable
from dockerstack import Cluster

REPO = Path(__file__).resolve().parents[2]
ENABLED = os.environ.get("ZEDCUP_TEST_DOCKER") == "1"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (CI's timeout) tears the stack and the dockerd down like Ctrl-C does.
    if ENABLED and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
        config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="the Docker suite runs with `make test-docker`")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    try:
        engine = Engine.find(REPO)
    except Unavailable as e:
        pytest.skip(f"Docker suite: {e}")
    saved = {k: os.environ.get(k) for k in ("DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_BUILDKIT")}
    os.environ.update({k: engine.env[k] for k in saved if k in engine.env})
    try:
        try:
            base = engine.ensure_base_image()
        except Unavailable as e:
            pytest.skip(f"Docker suite: {e}")
        seconds = engine.build_image(REPO)
        made = engine.figures.get("base_image_s")
        print(
            f"\n[docker] engine {'started by the suite' if engine.dockerd else 'found'}, "
            f"debian:bookworm-slim {base}"
            + (f" ({made:.0f} s)" if made else "")
            + f", image built in {seconds:.1f} s"
        )
        yield engine
    finally:
        engine.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def docker_compose_command(docker_engine: Engine) -> str:
    return docker_engine.compose_command()


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(REPO / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return f"zedcuptest{os.getpid()}"


@pytest.fixture(scope="session")
def docker_setup(docker_engine: Engine) -> list[str]:
    # The image is built already; published ports go to free ports on 127.0.0.1 (the
    # tests talk to the containers' own addresses).
    for var in ("CONSUL", "NODE1", "NODE2", "NODE1_SEED", "NODE2_SEED"):
        os.environ[f"ZEDCUP_{var}_PORT"] = "127.0.0.1:"
    return ["up -d --no-build"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --remove-orphans -t 5"]


@pytest.fixture(scope="session")
def cluster(docker_engine: Engine, docker_services, docker_compose_project_name: str) -> Cluster:
    started = time.monotonic()
    c = Cluster(docker_engine, docker_compose_project_name)
    c.wait_ready(deadline_s=120)
    print(f"\n[docker] stack up and configured in {time.monotonic() - started:.1f} s")
    return c
