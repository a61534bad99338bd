"""The HTML report: written from real runs, self-contained (loads nothing), every plot an inline
SVG, data escaped by the templates; rendered by headless Chromium without console errors, and
without running a script planted in a response, where Chromium is installed."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

import runner
from runner.charts import nice_ticks
from runner.cli import main
from runner.html_report import render_html, short_run_labels, write_html

from .runs import bench_job, write_and_run

CHROMIUM = Path("/usr/bin/chromium")
FETCHING_TAGS = {"script", "link", "img", "iframe", "object", "embed", "audio", "video", "source",
                 "image", "use", "base", "frame"}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data


def loads(page: str) -> list[str]:
    """What a browser would fetch or run: tags that load, URLs in src/href, CSS imports/url()."""
    parser = _Tags()
    parser.feed(page)
    out = [f"<{tag}>" for tag, _ in parser.found if tag in FETCHING_TAGS]
    out += [f"{tag} {name}={value}" for tag, attrs in parser.found for name, value in attrs.items()
            if name in ("src", "href", "xlink:href", "srcset", "action", "data") or
            (name.startswith("on"))]
    out += [m for m in ("@import", "url(") if m in parser.style.lower()]
    return out


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs of one job (history), both with errors, so every section has data (runs
    started in the same second have no defined order)."""
    root = tmp_path_factory.mktemp("html")
    write_and_run(root / "a", bench_job(error_rate=0.3), root / "results")
    write_and_run(root / "b", bench_job(error_rate=0.5), root / "results")
    return root / "results" / "bench"


@pytest.fixture(scope="module")
def history(job_dir: Path) -> pd.DataFrame:
    return runner.read_results(job_dir)


def _sections(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def test_report_is_self_contained_with_a_plot_each(history: pd.DataFrame,
                                                   tmp_path: Path) -> None:
    path = write_html(history, tmp_path / "out" / "report.html", title="Nightly <evals>")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
    assert loads(page) == []
    assert 'xmlns="http://www.w3.org/2000/svg"' in page   # a namespace name, not a fetch
    assert "<title>Nightly &lt;evals&gt;</title>" in page
    # latency, TTFT, cost vs latency, pass rate vs cost, errors, 3 trends
    assert page.count("<svg ") == page.count("</svg>") == 8
    for title in ("Latency per request", "Time to first token", "Cost vs latency",
                  "Pass rate vs cost", "Errors and skipped requests per model", "Latency p50",
                  "Cost per request", "Pass rate"):
        assert f">{title}" in page, title
    assert _sections(page)[:5] == ["Per model", "Per check", "Distributions",
                                   "Cost and quality", "Errors"]
    assert '<h2 id="responses">Responses by prompt and row</h2>' in page
    assert "Trends across 2 runs" in _sections(page)
    assert any(s.startswith("Failed checks (") for s in _sections(page))


def test_data_is_escaped(history: pd.DataFrame) -> None:
    assert loads('<p>x</p><img src="https://x/y.png"><a href=//x>y</a>') == [
        "<img>", "img src=https://x/y.png", "a href=//x"]
    assert loads("<style>p{background:url(x.png)}</style><p>&lt;img src=x&gt;</p>") == ["url("]
    page = render_html(history)
    assert "<script" not in page and "<b>premium" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page      # a prompt id
    assert "&lt;b&gt;premium&lt;/b&gt; &amp; co" in page                   # a model alias
    hostile = history.copy()
    hostile["response_text"] = "</td></table><img src=https://evil.example/x.png>"
    hostile["passed"] = pd.array([False] * len(hostile), dtype="boolean")
    page = render_html(hostile)
    assert loads(page) == [] and "&lt;img src=https://evil.example/x.png&gt;" in page


def test_one_run_has_no_trends_and_no_checks_says_so(job_dir: Path, history: pd.DataFrame) -> None:
    first = history[history["run_id"] == history["run_id"].iloc[0]]
    page = render_html(first)
    assert not any(s.startswith("Trends") for s in _sections(page))
    ungraded = first.assign(passed=pd.array([None] * len(first), dtype="boolean"))
    page = render_html(ungraded)
    assert "No checks ran: no pass rates." in page
    assert not any(s.startswith("Failed checks") for s in _sections(page))
    unstreamed = first.assign(ttft_s=float("nan"))
    assert "No TTFT: the requests were not streamed." in render_html(unstreamed)


# a response, a model name and an error message that would run script if pasted as markup
HOSTILE_RESPONSE = ("<script>document.documentElement.setAttribute('data-pwned','script')"
                    "</script><b>bold</b></td></tr></table>")
HOSTILE_MODEL = "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','img')\">"
HOSTILE_ERROR = "<svg onload=\"document.documentElement.setAttribute('data-pwned','svg')\"></svg>"


def _hostile(history: pd.DataFrame) -> pd.DataFrame:
    """The history with planted markup in a response, a model name and an error message."""
    latest = history["run_id"] == history["run_id"].iloc[-1]
    out = history.assign(response_text=HOSTILE_RESPONSE,
                         passed=pd.array([False] * len(history), dtype="boolean"))
    out["model"] = out["model"].astype(str).where(~latest | (out["model"] != "sim/balanced"),
                                                  HOSTILE_MODEL)
    out.loc[out["status"] != "ok", "error_message"] = HOSTILE_ERROR
    return out


def _escaped(text: str) -> str:
    """`text` escaped for HTML the way Jinja2 (markupsafe) spells the entities."""
    return html.escape(text).replace("&#x27;", "&#39;").replace("&quot;", "&#34;")


def test_planted_markup_is_escaped_text(history: pd.DataFrame) -> None:
    page = render_html(_hostile(history))
    assert loads(page) == []
    assert "<script" not in page and "<b>bold" not in page and "<img" not in page
    for text in (HOSTILE_RESPONSE, HOSTILE_MODEL, HOSTILE_ERROR):
        assert _escaped(text) in page, text       # shown, as text
    # the model name in the charts' labels and tooltips too, escaped
    assert page.count(_escaped(HOSTILE_MODEL)) >= 4


def test_trend_labels_are_short_run_times(history: pd.DataFrame) -> None:
    assert short_run_labels(["20261125T231755.042Z-3fa9", "20261126T010203.500Z-beef"]) == [
        "11-25 23:17:55", "11-26 01:02:03"]
    assert short_run_labels(["20261125T231755.042Z-3fa9", "20261125T231755.913Z-0a0a"]) == [
        "11-25 23:17:55.042", "11-25 23:17:55.913"]           # same second: the milliseconds
    assert short_run_labels(["nightly-1", "nightly-2"]) == ["nightly-1", "nightly-2"]
    first, second = dict.fromkeys(history["run_id"])
    renamed = history.assign(run_id=history["run_id"].map({
        first: "20261125T231755.042Z-3fa9", second: "20261126T010203.500Z-beef"}))
    page = render_html(renamed)
    assert ">11-25 23:17:55</text>" in page and ">11-26 01:02:03</text>" in page
    assert ">20261125T231755" not in page


@pytest.mark.parametrize(("lo", "hi"), [(0, 0.000844), (0, 0.1054), (0, 1), (0.2, 0.9),
                                        (0, 0), (0, 37), (0, 1e-7)])
def test_axis_ticks_cover_the_data(lo: float, hi: float) -> None:
    ticks = nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 12
    assert ticks == sorted(set(ticks))


def test_cli_report_prints_tables_and_writes_html(job_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(job_dir), "--html", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sim/fast-mini" in printed and "pass rate" in printed and "2 runs" in printed
    assert f"html report: {out}" in printed.replace("\n", "")
    assert out.is_file() and "<svg " in out.read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "missing: no such results folder" in capsys.readouterr().err


def _chromium(page: Path, tmp_path: Path, name: str) -> tuple[Path, str]:
    """Screenshot `page` with headless Chromium; return the PNG and Chromium's log."""
    png = tmp_path / f"{name}.png"
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / f'profile-{name}'}",
         f"--screenshot={png}", "--window-size=1200,2000", "--enable-logging=stderr", "--v=0",
         page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return png, done.stderr


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install "
                    "chromium) to render the report in")
