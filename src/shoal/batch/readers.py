"""Streaming readers: an input file as a sequence of record batches of at most ``batch_size``
rows, cut at chunk boundaries (every ``chunk_rows`` rows), so memory stays bounded whatever
the file's size and each chunk becomes one output shard.

Every reader yields :class:`Piece` objects (rows of one chunk, with the rows it could not read
and why), a :class:`ChunkEnd` after a chunk's last piece and a :class:`FileEnd` at the end.
Chunks listed as done are not yielded: Parquet skips their row groups unread, the text formats
parse past them, ``.npy`` seeks over them.

- Parquet: row group by row group, only the columns the model needs, with a read buffer
  instead of a row group's whole column chunks in memory.
- CSV: pyarrow's streaming reader. Columns are read as text and converted after, so a value
  that is not a number fails its own row ("'abc' is not a number"), not the whole file; a line
  with the wrong number of fields is reported with its line number. Empty fields are missing
  values; ``nan`` is a number.
- JSON lines: blocks of whole lines parsed by pyarrow with the types of the file's first
  block; a block that fails is parsed line by line to find the lines at fault.
- ``.npy``: the header, then rows read at their offset (a row of an ``[n, 20]`` array is a
  20-value list; of an ``[n, 28, 28]`` array, 784 values that keep their ``[28, 28]`` shape).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInput
from . import deps, storage
from .inputs import InputFile

#: Field metadata key holding an .npy row's own shape (``[28, 28]``).
SHAPE_KEY = b"shoal.shape"
NPY_COLUMN = "array"
TEXT_BLOCK = 4 * 1024 * 1024
REMOTE_BLOCK = 4 * 1024 * 1024
#: Parquet pages are read through a buffer this big instead of whole column chunks at once.
PARQUET_BUFFER = 64 * 1024


@dataclass
class Piece:
    chunk: int
    first_row: int
    """The file's row number of the batch's first row (0-based)."""
    batch: Any
    """A ``pyarrow.RecordBatch`` with the columns asked for, every row of its range in it."""
    errors: dict[int, str] = field(default_factory=dict)
    """Row number -> why the row cannot be read (its values in ``batch`` are not to be used)."""
    lines: list[tuple[int, str]] = field(default_factory=list)
    """CSV lines that are no row at all (wrong number of fields): (line number, why)."""


@dataclass
class ChunkEnd:
    chunk: int
    rows: int


@dataclass
class FileEnd:
    rows: int
    chunks: int


Event = Piece | ChunkEnd | FileEnd
_Raw = tuple[int, Any, dict[int, str], list[tuple[int, str]]]


class _Counting(io.RawIOBase):
    """A file object that counts the bytes read through it (progress for text inputs)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.handle.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.count += len(data)
        return data

    def close(self) -> None:
        self.handle.close()
        super().close()


def open_reader(file: InputFile, storage_options: dict[str, Any] | None = None) -> Reader:
    kind = {"parquet": ParquetReader, "csv": CsvReader, "jsonl": JsonLinesReader, "npy": NpyReader}
    return kind[file.format](file, storage_options)


def count_rows(file: InputFile, storage_options: dict[str, Any] | None = None) -> int:
    reader = open_reader(file, storage_options)
    try:
        return reader.rows()
    finally:
        reader.close()


class Reader:
    #: The file's columns with their types (for text formats: as its first block suggests).
    schema: Any

    def __init__(self, file: InputFile, storage_options: dict[str, Any] | None) -> None:
        self.file = file
        self.location = storage.locate(file.url, storage_options)
        # Object stores read ahead in blocks: a few MiB, not the tens some default to.
        options = {} if self.location.local else {"block_size": REMOTE_BLOCK}
        self.handle = _Counting(self.location.fs.open(self.location.path, "rb", **options))

    @property
    def bytes_read(self) -> int:
        return self.handle.count

    def rows(self) -> int:
        raise NotImplementedError

    def events(
        self, wanted: dict[str, Any], chunk_rows: int, batch_size: int, done: set[int],
    ) -> Iterator[Event]:
        """The pending chunks' rows; ``wanted``: column -> the arrow type to read it as."""
        raw = self._raw(wanted, chunk_rows, done)
        known = self.rows() if self.file.format in ("parquet", "npy") else None
        return align(raw, chunk_rows, batch_size, done,
                     lambda b, first: self._convert(b, first, wanted), known)

    def _raw(self, wanted: dict[str, Any], chunk_rows: int, done: set[int]) -> Iterator[_Raw]:
        raise NotImplementedError

    def _convert(self, batch: Any, first_row: int, wanted: dict[str, Any]) -> tuple[Any, dict[int, str]]:
        return batch, {}

    def close(self) -> None:
        self.handle.close()
        parquet = getattr(self, "parquet", None)
        if parquet is not None:
            parquet.close()


