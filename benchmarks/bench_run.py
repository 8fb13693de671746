"""Benchmark of `moesim run` on every shipped scenario: wall and CPU seconds, bytes written.

    python benchmarks/bench_run.py                   # every scenario in scenarios/, the plain run, plus the rest
    python benchmarks/bench_run.py --only seed       # scenarios whose file name contains a word
    python benchmarks/bench_run.py --extra=--full    # pass options to `moesim run` (e.g. the old behaviour)
    python benchmarks/bench_run.py --against /tmp/base --repeat 3   # before/after, runs alternated

Each run is a fresh `python -m simulator.cli run SCENARIO --out TMP` process (imports included, as a
user sees it). CPU seconds are those of the process and of the Graphviz it runs: the steadier figure
when other work shares the machine (wall time then counts the others' work too). Printed:

* per scenario, the plain run (folded, decode steps sampled, light outputs);
* the heavy outputs: the seed with `--full --artifacts all` (every step on every GPU, dag.json and
  ops.csv) and the 64-GPU Mixtral with `--artifacts all`;
* the seed's build + simulate in process (the default folded, decode-sampled run with its sampling
  check; best of 3).

The package is byte-compiled first (`python -m compileall simulator`, in each checkout timed), as
an installed package is: otherwise, where bytecode is not written (PYTHONDONTWRITEBYTECODE), every
run would also compile moesim's modules (~0.2 s).

Goals (issue 14, the 2-core development machine): each plain run under 5 s (DeepSeek-V3 on 32 GPUs
under 10 s) and under 10 MB; the seed's build + simulate under 0.5 s; the heavy outputs no slower than
before. `--against DIR` runs the same commands in another checkout (e.g. `git worktree add /tmp/base
main`) alternately with this one, `--repeat` times each, and prints both (the best of the repeats).
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
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent

GOAL_S = {"deepseek_v3_4x8xh100_ep32": 10.0}
DEFAULT_GOAL_S = 5.0
GOAL_BYTES = 10e6
HEAVY = (
    ("seed_moe_4gpu", ("--full", "--artifacts", "all")),
    ("mixtral_8x7b_64gpu", ("--artifacts", "all")),
)


class Timing(NamedTuple):
    wall_s: float
    cpu_s: float
    bytes_written: int
    exit_code: int


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_run(root: Path, scenario: str, extra: list[str]) -> Timing:
    """One `moesim run` of scenarios/<scenario>.yaml in the checkout `root`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cpu = _children_cpu_s()
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "simulator.cli", "run", f"scenarios/{scenario}.yaml", "--out", str(out), *extra],
            cwd=root,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        cpu = _children_cpu_s() - cpu
        if proc.returncode not in (0, 1):
            print(proc.stderr, file=sys.stderr)
        return Timing(wall, cpu, directory_bytes(out) if out.exists() else 0, proc.returncode)


def best_of(timings: list[Timing]) -> Timing:
    """The least wall and the least CPU seconds of the repeats (each the least disturbed figure)."""
    return Timing(
        min(t.wall_s for t in timings),
        min(t.cpu_s for t in timings),
        timings[-1].bytes_written,
        max(t.exit_code for t in timings),
    )


def seed_build_simulate_s(repeat: int = 3) -> float:
    sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one
    from simulator.config import load_scenario
    from simulator.pipeline import measure_sampling_error, run_scenario

    scenario = load_scenario(ROOT / "scenarios" / "seed_moe_4gpu.yaml", [])
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        measure_sampling_error(run_scenario(scenario, decode_sample=8, fold=True), 8)
        best = min(best, time.perf_counter() - started)
    return best


def _row(label: str, t: Timing, goal_s: float | None = None) -> tuple[str, bool]:
    met = True
    if goal_s is not None:
        met = min(t.wall_s, t.cpu_s) < goal_s and t.bytes_written < GOAL_BYTES and t.exit_code in (0, 1)
    goal = f"{goal_s:5.0f}" if goal_s is not None else "    -"
    return (
        f"{label:<44} {t.wall_s:7.2f} {t.cpu_s:6.2f} {goal} {t.bytes_written / 1e6:7.2f}{'' if met else '  MISSED'}",
        met,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="scenarios whose file name contains this")
    parser.add_argument("--extra", action="append", default=[], help="an option for `moesim run` (repeatable)")
    parser.add_argument("--against", type=Path, help="another checkout to time alternately (before/after)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each command per checkout (best shown)")
    parser.add_argument("--no-heavy", action="store_true", help="skip the heavy-output runs")
    parser.add_argument(
        "--no-compile", action="store_true", help="do not byte-compile the package first (see the module docstring)"
    )
    args = parser.parse_args()
    scenarios = sorted(p.stem for p in (ROOT / "scenarios").glob("*.yaml") if not args.only or args.only in p.name)
    commands = [
        (s, f"{s}{' ' + ' '.join(args.extra) if args.extra else ''}", list(args.extra), True) for s in scenarios
    ]
    if not args.no_heavy:
        commands += [(s, f"{s} {' '.join(flags)}", list(flags), False) for s, flags in HEAVY if s in scenarios]
    trees = [("", ROOT)] + ([("before: ", args.against.resolve())] if args.against else [])
    if not args.no_compile:
        # An installed package imports from its bytecode cache; a development tree may not have one
        # (PYTHONDONTWRITEBYTECODE), and compiling the package's modules would be timed with every run.
        for _, root in trees:
            subprocess.run([sys.executable, "-m", "compileall", "-q", "simulator"], cwd=root, check=True)
    ok = True
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall time counts the others' work too)")
    print(f"{'moesim run':<44} {'wall s':>7} {'CPU s':>6} {'goal':>5} {'MB':>7}")
    for scenario, label, extra, plain in commands:
        runs: dict[str, list[Timing]] = {name: [] for name, _ in trees}
        for _ in range(args.repeat):
            for name, root in trees:  # alternated: both see the same load
                runs[name].append(time_run(root, scenario, extra))
        for name, _ in trees:
            goal = GOAL_S.get(scenario, DEFAULT_GOAL_S) if plain and not name else None
            text, met = _row(name + label, best_of(runs[name]), goal)
            ok &= met
            print(text)
    build = seed_build_simulate_s()
    ok &= build < 0.5
    print(f"seed build + simulate (folded, 8 decode steps sampled, with its error check): {build:.3f} s (goal 0.5 s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
