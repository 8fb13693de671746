"""vLLM V1's data-parallel load balancer (serving.dp_router): the score, the front end's own additions, what a
publication shows and when, and a served run routed by it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.report.serving_summary import lockstep_line, serving_summary_dict
from simulator.serving.dp_router import VllmDpRouter
from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import summarize
from simulator.serving.workload import Request
from tests.serving.conftest import make_spec
from tests.serving.test_fast_forward import same_either_way
from tests.serving.test_properties import specs
from tests.serving.test_simulate import conservation_holds

# ticks every 1/8 s: exact in binary, so a report at a tick's time is plainly at or before it
TICK_S = 0.125


def test_before_any_publication_its_own_additions_send_requests_round_robin():
    router = VllmDpRouter(3, TICK_S)
    assert [router.choose(0.01 * i) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert router.counts == [[3, 0], [2, 0], [2, 0]]


def test_a_waiting_request_weighs_four_running_ones():
    router = VllmDpRouter(2, TICK_S)
    router.publish(0, 0.0, 1, 0)  # score 4
    router.publish(1, 0.0, 0, 3)  # score 3
    assert router.choose(0.2) == 1
    router = VllmDpRouter(2, TICK_S)
    router.publish(0, 0.0, 1, 0)  # 4
    router.publish(1, 0.0, 0, 5)  # 5
    assert router.choose(0.2) == 0
    router = VllmDpRouter(2, TICK_S)
    router.publish(0, 0.0, 0, 4)
    router.publish(1, 0.0, 1, 0)  # a tie goes to the first engine
    assert router.choose(0.2) == 0


def test_a_report_counts_from_the_first_tick_at_or_after_it():
    router = VllmDpRouter(2, TICK_S)
    router.publish(0, 0.1, 0, 2)  # after tick 0, before tick 1 (0.125)
    assert router.choose(0.11) == 0  # still the empty counts of tick 0
    assert router.counts == [[1, 0], [0, 0]]
    assert router.choose(0.125) == 1  # tick 1 shows engine 0 running 2: its own addition is gone
    assert router.counts == [[0, 2], [1, 0]]
    router.publish(0, 0.2, 0, 0)
    router.publish(0, 0.25, 0, 1)  # at tick 2 itself: engine 0's last report at or before it
    router.publish(1, 0.2, 0, 3)
    assert router.choose(0.3) == 0  # tick 2 shows (0, 1) and (0, 3): scores 1 and 3
    assert router.counts == [[1, 1], [0, 3]]


def test_unchanged_counts_keep_its_additions_until_the_periodic_publication():
    router = VllmDpRouter(2, TICK_S, unchanged_interval_s=1.0)
    router.publish(1, 0.0, 0, 5)
    assert router.choose(0.125) == 0  # published at tick 1: scores 0 and 5
    assert router.choose(0.25) == 0  # tick 2 brings the same counts, so nothing is published: 4 against 5
    assert router.choose(0.375) == 1  # 8 against 5: its own additions still count
    assert router.counts == [[2, 0], [1, 5]]
    assert router.choose(1.125) == 0  # tick 9, a second after tick 1: published again, additions gone
    assert router.counts == [[1, 0], [0, 5]]


# LinearPricer(0.25, 1/16, 1/128): prefill of 8 tokens 0.75; a decode at context c 0.25 + 1/16 + c/128.
REQUESTS = [Request(0, 0.0, 8, 6), Request(1, 0.01, 8, 2), Request(2, 1.15, 8, 2)]


def two_replicas(router: str):
    return make_spec(
        replicas={"count": 2, "router": router}, workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}}
    )


def test_it_routes_by_the_last_published_counts_not_the_present(pricer):
    # R0 -> replica 0, R1 -> replica 1 (its own addition). R1 finishes at 0.01 + 0.75 + 0.375 = 1.135; at the tick
    # of 1.1 both replicas had reported (0 waiting, 1 running), so R2 at 1.15 goes to replica 0 (the tie), behind
    # R0's decode (0.75 + 0.375 = 1.125 to 1.125 + 0.25 + 1/16 + 9/128 = 1.5078125), where least_loaded, which
    # sees replica 1 empty at 1.15, starts it at once.
    published = simulate_serving(two_replicas("vllm_dp"), pricer, REQUESTS)
    present = simulate_serving(two_replicas("least_loaded"), pricer, REQUESTS)
    assert [r.replica for r in published.records] == [0, 1, 0]
    assert [r.replica for r in present.records] == [0, 1, 1]
    assert published.records[1].finish_s == pytest.approx(1.135, abs=1e-12)
    assert published.records[2].first_scheduled_s == 1.5078125
    assert present.records[2].first_scheduled_s == 1.15


def test_the_serve_summary_names_the_router(pricer):
    spec = make_spec(
        replicas={"count": 2, "lockstep": True, "router": "vllm_dp"},
        workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}},
    )
    run = simulate_serving(spec, pricer, REQUESTS)
    doc = serving_summary_dict("t", run, summarize(run), "p")
    assert doc["lockstep"]["router"] == "vllm_dp"
    line = lockstep_line(doc)
    assert line is not None and line.startswith(
        "2 ranks stepping together, requests sent on arrival to the rank with the lowest waiting x 4 + running as "
        "last published (vLLM's data-parallel load balancer): rank balance"
    )


@st.composite
def routed_specs(draw):
    """specs() with 2-4 replicas, lockstep or not, routed by vLLM's balancer."""
    spec = draw(specs(max_output_tokens=40))
    replicas = spec.replicas.model_copy(
        update={"count": draw(st.integers(2, 4)), "lockstep": draw(st.booleans()), "router": "vllm_dp"}
    )
    return spec.model_copy(update={"replicas": replicas})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(routed_specs())
def test_routed_by_it_every_request_finishes_and_decode_runs_change_nothing(spec):
    _, slow = same_either_way(spec)
    conservation_holds(slow)
