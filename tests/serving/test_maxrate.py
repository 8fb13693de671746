"""Rate sweeps with common random numbers, and the bisection for the highest rate meeting the targets."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.config.serving import ServingError
from simulator.serving.maxrate import CURVE_COLUMNS, max_rate, rate_curve
from simulator.serving.pricing import CachedPricer, LinearPricer
from tests.serving.conftest import make_spec

WORKLOAD = {
    "arrivals": {"kind": "poisson", "rate_per_s": 1.0},
    "num_requests": 400,
    "seed": 5,
    "input_len": {"kind": "uniform", "min_tokens": 1, "max_tokens": 64},
    "output_len": {"kind": "uniform", "min_tokens": 2, "max_tokens": 16},
}
PRICER = CachedPricer(LinearPricer(0.02, 1 / 1024, 1 / 8192))


def test_latency_percentiles_do_not_fall_as_the_rate_rises():
    spec = make_spec(workload=WORKLOAD, scheduler={"max_num_seqs": 16})
    curve = rate_curve(spec, PRICER, [1, 2, 4, 8, 16, 32])
    assert list(curve.columns) == list(CURVE_COLUMNS)
    for column in ("ttft_p99_s", "e2e_p99_s"):
        assert np.all(np.diff(curve[column]) >= 0), curve[column].tolist()


def test_max_rate_is_met_and_just_above_it_is_not():
    spec = make_spec(workload=WORKLOAD, scheduler={"max_num_seqs": 16}, targets={"ttft_p99_s": 0.5})
    seen = []
    result = max_rate(spec, PRICER, 1.0, 64.0, rel_tol=0.02, progress=lambda r, s: seen.append(r))
    assert result.rate_per_s is not None and not result.capped
    curve = result.curve
    met = curve[curve["all_targets_met"]]["rate_per_s"]
    missed = curve[~curve["all_targets_met"]]["rate_per_s"]
    assert met.max() == result.rate_per_s < missed.min() <= result.rate_per_s * 1.02
    assert len(seen) == len(curve)


def test_max_rate_reports_none_when_even_the_lowest_rate_misses():
    spec = make_spec(workload=WORKLOAD, targets={"ttft_p99_s": 0.001})
    assert max_rate(spec, PRICER, 1.0, 2.0).rate_per_s is None


def test_max_rate_is_capped_when_the_highest_rate_meets_the_targets():
    spec = make_spec(workload=WORKLOAD, targets={"ttft_p99_s": 100.0})
    result = max_rate(spec, PRICER, 1.0, 2.0)
    assert (result.rate_per_s, result.capped) == (2.0, True)


def test_max_rate_needs_a_target():
    with pytest.raises(ServingError, match="targets: none given"):
        max_rate(make_spec(workload=WORKLOAD), PRICER, 1.0, 2.0)


def test_an_overloaded_rate_does_not_count_even_when_a_short_run_meets_the_targets():
    """400 requests drain in a few seconds however fast they arrive, so a loose TTFT target holds at any rate;
    the max rate must still stop at what the deployment serves (it keeps up: completions ~ arrivals)."""
    spec = make_spec(workload=WORKLOAD, scheduler={"max_num_seqs": 16}, targets={"ttft_p99_s": 1e6})
    curve = rate_curve(spec, PRICER, [1.0, 1e4])
    low, high = curve.iloc[0], curve.iloc[1]
    assert low["keeps_up"] and low["all_targets_met"] and abs(low["keep_up_ratio"] - 1) < 0.05
    assert not high["keeps_up"] and not high["all_targets_met"] and high["ttft_p99_s"] < 1e6
    served = float(high["requests_per_s"])  # the capacity, roughly
    result = max_rate(spec, PRICER, 1.0, 1e4, rel_tol=0.02)
    assert result.rate_per_s is not None and result.rate_per_s <= 1.1 * served
