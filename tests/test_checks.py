"""Checks: every type passes and fails as documented; `expected` shorthand; bad definitions are
one `JobFileError` line naming the file and the field; real rows graded end to end."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

import runner
from runner.checks import (
    Check,
    Verdict,
    compile_check,
    compile_expected,
    evaluate,
    response_format_for,
)
from runner.cli import main
from runner.errors import JobFileError
from runner.schema import CheckIn

from .runs import run_graded

JOB = Path("job.yaml")
OK_ROW: dict[str, Any] = {"status": "ok", "latency_s": 1.5, "cost_usd": 0.002}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}


def _check(spec: dict[str, Any]) -> Check:
    return compile_check(CheckIn.model_validate(spec), path=JOB, field_name="checks[0]")


# check, response text, row (None: OK_ROW), passes, failure substring (when it fails)
CASES: list[tuple[dict[str, Any], str, dict[str, Any] | None, bool, str]] = [
    ({"equals": "Paris"}, "  Paris\n", None, True, ""),
    ({"equals": " Paris "}, "Paris", None, True, ""),
    ({"equals": "Paris"}, "paris", None, False, "equals 'Paris': got 'paris'"),
    ({"equals": 42}, "42", None, True, ""),
    ({"contains": "Paris"}, "The capital is Paris.", None, True, ""),
    ({"contains": "Paris"}, "The capital is paris.", None, False, "contains 'Paris': not found"),
    ({"icontains": "PARIS"}, "the capital is paris.", None, True, ""),
    ({"icontains": "Straße"}, "STRASSE", None, True, ""),                # casefold
    ({"icontains": "Paris"}, "Lyon", None, False, "icontains 'Paris': not found"),
    ({"not_contains": "sorry"}, "Here you go.", None, True, ""),
    ({"not_contains": "sorry"}, "I am sorry.", None, False, "not_contains 'sorry': found"),
    ({"regex": r"\b\d{4}\b"}, "It was 1969.", None, True, ""),           # search, not match
    ({"regex": "^[A-Z]"}, "lower case", None, False, "regex '^[A-Z]': no match"),
    ({"regex": "(?i)^yes"}, "YES, indeed", None, True, ""),
    ({"json_valid": True}, '{"a": [1, 2]}', None, True, ""),
    ({"json_valid": True}, '```json\n{"a": 1}\n```', None, True, ""),     # one enclosing fence
    ({"json_valid": True}, "{'a': 1}", None, False, "json_valid: not valid JSON"),
    ({"json_valid": True}, 'Sure! {"a": 1}', None, False, "not valid JSON"),
    ({"json_schema": SCHEMA}, '{"city": "Paris"}', None, True, ""),
    ({"json_schema": SCHEMA}, '{"city": 7}', None, False, "json_schema: at $.city: 7 is not"),
    ({"json_schema": SCHEMA}, '{"town": "Paris"}', None, False, "'city' is a required property"),
    ({"json_schema": SCHEMA}, "Paris", None, False, "json_schema: not valid JSON"),
    ({"max_latency_s": 2}, "x", None, True, ""),
    ({"max_latency_s": 1}, "x", None, False, "max_latency_s 1: took 1.500s"),
    ({"max_latency_s": 1}, "x", {"status": "ok"}, False, "latency unknown"),
    ({"max_cost_usd": 0.01}, "x", None, True, ""),
    ({"max_cost_usd": 0.001}, "x", None, False, "max_cost_usd 0.001: cost $0.002000"),
    ({"max_cost_usd": 0.01}, "x", {"status": "ok", "cost_usd": None}, False, "cost unknown"),
]


@pytest.mark.parametrize(("spec", "text", "row", "passes", "failure"), CASES,
                         ids=[f"{next(iter(c[0]))}-{'pass' if c[3] else 'fail'}-{n}"
                              for n, c in enumerate(CASES)])
def test_check_types(spec: dict[str, Any], text: str, row: dict[str, Any] | None, passes: bool,
                     failure: str) -> None:
    verdict = evaluate([_check(spec)], text, row or OK_ROW)
    assert verdict.passed is passes
    assert verdict.score == (1.0 if passes else 0.0)
    if passes:
        assert verdict.failures is None
    else:
        assert verdict.failures is not None and failure in verdict.failures


PYTHON_CHECKS = """
def short(text, row):
    return len(text) < 10