def align(
    raw: Iterator[_Raw], chunk_rows: int, batch_size: int, done: set[int],
    convert: Callable[[Any, int], tuple[Any, dict[int, str]]], known_rows: int | None = None,
) -> Iterator[Event]:
    """Cut and merge raw batches into pieces of at most ``batch_size`` rows that never cross
    a chunk boundary, leaving out done chunks' rows."""
    pa = deps.pyarrow()
    buffer: list[Any] = []
    buffered = 0
    start = 0  # file row of buffer[0]'s first row
    errors: dict[int, str] = {}
    lines: list[tuple[int, str]] = []
    chunk = -1
    seen = 0  # rows of the current chunk seen so far
    total = 0

    def emit(count: int) -> Iterator[Piece]:
        nonlocal buffer, buffered, start, lines
        batch = buffer[0] if len(buffer) == 1 else pa.concat_batches(buffer)
        piece = batch.slice(0, count) if count < batch.num_rows else batch
        rest = batch.slice(count) if count < batch.num_rows else None
        typed, more = convert(piece, start)
        mine = {r: errors.pop(r) for r in [r for r in errors if r < start + count]}
        mine.update(more)
        yield Piece(chunk, start, typed, mine, lines)
        lines = []
        buffer = [rest] if rest is not None else []
        buffered -= count
        start += count

    def close_chunk() -> Iterator[Event]:
        if chunk >= 0 and chunk not in done:
            while buffered:
                yield from emit(min(buffered, batch_size))
            if lines:
                yield Piece(chunk, start, None, {}, lines)
            yield ChunkEnd(chunk, seen)

    for first_row, batch, raw_errors, raw_lines in raw:
        errors.update(raw_errors)
        if batch.num_rows == 0:  # lines that are no rows: they belong to the chunk being read
            if raw_lines and max(chunk, 0) not in done:
                lines.extend(raw_lines)
            continue
        position = 0
        while position < batch.num_rows:
            row = first_row + position
            here = row // chunk_rows
            if here != chunk:
                yield from close_chunk()
                chunk, seen = here, 0
                buffer, buffered, start = [], 0, row
            if raw_lines:
                if here not in done:
                    lines.extend(raw_lines)
                raw_lines = []
            take = min(batch.num_rows - position, (here + 1) * chunk_rows - row)
            seen += take
            total = max(total, row + take)
            if here not in done:
                buffer.append(batch.slice(position, take))
                buffered += take
                while buffered >= batch_size:
                    yield from emit(batch_size)
            position += take
        end = first_row + batch.num_rows
        for r in [r for r in errors if r < end and (r // chunk_rows) in done]:
            del errors[r]
    yield from close_chunk()
    if chunk < 0 and 0 not in done:  # an empty file: one empty chunk, so it is recorded
        chunk = 0
        yield from close_chunk()
    total = total if known_rows is None else known_rows
    yield FileEnd(total, max(1, -(-total // chunk_rows)))


# -- Parquet -----------------------------------------------------------------------------------


class ParquetReader(Reader):
    def __init__(self, file: InputFile, storage_options: dict[str, Any] | None) -> None:
        super().__init__(file, storage_options)
        pq = deps.pyarrow().parquet
        # A local file is read by Arrow itself (twice as fast as through a Python file object).
        source = self.location.path if self.location.local else self.handle.handle
        try:
            self.parquet = pq.ParquetFile(source, pre_buffer=False, buffer_size=PARQUET_BUFFER)
        except Exception as exc:
            self.close()
            raise InvalidInput(f"{file.shown} is not a Parquet file: {exc}") from None
        self.schema = self.parquet.schema_arrow

    def rows(self) -> int:
        return self.parquet.metadata.num_rows

    def events(
        self, wanted: dict[str, Any], chunk_rows: int, batch_size: int, done: set[int],
    ) -> Iterator[Event]:
        self._batch_size = min(batch_size, 65536)
        return super().events(wanted, chunk_rows, batch_size, done)

    def _raw(self, wanted: dict[str, Any], chunk_rows: int, done: set[int]) -> Iterator[_Raw]:
        metadata = self.parquet.metadata
        offset = 0
        for group in range(metadata.num_row_groups):
            count = metadata.row_group(group).num_rows
            chunks = range(offset // chunk_rows, (offset + max(count, 1) - 1) // chunk_rows + 1)
            if count and any(c not in done for c in chunks):
                row = offset
                for batch in self.parquet.iter_batches(
                    batch_size=self._batch_size, row_groups=[group], columns=list(wanted) or None,
                ):
                    yield row, batch, {}, []
                    row += batch.num_rows
            offset += count


# -- CSV -----------------------------------------------------------------------------------------


class CsvReader(Reader):
    def __init__(self, file: InputFile, storage_options: dict[str, Any] | None) -> None:
        super().__init__(file, storage_options)
        pa = deps.pyarrow()
        try:
            with self.location.fs.open(self.location.path, "rb") as head:
                probe = pa.csv.open_csv(
                    head,
                    read_options=pa.csv.ReadOptions(block_size=1024 * 1024, use_threads=False),
                    parse_options=pa.csv.ParseOptions(invalid_row_handler=lambda row: "skip"),
                    convert_options=pa.csv.ConvertOptions(null_values=[""], strings_can_be_null=True),
                )
                schema = probe.schema
                try:
                    first = probe.read_next_batch()
                except StopIteration:
                    first = None
                probe.close()
        except pa.ArrowInvalid as exc:
            self.close()
            if "Empty CSV file" in str(exc):
                raise InvalidInput(f"{file.shown} is empty (a CSV file needs a header line)") from None
            raise InvalidInput(f"{file.shown} is not a CSV file pyarrow can read: {exc}") from None
        self.schema = numbers_among_text(schema, first)

    def rows(self) -> int:
        raise NotImplementedError("CSV files are counted as they are read")

    def _raw(self, wanted: dict[str, Any], chunk_rows: int, done: set[int]) -> Iterator[_Raw]:
        pa = deps.pyarrow()
        bad: list[tuple[int, str]] = []

        def invalid(row: Any) -> str:
            where = row.number if row.number is not None else -1
            bad.append((where, f"line {where}: {row.expected_columns} fields expected, "
                               f"{row.actual_columns} found: {row.text[:200]!r}"))
            return "skip"

        columns = list(wanted) or [self.schema.names[0]]
        reader = pa.csv.open_csv(
            self.handle,
            read_options=pa.csv.ReadOptions(block_size=TEXT_BLOCK, use_threads=False),
            parse_options=pa.csv.ParseOptions(invalid_row_handler=invalid),
            convert_options=pa.csv.ConvertOptions(
                include_columns=columns, column_types={c: pa.string() for c in columns},
                null_values=[""], strings_can_be_null=True,
            ),
        )
        row = 0
        for batch in reader:
            found, bad[:] = list(bad), []
            yield row, batch, {}, found
            row += batch.num_rows
        if bad:
            yield row, pa.RecordBatch.from_pylist([], schema=reader.schema), {}, list(bad)

    def _convert(self, batch: Any, first_row: int, wanted: dict[str, Any]) -> tuple[Any, dict[int, str]]:
        if batch is None:
            return batch, {}
        return cast_text_columns(batch, first_row, wanted)


#: A number as CSV writes it (what pyarrow parses as a float), ``nan`` and ``inf`` included.
NUMBER = r"^\s*[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)\s*$"


def numbers_among_text(schema: Any, first: Any) -> Any:
    """A text column where the first rows hold numbers among other text is a column of
    numbers with bad rows, not a column of text: typed FP64 (its other values fail their
    rows). A column with no number at all stays text."""
    if first is None:
        return schema
    pa = deps.pyarrow()
    fields = []
    for column in schema:
        if pa.types.is_string(column.type):
            values = first.column(column.name)
            matches = pa.compute.match_substring_regex(values, NUMBER, ignore_case=True)
            if pa.compute.any(matches).as_py():
                column = column.with_type(pa.float64())
        fields.append(column)
    return pa.schema(fields)


def cast_text_columns(batch: Any, first_row: int, wanted: dict[str, Any]) -> tuple[Any, dict[int, str]]:
    """Text columns converted to the types asked for; a value that does not convert is its
    row's error, and that value becomes missing."""
    pa = deps.pyarrow()
    pc = pa.compute
    errors: dict[int, str] = {}
    columns = []
    for name in batch.schema.names:
        column = batch.column(name)
        target = wanted.get(name, column.type)
        if column.type != target:
            try:
                column = pc.cast(column, target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                column = _cast_each(column, target, name, first_row, errors)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names), errors


def _cast_each(column: Any, target: Any, name: str, first_row: int, errors: dict[int, str]) -> Any:
    pa = deps.pyarrow()
    values = column.to_pylist()
    kind = "an integer" if pa.types.is_integer(target) else (
        "a number" if pa.types.is_floating(target) else str(target))
    for index, value in enumerate(values):
        if value is None:
            continue
        try:
            values[index] = pa.array([value]).cast(target)[0].as_py()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            errors.setdefault(first_row + index, f"column {name!r}: {value!r} is not {kind}")
            values[index] = None
    return pa.array(values, type=target)


# -- JSON lines --------------------------------------------------------------------------------


class JsonLinesReader(Reader):
    def __init__(self, file: InputFile, storage_options: dict[str, Any] | None) -> None:
        super().__init__(file, storage_options)
        pa = deps.pyarrow()
        with self.location.fs.open(self.location.path, "rb") as probe:
            head = probe.read(1024 * 1024)
        head = head[: head.rfind(b"\n") + 1] or head
        try:
            self.schema = (
                pa.json.read_json(io.BytesIO(head)).schema if head.strip() else pa.schema([])
            )
        except pa.ArrowInvalid:
            self.schema = self._schema_line_by_line(head)

    @staticmethod
    def _schema_line_by_line(head: bytes) -> Any:
        pa = deps.pyarrow()
        fields: dict[str, Any] = {}
        for line in head.splitlines():
            if not line.strip():
                continue
            try:
                schema = pa.json.read_json(io.BytesIO(line)).schema
            except pa.ArrowInvalid:
                continue
            for item in schema:
                known = fields.get(item.name)
                # Numbers among other values: a column of numbers with bad rows.
                if known is None or pa.types.is_null(known) or (
                        _is_number(item.type) and not _is_number(known)):
                    fields[item.name] = item.type
        return pa.schema(list(fields.items()))

    def rows(self) -> int:
        raise NotImplementedError("JSON lines files are counted as they are read")

    def _blocks(self) -> Iterator[bytes]:
        rest = b""
        while True:
            data = self.handle.read(TEXT_BLOCK)
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n") + 1
            block, rest = data[:cut], data[cut:]
            if block:
                yield block
        if rest.strip():
            yield rest + b"\n"

    def _raw(self, wanted: dict[str, Any], chunk_rows: int, done: set[int]) -> Iterator[_Raw]:
        pa = deps.pyarrow()
        schema = pa.schema([(name, kind) for name, kind in wanted.items()])
        options = pa.json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        quote = _number_quoter([name for name, kind in wanted.items() if pa.types.is_string(kind)])
        row = 0
        for block in self._blocks():
            block = quote(block)
            try:
                table = pa.json.read_json(io.BytesIO(block), parse_options=options)
                errors: dict[int, str] = {}
            except pa.ArrowInvalid:
                table, errors = self._line_by_line(block, row, options)
            for batch in table.to_batches():
                yield row, batch, errors, []
                errors = {}
                row += batch.num_rows
            if table.num_rows == 0 and errors:
                yield row, pa.RecordBatch.from_pylist([], schema=schema), errors, []

    @staticmethod
    def _line_by_line(block: bytes, first_row: int, options: Any) -> tuple[Any, dict[int, str]]:
        pa = deps.pyarrow()
        errors: dict[int, str] = {}
        fixed = []
        row = first_row
        for line in block.splitlines():
            if not line.strip():
                continue
            try:
                pa.json.read_json(io.BytesIO(line + b"\n"), parse_options=options)
                fixed.append(line)
            except pa.ArrowInvalid as exc:
                errors[row] = _json_reason(line, exc)
                fixed.append(b"{}")
            row += 1
        table = pa.json.read_json(io.BytesIO(b"\n".join(fixed) + b"\n"), parse_options=options)
        return table, errors


def _number_quoter(names: list[str]) -> Callable[[bytes], bytes]:
    """A function that makes a bare number under one of ``names`` a string, as written
    (``"id": 000123`` is not JSON, but ``"id": 59995`` -> ``"id": "59995"``): a column read
    as text (the id column) takes numbers and strings alike, with their text kept."""
    if not names:
        return lambda block: block
    keys = b"|".join(re.escape(json.dumps(n, ensure_ascii=False)[1:-1].encode()) for n in names)
    pattern = re.compile(
        rb'(?<!\\)("(?:' + keys + rb')"\s*:\s*)(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?=\s*[,}])'
    )
    return lambda block: pattern.sub(rb'\1"\2"', block)


def _is_number(kind: Any) -> bool:
    pa = deps.pyarrow()
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _json_reason(line: bytes, exc: Exception) -> str:
    try:
        value = json.loads(line)
    except ValueError:
        return f"not valid JSON: {line[:200]!r}"
    if not isinstance(value, dict):
        return f"a JSON line must be an object, not {type(value).__name__}"
    message = str(exc).split("\n", 1)[0]
    changed = re.search(r"Column\(/([^)]*)\) changed from (\w+) to (\w+)", message)
    if changed:
        field, wanted, found = changed.groups()
        return f"field {field.replace('/', '.')!r} is a {found}, not a {wanted}"
    return message.replace("JSON parse error: ", "").replace(" in row 0", "")


# -- .npy ----------------------------------------------------------------------------------------


class NpyReader(Reader):
    def __init__(self, file: InputFile, storage_options: dict[str, Any] | None) -> None:
        super().__init__(file, storage_options)
        fmt = np.lib.format
        raw = self.handle.handle
        try:
            version = fmt.read_magic(raw)
            read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
            shape, fortran, dtype = read_header[version](raw)
        except (ValueError, KeyError) as exc:
            self.close()
            raise InvalidInput(f"{file.shown} is not a .npy file: {exc}") from None
        if dtype.hasobject:
            self.close()
            raise InvalidInput(
                f"{file.shown} holds Python objects (pickles): save plain numbers or strings"
            )
        if fortran and len(shape) > 1:
            self.close()
            raise InvalidInput(
                f"{file.shown} is in Fortran order: save it with np.save(np.ascontiguousarray(a))"
            )
        if not shape:
            self.close()
            raise InvalidInput(f"{file.shown} holds a single value, not rows")
        self.offset = raw.tell()
        self.shape, self.dtype = tuple(shape), dtype
        self.inner = self.shape[1:]
        self.width = int(np.prod(self.inner)) if self.inner else 1
        self.row_bytes = self.width * dtype.itemsize
        self.schema = deps.pyarrow().schema(self._fields())

    def _fields(self) -> list[Any]:
        pa = deps.pyarrow()
        if self.dtype.names:
            if self.inner:
                raise InvalidInput(
                    f"{self.file.shown}: a structured array must be 1-D (one record per row)"
                )
            fields = self.dtype.fields
            return [pa.field(name, pa.from_numpy_dtype(fields[name][0])) for name in self.dtype.names]
        kind = pa.from_numpy_dtype(self.dtype)
        if not self.inner:
            return [pa.field(NPY_COLUMN, kind)]
        return [pa.field(NPY_COLUMN, pa.list_(kind, self.width),
                         metadata={SHAPE_KEY: json.dumps(list(self.inner)).encode()})]

    def rows(self) -> int:
        return self.shape[0]

    def _raw(self, wanted: dict[str, Any], chunk_rows: int, done: set[int]) -> Iterator[_Raw]:
        pa = deps.pyarrow()
        total = self.shape[0]
        step = max(1, min(chunk_rows, 65536))
        raw = self.handle.handle
        for first in range(0, total, step):
            count = min(step, total - first)
            chunks = range(first // chunk_rows, (first + count - 1) // chunk_rows + 1)
            if all(c in done for c in chunks):
                continue
            raw.seek(self.offset + first * self.row_bytes)
            data = raw.read(count * self.row_bytes)
            if len(data) < count * self.row_bytes:
                raise InvalidInput(f"{self.file.shown} is shorter than its header says")
            array = np.frombuffer(data, dtype=self.dtype, count=count * self.width)
            if array.dtype.byteorder not in ("=", "|"):
                array = array.astype(array.dtype.newbyteorder("="))
            if self.dtype.names:
                columns = [pa.array(array[name]) for name in self.dtype.names]
            elif not self.inner:
                columns = [pa.array(array)]
            else:
                columns = [pa.FixedSizeListArray.from_arrays(pa.array(array), self.width)]
            batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
            if wanted:
                batch = batch.select([n for n in self.schema.names if n in wanted])
            yield first, batch, {}, []
