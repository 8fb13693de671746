"""simulator.calibration.small_kernels: the model's device time of small GEMMs and decode attention calls
against a made-up raw_extra.json (hand-computed from the H200 tables), and the command's bad input."""

from __future__ import annotations

import json

import pytest

from simulator.calibration import small_kernels
from simulator.config.hardware import load_profile

H200 = load_profile("h200-sxm-141gb")


def test_a_small_gemm_takes_the_line_through_its_series_two_smallest_points():
    # K 512, N 1024: 31.21 us at 16,384 rows and 112.55 us at 65,536: 4.09 us + 1.655 ns per row
    assert small_kernels.gemm_device_s(H200, 32, 512, 1024) == pytest.approx(4.143e-6, abs=0.005e-6)


def test_a_small_decode_attention_call_adds_the_fixed_part():
    # head_dim 128, 32 x 8 heads x 1,024 tokens: 134.2 MB of K and V, below the first measured 536.9 MB;
    # the line through 126.08 us (536.9 MB) and 480.60 us (2,147.5 MB): 126.08 - 402.65 MB x 0.22012 us/MB
    assert small_kernels.decode_attention_device_s(H200, 32, 8, 1024, 128) == pytest.approx(37.45e-6, abs=0.02e-6)


def test_compare_lists_each_measured_kernel_with_its_error(tmp_path, capsys):
    gemm_s = small_kernels.gemm_device_s(H200, 32, 512, 1024)
    attn_s = small_kernels.decode_attention_device_s(H200, 32, 8, 1024, 128)
    extra = {
        "small_kernels": [
            {"kind": "gemm", "M": 32, "K": 512, "N": 1024, "s_graph_per_kernel": gemm_s / 1.25},
            {"kind": "decode_attention", "B": 32, "H": 8, "L": 1024, "D": 128, "s_graph_per_kernel": attn_s},
            {"kind": "decode_attention", "B": 32, "H": 8, "L": 16, "D": 128, "s_graph_per_kernel": None},
        ]
    }
    rows = small_kernels.compare(extra, H200)
    assert [r["kernel"] for r in rows] == ["gemm 32x512x1024", "decode attention B32 H8 L1024 D128"]
    assert rows[0]["error"] == pytest.approx(0.25, rel=1e-12) and rows[1]["error"] == pytest.approx(0.0, abs=1e-12)
    path = tmp_path / "raw_extra.json"
    path.write_text(json.dumps(extra))
    assert small_kernels.main([str(path)]) == 0
    assert "median |error| 25.0 %, max 25.0 % over 2 kernels" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, hardware, message",
    [
        ("{}", "h200-sxm-141gb", "has no small_kernels measurements"),
        ("not json", "h200-sxm-141gb", "small_kernels: "),
        ('{"small_kernels": []}', "a100-sxm-80gb", "has no calibration tables"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, hardware, message):
    path = tmp_path / "raw_extra.json"
    path.write_text(content)
    assert small_kernels.main([str(path), "--hardware", hardware]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
