"""Conversations (`turns:`), over real HTTP: each user turn follows the model's previous reply,
one row per conversation with its turns in `turns_json`, each turn through the budget, an error
or a refusal naming its turn, `runner plan` counting every turn, and a resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import runner
from runner.cli import main
from runner.content import Reply
from runner.plan import Plan
from runner.pricing import estimate_prompt_tokens
from runner.prompts import Message
from runner.simulator.text import count_prompt_tokens

from .loopback import Loopback, completion, job_yaml
from .loopback import Reply as LoopbackReply

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "jobs" / "examples" / "multiturn.yaml"

CHAT = """
models: [m]
system: "Be {{ tone }}."
prompts:
  - id: chat
    turns:
      - "Hello, I am {{ name }}."
      - What is my name?
      - Say it backwards.
    vars: {name: [Ada, Bob]}
vars: {tone: brief}
params: {max_tokens: 10, stream: false}
limits: {retries: 0, concurrency: 1}
"""


def _answers(body: dict[str, Any], n: int) -> LoopbackReply:
    """Reply k of a conversation names how many messages it was sent, and costs k cents."""
    turn = sum(m["role"] == "user" for m in body["messages"])
    return completion(body["model"], cost_usd=0.01 * turn, text=f"reply {turn} to "
                      f"{len(body['messages'])} messages", prompt_tokens=10 * turn,
                      completion_tokens=turn)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")


def test_each_turn_follows_the_previous_reply_and_the_row_is_the_conversation(
        write_job: Any, results_dir: Path) -> None:
    with Loopback(_answers) as server:
        outcome = runner.run(write_job(job_yaml(server.base_url, CHAT)), out_dir=results_dir)
    # three exchanges per conversation, each carrying the whole conversation so far
    assert len(server.bodies) == 6
    ada = [b["messages"] for b in server.bodies if "Ada" in b["messages"][1]["content"]]
    assert ada[2] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, I am Ada."},
        {"role": "assistant", "content": "reply 1 to 2 messages"},
        {"role": "user", "content": "What is my name?"},
        {"role": "assistant", "content": "reply 2 to 4 messages"},
        {"role": "user", "content": "Say it backwards."},
    ]
    df = outcome.rows
    assert len(df) == 2 and df["request_id"].is_unique and set(df["status"]) == {"ok"}
    row = df.iloc[0]
    assert row["response_text"] == "reply 3 to 6 messages"        # the last reply
    assert row["cost_usd"] == pytest.approx(0.01 + 0.02 + 0.03)   # summed over the turns
    assert row["prompt_tokens"] == 10 + 20 + 30 and row["completion_tokens"] == 1 + 2 + 3
    assert row["attempts"] == 3
    turns = json.loads(row["turns_json"])
    assert [t["turn"] for t in turns] == [1, 2, 3]
    assert [t["reply"] for t in turns] == ["reply 1 to 2 messages", "reply 2 to 4 messages",
                                           "reply 3 to 6 messages"]
    assert [t["cost_usd"] for t in turns] == pytest.approx([0.01, 0.02, 0.03])
    assert [t["prompt_tokens"] for t in turns] == [10, 20, 30]
    assert all(t["finish_reason"] == "stop" and t["latency_s"] > 0 for t in turns)
    assert row["latency_s"] == pytest.approx(sum(t["latency_s"] for t in turns))


def test_an_error_in_turn_two_ends_the_conversation_with_a_row_naming_it(
        write_job: Any, results_dir: Path) -> None:
    def answers(body: dict[str, Any], n: int) -> LoopbackReply:
        if len(body["messages"]) > 2:
            return 500, {}, {"error": {"code": 500, "message": "upstream fell over"}}
        return _answers(body, n)

    with Loopback(answers) as server:
        outcome = runner.run(write_job(job_yaml(server.base_url, CHAT)), out_dir=results_dir)
    assert len(server.bodies) == 4                                 # turns 1 and 2, twice
    df = outcome.rows
    assert len(df) == 2 and set(df["status"]) == {"error"}
    row = df.iloc[0]
    assert row["error_type"] == "server_error" and row["http_status"] == 500
    assert row["error_message"].startswith("turn 2 of 3: upstream fell over")
    assert row["cost_usd"] == pytest.approx(0.01)                   # turn 1 was paid for
    assert [t["status"] for t in json.loads(row["turns_json"])] == ["ok", "error"]


def test_a_turn_the_budget_refuses_ends_the_conversation_with_an_error_row(
        write_job: Any, results_dir: Path) -> None:
    body = CHAT.replace("models: [m]", "models: [m]\npricing: {m: {usd_per_mtok_prompt: 1000, "
                        "usd_per_mtok_completion: 1000}}")
    with Loopback(lambda b, n: completion(b["model"], cost_usd=0.0, text="ok")) as server:
        path = write_job(job_yaml(server.base_url, body))
        first = Plan(runner.load_job(path))[0]
        turn_1 = 1e-3 * (estimate_prompt_tokens(first.messages) + 10)
        # room for turn 1 of the first conversation (it costs nothing), not for its turn 2
        path.write_text(path.read_text() + f"budget_usd: {turn_1 * 1.05}\n")
        outcome = runner.run(path, out_dir=results_dir)
    assert len(server.bodies) == 2                                # turn 1 of each
    df = outcome.rows
    assert set(df["status"]) == {"error"} and set(df["error_type"]) == {"budget"}
    message = df.iloc[0]["error_message"]
    assert message.startswith("turn 2 of 3 not sent: its worst case")
    assert message.endswith("the conversation ended after turn 1")
    turns = json.loads(df.iloc[0]["turns_json"])
    assert [(t["turn"], t["status"]) for t in turns] == [(1, "ok"), (2, "skipped")]


@pytest.mark.parametrize("second", ["What is my name?", "What is {{ name | upper }}?"],
                         ids=["plain", "jinja"])
def test_plan_worst_case_counts_every_turn_with_worst_case_replies(
        write_job: Any, capsys: pytest.CaptureFixture[str], second: str) -> None:
    body = CHAT.replace("models: [m]", "models: [m]\npricing: {m: {usd_per_mtok_prompt: 1, "
                        "usd_per_mtok_completion: 2}}").replace("What is my name?",
                                                                 json.dumps(second))
    path = write_job(job_yaml("http://127.0.0.1:9/v1", body))
    assert main(["plan", "--json", str(path)]) == 0
    worst = json.loads(capsys.readouterr().out)["worst_case_usd"]["m"]
    expected = 0.0
    for request in Plan(runner.load_job(path)):
        history = list(request.messages)
        for k, user in enumerate(request.turns):
            if k:  # each earlier reply at its worst: max_tokens of output
                history += [Message("assistant", Reply("x" * 100)), user]
            expected += (estimate_prompt_tokens(history, reply_tokens=10) * 1 + 10 * 2) / 1e6
    assert worst == pytest.approx(expected)


def test_the_multiturn_example_runs_offline_against_the_simulator(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = runner.run(EXAMPLE, out_dir=tmp_path)
    df = outcome.rows
    job = runner.load_job(EXAMPLE)
    assert len(df) == len(Plan(job)) == 12 and df["request_id"].is_unique
    assert set(df["status"]) == {"ok"} and df["passed"].notna().all()
    for _, row in df.iterrows():
        request = Plan(job)[int(row["index"])]
        turns = json.loads(row["turns_json"])
        assert len(turns) == len(request.turns) in (3, 4)
        assert row["response_text"] == turns[-1]["reply"]
        assert row["cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in turns))
        assert row["ttft_s"] == turns[0]["ttft_s"]
        assert row["estimated_cost_usd"] == pytest.approx(
            sum(t["estimated_cost_usd"] for t in turns))   # each turn reserved its own
        # the simulator counted exactly the conversation so far: replies included
        history = [{"role": m.role, "content": m.content} for m in request.messages]
        for k, turn in enumerate(turns):
            if k:
                history += [{"role": "assistant", "content": turns[k - 1]["reply"]},
                            {"role": "user", "content": request.turns[k].content}]
            assert turn["prompt_tokens"] == count_prompt_tokens(history)
    assert outcome.manifest["budget"]["spent_usd"] == pytest.approx(df["cost_usd"].sum())
    # what `runner plan` calls the worst case covers what the turns reserved
    assert main(["plan", "--json", str(EXAMPLE)]) == 0
    plan = json.loads(capsys.readouterr().out)
    for model, worst in plan["worst_case_usd"].items():
        assert df.loc[df["model"] == model, "estimated_cost_usd"].sum() <= worst


@pytest.mark.parametrize(("turns", "problem"), [
    ("[]", "prompts[0].turns: empty list: give at least one user turn"),
    ("[hello, '  ']", "prompts[0].turns: turn 2 is empty"),
    ("[hello, 5]", "prompts[0].turns[1]: input should be a valid string"),
    ("['{{ nope }}']", "prompts[0].turns[0]: undefined variable 'nope'"),
    ("['{{ oops ']", "prompts[0].turns[0]: template error on line 1"),
])
def test_bad_turns_are_one_line_naming_the_field(
        write_job: Any, capsys: pytest.CaptureFixture[str], turns: str, problem: str) -> None:
    path = write_job(f"name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
                     f"prompts:\n  - turns: {turns}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{path}: {problem}" in err


def test_turns_with_text_is_refused(write_job: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_job("name: t\nprovider: simulated\nmodels: [sim/fast-mini]\n"
                     "prompts:\n  - {text: hi, turns: [hello]}\n")
    assert main(["validate", str(path)]) == 2
    assert ("prompts[0]: give exactly one of text, messages, turns or prompts_file "
            "(got text, turns)") in capsys.readouterr().err


# --- SIGKILL mid-conversation, then --resume ---------------------------------------------------

@pytest.fixture
def slow_simulator(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`runner simulate` in its own process, 0.5 s to each first token, logging arrivals."""
    log = tmp_path / "arrivals.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "simulate", "--port", "0", "--ttft-s", "0.5",
         "--tokens-per-s", "0", "--request-log", str(log)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    try:
        yield proc.stdout.readline().split(" at ")[1].split(",")[0], log
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def _arrivals(log: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in log.read_text().splitlines()
            if line.strip()] if log.exists() else []


