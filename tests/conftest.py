"""Shared fixtures: the shared OpenRouter captures, a canned HTTP server, fast simulators."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from .runs import reap

ROOT = Path(__file__).resolve().parents[1]
# verbatim copies of ../shared/openrouter/ (real OpenRouter payloads), kept with the tests
CAPTURES = ROOT / "tests" / "data" / "openrouter"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Price catalogues are cached under XDG_CACHE_HOME: keep each test's cache its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    """What a test started with `runs.runner_process` is killed when it ends, pass or fail."""
    yield
    reap()


@pytest.fixture
def captures() -> Path:
    if not CAPTURES.is_dir():
        pytest.fail(f"the shared OpenRouter captures are missing: {CAPTURES}")
    return CAPTURES


Reply = tuple[int, dict[str, str], bytes]


@pytest.fixture
async def canned() -> AsyncIterator[Callable[[Reply], str]]:
    """A real loopback HTTP server answering every request with one canned reply.

    Call the fixture with (status, headers, body) to get the base URL to point a client at.
    """
    runners: list[web.AppRunner] = []

    async def start(reply: Reply) -> str:
        status, headers, body = reply

        async def handler(request: web.Request) -> web.StreamResponse:
            await request.read()
            return web.Response(status=status, headers=headers, body=body)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/api/v1"

    yield start  # type: ignore[misc]
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job file (dedented YAML) into tmp_path; extra files by name as keywords."""

    def write(text: str, name: str = "job.yaml", **files: str) -> Path:
        for file_name, content in files.items():
            target = tmp_path / file_name.replace("__", "/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(content))
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def results_dir(tmp_path: Path) -> Iterator[Path]:
    out = tmp_path / "results"
    out.mkdir()
    yield out


@pytest.fixture
def request_(write_job: Callable[..., Path]) -> Any:
    """One planned request (a short prompt to a simulated model) to hand to an Endpoint."""
    from runner.config import load_job
    from runner.plan import Plan

    job = load_job(write_job("""
        name: t
        provider: simulated
        models: [sim/fast-mini]
        prompts: ["hello"]
        params: {max_tokens: 16}
    """))
    return Plan(job)[0]
