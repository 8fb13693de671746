"""Benchmark of the engine stage on synthetic DAGs of 25k to 200k tasks.

Each task holds 1-3 of 16 resources and has 1-3 successors among the next ~20 tasks, so the graph
is wide enough for contention and deep enough for long chains. Two variants: a layered DAG where
every task has a predecessor, and a random one where many tasks are ready at once. Run:

    python benchmarks/bench_engine_synthetic.py [--sizes 25000 50000 ...] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import time

import numpy as np

from simulator.engine import EngineInput, simulate

NUM_RESOURCES = 16
SUCCESSOR_WINDOW = 20
DEFAULT_SIZES = (25_000, 50_000, 100_000, 200_000)


def synthetic_input(num_tasks: int, seed: int = 0, connected: bool = True) -> EngineInput:
    """Builds a random DAG whose edges only point forward, at most SUCCESSOR_WINDOW tasks ahead.

    Args:
        num_tasks: Number of tasks.
        seed: Seed of the random generator.
        connected: If True, every task but the first gets at least one predecessor in the
            window before it (a layered DAG, like a model's operator graph). If False, about
            e^-2 = 13% of tasks have no predecessor and are ready at time 0, so thousands of
            tasks queue for resources: a stress test of the engine's waiting structures.
    """
    rng = np.random.default_rng(seed)
    # Durations from a small set, as real op costs repeat: exercises shared end times too.
    duration_s = (rng.integers(1, 50, num_tasks) * 1e-6).tolist()
    num_res = rng.integers(1, 4, num_tasks)
    resources = [tuple(int(r) for r in rng.choice(NUM_RESOURCES, size=k, replace=False)) for k in num_res]
    num_succ = rng.integers(1, 4, num_tasks)
    offsets = rng.integers(1, SUCCESSOR_WINDOW + 1, (num_tasks, 3)).tolist()
    successors: list[list[int]] = [
        sorted({i + o for o in offsets[i][: num_succ[i]] if i + o < num_tasks}) for i in range(num_tasks)
    ]
    if connected:
        has_pred = [False] * num_tasks
        for succ in successors:
            for j in succ:
                has_pred[j] = True
        back = rng.integers(1, SUCCESSOR_WINDOW + 1, num_tasks).tolist()
        for j in range(1, num_tasks):
            if not has_pred[j]:
                successors[max(0, j - back[j])].append(j)
    return EngineInput(
        duration_s=duration_s,
        resources=resources,
        successors=successors,
        num_resources=NUM_RESOURCES,
    )


def run_sizes(sizes: list[int], repeats: int, connected: bool) -> None:
    """Prints one row per size: best wall time of `repeats` runs and the rates it implies."""
    print(f"{'tasks':>8} {'events':>8} {'wall_s':>8} {'tasks/s':>10} {'events/s':>10} {'makespan_s':>11} {'x_prev':>7}")
    previous_wall_s = None
    for num_tasks in sizes:
        inp = synthetic_input(num_tasks, connected=connected)
        best_wall_s = math.inf
        for _ in range(repeats):
            begin = time.perf_counter()
            trace = simulate(inp)
            best_wall_s = min(best_wall_s, time.perf_counter() - begin)
        ratio = "" if previous_wall_s is None else f"{best_wall_s / previous_wall_s:7.2f}"
        print(
            f"{num_tasks:>8} {trace.num_events:>8} {best_wall_s:>8.3f} "
            f"{num_tasks / best_wall_s:>10.0f} {trace.num_events / best_wall_s:>10.0f} "
            f"{trace.makespan_s:>11.6f} {ratio}"
        )
        previous_wall_s = best_wall_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--repeats", type=int, default=3, help="report the best of this many")
    parser.add_argument("--profile", action="store_true", help="cProfile the largest size")
    args = parser.parse_args(argv)

    for connected, title in (
        (True, "layered DAG (every task has a predecessor)"),
        (False, "random DAG (~13% of tasks ready at time 0)"),
    ):
        print(title)
        run_sizes(args.sizes, args.repeats, connected)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(simulate, synthetic_input(max(args.sizes), connected=connected))
            pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
        print()


if __name__ == "__main__":
    main()
