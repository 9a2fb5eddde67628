"""A batch job: inputs in, one output shard per input chunk out, with a manifest to resume.

:class:`BatchJob` is what ``shoal batch`` runs; every option of the command is a keyword here.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidInput, ShoalError
from . import inputs as inputs_module
from . import loading, storage
from .columns import Columns
from .inputs import InputFile
from .manifest import ERRORS, Manifest
from .outputs import FORMATS as OUTPUT_FORMATS
from .pipeline import FileDone, FileTask, Layout, RowsDone, ShardDone
from .progress import MODES as PROGRESS_MODES
from .progress import Progress

ENGINES = ("local", "ray")


class BatchFailed(ShoalError):
    """The job stopped: a failure, or more bad rows than ``max_errors``. Finished shards are
    kept (and recorded), so running the job again resumes it."""

    def __init__(self, message: str, summary: BatchSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class BatchInterrupted(BatchFailed):
    """Stopped by Ctrl-C (SIGINT): finished shards are kept, nothing half-written is visible."""


@dataclass
class BatchSummary:
    output: str
    rows_ok: int = 0
    rows_failed: int = 0
    rows_skipped: int = 0
    """Rows of shards finished by earlier runs (a resumed job)."""
    shards_written: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    errors_file: str | None = None
    """The output's errors file, when any row failed (in this run or an earlier one)."""
    errors_recorded: int = 0
    """Bad rows the output's manifest records, earlier runs included."""
    nodes: list[str] = field(default_factory=list)
    """Ray engine: the nodes whose actors scored shards in this run."""

    @property
    def rows_per_second(self) -> float:
        return (self.rows_ok + self.rows_failed) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        text = (f"rows ok {self.rows_ok:,}, failed {self.rows_failed:,}, skipped {self.rows_skipped:,}; "
                f"shards written {self.shards_written:,}, skipped {self.shards_skipped:,}; "
                f"{self.seconds:.1f} s, {self.rows_per_second:,.0f} rows/s")
        if self.nodes:
            text += f"; on {len(self.nodes)} Ray node(s)"
        if self.errors_file:
            text += f"; bad rows in {self.errors_file}"
        return text


