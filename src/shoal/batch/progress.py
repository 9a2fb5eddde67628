"""Progress of a job: a bar (tqdm) on a terminal, a log line every few seconds otherwise.

Both show rows done, rows per second and the time left. The total is known up front for
Parquet and ``.npy`` inputs (their metadata); for CSV and JSON lines it is estimated from the
bytes read so far and the files' sizes.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

#: Seconds between two log lines when the output is not a terminal.
LOG_EVERY = 5.0
MODES = ("auto", "bar", "log", "none")


class Progress:
    def __init__(
        self, known_rows: int, text_bytes: int, mode: str = "auto", stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic, every: float = LOG_EVERY,
    ) -> None:
        """``known_rows``: rows to score in files whose row count is known; ``text_bytes``: the
        size of the text files (CSV, JSON lines) still to read."""
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if _is_terminal(self.stream) else "log"
        self.mode = mode
        self.known_rows = known_rows
        self.text_bytes = text_bytes
        self.clock = clock
        self.every = every
        self.started = clock()
        self.ok = self.failed = 0
        self.text_rows = 0
        self.text_read = 0
        self._last = self.started
        self._lock = threading.Lock()
        self._bar: Any = None
        if mode == "bar":
            try:
                from tqdm import tqdm
            except ImportError:  # a line every few seconds instead: pip install 'shoal[batch]'
                self.mode = "log"
                return
            self._bar = tqdm(total=self.total(), unit=" rows", unit_scale=True, file=self.stream,
                             dynamic_ncols=True, smoothing=0.1)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def total(self) -> int | None:
        """Rows to score in all: exact where known, estimated for text files."""
        if not self.text_bytes:
            return self.known_rows
        if not self.text_read or not self.text_rows:
            return None
        return self.known_rows + int(self.text_rows * self.text_bytes / self.text_read)

    def advance(self, ok: int, failed: int, text_bytes_read: int = 0, text_rows: int = 0) -> None:
        with self._lock:
            self.ok += ok
            self.failed += failed
            self.text_read += text_bytes_read
            self.text_rows += text_rows
            if self._bar is not None:
                total = self.total()
                if total is not None and total != self._bar.total:
                    self._bar.total = max(total, self.done)
                note = f"failed {self.failed:,}" if self.failed else ""
                self._bar.set_postfix_str(note, refresh=False)
                self._bar.update(ok + failed)
            elif self.mode == "log":
                now = self.clock()
                if now - self._last >= self.every:
                    self._last = now
                    self.stream.write(self.line(now) + "\n")
                    self.stream.flush()

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        total = self.total()
        parts = [f"shoal batch: {self.done:,}"]
        if total:
            about = "~" if self.text_bytes else ""
            parts[0] += f" / {about}{total:,} rows ({100 * self.done / max(total, 1):.1f}%)"
        else:
            parts[0] += " rows"
        parts.append(f"{rate:,.0f} rows/s")
        if total and rate > 0:
            parts.append(f"{_duration(max(total - self.done, 0) / rate)} left")
        if self.failed:
            parts.append(f"{self.failed:,} failed")
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"