def _run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "runner", "run", *args, "--quiet"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_sigkill_mid_conversation_then_resume_sends_it_again_from_turn_one(
        write_job: Any, results_dir: Path, slow_simulator: tuple[str, Path]) -> None:
    url, log = slow_simulator
    path = write_job(f"""
        name: killed
        providers:
          sim: {{base_url: "{url}", openrouter: true}}
        provider: sim
        models: [sim/fast-mini]
        prompts:
          - turns: [one, two, three]
        params: {{max_tokens: 8}}
    """)
    proc = _run(str(path), "--out", str(results_dir))
    try:
        deadline = time.monotonic() + 60
        while len(_arrivals(log)) < 2:   # turn 2 is on its way (0.5 s before it answers)
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.communicate()
    assert len(_arrivals(log)) == 2
    resumed = _run(str(path), "--out", str(results_dir), "--resume")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    run_dir = next((results_dir / "killed").iterdir())
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert len(df) == 1 and df.iloc[0]["status"] == "ok"             # exactly one row
    assert len(json.loads(df.iloc[0]["turns_json"])) == 3
    arrivals = _arrivals(log)
    assert len(arrivals) == 2 + 3 and len(set(arrivals)) == 1        # from turn 1 again


def test_a_judge_grades_the_last_reply_and_sees_the_whole_conversation(
        write_job: Any, results_dir: Path) -> None:
    judged = CHAT.replace("limits:", "checks:\n  - llm_judge: {model: m, rubric: \"Is it kind?\"}\n"
                          "limits:")
    with Loopback(_answers) as server:
        outcome = runner.run(write_job(job_yaml(server.base_url, judged)), out_dir=results_dir)
    asked = [b for b in server.bodies if b["messages"][0]["content"].startswith("You are a strict")]
    assert len(asked) == 2 and len(server.bodies) == 2 * 3 + 2
    shown = asked[0]["messages"][1]["content"]
    assert "[assistant] reply 1 to 2 messages" in shown and "[user] Say it backwards." in shown
    assert shown.endswith("Response to grade:\nreply 3 to 6 messages")
    assert outcome.rows["judge_cost_usd"].notna().all()


