"""fp8 GEMMs on an fp16-calibrated profile against public micro-benchmarks.

Prints, for every point of hardware_profiles/measurements/public_fp8_gemm.yaml, the measured TFLOP/s and
moesim's prediction on the h100-sxm-80gb profile (H100 / H800 peaks and HBM; the H200's fp16 tables)
with two models of an fp8 GEMM:

- "same fraction": the fp8 roofline divided by the fp16-measured fraction of the shape (moesim before
  the format transfer: exactly 2x the fp16 speed at compute-bound shapes);
- "e_inf split": the candidate of the fidelity issue, kept here for comparison only: the fp16 time less
  F / (peak16 e_inf) (e_inf: the table's largest compute-bound fraction) is a rest that does not
  scale (scaled by the bytes where the shape is memory-bound); t = F / (peak_fmt e_inf) + rest;
- "transfer": costs.format_transfer_gemm_s, what moesim uses (the fixed part and the output write do
  not shrink, the rest scales with the operands' roofline).

Sources that measured bf16 and fp8 on one GPU also get the transfer applied to their own bf16 time
(no moesim table involved): that tests the transfer alone. Run: python benchmarks/bench_fp8_gemm.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator import costs  # noqa: E402
from simulator.config.hardware import load_profile  # noqa: E402
from simulator.op_time import transferred_gemm_s  # noqa: E402

DATA = ROOT / "hardware_profiles" / "measurements" / "public_fp8_gemm.yaml"


def shape(p: dict) -> tuple[int, int, int, int]:
    return p.get("groups", 1), p["m"], p["k"], p["n"]


def e_inf(hw) -> float:
    """The largest fraction among the table's compute-bound (fp16 roofline) GEMMs."""
    p16, hbm = hw.peak_for("fp16"), hw.hbm_bytes_per_s
    best = 0.0
    for k, n, m, frac in hw.calibration.gemm:
        if 2.0 * m * k * n / p16 >= (m * k + k * n + m * n) * 2.0 / hbm:
            best = max(best, frac)
    return best


def predictions(hw, p: dict, e_best: float) -> tuple[float, float, float]:
    """(same fraction, e_inf split, transfer) predicted seconds of an fp8 W8A8 GEMM with a bf16 output."""
    cal = hw.calibration
    e, m, k, n = shape(p)
    frac = hw.gemm_table_fraction(e, m, k, n)
    hbm, p16, p8 = hw.hbm_bytes_per_s, hw.peak_for("fp16"), hw.peak_for("fp8")
    before, _ = costs.calibrated_grouped_gemm_s(e, m, k, n, 1.0, p8, hbm, frac, 1.0, 2.0)
    t16, bound = costs.calibrated_grouped_gemm_s(e, m, k, n, 2.0, p16, hbm, frac)
    flops = 2.0 * e * m * k * n
    rest = max(0.0, t16 - flops / (p16 * e_best))
    if bound == "memory":
        rest *= (e * (m * k + k * n) * 1.0 + e * m * n * 2.0) / (e * (m * k + k * n + m * n) * 2.0)
    split = flops / (p8 * e_best) + rest
    after, _ = transferred_gemm_s(hw, cal.gemm_format, "fp8", e, m, k, n, frac, 1.0, 2.0)
    return before, split, after


def transfer_of_measured_bf16(hw, p: dict, bf16_s: float) -> tuple[float, float]:
    """The fp8 time from a measured bf16 time of the same shape on the same GPU: (same fraction, transfer)."""
    e, m, k, n = shape(p)
    flops = 2.0 * e * m * k * n
    hbm = hw.hbm_bytes_per_s
    g = costs.GemmTransfer(
        bf16_s, flops, e * (m * k + k * n) * 2.0, e * (m * k + k * n) * 1.0, e * m * n * 2.0, e * m * n * 2.0
    )
    p16, p8 = hw.peak_for("bf16"), hw.peak_for("fp8")
    roof16 = max(flops / p16, e * (m * k + k * n + m * n) * 2.0 / hbm)
    roof8 = max(flops / p8, e * (m * k + k * n) * 1.0 / hbm + e * m * n * 2.0 / hbm)
    same = bf16_s * roof8 / roof16
    after, _ = costs.format_transfer_gemm_s(g, p16, p8, hbm * hw.memory_efficiency, hw.kernel_overhead_s)
    return same, after


