"""The only module that writes result files: `Result` rows in, the row files of a run directory
(see `rundir` for the layout) out.

Rows are buffered and written in batches as part files; when the run ends, `finish` merges the
last merge and the parts into requests.parquet (and .csv), then removes the parts, so a glob over
the results never counts a row twice. The merge also folds the per-model summary
(`summary.Fold`) from the rows it streams, and takes the parts this process wrote from memory
while they fit in `KEEP_BYTES`, so the end of a run reads back only what it must. Every file
goes through `rundir.replacing` (temporary name, fsync, rename, fsync of the folder). One bad
value never costs the other rows of its batch: that row alone becomes an error row
(`malformed`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .background import Background
from .result import ERROR, Result, arrow_schema, column_value, var_column
from .rundir import (
    PARTS,
    REQUESTS,
    REQUESTS_CSV,
    SUMMARY,
    VarKinds,
    disk_error,
    file_schema,
    last_part_no,
    latest_rows,
    part_files,
    quarantine,
    read_rows,
    remove_durably,
    replacing,
    row_files,
    write_atomic,
)

if TYPE_CHECKING:  # pyarrow is imported by the first write, not when a run starts
    import pyarrow as pa

    from .summary import Fold

__all__ = ["Collector", "file_schema", "versions", "write_summary"]

# Arrow tables of the parts this process wrote, kept for the final merge up to this many bytes
# (a run of short answers keeps them all; a large run re-reads the rest, and memory stays flat)
KEEP_BYTES = 16 * 1024 * 1024
# Rows reach Arrow through JSON (no pandas import, ~0.5 s, but ~20 µs more a row) in runs planned
# smaller than this, and through Python objects (pyarrow then imports pandas) in larger ones
JSON_MAX_ROWS = 20_000
# runs planned at least this large import pyarrow before their first request (`prepare`): a
# short run should not wait for it before sending, a long one should not collect it all run
PREPARE_ROWS = 2_000


@functools.cache
def _plain(schema: pa.Schema | None = None) -> pa.Schema:
    """The file schema (default: without var columns) without dictionaries (what the JSON
    reader takes)."""
    import pyarrow as pa

    return pa.schema([
        pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
        for f in (arrow_schema() if schema is None else schema)
    ])

# a row that cannot be stored keeps these (they come from the plan, not from a server)
_IDENTITY = ("run_id", "job", "request_id", "index", "model", "model_id", "provider",
             "prompt_id", "repeat", "vars_json")
MAX_REASON_CHARS = 300


class Collector:
    """Buffers rows and writes them in batches; `finish()` writes the final files."""

    __slots__ = ("run_dir", "_parts_dir", "_rows", "_part_no", "_lock", "write_csv",
                 "flush_rows", "_kept", "_kept_bytes", "summary", "_via_json", "_var_kinds",
                 "_kinds", "writer")

    def __init__(self, run_dir: Path, *, write_csv: bool = True, flush_rows: int = 500,
                 rows_expected: int | None = None,
                 var_kinds: Mapping[str, str] | None = None) -> None:
        self.run_dir = run_dir
        # the job's var columns (`var_<name>`, kinds from `Plan.var_kinds`), in this order
        self._var_kinds: VarKinds = tuple((var_kinds or {}).items())
        self._kinds = dict(self._var_kinds)
        self._parts_dir = run_dir / PARTS
        self._rows: list[dict[str, Any]] = []
        self.write_csv = write_csv
        self.flush_rows = flush_rows
        self._lock = threading.Lock()
        self._kept: dict[Path, pa.Table] = {}   # part file -> the table written to it
        self._kept_bytes = 0
        self.summary: Fold | None = None        # set by `finish`
        # part files are written on a thread of lower priority than the event loop's (see
        # `background`): `await collector.writer.run(collector.write_part, rows)`
        self.writer = Background("runner-parts")
        self._via_json = rows_expected is None or rows_expected < JSON_MAX_ROWS
        try:
            self._parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, self._parts_dir) from None
        self._part_no = last_part_no(run_dir)

    def prepare(self) -> None:
        """Import what writing rows needs now (pyarrow; pandas too on the object route), so that
        a long run does not import it in its first flush, while requests are timed, nor keep its
        objects in every garbage collection (the engine freezes what exists before the pool)."""
        import pyarrow.parquet  # noqa: F401

        if self._via_json:
            import pyarrow.json  # noqa: F401
        else:
            import pandas  # noqa: F401

    def add(self, result: Result) -> None:
        row = result.as_row()
        if result.var_values:
            kinds = self._kinds
            for name, value in result.var_values.items():
                key = var_column(name)
                if name in kinds:
                    row[key] = column_value(kinds[name], value)
                else:  # a var the schema does not know (a hand-made plan): not in the file
                    del row[key]
        self._rows.append(row)

    @property
    def schema(self) -> pa.Schema:
        """The schema of this run's row files (the result columns, then the var columns)."""
        return file_schema(self._var_kinds)

    @property
    def pending(self) -> int:
        return len(self._rows)

    def take(self) -> list[dict[str, Any]]:
        """Hand over the buffered rows (the event loop keeps going while they are written)."""
        rows, self._rows = self._rows, []
        return rows

    def put_back(self, rows: list[dict[str, Any]]) -> None:
        """Rows whose write failed: they wait for the next write (at the end of the run)."""
        self._rows[:0] = rows

    def write_part(self, rows: list[dict[str, Any]]) -> None:
        """Write one batch as the next part file (run this in a worker thread)."""
        if not rows:
            return
        with self._lock:  # two flushes can overlap (by count and by time): never one number
            self._part_no += 1
            part_no = self._part_no
        import pyarrow.parquet as pq

        table = to_table(rows, via_json=self._via_json and "pandas" not in sys.modules,
                         schema=self.schema)
        path = self._parts_dir / f"part-{part_no:06d}.parquet"
        with replacing(path) as tmp:
            pq.write_table(table, tmp)
        with self._lock:
            if self._kept_bytes + table.nbytes <= KEEP_BYTES:
                self._kept[path] = table
                self._kept_bytes += table.nbytes

    def part_files(self) -> list[Path]:
        return part_files(self.run_dir)

    def finish(self, dedupe: bool = False) -> Path:
        """Merge the last merge and the parts into requests.parquet (and .csv), file by file to
        keep memory flat; then remove the merged parts. An unreadable part is set aside
        (`.bad`) with a warning; its requests have no row.

        With `dedupe` (a resumed run, which may have sent a request again), a request id written
        more than once keeps its last row. `summary` then holds the fold of the merged rows.
        """
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        from .summary import Fold

        self.writer.close()  # a flush still on its way writes its part first
        self.write_part(self.take())
        final = self.run_dir / REQUESTS
        sources = row_files(self.run_dir)

        def load(path: Path, columns: list[str] | None = None) -> pa.Table | None:
            kept = self._kept.get(path)
            if kept is not None:
                return kept if columns is None else kept.select(columns)
            return read_rows(path, columns, consequence="it is set aside as .bad",
                             schema=self.schema)

        ids = [load(p, ["request_id"]) if dedupe else None for p in sources]
        keep = latest_rows(ids) if dedupe else None
        merged: list[Path] = []
        fold = Fold()
        with ExitStack() as stack:
            tmp = stack.enter_context(replacing(final))
            csv_tmp = stack.enter_context(replacing(self.run_dir / REQUESTS_CSV)) \
                if self.write_csv else None
            csv_writer = pacsv.CSVWriter(csv_tmp, self.schema) if csv_tmp is not None \
                else None
            with pq.ParquetWriter(tmp, self.schema) as writer:
                for n, path in enumerate(sources):
                    table = None if dedupe and ids[n] is None else load(path)
                    if table is None:
                        if path.exists():
                            quarantine(path)
                        continue
                    if keep is not None and len(keep[n]) != table.num_rows:
                        table = table.take(pa.array(keep[n], type=pa.int64()))
                    writer.write_table(table)
                    if csv_writer is not None:  # it writes a category as its text
                        csv_writer.write_table(table)
                    fold.add_table(table)
                    merged.append(path)
            if csv_writer is not None:
                csv_writer.close()
        # the merged file is durable now: the parts would only count every row twice
        try:
            remove_durably([p for p in merged if p != final])
        except OSError as exc:
            raise disk_error(exc, self._parts_dir) from None
        with contextlib.suppress(OSError):  # kept when it still holds a part set aside as bad
            self._parts_dir.rmdir()
        self._kept.clear()
        self._kept_bytes = 0
        self.summary = fold
        from .check_results import write_checks  # issue 12: the per-check long table

        write_checks(self.run_dir, final, write_csv=self.write_csv)
        return final


