"""A real S3 server for the tests: moto's ``moto_server`` on a free port, stopped by PID.

Its request log goes to a file (never an unread pipe, which would block the server once
full), so tests can count the objects a fetch read."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """``moto_server`` in a process of its own; its request log (stderr) counts the GETs."""

    def __init__(self, log_path: Path | None = None) -> None:
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix="moto-")) / "requests.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115
        executable = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(executable), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(self.url + "/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start: {log_path.read_text()}")
                time.sleep(0.1)
        self.env = {
            "AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        self.client = boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
        )

    def object_gets(self, bucket: str) -> list[str]:
        """The keys of ``bucket`` read so far (GET requests for objects, not listings)."""
        self._log.flush()
        pattern = re.compile(rf'"GET /{bucket}/(\S+) HTTP')
        return [m.group(1) for m in pattern.finditer(self.log_path.read_text())]

    def upload(self, bucket: str, files: dict[str, str | bytes]) -> None:
        for key, body in files.items():
            self.client.put_object(Bucket=bucket, Key=key,
                                   Body=body.encode() if isinstance(body, str) else body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()



    # -- fsspec's view of it (batch prediction reads and writes through s3fs) ---------------

    @property
    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.url, "key": "testing", "secret": "testing",
                "client_kwargs": {"region_name": "us-east-1"}}

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.options)

    def create_bucket(self, name: str) -> None:
        self.client.create_bucket(Bucket=name)

    def cli_options(self) -> list[str]:
        return [arg for key in ("endpoint_url", "key", "secret")
                for arg in ("--storage-option", f"{key}={self.options[key]}")]
