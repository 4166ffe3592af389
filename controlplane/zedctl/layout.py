"""zedcup's Consul key layout (README.md, "Consul key layout"), in one place.

Every prefix that names a tree ends in '/': deleting `<prefix>/instances/web/` must not
take `<prefix>/instances/web2/` with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageProblem
from .kvmap import PENDING_KEY
from .schema import validate_instance_name


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

    def pending(self, tree: str) -> str:
        return f"{tree}{PENDING_KEY}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}/locks/{name}"
