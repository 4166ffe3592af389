"""HTTP endpoints of the service catalog: /v1/agent/service|check..., /v1/catalog/services,
/v1/catalog/service/<s>, /v1/health/service|checks|state/... (state in catalog.Catalog)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .bexpr import PREFIX, FilterError, compile_filter
from .catalog import CRITICAL, PASSING, STATUSES, WARNING, Catalog, CatalogError, Check, Service
from .http import HTTPError, Request, Response, blocking_params

if TYPE_CHECKING:
    from .http import Api

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _bool_param(req: Request, name: str) -> bool:
    """Consul's getBoolQueryParam: present without a value is true; else Go's ParseBool."""
    if name not in req.query:
        return False
    value = req.query[name]
    if value == "" or value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise HTTPError(400, f"Invalid value for ?{name}")


def _node_meta(req: Request) -> list[tuple[str, str]]:
    """`node-meta=key:value`, repeatable (all must match)."""
    out = []
    for key, value in req.raw_query:
        if key == "node-meta":
            name, _, val = value.partition(":")
            out.append((name, val))
    return out


def _tags(req: Request) -> list[str]:
    return [v for k, v in req.raw_query if k == "tag"]


class CatalogEndpoints:
    """The catalog's routes, bound to an Api (for JSON answers) and the Store's catalog."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.store = api.store
        self.catalog: Catalog = api.store.catalog

    def routes(self) -> dict[str, dict[str, Callable[..., Response]]]:
        return {
            "/v1/agent/service/register": {"PUT": self.service_register},
            "/v1/agent/service/deregister/": {"PUT": self.service_deregister},
            "/v1/agent/service/": {"GET": self.agent_service},
            "/v1/agent/services": {"GET": self.agent_services},
            "/v1/agent/checks": {"GET": self.agent_checks},
            "/v1/agent/check/register": {"PUT": self.check_register},
            "/v1/agent/check/deregister/": {"PUT": self.check_deregister},
            "/v1/agent/check/pass/": {"PUT": self._ttl(PASSING)},
            "/v1/agent/check/warn/": {"PUT": self._ttl(WARNING)},
            "/v1/agent/check/fail/": {"PUT": self._ttl(CRITICAL)},
            "/v1/agent/check/update/": {"PUT": self.check_update},
            "/v1/catalog/services": {"GET": self.catalog_services},
            "/v1/catalog/nodes": {"GET": self.catalog_nodes},
            "/v1/catalog/node/": {"GET": self.catalog_node},
            "/v1/health/node/": {"GET": self.health_node},
            "/v1/catalog/service/": {"GET": self.catalog_service},
            "/v1/health/service/": {"GET": self.health_service},
            "/v1/health/checks/": {"GET": self.health_checks},
            "/v1/health/state/": {"GET": self.health_state},
        }

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _body(req: Request) -> Any:
        if not req.body.strip():
            return None
        try:
            return json.loads(req.body)
        except (ValueError, UnicodeDecodeError) as err:
            raise HTTPError(400, f"Request decode failed: {err}") from None

    def _run(self, fn: Callable[[], None]) -> Response:
        try:
            fn()
        except CatalogError as err:
            raise HTTPError(err.status, err.message) from None
        return Response(200, b"", None)

    def _read(
        self,
        req: Request,
        query: Callable[[], tuple[int, list[Any]]],
        prototype: Callable[[], dict[str, Any]],
        keep: Callable[[Any], bool] | None = None,
    ) -> Response:
        """A blocking read: filter= applies to the JSON entries; the index is the query's."""
        min_index, timeout = blocking_params(req.query)
        predicate = None
        text = req.query.get("filter", "")
        if text:
            try:
                predicate = compile_filter(text, prototype())
            except FilterError as err:
                raise HTTPError(500, PREFIX + str(err)) from None
        index, entries = self.store.block("catalog", "", query, min_index, timeout, req.alive)
        out = [
            e for e in entries if (keep is None or keep(e)) and (predicate is None or predicate(e))
        ]
        resp = self.api._json(req, out, index=max(index, 1))
        resp.headers["X-Consul-Effective-Consistency"] = (
            "stale" if "stale" in req.query else "leader"
        )
        return resp

    def _proto_service(self) -> Service:
        return Service("x", "x", ["x"], "127.0.0.1", 1, {"x": "x"}, {"Passing": 1, "Warning": 1})

    def _proto_check(self) -> dict[str, Any]:
        return self.catalog.check_json(Check("x", "x", PASSING))

    # ------------------------------------------------------------ agent

    def service_register(self, req: Request, arg: str = "") -> Response:
        body = self._body(req)
        replace = _bool_param(req, "replace-existing-checks")
        return self._run(lambda: self.catalog.register_service(body, replace))

    def service_deregister(self, req: Request, sid: str = "") -> Response:
        if not sid:
            raise HTTPError(400, "Missing service ID")
        return self._run(lambda: self.catalog.deregister_service(sid))

    def agent_service(self, req: Request, sid: str = "") -> Response:
        try:
            out = self.catalog.agent_service(sid)
        except CatalogError as err:
            raise HTTPError(err.status, err.message) from None
        resp = self.api._json(req, out)
        resp.headers["X-Consul-Contenthash"] = out["ContentHash"]
        return resp

    def agent_services(self, req: Request, arg: str = "") -> Response:
        return self.api._json(req, self.catalog.agent_services())

    def agent_checks(self, req: Request, arg: str = "") -> Response:
        return self.api._json(req, self.catalog.agent_checks())

    def check_register(self, req: Request, arg: str = "") -> Response:
        body = self._body(req)
        return self._run(lambda: self.catalog.register_check(body))

    def check_deregister(self, req: Request, cid: str = "") -> Response:
        if not cid:
            raise HTTPError(400, "Missing check ID")
        return self._run(lambda: self.catalog.deregister_check(cid))

    def _ttl(self, status: str) -> Callable[..., Response]:
        def update(req: Request, cid: str = "") -> Response:
            if not cid:
                raise HTTPError(400, "Missing check ID")
            note = req.query.get("note", "")
            return self._run(lambda: self.catalog.update_ttl(cid, status, note))

        return update

    def check_update(self, req: Request, cid: str = "") -> Response:
        if not cid:
            raise HTTPError(400, "Missing check ID")
        body = self._body(req)
        if not isinstance(body, dict):
            raise HTTPError(400, "Request decode failed: the body must be a JSON object")
        fold = {str(k).lower(): v for k, v in body.items()}
        status = fold.get("status")
        if status not in STATUSES:
            raise HTTPError(400, f"Invalid check status: '{status}'")
        output = fold.get("output") or ""
        if not isinstance(output, str):
            raise HTTPError(400, "Request decode failed: Output must be a string")
        return self._run(lambda: self.catalog.update_ttl(cid, str(status), output))

    # ------------------------------------------------------------ catalog and health

    def catalog_services(self, req: Request, arg: str = "") -> Response:
        meta = _node_meta(req)
        min_index, timeout = blocking_params(req.query)
        predicate = None
        if req.query.get("filter"):
            try:
                proto = self.catalog.service_node_json(self._proto_service())
                predicate = compile_filter(req.query["filter"], proto)
            except FilterError as err:
                raise HTTPError(500, PREFIX + str(err)) from None
        index, services = self.store.block(
            "catalog", "", lambda: self.catalog.services_query(meta), min_index, timeout, req.alive
        )
        out: dict[str, set[str]] = {}
        for svc in services:
            if predicate is not None and not predicate(self.catalog.service_node_json(svc)):
                continue
            out.setdefault(svc.name, set()).update(svc.tags)
        body = {name: sorted(tags) for name, tags in sorted(out.items())}
        resp = self.api._json(req, body, index=index)
        resp.headers["X-Consul-Effective-Consistency"] = "leader"
        return resp

    def catalog_nodes(self, req: Request, arg: str = "") -> Response:
        meta = _node_meta(req)
        return self._read(req, lambda: self.catalog.nodes_query(meta), self.catalog.node_json)

    def catalog_node(self, req: Request, node: str = "") -> Response:
        if not node:
            raise HTTPError(400, "Missing node name")
        min_index, timeout = blocking_params(req.query)
        index, out = self.store.block(
            "catalog", "", lambda: self.catalog.node_services(node), min_index, timeout, req.alive
        )
        resp = self.api._json(req, out, index=index)
        resp.headers["X-Consul-Effective-Consistency"] = "leader"
        return resp

    def health_node(self, req: Request, node: str = "") -> Response:
        if not node:
            raise HTTPError(400, "Missing node name")
        return self._read(req, lambda: self.catalog.node_checks(node), self._proto_check)

    def catalog_service(self, req: Request, name: str = "") -> Response:
        if not name:
            raise HTTPError(400, "Missing service name")
        meta, tags = _node_meta(req), _tags(req)
        return self._read(
            req,
            lambda: self.catalog.service_nodes(name, meta),
            lambda: self.catalog.service_node_json(self._proto_service()),
            lambda e: all(t in e["ServiceTags"] for t in tags),
        )

    def health_service(self, req: Request, name: str = "") -> Response:
        if not name:
            raise HTTPError(400, "Missing service name")
        meta, tags = _node_meta(req), _tags(req)
        passing = _bool_param(req, "passing")

        def keep(e: dict[str, Any]) -> bool:
            if not all(t in e["Service"]["Tags"] for t in tags):
                return False
            return not passing or all(c["Status"] == PASSING for c in e["Checks"])

        def proto() -> dict[str, Any]:
            return {
                "Node": self.catalog.node_json(),
                "Service": self.catalog.service_json(self._proto_service(), health=True),
                "Checks": [self._proto_check()],
            }

        return self._read(req, lambda: self.catalog.health_service(name, meta), proto, keep)

    def health_checks(self, req: Request, name: str = "") -> Response:
        if not name:
            raise HTTPError(400, "Missing service name")
        meta = _node_meta(req)
        return self._read(req, lambda: self.catalog.service_checks(name, meta), self._proto_check)

    def health_state(self, req: Request, state: str = "") -> Response:
        if not state:
            raise HTTPError(400, "Missing check state")
        meta = _node_meta(req)
        return self._read(req, lambda: self.catalog.checks_in_state(state, meta), self._proto_check)
