"""Job files: every bad one is exit 2 and one line naming the file and the field; good ones load
into the `Job` the rest of the runner sees (prompt files, system prompts, params, API keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli import main
from runner.config import Job, Message, api_key, load_job
from runner.errors import ConfigError, JobFileError

QUICKSTART = Path(__file__).resolve().parents[1] / "jobs" / "quickstart.yaml"
HEAD = "name: t\nmodels: [m/a]\n"            # a valid start; cases append their prompts:
OK_PROMPTS = "prompts: [hi]\n"
LOCAL = "providers:\n  local: {base_url: 'http://127.0.0.1:9/v1', openrouter: false}\n"
ROWS = "rows.jsonl"
DATA_CSV = "q,a\nWhat is 2+2?,4\nCapital of France?,Paris\n"

# id, job YAML (None: no job file at all), extra files, file the message names, field substring
BAD: list[tuple[str, str | None, dict[str, str], str, str]] = [
    ("missing-job-file", None, {}, "job.yaml", "no such job file"),
    ("yaml-syntax", "name: t\nmodels:\n  - m/a\nprompts: [hi\nrepeats: 2\n", {}, "job.yaml",
     "line 5: invalid YAML"),
    ("yaml-tab", "name: t\nmodels:\n\t- m/a\n", {}, "job.yaml", "line 3"),
    ("top-level-list", "- name: t\n- models: [m/a]\n", {}, "job.yaml", "must be a YAML mapping"),
    ("top-level-empty", "", {}, "job.yaml", "must be a YAML mapping"),
    ("unknown-top-key", HEAD + OK_PROMPTS + "modles: [m/b]\n", {}, "job.yaml",
     "modles: unknown key (did you mean 'models'?)"),
    ("unknown-param", HEAD + OK_PROMPTS + "params: {temprature: 0.5}\n", {}, "job.yaml",
     "params.temprature: unknown key (did you mean 'temperature'?)"),
    ("unknown-model-key", "name: t\nmodels: [{id: m/a, parms: {}}]\n" + OK_PROMPTS, {},
     "job.yaml", "models[0].parms: unknown key (did you mean 'params'?)"),
    ("missing-name", "models: [m/a]\n" + OK_PROMPTS, {}, "job.yaml",
     "name: required field is missing"),
    ("temperature-type", HEAD + OK_PROMPTS + "params: {temperature: hot}\n", {}, "job.yaml",
     "params.temperature: input should be a valid number"),
    ("temperature-range", HEAD + OK_PROMPTS + "params: {temperature: 5}\n", {}, "job.yaml",
     "params.temperature: input should be less than or equal to 2 (got 5)"),
    ("model-temperature-type", "name: t\nmodels: [m/a, {id: m/b, params: {temperature: hot}}]\n"
     + OK_PROMPTS, {}, "job.yaml", "models[1].params.temperature: input should be a valid number"),
    ("repeats-zero", HEAD + OK_PROMPTS + "repeats: 0\n", {}, "job.yaml", "repeats: input should"),
    ("concurrency-negative", HEAD + OK_PROMPTS + "limits: {concurrency: -5}\n", {}, "job.yaml",
     "limits.concurrency: input should be greater than 0 (got -5)"),
    ("pricing-negative", HEAD + OK_PROMPTS + "pricing:\n  Org/Model: {usd_per_mtok_prompt: -1, "
     "usd_per_mtok_completion: 1}\n", {}, "job.yaml", "pricing.Org/Model.usd_per_mtok_prompt"),
    ("budget-zero", HEAD + OK_PROMPTS + "budget_usd: 0\n", {}, "job.yaml", "budget_usd"),
    ("job-provider", "name: t\nprovider: nope\nmodels: [m/a]\n" + OK_PROMPTS, {}, "job.yaml",
     "provider: unknown provider 'nope'"),
    ("model-provider", "name: t\nmodels: [m/a, {id: m/b, provider: nope}]\n" + OK_PROMPTS, {},
     "job.yaml", "models[1].provider: unknown provider 'nope'"),
    ("custom-provider-no-url", "name: t\nproviders: {local: {api_key_env: LOCAL_KEY}}\n"
     "models: [m/a]\n" + OK_PROMPTS, {}, "job.yaml", "providers.local.base_url: required"),
    ("provider-url-scheme", "name: t\nproviders: {Local: {base_url: 'ftp://x'}}\n"
     "models: [m/a]\n" + OK_PROMPTS, {}, "job.yaml", "providers.Local.base_url: must start with"),
    ("api-key-env-is-a-key", "name: t\nproviders:\n  local: {base_url: 'http://x/v1', "
     "api_key_env: 'sk-or-v1-0123456789abcdef'}\nmodels: [m/a]\n" + OK_PROMPTS, {}, "job.yaml",
     "providers.local.api_key_env: must be the NAME of an environment variable"),
    ("provider-url-no-host", "name: t\nproviders: {local: {base_url: 'http:///v1'}}\n"
     "models: [m/a]\n" + OK_PROMPTS, {}, "job.yaml", "providers.local.base_url: has no host name"),
    ("provider-url-port", "name: t\nproviders: {local: {base_url: 'http://x:80a/v1'}}\n"
     "models: [m/a]\n" + OK_PROMPTS, {}, "job.yaml", "providers.local.base_url: is not a valid"),
    ("header-line-break", "name: t\nproviders:\n  local: {base_url: 'http://x/v1', headers: "
     "{X-Title: \"a\\r\\nX-Evil: 1\"}}\nmodels: [m/a]\n" + OK_PROMPTS, {}, "job.yaml",
     "providers.local.headers: the value of header 'X-Title' contains a line break or NUL"),
    ("header-name", "name: t\nproviders:\n  local: {base_url: 'http://x/v1', headers: "
     "{'X Title': a}}\nmodels: [m/a]\n" + OK_PROMPTS, {}, "job.yaml",
     "providers.local.headers: header name 'X Title' is not a valid HTTP header name"),
    ("simulated-with-url", "name: t\nproviders: {simulated: {base_url: 'http://x/v1'}}\n"
     "models: [m/a]\n" + OK_PROMPTS, {}, "job.yaml", "providers.simulated:"),
    ("undefined-var", HEAD + "prompts: [hi, 'Say {{ word }}']\n", {}, "job.yaml",
     "prompts[1].text: undefined variable 'word'"),
    ("undefined-var-in-job-system", HEAD + "system: 'Be {{ tone }}'\n" + OK_PROMPTS, {},
     "job.yaml", "system: undefined variable 'tone'"),
    ("undefined-var-in-messages", HEAD + "system: Be brief.\nprompts:\n  - messages:\n"
     "      - {role: user, content: '{{ nope }}'}\n", {}, "job.yaml",
     "prompts[0].messages[0].content: undefined variable 'nope'"),
    ("template-syntax", HEAD + "prompts: [a, b, 'Say {{ word ']\nvars: {word: hi}\n", {},
     "job.yaml", "prompts[2].text: template error on line 1"),
    ("sandbox-escape", HEAD + "prompts: [\"{{ ''.__class__.__mro__ }}\"]\n", {}, "job.yaml",
     "prompts[0].text: template cannot be rendered: access to attribute '__class__'"),
    ("sandbox-escape-subclasses", HEAD + "prompts:\n  - id: x\n    text: \"{{ ().__class__"
     ".__base__.__subclasses__() }}\"\n", {}, "job.yaml", "prompts[0].text: template cannot"),
    ("sandbox-escape-globals", HEAD + "prompts: ['{{ cycler.__init__.__globals__ }}']\n", {},
     "job.yaml", "prompts[0].text: template cannot be rendered"),
    # an expression on a var value of the wrong kind: one line naming it, never a traceback
    ("expression-on-wrong-kind", HEAD + "vars: {n: [1, a]}\nprompts: ['{{ n + 1 }}']\n", {},
     "job.yaml", "prompts[0].text: template cannot be rendered with {'n': 'a'}: TypeError:"),
    ("template-recursion", HEAD + "prompts: ['{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}']"
     "\n", {}, "job.yaml", "prompts[0].text: template cannot be rendered: RecursionError:"),
    ("expression-divides-by-zero", HEAD + "vars: {n: 0}\nprompts: ['{{ 1 / n }}']\n", {},
     "job.yaml", "prompts[0].text: template cannot be rendered: ZeroDivisionError:"),
    ("duplicate-prompt-id", HEAD + "prompts: [{id: a, text: x}, {id: a, text: y}]\n", {},
     "job.yaml", "prompts[1].id: duplicate prompt id 'a' (also at prompts[0])"),
    ("duplicate-id-inline-vs-file", HEAD + f"prompts: [{{id: a, text: x}}, {{file: {ROWS}}}]\n",
     {ROWS: '{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n'}, "job.yaml",
     "rows.jsonl: row 2.id: duplicate prompt id 'a' (also at prompts[0])"),
    ("text-and-messages", HEAD + "prompts:\n  - text: x\n    messages: [{role: user, "
     "content: y}]\n", {}, "job.yaml",
     "prompts[0]: give exactly one of text, messages, turns or prompts_file "
     "(got text, messages)"),
    ("neither-text-nor-messages", HEAD + "prompts: [{id: q, system: s}]\n", {}, "job.yaml",
     "prompts[0]: give exactly one of text, messages, turns or prompts_file"),
    ("text-wrong-type", HEAD + "prompts: [a, b, {text: 5}]\n", {}, "job.yaml",
     "prompts[2].text: input should be a valid string"),
    ("bad-role", HEAD + "prompts: [{messages: [{role: bot, content: x}]}]\n", {}, "job.yaml",
     "prompts[0].messages[0].role"),
    ("file-with-other-keys", HEAD + f"prompts: [{{file: {ROWS}, id: x}}]\n",
     {ROWS: '{"text": "y"}\n'}, "job.yaml",
     "prompts[0]: a prompts file item takes only dataset: and templating:"),
    ("missing-prompt-file", HEAD + "prompts: [{file: nothere.jsonl}]\n", {}, "nothere.jsonl",
     "no such prompt file (named in prompts[0].file"),
    ("bad-json-line", HEAD + f"prompts: [{{file: {ROWS}}}]\n",
     {ROWS: '{"text": "ok"}\n{"text": "oops",}\n'}, ROWS, "line 2: invalid JSON"),
    ("prompt-file-row-no-text", HEAD + f"prompts: [{{file: {ROWS}}}]\n",
     {ROWS: '{"text": "ok"}\n{"id": "x"}\n'}, ROWS, "row 2"),
    ("prompt-file-not-a-list", HEAD + "prompts: [{file: rows.yaml}]\n",
     {"rows.yaml": "text: x\n"}, "rows.yaml", "must be a YAML list"),
    ("prompt-file-suffix", HEAD + "prompts: [{file: rows.md}]\n", {"rows.md": "x\n"},
     "rows.md", "must end in .jsonl, .json, .csv, .yaml or .txt"),
    ("prompt-file-undefined-var", HEAD + f"prompts: [{{file: {ROWS}}}]\n",
     {ROWS: '{"text": "ok"}\n{"text": "{{ nope }}"}\n'}, "job.yaml",
     "rows.jsonl: row 2.text: undefined variable 'nope'"),
    ("name-dotdot", "name: ../evil\nmodels: [m/a]\n" + OK_PROMPTS, {}, "job.yaml",
     "name: must be one safe folder name"),
    ("name-slash", "name: a/b\nmodels: [m/a]\n" + OK_PROMPTS, {}, "job.yaml",
     "name: must be one safe folder name"),
    ("duplicate-model", "name: t\nmodels: [m/a, m/b, m/a]\n" + OK_PROMPTS, {}, "job.yaml",
     "models[2]: duplicate model 'm/a'"),
    ("duplicate-alias", "name: t\nmodels: [m/a, {id: m/b, alias: m/a}]\n" + OK_PROMPTS, {},
     "job.yaml", "models[1]: duplicate model 'm/a'"),
    ("empty-job-vars", HEAD + "vars: {v: []}\nprompts: ['{{ v }}']\n", {}, "job.yaml",
     "vars.v: empty list"),
    ("empty-prompt-vars", HEAD + "prompts: [{text: '{{ v }}', vars: {v: []}}]\n", {},
     "job.yaml", "prompts[0].vars.v: empty list"),
    ("duplicate-var-value", HEAD + "vars: {v: [a, b, a]}\nprompts: ['{{ v }}']\n", {},
     "job.yaml", "vars.v: duplicate value"),
    ("openrouter-only-extra-body", "name: t\n" + LOCAL + "models:\n  - id: m/a\n"
     "    provider: local\n    extra_body: {provider: {order: [x]}}\n" + OK_PROMPTS, {},
     "job.yaml", "models[0].extra_body.provider: OpenRouter-only field"),
    ("max-price-not-openrouter", "name: t\n" + LOCAL + "models:\n  - id: m/a\n"
     "    provider: local\n    max_price_usd_per_mtok: {prompt: 1}\n" + OK_PROMPTS, {}, "job.yaml",
     "models[0].extra_body.provider: OpenRouter-only field"),
    ("empty-models", "name: t\nmodels: []\n" + OK_PROMPTS, {}, "job.yaml",
     "models: list should have at least 1 item"),
    ("empty-prompts", HEAD + "prompts: []\n", {}, "job.yaml",
     "prompts: list should have at least 1 item"),
    # conversations and content parts (tests/test_conversations.py, tests/test_content.py)
    ("blank-turn", HEAD + "prompts: [{turns: [hi, ' ']}]\n", {}, "job.yaml",
     "prompts[0].turns: turn 2 is empty"),
    ("missing-image", HEAD + "prompts: [{messages: [{role: user, content: [hi, {image: a.png}]}]}]"
     "\n", {}, "job.yaml", "prompts[0].messages[0].content[1].image: no such image file"),
    ("not-an-image", HEAD + "prompts: [{messages: [{role: user, content: [{image: a.png}]}]}]\n",
     {"a.png": "text"}, "job.yaml", "is not a PNG, JPEG, GIF or WebP image"),
    # batch mode (issue 15): OpenRouter has no batch API
    ("batch-openrouter-provider", "name: t\nproviders: {openrouter: {batch: true}}\n"
     "models: [m/a]\n" + OK_PROMPTS, {}, "job.yaml",
     "providers.openrouter.batch: OpenRouter has no batch API"),
    ("batch-openrouter-model", "name: t\nmodels: [{id: m/a, batch: true}]\n" + OK_PROMPTS, {},
     "job.yaml", "models[0].batch: OpenRouter has no batch API"),
    ("batch-discount-range", "name: t\n" + LOCAL + "models: [{id: m/a, provider: local}]\n"
     + OK_PROMPTS + "pricing:\n  m/a: {usd_per_mtok_prompt: 1, usd_per_mtok_completion: 1, "
     "batch_discount: 1.5}\n", {}, "job.yaml", "pricing.m/a.batch_discount"),
    # datasets (issue 12): see tests/test_datasets.py
    *[(f"dataset-{name}", HEAD + "prompts:\n  - " + item + "\n", {"d.csv": DATA_CSV, **files},
       named, expected) for name, item, files, named, expected in [
        ("missing-file", "{text: '{{ q }}', dataset: nope.csv}", {}, "job.yaml",
         "prompts[0].dataset.path: no such dataset file 'nope.csv'"),
        ("unknown-key", "{text: '{{ q }}', dataset: {path: d.csv, limt: 3}}", {}, "job.yaml",
         "prompts[0].dataset.limt: unknown key (did you mean 'limit'?)"),
        ("suffix", "{text: '{{ q }}', dataset: d.txt}", {"d.txt": "q\n"}, "job.yaml",
         "prompts[0].dataset.path: a dataset must end in .csv"),
        ("no-template", "{dataset: d.csv}", {}, "job.yaml",
         "prompts[0]: a dataset: needs the prompt it fills"),
        ("undefined-var", "{text: '{{ question }}', dataset: d.csv}", {}, "job.yaml",
         "prompts[0].text: undefined variable 'question' (define it a field of the dataset"),
        ("target-field", "{text: '{{ q }}', dataset: {path: d.csv, target: answr}}", {},
         "job.yaml", "prompts[0].dataset.target: no field 'answr' in the dataset"),
        ("where-field", "{text: '{{ q }}', dataset: {path: d.csv, where: {lvl: 1}}}", {},
         "job.yaml", "prompts[0].dataset: field 'lvl': no such field in the dataset"),
        ("no-match", "{text: '{{ q }}', dataset: {path: d.csv, where: {a: zzz}}}", {},
         "job.yaml", "prompts[0].dataset.where: no row of the dataset matches"),
        ("rename-field", "{text: '{{ q }}', dataset: {path: d.csv, rename: {x: y}}}", {},
         "job.yaml", "prompts[0].dataset.rename.x: no such field"),
        ("duplicate-id", "{text: '{{ q }}', dataset: {path: d.csv, id_field: a}}",
         {"d.csv": "q,a\nx,1\ny,1\n"}, "job.yaml",
         "prompts[0].dataset.id_field: id '1' is used by rows 1 and 2"),
        ("bad-jsonl", "{text: '{{ q }}', dataset: d.jsonl}", {"d.jsonl": '{"q": 1}\n{"q": \n'},
         "d.jsonl", "line 2: invalid JSON"),
        ("row-not-object", "{text: '{{ q }}', dataset: d.json}", {"d.json": '[{"q": 1}, 2]'},
         "d.json", "row 2: each row must be an object"),
        ("csv-header-twice", "{text: '{{ q }}', dataset: d.csv}", {"d.csv": "q,q\n1,2\n"},
         "d.csv", "line 1: column 'q' is named twice"),
        ("parquet-unreadable", "{text: '{{ q }}', dataset: d.parquet}",
         {"d.parquet": "not parquet"}, "d.parquet", "not a readable Parquet file"),
        ("row-trips-template", "{text: '{{ q.__class__ }}', dataset: d.csv}", {}, "job.yaml",
         "prompts[0].text: template cannot be rendered with row 1 of d.csv"),
        ("file-and-text", "{file: d.csv, text: '{{ q }}'}", {}, "job.yaml",
         "prompts[0]: file: holds whole prompts, and text: is a prompt; to fill text: with "
         "the rows of a data file, name the file under dataset: instead"),
        ("prompts-file-is-data", "{prompts_file: d.csv}", {}, "d.csv",
         "row 1: has no text or messages: a prompts file holds whole prompts"),
    ]],
    ("stored-field-missing", "name: t\nmodels: [{id: out, provider: stored}]\nprompts:\n"
     "  - {text: '{{ q }}', dataset: d.csv}\n", {"d.csv": DATA_CSV}, "job.yaml",
     "models[0].id: provider stored answers with the row field named by the id: no field 'out'"),
    ("stored-judge", "name: t\nprovider: stored\nmodels: [a]\nprompts:\n"
     "  - {text: '{{ q }}', dataset: d.csv}\nchecks:\n  - llm_judge: {model: m/j, rubric: ok}\n",
     {"d.csv": DATA_CSV}, "job.yaml", "llm_judge.provider: judge 'm/j' would be answered by"),
    # a job-level check reading a var its prompt's rows lack: refused, not "not graded" x N
    ("check-undefined-var", HEAD + "vars: {city: [a]}\nprompts: ['in {{ city }}']\nchecks:\n"
     "  - {icontains: '{{ ctiy }}'}\n", {}, "job.yaml",
     "checks[0].icontains: undefined variable 'ctiy' for prompt"),
    ("check-target-missing", HEAD + OK_PROMPTS + "checks:\n  - {equals: '{{ target }}'}\n", {},
     "job.yaml", "checks[0].equals: reads {{ target }} but prompt"),
    ("stored-without-dataset", "name: t\nmodels: [{id: q, provider: stored}]\nprompts: [hi]\n",
     {}, "job.yaml", "models[0]: provider stored answers with a field of each dataset row"),
    # load tests (tests/test_load.py has the whole table of these)
    ("load-no-rate", HEAD + OK_PROMPTS + "load: {mode: poisson, duration_s: 5}\n", {},
     "job.yaml", "load.rate_rps: mode poisson needs a rate"),
    ("load-no-bounds", HEAD + OK_PROMPTS + "load: {mode: constant, rate_rps: 5}\n", {},
     "job.yaml", "load.duration_s: give the stage's bounds"),
    ("load-with-cache", HEAD + OK_PROMPTS + "cache: true\n"
     "load: {mode: constant, rate_rps: 5, requests: 4}\n", {}, "job.yaml",
     "cache: a load test (load:) measures the endpoint"),
    ("load-with-batch", "name: t\n" + LOCAL + "models: [{id: m/a, provider: local, batch: true}]\n"
     + OK_PROMPTS + "load: {mode: constant, rate_rps: 5, requests: 4}\n", {}, "job.yaml",
     "load: a load test sends on a schedule; batch mode"),
    # issue 13: an output URL is stored in run.json, so it must not hold a key
    ("output-url-with-key", HEAD + OK_PROMPTS + "output: {dir: 's3://AKIAX:SECRETX@b/p'}\n", {},
     "job.yaml", "output.dir: s3:// URL holds credentials (got user:key@, not shown)"),
]
BAD_IDS = [case[0] for case in BAD]
RUN_TOO = {"missing-job-file", "unknown-top-key", "model-provider", "sandbox-escape",
           "bad-json-line", "header-line-break"}


def write_case(tmp_path: Path, text: str | None, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    path = tmp_path / "job.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    return path


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr; return that line."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("text", "files", "named", "expected"),
                         [case[1:] for case in BAD], ids=BAD_IDS)
def test_bad_job_file_is_one_line_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, files: dict[str, str],
    named: str, expected: str,
) -> None:
    path = write_case(tmp_path, text, files)
    line = one_error_line(capsys, ["validate", str(path)])
    assert line.startswith("runner: error: ")
    assert str(tmp_path / named) in line
    assert expected in line


@pytest.mark.parametrize(("text", "files", "named", "expected"),
                         [case[1:] for case in BAD if case[0] in RUN_TOO],
                         ids=[i for i in BAD_IDS if i in RUN_TOO])
def test_run_refuses_bad_job_file_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, files: dict[str, str],
    named: str, expected: str,
) -> None:
    path = write_case(tmp_path, text, files)
    line = one_error_line(capsys, ["run", "--quiet", "--out", str(tmp_path / "out"), str(path)])
    assert str(tmp_path / named) in line
    assert expected in line
    assert not (tmp_path / "out").exists()


def test_bad_job_file_raises_job_file_error_with_field(tmp_path: Path) -> None:
    path = write_case(tmp_path, HEAD + OK_PROMPTS + "params: {temperature: 5}\n", {})
    with pytest.raises(JobFileError) as info:
        load_job(path)
    assert info.value.field == "params.temperature"
    assert info.value.path == str(path)


def test_sandbox_refuses_instead_of_rendering(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write_case(tmp_path, HEAD + "prompts: [\"{{ ''.__class__.__mro__ }}\"]\n", {})
    line = one_error_line(capsys, ["validate", str(path)])
    assert "unsafe" in line and "<class" not in line and "mro" not in line.split(":")[-1]


def test_key_given_as_api_key_env_is_not_echoed(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    secret = "sk-or-v1-0123456789abcdef0123456789"
    path = write_case(tmp_path, f"name: t\nproviders:\n  local: {{base_url: 'http://x/v1', "
                      f"api_key_env: '{secret}'}}\nmodels: [m/a]\n" + OK_PROMPTS, {})
    line = one_error_line(capsys, ["validate", str(path)])
    assert "api_key_env" in line
    assert secret not in line and "0123456789" not in line


# good paths ---------------------------------------------------------------------------------


def load(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Job:
    return load_job(write_case(tmp_path, text, files or {}))


def test_quickstart_loads() -> None:
    job = load_job(QUICKSTART)
    assert job.name == "quickstart"
    assert job.path == QUICKSTART
    assert [m.label for m in job.models] == ["sim/fast-mini", "sim/balanced", "premium"]
    assert {m.provider for m in job.models} == {"simulated"}
    premium = job.models[2]
    assert premium.id == "sim/premium-large"
    assert dict(premium.params) == {"temperature": 0.2, "max_tokens": 96, "stream": True}
    assert dict(job.models[0].params) == {"temperature": 0.7, "max_tokens": 96, "stream": True}
    ids = [p.id for p in job.prompts]
    assert ids[:3] == ["capital", "explain-gc", "haiku"]
    assert "sql-join" in ids and len(ids) == len(set(ids)) == 10
    by_id = {p.id: p for p in job.prompts}
    assert dict(by_id["capital"].vars) == {"country": ("France", "Japan")}
    assert dict(by_id["explain-gc"].vars) == {"language": ("Python", "Rust")}
    assert dict(by_id["haiku"].vars) == {}
    assert dict(by_id["summarize"].vars) == {"book": ("Moby-Dick",)}
    assert job.repeats == 2 and job.budget_usd == 0.5
    assert job.limits.concurrency == 16 and job.limits.stall_timeout_s == 20


def test_quickstart_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(QUICKSTART)]) == 0
    out, err = capsys.readouterr()
    assert "ok" in out and "78 requests" in out and err == ""


PROMPT_FILES = {
    "jsonl": '{"id": "q1", "text": "Say {{ word }} in {{ lang }}", "word": "hi", '
             '"lang": ["en", "fr"]}\n\n{"id": 2, "text": "Plain", "note": "unused"}\n',
    "csv": "id,text,word,lang\nq1,Say {{ word }} in {{ lang }},hi,en\n2,Plain,,\n",
    "yaml": "- {id: q1, text: 'Say {{ word }} in {{ lang }}', word: hi, lang: [en, fr]}\n"
            "- {id: 2, text: Plain, note: unused}\n",
}


@pytest.mark.parametrize("suffix", list(PROMPT_FILES))
def test_prompt_file_rows_become_prompts_and_extra_columns_vars(tmp_path: Path,
                                                                suffix: str) -> None:
    job = load(tmp_path, HEAD + f"prompts: [{{file: rows.{suffix}}}, inline]\n",
               {f"rows.{suffix}": PROMPT_FILES[suffix]})
    first, second, inline = job.prompts
    assert (first.id, second.id) == ("q1", "2")
    assert first.messages == (Message("user", "Say {{ word }} in {{ lang }}"),)
    langs = ("en",) if suffix == "csv" else ("en", "fr")
    assert dict(first.vars) == {"lang": langs, "word": ("hi",)}
    assert second.messages == (Message("user", "Plain"),) and dict(second.vars) == {}
    assert inline.messages == (Message("user", "inline"),)


def test_prompt_file_path_is_relative_to_the_job_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rows.jsonl").write_text('{"id": "a", "text": "x"}\n')
    job = load(tmp_path, HEAD + "prompts: [{file: sub/rows.jsonl}]\n")
    assert [p.id for p in job.prompts] == ["a"]


def test_prompt_file_rows_keep_system_expected_and_metadata(tmp_path: Path) -> None:
    row = ('{"id": "a", "text": "x", "system": "S", "expected": "42", '
           '"metadata": {"topic": "math"}}\n')
    job = load(tmp_path, HEAD + "system: J\nprompts: [{file: rows.jsonl}]\n", {ROWS: row})
    (prompt,) = job.prompts
    assert prompt.messages == (Message("system", "S"), Message("user", "x"))
    assert prompt.expected == "42" and dict(prompt.metadata) == {"topic": "math"}


SYSTEM_CASES = [
    ("job-system-prepended", "system: J\nprompts: [{id: a, text: x}]\n",
     [("system", "J"), ("user", "x")]),
    ("prompt-system-overrides", "system: J\nprompts: [{id: a, text: x, system: P}]\n",
     [("system", "P"), ("user", "x")]),
    ("prompt-system-without-job-system", "prompts: [{id: a, text: x, system: P}]\n",
     [("system", "P"), ("user", "x")]),
    ("no-system", "prompts: [{id: a, text: x}]\n", [("user", "x")]),
    ("messages-keep-roles", "prompts:\n  - id: a\n    messages:\n"
     "      - {role: user, content: u1}\n      - {role: assistant, content: a1}\n"
     "      - {role: user, content: u2}\n",
     [("user", "u1"), ("assistant", "a1"), ("user", "u2")]),
    ("messages-get-job-system", "system: J\nprompts:\n  - id: a\n    messages:\n"
     "      - {role: user, content: u1}\n      - {role: assistant, content: a1}\n",
     [("system", "J"), ("user", "u1"), ("assistant", "a1")]),
    ("messages-own-system-wins", "system: J\nprompts:\n  - id: a\n    messages:\n"
     "      - {role: developer, content: d}\n      - {role: system, content: S}\n"
     "      - {role: user, content: u}\n",
     [("developer", "d"), ("system", "S"), ("user", "u")]),
]


@pytest.mark.parametrize(("yaml_tail", "expected"), [c[1:] for c in SYSTEM_CASES],
                         ids=[c[0] for c in SYSTEM_CASES])
def test_system_and_messages(tmp_path: Path, yaml_tail: str,
                             expected: list[tuple[str, str]]) -> None:
    (prompt,) = load(tmp_path, HEAD + yaml_tail).prompts
    assert [(m.role, m.content) for m in prompt.messages] == expected


def test_model_params_override_job_params(tmp_path: Path) -> None:
    job = load(tmp_path, "name: t\nparams: {temperature: 0.7, max_tokens: 96, seed: 1}\n"
               "models:\n  - m/a\n  - id: m/b\n    params: {temperature: 0.2, top_p: 0.9}\n"
               + OK_PROMPTS)
    a, b = job.models
    assert dict(a.params) == {"temperature": 0.7, "max_tokens": 96, "seed": 1}
    assert dict(b.params) == {"temperature": 0.2, "max_tokens": 96, "seed": 1, "top_p": 0.9}


def test_plain_string_models_and_prompts(tmp_path: Path) -> None:
    job = load(tmp_path, "name: t\nmodels: [openai/gpt-4o-mini, m/b]\nprompts: [hello, bye]\n")
    a, b = job.models
    assert (a.id, a.label, a.provider) == ("openai/gpt-4o-mini", "openai/gpt-4o-mini",
                                           "openrouter")
    assert dict(a.params) == {} and dict(a.extra_body) == {}
    assert b.label == "m/b"
    hello, bye = job.prompts
    assert hello.messages == (Message("user", "hello"),)
    assert hello.id.startswith("p-") and hello.id != bye.id
    assert load(tmp_path, "name: t\nmodels: [x]\nprompts: [hello]\n").prompts[0].id == hello.id


def test_custom_provider_and_max_price(tmp_path: Path) -> None:
    job = load(tmp_path, "name: t\nprovider: local\n" + LOCAL
               + "models:\n  - m/a\n  - id: m/b\n    provider: openrouter\n"
               "    max_price_usd_per_mtok: {prompt: 1}\n" + OK_PROMPTS)
    local = job.providers["local"]
    assert (local.base_url, local.openrouter, local.api_key_env) == (
        "http://127.0.0.1:9/v1", False, None)
    assert job.models[0].provider == "local"
    assert dict(job.models[1].extra_body) == {"provider": {"max_price": {"prompt": 1.0}}}


def test_missing_openrouter_key_is_a_clear_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.setenv("OTHER_API_KEY", "sk-other-secret-value")
    job = load(tmp_path, HEAD + OK_PROMPTS)
    provider = job.providers[job.models[0].provider]
    with pytest.raises(ConfigError, match="OPENROUTER_API_KEY") as info:
        api_key(provider)
    assert "openrouter" in str(info.value)
    assert "sk-other-secret-value" not in str(info.value)


def test_blank_openrouter_key_is_missing_and_a_set_key_is_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = load(tmp_path, HEAD + OK_PROMPTS).providers["openrouter"]
    monkeypatch.setenv("OPENROUTER_API_KEY", "   ")
    with pytest.raises(ConfigError, match="OPENROUTER_API_KEY"):
        api_key(provider)
    monkeypatch.setenv("OPENROUTER_API_KEY", " sk-or-v1-test \n")
    assert api_key(provider) == "sk-or-v1-test"


def test_a_key_with_a_line_break_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # it would add a line to every request's head (a header of the sender's choosing)
    provider = load(tmp_path, HEAD + OK_PROMPTS).providers["openrouter"]
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-v1-test\r\nX-Injected: 1")
    with pytest.raises(ConfigError, match="line break") as info:
        api_key(provider)
    assert "sk-or-v1-test" not in str(info.value) and "X-Injected" not in str(info.value)


def test_keyless_providers(tmp_path: Path) -> None:
    job = load(tmp_path, HEAD + LOCAL + OK_PROMPTS)
    assert api_key(job.providers["simulated"]) == "sim-key"
    assert api_key(job.providers["local"]) == "EMPTY"


def test_every_var_combination_is_rendered_at_load(write_job, capsys) -> None:  # type: ignore[no-untyped-def]
    # only the second value reaches the unsafe attribute: checking the first value is not enough
    path = write_job("""
        name: late-trap
        models: [m]
        vars: {v: [a, b]}
        prompts: ['{% if v == "b" %}{{ "".__class__ }}{% endif %}hi']
    """)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "prompts[0].text" in err and "'v': 'b'" in err and "unsafe" in err


# byte-order marks ----------------------------------------------------------------------------

BOM = "\ufeff"
BOM_FILES = {
    "csv": "id,text,word\nq1,Say {{ word }},hi\nq2,Plain,\n",
    "jsonl": '{"id": "q1", "text": "Say {{ word }}", "word": "hi"}\n'
             '{"id": "q2", "text": "Plain"}\n',
    "json": '[{"id": "q1", "text": "Say {{ word }}", "word": "hi"}, '
            '{"id": "q2", "text": "Plain"}]',
    "yaml": "- {id: q1, text: 'Say {{ word }}', word: hi}\n- {id: q2, text: Plain}\n",
}


@pytest.mark.parametrize("suffix", list(BOM_FILES))
def test_prompt_file_with_a_byte_order_mark_keeps_every_column(tmp_path: Path,
                                                               suffix: str) -> None:
    """Excel's "CSV UTF-8" starts with a BOM: the first column was read as '\\ufeffid' and the
    ids silently became a var."""
    job = load(tmp_path, HEAD + f"prompts: [{{file: rows.{suffix}}}]\n",
               {f"rows.{suffix}": BOM + BOM_FILES[suffix]})
    assert [p.id for p in job.prompts] == ["q1", "q2"]
    assert dict(job.prompts[0].vars) == {"word": ("hi",)}
    assert dict(job.prompts[1].vars) == {}


def test_job_file_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    job = load(tmp_path, BOM + HEAD + "prompts: [{id: a, text: hi}]\n")
    assert job.name == "t" and [p.id for p in job.prompts] == ["a"]


# alias bombs ---------------------------------------------------------------------------------

def test_alias_bomb_is_refused_before_it_expands(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A 493-byte job whose aliases expand to 10^8 nodes passed validate and then hung `run` or
    wrote a 20 MB run.json."""
    text = HEAD + "prompts:\n  - id: p\n    text: hi\n    metadata:\n" \
        "      a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"      l{k}: &{chr(98 + k)} [" + ", ".join([f"*{chr(97 + k)}"] * 10) + "]\n"
        for k in range(7))
    path = write_case(tmp_path, text, {})
    assert len(text) < 700
    for argv in (["validate", str(path)],
                 ["run", "--quiet", "--out", str(tmp_path / "out"), str(path)]):
        line = one_error_line(capsys, argv)
        assert str(path) in line and "alias" in line
    assert not (tmp_path / "out").exists()


