"""The pipeline that turns input files into output shards: reading, predicting and writing
overlap, and memory stays bounded.

::

    reader thread ──► event loop ──► writer thread
    (read a batch,     (endpoint.infer,    (outputs as columns, shard files,
     columns→tensors)   a few in flight)    commit, report)

Each stage hands the next a bounded number of batches, so a slow stage holds the others back
instead of piling batches up in memory. Batches reach the writer in input order, whatever
order they finished scoring in, so a shard's rows keep their input's order.

The same pipeline runs in the local engine (one process, the model in it or in worker
processes) and inside each Ray actor.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import deps, storage
from .columns import ColumnMapping, Columns, Prepared
from .inputs import InputFile
from .manifest import ERROR_PARTS, ShardRecord
from .outputs import (
    EXTENSIONS,
    ROW_NUMBER,
    ShardWriter,
    output_columns,
    write_json_lines,
)
from .readers import ChunkEnd, FileEnd, Piece, open_reader
from .scoring import JobError, Scored, Scorer

#: Batches read ahead of the model, and scored batches waiting for the writer.
READ_AHEAD = 4
WRITE_AHEAD = 4


@dataclass(frozen=True)
class Layout:
    """How a job's rows become output files (the same in every engine and actor)."""

    output: str
    output_format: str = "parquet"
    columns: Columns | None = None
    id_column: str | None = None
    outputs: list[str] | None = None
    split_outputs: bool = False
    batch_size: int = 4096
    chunk_rows: int = 1_000_000
    storage_options: dict[str, Any] = field(default_factory=dict)

    def shard_name(self, file: InputFile, chunk: int) -> str:
        return f"{file.relative}-{chunk:05d}{EXTENSIONS[self.output_format]}"

    def errors_name(self, file: InputFile, chunk: int) -> str:
        return f"{ERROR_PARTS}/{file.relative}-{chunk:05d}.jsonl"


@dataclass
class FileTask:
    file: InputFile
    done: set[int] = field(default_factory=set)
    """Chunks already recorded as finished: not scored again."""


# -- what the pipeline reports (from its writer thread) ----------------------------------------


@dataclass
class RowsDone:
    ok: int
    failed: int
    bytes_read: int
    errors: list[dict[str, Any]]
    """This batch's bad rows (error records), in row order."""
    text: bool = False
    """The rows come from a CSV or JSON lines file (progress estimates those from bytes)."""
    shard: str = ""
    """The output shard the rows belong to."""


@dataclass
class ShardDone:
    name: str
    record: ShardRecord


@dataclass
class FileDone:
    file: InputFile
    rows: int
    chunks: int


Report = Callable[[RowsDone | ShardDone | FileDone], None]


class _Abort:
    """Tells the writer to drop what it has: the job stopped."""


ABORT = _Abort()


