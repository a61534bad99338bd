"""`runner models`: with a job, each of the job's providers' catalogues (not the built-in
simulator's); a provider without a catalogue says so in one line; an unknown one is bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runner.cli import main

from .catalogue_server import CatalogueServer, entry


def test_models_of_a_job_list_its_own_providers(write_job: Callable[..., Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    listing = {"data": [entry("acme/small", 0.5, 1.5), entry("acme/large", 3, 15)]}
    with CatalogueServer(listing) as acme, CatalogueServer(models_status=404) as bare:
        path = write_job(f"""
            name: own
            provider: acme
            providers:
              acme: {{base_url: "{acme.base_url}", openrouter: true}}
              bare: {{base_url: "{bare.base_url}"}}
            models: [acme/small, {{id: served-alias, provider: bare}}]
            prompts: [hi]
        """)
        assert main(["models", "--job", str(path)]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "acme: 2 models" in out and "acme/small" in out and "acme/large" in out
        assert "1.5" in out and "15" in out                 # USD per million tokens
        assert "bare: no catalogue (" in out
        assert "sim/" not in out                            # not the built-in simulator
        assert main(["models", "--job", str(path), "--provider", "bare"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("bare: no catalogue") and "acme" not in out


def test_models_without_a_job_list_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    assert "sim/fast-mini" in capsys.readouterr().out


def test_unknown_provider_is_bad_input(write_job: Callable[..., Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--provider", "nowhere"]) == 2
    assert "--provider: unknown provider 'nowhere'" in capsys.readouterr().err
