"""Multi-turn conversations (workload.conversation): the requests a spec makes, a hand-computed schedule with and
without the prefix cache, the turns' arrivals, the refusals, a property against step-by-step runs and the outputs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.config.serving import ConversationSpec, ServingError
from simulator.serving.simulate import simulate_serving
from simulator.serving.workload import Request, generate_requests
from tests.serving.conftest import make_spec
from tests.serving.test_adp_balance import balanced_specs
from tests.serving.test_fast_forward import same_either_way
from tests.serving.test_properties import specs
from tests.serving.test_simulate import conservation_holds

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

# Every use of the scheduler's kept count of unreferenced cached units checks it against a recount (conftest).
pytestmark = pytest.mark.usefixtures("recount_unreferenced")


def conversation_spec(caching: bool, turns: int = 2, think_time_s: float = 1.0, **workload):
    # BASE: chunked_prefill, 4 sequences, 64 tokens an iteration, blocks of 16 tokens, 64 blocks
    return make_spec(
        workload={
            "arrivals": {"kind": "closed_loop", "concurrency": 1},
            "num_requests": 2,
            "conversation": {"turns": turns, "think_time_s": think_time_s},
            **workload,
        },
        scheduler={"prefix_caching": caching},
    )


def test_a_turns_prompt_is_the_conversation_so_far_and_a_new_message():
    spec = make_spec(
        workload={
            "arrivals": {"kind": "poisson", "rate_per_s": 2.0},
            "num_requests": 7,
            "input_len": {"kind": "fixed", "tokens": 10},
            "output_len": {"kind": "fixed", "tokens": 3},
            "conversation": {"turns": 3},
        }
    )
    requests = generate_requests(spec)
    # conversation 0: 10; 10 + 3 + 10 = 23; 23 + 3 + 10 = 36; conversation 2 has one turn of the 7
    assert [(r.conversation, r.turn, r.input_tokens, r.history_tokens) for r in requests] == [
        (0, 0, 10, 0),
        (0, 1, 23, 13),
        (0, 2, 36, 26),
        (1, 0, 10, 0),
        (1, 1, 23, 13),
        (1, 2, 36, 26),
        (2, 0, 10, 0),
    ]
    assert all(r.output_tokens == 3 for r in requests)
    # the conversations start at the arrival process's first three times; later turns are sent when one ends
    plain = generate_requests(
        spec.model_copy(update={"workload": spec.workload.model_copy(update={"conversation": None})})
    )
    assert [requests[i].arrival_s for i in (0, 3, 6)] == [plain[i].arrival_s for i in range(3)]
    assert all(math.isnan(r.arrival_s) for r in requests if r.turn)


def test_the_same_seed_draws_the_same_messages_and_replies():
    lengths = {"input_len": {"kind": "uniform", "min_tokens": 1, "max_tokens": 20}}
    lengths["output_len"] = {"kind": "uniform", "min_tokens": 1, "max_tokens": 9}
    workload = {"arrivals": {"kind": "closed_loop", "concurrency": 2}, "num_requests": 6, **lengths}
    plain = generate_requests(make_spec(workload=workload))
    talk = generate_requests(make_spec(workload={**workload, "conversation": {"turns": 2}}))
    assert [r.output_tokens for r in talk] == [r.output_tokens for r in plain]
    assert [r.input_tokens - r.history_tokens for r in talk] == [r.input_tokens for r in plain]
    assert [talk[i].history_tokens for i in (1, 3, 5)] == [
        plain[i].input_tokens + plain[i].output_tokens for i in (0, 2, 4)
    ]


# LinearPricer(0.25, 1/16, 1/128): an iteration costs 0.25 + new tokens / 16 + context tokens / 128.
def test_the_next_turn_reads_the_conversation_from_the_cache(pricer):
    # turn 1: 40 prompt tokens, 2 out; turn 2: its 42 and a new message of 8 (50), 2 out, sent 1 s after turn 1
    requests = [Request(0, 0.0, 40, 2, 0, 0, 0), Request(1, math.nan, 50, 2, 0, 1, 42)]
    cold = simulate_serving(conversation_spec(False), pricer, requests)
    warm = simulate_serving(conversation_spec(True), pricer, requests)
    # turn 1 alike: prompt 0.25 + 40/16 = 2.75, decode 0.25 + 1/16 + 40/128 = 0.625 -> ends at 3.375
    for run in (cold, warm):
        assert run.records[0].token_times_s.tolist() == [2.75, 3.375]
        assert run.records[1].arrival_s == 4.375
    # turn 2 without the cache: its 50 tokens, 0.25 + 50/16 = 3.375 -> 7.75; with it turn 1's two whole blocks
    # (32 of the 41 tokens it computed: its last reply token was sampled, not computed) are read and 18 computed:
    # 0.25 + 18/16 + 32/128 = 1.625 -> 6.0; then a decode at context 50: 0.25 + 1/16 + 50/128 = 0.703125
    assert cold.records[1].token_times_s.tolist() == [7.75, 8.453125]
    assert warm.records[1].token_times_s.tolist() == [6.0, 6.703125]
    assert cold.prefix_cache is None
    assert warm.prefix_cache == (32, 90)


def test_a_closed_loop_starts_a_new_conversation_when_one_ends(pricer):
    # concurrency 1: conversation 1 starts when conversation 0's last turn ends, not when its first does
    requests = [Request(i, math.nan, 8, 1, i // 2, i % 2, 9 * (i % 2)) for i in range(4)]
    requests[1] = Request(1, math.nan, 17, 1, 0, 1, 9)
    requests[3] = Request(3, math.nan, 17, 1, 1, 1, 9)
    run = simulate_serving(conversation_spec(False, think_time_s=0.5, num_requests=4), pricer, requests)
    arrivals = [r.arrival_s for r in run.records]
    finishes = [r.finish_s for r in run.records]
    assert arrivals[0] == 0.0
    assert arrivals[1] == finishes[0] + 0.5  # the think time
    assert arrivals[2] == finishes[1]  # the closed loop's next conversation, at once
    assert arrivals[3] == finishes[2] + 0.5


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ({"duration_s": 10.0, "num_requests": None}, "conversation: give num_requests"),
        ({"shared_prefix": {"tokens": 8}}, "conversation and shared_prefix: give one of them"),
    ],
)
def test_a_conversation_refuses_what_it_cannot_mean(workload, message):
    with pytest.raises(ServingError, match=message):
        make_spec(
            workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}, "conversation": {"turns": 2}, **workload}
        )


def test_a_trace_carries_its_own_prompts(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0,4,2\n")
    with pytest.raises(ServingError, match="conversation: a trace carries its own prompts"):
        make_spec(
            workload={
                "arrivals": {"kind": "trace", "path": str(trace)},
                "input_len": None,
                "output_len": None,
                "conversation": {"turns": 2},
            }
        )


def test_a_conversation_longer_than_the_cache_is_refused_by_its_turn():
    # 64 blocks of 16 tokens: 1,024 tokens; the third turn of 400 + 100 messages and replies needs 1,300
    spec = make_spec(
        workload={
            "arrivals": {"kind": "closed_loop", "concurrency": 1},
            "num_requests": 3,
            "input_len": {"kind": "fixed", "tokens": 400},
            "output_len": {"kind": "fixed", "tokens": 100},
            "conversation": {"turns": 3},
        },
        scheduler={"max_num_batched_tokens": 2048},
    )
    with pytest.raises(ServingError, match=r"request 2 \(turn 3\)"):
        generate_requests(spec)


@pytest.mark.parametrize(
    ("scenario", "overrides", "message"),
    [
        (
            "mixtral_8x7b_8xh100_disagg.yaml",
            [
                "serving.workload.conversation={turns: 2}",
                "serving.workload.duration_s=null",
                "serving.workload.num_requests=400",
            ],
            "serving.workload.conversation: not modelled for disaggregated deployments",
        ),
        (
            "gpt_oss_20b_1xh200_vllm.yaml",
            ["serving.workload.conversation={turns: 2}"],
            "not modelled for a model with sliding-window layers .* remove workload.conversation",
        ),
    ],
)
def test_serve_refuses_conversations_where_they_are_not_modelled(tmp_path, capsys, scenario, overrides, message):
    from simulator.cli import main

    argv = ["serve", str(SCENARIOS / scenario), "--out", str(tmp_path / "out")]
    assert main([*argv, *(a for o in overrides for a in ("--set", o))]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err)


@st.composite
def conversation_specs(draw):
    """specs() with conversations of 2-3 turns (think time 0 or 0.5 s) and the cache on or off."""
    spec = draw(specs(max_output_tokens=8))
    caching = draw(st.booleans())
    if caching and spec.scheduler.policy == "static":
        spec = spec.model_copy(update={"scheduler": spec.scheduler.model_copy(update={"policy": "continuous"})})
    return with_conversations(draw, spec, caching)


def with_conversations(draw, spec, caching: bool):
    """spec with conversations of 2-3 turns (think time 0 or 0.5 s), prefix caching as given, the KV cache and the
    token budget raised to hold a conversation's last turn whole."""
    scheduler = spec.scheduler
    turns = draw(st.integers(2, 3))
    w = spec.workload
    longest = turns * (w.input_len.max_tokens + w.output_len.max_tokens) + (w.max_new_tokens or 0)
    kv = scheduler.kv_cache
    kv = kv.model_copy(update={"capacity_blocks": max(kv.capacity_blocks, longest // kv.block_size_tokens + 3)})
    scheduler = scheduler.model_copy(
        update={
            "prefix_caching": caching,
            "kv_cache": kv,
            "max_num_batched_tokens": max(scheduler.max_num_batched_tokens, longest),
        }
    )
    conversation = ConversationSpec(turns=turns, think_time_s=draw(st.sampled_from([0.0, 0.5])))
    return spec.model_copy(
        update={"workload": w.model_copy(update={"conversation": conversation}), "scheduler": scheduler}
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversation_specs())
def test_conversations_finish_every_turn_in_order_and_decode_runs_change_nothing(spec):
    fast, slow = same_either_way(spec)
    conservation_holds(slow)
    requests = generate_requests(spec)
    think_s = spec.workload.conversation.think_time_s
    for request, rec in zip(requests, slow.records):
        if request.turn:  # sent think_time_s after the turn before ended
            assert rec.arrival_s == slow.records[request.request_id - 1].finish_s + think_s
    if spec.scheduler.prefix_caching:
        hit, admitted = fast.prefix_cache
        assert 0 <= hit < admitted
        if not fast.preemptions:  # (a recomputed turn reads its own blocks again)
            assert hit <= sum(r.history_tokens for r in requests)
    else:
        assert fast.prefix_cache is None


@st.composite
def replicated_conversation_specs(draw):
    """Conversations with the cache on, on 2-3 replicas: independent ones behind each router, or test_adp_balance's
    lockstep groups (TensorRT-LLM's scheduler, its balance and attention-DP queue)."""
    if draw(st.booleans()):
        return with_conversations(draw, draw(balanced_specs()), True)
    spec = draw(specs(max_output_tokens=8))
    router = draw(st.sampled_from(["round_robin", "least_loaded", "session", "vllm_dp"]))
    replicas = spec.replicas.model_copy(update={"count": draw(st.integers(2, 3)), "router": router})
    spec = spec.model_copy(update={"replicas": replicas})
    return with_conversations(draw, spec, spec.scheduler.policy != "static")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replicated_conversation_specs())
def test_conversations_on_replicas_finish_alike_step_by_step(spec):
    fast, slow = same_either_way(spec)
    conservation_holds(slow)


def test_the_session_router_keeps_a_conversation_on_one_replica(pricer):
    # 4 conversations of 3 turns (16 + 2, then 18 + 16 = 34 + 2, then 52 + 2) on two replicas, 4 in flight
    spec = make_spec(
        workload={
            "arrivals": {"kind": "closed_loop", "concurrency": 4},
            "num_requests": 12,
            "input_len": {"kind": "fixed", "tokens": 16},
            "output_len": {"kind": "fixed", "tokens": 2},
            "conversation": {"turns": 3},
        },
        scheduler={"prefix_caching": True},
        replicas={"count": 2, "router": "session"},
    )
    run = simulate_serving(spec, pricer)
    requests = generate_requests(spec)
    assert [rec.replica for rec in run.records] == [r.conversation % 2 for r in requests]
    # each later turn reads the whole 16-token blocks of the turn before (its 17 computed tokens: 16; its 35: 32)
    assert run.prefix_cache == (4 * (16 + 32), 4 * (16 + 34 + 52))
    # round robin sends turns to either replica: what a turn finds is what ran there
    rr = simulate_serving(
        spec.model_copy(update={"replicas": spec.replicas.model_copy(update={"router": "round_robin"})}), pricer
    )
    assert rr.prefix_cache[0] < run.prefix_cache[0]


def test_launch_says_how_to_route_by_session(tmp_path):
    from simulator.cli import main

    out = tmp_path / "launch"
    sets = [
        "serving.workload.conversation={turns: 2}",
        "serving.replicas.router=session",
        "cluster.num_gpus=2",
        "parallel.dp=2",
    ]
    argv = ["launch", str(SCENARIOS / "qwen3_30b_a3b_fp8_1xh100_vllm.yaml"), "--out", str(out)]
    assert main([*argv, *(a for o in sets for a in ("--set", o))]) == 0
    assert "vLLM production-stack's --routing-logic session" in (out / "vllm.sh").read_text()
    assert "unless a request names its data_parallel_rank" in (out / "sglang.sh").read_text()


def test_serve_prints_the_conversations_and_what_the_cache_read(tmp_path, capsys):
    from simulator.cli import main

    out = tmp_path / "out"
    sets = [
        "serving.workload.conversation={turns: 2, think_time_s: 1}",
        "serving.workload.num_requests=20",
        "serving.workload.arrivals={kind: poisson, rate_per_s: 5}",
    ]
    argv = ["serve", str(SCENARIOS / "qwen3_30b_a3b_fp8_1xh100_vllm.yaml"), "--out", str(out)]
    assert main([*argv, *(a for o in sets for a in ("--set", o))]) == 0
    printed = capsys.readouterr().out
    assert "20 measured requests (poisson arrivals) in conversations of 2 turns 1 s apart, chunked_prefill" in printed
    # 10 conversations of 1,024 + 128 and 2,176 + 128: each second turn reads turn 1's whole 16-token blocks,
    # (1,024 + 128 - 1) // 16 x 16 = 1,136 tokens, of 10 x (1,024 + 2,176) = 32,000 prompt tokens admitted
    line = "prefix cache: 11,360 of 32,000 prompt tokens read from the cache (35.5 %), conversations of 2 turns"
    assert line in printed
    assert line.replace("prefix", "Prefix", 1) in (out / "summary.md").read_text()
    # by turn: the second turn's prompts of 2,176 tokens, 1,136 of them from the cache (52.2 %)
    assert "over prompts of 1,024 / 2,176 tokens, 0.0 / 52.2 % of them from the cache" in printed
    table = pd.read_csv(out / "requests.csv")
    assert table["turn"].tolist() == [1, 2] * 10 and table["conversation"].tolist() == [i // 2 for i in range(20)]
    assert table["cached_tokens"].tolist() == [0, 1136] * 10


def test_launch_turns_the_cache_off_where_conversations_were_simulated_without_it(tmp_path):
    from simulator.cli import main

    out = tmp_path / "launch"
    sets = ["serving.workload.conversation={turns: 2}", "serving.scheduler.prefix_caching=false"]
    argv = ["launch", str(SCENARIOS / "qwen3_30b_a3b_fp8_1xh100_vllm.yaml"), "--out", str(out)]
    assert main([*argv, *(a for o in sets for a in ("--set", o))]) == 0
    assert "--no-enable-prefix-caching" in (out / "vllm.sh").read_text()


def test_arrival_order_is_checked_on_the_conversations_starts_only(pricer):
    requests = [Request(0, 1.0, 8, 1, 0, 0, 0), Request(1, math.nan, 17, 1, 0, 1, 9), Request(2, 0.5, 8, 1, 1, 0, 0)]
    spec = conversation_spec(False, num_requests=3, arrivals={"kind": "poisson", "rate_per_s": 1.0})
    with pytest.raises(ServingError, match=r"requests\[2\].arrival_s = 0.5 is before"):
        simulate_serving(spec, pricer, requests)
    requests[2] = Request(2, 1.5, 8, 1, 1, 0, 0)
    run = simulate_serving(spec, pricer, requests)
    assert np.isfinite([r.arrival_s for r in run.records]).all()
