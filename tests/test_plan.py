"""The plan: exact expansion (prompts x vars they use x repeats x models), indexing that equals
iteration, slices, stable and unique request ids, laziness on a million requests, and rendering."""

from __future__ import annotations

import itertools
import random
import re
import shutil
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.config import Job, Message, load_job
from runner.plan import Plan, Request

VAR = re.compile(r"{{\s*(\w+)\s*}}")
Key = tuple[str, str, tuple[tuple[str, Any], ...], int]


def load(tmp_path: Path, spec: dict[str, Any], name: str = "job.yaml") -> Job:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "t", **spec}, sort_keys=False), encoding="utf-8")
    return load_job(path)


def key(request: Request) -> Key:
    return (request.model.label, request.prompt_id, tuple(sorted(request.vars.items())),
            request.repeat)


def expected_keys(spec: dict[str, Any]) -> Counter[Key]:
    """The expansion computed from the spec alone: a prompt runs once per combination of the
    vars its templates name, per repeat, per model."""
    labels = [m if isinstance(m, str) else m.get("alias", m["id"]) for m in spec["models"]]
    out: Counter[Key] = Counter()
    for prompt in spec["prompts"]:
        texts = [prompt.get("text", ""), prompt.get("system", spec.get("system", ""))]
        texts += [m["content"] for m in prompt.get("messages", [])]
        names = sorted({name for text in texts for name in VAR.findall(text)})
        available = {**spec.get("vars", {}), **prompt.get("vars", {})}
        values = [v if isinstance(v, list) else [v] for v in (available[n] for n in names)]
        for combo, repeat, label in itertools.product(itertools.product(*values),
                                                       range(spec.get("repeats", 1)), labels):
            out[(label, prompt["id"], tuple(zip(names, combo, strict=True)), repeat)] += 1
    return out


SPECS: dict[str, dict[str, Any]] = {
    "single": {"models": ["m/a"], "prompts": [{"id": "p", "text": "hi"}]},
    "models-x-prompts-x-repeats": {
        "models": ["m/a", "m/b", {"id": "m/a", "alias": "a-again"}],
        "prompts": [{"id": "p1", "text": "one"}, {"id": "p2", "text": "two"}],
        "repeats": 3,
    },
    "job-vars-matrix": {
        "models": ["m/a", "m/b"],
        "vars": {"a": [1, 2, 3], "b": ["x", "y"]},
        "prompts": [{"id": "p1", "text": "{{ a }}"}, {"id": "p2", "text": "{{ a }}-{{ b }}"},
                    {"id": "p3", "text": "plain"}],
        "repeats": 2,
    },
    "prompt-vars-override-job-vars": {
        "models": ["m/a"],
        "vars": {"a": [1, 2, 3]},
        "prompts": [{"id": "p1", "text": "{{ a }}", "vars": {"a": [9, 8]}},
                    {"id": "p2", "text": "{{ a }}", "vars": {"unused": [1, 2, 3, 4]}}],
    },
    "scalar-var": {
        "models": ["m/a", "m/b"],
        "vars": {"who": "world"},
        "prompts": [{"id": "p", "text": "hello {{ who }}"}],
        "repeats": 2,
    },
    "var-in-job-system": {
        "models": ["m/a"],
        "system": "Answer in {{ lang }}.",
        "vars": {"lang": ["en", "fr", "de"], "n": [1, 2]},
        "prompts": [{"id": "plain", "text": "hi"}, {"id": "numbered", "text": "{{ n }}"}],
    },
    "var-in-prompt-system": {
        "models": ["m/a"],
        "prompts": [{"id": "p", "text": "x", "system": "{{ tone }}", "vars": {"tone": [1, 2]}}],
    },
    "vars-in-messages": {
        "models": ["m/a", "m/b"],
        "vars": {"q": [1, 2], "r": ["a", "b", "c"]},
        "prompts": [{"id": "chat", "messages": [
            {"role": "user", "content": "{{ q }}"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "and {{ r }}?"}]}],
        "repeats": 2,
    },
}


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
def test_expansion_is_exact(tmp_path: Path, spec: dict[str, Any]) -> None:
    plan = Plan(load(tmp_path, spec))
    expected = expected_keys(spec)
    assert len(plan) == sum(expected.values())
    assert Counter(key(r) for r in plan) == expected


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
def test_count_by_model_matches_expansion(tmp_path: Path, spec: dict[str, Any]) -> None:
    plan = Plan(load(tmp_path, spec))
    assert plan.count_by_model() == dict(Counter(r.model.label for r in plan))
    assert sum(plan.count_by_model().values()) == len(plan)