def test_recursive_alias_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_case(tmp_path, HEAD + "prompts:\n  - id: p\n    text: hi\n"
                      "    metadata: &m {self: *m}\n", {})
    line = one_error_line(capsys, ["validate", str(path)])
    assert "recursive alias" in line and "line 6" in line


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    job = load(tmp_path, "name: t\nparams: &p {temperature: 0.5}\nmodels:\n"
               "  - {id: m/a, params: *p}\n  - {id: m/b, params: *p}\n" + OK_PROMPTS)
    assert [dict(m.params) for m in job.models] == [{"temperature": 0.5}] * 2


def test_alias_bomb_in_a_yaml_prompt_file_is_refused(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rows = "- id: p\n  text: hi\n  metadata:\n    a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"    l{k}: &{chr(98 + k)} [" + ", ".join([f"*{chr(97 + k)}"] * 10) + "]\n"
        for k in range(7))
    path = write_case(tmp_path, HEAD + "prompts: [{file: rows.yaml}]\n", {"rows.yaml": rows})
    line = one_error_line(capsys, ["validate", str(path)])
    assert str(tmp_path / "rows.yaml") in line and "alias" in line


# one format for pydantic errors, wherever they come from -------------------------------------

ROLE = ("messages[0].role: input should be 'system', 'user', 'assistant' or 'developer' "
        "(got 'robot')")
