"""Rollout specs: every refusal names the field at fault; durations and variant strings."""

from __future__ import annotations

import math
from typing import Any

import pytest

from shoal.errors import InvalidInput
from shoal.rollout.spec import (
    DEFAULT_MAX_PENDING,
    RolloutSpec,
    Variant,
    parse_duration,
    parse_spec,
    parse_variant,
)

ANALYSIS = {"steps": [5, 25, 50, 100], "interval": "60s"}


def refused(data: Any) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_spec(data)
    assert caught.value.http_status == 400
    return str(caught.value)


# -- parse_spec: valid specs ---------------------------------------------------------------------


def test_a_canary_with_shadow_parses_with_defaults() -> None:
    spec = parse_spec({"stable": "2", "canary": {"variant": "3", "percent": 10},
                       "shadow": {"variant": "4"}})
    assert spec.stable == "2"
    assert spec.canary is not None and spec.canary.percent == 10.0
    assert spec.canary.sticky is None and spec.canary.analysis is None
    assert spec.canary.start_percent() == 10.0
    assert spec.shadow is not None
    assert spec.shadow.percent == 100.0
    assert spec.shadow.max_pending == DEFAULT_MAX_PENDING


def test_an_empty_spec_is_valid() -> None:
    spec = parse_spec({})
    assert spec == RolloutSpec()
    assert spec.to_json() == {}


def test_a_dark_launch_is_percent_zero() -> None:
    spec = parse_spec({"canary": {"variant": "3", "percent": 0}})
    assert spec.canary is not None and spec.canary.start_percent() == 0.0


def test_an_analysis_sets_the_start_percent_and_parses_its_interval() -> None:
    spec = parse_spec({"canary": {"variant": "3", "analysis": {**ANALYSIS, "interval": "5m",
                                                              "max_error_rate": 0.05,
                                                              "max_latency_ratio": 1.5}}})
    canary = spec.canary
    assert canary is not None and canary.analysis is not None
    assert canary.percent is None
    assert canary.start_percent() == 5.0
    assert canary.analysis.interval == 300.0
    assert canary.analysis.steps == [5.0, 25.0, 50.0, 100.0]
    assert canary.analysis.min_requests == 10  # the default
    assert canary.analysis.max_error_rate == 0.05
    assert canary.analysis.max_latency_ratio == 1.5


def test_percent_equal_to_the_first_step_is_accepted() -> None:
    spec = parse_spec({"canary": {"variant": "3", "percent": 5, "analysis": ANALYSIS}})
    assert spec.canary is not None and spec.canary.start_percent() == 5.0


def test_a_sticky_expression_that_parses_is_kept() -> None:
    spec = parse_spec({"canary": {"variant": "3", "percent": 10, "sticky": 'headers."x-user-id"'}})
    assert spec.canary is not None and spec.canary.sticky == 'headers."x-user-id"'


def test_to_json_round_trips_and_leaves_out_unset_fields() -> None:
    data = {"stable": "2", "canary": {"variant": "iris-xgb:2", "sticky": "parameters.user",
                                      "analysis": {**ANALYSIS, "max_error_rate": 0.1}},
            "shadow": {"variant": "http://h:8000", "percent": 50, "max_pending": 3}}
    spec = parse_spec(data)
    dumped = spec.to_json()
    assert "percent" not in dumped["canary"]
    assert "max_latency_ratio" not in dumped["canary"]["analysis"]
    assert dumped["canary"]["analysis"]["interval"] == 60.0
    assert parse_spec(dumped) == spec


# -- parse_spec: refusals name the field ----------------------------------------------------------


@pytest.mark.parametrize("data", [[], "canary", None, 3, ["stable", "2"]])
def test_a_body_that_is_not_an_object_is_refused(data: Any) -> None:
    assert "must be an object" in refused(data)


def test_parse_spec_names_where_the_spec_came_from() -> None:
    with pytest.raises(InvalidInput, match="^invalid model.yaml rollout: canary.percent: "):
        parse_spec({"canary": {"variant": "3", "percent": 200}}, where="model.yaml rollout")
    with pytest.raises(InvalidInput, match="^model.yaml rollout must be an object"):
        parse_spec("x", where="model.yaml rollout")


@pytest.mark.parametrize("percent", [101, -1, 100.5, "abc"])
def test_a_canary_percent_out_of_range_names_canary_percent(percent: Any) -> None:
    message = refused({"canary": {"variant": "3", "percent": percent}})
    assert "canary.percent: " in message


def test_an_unknown_field_is_named() -> None:
    assert "canary.percnt: unknown field" in refused({"canary": {"variant": "3", "percnt": 10}})
    assert "bogus: unknown field" in refused({"bogus": 1})
    message = refused({"canary": {"variant": "3", "analysis": {**ANALYSIS, "stpes": [1]}}})
    assert "canary.analysis.stpes: unknown field" in message
    assert "shadow.maxpending: unknown field" in refused({"shadow": {"variant": "4", "maxpending": 1}})


