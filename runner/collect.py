"""The only module that writes result files: `Result` rows in, a run directory out.

    results/<job>/<run id>/
        run.json            manifest: status, job snapshot (no secrets), versions, counts, totals
        parts/part-*.parquet  rows as they finish, in batches (each written, then renamed)
        requests.parquet    all rows, written at the end
        requests.csv        the same, for spreadsheets
        summary.csv         one line per model

Every file is written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import ResultsError
from .result import SCHEMA, Result

_PLAIN = pa.schema([
    pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
    for f in SCHEMA
])


@functools.cache
def file_schema() -> pa.Schema:
    """SCHEMA plus pandas metadata, so `pd.read_parquet` gives nullable Int64/boolean columns
    (unknown token counts stay <NA> instead of turning the column into floats)."""
    import pandas as pd

    def dtype(t: pa.DataType) -> str:
        if pa.types.is_integer(t):
            return "Int64"
        if pa.types.is_boolean(t):
            return "boolean"
        if pa.types.is_dictionary(t):
            return "category"
        if pa.types.is_floating(t):
            return "float64"
        if pa.types.is_timestamp(t):
            return "datetime64[us, UTC]"
        return "str"

    empty = pd.DataFrame({f.name: pd.Series([], dtype=dtype(f.type)) for f in SCHEMA})
    meta = pa.Schema.from_pandas(empty, preserve_index=False).metadata
    return SCHEMA.with_metadata(meta)


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by start time, to the millisecond: `20261125T231755.042Z-3fa9`."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(2)}"


def run_dir_for(root: Path, job_name: str, run_id: str) -> Path:
    """`root/job_name/run_id`, refusing anything that would land outside `root`."""
    root = root.resolve()
    target = (root / job_name / run_id).resolve()
    if root not in target.parents:
        raise ResultsError(f"refusing to write outside {root}: job name {job_name!r}")
    return target


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str).encode() + b"\n")


class Collector:
    """Buffers rows and writes them in batches; `finish()` writes the final files."""

    __slots__ = ("run_dir", "_parts_dir", "_rows", "_part_no", "_lock", "write_csv",
                 "flush_rows")

    def __init__(self, run_dir: Path, *, write_csv: bool = True, flush_rows: int = 500) -> None:
        self.run_dir = run_dir
        self._parts_dir = run_dir / "parts"
        self._rows: list[dict[str, Any]] = []
        self.write_csv = write_csv
        self.flush_rows = flush_rows
        self._part_no = 0
        self._lock = threading.Lock()
        self._parts_dir.mkdir(parents=True, exist_ok=True)
        existing = sorted(self._parts_dir.glob("part-*.parquet"))
        if existing:
            self._part_no = int(existing[-1].stem.split("-")[1])

    def add(self, result: Result) -> None:
        self._rows.append(result.as_row())

    @property
    def pending(self) -> int:
        return len(self._rows)

    def take(self) -> list[dict[str, Any]]:
        """Hand over the buffered rows (the event loop keeps going while they are written)."""
        rows, self._rows = self._rows, []
        return rows

    def write_part(self, rows: list[dict[str, Any]]) -> None:
        """Write one batch as the next part file (run this in a worker thread)."""
        if not rows:
            return
        with self._lock:  # two flushes can overlap (by count and by time): never one number
            self._part_no += 1
            part_no = self._part_no
        table = pa.Table.from_pylist(rows, schema=file_schema())
        path = self._parts_dir / f"part-{part_no:06d}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)

    def part_files(self) -> list[Path]:
        return sorted(self._parts_dir.glob("part-*.parquet"))

    def finish(self, dedupe: bool = False) -> Path:
        """Merge the parts into requests.parquet (and .csv), part by part to keep memory flat.

        With `dedupe` (a resumed run, which may have sent a request again), a request id written
        more than once keeps its last row.
        """
        self.write_part(self.take())
        final = self.run_dir / "requests.parquet"
        tmp = self.run_dir / ".requests.parquet.tmp"
        csv_tmp = self.run_dir / ".requests.csv.tmp"
        csv_writer = pacsv.CSVWriter(csv_tmp, _PLAIN) if self.write_csv else None
        parts = self.part_files()
        keep = latest_rows(parts) if dedupe else None
        with pq.ParquetWriter(tmp, file_schema()) as writer:
            for n, part in enumerate(parts):
                table = pq.read_table(part, schema=file_schema())
                if keep is not None and len(keep[n]) != table.num_rows:
                    table = table.take(pa.array(keep[n], type=pa.int64()))
                writer.write_table(table)
                if csv_writer is not None:
                    csv_writer.write_table(table.cast(_PLAIN))
        if csv_writer is not None:
            csv_writer.close()
            os.replace(csv_tmp, self.run_dir / "requests.csv")
        os.replace(tmp, final)
        return final


def write_summary(run_dir: Path, summary: Any) -> None:
    """summary.csv: one line per model (a pandas DataFrame from `report.summarize`)."""
    write_atomic(run_dir / "summary.csv", summary.to_csv(index=False).encode())


def latest_rows(parts: list[Path]) -> list[list[int]]:
    """For each part file, the indices of the rows that are the last one of their request id."""
    last: dict[str, tuple[int, int]] = {}
    for n, part in enumerate(parts):
        ids = pq.read_table(part, columns=["request_id"]).column(0).to_pylist()
        for i, rid in enumerate(ids):
            last[rid] = (n, i)
    keep: list[list[int]] = [[] for _ in parts]
    for n, i in last.values():
        keep[n].append(i)
    return [sorted(rows) for rows in keep]


def versions() -> dict[str, str]:
    """Versions of the runner and the libraries that shape its numbers."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("runner", "openai", "aiohttp", "anyio", "aiolimiter", "pandas", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out