def test_only_vars_a_prompt_uses_multiply_it(tmp_path: Path) -> None:
    plan = Plan(load(tmp_path, {
        "models": ["m/a"], "repeats": 2,
        "vars": {"a": [1, 2, 3, 4, 5], "b": ["x", "y"]},
        "prompts": [{"id": "plain", "text": "no templates here"},
                    {"id": "uses-a", "text": "{{ a }}"},
                    {"id": "own-vars-unused", "text": "still plain", "vars": {"c": [1, 2, 3]}}],
    }))
    per_prompt = Counter(r.prompt_id for r in plan)
    assert per_prompt == {"plain": 2, "uses-a": 10, "own-vars-unused": 2}
    assert {tuple(r.vars) for r in plan if r.prompt_id != "uses-a"} == {()}


def test_models_are_interleaved_first(tmp_path: Path) -> None:
    plan = Plan(load(tmp_path, SPECS["models-x-prompts-x-repeats"]))
    assert [r.model.label for r in plan[:3]] == ["m/a", "m/b", "a-again"]


# indexing ------------------------------------------------------------------------------------


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    return Plan(load(tmp_path, SPECS["job-vars-matrix"]))


def test_indexing_equals_iteration(plan: Plan) -> None:
    assert len(plan) == 40
    listed = list(plan)
    assert [plan[i] for i in range(len(plan))] == listed
    assert [r.index for r in listed] == list(range(len(plan)))


def test_negative_index_and_slices(plan: Plan) -> None:
    listed = list(plan)
    assert plan[-1] == listed[-1] == plan[len(plan) - 1]
    assert plan[-len(plan)] == listed[0]
    assert list(plan[3:11]) == listed[3:11]
    assert list(plan[::-7]) == listed[::-7]


@pytest.mark.parametrize("i", [40, 41, 10**9, -41, -(10**9)])
def test_index_beyond_the_end_is_index_error(plan: Plan, i: int) -> None:
    with pytest.raises(IndexError):
        plan[i]


# request ids ---------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "models": [{"id": "m/a", "provider": "openrouter"}],
    "params": {"temperature": 0.5},
    "vars": {"w": ["x"]},
    "prompts": [{"id": "p", "text": "hi {{ w }}"}],
}
CHANGES: dict[str, dict[str, Any]] = {
    "model-id": {"models": [{"id": "m/b"}]},
    "model-provider": {"models": [{"id": "m/a", "provider": "simulated"}],  # served anyway
                       "providers": {"simulated": {"check_models": False}}},
    "model-alias": {"models": [{"id": "m/a", "alias": "a"}]},
    "text": {"prompts": [{"id": "p", "text": "hello {{ w }}"}]},
    "var-value": {"vars": {"w": ["y"]}},
    "system": {"system": "Be brief."},
    "prompt-id": {"prompts": [{"id": "q", "text": "hi {{ w }}"}]},
    "job-param": {"params": {"temperature": 0.6}},
    "new-param": {"params": {"temperature": 0.5, "seed": 1}},
    "model-param": {"models": [{"id": "m/a", "params": {"max_tokens": 5}}]},
    "extra-body": {"models": [{"id": "m/a", "extra_body": {"transforms": []}}]},
}
SAME: dict[str, dict[str, Any]] = {
    "description": {"description": "now with words"},
    "limits": {"limits": {"concurrency": 3, "rpm": 60}},
    "budget": {"budget_usd": 1.0},
    "unused-var": {"vars": {"w": ["x"], "unused": [1, 2, 3]}},
    "more-repeats": {"repeats": 4},
    "output": {"output": {"dir": "elsewhere"}},
}


def first_id(tmp_path: Path, spec: dict[str, Any]) -> str:
    return Plan(load(tmp_path, spec))[0].request_id


@pytest.mark.parametrize("change", list(CHANGES.values()), ids=list(CHANGES))
def test_request_id_changes_with_what_is_sent(tmp_path: Path, change: dict[str, Any]) -> None:
    assert first_id(tmp_path, BASE) != first_id(tmp_path, {**BASE, **change})


@pytest.mark.parametrize("change", list(SAME.values()), ids=list(SAME))
def test_request_id_ignores_what_is_not_sent(tmp_path: Path, change: dict[str, Any]) -> None:
    assert first_id(tmp_path, BASE) == first_id(tmp_path, {**BASE, **change})


