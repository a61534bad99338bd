"""Resuming a run: a run directory in, what is already done, what was spent (and whether the
plan changed) out.

A run continues in place: request ids whose latest row is `ok` are never sent again, errored ones
only with `--retry-errors`; rows that were never sent (`skipped`), cut off by an interrupt, or
lost in an unreadable part file are sent again. What was spent comes from the spend journal
(every reservation without a settlement counts as spent); runs written before the journal fall
back to the costs in their rows. The plan summary, kept in run.json, tells whether the job file
changed in a way that changes the plan. The caller holds the run's lock.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .budget import parse_factor
from .config import Job
from .errors import ResultsError
from .journal import read_spent
from .result import INTERRUPTED, OK, SKIPPED
from .rundir import REQUESTS, RUN_JSON, quarantine, read_rows, scan, shard_root


def plan_summary(job: Job) -> dict[str, Any]:
    """What determines the plan: models, prompts (templates and vars), params, repeats."""
    return {
        "models": {m.label: {"id": m.id, "provider": m.provider, "params": dict(m.params),
                             "extra_body": dict(m.extra_body)} for m in job.models},
        "prompts": {p.id: hashlib.sha256(json.dumps(
            [[m.role, m.content] for m in p.messages] + [dict(p.vars)]
            + ([{"turns": p.turns}] if p.turns else [])  # a conversation is another plan
            + ([p.dataset.fingerprint] if p.dataset is not None else []),  # its rows too
            sort_keys=True, default=str).encode()).hexdigest()[:16] for p in job.prompts},
        "repeats": job.repeats,
    }


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


@dataclass(slots=True)
class Previous:
    """What an earlier run of the same plan left behind."""

    run_dir: Path
    manifest: dict[str, Any]
    ok: set[str] = field(default_factory=set)
    errored: set[str] = field(default_factory=set)
    spent_usd: float = 0.0
    journal_sessions: int | None = None     # None: a run written before the spend journal
    journal_raised: dict[str, float] = field(default_factory=dict)  # the journal's raise factors

    @property
    def raised_estimates(self) -> dict[str, Any]:
        """The factors the run's overruns raised its models' estimates by (run.json), so a
        resume does not reserve at the estimate that proved too low."""
        budget = self.manifest.get("budget")
        raised = budget.get("raised_estimates") if type(budget) is dict else None
        kept: dict[str, Any] = dict(raised) if type(raised) is dict else {}
        for model, factor in self.journal_raised.items():  # learnt by a process killed since
            before = parse_factor(kept.get(model))
            kept[model] = max(before, factor) if before is not None else factor
        return kept

    def restrict(self, request_ids: set[str]) -> None:
        """Forget the rows of requests outside `request_ids` (a shard's part of the plan)."""
        self.ok &= request_ids
        self.errored &= request_ids

    def skip(self, retry_errors: bool) -> set[str]:
        """Request ids not to send again."""
        return self.ok | (set() if retry_errors else self.errored)


def load_previous(run_dir: Path, job: Job, *, force: bool) -> Previous:
    """Read a run's manifest, rows and journal; refuse when the job now plans something else.
    An unreadable part file is reported, set aside, and its requests sent again."""
    try:
        manifest = json.loads((run_dir / RUN_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{run_dir / RUN_JSON}: unreadable ({exc}); this run cannot be "
                           "resumed, start a new one") from None
    plan = manifest.get("plan", {}) if type(manifest) is dict else None
    if type(manifest) is not dict or type(manifest.get("run_id")) is not str \
            or type(plan) is not dict \
            or any(type(plan.get(part, {})) is not dict for part in ("models", "prompts")):
        raise ResultsError(f"{run_dir / RUN_JSON}: not a run's manifest (an object with a "
                           "run_id and a plan); this run cannot be resumed, start a new one")
    if manifest.get("job") != job.name:
        raise ResultsError(f"{run_dir} is a run of job {manifest.get('job')!r}, not {job.name!r}")
    changes = plan_changes(manifest.get("plan", {}), plan_summary(job))
    if changes and not force:
        raise ResultsError(f"{job.path}: the plan changed since run {manifest.get('run_id')} "
                           f"({'; '.join(changes)}): resume with --force to go on anyway")
    previous = Previous(run_dir, manifest)
    latest: dict[str, tuple[str, str | None]] = {}
    rows_spent = 0.0
    columns = ["request_id", "status", "error_type", "cost_usd", "estimated_cost_usd"]
    sources = scan(run_dir, columns, consequence="its requests will be sent again",
                   on_bad=quarantine)
    top = shard_root(run_dir)
    merged = top / REQUESTS if top is not None else None
    if merged is not None and merged.is_file():  # a shard's rows merged into the run before
        sources.insert(0, (merged, read_rows(merged, columns,
                                             consequence="its requests will be sent again")))
    # without a journal, spend comes from rows: a run of that age kept every part (each attempt
    # row), its requests.parquet only the last row of each request
    has_parts = any(path.name != REQUESTS for path, _ in sources)
    for path, table in sources:
        if table is None:
            continue
        count = not has_parts or path.name != REQUESTS
        ids, statuses, kinds, costs, estimates = (table.column(c).to_pylist() for c in columns)
        for rid, status, kind, cost, estimate in zip(ids, statuses, kinds, costs, estimates,
                                                     strict=True):
            latest[rid] = (status, kind)
            # as in the budget: a sent request of unknown cost counts at its worst case
            if not count:
                continue
            if cost is not None:
                rows_spent += cost
            elif status != SKIPPED:
                rows_spent += estimate or 0.0
    spent = read_spent(run_dir)
    if spent is None:  # a run from before the journal: its rows are all we know
        previous.spent_usd = rows_spent
    else:
        previous.spent_usd, previous.journal_sessions = spent.usd, spent.sessions
        previous.journal_raised = spent.raised
    for rid, (status, kind) in latest.items():
        if status == OK:
            previous.ok.add(rid)
        elif status != SKIPPED and kind != INTERRUPTED:
            previous.errored.add(rid)
    return previous
