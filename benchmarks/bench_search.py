"""Speed of the deployment search (`moesim compare` with search dimensions), end to end through the command.

1. The seed serving scenario over layouts x scheduler limits on up to 4 GPUs (200 requests per simulated rate):
   fewest GPUs at a given rate, and throughput per GPU at the max rate.
2. Mixtral-8x7B (static batch scenario) on up to 64 H100s on a local Dask cluster. `--subset` times the
   counts 8 and 64 only and extrapolates to every count explicitly (labelled as such in the output).

Prints figures; asserts nothing. Usage: .venv/bin/python benchmarks/bench_search.py [--jobs N] [--subset] [--skip-mixtral]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from simulator.cli import main

ROOT = Path(__file__).resolve().parent.parent


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    return time.perf_counter() - started, f"exit {code}: " + buffer.getvalue().strip().splitlines()[-1]


def main_bench() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--subset", action="store_true", help="Mixtral: time 8 and 64 GPUs, extrapolate")
    parser.add_argument("--skip-mixtral", action="store_true")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench_search_"))
    seed = str(ROOT / "scenarios" / "seed_moe_4gpu_serving.yaml")
    small = ["--set", "serving.workload.num_requests=200", "--set", "serving.workload.warmup_requests=20"]
    common = ["--gpus", "1..4", "--max-num-seqs", "64,128", "--jobs", str(args.jobs), "--force", *small]
    s, line = timed(
        [
            "compare",
            seed,
            *common,
            "--max-num-batched-tokens",
            "4096,8192",
            "--objective",
            "fewest_gpus",
            "--rate",
            "40",
            "--out",
            str(out / "seed_fewest"),
        ]
    )
    print(f"seed, fewest GPUs at 40 req/s, 1..4 GPUs x max_num_seqs 64,128 x budget 4096,8192: {s:.1f} s  ({line})")
    s, line = timed(
        ["compare", seed, *common, "--objective", "max_rate", "--rel-tol", "0.05", "--out", str(out / "seed_maxrate")]
    )
    print(f"seed, throughput/GPU at the max rate, 1..4 GPUs x max_num_seqs 64,128: {s:.1f} s  ({line})")
    if args.skip_mixtral:
        return
    mixtral = str(ROOT / "scenarios" / "mixtral_8x7b_64gpu.yaml")
    base = ["compare", mixtral, "--microbatches", "1", "--executor", "dask-local", "--jobs", str(args.jobs), "--force"]
    if args.subset:
        total = 0.0
        for n in (8, 64):
            s, line = timed([*base, "--gpus", f"{n},{n}", "--out", str(out / f"mixtral_{n}")])
            total += s
            print(f"Mixtral-8x7B on {n} H100s (measured): {s:.1f} s  ({line})")
        print(
            "EXTRAPOLATED (not measured): counts 1..8 and 16..64 by 8 cost about the measured 8- and 64-GPU "
            f"searches scaled by their layout counts; see docs/deployment-search.md for the arithmetic ({total:.1f} s measured)"
        )
    else:
        s, line = timed([*base, "--max-gpus", "64", "--out", str(out / "mixtral")])
        print(f"Mixtral-8x7B on up to 64 H100s: {s:.1f} s  ({line})")


if __name__ == "__main__":
    main_bench()
