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

from contextlib import AsyncExitStack
from dataclasses import dataclass

from .config import Job, Message, Prompt
from .plan import Plan, combination, combinations
from .pricing import estimate_prompt_tokens, max_output_tokens
from .providers import open_providers
from .templates import Template

RENDER_LIMIT = 100_000     # renders of Jinja templates one estimate may spend
SAMPLES_PER_PROMPT = 64    # past it: renders of one prompt whose largest stands for all


@dataclass(frozen=True, slots=True)
class PromptSize:
    """The estimated prompt tokens of one prompt, summed over its var combinations."""

    combinations: int
    prompt_tokens: int
    sampled: bool = False    # from the largest of some renderings, not from every one


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

    @property
    def total_usd(self) -> float | None:
        costs = [m.worst_case_usd for m in self.models]
        return None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)

    @property
    def budget_covers(self) -> bool | None:
        """Whether the budget covers the whole worst case (None: no budget or unknown)."""
        total = self.total_usd
        if self.budget_usd is None or total is None:
            return None
        return total <= self.budget_usd


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
        overhead = estimate_prompt_tokens([Message(m.role, "") for m in prompt.messages])
        templates = plan.templates(p)
        known = [t.bytes_total(prompt.vars, count) if prompt.dataset is None
                 else _row_bytes(prompt, t, count) for t in templates]
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
            rendered = [sum(len(text.encode()) for text in _jinja_texts(plan, p, c, jinja))
                        for c in picks]
            total += sum(rendered) if not sampled else max(rendered) * count
        sizes.append(PromptSize(count, total + overhead * count, sampled))
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
        return [messages[n].content for n, _ in jinja]
    variables = combination(prompt, c)
    return [t.render(variables) for _, t in jinja]


async def estimate(job: Job, *, budget_usd: float | None = None,
                   refresh_prices: bool = False) -> Estimate:
    """Worst-case cost per model, from the providers' catalogues and the job's pricing."""
    plan = Plan(job)
    async with AsyncExitStack() as stack:
        providers = await open_providers(stack, job, connections=2, require_keys=False,
                                         refresh_prices=refresh_prices)
    sizes = prompt_sizes(plan)
    counts = plan.count_by_model()
    models = []
    for m, model in enumerate(job.models):
        price = providers.prices.get((model.provider, model.id))
        requests = counts[model.label]
        worst: float | None = None
        if price is not None:
            outputs = [max_output_tokens(plan.params(m, p), price) for p in range(len(sizes))]
            if all(out is not None for out in outputs):
                prompt_tokens = job.repeats * sum(size.prompt_tokens for size in sizes)
                completion_tokens = job.repeats * sum(
                    size.combinations * (out or 0) for size, out in zip(sizes, outputs,
                                                                         strict=True))
                # Price.cost_usd of the sums: the fee once per request, not once
                worst = (price.cost_usd(prompt_tokens, completion_tokens)
                         + (requests - 1) * price.request_usd) if requests else 0.0
        models.append(ModelEstimate(model.label, model.provider, requests, worst))
    notes = [f"prices unknown: {exc}" for exc in providers.errors.values()]
    sampled = [job.prompts[p].id for p, size in enumerate(sizes) if size.sampled]
    if sampled:
        notes.append(f"prompt sizes of {len(sampled)} prompt(s) with template logic and many "
                     f"var combinations are estimated from their largest sampled rendering "
                     f"({', '.join(sampled[:3])}{', ...' if len(sampled) > 3 else ''})")
    return Estimate(models=tuple(models),
                    budget_usd=budget_usd if budget_usd is not None else job.budget_usd,
                    notes=tuple(notes))
