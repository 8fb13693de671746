"""What lets a deployment search stop a max-rate search early without changing its answer: the throughput cap
of a missed rate (maxrate.throughput_cap), runs stopped at their last measured arrival (simulate.stop_when,
maxrate.evaluate_verdict) and search_max_rate's give_up."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.serving.disagg_simulate import simulate_disaggregated_requests
from simulator.serving.maxrate import (
    at_rate,
    keep_up_ratio,
    keep_up_ratio_of,
    search_max_rate,
    throughput_cap,
)
from simulator.serving.pricing import CachedPricer, LinearPricer
from simulator.serving.simulate import StoppedEarly, simulate_serving, stop_when
from simulator.serving.stats import request_table, summarize
from simulator.serving.workload import generate_requests
from tests.serving.conftest import make_spec
from tests.serving.test_disagg import _fabric, _inputs
from tests.serving.test_maxrate import WORKLOAD

SPEC = make_spec(
    workload=WORKLOAD | {"warmup_requests": 20}, scheduler={"max_num_seqs": 16}, targets={"ttft_p99_s": 0.5}
)


def pricer() -> CachedPricer:
    return CachedPricer(LinearPricer(0.02, 1 / 1024, 1 / 8192))


# ---------------------------------------------------------------- the cap of a missed rate


def test_throughput_cap_is_the_measured_output_tokens_over_their_arrival_span():
    """Fixed 4-token outputs, 10 requests of which 2 warm up, on 2 replicas: 8 x 4 tokens over the span from
    request 2's arrival to request 9's, per GPU; at twice the rate the same requests arrive twice as fast."""
    spec = make_spec(
        workload={
            "arrivals": {"kind": "poisson", "rate_per_s": 1.0},
            "output_len": {"kind": "fixed", "tokens": 4},
            "num_requests": 10,
            "warmup_requests": 2,
        },
        replicas={"count": 2},
    )
    arrivals = [r.arrival_s for r in generate_requests(at_rate(spec, 8.0))]
    assert throughput_cap(spec, 8.0) == 8 * 4 / (arrivals[9] - arrivals[2]) / 2
    assert throughput_cap(spec, 16.0) == pytest.approx(2 * throughput_cap(spec, 8.0), rel=1e-12)


def test_a_workload_that_ends_at_a_duration_has_no_cap():
    workload = WORKLOAD | {"num_requests": None, "duration_s": 50.0}
    assert throughput_cap(make_spec(workload=workload, targets={"ttft_p99_s": 0.5}), 4.0) == math.inf


@settings(max_examples=15, deadline=None)
@given(low=st.floats(0.5, 200.0), factor=st.floats(1.0001, 4.0))
def test_no_run_below_a_rate_reports_more_than_its_cap(low, factor):
    run = simulate_serving(at_rate(SPEC, low), pricer())
    reported = summarize(run).figures["output_tokens_per_s_per_gpu"]
    assert reported <= throughput_cap(SPEC, low) < throughput_cap(SPEC, low * factor)


# ---------------------------------------------------------------- runs stopped at the last measured arrival


@pytest.mark.parametrize("rate", [2.0, 40.0, 400.0])
def test_a_run_stopped_at_its_last_arrival_has_the_whole_runs_keep_up_ratio(rate):
    spec = at_rate(SPEC, rate)
    whole = keep_up_ratio(request_table(simulate_serving(spec, pricer())))
    with pytest.raises(StoppedEarly) as stopped, stop_when(lambda a, f: True):
        simulate_serving(spec, pricer())
    partial = stopped.value
    assert np.isinf(partial.finish_s).any() or rate == 2.0  # an overloaded run has requests still in the system
    assert keep_up_ratio_of(partial.arrival_s, partial.finish_s) == whole


def test_a_disaggregated_run_stops_there_too():
    spec = make_spec(
        workload={"arrivals": {"kind": "poisson", "rate_per_s": 40.0}, "num_requests": 60, "warmup_requests": 5},
        targets={"ttft_p99_s": 4.0, "tpot_p99_s": 1.0},
    )

    def simulate():
        return simulate_disaggregated_requests(_inputs(spec, _fabric(2.0**14)), generate_requests(spec))

    whole = keep_up_ratio(request_table(simulate()))
    with pytest.raises(StoppedEarly) as stopped, stop_when(lambda a, f: True):
        simulate()
    assert keep_up_ratio_of(stopped.value.arrival_s, stopped.value.finish_s) == whole


def test_a_check_that_answers_false_leaves_the_run_unchanged():
    spec = at_rate(SPEC, 40.0)
    plain = request_table(simulate_serving(spec, pricer()))
    calls = []
    with stop_when(lambda a, f: calls.append(len(a)) or False):
        checked = request_table(simulate_serving(spec, pricer()))
    assert calls == [380]  # once, with the 400 - 20 measured requests
    assert checked.equals(plain)


# ---------------------------------------------------------------- search_max_rate with both


@pytest.mark.parametrize("start", [1.0, 30.0, 500.0])
def test_verdict_only_finds_the_same_rate_with_fewer_figures(start):
    full = search_max_rate(SPEC, pricer(), start, rel_tol=0.02)
    quick = search_max_rate(SPEC, pricer(), start, rel_tol=0.02, verdict_only=True)
    assert quick.rate_per_s == full.rate_per_s is not None
    a, b = full.curve, quick.curve
    assert a["rate_per_s"].tolist() == b["rate_per_s"].tolist()
    assert a["all_targets_met"].tolist() == b["all_targets_met"].tolist()
    assert a["keep_up_ratio"].tolist() == b["keep_up_ratio"].tolist()
    met = a["all_targets_met"].to_numpy(dtype=bool)
    assert a[met].equals(b[met])  # met rates ran to the end
    stopped = b["output_tokens_per_s_per_gpu"].isna()
    assert not stopped[met].any()
    if start == 500.0:
        assert stopped.any()  # the overloaded rates stopped at their last arrival


def test_verdict_only_simulates_the_lowest_rate_to_the_end_when_none_meets():
    spec = make_spec(workload=WORKLOAD, targets={"ttft_p99_s": 1e-6})
    full = search_max_rate(spec, pricer(), 1.0, max_doublings=3)
    quick = search_max_rate(spec, pricer(), 1.0, max_doublings=3, verdict_only=True)
    assert quick.rate_per_s is None and full.curve.iloc[0].equals(quick.curve.iloc[0])


def test_give_up_ends_the_search_at_the_missed_rate_it_accepts():
    asked = []

    def give_up(rate: float) -> bool:
        asked.append(rate)
        return rate < 100.0

    found = search_max_rate(SPEC, pricer(), 500.0, give_up=give_up)  # its max rate: 8.3 requests/s
    assert asked == [500.0, 250.0, 125.0, 62.5]
    assert found.rate_per_s is None and found.given_up_at_per_s == 62.5
    assert found.curve["rate_per_s"].tolist() == [62.5, 125.0, 250.0, 500.0]
