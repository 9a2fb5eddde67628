"""The dashboard's live charts: a rolling time series per model, kept in memory.

A :class:`SeriesRecorder` runs on the server's event loop (only with the UI on) and, every
``interval`` seconds, reads the request metrics the data plane keeps anyway
(``shoal_requests``, ``shoal_request_duration_seconds``, ``shoal_batch_size``,
``shoal_batch_queue_delay_seconds``), summed over versions and protocols per model. From the
cumulative totals of two samples it derives one point per model: what happened in that
interval. The request path does nothing more for it: the series are made from counters that
exist for ``/metrics``.

One point is

- ``rps``: requests per second (every outcome);
- ``error_rate``: the share of them that failed (any outcome but ``success`` and
  ``cancelled``); None with no requests;
- ``p50_ms``, ``p99_ms``: latency quantiles from the histogram's bucket increments,
  interpolated within the bucket as Prometheus' ``histogram_quantile`` does; None with no
  requests;
- ``batch_size``: mean rows per model execution (adaptive batching only), None with none;
- ``queue_ms``: mean time requests waited in a batching queue, None with none.

Samples are taken at multiples of the interval on the wall clock, so under ``--http-workers``
(prometheus-client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR`` set) every server process
samples at the same instants, reading the totals of all processes from the metric files the
way :mod:`shoal.rollout.metrics` reads its figures: whichever process answers, the numbers are
the same. The last :data:`WINDOW_SECONDS` are kept (150 points at the default interval).

The first sample is a baseline (no point); a model's points before its first request have
``rps`` 0 and the rest None. :meth:`SeriesRecorder.series` can leave out the points a page
already has (``since``).

Nothing is sampled while nobody looks: sampling starts with the first ``/ui`` request (page
or JSON) and stops once there has been none for :data:`IDLE_STOP` seconds, dropping what it
kept (older than the window by then). Under ``--http-workers`` a look reaches one process and
is passed on through a file's time in the metrics folder, which each process checks once an
interval (one ``stat``), so they all sample from the same instant. A total that goes down (a
version unloaded, a model reloaded) makes that interval's point unknown (all null) rather
than a spike.

The interval is :data:`DEFAULT_INTERVAL` seconds, or ``SHOAL_UI_SAMPLE_INTERVAL`` (seconds,
> 0) where set: tests use a short one.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import math
import os
import struct
import time
from collections import deque
from typing import Any

from prometheus_client.utils import floatToGoString

from ..observe import logging as log
from ..observe.metrics import LATENCY_BUCKETS, UNKNOWN, Metrics

#: Seconds between two samples, unless SHOAL_UI_SAMPLE_INTERVAL says otherwise.
DEFAULT_INTERVAL = 2.0
#: Seconds of history kept.
WINDOW_SECONDS = 300.0
INTERVAL_ENV = "SHOAL_UI_SAMPLE_INTERVAL"
#: Seconds without a look at the dashboard after which sampling stops (longer than the
#: window: when someone looks again, nothing kept would still be shown).
IDLE_STOP = 600.0
#: The fields of one point, in the order a model's series keeps them.
FIELDS = ("rps", "p50_ms", "p99_ms", "error_rate", "batch_size", "queue_ms")
#: Outcomes that are not failures.
NOT_FAILED = ("success", "cancelled")

_REQUESTS = "shoal_requests_total"
_LATENCY = "shoal_request_duration_seconds"
_BATCH = "shoal_batch_size"
_QUEUE = "shoal_batch_queue_delay_seconds"
#: Upper bounds of the latency buckets, +Inf last.
BOUNDS = (*LATENCY_BUCKETS, math.inf)
#: The ``le`` label of each latency bucket, as prometheus-client writes it -> its index.
_LE_INDEX = {floatToGoString(b): i for i, b in enumerate(BOUNDS)}


def sample_interval() -> float:
    """The sample interval: SHOAL_UI_SAMPLE_INTERVAL (seconds) where set and valid, else
    :data:`DEFAULT_INTERVAL`."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if math.isfinite(value) and value > 0:
            return max(value, 0.05)
        log.event("ui_sample_interval_ignored", logging.WARNING, value=text,
                  detail=f"{INTERVAL_ENV} must be a number of seconds > 0; using {DEFAULT_INTERVAL}")
    return DEFAULT_INTERVAL


