"""The run directory: a results root, job name and run id in; its layout, listing, lock, atomic
writes and the rows it holds out (the one module that knows where a run's files are).

    results/<job>/<run id>/
        run.json            manifest: status, job snapshot (no secrets), versions, counts, totals
        spend.journal       every reservation before its request is sent, and its settlement
        batches.jsonl       batch mode: each provider batch, written before it is submitted
        .lock               held (flock) by the process working on the run; holds its pid
        parts/part-*.parquet  rows as they finish, in batches (removed once merged at the end)
        requests.parquet    all rows, merged when the run ends
        requests.csv        the same, for spreadsheets
        summary.csv         one line per model
        shards/<i>/         a sharded run (`--shard i/N`, or a Ray run's workers): each shard a
                            run directory of the layout above; the top holds run.json (the
                            shards' common facts) and, once merged, the combined row files

The rows of a run are `requests.parquet` (what the last end merged) plus the parts written since,
the last row of each request id winning: the same rule whether the run ended, is going on, was
killed, or is being resumed. A sharded run's rows are its merged files, then every shard's. An
unreadable part is reported (`UnreadableRowsWarning`, one line naming the file) and left out:
its requests have no row, so a resume sends them again.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import math
import os
import secrets
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .errors import ResultsError
from .result import TYPES, VAR_PREFIX, arrow_schema

if TYPE_CHECKING:  # pyarrow is imported where rows are read or written, not by a run's start
    import pyarrow as pa

RUN_JSON = "run.json"
JOURNAL = "spend.journal"
BATCHES = "batches.jsonl"
LOCK = ".lock"
PARTS = "parts"
REQUESTS = "requests.parquet"
REQUESTS_CSV = "requests.csv"
SUMMARY = "summary.csv"
SHARDS = "shards"
BAD_SUFFIX = ".bad"                 # an unreadable part, set aside by the final merge or a resume


class UnreadableRowsWarning(UserWarning):
    """A row file of a run that cannot be read (truncated, empty, not Parquet)."""


# -- ids and paths ------------------------------------------------------------------------------

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


def is_run_dir(path: Path) -> bool:
    return (path / RUN_JSON).is_file()


def run_dirs(path: Path) -> list[Path]:
    """The run directories under `path` (itself if it is one), oldest first."""
    if is_run_dir(path):
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and is_run_dir(p))


def latest_run(path: Path) -> Path:
    """A run directory as given; a job directory's latest run (the path itself if it has none)."""
    runs = run_dirs(path)
    return runs[-1] if runs else path


def find_run_dir(root: Path, job_name: str, spec: str) -> Path:
    """`latest` (the newest run of the job under `root`) or an explicit run directory."""
    if spec == "latest":
        job_dir = root / job_name
        runs = run_dirs(job_dir) if job_dir.is_dir() and not is_run_dir(job_dir) else []
        if not runs:
            raise ResultsError(f"--resume latest: no run of job {job_name!r} under {job_dir}")
        return runs[-1]
    run_dir = Path(spec)
    if not is_run_dir(run_dir):
        raise ResultsError(f"--resume {spec}: not a run directory (no run.json)")
    return run_dir


def run_label(run_dir: Path) -> str:
    """`job/run id`, how a run is named in messages."""
    return f"{run_dir.parent.name}/{run_dir.name}"


def part_files(run_dir: Path) -> list[Path]:
    """The part files written so far, oldest first."""
    return sorted((run_dir / PARTS).glob("part-*.parquet"))


def last_part_no(run_dir: Path) -> int:
    """The highest part number used so far (set-aside parts included), 0 for none."""
    numbers = [int(p.name.split(".")[0].split("-")[1])
               for p in (run_dir / PARTS).glob("part-*.parquet*")
               if p.name.split(".")[0].split("-")[1].isdigit()]
    return max(numbers, default=0)


# -- the lock -----------------------------------------------------------------------------------

