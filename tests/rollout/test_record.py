"""A rollout record: its JSON form, and how a change moves its window and history."""

from __future__ import annotations

import orjson
import pytest

from shoal.rollout.record import (
    HISTORY,
    NONE,
    PAUSED,
    PROGRESSING,
    PROMOTED,
    ROLLED_BACK,
    STATES,
    RolloutRecord,
)
from shoal.rollout.spec import parse_spec

SPEC = {
    "stable": "2",
    "canary": {"variant": "3", "sticky": 'headers."x-user-id"',
               "analysis": {"steps": [5, 25, 100], "interval": "1m", "max_error_rate": 0.05}},
    "shadow": {"variant": "http://h:8000/v2/models/other", "percent": 50, "max_pending": 4},
}


def full_record() -> RolloutRecord:
    return RolloutRecord(
        "iris", parse_spec(SPEC), state=PAUSED, percent=25.0, step=1, since=1700000000.5,
        baseline={"requests|canary|success": 12.0, "bucket|stable|+Inf": 40.0},
        epoch="pid-123", reason="paused", origin={"canary": {"variant": "3", "percent": 5}},
        revision=7, history=[{"at": 1.0, "event": "set", "detail": "3 at 5%"}, {"at": 2.0, "event": "paused"}],
    )


def test_states() -> None:
    assert STATES == (NONE, PROGRESSING, PAUSED, PROMOTED, ROLLED_BACK)
    assert RolloutRecord("iris", parse_spec({"stable": "1"})).state == PROGRESSING


def test_to_json_from_json_round_trips() -> None:
    original = full_record()
    again = RolloutRecord.from_json(original.to_json())
    assert again == original
    assert again.spec.canary is not None and again.spec.canary.analysis is not None
    assert again.spec.canary.analysis.interval == 60.0


def test_the_round_trip_survives_json_bytes() -> None:
    original = full_record()
    assert RolloutRecord.from_json(orjson.loads(orjson.dumps(original.to_json()))) == original


def test_to_json_has_every_field() -> None:
    data = full_record().to_json()
    assert set(data) == {"model", "spec", "state", "percent", "step", "since", "baseline", "epoch",
                         "reason", "origin", "revision", "history", "previous"}
    assert data["spec"]["stable"] == "2"
    assert "percent" not in data["spec"]["canary"]  # unset fields stay out


def test_from_json_fills_in_what_older_records_lack() -> None:
    record = RolloutRecord.from_json({
        "model": "iris", "spec": {"stable": "1", "canary": {"variant": "2", "percent": 10}},
        "state": "progressing", "percent": 10, "step": 0, "since": 5,
    })
    assert record.baseline == {}
    assert record.epoch == ""
    assert record.reason == ""
    assert record.origin is None
    assert record.revision == 0
    assert record.history == []
    assert record.percent == 10.0 and isinstance(record.percent, float)
    assert record.since == 5.0


def test_from_json_treats_nulls_as_empty() -> None:
    record = RolloutRecord.from_json({
        "model": "iris", "spec": {}, "state": "promoted", "percent": 0, "step": 0, "since": 0,
        "baseline": None, "history": None,
    })
    assert record.baseline == {} and record.history == []


@pytest.mark.parametrize("missing", ["model", "spec", "state", "percent", "step", "since"])
def test_from_json_needs_the_core_fields(missing: str) -> None:
    data = full_record().to_json()
    del data[missing]
    with pytest.raises(KeyError):
        RolloutRecord.from_json(data)


# -- changed ---------------------------------------------------------------------------------------


def test_changed_with_a_baseline_restarts_the_window() -> None:
    record = full_record()
    counters = {"requests|canary|success": 30.0}
    changed = record.changed("step", 2000.0, "step 3: 100%", baseline=counters, percent=100.0, step=2)
    assert changed.since == 2000.0
    assert changed.baseline == counters
    assert changed.percent == 100.0 and changed.step == 2
    assert changed.reason == "step 3: 100%"
    assert changed.revision == record.revision + 1
    assert changed.history[-1] == {"at": 2000.0, "event": "step", "detail": "step 3: 100%"}
    assert changed.history[:-1] == record.history


def test_changed_without_a_baseline_keeps_the_window() -> None:
    record = full_record()
    changed = record.changed("rolled_back", 2000.0, "max_error_rate", state=ROLLED_BACK, percent=0.0)
    assert changed.since == record.since
    assert changed.baseline == record.baseline
    assert changed.state == ROLLED_BACK and changed.percent == 0.0
    assert changed.step == record.step
    assert changed.epoch == record.epoch


def test_changed_without_detail_uses_the_event_as_reason() -> None:
    changed = full_record().changed("paused", 3.0, state=PAUSED)
    assert changed.reason == "paused"
    assert changed.history[-1] == {"at": 3.0, "event": "paused"}  # no empty detail


def test_changed_leaves_the_original_alone() -> None:
    record = full_record()
    before = RolloutRecord.from_json(record.to_json())
    record.changed("step", 9.0, "x", baseline={"a": 1.0}, percent=50.0)
    assert record == before
    assert len(record.history) == 2


def test_history_keeps_the_last_50_events() -> None:
    assert HISTORY == 50
    record = RolloutRecord("iris", parse_spec({"stable": "1"}))
    for n in range(HISTORY + 10):
        record = record.changed(f"event-{n}", float(n))
    assert len(record.history) == HISTORY
    assert record.history[0] == {"at": 10.0, "event": "event-10"}
    assert record.history[-1] == {"at": 59.0, "event": "event-59"}
    assert record.revision == HISTORY + 10


def test_a_record_with_a_full_history_stays_full_through_json() -> None:
    record = RolloutRecord("iris", parse_spec({"stable": "1"}))
    for n in range(HISTORY):
        record = record.changed("e", float(n))
    again = RolloutRecord.from_json(record.to_json()).changed("last", 99.0)
    assert len(again.history) == HISTORY
    assert again.history[-1]["event"] == "last"
    assert again.history[0]["at"] == 1.0
