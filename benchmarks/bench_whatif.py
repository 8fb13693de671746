"""Benchmark of `moesim whatif`: every default knob for every missed target of a scenario (the seed by default).

    python benchmarks/bench_whatif.py                      # scenarios/seed_moe_4gpu.yaml, all cores (goal < 60 s)
    python benchmarks/bench_whatif.py --jobs 1 --scenario scenarios/mixtral_8x7b_8xh200_ep8.yaml

Prints the wall time (with the process's and its workers' CPU time, and the machine's load average,
since the development VM is shared), the runs simulated and those answered from the cache, and each answer.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from simulator.config import load_scenario
from simulator.sweep import default_jobs, make_executor
from simulator.whatif import fmt_figure, parse_knobs, run_whatif

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 60.0


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "seed_moe_4gpu.yaml"))
    parser.add_argument("--jobs", type=int, default=default_jobs())
    parser.add_argument("--knobs", nargs="+")
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    knobs = parse_knobs(args.knobs)
    load_before = os.getloadavg()[0]
    cpu_before, started = _cpu_s(), time.perf_counter()
    with make_executor(None, args.jobs) as executor:
        w = run_whatif(scenario, knobs, executor=executor)
    wall = time.perf_counter() - started
    cpu = _cpu_s() - cpu_before
    print(
        f"{scenario.name}: {len(knobs)} knobs x {len(w.goals)} missed target(s) "
        f"({', '.join(g.metric for g in w.goals)}): wall {wall:.1f} s with {args.jobs} jobs "
        f"(goal < {GOAL_S:.0f} s: {'met' if wall < GOAL_S else 'MISSED'}), CPU {cpu:.1f} s, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"  {w.simulated} distinct runs simulated for {w.requested} variants asked for (the rest from the cache)")
    for a in w.answers:
        value = a.best.label if a.best is not None else "-"
        figure = fmt_figure(a.metric, a.best.figure) if a.best is not None else "-"
        print(f"  {a.metric:32s} {a.knob:15s} {a.status:5s} {value:>16s} {figure:>10s}  {a.method}")


if __name__ == "__main__":
    main()
