"""The documentation: generated reference pages equal a fresh generation (scripts/gen_docs.py), the README
stays short and links into the site, the bad-input page holds every row tests/test_bad_inputs.py runs, and
the notebook-style example (docs/examples/sweep_batch.py) runs through the public API."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

DOCS = ROOT / "docs"


def gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATED = gen_docs().generated()


@pytest.mark.parametrize("path", sorted(GENERATED), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_generated_files_equal_a_fresh_generation(path):
    assert path.is_file() and path.read_text() == GENERATED[path], "run: python scripts/gen_docs.py"


def test_the_scenario_reference_names_every_field_with_unit_default_limits_and_example():
    page = (DOCS / "reference" / "scenario.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| `input_len_tokens` |"))
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert cells == [
        "`input_len_tokens`",
        "integer",
        "tokens",
        "**required**",
        "> 0",
        "prompt length of every sequence",
        "`10240` (scenarios/seed_moe_4gpu.yaml)",
    ]
    memory = next(line for line in page.splitlines() if line.startswith("| `memory_reserve_bytes` |"))
    assert "| bytes | `1000000000.0` | >= 0, <= 1e+15 |" in memory
    from simulator.config import ModelSpec, Scenario

    for name in list(Scenario.model_fields) + list(ModelSpec.model_fields):
        assert f"| `{name}` |" in page, name


def test_the_command_reference_lists_every_subcommand_and_flag():
    from simulator.cli import SUBCOMMANDS, command_parser

    page = (DOCS / "reference" / "cli.md").read_text()
    for name in SUBCOMMANDS:
        assert f"## moesim {name}" in page
        for action in command_parser(name)._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in page, (name, flag)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def entries(nav):
        for item in nav:
            for value in item.values():
                yield from entries(value) if isinstance(value, list) else [value]

    listed = set(entries(config["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert listed == pages


def test_readme_is_short_keeps_the_quick_start_and_links_into_the_site():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) < 9000, len(readme)
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(set(links)) >= 10
    for link in links:
        assert (ROOT / link).exists(), link
    assert "mkdocs serve" in readme


def test_the_bad_input_page_holds_every_row_the_tests_run():
    sys.path.insert(0, str(ROOT / "tests"))
    from test_bad_inputs import ROWS

    page = (DOCS / "bad-input.md").read_text()
    missing = [r.id for r in ROWS if r.expected not in page and r.expected.split(": ", 1)[-1] not in page]
    assert missing == []


def test_the_sweep_example_runs_through_the_public_api(tmp_path):
    picture = tmp_path / "sweep.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(DOCS / "examples" / "sweep_batch.py"), "--out", str(picture), "--batches", "16,32"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the figures it prints are the API's: the seed at batch 16 and 32
    lines = [line.split() for line in proc.stdout.splitlines() if line.strip()[:2] in ("16", "32")]
    assert [line[0] for line in lines] == ["16", "32"]
    import simulator

    ttft = simulator.run(ROOT / "scenarios" / "seed_moe_4gpu.yaml", workload__batch_size=16).figures["ttft_max_s"]
    assert float(lines[0][1]) == pytest.approx(ttft, rel=1e-5)
