"""From a file's columns to the model's input tensors, row by row.

Which columns feed which input, decided once per file from its columns and the model's
declared inputs:

1. ``columns={"age": ["age"], "history": ["h1", "h2"]}`` (``--columns age=age --columns
   history=h1,h2``): each input from the columns named for it.
2. ``columns=["a", "b", "c"]`` (``--columns a,b,c``): those columns, in that order, stacked as
   the one input of a one-input model.
3. Otherwise, a model whose declared inputs are all columns of the file takes each input from
   the column of its name (a list column gives ``[rows, values]``).
4. Otherwise every column but the id column, in the file's order, is stacked into the model's
   one input (``[rows, columns]``): the usual table of features.

Values are converted the way the Shoal client converts them (floats into the model's float
type, integers into floats, never floats into integers) and then checked by the endpoint as
the server checks a request, so a value the model cannot take is refused with the server's
own message. Text inputs (CSV, JSON lines) give FP64 numbers unless the model declares
another numeric type.

A row with a missing value (an empty CSV field, a JSON key absent or null), a list of the
wrong length, or a column the file does not have is not sent to the model: it goes to the
errors file with the reason. Every decision is taken from the file and the model, never from
the rows of one batch, so a row's tensor never depends on which rows share its batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..client.inference import as_tensors
from ..datatypes import numpy_dtype
from ..errors import InvalidInput
from ..types import Tensor, TensorSpec
from . import deps
from .readers import NPY_COLUMN, SHAPE_KEY

DEFAULT_INPUT = "input-0"
#: What a list of column names or an ``{input: [columns]}`` mapping may be.
Columns = list[str] | dict[str, list[str]]


@dataclass
class Prepared:
    """One batch, ready for the model."""

    tensors: list[Tensor]
    good: np.ndarray
    """Positions (in the batch) of the rows the tensors hold, in order."""
    errors: dict[int, str]
    """Position in the batch -> why that row is not sent to the model."""
    ids: Any
    """The id column's values for every row of the batch, or None (row numbers are used)."""


def parse_columns(values: list[str] | tuple[str, ...]) -> Columns | None:
    """``--columns`` as given (repeatable; each ``a,b,c`` or ``INPUT=a,b``) as the API's form."""
    if not values:
        return None
    mapped: dict[str, list[str]] = {}
    plain: list[str] = []
    for value in values:
        if "=" in value:
            name, _, listed = value.partition("=")
            if not name.strip():
                raise InvalidInput(f"--columns {value!r}: name the input before '='")
            mapped.setdefault(name.strip(), []).extend(_names(listed, value))
        else:
            plain.extend(_names(value, value))
    if mapped and plain:
        raise InvalidInput(
            "--columns: use either INPUT=COLUMNS for every input or a plain list of columns"
        )
    return mapped or plain


def _names(listed: str, value: str) -> list[str]:
    names = [n.strip() for n in listed.split(",") if n.strip()]
    if not names:
        raise InvalidInput(f"--columns {value!r} names no column")
    return names


