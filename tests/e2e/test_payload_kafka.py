"""The Kafka sink against a real Kafka-protocol broker (Tansu, started here): every record is
consumed, keyed by its request id, and parses as a structured CloudEvent with the SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured

from .payload_helpers import FORMAT, TansuBroker, write_model
from .process import ShoalProcess

REQUESTS = 40


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    broker = TansuBroker()
    yield broker
    broker.stop()


async def consume(address: str, topic: str, count: int, timeout: float = 30.0) -> list:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=address, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or {0}
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        messages: list = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(messages) < count and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                messages.extend(records)
        return messages
    finally:
        await consumer.stop()


def test_every_record_reaches_the_topic_keyed_by_request_id(
    tmp_path: Path, broker: TansuBroker
) -> None:
    write_model(tmp_path / "models" / "iris" / "1")
    (tmp_path / "models" / "iris" / "model.yaml").write_text(
        f"logger: {{url: 'kafka://{broker.address}/inference-log'}}\n"
    )
    server = ShoalProcess(tmp_path / "models", "--state-dir", str(tmp_path / "state"))
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url) as client:
            for i in range(REQUESTS):
                reply = client.post("/v2/models/iris/infer", json={"id": f"k-{i}", "inputs": [
                    {"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                     "data": [5.1, 3.5, 1.4, 0.2]}]})
                assert reply.status_code == 200
    finally:
        assert server.stop() == 0
    messages = asyncio.run(consume(broker.address, "inference-log", 2 * REQUESTS))
    assert len(messages) == 2 * REQUESTS
    seen: dict[str, list[str]] = {}
    for message in messages:
        event = from_structured(KafkaMessage(dict(message.headers), message.key, message.value), FORMAT)
        assert message.key.decode() == event.get_id()
        assert dict(message.headers)["content-type"] == b"application/cloudevents+json"
        assert event.get_extension("inferenceservicename") == "iris"
        seen.setdefault(event.get_id(), []).append(event.get_type())
    assert sorted(seen) == sorted(f"k-{i}" for i in range(REQUESTS))
    for types in seen.values():  # one partition per key: the request before its response
        assert types == ["org.kubeflow.serving.inference.request",
                         "org.kubeflow.serving.inference.response"]
