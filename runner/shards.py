"""Static shards: `--shard i/N` and a run id in, this process's part of the plan, its share of
the job's limits and its folder in the one run directory out; `merge` folds the shards into the
run's combined files.

Shard i of N takes the plan indices j with `(j // M + j % M) % N == i` (M: the number of models):
the plan interleaves models, so each shard gets a fair mix of them (a plain `j % N` would give
every shard one model when N == M). Each shard is a run directory of its own under
`<run>/shards/<i>/` (its lock, journal, parts, run.json), and the run's top run.json holds what
every shard must agree on (job name, N, the plan summary): it is created once, atomically, by
the first shard to start, and the others are checked against it. Each shard's budget and rates
are 1/N of the job's unless given on the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from .config import Job, Limits
from .errors import ConfigError, ResultsError
from .plan import Plan, Request
from .rundir import (
    PARTS,
    REQUESTS_CSV,
    RUN_JSON,
    RunLock,
    disk_error,
    find_run_dir,
    is_run_dir,
    run_dir_for,
    shard_dir,
    shard_dirs,
    var_kinds_of,
    write_json,
)

COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"   # set by a Kubernetes Indexed Job
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True, slots=True)
class Shard:
    """Part `index` of `count` of a job's plan."""

    index: int
    count: int

    def indices(self, plan_size: int, models: int) -> list[int]:
        """The plan indices of this shard, in plan order."""
        m, n, i = max(1, models), self.count, self.index
        return [j for j in range(plan_size) if (j // m + j % m) % n == i]

    def view(self, plan: Plan) -> PlanView:
        return PlanView(plan, self.indices(len(plan), len(plan.job.models)))

    def scaled(self, job: Job) -> Job:
        """The job with its budget and rates at 1/N (flags given on the command line win)."""
        return scale_job(job, 1.0 / self.count)


def parse_shard(text: str, env: Mapping[str, str] | None = None) -> Shard:
    """`i/N`, or `N` with the index from JOB_COMPLETION_INDEX; a one-line ConfigError else."""
    env = os.environ if env is None else env
    index_text, slash, count_text = text.partition("/")
    if not slash:
        index_text, count_text = env.get(COMPLETION_INDEX_ENV, ""), text
        if not index_text:
            raise ConfigError(f"--shard {text}: give i/N, or N with {COMPLETION_INDEX_ENV} set "
                              "(a Kubernetes Indexed Job sets it)")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"--shard {text}: expected i/N with whole numbers, e.g. 0/4 "
                          f"(index {index_text!r}, count {count_text!r})") from None
    if count < 1:
        raise ConfigError(f"--shard {text}: the shard count must be >= 1 (got {count})")
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text}: the index must be 0..{count - 1} (got {index}); "
                          "shards are numbered from 0")
    return Shard(index, count)


def check_run_id(run_id: str) -> str:
    """A run id usable as a folder name, or a one-line ConfigError."""
    if not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ConfigError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' (up to "
                          "100, starting with a letter or digit)")
    return run_id


def scale_job(job: Job, factor: float | None) -> Job:
    """`job` with its budget and every rpm/tpm (job, providers, models) times `factor`; None
    removes the rates (a Ray worker, whose rates the ledger holds)."""

    def limits(lim: Limits) -> Limits:
        def rate(value: float | None) -> float | None:
            return None if value is None or factor is None else value * factor
        return replace(lim, rpm=rate(lim.rpm), tpm=rate(lim.tpm))

    models = tuple(replace(m, limits=limits(m.limits)) for m in job.models)
    judges = {key: replace(m, limits=limits(m.limits)) for key, m in job.judges.items()}
    budget = job.budget_usd
    return replace(job, limits=limits(job.limits), models=models, judges=judges,
                   providers={name: replace(p, limits=limits(p.limits))
                              for name, p in job.providers.items()},
                   budget_usd=budget * factor if budget is not None and factor else budget)


