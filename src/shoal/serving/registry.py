"""Public name (+ version) -> the endpoint that answers it, with each version's state.

The transports only talk to the registry. A version that failed to load stays listed with
its reason, so readiness endpoints and the repository index can say why.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelNotFound, Unavailable
from .endpoint import Endpoint, ModelState


@dataclass(slots=True)
class VersionEntry:
    version: str
    state: ModelState
    reason: str = ""
    endpoint: Endpoint | None = None


def version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


class Registry:
    def __init__(self) -> None:
        self._models: dict[str, dict[str, VersionEntry]] = {}

    def set(self, name: str, entry: VersionEntry) -> None:
        self._models.setdefault(name, {})[entry.version] = entry

    def remove(self, name: str, version: str) -> VersionEntry | None:
        versions = self._models.get(name, {})
        entry = versions.pop(version, None)
        if not versions:
            self._models.pop(name, None)
        return entry

    def entries(self, name: str) -> list[VersionEntry]:
        versions = self._models.get(name, {})
        return [versions[v] for v in sorted(versions, key=version_key)]

    def names(self) -> list[str]:
        return sorted(self._models)

    def get(self, name: str, version: str | None = None) -> Endpoint:
        """The endpoint to call: the named version, or the newest ready one."""
        entry = self.entry(name, version)
        if entry.state is not ModelState.READY or entry.endpoint is None:
            detail = f": {entry.reason}" if entry.reason else ""
            raise Unavailable(
                f"model {name!r} version {entry.version} is {entry.state.value.lower()}{detail}"
            )
        return entry.endpoint

    def entry(self, name: str, version: str | None = None) -> VersionEntry:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} is not served here")
        if version:
            try:
                return versions[version]
            except KeyError:
                raise ModelNotFound(
                    f"model {name!r} has no version {version!r}; served: "
                    f"{sorted(versions, key=version_key)}"
                ) from None
        ordered = sorted(versions, key=version_key, reverse=True)
        for v in ordered:
            if versions[v].state is ModelState.READY:
                return versions[v]
        return versions[ordered[0]]

    def any_ready(self) -> bool:
        return any(
            e.state is ModelState.READY for versions in self._models.values() for e in versions.values()
        )
