"""The service catalog of dev-consul: one node (the agent itself) with its services and
health checks, registered through the agent endpoints and read through /v1/catalog and
/v1/health. No HTTP in here; the state shares the Store's lock, raft index and reaper.

What follows Consul (current versions; see README for where 1.8 differs):
- Agent state vs catalog: the agent keeps what was registered; the catalog holds what
  was synced. A check's status change syncs at once; an output-only change of a check
  whose status did not move waits for check_update_interval (5 minutes), as in Consul.
  An identical re-registration is no write at all (no index moves).
- Indexes: tables `nodes`, `services` and `checks` each remember the raft index of their
  last change; every service name has its own index, moved by any change to one of its
  instances or their checks (or to the node). A name whose last instance goes away loses
  its index and sets the "extinction" index, which then answers for missing names.
- TTL checks turn critical when their TTL lapses ("TTL expired", with the last output).
  Checks of other kinds (HTTP, TCP, script...) are registered and listed but not run:
  they keep the Status they were registered with.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .durations import SECOND, DurationError, parse_duration

if TYPE_CHECKING:
    from .store import Store

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
STATUSES = (PASSING, WARNING, CRITICAL)
CHECK_UPDATE_INTERVAL = 300.0  # seconds: Consul's default check_update_interval
NODE_ADDRESS = "127.0.0.1"
CONSUL_SERVICE_PORT = 8300
# The field of a check definition that gives its type, in Consul's order of precedence.
CHECK_KINDS = (
    ("TTL", "ttl"),
    ("HTTP", "http"),
    ("TCP", "tcp"),
    ("UDP", "udp"),
    ("GRPC", "grpc"),
    ("H2PING", "h2ping"),
    ("Args", "script"),
    ("ScriptArgs", "script"),
    ("DockerContainerID", "docker"),
    ("AliasService", "alias"),
    ("AliasNode", "alias"),
    ("OSService", "os_service"),
)


class CatalogError(Exception):
    """A request Consul refuses: `status` and a plain-text message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Service:
    """A service instance as registered (the agent's view) and as synced (indexes)."""

    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    weights: dict[str, int]
    enable_tag_override: bool = False
    kind: str = ""
    create_index: int = 0
    modify_index: int = 0

    def content(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.tags,
            self.address,
            self.port,
            self.meta,
            self.weights,
            self.enable_tag_override,
            self.kind,
        )


@dataclass
class Check:
    id: str
    name: str
    status: str
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: list[str] = field(default_factory=list)
    type: str = ""
    interval: str = ""
    timeout: str = ""
    ttl_ns: int = 0
    create_index: int = 0
    modify_index: int = 0
    status_given: bool = False  # the registration named a Status (else the old one stays)
    # The agent's side: what the last update said, and when TTL and deferred sync fall due.
    agent_output: str = ""
    deadline: float | None = None  # monotonic: the TTL lapses
    sync_at: float | None = None  # monotonic: a deferred output change is synced