class PlanView(Sequence[Request]):
    """Some requests of a plan, by index (a shard's, or a Ray chunk's)."""

    __slots__ = ("plan", "indices")

    def __init__(self, plan: Plan, indices: Sequence[int]) -> None:
        self.plan = plan
        self.indices = indices

    @property
    def job(self) -> Job:
        return self.plan.job

    def __len__(self) -> int:
        return len(self.indices)

    def var_kinds(self) -> dict[str, str]:
        return self.plan.var_kinds()

    @overload
    def __getitem__(self, i: int) -> Request: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Request]: ...

    def __getitem__(self, i: int | slice) -> Request | Sequence[Request]:
        if isinstance(i, slice):
            return [self.plan[j] for j in self.indices[i]]
        return self.plan[self.indices[i]]

    def __iter__(self) -> Iterator[Request]:
        for j in self.indices:
            yield self.plan[j]


# -- the run directory of a sharded run ---------------------------------------------------------

def top_facts(job: Job, run_id: str, shards: int, plan_size: int) -> dict[str, Any]:
    """What every shard of a run must agree on (the top run.json holds it)."""
    from .resume import plan_summary

    return {"run_id": run_id, "job": job.name, "job_file": str(job.path), "shards": shards,
            "planned_requests": plan_size, "plan": plan_summary(job)}


def open_run(root: Path, job: Job, run_id: str, shards: int, plan_size: int) -> Path:
    """The run directory of a sharded run, created by the first shard (its top run.json written
    at once, atomically) and checked by the others: same job, same N, same plan."""
    run_dir = run_dir_for(root, job.name, run_id)
    want = top_facts(job, run_id, shards, plan_size)
    path = run_dir / RUN_JSON
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".{RUN_JSON}.{secrets.token_hex(3)}.tmp"
        write_json(tmp, {**want, "status": "running",
                         "started_at": datetime.now(UTC).isoformat()})
        try:
            os.link(tmp, path)  # create-if-absent: two shards starting at once write one file
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise disk_error(exc, path) from None
    check_top(run_dir, want)
    return run_dir


