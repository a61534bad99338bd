"""The command line: argv in, output and an exit code out (the only module that prints or exits).

Exit codes: 0 the run completed (failed requests are data), 1 a quality threshold was broken,
2 bad input (job file, flags, missing key, unusable endpoint), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import gc_policy
from .errors import ConfigError, RunnerError, first_runner_error

EXIT_OK, EXIT_THRESHOLD, EXIT_BAD_INPUT, EXIT_OVERSPENT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# the simulator's faults, each a `--NAME-rate` flag of `simulate` (as in simulator.FAULT_NAMES,
# which is not imported here: `runner --help` stays fast)
_FAULT_NAMES = ("rate_limit", "error", "hang", "disconnect", "stream_error", "error_body",
                "malformed", "echo_error", "echo_text", "odd_shape", "negative_cost", "overbill",
                "endless_stream", "gzip_bomb", "redirect", "json_to_stream", "long_retry_after")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"runner: error: {message}\n")


def _out(text: str) -> Path | str:
    """--out: a folder, or a filesystem URL (kept as text: a Path would fold its `//`)."""
    from .remote import check_url, is_url

    if not is_url(text):
        return Path(text)
    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {value})")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .compare import defaults_text

    parser = _Parser(prog="runner", description="Run prompts x models against LLM APIs and "
                     "collect one row per request (latency, TTFT, tokens, cost, status).")
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="show the runner's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a job file")
    run.add_argument("job", type=Path)
    run.add_argument("--out", type=_out, help="results root, a folder or (with --ray) a "
                     "filesystem URL such as s3://bucket/prefix (default: the job's output.dir)")
    run.add_argument("--concurrency", type=_positive_int, help="requests in flight")
    run.add_argument("--rpm", type=_positive_float, help="requests per minute, whole job")
    run.add_argument("--budget-usd", type=_positive_float, help="never spend more than this")
    run.add_argument("--refresh-prices", action="store_true",
                     help="fetch model prices anew instead of using the day-old cache")
    run.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                     help="continue a run in place (default: the latest run of the job)")
    run.add_argument("--retry-errors", action="store_true",
                     help="with --resume: send errored requests again")
    run.add_argument("--force", action="store_true",
                     help="with --resume: go on even if the job's plan changed")
    run.add_argument("--grace-s", type=_positive_float, default=10.0,
                     help="after Ctrl-C, seconds in-flight requests may take (default 10)")
    run.add_argument("--fail-under", type=_rate, metavar="RATE",
                     help="exit 1 when the pass rate of the checks is under RATE (0..1)")
    run.add_argument("--baseline", metavar="RUN_DIR|previous",
                     help="compare with this run (or the job's previous one); exit 1 on a "
                     "regression beyond --max-regression")
    run.add_argument("--max-regression", default="", metavar="SPEC",
                     help="with --baseline: e.g. latency=0.25,ttft=0.3,pass_rate=0.05 (relative "
                     "for latency/ttft/cost, points for error_rate/pass_rate; metrics not named "
                     f"keep the defaults: {defaults_text()})")
    run.add_argument("--junit", type=Path, metavar="PATH", help="write JUnit XML here")
    run.add_argument("--html", nargs="?", const="", metavar="PATH",
                     help="write the HTML report (default: report.html in the run directory)")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--batch", action="store_true",
                     help="send every model's requests through its provider's batch API "
                     "(cheaper, answers within 24 h; not OpenRouter)")
    run.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                     help="answer identical requests from the response cache (default: the "
                     "job's cache:, off)")
    run.add_argument("--allow-cache", action="store_true",
                     help="let --fail-under/--baseline judge a run that used the cache")
    run.add_argument("--shard", metavar="i/N",
                     help="run part i of N of the plan (N alone: i from JOB_COMPLETION_INDEX); "
                     "with --run-id, every shard writes into one run")
    run.add_argument("--run-id", metavar="ID", help="the new run's id (shards share one)")
    run.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="run on a Ray cluster (default: RAY_ADDRESS, or a local one); "
                     "needs pip install 'runner[ray]'")
    run.add_argument("--ray-workers", type=_positive_int, metavar="N",
                     help="with --ray: worker actors (default: one per node)")
    _load_flags(run)

    validate = sub.add_parser("validate", help="check a job file without sending anything")
    validate.add_argument("job", type=Path)

    plan = sub.add_parser("plan", help="show what a job would send")
    plan.add_argument("job", type=Path)
    plan.add_argument("--json", action="store_true", help="print a JSON object")
    plan.add_argument("--budget-usd", type=_positive_float, help="check against this budget")
    plan.add_argument("--refresh-prices", action="store_true", help="ignore the price cache")
    plan.add_argument("--show", type=_count, default=0, metavar="N",
                      help="also print the first N requests as they would be sent")
    plan.add_argument("--batch", action="store_true",
                      help="price every model at its provider's batch price (as run --batch)")

    sim = sub.add_parser("simulate", help="serve the OpenRouter-compatible simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8787)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--ttft-s", type=float, help="override every model's time to first token")
    sim.add_argument("--tokens-per-s", type=float, help="override every model's speed (0: max)")
    sim.add_argument("--all-faults", type=float, default=0.0, metavar="RATE",
                     help="every fault at this probability (the rates must sum to <= 1)")
    for name in _FAULT_NAMES:
        sim.add_argument(f"--{name.replace('_', '-')}-rate", type=float,
                         help="probability 0..1 (default: --all-faults)")
    sim.add_argument("--retry-after-s", type=float, default=1.0)
    sim.add_argument("--long-retry-after-s", type=float, default=86400.0,
                     help="Retry-After of the long_retry_after fault (default: a day)")
    sim.add_argument("--overbill-factor", type=float, default=100.0,
                     help="usage.cost of the overbill fault, times the price")
    sim.add_argument("--gzip-bomb-bytes", type=int, default=64 * 1024 * 1024,
                     help="inflated size of the gzip_bomb fault's error body")
    sim.add_argument("--capacity-concurrent", type=_positive_int, metavar="N",
                     help="generations at once; more requests queue (TTFT grows)")
    sim.add_argument("--capacity-tokens-per-s", type=_positive_float, metavar="TPS",
                     help="with --capacity-concurrent: output tokens/s the generations share")
    sim.add_argument("--request-log", type=Path, help="append one JSON line per request")
    sim.add_argument("--bill", type=Path, metavar="PATH",
                     help="append one JSON line per request as it ends: what it cost")

    sim.add_argument("--batch-delay-s", type=float, default=0.0,
                     help="seconds from a batch's creation to its results (default 0)")
    sim.add_argument("--batch-expire", action="store_true",
                     help="end every batch `expired`, half its lines answered")
    sim.add_argument("--batch-line-error-rate", type=float, default=0.0, metavar="RATE",
                     help="batch lines answered with an error (0..1)")
    sim.add_argument("--batch-log", type=Path, metavar="PATH",
                     help="append one JSON line per batch file upload and batch creation")

    batches = sub.add_parser("batches", help="the provider batches of a run (batch mode)")
    batches.add_argument("action", choices=["cancel"])
    batches.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    cache = sub.add_parser("cache", help="the response cache (--cache)")
    cache.add_argument("action", choices=["info", "clear"])

    models = sub.add_parser("models", help="list providers' models and prices")
    models.add_argument("--provider", help="openrouter or simulated, or a job's provider with "
                        "--job (default: every provider the job uses; without --job, simulated)")
    models.add_argument("--job", type=Path, help="job file: list its providers' catalogues")
    models.add_argument("--refresh-prices", action="store_true", help="ignore the price cache")

    report = sub.add_parser("report", help="per-model tables of a run, or of every run of a job")
    report.add_argument("results", type=Path, metavar="RUN_DIR",
                        help="a run directory, or a job directory (all its runs)")
    report.add_argument("--html", type=Path, metavar="PATH",
                        help="also write a self-contained HTML report here")
    report.add_argument("--junit", type=Path, metavar="PATH",
                        help="also write JUnit XML (one test case per prompt x model)")
    report.add_argument("--goodput", metavar="SLOS", help="load tests: judge goodput by these "
                        "SLOs instead of the run's (e.g. ttft=0.5,tpot=0.05,latency=10)")

    merge = sub.add_parser("merge", help="fold a sharded run's shards into its combined "
                           "requests.parquet and summary.csv")
    merge.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    compare = sub.add_parser("compare", help="per-model deltas of a run against a baseline run "
                             "(exit 1 on a regression)")
    compare.add_argument("baseline", type=Path, metavar="RUN_A",
                         help="the baseline: a run directory (a job directory: its latest run)")
    compare.add_argument("current", type=Path, metavar="RUN_B", nargs="?",
                         help="the run to judge (default: with RUN_A a job directory, its "
                         "latest run against the one before)")
    compare.add_argument("--max-regression", default="", metavar="METRIC=LIMIT,...",
                         help="latency, ttft, cost (relative: 0.2 = 20%%), error_rate, pass_rate "
                         "(points: 0.05), flips (prompt x row lines per model gone from pass "
                         "to fail), or off; metrics not named keep the defaults: "
                         f"{defaults_text()}; exit 1 when a limit is passed")
    return parser


def _load_flags(run: argparse.ArgumentParser) -> None:
    """`runner run` flags of a load test: one stage that replaces the job's `load:` (--load),
    or changes of its settings (the others alone)."""
    group = run.add_argument_group("load test (see README: Load tests)")
    group.add_argument("--load", metavar="MODE", choices=("constant", "poisson", "ramp",
                       "concurrency", "synchronous", "throughput", "sweep"),
                       help="send the plan as a load test: constant, poisson, ramp, "
                       "concurrency, synchronous, throughput or sweep")
    group.add_argument("--rate", type=_positive_float, metavar="RPS",
                       help="requests per second (constant, poisson; a ramp's start)")
    group.add_argument("--to-rate", type=_positive_float, metavar="RPS", help="a ramp's end")
    group.add_argument("--ramp", choices=("linear", "exponential"), help="a ramp's shape")
    group.add_argument("--burstiness", type=_positive_float,
                       help="gamma shape of the gaps (1: Poisson; lower: burstier)")
    group.add_argument("--load-concurrency", type=_positive_int, metavar="N",
                       help="mode concurrency: requests kept in flight")
    group.add_argument("--duration-s", type=_positive_float, help="seconds per stage")
    group.add_argument("--requests", type=_positive_int, metavar="N", help="requests per stage")
    group.add_argument("--warmup-s", type=float, metavar="S", help="not measured: the first S s")
    group.add_argument("--cooldown-s", type=float, metavar="S", help="not measured: the last S s")
    group.add_argument("--sweep-rates", type=_positive_int, metavar="K",
                       help="sweep: rate stages between synchronous and throughput")
    group.add_argument("--max-concurrency", type=_positive_int, metavar="N",
                       help="requests in flight at most (default 512)")
    group.add_argument("--goodput", metavar="SLOS",
                       help="SLOs of goodput, e.g. ttft=0.5,tpot=0.05,latency=10 (seconds)")


_LOAD_FLAGS = {"load": "mode", "rate": "rate_rps", "to_rate": "to_rate_rps", "ramp": "ramp",
               "burstiness": "burstiness", "load_concurrency": "concurrency",
               "duration_s": "duration_s", "requests": "requests", "warmup_s": "warmup_s",
               "cooldown_s": "cooldown_s", "sweep_rates": "rates",
               "max_concurrency": "max_concurrency"}


def _with_load_flags(args: argparse.Namespace, job: Any) -> Any:
    """The job with the load flags applied (validated as the job file's `load:` is)."""
    from .load_plan import with_flags

    given = {key: getattr(args, flag) for flag, key in _LOAD_FLAGS.items()
             if getattr(args, flag) is not None}
    flags = ", ".join(f"--{flag.replace('_', '-')}" for flag in _LOAD_FLAGS
                      if getattr(args, flag) is not None)
    return with_flags(job, given, args.goodput, flags)


def _version() -> str:
    from . import __version__

    return __version__


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked for (the package metadata costs a run ~0.05 s)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"runner {_version()}")
        parser.exit()


