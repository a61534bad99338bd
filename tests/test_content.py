"""Content parts (text and images), over real HTTP: sent in OpenAI's shape with local images as
data URLs, taken and counted by the simulator, recorded without their base64, refused at load
when an image is missing, too big or not an image."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import runner
from runner.cli import main
from runner.content import IMAGE_WORST_TOKENS, MAX_IMAGE_BYTES
from runner.plan import Plan
from runner.simulator import Simulator
from runner.simulator.images import BASE_TOKENS, TILE_TOKENS
from runner.simulator.text import count_prompt_tokens

from .loopback import Loopback, completion, job_yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "jobs" / "examples" / "images.yaml"
PNG = (ROOT / "jobs" / "examples" / "images" / "red-square.png").read_bytes()
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()

PARTS = """
models: [m]
prompts:
  - id: look
    messages:
      - role: user
        content:
          - "Is it {{ colour }}?"
          - image: pics/square.png
            detail: low
          - {type: image_url, image_url: {url: "https://example.com/cat.jpg"}}
    vars: {colour: [red, blue]}
params: {max_tokens: 10, stream: false}
limits: {retries: 0}
"""


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")


def _with_png(write_job: Any, text: str, name: str = "job.yaml") -> Path:
    path: Path = write_job(text, name=name)
    (path.parent / "pics").mkdir(exist_ok=True)
    (path.parent / "pics" / "square.png").write_bytes(PNG)
    return path


def test_parts_go_out_in_openai_shape_with_a_local_image_as_a_data_url(
        write_job: Any, results_dir: Path) -> None:
    with Loopback(lambda body, n: completion(body["model"], cost_usd=0.0)) as server:
        outcome = runner.run(_with_png(write_job, job_yaml(server.base_url, PARTS)),
                             out_dir=results_dir)
    assert set(outcome.rows["status"]) == {"ok"}
    sent = sorted((b["messages"][0]["content"] for b in server.bodies), key=str)
    assert sent[0] == [
        {"type": "text", "text": "Is it blue?"},            # text parts are templates
        {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    assert sent[1][0] == {"type": "text", "text": "Is it red?"}


def test_a_printed_request_records_the_image_not_its_bytes(
        write_job: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = _with_png(write_job, job_yaml("http://127.0.0.1:9/v1", PARTS))
    assert main(["plan", "--json", "--show", "2", str(path)]) == 0
    out = capsys.readouterr().out
    assert base64.b64encode(PNG).decode()[:40] not in out
    content = json.loads(out)["first_requests"][0]["messages"][0]["content"]
    assert content[1] == {"type": "image", "source": "pics/square.png",
                          "media_type": "image/png", "size_bytes": len(PNG),
                          "sha256": hashlib.sha256(PNG).hexdigest(), "detail": "low"}
    assert content[2] == {"type": "image", "source": "https://example.com/cat.jpg"}


def test_the_image_is_part_of_the_request_id(write_job: Any) -> None:
    path = _with_png(write_job, job_yaml("http://127.0.0.1:9/v1", PARTS))
    before = [r.request_id for r in Plan(runner.load_job(path))]
    assert before == [r.request_id for r in Plan(runner.load_job(path))]   # stable
    (path.parent / "pics" / "square.png").write_bytes(PNG + b"\0")         # another image
    assert not set(before) & {r.request_id for r in Plan(runner.load_job(path))}


def test_plan_counts_each_image_at_its_worst(write_job: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    priced = PARTS.replace("models: [m]", "models: [m]\npricing: {m: {usd_per_mtok_prompt: 1, "
                           "usd_per_mtok_completion: 0}}")
    path = _with_png(write_job, job_yaml("http://127.0.0.1:9/v1", priced))
    assert main(["plan", "--json", str(path)]) == 0
    worst = json.loads(capsys.readouterr().out)["worst_case_usd"]["m"]
    # two requests, two images each; the text is a few dozen bytes at most
    assert 4 * IMAGE_WORST_TOKENS / 1e6 < worst < (4 * IMAGE_WORST_TOKENS + 200) / 1e6


def test_the_images_example_runs_offline_and_the_simulator_counts_the_images(
        tmp_path: Path) -> None:
    outcome = runner.run(EXAMPLE, out_dir=tmp_path)
    df = outcome.rows.set_index("index")
    job = runner.load_job(EXAMPLE)
    assert len(df) == len(Plan(job)) == 3 and set(df["status"]) == {"ok"}
    assert df["passed"].all()
    # the inputs column records each image by source and hash, never its base64
    recorded = json.loads(df.loc[0, "messages_json"])
    image = recorded[-1]["content"][-1]
    assert image["type"] == "image" and image["source"].endswith(".png") and image["sha256"]
    assert not df["messages_json"].str.contains("base64").any()
    for request in Plan(job):
        wire = [{"role": m.role, "content": content_wire(m.content)} for m in request.messages]
        assert df.loc[request.index, "prompt_tokens"] == count_prompt_tokens(wire)
    # an 8 x 8 image: 85 tokens at detail low, 85 + one tile at detail high
    text_only = [{"role": "user", "content": "What colour is this square? Answer in one word."}]
    first = Plan(job)[0]
    assert df.loc[first.index, "prompt_tokens"] == count_prompt_tokens(text_only) + BASE_TOKENS
    assert BASE_TOKENS + TILE_TOKENS in {
        count_prompt_tokens([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "high"}}]}]) - 5}


def content_wire(content: Any) -> Any:
    from runner.content import wire
    return wire(content)


@pytest.mark.parametrize(("part", "problem"), [
    ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}},
     "messages[0].content[0].image_url.url: must be an http(s) URL or a data:image/ URL"),
    ({"type": "image_url"}, "messages[0].content[0].image_url: must be an object"),
    ({"type": "audio", "text": "x"}, "messages[0].content[0].type: must be 'text' or"),
    ({"type": "text", "text": 5}, "messages[0].content[0].text: must be a string"),
    ("just a string", "messages[0].content[0]: a content part must be an object"),
])
async def test_the_simulator_refuses_malformed_parts(part: Any, problem: str) -> None:
    with Simulator() as sim:
        async with aiohttp.ClientSession() as session, session.post(
                sim.base_url + "/chat/completions", headers={"Authorization": "Bearer sim"},
                json={"model": "sim/fast-mini", "messages": [{"role": "user",
                                                              "content": [part]}]}) as resp:
            assert resp.status == 400
            assert problem in (await resp.json())["error"]["message"]


# --- refused at load (and so by `runner validate`) --------------------------------------------

def _image_job(source: str, role: str = "user") -> str:
    quoted = source if source.startswith("'") else json.dumps(source)
    return ("name: t\nprovider: simulated\nmodels: [sim/fast-mini]\nprompts:\n"
            f"  - messages:\n      - role: {role}\n        content:\n"
            f"          - Look.\n          - image: {quoted}\n")


@pytest.mark.parametrize(("source", "setup", "problem"), [
    ("pics/none.png", None, "prompts[0].messages[0].content[1].image: no such image file"),
    ("pics/big.png", "big", "image of 20,971,521 bytes, more than the 20,971,520"),
    ("pics/notes.png", "text", "is not a PNG, JPEG, GIF or WebP image"),
    ("pics/{{ name }}.png", None, "undefined variable 'name'"),
    ("'{{ name }}'\n    vars: {name: [pics/a.png, pics/none.png]}", "a.png",
     "content[1].image: no such image file"),
    ("' '", None, "content[1].image: an empty image source"),
    ("data:image/png;base64,@@@", None, "not a base64 image data URL"),
])
def test_a_bad_image_is_one_line_naming_the_field(
        write_job: Any, capsys: pytest.CaptureFixture[str], source: str, setup: str | None,
        problem: str) -> None:
    path = write_job(_image_job(source))
    (path.parent / "pics").mkdir()
    if setup == "big":
        with (path.parent / source).open("wb") as f:   # sparse: its size is what counts
            f.truncate(MAX_IMAGE_BYTES + 1)
    elif setup == "text":
        (path.parent / source).write_text("not a picture")
    elif setup == "a.png":
        (path.parent / "pics" / "a.png").write_bytes(PNG)
    for command in (["validate", str(path)],
                    ["run", "--quiet", "--out", str(path.parent / "out"), str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert str(path) in err and problem in err
    assert not (path.parent / "out").exists()


def test_an_image_in_a_system_message_is_refused(
        write_job: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_job(_image_job("https://example.com/a.png", role="system"))
    assert main(["validate", str(path)]) == 2
    assert "prompts[0].messages[0].content[1]: an image can only be in a user message" \
        in capsys.readouterr().err


def test_image_paths_are_relative_to_the_job_file(
        write_job: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _with_png(write_job, _image_job("pics/square.png"))
    monkeypatch.chdir(tmp_path.parent)
    request = Plan(runner.load_job(path))[0]
    assert str(request.messages[0].content[1]).startswith("[image pics/square.png sha256:")


@pytest.mark.parametrize(("part", "problem"), [
    ("{image: a.png, text: b}", "give exactly one of text, image or image_url"),
    ("{type: text, image: a.png}", "type 'text' does not match its image:"),
    ("{text: hi, detail: low}", "detail: only applies to an image"),
    ("{imag: a.png}", "content[0].imag: unknown key"),
])
def test_a_malformed_part_is_one_line(write_job: Any, capsys: pytest.CaptureFixture[str],
                                      part: str, problem: str) -> None:
    path = write_job("name: t\nprovider: simulated\nmodels: [sim/fast-mini]\nprompts:\n"
                     f"  - messages: [{{role: user, content: [{part}]}}]\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err and "prompts[0].messages[0]" in err


TEMPLATED = """
models: [m]
prompts:
  - id: pick
    messages:
      - role: user
        content:
          - "Which animal?"
          - image: "pics/{{ animal }}.png"
          - {type: image_url, image_url: {url: "{{ url }}"}}
    vars:
      animal: [square, other]
      url: ["https://example.com/a.jpg"]
params: {max_tokens: 10, stream: false}
"""


def test_an_image_source_can_be_a_template_over_the_vars(
        write_job: Any, results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _with_png(write_job, job_yaml("http://127.0.0.1:9/v1", TEMPLATED))
    other = PNG.replace(b"\xff\x00\x00", b"\x00\xff\x00")  # not a valid PNG stream: fine here
    (path.parent / "pics" / "other.png").write_bytes(other)
    with Loopback(lambda body, n: completion(body["model"], cost_usd=0.0)) as server:
        path.write_text(path.read_text().replace("http://127.0.0.1:9/v1", server.base_url))
        outcome = runner.run(path, out_dir=results_dir)
    assert set(outcome.rows["status"]) == {"ok"}
    sent = {b["messages"][0]["content"][1]["image_url"]["url"] for b in server.bodies}
    assert sent == {DATA_URL, "data:image/png;base64," + base64.b64encode(other).decode()}
    assert {b["messages"][0]["content"][2]["image_url"]["url"] for b in server.bodies} == \
        {"https://example.com/a.jpg"}
    assert main(["plan", "--json", "--show", "2", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)["first_requests"]
    assert [r["messages"][0]["content"][1]["source"] for r in shown] == \
        ["pics/square.png", "pics/other.png"]