def to_table(rows: list[dict[str, Any]], *, via_json: bool = True,
             schema: pa.Schema | None = None) -> pa.Table:
    """Rows as a table of the file schema; a row with a value that does not fit becomes an
    error row (`malformed`, the reason in its message) instead of failing the whole batch.

    With `via_json` a batch goes through JSON first (orjson, then Arrow's JSON reader): slower
    than converting Python objects, but the only route that does not import pandas (pyarrow
    imports it to convert any Python list), which would cost a short run half a second. NaN and
    infinities become missing values there. A batch the JSON route refuses takes the object
    route."""
    import pyarrow as pa

    schema = file_schema() if schema is None else schema
    if via_json:
        try:
            return _from_json(rows, schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return pa.Table.from_pylist(list(_storable(rows, schema)), schema=schema)


def _from_json(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa
    import pyarrow.json as pajson

    data = _json_lines(rows)
    table = pajson.read_json(
        pa.BufferReader(data),
        read_options=pajson.ReadOptions(use_threads=False, block_size=len(data) + 1),
        parse_options=pajson.ParseOptions(explicit_schema=_plain(schema.remove_metadata()),
                                          unexpected_field_behavior="error"))
    if table.num_rows != len(rows):
        raise ValueError("a row was lost on the way through JSON")
    # Arrow's JSON reader makes no dictionaries, and a cast would import pyarrow.compute (a
    # quarter of a second): the category columns are built from buffers
    return pa.Table.from_arrays(
        [_categories(table.column(f.name).to_pylist()) if pa.types.is_dictionary(f.type)
         else table.column(f.name) for f in schema], schema=schema)


def _json_lines(rows: list[dict[str, Any]]) -> bytes:
    """The rows as JSON lines, one `orjson.dumps` for the batch: one call per row costs about
    four times as much. The rows are flat objects that all begin with the same key, so each
    boundary is `},{"<key>":`, which cannot occur inside a value: a string's quotes are escaped
    there. A row that does not begin with that key leaves two rows on one line, and the caller's
    row count catches it."""
    import orjson

    if not rows:
        return b""
    first = orjson.dumps(next(iter(rows[0]), ""))
    return orjson.dumps(rows)[1:-1].replace(b"},{" + first + b":", b"}\n{" + first + b":")


def _categories(values: list[str | None]) -> pa.Array:
    """A dictionary<int32, string> array of `values`, codes in order of first appearance (as
    `from_pylist` makes them); a missing value is refused (the object route takes the batch)."""
    import numpy as np
    import pyarrow as pa

    codes: dict[str | None, int] = {}
    indices = np.fromiter((codes.setdefault(v, len(codes)) for v in values), dtype=np.int32,
                          count=len(values))
    if None in codes:
        raise ValueError("a category column holds a missing value")
    words = [str(word).encode() for word in codes]
    offsets = np.zeros(len(words) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(w) for w in words])
    dictionary = pa.Array.from_buffers(pa.string(), len(words),
                                       [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(words))])
    return pa.DictionaryArray.from_arrays(
        pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(indices)]),
        dictionary, safe=False)


