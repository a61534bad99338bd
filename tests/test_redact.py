"""The redactor: every form a secret can take in a server's text is removed; short values and
ordinary text are left alone."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from runner.config import load_job
from runner.redact import Redactor, is_secret_name, job_redactor

KEY = "sk-or-v1-TESTSECRET0123456789abcdef"
ODD = 'TESTSECRET/hdr"9876+5432 =x\\y'


@pytest.mark.parametrize("form", [
    KEY, f"Bearer {KEY}", ODD, json.dumps(ODD)[1:-1], quote(ODD), quote(ODD, safe=""),
    quote_plus(ODD), quote(ODD, safe="").lower(),
])
def test_every_form_is_removed_anywhere(form: str) -> None:
    redact = Redactor([KEY, ODD])
    for text in (form, f"x{form}y", f"start {form}\n{form} end"):
        out = redact(text)
        assert KEY not in out and ODD not in out and form not in out and "***" in out


def test_short_values_and_plain_text_are_left_alone() -> None:
    redact = Redactor(["EMPTY", "sim-key", ""])
    assert not redact
    assert redact("EMPTY sim-key stays") == "EMPTY sim-key stays"


def test_the_token_of_an_authorization_value_is_a_secret_alone() -> None:
    redact = Redactor([f"Bearer {KEY}"])
    assert redact(f"got {KEY}") == "got ***"


def test_clip_never_leaves_half_a_secret() -> None:
    redact = Redactor([KEY])
    for cut in range(len(KEY) + 5):
        text = "a" * cut + KEY + "b" * 50
        clipped = redact.clip(text, cut + 10)
        assert KEY[:10] not in clipped and len(clipped) <= cut + 10


@pytest.mark.parametrize(("name", "secret"), [
    ("Authorization", True), ("X-Api-Key", True), ("x-goog-api-key", True), ("Cookie", True),
    ("X-Auth-Token", True), ("api_key_env", False), ("X-Title", False), ("HTTP-Referer", False),
])
def test_secret_header_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_job_redactor_knows_every_provider(write_job, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("A_KEY", KEY)
    monkeypatch.setenv("B_KEY", "sk-b-TESTSECRET-99999999")
    job = load_job(write_job("""
        name: t
        providers:
          a: {base_url: "http://a.invalid/v1", api_key_env: A_KEY,
              headers: {X-Api-Key: hdr-TESTSECRET-1234, X-Title: my app title}}
          b: {base_url: "http://u:pw-TESTSECRET-1@b.invalid/v1?key=q-TESTSECRET-2",
              api_key_env: B_KEY}
        models: [{id: m, provider: a}]
        prompts: ["hi"]
    """))
    redact = job_redactor(job, {"a": KEY})
    text = (f"{KEY} sk-b-TESTSECRET-99999999 hdr-TESTSECRET-1234 pw-TESTSECRET-1 "
            "q-TESTSECRET-2 my app title")
    assert redact(text) == "*** *** *** *** *** my app title"


def _windows(secret: str, size: int = 15) -> set[str]:
    return {secret[i:i + size] for i in range(len(secret) - size + 1)}


@pytest.mark.parametrize("echo", [
    KEY[9:], KEY[:-4], KEY[4:-4], ODD[3:], ODD[:-3],            # a prefix cut, a tail cut
    f"...{KEY[-16:]}", f"{ODD[:16]}...",
    base64.b64encode(KEY.encode()).decode(),                     # the key in base64, alone,
    base64.b64encode(f"Bearer {KEY}".encode()).decode(),         # ...after a scheme,
    base64.b64encode(f"user:{KEY}".encode()).decode(),           # ...as Basic auth,
    base64.urlsafe_b64encode(f"ab{ODD}".encode()).decode(),      # ...URL-safe
])
def test_a_part_or_an_encoding_of_a_secret_is_removed(echo: str) -> None:
    """Servers quote what they were sent cut (a message clipped before it was redacted, a key
    shown without its prefix) or encoded (base64); any long run of a secret is a secret."""
    redact = Redactor([KEY, ODD])
    out = redact(f"you sent {echo} which is wrong")
    assert out.startswith("you sent ") and out.endswith(" which is wrong")
    leaked = [w for w in _windows(KEY) | _windows(ODD) | _windows(echo) if w in out]
    assert not leaked, out


def test_ordinary_text_keeps_its_words() -> None:
    redact = Redactor([KEY, ODD])
    text = "sk-or-v1 keys are documented; TESTSEC is a word; 0123456 counts"
    assert redact(text) == text
