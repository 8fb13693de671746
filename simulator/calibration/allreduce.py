"""Calibration check, intra-node all-reduce: moesim's all-reduce models (costs.oneshot_allreduce_s,
twoshot_allreduce_s, ring_allreduce_s, and an engine's choice among them, costs.custom_allreduce_s) on the public
micro-benchmarks of hardware_profiles/measurements/public_allreduce.yaml.

A point's `kernel` names what was timed: one_shot, two_shot or nccl (one kernel, priced by its own model), engine
(the engine's own choice of kernel, priced as the fastest of the three) or multimem (PyTorch's symmetric-memory
all-reduce, which the vllm-v1 profile prices as its custom all-reduce, the fastest of the three). `best_points` adds, per table row
that has all three kernels, the fastest of them: what an engine picking the fastest kernel would get.
`python benchmarks/bench_allreduce.py` prints the table; tests/test_costs.py bounds its error.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from simulator import costs
from simulator.config.hardware import HardwareProfile

DATA = Path(__file__).resolve().parents[2] / "hardware_profiles" / "measurements" / "public_allreduce.yaml"
KERNELS = ("one_shot", "two_shot", "nccl", "multimem", "engine", "best")


@dataclass(frozen=True)
class AllReducePoint:
    source: str
    n: int  # ranks
    message_bytes: float
    kernel: str  # one of KERNELS
    measured_s: float


def load_points(path: Path = DATA) -> list[AllReducePoint]:
    data = yaml.safe_load(Path(path).read_text())
    return [AllReducePoint(p["source"], p["n"], float(p["bytes"]), p["kernel"], p["us"] * 1e-6) for p in data["points"]]


def best_points(points: list[AllReducePoint]) -> list[AllReducePoint]:
    """Per (source, n, bytes) row with a one_shot, a two_shot and an nccl time: the fastest of them."""
    rows: dict[tuple, dict[str, float]] = defaultdict(dict)
    for p in points:
        rows[(p.source, p.n, p.message_bytes)][p.kernel] = p.measured_s
    return [
        AllReducePoint(source, n, size, "best", min(times["one_shot"], times["two_shot"], times["nccl"]))
        for (source, n, size), times in rows.items()
        if {"one_shot", "two_shot", "nccl"} <= times.keys()
    ]


def predicted_s(point: AllReducePoint, hw: HardwareProfile) -> float:
    """moesim's time for the point on `hw`'s NVLink (every rank inside one node)."""
    size, n, link = point.message_bytes, point.n, hw.intra_node
    if point.kernel == "one_shot":
        return costs.oneshot_allreduce_s(size, n, link)
    if point.kernel == "two_shot":
        return costs.twoshot_allreduce_s(size, n, link)
    if point.kernel == "nccl":
        return costs.ring_allreduce_s(size, n, link)
    if point.kernel in ("engine", "best", "multimem"):  # multimem: what the engine profiles price it as
        return costs.custom_allreduce_s(size, n, link, float("inf"))
    raise ValueError(f"unknown kernel {point.kernel!r}; expected one of {', '.join(KERNELS)}")
