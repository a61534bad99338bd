"""Quality gates for nightly runs: a finished run and thresholds in, the reasons a threshold was
broken out (an empty list: the run passes). Used by `runner run --fail-under/--baseline`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .compare import Thresholds, compare, regressions
from .errors import ResultsError
from .results import read_results
from .rundir import latest_run, run_dirs, run_label


@dataclass(frozen=True, slots=True)
class Gate:
    fail_under: float | None = None       # minimum pass rate, 0..1
    baseline: str | None = None           # a run directory, or "previous"
    thresholds: Thresholds | None = None  # how much worse than the baseline is allowed
    allow_cache: bool = False             # accept rows answered from the response cache


def baseline_dir(run_dir: Path, baseline: str) -> Path | None:
    """The run to compare with: `previous` is the job's run before `run_dir` (None if none)."""
    if baseline == "previous":
        runs = [r.resolve() for r in run_dirs(run_dir.parent)]
        here = runs.index(run_dir.resolve()) if run_dir.resolve() in runs else len(runs)
        return runs[here - 1] if here > 0 else None
    path = Path(baseline)
    if not run_dirs(path):
        raise ResultsError(f"--baseline {baseline}: no run found there")
    return latest_run(path)


def broken(run_dir: Path, gate: Gate) -> tuple[list[str], list[str]]:
    """(reasons a threshold is broken, notes) for a finished run."""
    reasons: list[str] = []
    notes: list[str] = []
    if gate.fail_under is None and gate.baseline is None:
        return reasons, notes  # nothing to check: do not read the rows at all
    current = read_results(run_dir)
    cached = int(current["cache_hit"].fillna(False).astype(bool).sum()) \
        if "cache_hit" in current else 0
    if cached and not gate.allow_cache:  # a cached answer measured nothing today
        reasons.append(f"{cached} rows were answered from the response cache: a gate needs "
                       "answers sent today (run without --cache, or pass --allow-cache)")
    if gate.fail_under is not None:
        graded = current["passed"].dropna()
        if graded.empty:
            reasons.append("--fail-under: no row was graded (no checks applied, or every "
                           "check was left not graded: see checks.parquet)")
        else:
            if "checks_json" in current:  # not graded rows are left out of the rate: say so
                ungraded = int((current["checks_json"].notna() & current["passed"].isna()).sum())
                if ungraded:
                    notes.append(f"{ungraded} checked row(s) were not graded (a judge refused "
                                 "or failed) and are not in the pass rate")
            rate = float(graded.astype(bool).mean())
            if rate < gate.fail_under:
                reasons.append(f"pass rate {rate:.1%} is under --fail-under "
                               f"{gate.fail_under:.1%} ({int((~graded.astype(bool)).sum())} "
                               f"of {len(graded)} graded rows failed)")
    if gate.baseline is not None:
        base = baseline_dir(run_dir, gate.baseline)
        if base is None:
            notes.append("no previous run to compare with: regressions not checked")
        else:
            table = compare(read_results(base), current, gate.thresholds)
            notes.append(f"compared with {run_label(base)}")
            reasons.extend(regressions(table))
    return reasons, notes
