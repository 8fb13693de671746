"""The SimPy serving model: exact times for small cases, conservation, preemption, lockstep, Little's law."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulator.config.serving import ServingError
from simulator.serving.pricing import LinearPricer
from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import request_table
from simulator.serving.workload import Request
from tests.serving.conftest import RecordingPricer, make_spec

# LinearPricer(0.25, 1/16, 1/128), prompt 8 tokens: prefill 0.25 + 8/16 = 0.75; decode at context c:
# 0.25 + 1/16 + c/128, i.e. 0.375, 0.3828125, 0.390625 at c = 8, 9, 10.
PREFILL_S = 0.75
DECODE_S = [0.375, 0.3828125, 0.390625]


@pytest.mark.parametrize("policy", ["static", "continuous", "chunked_prefill"])
def test_one_request_at_a_time_is_priced_exactly(policy, pricer):
    run = simulate_serving(make_spec(scheduler={"policy": policy}), pricer)
    request_s = PREFILL_S + sum(DECODE_S)  # 1.8984375
    for i, rec in enumerate(run.records):
        start_s = i * request_s
        assert rec.arrival_s == start_s
        assert rec.first_token_s - rec.arrival_s == PREFILL_S
        assert list(np.diff(rec.token_times_s)) == DECODE_S
        assert rec.finish_s == start_s + request_s


def test_static_batch_at_time_zero_is_prefill_then_the_decode_steps(pricer):
    spec = make_spec(
        workload={"arrivals": {"kind": "closed_loop", "concurrency": 4}, "num_requests": 4},
        scheduler={"policy": "static"},
    )
    run = simulate_serving(spec, pricer)
    prefill_s = 0.25 + 32 / 16  # 4 prompts of 8 tokens
    decode_s = [0.25 + 4 / 16 + 4 * c / 128 for c in (8, 9, 10)]  # 0.75, 0.78125, 0.8125
    for rec in run.records:
        assert rec.first_token_s == prefill_s
        assert rec.finish_s == prefill_s + sum(decode_s) == 4.59375


def test_static_takes_the_next_batch_only_when_the_last_has_finished(pricer):
    spec = make_spec(
        workload={"arrivals": {"kind": "closed_loop", "concurrency": 3}, "num_requests": 3},
        scheduler={"policy": "static", "max_num_seqs": 2},
    )
    run = simulate_serving(spec, pricer)
    first_batch_end_s = run.records[0].finish_s
    assert run.records[2].first_scheduled_s == first_batch_end_s


def conservation_holds(run) -> None:
    capacity = run.spec.scheduler.kv_cache.capacity_blocks
    assert [r.request_id for r in run.records] == list(range(len(run.records)))
    for rec in run.records:
        assert len(rec.token_times_s) == rec.output_tokens
        assert rec.arrival_s <= rec.first_scheduled_s < rec.token_times_s[0]
        assert np.all(np.diff(rec.token_times_s) > 0)
        assert rec.finish_s == rec.token_times_s[-1]
    assert run.timeseries["tokens_out"].sum() == sum(r.output_tokens for r in run.records)
    assert max(run.peak_kv_blocks) <= capacity
    assert run.timeseries["kv_blocks_used"].max() <= capacity


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_a_full_kv_cache_preempts_and_the_preempted_requests_still_finish(policy, pricer):
    # 3 requests of 4 + 8 tokens need 3 blocks of 4 each at their end; 6 blocks hold two of them.
    spec = make_spec(
        workload={
            "arrivals": {"kind": "closed_loop", "concurrency": 3},
            "num_requests": 3,
            "input_len": {"kind": "fixed", "tokens": 4},
            "output_len": {"kind": "fixed", "tokens": 8},
        },
        scheduler={
            "policy": policy,
            "max_num_batched_tokens": 16,
            "kv_cache": {"block_size_tokens": 4, "capacity_blocks": 6},
        },
    )
    run = simulate_serving(spec, pricer)
    assert run.preemptions > 0
    assert sum(r.preemptions for r in run.records) == run.preemptions
    conservation_holds(run)


def test_a_preempted_request_recomputes_its_prompt_and_output_so_far():
    spec = make_spec(
        workload={
            "arrivals": {"kind": "closed_loop", "concurrency": 3},
            "num_requests": 3,
            "input_len": {"kind": "fixed", "tokens": 4},
            "output_len": {"kind": "fixed", "tokens": 8},
        },
        scheduler={
            "policy": "continuous",
            "max_num_batched_tokens": 16,
            "kv_cache": {"block_size_tokens": 4, "capacity_blocks": 6},
        },
    )
    pricer = RecordingPricer()
    simulate_serving(spec, pricer)
    recomputes = [w for b in pricer.batches for w in b if w.new_tokens > 4]
    assert recomputes and all(w.context_tokens == 0 for w in recomputes)


def test_long_poisson_run_conserves_tokens_and_blocks(pricer):
    spec = make_spec(
        workload={
            "arrivals": {"kind": "poisson", "rate_per_s": 3.0},
            "num_requests": 300,
            "input_len": {"kind": "uniform", "min_tokens": 1, "max_tokens": 40},
            "output_len": {"kind": "uniform", "min_tokens": 1, "max_tokens": 20},
        },
        scheduler={"kv_cache": {"block_size_tokens": 4, "capacity_blocks": 30}},
    )
    conservation_holds(simulate_serving(spec, pricer))


def test_lockstep_iteration_ends_with_the_slowest_replica(pricer):
    spec = make_spec(
        replicas={"count": 2, "lockstep": True}, workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}}
    )
    requests = [Request(0, 0.0, 8, 2), Request(1, 0.0, 64, 3)]
    run = simulate_serving(spec, pricer, requests)
    r0, r1 = run.records
    assert (r0.replica, r1.replica) == (0, 1)
    # Prefill: replica 0 takes 0.75, replica 1 0.25 + 64/16 = 4.25; both end at 4.25.
    assert r0.first_token_s == r1.first_token_s == 4.25
    # Decode: 0.375 (context 8) and 0.8125 (context 64): both end at 5.0625.
    assert r0.finish_s == r1.token_times_s[1] == 5.0625
    # Replica 0 is idle but joins with a dummy batch (0.25 s); replica 1's decode at 65 takes 0.8203125.
    assert r1.finish_s == 5.0625 + 0.8203125


def test_lockstep_idle_replica_pays_the_dummy_iteration():
    linear = LinearPricer(0.25, 1 / 16, 1 / 128)
    spec = make_spec(
        replicas={"count": 2, "lockstep": True}, workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}}
    )
    run = simulate_serving(spec, lambda b: linear(b) if b else 10.0, [Request(0, 0.0, 8, 2)])
    assert run.records[0].token_times_s.tolist() == [10.0, 20.0]


def test_without_lockstep_replicas_run_independently(pricer):
    spec = make_spec(replicas={"count": 2}, workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}})
    r0, r1 = simulate_serving(spec, pricer, [Request(0, 0.0, 8, 2), Request(1, 0.0, 64, 3)]).records
    assert (r0.first_token_s, r0.finish_s) == (0.75, 1.125)
    assert r1.first_token_s == 4.25


def test_least_loaded_router_sends_to_the_emptier_replica(pricer):
    spec = make_spec(
        replicas={"count": 2, "router": "least_loaded"}, workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}}
    )
    # Request 1 has finished by 5.0 (at 1.125) while request 0 still runs: round robin would pick replica 0.
    requests = [Request(0, 0.0, 8, 50), Request(1, 0.0, 8, 2), Request(2, 5.0, 8, 2)]
    run = simulate_serving(spec, pricer, requests)
    assert [r.replica for r in run.records] == [0, 1, 1]


def test_littles_law_holds_on_a_long_stationary_run():
    rate_per_s = 2.0
    spec = make_spec(
        workload={
            "arrivals": {"kind": "poisson", "rate_per_s": rate_per_s},
            "num_requests": 4000,
            "input_len": {"kind": "uniform", "min_tokens": 1, "max_tokens": 64},
            "output_len": {"kind": "uniform", "min_tokens": 1, "max_tokens": 16},
            "seed": 3,
        },
        scheduler={"max_num_seqs": 16},
    )
    run = simulate_serving(spec, LinearPricer(0.02, 1 / 1024, 1 / 8192))
    mean_time_in_system_s = float(np.mean([r.finish_s - r.arrival_s for r in run.records]))
    assert run.mean_in_system == pytest.approx(rate_per_s * mean_time_in_system_s, rel=0.04)


def test_same_seed_gives_a_byte_identical_request_table(pricer):
    spec = make_spec(
        workload={
            "arrivals": {"kind": "gamma", "rate_per_s": 2.0, "cv": 2.0},
            "num_requests": 50,
            "input_len": {"kind": "lognormal", "mean_tokens": 20, "std_tokens": 10, "max_tokens": 100},
            "output_len": {"kind": "normal", "mean_tokens": 8, "std_tokens": 4, "max_tokens": 30},
            "seed": 7,
        }
    )
    first = request_table(simulate_serving(spec, pricer)).to_csv(index=False)
    again = request_table(simulate_serving(spec, pricer)).to_csv(index=False)
    other = request_table(
        simulate_serving(spec.model_copy(update={"workload": spec.workload.model_copy(update={"seed": 8})}), pricer)
    ).to_csv(index=False)
    assert first == again
    assert first != other


def test_one_output_token_finishes_at_its_first_token(pricer):
    spec = make_spec(workload={"output_len": {"kind": "fixed", "tokens": 1}})
    rec = simulate_serving(spec, pricer).records[0]
    assert rec.finish_s == rec.first_token_s == 0.75


def test_unsorted_requests_are_refused(pricer):
    spec = make_spec(workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}})
    with pytest.raises(ServingError, match=r"requests\[1\].arrival_s = 0.5 is before"):
        simulate_serving(spec, pricer, [Request(0, 1.0, 8, 2), Request(1, 0.5, 8, 2)])


def test_timeseries_has_one_row_per_iteration(pricer):
    run = simulate_serving(make_spec(workload={"num_requests": 1}), pricer)
    ts = run.timeseries
    assert run.num_iterations == 4
    assert ts["iteration_s"].tolist() == [PREFILL_S, *DECODE_S]
    assert ts["new_tokens"].tolist() == [8, 1, 1, 1]
    assert ts["kv_blocks_used"].tolist() == [1, 1, 1, 1]
    assert math.isclose(run.mean_in_system, 1.0)
