"""The local engine: the pipeline in this process, the model in it (or in worker processes,
with ``workers``), or a running server over the network."""

from __future__ import annotations

from .loading import Loaded
from .pipeline import FileTask, Layout, Pipeline, Report
from .scoring import Scorer

#: Batches in flight to a server by default: enough to hide the network's round trips.
REMOTE_IN_FLIGHT = 4


def in_flight(loaded: Loaded | None, concurrency: int | None, workers: int,
              remote: bool = False) -> int:
    """Batches in flight: ``concurrency`` if given, else 4 to a server, 2 per worker process
    (2 in-process)."""
    if concurrency:
        return concurrency
    if remote or (loaded is not None and loaded.remote):
        return REMOTE_IN_FLIGHT
    return 2 * max(1, workers)


async def run_local(
    loaded: Loaded, layout: Layout, tasks: list[FileTask], report: Report,
    concurrency: int | None = None, workers: int = 0,
) -> None:
    scorer = Scorer(loaded.endpoint, loaded.name, layout.outputs, loaded.row_wise, loaded.remote)
    pipeline = Pipeline(layout, scorer, loaded.inputs, report, in_flight(loaded, concurrency, workers))
    await pipeline.run(tasks)