class _WarningLines(logging.Handler):
    """The library's warnings (`logging.getLogger("runner")`) as `runner: warning:` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"runner: warning: {record.getMessage()}", file=sys.stderr, flush=True)


def entry() -> int:
    """The `runner` command as a process of its own (the console script, `python -m runner`):
    `main` with the garbage collector set for a command's start, run and exit (`gc_policy`)."""
    gc_policy.start_up()
    try:
        return main()
    finally:
        gc_policy.at_exit()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `runner` command (in-process: `entry` is the command's)."""
    log = logging.getLogger("runner")
    if not any(isinstance(h, _WarningLines) for h in log.handlers):
        log.addHandler(_WarningLines(logging.WARNING))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # bad flags (2) or --help/--version (0): a code, not an exit
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        handler = {"run": _cmd_run, "validate": _cmd_validate, "plan": _cmd_plan,
                   "simulate": _cmd_simulate, "models": _cmd_models, "report": _cmd_report,
                   "compare": _cmd_compare, "batches": _cmd_batches,
                   "cache": _cmd_cache, "merge": _cmd_merge}[args.command]
        with warnings.catch_warnings():
            # ours (an unreadable result file, ...) are lines for the user, whatever the
            # interpreter's warning filters say
            warnings.filterwarnings("always", module=r"runner\.")
            warnings.showwarning = _show_warning
            return handler(args)
    except RunnerError as exc:
        print(f"runner: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BaseExceptionGroup as group:  # an error raised inside a task group
        leaf = first_runner_error(group)
        if leaf is None:
            raise
        print(f"runner: error: {leaf}", file=sys.stderr)
        return leaf.exit_code
    except KeyboardInterrupt:
        print("runner: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Our warnings (an unreadable result file, ...) as one line each, no source location."""
    print(f"runner: warning: {message}", file=sys.stderr)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
    return value


def _cmd_validate(args: argparse.Namespace) -> int:
    from .bad_rows import scan
    from .config import load_job
    from .errors import JobFileErrors
    from .plan import Plan
    from .redact import job_redactor

    try:
        job = load_job(args.job)
    except JobFileErrors as exc:  # every problem, one line each
        for error in exc.errors:
            print(f"runner: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    plan = Plan(job)
    load = ""
    if job.load is not None:  # the plan is what each stage's slots cycle through
        stages = sum(1 if not hasattr(step, "rates") else 2 + step.rates
                     for step in job.load.steps)
        load = f", sent as a load test of {stages} stage(s)"
    print(f"{args.job}: ok — {len(job.models)} models x {len(job.prompts)} prompts "
          f"-> {len(plan)} requests{load}")
    for line in scan(plan).lines(job_redactor(job)):  # dataset rows that would be bad_input
        print(line)
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    import anyio

    from .bad_rows import scan
    from .config import load_job
    from .estimate import estimate
    from .plan import Plan
    from .redact import job_redactor

    job = load_job(args.job)
    result = anyio.run(lambda: estimate(job, budget_usd=args.budget_usd,
                                        refresh_prices=args.refresh_prices, batch=args.batch))
    total_requests = sum(m.requests for m in result.models)
    plan = Plan(job)
    shown = plan[:args.show]
    bad_rows = scan(plan)  # dataset rows that would be bad_input rows
    load = None
    if job.load is not None:  # its stages, and its worst case from the plan's
        from .load_estimate import estimate_load

        load = estimate_load(job.load, plan, result.total_usd, result.budget_usd)
    if args.json:
        print(json.dumps({
            "job": job.name, "requests": total_requests, "repeats": job.repeats,
            "per_model": {m.label: m.requests for m in result.models},
            "worst_case_usd": {m.label: m.worst_case_usd for m in result.models},
            "judge_worst_case_usd": {m.label: m.worst_case_usd for m in result.judges},
            "worst_case_total_usd": result.total_usd, "budget_usd": result.budget_usd,
            "budget_covers": result.budget_covers, "notes": list(result.notes),
            "first_requests": [_request_json(r) for r in shown],
            **({"load": load.as_json()} if load is not None else {}),
            "bad_input_rows": bad_rows.as_json(job_redactor(job)),
        }, default=str))
        return EXIT_OK
    from .console import print_plan

    print_plan(job.name, result, shown, load_lines=load.lines() if load is not None else ())
    for line in bad_rows.lines(job_redactor(job)):
        print(line)
    return EXIT_OK


def _request_json(request: Any) -> dict[str, Any]:
    from .content import recorded_messages

    return {"index": request.index, "request_id": request.request_id,
            "model": request.model.label, "provider": request.model.provider,
            "prompt_id": request.prompt_id, "repeat": request.repeat,
            "vars": dict(request.vars), "params": dict(request.params),
            "messages": recorded_messages(request.messages),
            **({"turns": recorded_messages(request.turns)} if request.turns else {})}


def _cmd_run(args: argparse.Namespace) -> int:
    import anyio

    from .config import load_job
    from .console import RunProgress, print_summary
    from .engine import run_job

    job = _with_load_flags(args, load_job(args.job))
    progress = None if args.quiet else RunProgress()
    shard = _shard(args)

    async def go() -> Any:
        return await run_job(job, out_dir=args.out, concurrency=args.concurrency, rpm=args.rpm,
                             budget_usd=args.budget_usd, progress=progress,
                             refresh_prices=args.refresh_prices, resume=args.resume,
                             retry_errors=args.retry_errors, force=args.force,
                             handle_signals=True, grace_s=args.grace_s,
                             on_stopping=_say_stopping, batch=args.batch, cache=args.cache,
                             run_id=args.run_id, shard=shard, ray=args.ray,
                             ray_workers=args.ray_workers)

    if (args.retry_errors or args.force) and args.resume is None:
        raise ConfigError("--retry-errors and --force only apply with --resume")
    gate = _gate(args, job)
    outcome = anyio.run(go)
    print_summary(outcome)
    _say_cache(outcome.manifest.get("cache"), outcome.counts)
    if job.load is not None:
        _print_load(outcome)
    if outcome.status == "interrupted":
        again = f"--shard {args.shard} --run-id {outcome.run_id} --resume" if shard else \
            f"--resume {shlex.quote(str(outcome.url or outcome.run_dir))}" + (
                " --ray" if args.ray is not None else "")
        print(f"runner: interrupted; continue with: runner run {args.job} {again}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    code = _after_run(args, outcome, gate, shard is not None)
    budget = outcome.manifest.get("budget") or {}
    from .formatting import usd

    if budget.get("exceeded"):  # worse than a broken threshold: money was spent past the cap
        print(f"runner: budget exceeded: spent {usd(budget['spent_usd'])} of budget_usd "
              f"{usd(budget['budget_usd'])}: the provider billed more than the worst case "
              "(see cost_over_estimate in the rows)", file=sys.stderr)
        return EXIT_OVERSPENT
    return code


def _say_cache(stats: Any, counts: dict[str, int]) -> None:
    """One line on what the response cache did, when it was on."""
    if not isinstance(stats, dict):
        return
    hits, rows = int(stats.get("hits") or 0), sum(counts.values())
    sent = "no request was sent" if hits == rows else f"{rows - hits} requests went out"
    print(f"cache: {hits} of {rows} requests answered from the response cache ({sent}; "
          f"{stats.get('stored', 0)} answers stored in {stats.get('path')})")


def _cmd_batches(args: argparse.Namespace) -> int:
    """`runner batches cancel RUN_DIR`: cancel the run's batches still in flight."""
    import json
    from contextlib import AsyncExitStack

    import anyio

    from .batch import cancel_batches
    from .config import load_job
    from .errors import ResultsError
    from .providers import open_providers
    from .rundir import RUN_JSON

    try:
        manifest = json.loads((args.run_dir / RUN_JSON).read_text())
        job = load_job(manifest["job_file"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ResultsError(f"{args.run_dir}: not a run directory whose job file is still "
                           "there (run.json names it)") from None

    async def go() -> list[str]:
        async with AsyncExitStack() as stack:
            providers = await open_providers(stack, job, connections=4)
            return await cancel_batches(args.run_dir, str(manifest.get("run_id")),
                                        providers.endpoints)

    lines = anyio.run(go)
    for line in lines:
        print(line)
    if not lines:
        print(f"{args.run_dir}: no batch in flight")
    return EXIT_OK


def _cmd_cache(args: argparse.Namespace) -> int:
    """`runner cache info|clear`."""
    from .cache import FILE_NAME, ResponseCache, cache_dir, max_bytes
    from .formatting import whole

    store = ResponseCache(cache_dir() / FILE_NAME, max_bytes())
    try:
        if args.action == "clear":
            print(f"cache: {store.clear()} answers removed from {store.path}")
        else:
            info = store.info()
            print(f"cache: {info['path']}: {whole(info['answers'])} answers, "
                  f"{info['bytes'] / 1e6:.1f} MB of {info['max_bytes'] / 1e6:.0f} MB")
    finally:
        store.close()
    return EXIT_OK


def _print_load(outcome: Any) -> None:
    """A load run's per-stage table, its knee, and the stages it could not keep on time."""
    from .load_report import print_load_report
    from .results import read_results

    print_load_report(read_results(outcome.run_dir), facts=outcome.manifest.get("load"))


def _say_stopping(grace_s: float) -> None:
    print(f"runner: stopping: no new requests; waiting up to {grace_s:g} s for those in flight "
          "(Ctrl-C again to cancel them)", file=sys.stderr, flush=True)


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (got {text})")
    return value


def _gate(args: argparse.Namespace, job: Any) -> Any:
    """Check the quality-gate flags before anything is sent."""
    from .quality_gate import Gate

    if args.fail_under is not None and not job.checks:
        raise ConfigError(f"--fail-under: {args.job} has no checks (add checks: or expected:)")
    if args.max_regression and args.baseline is None:
        raise ConfigError("--max-regression only applies with --baseline")
    thresholds = _thresholds(args.max_regression) if args.baseline else None
    return Gate(args.fail_under, args.baseline, thresholds, allow_cache=args.allow_cache)


def _thresholds(text: str) -> Any:
    """`--max-regression` parsed (see `compare.parse_thresholds`)."""
    from .compare import parse_thresholds

    try:
        return parse_thresholds(text)
    except ValueError as exc:
        raise ConfigError(f"--max-regression: {exc}") from None


def _shard(args: argparse.Namespace) -> Any:
    """`--shard`/`--run-id` checked before anything is sent."""
    from .shards import check_run_id, parse_shard

    if args.ray_workers is not None and args.ray is None:
        raise ConfigError("--ray-workers only applies with --ray")
    if args.ray is not None and (args.shard is not None or args.run_id is not None):
        raise ConfigError("--ray runs the whole job as one run: drop --shard/--run-id")
    if args.ray is not None:
        from .ray_backend import require_ray

        require_ray()  # before anything is sent: a missing extra is one line
    if args.run_id is not None:
        check_run_id(args.run_id)
    if args.shard is None:
        return None
    shard = parse_shard(args.shard)
    if args.run_id is None and args.resume is None:
        raise ConfigError("--shard needs --run-id ID: every shard must write into the same run "
                          "(e.g. --run-id nightly-$(date +%F))")
    return shard


def _after_run(args: argparse.Namespace, outcome: Any, gate: Any, sharded: bool = False) -> int:
    """Reports and thresholds after a completed run: exit 1 when a threshold is broken."""
    from .quality_gate import broken

    if sharded:  # reports and gates are the whole run's, once its last shard has ended
        from .shards import whole_run

        whole = whole_run(outcome.run_dir)
        if whole is None:
            if args.junit is not None or args.html is not None or gate.fail_under is not None \
                    or gate.baseline is not None:
                print("reports and gates: left to the last shard to end (or run `runner merge` "
                      "and `runner report`)")
            return EXIT_OK
        outcome = _Merged(whole)
    if args.junit is not None or args.html is not None:
        from .results import read_results

        df = read_results(outcome.run_dir)
        if args.junit is not None:
            from .junit import write_junit

            print(f"junit: {write_junit(df, args.junit)}")
        if args.html is not None:
            from .html_report import write_html

            target = Path(args.html) if args.html else outcome.run_dir / "report.html"
            print(f"html report: {write_html(df, target)}")
    reasons, notes = broken(outcome.run_dir, gate)
    for note in notes:
        print(note)
    if reasons:
        print("runner: quality threshold broken:", file=sys.stderr)
        for reason in reasons:
            print(f"  - {reason}", file=sys.stderr)
        return EXIT_THRESHOLD
    return EXIT_OK


class _Merged:
    """A merged sharded run, where `_after_run` wants an outcome."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir


def _cmd_merge(args: argparse.Namespace) -> int:
    from .shards import merge

    body = merge(args.run_dir)
    counts = ", ".join(f"{n} {status}" for status, n in sorted((body.get("counts") or {}).items()))
    print(f"merged {args.run_dir}: {body.get('status')} ({counts or 'no rows'})")
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import dataclasses
    import signal

    from .simulator import DEFAULT_MODELS, Capacity, Faults, serve
    from .simulator.batches import BatchSettings

    rates = {f"{name}_rate": getattr(args, f"{name}_rate") for name in _FAULT_NAMES}
    try:
        faults = Faults(**{k: args.all_faults if v is None else v for k, v in rates.items()},
                        retry_after_s=args.retry_after_s,
                        long_retry_after_s=args.long_retry_after_s,
                        overbill_factor=args.overbill_factor,
                        gzip_bomb_bytes=args.gzip_bomb_bytes)
    except ValueError as exc:
        raise ConfigError(f"fault flags: {exc}") from None
    changes: dict[str, Any] = {"faults": faults}
    if args.ttft_s is not None:
        changes["ttft_s"] = args.ttft_s
    if args.tokens_per_s is not None:
        changes["tokens_per_s"] = args.tokens_per_s
    models = [dataclasses.replace(m, **changes) for m in DEFAULT_MODELS]
    if args.capacity_tokens_per_s is not None and args.capacity_concurrent is None:
        raise ConfigError("--capacity-tokens-per-s only applies with --capacity-concurrent")
    capacity = Capacity(args.capacity_concurrent, args.capacity_tokens_per_s) \
        if args.capacity_concurrent is not None else None

    def ready(port: int) -> None:
        print(f"simulator: OpenRouter dialect at http://{args.host}:{port}/api/v1, "
              f"OpenAI dialect at http://{args.host}:{port}/v1 (any bearer key; Ctrl-C stops)",
              flush=True)

    async def until_signal() -> None:
        # SIGTERM stops like Ctrl-C: in-flight requests are cut and billed before exit (one
        # plain asyncio cancel, so the server's own clean-up still runs)
        serving = asyncio.ensure_future(serve(
            models, host=args.host, port=args.port, seed=args.seed,
            request_log=args.request_log, on_ready=ready, bill=args.bill,
            batches=BatchSettings(args.batch_delay_s, args.batch_expire,
                                  args.batch_line_error_rate),
            batch_log=args.batch_log, capacity=capacity))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, serving.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serving

    gc_policy.before_run()  # the usual collector while it serves (its timings are measured)
    try:
        asyncio.run(until_signal())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise ConfigError(f"--port {args.port}: cannot listen ({exc.strerror})") from None
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    import anyio

    from .catalogue_listing import list_catalogues
    from .console import print_models

    catalogues = anyio.run(lambda: list_catalogues(args.job, args.provider,
                                                   args.refresh_prices))
    for catalogue in catalogues:
        if catalogue.missing is None:
            print_models(catalogue.provider, list(catalogue.models))
        else:
            print(f"{catalogue.provider}: no catalogue ({catalogue.missing})")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from .report_console import print_report
    from .results import read_results

    df = read_results(args.results)
    print_report(df)
    if "stage" in df.columns and df["stage"].notna().any():
        _report_load(args, df)
    if args.junit is not None:
        from .junit import write_junit

        print(f"junit: {write_junit(df, args.junit)}")
    if args.html is not None:
        from .html_report import write_html

        print(f"html report: {write_html(df, args.html)}")
    return EXIT_OK


def _report_load(args: argparse.Namespace, df: Any) -> None:
    """`runner report` of a load run: the stages, by the run's SLOs or --goodput's."""
    from .load_report import print_load_report, run_facts

    goodput = None
    if args.goodput is not None:
        from .load_plan import parse_goodput

        try:
            goodput = parse_goodput(args.goodput)
        except ValueError as exc:
            raise ConfigError(f"--goodput: {exc}") from None
    print_load_report(df, goodput, run_facts(args.results))


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, regressions
    from .errors import ResultsError
    from .report_console import print_comparison
    from .results import read_results
    from .rundir import latest_run, run_dirs, run_label

    thresholds = _thresholds(args.max_regression)
    if not args.baseline.is_dir():
        raise ResultsError(f"{args.baseline}: no such results folder")
    if args.current is None:
        runs = run_dirs(args.baseline)
        if len(runs) < 2:
            raise ConfigError(f"{args.baseline}: holds {len(runs)} run(s); give a job directory "
                              "with two or more runs, or two run directories")
        baseline, current = runs[-2], runs[-1]
    else:
        baseline, current = latest_run(args.baseline), latest_run(args.current)
    before, after = read_results(baseline), read_results(current)
    table = compare(before, after, thresholds)
    found = regressions(table)
    print_comparison(table, found, run_label(baseline), run_label(current))
    from .compare import flips
    from .report_console import print_flips

    print_flips(flips(before, after))
    return EXIT_THRESHOLD if found else EXIT_OK
