"""A rollout's spec: which variants serve a public name, and how traffic moves between them.

The same spec arrives three ways: the body of ``PUT /v2/models/{m}/rollout``, the ``rollout:``
section of a ``model.yaml``, and ``shoal rollout set``. Every field is checked here and every
message names the field at fault (``canary.percent: ...``), so a bad spec is a 400 (or a
failed load) that changes nothing.

A variant is written as a string:

- ``"3"``: version 3 of the public model itself (a number is always a version);
- ``"iris-xgb"`` or ``"iris-xgb:2"``: another model or graph of the repository (its newest
  ready version, or the one named);
- ``"http://host:8000"`` (shadow only): the same model name on a remote V2 REST server,
  ``http://host:8000/v2/models/other`` for another name there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import InvalidInput
from ..expressions import Expression, ExpressionError

_VERSION = re.compile(r"^(0|[1-9][0-9]*)$")
_MODEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_REMOTE_PATH = re.compile(r"^/v2/models/([A-Za-z0-9_][A-Za-z0-9_.\-]*)(?:/versions/([0-9]+))?/?$")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

#: Pending shadow requests per rollout, by default, before new ones are skipped.
DEFAULT_MAX_PENDING = 64
#: The most a spec may allow: each pending shadow request holds a copy of its inputs.
MAX_PENDING_LIMIT = 10_000


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like ``"60s"``, ``"5m"``, ``"250ms"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration like 30, '30s', '5m' or '250ms'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a duration like 30, '30s', '5m' or '250ms'")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, not {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Variant:
    """Where a variant's requests go: a model (or graph) of this server, or a remote URL."""

    text: str
    model: str = ""
    version: str | None = None
    url: str | None = None

    @property
    def remote(self) -> bool:
        return self.url is not None

    def describe(self) -> str:
        if self.url is not None:
            return f"{self.model} at {self.url}"
        return f"{self.model} version {self.version}" if self.version else self.model


def parse_variant(text: str, model: str, field: str, remote_allowed: bool = False) -> Variant:
    """A variant string of the public model ``model``; InvalidInput naming ``field``."""
    text = text.strip()
    if _VERSION.fullmatch(text):
        return Variant(text, model, text)
    if text.isdigit():
        raise InvalidInput(f"{field}: {text!r} is not a version (no leading zeros)")
    if "://" in text:
        if not remote_allowed:
            raise InvalidInput(f"{field}: {text!r}: only a shadow may be a remote URL")
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidInput(f"{field}: {text!r} is not an http:// or https:// URL")
        if parts.query or parts.fragment:
            raise InvalidInput(f"{field}: {text!r}: a shadow URL takes no query or fragment")
        remote_model, remote_version = model, None
        if parts.path not in ("", "/"):
            match = _REMOTE_PATH.fullmatch(parts.path)
            if match is None:
                raise InvalidInput(
                    f"{field}: {text!r}: the URL's path must be empty or /v2/models/NAME"
                    "[/versions/N]"
                )
            remote_model, remote_version = match.group(1), match.group(2)
        return Variant(text, remote_model, remote_version, f"{parts.scheme}://{parts.netloc}")
    name, colon, version = text.partition(":")
    if not _MODEL.fullmatch(name) or ".." in name or (colon and not _VERSION.fullmatch(version)):
        raise InvalidInput(
            f"{field}: {text!r} is not a variant: write a version of {model!r} (\"3\"), "
            "another model (\"iris-xgb\" or \"iris-xgb:2\")"
            + (", or a URL" if remote_allowed else "")
        )
    return Variant(text, name, version or None)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _a_number(value: Any) -> Any:
    """Percentages and limits are JSON numbers: ``true`` or ``"10"`` is a mistake."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, not {value!r}")
    return value


class AnalysisSpec(_Strict):
    """Progressive delivery: the canary's percentage steps up while the guards hold."""

    steps: list[float] = Field(min_length=1)
    interval: float
    """Seconds each step lasts before the next (``"60s"``, ``"5m"``)."""
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    """Largest share of the canary's requests in a step that may fail with a 5xx."""
    max_latency_ratio: float | None = Field(default=None, gt=0)
    """Largest canary p99 / stable p99 over a step."""
    min_requests: int = Field(default=10, ge=0)
    """Canary requests a step needs before its guards are judged and before it may advance."""

    @field_validator("interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("max_error_rate", "max_latency_ratio", "min_requests", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        return value if value is None else _a_number(value)

    @field_validator("steps", mode="before")
    @classmethod
    def _number_list(cls, value: Any) -> Any:
        return [_a_number(v) for v in value] if isinstance(value, list) else value

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        for step in steps:
            if not 0 < step <= 100:
                raise ValueError(f"each step is a percentage above 0 and at most 100, not {step:g}")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"steps must increase, not {[f'{s:g}' for s in steps]}")
        return steps


class CanarySpec(_Strict):
    variant: str
    percent: float | None = Field(default=None, ge=0, le=100)
    """Share of the traffic the canary gets (0 is a dark launch); with an ``analysis``, its
    first step."""
    sticky: str | None = None
    """A JMESPath expression over the request (``headers."x-user-id"``): one key, one variant."""
    analysis: AnalysisSpec | None = None

    @field_validator("percent", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return value if value is None else _a_number(value)

    @field_validator("sticky")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Expression(value)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _percent_or_analysis(self) -> CanarySpec:
        if self.analysis is None and self.percent is None:
            raise ValueError("give a percent (0-100), or an analysis with steps")
        if self.analysis is not None and self.percent is not None and self.percent != self.analysis.steps[0]:
            raise ValueError(
                f"percent {self.percent:g} differs from analysis.steps[0] "
                f"({self.analysis.steps[0]:g}): with an analysis the steps set the percentage"
            )
        return self

    def start_percent(self) -> float:
        return self.analysis.steps[0] if self.analysis is not None else float(self.percent or 0.0)


class ShadowSpec(_Strict):
    variant: str
    percent: float = Field(default=100.0, ge=0, le=100)
    """Share of the traffic mirrored to the shadow."""
    max_pending: int = Field(default=DEFAULT_MAX_PENDING, ge=1, le=MAX_PENDING_LIMIT)
    """Shadow requests waiting or running at once; requests beyond it are not mirrored (and
    counted)."""

    @field_validator("percent", "max_pending", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return _a_number(value)


class RolloutSpec(_Strict):
    stable: str | None = None
    """Default: where unversioned requests went when the rollout was set (the live rollout's
    stable variant, else the newest ready version), pinned."""
    canary: CanarySpec | None = None
    shadow: ShadowSpec | None = None

    def variants(self, model: str) -> dict[str, Variant]:
        """Each role's variant, parsed; InvalidInput naming the field."""
        found = {}
        if self.stable is not None:
            found["stable"] = parse_variant(self.stable, model, "stable")
        if self.canary is not None:
            found["canary"] = parse_variant(self.canary.variant, model, "canary.variant")
        if self.shadow is not None:
            found["shadow"] = parse_variant(
                self.shadow.variant, model, "shadow.variant", remote_allowed=True
            )
        return found

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def parse_spec(data: Any, where: str = "rollout") -> RolloutSpec:
    """A spec from JSON or YAML data; InvalidInput naming every field at fault."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{where} must be an object with stable, canary and/or shadow")
    try:
        return RolloutSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"invalid {where}: {validation_message(exc)}") from None


def validation_message(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "value_error" and "error" in error.get("ctx", {}):
            message = str(error["ctx"]["error"])
        else:
            message = str(error["msg"])
        problems.append(f"{field}: {message}")
    return "; ".join(problems)
