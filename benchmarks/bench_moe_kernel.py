"""moesim's routed-expert pricing against published MoE-layer kernel times on a B200 (simulator.calibration.
moe_kernels, hardware_profiles/measurements/public_moe_kernels.yaml): DeepSeek-V3's MoE as one rank of EP8 sees it,
NVFP4 and bf16, 8-512 tokens. The b200-sxm-180gb profile is uncalibrated; nothing is fitted to these points.

    python benchmarks/bench_moe_kernel.py
"""

from __future__ import annotations

import statistics

from simulator.calibration.moe_kernels import load_points, predicted_s


def main() -> None:
    errors: dict[str, list[float]] = {}
    print("| format | tokens | measured ms | moesim ms | error |")
    print("|---|---|---|---|---|")
    for p in load_points():
        predicted = predicted_s(p)
        error = predicted / p.measured_s - 1.0
        errors.setdefault(p.format, []).append(error)
        print(f"| {p.format} | {p.tokens} | {p.measured_s * 1e3:.4f} | {predicted * 1e3:.4f} | {100 * error:+.1f} % |")
    for fmt, errs in errors.items():
        print(
            f"{fmt}: median |error| {100 * statistics.median(abs(e) for e in errs):.1f} %, signed median "
            f"{100 * statistics.median(errs):+.1f} %, largest {100 * max(errs, key=abs):+.1f} % over {len(errs)} points"
        )


if __name__ == "__main__":
    main()