def fraction(text, row):
    return 0.25 if row["model"] == "m/slow" else 0.75

def boom(text, row):
    raise ValueError("bad input")

def weird(text, row):
    return "yes"
"""


@pytest.mark.parametrize(("target", "extra", "text", "passes", "score", "failure"), [
    ("short", {}, "tiny", True, 1.0, ""),
    ("short", {}, "much too long", False, 0.0, "python user_checks_a:short: returned False"),
    ("fraction", {}, "x", True, 0.75, ""),                       # passes at the default 0.5
    ("fraction", {"min_score": 0.8}, "x", False, 0.75, "score 0.75 < 0.8"),
    ("boom", {}, "x", False, 0.0, "raised ValueError: bad input"),
    ("weird", {}, "x", False, 0.0, "returned 'yes' (expected a bool or a score 0..1)"),
])
def test_python_check(tmp_path: Path, target: str, extra: dict[str, Any], text: str,
                      passes: bool, score: float, failure: str) -> None:
    (tmp_path / "user_checks_a.py").write_text(PYTHON_CHECKS)
    check = compile_check(CheckIn(python=f"user_checks_a:{target}", **extra),
                          path=tmp_path / "job.yaml", field_name="checks[0]")
    verdict = evaluate([check], text, {**OK_ROW, "model": "m/fast"})
    assert (verdict.passed, verdict.score) == (passes, score)
    assert failure in (verdict.failures or "")


def test_verdict_combines_checks_and_row_status() -> None:
    checks = [_check({"contains": "a"}), _check({"contains": "b"}), _check({"max_latency_s": 1})]
    assert evaluate(checks, "ab", {**OK_ROW, "latency_s": 0.5}) == Verdict(True, 1.0, None)
    verdict = evaluate(checks, "a", OK_ROW)
    assert verdict.passed is False and verdict.score == pytest.approx(1 / 3)
    assert verdict.failures == "contains 'b': not found; max_latency_s 1: took 1.500s"
    failed = evaluate(checks, None, {"status": "error", "error_type": "timeout"})
    assert failed == Verdict(False, 0.0, "no response (request failed: timeout)")
    assert evaluate(checks, None, {"status": "skipped"}) == Verdict(None, None, None)
    assert evaluate([], "anything", OK_ROW) == Verdict(None, None, None)


def test_externally_graded_checks_take_their_score_from_graded() -> None:
    # the shape an llm_judge check takes: no grader of its own, a score from the engine
    judge = Check("llm_judge", "llm_judge 'is polite'", "is polite", grade=None, min_score=0.7)
    assert evaluate([judge], "x", OK_ROW, graded={judge: 0.9}) == Verdict(True, 0.9, None)
    low = evaluate([judge], "x", OK_ROW, graded={judge: 0.5})
    assert low.passed is False and "score 0.50 < 0.7" in (low.failures or "")
    # a judge that was never asked (budget, failure) leaves the check, and the row, not graded
    ungraded = evaluate([judge], "x", OK_ROW)
    assert (ungraded.passed, ungraded.score) == (None, None)
    assert ungraded.failures == "llm_judge 'is polite': not graded (the judge was not asked)"


@pytest.mark.parametrize(("expected", "labels"), [
    (None, []),
    ("Paris", ["equals 'Paris'"]),
    (42, ["equals '42'"]),
    ({"contains": "Paris"}, ["contains 'Paris'"]),
    (["Paris", {"regex": "^P"}, {"max_latency_s": 3}],
     ["equals 'Paris'", "regex '^P'", "max_latency_s 3"]),
])
def test_expected_shorthand(expected: Any, labels: list[str]) -> None:
    checks = compile_expected(expected, path=JOB, field_name="prompts[0].expected")
    assert [c.label for c in checks] == labels


def test_response_format_carries_the_json_schema() -> None:
    checks = [_check({"contains": "x"}), _check({"json_schema": SCHEMA})]
    assert response_format_for(checks) == {"type": "json_schema", "json_schema": {
        "name": "response", "schema": SCHEMA, "strict": True}}
    loose = _check({"json_schema": SCHEMA, "strict": False})
    assert response_format_for([loose])["json_schema"]["strict"] is False  # type: ignore[index]
    assert response_format_for([_check({"json_valid": True})]) is None


HEAD = """
name: t
provider: simulated
models: [sim/fast-mini]
prompts:
  - {id: a, text: hi}
  - {id: b, text: yo, expected: EXPECTED}
