"""Calibration fit, table interpolation, calibrated op times, and the validate command."""

from __future__ import annotations

import copy
import json
import math

import pytest
import yaml
from conftest import ROOT

from simulator import costs
from simulator.calibration.fit import (
    eager_floors,
    fit_calibration,
    leave_one_out,
    measured_gemm_format,
    measured_points,
)
from simulator.config.hardware import load_profile, series_interpolate

MICRO = ROOT / "hardware_profiles" / "measurements" / "h200_micro.json"
DATASHEET_H200 = ROOT / "hardware_profiles" / "datasheet" / "h200-sxm-141gb.yaml"


@pytest.fixture(scope="module")
def micro() -> dict:
    return json.loads(MICRO.read_text())


def test_series_interpolation_in_log_space():
    pts = [(1.0, 1.0, 10.0, 0.2), (1.0, 1.0, 1000.0, 0.6)]
    assert series_interpolate(pts, (1.0, 1.0), 100.0) == pytest.approx(0.4)  # halfway in log x
    assert series_interpolate(pts, (1.0, 1.0), 1.0) == 0.2  # held at the ends, no extrapolated trend
    assert series_interpolate(pts, (1.0, 1.0), 1e6) == 0.6


def test_series_blend_across_keys_prefers_nearest():
    pts = [(32.0, 10.0, 0.2), (128.0, 10.0, 0.6)]
    assert series_interpolate(pts, (32.0,), 10.0) == 0.2  # exact key alone
    mid = series_interpolate(pts, (64.0,), 10.0)  # equidistant in log: the mean
    assert mid == pytest.approx(0.4)
    assert series_interpolate(pts, (100.0,), 10.0) > 0.5


def test_fit_turns_each_measurement_into_a_roofline_fraction(micro):
    hw = load_profile(str(DATASHEET_H200))
    cal = fit_calibration(micro, hw, "test")
    big = next(g for g in micro["gemm"] if (g["M"], g["K"], g["N"]) == (4096, 4096, 4096))
    roofline = 2.0 * 4096**3 / hw.peak_flops_per_s.fp16  # compute-bound at this size
    row = next(r for r in cal.gemm if r[:3] == (4096, 4096, 4096))  # (K, N, M, fraction)
    assert row[3] == pytest.approx(roofline / big["s"])
    # launch-bound calls (512 x 512 weights, M = 1: 13 us) are not in the tables; their floor is
    assert all(r[:3] != (512, 512, 1) for r in cal.gemm)
    assert 11e-6 < cal.eager_floor_s["gemm"] < 13e-6
    gelu = next(e for e in micro["elementwise"] if e["op"] == "gelu")
    assert cal.elementwise_s_per_byte["gelu"] == pytest.approx(gelu["s"] / (1048576 * 1024 * 2))


def test_floor_never_far_above_the_fastest_call(micro):
    hw = load_profile(str(DATASHEET_H200))
    floors = eager_floors(measured_points(micro, hw.peak_flops_per_s.fp16, hw.hbm_bytes_per_s), micro)
    fastest_attention = min(a["s"] for a in micro["sdpa_prefill"] + micro["sdpa_decode"])
    assert floors["attention"] <= 1.25 * fastest_attention


def test_leave_one_out_predicts_every_gemm(micro):
    rows = leave_one_out(micro, load_profile(str(DATASHEET_H200)))
    assert len([r for r in rows if r["table"] == "gemm"]) == len(micro["gemm"])
    assert all(r["predicted_s"] > 0 and math.isfinite(r["error"]) for r in rows)


def test_calibrated_gemm_time_is_roofline_over_fraction(h100):
    t, bound = costs.calibrated_gemm_s(4096, 4096, 4096, 2.0, 1e15, 4e12, 0.5)
    assert bound == "compute" and t == pytest.approx(2 * 4096**3 / 1e15 / 0.5)
    t, bound = costs.calibrated_gemm_s(1, 8192, 8192, 2.0, 1e15, 4e12, 0.5)
    assert bound == "memory" and t == pytest.approx((8192 + 8192 * 8192 + 8192) * 2 / 4e12 / 0.5)


def test_eager_floor_and_graph_mode():
    assert costs.eager_time_s(1e-6, "memory", 1, 2e-6, 12e-6, eager=True) == (12e-6, "launch")
    assert costs.eager_time_s(1e-6, "memory", 1, 2e-6, 12e-6, eager=False) == (2e-6, "launch")
    assert costs.eager_time_s(50e-6, "compute", 1, 2e-6, 12e-6, eager=True) == (50e-6, "compute")
    assert costs.eager_time_s(1e-6, "compute", 0, 2e-6, 12e-6, eager=True) == (1e-6, "compute")
    # a node of 5 kernels: 5 floors eagerly, 5 smallest kernel times in a graph
    assert costs.eager_time_s(1e-6, "memory", 5, 2e-6, 12e-6, eager=True) == (pytest.approx(60e-6), "launch")
    assert costs.eager_time_s(1e-6, "memory", 5, 2e-6, 12e-6, eager=False) == (pytest.approx(10e-6), "launch")


def test_gated_activation_is_timed_per_input_byte():
    """silu_mul was measured on x [rows, 2f] (bytes_in): SwiGLU's time scales with what it reads."""
    from simulator.op_time import calibrated_node_s

    hw = load_profile("h200-sxm-141gb")
    per_byte = hw.calibration.elementwise_s_per_byte["silu_mul"]
    rows, f = 4096, 14336
    act = {
        "op": "expert_act",
        "dtype": "fp16",
        "flops": 6.0 * rows * f,
        "bytes_read": rows * 2 * f * 2.0,
        "bytes_written": rows * f * 2.0,
        "launches": 2,
    }
    t, bound = calibrated_node_s(act, hw, hw.calibration, eager=True, gated=True)
    assert (t, bound) == (pytest.approx(per_byte * rows * 2 * f * 2.0), "memory")


