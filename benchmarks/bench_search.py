"""Speed of the deployment search (`moesim compare` with search dimensions), the two statements of issue 18,
each run end to end through the command in a fresh process:

1. seed: scenarios/seed_moe_4gpu_serving.yaml as shipped (1000 requests per simulated rate) over every layout
   x scheduler limits (max_num_seqs 64,128 x max_num_batched_tokens 4096,8192) x aggregated/disaggregated on
   1 to 4 GPUs, throughput per GPU at the max rate (goal: under 2 minutes on the 2-core machine).
2. mixtral: scenarios/mixtral_8x7b_64gpu.yaml (static batch) on up to 64 H100s (1..8, 16..64 by 8, every
   layout, --microbatches 1) on a local Dask cluster (goal: under 15 minutes).

Prints wall seconds, CPU seconds (the command's process and every child it waited for: workers, Dask) and the
load average before and after; asserts nothing. The machine may be shared: compare CPU seconds there.

    .venv/bin/python benchmarks/bench_search.py [--only seed|mixtral] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seed_argv(out: Path, jobs: int) -> list[str]:
    return [
        "compare",
        str(ROOT / "scenarios" / "seed_moe_4gpu_serving.yaml"),
        "--gpus",
        "1..4",
        "--kinds",
        "aggregated,disaggregated",
        "--max-num-seqs",
        "64,128",
        "--max-num-batched-tokens",
        "4096,8192",
        "--objective",
        "max_rate",
        "--jobs",
        str(jobs),
        "--force",
        "--out",
        str(out),
    ]


def mixtral_argv(out: Path, jobs: int) -> list[str]:
    return [
        "compare",
        str(ROOT / "scenarios" / "mixtral_8x7b_64gpu.yaml"),
        "--max-gpus",
        "64",
        "--microbatches",
        "1",
        "--executor",
        "dask-local",
        "--jobs",
        str(jobs),
        "--force",
        "--out",
        str(out),
    ]


def timed(name: str, argv: list[str]) -> None:
    """Run `python -m simulator.cli ARGV` in a child and print its wall and CPU seconds (CPU: the child and
    the processes it started and waited for) with the load average around it."""
    load = os.getloadavg()
    before = os.times()
    started = time.perf_counter()
    env = {**os.environ, "COLUMNS": "400"}  # the summary line on one line
    done = subprocess.run(
        [sys.executable, "-m", "simulator.cli", *argv], cwd=ROOT, capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    lines = [line for line in done.stdout.splitlines() if "candidates:" in line] or done.stdout.splitlines()[-1:]
    print(
        f"{name}: {wall:.1f} s wall, {cpu:.1f} CPU s; load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(f"  exit {done.returncode}: {' '.join(lines).strip()}")
    if done.returncode not in (0, 1):
        print(done.stderr.strip()[-2000:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", choices=["seed", "mixtral"])
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench_search_"))
    if args.only in (None, "seed"):
        timed(
            "seed, max rate, 1..4 GPUs x layouts x max_num_seqs 64,128 x budget 4096,8192 x both kinds",
            seed_argv(out / "seed", args.jobs),
        )
    if args.only in (None, "mixtral"):
        timed("Mixtral-8x7B, targets, up to 64 H100s, dask-local", mixtral_argv(out / "mixtral", args.jobs))
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
