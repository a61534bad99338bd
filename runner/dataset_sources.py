"""Dataset sources: a data file in (CSV, JSONL, JSON, YAML, Parquet), its rows out as value
tuples by file position, a window at a time, with each field's column kind.

Parquet files are read by row group, CSV files as an Arrow table of strings (cells stay the text
written), JSON, JSONL and YAML files whole. Bad files are one `JobFileError` naming the file.
`datasets` builds the selection and the rows a plan asks for on top of these.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import JobFileError
from .sources import load_yaml, read_text

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


def open_source(path: Path) -> Source:
    """The rows of a dataset file (its suffix says how to read it)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet(path)
    if suffix == ".csv":
        return _csv(path)
    return _records(path, _load_records(path, suffix))


class Source:
    """Where the rows of a file come from: names, kinds, count, and windows of value tuples."""

    names: tuple[str, ...]
    kinds: dict[str, str]
    rows: int

    def window(self, start: int, count: int) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def column_values(self, at: int) -> list[Any]:
        raise NotImplementedError

    def text_bytes(self, at: int, pick: np.ndarray | None) -> int:
        raise NotImplementedError

    def matches(self, at: int, values: list[Any]) -> np.ndarray | None:
        """Which rows' field `at` is one of `values` (None: the caller compares in Python)."""
        return None


class MemorySource(Source):
    """Rows read whole (JSON, JSONL, YAML), as tuples in field order."""

    def __init__(self, names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        self.names = names
        self._rows = rows
        self.rows = len(rows)
        self.kinds = {name: value_kind([r[at] for r in rows]) for at, name in enumerate(names)}

    def window(self, start: int, count: int) -> list[tuple[Any, ...]]:
        return self._rows[start:start + count]

    def column_values(self, at: int) -> list[Any]:
        return [r[at] for r in self._rows]

    def text_bytes(self, at: int, pick: np.ndarray | None) -> int:
        positions = range(self.rows) if pick is None else pick
        return sum(len(text_of(self._rows[int(p)][at]).encode()) for p in positions)


class ArrowSource(Source):
    """Rows of an Arrow table in memory (CSV) or of a Parquet file, read a row group at a
    time; a window of rows becomes Python values when asked for."""

    def __init__(self, table: pa.Table | None, parquet: Any = None) -> None:
        self._table = table
        self._file = parquet
        schema = table.schema if table is not None else parquet.schema_arrow
        self.names = tuple(schema.names)
        self.kinds = {f.name: _arrow_kind(f.type) for f in schema}
        if table is not None:
            self.rows = table.num_rows
            self._starts = [0]
        else:
            meta = parquet.metadata
            self.rows = meta.num_rows
            self._starts = []
            total = 0
            for g in range(meta.num_row_groups):
                self._starts.append(total)
                total += meta.row_group(g).num_rows
        self._group = -1
        self._group_table: pa.Table | None = None

    def _group_of(self, pos: int) -> tuple[pa.Table, int]:
        if self._table is not None:
            return self._table, 0
        g = bisect.bisect_right(self._starts, pos) - 1
        if g != self._group:
            self._group_table = None  # the old group goes before the new one is read
            self._group_table = self._file.read_row_group(g)
            self._group = g
        assert self._group_table is not None
        return self._group_table, self._starts[g]

    def window(self, start: int, count: int) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        pos, end = start, min(start + count, self.rows)
        while pos < end:
            table, offset = self._group_of(pos)
            piece = table.slice(pos - offset, end - pos)
            out.extend(zip(*(c.to_pylist() for c in piece.columns), strict=True))
            pos += piece.num_rows
        return out

    def column_values(self, at: int) -> list[Any]:
        values: list[Any] = self.arrow_column(at).to_pylist()
        return values

    def arrow_column(self, at: int) -> pa.ChunkedArray:
        if self._table is not None:
            return self._table.column(at)
        return self._file.read(columns=[self.names[at]]).column(0)

    def matches(self, at: int, values: list[Any]) -> np.ndarray | None:
        """By Arrow (a million rows without a Python loop): the values cast to the column's
        type (text columns compare the values' text, as the CSV cells are written)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        column = self.arrow_column(at)
        try:
            if pa.types.is_string(column.type):
                wanted = pa.array(sorted(texts_of(values)), pa.string())
            else:
                wanted = pa.array(values).cast(column.type)
            mask = pc.is_in(column, value_set=wanted)
        except (pa.ArrowException, TypeError, ValueError):
            return None
        return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)

    def text_bytes(self, at: int, pick: np.ndarray | None) -> int:
        """By Arrow, a row group at a time (a Parquet column is never read whole here)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        total = 0
        bounds = [*self._starts, self.rows]
        for g in range(len(self._starts)):
            start, end = bounds[g], bounds[g + 1]
            column = self._table.column(at) if self._table is not None else \
                self._file.read_row_group(g, columns=[self.names[at]]).column(0)
            if pick is not None:
                lo, hi = np.searchsorted(pick, [start, end])
                if lo == hi:
                    continue
                column = column.take(pa.array(pick[lo:hi] - start))
            try:
                lengths = pc.binary_length(pc.cast(column, pa.string()))
                total += int(pc.sum(lengths).as_py() or 0)
            except pa.ArrowException:
                total += sum(len(text_of(v).encode()) for v in column.to_pylist())
        return total


def text_of(value: Any) -> str:
    return "" if value is None else str(value)


def texts_of(values: list[Any]) -> set[str]:
    """How `where` values may be written in a text cell (YAML's true is `true` or `True`)."""
    out = {text_of(v) for v in values}
    out.update(str(v).lower() for v in values if isinstance(v, bool))
    return out


def value_kind(values: list[Any]) -> str:
    """The column kind of a field's values (ignoring nulls)."""
    seen = {type(v) for v in values if v is not None}
    if seen & {dict, list}:
        return "json"
    if seen == {bool}:
        return "bool"
    if seen == {int}:
        return "int64" if all(-(2**63) <= v < 2**63 for v in values if v is not None) \
            else "string"
    if seen and seen <= {int, float}:
        return "float64"
    return "string"


def merge_kinds(a: str, b: str) -> str:
    """The kind of a column two sources fill (one var name used by two prompts)."""
    if a == b:
        return a
    if {a, b} == {"int64", "float64"}:
        return "float64"
    return "json" if "json" in (a, b) else "string"


def _arrow_kind(kind: pa.DataType) -> str:
    import pyarrow as pa

    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind) and not (pa.types.is_uint64(kind)):
        return "int64"
    if pa.types.is_floating(kind):
        return "float64"
    if pa.types.is_nested(kind):
        return "json"
    return "string"


