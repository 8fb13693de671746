"""The what-if search on figures given by a formula (no simulation): thresholds computed by hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simulator.sweep import LayoutResult, TargetVerdict
from simulator.whatif.evaluate import Evaluator, drive
from simulator.whatif.knobs import SCALE_STEP, Knob, Space
from simulator.whatif.search import Goal, Point, is_monotone, search_discrete, search_ordered
from tests.conftest import TINY_MOE, make_scenario


class FormulaEvaluator(Evaluator):
    """Gives each variant the figure `formula(batch_size)` for `metric` (its verdict against `goal`)."""

    def __init__(self, goal: Goal, formula, memory=lambda v: 1.0):
        super().__init__()
        self.goal, self.formula, self.memory, self.calls = goal, formula, memory, []

    def evaluate(self, scenarios):
        out = []
        for s in scenarios:
            value = self.value_of(s)
            self.calls.append(value)
            figure = self.formula(value)
            met = figure >= self.goal.limit if self.goal.bound == "min" else figure <= self.goal.limit
            verdict = TargetVerdict(self.goal.metric, self.goal.bound, self.goal.limit, figure, met)
            out.append(
                LayoutResult(
                    0,
                    s.parallel,
                    False,
                    "ok",
                    memory_bytes_per_gpu=self.memory(value),
                    capacity_bytes=2.0,
                    targets=(verdict,),
                )
            )
        return out

    @staticmethod
    def value_of(s):
        return s.workload.batch_size


def _variants(s, value):
    return [s.model_copy(update={"workload": s.workload.model_copy(update={"batch_size": value})})]


def _scaled_variants(s, factor):  # the factor carried in the batch field, in millionths
    return _variants(s, round(factor * 1e6))


KNOB = Knob("fake", "a fake knob", lambda s: None, _variants, str)
SCALE_KNOB = Knob("fake_scale", "a fake scale", lambda s: None, _scaled_variants, lambda v: f"x{v:.4g}")


def _run(knob, space, goal, formula, discrete=False, memory=lambda v: 1.0):
    s = make_scenario(TINY_MOE)
    evaluator = FormulaEvaluator(goal, formula, memory)
    make = search_discrete if discrete else search_ordered
    answer = drive({"k": make(knob, s, goal, space)}, evaluator)["k"]
    return answer, evaluator


def test_bisection_lands_on_the_hand_computed_threshold():
    # ttft = 1000 / v must be <= 3: v >= 333.3.., so 334 meets (2.994) and 333 does not (3.003)
    goal = Goal("ttft_s", "max", 3.0, 1000.0)
    answer, evaluator = _run(KNOB, Space(range(1, 1001), 1, True, "1..1000", "exact"), goal, lambda v: 1000.0 / v)
    assert answer.status == "found" and answer.method == "bisection" and answer.monotone
    assert answer.best.value == 334 and answer.below.value == 333
    assert answer.best.met and not answer.below.met
    assert len(set(evaluator.calls)) <= 4 + math.ceil(math.log2(1000))  # ends, midpoint, current, then halving


def test_scale_factor_bisection_lands_on_the_first_power_of_1_01_that_meets():
    # throughput 10 * f must reach 25: f >= 2.5; ln 2.5 / ln 1.01 = 92.09, so 1.01^93 meets and 1.01^92 does not
    values = [SCALE_STEP**k for k in range(464)]
    goal = Goal("output_tokens_per_ms_per_gpu", "min", 25.0, 10.0)
    answer, _ = _run(SCALE_KNOB, Space(values, 1.0, True, "x1..x100", "1 %"), goal, lambda v: 10.0 * v / 1e6)
    assert answer.status == "found"
    assert answer.best.value == SCALE_STEP**93 and answer.below.value == SCALE_STEP**92
    assert answer.best.value / answer.below.value == pytest.approx(1.01)


def test_an_unreachable_target_is_reported_with_the_best_value():
    # 5 - 4 / v never reaches 6: monotone, neither end meets, so no value in the range does
    goal = Goal("output_tokens_per_ms_per_gpu", "min", 6.0, 1.0)
    answer, evaluator = _run(KNOB, Space(range(1, 1001), 1, True, "1..1000", "exact"), goal, lambda v: 5 - 4 / v)
    assert answer.status == "none" and answer.monotone
    assert answer.best.value == 1000
    assert "neither end meets" in answer.reason
    assert len(set(evaluator.calls)) == 3  # current = first end, midpoint, last end: nothing more


def test_a_threshold_past_the_memory_limit_is_no_answer_and_says_why():
    # v / 100 reaches 5 at v = 500, but only v <= 300 fits (memory v / 150 against 2)
    goal = Goal("output_tokens_per_ms_per_gpu", "min", 5.0, 0.01)
    answer, _ = _run(
        KNOB, Space(range(1, 1001), 1, True, "1..1000", "exact"), goal, lambda v: v / 100, memory=lambda v: v / 150
    )
    assert answer.status == "none" and answer.best.value == 500 and answer.below.value == 499
    assert "meets the target from 500 on, but there a GPU would need 3.333e-09 GB of its 2e-09 GB" in answer.reason


def test_a_non_monotone_knob_is_enumerated_not_bisected():
    # -(v - 500)^2 >= -10000 holds for 400 <= v <= 600; from v = 1 the nearest value that meets is 400
    goal = Goal("output_tokens_per_ms_per_gpu", "min", -10000.0, -249001.0)
    answer, evaluator = _run(
        KNOB, Space(range(1, 1001), 1, True, "1..1000", "exact"), goal, lambda v: -((v - 500.0) ** 2)
    )
    assert answer.status == "found" and answer.monotone is False
    assert answer.method.startswith("enumeration")
    assert answer.best.value == 400 and answer.below.value == 399
    assert len(set(evaluator.calls)) > 20  # the coarse grid was simulated


def test_bisection_that_meets_a_broken_order_falls_back_to_enumeration():
    # monotone at the ends and the midpoint, but with a dip that the halving runs into
    def formula(v):
        return -1.0 if 100 <= v < 200 else float(v)

    goal = Goal("output_tokens_per_ms_per_gpu", "min", 250.0, 1.0)
    answer, _ = _run(KNOB, Space(range(1, 1001), 1, True, "1..1000", "exact"), goal, formula)
    assert answer.status == "found" and answer.best.value == 250 and answer.below.value == 249


def test_a_discrete_knob_takes_the_best_option_that_meets():
    goal = Goal("output_tokens_per_ms_per_gpu", "min", 5.0, 1.0)
    answer, _ = _run(KNOB, Space([1, 2, 8, 6], 1, False, "4", "every one"), goal, lambda v: float(v), discrete=True)
    assert answer.status == "found" and answer.best.value == 8 and answer.extra["meeting"] == 2
    none, _ = _run(KNOB, Space([1, 2, 3], 1, False, "3", "every one"), goal, lambda v: float(v), discrete=True)
    assert none.status == "none" and none.best.value == 3


def test_monotone_accepts_plateaus_and_refuses_a_turn():
    def points(*figures):
        return [Point(i, str(i), f, False, None, None) for i, f in enumerate(figures)]

    assert is_monotone(points(1, 1, 2, 3)) and is_monotone(points(3, 2, 2)) and not is_monotone(points(1, 3, 2))
    assert not is_monotone(points(1, math.nan, 2))


def test_goal_needs_the_verdict_and_a_fitting_layout():
    goal = Goal("ttft_s", "max", 1.0, 2.0)
    verdict = TargetVerdict("ttft_s", "max", 1.0, 0.5, True)
    s = make_scenario(TINY_MOE)
    fits = LayoutResult(0, s.parallel, False, "ok", memory_bytes_per_gpu=1, capacity_bytes=2, targets=(verdict,))
    too_big = LayoutResult(0, s.parallel, False, "ok", memory_bytes_per_gpu=3, capacity_bytes=2, targets=(verdict,))
    assert goal.met(fits) and not goal.met(too_big)
    assert goal.better(0.5, 0.7) and not goal.better(math.nan, 0.7) and goal.better(0.7, math.nan)


@settings(max_examples=60, deadline=None)
@given(
    exponent=st.floats(-2.0, 2.0).filter(lambda p: abs(p) > 0.05),
    size=st.integers(2, 3000),
    current=st.integers(1, 3000),
    quantile=st.floats(0.0, 1.2),
    bound=st.sampled_from(["min", "max"]),
)
def test_bisection_answer_meets_and_its_neighbour_towards_the_current_value_does_not(
    exponent, size, current, quantile, bound
):
    """For any monotone figure v^p and any limit: a found value meets the target, its neighbour towards the
    current value does not, and 'none' means that no value of the grid meets it (checked one by one)."""
    current = min(current, size)

    def formula(v):
        return float(v) ** exponent

    lo_f, hi_f = sorted((formula(1), formula(size)))
    limit = lo_f + quantile * (hi_f - lo_f)
    meets = (lambda f: f >= limit) if bound == "min" else (lambda f: f <= limit)
    assume(not meets(formula(current)))
    goal = Goal("ttft_s" if bound == "max" else "output_tokens_per_ms_per_gpu", bound, limit, formula(current))
    answer, _ = _run(KNOB, Space(range(1, size + 1), current, True, "", ""), goal, formula)
    if answer.status == "found":
        assert meets(formula(answer.best.value)) and not meets(formula(answer.below.value))
        assert abs(answer.best.value - answer.below.value) == 1
        assert abs(answer.below.value - current) < abs(answer.best.value - current)
        between = range(min(current, answer.best.value) + 1, max(current, answer.best.value))
        assert not any(meets(formula(v)) for v in between)  # nothing nearer the current value meets it
    else:
        assert answer.status == "none" and not any(meets(formula(v)) for v in range(1, size + 1))
