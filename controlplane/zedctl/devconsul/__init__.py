"""dev-consul: an embedded server speaking the subset of Consul's HTTP API that zedcup,
python-consul2 and OpenResty Consul clients use (see /v1/kv, /v1/txn, /v1/session,
/v1/status, /v1/agent/self, /v1/catalog/datacenters, and the service catalog: /v1/agent/
service|check, /v1/catalog/services|service, /v1/health/service|checks|state).

Modules: store (KV, indexes, tombstones, sessions, transactions, blocking), catalog
(services, checks and their indexes), catalog_http (their endpoints), bexpr (?filter=),
http (request handling), durations (Go durations), persist (--data file), server
(DevConsul)."""

from __future__ import annotations

from .persist import DataFileError
from .server import DevConsul

__all__ = ["DataFileError", "DevConsul"]
