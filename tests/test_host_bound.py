"""Calibration fit: host-bound micro-benchmark points (upper bounds, not GPU time) and the scatter-add rate."""

from __future__ import annotations

import json
import statistics

import pytest
from conftest import ROOT

from simulator.calibration.fit import (
    FLOOR_MARGIN,
    HOST_BOUND_FLOOR_MULTIPLE,
    HOST_BOUND_REGIME_RATIO,
    Point,
    dispatch_floor_s,
    eager_floors,
    fit_calibration,
    helper_kernel_s,
    helper_rates_s_per_byte,
    host_bound,
    measured_points,
    scatter_add_s_per_byte,
    table_time_s,
)
from simulator.config.hardware import load_profile

MICRO = ROOT / "hardware_profiles" / "measurements" / "h200_micro.json"
DATASHEET_H200 = ROOT / "hardware_profiles" / "datasheet" / "h200-sxm-141gb.yaml"


@pytest.fixture(scope="module")
def micro() -> dict:
    return json.loads(MICRO.read_text())


@pytest.fixture(scope="module")
def fitted(micro):
    device = load_profile(str(DATASHEET_H200))
    points = measured_points(micro, device.peak_flops_per_s.fp16, device.hbm_bytes_per_s)
    return device, points, eager_floors(points, micro), dispatch_floor_s(points, micro)


def test_dispatch_floor_is_the_median_of_the_smallest_calls(micro, fitted):
    _, points, _, dispatch_s = fitted
    tiny = [p.measured_s for pts in points.values() for p in pts if p.roofline_s < 1e-6]
    assert len(tiny) >= 10  # the M=1..64 GEMMs of the small shapes, the tiny decode attention
    assert dispatch_s == statistics.median(tiny)
    assert 9e-6 < dispatch_s < 13e-6  # the README's "floor of about 11-13 us per call"


def test_tiny_decode_attention_is_host_bound(micro, fitted):
    """The issue's example: batch 1, KV 1024, head_dim 32, 37 us = 56 GB/s is dispatch, not memory traffic."""
    device, points, floors, dispatch_s = fitted
    decode = points["attention_decode"]
    flags = host_bound(decode, floors["attention"], dispatch_s)
    kv_bytes = 2.0 * 1 * 16 * 1024 * 32 * 2
    i = next(j for j, p in enumerate(decode) if p.key == (32,) and p.x == kv_bytes)
    assert decode[i].measured_s == pytest.approx(37.39e-6, rel=1e-3)
    assert kv_bytes / decode[i].measured_s == pytest.approx(56.09e9, rel=1e-3)
    assert flags[i]
    # the large decode calls (3.2-4.5 TB/s) are GPU time
    assert not any(f for p, f in zip(decode, flags) if p.x >= 2.5e8)


def test_host_bound_rule_is_the_stated_one(fitted):
    """Every flag follows the rule: at the class floor, or within a few dispatch floors at an
    effective rate below a tenth of the series' median."""
    _, points, floors, dispatch_s = fitted
    classes = {"gemm": "gemm", "grouped_gemm": "grouped_gemm"}
    for table, pts in points.items():
        floor_s = floors[classes.get(table, "attention")]
        for i, (p, flag) in enumerate(zip(pts, host_bound(pts, floor_s, dispatch_s))):
            fraction = p.roofline_s / p.measured_s
            series = [q.roofline_s / q.measured_s for j, q in enumerate(pts) if j != i and q.key == p.key]
            at_floor = p.measured_s <= FLOOR_MARGIN * floor_s
            slow = (
                p.measured_s <= HOST_BOUND_FLOOR_MULTIPLE * dispatch_s
                and fraction < HOST_BOUND_REGIME_RATIO * statistics.median(series)
            )
            assert flag == (at_floor or slow), (table, p)


def test_rule_on_hand_made_points():
    """A series at 60-70 % of the roofline, one call at 1 % of it: host-bound only while cheap."""
    gpu = [Point("gemm", (1.0,), x, 0.6 * t, t) for x, t in ((1e3, 50e-6), (1e4, 400e-6), (1e5, 4e-3))]
    slow_cheap = Point("gemm", (1.0,), 1e2, 0.3e-6, 30e-6)  # 1 % of the roofline, 30 us
    slow_dear = Point("gemm", (1.0,), 1e2, 2e-6, 200e-6)  # 1 % of the roofline, but 200 us
    assert host_bound([*gpu, slow_cheap], 10e-6, 10e-6) == [False, False, False, True]
    assert host_bound([*gpu, slow_dear], 10e-6, 10e-6) == [False, False, False, False]
    assert host_bound([Point("gemm", (1.0,), 1.0, 1e-9, 11e-6)], 10e-6, 10e-6) == [True]  # at the floor


