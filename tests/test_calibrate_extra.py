"""`moesim calibrate --extra raw_extra.json`: what benchmarks/gpu_calibration.sh measures beyond the
micro-benchmarks, read into a profile (helper-op dispatch, small kernels' device time, one graph launch,
the scatter-add in a graph), checked by hand on a made-up file."""

from __future__ import annotations

import argparse
import json
import os

import pytest
from conftest import ROOT
from rich.console import Console

from simulator.commands.calibrate import add_arguments, command, read_extra
from simulator.config import ScenarioError
from simulator.config.hardware import load_profile
from simulator.graph.dag import ROUTING
from simulator.op_time import host_dispatch_s

EXTRA = {
    "graph_kernels": [
        {"op": "add_1elem", "s_eager": 9e-6, "s_graph_per_kernel": 1.5e-6, "graph_copies": 100},
        {"op": "copy_64x512", "s_eager": 9.5e-6, "s_graph_per_kernel": 2.0e-6, "graph_copies": 100},
        {"op": "cumsum_128x16_int32", "s_eager": 14e-6, "s_graph_per_kernel": 3.0e-6, "graph_copies": 100},
        {"op": "gather_rows_128x512", "s_eager": 12e-6, "s_graph_per_kernel": 2.5e-6, "graph_copies": 100},
        {"op": "where_128", "s_eager": 11e-6, "s_graph_per_kernel": 2.2e-6, "graph_copies": 100},
    ],
    "graph_launch": {"s_replay_1_kernel_synced": 20e-6, "s_sync_only": 5e-6},
    "scatter_add": [{"s_per_byte": 1e-12}, {"s_per_byte": 3e-12}, {"s_per_byte": 2e-12}],
    "host_costs": {"readback_s": {"max_item": 3e-5}},  # not read by the fit
}


def _calibrate(tmp_path, extra: dict | None):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "h200-extra.yaml"
    argv = [
        "--from-json",
        "hardware_profiles/measurements/h200_micro.json",
        "--base",
        "hardware_profiles/datasheet/h200-sxm-141gb.yaml",
        "--out",
        str(out),
    ]
    if extra is not None:
        path = tmp_path / "raw_extra.json"
        path.write_text(json.dumps(extra))
        argv += ["--extra", str(path)]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        command(parser.parse_args(argv), Console(file=open(os.devnull, "w")))
    finally:
        os.chdir(cwd)
    return load_profile(str(out))


def test_the_extra_measurements_become_the_profiles_figures(tmp_path):
    hw = _calibrate(tmp_path, EXTRA)
    cal = hw.calibration
    # helper rows (all but add_ and copy_): median of 14, 12, 11 us
    assert cal.eager_floor_s["helper"] == pytest.approx(12e-6)
    # device time per small kernel in a graph: median of 1.5, 2.0, 3.0, 2.5, 2.2 us
    assert hw.kernel_overhead_s == pytest.approx(2.2e-6)
    # one graph launch: 20 - 5 - 2.2 us
    assert hw.graph_launch_s == pytest.approx(12.8e-6)
    assert cal.elementwise_s_per_byte["index_add"] == pytest.approx(2e-12)  # median of the three sizes
    assert "CUDA graph" in cal.rate_sources["index_add"]
    assert hw.figure_sources["kernel_overhead_s"].kind == "measured"
    assert "raw_extra.json" in hw.figure_sources["graph_launch_s"].source
    # a routing helper node of 14 kernels is issued at the helper dispatch, a point-wise node at the add's
    helper = {"kind": ROUTING, "op": "moe_dispatch_index", "launches": 14}
    assert host_dispatch_s(helper, hw) == pytest.approx(14 * 12e-6)
    pointwise = {"kind": "compute", "op": "residual_add", "launches": 1}
    assert host_dispatch_s(pointwise, hw) == pytest.approx(cal.eager_floor_s["elementwise"])


def test_without_the_extra_file_the_assumed_figures_stay(tmp_path):
    hw = _calibrate(tmp_path, None)
    base = load_profile(str(ROOT / "hardware_profiles/datasheet/h200-sxm-141gb.yaml"))
    assert "helper" not in hw.calibration.eager_floor_s
    assert hw.kernel_overhead_s == base.kernel_overhead_s
    assert hw.graph_launch_s == base.graph_launch_s


@pytest.mark.parametrize(
    "content, message",
    [
        ("{oops", r"not JSON$"),
        ("[1, 2]", r"expected the JSON object benchmarks/gpu_calibration.sh writes$"),
        ('{"graph_kernels": [{"op": "x"}]}', r"graph_kernels: expected a list of rows with op, s_eager"),
        (
            '{"graph_launch": {"s_sync_only": 1e-6}}',
            r"graph_launch: expected \{s_replay_1_kernel_synced, s_sync_only\}",
        ),
    ],
)
def test_a_bad_extra_file_is_one_line_naming_the_option(tmp_path, content, message):
    path = tmp_path / "raw_extra.json"
    path.write_text(content)
    with pytest.raises(ScenarioError, match=r"^--extra .*raw_extra.json: " + message):
        read_extra(path)
    with pytest.raises(ScenarioError, match=r"^--extra .*missing.json: no such file$"):
        read_extra(tmp_path / "missing.json")
