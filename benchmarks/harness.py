"""What every benchmark shares: servers started as their own processes, core pinning with
`taskset`, job files written for a run, percentiles and the printed tables.

Not a benchmark itself; the `bench_*.py` scripts import it (they run from this directory).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
_SCRIPT = Path(PYTHON).with_name("runner")   # the console script next to this interpreter
RUNNER = [str(_SCRIPT)] if _SCRIPT.exists() else [PYTHON, "-m", "runner"]


def cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pinned(cmd: Sequence[str], core: int) -> list[str]:
    """`cmd` pinned to one core with taskset (unchanged without taskset or with one core)."""
    if shutil.which("taskset") is None or cores() < 2:
        return list(cmd)
    return ["taskset", "-c", str(core), *cmd]


# The client (the process measured) gets core 0, the server it talks to core 1.
CLIENT_CORE, SERVER_CORE = 0, 1


def pinning_note() -> str:
    if shutil.which("taskset") is None or cores() < 2:
        return "not pinned (no taskset or one core)"
    return f"client pinned to core {CLIENT_CORE}, server to core {SERVER_CORE} (taskset)"


@contextlib.contextmanager
def server(cmd: Sequence[str], ready: str = r"(?:listening |127\.0\.0\.1:)(\d+)") -> Iterator[int]:
    """Start a server process pinned to the server core; yield its port once it says so."""
    proc = subprocess.Popen(pinned(cmd, SERVER_CORE), stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(ready, line)
        if match is None:
            raise RuntimeError(f"server {cmd!r} did not start: {line!r}")
        yield int(match.group(1))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def canned_server() -> contextlib.AbstractContextManager[int]:
    return server([PYTHON, str(HERE / "canned_server.py"), "--port", "0"])


def simulator(*flags: str) -> contextlib.AbstractContextManager[int]:
    """`runner simulate` as its own process on a free port, with extra flags."""
    return server([PYTHON, "-m", "runner", "simulate", "--port", "0", *flags])


def write_job(path: Path, *, port: int, model: str, prompt: str, repeats: int,
              limits: str, max_tokens: int, out: Path, stream: bool = True) -> Path:
    """A job file for one model on a custom OpenRouter-dialect provider at 127.0.0.1:port."""
    path.write_text(textwrap.dedent(f"""\
        name: bench
        provider: local
        providers:
          local: {{base_url: "http://127.0.0.1:{port}/api/v1", openrouter: true}}
        models: [{model}]
        prompts: [{prompt!r}]
        params: {{max_tokens: {max_tokens}, stream: {str(stream).lower()}}}
        repeats: {repeats}
        limits: {limits}
        output: {{dir: "{out}"}}
    """))
    return path


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table (pastes straight into the README)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        digits = 2 if abs(value) < 100 else 0
        return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: never "-0.00"
    return str(value)


def machine() -> str:
    """One line on where the numbers came from."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cores()} cores, {model}, Python {sys.version.split()[0]}"