class RunLock:
    """An exclusive flock on the run's `.lock` for as long as a process works on the run; the
    OS drops it when the process dies, so a killed run never stays locked."""

    __slots__ = ("run_dir", "_fd")

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        path = self.run_dir / LOCK
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise disk_error(exc, path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ResultsError(f"{self.run_dir}: another runner process (pid {holder}) is "
                               "working on this run; wait for it to end or stop it, then "
                               "resume") from None
        with suppress(OSError):  # the pid only serves a second process's message
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


# -- writing files ------------------------------------------------------------------------------

_FIXES = {
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is used up: free some space",
    errno.EFBIG: "the file is larger than this system allows: raise the file size limit "
                 "(ulimit -f) or choose another --out",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.EACCES: "permission denied: make the folder writable or choose another --out",
    errno.EPERM: "permission denied: make the folder writable or choose another --out",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another --out",
    errno.EEXIST: "a file is in the way of a folder: choose another --out",
}


def disk_error(exc: OSError, path: Path | str) -> ResultsError:
    """One line for a failed write: the path, what went wrong and the fix."""
    number = exc.errno
    if number is None:  # pyarrow's errors carry the errno only in their text
        text = str(exc)
        number = next((n for n in _FIXES if f"[errno {n}]" in text.lower()), None)
    fix = _FIXES.get(number or -1) or f"{exc.strerror or exc}"
    error = ResultsError(f"{path}: cannot write: {fix}")
    error.errno = number  # type: ignore[attr-defined]
    return error


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write `path` through: on success the file is fsynced, renamed
    over `path` and the folder fsynced, so readers (and a crash) see the old file or the new one,
    never a part. A failed write leaves no temporary file behind; OSError becomes ResultsError."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise disk_error(exc, path) from None
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a part."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, obj: Any) -> None:
    """`obj` as strict JSON (what jq, DuckDB and browsers read): an infinite or NaN number, which
    a server's bill can lead to, is written as the string "inf", "-inf" or "nan"."""
    text = json.dumps(_strict(obj), indent=2, default=str, allow_nan=False)
    write_atomic(path, text.encode() + b"\n")


def _strict(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    return obj


def remove_durably(paths: list[Path]) -> None:
    """Delete files (the parts, once merged) and fsync their folders."""
    for folder in {p.parent for p in paths}:
        for path in paths:
            if path.parent == folder:
                path.unlink(missing_ok=True)
        _fsync_dir(folder)


# -- reading rows -------------------------------------------------------------------------------

# pandas' reading of each kind of column (`pandas_type`, `numpy_type`, `metadata`), as
# `pa.Schema.from_pandas` writes it for the dtypes we want back (tests/test_speed.py checks that it
# still matches): written out here so that writing rows never imports pandas
_PANDAS_KINDS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "string": ("object", "str", None),
    "int64": ("int64", "Int64", None),
    "int32": ("int64", "Int64", None),
    "float64": ("float64", "float64", None),
    "bool": ("bool", "boolean", None),
    "category": ("categorical", "int8", {"num_categories": 0, "ordered": False}),
    "timestamp": ("datetimetz", "datetime64[us]", {"timezone": "UTC"}),
}
PANDAS_VERSION = "3.1.1"  # the pandas whose metadata format `_PANDAS_KINDS` follows


VarKinds = tuple[tuple[str, str], ...]   # (var name, datasets.KINDS kind), in column order
_VAR_KINDS = {"string": "string", "json": "string", "int64": "int64", "float64": "float64",
              "bool": "bool"}


@functools.cache
def file_schema(var_kinds: VarKinds = ()) -> pa.Schema:
    """The result schema plus pandas metadata, so `pd.read_parquet` gives nullable Int64/boolean
    columns (unknown token counts stay <NA> instead of turning the column into floats). With
    `var_kinds`, a job's `var_<name>` columns follow (JSON values are text)."""
    import pyarrow as pa

    schema = arrow_schema()
    for name, kind in var_kinds:
        schema = schema.append(pa.field(VAR_PREFIX + name, _arrow_type(kind)))
    kinds = tuple(TYPES) + tuple((VAR_PREFIX + name, _VAR_KINDS.get(kind, "string"))
                                 for name, kind in var_kinds)
    return with_pandas_metadata(schema, kinds)


def with_pandas_metadata(schema: pa.Schema, types: tuple[tuple[str, str], ...]) -> pa.Schema:
    """`schema` with the pandas metadata of `types` ((column, kind) as in `result.TYPES`), so
    `pd.read_parquet` gives nullable Int64/boolean columns (also for checks.parquet)."""
    import pyarrow as pa

    columns = [{"name": name, "field_name": name, "pandas_type": _PANDAS_KINDS[kind][0],
                "numpy_type": _PANDAS_KINDS[kind][1], "metadata": _PANDAS_KINDS[kind][2]}
               for name, kind in types]
    meta = {"index_columns": [], "column_indexes": [], "columns": columns, "attributes": {},
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": PANDAS_VERSION}
    return schema.with_metadata({b"pandas": json.dumps(meta).encode()})


def _arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa

    return {"int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}.get(
        _VAR_KINDS.get(kind, "string"), pa.string())


def _var_kinds(schema: pa.Schema) -> VarKinds:
    """The var columns a row file holds (what `file_schema` wrote for its job)."""
    import pyarrow as pa

    known = set(arrow_schema().names)
    out = []
    for f in schema:
        if f.name.startswith(VAR_PREFIX) and f.name not in known:
            kind = ("int64" if pa.types.is_int64(f.type) else "float64"
                    if pa.types.is_float64(f.type) else "bool" if pa.types.is_boolean(f.type)
                    else "string")
            out.append((f.name[len(VAR_PREFIX):], kind))
    return tuple(out)


def var_kinds_of(run_dir: Path) -> dict[str, str]:
    """The var columns the run's row files hold (a merge of shards or chunks keeps them)."""
    import pyarrow.parquet as pq

    kinds: dict[str, str] = {}
    for path in row_files(run_dir):
        try:
            kinds.update(_var_kinds(pq.read_schema(path)))
        except (OSError, ValueError):  # an unreadable file: the merge sets it aside
            continue
    return kinds


def read_rows(path: Path, columns: list[str] | None = None, *,
              consequence: str = "its rows are left out",
              schema: pa.Schema | None = None) -> pa.Table | None:
    """One row file, or None (with one warning line naming it) when it cannot be read or is
    not a row file (a column of another type: read, it would be cast into rows never planned).
    Read whole, it has the columns of `schema` (default: the result columns and the file's own
    var columns); a column the file lacks (an older run) is null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        found = pq.read_schema(path)
        _check_types(found)
        if columns is None:
            return pq.read_table(path, schema=schema if schema is not None
                                 else file_schema(_var_kinds(found)))
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        warnings.warn(f"{path}: unreadable row file ({reason}); {consequence}",
                      UnreadableRowsWarning, stacklevel=2)
        return None


def _check_types(schema: pa.Schema) -> None:
    known = arrow_schema()
    for field in schema:
        want = known.field(field.name) if field.name in known.names else None
        if want is not None and not field.type.equals(want.type):
            raise ValueError(f"column {field.name} is {field.type}, not {want.type}")


def row_files(run_dir: Path) -> list[Path]:
    """Where a run's rows are, oldest first: the last merge, then the parts written since (in a
    sharded run, then each shard's)."""
    final = run_dir / REQUESTS
    files = ([final] if final.is_file() else []) + part_files(run_dir)
    for shard in shard_dirs(run_dir):
        files += row_files(shard)
    return files


# -- shards -------------------------------------------------------------------------------------

def shard_dir(run_dir: Path, name: int | str) -> Path:
    """Where shard `name` of a sharded run keeps its files."""
    return run_dir / SHARDS / str(name)


def shard_dirs(run_dir: Path) -> list[Path]:
    """The shards of a sharded run (none for any other run), in number order."""
    folder = run_dir / SHARDS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir()]
    return sorted(found, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit()
                                        else 0, p.name))


