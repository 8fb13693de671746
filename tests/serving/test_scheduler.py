"""Scheduler policies: what each iteration batches."""

from __future__ import annotations

import pytest

from simulator.config.serving import ServingError
from simulator.serving.pricing import SeqWork
from simulator.serving.scheduler import Scheduler, Sequence
from simulator.serving.simulate import simulate_serving
from simulator.serving.workload import Request, generate_requests
from tests.serving.conftest import RecordingPricer, make_spec

OPEN = {"arrivals": {"kind": "poisson", "rate_per_s": 1.0}}


def test_chunked_prefill_splits_a_long_prompt_and_never_starves_decodes():
    spec = make_spec(
        workload=OPEN, scheduler={"policy": "chunked_prefill", "max_num_batched_tokens": 32, "chunk_size_tokens": 8}
    )
    pricer = RecordingPricer()
    # Request 0 (8 + 10 tokens) is decoding when request 1's 40-token prompt arrives at 1.0.
    run = simulate_serving(spec, pricer, [Request(0, 0.0, 8, 10), Request(1, 1.0, 40, 2)])
    chunks = [[w for w in b if w.new_tokens > 1] for b in pricer.batches]
    with_chunk = [(b, c) for b, c in zip(pricer.batches, chunks) if c]
    # The prefill of request 0 (8 tokens), then 5 chunks of 8 for request 1, each with context 0, 8, ... 32.
    assert [c[0] for _, c in with_chunk[1:]] == [SeqWork(8, k * 8) for k in range(5)]
    # Every iteration that carries one of request 1's chunks also carries request 0's decode step.
    assert all(any(w.new_tokens == 1 for w in b) for b, _ in with_chunk[1:])
    assert run.records[1].first_token_s == run.timeseries["start_s"][6] + run.timeseries["iteration_s"][6]


def test_chunked_prefill_puts_decodes_first_then_prefill_chunks():
    spec = make_spec(workload=OPEN, scheduler={"policy": "chunked_prefill", "max_num_batched_tokens": 16})
    pricer = RecordingPricer()
    simulate_serving(spec, pricer, [Request(0, 0.0, 8, 5), Request(1, 0.8, 40, 2)])
    # At 1.125 request 0 decodes (1 token) and request 1 takes the remaining budget: 15 tokens.
    assert pricer.batches[2] == (SeqWork(1, 9), SeqWork(15, 0))


def test_prefill_first_chunked_runs_each_chunk_alone_and_holds_the_decodes():
    # SGLang without --enable-mixed-chunk: prefill and decode never share an iteration
    spec = make_spec(
        workload=OPEN,
        scheduler={"policy": "prefill_first_chunked", "max_num_batched_tokens": 32, "chunk_size_tokens": 8},
    )
    pricer = RecordingPricer()
    # Request 0 (8 + 10 tokens) prefills (0.75 s) and decodes once (0.375 s); request 1's 40-token prompt has
    # arrived by 1.125: its five chunks run alone, request 0 waits, then both decode together.
    run = simulate_serving(spec, pricer, [Request(0, 0.0, 8, 10), Request(1, 1.0, 40, 2)])
    assert pricer.batches[:2] == [(SeqWork(8, 0),), (SeqWork(1, 8),)]
    assert pricer.batches[2:7] == [(SeqWork(8, k * 8),) for k in range(5)]
    assert pricer.batches[7] == (SeqWork(1, 9), SeqWork(1, 40))
    ts = run.timeseries
    assert run.records[1].first_token_s == ts["start_s"][6] + ts["iteration_s"][6]
    # request 0's next token waits for request 1's five chunks: the gap spans iterations 2 to 7
    gap = run.records[0].token_times_s[2] - run.records[0].token_times_s[1]
    assert gap == sum(ts["iteration_s"][2:8])


def test_prefill_first_chunked_fills_the_budget_with_waiting_prompts_and_cuts_the_last():
    spec = make_spec(workload=OPEN, scheduler={"policy": "prefill_first_chunked", "max_num_batched_tokens": 16})
    pricer = RecordingPricer()
    simulate_serving(spec, pricer, [Request(0, 0.0, 10, 3), Request(1, 0.0, 10, 3)])
    # both admitted into one prefill-only iteration, request 1 cut at the budget; its rest runs alone next
    # (request 0, in decode phase already, waits); then the two decode together
    assert pricer.batches[:3] == [
        (SeqWork(10, 0), SeqWork(6, 0)),
        (SeqWork(4, 6),),
        (SeqWork(1, 10), SeqWork(1, 10)),
    ]