def test_every_field_at_fault_is_named() -> None:
    message = refused({"canary": {"variant": "3", "percent": 101},
                       "shadow": {"variant": "4", "max_pending": 0}})
    assert "canary.percent: " in message
    assert "shadow.max_pending: " in message


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        ([], "at least 1"),
        ([50, 25], "steps must increase"),
        ([5, 5, 50], "steps must increase"),
        ([0, 25], "above 0 and at most 100, not 0"),
        ([5, 150], "above 0 and at most 100, not 150"),
        ([-5, 50], "above 0 and at most 100, not -5"),
    ],
)
def test_bad_steps_name_canary_analysis_steps(steps: list[float], words: str) -> None:
    message = refused({"canary": {"variant": "3", "analysis": {"steps": steps, "interval": 60}}})
    assert "canary.analysis.steps: " in message
    assert words in message


def test_an_analysis_needs_an_interval_that_is_a_duration() -> None:
    assert "canary.analysis.interval: " in refused(
        {"canary": {"variant": "3", "analysis": {"steps": [5, 50]}}})
    message = refused({"canary": {"variant": "3", "analysis": {"steps": [5, 50], "interval": "soon"}}})
    assert "canary.analysis.interval: 'soon' is not a duration" in message
    message = refused({"canary": {"variant": "3", "analysis": {"steps": [5, 50], "interval": 0}}})
    assert "canary.analysis.interval: a duration must be positive" in message


@pytest.mark.parametrize(
    ("analysis", "field"),
    [
        ({"max_error_rate": 1.5}, "canary.analysis.max_error_rate"),
        ({"max_error_rate": -0.1}, "canary.analysis.max_error_rate"),
        ({"max_latency_ratio": 0}, "canary.analysis.max_latency_ratio"),
        ({"min_requests": -1}, "canary.analysis.min_requests"),
    ],
)
def test_bad_guards_are_named(analysis: dict[str, Any], field: str) -> None:
    assert f"{field}: " in refused({"canary": {"variant": "3", "analysis": {**ANALYSIS, **analysis}}})


@pytest.mark.parametrize("max_pending", [0, -3, "many"])
def test_a_bad_max_pending_names_shadow_max_pending(max_pending: Any) -> None:
    assert "shadow.max_pending: " in refused({"shadow": {"variant": "4", "max_pending": max_pending}})


def test_a_shadow_percent_out_of_range_is_named() -> None:
    assert "shadow.percent: " in refused({"shadow": {"variant": "4", "percent": 101}})


def test_a_sticky_expression_that_does_not_parse_is_named() -> None:
    message = refused({"canary": {"variant": "3", "percent": 10, "sticky": "headers.["}})
    assert "canary.sticky: " in message
    assert "'headers.[' is not a valid JMESPath expression" in message


def test_percent_differing_from_the_first_step_is_refused() -> None:
    message = refused({"canary": {"variant": "3", "percent": 10, "analysis": ANALYSIS}})
    assert "canary: percent 10 differs from analysis.steps[0] (5)" in message


def test_a_canary_needs_a_percent_or_an_analysis() -> None:
    message = refused({"canary": {"variant": "3"}})
    assert "canary: give a percent (0-100), or an analysis with steps" in message


def test_a_missing_variant_is_named() -> None:
    assert "canary.variant: " in refused({"canary": {"percent": 10}})
    assert "shadow.variant: " in refused({"shadow": {"percent": 10}})


def test_a_section_that_is_not_an_object_is_named() -> None:
    assert "canary: " in refused({"canary": "3=10"})


# -- variants of a spec ---------------------------------------------------------------------------


def test_variants_parses_each_role() -> None:
    spec = parse_spec({"stable": "2", "canary": {"variant": "iris-xgb:1", "percent": 5},
                       "shadow": {"variant": "http://h:8000/v2/models/other"}})
    variants = spec.variants("iris")
    assert variants["stable"] == Variant("2", "iris", "2")
    assert variants["canary"] == Variant("iris-xgb:1", "iris-xgb", "1")
    assert variants["shadow"] == Variant("http://h:8000/v2/models/other", "other", None, "http://h:8000")


def test_variants_names_the_field_of_a_bad_variant() -> None:
    spec = parse_spec({"canary": {"variant": "http://h:8000", "percent": 5}})
    with pytest.raises(InvalidInput, match=r"^canary\.variant: .*only a shadow may be a remote URL"):
        spec.variants("iris")
    spec = parse_spec({"stable": "a/b"})
    with pytest.raises(InvalidInput, match=r"^stable: 'a/b' is not a variant"):
        spec.variants("iris")
    spec = parse_spec({"shadow": {"variant": "../x"}})
    with pytest.raises(InvalidInput, match=r"^shadow\.variant: '\.\./x' is not a variant.*or a URL"):
        spec.variants("iris")


