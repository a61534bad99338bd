"""OpenRouter model ids the catalogue does not list as such: variants (`:nitro`, `:online`...)
run at the base model's price, `:online` adds its web search fee to the worst case and the
budget, routers and `models:` fallbacks cost what their dearest candidate costs, and an id the
server serves but does not list gets through with `check_models: false` (which the refusal
names). Against a loopback server speaking OpenRouter's catalogue."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import runner
from runner.cli import main
from runner.pricing import WEB_SEARCH_DEFAULT_RESULTS, WEB_SEARCH_USD_PER_RESULT

from .catalogue_server import CatalogueServer, entry

ROUTER = {"id": "openrouter/auto", "name": "Auto Router", "context_length": 2_000_000,
          "pricing": {"prompt": "-1", "completion": "-1"},
          "top_provider": {"max_completion_tokens": None}}
LISTING = {"data": [entry("acme/small", 1, 2), entry("acme/large", 10, 40),
                    entry("acme/native", 1, 2, web_search_usd=0.05), ROUTER]}
WEB_FEE = WEB_SEARCH_DEFAULT_RESULTS * WEB_SEARCH_USD_PER_RESULT      # $0.02 a request


@pytest.fixture
def server() -> Iterator[CatalogueServer]:
    with CatalogueServer(LISTING) as serving:
        yield serving


def _job(server: CatalogueServer, models: str, extra: str = "") -> str:
    return f"""
name: variants
provider: acme
providers:
  acme: {{base_url: "{server.base_url}", openrouter: true}}
