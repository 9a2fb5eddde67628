"""The payload logger: which served names log where, and the thread that delivers.

The repository tells it, at each load, what a model's or graph's ``logger:`` says
(:meth:`PayloadLogger.configure`); the data plane reads :attr:`PayloadLogger.routes` per
request and hands a :class:`~.record.Record` to the route's channel. Channels (one per sink
URL, shared by the models that name it) run on one thread with its own event loop, so
rendering and sending never run on the server's loop; they start when a model first names
their sink, and at start for every sink that has a spool left behind, so records a crash
left are delivered without waiting for a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from ...errors import LoadError
from .. import logging as log
from .channel import Channel
from .config import LoggerConfig, sink_label
from .metrics import PayloadMetrics
from .record import Record, default_source_prefix, namespace, new_event_id, render, structured
from .sinks import open_sink
from .spool import SpoolBudget, open_slot

GiB = 1024 * 1024 * 1024
DEFAULT_SPOOL_BYTES = 1 * GiB
#: Seconds a shutdown gives the sinks to take what is in memory before it is spooled.
FLUSH_TIMEOUT = 5.0
_URL_FILE = "sink.url"


#: Records a route keeps for the dashboard's "recent payload records" panel.
RECENT = 20
#: A record larger than this (request + response, about) is kept there without its data.
RECENT_BYTES = 64 * 1024


@dataclass(slots=True, frozen=True)
class Route:
    """How one served name is logged."""

    channel: Channel
    mode: str
    sample_rate: float
    headers: tuple[str, ...]
    component: str
    #: The last few records put on the channel, for the dashboard (None: no dashboard). A
    #: record over :data:`RECENT_BYTES` is kept without its data, so this holds little.
    recent: deque[Record] | None = None

    @property
    def sink(self) -> str:
        return self.channel.label

    def remember(self, record: Record) -> None:
        assert self.recent is not None
        if record.event_id is None:  # one id wherever the record is shown or sent
            request = record.request
            record.event_id = (request.id if request is not None and request.id else None
                               ) or new_event_id()
        if record.size > RECENT_BYTES:
            record = replace(record, request=None, body=None, response=None, sent=None,
                             error=record.error and record.error[:RECENT_BYTES])
        self.recent.append(record)

    def recent_events(self) -> list[dict[str, Any]]:
        """The recent records as structured CloudEvents (JSON objects), newest first; a record
        kept without its data has ``data`` null and ``omitted_bytes`` (about how large it
        was)."""
        events: list[dict[str, Any]] = []
        for record in reversed(list(self.recent or ())):
            try:
                rendered = render(record, self.channel.source_prefix, self.channel.namespace)
            except Exception:  # noqa: BLE001 (a record that cannot render is not shown)
                continue
            for event in rendered:
                shown = orjson.loads(structured(event))
                if record.size > RECENT_BYTES:
                    shown["data"] = None
                    shown["omitted_bytes"] = record.size
                events.append(shown)
        return events


class PayloadLogger:
    def __init__(
        self, registry: CollectorRegistry, state_dir: Path, default_url: str | None = None,
        spool_bytes: int = DEFAULT_SPOOL_BYTES, several_processes: bool = False,
        keep_recent: bool = False,
    ) -> None:
        self.default_url = default_url
        #: Whether routes keep their recent records (for the dashboard, when it is on).
        self.keep_recent = keep_recent
        self.spool_root = state_dir / "payload-log"
        self.budget = SpoolBudget(spool_bytes)
        self.metrics = PayloadMetrics(registry)
        self.several_processes = several_processes
        #: Served name -> route; read by the data plane on every request (no lock: a dict
        #: read or write is atomic, and only the server's loop writes).
        self.routes: dict[str, Route] = {}
        self._channels: dict[str, Channel] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._source = default_source_prefix()
        self._namespace = namespace()

    # -- configuration (the server's loop) ------------------------------------------------------

    def configure(self, name: str, config: LoggerConfig | None | bool, graph: bool = False) -> None:
        """What ``name`` logs after its (re)load: its own ``logger:`` block, or the server's
        default when it has none (``config`` None), or nothing (``logger: false``). Raises
        LoadError for a block without a URL when the server has no default, and for a sink
        whose extra is not installed."""
        if config is False:
            self.routes.pop(name, None)
            return
        if config is None or config is True:
            if self.default_url is None:
                self.routes.pop(name, None)
                return
            config = LoggerConfig(url=self.default_url)
        url = config.url or self.default_url
        if url is None:
            raise LoadError("logger: has no url, and the server has no --payload-log default")
        if url.startswith("kafka:") and importlib.util.find_spec("aiokafka") is None:
            raise LoadError("logger: a kafka:// sink needs aiokafka: pip install 'shoal[kafka]'")
        try:
            channel = self._channel(url)
        except OSError as exc:  # the state directory: not writable, full, ...
            raise LoadError(f"logger: cannot open the payload log spool under "
                            f"{self.spool_root}: {exc.strerror or exc}") from None
        self.routes[name] = Route(
            channel, config.mode, config.sample_rate, tuple(config.headers),
            "graph" if graph else "predictor",
            deque(maxlen=RECENT) if self.keep_recent else None,
        )

    def forget(self, name: str) -> None:
        self.routes.pop(name, None)

    # -- the logger thread ------------------------------------------------------------------------

    def resume(self) -> None:
        """Start a channel for every sink a previous run left a spool for (a crash, or a sink
        that was down at shutdown): what it holds is delivered without waiting for a model
        to name that sink again. No spool, no thread."""
        if not self.spool_root.is_dir():
            return
        for folder in sorted(self.spool_root.iterdir()):
            url_file = folder / _URL_FILE
            if url_file.is_file() and _has_segments(folder):
                url = url_file.read_text().strip()
                try:
                    self._channel(url)
                except Exception as exc:
                    log.event("payload_log_spool_unreadable", logging.ERROR,
                              spool=str(folder), error=f"{type(exc).__name__}: {exc}")

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._loop is not None:
            return self._loop
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="shoal-payload-log", daemon=True)
        self._thread.start()
        ready.wait()
        assert self._loop is not None
        return self._loop

    def _channel(self, url: str) -> Channel:
        channel = self._channels.get(url)
        if channel is not None:
            return channel
        loop = self._start()
        folder = self.spool_root / hashlib.sha256(url.encode()).hexdigest()[:16]
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        url_file = folder / _URL_FILE
        if not url_file.exists():  # it may hold a password: readable by the server only
            descriptor = os.open(url_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(url + "\n")
        spool = open_slot(folder, self.budget)
        slot = int(spool.directory.name) if self.several_processes else None
        label = sink_label(url)
        try:
            sink = open_sink(url, slot)
        except Exception:
            spool.close()
            raise
        channel = Channel(url, label, sink, spool, self.metrics, loop, self._source,
                          self._namespace)
        self._channels[url] = channel

        async def begin() -> None:
            channel.task = asyncio.current_task()
            await channel.run()

        asyncio.run_coroutine_threadsafe(begin(), loop)
        if not spool.empty():
            log.event("payload_log_spool_found", sink=label, bytes=spool.bytes,
                      detail="delivering what an earlier run spooled")
        return channel

    async def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Flush what is in memory (spooling what the sinks do not take within ``timeout``)
        and stop the thread. Called by the server once its requests have drained."""
        loop = self._loop
        if loop is None:
            return
        self.routes.clear()

        async def close_all() -> None:
            await asyncio.gather(*(c.close(timeout) for c in self._channels.values()),
                                 return_exceptions=True)

        future = asyncio.run_coroutine_threadsafe(close_all(), loop)
        try:
            await asyncio.wrap_future(future)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join, 5.0)
            self._loop = None
            self._thread = None


def _has_segments(folder: Path) -> bool:
    return any(folder.glob("*/*.jsonl"))


def header_metadata(names: tuple[str, ...]) -> dict[str, list[str]] | None:
    """The allow-listed request headers, as KServe's logger's ``metadata`` attribute has them
    (name -> values)."""
    from ...graph.context import HEADERS

    source: Any = HEADERS.get()
    if source is None:
        return None
    pairs = source() if callable(source) else source
    found: dict[str, list[str]] = {}
    for key, value in pairs or ():
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        key = key.lower()
        if key in names:
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            found.setdefault(key, []).append(str(value))
    return found or None