# -- parse_duration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("60s", 60.0), ("5m", 300.0), ("250ms", 0.25), ("1h", 3600.0), ("30", 30.0),
        (30, 30.0), (0.5, 0.5), (" 2 m ", 120.0), ("1.5s", 1.5), (".5s", 0.5),
    ],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["abc", "5x", "", "-5s", "1e3", "5 minutes", None, [1], "s"])
def test_parse_duration_refuses_what_is_not_a_duration(value: Any) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [0, 0.0, "0", "0s", "0ms", -1, -0.5, math.inf, math.nan])
def test_parse_duration_refuses_zero_negative_and_non_finite(value: Any) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_refuses_booleans(value: bool) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


# -- parse_variant --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", Variant("3", "iris", "3")),
        (" 3 ", Variant("3", "iris", "3")),
        ("0", Variant("0", "iris", "0")),
        ("iris-xgb", Variant("iris-xgb", "iris-xgb", None)),
        ("iris-xgb:2", Variant("iris-xgb:2", "iris-xgb", "2")),
        ("my_model.v2", Variant("my_model.v2", "my_model.v2", None)),
    ],
)
def test_parse_variant_local_forms(text: str, expected: Variant) -> None:
    variant = parse_variant(text, "iris", "canary.variant")
    assert variant == expected
    assert not variant.remote


def test_variant_describe() -> None:
    assert parse_variant("3", "iris", "f").describe() == "iris version 3"
    assert parse_variant("iris-xgb", "iris", "f").describe() == "iris-xgb"
    assert parse_variant("iris-xgb:2", "iris", "f").describe() == "iris-xgb version 2"
    remote = parse_variant("http://h:8000/v2/models/o", "iris", "f", remote_allowed=True)
    assert remote.describe() == "o at http://h:8000"


@pytest.mark.parametrize(
    "text",
    ["../x", "a/b", "x:y", "..", "a..b", "-a", "", "  ", "a:02", "a:-1", "a b", "a:1:2", "/abs"],
)
def test_parse_variant_refuses_bad_names(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_variant(text, "iris", "canary.variant")
    message = str(caught.value)
    assert message.startswith("canary.variant: ")
    assert "is not a variant" in message
    assert "or a URL" not in message  # a canary may not be remote: not suggested


@pytest.mark.parametrize(
    ("text", "model", "version", "url"),
    [
        ("http://h:8000", "iris", None, "http://h:8000"),
        ("https://h:8000/", "iris", None, "https://h:8000"),
        ("http://h:8000/v2/models/other", "other", None, "http://h:8000"),
        ("http://h:8000/v2/models/other/", "other", None, "http://h:8000"),
        ("http://h:8000/v2/models/other/versions/3", "other", "3", "http://h:8000"),
        ("  http://10.0.0.1/v2/models/a.b-c_d  ", "a.b-c_d", None, "http://10.0.0.1"),
    ],
)
def test_parse_variant_remote_urls(text: str, model: str, version: str | None, url: str) -> None:
    variant = parse_variant(text, "iris", "shadow.variant", remote_allowed=True)
    assert (variant.model, variant.version, variant.url) == (model, version, url)
    assert variant.remote
    assert variant.text == text.strip()


@pytest.mark.parametrize("text", ["http://h:8000", "https://h/v2/models/other"])
def test_a_url_is_refused_unless_remote_is_allowed(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^canary\.variant: .*only a shadow may be a remote URL"):
        parse_variant(text, "iris", "canary.variant")


@pytest.mark.parametrize("text", ["ftp://h", "http://", "file:///etc/passwd"])
def test_a_url_must_be_http_or_https_with_a_host(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^shadow\.variant: .*is not an http:// or https:// URL"):
        parse_variant(text, "iris", "shadow.variant", remote_allowed=True)


@pytest.mark.parametrize(
    "text",
    [
        "http://h/x",
        "http://h/v2/models",
        "http://h/v2/models/",
        "http://h/v2/models/../x",
        "http://h/v2/models/a/b",
        "http://h/v2/models/a/versions/x",
        "http://h/v2/models/a/versions/",
        "http://h/v2/models/a/infer",
        "http://h/v1/models/a",
    ],
)
def test_a_remote_url_path_must_be_v2_models_name(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"the URL's path must be empty or /v2/models/NAME\[/versions/N\]"):
        parse_variant(text, "iris", "shadow.variant", remote_allowed=True)
