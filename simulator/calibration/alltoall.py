"""Calibration check, cross-node all-to-all: moesim's collective model (costs.hierarchical_alltoall_s) on the
public expert-parallel all-to-all micro-benchmarks of hardware_profiles/measurements/public_alltoall.yaml.

Each point is one rank's dispatch or combine of `tokens` tokens x `top_k` copies spread evenly over `ep` ranks
(copies bound for the rank itself do not move): what layers.py's a2a_dispatch and a2a_combine nodes send.
`python benchmarks/bench_alltoall.py` prints the table; tests/test_costs.py bounds its error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from simulator import costs
from simulator.config.hardware import HardwareProfile

DATA = Path(__file__).resolve().parents[2] / "hardware_profiles" / "measurements" / "public_alltoall.yaml"
FP8_SCALE_BLOCK = 128  # DeepEP's fp8 dispatch: one fp32 scale per 128 elements
FP32_BYTES = 4


@dataclass(frozen=True)
class AllToAllPoint:
    ep: int
    op: str  # "dispatch" (fp8 + scales) or "combine" (bf16)
    measured_s: float
    tokens: int
    hidden: int
    top_k: int
    gpus_per_node: int

    @property
    def copy_bytes(self) -> float:
        """Bytes of one token copy: fp8 elements and their scales, or bf16 elements."""
        if self.op == "dispatch":
            return self.hidden + self.hidden / FP8_SCALE_BLOCK * FP32_BYTES
        return 2.0 * self.hidden

    @property
    def rank_bytes(self) -> float:
        """What one rank sends (and receives): its copies bound for the other ep - 1 ranks."""
        return self.tokens * self.top_k * self.copy_bytes * (self.ep - 1) / self.ep


def load_points(path: Path = DATA) -> list[AllToAllPoint]:
    data = yaml.safe_load(Path(path).read_text())
    s = data["setting"]
    return [
        AllToAllPoint(p["ep"], p["op"], p["us"] * 1e-6, s["tokens"], s["hidden"], s["top_k"], s["gpus_per_node"])
        for p in data["points"]
    ]


def predicted_s(point: AllToAllPoint, hw: HardwareProfile) -> float:
    """moesim's time for the point on `hw`'s links (every rank sends and receives the same bytes)."""
    n = point.ep
    per_rank = [point.rank_bytes] * n
    return costs.hierarchical_alltoall_s(
        per_rank, per_rank, point.gpus_per_node, n // point.gpus_per_node, hw.intra_node, hw.inter_node
    )
