"""The `stored` provider: a `Request` in, the response its dataset row already holds out, as an
`Attempt` (no model is called, no network, zero cost), so outputs generated elsewhere are graded
with the same checks as live ones.

The model id names the row field that holds the response (`models: [{id: answer_gpt4,
provider: stored}]`); several such models re-grade several stored columns side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import JobFileError
from .pricing import Price
from .responses import Attempt

if TYPE_CHECKING:
    from .plan import Request

STORED = "stored"
FREE = Price(0.0, 0.0, 0.0, 1)   # nothing is paid; the budget reserves nothing


class StoredEndpoint:
    """The endpoint of the `stored` provider (what `client.Endpoint.send` is for HTTP ones)."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    async def send(self, request: Request, **_limits: Any) -> Attempt:
        """The row's field named by the model id, as a successful answer; never raises."""
        name = request.model.id
        value = request.vars.get(name)
        attempt = Attempt(latency_s=0.0, model_served=name, cost_usd=0.0, prompt_tokens=0,
                          completion_tokens=0)
        if value is None:  # a missing (null) cell: an error row, never a pass
            return attempt.fail("no_stored_response", f"the row has no value in field {name!r}")
        attempt.ok = True
        attempt.text = value if isinstance(value, str) else str(value)
        attempt.finish_reason = "stored"
        return attempt

    async def aclose(self) -> None:
        """Nothing to close (the HTTP endpoints' counterpart)."""


def check_stored(path: Path, models: list[tuple[int, str, str]],
                 prompts: list[tuple[str, tuple[str, ...] | None]]) -> None:
    """Refuse a stored model whose field some prompt's rows do not have. `models`: (index,
    id, provider) of each model; `prompts`: (id, dataset fields or None) of each prompt."""
    for i, model_id, provider in models:
        if provider != STORED:
            continue
        for prompt_id, fields in prompts:
            if fields is None:
                raise JobFileError(path, f"models[{i}]", f"provider stored answers with a field "
                                   f"of each dataset row, but prompt {prompt_id!r} has no "
                                   "dataset: (a job with stored models needs a dataset "
                                   "on every prompt)")
            if model_id not in fields:
                raise JobFileError(path, f"models[{i}].id", f"provider stored answers with the "
                                   f"row field named by the id: no field {model_id!r} in the "
                                   f"dataset of prompt {prompt_id!r} (fields: "
                                   f"{', '.join(fields[:12])})")


def check_stored_judges(path: Path, judges: Iterable[Any]) -> None:
    """A judge must be a model: in a job whose default provider is `stored`, name its own."""
    for judge in judges:
        if judge.provider == STORED:
            raise JobFileError(path, "llm_judge.provider", f"judge {judge.id!r} would be "
                               "answered by the stored provider (the job's default): give "
                               "the judge a provider: that calls a model (e.g. openrouter)")


def stored_prices(model_ids: Mapping[str, str]) -> dict[tuple[str, str], Price]:
    """The (free) price of every stored model: `model_ids` maps id -> provider."""
    return {(STORED, model_id): FREE for model_id, provider in model_ids.items()
            if provider == STORED}