@pytest.mark.parametrize("name", ["h200-sxm-141gb", "h100-sxm-80gb", "generic-64gb"])
def test_committed_profiles_match_a_refit(name, micro, tmp_path):
    """The calibrated profiles are what scripts/refit_profiles.sh writes from the measurements."""
    import argparse

    from rich.console import Console

    from simulator.commands.calibrate import add_arguments, command

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / f"{name}.yaml"
    args = parser.parse_args(
        [
            "--from-json",
            str(MICRO.relative_to(ROOT)),
            "--measured-on",
            "hardware_profiles/datasheet/h200-sxm-141gb.yaml",
            "--base",
            f"hardware_profiles/datasheet/{name}.yaml",
            "--host-calls",
            "hardware_profiles/measurements/host_calls.json",
            "--out",
            str(out),
            "--name",
            name,
        ]
    )
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        command(args, Console(file=open(os.devnull, "w")))
    finally:
        os.chdir(cwd)
    committed = yaml.safe_load((ROOT / "hardware_profiles" / f"{name}.yaml").read_text())
    assert yaml.safe_load(out.read_text()) == committed


def test_calibrate_without_gpu_says_so(tmp_path, capsys):
    from simulator.cli import main

    code = main(["calibrate", "--device", "cuda", "--out", str(tmp_path / "x.yaml")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ("PyTorch" in err or "GPU" in err)
    assert not (tmp_path / "x.yaml").exists()


def test_validate_runs_the_dev_cases(tmp_path, capsys):
    from simulator.cli import main

    assert main(["validate", str(ROOT / "validation" / "dev_cases.yaml"), "--out", str(tmp_path / "v")]) == 0
    assert "median |error|" in capsys.readouterr().out
    csv = (tmp_path / "v" / "validation.csv").read_text().splitlines()
    assert len(csv) == 1 + len(yaml.safe_load((ROOT / "validation" / "dev_cases.yaml").read_text())["cases"])
    assert (tmp_path / "v" / "validation.png").stat().st_size > 10_000


def test_scatter_add_uses_its_measured_rate_once_a_profile_has_one():
    """The sorted MoE's index_add combine: at its fitted rate (from the kernel breakdown) when the
    profile has one, at copy speed otherwise."""
    from simulator.op_time import calibrated_node_s

    hw = load_profile("h200-sxm-141gb")
    node = {
        "op": "moe_combine",
        "dtype": "fp16",
        "flops": 0.0,
        "bytes_read": 4e8,
        "bytes_written": 2e8,
        "launches": 1,
        "scatter_add": True,
    }
    rates = hw.calibration.elementwise_s_per_byte
    assert "index_add" in rates  # fitted from h200_micro.json's kernel_breakdown
    t, _ = calibrated_node_s(node, hw, hw.calibration, eager=True, gated=False)
    assert t == pytest.approx(rates["index_add"] * 4e8)
    without = {k: v for k, v in rates.items() if k != "index_add"}
    copy_speed = hw.calibration.model_copy(update={"elementwise_s_per_byte": without})
    t, _ = calibrated_node_s(node, hw, copy_speed, eager=True, gated=False)
    assert t == pytest.approx(rates["copy"] * 3e8)


def test_the_table_records_the_format_its_gemms_were_measured_in(micro):
    """The H200 file's GEMMs are fp16 (its `dtype`; the batched GEMMs say none: fp16); fp8 GEMMs are priced
    from them by the format transfer. A file mixing formats, or measuring 8-bit GEMMs, is refused."""
    profile = load_profile(str(DATASHEET_H200))
    assert fit_calibration(micro, profile, "m").gemm_format == "fp16"
    bad = copy.deepcopy(micro)
    bad["gemm"][0]["dtype"] = "fp8"
    with pytest.raises(ValueError, match="GEMM dtypes fp16/fp8: need one of fp16, bf16"):
        fit_calibration(bad, profile, "m")


def test_a_file_measured_in_bf16_records_bf16():
    """The format is read from the file (not fp16 by default): every GEMM and batched GEMM in bf16 gives bf16,
    and no GEMM at all gives fp16."""
    bf16 = {"gemm": [{"dtype": "bf16"}], "bmm": [{"dtype": "bf16"}]}
    assert measured_gemm_format(bf16) == "bf16"
    assert measured_gemm_format({}) == "fp16"
    with pytest.raises(ValueError, match="GEMM dtypes bf16/fp16"):
        measured_gemm_format({"gemm": [{"dtype": "bf16"}], "bmm": [{}]})


def test_a_transfer_keeps_bandwidth_figures_as_fractions_of_the_hbm_peak():
    """H100 tables transferred from the H200: memory_efficiency is the H200's copy rate over the H200's own
    peak (4.8 TB/s), not over the H100's (which capped it at 1.0); every per-byte time is the H200's scaled
    by 4.8 / 3.35 (the H100 streams each byte slower); per-call latencies carry over unchanged."""
    from simulator.config.hardware import load_profile

    h200, h100 = load_profile("h200-sxm-141gb"), load_profile("h100-sxm-80gb")
    assert h100.memory_efficiency == h200.memory_efficiency == pytest.approx(2.0 / (4.7883e-13 * 4.8e12), abs=1e-4)
    for op, s_per_byte in h200.calibration.elementwise_s_per_byte.items():
        assert h100.calibration.elementwise_s_per_byte[op] == pytest.approx(s_per_byte * 4.8 / 3.35, rel=1e-12)
    assert h100.calibration.helper_kernel_s == h200.calibration.helper_kernel_s
    assert h100.calibration.gemm == h200.calibration.gemm  # roofline fractions
