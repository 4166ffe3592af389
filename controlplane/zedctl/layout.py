"""zedcup's Consul key layout (README.md, "Consul key layout"), in one place.

Every prefix that names a tree ends in '/': deleting `<prefix>/instances/web/` must not
take `<prefix>/instances/web2/` with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageProblem
from .kvmap import PENDING_KEY
from .schema import validate_instance_name

ADMIN_DOWN = "admin_down"


def _check_name(name: str) -> None:
    reason = validate_instance_name(name)
    if reason:
        raise UsageProblem(f"{reason}, got {name!r}")


@dataclass(frozen=True)
class Layout:
    prefix: str = "zedcup"

    @classmethod
    def for_prefix(cls, prefix: str) -> Layout:
        cleaned = prefix.strip("/")
        if not cleaned:
            raise UsageProblem(f"the key prefix must not be empty, got {prefix!r}")
        # Consul's HTTP router cleans paths: `a//b` or `a/../b` would name other keys.
        if any(seg in ("", ".", "..") for seg in cleaned.split("/")):
            raise UsageProblem(
                f"the key prefix must not have empty, '.' or '..' segments, got {prefix!r}"
            )
        return cls(cleaned)

    @property
    def config(self) -> str:
        return f"{self.prefix}/config/"

    @property
    def instances(self) -> str:
        return f"{self.prefix}/instances/"

    @property
    def state(self) -> str:
        return f"{self.prefix}/state/"

    def instance(self, name: str, check: bool = True) -> str:
        """An instance's config tree. `check=False` for names found in Consul (listed
        and removed even when zedctl would not accept them as input)."""
        if check:
            _check_name(name)
        return f"{self.instances}{name}/"

    def instance_state(self, name: str, check: bool = True) -> str:
        if check:
            _check_name(name)
        return f"{self.state}{name}/"

    def host_state(self, instance: str, pool: str, host: str) -> str:
        """A host's runtime state tree (the data plane's marks and the operator's hold)."""
        return f"{self.state}{instance}/{pool}/{host}/"

    def pool_state(self, instance: str, pool: str) -> str:
        return f"{self.state}{instance}/{pool}/"

    def host_hold(self, instance: str, pool: str, host: str) -> str:
        """`zedctl host down`: present while the operator holds the host out of service."""
        return f"{self.host_state(instance, pool, host)}{ADMIN_DOWN}"

    def pool_hold(self, instance: str, pool: str) -> str:
        """`zedctl pool down`: present while the operator drains the pool."""
        return f"{self.pool_state(instance, pool)}{ADMIN_DOWN}"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events/"

    def instance_events(self, name: str) -> str:
        return f"{self.events}{name}/"

    @property
    def applied(self) -> str:
        return f"{self.prefix}/applied/"

    def applied_copy(self, name: str) -> str:
        """The last config zedctl applied to an instance, as one JSON value (what status
        shows when the stored config has become invalid)."""
        return f"{self.applied}{name}"

    def pending(self, tree: str) -> str:
        return f"{tree}{PENDING_KEY}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}/locks/{name}"
