"""A collector that goes away loses nothing: under continuous load the HTTP receiver stops
for 10 s and comes back, and every request answered has both its records delivered, while
request latency stays what it was. And when the server itself is killed (-9) during the
outage, what it had spooled is delivered after it restarts."""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from .payload_helpers import EventReceiver, write_model
from .process import ShoalProcess

pytestmark = pytest.mark.slow

BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                    "data": [5.1, 3.5, 1.4, 0.2]}]}


class Load:
    """Threads sending requests back to back, each with its own id; what was answered 200
    and how long each took, by the time it was sent."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.answered: list[str] = []
        self.timings: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                         for n in range(threads)]

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            sent = 0
            while not self._stop.is_set():
                request_id = f"w{worker}-{sent}"
                sent += 1
                started = time.monotonic()
                try:
                    reply = client.post("/v2/models/iris/infer", json={**BODY, "id": request_id})
                except httpx.TransportError:
                    return  # the server was killed
                took = time.monotonic() - started
                with self._lock:
                    self.timings.append((started, took))
                    if reply.status_code == 200:
                        self.answered.append(request_id)

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def latencies(self, since: float, until: float) -> list[float]:
        with self._lock:
            return [took for started, took in self.timings if since <= started < until]


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def delivered_ids(receiver: EventReceiver) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = {}
    for event in list(receiver.events):
        ids.setdefault(event.get_id(), set()).add(event.get_type().rsplit(".", 1)[1])
    return ids


def all_delivered(receiver: EventReceiver, answered: set[str]) -> bool:
    ids = delivered_ids(receiver)
    return all(ids.get(i) == {"request", "response"} for i in answered)


def wait_until(check, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_delivery(receiver: EventReceiver, answered: set[str], what: str,
                      stall: float = 15.0) -> None:
    """Wait until every answered request has both records, for as long as delivery keeps
    making progress: a spool of tens of thousands of events takes a while to replay into
    the test's receiver on a busy machine, but a delivery that stops for ``stall`` seconds
    with records missing is a failure."""
    seen = -1
    last_progress = time.monotonic()
    while True:
        ids = delivered_ids(receiver)
        missing = sum(1 for i in answered if ids.get(i) != {"request", "response"})
        if not missing:
            return
        if len(receiver.events) > seen:
            seen, last_progress = len(receiver.events), time.monotonic()
        elif time.monotonic() - last_progress > stall:
            raise AssertionError(f"{what}: {missing} of {len(answered)} requests still lack "
                                 f"records, and nothing arrived for {stall:g} s")
        time.sleep(0.2)


def serve(tmp_path: Path, receiver: EventReceiver) -> ShoalProcess:
    models = tmp_path / "models"
    if not models.exists():
        write_model(models / "iris" / "1")
    server = ShoalProcess(models, "--payload-log", receiver.url, "--state-dir", str(tmp_path / "state"))
    server.wait_ready()
    return server


def test_an_outage_loses_nothing_and_slows_nothing(tmp_path: Path) -> None:
    receiver = EventReceiver().start()
    server = serve(tmp_path, receiver)
    try:
        load = Load(server.url).start()
        time.sleep(3)
        outage_started = time.monotonic()
        receiver.stop()
        time.sleep(10)
        outage_ended = time.monotonic()
        receiver.start()
        time.sleep(2)
        load.stop()
        answered = set(load.answered)
        assert len(answered) > 200
        wait_for_delivery(receiver, answered, "every record to arrive")
        before = load.latencies(0, outage_started)
        during = load.latencies(outage_started, outage_ended)
        assert len(during) > 100
        # Logging is a queue append on the request path: the outage does not show in latency.
        assert statistics.median(during) < 3 * statistics.median(before) + 0.005
        assert max(during) < 1.0
        assert metric(server.url, "shoal_payload_log_records_total", outcome="spooled") > 0
        assert metric(server.url, "shoal_payload_log_records_total", outcome="dropped") == 0
        assert metric(server.url, "shoal_payload_log_sink_up") == 1.0
    finally:
        receiver.stop()
        assert server.stop() == 0


def test_a_server_killed_during_an_outage_delivers_its_spool_after_restart(tmp_path: Path) -> None:
    receiver = EventReceiver()  # down from the start
    server = serve(tmp_path, receiver)
    load = Load(server.url).start()
    time.sleep(2)
    load.stop()
    answered = set(load.answered)
    assert len(answered) > 50
    wait_until(lambda: metric(server.url, "shoal_payload_log_records_total", outcome="spooled")
               >= 2 * len(answered), 10, "every record to be spooled")
    assert metric(server.url, "shoal_payload_log_sink_up") == 0.0
    spool_bytes = metric(server.url, "shoal_payload_log_spool_bytes")
    assert spool_bytes > 0
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    receiver.start()
    restarted = serve(tmp_path, receiver)
    try:
        wait_for_delivery(receiver, answered, "the spooled records to arrive")
        wait_until(lambda: metric(restarted.url, "shoal_payload_log_spool_bytes") == 0, 10,
                   "the spool to empty")
        spool = tmp_path / "state" / "payload-log"
        assert not [p for p in spool.rglob("*.jsonl")]  # delivered segments are deleted
    finally:
        receiver.stop()
        assert restarted.stop() == 0


def test_sigterm_flushes_what_is_queued_or_spools_it(tmp_path: Path) -> None:
    receiver = EventReceiver().start()
    server = serve(tmp_path, receiver)
    ids = [f"t-{i}" for i in range(30)]
    with httpx.Client(base_url=server.url) as client:
        for request_id in ids:
            assert client.post("/v2/models/iris/infer", json={**BODY, "id": request_id}).status_code == 200
    assert server.stop() == 0  # right away: what is queued is sent before the exit
    assert all_delivered(receiver, set(ids))

    receiver.stop()  # now a collector that is down at shutdown
    server = serve(tmp_path, receiver)
    later = [f"u-{i}" for i in range(30)]
    with httpx.Client(base_url=server.url) as client:
        for request_id in later:
            assert client.post("/v2/models/iris/infer", json={**BODY, "id": request_id}).status_code == 200
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10
    assert any((tmp_path / "state" / "payload-log").rglob("*.jsonl"))
    receiver.start()
    server = serve(tmp_path, receiver)
    try:
        wait_for_delivery(receiver, set(later), "the spool to be delivered")
    finally:
        receiver.stop()
        assert server.stop() == 0
