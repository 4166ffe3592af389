"""Running one block: variables, nginx node(s), the request and every check."""

from __future__ import annotations

import difflib
import re
import shutil
import time
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from .client import HttpResponse, RequestSpec, exchange, parse_headers, parse_responses
from .config import NginxBinary
from .parser import Block, regex_of, substitute
from .runner import (
    NginxServer,
    NginxStartError,
    PortPicker,
    is_lifecycle_line,
    log_level,
    severe_lines,
    summarize_log,
    without_probe_lines,
)

if TYPE_CHECKING:
    from ..testdns import TestDNS

PORT_RETRIES = 3
DEFAULT_TIMEOUT = 5.0


class BlockFailure(AssertionError):
    """A block failed: the messages plus what a reader needs to see why."""

    def __init__(
        self,
        failures: list[str],
        confs: list[tuple[str, str]] | None = None,
        logs: list[tuple[str, str]] | None = None,
        responses: list[HttpResponse] | None = None,
    ) -> None:
        super().__init__("\n".join(failures))
        self.failures = failures
        self.confs = confs or []
        self.logs = logs or []
        self.responses = responses or []

    def report(self) -> str:
        n = len(self.failures)
        first = self.failures[0].splitlines()[0] if self.failures else "?"
        out = [f"{first}" if n == 1 else f"{n} checks failed; first: {first}", ""]
        for f in self.failures:
            lines = f.splitlines() or [""]
            out.append(f"  - {lines[0]}")
            out += [f"      {line}" for line in lines[1:]]
        for i, resp in enumerate(self.responses, 1):
            label = f"response {i}" if len(self.responses) > 1 else "response"
            out += ["", f"----- {label} -----", resp.describe()]
        for label, text in self.confs:
            numbered = "\n".join(f"{n:4d}  {line}" for n, line in enumerate(text.splitlines(), 1))
            out += ["", f"----- {label} -----", numbered]
        for label, text in self.logs:
            out += ["", f"----- {label} -----", text or "(empty)"]
        return "\n".join(out)


@dataclass
class Consul:
    """Where the block's Consul is: what `$TEST_NGINX_CONSUL_*` expand to."""

    host: str
    port: int
    token: str | None = None
    scheme: str = "http"

    def delete_tree(self, prefix: str) -> str | None:
        """Delete every key under `prefix/`; returns the error, None when done."""
        url = f"{self.scheme}://{self.host}:{self.port}/v1/kv/{quote(prefix)}/?recurse"
        req = urllib.request.Request(url, method="DELETE")
        if self.token:
            req.add_header("X-Consul-Token", self.token)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
        except (OSError, ValueError) as err:
            return f"DELETE {url}: {err}"
        return None


