"""Public name (+ version) -> endpoint, with each version's state."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.errors import ModelNotFound, Unavailable
from shoal.serving.endpoint import ModelState
from shoal.serving.registry import Registry, VersionEntry, version_key


class StubEndpoint:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version

    @property
    def ready(self) -> bool:
        return True

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [self.version]}

    async def infer(self, request):  # pragma: no cover - never called here
        raise AssertionError


def ready(name: str, version: str) -> VersionEntry:
    return VersionEntry(version, ModelState.READY, endpoint=StubEndpoint(name, version))


def failed(version: str, reason: str = "boom") -> VersionEntry:
    return VersionEntry(version, ModelState.UNAVAILABLE, reason=reason)


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    for version in ("1", "2", "10"):
        registry.set("iris", ready("iris", version))
    registry.set("iris", failed("11", "pickle is corrupt"))
    registry.set("echo", VersionEntry("1", ModelState.LOADING))
    return registry


def test_newest_ready_version_is_chosen(registry: Registry) -> None:
    # 11 failed; 10 beats 2 numerically, not as a string.
    assert registry.get("iris").version == "10"


def test_explicit_version(registry: Registry) -> None:
    assert registry.get("iris", "2").version == "2"
    assert registry.entry("iris", "1").state is ModelState.READY


def test_empty_version_means_newest(registry: Registry) -> None:
    assert registry.get("iris", "").version == "10"


def test_unknown_model(registry: Registry) -> None:
    with pytest.raises(ModelNotFound, match="model 'nope' is not served here"):
        registry.get("nope")


def test_unknown_version_lists_the_served_ones(registry: Registry) -> None:
    with pytest.raises(ModelNotFound) as info:
        registry.get("iris", "3")
    message = str(info.value)
    assert "has no version '3'" in message and "['1', '2', '10', '11']" in message


def test_failed_version_is_unavailable_with_its_reason(registry: Registry) -> None:
    with pytest.raises(Unavailable) as info:
        registry.get("iris", "11")
    assert str(info.value) == "model 'iris' version 11 is unavailable: pickle is corrupt"


def test_no_ready_version_reports_the_newest_state(registry: Registry) -> None:
    with pytest.raises(Unavailable, match="model 'echo' has no ready version; version 1 is loading$"):
        registry.get("echo")
    registry.set("only-failed", failed("1", "no artifact"))
    registry.set("only-failed", failed("2", "bad yaml"))
    with pytest.raises(Unavailable, match="version 2 is unavailable: bad yaml"):
        registry.get("only-failed")


def test_entries_names_and_readiness(registry: Registry) -> None:
    assert registry.names() == ["echo", "iris"]
    assert [e.version for e in registry.entries("iris")] == ["1", "2", "10", "11"]
    assert registry.entries("nope") == []
    assert registry.any_ready()
    assert not Registry().any_ready()


def test_set_replaces_and_remove_forgets(registry: Registry) -> None:
    registry.set("echo", ready("echo", "1"))
    assert registry.get("echo").version == "1"
    removed = registry.remove("echo", "1")
    assert removed is not None and removed.version == "1"
    assert "echo" not in registry.names()
    assert registry.remove("echo", "1") is None
    with pytest.raises(ModelNotFound):
        registry.get("echo")


def test_version_key_orders_numbers_before_labels() -> None:
    assert sorted(["10", "stable", "2", "1"], key=version_key) == ["1", "2", "10", "stable"]
