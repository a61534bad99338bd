"""Whole process: wall time of `runner run --quiet` beside a bare aiohttp loop, interpreter start
included, for small and large jobs; and beside promptfoo when it is installed.

    .venv/bin/python benchmarks/bench_wholeprocess.py [--sizes 1 8000 32000] [--rounds 3]
    .venv/bin/python benchmarks/bench_wholeprocess.py --quick      # 1 and 2,000 requests, once

A user times the whole command, and most jobs are small, so this measures what the throughput
benchmark leaves out: imports, set-up, the final files. Each job is a fresh process pinned to
core 0 (`taskset`), the canned server (`canned_server.py`) runs on core 1; 32 in flight,
streamed (10 SSE events per answer). Paths, run one after the other, `--rounds` times
interleaved; the table shows the best round (interference only ever slows a round down) and the
median, and the ratio of each (on a shared machine the median says how stable the best is):

  runner   `runner run job.yaml --quiet`: load and check the job, read /models, send every
           request, write requests.parquet, requests.csv, summary.csv and run.json
  bare     `python -c` with an aiohttp loop: POST, readline() the SSE lines, orjson each event;
           nothing written

For the 1-request job the server notes when the request arrived, which gives the time to first
request (from the moment the process was spawned). The processes may write bytecode caches
(`PYTHONDONTWRITEBYTECODE` is dropped) and each path runs once untimed first, as an installed
runner would find its `.pyc` files.

promptfoo (`node_modules/.bin/promptfoo` in the repository or a temp dir given by
`--promptfoo`, or `promptfoo` on PATH; `npm install promptfoo` to get it) runs 2,000 requests
non-streamed against the same server, beside the runner on the same job (`--no-cache`, 32 in
flight, results written to a JSON file). Without promptfoo that part is skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import harness
from canned_server import CannedProtocol, serve

MODEL = "canned/model"
PROMPT = "Say something short."
MAX_TOKENS = 16
CONCURRENCY = 32
PROMPTFOO_REQUESTS = 2000
TARGET_ONE_S = 1.0          # a 1-request run, whole process
TARGET_FIRST_S = 0.5        # spawn to first request
TARGET_RATIO = 0.8          # runner / bare (as throughput: bare time over runner time), 8,000
TARGET_PROMPTFOO = 10.0     # promptfoo time over runner time, 2,000 non-streamed

# the bare loop, as a whole program (bench_throughput's `bare` path): argv = url, n, concurrency
BARE = textwrap.dedent("""\
    import asyncio, sys
    import aiohttp, orjson

    async def main(url, n, concurrency):
        body = orjson.dumps({"model": "%(model)s", "messages": [{"role": "user",
                             "content": "%(prompt)s"}], "max_tokens": %(max_tokens)d,
                             "stream": True, "stream_options": {"include_usage": True}})
        headers = {"Authorization": "Bearer EMPTY", "Content-Type": "application/json"}
        todo = iter(range(n))
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            async def worker():
                for _ in todo:
                    async with session.post(url + "/chat/completions", data=body) as resp:
                        done = False
                        while not done and (line := await resp.content.readline()):
                            if line.startswith(b"data:"):
                                payload = line[5:].strip()
                                if payload == b"[DONE]":
                                    done = True
                                else:
                                    orjson.loads(payload)
            await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
