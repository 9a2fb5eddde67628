"""A bandit's per-arm counts, persisted so they survive restarts and are shared by processes.

One JSON file per bandit node: ``<state-dir>/<graph>/<node>.json``. The consistency model:

- **Updates are never lost.** Feedback is a read-modify-write under an exclusive ``flock``
  on ``<node>.json.lock``: read the file, add the reward, write a temporary file and rename
  it over the old one (atomic: a reader sees the old or the new file, never half of one).
  Every process sharing the state directory goes through the same lock.
- **Routing reads a recent view.** Choosing an arm uses the counts in memory and does no I/O.
  At most every ``refresh`` seconds (1 s by default) routing asks for a :meth:`reload` on a
  worker thread (never on the event loop, which a slow or hung network file system would
  stall), which re-reads the file if it changed. A process sees another's feedback about a
  second later; its own at once.

Locks are advisory and need a local file system (or one with working ``flock``, as NFSv4).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path

import numpy as np
import orjson

from ..errors import LoadError, Unavailable

Signature = tuple[int, int, int]


class BanditStore:
    def __init__(self, arms: list[str], path: Path | None = None, refresh: float = 1.0) -> None:
        self.arms = arms
        self.path = path
        self.refresh = refresh
        self._pulls = np.zeros(len(arms))
        self._rewards = np.zeros(len(arms))
        self._lock = threading.Lock()
        self._signature: Signature | None = None
        #: ``time.monotonic()`` of the last reload asked for (read at load, just below).
        self._checked = time.monotonic()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(self._lock_path, "a"):
                    pass
            except OSError as exc:
                raise LoadError(
                    f"cannot keep bandit state in {path.parent}: {exc.strerror}; "
                    "choose a writable --state-dir"
                ) from None
            self._read()

    @property
    def _lock_path(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name + ".lock")

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(pulls, rewards) per arm, from memory: cheap, for the event loop."""
        return self._pulls, self._rewards

    def due(self) -> bool:
        """Whether a :meth:`reload` is due; claims it, so one caller runs it. For the loop."""
        if self.path is None:
            return False
        now = time.monotonic()
        if now - self._checked < self.refresh:
            return False
        self._checked = now
        return True

    def reload(self) -> None:
        """Re-read the file if another process changed it. Blocking: off the event loop."""
        if self.path is None or not self._lock.acquire(blocking=False):
            return  # an update is running: it reads the file anyway
        try:
            if _signature(self.path) != self._signature:
                self._read()
        finally:
            self._lock.release()

    def update(self, arm: int, reward: float) -> None:
        """Add one reward to an arm. Blocking (file I/O): run it off the event loop.

        A state file that cannot be written is a 503 and records nothing, in memory or on
        disk: the client may send the feedback again.
        """
        with self._lock:
            if self.path is None:
                self._pulls, self._rewards = self._added(arm, reward)
                return
            try:
                with open(self._lock_path, "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                    self._read()
                    pulls, rewards = self._added(arm, reward)
                    self._write(pulls, rewards)
            except OSError as exc:
                raise Unavailable(
                    f"cannot save bandit state to {self.path}: {exc.strerror or exc}; "
                    "the reward was not recorded"
                ) from None
            # Whole arrays swapped: a reader on another thread sees the old pair or the new one.
            self._pulls, self._rewards = pulls, rewards

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Each arm's counts, reloaded first. Blocking: off the event loop."""
        self.reload()
        pulls, rewards = self.counts()
        return {
            arm: {"pulls": float(n), "reward": float(s), "mean": float(s / n) if n else 0.0}
            for arm, n, s in zip(self.arms, pulls, rewards)
        }

    def _added(self, arm: int, reward: float) -> tuple[np.ndarray, np.ndarray]:
        pulls, rewards = self._pulls.copy(), self._rewards.copy()
        pulls[arm] += 1.0
        rewards[arm] += reward
        return pulls, rewards

    def _read(self) -> None:
        assert self.path is not None
        try:
            signature = _signature(self.path)
            data = orjson.loads(self.path.read_bytes())
            pulls, rewards = self._parse(data)
        except FileNotFoundError:
            self._signature = None
            return
        except (OSError, TypeError, ValueError):
            return  # unreadable or damaged: the next update replaces it; keep what we have
        self._pulls, self._rewards = pulls, rewards
        self._signature = signature

    def _parse(self, data: object) -> tuple[np.ndarray, np.ndarray]:
        """Counts by arm name (arms added since have none); TypeError or ValueError for a
        damaged file."""
        arms = data.get("arms") if isinstance(data, dict) else None
        if not isinstance(arms, dict):
            raise TypeError("no 'arms' object")
        pulls = np.zeros(len(self.arms))
        rewards = np.zeros(len(self.arms))
        for index, arm in enumerate(self.arms):
            entry = arms.get(arm)
            if isinstance(entry, dict):
                pulls[index] = float(entry.get("pulls", 0.0))
                rewards[index] = float(entry.get("reward", 0.0))
        return pulls, rewards

    def _write(self, pulls: np.ndarray, rewards: np.ndarray) -> None:
        assert self.path is not None
        body = orjson.dumps({
            "arms": {
                arm: {"pulls": float(n), "reward": float(s)}
                for arm, n, s in zip(self.arms, pulls, rewards)
            }
        })
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            temporary.write_bytes(body)
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        self._signature = _signature(self.path)


def _signature(path: Path) -> Signature | None:
    try:
        stat = path.stat()
    except OSError:  # missing, or unreadable for now: routing goes on with the counts it has
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)
