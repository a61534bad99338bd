"""The run manifest: run facts in, `run.json` out (written at start, rewritten at the end).

It holds the job snapshot (env var *names*, never key values; header values that look like
credentials are masked), library versions, limits, counts by status, totals and budget figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .collect import versions
from .config import Job, Limits
from .redact import MASK, Redactor, is_secret_name, job_redactor
from .rundir import RUN_JSON, write_json


def _masked(obj: Any, redact: Redactor, key: str = "") -> Any:
    if isinstance(obj, Mapping):
        return {k: _masked(v, redact, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_masked(v, redact, key) for v in obj]
    if isinstance(obj, str):
        return MASK if is_secret_name(key) else redact(obj)
    return obj


class Manifest:
    __slots__ = ("path", "_base")

    def __init__(self, run_dir: Path, job: Job, run_id: str, *, plan_size: int,
                 limits: Limits, plan: dict[str, Any], previous: Any = None) -> None:
        self.path = run_dir / RUN_JSON
        redact = job_redactor(job)
        started = previous.manifest.get("started_at") if previous is not None else None
        resumes = (previous.manifest.get("resumes", []) + [datetime.now(UTC).isoformat()]
                   if previous is not None else [])
        self._base: dict[str, Any] = {
            "run_id": run_id,
            "job": job.name,
            "job_file": str(job.path),
            "description": redact(job.description),
            "started_at": started or datetime.now(UTC).isoformat(),
            "resumes": resumes,
            "planned_requests": plan_size,
            "plan": plan,
            "limits": asdict(limits),
            "versions": versions(),
            # credential-named fields masked, and any key or URL password found elsewhere
            "job_snapshot": _masked(dict(job.snapshot), redact),
        }

    def write(self, status: str, **facts: Any) -> dict[str, Any]:
        """Write run.json with `status` and the given facts; return what was written."""
        body = {**self._base, "status": status, **facts}
        if status != "running":
            body["ended_at"] = datetime.now(UTC).isoformat()
        write_json(self.path, body)
        return body
