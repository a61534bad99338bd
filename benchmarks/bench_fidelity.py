"""Fidelity: does the runner report the TTFT and TPOT the server really produced?

    .venv/bin/python benchmarks/bench_fidelity.py [--levels 1 16 64 128] [--per-slot 16]

The simulator runs as its own process (`runner simulate --ttft-s 0.1 --tokens-per-s 100`, pinned
to core 1) and streams 64 tokens per reply (`max_tokens: 64` on a prompt whose natural reply is
longer; the tokens actually received are reported). At each in-flight count the runner
(`runner.run_job`, streaming, collector on) and a bare aiohttp client that takes its own
timestamps run the same requests, one after the other, each in a fresh process pinned to core 0.
The simulator is restarted for every run, so both see the same per-arrival TTFT jitter
(sim/fast-mini draws +-10 ms around the injected TTFT).

Both measure the same way: TTFT from just before the POST to the read that brought the first
token; TPOT = (latency - TTFT) / (tokens - 1), latency taken when the stream is finished. With
this definition the server's own TPOT is 640 ms / 63 = 10.16 ms (the finish chunk is due one
token after the last one). A server under load adds delay of its own; the bare client shows
how much, so the runner is judged by its difference to the bare client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path

import harness

MODEL = "sim/fast-mini"
TOKENS = 64
TTFT_S, TOKENS_PER_S = 0.1, 100.0


def prompt() -> str:
    """A prompt whose natural reply is at least TOKENS long, so max_tokens caps every reply."""
    from runner.simulator.text import generate

    for i in range(1000):
        text = f"Describe benchmark number {i} in detail."
        reply = generate(sim_seed=0, model_id=MODEL, messages=[{"role": "user", "content": text}],
                         request_seed=None, reasoning=False, cap_tokens=None)
        if len(reply.content) >= TOKENS:
            return text
    raise RuntimeError("no prompt with a long enough reply")


async def _bare(port: int, n: int, inflight: int, text: str) -> list[tuple[float, float, int]]:
    import aiohttp
    import orjson

    url = f"http://127.0.0.1:{port}/api/v1/chat/completions"
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}],
                         "max_tokens": TOKENS, "stream": True,
                         "stream_options": {"include_usage": True}})
    rows: list[tuple[float, float, int]] = []
    todo = iter(range(n + inflight))
    connector = aiohttp.TCPConnector(limit=inflight)
    headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            for i in todo:
                ttft = None
                tokens = 0
                t0 = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    async for line in resp.content:
                        if not line.startswith(b"data:") or line.startswith(b"data: [DONE]"):
                            continue
                        chunk = orjson.loads(line[5:])
                        delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
                        if ttft is None and delta.get("content"):
                            ttft = time.perf_counter() - t0
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
                latency = time.perf_counter() - t0
                assert ttft is not None
                if i >= inflight:  # the first round warms connections and the server up
                    rows.append((ttft, (latency - ttft) / (tokens - 1), tokens))

        await asyncio.gather(*(worker() for _ in range(inflight)))
    return rows


def _runner(port: int, n: int, inflight: int, text: str) -> list[tuple[float, float, int]]:
    import anyio
    import pyarrow.parquet as pq

    import runner

    with tempfile.TemporaryDirectory() as tmp:
        job = runner.load_job(harness.write_job(
            Path(tmp) / "job.yaml", port=port, model=MODEL, prompt=text, repeats=n + inflight,
            limits=f"{{concurrency: {inflight}, retries: 0}}", max_tokens=TOKENS,
            out=Path(tmp) / "results"))
        outcome = anyio.run(lambda: runner.run_job(job))
        table = pq.read_table(outcome.run_dir / "requests.parquet",
                              columns=["index", "status", "ttft_s", "tpot_s",
                                       "completion_tokens"])
    # the first round (by plan index, i.e. sending order) warms connections and the server up
    rows = [r for r in table.to_pylist() if r["status"] == "ok" and r["index"] >= inflight]
    if len(rows) != n:
        raise SystemExit(f"runner: only {len(rows)} of {n} requests ok")
    return [(r["ttft_s"], r["tpot_s"], r["completion_tokens"]) for r in rows]


def measure(path: str, n: int, inflight: int, text: str) -> list[tuple[float, float, int]]:
    """Run one client path in a fresh pinned process against a fresh simulator."""
    with harness.simulator("--ttft-s", str(TTFT_S), "--tokens-per-s", str(TOKENS_PER_S)) as port:
        cmd = [harness.PYTHON, __file__, "--worker", path, "--port", str(port),
               "--n", str(n), "--inflight", str(inflight), "--prompt", text]
        out = subprocess.run(harness.pinned(cmd, harness.CLIENT_CORE), capture_output=True,
                             text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{path} failed:\n{out.stderr[-2000:]}")
    rows: list[tuple[float, float, int]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument("--per-slot", type=int, default=16, help="requests per in-flight slot")
    parser.add_argument("--min-requests", type=int, default=30, help="at least this many")
    parser.add_argument("--worker", choices=("bare", "runner"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--inflight", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prompt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "bare":
        print(json.dumps(asyncio.run(_bare(args.port, args.n, args.inflight, args.prompt))))
        return
    if args.worker == "runner":
        print(json.dumps(_runner(args.port, args.n, args.inflight, args.prompt)))
        return
    text = prompt()
    ms = 1000.0
    rows: dict[str, list[list[float]]] = {"TTFT": [], "TPOT": []}
    tokens: set[int] = set()
    for k in args.levels:
        n = max(args.min_requests, args.per_slot * k)
        bare, run = measure("bare", n, k, text), measure("runner", n, k, text)
        tokens |= {t for _, _, t in bare + run}
        for metric, col, injected in (("TTFT", 0, TTFT_S), ("TPOT", 1, 1 / TOKENS_PER_S)):
            b = [row[col] for row in bare]
            r = [row[col] for row in run]
            b50, b99 = harness.percentile(b, 50), harness.percentile(b, 99)
            r50, r99 = harness.percentile(r, 50), harness.percentile(r, 99)
            rows[metric].append([k, n, injected * ms, b50 * ms, r50 * ms, (r50 - b50) * ms,
                                 b99 * ms, r99 * ms, (r99 - b99) * ms])
    print(f"## Fidelity: simulator in its own process, injected TTFT {TTFT_S * ms:.0f} ms and "
          f"{1 / TOKENS_PER_S * ms:.0f} ms/token, max_tokens {TOKENS} ({harness.pinning_note()})")
    print(f"machine: {harness.machine()}; tokens per reply measured: "
          f"{', '.join(map(str, sorted(tokens)))}")
    headers = ["in flight", "requests", "injected", "bare p50", "runner p50", "diff p50",
               "bare p99", "runner p99", "diff p99"]
    for metric, table in rows.items():
        print(f"\n{metric} (ms)\n")
        print(harness.table(headers, [[int(row[0]), int(row[1]), *row[2:]] for row in table]))
    over = [int(row[0]) for row in rows["TTFT"] + rows["TPOT"] if abs(row[5]) > 5]
    print(f"\n|p50 difference| passes 5 ms at: "
          f"{min(over) if over else f'never (up to {max(args.levels)})'} in flight")
    at64 = [row for row in rows["TTFT"] + rows["TPOT"] if row[0] == 64]
    if at64:
        p50 = max(abs(row[5]) for row in at64)
        p99 = max(abs(row[8]) for row in at64)
        verdict = "met" if p50 < 2 and p99 < 10 else "NOT met"
        print(f"target at 64 in flight (|p50 diff| < 2 ms, |p99 diff| < 10 ms): {verdict} "
              f"(worst of TTFT/TPOT: p50 {p50:.2f} ms, p99 {p99:.2f} ms)")


if __name__ == "__main__":
    main()
