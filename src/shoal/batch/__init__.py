"""Batch prediction: score files (Parquet, CSV, JSON lines, ``.npy``; local or in object
storage) with the models, graphs and runtimes Shoal serves, in-process or against a running
server, locally or on a Ray cluster, with resume and per-row errors.

    from shoal.batch import run_batch

    summary = run_batch("./models/fraud", "data/transactions.parquet", "scored/")
    print(summary.line())

``shoal batch`` is a thin layer over :class:`BatchJob`; docs/batch.md describes both. pyarrow
(and Ray for the Ray engine) are imported when a job runs: ``pip install 'shoal[batch]'``
(``'shoal[ray]'``).
"""

from .columns import parse_columns
from .job import BatchFailed, BatchInterrupted, BatchJob, BatchSummary, run_batch

__all__ = [
    "BatchFailed", "BatchInterrupted", "BatchJob", "BatchSummary", "parse_columns", "run_batch",
]