#: A model's cumulative totals are one list of floats, indexed by these slots: requests,
#: failed requests, latency observations per bucket (one slot per bound in :data:`BOUNDS`,
#: not cumulative), model executions under batching and the rows they took, and requests
#: that waited in a batching queue and the seconds they waited.
REQUESTS, ERRORS, FIRST_BUCKET = 0, 1, 2
BATCHES = FIRST_BUCKET + len(BOUNDS)
ROWS, WAITS, WAITED = BATCHES + 1, BATCHES + 2, BATCHES + 3
SLOTS = WAITED + 1
_ZERO = [0.0] * SLOTS


def point(previous: list[float] | None, current: list[float], seconds: float) -> tuple[Any, ...]:
    """The interval's point (in :data:`FIELDS` order) from the totals at its start and end
    (lists indexed by the slots above); all None when a total went down."""
    if previous is None:
        previous = _ZERO
    elif any(c < p for c, p in zip(current, previous)):
        # Some series went away (a version unloaded, a model reloaded): what happened in this
        # interval cannot be told from totals that lost part of their history. Unknown, not
        # a spike of everything the remaining series ever counted.
        return (None,) * len(FIELDS)
    delta = [c - p for c, p in zip(current, previous)]
    requests, errors = delta[REQUESTS], delta[ERRORS]
    buckets = delta[FIRST_BUCKET:BATCHES]
    batches, rows, waits, waited = delta[BATCHES], delta[ROWS], delta[WAITS], delta[WAITED]
    if requests <= 0 or seconds <= 0:
        return (0.0 if seconds > 0 else None, None, None, None,
                _mean(rows, batches), _mean(waited * 1000, waits))
    return (
        round(requests / seconds, 4),
        _round(quantile(0.5, buckets)),
        _round(quantile(0.99, buckets)),
        round(errors / requests, 6),
        _mean(rows, batches),
        _mean(waited * 1000, waits),
    )


def quantile(q: float, buckets: list[float]) -> float | None:
    """The ``q`` quantile (milliseconds) of observations counted per latency bucket (not
    cumulative), interpolated linearly within its bucket like ``histogram_quantile``: an
    answer in the +Inf bucket is the largest finite bound."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(buckets):
        if count > 0 and seen + count >= rank:
            upper = BOUNDS[i]
            if math.isinf(upper):
                return BOUNDS[-2] * 1000
            lower = BOUNDS[i - 1] if i > 0 else 0.0
            return (lower + (upper - lower) * (rank - seen) / count) * 1000
        seen += count
    return BOUNDS[-2] * 1000


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _mean(total: float, count: float) -> float | None:
    return round(total / count, 4) if count > 0 else None


# -- reading the totals ----------------------------------------------------------------------


#: Model -> its cumulative totals (a list indexed by the slots above).
Totals = dict[str, list[float]]


def read_totals(metrics: Metrics) -> Totals:
    """Model -> its cumulative totals now: this process's metrics, or under
    ``--http-workers`` those of every server process (blocking: it reads their files)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        return _FileReader.for_directory(directory).read()
    try:
        return _read_children(metrics)
    except AttributeError:  # a prometheus-client without the internals read there
        return _read_collected(metrics)


def _totals_of(totals: Totals, model: str) -> list[float]:
    found = totals.get(model)
    if found is None:
        found = totals[model] = [0.0] * SLOTS
    return found


def _children(metric: Any) -> list[tuple[tuple[str, ...], Any]]:
    with metric._lock:
        return list(metric._metrics.items())


def _read_children(metrics: Metrics) -> Totals:
    """The totals from the metrics' labelled children themselves: ``collect()`` builds a
    sample object for each bucket of each child, ten times the cost."""
    totals: Totals = {}
    for (model, _, _, outcome), child in _children(metrics.requests):
        if model != UNKNOWN:
            found = _totals_of(totals, model)
            value = child._value.get()
            found[REQUESTS] += value
            if outcome not in NOT_FAILED:
                found[ERRORS] += value
    for labels, child in _children(metrics.latency):
        if labels[0] != UNKNOWN:
            found = _totals_of(totals, labels[0])
            for i, bucket in enumerate(child._buckets, FIRST_BUCKET):
                found[i] += bucket.get()
    for metric, count, total in ((metrics.batch_size, BATCHES, ROWS),
                                 (metrics.batch_queue_delay, WAITS, WAITED)):
        for labels, child in _children(metric):
            found = _totals_of(totals, labels[0])
            found[count] += sum(bucket.get() for bucket in child._buckets)
            found[total] += child._sum.get()
    return totals


