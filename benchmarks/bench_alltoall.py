"""Cross-node all-to-all against public micro-benchmarks (DeepEP's low-latency dispatch and combine).

Prints, for every point of hardware_profiles/measurements/public_alltoall.yaml, the measured time and moesim's
on the h100-sxm-80gb profile's links (NVLink 450 GB/s x 0.82 within a node, a 400 Gb/s NIC x 0.85 per GPU
across nodes, 5 us per message), with two models of the NIC part:

- "per peer": one NIC latency per off-node peer, as if the rank exchanged with its peers one after another
  (moesim before this benchmark);
- "concurrent": costs.hierarchical_alltoall_s, what moesim uses: every peer's transfer is issued at once, as
  DeepEP's GPU-initiated RDMA writes and NCCL's grouped send/receive do, so one latency, not one per peer.

Run: python benchmarks/bench_alltoall.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.calibration.alltoall import load_points, predicted_s  # noqa: E402
from simulator.config.hardware import load_profile  # noqa: E402


def main() -> None:
    hw = load_profile("h100-sxm-80gb")
    inter = hw.inter_node
    rows, errors = [], {"per peer": [], "concurrent": []}
    for p in load_points():
        concurrent = predicted_s(p, hw)
        per_peer = concurrent + (p.ep - p.gpus_per_node - 1) * inter.latency_s  # the latency term it replaces
        rows.append((p, per_peer, concurrent))
        errors["per peer"].append(per_peer / p.measured_s - 1)
        errors["concurrent"].append(concurrent / p.measured_s - 1)
    print(f"{'op':9} {'ep':>4} {'measured us':>12} {'per peer us':>12} {'error':>8} {'concurrent us':>14} {'error':>8}")
    for p, per_peer, concurrent in rows:
        print(
            f"{p.op:9} {p.ep:4d} {p.measured_s * 1e6:12.0f} {per_peer * 1e6:12.0f} {per_peer / p.measured_s - 1:+8.1%}"
            f" {concurrent * 1e6:14.0f} {concurrent / p.measured_s - 1:+8.1%}"
        )
    for name, errs in errors.items():
        absolute = [abs(e) for e in errs]
        print(f"{name}: median |error| {statistics.median(absolute):.1%}, max {max(absolute):.1%}")


if __name__ == "__main__":
    main()
