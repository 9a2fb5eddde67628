"""Rollouts of one server: the live endpoints, the changes users make, the analyses.

Every change (set, promote, rollback, pause, resume, delete, an automatic step) is a
read-modify-write of the model's record in the :class:`RolloutStore`; every process rebuilds
its endpoints from the records when the store's generation moves. So a change made through
any process applies everywhere for the next request, and survives a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ..errors import InvalidInput, LoadError, ModelNotFound, ShoalError
from ..graph.context import Call, new_request_id
from ..expressions import Expression
from ..observe import logging as log
from ..repository.config import read_config
from ..serving.endpoint import ModelEndpoint
from ..serving.registry import Registry
from ..types import InferenceRequest, InferenceResponse
from .analysis import Verdict, judge
from .endpoint import SHADOW_HEADER, Plan, RolloutEndpoint, within
from .metrics import RolloutMetrics
from .mirror import Mirror, ShadowCall
from .record import NONE, PAUSED, PROGRESSING, PROMOTED, ROLLED_BACK, RolloutRecord
from .spec import CanarySpec, RolloutSpec, Variant, parse_spec
from .store import RolloutStore
from .window import shadow_figures, variant_figures, window

#: Seconds between the controller's looks at the store and at progressing analyses.
TICK = 0.25
#: Seconds a remote shadow may take.
REMOTE_SHADOW_TIMEOUT = 30.0


class RolloutManager:
    def __init__(
        self, registry: Registry, repository_root: Path, names: Callable[[], list[str]],
        metrics_registry: CollectorRegistry, state_dir: Path,
    ) -> None:
        self.registry = registry
        self.root = repository_root
        self.names = names
        self.metrics = RolloutMetrics(metrics_registry)
        self.store = RolloutStore(state_dir / "rollouts")
        #: Which counters this process reads: a record's baseline from another epoch (before
        #: a restart) no longer applies.
        self.epoch = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or f"{os.getpid()}-{uuid.uuid4().hex}"
        self._records: dict[str, RolloutRecord] = {}
        self._endpoints: dict[str, RolloutEndpoint] = {}
        self._seen = -1
        self._task: asyncio.Task[None] | None = None
        self._waiting_logged: set[tuple[str, int]] = set()
        #: Closing mirrors that were replaced or removed (awaited at shutdown).
        self._closing: set[asyncio.Task[None]] = set()
        registry.rollout_for = self.rollout_for

    # -- the request path --------------------------------------------------------------------

    def rollout_for(self, name: str) -> RolloutEndpoint | None:
        """The endpoint of ``name``'s rollout, if it has one (the registry asks for every
        request without a version)."""
        if self.store.generation() != self._seen:
            self.refresh()
        endpoint = self._endpoints.get(name)
        if endpoint is None or within(name):  # a variant calling the name: no rollout
            return None
        return endpoint

    def refresh(self) -> None:
        """Rebuild the endpoints from the stored records (after any process changed one)."""
        generation = self.store.generation()
        records = self.store.read_all()
        self._seen = generation
        for name, record in records.items():
            previous = self._records.get(name)
            if previous is not None and previous.revision == record.revision and (
                record.state == NONE or name in self._endpoints
            ):
                continue
            if record.state == NONE:
                self._drop(name)
            else:
                try:
                    self._install(record)
                except Exception as exc:  # never let one record break every request
                    log.event("rollout_unusable", logging.ERROR, model=name,
                              reason=f"{type(exc).__name__}: {exc}")
                    self._drop(name)
            self.metrics.show_state(name, record.state, record.percent)
        for name in set(self._records) - set(records):
            self._drop(name)
            self.metrics.forget(name)
        self._records = records

    def _install(self, record: RolloutRecord) -> None:
        spec, name = record.spec, record.model
        variants = spec.variants(name)
        previous = self._endpoints.get(name)
        mirror = None
        old = previous.plan.mirror if previous is not None else None
        if spec.shadow is None and old is not None:  # the shadow was removed
            self._close_later(old)
        if spec.shadow is not None:
            if old is not None and self._shadow_of(previous) == spec.shadow:
                mirror = old
            else:
                if old is not None:  # replaced: its running shadow requests are dropped
                    self._close_later(old)
                call, closing = self._shadow_call(name, variants["shadow"])
                shadow = variants["shadow"]
                mirror = Mirror(name, call, spec.shadow.percent, spec.shadow.max_pending,
                                self.metrics, closing, self._batchable(shadow),
                                concurrency=None if shadow.remote else 1)
        plan = Plan(
            variants["stable"],
            variants.get("canary"),
            record.percent,
            Expression(spec.canary.sticky) if spec.canary is not None and spec.canary.sticky else None,
            mirror,
        )
        if previous is not None:
            previous.plan = plan  # the next request sees the whole new plan
            previous.spec = spec
        else:
            endpoint = RolloutEndpoint(name, self.registry, self.metrics, plan)
            endpoint.spec = spec
            self._endpoints[name] = endpoint

    @staticmethod
    def _shadow_of(endpoint: Any) -> Any:
        spec = getattr(endpoint, "spec", None)
        return spec.shadow if spec is not None else None

    def _drop(self, name: str) -> None:
        endpoint = self._endpoints.pop(name, None)
        if endpoint is not None and endpoint.plan.mirror is not None:
            self._close_later(endpoint.plan.mirror)

    def _close_later(self, mirror: Mirror) -> None:
        task = asyncio.get_running_loop().create_task(mirror.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _batchable(self, variant: Variant) -> Callable[[], bool]:
        """Whether the shadow may take merged requests: a local model whose declared inputs
        all have a free first (batch) axis and which does not batch on its own."""
        def batchable() -> bool:
            if variant.url is not None:
                return False
            try:
                endpoint = self.registry.served(variant.model, variant.version)
            except ShoalError:
                return False
            if not isinstance(endpoint, ModelEndpoint) or endpoint.batching is not None:
                return False
            specs = endpoint.model.inputs
            return bool(specs) and all(s.shape and s.shape[0] == -1 for s in specs)

        return batchable

    def _shadow_call(self, model: str, variant: Variant) -> tuple[ShadowCall, Any]:
        """How to call the shadow, and what to close when it is replaced."""
        if variant.url is None:
            async def local(request: InferenceRequest) -> InferenceResponse:
                endpoint = self.registry.served(variant.model, variant.version)
                request.model_name = variant.model
                request.model_version = endpoint.version
                return await endpoint.infer(request)

            return local, None
        node = _remote_node(variant)

        async def remote(request: InferenceRequest) -> InferenceResponse:
            return await node.execute(Call(model, request.id or new_request_id()), request)

        return remote, node.close

    # -- changes -------------------------------------------------------------------------------

    async def set(self, name: str, body: Any, origin: dict[str, Any] | None = None) -> dict[str, Any]:
        """Set (or replace) ``name``'s rollout live; 400 naming the field for a bad spec."""
        spec = self._validated(name, parse_spec(body))
        baseline = await self._counters(name)
        now = time.time()
        percent = spec.canary.start_percent() if spec.canary is not None else 0.0

        def change(current: RolloutRecord | None) -> RolloutRecord | None:
            if origin is not None and current is not None and current.origin == origin:
                return current  # another process already applied this model.yaml rollout
            fresh = RolloutRecord(
                name, spec, PROGRESSING, percent, 0, origin=origin,
                revision=current.revision if current is not None else 0,
                history=current.history if current is not None else [],
            )
            return fresh.changed("set", now, _describe(spec, percent), baseline=baseline, epoch=self.epoch)

        await self._change(name, change)
        return await self.status(name)

    async def promote(self, name: str) -> dict[str, Any]:
        baseline = await self._counters(name)

        def change(record: RolloutRecord) -> RolloutRecord:
            canary = self._canary_of(record, "promote")
            problem = self._unservable(record, "canary")
            if problem is not None:
                raise InvalidInput(f"canary.variant: cannot promote: {problem}")
            spec = record.spec.model_copy(update={"stable": canary.variant, "canary": None})
            return record.changed(
                "promoted", time.time(), f"{canary.variant} is the stable variant now",
                baseline, spec=spec, state=PROMOTED, percent=0.0, step=0, epoch=self.epoch,
                previous=record.spec.stable,
            )

        await self._change_existing(name, change)
        return await self.status(name)

    async def rollback(self, name: str) -> dict[str, Any]:
        rolled: list[bool] = []

        def change(record: RolloutRecord) -> RolloutRecord:
            if record.state == PROMOTED and record.previous is not None:
                # Undo the promotion: the old stable variant back, the promoted one dark.
                problem = self._unservable(
                    dataclasses.replace(record, spec=record.spec.model_copy(
                        update={"canary": None, "stable": record.previous})), "stable")
                if problem is not None:
                    raise InvalidInput(f"stable: cannot go back to {record.previous!r}: {problem}")
                promoted = record.spec.stable
                spec = record.spec.model_copy(update={
                    "stable": record.previous,
                    "canary": CanarySpec(variant=promoted or "", percent=0.0),
                })
                rolled.append(True)
                return record.changed(
                    "rolled_back", time.time(),
                    f"manual: back to {record.previous}, undoing the promotion of {promoted}",
                    spec=spec, state=ROLLED_BACK, percent=0.0, previous=None,
                )
            canary = self._canary_of(record, "roll back")
            if record.state == ROLLED_BACK:
                return record  # already: nothing to do, nothing to count
            rolled.append(True)
            return record.changed(
                "rolled_back", time.time(), f"manual: {canary.variant} back to 0%",
                state=ROLLED_BACK, percent=0.0,
            )

        await self._change_existing(name, change)
        if rolled:
            self.metrics.child(self.metrics.rollbacks, name, "manual").inc()
        return await self.status(name)

    async def pause(self, name: str) -> dict[str, Any]:
        def change(record: RolloutRecord) -> RolloutRecord:
            if record.state == PAUSED:
                return record
            if record.state != PROGRESSING:
                raise InvalidInput(f"the rollout of {name!r} is {record.state}: nothing to pause")
            return record.changed("paused", time.time(), state=PAUSED)

        await self._change_existing(name, change)
        return await self.status(name)

    async def resume(self, name: str) -> dict[str, Any]:
        baseline = await self._counters(name)

        def change(record: RolloutRecord) -> RolloutRecord:
            if record.state == PROGRESSING:
                return record
            if record.state != PAUSED:
                raise InvalidInput(f"the rollout of {name!r} is {record.state}: nothing to resume")
            return record.changed("resumed", time.time(), "the step's interval starts again",
                                  state=PROGRESSING, baseline=baseline, epoch=self.epoch)

        await self._change_existing(name, change)
        return await self.status(name)

    async def delete(self, name: str) -> dict[str, Any]:
        def change(record: RolloutRecord) -> RolloutRecord | None:
            if record.origin is None:
                return None
            # Kept as "none" so the model.yaml rollout is not set again at the next start.
            return record.changed("deleted", time.time(), state=NONE, percent=0.0)

        # A model that is not served (unloaded) may still have its rollout removed.
        await self._change_existing(name, change, require_served=False)
        return {"model": name, "state": NONE}

    def _unservable(self, record: RolloutRecord, role: str) -> str | None:
        """Why a local variant of a record cannot take traffic now; None if it can."""
        variant = record.spec.variants(record.model).get(role)
        if variant is None or variant.remote:
            return None
        try:
            endpoint = self.registry.served(variant.model, variant.version)
        except ShoalError as exc:
            return str(exc)
        return endpoint.unready_reason()

    def _canary_of(self, record: RolloutRecord, action: str) -> Any:
        canary = record.spec.canary
        if canary is None:
            raise InvalidInput(f"the rollout of {record.model!r} has no canary to {action}")
        if record.state == PROMOTED:
            raise InvalidInput(f"the rollout of {record.model!r} is promoted already")
        return canary

    async def _change_existing(
        self, name: str, change: Callable[[RolloutRecord], RolloutRecord | None],
        require_served: bool = True,
    ) -> None:
        if require_served:
            self._check_served(name)

        def existing(current: RolloutRecord | None) -> RolloutRecord | None:
            if current is None or current.state == NONE:
                raise ModelNotFound(f"model {name!r} has no rollout")
            return change(current)

        await self._change(name, existing)

    async def _change(
        self, name: str, change: Callable[[RolloutRecord | None], RolloutRecord | None]
    ) -> bool:
        """Apply ``change`` under the store's lock; whether it changed anything."""
        wrote: list[bool] = []

        def tracked(current: RolloutRecord | None) -> RolloutRecord | None:
            updated = change(current)
            if updated is not current or current is None:
                wrote.append(True)
            return updated

        record = await asyncio.to_thread(self.store.update, name, tracked)
        self.refresh()
        if not wrote:
            return False  # nothing to change (another process did it, or a guard refused)
        if record is None or record.state == NONE:
            log.event("rollout_changed", model=name, change="deleted", state=NONE)
        else:
            event = record.history[-1] if record.history else {}
            log.event("rollout_changed", model=name, change=event.get("event", ""),
                      state=record.state, canary_percent=record.percent,
                      detail=event.get("detail", ""))
        return True

    # -- validation ----------------------------------------------------------------------------

    def _check_served(self, name: str) -> None:
        if not self.registry.entries(name):
            raise ModelNotFound(f"model {name!r} is not served here")

    def _current_stable(self, name: str) -> str:
        """Where unversioned requests go now: the live rollout's stable variant (after a
        promotion, the promoted one), else the newest ready version."""
        self.rollout_for(name)  # refreshed if another process changed something
        current = self._records.get(name)
        if current is not None and current.state != NONE and current.spec.stable is not None:
            return current.spec.stable
        try:
            return str(self.registry.served(name, None).version)
        except ShoalError as exc:
            raise InvalidInput(f"stable: no default to pin: {exc}") from None

    def _validated(self, name: str, spec: RolloutSpec) -> RolloutSpec:
        """The spec with its stable variant pinned; InvalidInput naming the field at fault."""
        self._check_served(name)
        variants = spec.variants(name)
        stable = variants.get("stable")
        if stable is None:
            spec = spec.model_copy(update={"stable": self._current_stable(name)})
            variants = spec.variants(name)
        elif stable.model == name and stable.version is None:  # "iris" itself: pinned too
            try:
                pinned = str(self.registry.served(name, None).version)
            except ShoalError as exc:
                raise InvalidInput(f"stable: {stable.text!r}: {exc}") from None
            spec = spec.model_copy(update={"stable": pinned})
            variants = spec.variants(name)
        fields = {"stable": "stable", "canary": "canary.variant", "shadow": "shadow.variant"}
        identities = {}
        for role, variant in variants.items():
            if variant.url is not None:
                _remote_node(variant)  # the extra it needs is installed
                identities[role] = ("remote", variant.url, variant.model, variant.version)
                continue
            try:
                endpoint = self.registry.served(variant.model, variant.version)
            except ShoalError as exc:
                raise InvalidInput(f"{fields[role]}: {variant.text!r}: {exc}") from None
            identities[role] = (variant.model, str(endpoint.version))
        if "canary" in identities and identities["canary"] == identities["stable"]:
            raise InvalidInput(
                f"canary.variant: {spec.canary.variant!r} is the stable variant "  # type: ignore[union-attr]
                f"({variants['stable'].describe()}); a canary must be another version or model"
            )
        if "shadow" in identities:
            for primary in ("stable", "canary"):
                if identities.get(primary) == identities["shadow"]:
                    raise InvalidInput(
                        f"shadow.variant: {spec.shadow.variant!r} is the {primary} variant; "  # type: ignore[union-attr]
                        "a shadow must differ from the variants it mirrors"
                    )
        return spec

    # -- status ----------------------------------------------------------------------------------

    async def status(self, name: str) -> dict[str, Any]:
        self._check_served(name)
        self.rollout_for(name)  # refreshed if another process changed something
        record = self._records.get(name)
        if record is None or record.state == NONE:
            return {"model": name, "state": NONE}
        counters = await self._counters(name)
        delta = window(counters, record.baseline if record.epoch == self.epoch else {})
        spec = record.spec
        variants = spec.variants(name)
        answer: dict[str, Any] = {
            "model": name,
            "state": record.state,
            "spec": spec.to_json(),
            "canary_percent": record.percent,
            "reason": record.reason,
            "revision": record.revision,
            "since": record.since,
            "window_seconds": round(time.time() - record.since, 3),
            "variants": {},
        }
        if spec.canary is not None and spec.canary.analysis is not None:
            answer["step"] = {"index": record.step, "of": len(spec.canary.analysis.steps),
                              "interval_seconds": spec.canary.analysis.interval}
        for role in ("stable", "canary"):
            if role in variants:
                answer["variants"][role] = {
                    "variant": variants[role].text, **variant_figures(delta, role)
                }
        if spec.shadow is not None:
            endpoint = self._endpoints.get(name)
            mirror = endpoint.plan.mirror if endpoint is not None else None
            answer["variants"]["shadow"] = {
                "variant": spec.shadow.variant, "percent": spec.shadow.percent,
                "pending": mirror.pending if mirror is not None else 0,
                **variant_figures(delta, "shadow"), **shadow_figures(delta),
            }
        answer["history"] = record.history[-20:]
        return answer

    async def _counters(self, name: str) -> dict[str, float]:
        snapshot = await asyncio.to_thread(self.metrics.snapshot)
        return snapshot.get(name, {})

    # -- startup, the controller, shutdown -------------------------------------------------------

    async def start(self) -> None:
        """Apply the ``rollout:`` of each ``model.yaml`` not applied before, then run the
        controller. Called once the startup load has finished."""
        if not self.store.usable:
            log.event("rollouts_unavailable", logging.WARNING, reason=self.store.problem)
            return
        self.refresh()
        for name in self.names():
            try:
                configured = read_config(self.root / name).rollout
            except (LoadError, OSError):
                continue  # the model's own load reported it
            if configured is None:
                continue
            origin = configured.to_json()
            current = self._records.get(name)
            if current is not None and (current.origin == origin or current.origin is None):
                continue  # applied before, or changed live since: the live rollout wins
            try:
                await self.set(name, origin, origin=origin)
            except ShoalError as exc:
                log.event("rollout_invalid", logging.ERROR, model=name, source="model.yaml",
                          reason=str(exc))
        self._task = asyncio.get_running_loop().create_task(self._control())

    async def _control(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                if self.store.generation() != self._seen:
                    self.refresh()
                if self._analysed() and await asyncio.to_thread(self.store.lead):
                    await self._analyse()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one bad tick stop the controller
                log.event("rollout_controller_error", logging.ERROR,
                          error=f"{type(exc).__name__}: {exc}")

    def _analysed(self) -> list[RolloutRecord]:
        return [
            r for r in self._records.values()
            if r.state == PROGRESSING and r.spec.canary is not None and r.spec.canary.analysis is not None
        ]

    async def _analyse(self) -> None:
        snapshot = await asyncio.to_thread(self.metrics.snapshot)
        now = time.time()
        self._waiting_logged &= {(r.model, r.revision) for r in self._records.values()}
        for record in self._analysed():
            name, analysis = record.model, record.spec.canary.analysis  # type: ignore[union-attr]
            counters = snapshot.get(name, {})
            if record.epoch != self.epoch:
                await self._step(record, lambda r: r.changed(
                    "window_restarted", now, "the counters restarted with the server; the "
                    "step's interval starts again", baseline=counters, epoch=self.epoch,
                ))
                continue
            verdict = judge(analysis, record.step, now - record.since, window(counters, record.baseline))
            if verdict.action == "wait":
                if verdict.detail and (name, record.revision) not in self._waiting_logged:
                    self._waiting_logged.add((name, record.revision))
                    log.event("rollout_waiting", model=name, detail=verdict.detail)
                continue
            if verdict.action == "promote":
                problem = self._unservable(record, "canary")
                if problem is not None:  # gone since it was judged: never promote that
                    verdict = Verdict("rollback", f"the canary cannot be promoted: {problem}",
                                      "canary_unavailable")
            if verdict.action == "rollback":
                if await self._step(record, lambda r: r.changed(
                    "rolled_back", now, f"{verdict.guard}: {verdict.detail}",
                    state=ROLLED_BACK, percent=0.0,
                )):
                    self.metrics.child(self.metrics.rollbacks, name, verdict.guard).inc()
                    log.event("rollout_guard_failed", logging.WARNING, model=name,
                              guard=verdict.guard, detail=verdict.detail)
            elif verdict.action == "promote":
                await self._step(record, lambda r: r.changed(
                    "promoted", now, verdict.detail, counters, state=PROMOTED, percent=0.0,
                    step=0, epoch=self.epoch, previous=r.spec.stable, spec=r.spec.model_copy(
                        update={"stable": r.spec.canary.variant, "canary": None}  # type: ignore[union-attr]
                    ),
                ))
            else:
                following = record.step + 1
                await self._step(record, lambda r: r.changed(
                    "step", now, verdict.detail, step=following,
                    percent=analysis.steps[following], baseline=counters, epoch=self.epoch,
                ))

    async def _step(self, seen: RolloutRecord, change: Callable[[RolloutRecord], RolloutRecord]) -> bool:
        """Apply an automatic change, unless the record changed since it was judged (a user's
        promote or rollback meanwhile wins); whether it was applied."""
        def guarded(current: RolloutRecord | None) -> RolloutRecord | None:
            if current is None or current.revision != seen.revision:
                return current
            return change(current)

        return await self._change(seen.model, guarded)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        mirrors = [e.plan.mirror for e in self._endpoints.values() if e.plan.mirror is not None]
        await asyncio.gather(*(m.close() for m in mirrors), *self._closing, return_exceptions=True)
        self.store.close()


def _remote_node(variant: Variant) -> Any:
    try:
        from ..graph.nodes.remote import RemoteCall
    except ImportError:
        raise InvalidInput(
            f"shadow.variant: a remote shadow ({variant.text}) needs aiohttp: "
            "pip install 'shoal[triton]'"
        ) from None
    try:
        return RemoteCall(
            "shadow", lambda seconds: None, variant.url or "", "v2-rest", variant.model,
            variant.version, REMOTE_SHADOW_TIMEOUT, {SHADOW_HEADER: "1"}, None,
        )
    except ShoalError as exc:
        raise InvalidInput(f"shadow.variant: {variant.text!r}: {exc}") from None


def _describe(spec: RolloutSpec, percent: float) -> str:
    parts = [f"stable {spec.stable}"]
    if spec.canary is not None:
        parts.append(f"canary {spec.canary.variant} at {percent:g}%")
        if spec.canary.analysis is not None:
            steps = ", ".join(f"{s:g}" for s in spec.canary.analysis.steps)
            parts.append(f"steps {steps}% every {spec.canary.analysis.interval:g} s")
    if spec.shadow is not None:
        parts.append(f"shadow {spec.shadow.variant} at {spec.shadow.percent:g}%")
    return ", ".join(parts)