def test_a_reply_echoing_the_key_goes_back_redacted(write_job: Any, results_dir: Path) -> None:
    secret = os.environ["LOOPBACK_KEY"]
    with Loopback(lambda b, n: completion(b["model"], cost_usd=0.0,
                                          text=f"your key is {secret}")) as server:
        outcome = runner.run(write_job(job_yaml(server.base_url, CHAT)), out_dir=results_dir)
    later = [m["content"] for b in server.bodies for m in b["messages"]
             if m["role"] == "assistant"]
    assert later and not any(secret in text for text in later)
    assert secret not in outcome.rows["turns_json"].str.cat()


def test_a_conversation_cut_by_ctrl_c_is_an_interrupted_row_that_resume_sends_again(
        write_job: Any, results_dir: Path, slow_simulator: tuple[str, Path]) -> None:
    url, log = slow_simulator
    path = write_job(f"""
        name: cut
        providers:
          sim: {{base_url: "{url}", openrouter: true}}
        provider: sim
        models: [sim/fast-mini]
        prompts:
          - turns: [one, two, three]
        params: {{max_tokens: 8}}
    """)
    proc = _run(str(path), "--out", str(results_dir), "--grace-s", "60")
    try:
        deadline = time.monotonic() + 60
        while len(_arrivals(log)) < 2:   # turn 2 is on its way
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None and "stopping" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)  # the second: in-flight requests are cut off
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    sent = len(_arrivals(log))
    run_dir = next((results_dir / "cut").iterdir())
    row = pd.read_parquet(run_dir / "requests.parquet").iloc[0]
    assert (row["status"], row["error_type"]) == ("error", "interrupted")
    assert row["attempts"] == sent                        # every turn's attempt, the cut one too
    assert len(json.loads(row["turns_json"])) == sent - 1  # the turns that were answered
    resumed = _run(str(path), "--out", str(results_dir), "--resume")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert len(df) == 1 and df.iloc[0]["status"] == "ok"
    assert len(_arrivals(log)) == sent + 3                # again from turn 1


def test_resume_refuses_a_prompt_turned_into_a_conversation(
        write_job: Any, results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same texts as messages or as turns are different plans: a resume says so."""
    messages = ("name: same\nprovider: simulated\nmodels: [sim/fast-mini]\n"
                "params: {max_tokens: 8}\nprompts:\n  - id: p\n"
                "    messages: [{role: user, content: one}, {role: user, content: two}]\n")
    path = write_job(messages)
    assert main(["run", "--quiet", "--out", str(results_dir), str(path)]) == 0
    path.write_text(messages.replace(
        "messages: [{role: user, content: one}, {role: user, content: two}]", "turns: [one, two]"))
    capsys.readouterr()
    assert main(["run", "--quiet", "--resume", "--out", str(results_dir), str(path)]) != 0
    assert "the plan changed" in capsys.readouterr().err