@dataclass
class BatchJob:
    """Score ``inputs`` with ``model`` into ``output``.

    ``model``: a model folder, a repository (with ``model_name``), or a running server's URL
    (``http://host:8080`` for V2 binary REST, ``grpc://host:8081`` for V2 gRPC, with
    ``model_name``). ``inputs``: files, folders or globs, local or ``s3://`` / ``gs://`` /
    ``https://``. ``output``: a folder, local or in object storage. See docs/batch.md.
    """

    model: str
    inputs: list[str]
    output: str
    model_name: str | None = None
    engine: str = "local"
    workers: int = 0
    """Local engine: worker processes running the model (for GIL-bound models); 0: in-process."""
    concurrency: int | None = None
    """Batches in flight at once (default: 2 in-process, 2 per worker process, 4 to a server)."""
    address: str | None = None
    """Ray engine: an existing cluster (``ray://head:10001`` or ``head:6379``); None: start one."""
    num_actors: int = 2
    actor_cpus: float = 1.0
    batch_size: int = 4096
    chunk_rows: int = 1_000_000
    """Rows of an input file that go into one output shard."""
    columns: Columns | None = None
    id_column: str | None = None
    outputs: list[str] | None = None
    output_format: str = "parquet"
    split_outputs: bool = False
    max_errors: int = 0
    overwrite: bool = False
    input_format: str | None = None
    request_timeout: float = 60.0
    storage_options: dict[str, Any] = field(default_factory=dict)
    progress: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        self.model = str(self.model)
        self.output = str(self.output)
        self.inputs = [str(i) for i in self.inputs]

    # -- checks --------------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse contradictory or out-of-range options before anything is read."""
        problems = []
        if self.engine not in ENGINES:
            problems.append(f"engine {self.engine!r}: use {' or '.join(ENGINES)}")
        if self.output_format not in OUTPUT_FORMATS:
            problems.append(f"output format {self.output_format!r}: use {', '.join(OUTPUT_FORMATS)}")
        if self.input_format is not None and self.input_format not in inputs_module.FORMATS:
            problems.append(f"input format {self.input_format!r}: use {', '.join(inputs_module.FORMATS)}")
        if self.progress not in PROGRESS_MODES:
            problems.append(f"progress {self.progress!r}: use {', '.join(PROGRESS_MODES)}")
        for name in ("batch_size", "chunk_rows", "num_actors"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        for name in ("workers", "max_errors"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if self.concurrency is not None and self.concurrency < 1:
            problems.append("concurrency must be at least 1")
        if self.engine == "local" and self.address:
            problems.append("address is the Ray cluster's: it needs engine='ray' (--engine ray)")
        if loading.is_remote(self.model) and self.workers:
            problems.append("workers run a model in-process; a server's model scales on the server")
        if problems:
            raise InvalidInput("; ".join(problems))

    # -- running -------------------------------------------------------------------------------

    def run(self) -> BatchSummary:
        """Run to the end: the summary, or BatchFailed / BatchInterrupted (with it)."""
        self.check()
        return asyncio.run(self._main())

    async def _main(self) -> BatchSummary:
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        assert current is not None
        interrupted = threading.Event()
        handled = threading.current_thread() is threading.main_thread()

        def interrupt() -> None:  # the first Ctrl-C stops cleanly, a second one at once
            interrupted.set()
            loop.remove_signal_handler(signal.SIGINT)
            current.cancel()

        if handled:
            loop.add_signal_handler(signal.SIGINT, interrupt)
        run = _Run(self)
        try:
            return await run.go()
        except asyncio.CancelledError:
            if not interrupted.is_set():
                raise
            summary = run.summary()
            raise BatchInterrupted("interrupted: finished shards are kept; run the same command "
                                   "again to resume", summary) from None
        except BatchFailed as exc:
            exc.summary = run.summary()
            raise
        except ShoalError as exc:
            raise BatchFailed(exc.message, run.summary()) from None
        except OSError as exc:  # a file or object that cannot be read or written
            raise BatchFailed(f"{type(exc).__name__}: {exc}", run.summary()) from exc
        except Exception as exc:
            raise BatchFailed(f"unexpected {type(exc).__name__}: {exc}", run.summary()) from exc
        finally:
            if handled:
                loop.remove_signal_handler(signal.SIGINT)


def run_batch(model: str, inputs: str | list[str], output: str, **options: Any) -> BatchSummary:
    """``BatchJob(model, inputs, output, **options).run()``."""
    return BatchJob(model, [inputs] if isinstance(inputs, str) else list(inputs), output, **options).run()


class _Run:
    """One run of a job: its state, and the reports the engine sends while it works."""

    def __init__(self, job: BatchJob) -> None:
        self.job = job
        self.started = time.monotonic()
        self._out: storage.Location | None = None
        self.manifest: Manifest | None = None
        self.progress: Progress | None = None
        self.lock = threading.Lock()
        self.ok = self.failed = 0
        self.skipped = self.shards_skipped = self.shards_written = 0
        self.earlier_failed = 0
        self.unrecorded: dict[str, list[dict[str, Any]]] = {}
        self.errors_file: str | None = None
        self.nodes: set[str] = set()

    @property
    def out(self) -> storage.Location:
        if self._out is None:
            self._out = storage.locate(self.job.output, self.job.storage_options)
        return self._out

    def layout(self) -> Layout:
        job = self.job
        return Layout(
            output=self.out.url(), output_format=job.output_format, columns=job.columns,
            id_column=job.id_column, outputs=job.outputs, split_outputs=job.split_outputs,
            batch_size=job.batch_size, chunk_rows=job.chunk_rows,
            storage_options=dict(job.storage_options),
        )

    def key(self, fingerprint: str) -> dict[str, Any]:
        """The settings that shape the output: a rerun with other ones is refused."""
        job = self.job
        return {
            "model": fingerprint, "format": job.output_format, "columns": job.columns,
            "id_column": job.id_column, "outputs": job.outputs,
            "split_outputs": job.split_outputs or job.output_format == "csv",
            "chunk_rows": job.chunk_rows,
        }

    async def go(self) -> BatchSummary:
        job = self.job
        files = await asyncio.to_thread(
            inputs_module.resolve, job.inputs, job.storage_options, job.input_format,
            self.out.url(),
        )
        loaded = None
        if job.engine == "local":
            from .engine import in_flight

            threads = in_flight(None, job.concurrency, job.workers, loading.is_remote(job.model))
            loaded = await loading.load(job.model, job.model_name, job.workers,
                                        job.request_timeout, threads)
            fingerprint = loaded.fingerprint
        else:
            fingerprint = await loading.fingerprint(job.model, job.model_name)
        lock = storage.FolderLock(self.out)
        try:
            try:
                await asyncio.to_thread(lock.acquire)
            except storage.OutputLocked as exc:
                raise BatchFailed(str(exc)) from None
            tasks = await asyncio.to_thread(self._prepare, files, fingerprint)
            report = self.report
            if job.engine == "local":
                from .engine import run_local

                await run_local(loaded, self.layout(), tasks, report, job.concurrency, job.workers)
            else:
                from .ray_engine import RayEngine

                engine = RayEngine(job, self.layout(), job.max_errors - self.earlier_failed)
                self.nodes = engine.nodes
                await engine.run(tasks, report)
        finally:
            try:
                if self.progress is not None:
                    self.progress.close()
                if self.manifest is not None:
                    await asyncio.to_thread(self._write_errors_file)
            finally:
                lock.release()
                if loaded is not None:
                    await loaded.close()
        return self.summary()

    def _prepare(self, files: list[InputFile], fingerprint: str) -> list[FileTask]:
        job = self.job
        storage.remove_stale_temporaries(self.out)
        manifest = Manifest.open(self.out, self.key(fingerprint), files, job.overwrite)
        manifest.add_inputs(files)
        for file in files:
            if file.rows is not None:
                manifest.finished_file(file, max(1, -(-file.rows // job.chunk_rows)))
        manifest.save()
        self.manifest = manifest
        self.earlier_failed = manifest.failed_rows()
        if self.earlier_failed > job.max_errors:
            raise BatchFailed(
                f"{self.out.shown} already records {self.earlier_failed:,} bad row(s) (see its "
                f"{ERRORS}), more than max errors {job.max_errors}: pass the --max-errors the job "
                "ran with to resume it", self.summary())
        tasks = []
        known_rows = text_bytes = 0
        for file in files:
            ok, failed = manifest.rows_done(file)
            done = manifest.done_chunks(file)
            self.skipped += ok + failed
            self.shards_skipped += len(done)
            if manifest.complete(file):
                continue
            tasks.append(FileTask(file, done))
            if file.rows is not None:
                known_rows += max(file.rows - ok - failed, 0)
            else:
                text_bytes += file.size
        self.progress = Progress(known_rows, text_bytes, job.progress)
        return tasks

    def report(self, event: RowsDone | ShardDone | FileDone) -> None:
        """Called by the engine (the writer thread, or Ray's driver) as work finishes."""
        manifest, progress = self.manifest, self.progress
        assert manifest is not None and progress is not None
        with self.lock:
            if isinstance(event, RowsDone):
                self.ok += event.ok
                self.failed += event.failed
                if event.errors:
                    self.unrecorded.setdefault(event.shard, []).extend(event.errors)
                progress.advance(event.ok, event.failed, event.bytes_read,
                                 event.ok + event.failed if event.text else 0)
                total = self.earlier_failed + self.failed
                if event.failed and total > self.job.max_errors:
                    # The bad row that went past the limit, in row order.
                    crossing = self.job.max_errors - (total - event.failed)
                    raise BatchFailed(self._too_many(event.errors[min(crossing, len(event.errors) - 1)]),
                                      self.summary())
            elif isinstance(event, ShardDone):
                manifest.record(event.name, event.record)
                manifest.save()
                self.unrecorded.pop(event.name, None)
                self.shards_written += 1
            elif isinstance(event, FileDone):
                manifest.finished_file(event.file, event.chunks)
                manifest.save()

    def _too_many(self, record: dict[str, Any]) -> str:
        where = (f"row {record['row']}" if record.get("row") is not None
                 else f"line {record.get('line')}") + f" of {record['input']}"
        if "id" in record:
            where += f" (id {record['id']!r})"
        total = self.earlier_failed + self.failed
        limit = self.job.max_errors
        if limit == 0:
            return (f"{where}: {record['reason']} (no bad rows allowed: --max-errors N lets the "
                    f"job go on past N of them, into {self.out.shown.rstrip('/')}/{ERRORS})")
        return (f"{total:,} bad rows, more than --max-errors {limit}; the last, {where}: "
                f"{record['reason']}")

    def _write_errors_file(self) -> None:
        manifest = self.manifest
        assert manifest is not None
        location = self.out.child(ERRORS)
        parts = manifest.error_parts()
        extra = [r for records in self.unrecorded.values() for r in records]
        if not parts and not extra:
            storage.delete(location)
            self.errors_file = None
            return
        content = bytearray()
        for part in parts:
            content += storage.read_bytes(self.out.child(part)) or b""
        content += b"".join(orjson.dumps(r, default=str) + b"\n" for r in extra)
        storage.write_bytes(location, bytes(content))
        self.errors_file = location.shown

    def summary(self) -> BatchSummary:
        recorded = self.manifest.failed_rows() if self.manifest is not None else 0
        return BatchSummary(
            output=self.job.output, rows_ok=self.ok, rows_failed=self.failed,
            rows_skipped=self.skipped, shards_written=self.shards_written,
            shards_skipped=self.shards_skipped, seconds=time.monotonic() - self.started,
            errors_file=self.errors_file, errors_recorded=recorded, nodes=sorted(self.nodes),
        )