def _read_collected(metrics: Metrics) -> Totals:
    """The totals through ``collect()`` (public, slower)."""
    totals: Totals = {}
    slots = _Slots()
    for metric in (metrics.requests, metrics.latency, metrics.batch_size, metrics.batch_queue_delay):
        for family in metric.collect():
            below: dict[tuple[str, ...], float] = {}
            for sample in family.samples:
                found = slots.of(family.name, sample.name, sample.labels)
                if found is None:
                    continue
                model, targets = found
                value = sample.value
                if sample.name.endswith("_bucket"):  # cumulative here: take the bucket's own
                    key = tuple(v for k, v in sorted(sample.labels.items()) if k != "le")
                    value, below[key] = value - below.get(key, 0.0), value
                add = _totals_of(totals, model)
                for target in targets:
                    add[target] += value
    return totals


class _Slots:
    """Which slots a sample adds to (None: none), by metric, sample name and labels."""

    def of(self, metric: str, name: str, labels: dict[str, str]
           ) -> tuple[str, tuple[int, ...]] | None:
        model = labels.get("model")
        if model is None or model == UNKNOWN:
            return None
        if metric == "shoal_requests" and name in (_REQUESTS, "shoal_requests"):
            failed = labels.get("outcome") not in NOT_FAILED
            return model, (REQUESTS, ERRORS) if failed else (REQUESTS,)
        if name == f"{_LATENCY}_bucket":
            index = _LE_INDEX.get(labels.get("le", ""))
            return None if index is None else (model, (FIRST_BUCKET + index,))
        for histogram, count, total in ((_BATCH, BATCHES, ROWS), (_QUEUE, WAITS, WAITED)):
            if name == f"{histogram}_bucket":
                return model, (count,)
            if name == f"{histogram}_sum":
                return model, (total,)
        return None


class _FileReader:
    """Reads the request metrics from prometheus-client's multiprocess files (counters and
    histograms of every server process, live or dead: their counts stay part of the total,
    as in ``/metrics``).

    The files only grow (an entry, once written, keeps its key and its place), so each file's
    entries are parsed once: a sample then only unpacks the values of the entries read here,
    at the offsets found before, and parses what was appended since."""

    _readers: dict[str, _FileReader] = {}

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._slots = _Slots()
        #: Path -> what was parsed of it.
        self._files: dict[str, _ParsedFile] = {}

    @classmethod
    def for_directory(cls, directory: str) -> _FileReader:
        reader = cls._readers.get(directory)
        if reader is None:
            reader = cls._readers[directory] = cls(directory)
        return reader

    def read(self) -> Totals:
        totals: Totals = {}
        paths = (glob.glob(os.path.join(self.directory, "counter_*.db"))
                 + glob.glob(os.path.join(self.directory, "histogram_*.db")))
        files = {}
        for path in paths:
            try:
                identity, data, used = _read_used(path)
            except (OSError, struct.error):
                continue
            parsed = self._files.get(path)
            if parsed is None or parsed.identity != identity or used < parsed.upto:
                parsed = _ParsedFile(identity)
            files[path] = parsed
            try:
                self._parse(parsed, data, used)
            except (struct.error, ValueError):
                continue
            for offset, model, slots in parsed.values:
                value = _DOUBLE.unpack_from(data, offset)[0]
                add = _totals_of(totals, model)
                for slot in slots:
                    add[slot] += value
        self._files = files  # files that are gone are forgotten
        return totals

    def _parse(self, parsed: _ParsedFile, data: bytes, used: int) -> None:
        """Parse the entries written since the last read (the layout
        ``prometheus_client.mmap_dict`` writes: per entry the key's length, the key padded to
        8 bytes, then the value and a timestamp as doubles)."""
        position = parsed.upto
        for start, length, offset in _walk(data, parsed.upto, used):
            found = self._entry(data[start:start + length])
            if found is not None:
                parsed.values.append((offset, *found))
            position = offset + 16
        parsed.upto = position

    def _entry(self, key: bytes) -> tuple[str, tuple[int, ...]] | None:
        try:
            metric, name, labels, _ = json.loads(key)
        except (ValueError, TypeError):
            return None
        if metric not in ("shoal_requests", _LATENCY, _BATCH, _QUEUE):
            return None
        return self._slots.of(metric, name, {str(k): str(v) for k, v in labels.items()})


