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
from .rundir import RUN_JSON, write_json

_SECRET_HINTS = ("auth", "key", "token", "secret", "cookie", "password")


def _masked(obj: Any, key: str = "") -> Any:
    if isinstance(obj, Mapping):
        return {k: _masked(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_masked(v, key) for v in obj]
    if isinstance(obj, str) and any(h in key.lower() for h in _SECRET_HINTS) \
            and not key.lower().endswith("_env"):
        return "***"
    return obj


class Manifest:
    __slots__ = ("path", "_base")

    def __init__(self, run_dir: Path, job: Job, run_id: str, *, plan_size: int,
                 limits: Limits, plan: dict[str, Any], previous: Any = None) -> None:
        self.path = run_dir / RUN_JSON
        started = previous.manifest.get("started_at") if previous is not None else None
        resumes = (previous.manifest.get("resumes", []) + [datetime.now(UTC).isoformat()]
                   if previous is not None else [])
        self._base: dict[str, Any] = {
            "run_id": run_id,
            "job": job.name,
            "job_file": str(job.path),
            "description": job.description,
            "started_at": started or datetime.now(UTC).isoformat(),
            "resumes": resumes,
            "planned_requests": plan_size,
            "plan": plan,
            "limits": asdict(limits),
            "versions": versions(),
            "job_snapshot": _masked(dict(job.snapshot)),
        }

    def write(self, status: str, **facts: Any) -> dict[str, Any]:
        """Write run.json with `status` and the given facts; return what was written."""
        body = {**self._base, "status": status, **facts}
        if status != "running":
            body["ended_at"] = datetime.now(UTC).isoformat()
        write_json(self.path, body)
        return body