""") % {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS}


class StampingProtocol(CannedProtocol):
    """The canned server, appending the time each completion was answered to a file."""

    stamps: Path | None = None

    def answered(self, streamed: bool) -> None:
        if self.stamps is not None:
            with self.stamps.open("a") as f:
                f.write(f"{time.time()!r}\n")


def serve_stamping(port: int, stamps: Path) -> None:
    StampingProtocol.stamps = stamps
    asyncio.run(serve("127.0.0.1", port, StampingProtocol))


def timed(cmd: list[str], stamps: Path | None = None, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[float, float | None]:
    """(wall seconds of `cmd` as a fresh pinned process, seconds from spawn to the first
    request the stamping server saw, or None)."""
    if stamps is not None:
        stamps.unlink(missing_ok=True)
    spawned = time.time()
    t0 = time.perf_counter()
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run(harness.pinned(cmd, harness.CLIENT_CORE), capture_output=True,
                         text=True, check=False, env=env, cwd=cwd or harness.ROOT)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    first = None
    if stamps is not None and stamps.exists():
        lines = stamps.read_text().split()
        first = float(lines[0]) - spawned if lines else None
    return wall, first


def runner_cmd(tmp: Path, port: int, n: int, *, stream: bool = True) -> list[str]:
    """`runner run --quiet` on a job of `n` requests (run from the checkout it is timed in)."""
    job = harness.write_job(tmp / f"job-{port}-{n}-{stream}.yaml", port=port, model=MODEL,
                            prompt=PROMPT, repeats=n,
                            limits=f"{{concurrency: {CONCURRENCY}, retries: 0}}",
                            max_tokens=MAX_TOKENS, out=tmp / "results", stream=stream)
    # `python -m runner` from the repository root: this checkout's runner, whichever one the
    # console script was installed from
    return [harness.PYTHON, "-m", "runner", "run", str(job), "--quiet"]


def bare_cmd(port: int, n: int) -> list[str]:
    return [harness.PYTHON, "-c", BARE, f"http://127.0.0.1:{port}/api/v1", str(n),
            str(CONCURRENCY)]


def find_promptfoo(given: str | None) -> list[str] | None:
    places = [Path(given)] if given else []
    places += [harness.ROOT / "node_modules" / ".bin" / "promptfoo"]
    for place in places:
        exe = place / "node_modules" / ".bin" / "promptfoo" if place.is_dir() else place
        if exe.is_file():
            return [str(exe)]
    on_path = shutil.which("promptfoo")
    return [on_path] if on_path else None


def promptfoo_version(exe: list[str]) -> str:
    out = subprocess.run([*exe, "--version"], capture_output=True, text=True, check=False,
                         env=_quiet_node_env())
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "unknown"


def _quiet_node_env() -> dict[str, str]:
    return {**os.environ, "PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1",
            "PROMPTFOO_DISABLE_SHARING": "1", "NO_COLOR": "1"}


def promptfoo_cmd(exe: list[str], tmp: Path, port: int, n: int) -> tuple[list[str], Path]:
    """A promptfoo eval of `n` non-streamed requests (one test, repeated) and its folder."""
    where = tmp / "promptfoo"
    where.mkdir(exist_ok=True)
    (where / "promptfooconfig.yaml").write_text(textwrap.dedent(f"""\
        description: bench
        prompts: [{PROMPT!r}]
        providers:
          - id: openai:chat:{MODEL}
            config:
              apiBaseUrl: http://127.0.0.1:{port}/api/v1
              apiKey: EMPTY
              max_tokens: {MAX_TOKENS}
        tests:
          - vars: {{}}
    """))
    cmd = [*exe, "eval", "-c", str(where / "promptfooconfig.yaml"), "--no-cache",
           "--repeat", str(n), "-j", str(CONCURRENCY), "--no-progress-bar", "--no-table",
           "-o", str(where / "results.json")]
    return cmd, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8000, 32000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 and 2,000 requests, one round")
    parser.add_argument("--promptfoo", help="promptfoo executable, or a folder holding "
                        "node_modules/.bin/promptfoo")
    parser.add_argument("--no-promptfoo", action="store_true", help="skip the promptfoo part")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="also time the runner of another checkout (e.g. `git archive` of "
                        "an older commit), interleaved, as `runner (before)`")
    parser.add_argument("--serve-stamps", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stamps is not None:
        serve_stamping(0, args.serve_stamps)
        return
    sizes, rounds = ([1, 2000], 1) if args.quick else (args.sizes, args.rounds)
    promptfoo = None if args.no_promptfoo else find_promptfoo(args.promptfoo)
    walls: dict[tuple[str, int], list[float]] = {}
    first: dict[str, list[float]] = {}
    paths = {"runner": harness.ROOT, "bare": harness.ROOT}
    if args.before is not None:
        paths["runner (before)"] = args.before.resolve()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        stamps = tmp / "stamps.txt"
        stamping = harness.server([harness.PYTHON, __file__, "--serve-stamps", str(stamps)])
        with harness.canned_server() as port, stamping as stamp_port:
            for path, root in paths.items():  # untimed: bytecode caches, disk caches
                timed(bare_cmd(port, 1) if path == "bare" else runner_cmd(tmp, port, 1),
                      cwd=root)
            for _ in range(rounds):
                for n in sizes:
                    for path, root in paths.items():
                        on = stamp_port if n == 1 else port
                        cmd = bare_cmd(on, n) if path == "bare" else runner_cmd(tmp, on, n)
                        wall, to_first = timed(cmd, stamps if n == 1 else None, cwd=root)
                        walls.setdefault((path, n), []).append(wall)
                        if to_first is not None:
                            first.setdefault(path, []).append(to_first)
            pf: tuple[float, float, str] | None = None
            pf_error = None
            if promptfoo is not None:
                try:
                    pf = _promptfoo_round(promptfoo, tmp, port, rounds)
                except SystemExit as exc:  # its crash must not lose the tables measured above
                    pf_error = " ".join(str(exc).split())[:300]
    _print(sizes, rounds, walls, first, pf, pf_error, list(paths))


def _promptfoo_round(exe: list[str], tmp: Path, port: int, rounds: int,
                     ) -> tuple[float, float, str]:
    """(best promptfoo s, best runner s, promptfoo version) on the non-streamed 2,000."""
    pf_best = run_best = float("inf")
    cmd, where = promptfoo_cmd(exe, tmp, port, PROMPTFOO_REQUESTS)
    env = {**_quiet_node_env(), "PROMPTFOO_CONFIG_DIR": str(where / "home")}
    timed(cmd, env=env, cwd=where)  # untimed: its first run sets up its database
    for _ in range(rounds):
        pf_best = min(pf_best, timed(cmd, env=env, cwd=where)[0])
        run_best = min(run_best, timed(runner_cmd(tmp, port, PROMPTFOO_REQUESTS,
                                                  stream=False))[0])
    return pf_best, run_best, promptfoo_version(exe)


def _print(sizes: list[int], rounds: int, walls: dict[tuple[str, int], list[float]],
           firsts: dict[str, list[float]], pf: tuple[float, float, str] | None,
           pf_error: str | None, paths: list[str]) -> None:
    print(f"## Whole process: {CONCURRENCY} in flight, streamed, `--quiet`, canned loopback "
          f"server, best and median of {rounds} ({harness.pinning_note()})")
    print(f"machine: {harness.machine()}\n")
    best = {key: min(values) for key, values in walls.items()}
    median = {key: statistics.median(values) for key, values in walls.items()}
    first = {path: min(values) for path, values in firsts.items()}
    rows = []
    before = "runner (before)" in paths
    for n in sizes:
        run, bare = best[("runner", n)], best[("bare", n)]
        run_m, bare_m = median[("runner", n)], median[("bare", n)]
        rows.append([f"{n:,}", f"{run:.2f} / {run_m:.2f}", f"{bare:.2f} / {bare_m:.2f}",
                     f"{bare / run:.2f} / {bare_m / run_m:.2f}"]
                    + ([f"{best[('runner (before)', n)]:.2f} / "
                        f"{median[('runner (before)', n)]:.2f}"] if before else []))
    print(harness.table(["requests", "runner s (best / median)",
                         "bare aiohttp loop s (best / median)",
                         "ratio bare s / runner s (best / median)"]
                        + (["runner (before) s (best / median)"] if before else []), rows))
    if first:
        print("\ntime to first request (spawn to arrival at the server), 1-request job, best / "
              "median: " + ", ".join(f"{path} {s:.2f} / {statistics.median(firsts[path]):.2f} s"
                                     for path, s in first.items()))
    if 1 in sizes:
        one = best[("runner", 1)]
        print(f"target 1 request < {TARGET_ONE_S} s: {'met' if one < TARGET_ONE_S else 'NOT met'} "
              f"({one:.2f} s)")
        if "runner" in first:
            print(f"target first request < {TARGET_FIRST_S} s: "
                  f"{'met' if first['runner'] < TARGET_FIRST_S else 'NOT met'} "
                  f"({first['runner']:.2f} s)")
    if 8000 in sizes:
        ratio = best[("bare", 8000)] / best[("runner", 8000)]
        print(f"target 8,000 requests >= {TARGET_RATIO}x bare: "
              f"{'met' if ratio >= TARGET_RATIO else 'NOT met'} ({ratio:.2f}x)")
    print()
    if pf_error is not None:
        print(f"promptfoo: failed, comparison skipped: {pf_error}")
        return
    if pf is None:
        print("promptfoo: not installed (`npm install promptfoo` in the repository, or pass "
              "--promptfoo DIR), or --no-promptfoo: comparison skipped")
        return
    pf_s, run_s, version = pf
    print(f"## promptfoo {version}: {PROMPTFOO_REQUESTS:,} requests, non-streamed, same server, "
          f"{CONCURRENCY} in flight, whole process, best of {rounds}\n")
    print(harness.table(["tool", "s", "ratio to runner"],
                        [["runner run --quiet", f"{run_s:.2f}", 1.0],
                         ["promptfoo eval --no-cache", f"{pf_s:.2f}", pf_s / run_s]]))
    print(f"target runner >= {TARGET_PROMPTFOO:.0f}x faster than promptfoo: "
          f"{'met' if pf_s / run_s >= TARGET_PROMPTFOO else 'NOT met'} ({pf_s / run_s:.1f}x)")


if __name__ == "__main__":
    sys.exit(main())
