"""Check of the kernels' fixed part against device times measured inside a CUDA graph.

Below a calibration series' smallest measured size, moesim gives a GEMM or a flash-attention kernel a fixed
part: its time follows the line through the series' two smallest measurements (hardware.gemm_fraction,
hardware.attention_fixed_part_s). Those fixed parts are what two table points imply, not a measurement of a
small kernel. `benchmarks/gpu_calibration.sh` measures small GEMMs and decode attention calls replayed inside a
CUDA graph (`small_kernels` in its raw_extra.json: device time, no host dispatch); this module prints the
model's device time for each of those shapes next to the measurement. It is a check, not a fit: nothing
here changes a profile.

    python -m simulator.calibration.small_kernels raw_extra.json [--hardware h200-sxm-141gb]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simulator.config.hardware import (
    HardwareProfile,
    ProfileError,
    attention_fixed_part_s,
    load_profile,
    series_interpolate,
)
from simulator.op_time import calibrated_node_s

FP16_BYTES = 2.0


def gemm_device_s(hw: HardwareProfile, m: float, k: float, n: float) -> float:
    """The model's device time of one fp16 GEMM [m, k] @ [k, n]: op_time's price of a GEMM node replayed in
    a CUDA graph (no dispatch floor, at least the profile's kernel_overhead_s)."""
    assert hw.calibration is not None
    node = {"op": "gemm", "dtype": "fp16", "gemm": (m, k, n), "launches": 1}
    return calibrated_node_s(node, hw, hw.calibration, eager=False, gated=False)[0]


def decode_attention_device_s(hw: HardwareProfile, batch: float, heads: float, kv_len: float, head_dim: float) -> float:
    """The model's device time of one decode flash-attention call (one query per sequence, MHA, fp16 K
    and V): the K and V bytes at the decode table's fraction, plus the kernel's fixed part below the
    table's first measured size (the table's own definition of a call, as the fit reads it)."""
    assert hw.calibration is not None
    table = hw.calibration.attention_decode
    kv_bytes = 2.0 * batch * heads * kv_len * head_dim * FP16_BYTES
    frac = series_interpolate(table, (head_dim,), kv_bytes)
    fixed_s = attention_fixed_part_s(
        table, (head_dim,), kv_bytes, True, hw.peak_for(hw.calibration.gemm_format), hw.hbm_bytes_per_s
    )
    return max(kv_bytes / (hw.hbm_bytes_per_s * frac) + fixed_s, hw.kernel_overhead_s)


def compare(extra: dict, hw: HardwareProfile) -> list[dict]:
    """One row per measured small kernel of `extra["small_kernels"]`: what it is, measured and model
    device seconds, and the model's error."""
    rows = []
    for r in extra.get("small_kernels", []):
        if r.get("s_graph_per_kernel") is None:
            continue
        if r["kind"] == "gemm":
            shape = f"gemm {r['M']}x{r['K']}x{r['N']}"
            model_s = gemm_device_s(hw, r["M"], r["K"], r["N"])
        elif r["kind"] == "decode_attention":
            shape = f"decode attention B{r['B']} H{r['H']} L{r['L']} D{r['D']}"
            model_s = decode_attention_device_s(hw, r["B"], r["H"], r["L"], r["D"])
        else:
            continue
        measured_s = r["s_graph_per_kernel"]
        rows.append({"kernel": shape, "measured_s": measured_s, "model_s": model_s, "error": model_s / measured_s - 1})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.calibration.small_kernels", description=__doc__.splitlines()[0]
    )
    parser.add_argument("extra", type=Path, help="raw_extra.json of benchmarks/gpu_calibration.sh")
    parser.add_argument("--hardware", default="h200-sxm-141gb", help="profile to check (default h200-sxm-141gb)")
    args = parser.parse_args(argv)
    try:
        extra = json.loads(args.extra.read_text())
        hw = load_profile(args.hardware)
    except (OSError, ValueError, ProfileError) as exc:
        print(f"small_kernels: {exc}", file=sys.stderr)
        return 2
    if hw.calibration is None:
        print(f"small_kernels: {args.hardware} has no calibration tables to check", file=sys.stderr)
        return 2
    rows = compare(extra, hw)
    if not rows:
        print(f"small_kernels: {args.extra} has no small_kernels measurements", file=sys.stderr)
        return 2
    for r in rows:
        print(
            f"{r['kernel']:42} measured {r['measured_s'] * 1e6:8.2f} us  model {r['model_s'] * 1e6:8.2f} us  "
            f"{100 * r['error']:+6.1f} %"
        )
    errors = sorted(abs(r["error"]) for r in rows)
    print(
        f"median |error| {100 * errors[len(errors) // 2]:.1f} %, max {100 * errors[-1]:.1f} % over {len(rows)} kernels"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
