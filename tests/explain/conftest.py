"""Explanations in-process: real repository folders loaded by ModelRepository, real models,
no HTTP server. The helpers are in explain_helpers.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from explain_helpers import Run, Served, serving


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """``run(test)``: load ``tmp_path`` as a repository and await ``test(served)``."""

    def go(test: Callable[[Served], Awaitable[Any]], workers: bool = False) -> Any:
        async def main() -> Any:
            async with serving(tmp_path, workers) as served:
                return await test(served)

        return asyncio.run(main())

    return go


@pytest.fixture(autouse=True)
def no_sampled_rows() -> Any:
    """Rows observe() kept are per model name, process-wide: each test starts without any."""
    from shoal.explain import background

    background._reservoirs.clear()
    yield
    background._reservoirs.clear()