class ColumnMapping:
    def __init__(
        self, schema: Any, inputs: list[TensorSpec], columns: Columns | None,
        id_column: str | None, where: str, text: bool = False, open_schema: bool = False,
    ) -> None:
        """``schema``: the file's columns; ``text``: values come as text or JSON (numbers become
        FP64 unless declared otherwise); ``open_schema``: a column the first rows lack may
        still come later (JSON lines)."""
        self.where = where
        self.id_column = id_column
        names = list(schema.names)
        self.declared = inputs
        if id_column is not None and id_column not in names and not open_schema:
            raise InvalidInput(f"{where} has no column {id_column!r} (the id column); "
                               f"its columns: {_listed(names)}")
        self.groups = self._groups(names, inputs, columns)
        self.specs = {name: self._spec(name) for name in self.groups}
        used = [c for group in self.groups.values() for c in group]
        self.missing = [c for c in dict.fromkeys(used) if c not in names and not open_schema]
        self.wanted: dict[str, Any] = {}
        for name, group in self.groups.items():
            for column in group:
                if column in names or open_schema:
                    field = schema.field(column) if column in names else None
                    self.wanted[column] = self._read_type(field, self.specs[name], text)
        if id_column is not None:
            # Ids in text (CSV, JSON lines) are read as written, as strings: a type guessed
            # from the first rows would drop leading zeros (000123 -> 123) and fail the later
            # rows whose ids are not numbers (X59995), and could differ between blocks.
            self.wanted[id_column] = (
                schema.field(id_column).type if id_column in names and not text
                else deps.pyarrow().string()
            )
        self.fields = {c: (schema.field(c) if c in names else None) for c in self.wanted}
        self._check_widths(columns)
        #: A list column's values per row, from the model's declaration or the file's first row.
        self.widths: dict[str, int] = {}
        self._declared = [s.to_dict() for s in inputs]

    # -- decided once per file ---------------------------------------------------------------

    def _groups(
        self, names: list[str], inputs: list[TensorSpec], columns: Columns | None,
    ) -> dict[str, list[str]]:
        features = [n for n in names if n != self.id_column]
        single = inputs[0].name if len(inputs) == 1 else DEFAULT_INPUT
        if isinstance(columns, dict):
            unknown = sorted(set(columns) - {s.name for s in inputs}) if inputs else []
            if unknown:
                raise InvalidInput(f"--columns names input(s) {unknown}; the model's inputs are "
                                   f"{[s.name for s in inputs]}")
            absent = [s.name for s in inputs if s.name not in columns]
            if absent:
                raise InvalidInput(f"--columns maps no columns to input(s) {absent}")
            return {name: list(group) for name, group in columns.items()}
        if columns:
            if len(inputs) > 1:
                raise InvalidInput(
                    f"the model takes inputs {[s.name for s in inputs]}: map columns to each with "
                    "--columns INPUT=COLUMN[,COLUMN...] (repeat it per input)"
                )
            return {single: list(columns)}
        if len(inputs) > 1:
            if all(s.name in names for s in inputs):
                return {s.name: [s.name] for s in inputs}
            raise InvalidInput(
                f"the model takes inputs {[s.name for s in inputs]} but {self.where} has columns "
                f"{_listed(names)}: name the columns after the inputs, or map them with "
                "--columns INPUT=COLUMN[,COLUMN...]"
            )
        if len(inputs) == 1 and single in features and len(features) > 1:
            return {single: [single]}
        if not features:
            raise InvalidInput(
                f"{self.where} has no feature columns (only the id column {self.id_column!r})"
            )
        return {single: features}

    def _check_widths(self, columns: Columns | None) -> None:
        """Columns that cannot make the model's rows fail the job at once, saying which were
        taken (not every row with the same shape error)."""
        pa = deps.pyarrow()
        for name, group in self.groups.items():
            spec = self.specs[name]
            if spec is None or not 1 <= len(spec.shape) <= 2 or min(spec.shape[1:], default=0) < 0:
                continue
            takes = spec.shape[1] if len(spec.shape) == 2 else 1
            widths = []
            for column in group:
                field = self.fields.get(column)
                if field is None:
                    return
                kind = field.type
                if pa.types.is_fixed_size_list(kind):
                    widths.append(kind.list_size)
                elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
                    return
                else:
                    widths.append(1)
            if sum(widths) != takes:
                hint = "" if columns else " (every column but the id column)"
                values = f"{takes} value{'s' if takes != 1 else ''}"
                raise InvalidInput(
                    f"input {name!r} takes {values} per row, but the columns taken "
                    f"for it from {self.where}{hint}, {_listed(group)}, give {sum(widths)}: "
                    "choose them with --columns, and the id column with --id-column"
                )

    def _spec(self, name: str) -> TensorSpec | None:
        return next((s for s in self.declared if s.name == name), None)

    @staticmethod
    def _read_type(field: Any, spec: TensorSpec | None, text: bool) -> Any:
        """The arrow type to read a column as: as stored, except that text formats give
        numbers as FP64 (or the declared numeric type's family) and strings as strings."""
        pa = deps.pyarrow()
        kind = field.type if field is not None else pa.float64()
        if not text:
            return kind
        listed = pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind)
        element = kind.value_type if listed else kind
        declared = spec.datatype if spec is not None else None
        text_column = pa.types.is_string(element) or pa.types.is_large_string(element)
        if declared == "BYTES" or (declared is None and text_column):
            target = pa.string()
        elif declared == "BOOL" or (declared is None and pa.types.is_boolean(element)):
            target = pa.bool_()
        elif declared is not None and numpy_dtype(declared).kind in "iu":
            target = pa.int64()
        else:
            target = pa.float64()
        return pa.list_(target) if listed else target

    # -- per batch ---------------------------------------------------------------------------

    def prepare(self, batch: Any, first_row: int, errors: dict[int, str]) -> Prepared:
        """The batch's tensors for its readable rows; ``errors``: file row -> reason."""
        pa = deps.pyarrow()
        rows = batch.num_rows
        bad = {row - first_row: reason for row, reason in errors.items()}
        names = set(batch.schema.names)
        for column in self.missing:
            reason = f"column {column!r} is missing from {self.where}"
            for position in range(rows):
                bad.setdefault(position, reason)
        for column in self.wanted:
            if column not in names:
                if column == self.id_column or column in self.missing:
                    continue
                for position in range(rows):
                    bad.setdefault(position, f"missing value in column {column!r}")
                continue
            self._check(batch.column(column), column, bad)
        good = np.array(sorted(set(range(rows)) - set(bad)), dtype=np.int64) if bad else np.arange(rows)
        kept = batch if len(good) == rows else batch.take(pa.array(good))
        arrays = (
            {name: self._input(kept, name, group) for name, group in self.groups.items()}
            if len(good) else {}
        )
        tensors = as_tensors(arrays, self._declared) if arrays else []
        ids = batch.column(self.id_column) if self.id_column in names else None
        return Prepared(tensors, good, bad, ids)

    def _check(self, column: Any, name: str, bad: dict[int, str]) -> None:
        pa = deps.pyarrow()
        pc = pa.compute
        if column.null_count:
            for position in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
                bad.setdefault(int(position), f"missing value in column {name!r}")
        kind = column.type
        if not _is_list(kind):
            return
        if pa.types.is_fixed_size_list(kind):
            self.widths.setdefault(name, kind.list_size)
        else:
            lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy()
            width = self.widths.get(name) or self._declared_width(name)
            if width is None:
                present = lengths[lengths >= 0]
                if not len(present):
                    return
                width = self.widths.setdefault(name, int(present[0]))
            for position in np.flatnonzero((lengths != width) & (lengths >= 0)):
                bad.setdefault(int(position), f"column {name!r} has {lengths[position]} values, "
                                              f"{width} expected")
        flat = pc.list_flatten(column)
        if flat.null_count:
            parents = pc.list_parent_indices(column).to_numpy()
            for position in np.unique(parents[flat.is_null().to_numpy(zero_copy_only=False)]):
                bad.setdefault(int(position), f"missing value in the list of column {name!r}")

    def _declared_width(self, column: str) -> int | None:
        for name, group in self.groups.items():
            spec = self.specs[name]
            if group == [column] and spec is not None and len(spec.shape) >= 2:
                dims = spec.shape[1:]
                if all(d > 0 for d in dims):
                    return int(np.prod(dims))
        return None

    def _input(self, batch: Any, name: str, group: list[str]) -> np.ndarray:
        spec = self.specs[name]
        rows = batch.num_rows
        matrix = self._same_type_matrix(batch, group)
        if matrix is not None:
            return self._shaped(matrix, spec, group)
        parts = [self._values(batch.column(c), c) for c in group]
        if len(parts) == 1:
            matrix = parts[0]
        else:
            kind = np.result_type(*[p.dtype for p in parts])
            width = sum(1 if p.ndim == 1 else int(np.prod(p.shape[1:])) for p in parts)
            matrix = np.empty((rows, width), dtype=kind)
            at = 0
            for part in parts:
                span = 1 if part.ndim == 1 else int(np.prod(part.shape[1:]))
                matrix[:, at:at + span] = part.reshape(rows, span)
                at += span
        return self._shaped(matrix, spec, group)

    def _same_type_matrix(self, batch: Any, group: list[str]) -> np.ndarray | None:
        """Several numeric columns of one type, as one row-major matrix built by Arrow (a
        tenth of the time of stacking them in numpy)."""
        if len(group) < 2:
            return None
        pa = deps.pyarrow()
        kinds = {batch.schema.field(c).type for c in group}
        if len(kinds) != 1:
            return None
        kind = kinds.pop()
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            return None
        try:
            return np.asarray(batch.select(group).to_tensor(row_major=True))
        except (TypeError, AttributeError, pa.ArrowException):  # older pyarrow: numpy stacks
            return None

    def _values(self, column: Any, name: str) -> np.ndarray:
        pa = deps.pyarrow()
        kind = column.type
        if _is_list(kind):
            flat = self._values(column.flatten(), name)
            width = len(flat) // len(column) if len(column) else self.widths.get(name, 0)
            values = flat.reshape(len(column), width)
            field = self.fields.get(name)
            shape = (field.metadata or {}).get(SHAPE_KEY) if field is not None else None
            return values.reshape(len(column), *json.loads(shape)) if shape else values
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
            return column.cast(pa.binary()).to_numpy(zero_copy_only=False)
        return column.to_numpy(zero_copy_only=False)

    def _shaped(self, matrix: np.ndarray, spec: TensorSpec | None, group: list[str]) -> np.ndarray:
        rows = matrix.shape[0]
        if spec is None:
            if matrix.ndim == 1 and group != [NPY_COLUMN]:  # a table column: [rows, 1]
                return matrix.reshape(rows, 1)
            return matrix
        rank = len(spec.shape)
        inner = int(np.prod(matrix.shape[1:])) if matrix.ndim > 1 else 1
        if rank == 1 and inner == 1:
            return matrix.reshape(rows)
        if rank == 2:
            return matrix.reshape(rows, inner)
        dims = list(spec.shape[1:])
        if rank > 2 and dims.count(-1) <= 1:
            known = int(np.prod([d for d in dims if d > 0])) or 1
            if inner % known == 0:
                return matrix.reshape(rows, *[d if d > 0 else inner // known for d in dims])
        return matrix if matrix.ndim > 1 else matrix.reshape(rows, 1)


def _is_list(kind: Any) -> bool:
    pa = deps.pyarrow()
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _listed(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"
