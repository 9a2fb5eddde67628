from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .models import build_repository
from .process import ShoalProcess


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[ShoalProcess]:
    """One shared server; tests that change server state start their own."""
    process = ShoalProcess(repository, "--max-request-size", "1M")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
