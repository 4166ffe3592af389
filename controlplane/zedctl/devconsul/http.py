"""HTTP front end of dev-consul: parses requests the way Consul's agent does and answers
with Consul's status codes, headers and JSON shapes. State lives in store.Store."""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import json
import random
import re
import select
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from .durations import MINUTE, SECOND, DurationError, parse_duration
from .store import (
    DATACENTER,
    DEFAULT_LOCK_DELAY,
    MAX_TXN_OPS,
    MAX_VALUE_SIZE,
    WRITE_VERBS,
    Entry,
    Session,
    SessionNotFound,
    Store,
    StoreError,
    TxnConflict,
    TxnOp,
)

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
DEFAULT_WAIT = 5 * MINUTE
MAX_WAIT = 10 * MINUTE
JITTER_FRACTION = 16
GZIP_MIN_SIZE = 1400  # gziphandler's DefaultMinSize, which Consul keeps
LEADER = "127.0.0.1:8300"
UI_DISABLED = (
    "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent "
    "configuration and restart."
)
VERSION = "1.16.0"
# Bodies larger than this are not drained after a 413: the connection is closed.
MAX_DRAIN = 64 * 1024 * 1024
_UINT = re.compile(r"[0-9]+")
_UINT64_MAX = (1 << 64) - 1
# A LockDelay below this many ns is a number of seconds (Consul's lockDelayMinThreshold).
LOCK_DELAY_SECONDS_BELOW = 1000
# Consul's txn_max_req_len (default: raft's suggested maximum entry size, 512 KiB).
MAX_TXN_BODY = 512 * 1024


class HTTPError(Exception):
    """Answer with `status` and a plain-text body (Consul's error style)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str | None = JSON_TYPE
    index: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    gzip: bool = True  # answered through Consul's gzip wrapper (not before the mux)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    raw_query: list[tuple[str, str]]
    headers: Any
    body: bytes
    alive: Callable[[], bool] | None = None  # is the client still connected?
    query_string: str = ""  # as sent, for redirects


def go_json(value: Any, pretty: bool = False) -> bytes:
    """Encode like Go's encoding/json: compact, UTF-8, with <, >, & escaped."""
    if pretty:
        text = json.dumps(value, ensure_ascii=False, indent=4) + "\n"
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, esc)
    return text.encode("utf-8")


def go_parse_uint(text: str) -> int:
    """strconv.ParseUint(text, 10, 64), with Go's error message."""
    if not _UINT.fullmatch(text):
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    value = int(text)
    if value > _UINT64_MAX:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


def entry_json(entry: Entry, with_value: bool = True) -> dict[str, Any]:
    value = None
    if with_value and entry.value:
        value = base64.b64encode(entry.value).decode("ascii")
    out: dict[str, Any] = {
        "LockIndex": entry.lock_index,
        "Key": entry.key,
        "Flags": entry.flags,
        "Value": value,
    }
    if entry.session:
        out["Session"] = entry.session
    out["CreateIndex"] = entry.create_index
    out["ModifyIndex"] = entry.modify_index
    return out


def session_json(sess: Session) -> dict[str, Any]:
    return {
        "ID": sess.id,
        "Name": sess.name,
        "Node": sess.node,
        "LockDelay": sess.lock_delay,
        "Behavior": sess.behavior,
        "TTL": sess.ttl,
        "NodeChecks": sess.node_checks,
        "ServiceChecks": sess.service_checks,
        "CreateIndex": sess.create_index,
        "ModifyIndex": sess.modify_index,
    }


def _fold(obj: dict[str, Any]) -> dict[str, Any]:
    """Field names matched case-insensitively, as Go's JSON decoder does."""
    return {str(k).lower(): v for k, v in obj.items()}


