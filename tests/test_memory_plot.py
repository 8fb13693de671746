"""Memory over time: the curves end where the memory model says, and the figure is drawn."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import TINY_MOE, make_scenario
from PIL import Image

from simulator.pipeline import run_scenario
from simulator.report.memory_plot import _binned_max, memory_curves, memory_png
from simulator.report.slices import slices_of_run
from simulator.report.summary import summary_dict


def test_binned_max_takes_the_highest_level_inside_each_bin():
    # level: 0, 2 on [1, 3), 5 on [1.5, 1.6) (2 + 3), 0 after 3
    times = np.array([1.0, 1.5, 1.6, 3.0])
    deltas = np.array([2.0, 3.0, -3.0, -2.0])
    np.testing.assert_allclose(_binned_max(times, deltas, np.array([0.0, 1.0, 2.0, 3.0, 4.0])), [0, 5, 2, 0])


@pytest.fixture(scope="module")
def tiny_run():
    return run_scenario(make_scenario(TINY_MOE, parallel={"microbatches": 2}))


def test_kv_cache_ends_at_the_memory_model_and_never_shrinks(tiny_run):
    summary = summary_dict(tiny_run)
    slices = slices_of_run(tiny_run)
    edges = np.linspace(0.0, float(tiny_run.sim.ops["end_s"].max()), 101)
    for m in summary["memory"]:
        curves = memory_curves(tiny_run.sim.ops, slices, m["gpu"], edges)
        assert curves["kv"][-1] == pytest.approx(m["kv_cache_bytes"])
        assert np.all(np.diff(curves["kv"]) >= 0)
        assert 0 < curves["activations"].max() <= 2 * m["activation_bytes"]


def test_memory_png_is_a_picture(tiny_run):
    png = memory_png(tiny_run.sim.ops, slices_of_run(tiny_run), summary_dict(tiny_run))
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width > 800 and image.height > 500
    rgb = np.asarray(image).astype(np.uint32)
    assert len(np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])) > 20
