"""Sweep one knob through the Python API: the seed deployment's batch size, against TTFT, TPOT, output
throughput and memory per GPU. A plain script (run it as a notebook cell, or `python docs/examples/sweep_batch.py`);
CI runs it (tests/test_docs.py) and docs/images/sweep_batch.png is its picture.

    python docs/examples/sweep_batch.py [--out PICTURE.png] [--batches 16,32,64,128,256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import simulator  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def sweep(batches: list[int]) -> pd.DataFrame:
    """One row per batch size: the run's headline figures (simulator.RunResult.figures) and its verdicts."""
    seed = simulator.load(ROOT / "scenarios" / "seed_moe_4gpu.yaml")
    rows = []
    for batch in batches:
        result = simulator.run(seed, workload__batch_size=batch)
        rows.append({"batch_size": batch, **result.figures, "all_targets_met": result.all_targets_met})
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path: Path) -> None:
    panels = (
        ("ttft_max_s", 1.0, "TTFT, worst sequence (s)"),
        ("tpot_s", 1e3, "TPOT (ms)"),
        ("output_tokens_per_ms_per_gpu", 1.0, "output tokens / ms / GPU"),
        ("memory_bytes_per_gpu", 1e-9, "memory, busiest GPU (GB)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.3))
    for ax, (column, scale, label) in zip(axes, panels):
        ax.plot(table["batch_size"], table[column] * scale, "o-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (sequences)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].axhline(64, color="grey", linestyle=":", label="64 GB per GPU")
    axes[-1].legend(loc="upper left")
    fig.suptitle("seed_moe_4gpu (PP2 TP2 EP2, 10240 + 128 tokens): batch size swept with simulator.run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "sweep_batch.png")
    parser.add_argument("--batches", default="16,32,64,128,256")
    args = parser.parse_args()
    table = sweep([int(b) for b in args.batches.split(",")])
    columns = ["batch_size", "ttft_max_s", "tpot_s", "output_tokens_per_ms_per_gpu", "memory_bytes_per_gpu"]
    print(table[columns].to_string(index=False))
    plot(table, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