class Api:
    """Consul's HTTP API over a Store; one method per endpoint family."""

    def __init__(self, store: Store, acl_token: str | None = None) -> None:
        from .catalog_http import CatalogEndpoints  # it builds on this module's types

        self.store = store
        self.acl_token = acl_token
        self._catalog_routes = CatalogEndpoints(self).routes()

    # ------------------------------------------------------------ dispatch

    def handle(self, req: Request, oversized: int = 0) -> Response:
        """Answer one request; `oversized` is the size of a KV body too big to keep."""
        try:
            early = self._path_check(req)
            if early is not None:
                return early
            if not go_query_ok(req.query_string):
                return Response(500, b"", None)  # Consul's "Failed to decode query"
            if req.method != "OPTIONS":  # Consul answers OPTIONS before any handler
                self._check_acl(req)
            dc = req.query.get("dc", "")
            if dc and dc != DATACENTER:
                raise HTTPError(500, "No path to datacenter")
            if oversized:
                req.body = b""
                if req.path == "/v1/txn":
                    raise HTTPError(413, txn_too_large(oversized))
                if req.path.startswith("/v1/kv/"):
                    self._kv_put_checks(req, req.path[len("/v1/kv/") :])
                raise HTTPError(413, too_large(oversized))
            return self._route(req)
        except HTTPError as err:
            resp = Response(err.status, err.message.encode("utf-8"), TEXT_TYPE)
            resp.headers.update(err.headers)
            return resp
        except StoreError as err:
            return Response(500, str(err).encode("utf-8"), TEXT_TYPE)

    def _check_acl(self, req: Request) -> None:
        if self.acl_token is None:
            return
        token = req.query.get("token", "")
        if not token:
            token = req.headers.get("X-Consul-Token", "") or ""
        if not token:
            token = bearer_token(req.headers.get("Authorization", "") or "")
        if not token:
            raise HTTPError(403, "Permission denied")
        if token != self.acl_token:
            raise HTTPError(403, "ACL not found")

    def _endpoints(self) -> dict[str, dict[str, Callable[..., Response]]]:
        """Consul's patterns for this subset, as registered on Go's ServeMux: a pattern
        ending in "/" is a subtree (the rest of the path is its argument), any other
        pattern matches exactly. Methods in Consul's order (the Allow header keeps it)."""
        return {
            "/v1/kv/": {"GET": self.kv_get, "PUT": self.kv_put, "DELETE": self.kv_delete},
            "/v1/txn": {"PUT": self.txn},
            "/v1/session/create": {"PUT": self.session_create},
            "/v1/session/destroy/": {"PUT": self.session_destroy},
            "/v1/session/renew/": {"PUT": self.session_renew},
            "/v1/session/info/": {"GET": self.session_info},
            "/v1/session/node/": {"GET": self.session_node},
            "/v1/session/list": {"GET": self.session_list},
            "/v1/status/leader": {"GET": self._simple(lambda r: LEADER)},
            "/v1/status/peers": {"GET": self._simple(lambda r: [LEADER])},
            "/v1/catalog/datacenters": {"GET": self._simple(lambda r: [DATACENTER])},
            "/v1/agent/self": {"GET": self._simple(self.agent_self)},
            **self._catalog_routes,
        }

    def _simple(self, fn: Callable[[Request], Any]) -> Callable[..., Response]:
        def answer(req: Request, arg: str = "") -> Response:
            return self._json(req, fn(req), index=self.store.current_index())

        return answer

    def _path_check(self, req: Request) -> Response | None:
        """What happens before Consul's handlers run: a path with unprintable characters
        is refused (400, empty body), and Go's ServeMux redirects (301) a path that is
        not clean (`//`, `.`, `..`) or that names a subtree without its slash."""
        path = req.path
        if not path.isprintable():
            return Response(400, b"", None, gzip=False)
        clean = go_clean_path(path)
        patterns = self._endpoints()
        if clean not in patterns and clean + "/" in patterns:
            clean += "/"
        if clean == path:
            return None
        location = quote(clean, safe="/:@!$&'()*+,;=-._~")
        if req.query_string:
            location += "?" + req.query_string
        resp = Response(301, b"", None, headers={"Location": location}, gzip=False)
        if req.method in ("GET", "HEAD"):
            resp.content_type = "text/html; charset=utf-8"
        if req.method == "GET":
            href = location.replace("&", "&amp;").replace('"', "&#34;")
            resp.body = f'<a href="{href}">Moved Permanently</a>.\n\n'.encode()
        return resp

    def _route(self, req: Request) -> Response:
        path = req.path
        patterns = self._endpoints()
        table = patterns.get(path)
        arg = ""
        if table is None:
            # The longest subtree pattern that prefixes the path, as ServeMux picks.
            for pattern in sorted(patterns, key=len, reverse=True):
                if pattern.endswith("/") and path.startswith(pattern):
                    table, arg = patterns[pattern], path[len(pattern) :]
                    break
        if table is None:
            if path == "/":  # Consul's index page, with the UI off
                return Response(200, UI_DISABLED.encode(), TEXT_TYPE)
            if "/v1/" in path:
                raise HTTPError(404, "Invalid URL path: not a recognized HTTP API endpoint\n")
            raise HTTPError(
                404,
                "Invalid URL path: if attempting to use the HTTP API, "
                "ensure the path starts with '/v1/'\n",
            )
        allow = ",".join(["OPTIONS", *table])
        if req.method == "OPTIONS":
            return Response(200, b"", None, headers={"Allow": allow})
        fn = table.get(req.method)
        if fn is None:
            raise HTTPError(405, f"method {req.method} not allowed", {"Allow": allow})
        return fn(req, arg)

    def _json(
        self, req: Request, value: Any, status: int = 200, index: int | None = None
    ) -> Response:
        return Response(status, go_json(value, "pretty" in req.query), JSON_TYPE, index)

    # ------------------------------------------------------------ blocking

    def _blocking(self, req: Request) -> tuple[int, float]:
        return blocking_params(req.query)

    # ------------------------------------------------------------ KV

    def kv_get(self, req: Request, key: str) -> Response:
        q = req.query
        min_index, timeout = self._blocking(req)
        if "keys" in q:
            sep = q.get("separator", q.get("seperator", ""))
            index, keys = self.store.block(
                "prefix", key, lambda: self.store.kv_keys(key, sep), min_index, timeout, req.alive
            )
            if not keys and key:
                return Response(404, b"", None, index)
            return self._json(req, keys, index=index)
        if "recurse" in q:
            index, entries = self.store.block(
                "prefix", key, lambda: self.store.kv_list(key), min_index, timeout, req.alive
            )
            if not entries:
                return Response(404, b"", None, index)
            return self._json(req, [entry_json(e) for e in entries], index=index)
        if not key:
            raise HTTPError(400, "Missing key name")
        index, entry = self.store.block(
            "key", key, lambda: self.store.kv_get(key), min_index, timeout, req.alive
        )
        if entry is None:
            return Response(404, b"", None, index)
        if "raw" in q:
            resp = Response(200, entry.value, "text/plain", index)
            resp.headers["X-Content-Type-Options"] = "nosniff"
            resp.headers["Content-Security-Policy"] = "sandbox"
            return resp
        return self._json(req, [entry_json(entry)], index=index)

    def _conflicting(self, req: Request, *names: str) -> None:
        if sum(1 for n in names if n in req.query) > 1:
            encoded = urlencode(sorted(req.raw_query, key=lambda kv: kv[0]))  # Go's Encode
            raise HTTPError(400, f"Conflicting flags: {encoded}")

    def _uint_param(self, req: Request, name: str) -> int:
        try:
            return go_parse_uint(req.query[name])
        except ValueError as err:
            raise HTTPError(500, str(err)) from None

    def _kv_put_checks(self, req: Request, key: str) -> tuple[int, int | None]:
        """What Consul checks before it looks at the body; answers (flags, cas)."""
        q = req.query
        if not key:
            raise HTTPError(400, "Missing key name")
        self._conflicting(req, "cas", "acquire", "release")
        flags = self._uint_param(req, "flags") if "flags" in q else 0
        cas = self._uint_param(req, "cas") if "cas" in q else None
        return flags, cas

    def kv_put(self, req: Request, key: str) -> Response:
        q = req.query
        flags, cas = self._kv_put_checks(req, key)
        body = req.body
        if len(body) > MAX_VALUE_SIZE:
            raise HTTPError(413, too_large(len(body)))
        if "acquire" in q:
            ok = self.store.kv_acquire(key, body, flags, q["acquire"])
        elif "release" in q:
            ok = self.store.kv_release(key, body, flags, q["release"])
        else:
            ok = self.store.kv_set(key, body, flags, cas)
        return self._json(req, ok)

    def kv_delete(self, req: Request, key: str) -> Response:
        q = req.query
        self._conflicting(req, "recurse", "cas")
        if "recurse" in q:
            return self._json(req, self.store.kv_delete_tree(key))
        if not key:
            raise HTTPError(400, "Missing key name")
        cas = self._uint_param(req, "cas") if "cas" in q else None
        return self._json(req, self.store.kv_delete(key, cas))

    # ------------------------------------------------------------ transactions

    def txn(self, req: Request, arg: str = "") -> Response:
        if len(req.body) > MAX_TXN_BODY:  # a chunked body (no Content-Length to check)
            raise HTTPError(413, txn_too_large())
        if not req.body.strip():
            raise HTTPError(400, "Failed to parse body: EOF")  # Go's decoder on no JSON
        try:
            raw = json.loads(req.body)
        except (ValueError, UnicodeDecodeError) as err:
            raise HTTPError(400, f"Failed to parse body: {err}") from None
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise HTTPError(
                400, "Failed to parse body: json: cannot unmarshal into a list of operations"
            )
        if len(raw) > MAX_TXN_OPS:
            raise HTTPError(
                413, f"Transaction contains too many operations ({len(raw)} > {MAX_TXN_OPS})"
            )
        ops = [self._txn_op(i, item) for i, item in enumerate(raw)]
        read_only = not any(op.verb in WRITE_VERBS for op in ops)
        if read_only:
            # Consul answers reads-only from the state store as a query: consistency
            # flags and wait are parsed (and refused as for any read), and the answer
            # carries the leader headers but no index (it cannot block).
            blocking_params(req.query)
        try:
            results = self.store.txn(ops)
        except TxnConflict as err:
            errors = [{"OpIndex": i, "What": what} for i, what in err.errors]
            resp = self._json(req, {"Results": None, "Errors": errors}, status=409)
        else:
            out = [{"KV": entry_json(r.entry, r.with_value)} for r in results]
            resp = self._json(req, {"Results": out, "Errors": None})
        if read_only:
            resp.headers["X-Consul-Knownleader"] = "true"
            resp.headers["X-Consul-Lastcontact"] = "0"
        return resp

    @staticmethod
    def _txn_op(i: int, item: Any) -> TxnOp:
        def bad(why: str) -> HTTPError:
            return HTTPError(400, f"Failed to parse body: operation {i}: {why}")

        if not isinstance(item, dict):
            raise bad("not an object")
        folded = _fold(item)
        kv = folded.get("kv")
        if not isinstance(kv, dict):
            raise bad("only KV operations are supported")
        kv = _fold(kv)
        verb = kv.get("verb") or ""
        key = kv.get("key") or ""
        value = kv.get("value")
        session = kv.get("session") or ""
        if not isinstance(verb, str) or not isinstance(key, str) or not isinstance(session, str):
            raise bad("Verb, Key and Session must be strings")
        if value is None:
            data = b""
        elif isinstance(value, str):
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise bad(f"Value of key {key!r} is not valid base64") from None
        else:
            raise bad("Value must be a base64 string")
        if len(data) > MAX_VALUE_SIZE:
            raise HTTPError(
                413, f'Value for key "{key}" is too large ({len(data)} > {MAX_VALUE_SIZE} bytes)'
            )
        nums = {}
        for name in ("flags", "index"):
            v = kv.get(name) or 0
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _UINT64_MAX:
                raise bad(f"{name.capitalize()} must be an unsigned integer, got {v!r}")
            nums[name] = v
        return TxnOp(verb, key, data, nums["flags"], nums["index"], session)

    # ------------------------------------------------------------ sessions

    def session_create(self, req: Request, arg: str = "") -> Response:
        fields: dict[str, Any] = {}
        if req.body.strip():
            try:
                raw = json.loads(req.body)
            except (ValueError, UnicodeDecodeError) as err:
                raise HTTPError(400, f"Request decode failed: {err}") from None
            if raw is not None and not isinstance(raw, dict):
                raise HTTPError(400, "Request decode failed: body must be a JSON object")
            fields = _fold(raw or {})

        def text(name: str) -> str:
            v = fields.get(name)
            if v is None:
                return ""
            if not isinstance(v, str):
                raise HTTPError(400, f"Request decode failed: {name} must be a string, got {v!r}")
            return v

        lock_delay = DEFAULT_LOCK_DELAY
        if fields.get("lockdelay") is not None:
            lock_delay = parse_lock_delay(fields["lockdelay"])
        node_checks = fields.get("nodechecks", fields.get("checks"))
        if node_checks is not None and (
            not isinstance(node_checks, list) or not all(isinstance(c, str) for c in node_checks)
        ):
            raise HTTPError(400, "Request decode failed: NodeChecks must be a list of strings")
        service_checks = fields.get("servicechecks")
        if service_checks is not None and not isinstance(service_checks, list):
            raise HTTPError(400, "Request decode failed: ServiceChecks must be a list")
        sess = self.store.session_create(
            name=text("name"),
            node=text("node") or None,
            lock_delay=lock_delay,
            behavior=text("behavior"),
            ttl=text("ttl"),
            node_checks=node_checks,
            service_checks=service_checks,
        )
        return self._json(req, {"ID": sess.id})

    def session_destroy(self, req: Request, sid: str = "") -> Response:
        if not sid:
            raise HTTPError(400, "Missing session")
        self.store.session_destroy(sid)
        return self._json(req, True)

    def session_renew(self, req: Request, sid: str = "") -> Response:
        if not sid:
            raise HTTPError(400, "Missing session")
        try:
            sess = self.store.session_renew(sid)
        except SessionNotFound:
            raise HTTPError(404, f"Session id '{sid}' not found") from None
        return self._json(req, [session_json(sess)])

    def session_info(self, req: Request, sid: str = "") -> Response:
        if not sid:
            raise HTTPError(400, "Missing session")
        min_index, timeout = self._blocking(req)
        index, sess = self.store.block(
            "session", "", lambda: self.store.session_get(sid), min_index, timeout, req.alive
        )
        return self._json(req, [session_json(sess)] if sess else [], index=index)

    def session_list(self, req: Request, arg: str = "") -> Response:
        min_index, timeout = self._blocking(req)
        index, sessions = self.store.block(
            "session", "", lambda: self.store.session_list(), min_index, timeout, req.alive
        )
        return self._json(req, [session_json(s) for s in sessions], index=index)

    def session_node(self, req: Request, node: str = "") -> Response:
        if not node:
            raise HTTPError(400, "Missing node name")
        min_index, timeout = self._blocking(req)
        index, sessions = self.store.block(
            "session", "", lambda: self.store.session_list(node), min_index, timeout, req.alive
        )
        return self._json(req, [session_json(s) for s in sessions], index=index)

    # ------------------------------------------------------------ agent

    def agent_self(self, req: Request) -> dict[str, Any]:
        node = self.store.node
        return {
            "Config": {
                "Datacenter": DATACENTER,
                "PrimaryDatacenter": DATACENTER,
                "NodeName": node,
                "NodeID": self.store.node_id,
                "Server": True,
                "Revision": "devconsul",
                "Version": VERSION,
            },
            "DebugConfig": {"Datacenter": DATACENTER, "NodeName": node, "DevMode": True},
            "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
            "Member": {
                "Name": node,
                "Addr": "127.0.0.1",
                "Port": 8301,
                "Tags": {"dc": DATACENTER, "role": "consul", "build": VERSION},
                "Status": 1,
            },
            "Meta": {"consul-network-segment": ""},
            "Stats": {"consul": {"leader": "true", "server": "true"}},
        }


