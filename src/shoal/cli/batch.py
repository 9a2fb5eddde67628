"""``shoal batch``: score files with a model, a graph or a running server (docs/batch.md).

A thin layer over :class:`shoal.batch.BatchJob`: every option is one of its keywords.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .main import main

#: Exit status of a job stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def _storage_options(values: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: use KEY=VALUE", param_hint="--storage-option")
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    return options


def _outputs(values: tuple[str, ...]) -> list[str] | None:
    names = [n.strip() for value in values for n in value.split(",") if n.strip()]
    return names or None


@main.command(context_settings={"show_default": True})
@click.argument("model")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True,
              help="Output folder, local or s3:// / gs://: one shard per input chunk, "
                   "_manifest.json, _errors.jsonl.")
@click.option("--model", "model_name", default=None,
              help="The model or graph to score with when MODEL is a repository or a server.")
@click.option("--format", "output_format", type=click.Choice(["parquet", "csv", "jsonl"]),
              default="parquet", help="Output shards' format.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              help="local: this machine; ray: a Ray cluster (pip install 'shoal[ray]').")
@click.option("--workers", type=click.IntRange(0), default=0,
              help="Local engine: worker processes running the model (GIL-bound models); "
                   "0: in this process.")
@click.option("--concurrency", type=click.IntRange(1), default=None,
              help="Batches in flight at once [default: 2 in-process, 2 per worker, 4 to a server].")
@click.option("--address", default=None,
              help="Ray engine: an existing cluster (ray://head:10001); unset: a local one.")
@click.option("--num-actors", type=click.IntRange(1), default=2,
              help="Ray engine: actors, each with the model loaded once.")
@click.option("--batch-size", type=click.IntRange(1), default=4096,
              help="Rows per model call (per request to a server).")
@click.option("--chunk-rows", type=click.IntRange(1), default=1_000_000,
              help="Rows of an input file per output shard (the unit a rerun resumes at).")
@click.option("--columns", multiple=True,
              help="Feature columns, stacked in this order as the model's one input "
                   "(a,b,c), or INPUT=COL[,COL...] per input (repeat). Default: inputs by "
                   "column name, else every column but the id column.")
@click.option("--id-column", default=None,
              help="Column copied to the output to identify rows [default: the row number, "
                   "as 'row'].")
@click.option("--outputs", multiple=True,
              help="Outputs to ask the model for (predict,predict_proba) [default: its own].")
@click.option("--split-outputs", is_flag=True, default=False,
              help="One column per value of a multi-value output (name_0, name_1...) instead "
                   "of one fixed-size list column (CSV always splits).")
@click.option("--max-errors", type=click.IntRange(0), default=0,
              help="Bad rows tolerated (written to _errors.jsonl); beyond them the job "
                   "fails. 0: the first bad row fails the job, naming it.")
@click.option("--overwrite", is_flag=True, default=False,
              help="Replace what the output folder holds (another model's or input's results, "
                   "or files not from shoal batch) instead of refusing.")
@click.option("--input-format", type=click.Choice(["parquet", "csv", "jsonl", "npy"]), default=None,
              help="Format of inputs whose names do not say it [default: from the extension].")
@click.option("--request-timeout", type=click.FloatRange(0, min_open=True), default=60.0,
              help="Seconds one request to a server may take.")
@click.option("--storage-option", "storage_option", multiple=True,
              help="KEY=VALUE for the object store's filesystem (fsspec), e.g. "
                   "endpoint_url=http://minio:9000.")
@click.option("--progress", type=click.Choice(["auto", "bar", "log", "none"]), default="auto",
              help="auto: a bar on a terminal, else a log line every 5 s (stderr).")
def batch(model: str, inputs: tuple[str, ...], output: str, model_name: str | None,
          output_format: str, engine: str, workers: int, concurrency: int | None,
          address: str | None, num_actors: int, batch_size: int, chunk_rows: int,
          columns: tuple[str, ...], id_column: str | None, outputs: tuple[str, ...],
          split_outputs: bool, max_errors: int, overwrite: bool, input_format: str | None,
          request_timeout: float, storage_option: tuple[str, ...], progress: str) -> None:
    """Score INPUTS (files, folders or globs; local, s3://, gs://, https://) with MODEL: a
    model folder, a repository with --model NAME (graphs too), or a running server
    (http://host:8080 or grpc://host:8081) with --model NAME.

    Exit status: 0 done (bad rows within --max-errors), 1 failed, 130 interrupted (rerun the
    same command to resume).
    """
    from ..batch import BatchFailed, BatchInterrupted, BatchJob, parse_columns
    from ..errors import ShoalError

    try:
        job = BatchJob(
            model, list(inputs), output, model_name=model_name, engine=engine, workers=workers,
            concurrency=concurrency, address=address, num_actors=num_actors,
            batch_size=batch_size, chunk_rows=chunk_rows, columns=parse_columns(columns),
            id_column=id_column, outputs=_outputs(outputs), output_format=output_format,
            split_outputs=split_outputs, max_errors=max_errors, overwrite=overwrite,
            input_format=input_format, request_timeout=request_timeout,
            storage_options=_storage_options(storage_option), progress=progress,
        )
        summary = job.run()
    except BatchInterrupted as exc:
        if exc.summary is not None:
            click.echo(exc.summary.line())
        click.echo(f"shoal batch: {exc.message}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BatchFailed as exc:
        if exc.summary is not None:
            click.echo(exc.summary.line())
        click.echo(f"shoal batch: failed: {exc.message}", err=True)
        sys.exit(1)
    except ShoalError as exc:
        click.echo(f"shoal batch: failed: {exc.message}", err=True)
        sys.exit(1)
    click.echo(summary.line())
