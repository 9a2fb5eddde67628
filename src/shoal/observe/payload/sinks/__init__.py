"""Where payload records go: HTTP (binary-mode CloudEvents), Kafka (structured), files.

A sink's ``send`` takes events in order and either returns the ones the destination refused
for good, as (index, why) pairs (a 4xx from an HTTP collector, a message over Kafka's size
limit: logged, counted ``failed``, never retried), or raises :class:`SinkDown` saying how many leading events were
delivered before it failed; the rest are retried later (from the spool), in order.
"""

from __future__ import annotations

from typing import Protocol

from ..config import parse_sink_url
from ..record import Event


class SinkDown(Exception):
    def __init__(self, delivered: int, reason: str) -> None:
        super().__init__(reason)
        self.delivered = delivered
        self.reason = reason


class Sink(Protocol):
    async def send(self, events: list[Event]) -> list[tuple[int, str]]: ...

    async def close(self) -> None: ...


def open_sink(url: str, process_slot: int | None = None) -> Sink:
    parts = parse_sink_url(url)
    if parts.scheme in ("http", "https"):
        from .http import HttpSink

        return HttpSink(url)
    if parts.scheme == "kafka":
        from .kafka import KafkaSink

        return KafkaSink(url)
    from .file import FileSink

    return FileSink(url, process_slot)