models: {models}
prompts: [{{id: p, text: hello}}]
params: {{max_tokens: 10, stream: false}}
limits: {{retries: 0}}
{extra}
"""


def _worst(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    assert main(["plan", str(path), "--json"]) == 0
    worst: dict[str, float] = json.loads(capsys.readouterr().out)["worst_case_usd"]
    return worst


def test_variants_run_at_the_base_models_price(server: CatalogueServer, write_job: Callable[
        ..., Path], results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    variants = ["acme/small:nitro", "acme/small:floor", "acme/small:exacto",
                "acme/small:thinking", "acme/small:extended", "acme/small:online"]
    path = write_job(_job(server, json.dumps(["acme/small", *variants]), "budget_usd: 1"))
    worst = _worst(path, capsys)
    for variant in variants[:-1]:
        assert worst[variant] == pytest.approx(worst["acme/small"]), variant
    assert worst["acme/small:online"] == pytest.approx(worst["acme/small"] + WEB_FEE)
    assert main(["run", str(path), "--out", str(results_dir), "--quiet"]) == 0
    assert sorted(server.asked) == sorted(["acme/small", *variants])   # sent as written
    rows = runner.read_results(results_dir / "variants")
    assert set(rows["status"]) == {"ok"}
    online = rows[rows["model"] == "acme/small:online"]["estimated_cost_usd"].iloc[0]
    assert online == pytest.approx(worst["acme/small:online"])


def test_online_fee_counts_against_the_budget(server: CatalogueServer, write_job: Callable[
        ..., Path], results_dir: Path) -> None:
    # the base model's worst case (~$0.00003) fits in $0.01; with the web search fee it cannot
    path = write_job(_job(server, '["acme/small", "acme/small:online"]',
                          "budget_usd: 0.01\nlimits: {concurrency: 1, retries: 0}"))
    assert main(["run", str(path), "--out", str(results_dir), "--quiet"]) == 0
    rows = runner.read_results(results_dir / "variants").set_index("model")
    assert rows.loc["acme/small", "status"] == "ok"
    assert rows.loc["acme/small:online", "status"] == "skipped"
    assert rows.loc["acme/small:online", "error_type"] == "budget"
    assert server.asked == ["acme/small"]


def test_web_search_fee_follows_results_native_price_and_pricing(
        server: CatalogueServer, write_job: Callable[..., Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    # "acme/small:nitro" is the base price under another id (one id, one price: see below)
    models = json.dumps([
        "acme/small:nitro",
        {"id": "acme/small", "alias": "ten-results",
         "extra_body": {"plugins": [{"id": "web", "max_results": 10}]}},
        "acme/native", "acme/native:online",              # native search dearer than 5 results
        "acme/large:online",                              # priced by the job: no fee added
    ])
    path = write_job(_job(server, models, "pricing:\n  acme/large:online: "
                          "{usd_per_mtok_prompt: 1, usd_per_mtok_completion: 2, "
                          "usd_per_request: 0.5}"))
    worst = _worst(path, capsys)
    assert worst["ten-results"] == pytest.approx(worst["acme/small:nitro"] + 10 * 0.004)
    assert worst["acme/native:online"] == pytest.approx(worst["acme/native"] + 0.05)
    assert worst["acme/large:online"] == pytest.approx(worst["acme/small:nitro"] + 0.5)


def test_routers_and_fallbacks_cost_their_dearest_candidate(
        server: CatalogueServer, write_job: Callable[..., Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    models = json.dumps([
        "acme/small:floor", "acme/large",
        {"id": "acme/small", "alias": "fallback", "extra_body": {"models": ["acme/large"]}},
        "openrouter/auto",
        {"id": "openrouter/auto", "alias": "auto-small", "extra_body": {
            "plugins": [{"id": "auto-router", "allowed_models": ["acme/small*"]}]}},
    ])
    worst = _worst(write_job(_job(server, models, "budget_usd: 5")), capsys)
    assert worst["acme/large"] > 5 * worst["acme/small:floor"]
    assert worst["fallback"] == pytest.approx(worst["acme/large"])
    assert worst["openrouter/auto"] == pytest.approx(worst["acme/large"])
    # prices are kept per model id: the same id twice is priced at the dearer of the two for
    # both (never under-reserved)
    assert worst["auto-small"] == pytest.approx(worst["acme/large"])


def test_a_router_limited_to_cheap_models_costs_the_cheap_price(
        server: CatalogueServer, write_job: Callable[..., Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    cheap = {"plugins": [{"id": "auto-router", "allowed_models": ["acme/small*"]}]}
    models = json.dumps(["acme/small", {"id": "openrouter/auto", "extra_body": cheap},
                         {"id": "openrouter/auto:online", "extra_body": cheap}])
    worst = _worst(write_job(_job(server, models)), capsys)
    assert worst["openrouter/auto"] == pytest.approx(worst["acme/small"])
    assert worst["openrouter/auto:online"] == pytest.approx(worst["acme/small"] + WEB_FEE)


def test_unlisted_ids_are_refused_naming_the_switch(
        server: CatalogueServer, write_job: Callable[..., Path], results_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    for models, field in (('["acme/alias"]', "models[0].id"),
                          ('["acme/small:turbo"]', "models[0].id"),     # not a variant
                          ('[{id: acme/small, extra_body: {models: [acme/gone]}}]',
                           "models[0].extra_body.models")):
        path = write_job(_job(server, models))
        assert main(["run", str(path), "--out", str(results_dir), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{path}: {field}: " in err and "is not offered by provider 'acme'" in err
        assert "set providers.acme.check_models: false" in err
    assert server.asked == []


def test_check_models_false_lets_an_alias_through(
        server: CatalogueServer, write_job: Callable[..., Path], results_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    text = _job(server, '["acme/alias"]').replace("openrouter: true}",
                                                   "openrouter: true, check_models: false}")
    path = write_job(text + "budget_usd: 1\n")
    assert main(["run", str(path), "--out", str(results_dir), "--quiet"]) == 2
    assert "'acme/alias' has no known price" in capsys.readouterr().err   # budget: needs one
    path = write_job(text + "pricing:\n  acme/alias: {usd_per_mtok_prompt: 1, "
                     "usd_per_mtok_completion: 2}\nbudget_usd: 1\n")
    assert main(["run", str(path), "--out", str(results_dir), "--quiet"]) == 0
    assert server.asked == ["acme/alias"]


def test_simulator_variants_are_priced_from_its_catalogue(
        write_job: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = write_job("""
        name: sim-variants
        provider: simulated
        models: [sim/balanced, "sim/balanced:nitro", "sim/balanced:online"]
        prompts: [hello]
        params: {max_tokens: 10}
        repeats: 3
    """)
    worst = _worst(path, capsys)
    assert worst["sim/balanced:nitro"] == pytest.approx(worst["sim/balanced"])
    assert worst["sim/balanced:online"] == pytest.approx(worst["sim/balanced"] + 3 * WEB_FEE)
