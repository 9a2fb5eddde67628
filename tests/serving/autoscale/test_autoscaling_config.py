"""``autoscaling:`` / ``resources:`` in model.yaml: durations, defaults, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import LoadError
from shoal.repository.config import read_config
from shoal.serving.autoscale.config import AutoscalingConfig, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("60s", 60.0), ("6s", 6.0), ("5m", 300.0), ("500ms", 0.5), ("1h", 3600.0), (90, 90.0),
    ("1.5m", 90.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1s", "10 minutes", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_defaults_come_from_the_model_then_the_server_then_knative() -> None:
    resolved = AutoscalingConfig(max_replicas=4).resolved({"max_replicas": 2, "min_replicas": 0})
    assert (resolved.min_replicas, resolved.max_replicas) == (0, 4)
    assert (resolved.stable_window, resolved.panic_window, resolved.panic_threshold) == (60, 6, 2)
    assert resolved.scale_to_zero_after == 300


def load(tmp_path: Path, text: str) -> object:
    (tmp_path / "model.yaml").write_text(text)
    return read_config(tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ("autoscaling: {min_replica: 0}", "autoscaling.min_replica: Extra inputs are not permitted"),
    ("autoscaling: {min_replicas: 3, max_replicas: 2}", "min_replicas (3) is above max_replicas (2)"),
    ("autoscaling: {stable_window: 10s, panic_window: 20s}", "panic_window (20s) is longer"),
    ("autoscaling: {scale_to_zero_after: later}", "'later' is not a duration"),
    ("resources: {gpu: 1}", "resources.gpu: Extra inputs are not permitted"),
])
def test_mistakes_fail_the_load_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(LoadError) as caught:
        load(tmp_path, text)
    assert message in str(caught.value)


def test_a_block_or_false(tmp_path: Path) -> None:
    assert load(tmp_path, "autoscaling: false").autoscaling is False
    assert isinstance(load(tmp_path, "autoscaling: {}").autoscaling, AutoscalingConfig)


def test_the_models_own_bound_wins_over_a_default_it_contradicts() -> None:
    raised = AutoscalingConfig(min_replicas=3).resolved({"max_replicas": 2})
    assert (raised.min_replicas, raised.max_replicas) == (3, 3)
    lowered = AutoscalingConfig(max_replicas=2).resolved({"min_replicas": 3})
    assert (lowered.min_replicas, lowered.max_replicas) == (2, 2)
