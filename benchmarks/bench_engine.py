"""Benchmark of the whole simulation on the seed scenario and 2x / 4x larger workloads.

Prints, per workload: DAG nodes, engine events, wall seconds to build the DAG, to cost and
simulate it, and events per second. "2x layers" doubles model.num_layers, "2x steps" doubles
the decode steps; cost should grow linearly with the number of nodes. Run:

    python benchmarks/bench_engine.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

from simulator.config import load_scenario, resolve_hardware
from simulator.graph import build_dag
from simulator.simulate import simulate_dag

ROOT = Path(__file__).resolve().parent.parent

SEED = ROOT / "scenarios" / "seed_moe_4gpu.yaml"
CASES = {
    "seed (16 layers, 127 decode steps)": [],
    "2x layers": ["model.num_layers=32"],
    "4x layers": ["model.num_layers=64"],
    "2x decode steps": ["workload.output_len_tokens=255"],
    "4x decode steps": ["workload.output_len_tokens=509"],
}


def _time(fn, repeats: int):
    walls, result = [], None
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        start = time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - start)
        gc.enable()
    return statistics.median(walls), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'workload':36} {'nodes':>8} {'events':>8} {'build s':>8} {'sim s':>8} {'total s':>8} {'events/s':>10} {'us/node':>8}"
    )
    base = None
    for name, overrides in CASES.items():
        scenario = load_scenario(SEED, overrides)
        hw = resolve_hardware(scenario)
        build_s, graph = _time(lambda: build_dag(scenario), args.repeats)
        sim_s, result = _time(lambda: simulate_dag(graph, scenario, hw), args.repeats)
        nodes = graph.number_of_nodes()
        total = build_s + sim_s
        per_node = total / nodes * 1e6
        base = base or per_node
        print(
            f"{name:36} {nodes:8d} {result.num_events:8d} {build_s:8.2f} {sim_s:8.2f} {total:8.2f} "
            f"{result.num_events / sim_s:10.0f} {per_node:8.1f}"
        )
    print("linear scaling means a constant us/node column")


if __name__ == "__main__":
    main()
