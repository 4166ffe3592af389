"""The Docker engine, base image and zedcup image for the Docker test suite.

`Engine.find()` uses the engine `docker` reaches (DOCKER_HOST or the default socket); when
none answers and this process is root, it starts its own dockerd with private roots
(`--data-root .tools/docker/data-<driver>`, exec root, socket and pidfile in a temporary
directory; overlay2, else vfs) and stops it in `Engine.close()`. Nothing here touches a
registry except `docker pull debian:bookworm-slim` once, when that image is missing:
where it cannot be pulled it is made from Debian packages (`debootstrap --variant=minbase
bookworm`, the mirror named by this machine's apt sources) and tagged so, so the
Dockerfile is the same for users and CI.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BASE_IMAGE = "debian:bookworm-slim"
IMAGE = "zedcup"
IMAGE_LABEL = "org.zedcup.image"
STAGE_LABEL = "org.zedcup.build-stage"  # the Dockerfile's build stages (classic builder)


class Unavailable(Exception):
    """No engine can be used here: the suite skips, with this reason."""


def _run(
    argv: list[str], env: dict[str, str], timeout: float = 60, check: bool = True, **kw
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, env=env, timeout=timeout, text=True, capture_output=True, check=False, **kw
    )
    if check and proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {output}")
    return proc


def _client_major(cli: str) -> int | None:
    try:
        out = _run([cli, "version", "--format", "{{.Client.Version}}"], dict(os.environ), 20, False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.match(r"(\d+)\.", out.stdout.strip())
    return int(m.group(1)) if m else None


def _pick_cli() -> tuple[str, list[str], dict[str, str]]:
    """(docker CLI, build argv prefix, build env): BuildKit (parallel stages) when the CLI
    has it (buildx, or a CLI older than 23 such as Debian's docker.io 20.10), else the
    classic builder."""
    cli = shutil.which("docker") or "/usr/bin/docker"
    if not os.access(cli, os.X_OK):
        raise Unavailable("no docker CLI (make test-docker installs Debian's docker.io as root)")
    if _run([cli, "buildx", "version"], dict(os.environ), 20, False).returncode == 0:
        return cli, [cli, "buildx", "build", "--load"], {}
    major = _client_major(cli)
    return cli, [cli, "build"], {"DOCKER_BUILDKIT": "1" if major and major < 23 else "0"}


def apt_mirror() -> str | None:
    """The Debian mirror this machine's apt sources name (deb822 first, then sources.list)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if "security" not in uri:
                        return uri
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text(errors="replace").splitlines():
            parts = line.split()
            if parts[:1] == ["deb"] and "security" not in line:
                for part in parts[1:]:
                    if re.match(r"[a-z]+://", part):
                        return part
    return None


@dataclass
class Engine:
    cli: str
    build_argv: list[str]
    env: dict[str, str]
    state_dir: Path
    dockerd: subprocess.Popen[bytes] | None = None
    exec_root: Path | None = None
    log_path: Path | None = None
    made_bridge: bool = False
    figures: dict[str, float] = field(default_factory=dict)

    # -- finding or starting one -------------------------------------------------------

    @classmethod
    def find(cls, repo: Path) -> Engine:
        state_dir = repo / ".tools" / "docker"
        config = state_dir / "config"  # a private, empty client config: no credential helpers
        try:
            config.mkdir(parents=True, exist_ok=True)
        except OSError:
            config = Path(tempfile.mkdtemp(prefix="zedcup-docker-config-"))
        cli, build_argv, build_env = _pick_cli()
        env = dict(os.environ, DOCKER_CONFIG=str(config), **build_env)
        engine = cls(cli, build_argv, env, state_dir)
        if engine.reachable():
            return engine
        where = env.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if os.geteuid() != 0:
            raise Unavailable(f"no Docker engine at {where}, and not root to start one")
        if not shutil.which("dockerd"):
            raise Unavailable(f"no Docker engine at {where}, and no dockerd to start (docker.io)")
        engine.start_dockerd()
        return engine

    def reachable(self) -> bool:
        try:
            proc = self.docker("version", "-f", "{{.Server.Version}}", timeout=15, check=False)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0 and bool(proc.stdout.strip())

    def _stop_stale(self) -> None:
        """A dockerd this suite started and could not stop (the run was killed)."""
        pidfile = self.state_dir / "dockerd.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            pidfile.unlink(missing_ok=True)
            return
        if str(self.state_dir).encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        pidfile.unlink(missing_ok=True)

    def start_dockerd(self) -> None:
        self._stop_stale()
        # dockerd leaves its default bridge behind when it stops: remove it then, if new
        self.made_bridge = not Path("/sys/class/net/docker0").exists()
        errors = []
        for driver in ("overlay2", "vfs"):
            # short: containerd's socket paths must fit in sun_path
            exec_root = Path(tempfile.mkdtemp(prefix="zdk-", dir="/tmp"))
            sock = exec_root / "docker.sock"
            log_path = self.state_dir / f"dockerd-{driver}.log"
            argv = [
                "dockerd",
                "--data-root", str(self.state_dir / f"data-{driver}"),
                "--exec-root", str(exec_root),
                "-H", f"unix://{sock}",
                "--pidfile", str(exec_root / "dockerd.pid"),
                "--storage-driver", driver,
            ]  # fmt: skip
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            (self.state_dir / "dockerd.pid").write_text(f"{proc.pid}\n")
            self.env["DOCKER_HOST"] = f"unix://{sock}"
            self.dockerd, self.exec_root, self.log_path = proc, exec_root, log_path
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if sock.exists() and self.reachable():
                    return
                time.sleep(0.3)
            tail = log_path.read_text(errors="replace")[-600:]
            errors.append(f"{driver}: {tail.strip()}")
            self._stop_dockerd()
        raise RuntimeError("dockerd did not start:\n" + "\n".join(errors))

    def _stop_dockerd(self) -> None:
        proc = self.dockerd
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self.exec_root is not None:
            subprocess.run(["umount", "-R", str(self.exec_root)], capture_output=True, check=False)
            shutil.rmtree(self.exec_root, ignore_errors=True)
        (self.state_dir / "dockerd.pid").unlink(missing_ok=True)
        if proc is not None and self.made_bridge:
            subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True, check=False)
        self.dockerd = self.exec_root = None

    def close(self) -> None:
        """Remove untagged zedcup images (replaced builds, build stages); stop the dockerd
        this started."""
        for label in (IMAGE_LABEL, STAGE_LABEL):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.docker("image", "prune", "-f", "--filter", f"label={label}", check=False)
        self._stop_dockerd()

    # -- running docker ----------------------------------------------------------------

    def docker(self, *args: str, timeout: float = 60, check: bool = True, **kw):
        return _run([self.cli, *args], self.env, timeout, check, **kw)

    def has_image(self, name: str) -> bool:
        return self.docker("image", "inspect", name, check=False, timeout=30).returncode == 0

    def ensure_base_image(self) -> str:
        """debian:bookworm-slim: present, pulled, or made with debootstrap. Says which."""
        if self.has_image(BASE_IMAGE):
            return "present"
        try:
            if self.docker("pull", BASE_IMAGE, timeout=60, check=False).returncode == 0:
                return "pulled"
        except subprocess.TimeoutExpired:
            pass
        if os.geteuid() != 0 or not shutil.which("debootstrap"):
            raise Unavailable(
                f"{BASE_IMAGE} cannot be pulled, and debootstrap (root) is not there to make it"
            )
        mirror = apt_mirror()
        if not mirror:
            raise Unavailable(f"{BASE_IMAGE}: no Debian mirror in the apt sources for debootstrap")
        started = time.monotonic()
        rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=self.state_dir))
        try:
            _run(
                ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
                self.env,
                timeout=900,
            )
            # Like the registry's slim image: no docs, man pages or locales in later installs,
            # no package cache or lists.
            (rootfs / "etc/dpkg/dpkg.cfg.d/docker-slim").write_text(
                "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
                "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
                "path-exclude /usr/share/locale/*\n"
            )
            for sub in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                        "usr/share/locale", "usr/share/info"):  # fmt: skip
                target = rootfs / sub
                if target.is_dir():
                    for child in target.iterdir():
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child)
                        else:
                            child.unlink()
            (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
            (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            try:
                _run(
                    [self.cli, "import", "-c", 'CMD ["bash"]', "-", BASE_IMAGE],
                    self.env,
                    timeout=300,
                    stdin=tar.stdout,
                )
            finally:
                assert tar.stdout is not None
                tar.stdout.close()
                tar.wait()
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
        self.figures["base_image_s"] = time.monotonic() - started
        return "made with debootstrap"

    def build_image(self, repo: Path) -> float:
        """Build the zedcup image from the repo's Dockerfile; returns the seconds it took."""
        argv = [*self.build_argv, "--label", f"{IMAGE_LABEL}=1", "-t", IMAGE]
        before = self.image_id(IMAGE)
        started = time.monotonic()
        _run([*argv, str(repo)], self.env, timeout=1200)
        took = time.monotonic() - started
        if before and before != self.image_id(IMAGE):
            # the image this build replaced, unless a container still uses it
            self.docker("image", "rm", before, check=False, timeout=60)
        return took

    def image_id(self, name: str) -> str | None:
        proc = self.docker("image", "inspect", "-f", "{{.Id}}", name, check=False, timeout=30)
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    def compose_command(self) -> str:
        """`docker compose` (v2) when it works, else docker-compose (v1, Debian's)."""
        if self.docker("compose", "version", check=False, timeout=20).returncode == 0:
            return f"{self.cli} compose"
        v1 = shutil.which("docker-compose")
        if v1:
            return v1
        raise Unavailable("neither `docker compose` nor docker-compose is installed")