FORMAT_CASES = [
    ("inline-prompt", HEAD + "prompts: [{id: a, messages: [{role: robot, content: x}]}]\n", {},
     "job.yaml", "prompts[0]." + ROLE),
    ("prompt-file-row", HEAD + f"prompts: [{{file: {ROWS}}}]\n",
     {ROWS: '{"id": "a", "messages": [{"role": "robot", "content": "x"}]}\n'}, ROWS,
     "row 1." + ROLE),
    ("expected-check", HEAD + "prompts: [{id: a, text: x, expected: {regex: '('}}]\n", {},
     "job.yaml", "prompts[0].expected.regex: invalid regular expression"),
    ("expected-check-range", HEAD + "prompts: [{id: a, text: x, expected: "
     "{max_latency_s: -1}}]\n", {}, "job.yaml",
     "prompts[0].expected.max_latency_s: input should be greater than 0 (got -1)"),
    ("row-wrong-type", HEAD + f"prompts: [{{file: {ROWS}}}]\n",
     {ROWS: '{"id": "a", "text": 5}\n'}, ROWS, "row 1.text: input should be a valid string "
     "(got 5)"),
]


@pytest.mark.parametrize(("text", "files", "named", "expected"),
                         [case[1:] for case in FORMAT_CASES], ids=[c[0] for c in FORMAT_CASES])
