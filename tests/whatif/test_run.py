"""What-if on simulated runs of a small MoE: thresholds set from a simulated figure are found exactly."""

from __future__ import annotations

import pytest

from simulator.config import ScenarioError
from simulator.sweep import simulate_layout
from simulator.whatif import run_whatif
from simulator.whatif.knobs import KNOBS, SCALE_STEP
from tests.conftest import TINY_MOE, make_scenario

WORKLOAD = {"batch_size": 64, "input_len_tokens": 2048, "output_len_tokens": 16}


def _figure(scenario, knob, value, what):
    (variant,) = KNOBS[knob].variants(scenario, value)
    return getattr(simulate_layout(0, False, variant, 8), what)


def test_hbm_scale_lands_on_the_power_of_1_01_whose_tpot_is_the_target():
    base = make_scenario(TINY_MOE, workload=WORKLOAD)
    limit = _figure(base, "hbm_bandwidth", SCALE_STEP**40, "tpot_s")  # decode reads HBM: TPOT falls with it
    s = make_scenario(TINY_MOE, workload=WORKLOAD, targets={"tpot_s": {"max": limit}})
    answer, flops = run_whatif(s, ["hbm_bandwidth", "peak_flops"], target="tpot_s").answers
    assert answer.status == "found" and answer.method == "bisection"
    assert answer.best.value == SCALE_STEP**40 and answer.below.value == SCALE_STEP**39
    assert answer.best.figure == limit and answer.below.figure > limit  # the value meets, one step less does not
    assert "TPOT is bound by" in answer.bound
    # decode is memory-bound: no FLOP/s reaches the target, and the reason names the bandwidth that would
    assert flops.status == "none"
    assert f"HBM bandwidth would have to be {SCALE_STEP**40:.3g} times higher" in flops.reason


def test_input_length_lands_on_the_longest_prompt_whose_ttft_is_the_target():
    base = make_scenario(TINY_MOE, workload=WORKLOAD)
    limit = _figure(base, "input_len", 1000, "ttft_max_s")
    s = make_scenario(TINY_MOE, workload=WORKLOAD, targets={"ttft_s": {"max": limit}})
    (answer,) = run_whatif(s, ["input_len"], target="ttft_s").answers
    assert answer.status == "found" and answer.best.value == 1000 and answer.below.value == 1001
    assert _figure(s, "input_len", 1001, "ttft_max_s") > limit


def test_a_knob_that_cannot_move_the_target_says_so():
    s = make_scenario(TINY_MOE, workload=WORKLOAD, targets={"ttft_s": {"max": 1e-7}})
    w = run_whatif(s, ["output_len", "peak_flops"], target="ttft_s")
    by_knob = {a.knob: a for a in w.answers}
    # the scenario itself (each knob's current value) is simulated once. Asked: itself, output_len's current
    # value, both ends and a midpoint (4), peak_flops' x1 (also its first end), midpoint and x100 (3)
    assert (w.simulated, w.requested) == (1 + 3 + 2, 1 + 4 + 3)
    assert by_knob["output_len"].status == "none" and "neither end meets" in by_knob["output_len"].reason
    flops = by_knob["peak_flops"]
    assert flops.status == "none" and flops.best.value == pytest.approx(100, rel=0.01)
    assert flops.reason.startswith("no amount of peak FLOP/s up to x100 reaches the TTFT target")
    assert "TTFT" in flops.bound  # what still bounds it at x100


def test_bad_targets_are_one_line_errors():
    s = make_scenario(TINY_MOE, workload=WORKLOAD)
    with pytest.raises(ScenarioError, match=r"--target ttft_s: already met, ttft_s .* nothing to search for"):
        run_whatif(s, ["batch_size"], target="ttft_s")
    with pytest.raises(ScenarioError, match=r"--target tpot_s: unknown target; the scenario's targets are ttft_s"):
        run_whatif(s, ["batch_size"], target="tpot_s")
    met = make_scenario(TINY_MOE, workload=WORKLOAD, targets={"ttft_s": {"max": 10.0}})
    met = met.model_copy(update={"targets": {"ttft_s": met.targets["ttft_s"]}})
    with pytest.raises(ScenarioError, match="every target is already met"):
        run_whatif(met, ["batch_size"])
