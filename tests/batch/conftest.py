"""Fixtures for batch prediction: a repository of small models, and a local S3 server (moto)
started on a free port and stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import MotoServer, build_repository


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("batch-repository"))


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        server.create_bucket("batch")
        yield server
    finally:
        server.stop()