def test_request_id_changes_with_repeat(tmp_path: Path) -> None:
    plan = Plan(load(tmp_path, {**BASE, "repeats": 3}))
    assert [r.repeat for r in plan] == [0, 1, 2]
    assert len({r.request_id for r in plan}) == 3


def test_request_id_is_stable_across_loads_and_folders(tmp_path: Path) -> None:
    spec = SPECS["vars-in-messages"]
    first = [r.request_id for r in Plan(load(tmp_path, spec))]
    again = [r.request_id for r in Plan(load_job(tmp_path / "job.yaml"))]
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(tmp_path / "job.yaml", tmp_path / "elsewhere" / "renamed.yaml")
    moved = [r.request_id for r in Plan(load_job(tmp_path / "elsewhere" / "renamed.yaml"))]
    assert first == again == moved
    assert all(re.fullmatch(r"[0-9a-f]{20}", rid) for rid in first)


UNIQUE: dict[str, dict[str, Any]] = {
    **SPECS,
    "same-model-two-aliases": {
        "models": [{"id": "m/a", "alias": "one"}, {"id": "m/a", "alias": "two"}],
        "prompts": [{"id": "p", "text": "hi"}], "repeats": 2,
    },
    "vars-that-render-alike": {
        "models": ["m/a"], "vars": {"v": [1, "1", 2]},
        "prompts": [{"id": "p", "text": "{% if v %}same{% endif %}{{ '' }}"},
                    {"id": "q", "text": "{{ v }}"}],
    },
    "same-text-two-ids": {
        "models": ["m/a"], "prompts": [{"id": "p", "text": "hi"}, {"id": "q", "text": "hi"}],
    },
}


@pytest.mark.parametrize("spec", list(UNIQUE.values()), ids=list(UNIQUE))
def test_request_ids_are_unique_within_a_plan(tmp_path: Path, spec: dict[str, Any]) -> None:
    plan = Plan(load(tmp_path, spec))
    assert len({r.request_id for r in plan}) == len(plan)


@pytest.mark.parametrize("grow", ["prompt", "model"])
def test_appending_keeps_existing_request_ids(tmp_path: Path, grow: str) -> None:
    spec = SPECS["job-vars-matrix"]
    before = {key(r): r.request_id for r in Plan(load(tmp_path, spec))}
    if grow == "prompt":
        bigger = {**spec, "prompts": [*spec["prompts"], {"id": "new", "text": "{{ b }} new"}]}
    else:
        bigger = {**spec, "models": [*spec["models"], "m/c"]}
    after = {key(r): r.request_id for r in Plan(load(tmp_path, bigger))}
    assert len(after) > len(before)
    assert {k: after[k] for k in before} == before


# a million requests, lazily ------------------------------------------------------------------


def test_a_million_requests_stay_lazy(tmp_path: Path) -> None:
    job = load(tmp_path, {
        "models": [f"m/{k}" for k in range(5)],
        "vars": {"a": list(range(10)), "b": list(range(10))},
        "prompts": [{"id": f"q{k}", "text": f"Q{k}: {{{{ a }}}} + {{{{ b }}}}"}
                    for k in range(200)],
        "repeats": 10,
    })
    picks = random.Random(0).sample(range(1_000_000), 20)
    tracemalloc.start()
    try:
        plan = Plan(job)
        size = len(plan)
        last = plan[999_999]
        sampled = [plan[i] for i in picks]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == 1_000_000
    assert peak < 2_000_000
    assert (last.model.label, last.prompt_id, dict(last.vars), last.repeat) == (
        "m/4", "q199", {"a": 9, "b": 9}, 9)
    assert last.messages == (Message("user", "Q199: 9 + 9"),)
    assert plan[-1] == last
    for i, request in zip(picks, sampled, strict=True):
        assert request.index == i
        number = request.prompt_id.removeprefix("q")
        assert request.messages == (
            Message("user", f"Q{number}: {request.vars['a']} + {request.vars['b']}"),)
    assert plan.count_by_model() == {f"m/{k}": 200_000 for k in range(5)}


# rendering -----------------------------------------------------------------------------------


