"""Datasets: a validated `dataset:` entry in (a CSV, JSONL, JSON, YAML or Parquet file and its
options), a `Dataset` out: the selected rows by position, each a dict of its fields, read lazily.

A row's fields are template vars under their own names; no name is reserved. The files are read
by `dataset_sources` (Parquet by row group, CSV as an Arrow table of strings, JSON, JSONL and
YAML whole), a window of rows at a time when the plan asks. Nothing ever holds the
cross product: the plan asks for row k when it needs it. Selection is `where` (field equals a
value, or is in a list), then `sample` (n rows drawn with `seed`, kept in file order), then
`limit` (the first n), worked out as an index array at load, never as rows.

Every problem (no such file, a bad line, an unknown field, duplicate ids) is one `JobFileError`
naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .dataset_sources import ArrowSource, Source, open_source, text_of, texts_of
from .dataset_sources import merge_kinds as merge_kinds
from .dataset_sources import value_kind as value_kind
from .errors import JobFileError
from .templates import problem as render_problem

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from .schema import DatasetIn

SUFFIXES = (".csv", ".jsonl", ".json", ".yaml", ".yml", ".parquet")
WINDOW_ROWS = 512          # rows of an Arrow table turned into dicts at a time
# the kinds of a var column in result files (result.arrow_type); "json": anything else, as JSON
KINDS = ("string", "int64", "float64", "bool", "json")
MAX_PROBLEM_CHARS = 300    # of a bad_input row's problem, in its one-line message


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

    def __init__(self, path: Path, where: str, source: Source, pick: np.ndarray | None,
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
        if not isinstance(self._source, ArrowSource):
            return None
        import pyarrow as pa

        column = self._source.arrow_column(self._names.index(name))
        return column if self._pick is None else column.take(pa.array(self._pick))

    def text_bytes(self, name: str) -> int:
        """UTF-8 bytes of `str(value)` summed over the selected rows (for `runner plan`)."""
        return self._source.text_bytes(self._names.index(name), self._pick)

    def bad_row(self, k: int, row_id: str, exc: Exception, field_name: str,
                reads: Sequence[str] = ()) -> str:
        """The one-line message of a `bad_input` row (selected row k cannot make its request):
        this file, the row (position and id), the job-file field, the problem, the row fields
        the template `reads`, and the fix. An image's JobFileError gives its own field."""
        if isinstance(exc, JobFileError):
            field_name, problem = exc.field, exc.problem
        else:
            problem = f"cannot be rendered: {render_problem(exc)}"
            read = [name for name in reads if name in self.fields]
            if read:
                problem += f" (it reads the row's {', '.join(read)})"
        problem = " ".join(problem.split())
        if len(problem) > MAX_PROBLEM_CHARS:
            problem = problem[:MAX_PROBLEM_CHARS] + "..."
        shown_id = row_id if len(row_id) <= 60 else row_id[:60] + "..."
        return (f"{self.path.name} row {self.position(k) + 1} (row_id {shown_id}): "
                f"{field_name}: {problem}; not sent: fix the row in the dataset (or leave it "
                "out with where: or limit:) and resume with --force --retry-errors")


def row_hash(values: Sequence[Any]) -> str:
    """12 hex digits of a row's values (stable across runs of the same file)."""
    try:
        data = orjson.dumps(list(values), default=str,
                            option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS)
    except (TypeError, ValueError):  # an integer beyond 64 bits
        data = json.dumps(list(values), default=str, sort_keys=True).encode()
    return hashlib.blake2b(data, digest_size=6).hexdigest()


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
    source = open_source(path)
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


def _select(job_path: Path, where: str, spec: DatasetIn, source: Source,
            names: list[str]) -> np.ndarray | None:
    """File positions of the selected rows (None: every row, in order)."""
    import numpy as np

    pick: np.ndarray | None = None
    for field_name, wanted in spec.where.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        match = source.matches(names.index(field_name), values)
        if match is None:
            column = source.column_values(names.index(field_name))
            texts = texts_of(values)
            match = np.fromiter(((v in values and type(v) in {type(w) for w in values})
                                 or text_of(v) in texts for v in column),
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
