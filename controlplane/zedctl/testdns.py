"""A DNS server on loopback for tests, whose records live in files the tests change.

Records directory: one file per name (lower case, no final dot), read on every query,
one directive a line::

    A 127.0.0.2        an A record (repeatable)
    AAAA ::1           an AAAA record (repeatable)
    TTL 2              the TTL of every record of the name (default 1)
    SERVFAIL           answer "server failure"
    DROP               answer nothing (the client times out)

A name without a file answers NXDOMAIN. Every query is appended to `<name>.queries`
(one line: its type), so tests can count lookups. UDP only, on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord


class TestDNS:
    """`TestDNS(directory).start()`; `.port`; `.set(name, "A 1.2.3.4", ttl=1)`; `.stop()`."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.port = int(self.sock.getsockname()[1])
        self.sock.settimeout(0.05)  # closing a socket does not wake a blocked recvfrom
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    def start(self) -> TestDNS:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sock.close()

    def __enter__(self) -> TestDNS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ records

    def set(self, name: str, *lines: str, ttl: int = 1) -> None:
        """Replace the records of `name` (atomically: a query sees old or new)."""
        path = self.directory / name.lower().rstrip(".")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in (*lines, f"TTL {ttl}")))
        tmp.replace(path)

    def remove(self, name: str) -> None:
        (self.directory / name.lower().rstrip(".")).unlink(missing_ok=True)

    def queries(self, name: str) -> int:
        path = self.directory / (name.lower().rstrip(".") + ".queries")
        try:
            return len(path.read_text().splitlines())
        except FileNotFoundError:
            return 0

    # ------------------------------------------------------------ serving

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self._answer(data)
            except Exception:  # a malformed query gets no answer, the server lives on
                continue
            if reply is not None:
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    return

    def _answer(self, data: bytes) -> bytes | None:
        query = DNSRecord.parse(data)
        qname = str(query.q.qname).rstrip(".").lower()
        qtype = QTYPE[query.q.qtype]
        if "/" in qname or qname.startswith("."):
            return None
        with (self.directory / f"{qname}.queries").open("a") as log:
            log.write(f"{qtype}\n")
        reply = query.reply()
        try:
            lines = (self.directory / qname).read_text().splitlines()
        except (FileNotFoundError, IsADirectoryError):
            reply.header.rcode = RCODE.NXDOMAIN
            return reply.pack()
        words = [line.split() for line in lines if line.strip()]
        ttl = 1
        for w in words:
            if w[0].upper() == "TTL":
                ttl = int(w[1])
            elif w[0].upper() == "DROP":
                return None
            elif w[0].upper() == "SERVFAIL":
                reply.header.rcode = RCODE.SERVFAIL
                return reply.pack()
        for w in words:
            kind = w[0].upper()
            if kind == "A" and qtype == "A":
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(w[1]), ttl=ttl))
            elif kind == "AAAA" and qtype == "AAAA":
                reply.add_answer(RR(query.q.qname, QTYPE.AAAA, rdata=AAAA(w[1]), ttl=ttl))
        return reply.pack()