def shard_root(run_dir: Path) -> Path | None:
    """The sharded run that `run_dir` is a shard of, or None."""
    top = run_dir.parent.parent
    return top if run_dir.parent.name == SHARDS and is_run_dir(top) else None


def latest_rows(tables: list[pa.Table | None]) -> list[list[int]]:
    """For each table (`request_id` column at least), the indices of the rows that are the last
    one of their request id across all tables."""
    last: dict[str, tuple[int, int]] = {}
    for n, table in enumerate(tables):
        if table is None:
            continue
        for i, rid in enumerate(table.column("request_id").to_pylist()):
            last[rid] = (n, i)
    keep: list[list[int]] = [[] for _ in tables]
    for n, i in last.values():
        keep[n].append(i)
    return [sorted(rows) for rows in keep]


def scan(run_dir: Path, columns: list[str], *, consequence: str = "its rows are left out",
         on_bad: Callable[[Path], object] | None = None) -> list[tuple[Path, pa.Table | None]]:
    """`columns` of every row file of the run (None for an unreadable one, after `on_bad`)."""
    out: list[tuple[Path, pa.Table | None]] = []
    for path in row_files(run_dir):
        table = read_rows(path, columns, consequence=consequence)
        if table is None and path.exists() and on_bad is not None:
            on_bad(path)
        out.append((path, table))
    return out


def read_run(run_dir: Path) -> pa.Table | None:
    """A run's rows, one per request id (its latest), in plan order; None when it has none."""
    import pyarrow as pa
    import pyarrow.compute as pc

    sources = [(p, t) for p, t in ((p, read_rows(p)) for p in row_files(run_dir))
               if t is not None]
    if not sources:
        return None
    if len(sources) == 1:
        table = sources[0][1]
    else:
        keep = latest_rows([t for _, t in sources])
        # parts of one run share their var columns; an older merge may have none
        table = pa.concat_tables([t.take(pa.array(keep[n], type=pa.int64()))
                                  for n, (_, t) in enumerate(sources)],
                                 promote_options="permissive")
    assert table is not None
    return table.take(pc.sort_indices(table, sort_keys=[("index", "ascending")]))


def quarantine(path: Path) -> Path:
    """Set an unreadable part aside (`part-N.parquet.bad`): it is kept for a look, never read
    again and never matched by a `*.parquet` glob."""
    target = path.with_name(path.name + BAD_SUFFIX)
    try:
        os.replace(path, target)
    except OSError as exc:
        raise disk_error(exc, path) from None
    return target
