"""One sink's delivery: an in-memory queue in front of the sink, the disk spool behind it.

The request path calls :meth:`Channel.put` (append to a deque; a thread-safe wake-up only
when the channel sleeps). Everything else runs on the payload logger's own thread and event
loop: rendering records into events, sending them, and, while the sink is down or slow,
spooling them. Order is kept per sink (and so per model): once anything is in the spool, new
records go behind it, and the spool is delivered oldest first before memory is touched again.

What is counted (``shoal_payload_log_records_total``, per event): ``sent`` when the sink took
it (from memory or from the spool), ``spooled`` when it went to the spool, ``dropped`` when
the spool (or, if the logger thread cannot keep up, the in-memory queue) was full, ``failed``
when the sink refused it for good.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque

from .. import logging as log
from .metrics import PayloadMetrics
from .record import Event, Record, from_structured, render, structured
from .sinks import Sink, SinkDown
from .spool import Spool

#: Events sent to a sink at once.
BATCH = 256
#: Bytes of records waiting in memory before new ones are dropped (the logger thread is not
#: keeping up; a down sink empties memory into the spool, so this is not an outage).
MEMORY_LIMIT = 64 * 1024 * 1024
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
#: Seconds the channel lets records gather after a wake-up before it takes them: one thread
#: switch per this many milliseconds under load, instead of one per request (a switch on the
#: server's own core costs more than writing the record out).
LINGER = 0.005
#: How often a dropped-record warning may be logged, per channel.
WARN_INTERVAL = 10.0


class Channel:
    def __init__(
        self, url: str, label: str, sink: Sink, spool: Spool, metrics: PayloadMetrics,
        loop: asyncio.AbstractEventLoop, source_prefix: str, namespace: str | None,
    ) -> None:
        self.url = url
        self.label = label
        self.sink = sink
        self.spool = spool
        self.metrics = metrics
        self.loop = loop
        self.source_prefix = source_prefix
        self.namespace = namespace
        self.queue: deque[Record] = deque()
        self._added = 0  # bytes put (request threads)
        self._taken = 0  # bytes taken (logger thread)
        self._sleeping = False
        self._wake = asyncio.Event()
        self._closing = False
        self._flush_deadline = 0.0
        self.up = True
        self._retry_at = 0.0
        self._backoff = BACKOFF_FIRST
        self._warned = 0.0
        #: Events taken from memory and being sent: spooled if the send is cut short.
        self._in_hand: list[Event] = []
        self.task: asyncio.Task[None] | None = None
        metrics.sink_state(label, True)
        metrics.spool_bytes(label, spool.bytes)

    # -- the request path ---------------------------------------------------------------------

    def put(self, record: Record) -> None:
        if self._added - self._taken > MEMORY_LIMIT or self._closing:
            self._dropped(record.model, 2 if record.mode == "all" else 1, "the logger is behind")
            return
        self.queue.append(record)
        self._added += record.size
        if self._sleeping:
            self._sleeping = False
            self.loop.call_soon_threadsafe(self._wake.set)

    # -- the logger thread ----------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until closed. Nothing that goes wrong here (a full disk under the spool, a
        sink's own bug) ends the channel: it is logged, what was in hand is spooled (or
        counted as dropped), and delivery resumes after a backoff."""
        while True:
            try:
                if await self._step():
                    return
            except asyncio.CancelledError:
                self._rescue()
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.event("payload_log_channel_error", logging.ERROR, sink=self.label,
                          error=reason)
                self._rescue()
                self._down(reason)
                if self._closing:
                    return
                await asyncio.sleep(max(0.0, self._retry_at - time.monotonic()))

    async def _step(self) -> bool:
        """One round of delivery; True when the channel is done (closing, nothing left)."""
        if not self.spool.empty():
            if not self.up or self.queue:
                self._spool_memory()
            if self._closing and (not self.up or time.monotonic() >= self._flush_deadline):
                self._spool_memory()
                return True
            if not self.up and not await self._backed_off():
                return False
            await self._send_spooled()
            return False
        if not self.queue:
            if self._closing:
                return True
            await self._sleep(None)
            if not self._closing:
                await asyncio.sleep(LINGER)  # let a batch gather (put() does not wake us)
            return False
        events = self._take()
        if (not self.up and time.monotonic() < self._retry_at) or (
            self._closing and time.monotonic() >= self._flush_deadline
        ):
            self._to_spool(events)
            return False
        self._in_hand = events
        await self._send(events, spooled=False)
        self._in_hand = []
        return False

    def _rescue(self) -> None:
        """Spool the events taken from memory whose send did not finish (at least once)."""
        events, self._in_hand = self._in_hand, []
        self._to_spool(events)

    def _take(self) -> list[Event]:
        events: list[Event] = []
        while self.queue and len(events) < BATCH:
            record = self.queue.popleft()
            self._taken += record.size
            try:
                events.extend(render(record, self.source_prefix, self.namespace))
            except Exception as exc:  # a record that cannot be rendered is a bug: say so
                log.event("payload_log_render_failed", logging.ERROR, model=record.model,
                          error=f"{type(exc).__name__}: {exc}")
                self.metrics.count(record.model, self.label, "failed")
        return events

    async def _send(self, events: list[Event], spooled: bool) -> int:
        """Send; returns how many leading events are done with (delivered or refused)."""
        try:
            refused = await self.sink.send(events)
        except SinkDown as down:
            self._count_sent(events[: down.delivered])
            self._down(down.reason)
            if not spooled:
                self._to_spool(events[down.delivered :])
            return down.delivered
        except Exception as exc:  # a sink's bug must not stop delivery for good
            self._down(f"{type(exc).__name__}: {exc}")
            if not spooled:
                self._to_spool(events)
            return 0
        refused_at = dict(refused)
        for index, event in enumerate(events):
            why = refused_at.get(index)
            if why is None:
                self.metrics.count(event.model, self.label, "sent")
                continue
            self.metrics.count(event.model, self.label, "failed")
            log.event("payload_log_record_refused", logging.WARNING, sink=self.label,
                      model=event.model, id=event.key, type=event.attributes.get("type"),
                      reason=why)
        if not self.up:
            self.up = True
            self._backoff = BACKOFF_FIRST
            self.metrics.sink_state(self.label, True)
            log.event("payload_log_sink_up", sink=self.label)
        return len(events)

    async def _send_spooled(self) -> None:
        lines = self.spool.peek(BATCH)
        if not lines:
            return
        events: list[Event] = []
        line_of: list[int] = []  # the spool line each readable event came from
        for number, line in enumerate(lines):
            try:
                events.append(from_structured(line))
                line_of.append(number)
            except Exception:  # not a record (cannot happen short of a damaged file)
                log.event("payload_log_spool_line_skipped", logging.ERROR, sink=self.label,
                          spool=str(self.spool.directory))
        done = await self._send(events, spooled=True) if events else 0
        self.spool.ack(len(lines) if done == len(events) else line_of[done])
        self.metrics.spool_bytes(self.label, self.spool.bytes)

    def _spool_memory(self) -> None:
        while self.queue:
            self._to_spool(self._take())

    def _to_spool(self, events: list[Event]) -> None:
        if not events:
            return
        lines = [structured(event) for event in events]
        try:
            taken = self.spool.append(lines)
        except OSError as exc:
            for event in events:
                self._dropped(event.model, 1, f"cannot write the spool: {exc.strerror or exc}")
            return
        for event in events[:taken]:
            self.metrics.count(event.model, self.label, "spooled")
        for event in events[taken:]:
            self._dropped(event.model, 1, "the spool is full")
        self.metrics.spool_bytes(self.label, self.spool.bytes)

    def _count_sent(self, events: list[Event]) -> None:
        for event in events:
            self.metrics.count(event.model, self.label, "sent")

    def _down(self, reason: str) -> None:
        now = time.monotonic()
        if self.up:
            self.up = False
            self._backoff = BACKOFF_FIRST
            self.metrics.sink_state(self.label, False)
            log.event("payload_log_sink_down", logging.WARNING, sink=self.label, reason=reason)
        else:
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        self._retry_at = now + self._backoff * (0.5 + random.random())

    async def _backed_off(self) -> bool:
        """Wait for the next retry (spooling what arrives meanwhile); False if woken first."""
        remaining = self._retry_at - time.monotonic()
        if remaining <= 0:
            return True
        if self._closing:
            return False
        await self._sleep(remaining)
        if not self._closing:
            await asyncio.sleep(LINGER)  # spool what arrives in batches, not per request
        return time.monotonic() >= self._retry_at

    async def _sleep(self, timeout: float | None) -> None:
        self._wake.clear()
        self._sleeping = True
        if self.queue or self._closing:  # put() may have run before _sleeping was set
            self._sleeping = False
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._sleeping = False

    def _dropped(self, model: str, count: int, why: str) -> None:
        for _ in range(count):
            self.metrics.count(model, self.label, "dropped")
        now = time.monotonic()
        if now - self._warned >= WARN_INTERVAL:
            self._warned = now
            log.event("payload_log_dropped", logging.ERROR, sink=self.label, model=model,
                      reason=why, detail="counted in shoal_payload_log_records_total"
                      "{outcome=\"dropped\"}")

    async def close(self, timeout: float) -> None:
        """Deliver what is in memory for up to ``timeout`` seconds, spool the rest, stop."""
        self._flush_deadline = time.monotonic() + timeout
        self._closing = True
        self._wake.set()
        if self.task is not None:
            await asyncio.wait({self.task}, timeout=timeout + 1.0)
            if not self.task.done():
                self.task.cancel()  # a sink stuck past the deadline: its batch is spooled
                await asyncio.gather(self.task, return_exceptions=True)
        self._spool_memory()
        for step in (self.sink.close, self.spool.close):
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, 5.0)
            except Exception as exc:
                log.event("payload_log_close_failed", logging.ERROR, sink=self.label,
                          error=f"{type(exc).__name__}: {exc}")
