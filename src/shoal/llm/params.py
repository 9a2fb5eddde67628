"""How one sequence is generated: :class:`SamplingParams` (a frozen dataclass, no torch import).

Direct construction validates ranges (``InvalidInput``); :meth:`SamplingParams.checked` also
coerces what a JSON request carries (a ``stop`` string or list, an integral ``temperature``)
and rejects unknown names, so the protocol layers call it with the request's fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from ..errors import InvalidInput

#: "stop": an end-of-sequence token or a stop string; "length": ``max_new_tokens`` reached;
#: "cancelled": the stream was cancelled (a client went away) or the engine stopped.
FinishReason = Literal["stop", "length", "cancelled"]

#: The most alternatives a token's ``logprobs`` may ask for (OpenAI's limit).
MAX_LOGPROBS = 20
#: The most stop strings a request may carry.
MAX_STOP_STRINGS = 16
#: Temperatures below this are greedy (argmax): dividing logits by a smaller one overflows
#: float32 into inf/nan (vLLM uses the same threshold).
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """One sequence's generation settings.

    - ``max_new_tokens``: the most tokens generated (finish reason "length" when reached);
    - ``temperature``: 0 (or anything below 1e-5, :data:`GREEDY_TEMPERATURE`) picks the most
      likely token (greedy, argmax); above that samples from ``softmax(logits / temperature)``;
    - ``top_k``: sampling keeps only the ``top_k`` most likely tokens (0: all; ignored when
      greedy), as transformers' ``TopKLogitsWarper``;
    - ``top_p``: nucleus sampling, keeping the smallest set of most likely tokens whose
      probability adds up to at least ``top_p`` (1 keeps all; ignored when greedy);
    - ``repetition_penalty``: the logits of every token already in the sequence (prompt and
      generated) are divided by it (multiplied when negative), greedy or not, as transformers'
      ``RepetitionPenaltyLogitsProcessor``; 1 is none, above 1 discourages repeats, below 1
      encourages them. Order, as ``generate``: repetition penalty, then temperature, top_k,
      top_p;
    - ``stop``: strings that end the generation; the returned text ends before the first one;
    - ``seed``: seeds this sequence's own random generator, so the same request gives the same
      tokens whatever else runs in the batch (None: a fresh random seed);
    - ``logprobs``: None for none, 0 for the chosen token's log-probability, k (up to 20) for
      that plus the k most likely tokens' (log-probabilities of the model's raw distribution,
      before temperature and top_p: see :mod:`shoal.llm.sampling`);
    - ``ignore_eos``: keep generating past end-of-sequence tokens (until ``max_new_tokens``
      or a stop string).
    """

    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, low=1)
        _check_float("temperature", self.temperature)
        if self.temperature < 0:
            raise InvalidInput(f"temperature must be 0 or more, got {self.temperature}")
        _check_float("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"top_p must be above 0 and at most 1, got {self.top_p}")
        _check_int("top_k", self.top_k, low=0)
        _check_float("repetition_penalty", self.repetition_penalty)
        if not self.repetition_penalty > 0:
            raise InvalidInput(
                f"repetition_penalty must be above 0 (1 is none), got {self.repetition_penalty}"
            )
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) for s in self.stop):
            raise InvalidInput("stop must be a tuple of strings")
        if any(s == "" for s in self.stop):
            raise InvalidInput("stop strings must not be empty")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidInput(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if self.seed is not None:
            _check_int("seed", self.seed, low=-(2**63), high=2**64 - 1)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0, high=MAX_LOGPROBS)
        if not isinstance(self.ignore_eos, bool):
            raise InvalidInput(f"ignore_eos must be true or false, got {self.ignore_eos!r}")

    @property
    def greedy(self) -> bool:
        """Argmax rather than sampling: ``temperature`` below :data:`GREEDY_TEMPERATURE`."""
        return self.temperature < GREEDY_TEMPERATURE

    @classmethod
    def checked(cls, **kw: Any) -> SamplingParams:
        """Settings from a request's fields: ``None`` values take the default, ``stop`` may be a
        string or a list of strings, integral floats are accepted for integers and integers for
        floats; unknown names and bad values raise ``InvalidInput``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise InvalidInput(
                f"unknown generation parameter(s): {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        values = {k: v for k, v in kw.items() if v is not None}
        if "stop" in values:
            stop = values["stop"]
            if isinstance(stop, str):
                stop = (stop,)
            elif isinstance(stop, (list, tuple)):
                stop = tuple(stop)
            else:
                raise InvalidInput(f"stop must be a string or a list of strings, got {stop!r}")
            values["stop"] = stop
        for name in ("max_new_tokens", "top_k", "seed", "logprobs"):
            if name in values:
                values[name] = _as_int(name, values[name])
        for name in ("temperature", "top_p", "repetition_penalty"):
            if name in values:
                value = values[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InvalidInput(f"{name} must be a number, got {value!r}")
                values[name] = float(value)
        return cls(**values)


def _as_int(name: str, value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise InvalidInput(f"{name} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise InvalidInput(f"{name} must be at most {high}, got {value}")


def _check_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number, got {value}")
