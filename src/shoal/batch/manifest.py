"""The manifest in a job's output folder: which shards are finished, and what produced them.

``_manifest.json`` records the job's settings that shape its output (the model's
fingerprint, the output format, the column choices, the chunk size), each input file's size
and fingerprint, and every finished shard with its row counts. It is rewritten (atomically)
after each shard. A rerun skips the shards it lists; one whose model, settings or inputs
changed is refused, naming what changed, unless it is told to start over (``overwrite``),
which deletes the shards and error files the manifest lists first, and with them every file
named like a shard of the current inputs (``{relative}-NNNNN.{ext}``, recorded or not), the
errors folder and the errors file.

Output shards are named after their input file and chunk, so a shard written by a run that
died before recording it is written again under the same name: never twice.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InvalidInput
from . import storage
from .inputs import InputFile

MANIFEST = "_manifest.json"
ERRORS = "_errors.jsonl"
ERROR_PARTS = "_errors"
VERSION = 1


@dataclass
class ShardRecord:
    input: str
    chunk: int
    rows: int
    ok: int
    failed: int
    file: str | None
    """The shard's path in the output folder; None when no row of the chunk scored."""
    errors: str | None
    """Its bad rows' part of the errors file, if it had any."""


class OutputRefused(InvalidInput):
    """The output folder holds results this job must not mix with its own."""


class Manifest:
    def __init__(self, output: storage.Location, job: dict[str, Any]) -> None:
        self.output = output
        self.job = job
        self.inputs: dict[str, dict[str, Any]] = {}
        self.shards: dict[str, ShardRecord] = {}

    @property
    def location(self) -> storage.Location:
        return self.output.child(MANIFEST)

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls, output: storage.Location, job: dict[str, Any], inputs: list[InputFile], overwrite: bool,
    ) -> Manifest:
        """The manifest to continue (or a new one), after checking it fits this job."""
        manifest = cls(output, job)
        raw = storage.read_bytes(manifest.location)
        if raw is None:
            if overwrite:
                _clear(output, inputs)
            elif _holds_files(output):
                raise OutputRefused(
                    f"{output.shown} is not empty and holds no batch manifest ({MANIFEST}): "
                    "write to an empty or new folder, or pass --overwrite to write into it"
                )
            return manifest
        try:
            saved = json.loads(raw)
            previous = cls._parse(output, saved)
        except (ValueError, KeyError, TypeError) as exc:
            raise OutputRefused(f"{manifest.location.shown} is not a batch manifest Shoal can read "
                                f"({exc}): pass --overwrite to start over") from None
        if overwrite:
            previous.delete_outputs()
            _clear(output, inputs)
            return manifest
        changes = previous._changes(job, inputs)
        if changes:
            raise OutputRefused(
                f"{output.shown} holds the results of a different job ({'; '.join(changes)}): "
                "pass --overwrite to replace them, or write to another folder"
            )
        previous.job = job
        return previous

    @classmethod
    def _parse(cls, output: storage.Location, saved: dict[str, Any]) -> Manifest:
        if saved.get("version") != VERSION:
            raise ValueError(f"version {saved.get('version')!r}")
        manifest = cls(output, saved["job"])
        manifest.inputs = dict(saved["inputs"])
        manifest.shards = {name: ShardRecord(**record) for name, record in saved["shards"].items()}
        return manifest

    def _changes(self, job: dict[str, Any], inputs: list[InputFile]) -> list[str]:
        changes = []
        for key in sorted(set(job) | set(self.job)):
            before, now = self.job.get(key), job.get(key)
            if before != now:
                if key == "model":
                    changes.append("the model changed")
                else:
                    changes.append(f"{key} was {json.dumps(before)}, now {json.dumps(now)}")
        for file in inputs:
            known = self.inputs.get(file.url)
            if known is None:
                continue
            if known.get("size") != file.size:
                changes.append(f"{file.shown} changed size ({known.get('size')} -> {file.size} bytes)")
            elif known.get("fingerprint") != file.fingerprint:
                changes.append(f"{file.shown} changed content")
        return changes

    def delete_outputs(self) -> None:
        for record in self.shards.values():
            for relative in (record.file, record.errors):
                if relative:
                    storage.delete(self.output.child(relative))
        storage.delete(self.output.child(ERRORS))
        storage.delete(self.location)

    # -- during the job ----------------------------------------------------------------------

    def add_inputs(self, inputs: list[InputFile]) -> None:
        for file in inputs:
            known = self.inputs.get(file.url, {})
            self.inputs[file.url] = {
                "shown": file.shown, "size": file.size, "fingerprint": file.fingerprint,
                "chunks": known.get("chunks"),
            }

    def done_chunks(self, file: InputFile) -> set[int]:
        return {r.chunk for r in self.shards.values() if r.input == file.url}

    def complete(self, file: InputFile) -> bool:
        """Whether every chunk of the file is recorded (its chunk count is known)."""
        chunks = self.inputs.get(file.url, {}).get("chunks")
        return chunks is not None and len(self.done_chunks(file)) >= chunks

    def finished_file(self, file: InputFile, chunks: int) -> None:
        self.inputs.setdefault(file.url, {})["chunks"] = chunks

    def record(self, name: str, record: ShardRecord) -> None:
        self.shards[name] = record

    def rows_done(self, file: InputFile) -> tuple[int, int]:
        """(ok, failed) rows of the file's recorded shards."""
        records = [r for r in self.shards.values() if r.input == file.url]
        return sum(r.ok for r in records), sum(r.failed for r in records)

    def failed_rows(self) -> int:
        return sum(r.failed for r in self.shards.values())

    def save(self) -> None:
        document = {
            "version": VERSION,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "job": self.job,
            "inputs": self.inputs,
            "shards": {name: asdict(r) for name, r in sorted(self.shards.items())},
        }
        storage.write_bytes(self.location, json.dumps(document, indent=1).encode() + b"\n")

    def error_parts(self) -> list[str]:
        return [r.errors for _, r in sorted(self.shards.items()) if r.errors]


