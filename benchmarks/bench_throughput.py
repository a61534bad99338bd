"""Throughput: requests per second of the runner and other client paths, one canned SSE server.

    .venv/bin/python benchmarks/bench_throughput.py [--requests 20000] [--rounds 2]

The server (`canned_server.py`: a 10-event OpenRouter-shaped stream per request) runs as its
own process on core 1; each client path runs in a fresh process pinned to core 0 (`taskset`),
one after the other, 32 in flight, so every path has the same core to itself:

  bare         an aiohttp loop: POST, read the SSE lines with readline(), orjson each event
  bare blocks  the same, reading whole blocks (readany) and splitting lines itself
  runner       `runner.run_job` on a streaming job (collector on: rows go to Parquet)
  sdk          the openai SDK the default way: `chat.completions.create(stream=True)`, iterating
               typed chunks over its default transport

A rate is the requests completed after a warm-up (the first tenth: connections, lazy imports)
over the time from the end of the warm-up to the last completion; the runner's set-up and final
files fall outside that window and get their own line. Each path runs `--rounds` times,
interleaved, and keeps its best round (interference only ever slows a round down). The SDK
gets a tenth of the requests (it is ~10x slower), so the whole script stays under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

MODEL = "canned/model"
PROMPT = "Say something short."
MAX_TOKENS = 16


def _rate(done_at: list[float], t_start: float) -> dict[str, Any]:
    """Requests/s after the warm-up (the first tenth of completions)."""
    done_at.sort()
    warm = max(1, len(done_at) // 10)
    window = done_at[-1] - done_at[warm - 1]
    return {"n": len(done_at), "rate": (len(done_at) - warm) / window,
            "total_s": done_at[-1] - t_start}


async def _bare(url: str, n: int, concurrency: int, blocks: bool) -> dict[str, Any]:
    """POST, read the SSE lines (readline, or whole blocks split on newlines), decode each."""
    import aiohttp
    import orjson

    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
                         "max_tokens": MAX_TOKENS, "stream": True,
                         "stream_options": {"include_usage": True}})
    headers = {"Authorization": "Bearer EMPTY", "Content-Type": "application/json"}
    done_at: list[float] = []
    todo = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            for _ in todo:
                async with session.post(url + "/chat/completions", data=body) as resp:
                    content, tail, done = resp.content, b"", False
                    while not done and (data := await (
                            content.readany() if blocks else content.readline())):
                        lines = (tail + data).split(b"\n")
                        tail = lines.pop()  # a line is complete only with its newline
                        for line in lines:
                            if line.startswith(b"data:"):
                                payload = line[5:].strip()
                                if payload == b"[DONE]":
                                    done = True
                                    break
                                orjson.loads(payload)
                done_at.append(time.perf_counter())

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _rate(done_at, t0)


async def _sdk(url: str, n: int, concurrency: int) -> dict[str, Any]:
    from openai import AsyncOpenAI

    done_at: list[float] = []
    todo = iter(range(n))
    async with AsyncOpenAI(api_key="EMPTY", base_url=url, max_retries=0) as client:

        async def worker() -> None:
            for _ in todo:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                    max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True})
                async for _chunk in stream:
                    pass
                done_at.append(time.perf_counter())

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _rate(done_at, t0)


def _runner(port: int, n: int, concurrency: int) -> dict[str, Any]:
    import anyio

    import runner

    class Clock:
        """A `Progress` that only notes when each request finished."""

        def __init__(self) -> None:
            self.done_at: list[float] = []
            self.started = self.stopped = 0.0

        def start(self, total: int) -> None:
            self.started = time.perf_counter()

        def advance(self, result: object, spent_usd: float) -> None:
            self.done_at.append(time.perf_counter())

        def stop(self) -> None:
            self.stopped = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        job = runner.load_job(harness.write_job(
            Path(tmp) / "job.yaml", port=port, model=MODEL, prompt=PROMPT, repeats=n,
            limits=f"{{concurrency: {concurrency}, retries: 0}}", max_tokens=MAX_TOKENS,
            out=Path(tmp) / "results"))
        clock = Clock()
        t0 = time.perf_counter()
        outcome = anyio.run(lambda: runner.run_job(job, progress=clock))
        t_end = time.perf_counter()
        ok = outcome.counts.get("ok", 0)
    if ok != n:
        raise SystemExit(f"runner: only {ok} of {n} requests ok ({outcome.counts})")
    stats = _rate(clock.done_at, clock.started)
    stats.update(whole_rate=n / (t_end - t0), setup_s=clock.started - t0,
                 finish_s=t_end - clock.stopped, health=outcome.manifest.get("client"))
    return stats


def worker_main(path: str, port: int, n: int, concurrency: int) -> None:
    """Run one path in this process and print its numbers as one JSON line."""
    url = f"http://127.0.0.1:{port}/api/v1"
    if path.startswith("bare"):
        stats = asyncio.run(_bare(url, n, concurrency, blocks=path == "bare-blocks"))
    elif path == "sdk":
        stats = asyncio.run(_sdk(url, n, concurrency))
    else:
        stats = _runner(port, n, concurrency)
    print(json.dumps(stats))


def measure(path: str, port: int, n: int, concurrency: int) -> dict[str, Any]:
    cmd = [harness.PYTHON, __file__, "--worker", path, "--port", str(port),
           "--requests", str(n), "--concurrency", str(concurrency)]
    out = subprocess.run(harness.pinned(cmd, harness.CLIENT_CORE), capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{path} failed:\n{out.stderr[-2000:]}")
    stats: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return stats


PATHS = {
    "bare": "bare aiohttp, readline + orjson per event",
    "bare-blocks": "bare aiohttp, block reads + orjson per event",
    "runner": "runner.run_job (streaming, collector on)",
    "sdk": "openai SDK create(stream=True), typed chunks",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=tuple(PATHS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.port, args.requests, args.concurrency)
        return
    n, c = args.requests, args.concurrency
    best: dict[str, dict[str, Any]] = {}
    with harness.canned_server() as port:
        for _ in range(args.rounds):
            for path in PATHS:
                stats = measure(path, port, max(2 * c, n // 10) if path == "sdk" else n, c)
                if path not in best or stats["rate"] > best[path]["rate"]:
                    best[path] = stats
    bare, blocks, run = best["bare"]["rate"], best["bare-blocks"]["rate"], best["runner"]
    rows = [[label, f"{best[path]['rate']:.0f}", best[path]["rate"] / bare,
             best[path]["rate"] / blocks, int(best[path]["n"])] for path, label in PATHS.items()]
    print(f"## Throughput: 10-event SSE stream, {c} in flight, canned server, best of "
          f"{args.rounds} ({harness.pinning_note()})")
    print(f"machine: {harness.machine()}\n")
    print(harness.table(["client path", "req/s", "ratio to bare", "ratio to bare blocks",
                         "requests"], rows))
    print(f"\nrunner whole run_job incl. set-up ({run['setup_s']:.2f} s) and final files "
          f"({run['finish_s']:.2f} s): {run['whole_rate']:.0f} req/s")
    if run.get("health"):
        print(f"runner's own health (run.json `client`): {json.dumps(run['health'])}")
    ratio = run["rate"] / bare
    print(f"target runner >= 0.80x bare: {'met' if ratio >= 0.8 else 'NOT met'} ({ratio:.2f}x; "
          f"{run['rate'] / blocks:.2f}x the block-reading bare loop)")


if __name__ == "__main__":
    main()
