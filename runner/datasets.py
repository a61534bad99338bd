"""Datasets: a validated `dataset:` entry in (a CSV, JSONL, JSON, YAML or Parquet file and its
options), a `Dataset` out: the selected rows by position, each a dict of its fields, read lazily.

A row's fields are template vars under their own names; no name is reserved. Parquet files are
read by row group (a window of rows at a time), CSV files as an Arrow table of strings (their
cells stay text, as written); JSON, JSONL and YAML files are read whole. Nothing ever holds the
cross product: the plan asks for row k when it needs it. Selection is `where` (field equals a
value, or is in a list), then `sample` (n rows drawn with `seed`, kept in file order), then
`limit` (the first n), worked out as an index array at load, never as rows.

Every problem (no such file, a bad line, an unknown field, duplicate ids) is one `JobFileError`
naming the file and the field.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .errors import JobFileError
from .sources import load_yaml, read_text

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from .schema import DatasetIn

SUFFIXES = (".csv", ".jsonl", ".json", ".yaml", ".yml", ".parquet")
WINDOW_ROWS = 512          # rows of an Arrow table turned into dicts at a time
# the kinds of a var column in result files (result.arrow_type); "json": anything else, as JSON
KINDS = ("string", "int64", "float64", "bool", "json")


@dataclass(frozen=True, slots=True)
class Row:
    """One selected row: its fields (renamed) and its key in request ids and the `row_id`
    column (the id field's value, else a hash of the row and its position)."""

    fields: Mapping[str, Any]
    row_id: str


class Dataset:
    """The selected rows of one dataset file, by position 0..len-1."""

    __slots__ = ("path", "where", "fields", "kinds", "id_field", "fingerprint", "_source",
                 "_pick", "_names", "_cache_start", "_cache")

    def __init__(self, path: Path, where: str, source: _Source, pick: np.ndarray | None,
                 renames: Mapping[str, str], id_field: str | None) -> None:
        self.path = path
        self.where = where                       # the job-file field that names it
        self._source = source
        self._pick = pick                        # file positions of the selection; None: all
        self._names = tuple(renames.get(n, n) for n in source.names)
        self.fields: tuple[str, ...] = self._names
        self.kinds: dict[str, str] = {renames.get(n, n): k for n, k in source.kinds.items()}
        self.id_field = id_field
        self.fingerprint = ""                    # file and options: a resume checks it
        self._cache_start = -1
        self._cache: list[tuple[Any, ...]] = []

    def __len__(self) -> int:
        return self._source.rows if self._pick is None else len(self._pick)

    def position(self, k: int) -> int:
        """The file position (0-based) of selected row k."""
        return k if self._pick is None else int(self._pick[k])

    def values(self, k: int) -> tuple[Any, ...]:
        """The field values of selected row k, in `fields` order."""
        pos = self.position(k)
        start = pos - pos % WINDOW_ROWS
        if start != self._cache_start:
            self._cache = self._source.window(start, WINDOW_ROWS)
            self._cache_start = start
        return self._cache[pos - start]

    def row(self, k: int) -> Row:
        """Selected row k with its id."""
        values = self.values(k)
        fields = dict(zip(self._names, values, strict=True))
        if self.id_field is not None:
            row_id = str(fields[self.id_field])
        else:
            row_id = f"{self.position(k) + 1}-{row_hash(values)}"
        return Row(fields, row_id)

    def column(self, name: str) -> list[Any]:
        """Every selected value of one field (for load-time checks and size estimates)."""
        values = self._source.column_values(self._names.index(name))
        return values if self._pick is None else [values[int(p)] for p in self._pick]

    def arrow_column(self, name: str) -> pa.ChunkedArray | None:
        """The selected values of one field as Arrow (None for rows read whole)."""
        if not isinstance(self._source, _Arrow):
            return None
        import pyarrow as pa

        column = self._source.arrow_column(self._names.index(name))
        return column if self._pick is None else column.take(pa.array(self._pick))

    def text_bytes(self, name: str) -> int:
        """UTF-8 bytes of `str(value)` summed over the selected rows (for `runner plan`)."""
        return self._source.text_bytes(self._names.index(name), self._pick)


def row_hash(values: Sequence[Any]) -> str:
    """12 hex digits of a row's values (stable across runs of the same file)."""
    try:
        data = orjson.dumps(list(values), default=str,
                            option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS)
    except (TypeError, ValueError):  # an integer beyond 64 bits
        data = json.dumps(list(values), default=str, sort_keys=True).encode()
    return hashlib.blake2b(data, digest_size=6).hexdigest()


# --- sources ----------------------------------------------------------------------------------

class _Source:
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


class _Memory(_Source):
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
        return sum(len(_text(self._rows[int(p)][at]).encode()) for p in positions)


class _Arrow(_Source):
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
                wanted = pa.array(sorted(_texts(values)), pa.string())
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
                total += sum(len(_text(v).encode()) for v in column.to_pylist())
        return total


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _texts(values: list[Any]) -> set[str]:
    """How `where` values may be written in a text cell (YAML's true is `true` or `True`)."""
    out = {_text(v) for v in values}
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


# --- reading files ----------------------------------------------------------------------------

def read_dataset(job_path: Path, where: str, spec: DatasetIn) -> Dataset:
    """The dataset a prompt names (paths relative to the job file), options applied."""
    path = (job_path.parent / spec.path).resolve()
    if not path.is_file():
        raise JobFileError(job_path, f"{where}.path", f"no such dataset file {spec.path!r} "
                           "(paths are relative to the job file)")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise JobFileError(job_path, f"{where}.path", "a dataset must end in .csv, .jsonl, "
                           f".json, .yaml or .parquet (got {path.name!r})")
    source: _Source
    if suffix == ".parquet":
        source = _parquet(path)
    elif suffix == ".csv":
        source = _csv(path)
    else:
        source = _records(path, _load_records(path, suffix))
    if source.rows == 0:
        raise JobFileError(path, "", "the dataset has no rows")
    renames = dict(spec.rename)
    for old in renames:
        if old not in source.names:
            raise JobFileError(job_path, f"{where}.rename.{old}", _unknown(old, source.names))
    names = [renames.get(n, n) for n in source.names]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise JobFileError(job_path, f"{where}.rename", f"two fields would be named {dup!r}")
    for field_name in (spec.id_field, *spec.metadata, *spec.where):
        if field_name is not None and field_name not in names:
            raise JobFileError(job_path, f"{where}", f"field {field_name!r}: "
                               + _unknown(field_name, names))
    pick = _select(job_path, where, spec, source, names)
    dataset = Dataset(path, where, source, pick, renames, spec.id_field)
    dataset.fingerprint = f"{_file_digest(path)}:{spec.model_dump_json()}"
    if len(dataset) == 0:
        raise JobFileError(job_path, f"{where}.where", "no row of the dataset matches")
    if spec.id_field is not None:
        _check_ids(job_path, where, dataset, spec.id_field)
    return dataset


def _file_digest(path: Path, edge: int = 1 << 16) -> str:
    """Size and a hash of the first and last 64 KiB of a file: a changed dataset (edited,
    replaced, grown) is seen without reading all of a big one."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        head = f.read(edge)
        f.seek(max(0, size - edge))
        tail = f.read(edge)
    return f"{size}:{hashlib.blake2b(head + tail, digest_size=8).hexdigest()}"


def _unknown(name: str, names: Sequence[str]) -> str:
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"no such field in the dataset (its fields: {shown})"


def _parquet(path: Path) -> _Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return _Arrow(None, pq.ParquetFile(path))
    except (pa.ArrowException, OSError) as exc:
        raise JobFileError(path, "", f"not a readable Parquet file "
                           f"({str(exc).splitlines()[0][:200]})") from None


def _csv(path: Path) -> _Source:
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
    return _Arrow(table)


def _load_records(path: Path, suffix: str) -> list[Any]:
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
    if not isinstance(data, list):
        raise JobFileError(path, "", "a dataset must be a list of rows (objects)")
    return data


def _records(path: Path, records: list[Any]) -> _Source:
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
    return _Memory(order, rows)


def _select(job_path: Path, where: str, spec: DatasetIn, source: _Source,
            names: list[str]) -> np.ndarray | None:
    """File positions of the selected rows (None: every row, in order)."""
    import numpy as np

    pick: np.ndarray | None = None
    for field_name, wanted in spec.where.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        match = source.matches(names.index(field_name), values)
        if match is None:
            column = source.column_values(names.index(field_name))
            texts = _texts(values)
            match = np.fromiter(((v in values and type(v) in {type(w) for w in values})
                                 or _text(v) in texts for v in column),
                                dtype=bool, count=len(column))
        positions = np.flatnonzero(match)
        pick = positions if pick is None else np.intersect1d(pick, positions)
    if spec.sample is not None:
        population = source.rows if pick is None else len(pick)
        if spec.sample < population:
            chosen = sorted(random.Random(spec.seed).sample(range(population), spec.sample))
            chosen_array = np.array(chosen, dtype=np.int64)
            pick = chosen_array if pick is None else pick[chosen_array]
    if spec.limit is not None:
        if pick is None:
            if spec.limit < source.rows:
                pick = np.arange(spec.limit, dtype=np.int64)
        else:
            pick = pick[:spec.limit]
    return pick


def _check_ids(job_path: Path, where: str, dataset: Dataset, id_field: str) -> None:
    """Every selected row has an id, and no two the same (the rows at fault are named)."""
    column = dataset.arrow_column(id_field)
    if column is not None:  # by Arrow: a million ids are checked without a Python loop
        import pyarrow as pa
        import pyarrow.compute as pc

        empty = column.null_count > 0 or (pa.types.is_string(column.type) and bool(
            pc.any(pc.equal(column, "")).as_py()))
        if not empty and pc.count_distinct(column, mode="all").as_py() == len(column):
            return
    seen: dict[str, int] = {}
    for k, value in enumerate(dataset.column(id_field)):
        if value is None or value == "":
            raise JobFileError(job_path, f"{where}.id_field", f"row {dataset.position(k) + 1} "
                               f"has no {id_field!r} (every row needs an id)")
        key = str(value)
        if key in seen:
            raise JobFileError(job_path, f"{where}.id_field", f"id {key[:60]!r} is used by rows "
                               f"{seen[key]} and {dataset.position(k) + 1}: ids must be unique")
        seen[key] = dataset.position(k) + 1