checks:
  - contains: x
  - CHECK
"""

# job-level check (or the expected of prompt b), field named in the message, what it says
BAD: list[tuple[str, str, str, str]] = [
    ("{regex: '('}", "Paris", "checks[1].regex", "invalid regular expression: missing )"),
    ("{contans: x}", "Paris", "checks[1].contans", "unknown key (did you mean 'contains'?)"),
    ("{lol: x}", "Paris", "checks[1].lol", "unknown key"),
    ("{contains: x, regex: y}", "Paris", "checks[1]",
     "give exactly one check type of equals, contains"),
    ("{prompts: [a]}", "Paris", "checks[1]", "give exactly one check type"),
    ("{json_schema: {type: objekt}}", "Paris", "checks[1].json_schema",
     "invalid JSON schema at type"),
    ("{json_schema: {type: array, minItems: -1}}", "Paris", "checks[1].json_schema",
     "invalid JSON schema at minItems"),
    ("{json_valid: false}", "Paris", "checks[1].json_valid", "input should be True"),
    ("{max_latency_s: 0}", "Paris", "checks[1].max_latency_s", "greater than 0"),
    ("{max_cost_usd: -1}", "Paris", "checks[1].max_cost_usd", "greater than or equal to 0"),
    ("{python: not_a_target}", "Paris", "checks[1].python", "must be 'module:function'"),
    ("{python: 'no_such_module_x:f'}", "Paris", "checks[1].python",
     "cannot import 'no_such_module_x'"),
    ("{python: 'user_checks_b:missing'}", "Paris", "checks[1].python",
     "module 'user_checks_b' has no function 'missing'"),
    ("{python: 'broken_checks_b:f'}", "Paris", "checks[1].python",
     "importing 'broken_checks_b' failed: SyntaxError"),
    ("{contains: x, strict: true}", "Paris", "checks[1]", "strict: only applies to a json_schema"),
    ("{contains: x, min_score: 0.5}", "Paris", "checks[1]", "min_score: only applies to a python"),
    ("{contains: x, prompts: [zz]}", "Paris", "checks[1].prompts[0]", "unknown prompt id 'zz'"),
    ("{json_schema: {type: object}}", "{json_schema: {type: object}}", "checks[1].json_schema",
     "prompt 'b' already has a json_schema check (in expected)"),
    ("{max_latency_s: 1}", "{contans: Paris}", "prompts[1].expected.contans",
     "unknown key (did you mean 'contains'?)"),
    ("{max_latency_s: 1}", "[Paris, {regex: '('}]", "prompts[1].expected[1].regex",
     "invalid regular expression"),
    ("{max_latency_s: 1}", "true", "prompts[1].expected", "must be a string (equals)"),
    ("{max_latency_s: 1}", "[{contains: a, prompts: [a]}]", "prompts[1].expected[0].prompts",
     "only job-level checks take prompts:"),
]


@pytest.mark.parametrize(("check", "expected", "field", "problem"), BAD,
                         ids=[f"{n}-{c[2]}" for n, c in enumerate(BAD)])
def test_bad_check_definitions_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              check: str, expected: str, field: str,
                                              problem: str) -> None:
    (tmp_path / "user_checks_b.py").write_text("def f(text, row):\n    return True\n")
    (tmp_path / "broken_checks_b.py").write_text("def f(:\n")
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(HEAD).replace("CHECK", check).replace("EXPECTED", expected))
    with pytest.raises(JobFileError) as info:
        runner.load_job(path)
    assert info.value.field == field and problem in info.value.problem
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: {field}: " in err


def test_prompt_file_expected_and_job_checks_per_prompt(write_job) -> None:  # type: ignore[no-untyped-def]
    path = write_job("""
        name: t
        provider: simulated
        models: [sim/fast-mini]
        prompts:
          - {id: a, text: hi, expected: {icontains: hello}}
          - file: rows.jsonl
        checks:
          - {max_latency_s: 5}
          - {json_schema: {type: object}, prompts: [b], strict: false}
    """, **{"rows.jsonl": '{"id": "b", "text": "json please", "expected": "{}"}\n'
                          '{"id": "c", "text": "no checks of its own"}\n'})
    job = runner.load_job(path)
    labels = {p: [c.label for c in job.checks.for_prompt(p)] for p in ("a", "b", "c")}
    assert labels == {"a": ["icontains 'hello'", "max_latency_s 5"],
                      "b": ["equals '{}'", "max_latency_s 5", "json_schema"],
                      "c": ["max_latency_s 5"]}
    assert response_format_for(job.checks.for_prompt("a")) is None
    assert response_format_for(job.checks.for_prompt("b")) == {"type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}, "strict": False}}


def test_python_target_imports_from_the_job_folder(write_job) -> None:  # type: ignore[no-untyped-def]
    path = write_job("""
        name: t
        provider: simulated
        models: [sim/fast-mini]
        prompts: [hi]
        checks: [{python: "checks_next_to_job:ok"}]
    """, **{"checks_next_to_job.py": "def ok(text, row):\n    return row['status'] == 'ok'\n"})
    job = runner.load_job(path)
    (check,) = job.checks.for_prompt(job.prompts[0].id)
    assert evaluate([check], "x", OK_ROW).passed is True
    assert str(path.parent) not in __import__("sys").path


GRADED_JOB = """
name: graded
provider: simulated
simulator:
  models:
    - {id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}
    - {id: sim/balanced, ttft_s: 0, tokens_per_s: 0, faults: {error_rate: 0.5}}
