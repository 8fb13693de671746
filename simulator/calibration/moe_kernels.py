"""moesim's routed-expert pricing against published MoE-layer kernel times (hardware_profiles/measurements/
public_moe_kernels.yaml): DeepSeek-V3's MoE as one rank of EP8 on a B200 sees it, NVFP4 and bf16, 8-512 tokens.
Nothing is fitted to them; `python benchmarks/bench_moe_kernel.py` prints the table, tests/test_costs.py bounds it.

A point's price: a decode step of DeepSeek-V3 on eight B200s as DEP8 (attention DP 8, experts EP8, the tokens
all-gathered: TensorRT-LLM's CUTLASS path on a DGX) with tokens / 8 sequences a rank, so that each rank's experts see
the point's tokens, and one MoE layer's routed part on GPU 0: top-k, permute, expert FC1, activation, FC2 and
combine (the benchmark times routing from given logits, the experts and the finalize: no router GEMM, no shared
expert, no collective)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from simulator.config import parse_scenario
from simulator.pipeline import run_scenario

MEASURED = Path(__file__).resolve().parents[2] / "hardware_profiles" / "measurements" / "public_moe_kernels.yaml"
ROUTED_OPS = frozenset({"topk", "moe_permute", "expert_fc1", "expert_act", "expert_fc2", "moe_combine"})
PRECISION = {
    # the NVFP4 checkpoints' recipe (validation/serving_cases_trtllm_dsr1_b200.yaml); only the experts matter here
    "nvfp4": {"preset": "nvfp4", "dense_gemm": "bf16", "attention": "fp8", "kv_cache": "fp8"},
    "bf16": {"preset": "bf16"},
}


@dataclass(frozen=True)
class Point:
    format: str
    tokens: int  # the tokens the rank sees (every rank's, after the all-gather)
    measured_s: float
    source: str


def load_points(path: Path = MEASURED) -> list[Point]:
    data = yaml.safe_load(Path(path).read_text())
    return [Point(p["format"], int(p["tokens"]), p["ms"] * 1e-3, p["source"]) for p in data["points"]]


def predicted_s(point: Point, layer: int = 10) -> float:
    """moesim's routed MoE of one layer on GPU 0 when every rank of DEP8 decodes point.tokens / 8 sequences."""
    if point.tokens % 8:
        raise ValueError(f"tokens = {point.tokens}: the group's tokens, a multiple of its 8 ranks")
    scenario = parse_scenario(
        {
            "name": f"deepseek_v3_dep8_b200_{point.format}_{point.tokens}",
            "model": {"preset": "deepseek-v3", "precision": PRECISION[point.format]},
            "hardware": "b200-sxm-180gb",
            "cluster": {"num_gpus": 8, "gpus_per_node": 8},
            "parallel": {"tp": 1, "dp": 8, "ep": 8},
            "runtime": {"ep_dispatch": "allgather"},
            "workload": {"batch_size": point.tokens, "input_len_tokens": 1024, "output_len_tokens": 2},
        }
    )
    ops = run_scenario(scenario).sim.ops
    rows = ops[(ops["phase"] == "decode") & (ops["step"] == 1) & (ops["layer"] == layer)]
    rows = rows[rows["gpu"].map(lambda g: g == 0) & rows["op"].isin(ROUTED_OPS)]
    if set(rows["op"]) != ROUTED_OPS:
        raise RuntimeError(f"layer {layer} of GPU 0 has {sorted(set(rows['op']))}, not every routed op")
    return float(rows["duration_s"].sum())
