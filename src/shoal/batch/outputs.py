"""What a job writes: the model's answers as columns, and shard files in Parquet, CSV or
JSON lines that appear only once complete.

An output of one value per row is one column named after it. An output of several values per
row (``predict_proba`` ``[rows, 3]``) is one fixed-size list column by default, or one column
per value (``predict_proba_0``, ``predict_proba_1``, ...) with ``split_outputs``; CSV has no
lists, so it always splits. Text (BYTES) outputs are written as UTF-8 strings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from ..errors import ModelFailure
from ..types import Tensor
from . import deps, storage

FORMATS = ("parquet", "csv", "jsonl")
EXTENSIONS = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
ROW_NUMBER = "row"
#: Rows a Parquet row group gathers before it is written.
ROW_GROUP = 65536


def output_columns(tensors: list[Tensor], split: bool) -> list[tuple[str, Any]]:
    """The outputs of ``rows`` rows as (column name, arrow array) pairs."""
    pa = deps.pyarrow()
    columns: list[tuple[str, Any]] = []
    for tensor in tensors:
        data = tensor.data
        if tensor.datatype == "BYTES":
            data = _texts(tensor.name, data)
        rows = data.shape[0]
        inner = data.shape[1:]
        if not inner:
            columns.append((tensor.name, _array(data)))
        elif split:
            flat = data.reshape(rows, -1)
            for index in np.ndindex(*inner):
                column = flat[:, int(np.ravel_multi_index(index, inner))]
                columns.append((f"{tensor.name}_{'_'.join(map(str, index))}", _array(column)))
        else:
            values = _array(np.ascontiguousarray(data).reshape(-1))
            for size in reversed(inner):
                values = pa.FixedSizeListArray.from_arrays(values, size)
            columns.append((tensor.name, values))
    return columns


def _array(values: np.ndarray) -> Any:
    pa = deps.pyarrow()
    if values.dtype == object:
        return pa.array(values.tolist(), type=pa.string())
    return pa.array(values)


def _texts(name: str, data: np.ndarray) -> np.ndarray:
    def text(value: Any) -> str:
        if isinstance(value, (bytes, bytearray)):
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise ModelFailure(
                    f"output {name!r} holds bytes that are not UTF-8 text; batch outputs are "
                    "numbers or text"
                ) from None
        return str(value)

    return np.vectorize(text, otypes=[object])(data) if data.size else data.astype(object)


class ShardWriter:
    """One output shard, written through a temporary file and published by :meth:`commit`."""

    def __init__(self, location: storage.Location, fmt: str, schema: Any) -> None:
        self.file = storage.AtomicFile(location)
        self.format = fmt
        self.schema = schema
        self.rows = 0
        self._pending: list[Any] = []
        self._pending_rows = 0
        pa = deps.pyarrow()
        if fmt == "parquet":
            self._writer: Any = pa.parquet.ParquetWriter(self.file.tmp, schema)
        elif fmt == "csv":
            self._writer = pa.csv.CSVWriter(self.file.tmp, schema)
        else:
            self._writer = self.file.open()

    def write(self, batch: Any) -> None:
        self.rows += batch.num_rows
        if self.format == "parquet":
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
            if self._pending_rows >= ROW_GROUP:
                self._flush()
        elif self.format == "csv":
            self._writer.write_batch(batch)
        else:
            dumps = orjson.dumps
            self._writer.write(b"".join(dumps(row) + b"\n" for row in batch.to_pylist()))

    def _flush(self) -> None:
        if self._pending:
            pa = deps.pyarrow()
            self._writer.write_table(pa.Table.from_batches(self._pending, schema=self.schema))
            self._pending, self._pending_rows = [], 0

    def commit(self) -> None:
        if self.format == "parquet":
            self._flush()
            self._writer.close()
        elif self.format == "csv":
            self._writer.close()
        self.file.commit()

    def abort(self) -> None:
        try:
            if self.format in ("parquet", "csv"):
                self._writer.close()
        except Exception:  # a writer that failed mid-write may not close cleanly
            pass
        self.file.abort()


def write_json_lines(location: storage.Location, records: list[dict[str, Any]]) -> None:
    storage.write_bytes(location, b"".join(orjson.dumps(r, default=str) + b"\n" for r in records))
