"""Calibration stage, status: how far the uncalibrated model (datasheet peaks x assumed efficiencies) is
from measurements, for the expected error every output states for a result on an uncalibrated profile.

The figure is derived, not chosen: the H200's micro-benchmarks (hardware_profiles/measurements/h200_micro.json)
are predicted with the H200's datasheet profile *without* its calibration tables, i.e. exactly as an
uncalibrated profile prices kernels (costs.compute_op_s: roofline at compute_efficiency and
memory_efficiency, eager floor host_launch_s), and compared with what was measured. config.hardware's
UNCALIBRATED_* constants hold the result (tests/test_calibration_status.py recomputes them).
"""

from __future__ import annotations

import statistics

from simulator import costs
from simulator.calibration.fit import FP16_BYTES
from simulator.config.hardware import HardwareProfile


def _calls(data: dict) -> list[tuple[str, float, float, bool, float]]:
    """(table, FLOPs, bytes, tensor_core, measured_s) of every GEMM, batched GEMM and attention call."""
    calls = []
    for g in data.get("gemm", []):
        m, k, n = g["M"], g["K"], g["N"]
        calls.append(("gemm", 2.0 * m * k * n, (m * k + k * n + m * n) * FP16_BYTES, True, g["s"]))
    for g in data.get("bmm", []):
        e, c, k, n = g["E"], g["C"], g["K"], g["N"]
        calls.append(("grouped_gemm", 2.0 * e * c * k * n, e * (c * k + k * n + c * n) * FP16_BYTES, True, g["s"]))
    for a in data.get("sdpa_prefill", []):
        b, h, s, d = a["B"], a["H"], a["S"], a["D"]
        calls.append(
            ("attention_prefill", 4.0 * b * h * s * s * d / 2.0, 4.0 * b * h * s * d * FP16_BYTES, True, a["s"])
        )
    for a in data.get("sdpa_decode", []):
        b, h, kv_len, d = a["B"], a["H"], a["L"], a["D"]
        kv_bytes = 2.0 * b * h * kv_len * d * FP16_BYTES
        calls.append(("attention_decode", 4.0 * b * h * kv_len * d, kv_bytes, True, a["s"]))
    return calls


def uncalibrated_errors(data: dict, datasheet: HardwareProfile) -> list[float]:
    """Signed relative error (predicted / measured - 1) of the uncalibrated model on every call."""
    profile = datasheet.model_copy(update={"calibration": None})
    errors = []
    for _table, flops, bytes_moved, tensor_core, measured_s in _calls(data):
        predicted_s, _ = costs.compute_op_s(flops, bytes_moved, profile, "fp16", tensor_core, 1, True)
        errors.append(predicted_s / measured_s - 1.0)
    return errors


def uncalibrated_error_summary(data: dict, datasheet: HardwareProfile) -> dict[str, float]:
    """Median and 90th percentile of |error| of the uncalibrated model over the calls, and how many."""
    errors = sorted(abs(e) for e in uncalibrated_errors(data, datasheet))
    p90 = errors[min(len(errors) - 1, round(0.9 * (len(errors) - 1)))]
    return {"median_abs_error": statistics.median(errors), "p90_abs_error": p90, "calls": len(errors)}


def uncalibrated_e2e_errors(cases_path, datasheet_path: str) -> list[float]:
    """Signed error of every case of a cases file run on `datasheet_path` instead of its own profile."""
    from simulator.calibration.validate import load_cases, predict

    errors = []
    for case in load_cases(cases_path):
        outcome = predict(case.model_copy(update={"scenario": {**case.scenario, "hardware": datasheet_path}}))
        errors.append(outcome.error)
    return errors
