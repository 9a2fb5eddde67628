"""``shoal rollout``'s pure parts: the spec its options describe, and the status it prints."""

from __future__ import annotations

import asyncio
from typing import Any

import click
import pytest
from click.testing import CliRunner

from shoal.cli.main import main
from shoal.cli.rollout import describe, spec_from_options
from shoal.rollout.record import PROGRESSING, RolloutRecord
from shoal.rollout.spec import parse_spec
from shoal.rollout.window import shadow_figures, variant_figures

OPTIONS = ("stable", "canary", "shadow", "sticky", "steps", "interval", "max_error_rate",
           "max_latency_ratio", "min_requests", "max_pending")


def spec(**options: Any) -> dict[str, Any]:
    unknown = set(options) - set(OPTIONS)
    assert not unknown, unknown
    return spec_from_options(*(options.get(name) for name in OPTIONS))


# -- spec_from_options -------------------------------------------------------------------------------


def test_the_issue_example() -> None:
    result = spec(stable="2", canary="3=10", shadow="4=100")
    assert result == {"stable": "2", "canary": {"variant": "3", "percent": 10.0},
                      "shadow": {"variant": "4", "percent": 100.0}}
    parsed = parse_spec(result)  # what the server accepts
    assert parsed.canary is not None and parsed.canary.percent == 10.0


def test_no_options_is_an_empty_spec() -> None:
    assert spec() == {}


def test_a_variant_without_a_percent() -> None:
    assert spec(canary="iris-xgb:2") == {"canary": {"variant": "iris-xgb:2"}}
    assert spec(shadow="http://h:8000/v2/models/other") == {
        "shadow": {"variant": "http://h:8000/v2/models/other"}
    }


def test_the_percent_follows_the_last_equals_sign() -> None:
    assert spec(canary="iris-xgb:2=5.5") == {"canary": {"variant": "iris-xgb:2", "percent": 5.5}}
    assert spec(shadow="http://h:8000=25") == {"shadow": {"variant": "http://h:8000", "percent": 25.0}}


def test_analysis_options_go_under_the_canary() -> None:
    result = spec(canary="3", sticky='headers."x-user-id"', steps="5,25,50,100", interval="60s",
                  max_error_rate=0.05, max_latency_ratio=1.5, min_requests=20)
    assert result == {"canary": {
        "variant": "3", "sticky": 'headers."x-user-id"',
        "analysis": {"steps": [5.0, 25.0, 50.0, 100.0], "interval": "60s", "max_error_rate": 0.05,
                     "max_latency_ratio": 1.5, "min_requests": 20},
    }}
    parsed = parse_spec(result)
    assert parsed.canary is not None and parsed.canary.start_percent() == 5.0


@pytest.mark.parametrize(
    ("steps", "expected"),
    [("5,25,50,100", [5.0, 25.0, 50.0, 100.0]), (" 5, 25 ,100 ", [5.0, 25.0, 100.0]),
     ("10", [10.0]), ("2.5,50,", [2.5, 50.0]), ("5,,50", [5.0, 50.0])],
)
def test_steps_parsing(steps: str, expected: list[float]) -> None:
    assert spec(canary="3", steps=steps, interval="1m")["canary"]["analysis"]["steps"] == expected


@pytest.mark.parametrize("steps", ["5,x", "five", "5;25", "5 25"])
def test_bad_steps_are_a_bad_parameter(steps: str) -> None:
    with pytest.raises(click.BadParameter) as caught:
        spec(canary="3", steps=steps)
    assert caught.value.param_hint == "--steps"
    assert "5,25,50,100" in caught.value.format_message()


def test_zero_min_requests_is_kept() -> None:
    assert spec(canary="3", steps="50", interval="1m", min_requests=0)["canary"]["analysis"] == {
        "steps": [50.0], "interval": "1m", "min_requests": 0,
    }


def test_shadow_max_pending() -> None:
    assert spec(shadow="4=50", max_pending=8) == {"shadow": {"variant": "4", "percent": 50.0, "max_pending": 8}}


@pytest.mark.parametrize(
    "options",
    [{"sticky": "parameters.user"}, {"sticky": "parameters.user", "shadow": "4"},
     {"steps": "5,50"}, {"interval": "1m"}, {"max_error_rate": 0.1}, {"max_latency_ratio": 2.0},
     {"min_requests": 0}],
)
def test_sticky_and_analysis_options_need_a_canary(options: dict[str, Any]) -> None:
    with pytest.raises(click.UsageError, match="need a --canary") as caught:
        spec(**options)
    assert not isinstance(caught.value, click.BadParameter)


def test_max_pending_needs_a_shadow() -> None:
    with pytest.raises(click.UsageError, match="--max-pending needs a --shadow"):
        spec(canary="3=10", max_pending=4)


