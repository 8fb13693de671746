"""`moesim whatif` through the real command line: bad input in one line, the files, the run page's link."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SEED_PATH, TINY_MOE


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulator.cli", *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=300
    )


def _tiny(tmp_path: Path, **targets) -> Path:
    data = copy.deepcopy(TINY_MOE)
    data["workload"] = {"batch_size": 8, "input_len_tokens": 256, "output_len_tokens": 8}
    data["targets"] = targets or data["targets"]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--knobs", "bogus"], "--knobs bogus: unknown knob; valid: batch_size, input_len, output_len, num_gpus"),
        (["--target", "ttft_s"], "--target ttft_s: already met, ttft_s 894.2 ms (target <= 10 s); nothing to search"),
        (
            ["--target", "ttft"],
            "--target ttft: unknown target; the scenario's targets are output_tokens_per_ms_per_gpu",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, expected):
    out = tmp_path / "w"
    result = _cli("whatif", str(SEED_PATH), "--out", str(out), *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert expected in result.stderr
    assert not out.exists()


def test_top_k_of_a_dense_model_is_refused(tmp_path):
    data = copy.deepcopy(TINY_MOE)
    data["model"].update(num_experts=0, ffn_size=128, top_k=1)
    del data["model"]["expert_ffn_size"]
    data["parallel"]["ep"] = 1
    path = tmp_path / "dense.yaml"
    path.write_text(yaml.safe_dump(data))
    result = _cli("whatif", str(path), "--out", str(tmp_path / "w"), "--knobs", "top_k")
    assert result.returncode == 2 and "--knobs top_k: the model has no experts" in result.stderr


def test_run_names_whatif_and_the_run_page_shows_its_answers(tmp_path):
    scenario = _tiny(tmp_path, tpot_s={"max": 1e-5}, ttft_s={"max": 10.0})
    run_dir = tmp_path / "reports" / "tiny"
    run = _cli("run", str(scenario), "--out", str(run_dir), "--no-dag", "--check")
    assert run.returncode == 1  # --check still decides the exit code
    assert f"moesim whatif {scenario}" in run.stdout.replace("\n", "")
    page = (run_dir / "index.html").read_text()
    assert "moesim whatif SCENARIO.yaml" in page and 'id="whatif"' not in page

    whatif = _cli(
        "whatif",
        str(scenario),
        "--out",
        str(run_dir / "whatif"),
        "--knobs",
        "hbm_bandwidth,kv_cache_dtype",
        "--jobs",
        "1",
    )
    assert whatif.returncode == 0, whatif.stderr
    assert "what meets tpot_s <= 0.01 ms" in whatif.stdout
    files = sorted(p.name for p in (run_dir / "whatif").iterdir() if not p.name.startswith("."))
    assert files == ["whatif.csv", "whatif.md", "whatif_points.csv", "whatif_tpot_s.png"]
    rows = (run_dir / "whatif" / "whatif.csv").read_text().splitlines()
    assert rows[0].startswith("target,bound,limit,current_figure,knob,status") and len(rows) == 3
    page = (run_dir / "index.html").read_text()
    assert 'id="whatif"' in page and 'src="whatif/whatif_tpot_s.png"' in page
    # a new run keeps the answers beside it
    assert _cli("run", str(scenario), "--out", str(run_dir), "--no-dag").returncode == 0
    assert (run_dir / "whatif" / "whatif.md").is_file()


def test_a_serving_scenario_says_in_one_line_that_rate_and_concurrency_are_not_searched(tmp_path):
    scenario = ROOT / "scenarios" / "seed_moe_4gpu_serving.yaml"
    result = _cli("whatif", str(scenario), "--out", str(tmp_path / "w"), "--knobs", "weight_dtype", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    first = result.stdout.replace("\n", "").split("seed_moe_4gpu_serving: what meets")[0]
    assert first.startswith("serving: the knobs move the static batch of `moesim run`; concurrency and request rate")
    assert "moesim serve --max-rate" in first
