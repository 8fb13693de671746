"""What-if knobs: their spaces, variants and names."""

from __future__ import annotations

import pytest

from simulator.config import ScenarioError, resolve_hardware
from simulator.whatif.knobs import KNOBS, MAX_SCALE, SCALE_STEP, gpu_count_layouts, parse_knobs
from tests.conftest import TINY_MOE, make_scenario


@pytest.fixture
def tiny():
    return make_scenario(TINY_MOE)


def test_default_knobs_leave_out_top_k_and_an_unknown_knob_lists_the_valid_ones():
    assert "top_k" not in parse_knobs(None) and "batch_size" in parse_knobs(None)
    assert parse_knobs(["top_k,batch_size", "layout"]) == ["batch_size", "layout", "top_k"]
    with pytest.raises(ScenarioError, match=r"--knobs bogus: unknown knob; valid: batch_size, input_len"):
        parse_knobs(["bogus"])


def test_scale_grid_is_powers_of_1_01_up_to_100(tiny):
    space = KNOBS["hbm_bandwidth"].space(tiny)
    assert space.values[0] == 1.0 and space.values[1] == SCALE_STEP
    assert space.values[-2] < MAX_SCALE <= space.values[-1] < MAX_SCALE * SCALE_STEP


def test_hardware_figures_scale_one_at_a_time(tiny):
    base = resolve_hardware(tiny)
    (hbm,) = KNOBS["hbm_bandwidth"].variants(tiny, 2.0)
    (flops,) = KNOBS["peak_flops"].variants(tiny, 3.0)
    (links,) = KNOBS["link_bandwidth"].variants(tiny, 4.0)
    h, f, li = resolve_hardware(hbm), resolve_hardware(flops), resolve_hardware(links)
    assert h.hbm_bytes_per_s == 2 * base.hbm_bytes_per_s and h.peak_flops_per_s == base.peak_flops_per_s
    assert f.peak_flops_per_s.fp16 == 3 * base.peak_flops_per_s.fp16 and f.hbm_bytes_per_s == base.hbm_bytes_per_s
    assert f.vector_flops_per_s == 3 * base.vector_flops_per_s
    assert li.intra_node.bytes_per_s == 4 * base.intra_node.bytes_per_s
    assert li.inter_node.bytes_per_s == 4 * base.inter_node.bytes_per_s
    assert li.intra_node.latency_s == base.intra_node.latency_s


def test_batch_range_stops_where_the_kv_cache_no_longer_fits(tiny):
    small = make_scenario(TINY_MOE, hardware={"profile": "h100-sxm-80gb", "memory_bytes": 1.0e9 + 2e6})
    space = KNOBS["batch_size"].space(small)
    top = space.values[-1]
    (fits,) = KNOBS["batch_size"].variants(small, top)
    (over,) = KNOBS["batch_size"].variants(small, top + 1)
    from simulator.sweep import screen_memory

    assert screen_memory(fits, 1.0e9 + 2e6) is None and screen_memory(over, 1.0e9 + 2e6) is not None
    assert "fit" in space.range_text


def test_gpu_counts_are_powers_of_two_filling_nodes_and_each_takes_compare_layouts(tiny):
    space = KNOBS["num_gpus"].space(tiny)
    assert space.values[0] == 1 and all(n <= 4 or n % 4 == 0 for n in space.values)
    layouts = gpu_count_layouts(tiny, 8)
    assert layouts and all(layout.num_gpus == 8 and layout.etp == 1 for layout in layouts)
    assert all(v.num_gpus == 8 for v in KNOBS["num_gpus"].variants(tiny, 8))


def test_precision_and_top_k_variants(tiny):
    (fp8,) = KNOBS["kv_cache_dtype"].variants(tiny, "fp8")
    assert fp8.model.kv_bytes_per_element == 1.0 and fp8.model.weight_bytes_per_element == 2.0
    assert KNOBS["top_k"].space(tiny).values == range(1, 5)
    dense = make_scenario(
        TINY_MOE, model={"num_experts": 0, "ffn_size": 128, "expert_ffn_size": None, "top_k": 1}, parallel={"ep": 1}
    )
    with pytest.raises(ScenarioError, match="--knobs top_k: the model has no experts"):
        KNOBS["top_k"].space(dense)