class _ParsedFile:
    __slots__ = ("identity", "upto", "values")

    def __init__(self, identity: tuple[int, int]) -> None:
        self.identity = identity
        #: Where the next unparsed entry starts.
        self.upto = 8
        #: (offset of the value, model, slots) of each entry read here.
        self.values: list[tuple[int, str, tuple[int, ...]]] = []


_INT = struct.Struct("i")
_DOUBLE = struct.Struct("d")
_FIRST_READ = 64 * 1024


def _read_used(path: str) -> tuple[tuple[int, int], bytes, int]:
    """(the file's identity, its bytes up to what is used, that count)."""
    with open(path, "rb") as file:  # preallocated (1 MiB at first): read what is used
        stat = os.fstat(file.fileno())
        data = file.read(_FIRST_READ)
        used = _INT.unpack_from(data, 0)[0]
        if used > len(data):
            data += file.read(used - len(data))
    return (stat.st_dev, stat.st_ino), data, min(used, len(data))


def file_entries(path: str) -> list[tuple[bytes, float]]:
    """(key, value) of each entry of a prometheus-client multiprocess file."""
    _, data, used = _read_used(path)
    return [(data[start:start + length], _DOUBLE.unpack_from(data, offset)[0])
            for start, length, offset in _walk(data, 8, used)]


def _walk(data: bytes, position: int, used: int) -> Any:
    """(key start, key length, value offset) of each whole entry from ``position`` on, in the
    layout ``prometheus_client.mmap_dict`` writes: the key's length, the key padded to 8
    bytes, then the value and a timestamp as doubles. (Its own reader has no way to start
    from an offset, which is what lets a sample read only what was written since the last.)"""
    while position + 4 <= used:
        length = _INT.unpack_from(data, position)[0]
        start = position + 4
        offset = start + length + (8 - (length + 4) % 8)
        if length <= 0 or offset + 16 > used:
            return
        yield start, length, offset
        position = offset + 16


