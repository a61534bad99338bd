"""The job files shipped in jobs/ load, plan and (offline ones) run; `validate` and `run` agree
on every job file of the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import runner
from runner.cli import main
from runner.plan import Plan
from tests.test_config import BAD, write_case

JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.mark.parametrize("name", ["quickstart", "compare-openrouter", "nightly"])
def test_shipped_jobs_validate(name: str) -> None:
    job = runner.load_job(JOBS / f"{name}.yaml")
    plan = Plan(job)
    assert len(plan) == sum(plan.count_by_model().values()) > 0


def test_quickstart_is_three_models_about_ten_prompts_two_repeats() -> None:
    job = runner.load_job(JOBS / "quickstart.yaml")
    assert len(job.models) == 3 and job.repeats == 2
    assert 8 <= len(job.prompts) <= 12
    assert {m.provider for m in job.models} == {"simulated"}
    assert any(p.vars for p in job.prompts)


def test_quickstart_runs_offline(tmp_path: Path) -> None:
    outcome = runner.run(JOBS / "quickstart.yaml", out_dir=tmp_path)
    df = outcome.rows
    assert outcome.status == "completed" and len(df) == outcome.manifest["planned_requests"]
    assert set(df["status"]) == {"ok"}
    by_model = runner.summarize(df).set_index("model")
    # the three simulated models differ in speed and price, and the table shows it
    assert by_model.loc["sim/fast-mini", "latency_p50_s"] < by_model.loc["premium",
                                                                         "latency_p50_s"]
    assert by_model.loc["sim/fast-mini", "cost_usd"] < by_model.loc["premium", "cost_usd"]


# validate = run ------------------------------------------------------------------------------

# refused by `run` (at start) but said ok by `validate` before: each was found by trying
LATE = [
    ("fault-rates-sum", "name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
     "prompts: [hi]\nsimulator:\n  models:\n    - id: sim/fast-mini\n"
     "      faults: {error_rate: 0.8, disconnect_rate: 0.6}\n", {}),
    ("fault-statuses", "name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
     "prompts: [hi]\nsimulator:\n  models:\n    - id: sim/fast-mini\n"
     "      faults: {error_rate: 0.1, error_statuses: [200]}\n", {}),
    ("late-template-trap", "name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
     "vars: {a: " + str(list(range(200))) + ", b: " + str(list(range(200))) + "}\n"
     "prompts: ['{% if a == 199 %}{{ \"\".__class__ }}{% endif %}{{ b }}']\n", {}),
    ("alias-bomb", "name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
     "prompts:\n  - id: p\n    text: hi\n    metadata:\n      a: &a [x, x, x, x, x, x, x, x]\n"
     + "".join(f"      l{k}: &{chr(98 + k)} [" + ", ".join([f"*{chr(97 + k)}"] * 8) + "]\n"
               for k in range(7)), {}),
    # the simulator's catalogue is known without a network: `run` refused these at start
    ("sim-model-not-offered", "name: t\nprovider: simulated\nmodels: [sim/nope]\n"
     "prompts: [hi]\n", {}),
    ("sim-fallback-not-offered", "name: t\nprovider: simulated\nmodels:\n"
     "  - {id: sim/fast-mini, extra_body: {models: [sim/balanced, sim/nope]}}\n"
     "prompts: [hi]\n", {}),
    ("sim-judge-not-offered", "name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
     "prompts: [hi]\nchecks:\n  - llm_judge: {model: sim/nope, rubric: Is it right}\n", {}),
    ("sim-budget-no-output-limit", "name: t\nprovider: simulated\nmodels: [sim/free:free]\n"
     "prompts: [hi]\nbudget_usd: 1\n", {}),
    ("pricing-budget-no-output-limit", "name: t\nprovider: simulated\n"
     "models: [sim/fast-mini]\nprompts: [hi]\nmax_cost_per_request_usd: 0.1\n"
     "pricing:\n  sim/fast-mini: {usd_per_mtok_prompt: 1, usd_per_mtok_completion: 2}\n", {}),
]
# issue 12, checks: refused at load, so by both
CHECKS = [
    ("check-template-regex", "name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
     "prompts: [hi]\nchecks:\n  - {regex: '({{ target }}'}\n", {}),
    ("check-names-twice", "name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
     "prompts: [hi]\nchecks:\n  - {contains: a, name: x}\n  - {contains: b, name: x}\n", {}),
    ("check-json-path", "name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
     "prompts: [hi]\nchecks:\n  - {equals: a, transform: {json_path: city}}\n", {}),
    ("judge-template", "name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
     "prompts: [hi]\nchecks:\n  - llm_judge: {model: sim/balanced, prompt: '{{ x'}\n", {}),
]
CASES = [(case[0], case[1], case[2]) for case in BAD] + LATE + CHECKS


def cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


@pytest.mark.parametrize(("text", "files"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_validate_and_run_agree_on_bad_job_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None,
        files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever `run` refuses because of the files, `validate` refuses first, with the same
    first line, and `run` stops before it writes anything."""
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-v1-TESTSECRET-not-used")
    path = write_case(tmp_path, text, files)
    validate_code, validate_err = cli(capsys, ["validate", str(path)])
    run_code, run_err = cli(capsys, ["run", "--quiet", "--out", str(tmp_path / "out"),
                                     str(path)])
    assert (validate_code, run_code) == (2, 2), validate_err + run_err
    first = validate_err.splitlines()[0]
    assert run_err.splitlines()[0].startswith(first.split(" (and ")[0])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("job", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.stem)
def test_validate_and_run_agree_on_shipped_jobs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], job: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A job `validate` calls ok is never refused by `run` for its files: offline jobs start
    (a budget too small for any request ends them at once); online ones get as far as the
    missing key."""
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    code, err = cli(capsys, ["validate", str(job)])
    assert code == 0, err
    code, err = cli(capsys, ["run", "--quiet", "--out", str(tmp_path), "--budget-usd",
                             "0.000000001", str(job)])
    offline = {m.provider for m in runner.load_job(job).models} == {"simulated"}
    if offline:
        assert code in (0, 1) and list(tmp_path.glob("*/*/run.json")), err
    else:
        assert code == 2 and "OPENROUTER_API_KEY" in err and f"{job}:" not in err, err


@pytest.mark.parametrize("text", [
    # a variant of a listed model is offered (the simulator speaks OpenRouter)
    "name: t\nprovider: simulated\nmodels: ['sim/fast-mini:nitro']\nprompts: [hi]\n",
    # the switch the refusal names lets an unlisted id through
    "name: t\nprovider: simulated\nproviders: {simulated: {check_models: false}}\n"
    "models: [sim/alias]\nprompts: [hi]\n",
    # a model the job's simulator: adds is listed
    "name: t\nprovider: simulated\nmodels: [sim/new]\nprompts: [hi]\n"
    "simulator:\n  models:\n    - {id: sim/new}\n",
    # with a budget, max_tokens bounds a model the simulator lists without an output limit
    "name: t\nprovider: simulated\nmodels: [sim/free:free]\nprompts: [hi]\nbudget_usd: 1\n"
    "params: {max_tokens: 8}\n",
], ids=["variant", "check-models-off", "job-adds-model", "bounded-by-max-tokens"])
def test_simulator_catalogue_at_load_lets_through_what_run_accepts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    path = write_case(tmp_path, text, {})
    code, err = cli(capsys, ["validate", str(path)])
    assert code == 0, err
