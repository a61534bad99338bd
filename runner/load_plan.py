"""A job's `load:` section in (validated YAML or CLI flags), its stages and the request each of
their slots sends out (pure; no I/O, no clock).

A load test sends the job's plan on a schedule. Each stage has numbered slots 0, 1, 2, ...;
slot k sends plan item k mod N (`order: cycle`, every stage starts at item 0, so stages send
the same mix) or a seeded draw (`order: sample`). A slot is a row of its own: its request id is
`s<stage>-<k>-<plan request id, 12 chars>`, unique in the run and the same in a resume, so the
row contract (one row per request id) holds however often the plan is cycled. A resumed load
run skips the slots whose rows are done (as any resume does) and sends the others at their own
offsets in a new run of each stage; a sweep reuses the rates it measured before (run.json).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import schema
from .errors import ConfigError, JobFileError
from .plan import Plan, Request
from .schedule import CLOSED_LOOP, Stage, max_sends

DEFAULT_SWEEP_RATES = 5
ROWS_COUNTED = 100_000   # send times `expected_rows` counts ahead per stage, at most


@dataclass(frozen=True, slots=True)
class Sweep:
    """synchronous, then throughput, then `rates` stages at rates evenly spaced between."""

    first_index: int
    rates: int
    arrivals: str                   # "constant" or "poisson" for the K rate stages
    up_to: float
    template: Stage                 # bounds, warm-up/cool-down, burstiness of every stage

    def measuring(self, max_concurrency: int) -> tuple[Stage, Stage]:
        """Its synchronous and throughput stages (their rates set the others')."""
        base = self.template
        return (dataclasses.replace(base, index=self.first_index, mode="synchronous",
                                    concurrency=1, burstiness=None),
                dataclasses.replace(base, index=self.first_index + 1, mode="throughput",
                                    concurrency=max_concurrency, burstiness=None))

    def at_rates(self, rates: list[float]) -> list[Stage]:
        """Its K rate stages, at `rates` (from `schedule.sweep_rates`)."""
        base = self.template
        burst = (base.burstiness or 1.0) if self.arrivals == "poisson" else None
        return [dataclasses.replace(base, index=self.first_index + 2 + i, mode=self.arrivals,
                                    rate_rps=rate, burstiness=burst, concurrency=None)
                for i, rate in enumerate(rates)]


@dataclass(frozen=True, slots=True)
class Goodput:
    """SLOs a request must all meet to count toward goodput (None: not asked)."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    itl_s: float | None = None
    latency_s: float | None = None

    def text(self) -> str:
        return ",".join(f"{name.removesuffix('_s')}={value:g}"
                        for name, value in dataclasses.asdict(self).items() if value is not None)


@dataclass(frozen=True, slots=True)
class Load:
    steps: tuple[Stage | Sweep, ...]
    max_concurrency: int = 512
    order: str = "cycle"
    seed: int = 0
    goodput: Goodput | None = None


def parse_goodput(text: str) -> Goodput:
    """`ttft=0.5,tpot=0.05,latency=10` (seconds; also itl) -> Goodput; ValueError if wrong."""
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        key = name.strip().removesuffix("_s") + "_s"
        if not sep or key not in Goodput.__dataclass_fields__:
            raise ValueError(f"{part!r}: give NAME=SECONDS with NAME one of ttft, tpot, itl, "
                             "latency (e.g. ttft=0.5,tpot=0.05,latency=10)")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: {value!r} is not a number of seconds") from None
        if not number > 0:
            raise ValueError(f"{part!r}: must be > 0 seconds")
        values[key] = number
    if not values:
        raise ValueError("empty: give e.g. ttft=0.5,tpot=0.05,latency=10")
    return Goodput(**values)


_STAGE_KEYS = tuple(schema.StageIn.model_fields)


def build_load(path: Path | str, load: schema.LoadIn) -> Load:
    """The stages of a validated `load:` section; a JobFileError names the key to fix."""
    inline = {k: getattr(load, k) for k in load.model_fields_set if k in _STAGE_KEYS}
    if load.stages is None:
        if load.mode is None:
            raise JobFileError(path, "load.mode", "give a mode (constant, poisson, ramp, "
                               "concurrency, synchronous, throughput, sweep) or stages:")
        specs = [("load", schema.StageIn.model_validate(inline))]
    else:
        if load.mode is not None:
            raise JobFileError(path, "load.mode", "give either mode: (one stage) or stages: "
                               "(keys beside stages: are defaults of every stage)")
        specs = [(f"load.stages[{i}]", schema.StageIn.model_validate(
            {**inline, **{k: getattr(s, k) for k in s.model_fields_set}}))
            for i, s in enumerate(load.stages)]
    steps: list[Stage | Sweep] = []
    index = 0
    for where, spec in specs:
        step = _step(path, where, spec, index, load)
        steps.append(step)
        index += 2 + step.rates if isinstance(step, Sweep) else 1
    goodput = Goodput(**load.goodput.model_dump()) if load.goodput is not None else None
    if goodput is not None and not goodput.text():
        raise JobFileError(path, "load.goodput", "name at least one SLO (ttft_s, tpot_s, "
                           "itl_s, latency_s)")
    return Load(tuple(steps), load.max_concurrency, load.order, load.seed, goodput)


def _step(path: Path | str, where: str, s: schema.StageIn, index: int,
          load: schema.LoadIn) -> Stage | Sweep:
    def bad(key: str, why: str) -> JobFileError:
        return JobFileError(path, f"{where}.{key}", why)

    mode = s.mode
    allowed = {"constant": {"rate_rps"}, "poisson": {"rate_rps", "burstiness"},
               "ramp": {"rate_rps", "to_rate_rps", "ramp", "burstiness"},
               "concurrency": {"concurrency"}, "synchronous": set(), "throughput": set(),
               "sweep": {"rates", "arrivals", "up_to", "burstiness"}}[mode]
    for key in ("rate_rps", "to_rate_rps", "ramp", "burstiness", "concurrency", "rates",
                "arrivals", "up_to"):
        if getattr(s, key) is not None and key not in allowed:
            raise bad(key, f"does not apply to mode {mode} (it takes: "
                      f"{', '.join(sorted(allowed)) or 'no rate or concurrency'})")
    if mode in ("constant", "poisson", "ramp") and s.rate_rps is None:
        raise bad("rate_rps", f"mode {mode} needs a rate in requests per second")
    if mode == "ramp" and (s.to_rate_rps is None or s.duration_s is None):
        raise bad("to_rate_rps" if s.to_rate_rps is None else "duration_s",
                  "a ramp needs rate_rps (start), to_rate_rps (end) and duration_s")
    if mode == "concurrency" and s.concurrency is None:
        raise bad("concurrency", "mode concurrency needs the number of requests in flight")
    if s.concurrency is not None and s.concurrency > load.max_concurrency:
        raise bad("concurrency", f"{s.concurrency} is above load.max_concurrency "
                  f"{load.max_concurrency} (raise that cap)")
    if s.burstiness is not None and mode == "sweep" and s.arrivals != "poisson":
        raise bad("burstiness", "applies to a sweep's stages only with arrivals: poisson")
    if s.duration_s is None and s.requests is None:
        raise bad("duration_s", "give the stage's bounds: duration_s, requests, or both")
    if s.duration_s is not None and s.warmup_s + s.cooldown_s >= s.duration_s:
        raise bad("warmup_s", f"warmup_s + cooldown_s ({s.warmup_s + s.cooldown_s:g} s) leave "
                  f"nothing of duration_s {s.duration_s:g} s to measure")
    if s.cooldown_s and s.duration_s is None and mode in (*CLOSED_LOOP, "sweep"):
        raise bad("cooldown_s", f"mode {mode} ends when its requests are done, which is not "
                  "known ahead: give duration_s too, or no cooldown_s")
    stage = Stage(index=index, mode=mode, rate_rps=s.rate_rps, to_rate_rps=s.to_rate_rps,
                  ramp=s.ramp or "linear",
                  burstiness=(s.burstiness or 1.0) if mode == "poisson" else s.burstiness,
                  concurrency={"synchronous": 1, "throughput": load.max_concurrency}.get(
                      mode, s.concurrency),
                  duration_s=s.duration_s, requests=s.requests, warmup_s=s.warmup_s,
                  cooldown_s=s.cooldown_s, seed=load.seed)
    if mode == "sweep":
        return Sweep(index, s.rates or DEFAULT_SWEEP_RATES, s.arrivals or "constant",
                     s.up_to or 1.0, stage)
    return stage


class Slots:
    """The request each slot of each stage sends (computed on demand, like the plan)."""

    __slots__ = ("plan", "order", "seed", "_n")

    def __init__(self, plan: Plan, order: str, seed: int) -> None:
        self.plan, self.order, self.seed = plan, order, seed
        self._n = len(plan)

    def request_id(self, stage: Stage, k: int) -> str:
        return f"s{stage.index}-{k}-{self.plan[self.item(stage, k)].request_id[:12]}"

    def request(self, stage: Stage, k: int) -> Request:
        base = self.plan[self.item(stage, k)]
        return dataclasses.replace(
            base, request_id=f"s{stage.index}-{k}-{base.request_id[:12]}")

    def item(self, stage: Stage, k: int) -> int:
        """The plan index slot k of `stage` sends."""
        if self.order == "cycle":
            return k % self._n
        # stateless: slot k draws the same item whatever was sent before (a resume skips)
        return random.Random(f"{self.seed}:{stage.index}:{k}").randrange(self._n)


def load_section(load: Load) -> dict[str, Any]:
    """What run.json says about the load settings (stages as planned; a sweep's measured
    rates are added as it runs)."""
    return {"max_concurrency": load.max_concurrency, "order": load.order, "seed": load.seed,
            "goodput": dataclasses.asdict(load.goodput) if load.goodput else None}


def stage_facts(stage: Stage) -> Mapping[str, Any]:
    return {"stage": stage.name, "mode": stage.mode, "rate_rps": stage.rate_rps,
            "to_rate_rps": stage.to_rate_rps, "concurrency": stage.concurrency,
            "duration_s": stage.duration_s, "requests": stage.requests}


def expected_rows(load: Load, done: int = 0) -> int:
    """About how many rows the load test writes (for the progress bar and the collector's
    set-up): the most each stage sends (`schedule.max_sends`; a sweep's rate stages: their
    `requests`), and at least `done`. A closed loop bounded by time alone counts as nothing:
    its count is known only as it runs; a Poisson or ramp stage of more than ROWS_COUNTED
    requests counts as that many (counting its send times would hold up the start)."""
    total = 0
    for step in load.steps:
        if isinstance(step, Stage):
            count = max_sends(step, ROWS_COUNTED)
            total += count if count is not None else ROWS_COUNTED if step.open_loop else 0
        else:  # a sweep: its stages share one set of bounds; its rates are not known yet
            total += (2 + step.rates) * (step.template.requests or 0)
    return max(total, done)


def with_flags(job: Any, given: Mapping[str, Any], goodput: str | None,
               flags: str = "") -> Any:
    """`job` with the `runner run` load flags applied: `given` maps `load:` keys to flag values
    (a `mode` starts a new single stage; the others change the job's own `load:`); a
    ConfigError names the flag to fix (`flags`: the ones given, as typed)."""
    from pydantic import ValidationError

    if not given and goodput is None:
        return job
    section = dict(job.snapshot.get("load") or {})
    if "mode" in given:  # a new stage: the job's stages and their settings go
        section = {k: v for k, v in section.items()
                   if k in ("max_concurrency", "order", "seed", "goodput")}
    elif not section:
        raise ConfigError(f"{flags or '--goodput'}: {job.path} has no load: section; give "
                          "--load MODE too")
    section.update(given)
    if goodput is not None:
        try:
            section["goodput"] = dataclasses.asdict(parse_goodput(goodput))
        except ValueError as exc:
            raise ConfigError(f"--goodput: {exc}") from None
    try:
        load = build_load(job.path, schema.LoadIn.model_validate(section))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"load flags: {where}: {error['msg']}") from None
    except JobFileError as exc:
        raise ConfigError(f"load flags: {exc}") from None
    return dataclasses.replace(job, load=load, snapshot={**job.snapshot, "load": section})