def counter_samples(metric: str) -> list[tuple[dict[str, str], float]]:
    """Under ``--http-workers``: the samples of the counter ``metric`` in every server
    process's files, each process's value on its own (sum them). Blocking."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    prefix = b'["' + metric.encode() + b'"'
    found = []
    for path in glob.glob(os.path.join(directory, "counter_*.db")):
        try:
            entries = file_entries(path)
        except (OSError, ValueError, struct.error):
            continue
        for key, value in entries:
            if not key.startswith(prefix):
                continue
            try:
                _, _, labels, _ = json.loads(key)
            except (ValueError, TypeError):
                continue
            found.append(({str(k): str(v) for k, v in labels.items()}, value))
    return found


# -- the recorder ----------------------------------------------------------------------------


class _ModelSeries:
    __slots__ = ("columns", "last", "absent")

    def __init__(self, points: int, padding: int) -> None:
        # Before its first request a model had none: no traffic, nothing else known.
        self.columns = [deque([0.0 if field == "rps" else None] * padding, maxlen=points)
                        for field in FIELDS]
        #: The totals at the last sample.
        self.last: list[float] | None = None
        #: Samples in a row without this model's metrics.
        self.absent = 0


class SeriesRecorder:
    """Samples the request metrics every ``interval`` seconds and keeps each model's
    points for the last ``window`` seconds."""

    def __init__(self, metrics: Metrics, interval: float | None = None,
                 window: float = WINDOW_SECONDS) -> None:
        self.metrics = metrics
        self.interval = interval if interval is not None else sample_interval()
        self.points = max(2, int(round(window / self.interval)))
        self.times: deque[float] = deque(maxlen=self.points)
        self._models: dict[str, _ModelSeries] = {}
        self._last_time: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._seen = -IDLE_STOP  # nobody has looked yet
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        #: Under --http-workers: the file whose time says when anyone last looked.
        self._shared = os.path.join(directory, "shoal_ui_seen") if directory else None
        self._threaded = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        #: Seconds the last sample took (read and derive).
        self.last_cost = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def touch(self) -> None:
        """Someone looked at the dashboard: sample from now on, until nobody has for
        :data:`IDLE_STOP` seconds. Called on the server's loop by every ``/ui`` request.

        Under ``--http-workers`` the look is shared through a file's time in the metrics
        folder (touched at most once an interval), so every process samples from the same
        instant on, whichever one the look reached."""
        now = time.monotonic()
        if self._shared is not None and now - self._seen >= self.interval:
            try:
                with open(self._shared, "a"):
                    os.utime(self._shared)
            except OSError:
                pass
        self._seen = now
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def start(self) -> None:
        """Under ``--http-workers``: watch for looks from the other processes (one ``stat``
        per interval while nobody looks). A single process starts sampling on its own first
        look instead (:meth:`touch`)."""
        if self._shared is not None and not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _looked_at(self) -> bool:
        if time.monotonic() - self._seen < IDLE_STOP:
            return True
        if self._shared is None:
            return False
        try:
            return time.time() - os.stat(self._shared).st_mtime < IDLE_STOP
        except OSError:
            return False

    def _forget(self) -> None:
        """Nobody looks: whatever was kept is older than the window when someone does."""
        self.times.clear()
        self._models.clear()
        self._last_time = None

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        # Every sample, the baseline first, falls on a multiple of the interval: every point
        # covers one whole interval, the same one in every server process.
        failed = False
        tick = 0
        while True:
            if not self._looked_at():
                self._forget()
                if self._shared is None:
                    return  # a look starts it again
                await asyncio.sleep(self.interval)
                continue
            now = time.time()
            # The next multiple; never the same one again (a timer may fire a little early),
            # unless the clock was set back: then the next multiple from now.
            tick = max(math.floor(now / self.interval) + 1, tick + 1)
            if tick * self.interval - now > 2 * self.interval:
                tick = math.floor(now / self.interval) + 1
            at = tick * self.interval
            await asyncio.sleep(max(0.0, at - now))
            try:
                await self._sample(at)
                failed = False
            except Exception as exc:  # a sample that fails must not end the charts
                if not failed:
                    log.event("ui_sample_failed", logging.WARNING,
                              error=f"{type(exc).__name__}: {exc}")
                failed = True

    async def _sample(self, at: float) -> None:
        started = time.perf_counter()
        if self._threaded:  # every process's files: off the loop
            totals = await asyncio.to_thread(read_totals, self.metrics)
        else:
            totals = read_totals(self.metrics)
        self.record(at, totals)
        self.last_cost = time.perf_counter() - started

    def record(self, at: float, totals: Totals) -> None:
        """Add the sample taken at ``at`` (wall-clock seconds); the first is the baseline."""
        previous_time = self._last_time
        self._last_time = at
        if previous_time is not None and at <= previous_time:
            # The clock was set back: no interval to speak of. A new baseline, no point.
            for name, found in totals.items():
                if name in self._models:
                    self._models[name].last = found
            return
        if previous_time is None:
            for name, found in totals.items():
                series = self._models[name] = _ModelSeries(self.points, 0)
                series.last = found
            return
        seconds = at - previous_time
        padding = len(self.times)
        self.times.append(round(at, 3))
        for name in totals:
            if name not in self._models:
                # New since the last sample: all it counted happened in this interval.
                self._models[name] = _ModelSeries(self.points, padding)
        gone = []
        for name, series in self._models.items():
            current = totals.get(name)
            if current is None:  # its series were dropped (unloaded)
                series.absent += 1
                if series.absent >= self.points:
                    gone.append(name)
                current = _ZERO
            else:
                series.absent = 0
            for column, value in zip(series.columns, point(series.last, current, seconds)):
                column.append(value)
            series.last = current
        for name in gone:
            del self._models[name]

    def series(self, name: str, since: float | None = None) -> dict[str, list[Any]]:
        """``{"t": [...], "rps": [...], ...}``: one value per sample interval, oldest first
        (only the points after ``since``, wall-clock seconds, when given)."""
        times = list(self.times)
        skip = 0
        if since is not None:
            while skip < len(times) and times[skip] <= since:
                skip += 1
        answer: dict[str, list[Any]] = {"t": times[skip:]}
        series = self._models.get(name)
        if series is None:  # never counted a request: no traffic, nothing else known
            for field in FIELDS:
                answer[field] = [0.0 if field == "rps" else None] * (len(times) - skip)
            return answer
        for field, column in zip(FIELDS, series.columns):
            answer[field] = list(column)[skip:]
        return answer
