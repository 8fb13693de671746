"""Intra-node all-reduce against public micro-benchmarks (vLLM's and SGLang's custom all-reduce, NCCL).

Prints, for every point of hardware_profiles/measurements/public_allreduce.yaml (and each row's fastest kernel,
"best"), the measured time and moesim's on the h100-sxm-80gb profile's NVLink (450 GB/s x 0.82 per direction,
3 us per synchronisation), then the median and largest |error| per kernel:

- one_shot: costs.oneshot_allreduce_s, 2 latencies + (n-1) S / bw;
- two_shot: costs.twoshot_allreduce_s, 3 latencies + 2(n-1)/n S / bw;
- nccl: costs.ring_allreduce_s, 2(n-1) latencies + 2(n-1)/n S / bw (what moesim prices every all-reduce as
  under runtime.allreduce nccl);
- engine / best: costs.custom_allreduce_s, the fastest of the three (runtime.allreduce custom, which the engine
  profiles set);
- multimem: PyTorch's symmetric-memory all-reduce (vLLM 0.11 on 6 and 8 Hopper GPUs), priced as the custom
  all-reduce, which is how the vllm-v1 profile prices it.

Run: python benchmarks/bench_allreduce.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.calibration.allreduce import KERNELS, best_points, load_points, predicted_s  # noqa: E402
from simulator.config.hardware import load_profile  # noqa: E402


def main() -> None:
    hw = load_profile("h100-sxm-80gb")
    points = load_points()
    points += best_points(points)
    errors: dict[str, list[float]] = {k: [] for k in KERNELS}
    print(f"{'source':12} {'kernel':9} {'n':>2} {'KiB':>7} {'measured us':>12} {'moesim us':>10} {'error':>8}")
    for p in points:
        t = predicted_s(p, hw)
        errors[p.kernel].append(t / p.measured_s - 1)
        print(
            f"{p.source:12} {p.kernel:9} {p.n:2d} {p.message_bytes / 1024:7.0f} {p.measured_s * 1e6:12.1f}"
            f" {t * 1e6:10.1f} {t / p.measured_s - 1:+8.1%}"
        )
    for kernel, errs in errors.items():
        if errs:
            worst = max(errs, key=abs)
            median = statistics.median(abs(e) for e in errs)
            print(f"{kernel}: {len(errs)} points, median |error| {median:.1%}, largest {worst:+.1%}")


if __name__ == "__main__":
    main()