@dataclass
class BlockRun:
    """Everything needed to run one block; `run()` raises BlockFailure."""

    block: Block
    binary: NginxBinary
    tmp: Path
    repo: Path
    picker: PortPicker = field(default_factory=PortPicker)
    consul: Consul | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    servers: list[NginxServer] = field(default_factory=list)
    variables: list[dict[str, str]] = field(default_factory=list)
    dns: TestDNS | None = None  # the block's zedctl.testdns.TestDNS, when it uses $TEST_NGINX_DNS_*

    # -- variables ----------------------------------------------------------------
    def make_variables(self, nodes: int) -> list[dict[str, str]]:
        """One variable map per node, with fresh ports and a fresh key prefix."""
        common = {
            k: v for k, v in self.env.items() if k.startswith(("TEST_NGINX_", "TEST_ZEDCUP_"))
        }
        node_ports = self.picker.pick_many(nodes)
        rand_ports = self.picker.pick_many(self.block.rand_ports())
        common.update(
            {
                "TEST_NGINX_REPO": str(self.repo),
                "TEST_ZEDCUP_PREFIX": f"zt/{uuid.uuid4().hex[:8]}",
            }
        )
        if self.consul is not None:
            common["TEST_NGINX_CONSUL_HOST"] = self.consul.host
            common["TEST_NGINX_CONSUL_PORT"] = str(self.consul.port)
            common["TEST_NGINX_CONSUL_TOKEN"] = self.consul.token or ""
        if self.block.needs_dns:
            if self.dns is None:
                from ..testdns import TestDNS

                self.dns = TestDNS(self.tmp / "dns").start()
            common["TEST_NGINX_DNS_PORT"] = str(self.dns.port)
            common["TEST_NGINX_DNS_DIR"] = str(self.dns.directory)
        for i, port in enumerate(rand_ports, 1):
            common[f"TEST_NGINX_RAND_PORT_{i}"] = str(port)
        for i, port in enumerate(node_ports, 1):
            common[f"TEST_NGINX_NODE_PORT_{i}"] = str(port)
        out = []
        for i, port in enumerate(node_ports, 1):
            servroot = self.servroot(i, nodes)
            v = dict(common)
            v.update(
                {
                    "TEST_NGINX_SERVER_PORT": str(port),
                    "TEST_NGINX_NODE": str(i),
                    "TEST_NGINX_SERVROOT": str(servroot),
                    "TEST_NGINX_HTML_DIR": str(servroot / "html"),
                }
            )
            out.append(v)
        return out

    def servroot(self, node: int, nodes: int) -> Path:
        return self.tmp / ("servroot" if nodes == 1 else f"node{node}")

    def value(self, name: str, node: int = 0) -> str | None:
        """Section `name` with variables substituted (those of `node`, 0-based)."""
        raw = self.block.get(name)
        if raw is None:
            return None
        try:
            return substitute(raw, self.variables[node], where=f"section {name!r}")
        except KeyError as err:
            raise self.block.error(str(err.args[0]), name) from None

    # -- nginx --------------------------------------------------------------------
    def start(self) -> None:
        block = self.block
        nodes = block.int_value("nodes", 1, minimum=1)
        workers = block.int_value("workers", 1, minimum=1)
        last_error: NginxStartError | None = None
        for _attempt in range(PORT_RETRIES):
            self.variables = self.make_variables(nodes)
            self.servers = []
            try:
                for i in range(nodes):
                    v = self.variables[i]
                    title = block.title if nodes == 1 else f"{block.title} (node {i + 1})"
                    server = NginxServer(
                        servroot=Path(v["TEST_NGINX_SERVROOT"]),
                        config=self.value("config", i) or "",
                        http_config=self.value("http_config", i) or "",
                        main_config=self.value("main_config", i) or "",
                        port=int(v["TEST_NGINX_SERVER_PORT"]),
                        workers=workers,
                        master_process=workers > 1,
                        binary=self.binary,
                        repo=self.repo,
                        env=v,
                        title=title,
                    )
                    self.servers.append(server)
                    server.start()
                return
            except NginxStartError as err:
                self.stop()
                if not err.address_in_use:
                    raise self.failure([f"{err}"]) from None
                last_error = err
                # the next try starts from clean servroots (no stale [emerg] in the logs)
                for server in self.servers:
                    shutil.rmtree(server.servroot, ignore_errors=True)
        assert last_error is not None
        raise self.failure(
            [f"{last_error} (address already in use, {PORT_RETRIES} tries with new ports)"],
            startup_log=last_error.log,  # the servroots are gone: show what nginx said
        )

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    # -- reporting ----------------------------------------------------------------
    def failure(
        self,
        failures: list[str],
        responses: list[HttpResponse] | None = None,
        startup_log: str | None = None,
    ) -> BlockFailure:
        confs = []
        logs = []
        many = len(self.servers) > 1
        for i, server in enumerate(self.servers, 1):
            label = f"node {i}, " if many else ""
            confs.append(
                (f"nginx.conf ({label}port {server.port}): {server.conf_path}", server.render())
            )
            text = without_probe_lines(server.error_log_text())
            logs.append(
                (
                    f"error.log ({label}non-debug lines; full log: {server.error_log.path})",
                    summarize_log(text),
                )
            )
            stderr = server.stderr_text().strip()
            if stderr:
                logs.append((f"nginx stderr ({label}{server.stderr_path})", stderr[-4000:]))
        if startup_log is not None:
            logs.append(("nginx startup output", summarize_log(startup_log, max_lines=80)))
        return BlockFailure(failures, confs, logs, responses)

    # -- the request --------------------------------------------------------------
    def requests(self) -> list[RequestSpec]:
        more = self.value("more_headers")
        try:
            headers = parse_headers(more) if more else []
        except ValueError as err:
            raise self.block.error(str(err), "more_headers") from None
        request = self.value("request")
        if request is not None:
            try:
                return [RequestSpec.parse(request, headers)]
            except ValueError as err:
                raise self.block.error(str(err), "request") from None
        pipelined = self.value("pipelined_requests")
        if pipelined is not None:
            specs = []
            for line in pipelined.splitlines():
                if line.strip():
                    try:
                        specs.append(RequestSpec.parse(line, headers))
                    except ValueError as err:
                        raise self.block.error(str(err), "pipelined_requests") from None
            return specs
        return []

    def send(self, timeout: float) -> tuple[list[HttpResponse], str | None]:
        specs = self.requests()
        if not specs:
            return [], None
        data = b"".join(
            spec.encode("localhost", keepalive=i < len(specs) - 1) for i, spec in enumerate(specs)
        )
        raw, error = exchange("127.0.0.1", self.servers[0].port, data, timeout)
        responses = parse_responses(raw, [s.method for s in specs])
        return responses, error

    # -- checks -------------------------------------------------------------------
    def check_responses(self, responses: list[HttpResponse], error: str | None) -> list[str]:
        block = self.block
        failures: list[str] = []
        aborted = error is not None and "abort" in block
        if error and not aborted:
            failures.append(f"request failed: {error}")
        for i, resp in enumerate(responses, 1):
            label = f"response {i}: " if len(responses) > 1 else ""
            if resp.problem and not aborted:
                failures.append(f"{label}{resp.problem}")
        codes_text = self.value("error_code")
        codes = (codes_text or "200").split()
        for i, resp in enumerate(responses):
            label = f"response {i + 1}: " if len(responses) > 1 else ""
            want = codes[min(i, len(codes) - 1)]
            if resp.status == 0:
                continue  # reported above as the response's problem
            if str(resp.status) != want:
                failures.append(f"{label}status {resp.status}, expected {want}")
        body = "".join(r.text for r in responses)
        expected = self.value("response_body")
        if expected is not None and body != expected:
            failures.append(f"response_body differs:\n{_diff(expected, body)}")
        like = self.value("response_body_like")
        if like is not None and not re.search(regex_of(like), body, re.MULTILINE | re.DOTALL):
            failures.append(f"response_body_like {regex_of(like)!r} does not match body {body!r}")
        headers = self.value("response_headers")
        if headers is not None:
            failures += self.check_headers(headers, responses)
        return failures

    def check_headers(self, text: str, responses: list[HttpResponse]) -> list[str]:
        failures: list[str] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            for i, resp in enumerate(responses):
                label = f"response {i + 1}: " if len(responses) > 1 else ""
                if resp.status == 0:
                    continue
                if line.startswith("!"):
                    name = line[1:].strip()
                    if resp.header_values(name):
                        failures.append(
                            f"{label}header {name} present ({resp.header(name)!r}), expected absent"
                        )
                    continue
                name, sep, want = line.partition(":")
                if not sep:
                    raise self.block.error(
                        f"expected 'Name: value' or '!Name', got {line!r}", "response_headers"
                    )
                name, want = name.strip(), want.strip()
                values = resp.header_values(name)
                if not values:
                    failures.append(f"{label}header {name} missing, expected {want!r}")
                elif want not in values and resp.header(name) != want:
                    failures.append(
                        f"{label}header {name} is {resp.header(name)!r}, expected {want!r}"
                    )
        return failures

    def log_texts(self) -> list[str]:
        """Each node's error log, without the lines of the harness's readiness probe."""
        return [without_probe_lines(server.error_log_text()) for server in self.servers]

    def _needles(self, name: str) -> list[str]:
        value = self.value(name)
        return [line for line in (value or "").splitlines() if line.strip()]

    def _matches(self, needle: str, text: str, regex: bool) -> bool:
        return bool(re.search(needle, text, re.MULTILINE)) if regex else needle in text

    def check_logs(self, deadline: float) -> list[str]:
        block = self.block
        failures: list[str] = []
        wanted = self._needles("error_log")
        wanted_re = "error_log" in block and block.sections["error_log"].is_regex

        def all_found(_: str) -> bool:
            texts = self.log_texts()
            return all(any(self._matches(n, t, wanted_re) for t in texts) for n in wanted)

        if wanted:
            found, _ = self.servers[0].error_log.wait_for(all_found, deadline)
            if not found:
                texts = self.log_texts()
                for n in wanted:
                    if not any(self._matches(n, t, wanted_re) for t in texts):
                        failures.append(f"error_log: {n!r} not found in the error log")

        if "grep_error_log" in block:
            expected = self.value("grep_error_log_out")
            got = self.grep()
            if expected is not None:
                found, _ = self.servers[0].error_log.wait_for(
                    lambda _: self.grep() == expected, deadline
                )
                got = self.grep()
                if not found:
                    failures.append(f"grep_error_log_out differs:\n{_diff(expected, got)}")

        # let the tail of the request (log phase, timers started by it) reach the log
        for server in self.servers:
            server.error_log.wait_quiet()
        texts = self.log_texts()
        unwanted = self._needles("no_error_log")
        unwanted_re = "no_error_log" in block and block.sections["no_error_log"].is_regex
        for n in unwanted:
            for node, text in enumerate(texts, 1):
                hits = [
                    line
                    for line in text.splitlines()
                    if self._matches(n, line, unwanted_re) and not is_lifecycle_line(line)
                ]
                if hits:
                    where = f" (node {node})" if len(texts) > 1 else ""
                    failures.append(
                        f"no_error_log: {n!r} found in the error log{where}: {hits[0][:300]!r}"
                    )
        for node, text in enumerate(texts, 1):
            for line in severe_lines(text):
                if not any(self._matches(n, line, wanted_re) for n in wanted):
                    where = f" (node {node})" if len(texts) > 1 else ""
                    level = log_level(line)
                    failures.append(
                        f"unexpected [{level}] in the error log{where} "
                        f"(list it in error_log if expected): {line[:300]!r}"
                    )
                    break
        return failures

    def grep(self) -> str:
        """The grep_error_log matches over all nodes' logs, one per line."""
        section = self.block.sections["grep_error_log"]
        pattern = (self.value("grep_error_log") or "").rstrip("\n")
        regex = re.compile(pattern if section.is_regex else re.escape(pattern))
        out = []
        for text in self.log_texts():
            for line in text.splitlines():
                out += [m.group(0) for m in regex.finditer(line)]
        return "".join(m + "\n" for m in out)

    # -- the whole block ----------------------------------------------------------
    def run(self) -> None:
        block = self.block
        timeout = block.seconds_value("timeout", DEFAULT_TIMEOUT)
        self.start()
        try:
            responses, error = self.send(timeout)
            failures = self.check_responses(responses, error)
            wait = block.seconds_value("wait", 0.0)
            if wait:
                time.sleep(wait)
            failures += self.check_logs(time.monotonic() + timeout)
            dead = [i + 1 for i, s in enumerate(self.servers) if not s.running]
            if dead:
                failures.append(f"nginx exited during the block (node {dead})")
            if failures:
                raise self.failure(failures, responses)
        finally:
            self.stop()
            if self.dns is not None:
                self.dns.stop()
            # the block's keys go with it (they would pile up in an external Consul)
            if self.consul is not None and self.variables:
                self.consul.delete_tree(self.variables[0]["TEST_ZEDCUP_PREFIX"])


def _diff(expected: str, got: str) -> str:
    lines = difflib.unified_diff(
        expected.splitlines(True),
        got.splitlines(True),
        fromfile="expected",
        tofile="got",
        lineterm="",
    )
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    if len(expected) + len(got) < 2000 or not text:
        text += f"expected {expected!r}\n     got {got!r}"
    return text
