"""search_max_rate: brackets from any start (doubling up or halving down), then bisects; each rate once."""

from __future__ import annotations

import pytest

from simulator.serving.maxrate import search_max_rate
from simulator.serving.pricing import CachedPricer, LinearPricer
from tests.serving.conftest import make_spec
from tests.serving.test_maxrate import WORKLOAD

PRICER = CachedPricer(LinearPricer(0.02, 1 / 1024, 1 / 8192))
SPEC = make_spec(workload=WORKLOAD, scheduler={"max_num_seqs": 16}, targets={"ttft_p99_s": 0.5})


@pytest.mark.parametrize("start", [1.0, 200.0])
def test_max_rate_is_bracketed_from_below_and_above(start):
    result = search_max_rate(SPEC, PRICER, start, rel_tol=0.02)
    curve = result.curve
    assert curve["rate_per_s"].is_unique and curve["rate_per_s"].is_monotonic_increasing
    met = curve[curve["all_targets_met"]]["rate_per_s"]
    missed = curve[~curve["all_targets_met"]]["rate_per_s"]
    assert met.max() == result.rate_per_s < missed.min() <= result.rate_per_s * 1.02


def test_none_when_halving_never_meets_the_targets():
    spec = make_spec(workload=WORKLOAD, targets={"ttft_p99_s": 1e-6})
    result = search_max_rate(spec, PRICER, 1.0, max_doublings=3)
    assert result.rate_per_s is None and len(result.curve) == 4
