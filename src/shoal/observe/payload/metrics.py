"""The payload logger's series in ``/metrics``; updated from the logger's thread."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..metrics import LabelCache

class PayloadMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "shoal_payload_log_records",
            "Payload log events by model, sink and outcome (sent, spooled, dropped, failed).",
            ["model", "sink", "outcome"], registry=registry,
        )
        self.spool = Gauge(
            "shoal_payload_log_spool_bytes", "Bytes of payload log events waiting in the spool.",
            ["sink"], registry=registry, multiprocess_mode="livesum",
        )
        self.up = Gauge(
            "shoal_payload_log_sink_up", "1 while the sink takes events, 0 while it is down.",
            ["sink"], registry=registry, multiprocess_mode="livemin",
        )
        self._child = LabelCache()

    def count(self, model: str, sink: str, outcome: str) -> None:
        self._child(self.records, model, sink, outcome).inc()

    def spool_bytes(self, sink: str, size: int) -> None:
        self._child(self.spool, sink).set(size)

    def sink_state(self, sink: str, up: bool) -> None:
        self._child(self.up, sink).set(1.0 if up else 0.0)
