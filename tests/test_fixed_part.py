"""hardware.gemm_fraction and attention_fixed_part_s: below a series' smallest measurement a GEMM or a
flash-attention kernel keeps a fixed part, its time following the line through the series' two smallest
measurements (hand-computed values)."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import costs
from simulator.config.hardware import (
    attention_fixed_part_s,
    gemm_fraction,
    gemm_roofline_s,
    load_profile,
    series_interpolate,
)

# A made-up device of 1e12 flop/s and 1e12 B/s, 2-byte elements; one series, K = N = 100: the roofline
# is 2e-8 s per row (compute-bound from 2 rows on).
ROOF = (1e12, 1e12, 2.0)
KEY = (100.0, 100.0)
# 1,000 rows at 0.5 of the roofline: 40 us; 4,000 rows at 0.8: 100 us. The line: 20 us + 20 ns per row.
SERIES = [(*KEY, 1000.0, 0.5), (*KEY, 4000.0, 0.8)]
H200 = load_profile("h200-sxm-141gb")
MICRO = json.loads((ROOT / "hardware_profiles" / "measurements" / "h200_micro.json").read_text())


def time_s(points: list[tuple], key: tuple, rows: float) -> float:
    return gemm_roofline_s(key, rows, *ROOF) / gemm_fraction(points, key, rows, *ROOF)


def test_the_roofline_of_a_table_gemm():
    assert gemm_roofline_s(KEY, 500.0, *ROOF) == pytest.approx(1e-5, rel=1e-12)  # 2 x 500 x 100 x 100 flops
    # 1 row: 2e4 flops = 20 ns, bytes (100 + 10,000 + 100) x 2 = 20.4 ns: memory-bound
    assert gemm_roofline_s(KEY, 1.0, *ROOF) == pytest.approx(2.04e-8, rel=1e-12)
    # a grouped key (E, K, N): E matrices, E times the work
    assert gemm_roofline_s((4.0, *KEY), 500.0, *ROOF) == pytest.approx(4e-5, rel=1e-12)


def test_below_the_first_point_time_follows_the_line_through_the_two_smallest():
    assert time_s(SERIES, KEY, 500.0) == pytest.approx(30e-6, rel=1e-12)  # 20 us + 500 x 20 ns
    assert gemm_fraction(SERIES, KEY, 500.0, *ROOF) == pytest.approx(1 / 3, rel=1e-12)  # 10 us of 30
    assert time_s(SERIES, KEY, 1.0) == pytest.approx(20.02e-6, rel=1e-12)  # the fixed part, and one row
    # a constant fraction (series_interpolate) would give 10 us / 0.5 = 20 us at 500 rows
    assert series_interpolate(SERIES, KEY, 500.0) == 0.5


def test_at_and_above_the_first_point_the_table_is_unchanged():
    for rows in (1000.0, 2000.0, 4000.0, 1e6):
        assert gemm_fraction(SERIES, KEY, rows, *ROOF) == series_interpolate(SERIES, KEY, rows)


def test_never_faster_than_the_first_points_fraction():
    # 40 us at 1,000 rows, 160 us at 2,000: the line crosses zero at 667 rows (a negative fixed part)
    falling = [(*KEY, 1000.0, 0.5), (*KEY, 2000.0, 0.25)]
    assert gemm_fraction(falling, KEY, 900.0, *ROOF) == 0.5  # the line gives 28 us < 18 / 0.5 us
    assert gemm_fraction(falling, KEY, 500.0, *ROOF) == 0.5  # the line is below zero


@pytest.mark.parametrize(
    "points",
    [
        [(*KEY, 1000.0, 0.5)],  # one point: no line
        [(*KEY, 1000.0, 0.5), (*KEY, 2000.0, 1.0)],  # 40 us at both: the time does not grow
    ],
)
def test_a_series_without_a_line_keeps_its_fraction(points):
    assert gemm_fraction(points, KEY, 10.0, *ROOF) == 0.5


def test_across_series_the_fractions_blend_as_series_interpolate_does():
    other = [(400.0, 400.0, 10.0, 0.9)]  # a series measured down to 10 rows: its fraction at 500 is 0.9
    # key (200, 200): log distances ln 2 to both, equal weights: the mean of 1/3 and 0.9
    assert gemm_fraction(SERIES + other, (200.0, 200.0), 500.0, *ROOF) == pytest.approx((1 / 3 + 0.9) / 2, rel=1e-12)


def test_the_h200_expert_gemm_of_the_seed_prefill():
    """K 512, N 1024 at 4,096 rows (the seed prefill's per-expert fc1): the micro-benchmark measured
    31.21 us at 16,384 rows and 112.55 us at 65,536 (GPU-bound; 4,096 rows is host-bound): 4.09 us +
    1.655 ns per row gives 10.87 us; the seed's kernel breakdown lists its expert GEMMs at 10.9 us a call."""
    measured = {g["M"]: g["s"] for g in MICRO["gemm"] if (g["K"], g["N"]) == (512, 1024)}
    t0, t1 = measured[16384], measured[65536]
    expected_s = t0 - (16384 - 4096) * (t1 - t0) / (65536 - 16384)
    assert expected_s == pytest.approx(10.87e-6, abs=0.01e-6)
    frac = H200.gemm_table_fraction(1, 4096, 512, 1024)
    got_s, bound = costs.calibrated_grouped_gemm_s(
        1, 4096, 512, 1024, 2.0, H200.peak_for("fp16"), H200.hbm_bytes_per_s, frac
    )
    assert got_s == pytest.approx(expected_s, rel=1e-9)
    assert bound == "compute"


def test_a_host_bound_call_below_the_line_caps_it():
    """The 16 x [128, 512] @ [512, 1024] batched GEMM took 12.35 us eagerly (host-bound: an upper bound
    on its device time); the line through 1,024 and 8,192 rows would give 13.3 us there, so the fit
    puts the call in the table at its measured time, and the line below it starts there."""
    measured = {b["C"]: b["s"] for b in MICRO["bmm"] if (b["E"], b["K"], b["N"]) == (16, 512, 1024)}
    frac = H200.gemm_table_fraction(16, 128, 512, 1024)
    got_s, _ = costs.calibrated_grouped_gemm_s(
        16, 128, 512, 1024, 2.0, H200.peak_for("fp16"), H200.hbm_bytes_per_s, frac
    )
    assert got_s == pytest.approx(measured[128], rel=1e-9)
    assert (16.0, 512.0, 1024.0, 128.0) in [tuple(row[:4]) for row in H200.calibration.host_bound["grouped_gemm"]]


FIRST_ROWS = {}  # per series of the H200 tables, its smallest row count
for _row in H200.calibration.gemm + H200.calibration.grouped_gemm:
    _key = tuple(_row[:-2])
    FIRST_ROWS[_key] = min(FIRST_ROWS.get(_key, _row[-2]), _row[-2])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(FIRST_ROWS)), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_h200_table_time_never_falls_as_rows_grow_below_the_first_point(key, a, b):
    """Every series of the H200 tables, from 1 row up to its first point: more rows never take less
    time (the line has a positive slope, and the constant fraction it is held above grows too)."""
    e, k, n = key if len(key) == 3 else (1.0, *key)
    lo, hi = sorted((1.0 + a * (FIRST_ROWS[key] - 1.0), 1.0 + b * (FIRST_ROWS[key] - 1.0)))

    def t(m: float) -> float:
        frac = H200.gemm_table_fraction(e, m, k, n)
        return costs.calibrated_grouped_gemm_s(e, m, k, n, 2.0, H200.peak_for("fp16"), H200.hbm_bytes_per_s, frac)[0]

    assert t(hi) >= t(lo) * (1 - 1e-12)


