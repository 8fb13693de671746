"""Golden outputs: `moesim run` writes summary.json and summary.md equal to the checked-in files.

Two scenarios: the seed (fp16, CUDA-graph decode, one node) and a small pipelined MoE (bf16, eager, two nodes,
DP2 x PP2 x TP2 x EP2, two microbatches, zipf routing). Any change of a figure, a sentence or a key shows up here.
When a change is meant, regenerate the files with `bash scripts/regen_golden.sh` and review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = {
    "seed_moe_4gpu": ROOT / "scenarios" / "seed_moe_4gpu.yaml",
    "golden_tiny_pp": GOLDEN / "golden_tiny_pp.yaml",
}


@pytest.mark.parametrize("full", [False, True], ids=["default", "full"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_run_writes_the_golden_summary(name, full, tmp_path):
    """The default run (folded, decode sampled, its error stated) and `--full` (every step on every
    GPU: the figures of the simulator before sampling became the default)."""
    out = tmp_path / name
    assert main(["run", str(CASES[name]), "--out", str(out), "--no-dag"] + (["--full"] if full else [])) == 0
    for suffix in ("summary.json", "summary.md"):
        expected = (GOLDEN / f"{name}.{'full.' if full else ''}{suffix}").read_text()
        assert (out / suffix).read_text() == expected, (
            f"{name} {suffix} differs from tests/golden (regenerate on purpose: bash scripts/regen_golden.sh)"
        )