def test_vars_render_into_text_system_and_messages(tmp_path: Path) -> None:
    plan = Plan(load(tmp_path, {
        "models": ["m/a"],
        "system": "You are {{ role }}.",
        "vars": {"role": ["a pirate"], "n": [3]},
        "prompts": [
            {"id": "text", "text": "Count to {{ n }}, {{ role }}."},
            {"id": "own-system", "text": "x", "system": "Sys {{ n }}"},
            {"id": "chat", "messages": [{"role": "user", "content": "{{ n }}?"},
                                        {"role": "assistant", "content": "{{ n * 2 }}!"}]},
        ],
    }))
    by_id = {r.prompt_id: r.messages for r in plan}
    assert by_id["text"] == (Message("system", "You are a pirate."),
                             Message("user", "Count to 3, a pirate."))
    assert by_id["own-system"] == (Message("system", "Sys 3"), Message("user", "x"))
    assert by_id["chat"] == (Message("system", "You are a pirate."), Message("user", "3?"),
                             Message("assistant", "6!"))


@pytest.mark.parametrize("value", [
    "<b>&amp; \"quoted\" 'single'</b> & <script>",
    "{{ not_a_template }} {% if %}",
    "  spaces  \n second line\n",
    "ünïcødé — 日本語",
])
def test_values_render_exactly(tmp_path: Path, value: str) -> None:
    (request,) = Plan(load(tmp_path, {
        "models": ["m/a"], "vars": {"v": [value]},
        "prompts": [{"id": "p", "text": "[{{ v }}]", "system": "{{ v }}"}],
    }))
    assert request.messages == (Message("system", value), Message("user", f"[{value}]"))
    assert dict(request.vars) == {"v": value}


def test_text_without_templates_is_sent_as_written(tmp_path: Path) -> None:
    text = 'Return JSON like {"a": [1, 2]} and keep <tags> & entities.\n'
    (request,) = Plan(load(tmp_path, {"models": ["m/a"], "prompts": [{"id": "p", "text": text}]}))
    assert request.messages == (Message("user", text),)


def test_request_carries_model_params(tmp_path: Path) -> None:
    (request,) = Plan(load(tmp_path, BASE))
    assert dict(request.params) == {"temperature": 0.5}
    assert request.model.id == "m/a"


# arithmetic, not expansion: plan and validate on 10M requests --------------------------------

BIG_VARS = {"a": [f"a{i}" for i in range(1000)], "b": [f"b{i}" for i in range(1000)],
            "c": ["x", "yy", "zzz", "é", "日本"]}


def big_job(tmp_path: Path) -> Path:
    """10,000,000 requests: 1000 x 1000 x 5 combinations of one prompt, two models; prices
    of whole dollars per token, so every sum is exact in floating point."""
    spec = {"name": "big", "provider": "simulated", "models": ["m/a", "m/b"],
            "providers": {"simulated": {"check_models": False}},  # priced by pricing:
            "params": {"max_tokens": 10}, "vars": BIG_VARS,
            "prompts": [{"id": "p", "text": "x {{ a }} y {{ b }} {{ c }}"}],
            "pricing": {"m/a": {"usd_per_mtok_prompt": 1e6, "usd_per_mtok_completion": 2e6,
                                "usd_per_request": 1.0},
                        "m/b": {"usd_per_mtok_prompt": 1e6, "usd_per_mtok_completion": 2e6}}}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def big_expected() -> tuple[int, float, float]:
    """Requests per model and each model's worst case, from the spec alone."""
    n = 1000 * 1000 * 5
    value_bytes = sum(  # each value of a var appears in n / len(values) requests
        n // len(values) * sum(len(str(v).encode()) for v in values)
        for values in BIG_VARS.values())
    prompt_tokens = n * (len(b"x  y  ") + 8 + 3) + value_bytes  # text, per-message, per-request
    completion_tokens = n * 10
    cost_b = prompt_tokens * 1.0 + completion_tokens * 2.0
    return n, cost_b + n * 1.0, cost_b


