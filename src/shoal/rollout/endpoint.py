"""The endpoint a public name resolves to while it has a rollout: a split and a mirror.

It chooses the variant (canary by percentage, sticky by a key when the spec has one), calls
that variant's endpoint, counts the outcome per variant, tags the answer with the variant
(``shoal-variant`` response parameter; ``Shoal-Variant`` header over REST) and hands a copy of
the request to the mirror. Everything it uses per request sits in one immutable
:class:`Plan`, replaced whole when the rollout changes, so a change takes effect for the
next request and never for half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from contextvars import ContextVar
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

from ..errors import ModelNotFound, ShoalError, Unavailable
from ..graph.context import HEADERS, VARIANT_HEADER, VARIANT_PARAMETER, normalize_headers
from ..graph.endpoint import declared_inputs
from ..expressions import Expression, unit_hash
from ..graph.results import copy_tensors
from ..serving.registry import Registry
from ..serving.stats import ModelStats
from ..types import InferenceRequest, InferenceResponse, TensorSpec
from .metrics import RolloutMetrics
from .mirror import Mirror
from .spec import Variant


@dataclass(frozen=True, slots=True)
class Plan:
    stable: Variant
    canary: Variant | None = None
    percent: float = 0.0
    sticky: Expression | None = None
    mirror: Mirror | None = None

    def choose(self, model: str, request: InferenceRequest) -> tuple[str, Variant]:
        canary = self.canary
        if canary is None or self.percent <= 0.0:
            return "stable", self.stable
        if self.percent >= 100.0:
            return "canary", canary
        point = None
        if self.sticky is not None:
            key = self.sticky.evaluate(request, lambda: normalize_headers(HEADERS.get()))
            if key is not None:
                point = unit_hash([model, key])  # salted: rollouts split independently
        if point is None:
            point = random.random()
        return ("canary", canary) if point * 100.0 < self.percent else ("stable", self.stable)


class RolloutEndpoint:
    """The ``Endpoint`` interface over a rollout's variants."""

    def __init__(self, name: str, registry: Registry, metrics: RolloutMetrics, plan: Plan) -> None:
        self.name = name
        self.registry = registry
        self.metrics = metrics
        self.plan = plan
        #: The spec the plan was built from (to tell whether a change keeps the shadow).
        self.spec: Any = None
        self.stats = ModelStats()

    # -- what the transports ask before inference: the stable variant's answers -------------

    def _stable(self) -> Any:
        return self._variant_endpoint(self.plan.stable)

    @property
    def version(self) -> str:
        with inside(self.name):
            try:
                return str(self._stable().version)
            except ShoalError:
                return self.plan.stable.version or ""

    @property
    def batching(self) -> Any:
        """The stable variant's (Triton's model configuration describes it)."""
        with inside(self.name):
            try:
                return self._stable().batching
            except ShoalError:
                return None

    @property
    def ready(self) -> bool:
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        with inside(self.name):
            try:
                reason = self._stable().unready_reason()
            except ShoalError as exc:
                return f"stable variant: {exc}"
            return None if reason is None else f"stable variant: {reason}"

    def metadata(self) -> dict[str, Any]:
        with inside(self.name):
            return {**self._stable().metadata(), "name": self.name}

    @property
    def inputs(self) -> list[TensorSpec]:
        """For codecs that name tensors after the declared inputs (V1, Seldon)."""
        with inside(self.name):
            try:
                return declared_inputs(self._stable())
            except ShoalError:
                return []

    # -- inference ---------------------------------------------------------------------------

    async def infer(
        self, request: InferenceRequest, timeout: float | None = None, deadline: float | None = None
    ) -> InferenceResponse:
        with inside(self.name):
            return await self._infer(request, timeout, deadline)

    async def _infer(
        self, request: InferenceRequest, timeout: float | None, deadline: float | None
    ) -> InferenceResponse:
        plan = self.plan
        role, variant = plan.choose(self.name, request)
        mirror = plan.mirror
        # The shadow gets the request as it arrived: the primary renames and converts inputs.
        original = copy_tensors(request.inputs) if mirror is not None and mirror.sampled() else None
        started = time.perf_counter()
        try:
            endpoint = self._variant_endpoint(variant)
            request.model_name = variant.model
            request.model_version = endpoint.version
            response = await endpoint.infer(request, timeout, deadline)
        except ShoalError as exc:
            self.metrics.answered(self.name, role, str(exc.http_status), time.perf_counter() - started)
            exc.context[VARIANT_HEADER] = role
            raise
        except asyncio.CancelledError:
            self.metrics.answered(self.name, role, "cancelled", time.perf_counter() - started)
            raise
        except Exception:
            self.metrics.answered(self.name, role, "500", time.perf_counter() - started)
            raise
        self.metrics.answered(self.name, role, "success", time.perf_counter() - started)
        response.parameters = {**response.parameters, VARIANT_PARAMETER: role}
        if original is not None and mirror is not None and not mirrored_here():
            mirror.fire(request, original, response)
        return response

    def pick(self, request: InferenceRequest) -> tuple[str, Any]:
        """The variant ``infer`` would choose for ``request`` (weights, sticky key): its role
        and endpoint, for routes that call the endpoint themselves (the OpenAI API). They
        count the outcome with :meth:`answered`; nothing is mirrored."""
        role, variant = self.plan.choose(self.name, request)
        try:
            return role, self._variant_endpoint(variant)
        except ShoalError as exc:
            self.metrics.answered(self.name, role, str(exc.http_status), 0.0)
            exc.context[VARIANT_HEADER] = role
            raise

    def answered(self, role: str, outcome: str, seconds: float) -> None:
        self.metrics.answered(self.name, role, outcome, seconds)

    def _variant_endpoint(self, variant: Variant) -> Any:
        """The variant's endpoint; a variant that is gone (unloaded, or its version dropped
        by the version policy) is the rollout's failure, a 503, never the client's 404."""
        try:
            return self.registry.served(variant.model, variant.version)
        except ModelNotFound as exc:
            raise Unavailable(
                f"rollout of {self.name!r}: variant {variant.describe()} is not served: {exc}"
            ) from None


#: The rollouts the current call is inside: a variant (a graph, a shadow) that calls the
#: public name again reaches the model's own versions, as if it had no rollout, so a rollout
#: never loops (through infer, readiness or metadata).
_INSIDE: ContextVar[frozenset[str]] = ContextVar("shoal_rollouts_inside", default=frozenset())


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    token = _INSIDE.set(_INSIDE.get() | {name})
    try:
        yield
    finally:
        _INSIDE.reset(token)


def within(name: str) -> bool:
    """Whether the current call is inside ``name``'s rollout already."""
    return name in _INSIDE.get()
#: Sent with a remote shadow's requests: a server that gets one mirrors nothing, so two
#: servers shadowing each other (or one shadowing itself) never loop.
SHADOW_HEADER = "shoal-shadow"


def mirrored_here() -> bool:
    """Whether this request is itself a remote shadow's copy."""
    source = HEADERS.get()
    if source is None:
        return False
    pairs = source() if callable(source) else source
    for key, _ in pairs or ():
        if (key.decode("latin-1") if isinstance(key, bytes) else key).lower() == SHADOW_HEADER:
            return True
    return False