def _parquet(path: Path) -> Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return ArrowSource(None, pq.ParquetFile(path))
    except (pa.ArrowException, OSError) as exc:
        raise JobFileError(path, "", f"not a readable Parquet file "
                           f"({str(exc).splitlines()[0][:200]})") from None


def _csv(path: Path) -> Source:
    """A CSV file as an Arrow table of strings: cells stay the text written (`3.50` is not
    3.5), an empty cell is an empty string; values may span lines inside quotes."""
    import csv
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv

    text = read_text(path)
    try:
        header = next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error as exc:
        raise JobFileError(path, "line 1", f"invalid CSV: {exc}") from None
    if not header or any(not h for h in header):
        raise JobFileError(path, "line 1", "the first line must name every column")
    if len(set(header)) < len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise JobFileError(path, "line 1", f"column {dup!r} is named twice")
    try:
        table = pacsv.read_csv(
            pa.BufferReader(text.encode()),
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header}, strings_can_be_null=False,
                quoted_strings_can_be_null=False))
    except pa.ArrowException as exc:
        raise JobFileError(path, "", f"invalid CSV: {str(exc).splitlines()[0][:200]}") from None
    return ArrowSource(table)


def _load_records(path: Path, suffix: str) -> list[Any]:
    data = load_records(path, suffix)
    if not isinstance(data, list):
        raise JobFileError(path, "", "a dataset must be a list of rows (objects)")
    return data


def load_records(path: Path, suffix: str) -> Any:
    """What a .jsonl (the list of its lines), .json or .yaml file holds, parsed; anything
    unreadable is a one-line JobFileError naming the file and line (prompt files read here too)."""
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:  # the standard parser: orjson would read a 70-bit integer as a float
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise JobFileError(path, f"line {n}", f"invalid JSON: {exc.msg}") from None
            except RecursionError:
                raise JobFileError(path, f"line {n}", "invalid JSON: nested too deeply") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise JobFileError(path, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise JobFileError(path, "", "invalid JSON: nested too deeply") from None
    else:
        data = load_yaml(path)
    return data


def _records(path: Path, records: list[Any]) -> Source:
    names: dict[str, None] = {}
    for n, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise JobFileError(path, f"row {n}", "each row must be an object/mapping "
                               f"(got {type(record).__name__})")
        for key in record:
            names.setdefault(str(key), None)
    order = tuple(names)
    # a field a row leaves out is null there
    rows = [tuple(record.get(name) for name in order) for record in records]
    return MemorySource(order, rows)