def test_plan_of_ten_million_requests_is_arithmetic(tmp_path: Path) -> None:
    """`runner plan` on 10M requests answers with exact counts and worst case; the old code
    rendered every request (and did not finish in minutes)."""
    import json
    import subprocess
    import sys

    path = big_job(tmp_path)
    done = subprocess.run([sys.executable, "-m", "runner", "plan", str(path), "--json",
                           "--show", "2"], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    n, cost_a, cost_b = big_expected()
    assert out["requests"] == 2 * n
    assert out["per_model"] == {"m/a": n, "m/b": n}
    assert out["worst_case_usd"] == {"m/a": cost_a, "m/b": cost_b}
    assert out["worst_case_total_usd"] == cost_a + cost_b
    assert [(r["model"], r["vars"], r["messages"]) for r in out["first_requests"]] == [
        ("m/a", {"a": "a0", "b": "b0", "c": "x"}, [{"role": "user", "content": "x a0 y b0 x"}]),
        ("m/b", {"a": "a0", "b": "b0", "c": "x"}, [{"role": "user", "content": "x a0 y b0 x"}]),
    ]


def test_validate_and_sizes_of_ten_million_requests_render_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runner.cli import main
    from runner.estimate import prompt_sizes
    from runner.templates import STATS

    path = big_job(tmp_path)
    before = (STATS.renders, STATS.compiles)
    assert main(["validate", str(path)]) == 0
    assert "-> 10000000 requests" in capsys.readouterr().out
    (size,) = prompt_sizes(Plan(load_job(path)))
    assert (STATS.renders, STATS.compiles) == before
    n, _, cost_b = big_expected()
    assert (size.combinations, size.sampled) == (n, False)
    assert size.prompt_tokens == cost_b - n * 10 * 2.0


SIZE_SPECS: dict[str, dict[str, Any]] = {
    **SPECS,
    "jinja-logic": {
        "models": ["m/a"], "vars": {"n": [1, 22, 333], "w": ["é", "ab"]},
        "prompts": [{"id": "p", "text": "{% for i in range(n % 5) %}{{ w|upper }}{% endfor %}"},
                    {"id": "mixed", "messages": [{"role": "user", "content": "{{ w }}!"},
                                                 {"role": "assistant",
                                                  "content": "{{ n * 2 }} {{ w }}"}]}],
    },
}


@pytest.mark.parametrize("spec", list(SIZE_SPECS.values()), ids=list(SIZE_SPECS))
def test_prompt_sizes_equal_the_sum_over_rendered_requests(tmp_path: Path,
                                                           spec: dict[str, Any]) -> None:
    from runner.estimate import prompt_sizes
    from runner.pricing import estimate_prompt_tokens

    plan = Plan(load(tmp_path, spec))
    first = plan.job.models[0].label
    per_prompt: Counter[str] = Counter()
    for request in plan:
        if request.model.label == first and request.repeat == 0:
            per_prompt[request.prompt_id] += estimate_prompt_tokens(request.messages)
    sizes = prompt_sizes(plan)
    assert {p.id: s.prompt_tokens for p, s in zip(plan.job.prompts, sizes, strict=True)} \
        == dict(per_prompt)
    assert not any(s.sampled for s in sizes)


def test_jinja_prompts_past_the_render_limit_are_sampled(tmp_path: Path) -> None:
    from runner.estimate import SAMPLES_PER_PROMPT, prompt_sizes
    from runner.templates import STATS

    job = load(tmp_path, {"models": ["m/a"], "vars": {"a": list(range(2000)),
                                                      "b": list(range(100))},
                          "prompts": [{"id": "p", "text": "{{ a|string }}-{{ b }}"}]})
    before = STATS.renders
    (size,) = prompt_sizes(Plan(job))
    assert size.sampled and size.combinations == 200_000
    assert STATS.renders - before <= 2 * SAMPLES_PER_PROMPT
    # the largest sampled rendering stands for every one: never below the real total
    real = sum(len(f"{a}-{b}".encode()) + 11 for a in range(2000) for b in range(100))
    assert size.prompt_tokens >= real


# --show -------------------------------------------------------------------------------------


def test_plan_show_prints_the_first_requests(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from runner.cli import main

    spec = {**SPECS["vars-in-messages"], "provider": "simulated",
            "providers": {"simulated": {"check_models": False}}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "t", **spec}), encoding="utf-8")
    plan = Plan(load_job(path))
    assert main(["plan", str(path), "--json", "--show", "3"]) == 0
    shown = json.loads(capsys.readouterr().out)["first_requests"]
    assert [(r["index"], r["model"], r["prompt_id"], r["vars"], r["request_id"]) for r in shown] \
        == [(r.index, r.model.label, r.prompt_id, dict(r.vars), r.request_id) for r in plan[:3]]
    assert shown[0]["messages"] == [{"role": m.role, "content": m.content}
                                    for m in plan[0].messages]
    assert main(["plan", str(path), "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert "#0 m/a" in out and "#1 m/b" in out and "#2" not in out
    assert "user: and a?" in out and "vars: q=1, r='a'" in out
