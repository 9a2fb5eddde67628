"""``file:///directory``: JSON lines, one structured CloudEvent per line.

Files are ``<directory>/<model>/<YYYY-MM-DD>.jsonl`` (UTC dates), a new one each day, and
``<YYYY-MM-DD>.1.jsonl``, ``.2`` ... when one passes the size limit (``?max_bytes=``, default
100 MiB). Under ``--http-workers`` each server process writes files of its own
(``<YYYY-MM-DD>-p<N>.jsonl``), so lines of two processes never interleave. A write that
fails (a full or read-only disk) is a sink outage: records go to the spool meanwhile.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, unquote, urlsplit

from ....repository.layout import check_model_name
from ..record import Event, structured
from . import SinkDown

DEFAULT_MAX_BYTES = 100 * 1024 * 1024


class FileSink:
    def __init__(self, url: str, process_slot: int | None = None) -> None:
        parts = urlsplit(url)
        self.root = Path(unquote(parts.path))
        query = parse_qs(parts.query)
        try:
            self.max_bytes = int(query.get("max_bytes", [DEFAULT_MAX_BYTES])[0])
        except ValueError:
            raise ValueError(f"{url!r}: max_bytes must be a number of bytes") from None
        self.suffix = "" if process_slot is None else f"-p{process_slot}"
        self._files: dict[str, tuple[str, int, IO[bytes]]] = {}  # model -> (day, part, file)

    async def send(self, events: list[Event]) -> list[tuple[int, str]]:
        start = 0
        while start < len(events):  # runs of one model's events, each one write
            model = events[start].model
            end = start + 1
            while end < len(events) and events[end].model == model:
                end += 1
            lines = [structured(event) for event in events[start:end]]
            handle = None
            position = 0
            try:
                handle = self._file(model)
                position = handle.tell()
                handle.write(b"\n".join(lines) + b"\n")
                handle.flush()
            except OSError as exc:
                if handle is not None:  # a cut line would merge with the next one written
                    try:
                        handle.truncate(position)
                    except OSError:
                        pass
                self._drop(model)
                raise SinkDown(start, f"cannot write to {self.root}: "
                               f"{exc.strerror or exc}") from None
            start = end
        return []

    def _file(self, model: str) -> IO[bytes]:
        check_model_name(model)  # a name is a folder here: never a path out of the root
        day = time.strftime("%Y-%m-%d", time.gmtime())
        current = self._files.get(model)
        if current is not None:
            current_day, part, handle = current
            if current_day == day and handle.tell() < self.max_bytes:
                return handle
            handle.close()
            part = part + 1 if current_day == day else 0
        else:
            part = 0
        folder = self.root / model
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            name = f"{day}{self.suffix}" + (f".{part}" if part else "") + ".jsonl"
            path = folder / name
            if not path.exists() or path.stat().st_size < self.max_bytes:
                break
            part += 1
        handle = open(path, "ab")
        self._files[model] = (day, part, handle)
        return handle

    def _drop(self, model: str) -> None:
        current = self._files.pop(model, None)
        if current is not None:
            try:
                current[2].close()
            except OSError:
                pass

    async def close(self) -> None:
        for model in list(self._files):
            self._drop(model)