def test_only_a_mixed_policy_needs_a_budget_for_every_running_sequence():
    # chunked_prefill spends one token of the budget per decode; prefill_first_chunked decodes apart from it
    assert make_spec(scheduler={"policy": "prefill_first_chunked", "max_num_seqs": 128, "max_num_batched_tokens": 64})
    with pytest.raises(ServingError, match="max_num_batched_tokens = 64 < max_num_seqs = 128"):
        make_spec(scheduler={"policy": "chunked_prefill", "max_num_seqs": 128, "max_num_batched_tokens": 64})
    with pytest.raises(ServingError, match="smaller than one chunk"):
        make_spec(scheduler={"policy": "prefill_first_chunked", "max_num_batched_tokens": 8, "chunk_size_tokens": 16})


def test_continuous_runs_prefill_only_iterations_first():
    spec = make_spec(workload=OPEN, scheduler={"policy": "continuous"})
    pricer = RecordingPricer()
    simulate_serving(spec, pricer, [Request(0, 0.0, 8, 5), Request(1, 0.8, 40, 2)])
    # Iteration 2 starts at 0.75 (before request 1): a decode; iteration 3 starts at 1.125: request 1's
    # whole prompt alone, request 0's decode waits.
    assert pricer.batches[:4] == [
        (SeqWork(8, 0),),
        (SeqWork(1, 8),),
        (SeqWork(40, 0),),
        (SeqWork(1, 9), SeqWork(1, 40)),
    ]


def test_continuous_admits_no_more_than_the_token_budget():
    spec = make_spec(workload=OPEN, scheduler={"policy": "continuous", "max_num_batched_tokens": 20})
    pricer = RecordingPricer()
    simulate_serving(spec, pricer, [Request(i, 0.0, 8, 2) for i in range(3)])
    assert pricer.batches[0] == (SeqWork(8, 0), SeqWork(8, 0))


def test_max_num_seqs_bounds_the_running_batch():
    spec = make_spec(workload=OPEN, scheduler={"policy": "chunked_prefill", "max_num_seqs": 2})
    pricer = RecordingPricer()
    run = simulate_serving(spec, pricer, [Request(i, 0.0, 8, 4) for i in range(5)])
    assert max(len(b) for b in pricer.batches) == 2
    assert run.timeseries["running"].max() == 2


