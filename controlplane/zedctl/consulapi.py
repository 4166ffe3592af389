"""Consul access for zedctl: KV reads and writes and transactions, over python-consul2.

`ConsulSettings` says where Consul is (flags and CONSUL_* environment resolved by the
caller); `ConsulKV` wraps python-consul2's KV and transaction endpoints and turns every
failure into one clear `ConsulError` naming the address. python-consul2's own reading of
CONSUL_HTTP_ADDR/CONSUL_HTTP_TOKEN is bypassed so that flags beat the environment.
"""

from __future__ import annotations

import base64
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import consul
import consul.base
import consul.std
import requests
import urllib3

from .errors import (
    ConsulError,
    ConsulPermissionDenied,
    ConsulUnreachable,
    UsageProblem,
)

DEFAULT_ADDRESS = "http://127.0.0.1:8500"
TXN_LIMIT = 64
"""Operations per transaction: Consul's limit before 1.14 (128 since), so it works with both."""


@dataclass(frozen=True)
class ConsulSettings:
    """Where Consul is and how to talk to it."""

    address: str = DEFAULT_ADDRESS
    token: str | None = None
    ca_cert: str | None = None
    insecure: bool = False
    timeout: float = 15.0

    @property
    def parts(self) -> tuple[str, str, int]:
        return parse_address(self.address)

    @property
    def url(self) -> str:
        scheme, host, port = self.parts
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{port}"


def parse_address(address: str) -> tuple[str, str, int]:
    """(scheme, host, port) from `http://host:port`, `https://host`, or `host:port`."""
    text = address.strip()
    if not text:
        raise UsageProblem("the Consul address is empty")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise UsageProblem(f"Consul address {address!r}: scheme must be http or https")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageProblem(f"Consul address {address!r}: give only scheme, host and port")
    try:
        port = parts.port
    except ValueError:
        raise UsageProblem(f"Consul address {address!r}: bad port") from None
    host = parts.hostname
    if not host:
        raise UsageProblem(f"Consul address {address!r}: no host")
    if port is None:
        port = 443 if parts.scheme == "https" else 8500
    return parts.scheme, host, port


@dataclass(frozen=True)
class KVEntry:
    """One stored key."""

    key: str
    value: str | None
    flags: int = 0
    modify_index: int = 0
    session: str | None = None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> KVEntry:
        value = raw.get("Value")
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        return cls(
            key=raw["Key"],
            value=value,
            flags=int(raw.get("Flags") or 0),
            modify_index=int(raw.get("ModifyIndex") or 0),
            session=raw.get("Session") or None,
        )


