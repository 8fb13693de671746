"""index.html: what the page shows, comparison directories, and a real load in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MOE

from simulator.cli import main
from simulator.report.html import index_html, markdown_html, write_index

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TINY_DECLARED = {**TINY_MOE, "declared": {"source": "test", "total_params": 1.0e6, "ttft_s": 2.0}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("html")
    scenario = base / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(TINY_DECLARED))
    out = base / "run"
    assert main(["run", str(scenario), "--out", str(out)]) == 0
    return out


def test_run_writes_the_page_and_its_pictures(run_dir):
    for name in ("index.html", "timeline.png", "memory.png", "trace.json.gz", "critical_path.csv", "slices.npz"):
        assert (run_dir / name).is_file(), name


def test_page_shows_results_targets_audit_path_and_pictures(run_dir):
    page = (run_dir / "index.html").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "<h1>moesim run: tiny_moe</h1>" in page and page.count("<h1>") == 1
    assert "TPOT" in page and "MISSED" in page and "MET" in page  # TINY_MOE meets TTFT, misses throughput
    assert "Claim audit" in page and "total parameters" in page
    for sentence in summary["critical_path"]["sentences"].values():
        assert sentence.replace("'", "&#39;") in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == ["timeline.png", "memory.png", "dag.svg"]
    assert "Comparison" not in page


def test_comparison_files_are_shown_when_present(run_dir, tmp_path):
    d = tmp_path / "with_comparison"
    shutil.copytree(run_dir, d)
    (d / "comparison.md").write_text(
        "# Layouts compared\n\n| rank | layout | TPOT |\n|---|---|---|\n| 1 | `tp2` | 3 ms |\n"
    )
    (d / "comparison.csv").write_text("rank,layout\n1,tp2\n")
    shutil.copy(d / "memory.png", d / "pareto.png")
    page = index_html(d, json.loads((d / "summary.json").read_text()))
    assert '<h2 id="comparison">Comparison</h2>' in page and "<h3>Layouts compared</h3>" in page
    assert "<td><code>tp2</code></td>" in page and 'src="pareto.png"' in page


def test_a_comparison_directory_gets_a_page_of_its_own(tmp_path):
    (tmp_path / "comparison.csv").write_text("rank,layout,tpot_s\n1,TP=2 PP=2,0.003\n2,TP=4,0.004\n")
    page = write_index(tmp_path).read_text()
    assert "moesim comparison" in page and "<td>TP=2 PP=2</td>" in page


def test_markdown_is_rendered_by_markdown_it_with_raw_html_escaped():
    html = str(markdown_html("# T\n\n| a | b |\n|---|---|\n| **x** | <script>y</script> |\n\n- one\n- `two`\n"))
    assert "<h1>T</h1>" in html and "<strong>x</strong>" in html and "<li><code>two</code></li>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_moesim_compare_writes_its_page_titled_with_the_scenario_once(tmp_path):
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(TINY_MOE))
    out = tmp_path / "cmp"
    assert main(["compare", str(scenario), "--out", str(out), "--jobs", "1", "--microbatches", "1"]) == 0
    page = (out / "index.html").read_text()
    assert "<title>moesim: Layout comparison: tiny_moe</title>" in page
    assert page.count("<h1>") == 1 and "moesim comparison:" not in page  # comparison.md's heading, not a second one
    assert '<div class="wide"><table>' in page.replace("\n", "")  # wide tables scroll inside the page


def test_the_dag_is_scaled_to_the_page_not_in_a_scroll_box(run_dir):
    page = (run_dir / "index.html").read_text()
    assert 'class="scroll"' not in page and '<a href="dag.svg"><img src="dag.svg"' in page


def test_the_page_is_offline(run_dir):
    page = (run_dir / "index.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page)


def test_templates_ship_inside_the_package():
    import simulator.report

    templates = Path(simulator.report.__file__).parent / "templates"
    assert {"base.html.j2", "run.html.j2", "compare.html.j2", "page.css"} <= {p.name for p in templates.iterdir()}


def _dom(page: Path, tmp_path: Path) -> str:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it)")
def test_page_loads_in_chromium_with_every_picture(run_dir, tmp_path):
    dom = _dom(run_dir / "index.html", tmp_path)
    assert 'data-images="ok 3"' in dom, re.findall(r"<body[^>]*>", dom)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it)")
def test_compare_page_loads_in_chromium_with_its_plot(tmp_path):
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(TINY_MOE))
    out = tmp_path / "cmp"
    assert main(["compare", str(scenario), "--out", str(out), "--jobs", "1", "--microbatches", "1"]) == 0
    dom = _dom(out / "index.html", tmp_path)
    assert 'data-images="ok 1"' in dom, re.findall(r"<body[^>]*>", dom)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it)")
def test_chromium_check_catches_a_missing_picture(run_dir, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(run_dir, d)
    (d / "memory.png").unlink()
    dom = _dom(d / "index.html", tmp_path)
    assert 'data-images="missing: memory.png"' in dom
    assert "Picture missing: memory.png" in dom