@pytest.mark.parametrize(("option", "value"), [("canary", "3=x"), ("canary", "3="), ("shadow", "4=half")])
def test_a_percent_that_is_not_a_number_is_a_bad_parameter(option: str, value: str) -> None:
    with pytest.raises(click.BadParameter) as caught:
        spec(**{option: value})
    assert caught.value.param_hint == f"--{option}"
    assert f"{value!r}: write VARIANT=PERCENT" in caught.value.format_message()


# -- the command refuses before it calls any server --------------------------------------------------


def invoke(*args: str) -> Any:
    # An address nothing listens on: none of these commands may get as far as calling it.
    return CliRunner().invoke(main, ["rollout", "set", "iris", "--server", "http://127.0.0.1:9", *args])


def test_the_command_refuses_sticky_without_canary() -> None:
    result = invoke("--sticky", "parameters.user")
    assert result.exit_code == 2
    assert "need a --canary" in result.output


def test_the_command_refuses_a_bad_canary() -> None:
    result = invoke("--canary", "3=x")
    assert result.exit_code == 2
    assert "'3=x': write VARIANT=PERCENT" in result.output


def test_the_command_refuses_a_file_with_options(tmp_path: Any) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text("canary: {variant: '3', percent: 10}\n")
    result = invoke("--file", str(path), "--canary", "3=10")
    assert result.exit_code == 2
    assert "either --file or the rollout options" in result.output


def test_the_command_checks_option_ranges() -> None:
    assert invoke("--canary", "3", "--max-error-rate", "2").exit_code == 2
    assert invoke("--canary", "3", "--max-latency-ratio", "0").exit_code == 2
    assert invoke("--shadow", "4", "--max-pending", "0").exit_code == 2


# -- describe --------------------------------------------------------------------------------------


def status_of(record: RolloutRecord, delta: dict[str, float], pending: int = 0,
              window_seconds: float = 42.0) -> dict[str, Any]:
    """The answer RolloutManager.status() gives for ``record`` over ``delta``, built as it
    builds it."""
    spec = record.spec
    variants = spec.variants(record.model)
    answer: dict[str, Any] = {
        "model": record.model, "state": record.state, "spec": spec.to_json(),
        "canary_percent": record.percent, "reason": record.reason, "since": record.since,
        "window_seconds": window_seconds, "variants": {},
    }
    if spec.canary is not None and spec.canary.analysis is not None:
        answer["step"] = {"index": record.step, "of": len(spec.canary.analysis.steps),
                          "interval_seconds": spec.canary.analysis.interval}
    for role in ("stable", "canary"):
        if role in variants:
            answer["variants"][role] = {"variant": variants[role].text, **variant_figures(delta, role)}
    if spec.shadow is not None:
        answer["variants"]["shadow"] = {
            "variant": spec.shadow.variant, "percent": spec.shadow.percent, "pending": pending,
            **variant_figures(delta, "shadow"), **shadow_figures(delta),
        }
    answer["history"] = record.history[-20:]
    return answer


DELTA = {
    "requests|stable|success": 90.0, "requests|stable|404": 2.0,
    "bucket|stable|0.01": 92.0, "bucket|stable|+Inf": 92.0,
    "requests|canary|success": 8.0, "requests|canary|500": 2.0,
    "bucket|canary|0.1": 10.0, "bucket|canary|+Inf": 10.0,
    "requests|shadow|success": 50.0,
    "bucket|shadow|0.02": 50.0, "bucket|shadow|+Inf": 50.0,
    "shadow_skipped": 7.0,
    "shadow|label|compared": 40.0, "shadow|label|agreed": 30.0, "shadow|label|mismatches": 1.0,
    "shadow|score|compared": 8.0, "shadow|score|abs_difference": 0.5,
}


def test_describe_no_rollout() -> None:
    assert describe({"model": "iris", "state": "none"}) == "iris: no rollout"


def test_describe_a_progressive_canary_with_a_shadow() -> None:
    spec = parse_spec({"stable": "2", "canary": {"variant": "3",
                                                 "analysis": {"steps": [5, 25, 100], "interval": "1m"}},
                       "shadow": {"variant": "iris-xgb", "max_pending": 4}})
    record = RolloutRecord("iris", spec, PROGRESSING, 25.0, 1, since=100.0)
    record = record.changed("step", 100.0, "step 2: 25% (step 1 passed with 12 canary requests)")
    text = describe(status_of(record, DELTA, pending=3))
    lines = text.splitlines()
    assert lines[0] == "iris: progressing, canary at 25%, step 2 of 3 (60 s each)"
    assert lines[1] == "  step 2: 25% (step 1 passed with 12 canary requests) (42 s ago)"
    header, stable, canary, shadow = (line.split() for line in lines[2:6])
    assert header == ["variant", "target", "requests", "5xx", "4xx", "p50", "ms", "p99", "ms"]
    assert stable == ["stable", "2", "92", "0", "2", "5.00", "9.90"]
    assert canary == ["canary", "3", "10", "2", "0", "50.00", "99.00"]
    assert shadow == ["shadow", "iris-xgb", "50", "0", "0", "10.00", "19.80"]
    # The table's columns line up.
    assert lines[3].index("2 ") == lines[2].index("target")
    assert lines[6] == "  shadow: 3 running, 7 skipped (queue full)"
    assert lines[7] == "    label: agreement 75.0% over 40 values, 1 mismatched answers"
    assert lines[8] == "    score: mean |difference| 0.0625 over 8 values, 0 mismatched answers"
    assert len(lines) == 9