def _tagged_addresses(address: str, port: int) -> dict[str, dict[str, Any]] | None:
    """The lan/wan addresses Consul adds to a service registered with an IP address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    suffix = "ipv4" if ip.version == 4 else "ipv6"
    return {
        f"lan_{suffix}": {"Address": address, "Port": port},
        f"wan_{suffix}": {"Address": address, "Port": port},
    }


def _fold(obj: dict[str, Any]) -> dict[str, Any]:
    """Field names matched case-insensitively (and snake_case), as Consul decodes them."""
    return {str(k).lower().replace("_", ""): v for k, v in obj.items()}


def _str(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CatalogError(400, f"Request decode failed: {name} must be a string, not {value!r}")
    return value


def _int(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise CatalogError(400, f"Request decode failed: {name} must be an integer, not {value!r}")
    return value


def _strings(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(400, f"Request decode failed: {name} must be a list of strings")
    return list(value)


def _meta(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CatalogError(400, "Request decode failed: Meta must map strings to strings")
    return {str(k): v for k, v in value.items()}


def _duration(value: Any, name: str) -> int:
    if value in (None, ""):
        return 0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if not isinstance(value, str):
        raise CatalogError(400, f"Request decode failed: {name} must be a duration")
    try:
        return parse_duration(value)
    except DurationError as err:
        raise CatalogError(400, f"Request decode failed: {err}") from None


class Catalog:
    """Services and checks of the dev-consul node, under the Store's lock and index."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = store._lock
        self.node = store.node
        self.node_id = store.node_id
        self.node_meta = {"consul-network-segment": ""}
        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}
        self.nodes_index = 1
        self.services_index = 1
        self.checks_index = 1
        self.service_index: dict[str, int] = {}
        self.extinction_index = 0
        self._watches: set[threading.Event] = set()
        # What a Consul server registers for itself: the node's serf check and the
        # `consul` service.
        self.checks["serfHealth"] = Check(
            id="serfHealth",
            name="Serf Health Status",
            status=PASSING,
            output="Agent alive and reachable",
            agent_output="Agent alive and reachable",
            create_index=1,
            modify_index=1,
        )
        self.services["consul"] = Service(
            id="consul",
            name="consul",
            tags=[],
            address="",
            port=CONSUL_SERVICE_PORT,
            meta={},
            weights={"Passing": 1, "Warning": 1},
            create_index=1,
            modify_index=1,
        )
        self.service_index["consul"] = 1

    # ------------------------------------------------------------ watches

    def add_watch(self, event: threading.Event) -> None:
        self._watches.add(event)

    def remove_watch(self, event: threading.Event) -> None:
        self._watches.discard(event)

    def wake_all(self) -> None:
        for event in self._watches:
            event.set()

    def watch_count(self) -> int:
        return len(self._watches)

    # ------------------------------------------------------------ JSON shapes

    def node_json(self) -> dict[str, Any]:
        return {
            "ID": self.node_id,
            "Node": self.node,
            "Address": NODE_ADDRESS,
            "Datacenter": self.store_dc(),
            "TaggedAddresses": {
                "lan": NODE_ADDRESS,
                "lan_ipv4": NODE_ADDRESS,
                "wan": NODE_ADDRESS,
                "wan_ipv4": NODE_ADDRESS,
            },
            "Meta": dict(self.node_meta),
            "CreateIndex": 1,
            "ModifyIndex": self.nodes_index,
        }

    @staticmethod
    def store_dc() -> str:
        from .store import DATACENTER

        return DATACENTER

    def service_json(self, svc: Service, health: bool) -> dict[str, Any]:
        """A NodeService as /v1/health/service shows it (health=True)."""
        out: dict[str, Any] = {}
        if svc.kind:
            out["Kind"] = svc.kind
        out["ID"] = svc.id
        out["Service"] = svc.name
        out["Tags"] = list(svc.tags)
        out["Address"] = svc.address
        tagged = _tagged_addresses(svc.address, svc.port)
        if tagged:
            out["TaggedAddresses"] = tagged
        # Consul answers null for a service registered without Meta here, {} elsewhere.
        out["Meta"] = dict(svc.meta) if svc.meta or not health else None
        out["Port"] = svc.port
        out["Weights"] = dict(svc.weights)
        out["EnableTagOverride"] = svc.enable_tag_override
        out["Proxy"] = {"MeshGateway": {}, "Expose": {}}
        out["Connect"] = {}
        out["CreateIndex"] = svc.create_index
        out["ModifyIndex"] = svc.modify_index
        return out

    def service_node_json(self, svc: Service) -> dict[str, Any]:
        """A ServiceNode as /v1/catalog/service shows it."""
        node = self.node_json()
        out: dict[str, Any] = {
            "ID": node["ID"],
            "Node": node["Node"],
            "Address": node["Address"],
            "Datacenter": node["Datacenter"],
            "TaggedAddresses": node["TaggedAddresses"],
            "NodeMeta": node["Meta"],
            "ServiceKind": svc.kind,
            "ServiceID": svc.id,
            "ServiceName": svc.name,
            "ServiceTags": list(svc.tags),
            "ServiceAddress": svc.address,
        }
        tagged = _tagged_addresses(svc.address, svc.port)
        if tagged:
            out["ServiceTaggedAddresses"] = tagged
        out.update(
            {
                "ServiceWeights": dict(svc.weights),
                "ServiceMeta": dict(svc.meta),
                "ServicePort": svc.port,
                "ServiceEnableTagOverride": svc.enable_tag_override,
                "ServiceProxy": {"MeshGateway": {}, "Expose": {}},
                "ServiceConnect": {},
                "CreateIndex": svc.create_index,
                "ModifyIndex": svc.modify_index,
            }
        )
        return out

    def agent_service_json(self, svc: Service) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if svc.kind:
            out["Kind"] = svc.kind
        out.update(
            {
                "ID": svc.id,
                "Service": svc.name,
                "Tags": list(svc.tags),
                "Meta": dict(svc.meta),
                "Port": svc.port,
                "Address": svc.address,
            }
        )
        tagged = _tagged_addresses(svc.address, svc.port)
        if tagged:
            out["TaggedAddresses"] = tagged
        out["Weights"] = dict(svc.weights)
        out["EnableTagOverride"] = svc.enable_tag_override
        out["Datacenter"] = self.store_dc()
        return out

    def check_json(self, chk: Check, agent: bool = False) -> dict[str, Any]:
        return {
            "Node": self.node,
            "CheckID": chk.id,
            "Name": chk.name,
            "Status": chk.status,
            "Notes": chk.notes,
            "Output": chk.agent_output if agent else chk.output,
            "ServiceID": chk.service_id,
            "ServiceName": chk.service_name,
            "ServiceTags": list(chk.service_tags),
            "Type": chk.type,
            "Interval": chk.interval,
            "Timeout": chk.timeout,
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": 0 if agent else chk.create_index,
            "ModifyIndex": 0 if agent else chk.modify_index,
        }

    # ------------------------------------------------------------ reads (under the lock)

    def _name_index(self, name: str, with_checks: bool) -> int:
        """The index a query about service `name` answers (Consul's maxIndexForService)."""
        idx = self.service_index.get(name)
        if idx is not None:
            return idx
        if self.extinction_index:
            return self.extinction_index
        best = max(self.nodes_index, self.services_index)
        return max(best, self.checks_index) if with_checks else best

    def _instances(self, name: str) -> list[Service]:
        return sorted((s for s in self.services.values() if s.name == name), key=lambda s: s.id)

    def _service_checks(self, sid: str) -> list[Check]:
        return sorted((c for c in self.checks.values() if c.service_id == sid), key=lambda c: c.id)

    def _node_checks(self) -> list[Check]:
        return sorted((c for c in self.checks.values() if not c.service_id), key=lambda c: c.id)

    def node_meta_matches(self, wanted: list[tuple[str, str]]) -> bool:
        return all(self.node_meta.get(k) == v for k, v in wanted)

    def services_query(self, node_meta: list[tuple[str, str]]) -> tuple[int, list[Service]]:
        with self._lock:
            found = list(self.services.values()) if self.node_meta_matches(node_meta) else []
            return self.services_index, [copy.deepcopy(s) for s in found]

    def service_nodes(self, name: str, node_meta: list[tuple[str, str]]) -> tuple[int, list[Any]]:
        with self._lock:
            index = self._name_index(name, with_checks=False)
            found = self._instances(name) if self.node_meta_matches(node_meta) else []
            return index, [self.service_node_json(s) for s in found]

    def health_service(
        self, name: str, node_meta: list[tuple[str, str]]
    ) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            index = self._name_index(name, with_checks=True)
            found = self._instances(name) if self.node_meta_matches(node_meta) else []
            node = self.node_json()
            node_checks = [self.check_json(c) for c in self._node_checks()]
            out = [
                {
                    "Node": copy.deepcopy(node),
                    "Service": self.service_json(s, health=True),
                    "Checks": copy.deepcopy(node_checks)
                    + [self.check_json(c) for c in self._service_checks(s.id)],
                }
                for s in found
            ]
            return index, out

    def service_checks(
        self, name: str, node_meta: list[tuple[str, str]]
    ) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            found: list[Check] = []
            if self.node_meta_matches(node_meta):
                found = sorted(
                    (c for c in self.checks.values() if c.service_name == name and c.service_id),
                    key=lambda c: c.id,
                )
            return self.checks_index, [self.check_json(c) for c in found]

    def checks_in_state(
        self, state: str, node_meta: list[tuple[str, str]]
    ) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            found: list[Check] = []
            if self.node_meta_matches(node_meta):
                found = sorted(
                    (c for c in self.checks.values() if state == "any" or c.status == state),
                    key=lambda c: c.id,
                )
            return self.checks_index, [self.check_json(c) for c in found]

    def nodes_query(self, node_meta: list[tuple[str, str]]) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            found = [self.node_json()] if self.node_meta_matches(node_meta) else []
            return self.nodes_index, found

    def node_services(self, node: str) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            index = max(self.nodes_index, self.services_index)
            if node != self.node:
                return index, None
            services = {
                sid: self.service_json(s, health=True) for sid, s in sorted(self.services.items())
            }
            return index, {"Node": self.node_json(), "Services": services}

    def node_checks(self, node: str) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            found = sorted(self.checks.values(), key=lambda c: c.id) if node == self.node else []
            return self.checks_index, [self.check_json(c) for c in found]

    def agent_services(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                sid: self.agent_service_json(s)
                for sid, s in sorted(self.services.items())
                if sid != "consul"
            }

    def agent_service(self, sid: str) -> dict[str, Any]:
        with self._lock:
            svc = self.services.get(sid)
            if svc is None or sid == "consul":
                raise CatalogError(404, f"unknown service ID: {sid}")
            out = self.agent_service_json(svc)
        digest = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:16]
        out["ContentHash"] = digest
        return out

    def agent_checks(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                cid: self.check_json(c, agent=True)
                for cid, c in sorted(self.checks.items())
                if cid != "serfHealth"
            }

    # ------------------------------------------------------------ writes

    def _begin(self) -> int:
        return self.store.index + 1

    def _end(self, idx: int) -> None:
        self.store._commit(idx, set())
        self.wake_all()

    def _names_of(self, chk: Check) -> set[str]:
        """The service names a check's change concerns: its service's, or for a node
        check every service on the node."""
        if chk.service_id:
            return {chk.service_name}
        return {s.name for s in self.services.values()}

    def _touch(self, idx: int, *names: str) -> None:
        for name in names:
            if any(s.name == name for s in self.services.values()):
                self.service_index[name] = idx
            elif name in self.service_index:
                del self.service_index[name]
                self.extinction_index = idx

    def register_service(self, body: Any, replace_checks: bool = False) -> None:
        """PUT /v1/agent/service/register."""
        if not isinstance(body, dict):
            raise CatalogError(400, "Request decode failed: the body must be a JSON object")
        f = _fold(body)
        name = _str(f.get("name"), "Name")
        if not name:
            raise CatalogError(400, "Validation failed: Missing service name")
        sid = _str(f.get("id"), "ID") or name
        weights_in = f.get("weights")
        weights = {"Passing": 1, "Warning": 1}
        if weights_in is not None:
            if not isinstance(weights_in, dict):
                raise CatalogError(400, "Request decode failed: Weights must be an object")
            w = _fold(weights_in)
            weights = {
                "Passing": _int(w.get("passing"), "Weights.Passing"),
                "Warning": _int(w.get("warning"), "Weights.Warning"),
            }
            if weights["Passing"] < 1:
                raise CatalogError(400, "Passing must be greater than 0")
            if weights["Warning"] < 0:
                raise CatalogError(400, "Warning must be greater or equal than 0")
        port = _int(f.get("port"), "Port")
        if not 0 <= port <= 65535:
            raise CatalogError(400, f"Invalid Port: {port}")
        svc = Service(
            id=sid,
            name=name,
            tags=_strings(f.get("tags"), "Tags"),
            address=_str(f.get("address"), "Address"),
            port=port,
            meta=_meta(f.get("meta")),
            weights=weights,
            enable_tag_override=bool(f.get("enabletagoverride") or False),
            kind=_str(f.get("kind"), "Kind"),
        )
        defs: list[Any] = []
        if f.get("check"):
            defs.append(f["check"])
        if f.get("checks"):
            if not isinstance(f["checks"], list):
                raise CatalogError(400, "Request decode failed: Checks must be a list")
            defs.extend(f["checks"])
        new_checks = [
            self._parse_check(
                d,
                default_id=f"service:{sid}" + (f":{i + 1}" if len(defs) > 1 else ""),
                default_name=f"Service '{name}' check",
                service=svc,
            )
            for i, d in enumerate(defs)
        ]
        with self._lock:
            old = self.services.get(sid)
            changed_service = old is None or old.content() != svc.content()
            old_checks = self._service_checks(sid)
            drop = [
                c for c in old_checks if replace_checks and c.id not in {n.id for n in new_checks}
            ]
            changed_checks = [c for c in new_checks if self._check_differs(c)]
            if old is not None and old.name != svc.name:
                # The checks of a renamed service carry its new name and tags.
                changed_checks.extend(c for c in old_checks if c not in drop)
            elif changed_service:
                changed_checks.extend(
                    c for c in old_checks if c not in drop and c.service_tags != svc.tags
                )
            if not changed_service and not changed_checks and not drop:
                for chk in new_checks:  # a re-registration restarts the TTL
                    self._arm(self.checks[chk.id])
                return
            idx = self._begin()
            if changed_service:
                svc.create_index = old.create_index if old else idx
                svc.modify_index = idx
                self.services[sid] = svc
                self.services_index = idx
            for chk in drop:
                del self.checks[chk.id]
            for chk in changed_checks:
                self._store_check(idx, chk, svc)
            if changed_checks or drop:
                self.checks_index = idx
            self._touch(idx, *({svc.name} | ({old.name} if old else set())))
            self._end(idx)

    def _check_differs(self, chk: Check) -> bool:
        old = self.checks.get(chk.id)
        if old is None:
            return True
        if chk.status_given and chk.status != old.status:
            return True
        return (old.name, old.notes, old.service_id, old.type, old.interval, old.ttl_ns) != (
            chk.name,
            chk.notes,
            chk.service_id,
            chk.type,
            chk.interval,
            chk.ttl_ns,
        )

    def _store_check(self, idx: int, chk: Check, svc: Service | None) -> None:
        old = self.checks.get(chk.id)
        if svc is not None:
            chk.service_id, chk.service_name, chk.service_tags = svc.id, svc.name, list(svc.tags)
        if old is not None and not chk.status_given and old.type == chk.type:
            chk.status, chk.output, chk.agent_output = old.status, old.output, old.agent_output
        chk.create_index = old.create_index if old else idx
        chk.modify_index = idx
        self.checks[chk.id] = chk
        self._arm(chk)

    def _arm(self, chk: Check) -> None:
        if chk.type == "ttl" and chk.ttl_ns > 0:
            chk.deadline = time.monotonic() + chk.ttl_ns / SECOND
            self.store._reaper_cond.notify_all()

    def _parse_check(
        self, body: Any, default_id: str, default_name: str, service: Service | None
    ) -> Check:
        if not isinstance(body, dict):
            raise CatalogError(400, "Request decode failed: a check must be a JSON object")
        f = _fold(body)
        kind = ""
        for key, name in CHECK_KINDS:
            if f.get(key.lower()):
                kind = name
                break
        if not kind:
            raise CatalogError(
                400,
                "Check is not valid: one of TTL, HTTP, TCP, UDP, GRPC, H2PING, Args, "
                "DockerContainerID, AliasService or OSService must be set",
            )
        ttl_ns = _duration(f.get("ttl"), "TTL") if kind == "ttl" else 0
        if kind == "ttl" and ttl_ns <= 0:
            raise CatalogError(400, "Invalid check: TTL must be > 0 for TTL checks")
        status = _str(f.get("status"), "Status")
        if status and status not in STATUSES:
            raise CatalogError(400, "Status for checks must 'passing', 'warning', 'critical'")
        output = _str(f.get("output"), "Output")
        interval = _str(f.get("interval"), "Interval") if kind != "ttl" else ""
        timeout = _str(f.get("timeout"), "Timeout") if kind != "ttl" else ""
        chk = Check(
            id=_str(f.get("checkid") or f.get("id"), "CheckID") or default_id,
            name=_str(f.get("name"), "Name") or default_name,
            status=status or CRITICAL,
            notes=_str(f.get("notes"), "Notes"),
            output=output,
            agent_output=output,
            type=kind,
            interval=interval,
            timeout=timeout,
            ttl_ns=ttl_ns,
        )
        chk.status_given = bool(status)
        if service is not None:
            chk.service_id, chk.service_name = service.id, service.name
            chk.service_tags = list(service.tags)
        return chk

    def register_check(self, body: Any) -> None:
        """PUT /v1/agent/check/register."""
        if not isinstance(body, dict):
            raise CatalogError(400, "Request decode failed: the body must be a JSON object")
        f = _fold(body)
        name = _str(f.get("name"), "Name")
        if not name:
            raise CatalogError(400, "Missing check name")
        sid = _str(f.get("serviceid"), "ServiceID")
        with self._lock:
            svc = self.services.get(sid) if sid else None
            if sid and (svc is None or sid == "consul"):
                raise CatalogError(400, f'ServiceID "{sid}" does not exist')
            chk = self._parse_check(body, default_id=name, default_name=name, service=svc)
            old = self.checks.get(chk.id)
            if not self._check_differs(chk):
                self._arm(self.checks[chk.id])
                return
            idx = self._begin()
            self._store_check(idx, chk, svc)
            self.checks_index = idx
            touched = {svc.name} if svc else {s.name for s in self.services.values()}
            if old is not None and old.service_name:
                touched.add(old.service_name)
            self._touch(idx, *touched)
            self._end(idx)

    def deregister_service(self, sid: str) -> None:
        with self._lock:
            svc = self.services.get(sid)
            if svc is None or sid == "consul":
                raise CatalogError(
                    404,
                    f'Unknown service ID "{sid}". Ensure that the service ID is passed, '
                    "not the service name.",
                )
            idx = self._begin()
            del self.services[sid]
            self.services_index = idx
            gone = [c.id for c in self.checks.values() if c.service_id == sid]
            for cid in gone:
                del self.checks[cid]
            if gone:
                self.checks_index = idx
            self._touch(idx, svc.name)
            self._end(idx)

    def deregister_check(self, cid: str) -> None:
        with self._lock:
            chk = self.checks.get(cid)
            if chk is None or cid == "serfHealth":
                raise CatalogError(404, self._unknown_check(cid))
            idx = self._begin()
            del self.checks[cid]
            self.checks_index = idx
            names = (
                {chk.service_name} if chk.service_id else {s.name for s in self.services.values()}
            )
            self._touch(idx, *names)
            self._end(idx)

    @staticmethod
    def _unknown_check(cid: str) -> str:
        return f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.'

    def update_ttl(self, cid: str, status: str, output: str) -> None:
        """/v1/agent/check/pass|warn|fail and /update: the agent takes the new state at
        once; the catalog follows now for a status change, later for output only."""
        with self._lock:
            chk = self.checks.get(cid)
            if chk is None or cid == "serfHealth":
                raise CatalogError(404, self._unknown_check(cid))
            if chk.type != "ttl":
                raise CatalogError(500, f'CheckID "{cid}" does not have associated TTL')
            self._arm(chk)
            self._set_state(chk, status, output)

    def _set_state(self, chk: Check, status: str, output: str) -> None:
        chk.agent_output = output
        if status != chk.status:
            self._sync(chk, status, output)
        elif output != chk.output:
            if chk.sync_at is None:
                chk.sync_at = time.monotonic() + CHECK_UPDATE_INTERVAL
                self.store._reaper_cond.notify_all()
        else:
            chk.sync_at = None

    def _sync(self, chk: Check, status: str, output: str) -> None:
        idx = self._begin()
        chk.status, chk.output, chk.sync_at = status, output, None
        chk.modify_index = idx
        self.checks_index = idx
        self._touch(idx, *self._names_of(chk))
        self._end(idx)

    # ------------------------------------------------------------ background (reaper)

    def due(self, now: float) -> float | None:
        """Run what fell due (TTL lapses, deferred syncs); answer the next deadline."""
        nxt: float | None = None
        for chk in list(self.checks.values()):
            if chk.deadline is not None and chk.deadline <= now:
                chk.deadline = None
                last = chk.agent_output
                expired = "TTL expired" + (
                    f" (last output before timeout follows): {last}" if last else ""
                )
                self._set_state(chk, CRITICAL, expired)
            if chk.sync_at is not None and chk.sync_at <= now:
                self._sync(chk, chk.status, chk.agent_output)
            for t in (chk.deadline, chk.sync_at):
                if t is not None and (nxt is None or t < nxt):
                    nxt = t
        return nxt

    def close(self) -> None:
        self.wake_all()
