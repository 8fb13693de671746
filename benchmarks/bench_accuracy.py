"""Accuracy figures: leave-one-out predictions of the H200 micro-benchmark tables, and the
end-to-end dev cases (validation/dev_cases.yaml). Prints median and max |error| per table.

    python benchmarks/bench_accuracy.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from simulator.calibration.fit import leave_one_out
from simulator.calibration.validate import load_cases, predict, summarize
from simulator.config.hardware import load_profile

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    data = json.loads((ROOT / "hardware_profiles" / "measurements" / "h200_micro.json").read_text())
    device = load_profile(str(ROOT / "hardware_profiles" / "datasheet" / "h200-sxm-141gb.yaml"))
    rows = leave_one_out(data, device)
    print("leave-one-out (each call predicted from a table fitted without it), eager times:")
    for table in ("gemm", "grouped_gemm", "attention_prefill", "attention_decode"):
        errors = [abs(r["error"]) for r in rows if r["table"] == table]
        print(
            f"  {table:18} {len(errors):3d} calls  median |error| {100 * statistics.median(errors):5.1f}%  "
            f"max {100 * max(errors):5.1f}%"
        )
    print("end-to-end dev cases (validation/dev_cases.yaml):")
    outcomes = [predict(c) for c in load_cases(ROOT / "validation" / "dev_cases.yaml")]
    for o in outcomes:
        print(
            f"  {o.case:70} predicted {o.predicted * 1e3:8.3f} ms  measured {o.measured * 1e3:8.3f} ms  "
            f"{100 * o.error:+6.1f}%"
        )
    s = summarize(outcomes)
    print(f"  median |error| {100 * s['median_abs_error']:.1f}%, max {100 * s['max_abs_error']:.1f}%")


if __name__ == "__main__":
    main()
