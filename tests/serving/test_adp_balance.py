"""TensorRT-LLM's attention-DP balance (serving.adp_balance): the decision rule, hand-computed schedules of a
lockstep group with it, and the refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.config.serving import AttentionDpBalanceSpec, ServingError, kv_blocks_needed, kv_output_tokens
from simulator.report.serving_summary import lockstep_line, serving_summary_dict
from simulator.serving.adp_balance import AttentionDpBalance
from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import group_balance_ratio, summarize
from simulator.serving.workload import Request
from tests.serving.conftest import RecordingPricer, make_spec
from tests.serving.test_fast_forward import assert_same_run, both
from tests.serving.test_properties import specs
from tests.serving.test_simulate import conservation_holds


def balance(timeout_iters: int, batching_wait_iters: int, max_batch_size: int = 4) -> AttentionDpBalance:
    spec = AttentionDpBalanceSpec(timeout_iters=timeout_iters, batching_wait_iters=batching_wait_iters)
    return AttentionDpBalance(spec, max_batch_size)


def test_contexts_wait_for_every_rank_until_the_timeout():
    b = balance(timeout_iters=3, batching_wait_iters=0)
    # rank 0 has a context, rank 1 only generates: held twice, the third iteration reaches the timeout
    assert [b.hold([1, 0], [2, 2]) for _ in range(4)] == [True, True, False, True]
    assert b.held == 3


def test_contexts_go_at_once_when_a_rank_does_not_generate():
    b = balance(timeout_iters=50, batching_wait_iters=10)
    assert b.hold([1, 0], [2, 0]) is False  # nothing would keep rank 1 busy while waiting
    assert b.hold([1, 1], [0, 0]) is False  # every rank has a context, none generates (a run's start)
    assert (b.waiting_iters, b.batching_iters, b.held) == (0, 0, 0)


def test_every_rank_with_a_context_waits_batching_wait_iters_more_while_all_generate():
    b = balance(timeout_iters=50, batching_wait_iters=2)
    b.hold([1, 0], [3, 3])  # waiting 1
    assert b.waiting_iters == 1
    assert [b.hold([1, 2], [3, 3]) for _ in range(4)] == [True, True, False, True]
    assert b.waiting_iters == 0
    assert b.held == 4


def test_a_rank_with_full_generation_slots_keeps_the_contexts_waiting():
    b = balance(timeout_iters=2, batching_wait_iters=0, max_batch_size=4)
    # rank 1 generates max_batch_size requests: no free slot, so not every rank can take its context
    assert [b.hold([1, 1], [3, 4]) for _ in range(3)] == [True, False, True]


def test_iterations_without_contexts_count_the_wait_up_and_wrap_at_the_timeout():
    for timeout in (0, 1, 3, 7):
        stepped, jumped = balance(timeout, 2), balance(timeout, 2)
        stepped.hold([1, 0], [1, 1])
        jumped.hold([1, 0], [1, 1])
        for _ in range(11):
            expected = stepped.waiting_iters + 1 < timeout  # held (a no-op without contexts) until the timeout
            assert stepped.hold([0, 0], [1, 1]) is expected
        jumped.pass_decodes(11)
        assert (jumped.waiting_iters, jumped.batching_iters) == (stepped.waiting_iters, stepped.batching_iters)
        assert stepped.held == jumped.held == (1 if timeout > 1 else 0)


# LinearPricer(0.25, 1/16, 1/128): prefill of 8 tokens 0.75; a decode at context c 0.25 + 1/16 + c/128.
def lockstep_spec(balance: dict | None, **scheduler) -> dict:
    replicas = {"count": 2, "lockstep": True}
    if balance is not None:
        replicas["attention_dp_balance"] = balance
    return make_spec(
        replicas=replicas,
        workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}},
        scheduler={"admission": "reserve", **scheduler},
    )


@pytest.mark.parametrize("fast_forward", [True, False])
def test_a_context_on_one_rank_waits_for_the_timeout(pricer, fast_forward):
    # R0 -> rank 0, R1 -> rank 1 at 0 (3 tokens each); R2 -> rank 0 at 0.5 (round robin).
    requests = [Request(0, 0.0, 8, 3), Request(1, 0.0, 8, 3), Request(2, 0.5, 8, 2)]
    plain = simulate_serving(lockstep_spec(None), pricer, requests, fast_forward=fast_forward)
    held = simulate_serving(
        lockstep_spec({"timeout_iters": 2, "batching_wait_iters": 0}), pricer, requests, fast_forward=fast_forward
    )
    # Without the balance R2's prompt runs beside R0's decode at 0.75: 0.25 + 9/16 + 8/128 = 0.875.
    r2 = plain.records[2]
    assert (r2.first_scheduled_s, r2.first_token_s) == (0.75, 1.625)
    assert plain.balance_held is None
    # With it rank 1 has no context: held at 0.75 (both ranks decode at context 8: 0.375), then the wait
    # reaches timeout_iters = 2 and R2 runs at 1.125 beside R0's decode at 9: 0.25 + 9/16 + 9/128 = 0.8828125.
    r0, r1, r2 = held.records
    assert (r2.first_scheduled_s, r2.first_token_s) == (1.125, 2.0078125)
    assert r0.token_times_s.tolist() == [0.75, 1.125, 2.0078125]
    assert r1.token_times_s.tolist() == [0.75, 1.125, 2.0078125]
    assert held.balance_held == 1
    assert held.timeseries["new_tokens"].tolist() == [8, 8, 1, 1, 9, 1, 1, 0]
    # The ranks' mean over the largest new tokens: 1, 1, 5/9, 1/2 (rank 1's dummy pass computes none).
    assert group_balance_ratio(held) == pytest.approx((1 + 1 + 5 / 9 + 1 / 2) / 4, rel=1e-12)
    # Without it: (8, 8), R2's prompt beside the decodes at 0.75 (9, 1), then R0 and R2 decode beside R1 (2, 1).
    assert plain.timeseries["new_tokens"].tolist() == [8, 8, 9, 1, 2, 1]
    assert group_balance_ratio(plain) == pytest.approx((1 + 5 / 9 + 3 / 4) / 3, rel=1e-12)


def test_the_serve_summary_tells_the_groups_balance_and_what_it_held(pricer):
    requests = [Request(0, 0.0, 8, 3), Request(1, 0.0, 8, 3), Request(2, 0.5, 8, 2)]
    held = simulate_serving(lockstep_spec({"timeout_iters": 2, "batching_wait_iters": 0}), pricer, requests)
    doc = serving_summary_dict("t", held, summarize(held), "p")
    assert doc["lockstep"] == {
        "ranks": 2,
        "router": "round_robin",
        "balance_ratio": (2.5 + 5 / 9) / 4,
        "attention_dp_balance": {"timeout_iters": 2, "batching_wait_iters": 0},
        "held_iterations": 1,
    }
    assert lockstep_line(doc) == (
        "2 ranks stepping together, requests sent round robin on arrival: rank balance 0.76 (the ranks' mean new "
        "tokens an iteration over the largest, averaged); attention_dp_balance (timeout_iters 2, batching_wait_iters "
        "0) held the context requests of 1 iteration"
    )
    plain = simulate_serving(lockstep_spec(None), pricer, requests)
    line = lockstep_line(serving_summary_dict("t", plain, summarize(plain), "p"))
    assert line is not None and line.endswith("attention_dp_balance off (TensorRT-LLM's default)")
    alone = simulate_serving(make_spec(replicas={"count": 2}), pricer, requests)
    assert math.isnan(group_balance_ratio(alone))
    assert "lockstep" not in serving_summary_dict("t", alone, summarize(alone), "p")


def test_contexts_on_every_rank_wait_batching_wait_iters(pricer):
    # R0, R1 at 0 (4 tokens each); R2 -> rank 0 and R3 -> rank 1 at 0.5: every rank has a context at 0.75.
    requests = [Request(0, 0.0, 8, 4), Request(1, 0.0, 8, 4), Request(2, 0.5, 8, 2), Request(3, 0.5, 8, 2)]
    run = simulate_serving(lockstep_spec({"timeout_iters": 50, "batching_wait_iters": 1}), pricer, requests)
    # Held once (batching), then both prompts run at 1.125 beside the decodes at context 9.
    assert [r.first_scheduled_s for r in run.records] == [0.0, 0.0, 1.125, 1.125]
    assert run.records[2].first_token_s == 1.125 + 0.25 + 9 / 16 + 9 / 128
    assert run.balance_held == 1


def test_a_rank_without_requests_counts_as_generating(pricer):
    # R1 (one token) leaves rank 1 empty after the first iteration; its dummy generation keeps R2 waiting.
    requests = [Request(0, 0.0, 8, 4), Request(1, 0.0, 8, 1), Request(2, 0.5, 8, 2)]
    run = simulate_serving(lockstep_spec({"timeout_iters": 2, "batching_wait_iters": 0}), pricer, requests)
    # 0.75: rank 0 decodes R0 (0.375), rank 1 runs the dummy (0.25): held; 1.125: the timeout, R2 runs.
    assert run.records[2].first_scheduled_s == 1.125
    assert run.balance_held == 1


def test_the_balance_needs_a_lockstep_group_and_tensorrt_llms_scheduler(pricer):
    requests = [Request(0, 0.0, 8, 2)]
    with pytest.raises(ServingError, match=r"attention_dp_balance: needs a lockstep group"):
        spec = make_spec(replicas={"count": 2, "attention_dp_balance": {}}, scheduler={"admission": "reserve"})
        simulate_serving(spec, pricer, requests)
    with pytest.raises(
        ServingError, match=r"policy chunked_prefill, admission reserve; got chunked_prefill, on_demand"
    ):
        simulate_serving(lockstep_spec({}, admission="on_demand"), pricer, requests)
    with pytest.raises(ServingError, match=r"got continuous, reserve"):
        simulate_serving(lockstep_spec({}, policy="continuous"), pricer, requests)
    with pytest.raises(ServingError, match=r"timeout_iters"):
        lockstep_spec({"timeout_iters": -1})


@st.composite
def balanced_specs(draw):
    """specs() as a lockstep group of 2-3 replicas with TensorRT-LLM's scheduler, the balance on (mostly) and
    its attention-DP queue or round robin."""
    spec = draw(specs(max_output_tokens=40))
    w, kv = spec.workload, spec.scheduler.kv_cache
    cap = w.max_new_tokens
    out = w.output_len.max_tokens if cap is None else min(w.output_len.max_tokens, cap)
    need = kv_blocks_needed(w.input_len.max_tokens, kv_output_tokens(out, cap, "reserve"), kv.block_size_tokens)
    scheduler = spec.scheduler.model_copy(
        update={
            "policy": "chunked_prefill",
            "admission": "reserve",
            "split_prompts": draw(st.booleans()),
            "kv_cache": kv.model_copy(update={"capacity_blocks": max(kv.capacity_blocks, need)}),
        }
    )
    adp = AttentionDpBalanceSpec(timeout_iters=draw(st.integers(0, 6)), batching_wait_iters=draw(st.integers(0, 3)))
    replicas = spec.replicas.model_copy(
        update={
            "count": draw(st.integers(2, 3)),
            "lockstep": True,
            "attention_dp_balance": adp if draw(st.integers(0, 3)) else None,
            "router": draw(st.sampled_from(["round_robin", "attention_dp"])),
        }
    )
    return spec.model_copy(update={"scheduler": scheduler, "replicas": replicas})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(balanced_specs())
def test_with_the_balance_every_request_finishes_and_decode_runs_change_nothing(spec):
    fast, slow, fp, sp = both(spec, RecordingPricer)
    conservation_holds(slow)
    assert fast.preemptions == 0
    assert fp.batches == sp.batches
    assert_same_run(fast, slow)
    assert fast.balance_held == slow.balance_held


@pytest.mark.parametrize(
    ("scenario", "overrides", "message"),
    [
        ("qwen3_30b_a3b_fp8_1xh100_vllm.yaml", ["serving.engine=trtllm-1.0"], "needs a lockstep group of dp ranks"),
        (
            "qwen3_30b_a3b_fp8_1xh100_vllm.yaml",
            ["cluster.num_gpus=2", "parallel.dp=2", "parallel.ep=2"],  # vLLM's scheduler: on-demand blocks
            "needs TensorRT-LLM's scheduler (scheduler.policy chunked_prefill, admission reserve; got chunked_prefill, "
            "on_demand)",
        ),
        ("seed_moe_4gpu_disagg.yaml", [], "balances a co-located lockstep group; a disaggregated pool's"),
    ],
)
def test_serve_refuses_the_balance_where_it_cannot_apply_in_one_line(tmp_path, capsys, scenario, overrides, message):
    from simulator.cli import main

    sets = [a for o in [*overrides, "serving.replicas.attention_dp_balance.timeout_iters=20"] for a in ("--set", o)]
    path = Path(__file__).resolve().parents[2] / "scenarios" / scenario
    code = main(["serve", str(path), *sets, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- TensorRT-LLM's attention-DP request queue


def queue_spec(max_num_seqs: int = 2, **replicas) -> dict:
    return make_spec(
        replicas={"count": 2, "lockstep": True, "router": "attention_dp", **replicas},
        workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}},
        scheduler={"admission": "reserve", "max_num_seqs": max_num_seqs},
    )


def test_the_queue_gives_each_rank_its_share_longest_prompt_first_to_the_fewest_prompt_tokens(pricer):
    # 5 requests at 0, 2 ranks of max_num_seqs 2: 4 taken (share 2 a rank), longest first: 40 -> rank 0 (0
    # tokens, index 0), 30 -> rank 1, 20 -> rank 1 (30 < 40 tokens), 10 -> rank 0 (rank 1 is full); 8 waits.
    requests = [Request(i, 0.0, n, 2) for i, n in enumerate((10, 20, 30, 40, 8))]
    run = simulate_serving(queue_spec(), pricer, requests)
    assert [r.replica for r in run.records[:4]] == [0, 1, 1, 0]
    # Both ranks prefill 50 tokens (0.25 + 50/16 = 3.375), then decode at contexts summing to 50 (0.25 + 2/16 +
    # 50/128 = 0.765625): all four finish at 4.140625, when R4 goes to rank 0 (both empty: the lower index).
    assert all(r.first_scheduled_s == 0.0 and r.finish_s == 4.140625 for r in run.records[:4])
    assert (run.records[4].replica, run.records[4].first_scheduled_s) == (0, 4.140625)


def test_the_queue_binds_a_request_when_a_rank_has_room_not_on_arrival(pricer):
    # Round robin binds R2 to rank 0 on arrival, behind R0's long output; the queue gives it to rank 1, free first.
    requests = [Request(0, 0.0, 8, 6), Request(1, 0.0, 8, 2), Request(2, 0.0, 8, 2)]
    robin = simulate_serving(
        make_spec(
            replicas={"count": 2, "lockstep": True},
            workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}},
            scheduler={"admission": "reserve", "max_num_seqs": 1},
        ),
        pricer,
        requests,
    )
    queued = simulate_serving(queue_spec(max_num_seqs=1), pricer, requests)
    assert [r.replica for r in robin.records] == [0, 1, 0]
    assert [r.replica for r in queued.records] == [0, 1, 1]
    assert queued.records[2].finish_s < robin.records[2].finish_s
    assert queued.end_s < robin.end_s


def test_the_engines_default_router_of_a_lockstep_group():
    from simulator.config import load_scenario, resolve_hardware
    from simulator.serving.capacity import resolve_serving

    path = Path(__file__).resolve().parents[2] / "scenarios" / "qwen3_30b_a3b_fp8_1xh100_vllm.yaml"
    dep = ["serving.engine=trtllm-1.0", "cluster.num_gpus=2", "parallel.dp=2", "parallel.ep=2"]

    def router(overrides):
        s = load_scenario(path, overrides)
        return resolve_serving(s, resolve_hardware(s)).replicas.router

    assert router(dep) == "attention_dp"  # TensorRT-LLM 1.0's attention-DP queue
    assert router([*dep, "serving.replicas.router=least_loaded"]) == "least_loaded"  # the scenario's own
    assert router(["serving.engine=trtllm-1.0", "cluster.num_gpus=2", "parallel.dp=2"]) == "round_robin"  # no group
    assert router(dep[1:]) == "vllm_dp"  # vLLM V1's data-parallel load balancer (serving.dp_router)
    assert router(["cluster.num_gpus=2", "parallel.dp=2"]) == "round_robin"  # vLLM's independent dense ranks


def test_the_queue_needs_a_lockstep_group(pricer):
    spec = make_spec(replicas={"count": 2, "router": "attention_dp"})
    with pytest.raises(ServingError, match=r"router = attention_dp: needs a lockstep group of dp ranks"):
        simulate_serving(spec, pricer, [Request(0, 0.0, 8, 2)])
