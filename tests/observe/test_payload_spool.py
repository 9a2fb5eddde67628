"""The payload log's disk spool and file sink, on real files."""

from __future__ import annotations

import asyncio

from pathlib import Path

import orjson
import pytest
from cloudevents.core.formats.json import JSONFormat

from shoal.observe.payload.record import Event, binary_headers, from_structured, structured
from shoal.observe.payload.sinks.file import FileSink
from shoal.observe.payload.spool import Spool, SpoolBudget, SpoolBusy, open_slot


def event(n: int, model: str = "iris", data: bytes = b'{"x":[1,2]}') -> Event:
    return Event({"specversion": "1.0", "id": f"id-{n}", "source": "shoal://h/models/iris",
                  "type": "org.kubeflow.serving.inference.request",
                  "inferenceservicename": model, "datacontenttype": "application/json",
                  "metadata": '{"x-user-id": ["a b"]}'}, data)


def test_structured_lines_parse_with_the_sdk_and_round_trip() -> None:
    line = structured(event(1))
    parsed = JSONFormat().read(None, line)
    assert parsed.get_id() == "id-1"
    assert parsed.get_data() == {"x": [1, 2]}
    back = from_structured(line)
    assert back.attributes == event(1).attributes and orjson.loads(back.data) == {"x": [1, 2]}
    raw = Event({**event(2).attributes, "datacontenttype": "application/octet-stream"}, b"\xff\x00")
    assert JSONFormat().read(None, structured(raw)).get_data() == b"\xff\x00"
    assert from_structured(structured(raw)).data == b"\xff\x00"


def test_binary_headers_are_percent_encoded() -> None:
    headers = dict(binary_headers(event(1)))
    assert headers["content-type"] == "application/json"
    assert headers["ce-metadata"] == "{%22x-user-id%22:%20[%22a%20b%22]}"
    assert all(value.isascii() for value in headers.values())


def test_spool_keeps_order_across_segments_and_restarts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("shoal.observe.payload.spool.SEGMENT_BYTES", 200)
    budget = SpoolBudget(1 << 20)
    spool = Spool(tmp_path, budget)
    lines = [f'{{"n":{i}}}'.encode() for i in range(50)]
    for start in range(0, 50, 7):
        assert spool.append(lines[start : start + 7]) == len(lines[start : start + 7])
    assert len(list(tmp_path.glob("*.jsonl"))) > 1
    got = spool.peek(5)
    assert got == lines[:5]
    spool.ack(3)  # delivered 3 of them, then the process stops
    spool.close()
    again = Spool(tmp_path, SpoolBudget(1 << 20))
    seen = []
    while not again.empty():
        batch = again.peek(4)
        if not batch:
            break
        seen.extend(batch)
        again.ack(len(batch))
    assert seen == lines[3:]
    assert again.bytes == 0 and not list(tmp_path.glob("*.jsonl"))


def test_a_line_cut_by_a_crash_is_not_a_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path, SpoolBudget(1 << 20))
    spool.append([b'{"n":1}', b'{"n":2}'])
    spool.close()
    segment = next(tmp_path.glob("*.jsonl"))
    with open(segment, "ab") as handle:
        handle.write(b'{"n":3')  # killed mid-write
    again = Spool(tmp_path, SpoolBudget(1 << 20))
    assert again.peek(10) == [b'{"n":1}', b'{"n":2}']


def test_the_budget_refuses_what_does_not_fit(tmp_path: Path) -> None:
    budget = SpoolBudget(20)
    spool = Spool(tmp_path, budget)
    assert spool.append([b"a" * 8, b"b" * 8, b"c" * 8]) == 2  # 9 + 9 bytes fit, 27 do not
    spool.ack(0)
    assert spool.peek(10) == [b"a" * 8, b"b" * 8]
    spool.ack(2)
    assert budget.used == 0
    assert spool.append([b"c" * 8]) == 1


def test_a_held_folder_is_busy_and_a_dead_ones_spool_is_adopted(tmp_path: Path) -> None:
    budget = SpoolBudget(1 << 20)
    first = open_slot(tmp_path, budget)
    assert first.directory.name == "0"
    with pytest.raises(SpoolBusy):
        Spool(tmp_path / "0", budget)
    second = open_slot(tmp_path, budget)
    assert second.directory.name == "1"
    second.append([b'{"from":"dead"}'])
    second.close()  # its process is gone: its lock is free
    first.close()
    adopted = open_slot(tmp_path, SpoolBudget(1 << 20))
    assert adopted.peek(10) == [b'{"from":"dead"}']
    assert not (tmp_path / "1").exists()


def test_file_sink_rotates_by_size_and_keeps_models_apart(tmp_path: Path) -> None:
    sink = FileSink(f"file://{tmp_path}?max_bytes=600")
    events = [event(n, model="a" if n % 3 else "b") for n in range(30)]
    assert asyncio.run(sink.send(events)) == []
    asyncio.run(sink.close())
    files_a = sorted((tmp_path / "a").glob("*.jsonl"))
    assert len(files_a) > 1 and all(f.stat().st_size < 600 + 2 * 350 for f in files_a)  # checked before each write
    lines = [line for f in sorted(files_a, key=lambda f: (len(f.name), f.name))
             for line in f.read_bytes().splitlines()]
    ids = [JSONFormat().read(None, line).get_id() for line in lines]
    assert ids == [f"id-{n}" for n in range(30) if n % 3]
    assert sum(len(f.read_bytes().splitlines()) for f in (tmp_path / "b").glob("*.jsonl")) == 10


def test_file_sink_that_cannot_write_reports_down(tmp_path: Path) -> None:
    from shoal.observe.payload.sinks import SinkDown

    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    sink = FileSink(f"file://{blocked}")
    with pytest.raises(SinkDown) as down:
        asyncio.run(sink.send([event(1)]))
    assert down.value.delivered == 0



def test_cut_and_empty_lines_give_their_budget_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path, SpoolBudget(1 << 20))
    spool.append([b'{"n":1}'])
    spool.close()
    with open(next(tmp_path.glob("*.jsonl")), "ab") as handle:
        handle.write(b'\n\n{"n":2')  # empty lines, then a line a crash cut
    budget = SpoolBudget(1 << 20)
    again = Spool(tmp_path, budget)
    assert again.peek(10) == [b'{"n":1}']
    again.ack(1)
    assert again.empty() and again.bytes == 0 and budget.used == 0


def test_an_offset_never_applies_to_another_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, SpoolBudget(1 << 20))
    spool.append([b'{"old":1}', b'{"old":2}'])
    spool.peek(1)
    spool.ack(1)
    spool.close()  # head.offset names the first segment
    first = next(tmp_path.glob("*.jsonl"))
    first.unlink()  # as if a crash came between deleting the segment and its offset
    again = Spool(tmp_path, SpoolBudget(1 << 20))
    again.append([b'{"new":%d}' % n for n in range(3)])
    got = again.peek(10)
    assert got == [b'{"new":0}', b'{"new":1}', b'{"new":2}']


def test_a_lock_on_a_deleted_lock_file_is_no_lock(tmp_path: Path) -> None:
    budget = SpoolBudget(1 << 20)
    holder = Spool(tmp_path / "1", budget)
    (tmp_path / "1" / ".lock").unlink()  # what adopt() does before it lets go
    holder.close()
    again = Spool(tmp_path / "1", budget)  # a fresh lock file: a real lock
    with pytest.raises(SpoolBusy):
        Spool(tmp_path / "1", budget)
    again.close()
