"""Templates: plain ones (`{{ name }}` only) render exactly as Jinja would without a Jinja compile;
every template is compiled at most once per load and plan; the sandbox still holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jinja2 import StrictUndefined, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from runner.config import load_job
from runner.plan import Plan
from runner.templates import STATS, TemplateError, parse

JINJA = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                             keep_trailing_newline=True)
VALUES: dict[str, Any] = {"x": "<b>&amp; \"q\" 'é' 日本", "y": 3, "z": 2.5, "t": True}

TEMPLATES = [
    "plain text", "a{{x}}b", "{{ x }}", "{{x}}{{y}}{{x}}", "{ {{x}} }", "}{{x}}{", "{{x}}}",
    "{{x}}}}", "}}{{x}}", "\r\n{{x}}\r", "{{ x }}\n", "x\n\n{{x}}\n\n", "{{\n  x\t}}",
    "{{ none }}", "{{ True }}", "{{ range(2)|list }}", "{{ x|upper }}", "{{- x -}} . {{ y }}",
    "{# note #}{{x}}", "{% raw %}{{x}}{% endraw %}", "{% if t %}{{ z }}{% endif %}",
    "{{ x }}{{ y }} {{ z }} {{ t }}", "{{ 'a' }}{{x}}", "{{ x ~ y }}",
    "{%- if t %} {{x}}{% endif %}",
]


@pytest.mark.parametrize("text", TEMPLATES)
def test_rendering_equals_jinja(text: str) -> None:
    template = parse(text)
    assert template.render(VALUES) == JINJA.from_string(text).render(VALUES)


@pytest.mark.parametrize(("text", "plain"), [
    ("a{{x}}b", True), ("{{x}}{{y}}", True), ("{{\n  x\t}}", True), ("\r\n{{x}}", False),
    ("{{ x|upper }}", False), ("{{- x }}", False), ("{{ none }}", False),
    ("{{ range }}", False), ("{{x}}}", False), ("{% if t %}{% endif %}", False),
])
def test_only_substitutions_skip_jinja(text: str, plain: bool) -> None:
    assert (parse(text).parts is not None) == plain


def test_a_missing_var_is_jinjas_undefined_error_on_both_paths() -> None:
    """Plain or Jinja-compiled, a missing var is one `TemplateError` in Jinja's words."""
    with pytest.raises(UndefinedError) as jinja:
        JINJA.from_string("hi {{ who }}").render({})
    for source in ("hi {{ who }}", "hi {{ who | upper }}"):
        with pytest.raises(TemplateError) as ours:
            parse(source).render({})
        assert str(ours.value) == str(jinja.value) == "'who' is undefined"


def test_plain_byte_totals_equal_the_sum_of_renderings() -> None:
    values = {"x": ("é", "ab", "日本語"), "y": (1, 22)}
    template = parse("{{x}}-{{ y }}-{{x}}\n")
    combos = [{"x": x, "y": y} for x in values["x"] for y in values["y"]]
    assert template.bytes_total(values, len(combos)) == sum(
        len(template.render(c).encode()) for c in combos)


def write_rows(tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "job.yaml"
    path.write_text("name: t\nmodels: [m/a, m/b]\nprompts: [{file: rows.jsonl}]\n")
    return path


def test_many_distinct_plain_templates_load_and_plan_without_a_compile(tmp_path: Path) -> None:
    """100k distinct templates took 90 s to validate: each was compiled (and parsed twice)."""
    path = write_rows(tmp_path, [{"id": f"q{i}", "text": f"Q{i}: {{{{ a }}}}?", "a": [1, 2]}
                                 for i in range(20_000)])
    before = STATS.compiles
    plan = Plan(load_job(path))
    assert len(plan) == 80_000
    assert plan[-1].messages[0].content == "Q19999: 2?"
    assert STATS.compiles == before


def test_each_jinja_template_is_compiled_once_through_load_and_run_order(tmp_path: Path) -> None:
    n = 300
    path = write_rows(tmp_path, [{"id": f"q{i}", "text": f"Q{i}: {{{{ a|upper }}}}",
                                  "a": ["x", "y"]} for i in range(n)]
                      + [{"id": "same", "text": "Q0: {{ a|upper }}", "a": "z"}])
    before = STATS.compiles
    plan = Plan(load_job(path))
    contents = [r.messages[0].content for r in plan]
    assert contents[:4] == ["Q0: X", "Q0: X", "Q0: Y", "Q0: Y"] and contents[-1] == "Q0: Z"
    assert STATS.compiles - before == n   # the same source twice: compiled once


def test_the_names_jinja_keeps_for_itself_are_jinjas() -> None:
    """A plain template is told from a Jinja one without importing Jinja: the globals it
    reads as its own names must be Jinja's (an upgrade that adds one fails here)."""
    from jinja2.defaults import DEFAULT_NAMESPACE

    from runner.templates import JINJA_GLOBALS

    assert set(DEFAULT_NAMESPACE) == JINJA_GLOBALS
    assert parse("{{ range }}").parts is None and parse("{{ ranges }}").parts is not None