def test_host_bound_points_are_upper_bounds_of_the_fitted_device_time(micro):
    """Left out of the tables, kept as upper bounds: the device time the fitted tables give each of
    those shapes (roofline / interpolated fraction) is at most its measured eager time."""
    device = load_profile(str(DATASHEET_H200))
    cal = fit_calibration(micro, device, "test")
    points = measured_points(micro, device.peak_flops_per_s.fp16, device.hbm_bytes_per_s)
    assert (32.0, 2097152.0, pytest.approx(37.39e-6, rel=1e-3)) in [
        tuple(r) for r in cal.host_bound["attention_decode"]
    ]
    assert all(r[:2] != (32.0, 2097152.0) for r in cal.attention_decode)  # not used as GPU time
    checked = 0
    for table, rows in cal.host_bound.items():
        by_shape = {(*p.key, p.x): p for p in points[table]}
        for *shape, measured_s in rows:
            p = by_shape[tuple(shape)]
            roofline = (device.peak_flops_per_s.fp16, device.hbm_bytes_per_s, 2.0)
            assert table_time_s(getattr(cal, table), p, roofline) <= measured_s * (1 + 1e-9), (table, shape)
            checked += 1
    assert checked == sum(len(r) for r in cal.host_bound.values()) > 30


def test_scatter_add_rate_from_the_kernel_breakdown(micro):
    """index_add kernel time over the bytes it reads (tokens x top_k rows of hidden fp16), both cases."""
    s_per_byte, source = scatter_add_s_per_byte(micro)
    seed_bytes = 16 * (8 * 4096) * 2 * 512 * 2  # 16 layers, 32768 tokens, top-2, hidden 512, fp16
    mixtral_bytes = 1 * (8 * 2048) * 2 * 4096 * 2
    seed_s, mixtral_s = 0.004457051999999978, 0.0012019190000000016
    assert s_per_byte == pytest.approx((seed_s + mixtral_s) / (seed_bytes + mixtral_bytes))
    assert 1 / s_per_byte == pytest.approx(237.2e9, rel=1e-3)  # bytes read per second
    # about 12x the copy-speed estimate: (read + write) / 2 bytes at the measured copy rate, written
    # bytes half the read ones (two copies per token summed into one row)
    copy_s_per_byte = micro["copy"][0]["s"] / micro["copy"][0]["bytes"]
    assert s_per_byte / (copy_s_per_byte * 0.75) == pytest.approx(11.74, abs=0.01)
    assert "seed_moe_16L (16 calls, 4.46 ms)" in source and "mixtral_like_1L" in source
    assert fit_calibration(micro, load_profile(str(DATASHEET_H200)), "x").rate_sources["index_add"] == source


def test_a_direct_index_add_measurement_wins(micro):
    data = {**micro, "elementwise": [*micro["elementwise"], {"op": "index_add", "s": 1e-3, "bytes_in": 1e9}]}
    assert scatter_add_s_per_byte(data) == (1e-12, "elementwise index_add micro-benchmark")
    assert scatter_add_s_per_byte({"kernel_breakdown": []}) is None


def test_helper_kernel_times_per_call_from_the_kernel_breakdown(micro):
    """Latency-bound helper kernels: total time over total calls, over the cases that list them."""
    per_call_s, sources = helper_kernel_s(micro)
    assert per_call_s["memset"] == pytest.approx((0.00019556099999999652 + 2.803199999999697e-05) / (212 + 29))
    assert per_call_s["radix_sort_pass"] == pytest.approx((0.0007475829999999664 + 5.238500000000022e-05) / 136)
    assert per_call_s["reduce_all"] == pytest.approx(0.00013708799999999973 / 16)  # bincount's min, seed only
    assert per_call_s["memset"] * 1e6 == pytest.approx(0.928, abs=1e-3)
    assert "seed_moe_16L (128 calls" in sources["radix_sort_pass"]


def test_helper_rates_per_output_byte_from_the_kernel_breakdown(micro):
    """Bandwidth-bound helpers of the sorted MoE: time over bytes written (fp16); the broadcast multiply
    only from the GELU model (a SwiGLU model's silu * up runs through the same kernel)."""
    rates, sources = helper_rates_s_per_byte(micro)
    seed_copies = 16 * 8 * 4096 * 2 * 512 * 2  # 16 calls of [32768 x 2, 512] fp16
    mixtral_copies = 8 * 2048 * 2 * 4096 * 2
    assert rates["gather"] == pytest.approx(
        (0.0006557440000000019 + 0.00014371199999999953) / (seed_copies + mixtral_copies)
    )
    assert rates["cat"] == pytest.approx(
        (0.0006546549999999998 + 0.0001274880000000012) / (seed_copies + mixtral_copies)
    )
    assert rates["broadcast_mul"] == pytest.approx(0.0013885389999999834 / seed_copies)
    assert "mixtral" not in sources["broadcast_mul"]
    seed_rows, mixtral_rows = 16 * 8 * 4096 * 512 * 2, 8 * 2048 * 4096 * 2  # zeros_like(a): [tokens, hidden]
    assert rates["fill"] == pytest.approx((0.000175295999999993 + 4.051199999999881e-05) / (seed_rows + mixtral_rows))
    cal = fit_calibration(micro, load_profile(str(DATASHEET_H200)), "x")
    assert cal.helper_kernel_s == helper_kernel_s(micro)[0]
    assert all(cal.elementwise_s_per_byte[k] == v for k, v in rates.items())


def test_no_breakdown_no_helper_figures():
    assert helper_kernel_s({}) == ({}, {})
    assert helper_rates_s_per_byte({"kernel_breakdown": [{"case": "unknown", "top_kernels": []}]}) == ({}, {})