# ---------------------------------------------------------------------------------------------
# attention_fixed_part_s: the same rule on the flash-attention tables, as seconds added to the
# constant-fraction time (an attention node's time is priced per byte or FLOP of its own)

# decode, head_dim 128, HBM 1e12 B/s: 1000 B at 0.5 -> 2 ns, 4000 B at 0.8 -> 5 ns: the line 1 ns + 1 ps / B
ATTN = [(128.0, 1000.0, 0.5), (128.0, 4000.0, 0.8)]


def test_attention_fixed_part_is_the_line_above_the_constant_fraction():
    # x = 500 B: the line gives 1.5 ns, the constant fraction 500 / 1e12 / 0.5 = 1 ns: 0.5 ns more
    assert attention_fixed_part_s(ATTN, (128.0,), 500.0, True, 1e15, 1e12) == pytest.approx(0.5e-9, rel=1e-12)
    assert attention_fixed_part_s(ATTN, (128.0,), 0.0, True, 1e15, 1e12) == pytest.approx(1e-9, rel=1e-12)
    for x in (1000.0, 2000.0, 1e6):  # at and above the first point: nothing
        assert attention_fixed_part_s(ATTN, (128.0,), x, True, 1e15, 1e12) == 0.0
    # prefill: a size unit is 2 d FLOPs: 1000 units = 256,000 FLOPs = 0.256 ns at 1e15 / 0.5 -> 0.512 ns;
    # 4000 at 0.8 -> 1.28 ns; the line's value at 0: 0.512 - 1000 x 0.768 / 3000 = 0.256 ns
    got = attention_fixed_part_s(ATTN, (128.0,), 500.0, False, 1e15, 1e12)
    assert got == pytest.approx(0.256e-9 * 0.5, rel=1e-12)


