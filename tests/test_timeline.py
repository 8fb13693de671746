"""Timeline: GPU selection, exact pixel coverage, the slices it draws from, and a real PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import TINY_MOE, make_scenario
from PIL import Image

from simulator.critical_path import analyse
from simulator.graph import NodeKind
from simulator.pipeline import run_scenario
from simulator.report.slices import load_slices, save_slices, slices_of_run
from simulator.report.summary import summary_dict
from simulator.report.timeline import CATEGORY_COLOURS, coverage, select_gpus, timeline_png


def test_small_runs_show_every_gpu():
    assert select_gpus({"num_gpus": 4, "tp": 2, "pp": 2, "dp": 1}) == ([0, 1, 2, 3], "")


def test_large_runs_show_one_replica_then_one_rank_per_stage():
    gpus, note = select_gpus({"num_gpus": 64, "tp": 2, "pp": 4, "dp": 8})
    assert gpus == [0, 1, 16, 17, 32, 33, 48, 49] and "dp replica 0 of 8" in note
    gpus, note = select_gpus({"num_gpus": 64, "tp": 8, "pp": 8, "dp": 1})
    assert gpus == [0, 8, 16, 24, 32, 40, 48, 56] and "tp rank 0" in note
    gpus, _ = select_gpus({"num_gpus": 64, "tp": 4, "pp": 16, "dp": 1})
    assert len(gpus) == 8 and gpus[0] == 0 and gpus[-1] == 60


def test_coverage_is_the_busy_fraction_of_each_pixel():
    x0 = np.array([0.5, 3.0, 1.0])
    x1 = np.array([2.25, 3.5, 1.1])
    cov = coverage(x0, x1, np.array([0, 0, 1]), 2, 4)
    np.testing.assert_allclose(cov[0], [0.5, 1.0, 0.25, 0.5])
    np.testing.assert_allclose(cov[1], [0.0, 0.1, 0.0, 0.0], atol=1e-12)


def test_coverage_clips_bars_outside_the_window():
    cov = coverage(np.array([-3.0, 3.5]), np.array([0.5, 9.0]), np.array([0, 0]), 1, 4)
    np.testing.assert_allclose(cov[0], [0.5, 0.0, 0.0, 0.5])


@pytest.fixture(scope="module")
def tiny_run():
    return run_scenario(make_scenario(TINY_MOE, parallel={"microbatches": 2}))


def test_slices_are_the_resources_each_node_held(tiny_run):
    s = slices_of_run(tiny_run)
    ops = tiny_run.sim.ops
    n = tiny_run.scenario.num_gpus
    for row in range(len(ops)):
        kind, gpu = ops["kind"].iat[row], ops["gpu"].iat[row]
        held = sorted(s.resource[s.row == row].tolist())
        if kind == NodeKind.MARKER:
            assert held == []
        elif kind == NodeKind.COMM:
            assert sorted(r % n for r in held if r // n == 1) == sorted(gpu)  # every member's comm stream
        else:
            assert held == [gpu]  # its compute stream


def test_slices_round_trip_through_npz(tiny_run, tmp_path):
    s = slices_of_run(tiny_run)
    save_slices(s, tmp_path / "slices.npz")
    back = load_slices(tmp_path / "slices.npz")
    assert back.num_gpus == s.num_gpus
    for name in ("row", "resource", "act_bytes", "residual_bytes"):
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name))


def test_timeline_png_is_drawn_with_the_category_colours(tiny_run):
    _, paths = analyse(tiny_run.graph, tiny_run.sim.ops, tiny_run.scenario.num_gpus)
    png = timeline_png(tiny_run.sim.ops, slices_of_run(tiny_run), summary_dict(tiny_run), paths["total"].rows)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width >= 1500 and image.height >= 800
    rgb = np.asarray(image).astype(np.uint32)
    present = set(np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]).tolist())
    for category in ("attention", "experts", "tp_comm"):
        assert int(CATEGORY_COLOURS[category][1:], 16) in present, category
