"""Precision presets on two shipped deployments: TTFT, TPOT, throughput and memory per GPU of the seed
(scenarios/seed_moe_4gpu.yaml) and Mixtral-8x7B on 8 H200 (scenarios/mixtral_8x7b_8xh200_ep8.yaml)
under the model's own dtypes and the bf16, fp8-w8a8 and w4a16 presets (docs/precision.md).

    python benchmarks/bench_precision.py
"""

from __future__ import annotations

import time
from pathlib import Path

from simulator.config import load_scenario, precision_line, resolve_hardware
from simulator.memory import memory_per_gpu
from simulator.pipeline import run_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("seed_moe_4gpu.yaml", "mixtral_8x7b_8xh200_ep8.yaml")
PRESETS = (None, "bf16", "fp8-w8a8", "w4a16")


def main() -> None:
    for name in SCENARIOS:
        print(f"{name}:")
        print(
            f"  {'precision':12} {'TTFT (s)':>9} {'TPOT (ms)':>10} {'out tok/ms/GPU':>15} "
            f"{'weights GB':>11} {'KV GB':>7} {'total GB':>9}  (run s)"
        )
        for preset in PRESETS:
            overrides = [f"model.precision={preset}"] if preset else []
            scenario = load_scenario(ROOT / "scenarios" / name, overrides)
            hw = resolve_hardware(scenario)
            start = time.perf_counter()
            run = run_scenario(scenario, decode_sample=8, fold=True, hw=hw)
            elapsed = time.perf_counter() - start
            m = run.metrics
            busiest = max(memory_per_gpu(run.dag, scenario, hw.memory_bytes), key=lambda g: g.total_bytes)
            print(
                f"  {preset or 'model dtypes':12} {m.ttft_s.max:9.4f} {m.tpot_s * 1e3:10.3f} "
                f"{m.throughput['output_tokens_per_ms_per_gpu']:15.4f} {busiest.weight_bytes / 1e9:11.2f} "
                f"{busiest.kv_cache_bytes / 1e9:7.2f} {busiest.total_bytes / 1e9:9.2f}  ({elapsed:.1f})"
            )
            print(f"  {'':12} {precision_line(scenario.model.formats, hw)}")


if __name__ == "__main__":
    main()