def blocking_params(
    query: dict[str, str], rand: Callable[[], float] = random.random
) -> tuple[int, float]:
    """Parse `index` and `wait` (and the consistency flags) as Consul's agent does.

    Answers (min_index, timeout in seconds): wait defaults to 5m, is capped at 10m and
    gets up to wait/16 of random jitter. Raises HTTPError 400 on bad values.
    """
    if "stale" in query and "consistent" in query:
        raise HTTPError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
    wait = DEFAULT_WAIT
    if query.get("wait"):
        try:
            wait = parse_duration(query["wait"])
        except DurationError:
            raise HTTPError(400, "Invalid wait time") from None
    index = 0
    if query.get("index"):
        try:
            index = go_parse_uint(query["index"])
        except ValueError:
            raise HTTPError(400, "Invalid index") from None
    if wait > MAX_WAIT:
        wait = MAX_WAIT
    elif wait <= 0:
        wait = DEFAULT_WAIT
    wait += int(rand() * (wait // JITTER_FRACTION))
    return index, wait / SECOND


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def valid_escapes(text: str) -> bool:
    """Every % starts a two-digit hex escape (what Go's unescape insists on)."""
    return _BAD_ESCAPE.search(text) is None


def go_query_ok(query: str) -> bool:
    """Whether Go's url.ParseQuery accepts a query string: no `;` separators and no
    broken % escapes (Consul answers 500 for one it cannot parse)."""
    return ";" not in query and valid_escapes(query)


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header accepts gzip (a q-value above 0), as
    gziphandler reads it."""
    for coding in header.split(","):
        name, *params = coding.split(";")
        if name.strip().lower() != "gzip":
            continue
        q = 1.0
        for param in params:
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        return q > 0
    return False


def go_clean_path(path: str) -> str:
    """Go's ServeMux cleanPath: path.Clean (collapse `//`, drop `.`, resolve `..`),
    keeping a trailing slash."""
    if not path:
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    clean = "/" + "/".join(parts)
    if path.endswith("/") and clean != "/":
        clean += "/"
    return clean


def bearer_token(header: str) -> str:
    """The token of an `Authorization: Bearer <token>` header, split as Consul does:
    on single spaces, scheme case-insensitive, only the first word of the value."""
    parts = header.split(" ")
    if len(parts) < 2 or parts[0].lower() != "bearer":
        return ""
    value = " ".join(parts[1:]).strip()
    return value.split(" ")[0].strip()


TXN_LIMIT_DOC = "https://www.consul.io/docs/agent/config/config-files#txn_max_req_len"


def txn_too_large(size: int | None = None) -> str:
    """Consul's 413 text for a txn body over txn_max_req_len: with the size when the
    request said it (Content-Length), without for a chunked body."""
    body = "Request body" if size is None else f"Request body({size} bytes)"
    return f"{body} too large, max size: {MAX_TXN_BODY} bytes. See {TXN_LIMIT_DOC}."


def too_large(size: int) -> str:
    return (
        f"Request body({size} bytes) too large, max size: {MAX_VALUE_SIZE} bytes. "
        "See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
    )


def parse_lock_delay(value: Any) -> int:
    """LockDelay as Consul decodes it: a Go duration string or a number of ns, where
    anything below 1000 ns is taken as seconds (`5` and `"5ns"` both mean 5s). Answers
    nanoseconds, not capped: the 60s cap applies when the delay is enforced."""
    if isinstance(value, bool):
        raise HTTPError(400, f"Request decode failed: LockDelay {value!r} is not a duration")
    if isinstance(value, (int, float)):
        ns = int(value)
    elif isinstance(value, str):
        try:
            ns = parse_duration(value)
        except DurationError as err:
            raise HTTPError(400, f"Request decode failed: {err}") from None
    else:
        raise HTTPError(400, f"Request decode failed: LockDelay {value!r} is not a duration")
    return ns * SECOND if ns < LOCK_DELAY_SECONDS_BELOW else ns


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], api: Api) -> None:
        self.api = api
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        self.active = 0  # requests being answered right now
        self.idle = threading.Condition(self.conn_lock)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being answered (True) or `timeout` s pass (False)."""
        with self.idle:
            return self.idle.wait_for(lambda: self.active == 0, timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, OSError)):
            return
        print(f"dev-consul: error serving {client_address}: {exc!r}", file=sys.stderr)

    def close_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def version_string(self) -> str:
        return "dev-consul"

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and the CLI keep stderr for real problems

    def do_GET(self) -> None:
        self._serve()

    do_PUT = do_DELETE = do_POST = do_HEAD = do_OPTIONS = do_PATCH = do_GET

    def _read_body(self) -> tuple[bytes, int] | None:
        """(body, 0), or (b"", size) for a KV body over the limit (drained, not kept), or
        None when the request could not be read (answered already or connection lost)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_DRAIN:
                    self.close_connection = True
                    return b"", total
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks), 0
        length_text = self.headers.get("Content-Length") or "0"
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length_text)
        except ValueError:
            self.close_connection = True
            self._send(Response(400, b"Invalid Content-Length", TEXT_TYPE))
            return None
        if self.command == "PUT" and (
            (length > MAX_VALUE_SIZE and self.path.startswith("/v1/kv/"))
            or (length > MAX_TXN_BODY and self.path.partition("?")[0] == "/v1/txn")
        ):
            if length > MAX_DRAIN:
                self.close_connection = True
            else:
                remaining = length
                while remaining > 0:
                    got = self.rfile.read(min(remaining, 1 << 16))
                    if not got:
                        break
                    remaining -= len(got)
            return b"", length
        return (self.rfile.read(length) if length else b""), 0

    def _serve(self) -> None:
        with self.server.idle:
            self.server.active += 1
        try:
            self._serve_one()
        finally:
            with self.server.idle:
                self.server.active -= 1
                self.server.idle.notify_all()

    def _serve_one(self) -> None:
        # Split as Go's ParseRequestURI does: no #fragment (a "#" is part of the key).
        target = self.path
        if target.startswith(("http://", "https://")):  # absolute-form request target
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        raw_path, _, raw_qs = target.partition("?")
        if not valid_escapes(raw_path):
            # Go's server refuses a request line whose path it cannot unescape.
            self.close_connection = True
            self._send(Response(400, b"400 Bad Request", TEXT_TYPE, gzip=False))
            return
        raw_query = parse_qsl(raw_qs, keep_blank_values=True)
        query: dict[str, str] = {}
        for k, v in raw_query:
            query.setdefault(k, v)
        try:
            got = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        if got is None:
            return
        body, oversized = got
        req = Request(
            method=self.command,
            path=unquote(raw_path),
            query=query,
            raw_query=raw_query,
            headers=self.headers,
            body=body,
            alive=self._client_connected,
            query_string=raw_qs,
        )
        try:
            resp = self.server.api.handle(req, oversized)
        except Exception as err:  # never a traceback to the client
            print(f"dev-consul: {self.command} {self.path}: {err!r}", file=sys.stderr)
            line = str(err).splitlines()[0] if str(err) else type(err).__name__
            resp = Response(500, line.encode("utf-8"), TEXT_TYPE)
        self._send(resp)

    def _client_connected(self) -> bool:
        """False once the peer has closed its end (EOF waiting on the socket)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return True
            return self.connection.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        if resp.content_type:
            self.send_header("Content-Type", resp.content_type)
        if resp.index is not None:
            self.send_header("X-Consul-Index", str(resp.index))
            self.send_header("X-Consul-Knownleader", "true")
            self.send_header("X-Consul-Lastcontact", "0")
        for name, value in resp.headers.items():
            self.send_header(name, value)
        payload = resp.body
        if resp.gzip:
            # Consul wraps every endpoint in gziphandler: Vary always, and a body of
            # 1400 bytes or more is compressed for a client that accepts gzip.
            self.send_header("Vary", "Accept-Encoding")
            if len(payload) >= GZIP_MIN_SIZE and accepts_gzip(
                self.headers.get("Accept-Encoding") or ""
            ):
                payload = gzip.compress(payload, mtime=0)
                self.send_header("Content-Encoding", "gzip")
        body = b"" if self.command == "HEAD" else payload
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        # Headers and body in one write: two small writes meet the peer's delayed ACK.
        self._headers_buffer.append(b"\r\n")
        if body:
            self._headers_buffer.append(body)
        self.flush_headers()
