"""Benchmark of a plain `moesim run` on every shipped scenario: wall seconds and bytes written.

    python benchmarks/bench_run.py                 # every scenario in scenarios/, the default run
    python benchmarks/bench_run.py --only seed     # scenarios whose file name contains a word
    python benchmarks/bench_run.py --extra=--full  # pass options to `moesim run` (e.g. the old behaviour)

Each run is a fresh `python -m simulator.cli run SCENARIO --out TMP` process (imports included, as a
user sees it). Goals (issue 14, the 2-core development machine): under 5 s each, DeepSeek-V3 on 32
GPUs under 10 s, under 10 MB written each. Also the seed's build + simulate in process (the default
folded, decode-sampled run with its sampling check; goal under 0.5 s, best of 3).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

GOAL_S = {"deepseek_v3_4x8xh100_ep32": 10.0}
DEFAULT_GOAL_S = 5.0
GOAL_BYTES = 10e6


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_run(scenario: Path, extra: list[str]) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, bytes written, exit code) of one `moesim run` (CPU: the process and
    the Graphviz it runs; the steadier figure when other work shares the machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cpu = _children_cpu_s()
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "simulator.cli", "run", str(scenario), "--out", str(out), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        cpu = _children_cpu_s() - cpu
        if proc.returncode not in (0, 1):
            print(proc.stderr, file=sys.stderr)
        return wall, cpu, directory_bytes(out) if out.exists() else 0, proc.returncode


def seed_build_simulate_s(repeat: int = 3) -> float:
    from simulator.config import load_scenario
    from simulator.pipeline import measure_sampling_error, run_scenario

    scenario = load_scenario(ROOT / "scenarios" / "seed_moe_4gpu.yaml", [])
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        measure_sampling_error(run_scenario(scenario, decode_sample=8, fold=True), 8)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="scenarios whose file name contains this")
    parser.add_argument("--extra", action="append", default=[], help="an option for `moesim run` (repeatable)")
    args = parser.parse_args()
    scenarios = sorted(p for p in (ROOT / "scenarios").glob("*.yaml") if not args.only or args.only in p.name)
    ok = True
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall time counts the others' work too)")
    print(f"{'scenario':<32} {'wall s':>7} {'CPU s':>6} {'goal':>5} {'MB':>6}")
    for scenario in scenarios:
        wall, cpu, size, code = time_run(scenario, args.extra)
        goal = GOAL_S.get(scenario.stem, DEFAULT_GOAL_S)
        met = min(wall, cpu) < goal and size < GOAL_BYTES and code in (0, 1)
        ok &= met
        print(f"{scenario.stem:<32} {wall:7.2f} {cpu:6.2f} {goal:5.0f} {size / 1e6:6.2f}{'' if met else '  MISSED'}")
    build = seed_build_simulate_s()
    ok &= build < 0.5
    print(f"seed build + simulate (folded, 8 decode steps sampled, with its error check): {build:.3f} s (goal 0.5 s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
