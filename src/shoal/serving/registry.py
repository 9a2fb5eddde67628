"""Public name (+ version) -> the endpoint that answers it, with each version's state.

The transports only talk to the registry. A version that failed to load stays listed with
its reason, so readiness endpoints and the repository index can say why.
"""

from __future__ import annotations

from collections.abc import Callable
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
        #: The rollout endpoint of a name, if it has one (set by the rollout manager): a
        #: request without a version goes to the rollout's variants.
        self.rollout_for: Callable[[str], Endpoint | None] | None = None

    def set(self, name: str, entry: VersionEntry) -> None:
        versions = self._models.get(name, {})
        versions[entry.version] = entry
        # Kept newest first, so a request without a version finds its entry without sorting.
        self._models[name] = dict(
            sorted(versions.items(), key=lambda item: version_key(item[0]), reverse=True)
        )

    def remove(self, name: str, version: str) -> VersionEntry | None:
        versions = self._models.get(name, {})
        entry = versions.pop(version, None)
        if not versions:
            self._models.pop(name, None)
        return entry

    def entries(self, name: str) -> list[VersionEntry]:
        return list(reversed(self._models.get(name, {}).values()))

    def names(self) -> list[str]:
        return sorted(self._models)

    def get(self, name: str, version: str | None = None) -> Endpoint:
        """The endpoint to call: the named version; without one, the model's rollout if it
        has one, else its newest ready version."""
        if not version and self.rollout_for is not None and name in self._models:
            rollout = self.rollout_for(name)
            if rollout is not None:
                return rollout
        return self.served(name, version)

    def served(self, name: str, version: str | None = None) -> Endpoint:
        """The named version, or the newest ready one, whatever rollout the name has."""
        entry = self.entry(name, version)
        if entry.state is not ModelState.READY or entry.endpoint is None:
            detail = f": {entry.reason}" if entry.reason else ""
            state = entry.state.value.lower()
            if version:
                raise Unavailable(f"model {name!r} version {entry.version} is {state}{detail}")
            raise Unavailable(  # the entry is the newest version: none is ready
                f"model {name!r} has no ready version; version {entry.version} is {state}{detail}"
            )
        if not entry.endpoint.ready:  # a graph is ready only while the models it calls are
            reason = entry.endpoint.unready_reason()
            raise Unavailable(
                f"model {name!r} version {entry.version} is not ready"
                + (f": {reason}" if reason else "")
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
                    f"{[e.version for e in self.entries(name)]}"
                ) from None
        for candidate in versions.values():
            if candidate.state is ModelState.READY:
                return candidate
        return next(iter(versions.values()))

    def any_ready(self) -> bool:
        return any(
            e.state is ModelState.READY for versions in self._models.values() for e in versions.values()
        )
