"""Secrets out of text: every key and credential header value a job holds in, a `Redactor` out
that removes each of them (raw, JSON-escaped or URL-encoded) from any string.

Servers echo what they were sent: an error message quoting the `Authorization` header, a
completion that repeats a custom `X-Api-Key`, a key shown without its prefix, cut short, or in
base64 (Basic auth). Any run of `PARTIAL_RUN_CHARS` or more characters of a secret, in any of
those forms, is masked. Every string that comes from a server passes one
`Redactor` before it is stored, printed or raised, and it knows the secrets of every provider of
the job, not only the one that answered.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

if TYPE_CHECKING:
    from .config import Job, Provider

# a header (or job-file field) whose name contains one of these carries a credential
SECRET_NAME_HINTS = ("auth", "key", "token", "secret", "cookie", "password", "credential")
MIN_SECRET_CHARS = 8   # shorter values ("EMPTY", "sim-key") would shred ordinary text
MASK = "***"
# A part of a secret is found by its pieces of `PIECE_CHARS` taken every `PIECE_CHARS` (plus the
# last): any run of 2 * PIECE_CHARS - 1 characters holds one, as does any prefix or suffix of
# PIECE_CHARS. A match is widened to everything it shares with the secret and masked when that
# run is `PARTIAL_RUN_CHARS` long ("sk-or-v1" alone, a prefix every key has, stays).
PIECE_CHARS = 8
PARTIAL_RUN_CHARS = 12


def is_secret_name(name: str) -> bool:
    """Whether a header or field called `name` holds a credential (its value is masked)."""
    lowered = name.lower()
    return any(hint in lowered for hint in SECRET_NAME_HINTS) and not lowered.endswith("_env")


def _forms(secret: str) -> set[str]:
    """The ways a secret can appear in text a server sends back."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             quote(secret, safe=""), quote(secret), quote_plus(secret, safe=""),
             quote_plus(secret)}
    forms |= {f.lower() for f in forms if "%" in f}   # %2f as well as %2F
    raw = secret.encode()
    for shift in range(3):  # base64 of a text holding the secret at any offset: the groups
        encoded = base64.b64encode(b"\0" * shift + raw).decode()   # made of the secret alone
        inner = encoded[4 if shift else 0:(shift + len(raw)) // 3 * 4]
        forms |= {inner, inner.replace("+", "-").replace("/", "_")}
    return {f for f in forms if len(f) >= MIN_SECRET_CHARS}


def _pieces(form: str) -> list[tuple[str, str, int]]:
    """(piece, form, where the piece starts in form) for finding parts of a long form."""
    if len(form) < 2 * PIECE_CHARS:
        return []
    starts = {*range(0, len(form) - PIECE_CHARS + 1, PIECE_CHARS), len(form) - PIECE_CHARS}
    return [(form[at:at + PIECE_CHARS], form, at) for at in sorted(starts)]


def _mask_parts(text: str, piece: str, form: str, at: int) -> str:
    """`text` with every run around an occurrence of `piece` that matches `form` masked."""
    out: list[str] = []
    done = 0
    found = text.find(piece)
    while found >= 0:
        start, back = found, at
        while start > done and back > 0 and text[start - 1] == form[back - 1]:
            start, back = start - 1, back - 1
        end, ahead = found + PIECE_CHARS, at + PIECE_CHARS
        while end < len(text) and ahead < len(form) and text[end] == form[ahead]:
            end, ahead = end + 1, ahead + 1
        if end - start >= PARTIAL_RUN_CHARS:
            out += (text[done:start], MASK)
            done = end
        found = text.find(piece, max(found + 1, done))
    return "".join(out) + text[done:] if out else text


class Redactor:
    """Removes every secret it was built with from a string; cheap when none is there."""

    __slots__ = ("_needles", "_pieces")

    def __init__(self, secrets: Iterable[str]) -> None:
        needles: set[str] = set()
        for secret in secrets:
            secret = secret.strip()
            if len(secret) < MIN_SECRET_CHARS:
                continue
            needles |= _forms(secret)
            # "Bearer sk-...": the token alone is a secret too
            scheme, _, token = secret.partition(" ")
            if token and scheme.isalpha() and len(token.strip()) >= MIN_SECRET_CHARS:
                needles |= _forms(token.strip())
        # longest first, so "Bearer <key>" goes whole before "<key>" alone
        self._needles = tuple(sorted(needles, key=len, reverse=True))
        pieces: dict[str, tuple[str, str, int]] = {}
        # a needle holding another ("Bearer <key>") has no part worth masking that the
        # shorter one's pieces do not find: fewer pieces, less scanning of every text
        minimal = [n for n in self._needles if not any(m != n and m in n for m in self._needles)]
        for needle in minimal:
            for piece in _pieces(needle):
                pieces.setdefault(piece[0], piece)
        self._pieces = tuple(pieces.values())

    def __bool__(self) -> bool:
        return bool(self._needles)

    def __call__(self, text: str) -> str:
        """`text` with every secret replaced by `***`."""
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, MASK)
        for piece, form, at in self._pieces:   # what is left: parts of a secret
            if piece in text:
                text = _mask_parts(text, piece, form, at)
        return text

    def clip(self, text: str, limit: int) -> str:
        """The first `limit` characters of the redacted `text` (no secret cut in half)."""
        longest = len(self._needles[0]) if self._needles else 0
        return self(text[:limit + longest])[:limit]


def header_secrets(headers: Mapping[str, str]) -> list[str]:
    """The values of the credential headers among `headers` (Authorization, X-Api-Key...)."""
    return [value for name, value in headers.items()
            if isinstance(value, str) and is_secret_name(name)]


def url_secrets(url: str) -> list[str]:
    """A password or query values in a base URL (`https://u:pw@host/v1?key=...`)."""
    parts = urlsplit(url)
    values = [parts.password or ""] + [v for _, v in parse_qsl(parts.query)]
    return [v for v in values if v]


def provider_secrets(provider: Provider, api_key: str | None = None) -> list[str]:
    """A provider's key (given, or read from its environment variable) and credential headers."""
    secrets = header_secrets(provider.headers) + url_secrets(provider.base_url or "")
    if api_key is None and provider.api_key_env:
        api_key = os.environ.get(provider.api_key_env)
    if api_key:
        secrets += [api_key, f"Bearer {api_key}"]
    return secrets


def job_redactor(job: Job, keys: Mapping[str, str] = {}) -> Redactor:  # noqa: B006 (read only)
    """A redactor for every secret of every provider of `job` (`keys`: the keys in use)."""
    secrets: list[str] = []
    for name, provider in job.providers.items():
        secrets += provider_secrets(provider, keys.get(name))
        if name in keys:   # an env var that changed since: both values are secrets
            secrets += provider_secrets(provider)
    return Redactor(secrets)