def test_report_renders_in_headless_chromium(history: pd.DataFrame, tmp_path: Path) -> None:
    page = write_html(history, tmp_path / "report.html")
    png, log = _chromium(page, tmp_path, "report")
    console = [line for line in log.splitlines()
               if "Uncaught" in line or ":CONSOLE" in line or "console" in line.lower()]
    assert console == []
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    empty_png, _ = _chromium(blank, tmp_path, "blank")
    # charts and tables drawn: far more detail to compress than an empty page
    assert png.stat().st_size > 5 * empty_png.stat().st_size
    shutil.rmtree(tmp_path / "profile-report", ignore_errors=True)


def _dom(page: Path, tmp_path: Path, name: str) -> str:
    """The DOM Chromium ends up with after loading `page` (its scripts, if any, have run)."""
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / f'profile-{name}'}",
         "--virtual-time-budget=2000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install "
                    "chromium) to render the report in")
def test_planted_script_does_not_run_in_chromium(history: pd.DataFrame, tmp_path: Path) -> None:
    # the probe works: the same markup pasted raw into a page does run
    raw = tmp_path / "raw.html"
    raw.write_text(f"<!DOCTYPE html><html><body>{HOSTILE_RESPONSE}{HOSTILE_MODEL}"
                   f"{HOSTILE_ERROR}</body></html>", encoding="utf-8")
    assert 'data-pwned="' in _dom(raw, tmp_path, "raw")
    dom = _dom(write_html(_hostile(history), tmp_path / "report.html"), tmp_path, "report")
    assert "Failed checks" in dom and "setAttribute('data-pwned'" in dom   # the text is there
    assert 'data-pwned="' not in dom                          # but nothing ran
    assert "<b>bold</b>" not in dom and "&lt;b&gt;bold&lt;/b&gt;" in dom


def test_a_server_billing_an_absurd_cost_still_gets_a_report(history: pd.DataFrame) -> None:
    """`usage.cost: 1.7e308` is a finite number a hostile server may send: the report of that run
    is drawn (off-scale), not a traceback."""
    one = history[history["run_id"] == history["run_id"].iloc[0]].reset_index(drop=True)
    billed = one.assign(cost_usd=one["cost_usd"].where(one.index != 0, 1.7e308))
    page = render_html(billed)
    assert "<svg" in page
    assert all(isinstance(t, float) for t in nice_ticks(0.0, 1e300))
