"""Property: over random small specs, every request finishes once with all its tokens, within KV capacity; with
admission reserve (a generation cap or not), no request is ever preempted; the three admission rules and both preemption orders included."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.config.serving import kv_blocks_needed, kv_output_tokens, parse_serving_spec
from simulator.serving.pricing import LinearPricer
from simulator.serving.simulate import simulate_serving
from tests.serving.test_simulate import conservation_holds


@st.composite
def specs(draw, max_output_tokens: int = 12):
    policy = draw(st.sampled_from(["static", "continuous", "chunked_prefill", "prefill_first_chunked"]))
    max_in = draw(st.integers(1, 24))
    max_out = draw(st.integers(1, max_output_tokens))
    block = draw(st.sampled_from([1, 2, 4, 16]))
    admission = draw(st.sampled_from(["on_demand", "reserve", "estimate"]))
    cap = draw(st.none() | st.integers(1, 16))
    need = kv_blocks_needed(
        max_in, kv_output_tokens(max_out if cap is None else min(max_out, cap), cap, admission), block
    )
    if admission == "estimate":  # admitted only while prompt + output < the free KV tokens
        known_out = kv_output_tokens(max_out if cap is None else min(max_out, cap), cap, "reserve")
        need = max(need, (max_in + known_out) // block + 1)
    max_num_seqs = draw(st.integers(1, 4))
    arrivals = draw(
        st.sampled_from(
            [
                {"kind": "closed_loop", "concurrency": draw(st.integers(1, 5))},
                {"kind": "poisson", "rate_per_s": draw(st.sampled_from([0.5, 2.0, 20.0]))},
            ]
        )
    )
    return parse_serving_spec(
        {
            "workload": {
                "arrivals": arrivals,
                "num_requests": draw(st.integers(1, 12)),
                "seed": draw(st.integers(0, 9)),
                "input_len": {"kind": "uniform", "min_tokens": 1, "max_tokens": max_in},
                "output_len": {"kind": "uniform", "min_tokens": 1, "max_tokens": max_out},
                "max_new_tokens": cap,
            },
            "scheduler": {
                "policy": policy,
                "max_num_seqs": max_num_seqs,
                "max_num_batched_tokens": max(max_num_seqs, max_in + max_out, draw(st.integers(1, 40))),
                "chunk_size_tokens": draw(st.integers(1, max(max_num_seqs, max_in + max_out))),
                "kv_cache": {"block_size_tokens": block, "capacity_blocks": need + draw(st.integers(0, 4))},
                "admission": admission,
                "preempt": draw(st.sampled_from(["newest", "fewest_decoded"])),
                "schedule_conservativeness": draw(st.sampled_from([0.3, 1.0, 2.0])),
            },
            "replicas": {
                "count": draw(st.integers(1, 3)),
                "lockstep": draw(st.booleans()),
                "router": draw(st.sampled_from(["round_robin", "least_loaded"])),
            },
        }
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_every_request_finishes_once_with_all_its_tokens(spec):
    run = simulate_serving(spec, LinearPricer(0.25, 1 / 16, 1 / 128))
    conservation_holds(run)
    if spec.scheduler.admission == "reserve":
        assert run.preemptions == 0
