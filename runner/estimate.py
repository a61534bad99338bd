"""Cost before a run: a `Job` in, the worst-case cost per model and in total out.

The worst case of a request is its estimated prompt tokens (an upper bound: UTF-8 bytes plus a
per-message overhead, see `pricing.estimate_prompt_tokens`) at the prompt price, plus max output
tokens at the completion price, plus the per-request fee. Summed over a plan by arithmetic over
prompts x var combinations x models x repeats, not request by request: the bytes of a plain
template over all its combinations follow from the byte sizes of the var values, so a plan of 10M
requests is priced in the time it takes to read it. Only templates with Jinja logic are rendered,
every combination while `RENDER_LIMIT` lasts, then a sample (and the estimate says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass

from .budget import covers
from .config import Job, Message, Prompt
from .content import images_only
from .conversation import turn_weights, worst_prompt_tokens_extra
from .plan import Plan, combination, combinations
from .pricing import Price, batch_price, estimate_prompt_tokens, max_output_tokens
from .providers import open_providers
from .templates import Template

RENDER_LIMIT = 100_000     # renders of Jinja templates one estimate may spend
SAMPLES_PER_PROMPT = 64    # past it: renders of one prompt whose largest stands for all
RESPONSE_BYTES_PER_TOKEN = 8  # a graded response in a judge's prompt: bytes per output token


@dataclass(frozen=True, slots=True)
class PromptSize:
    """The estimated prompt tokens of one prompt, summed over its var combinations."""

    combinations: int
    prompt_tokens: int
    sampled: bool = False    # from the largest of some renderings, not from every one
    turns: int = 1           # exchanges per request (a conversation's user turns)


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    label: str
    provider: str
    requests: int
    worst_case_usd: float | None   # None: no price, or output not bounded by max_tokens


@dataclass(frozen=True, slots=True)
class Estimate:
    models: tuple[ModelEstimate, ...]
    budget_usd: float | None
    notes: tuple[str, ...] = ()   # e.g. a catalogue that could not be read
    judges: tuple[ModelEstimate, ...] = ()   # LLM judges: one call per judged request

    @property
    def total_usd(self) -> float | None:
        """The worst case of every request and every judge call."""
        costs = [m.worst_case_usd for m in (*self.models, *self.judges)]
        return None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)

    @property
    def budget_covers(self) -> bool | None:
        """Whether the budget covers the whole worst case (None: no budget or unknown)."""
        return covers(self.budget_usd, self.total_usd)


def prompt_sizes(plan: Plan) -> list[PromptSize]:
    """Per prompt of the plan: its combinations and their prompt tokens, one model, one repeat.

    `estimate_prompt_tokens` is the sum of content bytes plus a fixed overhead per message and
    per request, so the tokens of all combinations are their bytes plus that overhead times the
    number of combinations.
    """
    renders_left = RENDER_LIMIT
    sizes = []
    for p, prompt in enumerate(plan.job.prompts):
        count = combinations(prompt)
        # a conversation sends each message with every later turn (conversation.py)
        weights = turn_weights(prompt.messages, prompt.turns)
        overhead = sum(w * (estimate_prompt_tokens([Message(m.role, images_only(m.content))]) - 3)
                       for w, m in zip(weights, prompt.messages, strict=True)) \
            + 3 * max(1, prompt.turns)
        templates = plan.templates(p)
        known = [None if b is None else b * w for b, w in
                 zip((t.bytes_total(prompt.vars, count) if prompt.dataset is None
                      else _row_bytes(prompt, t, count) for t in templates), weights,
                     strict=True)]
        total = sum(b for b in known if b is not None)
        jinja = [(n, t) for n, (t, b) in enumerate(zip(templates, known, strict=True))
                 if b is None]
        sampled = False
        if jinja:
            if count <= renders_left:
                picks = range(count)
                renders_left -= count
            else:
                picks = range(0, count, max(1, count // SAMPLES_PER_PROMPT))
                sampled = len(picks) < count
            rendered = [sum(weights[n] * len(text.encode())
                            for (n, _), text in zip(jinja, _jinja_texts(plan, p, c, jinja),
                                                    strict=True))
                        for c in picks]
            total += sum(rendered) if not sampled else max(rendered) * count
        sizes.append(PromptSize(count, total + overhead * count, sampled,
                                max(1, prompt.turns)))
    return sizes


def _row_bytes(prompt: Prompt, template: Template, count: int) -> int | None:
    """`Template.bytes_total` for a dataset prompt: a row field's bytes are summed over the
    selected rows by the dataset (Parquet: by Arrow, without a row in Python)."""
    parts, dataset = template.parts, prompt.dataset
    if parts is None or dataset is None:
        return None
    inner = count // len(dataset)
    total = count * sum(len(part.encode()) for part in parts[0::2])
    for name in parts[1::2]:
        if name in dataset.fields:
            total += inner * dataset.text_bytes(name)
        else:
            options = prompt.vars[name]
            total += count // len(options) * sum(len(str(v).encode()) for v in options)
    return total


def _jinja_texts(plan: Plan, p: int, c: int, jinja: list[tuple[int, Template]]) -> list[str]:
    """The renderings of prompt p's Jinja templates (message n, template) for combination c."""
    prompt = plan.job.prompts[p]
    if prompt.dataset is not None:
        messages = plan.unit_messages(p, c)
        return [str(messages[n].content) for n, _ in jinja]
    variables = combination(prompt, c)
    return [t.render(variables) for _, t in jinja]


