"""The `shoal` command as users type it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx

import shoal

from .models import sklearn_iris
from .process import ShoalProcess


def shoal_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_version_and_help() -> None:
    assert shoal_cli("--version").stdout.strip() == f"shoal, version {shoal.__version__}"
    help_text = shoal_cli("serve", "--help").stdout
    for flag in ("--http-port", "--grpc-port", "--host", "--max-request-size", "--drain-timeout",
                 "--log-level", "SHOAL_HTTP_PORT"):
        assert flag in help_text


def test_settings_from_environment(tmp_path: Path) -> None:
    sklearn_iris(tmp_path / "iris")
    server = ShoalProcess(tmp_path, env={"SHOAL_MAX_REQUEST_SIZE": "1K", "SHOAL_HOST": "127.0.0.1"})
    try:
        server.wait_ready()
        response = httpx.post(f"{server.url}/v2/models/iris/infer", content=b" " * 2048)
        assert response.status_code == 413
    finally:
        server.stop()


def test_bad_arguments_fail_clearly(tmp_path: Path) -> None:
    missing = shoal_cli("serve", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = shoal_cli("serve", str(tmp_path), "--http-port", port, "--grpc-port", "0")
    assert busy.returncode != 0 and f"cannot listen for HTTP on 127.0.0.1:{port}" in busy.stderr
