"""A raw-socket HTTP/1.x client that notices truncated bodies."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class HttpResponse:
    """One parsed response. `problem` says why it is incomplete, None when whole."""

    status: int
    reason: str = ""
    version: str = "HTTP/1.1"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    problem: str | None = None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return ", ".join(values) if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def describe(self, max_body: int = 2000) -> str:
        if self.status == 0:
            return f"(no response: {self.problem})"
        lines = [f"{self.version} {self.status} {self.reason}".rstrip()]
        lines += [f"{k}: {v}" for k, v in self.headers]
        body = self.text
        if len(body) > max_body:
            body = body[:max_body] + f"\n[... {len(self.body) - max_body} more bytes ...]"
        lines += ["", body]
        if self.problem:
            lines.append(f"[incomplete: {self.problem}]")
        return "\n".join(lines)


@dataclass
class RequestSpec:
    """A request to send: `METHOD URI [VERSION]`, headers and a body."""

    method: str = "GET"
    uri: str = "/"
    version: str = "HTTP/1.1"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def parse(cls, text: str, headers: Sequence[tuple[str, str]] = ()) -> RequestSpec:
        """From a `request` section: first line `METHOD URI [VERSION]`, then the body.

        The body is the remaining lines without the final newline the section format
        adds (`--- request chomp` makes no difference there).
        """
        first, _, rest = text.partition("\n")
        words = first.split()
        if len(words) < 2 or len(words) > 3:
            raise ValueError(f"request line must be 'METHOD URI [VERSION]', got {first!r}")
        version = words[2] if len(words) == 3 else "HTTP/1.1"
        body = rest[:-1] if rest.endswith("\n") else rest
        return cls(words[0], words[1], version, list(headers), body.encode())

    def encode(self, host: str, keepalive: bool = False) -> bytes:
        names = {k.lower() for k, _ in self.headers}
        head = [f"{self.method} {self.uri} {self.version}"]
        if self.version != "HTTP/0.9":
            if "host" not in names:
                head.append(f"Host: {host}")
            if "connection" not in names:
                head.append("Connection: " + ("keep-alive" if keepalive else "close"))
            if (self.body or self.method in ("POST", "PUT", "PATCH")) and not (
                names & {"content-length", "transfer-encoding"}
            ):
                head.append(f"Content-Length: {len(self.body)}")
            head += [f"{k}: {v}" for k, v in self.headers]
            return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body
        return (head[0] + "\r\n").encode()


def parse_headers(text: str) -> list[tuple[str, str]]:
    """`Name: value` lines (blank lines skipped) into a list of pairs."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"header line must be 'Name: value', got {line!r}")
        out.append((name.strip(), value.strip()))
    return out


def exchange(host: str, port: int, data: bytes, timeout: float) -> tuple[bytes, str | None]:
    """Send `data`, read until the server closes. Returns (bytes, error or None)."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        return b"", f"connect to {host}:{port} failed: {err}"
    with sock:
        try:
            sock.sendall(data)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return b"".join(chunks), f"timeout after {timeout:g}s"
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    return b"".join(chunks), None
                chunks.append(chunk)
        except socket.timeout:
            return b"".join(chunks), f"timeout after {timeout:g}s"
        except OSError as err:
            return b"".join(chunks), f"socket error: {err}"


def _read_chunked(data: bytes, pos: int) -> tuple[bytes, int, str | None]:
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return bytes(body), len(data), "truncated chunked body: no chunk size line"
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return bytes(body), len(data), f"bad chunk size {size_text!r}"
        pos = eol + 2
        if size == 0:
            # trailers up to an empty line
            end = data.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                return bytes(body), len(data), "truncated chunked body: no final CRLF"
            return bytes(body), end + 4, None
        if len(data) < pos + size + 2:
            body += data[pos : pos + size]
            return (
                bytes(body),
                len(data),
                f"truncated chunked body: chunk of {size} bytes, {len(data) - pos} received",
            )
        body += data[pos : pos + size]
        pos += size + 2


def parse_responses(data: bytes, methods: Sequence[str] = ("GET",)) -> list[HttpResponse]:
    """Split what a server sent into responses, one per request method in order.

    The last response may be delimited by the connection close. A response whose
    framing (Content-Length, chunked) is not complete gets a `problem`.
    """
    responses: list[HttpResponse] = []
    pos = 0
    index = 0
    while pos < len(data) or index < len(methods):
        method = methods[min(index, len(methods) - 1)] if methods else "GET"
        if pos >= len(data):
            if index < len(methods):
                responses.append(
                    HttpResponse(status=0, problem=f"no response to request {index + 1}")
                )
            break
        head_end = data.find(b"\r\n\r\n", pos)
        if head_end < 0:
            responses.append(
                HttpResponse(status=0, problem="truncated response header", body=data[pos:])
            )
            break
        head = data[pos:head_end].decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            responses.append(HttpResponse(status=0, problem=f"bad status line {status_line!r}"))
            break
        headers = []
        for line in header_lines:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        resp = HttpResponse(
            status=status,
            reason=parts[2] if len(parts) > 2 else "",
            version=parts[0],
            headers=headers,
        )
        pos = head_end + 4
        if 100 <= status < 200:
            continue  # interim response: the real one follows
        te = (resp.header("Transfer-Encoding") or "").lower()
        cl = resp.header_values("Content-Length")
        if method == "HEAD" or status in (204, 304):
            pass
        elif "chunked" in te:
            resp.body, pos, resp.problem = _read_chunked(data, pos)
        elif cl:
            try:
                length = int(cl[0])
            except ValueError:
                length = -1
            if length < 0:
                resp.problem = f"bad Content-Length {cl[0]!r}"
                resp.body, pos = data[pos:], len(data)
            else:
                resp.body = data[pos : pos + length]
                if len(resp.body) < length:
                    resp.problem = (
                        f"truncated body: Content-Length {length}, {len(resp.body)} bytes received"
                    )
                pos = min(len(data), pos + length)
        else:
            resp.body, pos = data[pos:], len(data)
        responses.append(resp)
        index += 1
    return responses


def http_request(
    port: int,
    method: str = "GET",
    uri: str = "/",
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | str = b"",
    host: str = "127.0.0.1",
    timeout: float = 5.0,
) -> HttpResponse:
    """One request on a fresh connection (`Connection: close`); never raises on HTTP."""
    spec = RequestSpec(
        method, uri, "HTTP/1.1", list(headers), body.encode() if isinstance(body, str) else body
    )
    data, error = exchange(host, port, spec.encode("localhost"), timeout)
    responses = parse_responses(data, [method])
    resp = responses[0] if responses else HttpResponse(status=0, problem="no response")
    if error and not resp.problem:
        resp.problem = error
    elif error:
        resp.problem = f"{resp.problem} ({error})"
    return resp