def read_top(run_dir: Path) -> dict[str, Any]:
    if not is_run_dir(run_dir):
        raise ResultsError(f"{run_dir}: not a run directory (no {RUN_JSON})")
    try:
        top = json.loads((run_dir / RUN_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{run_dir / RUN_JSON}: unreadable ({exc})") from None
    if type(top) is not dict:
        raise ResultsError(f"{run_dir / RUN_JSON}: not a run's manifest")
    return top


def check_top(run_dir: Path, want: Mapping[str, Any]) -> None:
    """Refuse a shard whose job, shard count or plan differ from the run's (one line)."""
    from .resume import plan_changes

    top = read_top(run_dir)
    if "shards" not in top:
        raise ConfigError(f"--run-id {want['run_id']}: {run_dir} is a run that is not sharded; "
                          "choose another --run-id")
    if top.get("job") != want["job"]:
        raise ConfigError(f"--run-id {want['run_id']}: {run_dir} is a run of job "
                          f"{top.get('job')!r}, not {want['job']!r}; choose another --run-id")
    if top.get("shards") != want["shards"]:
        raise ConfigError(f"--shard: run {want['run_id']} has {top.get('shards')} shards, not "
                          f"{want['shards']}: give every shard the same N")
    changes = plan_changes(top.get("plan") or {}, dict(want["plan"]))
    if changes or top.get("planned_requests") != want["planned_requests"]:
        raise ConfigError(f"{want['job_file']}: the plan differs from the one run "
                          f"{want['run_id']}'s other shards run ({'; '.join(changes) or 'size'}"
                          "): give every shard the same job file")


def shard_run_dir(root: Path, job: Job, shard: Shard, run_id: str | None,
                  resume: str | Path | None, plan_size: int) -> tuple[Path, str, bool]:
    """(the shard's folder, the run id, whether it resumes) for `run_job`."""
    if resume is not None and run_id is None:
        top = find_run_dir(root, job.name, str(resume))
        run_id = str(read_top(top).get("run_id", top.name))
    if run_id is None:
        raise ConfigError("--shard needs --run-id ID: every shard must write into the same run "
                          "(e.g. --run-id nightly-$(date +%F))")
    top = open_run(root, job, check_run_id(run_id), shard.count, plan_size)
    folder = shard_dir(top, shard.index)
    ran = is_run_dir(folder)
    if ran and resume is None:
        raise ConfigError(f"--shard {shard.index}/{shard.count}: shard {shard.index} of run "
                          f"{run_id} ran already ({folder}); add --resume to continue it")
    return folder, run_id, ran


# -- merging ------------------------------------------------------------------------------------

def merge(run_dir: Path, *, write_csv: bool = True, lock: bool = True) -> dict[str, Any]:
    """Fold every shard's rows into the run's requests.parquet and summary.csv (the shards' row
    files are removed once merged) and write the run's status; returns the new run.json.
    `lock=False`: the caller holds the run's lock (a Ray driver)."""
    from .collect import Collector, write_summary

    top = read_top(run_dir)
    if "shards" not in top:
        raise ResultsError(f"{run_dir}: not a sharded run; nothing to merge")
    shards = shard_dirs(run_dir)
    with contextlib.ExitStack() as locks:
        for folder in shards:  # a shard still running: its rows are not all there yet
            try:
                locks.enter_context(RunLock(folder))
            except ResultsError:
                raise ResultsError(f"{run_dir}: shard {folder.name} is still running; merge "
                                   "once it ends") from None
        if lock:
            locks.enter_context(RunLock(run_dir))
        manifests = [read_top(folder) if is_run_dir(folder) else {} for folder in shards]
        collector = Collector(run_dir, write_csv=write_csv, var_kinds=var_kinds_of(run_dir))
        collector.finish(dedupe=True)
        assert collector.summary is not None
        lines = collector.summary.lines()
        if lines:
            write_summary(run_dir, lines)
        for folder in shards:  # the merged file holds their rows now
            with contextlib.suppress(OSError):
                (folder / REQUESTS_CSV).unlink(missing_ok=True)
                (folder / PARTS).rmdir()
        body = {**top, **_combined(top, manifests, collector.summary.totals())}
        write_json(run_dir / RUN_JSON, body)
    return body


def _combined(top: Mapping[str, Any], manifests: list[dict[str, Any]],
              totals: dict[str, Any]) -> dict[str, Any]:
    statuses = {str(i): m.get("status", "not started") for i, m in enumerate(manifests)}
    count = top.get("shards")
    expected = count if isinstance(count, int) else len(manifests)
    if len(manifests) < expected:
        statuses.update({str(i): "not started" for i in range(len(manifests), expected)})
    worst = next((s for s in ("failed", "interrupted", "running", "not started")
                  if s in statuses.values()), "completed")
    spent = sum(_number(m, "spent_usd") for m in manifests)
    budgets = [_number(m, "budget_usd") for m in manifests
               if isinstance((m.get("budget") or {}).get("budget_usd"), int | float)]
    counts = totals.pop("counts", {})
    return {"status": worst, "shard_status": statuses, "counts": counts, "totals": totals,
            "budget": {"budget_usd": sum(budgets) if budgets else top.get("budget_usd"),
                       "spent_usd": round(spent, 10),
                       "exceeded": any((m.get("budget") or {}).get("exceeded")
                                       for m in manifests)},
            "ended_at": datetime.now(UTC).isoformat()}


def _number(manifest: Mapping[str, Any], key: str) -> float:
    value = (manifest.get("budget") or {}).get(key)
    return float(value) if isinstance(value, int | float) else 0.0


def merge_if_done(run_dir: Path, write_csv: bool = True) -> bool:
    """Merge when every shard has completed (the last one to end does it); True if merged."""
    top = read_top(run_dir)
    shards = shard_dirs(run_dir)
    if len(shards) < int(top.get("shards") or 0):
        return False
    for folder in shards:
        if not is_run_dir(folder) or read_top(folder).get("status") != "completed":
            return False
    try:
        merge(run_dir, write_csv=write_csv)
    except ResultsError:  # another shard ended at the same moment and merges
        return False
    return True


def whole_run(run_dir: Path) -> Path | None:
    """For a shard's folder, the run it belongs to once merged (None: other shards not done)."""
    from .rundir import shard_root

    top = shard_root(run_dir)
    if top is None:
        return None
    return top if read_top(top).get("status") not in (None, "running") else None