async def estimate(job: Job, *, budget_usd: float | None = None,
                   refresh_prices: bool = False, batch: bool = False) -> Estimate:
    """Worst-case cost per model, from the providers' catalogues and the job's pricing; a model
    sent through its provider's batch API (`batch: true`, or `batch` for every one, as
    `run --batch`) at the batch price. A job with conversations keeps the chat price: its
    turns are sent by chat in batch mode too."""
    from .batch.driver import batched_providers, discount

    plan = Plan(job)
    batched = batched_providers(job, batch) if not any(p.turns for p in job.prompts) else set()
    async with AsyncExitStack() as stack:
        providers = await open_providers(stack, job, connections=2, require_keys=False,
                                         refresh_prices=refresh_prices)
    sizes = prompt_sizes(plan)
    counts = plan.count_by_model()
    models = []
    for m, model in enumerate(job.models):
        price = providers.prices.get((model.provider, model.id))
        if price is not None and model.provider in batched:
            price = batch_price(price, discount(job.providers[model.provider]))
        requests = counts[model.label]
        worst: float | None = None
        if price is not None:
            outputs = [max_output_tokens(plan.params(m, p), price) for p in range(len(sizes))]
            if all(out is not None for out in outputs):
                # a conversation's turns each send the worst-case replies before them
                prompt_tokens = job.repeats * sum(
                    size.prompt_tokens + size.combinations
                    * worst_prompt_tokens_extra(size.turns, out or 0)
                    for size, out in zip(sizes, outputs, strict=True))
                completion_tokens = job.repeats * sum(
                    size.combinations * size.turns * (out or 0)
                    for size, out in zip(sizes, outputs, strict=True))
                sends = job.repeats * sum(size.combinations * size.turns for size in sizes)
                # Price.cost_usd of the sums: the fee once per exchange, not once
                worst = (price.cost_usd(prompt_tokens, completion_tokens)
                         + (sends - 1) * price.request_usd) if requests else 0.0
        models.append(ModelEstimate(model.label, model.provider, requests, worst))
    judges = _judges(job, plan, sizes, providers.prices)
    notes = [f"prices unknown: {exc}" for exc in providers.errors.values()]
    if batched:
        notes.append(f"priced at the batch price (batch API) for provider(s) "
                     f"{', '.join(sorted(batched))}")
    sampled = [job.prompts[p].id for p, size in enumerate(sizes) if size.sampled]
    if sampled:
        notes.append(f"prompt sizes of {len(sampled)} prompt(s) with template logic and many "
                     f"var combinations are estimated from their largest sampled rendering "
                     f"({', '.join(sampled[:3])}{', ...' if len(sampled) > 3 else ''})")
    if judges:
        notes.append(f"judge calls are priced with each graded response at its max_tokens x "
                     f"{RESPONSE_BYTES_PER_TOKEN} bytes in the judge's prompt")
    return Estimate(models=tuple(models),
                    budget_usd=budget_usd if budget_usd is not None else job.budget_usd,
                    notes=tuple(notes), judges=judges)


def _judges(job: Job, plan: Plan, sizes: list[PromptSize],
            prices: Mapping[tuple[str, str], Price]) -> tuple[ModelEstimate, ...]:
    """The worst case of the LLM judges: one call per judged request, whose prompt holds the
    grading prompt, the conversation and the response (at most the graded model's max_tokens,
    each token counted as RESPONSE_BYTES_PER_TOKEN bytes: prompt tokens are bounded by bytes),
    and whose output is the judge's max_tokens. The budget reserves each call's own worst case
    at run time, from the real response."""
    from .judge import FACT_PROMPT, RUBRIC_PROMPT, SYSTEM, TARGET_PART

    calls: dict[tuple[str, str], list[int]] = {}   # judge key -> [calls, prompt tokens]
    unknown: set[tuple[str, str]] = set()
    for p, prompt in enumerate(job.prompts):
        size = sizes[p]
        for check in job.checks.for_prompt(prompt.id):
            if check.kind != "llm_judge":
                continue
            spec = job.judges[(check.arg.model, check.arg.provider)]
            key = (spec.provider, spec.id)
            text = (check.arg.prompt or "") + (check.arg.rubric or "") + SYSTEM + \
                (RUBRIC_PROMPT + TARGET_PART if check.arg.rubric else FACT_PROMPT) + \
                job.checks.targets.get(prompt.id, "")
            fixed = estimate_prompt_tokens([Message("system", ""), Message("user", text)])
            for m, model in enumerate(job.models):
                price = prices.get((model.provider, model.id))
                response = max_output_tokens(plan.params(m, p), price) if price else \
                    plan.params(m, p).get("max_tokens")
                if response is None:
                    unknown.add(key)
                    continue
                n = size.combinations * job.repeats
                found = calls.setdefault(key, [0, 0])
                found[0] += n
                found[1] += n * (fixed + int(response) * RESPONSE_BYTES_PER_TOKEN) + \
                    size.prompt_tokens * job.repeats
    out: list[ModelEstimate] = []
    for (provider, model_id), (n, prompt_tokens) in sorted(calls.items()):
        spec = next(s for s in job.judges.values() if (s.provider, s.id) == (provider, model_id))
        price = prices.get((provider, model_id))
        worst = None
        if price is not None and (provider, model_id) not in unknown and n:
            worst = price.cost_usd(prompt_tokens, n * int(spec.params["max_tokens"])) + \
                (n - 1) * price.request_usd
        out.append(ModelEstimate(spec.label, provider, n, worst))
    return tuple(out)
