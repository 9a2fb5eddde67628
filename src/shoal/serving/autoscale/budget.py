"""``--memory-budget``: the memory autoscaled models' replicas may take together.

Before a replica starts, the budget admits it: the replica is expected to take what the
model's last replica measured (its RSS right after loading), or, for a model never loaded
yet, what the largest replica of any model measured. If that would go over the budget, the
least recently used *idle* models (no request in flight, allowed to scale to zero) are scaled
to zero, one at a time, until it fits. When nothing more can be evicted the start is refused
with a reason that says how much is needed and what holds the memory: a request waking a
model gets a 503 with that reason, a scale-up just does not happen.

Once a replica has loaded, its real RSS is measured; if the guess was low and the total is
now over, idle models are evicted again. The budget covers the replicas of autoscaled models
(each a process of its own, so its memory comes back when it stops); the server process and
the shared ``--workers`` pool are outside it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ...errors import Unavailable
from ...observe import logging as log

if TYPE_CHECKING:
    from ..workers.replicas import ReplicaSet

MiB = 1024 * 1024


def _mib(size: int) -> str:
    return f"{size / MiB:.0f} MiB"


class MemoryBudget:
    def __init__(self, limit: int | None) -> None:
        #: Bytes; None: no budget (nothing is ever evicted for memory).
        self.limit = limit
        self.sets: list[ReplicaSet] = []
        self._reserved: dict[int, int] = {}
        self._ids = 0
        self._lock = asyncio.Lock()

    def used(self) -> int:
        """Measured memory of every replica, plus what starting replicas are expected to take."""
        measured = sum(r.measure() for s in self.sets for r in s.replicas if r.state != "starting")
        return measured + sum(self._reserved.values())

    def estimate(self, who: ReplicaSet) -> int:
        if who.replica_memory:
            return who.replica_memory
        return max((s.replica_memory for s in self.sets), default=0)

    async def admit(self, who: ReplicaSet) -> int:
        """Reserve memory for one more replica of ``who``, evicting idle models as needed;
        returns a reservation to :meth:`release` once the replica has loaded."""
        if self.limit is None:
            return -1
        needed = self.estimate(who)
        async with self._lock:
            await self._make_room(needed, who)
            self._ids += 1
            self._reserved[self._ids] = needed
            return self._ids

    def release(self, reservation: int) -> None:
        self._reserved.pop(reservation, None)

    async def settle(self, who: ReplicaSet) -> None:
        """After a replica loaded and was measured: back under the budget if the guess was
        low (idle models evicted; if none can be, the overshoot is logged)."""
        if self.limit is None:
            return
        async with self._lock:
            try:
                await self._make_room(0, who)
            except Unavailable as exc:
                log.event("memory_budget_exceeded", model=who.name, reason=str(exc))

    async def _make_room(self, needed: int, who: ReplicaSet) -> None:
        assert self.limit is not None
        while (used := self.used()) + needed > self.limit:
            victim = self._least_recently_used(who)
            if victim is None:
                raise Unavailable(
                    f"model {who.name!r} needs about {_mib(needed)} for a replica, the memory "
                    f"budget is {_mib(self.limit)}, {_mib(used)} of it is taken, and no idle "
                    "model that may scale to zero is left to unload (see --memory-budget)"
                )
            log.event("model_evicted", model=victim.name, version=victim.version,
                      reason="memory budget", for_model=who.name, needed_bytes=needed,
                      used_bytes=used, budget_bytes=self.limit)
            await victim.drain_all("memory budget")

    def _least_recently_used(self, who: ReplicaSet) -> ReplicaSet | None:
        idle = [
            s for s in self.sets
            if s is not who and s.settings.min_replicas == 0 and s.meter.in_flight == 0
            and any(r.state == "ready" for r in s.replicas)
        ]
        return min(idle, key=lambda s: s.meter.last_request, default=None)