def _clear(output: storage.Location, inputs: list[InputFile]) -> None:
    """Start over: every shard file the inputs could have (a run that died before recording
    it leaves one the manifest does not list), the errors folder and the errors file."""
    for file in inputs:
        delete_unrecorded(output, file.relative, set())
    errors = output.child(ERROR_PARTS)
    try:
        if errors.fs.isdir(errors.path):
            errors.fs.rm(errors.path, recursive=True)
    except FileNotFoundError:
        pass
    storage.delete(output.child(ERRORS))


def shard_files(output: storage.Location, relative: str) -> list[tuple[str, int]]:
    """The files in ``output`` named as an input's shards or error parts, recorded or not:
    ``{relative}-NNNNN.{parquet,csv,jsonl}`` and ``_errors/{relative}-NNNNN.jsonl``, as
    (name relative to the output folder, chunk)."""
    found = []
    for prefix in (relative, f"{ERROR_PARTS}/{relative}"):
        folder, stem = posixpath.split(prefix)
        pattern = re.compile(re.escape(stem) + r"-(\d{5})\.(parquet|csv|jsonl)")
        where = output.child(folder) if folder else output
        try:
            paths = where.fs.ls(where.path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for path in paths:
            name = posixpath.basename(str(path).rstrip("/").replace(os.sep, "/"))
            match = pattern.fullmatch(name)
            if match:
                found.append((f"{folder}/{name}" if folder else name, int(match.group(1))))
    return sorted(found)


def delete_unrecorded(output: storage.Location, relative: str, keep: set[str]) -> list[str]:
    """Delete an input's shard and error part files whose names are not in ``keep``."""
    deleted = []
    for name, _ in shard_files(output, relative):
        if name not in keep:
            storage.delete(output.child(name))
            deleted.append(name)
    return deleted


def _holds_files(output: storage.Location) -> bool:
    if output.local:
        if not os.path.isdir(output.path):
            return False
        for _, _, files in os.walk(output.path):
            if any(not (f.startswith(".") and storage.TMP_MARK in f) and f != storage.LOCK
                   for f in files):
                return True
        return False
    try:
        return bool(output.fs.find(output.path, maxdepth=None, withdirs=False))
    except FileNotFoundError:
        return False
