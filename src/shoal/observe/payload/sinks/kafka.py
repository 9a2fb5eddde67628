"""``kafka://host:port/topic``: structured-mode CloudEvents, keyed by the request id.

The key puts a request's two events in one partition, in order; the value is the JSON
event format, with ``content-type: application/cloudevents+json`` as the Kafka protocol
binding asks. The producer is aiokafka's (``pip install 'shoal[kafka]'``), acks from the
partition leader before a record counts as sent. Comma-separated hosts in the URL are all
bootstrap servers (``kafka://a:9092,b:9092/topic``).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

from ..config import sink_label
from ..record import Event, structured
from . import SinkDown

CONTENT_TYPE = ("content-type", b"application/cloudevents+json")
#: Largest message the producer sends (a bigger record is refused for good, as ``failed``).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
REQUEST_TIMEOUT_MS = 10_000


class KafkaSink:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = sink_label(url)  # what reasons and logs show: no password
        self.servers = parts.netloc.rsplit("@", 1)[-1]
        self.topic = unquote(parts.path.strip("/"))
        self._producer: Any = None

    async def _started(self) -> Any:
        if self._producer is not None:
            return self._producer
        try:
            from aiokafka import AIOKafkaProducer
        except ImportError:
            raise SinkDown(0, "the Kafka sink needs aiokafka: pip install 'shoal[kafka]'") from None
        producer = AIOKafkaProducer(
            bootstrap_servers=self.servers.split(","), acks=1, linger_ms=2,
            max_request_size=MAX_MESSAGE_BYTES, request_timeout_ms=REQUEST_TIMEOUT_MS,
            client_id="shoal-payload-log",
        )
        try:
            await producer.start()
        except Exception as exc:  # KafkaConnectionError and friends
            await _quietly(producer.stop())
            raise SinkDown(0, f"cannot connect to {self.url}: {type(exc).__name__}: {exc}") from None
        self._producer = producer
        return producer

    async def send(self, events: list[Event]) -> list[tuple[int, str]]:
        from aiokafka.errors import MessageSizeTooLargeError

        producer = await self._started()
        futures = []
        rejected: list[tuple[int, str]] = []
        for index, event in enumerate(events):
            try:
                futures.append(await producer.send(
                    self.topic, value=structured(event), key=event.key.encode(),
                    headers=[CONTENT_TYPE],
                ))
            except MessageSizeTooLargeError:
                futures.append(None)
                rejected.append((index, f"over the {MAX_MESSAGE_BYTES}-byte message limit"))
            except Exception as exc:
                await self._reset()
                # Handed over but not known delivered: all of them go again (at least once).
                raise SinkDown(0, f"{self.url}: {type(exc).__name__}: {exc}") from None
        results = await asyncio.gather(*(f for f in futures if f is not None), return_exceptions=True)
        failures = iter(results)
        for index, future in enumerate(futures):
            if future is None:
                continue
            outcome = next(failures)
            if isinstance(outcome, MessageSizeTooLargeError):
                rejected.append((index, "over the broker's message size limit"))
            elif isinstance(outcome, BaseException):
                await self._reset()
                raise SinkDown(index, f"{self.url}: {type(outcome).__name__}: {outcome}")
        return rejected

    async def _reset(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _quietly(producer.stop())

    async def close(self) -> None:
        await self._reset()


async def _quietly(awaitable: Any) -> None:
    try:
        await asyncio.wait_for(awaitable, 5.0)
    except Exception:
        pass
