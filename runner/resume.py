"""Resuming a run: a run directory in, what is already done (and whether the plan changed) out.

A run continues in place: request ids whose latest row is `ok` are never sent again, errored ones
only with `--retry-errors`; rows that were never sent (`skipped`) or cut off by an interrupt are
sent again. The plan's fingerprint, kept in run.json, tells whether the job file changed in a way
that changes the plan.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .config import Job
from .errors import ResultsError
from .result import OK, SKIPPED

INTERRUPTED = "interrupted"   # error_type of a request cut off by Ctrl-C: it is sent again


def plan_summary(job: Job) -> dict[str, Any]:
    """What determines the plan: models, prompts (templates and vars), params, repeats."""
    return {
        "models": {m.label: {"id": m.id, "provider": m.provider, "params": dict(m.params),
                             "extra_body": dict(m.extra_body)} for m in job.models},
        "prompts": {p.id: hashlib.sha256(json.dumps(
            [[m.role, m.content] for m in p.messages] + [dict(p.vars)],
            sort_keys=True, default=str).encode()).hexdigest()[:16] for p in job.prompts},
        "repeats": job.repeats,
    }


def fingerprint(summary: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()


def plan_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two plan summaries."""
    changes: list[str] = []
    for section in ("models", "prompts"):
        before, after = old.get(section, {}), new.get(section, {})
        if added := sorted(set(after) - set(before)):
            changes.append(f"{section} added: {', '.join(added)}")
        if removed := sorted(set(before) - set(after)):
            changes.append(f"{section} removed: {', '.join(removed)}")
        if changed := sorted(k for k in set(before) & set(after) if before[k] != after[k]):
            changes.append(f"{section} changed: {', '.join(changed)}")
    if old.get("repeats") != new.get("repeats"):
        changes.append(f"repeats {old.get('repeats')} -> {new.get('repeats')}")
    return changes


def find_run_dir(root: Path, job_name: str, spec: str) -> Path:
    """`latest` (the newest run of the job under `root`) or an explicit run directory."""
    if spec == "latest":
        job_dir = root / job_name
        runs = sorted(p for p in job_dir.iterdir() if (p / "run.json").is_file()) \
            if job_dir.is_dir() else []
        if not runs:
            raise ResultsError(f"--resume latest: no run of job {job_name!r} under {job_dir}")
        return runs[-1]
    run_dir = Path(spec)
    if not (run_dir / "run.json").is_file():
        raise ResultsError(f"--resume {spec}: not a run directory (no run.json)")
    return run_dir


@dataclass(slots=True)
class Previous:
    """What an earlier run of the same plan left behind."""

    run_dir: Path
    manifest: dict[str, Any]
    ok: set[str] = field(default_factory=set)
    errored: set[str] = field(default_factory=set)
    spent_usd: float = 0.0

    def skip(self, retry_errors: bool) -> set[str]:
        """Request ids not to send again."""
        return self.ok | (set() if retry_errors else self.errored)


def load_previous(run_dir: Path, job: Job, *, force: bool) -> Previous:
    """Read a run's manifest and rows; refuse when the job now plans something else."""
    manifest = json.loads((run_dir / "run.json").read_text())
    if manifest.get("job") != job.name:
        raise ResultsError(f"{run_dir} is a run of job {manifest.get('job')!r}, not {job.name!r}")
    changes = plan_changes(manifest.get("plan", {}), plan_summary(job))
    if changes and not force:
        raise ResultsError(f"{job.path}: the plan changed since run {manifest.get('run_id')} "
                           f"({'; '.join(changes)}): resume with --force to go on anyway")
    previous = Previous(run_dir, manifest)
    latest: dict[str, tuple[str, str | None]] = {}
    for part in sorted((run_dir / "parts").glob("part-*.parquet")):
        table = pq.read_table(part, columns=["request_id", "status", "error_type", "cost_usd",
                                             "estimated_cost_usd"])
        ids, statuses, kinds, costs, estimates = (table.column(i).to_pylist() for i in range(5))
        for rid, status, kind, cost, estimate in zip(ids, statuses, kinds, costs, estimates,
                                                     strict=True):
            latest[rid] = (status, kind)
            # as in the budget: a sent request of unknown cost counts at its worst case
            if cost is not None:
                previous.spent_usd += cost
            elif status != SKIPPED:
                previous.spent_usd += estimate or 0.0
    for rid, (status, kind) in latest.items():
        if status == OK:
            previous.ok.add(rid)
        elif status != SKIPPED and kind != INTERRUPTED:
            previous.errored.add(rid)
    return previous
