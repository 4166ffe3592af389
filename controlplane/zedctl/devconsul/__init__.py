"""dev-consul: an embedded server speaking the subset of Consul's HTTP API that zedcup,
python-consul2 and OpenResty Consul clients use (see /v1/kv, /v1/txn, /v1/session,
/v1/status, /v1/agent/self, /v1/catalog/datacenters).

Modules: store (KV, indexes, tombstones, sessions, transactions, blocking), http (request
handling), durations (Go durations), persist (--data file), server (DevConsul)."""

from __future__ import annotations

from .persist import DataFileError
from .server import DevConsul

__all__ = ["DataFileError", "DevConsul"]
