"""Benchmark of `moesim compare`: the full seed sweep on 4 GPUs, and the 64-GPU Mixtral-8x7B sweep.

    python benchmarks/bench_sweep.py seed                # every layout x microbatches 1,2,4,8 (target < 30 s)
    python benchmarks/bench_sweep.py mixtral             # enumerate + screen, simulate a sample, project the sweep
    python benchmarks/bench_sweep.py mixtral --full      # the whole 64-GPU sweep (target < 5 min)
    options: --jobs J, --decode-sample K, --sample N (mixtral)

Prints layouts, simulated, screened out, failed and wall seconds; the projection uses the sweep's own
cost estimate (DAG nodes ~ microbatches x GPUs per stage x passes) fitted on the sampled layouts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from simulator.config import load_scenario, resolve_hardware, with_layout
from simulator.placement import evenly_routed
from simulator.sweep import (
    DEFAULT_DECODE_SAMPLE,
    DEFAULT_MICROBATCHES,
    default_jobs,
    enumerate_layouts,
    estimated_cost,
    make_executor,
    rank_results,
    run_sweep,
    screen_memory,
)

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = {"seed": ("seed_moe_4gpu.yaml", 30.0), "mixtral": ("mixtral_8x7b_64gpu.yaml", 300.0)}


def full_sweep(name: str, jobs: int, decode_sample: int) -> None:
    path, target_s = SCENARIOS[name]
    scenario = load_scenario(ROOT / "scenarios" / path)
    started = time.perf_counter()
    layouts = enumerate_layouts(scenario, microbatches=DEFAULT_MICROBATCHES)
    with make_executor(None, jobs) as executor:
        results = run_sweep(scenario, layouts, executor, decode_sample)
    wall = time.perf_counter() - started
    ranked = rank_results(results)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "screened", "failed")}
    cpu = sum(r.sim_s for r in results)
    print(
        f"{name}: {len(layouts)} layouts on {scenario.num_gpus} GPUs, {counts['ok']} simulated, "
        f"{counts['screened']} screened out, {counts['failed']} failed; wall {wall:.1f} s with {jobs} jobs "
        f"(simulation time summed over layouts {cpu:.1f} s; decode sample {decode_sample}); target < {target_s:.0f} s: "
        f"{'met' if wall < target_s else 'MISSED'}"
    )
    best = next((r for r in ranked if r.rank == 1), None)
    if best is not None:
        print(
            f"best: {best.label}: {best.output_tput:.4g} output tokens/ms/GPU, TTFT max {best.ttft_max_s:.3f} s, "
            f"TPOT {best.tpot_s * 1e3:.2f} ms, dominant {best.dominant}"
        )


def projected_sweep(name: str, jobs: int, decode_sample: int, sample: int) -> None:
    """Enumerate and screen for real; simulate `sample` layouts spread over the cost range and
    project the wall time of the whole sweep on `jobs` cores from their seconds per cost unit."""
    path, target_s = SCENARIOS[name]
    scenario = load_scenario(ROOT / "scenarios" / path)
    started = time.perf_counter()
    layouts = enumerate_layouts(scenario, microbatches=DEFAULT_MICROBATCHES)
    capacity = resolve_hardware(scenario).memory_bytes
    fits = [lay for lay in layouts if screen_memory(with_layout(scenario, lay), capacity) is None]
    prep = time.perf_counter() - started
    steps = scenario.workload.output_len_tokens - 1
    folded = evenly_routed(scenario)
    by_cost = sorted(fits, key=lambda lay: estimated_cost(lay, decode_sample, steps, folded))
    # the cheaper half of the range: the biggest layouts need several GB and minutes each
    pool = by_cost[: max(1, len(by_cost) // 2)]
    chosen = [pool[round(i * (len(pool) - 1) / max(1, sample - 1))] for i in range(min(sample, len(pool)))]
    with make_executor("serial") as executor:
        results = run_sweep(scenario, chosen, executor, decode_sample)
    seconds = sum(r.sim_s for r in results)
    units = sum(estimated_cost(r.layout, decode_sample, steps, folded) for r in results)
    total_units = sum(estimated_cost(lay, decode_sample, steps, folded) for lay in fits)
    projected = prep + seconds / units * total_units / jobs
    print(
        f"{name}: {len(layouts)} layouts on {scenario.num_gpus} GPUs, {len(layouts) - len(fits)} screened out, "
        f"{len(fits)} to simulate; enumeration + screening {prep:.1f} s"
    )
    for r in results:
        print(
            f"  sampled {r.label:<24} {r.status:<6} {r.sim_s:6.1f} s  cost units "
            f"{estimated_cost(r.layout, decode_sample, steps, folded):8.0f}"
        )
    print(
        f"{seconds / units * 1e3:.2f} ms per cost unit; the whole sweep is {total_units:.3g} units: projected wall "
        f"{projected:.0f} s ({projected / 60:.1f} min) on {jobs} jobs; target < {target_s:.0f} s: "
        f"{'met' if projected < target_s else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=sorted(SCENARIOS))
    parser.add_argument("--jobs", type=int, default=default_jobs())
    parser.add_argument("--decode-sample", type=int, default=DEFAULT_DECODE_SAMPLE)
    parser.add_argument("--full", action="store_true", help="mixtral: run the whole sweep instead of projecting")
    parser.add_argument("--sample", type=int, default=6, help="mixtral: layouts simulated for the projection")
    args = parser.parse_args()
    if args.which == "seed" or args.full:
        full_sweep(args.which, args.jobs, args.decode_sample)
    else:
        projected_sweep(args.which, args.jobs, args.decode_sample, args.sample)


if __name__ == "__main__":
    main()
