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
        self._freed: asyncio.Future[None] | None = None

    # -- replicas stopping: what a start short of memory or GPUs waits for --------------------

    def draining(self) -> bool:
        """Whether some replica (of any model) is on its way out, so memory and GPUs are
        about to come back."""
        return any(s.draining for s in self.sets)

    async def released(self) -> None:
        """Wait until the next replica has stopped."""
        if self._freed is None or self._freed.done():
            self._freed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._freed)

    def freed(self) -> None:
        """A replica stopped: its memory and GPUs are back."""
        if self._freed is not None and not self._freed.done():
            self._freed.set_result(None)
        self._freed = None

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
        """Evict idle models, least recently used first, until ``needed`` fits; wait for
        replicas already draining rather than fail; fail at once (evicting nothing) when even
        every idle model gone would not make room."""
        assert self.limit is not None
        while (used := self.used()) + needed > self.limit:
            idle = self._idle(who)
            evictable = sum(r.rss for s in idle for r in s.replicas)
            if used - evictable + needed > self.limit:
                if self.draining():
                    await self.released()
                    continue
                raise Unavailable(
                    f"a replica of {who.name!r} needs about {_mib(needed)}; the memory "
                    f"budget is {_mib(self.limit)}, {_mib(used)} of it is taken, and unloading "
                    f"every idle model that may scale to zero ({len(idle)}) would not make "
                    "room (see --memory-budget)"
                )
            victim = min(idle, key=lambda s: s.meter.last_request)
            log.event("model_evicted", model=victim.name, version=victim.version,
                      reason="memory budget", for_model=who.name, needed_bytes=needed,
                      used_bytes=used, budget_bytes=self.limit)
            # Shielded: a start called off meanwhile must not leave the victim half drained.
            await asyncio.shield(victim.drain_all("memory budget"))

    def _idle(self, who: ReplicaSet) -> list[ReplicaSet]:
        """Models that may be evicted: allowed to scale to zero, nothing in flight, and
        holding memory."""
        return [
            s for s in self.sets
            if s is not who and s.settings.min_replicas == 0 and s.meter.in_flight == 0
            and any(r.state == "ready" for r in s.replicas)
        ]
