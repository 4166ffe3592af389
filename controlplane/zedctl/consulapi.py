"""Consul access for zedctl: KV reads (plain and blocking), writes and transactions, over
plain `requests` (Consul's documented HTTP API, nothing private of any client library).

`ConsulSettings` says where Consul is and how to talk to it; `resolve_settings` builds it
from flags and the consul CLI's environment variables (flags beat the environment).
Addresses take every form the consul CLI takes: `host:port`, `http://host:port`,
`https://host:port`, `[::1]:8500`, `unix:///path/to/consul.sock`. `ConsulKV` turns
every failure into one `ConsulError` naming the address, with a hint that fits it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions

from .errors import (
    ConsulError,
    ConsulPermissionDenied,
    ConsulTLSError,
    ConsulUnreachable,
    UsageProblem,
)

DEFAULT_ADDRESS = "127.0.0.1:8500"
DEFAULT_PORT = 8500
TXN_LIMIT = 64
"""Operations per transaction: Consul's limit before 1.14 (128 since), so it works with both."""

# The consul CLI's environment variables, as it reads them.
ENV_ADDR = "CONSUL_HTTP_ADDR"
ENV_TOKEN = "CONSUL_HTTP_TOKEN"
ENV_TOKEN_FILE = "CONSUL_HTTP_TOKEN_FILE"
ENV_SSL = "CONSUL_HTTP_SSL"
ENV_SSL_VERIFY = "CONSUL_HTTP_SSL_VERIFY"
ENV_CACERT = "CONSUL_CACERT"
ENV_CAPATH = "CONSUL_CAPATH"
ENV_CLIENT_CERT = "CONSUL_CLIENT_CERT"
ENV_CLIENT_KEY = "CONSUL_CLIENT_KEY"
ENV_TLS_SERVER_NAME = "CONSUL_TLS_SERVER_NAME"
ENV_VARS = (
    ENV_ADDR,
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    ENV_SSL,
    ENV_SSL_VERIFY,
    ENV_CACERT,
    ENV_CAPATH,
    ENV_CLIENT_CERT,
    ENV_CLIENT_KEY,
    ENV_TLS_SERVER_NAME,
)


@dataclass(frozen=True)
class Address:
    """A parsed Consul address: TCP (scheme, host, port) or a unix socket path."""

    scheme: str
    host: str
    port: int
    socket_path: str | None = None

    @property
    def url(self) -> str:
        """How the address is shown to users."""
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{shown}:{self.port}"

    @property
    def base(self) -> str:
        """The base URL requests are sent to."""
        if self.socket_path is not None:
            return "http://localhost"
        return self.url


_BOOL_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_BOOL_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_bool(text: str, name: str) -> bool:
    """A boolean as the consul CLI reads its environment (Go's strconv.ParseBool)."""
    if text in _BOOL_TRUE:
        return True
    if text in _BOOL_FALSE:
        return False
    raise UsageProblem(f"{name}={text!r}: expected true or false")


def parse_address(address: str, ssl: bool = False) -> Address:
    """An Address from any form the consul CLI takes. `ssl` (CONSUL_HTTP_SSL) makes an
    address without a scheme, or with http://, use HTTPS, as the consul CLI does."""
    text = address.strip()
    if not text:
        raise UsageProblem("the Consul address is empty")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    scheme = scheme.lower()
    if scheme == "unix":
        if not rest.startswith("/"):
            raise UsageProblem(
                f"Consul address {address!r}: a unix socket needs an absolute path "
                "(unix:///path/to/consul.sock)"
            )
        return Address("http", "", 0, socket_path=rest)
    if scheme not in ("", "http", "https"):
        raise UsageProblem(
            f"Consul address {address!r}: unknown scheme {scheme!r} (http, https or unix)"
        )
    scheme = "https" if scheme == "https" or ssl else "http"
    if rest.count(":") > 1 and not rest.startswith("["):
        raise UsageProblem(
            f"Consul address {address!r}: write an IPv6 address in brackets ([::1]:8500)"
        )
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        port = parts.port
    except ValueError as e:
        raise UsageProblem(f"Consul address {address!r}: {e}") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise UsageProblem(f"Consul address {address!r}: give only scheme, host and port")
    host = parts.hostname
    if not host:
        raise UsageProblem(f"Consul address {address!r}: no host")
    if port is None:
        port = 443 if scheme == "https" and "://" in text else DEFAULT_PORT
    if port == 0:
        raise UsageProblem(f"Consul address {address!r}: port 0")
    return Address(scheme, host, port)


