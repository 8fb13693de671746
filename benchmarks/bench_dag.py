"""Benchmark of building the complete seed DAG (prefill + all decode steps) and verifying it.

python benchmarks/bench_dag.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

from simulator.config import load_scenario
from simulator.graph import build_dag
from simulator.verify import verify_dag

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    scenario = load_scenario(ROOT / "scenarios" / "seed_moe_4gpu.yaml")
    builds, builds_gc, verifies = [], [], []
    for _ in range(args.repeats):
        gc.collect()
        start = time.perf_counter()
        graph = build_dag(scenario)
        builds_gc.append(time.perf_counter() - start)
        del graph
        gc.collect()
        gc.disable()  # as moesim's pipeline builds it (simulator/pipeline.py: no_gc)
        start = time.perf_counter()
        graph = build_dag(scenario)
        builds.append(time.perf_counter() - start)
        gc.enable()
        start = time.perf_counter()
        checks = verify_dag(graph, scenario)
        verifies.append(time.perf_counter() - start)
        assert all(c.ok for c in checks)
    print(f"seed DAG: {graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges")
    print(
        f"build:  median {statistics.median(builds):.2f} s, min {min(builds):.2f} s over {args.repeats} runs "
        f"(as the pipeline runs it, cyclic GC paused); with GC on: median {statistics.median(builds_gc):.2f} s"
    )
    print(f"verify: median {statistics.median(verifies):.2f} s, min {min(verifies):.2f} s")


if __name__ == "__main__":
    main()