def test_admission_waits_for_free_blocks():
    # 3 blocks of 16: each request holds 1 block at admission and grows to 2 (8 + 20 - 1 tokens).
    spec = make_spec(
        workload=OPEN,
        scheduler={"policy": "chunked_prefill", "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 3}},
    )
    run = simulate_serving(spec, RecordingPricer(), [Request(i, 0.0, 8, 20) for i in range(3)])
    assert run.timeseries["kv_blocks_used"].max() <= 3
    assert all(len(r.token_times_s) == 20 for r in run.records)


def test_on_demand_admission_preempts_when_decodes_outgrow_the_cache():
    # 2 blocks of 16 tokens; each request (8 in + 20 out) ends holding 27 tokens = 2 blocks.
    spec = make_spec(workload=OPEN, scheduler={"kv_cache": {"block_size_tokens": 16, "capacity_blocks": 2}})
    run = simulate_serving(spec, RecordingPricer(), [Request(0, 0.0, 8, 20), Request(1, 0.0, 8, 20)])
    assert run.preemptions >= 1


@pytest.mark.parametrize("policy", ["chunked_prefill", "continuous", "prefill_first_chunked"])
def test_reserve_admission_holds_the_whole_request_and_never_preempts(policy):
    spec = make_spec(
        workload=OPEN,
        scheduler={
            "policy": policy,
            "admission": "reserve",
            "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 2},
        },
    )
    pricer = RecordingPricer()
    run = simulate_serving(spec, pricer, [Request(0, 0.0, 8, 20), Request(1, 0.0, 8, 20)])
    assert run.preemptions == 0
    # request 0 takes both blocks at admission: request 1 waits until it finishes, then prefills alone
    assert pricer.batches[0] == (SeqWork(8, 0),)
    assert run.records[1].first_scheduled_s == run.records[0].finish_s
    assert pricer.batches[20] == (SeqWork(8, 0),)
    assert run.peak_kv_blocks == (2,)


def reserve_spec(**workload) -> object:
    return make_spec(
        workload={**OPEN, **workload},
        scheduler={"admission": "reserve", "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 3}},
    )


def test_reserve_admission_reserves_the_generation_cap_not_the_output():
    # 8 + 4 tokens hold 11 = 1 block: both requests fit 3 blocks at once. With a cap of 24 new tokens each
    # reserves 8 + 24 - 1 = 31 tokens = 2 blocks (TensorRT-LLM's promptLen + maxNewTokens), so the second
    # waits for the first to finish although its real output needs no second block.
    requests = [Request(0, 0.0, 8, 4), Request(1, 0.0, 8, 4)]
    pricer = RecordingPricer()
    run = simulate_serving(reserve_spec(), pricer, requests)
    assert pricer.batches[0] == (SeqWork(8, 0), SeqWork(8, 0))
    assert run.peak_kv_blocks == (2,)
    pricer = RecordingPricer()
    run = simulate_serving(reserve_spec(max_new_tokens=24), pricer, requests)
    assert pricer.batches[0] == (SeqWork(8, 0),)
    assert run.records[1].first_scheduled_s == run.records[0].finish_s
    assert run.peak_kv_blocks == (2,)
    assert all(len(r.token_times_s) == 4 for r in run.records)  # the outputs themselves are unchanged


def test_on_demand_admission_ignores_the_cap():
    spec = make_spec(
        workload={**OPEN, "max_new_tokens": 24},
        scheduler={"kv_cache": {"block_size_tokens": 16, "capacity_blocks": 3}},
    )
    pricer = RecordingPricer()
    simulate_serving(spec, pricer, [Request(0, 0.0, 8, 4), Request(1, 0.0, 8, 4)])
    assert pricer.batches[0] == (SeqWork(8, 0), SeqWork(8, 0))


def test_a_cap_the_reserve_can_never_hold_is_one_clear_line():
    # 8 + 40 - 1 = 47 tokens = 3 blocks of 16 > 2
    with pytest.raises(
        ServingError,
        match=r"input 8 \+ workload.max_new_tokens 40 reserved tokens = 3 blocks of 16\) can never be admitted",
    ) as info:
        make_spec(
            workload={"max_new_tokens": 40},
            scheduler={"admission": "reserve", "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 2}},
        )
    assert "\n" not in str(info.value)
    make_spec(  # on demand, only the 4 output tokens are ever held
        workload={"max_new_tokens": 40}, scheduler={"kv_cache": {"block_size_tokens": 16, "capacity_blocks": 2}}
    )


def test_the_cap_cuts_longer_outputs():
    spec = make_spec(
        workload={"output_len": {"kind": "uniform", "min_tokens": 2, "max_tokens": 12}, "max_new_tokens": 6}
    )
    outputs = [r.output_tokens for r in generate_requests(spec)]
    uncapped = [
        r.output_tokens
        for r in generate_requests(
            make_spec(workload={"output_len": {"kind": "uniform", "min_tokens": 2, "max_tokens": 12}})
        )
    ]
    assert outputs == [min(n, 6) for n in uncapped]
    assert max(uncapped) > 6


def test_the_cap_cuts_a_traces_outputs(tmp_path):
    (tmp_path / "t.csv").write_text("arrival_s,input_tokens,output_tokens\n0.0,8,3\n0.5,8,9\n")
    spec = make_spec(
        workload={
            "arrivals": {"kind": "trace", "path": "t.csv"},
            "input_len": None,
            "output_len": None,
            "num_requests": None,
            "max_new_tokens": 5,
        }
    )
    assert [r.output_tokens for r in generate_requests(spec, tmp_path)] == [3, 5]


def test_a_cap_above_the_output_does_not_tighten_the_continuous_prefill_bound():
    # Found by the property test: the reservation (1 + 3 - 1 = 3 tokens) is KV, not prefill work; the longest
    # re-prefill is the prompt and the real output, 1 + 2 - 1 = 2 tokens, within a 2-token budget.
    spec = make_spec(
        workload={
            "input_len": {"kind": "fixed", "tokens": 1},
            "output_len": {"kind": "fixed", "tokens": 2},
            "max_new_tokens": 3,
        },
        scheduler={"policy": "continuous", "max_num_seqs": 1, "max_num_batched_tokens": 2, "admission": "reserve"},
    )
    run = simulate_serving(spec, RecordingPricer())
    assert run.preemptions == 0 and all(len(r.token_times_s) == 2 for r in run.records)


def estimate_spec(policy: str = "chunked_prefill", **kv):
    return make_spec(
        workload=OPEN,
        scheduler={
            "policy": policy,
            "admission": "estimate",
            "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 4, **kv},
        },
    )


@pytest.mark.parametrize("policy", ["chunked_prefill", "prefill_first_chunked", "continuous"])
def test_estimate_admission_holds_back_a_request_whose_output_would_not_fit(policy):
    # 64 KV tokens. Request 0 (8 + 40) is admitted: 48 < 64, and takes 48 of the estimate. Request 1 needs
    # 8 + 40 = 48 >= the 16 left, and while request 0 runs the free tokens (48, then 32) less its remaining output
    # x ~0.7 stay below 48: it waits for request 0 to finish, as under reserve, where on_demand admits both at once.
    pricer = RecordingPricer()
    run = simulate_serving(estimate_spec(policy), pricer, [Request(0, 0.0, 8, 40), Request(1, 0.0, 8, 40)])
    assert pricer.batches[0] == (SeqWork(8, 0),)
    assert run.records[1].first_scheduled_s == run.records[0].finish_s
    assert pricer.batches[40] == (SeqWork(8, 0),) and run.preemptions == 0
    on_demand = RecordingPricer()
    spec = make_spec(
        workload=OPEN, scheduler={"policy": policy, "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 4}}
    )
    simulate_serving(spec, on_demand, [Request(0, 0.0, 8, 40), Request(1, 0.0, 8, 40)])
    assert on_demand.batches[0] == (SeqWork(8, 0), SeqWork(8, 0))


def test_estimate_ratio_decays_each_decode_step_and_resets_when_idle():
    sched = Scheduler(estimate_spec().scheduler)
    sched.add(Sequence(0, 0.0, 8, 3))
    step = sched.schedule(0.0)  # the prefill: no decode, no decay
    assert step.batch == (SeqWork(8, 0),) and sched.new_token_ratio == 0.7
    sched.complete(step, 1.0)
    decay = (0.7 - 0.7 * 0.14) / 600
    for k in (1, 2):
        step = sched.schedule(float(k))
        assert step.batch == (SeqWork(1, 7 + k),)
        assert sched.new_token_ratio == pytest.approx(0.7 - k * decay, rel=1e-12)
        sched.complete(step, k + 1.0)
    assert not sched.running  # 3 tokens out: finished
    assert not sched.schedule(4.0).seqs and sched.new_token_ratio == 0.7  # idle: back to the start


def test_estimate_is_re_estimated_after_a_preemption():
    # SGLang's retract_decode: (decoded + 20 x running) / (their max new tokens + 1), at most 1
    sched = Scheduler(estimate_spec(capacity_blocks=2).scheduler)
    a, b = Sequence(0, 0.0, 8, 100), Sequence(1, 0.0, 8, 200)
    for seq in (a, b):
        sched.add(seq)
        sched._admit(seq)
        assert sched._grow(seq, 16)  # one block each: the cache is full
    a.generated, b.generated = 10, 30
    sched._reestimate()
    assert sched.new_token_ratio == pytest.approx((10 + 30 + 20 * 2) / (100 + 200 + 1), rel=1e-12)
    # a needs a second block: b (the newest) is preempted, and the estimate is made again over a alone
    assert sched._grow_or_preempt(a, 17, [], [])
    assert b.state == 0 and b.preemptions == 1 and sched.running == [a]
    assert sched.new_token_ratio == pytest.approx((10 + 20) / (100 + 1), rel=1e-12)


def test_estimate_admission_refuses_a_request_longer_than_the_whole_cache_in_one_line():
    # 4 blocks of 16 = 64 tokens: 8 + 56 = 64 blocks fine on demand (63 tokens held), never admitted by estimate
    base = {"policy": "chunked_prefill", "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 4}}
    long = {"input_len": {"kind": "fixed", "tokens": 8}, "output_len": {"kind": "fixed", "tokens": 56}}
    assert make_spec(workload=long, scheduler=base)
    with pytest.raises(ServingError, match="can never be admitted under admission estimate"):
        make_spec(workload=long, scheduler={**base, "admission": "estimate"})


def decoding_at_a_block_edge(preempt: str, admission: str = "on_demand") -> tuple[Scheduler, list[Sequence]]:
    """Three running sequences holding one 16-token block each, all of a full cache, each about to decode its
    17th token (a second block): a = 8 in + 9 out, b = 12 + 5, c = 4 + 13; admitted a, b, c (c the newest)."""
    spec = make_spec(
        workload=OPEN,
        scheduler={
            "preempt": preempt,
            "admission": admission,
            "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 3},
        },
    )
    sched = Scheduler(spec.scheduler)
    seqs = [Sequence(0, 0.0, 8, 100), Sequence(1, 0.0, 12, 100), Sequence(2, 0.0, 4, 100)]
    for seq, out in zip(seqs, (9, 5, 13)):
        sched.add(seq)
        sched._admit(seq)
        assert sched._grow(seq, 16)
        seq.num_tokens, seq.num_computed, seq.generated = seq.input_tokens + out, 16, out
    return sched, seqs


def test_fewest_decoded_retracts_before_the_decode_step_until_twenty_steps_fit():
    # No free block for 3 new tokens: retract b (5 decoded, the fewest); 16 free tokens < 20 x 2 left: retract a
    # (9 < c's 13); c alone is never retracted and decodes into a freed block. b then a go to the back.
    sched, (a, b, c) = decoding_at_a_block_edge("fewest_decoded", "estimate")
    waiting = Sequence(3, 0.0, 8, 8)
    sched.add(waiting)
    step = sched.schedule(1.0)
    assert step.seqs == [c] and step.batch == (SeqWork(1, 16),)
    assert list(sched.waiting) == [waiting, b, a] and sched.preemptions == 2
    assert (a.num_computed, b.num_computed, a.kv_limit_tokens) == (0, 0, 0)
    assert sched.kv.free_blocks == 1  # c holds 2 of the 3 blocks
    # the estimate is made again over c alone (retract_decode), not decayed as well
    assert sched.new_token_ratio == pytest.approx((13 + 20) / (100 + 1), rel=1e-12)


def test_newest_preempts_as_each_sequence_needs_a_block():
    # vLLM's order on the same batch: a needs a block and preempts c (the newest), b needs one and preempts
    # itself; both go to the front of the queue, the older first.
    sched, (a, b, c) = decoding_at_a_block_edge("newest")
    step = sched.schedule(1.0)
    assert step.seqs == [a] and step.batch == (SeqWork(1, 16),)
    assert list(sched.waiting) == [b, c] and sched.preemptions == 2


def test_fewest_decoded_breaks_ties_by_the_longest_prompt_then_the_newest():
    sched, (a, b, c) = decoding_at_a_block_edge("fewest_decoded")
    for seq in (a, b, c):
        seq.generated = 5
    assert sched._victim([a, b, c]) is b  # 12 prompt tokens, the longest
    b.input_tokens = 8
    assert sched._victim([a, b, c]) is b  # a and b tie (5, 8): the newer of the two
    assert sched._victim([b, a]) is a


def test_fewest_decoded_leaves_a_batch_alone_when_its_blocks_are_free():
    sched, (a, b, c) = decoding_at_a_block_edge("fewest_decoded")
    for seq in (a, b, c):
        seq.num_computed = 15  # the 16th token still fits the block each holds
        seq.num_tokens = 16
    step = sched.schedule(1.0)
    assert step.seqs == [a, b, c] and sched.preemptions == 0


def test_schedule_conservativeness_scales_the_estimate_as_sglang_does():
    from simulator.config.serving import estimate_ratios

    # Scheduler.__init__: init = min(0.7 x c, 1), min = min(init x 0.14, 1), decay = (init - min) / 600
    assert estimate_ratios(1.0) == pytest.approx((0.7, 0.098, 0.602 / 600), rel=1e-12)
    assert estimate_ratios(0.3) == pytest.approx((0.21, 0.0294, 0.1806 / 600), rel=1e-12)
    assert estimate_ratios(2.0) == pytest.approx((1.0, 0.14, 0.86 / 600), rel=1e-12)
    spec = make_spec(
        workload=OPEN,
        scheduler={
            "admission": "estimate",
            "schedule_conservativeness": 0.3,
            "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 4},
        },
    )
    sched = Scheduler(spec.scheduler)
    sched.add(Sequence(0, 0.0, 8, 3))
    sched.complete(sched.schedule(0.0), 1.0)  # the prefill
    assert sched.new_token_ratio == pytest.approx(0.21, rel=1e-12)
    sched.schedule(1.0)  # a decode step
    assert sched.new_token_ratio == pytest.approx(0.21 - 0.1806 / 600, rel=1e-12)


def test_whole_prompts_wait_for_a_budget_that_holds_them():
    # TensorRT-LLM without chunked context (split_prompts false): at 1.125 request 0 decodes (1 token) and request
    # 1's 16-token prompt does not fit the 15 tokens left, so it waits, and request 2 behind it too (FIFO), until
    # request 0 has finished; then request 1's prompt fills the budget alone and request 2's runs whole beside its
    # first decode.
    spec = make_spec(
        workload=OPEN, scheduler={"policy": "chunked_prefill", "max_num_batched_tokens": 16, "split_prompts": False}
    )
    pricer = RecordingPricer()
    run = simulate_serving(spec, pricer, [Request(0, 0.0, 8, 5), Request(1, 0.8, 16, 2), Request(2, 0.9, 8, 2)])
    assert pricer.batches[:6] == [(SeqWork(8, 0),)] + [(SeqWork(1, 8 + k),) for k in range(4)] + [(SeqWork(16, 0),)]
    assert pricer.batches[6] == (SeqWork(1, 16), SeqWork(8, 0))
    assert run.records[1].first_scheduled_s == run.records[0].finish_s
    # split (the default), the same requests: request 1 takes the 15 tokens left at once, cut
    split = RecordingPricer()
    simulate_serving(
        make_spec(workload=OPEN, scheduler={"policy": "chunked_prefill", "max_num_batched_tokens": 16}),
        split,
        [Request(0, 0.0, 8, 5), Request(1, 0.8, 16, 2), Request(2, 0.9, 8, 2)],
    )
    assert split.batches[2] == (SeqWork(1, 9), SeqWork(15, 0))


def test_whole_prompts_refuse_a_prompt_longer_than_the_budget():
    with pytest.raises(ServingError, match=r"can never join an iteration whole: scheduler.max_num_batched_tokens = 32"):
        make_spec(
            workload={**OPEN, "input_len": {"kind": "fixed", "tokens": 40}},
            scheduler={"policy": "chunked_prefill", "max_num_batched_tokens": 32, "split_prompts": False},
        )


def test_tensorrt_llm_profiles_run_prompts_whole_and_launch_files_say_so():
    """trtllm and trtllm-1.0 fill split_prompts false (chunked context off by default); a scenario's own value wins;
    TensorRT-LLM's options turn enable_chunked_prefill on only for split prompts, and vLLM's file notes whole ones."""
    from pathlib import Path

    import yaml

    from simulator.config import parse_scenario
    from simulator.report.launch import launch_files

    path = Path(__file__).resolve().parents[2] / "scenarios" / "qwen3_30b_a3b_fp8_1xh100_vllm.yaml"
    data = yaml.safe_load(path.read_text())
    assert parse_scenario(data, "vllm").serving.scheduler.split_prompts
    for engine in ("trtllm", "trtllm-1.0"):
        data["serving"]["engine"] = engine
        assert not parse_scenario(data, engine).serving.scheduler.split_prompts
    from simulator.report.serving_summary import scheduler_line

    scheduler = parse_scenario(data, "whole").serving.scheduler.model_dump(mode="json")
    line = scheduler_line(
        {"serving": {"scheduler": scheduler, "engine": "trtllm-1.0"}, "figures": {"kv_capacity_blocks": 9}}
    )
    assert (
        line is not None and "tokens an iteration, admission reserve, prompts whole (split_prompts false); KV 9" in line
    )
    whole = launch_files(parse_scenario(data, "whole"))
    assert "enable_chunked_prefill: false" in whole["trtllm_extra_llm_api_options.yaml"]
    assert "# Note: moesim priced whole prompts (scheduler.split_prompts false" in whole["vllm.sh"]
    data["serving"]["scheduler"] = {"split_prompts": True}
    split = launch_files(parse_scenario(data, "split"))
    assert parse_scenario(data, "split").serving.scheduler.split_prompts
    assert "enable_chunked_prefill: true" in split["trtllm_extra_llm_api_options.yaml"]
    assert "whole prompts" not in split["vllm.sh"]