def test_describe_a_plain_canary_without_traffic() -> None:
    spec = parse_spec({"stable": "2", "canary": {"variant": "iris-xgb:1", "percent": 0}})
    record = RolloutRecord("iris", spec, PROGRESSING, 0.0).changed("set", 0.0, "iris-xgb:1 at 0%")
    lines = describe(status_of(record, {}, window_seconds=0.4)).splitlines()
    assert lines[0] == "iris: progressing, canary at 0%"  # no step: no analysis
    assert lines[1] == "  iris-xgb:1 at 0% (0 s ago)"
    assert lines[3].split() == ["stable", "2", "0", "0", "0", "-", "-"]
    assert lines[4].split() == ["canary", "iris-xgb:1", "0", "0", "0", "-", "-"]
    assert len(lines) == 5


def test_describe_a_promoted_rollout_with_only_a_shadow_left() -> None:
    spec = parse_spec({"stable": "3", "shadow": {"variant": "http://h:8000"}})
    record = RolloutRecord("iris", spec, "promoted", 0.0).changed("promoted", 0.0, "3 is the stable variant now")
    lines = describe(status_of(record, {"shadow|out|compared": 0.0, "shadow|out|mismatches": 2.0})).splitlines()
    assert lines[0] == "iris: promoted"  # no canary: no percentage
    assert lines[-2] == "  shadow: 0 running, 0 skipped (queue full)"
    assert lines[-1] == "    out: agreement - over 0 values, 2 mismatched answers"


def test_describe_a_float_output_without_values() -> None:
    spec = parse_spec({"stable": "3", "shadow": {"variant": "4"}})
    record = RolloutRecord("iris", spec, PROGRESSING, 0.0)
    status = status_of(record, {"shadow|p|abs_difference": 0.0, "shadow|p|mismatches": 1.0})
    assert describe(status).splitlines()[-1] == "    p: mean |difference| - over 0 values, 1 mismatched answers"


def test_describe_tolerates_a_status_with_few_fields() -> None:
    text = describe({"model": "iris", "state": "paused", "variants": {}})
    assert text.splitlines()[0] == "iris: paused"


class _Stub:
    """Just enough of a served version for the rollout manager's checks."""

    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version

    @property
    def ready(self) -> bool:
        return True


def test_describe_the_answer_of_a_rollout_manager(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real status() (no server): a registry of stubs, counters fed by hand.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    from prometheus_client import CollectorRegistry

    from shoal.rollout.manager import RolloutManager
    from shoal.serving.endpoint import ModelState
    from shoal.serving.registry import Registry, VersionEntry

    registry = Registry()
    for version in ("2", "3", "4"):
        registry.set("iris", VersionEntry(version, ModelState.READY, endpoint=_Stub("iris", version)))
    manager = RolloutManager(registry, tmp_path / "models", lambda: ["iris"], CollectorRegistry(),
                             tmp_path / "state")

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            assert (await manager.status("iris")) == {"model": "iris", "state": "none"}
            await manager.set("iris", {"stable": "2", "canary": {"variant": "3", "percent": 10},
                                       "shadow": {"variant": "4", "max_pending": 2}})
            for _ in range(9):
                manager.metrics.answered("iris", "canary", "success", 0.05)
            manager.metrics.answered("iris", "canary", "500", 0.05)
            manager.metrics.answered("iris", "stable", "400", 0.01)
            return {"model": "iris", "state": "none"}, await manager.status("iris")
        finally:
            await manager.close()
            manager.store.close()

    none, status = asyncio.run(scenario())
    assert describe(none) == "iris: no rollout"
    lines = describe(status).splitlines()
    assert lines[0] == "iris: progressing, canary at 10%"
    assert lines[2].split()[:5] == ["variant", "target", "requests", "5xx", "4xx"]
    assert lines[3].split()[:5] == ["stable", "2", "1", "0", "1"]
    assert lines[4].split()[:5] == ["canary", "3", "10", "1", "0"]
    assert lines[5].split() == ["shadow", "4", "0", "0", "0", "-", "-"]
    assert lines[6] == "  shadow: 0 running, 0 skipped (queue full)"
    assert len(lines) == 7