@dataclass(frozen=True)
class ConsulSettings:
    """Where Consul is and how to talk to it."""

    address: str = DEFAULT_ADDRESS
    token: str | None = None
    ssl: bool = False
    verify: bool = True
    ca_cert: str | None = None
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    tls_server_name: str | None = None
    timeout: float = 15.0
    token_source: str = ""
    """Where the token came from (for hints): a flag or an environment variable name."""

    @property
    def parsed(self) -> Address:
        return parse_address(self.address, self.ssl)

    @property
    def url(self) -> str:
        return self.parsed.url


def read_token_file(path: str, what: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError as e:
        raise UsageProblem(f"cannot read the token file {path} ({what}): {e.strerror}") from None


def resolve_settings(
    environ: Mapping[str, str],
    address: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    ca_cert: str | None = None,
    ca_path: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    tls_server_name: str | None = None,
    insecure: bool = False,
) -> ConsulSettings:
    """Settings from flags (given here) and the consul CLI's environment; flags win.
    The token: --token, else --token-file, else CONSUL_HTTP_TOKEN, else
    CONSUL_HTTP_TOKEN_FILE."""

    def env(name: str) -> str | None:
        return environ.get(name) or None

    source = ""
    if token:
        source = "--token"
    elif token_file:
        token, source = read_token_file(token_file, "--token-file"), "--token-file"
    elif env(ENV_TOKEN):
        token, source = env(ENV_TOKEN), ENV_TOKEN
    elif env(ENV_TOKEN_FILE):
        path = env(ENV_TOKEN_FILE) or ""
        token, source = read_token_file(path, ENV_TOKEN_FILE), ENV_TOKEN_FILE
    ssl = parse_bool(env(ENV_SSL) or "false", ENV_SSL)
    verify = parse_bool(env(ENV_SSL_VERIFY) or "true", ENV_SSL_VERIFY) and not insecure
    settings = ConsulSettings(
        address=address or env(ENV_ADDR) or DEFAULT_ADDRESS,
        token=token or None,
        ssl=ssl,
        verify=verify,
        ca_cert=ca_cert or env(ENV_CACERT),
        ca_path=ca_path or env(ENV_CAPATH),
        client_cert=client_cert or env(ENV_CLIENT_CERT),
        client_key=client_key or env(ENV_CLIENT_KEY),
        tls_server_name=tls_server_name or env(ENV_TLS_SERVER_NAME),
        token_source=source,
    )
    return settings


@dataclass(frozen=True)
class KVEntry:
    """One stored key."""

    key: str
    value: str | None
    flags: int = 0
    modify_index: int = 0
    session: str | None = None

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> KVEntry:
        value = raw.get("Value")
        if isinstance(value, str):
            value = base64.b64decode(value).decode("utf-8", errors="replace")
        return cls(
            key=raw["Key"],
            value=value,
            flags=int(raw.get("Flags") or 0),
            modify_index=int(raw.get("ModifyIndex") or 0),
            session=raw.get("Session") or None,
        )


class TxnFailed(ConsulError):
    """Consul rolled a transaction back (409): a check or CAS failed."""

    def __init__(self, message: str, errors: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(message)
        self.errors = list(errors)


def _b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


def op(
    verb: str,
    key: str,
    value: str | None = None,
    index: int | None = None,
    flags: int | None = None,
) -> dict[str, Any]:
    """One KV transaction operation."""
    kv: dict[str, Any] = {"Verb": verb, "Key": key}
    if value is not None:
        kv["Value"] = _b64(value)
    if flags is not None:
        kv["Flags"] = flags
    if index is not None:
        kv["Index"] = index
    return {"KV": kv}


# -- transports ---------------------------------------------------------------------------


class _UnixConnection(urllib3.connection.HTTPConnection):
    """An HTTP connection over a unix socket (the consul CLI's unix:// addresses)."""

    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if isinstance(self.timeout, (int, float)):
            sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError as e:
            sock.close()
            raise urllib3.exceptions.NewConnectionError(
                self, f"[Errno {e.errno}] {e.strerror}: {self._socket_path}"
            ) from None
        return sock


class _UnixPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _UnixConnection


class _UnixAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self._pool = _UnixPool("localhost", socket_path=socket_path)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        return self._pool

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:  # requests < 2.32
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    """HTTPS with another name for SNI and certificate checks (CONSUL_TLS_SERVER_NAME)."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


# -- the client -----------------------------------------------------------------------------


class ConsulKV:
    """The KV store and transactions of one Consul agent."""

    def __init__(self, settings: ConsulSettings) -> None:
        self.settings = settings
        self.address = settings.parsed
        session = requests.Session()
        session.trust_env = False  # no proxies from the environment: Consul is local
        if self.address.socket_path is not None:
            session.mount("http://", _UnixAdapter(self.address.socket_path))
        elif self.address.scheme == "https":
            verify: bool | str = settings.verify
            if settings.verify and (settings.ca_cert or settings.ca_path):
                verify = str(settings.ca_cert or settings.ca_path)
                # Checked here, not as options are parsed: a CONSUL_CACERT left in the
                # environment must not break commands that never contact Consul.
                if not os.path.exists(verify):
                    raise UsageProblem(
                        f"CA certificate {verify} (--ca-cert / {ENV_CACERT}): no such file"
                    )
            session.verify = verify
            if settings.client_cert:
                for path in (settings.client_cert, settings.client_key):
                    if path and not os.path.isfile(path):
                        raise UsageProblem(f"client certificate or key {path}: no such file")
                session.cert = (
                    (settings.client_cert, settings.client_key)
                    if settings.client_key
                    else settings.client_cert
                )
            if settings.tls_server_name:
                session.mount("https://", _ServerNameAdapter(settings.tls_server_name))
        if settings.token:
            session.headers["X-Consul-Token"] = settings.token
        self._session = session

    def close(self) -> None:
        self._session.close()

    # -- error handling ---------------------------------------------------------------

    def _tls_hint(self, text: str) -> str:
        low = text.lower()
        if any(
            m in low
            for m in (
                "wrong version number",
                "record layer failure",
                "packet length too long",
                "unknown protocol",
                "http request",
                "unexpected eof",
            )
        ):
            return (
                "this port does not seem to speak TLS: use http:// (and unset "
                f"{ENV_SSL}) if Consul serves plain HTTP here"
            )
        if "hostname" in low or "doesn't match" in low or "ip address mismatch" in low:
            return (
                "the certificate is for another name: give the name it holds with "
                f"--tls-server-name / {ENV_TLS_SERVER_NAME}"
            )
        if "certificate verify failed" in low or "self-signed" in low or "self signed" in low:
            return f"give the CA with --ca-cert / {ENV_CACERT}, or --insecure"
        if "certificate required" in low or "bad certificate" in low or "handshake failure" in low:
            return (
                "Consul may require a client certificate: --client-cert/--client-key "
                f"({ENV_CLIENT_CERT}/{ENV_CLIENT_KEY})"
            )
        return f"check --ca-cert / {ENV_CACERT} and the address's scheme"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        url = self.address.url
        try:
            with warnings.catch_warnings():
                # Asked for on the command line; no need to warn on every request.
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                yield
        except requests.exceptions.SSLError as e:
            reason = _reason(e)
            raise ConsulTLSError(
                f"TLS error talking to Consul at {url} while {what}: {reason} "
                f"({self._tls_hint(str(e))})"
            ) from None
        except requests.exceptions.ConnectionError as e:
            text = str(e)
            hint = ""
            if self.address.scheme == "http" and (
                "RemoteDisconnected" in text
                or "Connection aborted" in text
                or "Connection reset" in text
            ):
                hint = f" (if Consul serves HTTPS there, use https:// or {ENV_SSL}=true)"
            raise ConsulUnreachable(
                f"cannot reach Consul at {url} while {what}: {_reason(e)}{hint}"
            ) from None
        except requests.exceptions.Timeout:
            raise ConsulUnreachable(
                f"Consul at {url} did not answer in time while {what}"
            ) from None
        except requests.exceptions.RequestException as e:
            raise ConsulError(f"request to Consul at {url} failed while {what}: {e}") from None

    def _denied(self, body: str, what: str) -> ConsulPermissionDenied:
        low = body.lower()
        source = self.settings.token_source or "the token"
        if "acl not found" in low:
            hint = (
                f"Consul does not know the token given ({source}): check it, or "
                "whether it was deleted"
            )
        elif self.settings.token:
            hint = (
                f"the token given ({source}) lacks the rights needed "
                "(key_prefix write on the zedcup prefix)"
            )
        else:
            hint = f"an ACL token is needed: --token, --token-file, {ENV_TOKEN} or {ENV_TOKEN_FILE}"
        return ConsulPermissionDenied(
            f"Consul at {self.address.url} denied access while {what} (403 {body}): {hint}"
        )

    def _status_error(self, resp: requests.Response, what: str) -> ConsulError:
        url = self.address.url
        body = _body(resp)
        if resp.status_code == 403:
            return self._denied(body, what)
        if resp.status_code == 400 and "https server" in body.lower():
            return ConsulTLSError(
                f"Consul at {url} answered 400 while {what} ({body}): it serves HTTPS "
                f"there: use https:// or {ENV_SSL}=true"
            )
        return ConsulError(f"Consul at {url} failed while {what}: {resp.status_code} {body}")

    def _not_consul(self, what: str) -> ConsulError:
        return ConsulError(
            f"unexpected answer from {self.address.url} while {what} (no X-Consul-Index "
            "header): is it a Consul HTTP API?"
        )

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        params: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        timeout: float | None = None,
        allow_404: bool = False,
    ) -> requests.Response:
        with self._errors(what):
            resp = self._session.request(
                method,
                self.address.base + path,
                params=params,
                data=data,
                timeout=timeout or self.settings.timeout,
            )
        if resp.status_code == 404 and allow_404:
            return resp
        if resp.status_code != 200:
            raise self._status_error(resp, what)
        return resp

    @staticmethod
    def _key_path(key: str) -> str:
        return "/v1/kv/" + quote(key, safe="/")

    def _json(self, resp: requests.Response, what: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise ConsulError(
                f"unexpected answer from {self.address.url} while {what} (not JSON): "
                "is it a Consul HTTP API?"
            ) from None

    # -- reads ------------------------------------------------------------------------

    def health_service(self, name: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        """GET /v1/health/service/<name> (the instances of a service, with their checks)."""
        what = f"reading the instances of service {name}"
        resp = self._request(
            "GET", "/v1/health/service/" + quote(name, safe=""), what, params=list(params)
        )
        return self._json(resp, what)

    def get(self, key: str) -> KVEntry | None:
        what = f"reading {key}"
        resp = self._request("GET", self._key_path(key), what, allow_404=True)
        if "X-Consul-Index" not in resp.headers:
            # Consul sends its index on every KV read, 404 included; a bare 404 comes
            # from some other server, and must not read as "no such key".
            raise self._not_consul(what)
        if resp.status_code == 404:
            return None
        items = self._json(resp, what)
        return KVEntry.from_api(items[0]) if items else None

    def get_tree(self, prefix: str) -> dict[str, KVEntry]:
        """Every key under `prefix` (a plain string prefix), by full key."""
        return self.get_tree_indexed(prefix)[1]

    def get_tree_indexed(
        self, prefix: str, index: int | None = None, wait: float | None = None
    ) -> tuple[int, dict[str, KVEntry]]:
        """Like get_tree, with Consul's index; with `index`, a blocking query of up to
        `wait` seconds."""
        what = f"reading {prefix}"
        params: dict[str, Any] = {"recurse": ""}
        timeout = None
        if index:
            wait = 300.0 if wait is None else wait
            params["index"] = str(index)
            params["wait"] = f"{int(wait * 1000)}ms"
            timeout = wait + wait / 16 + self.settings.timeout
        resp = self._request(
            "GET", self._key_path(prefix), what, params=params, timeout=timeout, allow_404=True
        )
        raw_index = resp.headers.get("X-Consul-Index")
        if raw_index is None:
            raise self._not_consul(what)
        try:
            new_index = int(raw_index)
        except ValueError:
            raise self._not_consul(what) from None
        if resp.status_code == 404:
            return new_index, {}
        entries = [KVEntry.from_api(r) for r in self._json(resp, what) or []]
        return new_index, {e.key: e for e in entries}

    def keys(self, prefix: str) -> list[str]:
        """The keys under `prefix`, sorted (Consul's `?keys`)."""
        what = f"listing {prefix}"
        resp = self._request(
            "GET", self._key_path(prefix), what, params={"keys": ""}, allow_404=True
        )
        if resp.status_code == 404:
            return []
        return [str(k) for k in self._json(resp, what) or []]

    # -- writes -----------------------------------------------------------------------

    def put(self, key: str, value: str, cas: int | None = None, flags: int | None = None) -> bool:
        params: dict[str, Any] = {}
        if cas is not None:
            params["cas"] = str(cas)
        if flags is not None:
            params["flags"] = str(flags)
        what = f"writing {key}"
        resp = self._request(
            "PUT", self._key_path(key), what, params=params, data=value.encode("utf-8")
        )
        return bool(self._json(resp, what))

    def delete_tree(self, prefix: str) -> None:
        self._request(
            "DELETE", self._key_path(prefix), f"deleting {prefix}", params={"recurse": ""}
        )

    def txn(self, ops: Sequence[Mapping[str, Any]], what: str) -> list[dict[str, Any]]:
        """Apply one transaction (all or nothing); raise TxnFailed when Consul rolls it back."""
        if len(ops) > TXN_LIMIT:
            raise ValueError(f"txn: {len(ops)} operations exceed the limit of {TXN_LIMIT}")
        with self._errors(what):
            resp = self._session.put(
                self.address.base + "/v1/txn",
                data=json.dumps(list(ops)),
                headers={"Content-Type": "application/json"},
                timeout=self.settings.timeout,
            )
        if resp.status_code == 409:
            try:
                errors = resp.json().get("Errors") or []
            except (ValueError, AttributeError):
                errors = []
            whats = {str(e.get("What")) for e in errors if isinstance(e, dict)}
            denied = [
                w for w in whats if "permission denied" in w.lower() or "acl not found" in w.lower()
            ]
            if denied:
                # Consul answers a transaction the token may not do with 409, per operation.
                raise self._denied(sorted(denied)[0], what)
            detail = "; ".join(f"operation {e.get('OpIndex')}: {e.get('What')}" for e in errors)
            raise TxnFailed(
                f"Consul at {self.address.url} rolled back the transaction while {what}: "
                f"{detail or _body(resp)}",
                errors,
            )
        if resp.status_code != 200:
            raise self._status_error(resp, what)
        body = self._json(resp, what)
        return (body.get("Results") if isinstance(body, dict) else None) or []


def _body(resp: requests.Response) -> str:
    """Consul's error answer (one short line) for a message; an HTML page (from a proxy,
    or not Consul at all) is named, not dumped."""
    text = (resp.text or "").strip()
    if text.startswith("<"):
        return "(an HTML page: is it a Consul HTTP API?)"
    text = text.splitlines()[0] if text else "(empty answer)"
    return text if len(text) <= 200 else text[:197] + "..."


def _reason(e: Exception) -> str:
    """The innermost cause of a requests error, without urllib3's wrapping."""
    text = str(e)
    found = re.search(r"\[Errno -?\d+\] [^'\"()]+", text)
    if found:
        return found.group(0).strip().rstrip(":")
    found = re.search(r"\[SSL[^\]]*\][^'\"()]*", text)
    if found:
        return found.group(0).strip().rstrip(":")
    for marker in ("Connection refused", "Connection reset", "timed out", "RemoteDisconnected"):
        if marker in text:
            return marker
    return text if len(text) <= 200 else text[:197] + "..."