def main() -> None:
    data = yaml.safe_load(DATA.read_text())
    hw = load_profile("h100-sxm-80gb")
    points = data["points"]
    bf16 = {(p["source"], shape(p)): p for p in points if p["format"] == "bf16"}
    e_best = e_inf(hw)
    rows, errs = [], {"same fraction": {}, "e_inf split": {}, "transfer": {}}
    pair_rows, pair_errs = [], {"same fraction": [], "transfer": []}
    for p in points:
        if p["format"] != "fp8":
            continue
        e, m, k, n = shape(p)
        flops = 2.0 * e * m * k * n
        before, split, after = predictions(hw, p, e_best)
        tf = p["tflops"]
        b_tf, s_tf, a_tf = flops / before / 1e12, flops / split / 1e12, flops / after / 1e12
        eb, es, ea = b_tf / tf - 1.0, s_tf / tf - 1.0, a_tf / tf - 1.0
        errs["same fraction"].setdefault(p["source"], []).append(eb)
        errs["e_inf split"].setdefault(p["source"], []).append(es)
        errs["transfer"].setdefault(p["source"], []).append(ea)
        rows.append((p["source"], e, m, n, k, tf, b_tf, eb, s_tf, es, a_tf, ea))
        pair = bf16.get((p["source"], shape(p)))
        if pair is not None:
            bf16_s = flops / (pair["tflops"] * 1e12)
            same, tr = transfer_of_measured_bf16(hw, p, bf16_s)
            s_tf, t_tf = flops / same / 1e12, flops / tr / 1e12
            pair_errs["same fraction"].append(s_tf / tf - 1.0)
            pair_errs["transfer"].append(t_tf / tf - 1.0)
            pair_rows.append((p["source"], m, n, k, pair["tflops"], tf, s_tf, s_tf / tf - 1.0, t_tf, t_tf / tf - 1.0))

    print(f"fp8 GEMMs: measured vs moesim on h100-sxm-80gb (H200 fp16 tables; e_inf = {e_best:.3f}), TFLOP/s")
    print("| source | groups | M | N | K | measured | same fraction | error | e_inf split | error | transfer | error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for src, e, m, n, k, tf, b_tf, eb, s_tf, es, a_tf, ea in rows:
        print(
            f"| {src} | {e} | {m} | {n} | {k} | {tf:.0f} | {b_tf:.0f} | {eb:+.1%} | {s_tf:.0f} | {es:+.1%} | "
            f"{a_tf:.0f} | {ea:+.1%} |"
        )
    print()
    print("median |error| (median signed error) per source")
    print("| source | points | same fraction | e_inf split | transfer |")
    print("|---|---|---|---|---|")
    groups = {src: {name: errs[name][src] for name in errs} for src in errs["transfer"]}
    groups["all"] = {name: [x for v in errs[name].values() for x in v] for name in errs}
    for src, by_model in groups.items():
        cells = " | ".join(
            f"{statistics.median(abs(x) for x in v):.1%} ({statistics.median(v):+.1%})" for v in by_model.values()
        )
        print(f"| {src} | {len(by_model['transfer'])} | {cells} |")
    print()
    print("Same-GPU pairs: the fp8 time from the source's own bf16 time (no moesim table), TFLOP/s")
    print("| source | M | N | K | bf16 measured | fp8 measured | same fraction | error | transfer | error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for src, m, n, k, b16, tf, s_tf, es, t_tf, et in pair_rows:
        print(f"| {src} | {m} | {n} | {k} | {b16:.1f} | {tf:.1f} | {s_tf:.1f} | {es:+.1%} | {t_tf:.1f} | {et:+.1%} |")
    for name, v in pair_errs.items():
        print(
            f"median abs error ({name}): {statistics.median(abs(x) for x in v):.1%}, signed {statistics.median(v):+.1%}"
        )


if __name__ == "__main__":
    main()