def _storable(rows: list[dict[str, Any]], schema: pa.Schema) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    for row in rows:
        try:
            pa.Table.from_pylist([row], schema=schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            yield _malformed(row, schema)
        else:
            yield row


def _malformed(row: dict[str, Any], schema: pa.Schema | None = None) -> dict[str, Any]:
    """The fields of `row` that can be stored, as an error row naming the ones that could not."""
    import pyarrow as pa

    kept: dict[str, Any] = {}
    bad: list[str] = []
    for field in _plain(None if schema is None else schema.remove_metadata()):
        value = row.get(field.name)
        try:
            pa.array([value], type=field.type)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            bad.append(field.name)
            value = None
        kept[field.name] = value
    if any(kept[name] is None for name in _IDENTITY):
        kept.update({name: str(row.get(name)) for name in _IDENTITY
                     if kept[name] is None and name not in ("index", "repeat")})
    reason = f"row could not be stored: unusable value in {', '.join(bad) or 'the row'}"
    kept.update(status=ERROR, error_type="malformed", error_message=reason[:MAX_REASON_CHARS])
    return kept


def write_summary(run_dir: Path, lines: list[dict[str, Any]]) -> None:
    """summary.csv: one line per model (`summary.Fold.lines`)."""
    from .summary import to_csv

    write_atomic(run_dir / SUMMARY, to_csv(lines))


def versions() -> dict[str, str]:
    """Versions of the runner and the libraries that shape its numbers, from the names of the
    installed `*.dist-info` folders (importlib.metadata would cost a tenth of a second at start)."""
    import platform

    wanted = ("runner", "openai", "httptools", "aiohttp", "anyio", "aiolimiter", "pandas",
              "pyarrow")
    found: dict[str, str] = {}
    for folder in sys.path:
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for name in names:
            if not name.endswith(".dist-info"):
                continue
            project, _, version = name[:-len(".dist-info")].partition("-")
            project = project.lower().replace("_", "-")
            if project in wanted and project not in found:
                found[project] = version
    out = {"python": platform.python_version()}
    out.update({name: found.get(name, "unknown") for name in wanted})
    return out