def test_attention_fixed_part_h200_decode_one_kv_head():
    """head_dim 128: 126.1 us for 537 MB of K and V, 480.6 us for 2.15 GB: the line's value at 0 is
    7.91 us, so 16.8 MB (32 sequences of 1,024 tokens, one fp16 KV head) take 11.6 us in all."""
    rows = {(r[0], r[1]): r[2] for r in H200.calibration.attention_decode}
    hbm, peak = H200.hbm_bytes_per_s, H200.peak_for("fp16")
    x0, x1 = 536870912.0, 2147483648.0
    t0, t1 = x0 / (hbm * rows[(128.0, x0)]), x1 / (hbm * rows[(128.0, x1)])
    size = 32 * 1024 * 128 * 2 * 2.0
    line_s = t0 + (size - x0) * (t1 - t0) / (x1 - x0)
    assert line_s == pytest.approx(11.6e-6, abs=0.05e-6)
    table = H200.calibration.attention_decode
    constant_s = size / (hbm * series_interpolate(table, (128.0,), size))
    assert constant_s + attention_fixed_part_s(table, (128.0,), size, True, peak, hbm) == pytest.approx(
        line_s, rel=1e-12
    )


def test_a_gemm_whose_fixed_part_is_most_of_its_time_is_launch_bound():
    """K 512, N 1024 on the H200: 32 rows take the line's 4.14 us, of which the constant fraction would
    give 0.34 us: bound "launch"; at 4,096 rows (10.87 us, 7.8 at the constant fraction) it stays
    compute-bound."""
    from simulator.op_time import calibrated_node_s

    def node(rows: int) -> dict:
        return {"op": "expert_fc1", "dtype": "fp16", "gemm": (rows, 512, 1024), "launches": 1}

    t32, bound32 = calibrated_node_s(node(32), H200, H200.calibration, eager=False, gated=False)
    assert bound32 == "launch" and t32 == pytest.approx(4.14e-6, abs=0.01e-6)
    t4096, bound4096 = calibrated_node_s(node(4096), H200, H200.calibration, eager=False, gated=False)
    assert bound4096 == "compute" and t4096 == pytest.approx(10.87e-6, abs=0.01e-6)


def test_a_decode_attention_kernel_at_a_tiny_kv_cache_is_launch_bound_and_its_context_node_is_not():
    """32 sequences x 8 heads x 16 cached tokens, head_dim 128: 2.1 MB of K and V. The scores node (which
    launches the kernel) takes its bytes at the first point's fraction plus 7.88 us of fixed part; the
    context node (launches 0) only its bytes."""
    from simulator.op_time import calibrated_node_s

    kv_bytes = 2.0 * 32 * 8 * 16 * 128 * 2
    frac = series_interpolate(H200.calibration.attention_decode, (128.0,), kv_bytes)
    fixed_s = attention_fixed_part_s(
        H200.calibration.attention_decode, (128.0,), kv_bytes, True, H200.peak_for("fp16"), H200.hbm_bytes_per_s
    )
    assert fixed_s == pytest.approx(7.906e-6 * (1 - kv_bytes / 536870912.0), rel=1e-3)

    def node(op: str, launches: int) -> dict:
        return {
            "op": op,
            "dtype": "fp16",
            "fused": "flash_attention",
            "head_dim": 128,
            "q_len": 1,
            "batch_heads": 32 * 8,
            "kv_len": 16,
            "kv_bytes_total": kv_bytes,
            "flops": 0.0,
            "bytes_read": kv_bytes / 2,
            "bytes_written": 0.0,
            "launches": launches,
        }

    scores_s, scores_bound = calibrated_node_s(node("attn_scores", 1), H200, H200.calibration, False, False)
    context_s, context_bound = calibrated_node_s(node("attn_context", 0), H200, H200.calibration, False, False)
    stream_s = kv_bytes / 2 / (H200.hbm_bytes_per_s * frac)
    assert scores_s == pytest.approx(stream_s + fixed_s, rel=1e-12) and scores_bound == "launch"
    assert context_s == pytest.approx(stream_s, rel=1e-12) and context_bound == "memory"
