"""Structured outputs: a `response_format` JSON schema and a seeded RNG in, a JSON document that
validates against the schema (and its word-ish pieces for streaming) out. Pure, no I/O.

The supported subset: `type` (a name, or a list of which the first is used; when absent,
inferred from `properties` or `items`, else a string), objects (`properties`, `required`; every
listed property is filled and nothing else is added, so `additionalProperties: false` holds),
strings (`minLength`, `maxLength`; otherwise 1..5 vocabulary words), numbers and integers
(`minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, numeric or draft-4 boolean),
booleans, null, arrays (`items`, `minItems`, `maxItems`), `enum`, `const`, `anyOf`/`oneOf` (the
first branch) and local `$ref`s (`#/$defs/...`, as pydantic writes them). Other keywords
(`pattern`, `format`, `uniqueItems`, `allOf`, ...) are ignored.

A bounded number is drawn uniformly between its bounds, so an LLM-as-judge schema such as
`{"score": {"type": "number", "minimum": 0, "maximum": 10}}` gets a score spread over 0..10.
Unbounded numbers fall in a window of 100 next to whichever bound is given (0..100 when none is).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# From MAX_DEPTH levels down, optional properties, array items beyond minItems and non-null
# branches (of anyOf/oneOf or a type list) are avoided, so recursive schemas (trees) end.
MAX_DEPTH = 6
GIVE_UP_DEPTH = 64  # a schema with no finite value gets `null` here instead of a RecursionError
NUMBER_WINDOW = 100.0
ANSWER_WORDS = (3, 12)  # a json_object reply is {"answer": <this many words>}

_PIECE = re.compile(r"\S+\s*")


@dataclass(frozen=True, slots=True)
class JsonFormat:
    """A `response_format` asking for JSON: any object (`schema` None) or one matching `schema`."""

    schema: Mapping[str, Any] | None
    name: str | None = None


def document(fmt: JsonFormat, rng: random.Random, vocabulary: Sequence[str]) -> Any:
    """The JSON value the simulated model answers with; identical rng states give equal values."""
    if fmt.schema is None:
        n_words = rng.randint(*ANSWER_WORDS)
        return {"answer": " ".join(rng.choice(vocabulary) for _ in range(n_words))}
    return _Sampler(fmt.schema, rng, vocabulary).value(fmt.schema, 0)


def pieces(value: Any) -> tuple[str, ...]:
    """`value` serialized (`json.dumps` spacing) and cut after each run of whitespace, the way
    text is cut into words: `{"score": 7, "why": "fast model"}` -> `{"score": `, `7, `, ..."""
    return tuple(_PIECE.findall(json.dumps(value, ensure_ascii=False)))


def pack(parts: Sequence[str], n: int) -> tuple[str, ...]:
    """`parts` joined into `n` (>= 1) consecutive groups of near-equal size; fewer parts stay."""
    if n >= len(parts):
        return tuple(parts)
    return tuple("".join(parts[i * len(parts) // n : (i + 1) * len(parts) // n]) for i in range(n))


class _Sampler:
    """One walk over a schema; the root is kept to resolve `$ref`s."""

    __slots__ = ("_rng", "_root", "_vocabulary")

    def __init__(self, root: Mapping[str, Any], rng: random.Random,
                 vocabulary: Sequence[str]) -> None:
        self._root = root
        self._rng = rng
        self._vocabulary = vocabulary

    def value(self, schema: object, depth: int) -> Any:
        if not isinstance(schema, Mapping) or depth > GIVE_UP_DEPTH:
            return self._words(1, 5) if schema is True else None
        if isinstance(schema.get("$ref"), str):
            return self.value(self._resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._rng.choice(schema["enum"])
        for keyword in ("anyOf", "oneOf"):
            branches = schema.get(keyword)
            if isinstance(branches, list) and branches:
                return self.value(self._branch(branches, depth), depth + 1)
        kind = _type_of(schema, deep=depth >= MAX_DEPTH)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind in ("number", "integer"):
            return self._number(schema, integer=kind == "integer")
        if kind == "boolean":
            return self._rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _branch(self, branches: list[Any], depth: int) -> object:
        """The first branch; deep down, a `null` branch first, so recursive models end."""
        if depth >= MAX_DEPTH:
            for branch in branches:
                if isinstance(branch, Mapping) and branch.get("type") == "null":
                    return branch
        return branches[0]

    def _resolve(self, ref: str) -> object:
        """A local JSON pointer (`#`, `#/$defs/Name`); anything else resolves to `{}`."""
        if not ref.startswith("#"):
            return {}
        node: object = self._root
        for token in filter(None, ref[1:].split("/")):
            key = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping):
                node = node.get(key, {})
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return {}
        return node

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = schema.get("required")
        required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
        names = list(properties) if depth < MAX_DEPTH else [p for p in properties if p in required]
        names += [r for r in required if r not in properties]
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for name in names:
            sub = properties.get(name, extra if isinstance(extra, Mapping) else {})
            out[name] = self.value(sub, depth + 1)
        return out

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        items = schema.get("items", {})
        if isinstance(items, list):  # draft-4 tuple form: one value per position
            return [self.value(sub, depth + 1) for sub in items]
        low = _count(schema.get("minItems"), 0)
        high = max(low, _count(schema.get("maxItems"), max(low, 1) + 2))
        if depth >= MAX_DEPTH:
            high = low
        elif low == 0 and high > 0:
            low = 1  # an empty list says little about what the schema allows
        return [self.value(items, depth + 1) for _ in range(self._rng.randint(low, high))]

    def _number(self, schema: Mapping[str, Any], *, integer: bool) -> float | int:
        low, low_open = _bound(schema, "minimum", "exclusiveMinimum", max)
        high, high_open = _bound(schema, "maximum", "exclusiveMaximum", min)
        if low is None and high is None:
            low, high = 0.0, NUMBER_WINDOW
        elif low is None:
            assert high is not None
            low = high - NUMBER_WINDOW
        elif high is None:
            high = low + NUMBER_WINDOW
        if integer:
            first = math.floor(low) + 1 if low_open else math.ceil(low)
            last = math.ceil(high) - 1 if high_open else math.floor(high)
            return self._rng.randint(first, max(first, last))
        drawn = self._rng.uniform(low, high)
        for value in (round(drawn, 2), drawn, (low + high) / 2):
            if _within(value, low, high, low_open, high_open):
                return value
        return drawn

    def _string(self, schema: Mapping[str, Any]) -> str:
        shortest = _count(schema.get("minLength"), 0)
        longest = schema.get("maxLength")
        text = self._words(1, 5)
        while len(text) < shortest:
            text += " " + self._words(1, 5)
        if isinstance(longest, int) and not isinstance(longest, bool) and longest >= 0:
            trimmed = text[:longest].rstrip()
            text = trimmed if len(trimmed) >= shortest else text[:longest]
        return text

    def _words(self, fewest: int, most: int) -> str:
        rng = self._rng
        return " ".join(rng.choice(self._vocabulary) for _ in range(rng.randint(fewest, most)))


def _type_of(schema: Mapping[str, Any], *, deep: bool) -> str:
    """The type to produce: the first listed (or `null`, deep down), else inferred."""
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        kind = "null" if deep and "null" in kind else kind[0]
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _count(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default


def _number_or_none(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _bound(schema: Mapping[str, Any], closed: str, open_: str,
           tighter: Any) -> tuple[float | None, bool]:
    """The effective bound on one side and whether it is exclusive (draft 4 or 6+ spelling)."""
    inclusive = _number_or_none(schema.get(closed))
    exclusive = _number_or_none(schema.get(open_))
    if schema.get(open_) is True and inclusive is not None:  # draft 4: a flag on `minimum`
        return inclusive, True
    if exclusive is None:
        return inclusive, False
    if inclusive is None or tighter(inclusive, exclusive) == exclusive:
        return exclusive, True
    return inclusive, False


def _within(value: float, low: float, high: float, low_open: bool, high_open: bool) -> bool:
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return above and below
