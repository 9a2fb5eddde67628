"""Start ``shoal serve`` as a real subprocess on free ports, the way users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


class ShoalProcess:
    def __init__(self, repository: Path, *args: str, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "shoal", "serve", str(repository),
                   "--http-port", "0", "--grpc-port", "0", *args]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        # stderr is drained as it is written: a server whose log lines fill an unread pipe
        # (64 KiB) blocks in its next write, and every request then hangs.
        self._stderr: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait()
            self._drain.join()
            raise RuntimeError(f"shoal serve exited early: {''.join(self._stderr)}")
        self.listening = json.loads(line)
        self.http_port = self.listening["http_port"]
        self.grpc_port = self.listening["grpc_port"]
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"shoal serve died: {self.logs()}")
            time.sleep(0.05)
        raise TimeoutError("server did not become ready")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def logs(self) -> str:
        """Everything written to stderr (only after the process has exited)."""
        if self.proc.poll() is None:
            raise RuntimeError("read logs after stop()")
        self._drain.join()
        return "".join(self._stderr)

    def log_events(self) -> list[dict]:
        return [json.loads(line) for line in self.logs().splitlines() if line.startswith("{")]