class Pipeline:
    def __init__(
        self, layout: Layout, scorer: Scorer, inputs: list[Any], report: Report, in_flight: int = 2,
    ) -> None:
        """``inputs``: the model's declared inputs (TensorSpec); ``report`` is called from the
        writer thread and may raise to stop the job (too many bad rows)."""
        self.layout = layout
        self.scorer = scorer
        self.inputs = inputs
        self.report = report
        self.in_flight = max(1, in_flight)
        self.output = storage.locate(layout.output, layout.storage_options)
        self.schema: Any = None
        self._stop = threading.Event()
        self._writer_error: BaseException | None = None

    # -- the event loop's part -----------------------------------------------------------------

    async def run(self, tasks: list[FileTask]) -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        room = threading.Semaphore(READ_AHEAD)
        outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        write_room = asyncio.Semaphore(WRITE_AHEAD)
        finished = threading.Event()
        reader = threading.Thread(target=self._read, args=(tasks, loop, inbox, room),
                                  name="shoal-batch-reader", daemon=True)
        writer = threading.Thread(target=self._write, args=(outbox, loop, inbox, write_room, finished),
                                  name="shoal-batch-writer", daemon=True)
        pending: collections.deque[tuple[tuple[Any, ...], asyncio.Task[Scored] | None]] = collections.deque()
        reader.start()
        writer.start()
        completed = False
        try:
            while True:
                item = await inbox.get()
                if item[0] == "error":
                    raise item[1]
                room.release()
                if item[0] == "done":
                    break
                task = None
                if item[0] == "piece" and item[3] is not None and len(item[3].good):
                    prepared: Prepared = item[3]
                    task = asyncio.ensure_future(self.scorer.score(prepared.tensors, len(prepared.good)))
                pending.append((item, task))
                while pending and (pending[0][1] is None or pending[0][1].done()
                                   or sum(t is not None for _, t in pending) > self.in_flight):
                    await self._hand_over(pending.popleft(), outbox, write_room)
            while pending:
                await self._hand_over(pending.popleft(), outbox, write_room)
            outbox.put(None)
            await asyncio.get_running_loop().run_in_executor(None, finished.wait)
            if self._writer_error is not None:
                raise self._writer_error
            completed = True
        finally:
            if not completed:
                self._stop.set()
                for _, task in pending:
                    if task is not None:
                        task.cancel()
                outbox.put(ABORT)
                for _ in range(READ_AHEAD + 1):
                    room.release()  # a reader waiting for room sees the stop
                await asyncio.shield(loop.run_in_executor(None, finished.wait))
            await loop.run_in_executor(None, reader.join)

    async def _hand_over(self, entry: tuple[tuple[Any, ...], asyncio.Task[Scored] | None],
                         outbox: queue.SimpleQueue[Any], write_room: asyncio.Semaphore) -> None:
        item, task = entry
        result = await task if task is not None else None
        await write_room.acquire()
        if self._writer_error is not None:
            raise self._writer_error
        outbox.put((*item, result))

    # -- the reader thread -----------------------------------------------------------------------

    def _read(self, tasks: list[FileTask], loop: asyncio.AbstractEventLoop,
              inbox: asyncio.Queue[tuple[Any, ...]], room: threading.Semaphore) -> None:
        def send(item: tuple[Any, ...]) -> bool:
            room.acquire()
            if self._stop.is_set():
                return False
            loop.call_soon_threadsafe(inbox.put_nowait, item)
            return True

        try:
            for task in tasks:
                if not self._read_file(task, send):
                    return
            send(("done",))
        except BaseException as exc:  # handed to the loop, which stops the job with it
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, ("error", exc))
            except RuntimeError:
                pass

    def _read_file(self, task: FileTask, send: Callable[[tuple[Any, ...]], bool]) -> bool:
        layout = self.layout
        reader = open_reader(task.file, layout.storage_options)
        try:
            mapping = ColumnMapping(
                reader.schema, self.inputs, layout.columns, layout.id_column, task.file.shown,
                text=task.file.format in ("csv", "jsonl"), open_schema=task.file.format == "jsonl",
            )
            counted = 0
            for event in reader.events(mapping.wanted, layout.chunk_rows, layout.batch_size, task.done):
                if self._stop.is_set():
                    return False
                if isinstance(event, Piece):
                    prepared = (mapping.prepare(event.batch, event.first_row, event.errors)
                                if event.batch is not None else None)
                    read, counted = reader.bytes_read - counted, reader.bytes_read
                    if not send(("piece", task, event, prepared, read)):
                        return False
                elif isinstance(event, ChunkEnd):
                    if not send(("chunk_end", task, event, None, 0)):
                        return False
                elif isinstance(event, FileEnd):
                    if not send(("file_end", task, event, None, reader.bytes_read - counted)):
                        return False
            return True
        finally:
            reader.close()

    # -- the writer thread -----------------------------------------------------------------------

    def _write(self, outbox: queue.SimpleQueue[Any], loop: asyncio.AbstractEventLoop,
               inbox: asyncio.Queue[tuple[Any, ...]], write_room: asyncio.Semaphore,
               finished: threading.Event) -> None:
        shards: dict[tuple[str, int], _Shard] = {}
        try:
            while True:
                item = outbox.get()
                if item is None or item is ABORT or self._stop.is_set():
                    break
                kind, task, event = item[0], item[1], item[2]
                if kind == "piece":
                    key = (task.file.url, event.chunk)
                    shard = shards.get(key) or shards.setdefault(key, _Shard(task.file, event.chunk))
                    self._write_piece(shard, event, item[3], item[5], item[4])
                elif kind == "chunk_end":
                    shard = shards.pop((task.file.url, event.chunk), None) or _Shard(task.file, event.chunk)
                    self._finish_shard(shard, event.rows)
                elif kind == "file_end":
                    self.report(FileDone(task.file, event.rows, event.chunks))
                loop.call_soon_threadsafe(write_room.release)
        except BaseException as exc:
            self._writer_error = exc
            try:
                loop.call_soon_threadsafe(self._writer_failed, exc, inbox, write_room)
            except RuntimeError:
                pass
        finally:
            for shard in shards.values():
                shard.abort()
            finished.set()

    def _writer_failed(self, exc: BaseException, inbox: asyncio.Queue[tuple[Any, ...]],
                       write_room: asyncio.Semaphore) -> None:
        inbox.put_nowait(("error", exc))
        write_room.release()  # the loop may be waiting for room the writer will never free

    def _write_piece(self, shard: _Shard, piece: Piece, prepared: Prepared | None,
                     scored: Scored | None, bytes_read: int) -> None:
        file = shard.file
        errors: dict[int, str] = dict(prepared.errors) if prepared is not None else {}
        ok = 0
        if prepared is not None and scored is not None:
            for position, reason in scored.errors.items():
                errors[int(prepared.good[position])] = reason
            if len(scored.kept):
                positions = prepared.good[scored.kept]
                batch = self._result(piece, prepared, scored, positions)
                if shard.writer is None:
                    shard.writer = ShardWriter(
                        self.output.child(self.layout.shard_name(file, shard.chunk)),
                        self.layout.output_format, batch.schema,
                    )
                shard.writer.write(batch)
                ok = batch.num_rows
        records = []
        ids = prepared.ids if prepared is not None else None
        for position in sorted(errors):
            record: dict[str, Any] = {"input": file.shown, "row": piece.first_row + position}
            if ids is not None:
                record["id"] = ids[position].as_py()
            record["reason"] = errors[position]
            records.append(record)
        for line, reason in piece.lines:
            records.append({"input": file.shown, "row": None, "line": line, "reason": reason})
        shard.ok += ok
        shard.lines += len(piece.lines)
        shard.errors.extend(records)
        self.report(RowsDone(ok, len(records), bytes_read, records, file.format in ("csv", "jsonl"),
                             self.layout.shard_name(file, shard.chunk)))

    def _result(self, piece: Piece, prepared: Prepared, scored: Scored, positions: np.ndarray) -> Any:
        pa = deps.pyarrow()
        if prepared.ids is not None:
            ids = prepared.ids.take(pa.array(positions))
            id_name = self.layout.id_column
        else:
            ids = pa.array(piece.first_row + positions, type=pa.int64())
            id_name = ROW_NUMBER
        columns = [(id_name, ids), *output_columns(scored.outputs, self._split())]
        names = [name for name, _ in columns]
        if len(set(names)) != len(names):
            raise JobError(f"the output columns {names} repeat a name: choose another id column "
                           "or ask for other outputs")
        batch = pa.RecordBatch.from_arrays([a for _, a in columns], names=names)
        if self.schema is None:
            self.schema = batch.schema
        elif batch.schema != self.schema:
            batch = self._conformed(batch)
        return batch

    def _target(self, batch: Any) -> Any:
        """The outputs' schema of earlier batches, with this batch's own id column: an
        input file's ids keep their type (a CSV file's ids are strings, a Parquet file's may
        be integers), so that each shard is the same whichever files went before it."""
        if self.schema.names and batch.schema.names and self.schema.field(0).name == batch.schema.field(0).name:
            return self.schema.set(0, batch.schema.field(0))
        return self.schema

    def _conformed(self, batch: Any) -> Any:
        pa = deps.pyarrow()
        if batch.schema.names != self.schema.names:
            raise JobError(f"the model's outputs changed from {self.schema.names[1:]} to "
                           f"{batch.schema.names[1:]} between batches")
        target = self._target(batch)
        if batch.schema == target:
            return batch
        try:
            return pa.RecordBatch.from_arrays(
                [batch.column(i).cast(target.field(i).type) for i in range(batch.num_columns)],
                schema=target,
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise JobError(f"the model's outputs changed type between batches ({exc})") from None

    def _split(self) -> bool:
        return self.layout.split_outputs or self.layout.output_format == "csv"

    def _finish_shard(self, shard: _Shard, rows: int) -> None:
        layout = self.layout
        name = layout.shard_name(shard.file, shard.chunk)
        errors_name = layout.errors_name(shard.file, shard.chunk) if shard.errors else None
        if errors_name is not None:
            write_json_lines(self.output.child(errors_name), shard.errors)
        if shard.writer is not None:
            shard.writer.commit()
            shard.writer = None
        else:
            storage.delete(self.output.child(name))  # a stale file from an earlier job
        # A CSV line that is no row (wrong number of fields) counts as a failed row too.
        record = ShardRecord(shard.file.url, shard.chunk, rows + shard.lines, shard.ok,
                             len(shard.errors), name if shard.ok else None, errors_name)
        self.report(ShardDone(name, record))


@dataclass
class _Shard:
    file: InputFile
    chunk: int
    writer: ShardWriter | None = None
    ok: int = 0
    lines: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

