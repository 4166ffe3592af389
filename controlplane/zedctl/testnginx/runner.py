"""Running nginx: start with readiness checks, stop, free ports and the error log."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .config import ConfParts, NginxBinary, env_names, find_nginx

START_TIMEOUT = 10.0
POLL_INTERVAL = 0.01

#: Lines nginx writes when it starts, reloads or stops. They are never what a block
#: means by error_log / no_error_log, and never count as unexpected [alert]s.
_LIFECYCLE_RE = re.compile(
    r"\] \d+#\d+: (?:"
    r"using the \"\w+\" event method"
    r"|nginx/\S+$|OS: |getrlimit\(|built by |start worker process(?:es)?\b"
    r"|signal \d+ \(SIG\w+\) received|worker process \d+ exited with code 0"
    r"|gracefully shutting down|exiting$|exit$|reopening logs|reconfiguring"
    r"|cache manager process|cache loader process"
    r")"
)
_LEVEL_RE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\]")
_SEVERE_RE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(alert|crit|emerg)\]")


class NginxStartError(RuntimeError):
    """nginx did not start (or did not become ready) in time."""

    def __init__(self, message: str, log: str = "", address_in_use: bool = False) -> None:
        super().__init__(message)
        self.log = log
        self.address_in_use = address_in_use


def is_lifecycle_line(line: str) -> bool:
    """Whether `line` is one of nginx's start/stop notices."""
    return bool(_LIFECYCLE_RE.search(line))


def log_level(line: str) -> str | None:
    """The level of an error-log line (`error`, `debug`...), None for continuations."""
    m = _LEVEL_RE.match(line)
    return m.group(1) if m else None


def severe_lines(text: str) -> list[str]:
    """[alert], [crit] and [emerg] lines that are not start/stop notices."""
    return [
        line for line in text.splitlines() if _SEVERE_RE.match(line) and not is_lifecycle_line(line)
    ]


#: Where picked ports come from when the kernel's ephemeral range allows: below it.
PORT_FLOOR = 20000


def ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux; else 32768-60999)."""
    try:
        with open(path) as f:
            low, high = (int(x) for x in f.read().split()[:2])
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


class PortPicker:
    """Hands out free TCP ports on 127.0.0.1, never the same one twice.

    Ports come from below the kernel's ephemeral range when there is room
    (PORT_FLOOR up to it), picked at random and proven free by a bind: the local
    port of an outgoing connection (nginx to Consul, a test's client) is always
    taken from the ephemeral range, so it can never take a picked port between
    the pick and nginx's bind, however busy the machine is. Without room, the
    kernel picks (bind to port 0). Another process can still take a picked port
    before nginx binds it, hence the retries in the runner.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._given: set[int] = set()
        low, _high = ephemeral_range()
        self._span = (PORT_FLOOR, low - 1) if low - PORT_FLOOR >= 1000 else None
        self._random = random.Random()

    def _bindable(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((self.host, port))
            except OSError:
                return False
        return True

    def _kernel_pick(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((self.host, 0))
            return int(s.getsockname()[1])

    def pick(self) -> int:
        for _ in range(100):
            if self._span is not None:
                port = self._random.randint(*self._span)
                if port in self._given or not self._bindable(port):
                    continue
            else:
                port = self._kernel_pick()
            if port not in self._given:
                self._given.add(port)
                return port
        raise RuntimeError("no free port found after 100 tries")

    def pick_many(self, n: int) -> list[int]:
        return [self.pick() for _ in range(n)]


@dataclass
class ErrorLog:
    """An nginx error log read by byte offsets, so each check sees its own slice."""

    path: Path

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def mark(self) -> int:
        """The current end of the log: pass it as `start` to read what follows."""
        return self.size()

    def read(self, start: int = 0, end: int | None = None) -> str:
        try:
            with self.path.open("rb") as f:
                f.seek(start)
                data = f.read() if end is None else f.read(max(0, end - start))
        except FileNotFoundError:
            return ""
        return data.decode("utf-8", errors="replace")

    def wait_for(
        self,
        predicate: Callable[[str], bool],
        deadline: float,
        start: int = 0,
    ) -> tuple[bool, str]:
        """Poll the log from `start` until predicate(text) or the monotonic deadline."""
        while True:
            text = self.read(start)
            if predicate(text):
                return True, text
            if time.monotonic() >= deadline:
                return False, text
            time.sleep(0.02)

    def wait_quiet(self, quiet: float = 0.05, limit: float = 0.5) -> None:
        """Wait until the log stops growing for `quiet` seconds (at most `limit`)."""
        end = time.monotonic() + limit
        size = self.size()
        stable_since = time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.02)
            now_size = self.size()
            if now_size != size:
                size, stable_since = now_size, time.monotonic()
            elif time.monotonic() - stable_since >= quiet:
                return


def summarize_log(text: str, max_lines: int = 150, max_line: int = 400) -> str:
    """The relevant part of an error log: non-debug lines, the last `max_lines`."""
    lines = [line for line in text.splitlines() if log_level(line) not in (None, "debug")]
    omitted = max(0, len(lines) - max_lines)
    lines = lines[-max_lines:]
    out = [line if len(line) <= max_line else line[:max_line] + " [...]" for line in lines]
    if omitted:
        out.insert(0, f"[... {omitted} earlier lines omitted ...]")
    return "\n".join(out)


def _children(pid: int) -> list[int]:
    """Pids of the processes whose parent is `pid` (Linux /proc)."""
    kids: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return kids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces, so split after ')'
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(entry))
    return kids


#: The readiness probe connects from this address, so its log lines are recognisable.
PROBE_SOURCE = "127.0.0.2"
_PROBE_LINE_RE = re.compile(r"client: " + re.escape(PROBE_SOURCE) + r", server: ")


_PROBE_ACCEPT_RE = re.compile(r" \*(\d+) accept: " + re.escape(PROBE_SOURCE) + ":")
_CONN_RE = re.compile(r"^\S+ \S+ \[\w+\] \d+#\d+: \*(\d+) ")


def is_probe_line(line: str) -> bool:
    """Whether `line` was logged for the harness's readiness probe connection."""
    return bool(_PROBE_LINE_RE.search(line) or _PROBE_ACCEPT_RE.search(line))


def without_probe_lines(text: str) -> str:
    """The log without the lines about the readiness probe's connections."""
    if PROBE_SOURCE not in text:
        return text
    probes = set(_PROBE_ACCEPT_RE.findall(text))
    out = []
    for line in text.splitlines(True):
        m = _CONN_RE.match(line)
        if (m and m.group(1) in probes) or is_probe_line(line):
            continue
        out.append(line)
    return "".join(out)


def _can_connect(host: str, port: int) -> bool:
    """A TCP connect from PROBE_SOURCE (or any source where that cannot be bound)."""
    for source in (PROBE_SOURCE, None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(0.5)
            if source:
                try:
                    sock.bind((source, 0))
                except OSError:
                    continue
            sock.connect((host, port))
            return True
        except OSError:
            return False
        finally:
            sock.close()
    return False


@dataclass
class NginxServer:
    """One nginx process tree with its own servroot.

    Either give the parts of a generated config (`config`, `http_config`,
    `main_config`, `workers`...) or a complete `conf_text` (then `port` is required,
    and the config should log to `<servroot>/logs/error.log` and write its pid to
    `<servroot>/logs/nginx.pid` for the readiness check and log helpers to work).
    """

    servroot: Path
    config: str = ""
    http_config: str = ""
    main_config: str = ""
    conf_text: str | None = None
    port: int = 0
    workers: int = 1
    master_process: bool | None = None
    binary: NginxBinary | None = None
    repo: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    title: str = ""
    error_log_level: str = "debug"
    start_timeout: float = START_TIMEOUT
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.servroot = Path(self.servroot).resolve()
        if self.repo is None:
            self.repo = default_repo()

    # -- configuration ------------------------------------------------------------
    @property
    def parts(self) -> ConfParts:
        binary = self.binary or find_nginx()
        return ConfParts(
            servroot=self.servroot,
            port=self.port,
            repo=Path(self.repo or default_repo()),
            main_config=self.main_config,
            http_config=self.http_config,
            config=self.config,
            workers=self.workers,
            master_process=self.master_process,
            modules=binary.modules,
            env=env_names(extra=list(self.env)),
            title=self.title,
            error_log_level=self.error_log_level,
        )

    @property
    def conf_path(self) -> Path:
        return self.servroot / "conf" / "nginx.conf"

    @property
    def pid_path(self) -> Path:
        return self.servroot / "logs" / "nginx.pid"

    @property
    def error_log(self) -> ErrorLog:
        return ErrorLog(self.servroot / "logs" / "error.log")

    @property
    def stderr_path(self) -> Path:
        return self.servroot / "logs" / "stderr.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def master(self) -> bool:
        return self.workers > 1 if self.master_process is None else self.master_process

    def error_log_text(self, start: int = 0) -> str:
        return self.error_log.read(start)

    def render(self) -> str:
        """The nginx.conf this server runs with."""
        if self.conf_text is not None:
            return self.conf_text
        return self.parts.render()

    # -- life cycle ---------------------------------------------------------------
    def start(self, picker: PortPicker | None = None) -> NginxServer:
        """Write the config, start nginx and wait until it accepts connections.

        Raises NginxStartError (with the error log) when nginx exits or is not
        ready within `start_timeout`; `.address_in_use` tells a port race.
        """
        if self.binary is None:
            self.binary = find_nginx()
        if not self.port:
            if self.conf_text is not None:
                raise ValueError("NginxServer: conf_text needs an explicit port")
            self.port = (picker or PortPicker()).pick()
        for sub in ("conf", "logs", "html"):
            (self.servroot / sub).mkdir(parents=True, exist_ok=True)
        if self.conf_text is None:
            self.parts.make_dirs()
        self.conf_path.write_text(self.render())
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        env = dict(os.environ)
        env.update(self.env)
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [self.binary.path, "-p", f"{self.servroot}/", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stderr_text(self) -> str:
        """What nginx wrote to stderr (errors before the error_log is open)."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _startup_text(self) -> str:
        return (self.stderr_text() + "\n" + self.error_log.read()).strip()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        want_workers = self.workers if self.master else 0
        pid_ok = connect_ok = False
        while True:
            code = self.proc.poll()
            if code is not None:
                text = self._startup_text()
                emerg = re.search(r"\[emerg\] \d+#\d+: (.*)", text)
                why = f": {emerg.group(1)}" if emerg else ""
                raise NginxStartError(
                    f"nginx exited with status {code} while starting{why}",
                    log=text,
                    address_in_use="Address already in use" in text,
                )
            if not pid_ok:
                try:
                    pid_ok = self.pid_path.read_text().strip() == str(self.proc.pid)
                except (FileNotFoundError, ValueError):
                    pid_ok = False
                if self.conf_text is not None and not pid_ok:
                    # a hand-written config may put its pid file elsewhere
                    pid_ok = "pid " not in self.conf_text
            if pid_ok and not connect_ok:
                connect_ok = _can_connect("127.0.0.1", self.port)
            if pid_ok and connect_ok and self._workers_up(want_workers):
                return
            if not connect_ok and "Address already in use" in self._startup_text():
                # nginx retries bind() for 2.5 s before it gives up: no need to wait
                raise NginxStartError(
                    "nginx cannot bind its ports", log=self._startup_text(), address_in_use=True
                )
            if time.monotonic() >= deadline:
                raise NginxStartError(
                    f"nginx not ready after {self.start_timeout:g}s "
                    f"(pid file: {'ok' if pid_ok else 'missing'}, "
                    f"connect to port {self.port}: {'ok' if connect_ok else 'refused'}, "
                    f"workers: {len(self.worker_pids())}/{want_workers})",
                    log=self._startup_text(),
                )
            time.sleep(POLL_INTERVAL)

    def _workers_up(self, want: int) -> bool:
        if want == 0:
            return True
        if os.path.isdir("/proc"):
            return len(self.worker_pids()) >= want
        # no /proc: the master logs one line per worker it forks
        return self.error_log.read().count("start worker process ") >= want

    def worker_pids(self) -> list[int]:
        """Pids of the worker processes (the master's children), [] without master."""
        if self.proc is None or not self.master:
            return []
        pids = []
        for pid in _children(self.proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if b"worker process" in cmdline:
                pids.append(pid)
        return pids

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 0.3) -> None:
        """SIGQUIT (graceful), then SIGTERM, then SIGKILL to the whole process group."""
        proc = self.proc
        if proc is None:
            return
        steps: Iterable[tuple[signal.Signals, float]] = (
            (signal.SIGQUIT, grace),
            (signal.SIGTERM, 3.0),
            (signal.SIGKILL, 3.0),
        )
        for sig, wait in steps:
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGKILL:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)
        # workers left behind by a killed master would keep the port
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> NginxServer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def default_repo() -> Path:
    """The zedcup checkout: $TEST_NGINX_REPO, else the one holding this package."""
    env = os.environ.get("TEST_NGINX_REPO")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "lua" / "zedcup").is_dir():
            return parent
    return Path.cwd()