models: [sim/fast-mini, sim/balanced]
prompts:
  - {id: words, text: "Say something", expected: {regex: "^[A-Z][a-z]+"}}
  - {id: exact, text: "Say Paris", expected: Paris}
  - {id: free, text: "Anything"}
checks:
  - {not_contains: "<script>", prompts: [words, exact]}
  - {max_cost_usd: 1.0, prompts: [words]}
params: {max_tokens: 30}
repeats: 3
limits: {retries: 0, concurrency: 4}
"""


def test_real_rows_are_graded(write_job, results_dir: Path) -> None:  # type: ignore[no-untyped-def]
    run_dir = run_graded(write_job(GRADED_JOB), results_dir)
    df = runner.read_results(run_dir)
    for column, dtype in (("passed", "boolean"), ("score", "float64"),
                          ("check_failures", "str"), ("judge_cost_usd", "float64"),
                          ("judge_prompt_tokens", "Int64")):
        assert str(df[column].dtype) == dtype, column
    ok = df[df["status"] == "ok"]
    words = ok[ok["prompt_id"] == "words"]
    assert len(words) and words["passed"].all() and (words["score"] == 1.0).all()
    exact = ok[ok["prompt_id"] == "exact"]     # simulated text is never just "Paris"
    assert len(exact) and (~exact["passed"]).all()
    assert exact["check_failures"].str.startswith("equals 'Paris': got ").all()
    assert df.loc[df["prompt_id"] == "free", "passed"].isna().all()
    errors = df[(df["status"] == "error") & (df["prompt_id"] != "free")]
    assert len(errors) and (~errors["passed"]).all()
    assert errors["check_failures"].str.startswith("no response").all()
    summary = runner.summarize(df)
    assert summary["pass_rate"].between(0, 1).all()


def test_nightly_job_loads_with_checks_of_several_kinds() -> None:
    job = runner.load_job(Path(__file__).resolve().parents[1] / "jobs" / "nightly.yaml")
    kinds = {c.kind for p in job.prompts for c in job.checks.for_prompt(p.id)}
    assert kinds >= {"icontains", "json_schema", "not_contains", "regex", "python",
                     "max_latency_s", "max_cost_usd"}
    assert all(job.checks.for_prompt(p.id) for p in job.prompts)
    response_format = response_format_for(job.checks.for_prompt("extract-json"))
    assert response_format is not None
    assert response_format["json_schema"]["schema"]["required"] == ["person", "city"]


# --- issue 12: values from the row, new types, transforms, names, weights, not graded ---------

ROW_CONTEXT = {"city": "Lyon", "target": "Paris", "dotted": "a.b", "paren": "(", "n": "1,000"}

# check, response text, context (None: ROW_CONTEXT), passed (None: not graded), reason substring
ROW_CASES: list[tuple[dict[str, Any], str, dict[str, Any] | None, bool | None, str]] = [
    ({"equals": "{{ target }}"}, " Paris\n", None, True, ""),
    ({"equals": "{{ target }}"}, "Lyon", None, False, "got 'Lyon'"),
    ({"icontains": "{{ city }}"}, "It is in LYON.", None, True, ""),
    ({"contains": "{{ city }}, France"}, "Lyon, France", None, True, ""),
    # a value inserted into a regex matches literally: the '.' of a.b is no wildcard
    ({"regex": "^{{ dotted }}$"}, "a.b", None, True, ""),
    ({"regex": "^{{ dotted }}$"}, "axb", None, False, "no match"),
    ({"regex": "(?i)^{{ target }}\\.?$"}, "paris.", None, True, ""),
    ({"not_regex": "{{ paren }}"}, "x ( y", None, False, "matched '('"),   # no re.error
    ({"not_regex": "(?i)sorry"}, "Here it is", None, True, ""),
    ({"contains_any": ["{{ city }}", "Marseille"]}, "Marseille!", None, True, ""),
    ({"contains_any": ["{{ city }}", "Marseille"]}, "Nice", None, False, "none found"),
    ({"contains_all": ["{{ city }}", "{{ target }}"]}, "Lyon and Paris", None, True, ""),
    ({"contains_all": ["{{ city }}", "{{ target }}"]}, "Lyon only", None, False,
     "missing 'Paris'"),
    ({"starts_with": "{{ target }}"}, "\n Paris is the answer", None, True, ""),
    ({"starts_with": "Yes"}, "No, Yes", None, False, "starts 'No, Yes'"),
    ({"number_close": {"value": "{{ n }}", "rel_tol": 0.01}}, "about 1,005 units", None, True,
     ""),
    ({"number_close": {"value": "{{ n }}", "rel_tol": 0.01}}, "1100", None, False,
     "got 1100, want 1000"),
    ({"number_close": {"value": 3.5, "abs_tol": 0.1}}, "Step 1: ... so 3.45", None, True, ""),
    ({"number_close": {"value": 2}}, "no digits here", None, False, "no number"),
    # values a row cannot give: not graded, never failed
    ({"number_close": {"value": "{{ city }}"}}, "42", None, None, "has no number"),
    ({"equals": "{{ target }}"}, "Paris", {"city": "Lyon"}, None, "the row has no target"),
    ({"icontains": "{{ country }}"}, "France", None, None, "the row has no 'country'"),
    # transforms before the check
    ({"equals": "{{ target }}", "transform": {"json_path": "$.answer.city"}},
     '```json\n{"answer": {"city": "Paris"}}\n```', None, True, ""),
    ({"equals": "2", "transform": {"json_path": "$.items[1]"}}, '{"items": [1, 2]}', None, True,
     ""),
    ({"equals": '{"a":1}', "transform": {"json_path": "$['x y']"}}, '{"x y": {"a": 1}}', None,
     True, ""),
    ({"equals": "Paris", "transform": {"json_path": "$.city"}}, '{"town": "Paris"}', None, False,
     "no value at $.city"),
    ({"equals": "Paris", "transform": {"json_path": "$.city"}}, "Paris", None, False,
     "not valid JSON"),
    ({"equals": "paris", "transform": ["last_line", "lower"]}, "Thinking...\n\nPARIS\n", None,
     True, ""),
    ({"equals": "Thinking...", "transform": "first_line"}, "\nThinking...\nParis", None, True, ""),
]


@pytest.mark.parametrize(("spec", "text", "context", "passed", "reason"), ROW_CASES,
                         ids=[f"{n}-{next(iter(c[0]))}" for n, c in enumerate(ROW_CASES)])
def test_check_values_come_from_the_row(spec: dict[str, Any], text: str,
                                        context: dict[str, Any] | None, passed: bool | None,
                                        reason: str) -> None:
    verdict = evaluate([_check(spec)], text, OK_ROW,
                       context=ROW_CONTEXT if context is None else context)
    (outcome,) = verdict.outcomes
    assert (verdict.passed, outcome.passed) == (passed, passed)
    assert outcome.score == {True: 1.0, False: 0.0, None: None}[passed]
    assert reason in (outcome.reason or "")
    if passed is None:
        assert verdict.failures is not None and "not graded (" in verdict.failures


def test_python_transform(tmp_path: Path) -> None:
    (tmp_path / "user_transforms.py").write_text(
        "def answer(text):\n    return text.split('ANSWER:')[-1].strip()\n"
        "def bad(text):\n    return 42\n")
    check = compile_check(CheckIn.model_validate(
        {"equals": "{{ target }}", "transform": {"python": "user_transforms:answer"}}),
        path=tmp_path / "job.yaml", field_name="checks[0]")
    assert evaluate([check], "work... ANSWER: Paris", OK_ROW, context={"target": "Paris"}).passed
    bad = compile_check(CheckIn.model_validate(
        {"equals": "x", "transform": {"python": "user_transforms:bad"}}),
        path=tmp_path / "job.yaml", field_name="checks[0]")
    assert "returned int, not text" in (evaluate([bad], "x", OK_ROW).failures or "")


def test_weights_names_and_not_graded_combine() -> None:
    heavy = _check({"contains": "a", "weight": 3, "name": "has a"})
    light = _check({"contains": "b"})
    judge = Check("llm_judge", "judge", None, grade=None, min_score=0.5)
    verdict = evaluate([heavy, light], "a", OK_ROW)
    assert verdict.passed is False and verdict.score == pytest.approx(0.75)
    assert verdict.failures == "contains 'b': not found"
    # a judge that was not asked: the row is not graded, its score from the graded checks
    ungraded = evaluate([heavy, judge], "a", OK_ROW)
    assert (ungraded.passed, ungraded.score) == (None, 1.0)
    # ...but a failed check still fails the row
    assert evaluate([light, judge], "a", OK_ROW).passed is False
    assert [o.name for o in ungraded.outcomes] == ["has a", "judge"]


def test_scalar_expected_is_the_target_and_a_check_chooses_how(write_job) -> None:  # type: ignore[no-untyped-def]
    path = write_job("""
        name: t
        provider: simulated
        models: [sim/fast-mini]
        prompts:
          - {id: plain, text: "Capital of France?", expected: Paris}
          - file: rows.csv
        checks:
          - {icontains: "{{ target }}", prompts: [q1, q2]}
          - {not_contains: sorry}
          - {not_contains: sorry}
    """, **{"rows.csv": "id,text,expected\nq1,Capital of Peru?,Lima\nq2,Capital of Kenya?,"
                        "Nairobi\n"})
    job = runner.load_job(path)
    assert job.checks.targets == {"plain": "Paris", "q1": "Lima", "q2": "Nairobi"}
    names = {p: [c.name for c in job.checks.for_prompt(p)] for p in ("plain", "q1")}
    # plain: no check reads the target, so it is compared with equals; q1: icontains decides
    assert names == {"plain": ["equals 'Paris'", "not_contains 'sorry'",
                               "not_contains 'sorry' #2"],
                     "q1": ["icontains '{{ target }}'", "not_contains 'sorry'",
                            "not_contains 'sorry' #2"]}
    from runner.checks import context_for
    from runner.plan import Plan

    request = next(r for r in Plan(job) if r.prompt_id == "q2")
    context = context_for(request, job.checks)
    assert context["target"] == "Nairobi"
    (icontains, *_) = job.checks.for_prompt("q2")
    assert evaluate([icontains], "It is nairobi.", OK_ROW, context=context).passed is True


def test_a_schema_that_only_validates_is_not_sent() -> None:
    quiet = _check({"json_schema": SCHEMA, "response_format": False})
    assert response_format_for([quiet]) is None
    assert evaluate([quiet], '{"city": 1}', OK_ROW).passed is False


BAD_ROW_CHECKS: list[tuple[str, str, str]] = [
    ("{equals: '{{ target '}", "checks[1].equals", "template error"),
    ("{regex: '({{ target }}'}", "checks[1].regex", "invalid regular expression"),
    ("{contains_any: []}", "checks[1].contains_any", "at least 1 item"),
    ("{number_close: {value: 3, rel_tol: -1}}", "checks[1].number_close.rel_tol",
     "greater than or equal to 0"),
    ("{contains: x, transform: {json_path: 'city'}}", "checks[1].transform[0].json_path",
     "is not a path like $.field"),
    ("{contains: x, transform: upper}", "checks[1].transform", "must be one of strip, lower"),
    ("{contains: x, transform: [lower, {python: nope}]}", "checks[1].transform",
     "step 2: python: must be 'module:function'"),
    ("{contains: x, response_format: false}", "checks[1]", "response_format: only applies"),
    ("{contains: x, weight: -1}", "checks[1].weight", "greater than or equal to 0"),
    ("{contains: x, weight: .inf}", "checks[1].weight", "finite number"),
    ("{llm_judge: {model: sim/balanced, scale: '1-5'}}", "checks[1].llm_judge.scale",
     "input should be"),
    ("{llm_judge: {model: sim/balanced, rubric: '{% if %}'}}", "checks[1].llm_judge.rubric",
     "template error"),
    ("{contains: x, name: 'same'}\n  - {contains: y, name: 'same'}", "checks",
     "are named 'same'"),
]


@pytest.mark.parametrize(("check", "field", "problem"), BAD_ROW_CHECKS,
                         ids=[f"{n}-{c[1]}" for n, c in enumerate(BAD_ROW_CHECKS)])
def test_bad_row_checks_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       check: str, field: str, problem: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(HEAD).replace("CHECK", check).replace("EXPECTED", "Paris"))
    with pytest.raises(JobFileError) as info:
        runner.load_job(path)
    assert info.value.field.startswith(field) and problem in info.value.problem.lower() \
        or problem in info.value.problem, (info.value.field, info.value.problem)
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_python_check_sees_the_rows_vars_and_target(tmp_path: Path) -> None:
    (tmp_path / "user_checks_c.py").write_text(
        "def same(text, row):\n"
        "    return text.strip() == row['target'] and row['vars'] == {'city': 'Lyon'}\n")
    check = compile_check(CheckIn(python="user_checks_c:same"), path=tmp_path / "job.yaml",
                          field_name="checks[0]")
    assert evaluate([check], "Paris", OK_ROW,
                    context={"city": "Lyon", "target": "Paris"}).passed is True
