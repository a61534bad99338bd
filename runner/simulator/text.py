"""Deterministic generation: a request's messages and seeds in, the prompt token count and a
`Completion` (reasoning and content tokens, finish reason) out.

One token is one word followed by a space. Prompt tokens are counted as
`max(1, (chars + 2) // 4) + 4 * len(messages)`, where `chars` is the total length of every text
content (string contents and the `text` of content parts); roughly 4 characters per token.
Each image part adds its tokens as `images.image_tokens` counts them.

With a JSON `response_format` the content is a JSON document instead (see `structured`), drawn
from the same RNG after the reasoning, and one token is one whitespace-ended piece of it. A JSON
answer is never cut by the output cap: when the cap leaves fewer tokens than the document has
pieces, the pieces are merged into exactly that many tokens (at least one; reasoning gives way
first). So the document always parses, `finish_reason` is "stop", and `completion_tokens` (the
number of content deltas plus reasoning, the figure the cost is computed from) never exceeds the
cap that the credit check and the runner's budget reserved for.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from runner.simulator.images import image_tokens
from runner.simulator.structured import JsonFormat, document, pack, pieces

MIN_COMPLETION_TOKENS = 8
MAX_COMPLETION_TOKENS = 200
MIN_REASONING_TOKENS = 8
MAX_REASONING_TOKENS = 40

_VOCABULARY: tuple[str, ...] = (
    "the", "a", "model", "answer", "request", "token", "result", "system", "data", "value",
    "stream", "server", "client", "batch", "prompt", "latency", "cost", "budget", "user", "job",
    "is", "was", "will", "can", "should", "returns", "sends", "reads", "writes", "measures",
    "keeps", "shows", "needs", "builds", "checks", "runs", "quickly", "simply", "often", "again",
    "clearly", "fast", "slow", "small", "large", "simple", "careful", "steady", "new", "final",
    "of", "to", "in", "for", "with", "on", "and", "but", "so", "then",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Completion:
    """What the simulated model says: reasoning tokens first, then content tokens."""

    reasoning: tuple[str, ...]
    content: tuple[str, ...]
    finish_reason: str  # "stop" or "length"

    @property
    def completion_tokens(self) -> int:
        """Reasoning plus content tokens: both are billed as output."""
        return len(self.reasoning) + len(self.content)

    @property
    def native_finish_reason(self) -> str:
        """The upstream's own word for the finish reason, as OpenRouter relays it."""
        return "MAX_TOKENS" if self.finish_reason == "length" else "stop"

    @property
    def text(self) -> str:
        """The content as one string."""
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        """The reasoning as one string."""
        return "".join(self.reasoning)


def count_prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """Approximate prompt tokens: a quarter of the text characters plus 4 per message."""
    chars = images = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
                elif isinstance(part, dict) and part.get("type") == "image_url":
                    images += image_tokens(part)
    return max(1, (chars + 2) // 4) + 4 * len(messages) + images


def stable_rng(*parts: object) -> random.Random:
    """A `random.Random` seeded from a SHA-256 of JSON-encoded parts (stable across processes)."""
    blob = orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    digest = hashlib.sha256(blob).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def generate(
    *,
    sim_seed: int,
    model_id: str,
    messages: Sequence[dict[str, Any]],
    request_seed: object,
    reasoning: bool,
    cap_tokens: int | None,
    json_format: JsonFormat | None = None,
) -> Completion:
    """The completion for a request: identical inputs give identical text; `cap_tokens` truncates.

    The natural length is 8..200 content tokens (plus 8..40 reasoning tokens for reasoning
    models). The cap applies to reasoning plus content, reasoning first, as real reasoning
    models spend their output budget thinking before answering. A JSON answer is packed into
    the cap instead of cut (see the module docstring).
    """
    rng = stable_rng("text", sim_seed, model_id, messages, request_seed)
    n_content = rng.randint(MIN_COMPLETION_TOKENS, MAX_COMPLETION_TOKENS)
    n_reasoning = rng.randint(MIN_REASONING_TOKENS, MAX_REASONING_TOKENS) if reasoning else 0
    reasoning_tokens = _sentences(rng, n_reasoning)
    if json_format is not None:
        answer = pieces(document(json_format, rng, _VOCABULARY))
        if cap_tokens is None or cap_tokens >= n_reasoning + len(answer):
            return Completion(reasoning_tokens, answer, "stop")
        kept_reasoning = reasoning_tokens[: cap_tokens - 1]
        return Completion(kept_reasoning, pack(answer, cap_tokens - len(kept_reasoning)), "stop")
    content_tokens = _sentences(rng, n_content)
    if cap_tokens is None or cap_tokens >= n_reasoning + n_content:
        return Completion(reasoning_tokens, content_tokens, "stop")
    kept_reasoning = reasoning_tokens[:cap_tokens]
    kept_content = content_tokens[: cap_tokens - len(kept_reasoning)]
    return Completion(kept_reasoning, kept_content, "length")


def _sentences(rng: random.Random, n_tokens: int) -> tuple[str, ...]:
    """`n_tokens` words as sentences of 4..14 words: capitalised, ending in a full stop."""
    tokens: list[str] = []
    left_in_sentence = 0
    for i in range(n_tokens):
        word = rng.choice(_VOCABULARY)
        if left_in_sentence == 0:
            word = word.capitalize()
            left_in_sentence = rng.randint(4, 14)
        left_in_sentence -= 1
        ends = left_in_sentence == 0 or i == n_tokens - 1
        tokens.append(word + (". " if ends else " "))
        if ends:
            left_in_sentence = 0
    return tuple(tokens)