def test_schema_errors_read_the_same_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, files: dict[str, str],
    named: str, expected: str,
) -> None:
    path = write_case(tmp_path, text, files)
    line = one_error_line(capsys, ["validate", str(path)])
    assert line.startswith(f"runner: error: {tmp_path / named}: {expected}")


# every problem at once -----------------------------------------------------------------------


def error_lines(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    return err.splitlines()


def test_validate_lists_every_schema_error_and_what_the_rest_shows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Schema errors first, then what resolving the rest of the job finds; the parts already
    reported (a bad var, a bad model) raise nothing more."""
    path = write_case(tmp_path, "name: t\nmodels: [m/a, {id: m/b, parms: {}}, "
                      "{id: m/c, provider: gone}]\nparams: {temperature: hot}\nrepeats: 0\n"
                      "vars: {v: {nested: 1}}\nprompts: [{messages: [{role: robot, content: x}]},"
                      " '{{ undefined_one }}', '{{ v }}']\n", {})
    lines = error_lines(capsys, ["validate", str(path)])
    assert [line.split(": ")[3] for line in lines] == [
        "models[1].parms", "prompts[0].messages[0].role", "vars.v", "params.temperature",
        "repeats", "models[2].provider", "prompts[1].text"], lines
    assert all(line.startswith(f"runner: error: {path}: ") for line in lines)
    assert "unknown provider 'gone'" in lines[5] and "'undefined_one'" in lines[6]


def test_validate_lists_every_problem_of_the_resolved_job(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_case(tmp_path, "name: t\nprovider: nope\nmodels: [m/a, {id: m/b, provider: "
                      "gone}]\nprompts:\n  - {id: a, text: '{{ w }}'}\n  - {id: a, text: x}\n"
                      f"  - {{file: {ROWS}}}\n"
                      "simulator:\n  models: [{id: s, faults: {error_rate: 0.7, "
                      "hang_rate: 0.7}}]\n",
                      {ROWS: '{"text": 1}\n{"id": "r", "text": "{{ v }}"}\n'})
    lines = error_lines(capsys, ["validate", str(path)])
    rows = tmp_path / ROWS
    assert len(lines) == 7, lines
    for line, where in zip(lines, [
            f"{path}: provider: unknown provider 'nope'",
            f"{path}: models[1].provider: unknown provider 'gone'",
            f"{path}: simulator.models[0].faults: the rates must sum to at most 1",
            f"{rows}: row 1.text: input should be a valid string (got 1)",
            f"{path}: prompts[0].text: undefined variable 'w'",
            f"{path}: prompts[1].id: duplicate prompt id 'a'",
            f"{path}: rows.jsonl: row 2.text: undefined variable 'v'"], strict=True):
        assert line.startswith(f"runner: error: {where}")
    # run refuses with the first of them and says there are more
    line = one_error_line(capsys, ["run", "--quiet", "--out", str(tmp_path / "out"), str(path)])
    assert line.startswith(lines[0]) and "6 more problems" in line and "runner validate" in line


def test_fault_rates_over_one_are_refused_at_load(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """validate said ok, run exited 2: the simulator checked the sum only when it started."""
    path = write_case(tmp_path, "name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
                      + OK_PROMPTS + "simulator:\n  models:\n    - id: sim/fast-mini\n"
                      "      faults: {error_rate: 0.8, disconnect_rate: 0.6}\n", {})
    line = one_error_line(capsys, ["validate", str(path)])
    assert f"{path}: simulator.models[0].faults: the rates must sum to at most 1" in line