class TxnFailed(ConsulError):
    """Consul rolled a transaction back (409): a check or CAS failed."""

    def __init__(self, message: str, errors: Sequence[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = list(errors)


@dataclass
class _Agent:
    """What python-consul2's endpoint classes need from their parent client."""

    http: Any
    token: str | None
    dc: str | None = None
    consistency: str = "default"


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


class ConsulKV:
    """The KV store and transactions of one Consul agent."""

    def __init__(self, settings: ConsulSettings) -> None:
        self.settings = settings
        scheme, host, port = settings.parts
        verify: bool | str = True
        if settings.insecure:
            verify = False
        elif settings.ca_cert:
            verify = settings.ca_cert
            # Checked here, not as the option is parsed: a CONSUL_CACERT left in the
            # environment must not break commands that never contact Consul.
            if scheme == "https" and not os.path.isfile(settings.ca_cert):
                raise UsageProblem(
                    f"CA certificate {settings.ca_cert} (--ca-cert / CONSUL_CACERT): no such file"
                )
        http = consul.std.HTTPClient(host, port, scheme, verify, None, settings.timeout)
        agent = _Agent(http=http, token=settings.token or None)
        self._http = http
        self._agent = agent
        self._kv = consul.base.Consul.KV(agent)

    # -- error handling ---------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        url = self.settings.url
        try:
            with warnings.catch_warnings():
                if self.settings.insecure:
                    # Asked for on the command line; no need to warn on every request.
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                yield
        except requests.exceptions.SSLError as e:
            raise ConsulError(
                f"TLS error talking to Consul at {url} while {what}: {_reason(e)} "
                "(give the CA with --ca-cert / CONSUL_CACERT, or --insecure)"
            ) from None
        except requests.exceptions.ConnectionError as e:
            raise ConsulUnreachable(
                f"cannot reach Consul at {url} while {what}: {_reason(e)}"
            ) from None
        except requests.exceptions.Timeout:
            raise ConsulUnreachable(
                f"Consul at {url} did not answer within {self.settings.timeout:g}s while {what}"
            ) from None
        except requests.exceptions.RequestException as e:
            raise ConsulError(f"request to Consul at {url} failed while {what}: {e}") from None
        except consul.ACLPermissionDenied as e:
            hint = (
                "the token given lacks the rights needed"
                if self.settings.token
                else "an ACL token is needed: pass --token or set CONSUL_HTTP_TOKEN"
            )
            raise ConsulPermissionDenied(
                f"Consul at {url} denied access while {what} (403 {_body(e)}): {hint}"
            ) from None
        except consul.ConsulException as e:
            raise ConsulError(f"Consul at {url} failed while {what}: {_body(e)}") from None
        except (KeyError, ValueError) as e:
            # A 200 without Consul's headers or JSON: something else answers there.
            raise ConsulError(
                f"unexpected answer from {url} while {what} ({type(e).__name__}: {e}): "
                "is it a Consul HTTP API?"
            ) from None

    # -- reads ------------------------------------------------------------------------

    def _not_consul(self, what: str) -> ConsulError:
        return ConsulError(
            f"unexpected answer from {self.settings.url} while {what} (no X-Consul-Index "
            "header): is it a Consul HTTP API?"
        )

    def get(self, key: str) -> KVEntry | None:
        with self._errors(f"reading {key}"):
            idx, raw = self._kv.get(key)
        if idx is None:
            # Consul sends its index on every KV read, 404 included; a bare 404 comes
            # from some other server, and must not read as "no such key".
            raise self._not_consul(f"reading {key}")
        return KVEntry.from_api(raw) if raw else None

    def get_tree(self, prefix: str) -> dict[str, KVEntry]:
        """Every key under `prefix` (a plain string prefix), by full key."""
        return self.get_tree_indexed(prefix)[1]

    def get_tree_indexed(
        self, prefix: str, index: int | None = None, wait: str | None = None
    ) -> tuple[int, dict[str, KVEntry]]:
        """Like get_tree, with Consul's index; with `index`, a blocking query."""
        with self._errors(f"reading {prefix}"):
            idx, raw = self._kv.get(prefix, recurse=True, index=index, wait=wait)
        if idx is None:
            raise self._not_consul(f"reading {prefix}")
        entries = [KVEntry.from_api(r) for r in raw or []]
        return int(idx or 0), {e.key: e for e in entries}

    # -- writes -----------------------------------------------------------------------

    def put(self, key: str, value: str, cas: int | None = None) -> bool:
        with self._errors(f"writing {key}"):
            return bool(self._kv.put(key, value.encode("utf-8"), cas=cas))

    def delete_tree(self, prefix: str) -> None:
        with self._errors(f"deleting {prefix}"):
            self._kv.delete(prefix, recurse=True)

    def txn(self, ops: Sequence[dict[str, Any]], what: str) -> list[dict[str, Any]]:
        """Apply one transaction (all or nothing); raise TxnFailed when Consul rolls it back."""
        if len(ops) > TXN_LIMIT:
            raise ValueError(f"txn: {len(ops)} operations exceed the limit of {TXN_LIMIT}")
        headers = {"Content-Type": "application/json"}
        if self._agent.token:
            headers["X-Consul-Token"] = self._agent.token

        def answer(response: consul.base.Response) -> consul.base.Response:
            return response

        with self._errors(what):
            response = self._http.put(
                answer, path="/v1/txn", headers=headers, data=json.dumps(list(ops))
            )
            if response.code == 409:
                errors = _json_or(response.body, {}).get("Errors") or []
                detail = "; ".join(f"operation {e.get('OpIndex')}: {e.get('What')}" for e in errors)
                raise TxnFailed(
                    f"Consul at {self.settings.url} rolled back the transaction while {what}: "
                    f"{detail or response.body}",
                    errors,
                )
            consul.base.CB._status(response, allow_404=False)
            if response.code != 200:
                raise consul.ConsulException(f"{response.code} {response.body}")
        return _json_or(response.body, {}).get("Results") or []


def _json_or(text: str, fallback: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return fallback


def _body(e: Exception) -> str:
    """Consul's error answer ("500 rpc error...": one short line) for a message; an HTML
    page (from a proxy, or not Consul at all) is named, not dumped."""
    text = str(e).strip() or type(e).__name__
    code, _, rest = text.partition(" ")
    if not code.isdigit():
        code, rest = "", text
    if rest.lstrip().startswith("<"):
        rest = "(an HTML page: is it a Consul HTTP API?)"
    else:
        rest = rest.splitlines()[0] if rest else rest
    text = f"{code} {rest}".strip()
    return text if len(text) <= 200 else text[:197] + "..."


def _reason(e: Exception) -> str:
    """The innermost cause of a requests error, without urllib3's wrapping."""
    text = str(e)
    found = re.search(r"\[Errno -?\d+\] [^'\"()]+", text)
    if found:
        return found.group(0).strip().rstrip(":")
    for marker in ("Connection refused", "Connection reset", "timed out"):
        if marker in text:
            return marker
    return text if len(text) <= 200 else text[:197] + "..."
