"""Redundant expert copies (parallel.redundant_experts): EPLB's placement by hand, the layout rules, weights per
GPU, and the token copies each GPU's experts receive in the DAG."""

from __future__ import annotations

import pytest
from conftest import TINY_MOE, make_scenario
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.config import ParallelSpec, ScenarioError, with_layout
from simulator.graph import build_dag
from simulator.memory import weight_bytes_per_gpu
from simulator.pipeline import run_scenario
from simulator.placement import Placement, eplb_slots, routing_summary
from simulator.report.summary import summary_dict, summary_markdown
from simulator.sweep.layouts import enumerate_layouts
from simulator.verify import verify_dag

# TINY_MOE (4 experts, top-2, hidden 64, expert FFN 128, gelu, fp16) on 3 GPUs: attention DP3, EP3 with 2 copies:
# 6 slots, 2 per GPU. Batch 6: 2 sequences of 16 tokens per GPU.
EP3 = {"tp": 1, "dp": 3, "ep": 3, "pp": 1, "redundant_experts": 2}


def _ep3(**parallel):
    return make_scenario(
        TINY_MOE,
        parallel={**EP3, **parallel},
        cluster={"num_gpus": 3},
        workload={"batch_size": 6, "input_len_tokens": 16, "output_len_tokens": 3},
    )


def test_skewed_loads_by_hand():
    # copies: e0 (0.4) then e1 (0.3 > 0.2 = e0's 0.4 / 2); replicas 0.2 e0, 0.2 e0, 0.2 e2, 0.15 e1, 0.15 e1, 0.1 e3
    # packed heaviest first onto the least-loaded rank with room that lacks the expert: rank 0 gets e0, e2, e1
    # (0.55), rank 1 e0, e1, e3 (0.45)
    slots = eplb_slots((0.4, 0.3, 0.2, 0.1), 2, 2)
    assert slots == (((0, 0.5), (1, 0.5), (2, 1.0)), ((0, 0.5), (1, 0.5), (3, 1.0)))


def test_even_routing_over_256_experts_on_72_ranks():
    slots = eplb_slots((1 / 256,) * 256, 72, 32)
    assert all(len(rank) == 4 for rank in slots)
    # whole experts 32..255 dealt round-robin (the 4th round reaches ranks 0-7), then the halves of 0..31 go two by
    # two to ranks 8..71
    for r in range(72):
        whole = [32 + r, 104 + r, 176 + r] + ([248 + r] if r < 8 else [])
        halves = [] if r < 8 else [(r - 8) // 2]
        assert slots[r] == tuple(sorted([(e, 1.0) for e in whole] + [(e, 0.5) for e in halves]))
    loads = [sum(share / 256 for _, share in rank) for rank in slots]
    assert max(loads) / (sum(loads) / 72) == pytest.approx(1.125)  # 4 / (256 / 72)


def test_every_copy_of_every_expert_is_placed_once():
    loads = (0.05, 0.3, 0.02, 0.13, 0.2, 0.1, 0.15, 0.05)
    slots = eplb_slots(loads, 4, 4)
    shares: dict[int, float] = {}
    for rank in slots:
        assert len(rank) == 3
        for e, share in rank:
            shares[e] = shares.get(e, 0.0) + share
    assert shares == pytest.approx({e: 1.0 for e in range(8)})


def test_without_copies_the_blocks_are_contiguous():
    pl = Placement.of(make_scenario(TINY_MOE))
    assert pl.rank_slots((0.25,) * 4) == (((0, 1.0), (1, 1.0)), ((2, 1.0), (3, 1.0)))
    assert [pl.experts_of_gpu(g) for g in range(4)] == [[0, 1], [2, 3], [0, 1], [2, 3]]


def test_copies_make_a_non_dividing_ep_valid():
    pl = Placement.of(_ep3())
    assert pl.slots_per_rank == 2
    # copies: e0, then e1 (ties to the lower index); e2 -> r0, e3 -> r1, e0 -> r2, e0 -> r0, e1 -> r2, e1 -> r1
    assert [pl.experts_of_gpu(g) for g in range(3)] == [[0, 2], [1, 3], [0, 1]]
    assert _ep3().parallel.label == "DP3 EP3+2"


def test_layout_errors_name_the_field_and_the_fix():
    with pytest.raises(
        ScenarioError,
        match=r"parallel.ep: ep = 3 must divide model.num_experts = 4 \+ "
        r"parallel.redundant_experts = 1 \(try ep in \[1, 2, 4\], or parallel.redundant_experts = 2",
    ):
        _ep3(redundant_experts=1)
    with pytest.raises(ScenarioError, match="parallel.redundant_experts: redundant expert copies need a routed MoE"):
        make_scenario(
            TINY_MOE,
            model={**TINY_MOE["model"], "moe_impl": "capacity"},
            parallel={**EP3},
            cluster={"num_gpus": 3},
            workload={"batch_size": 6, "input_len_tokens": 16, "output_len_tokens": 3},
        )


def test_weights_count_every_slot():
    # per layer: attention 16384 + 2 slots x 16384 + router 256 + norms 128 parameters, 4 layers, fp16
    for g in range(3):
        assert weight_bytes_per_gpu(_ep3(), g) == 4 * (16384 + 2 * 16384 + 256 + 128) * 2 == 396288


def test_each_gpu_gets_its_copies_share_of_the_tokens():
    s = _ep3()
    dag = build_dag(s)
    assert all(c.ok for c in verify_dag(dag, s)), [c for c in verify_dag(dag, s) if not c.ok]
    # a prefill layer: 32 tokens x top-2 = 64 copies per GPU, 192 per EP group, 48 per expert; GPU 0 holds half of
    # e0 and all of e2 (24 + 48 = 72 rows), GPU 1 half of e1 and all of e3 (72), GPU 2 halves of e0 and e1 (48)
    rows = {}
    for _, a in dag.nodes(data=True):
        if a["op"] == "expert_fc1" and a["phase"] == "prefill" and a["layer"] == 0:
            rows[a["gpu"]] = dict(zip(a["experts"], a["expert_tokens"]))
    assert rows == {0: {0: 24.0, 2: 48.0}, 1: {1: 24.0, 3: 48.0}, 2: {0: 24.0, 1: 24.0}}
    assert routing_summary(s)["max_over_mean_tokens_per_ep_rank"] == pytest.approx(72 / 64)


def test_a_sweep_keeps_the_scenarios_copies_to_its_own_layout():
    s = _ep3()
    layouts = enumerate_layouts(s, microbatches=(1,))
    own = [p for p in layouts if p.redundant_experts]
    assert own == [s.parallel]  # the scenario's layout, with its copies, once
    plain = ParallelSpec.of_degrees(1, 3, 1, 1, 1, 1)
    assert with_layout(s, plain).parallel.redundant_experts == 0
    same_degrees = s.parallel.model_copy(update={"redundant_experts": 0})
    with pytest.raises(ScenarioError, match="ep = 3 must divide"):  # checked, not the scenario returned as is
        with_layout(s, same_degrees)
    assert s.parallel.degrees() == {
        "pp": 1,
        "dp": 3,
        "tp": 1,
        "ep": 3,
        "etp": 1,
        "microbatches": 1,
        "redundant_experts": 2,
    }
    assert ParallelSpec(**s.parallel.degrees()) == s.parallel


def test_the_summary_names_the_copies():
    summary = summary_dict(run_scenario(_ep3(), verify=False))
    assert summary["layout"]["redundant_experts"] == 2
    assert "TP=1 EP=3 (+2 redundant experts) ETP=1 PP=1 DP=3" in summary_markdown(summary)


def test_a_scenario_with_copies_sweeps_every_ep_of_a_stage_with_the_fewest_copies():
    six = make_scenario(
        TINY_MOE,
        parallel={"tp": 1, "dp": 6, "ep": 6, "pp": 1, "redundant_experts": 2},
        cluster={"num_gpus": 6, "gpus_per_node": 6},
        workload={"batch_size": 6, "input_len_tokens": 16, "output_len_tokens": 3},
    )
    found = {(p.ep, p.redundant_experts) for p in enumerate_layouts(six, microbatches=(1,)) if p.pp == 1 and p.tp == 1}
    # 4 experts: ep 1, 2 need no copies; 3 needs 2 (6 slots), 6 needs 2 (1 slot per rank)
    assert found == {(1, 0), (2, 0), (3, 2), (6, 2)}
    plain = make_scenario(
        TINY_MOE,
        parallel={"tp": 1, "dp": 6, "ep": 2, "pp": 1},
        cluster={"num_gpus": 6, "gpus_per_node": 6},
        workload={"batch_size": 6, "input_len_tokens": 16, "output_len_tokens": 3},
    )
    found = {
        (p.ep, p.redundant_experts) for p in enumerate_layouts(plain, microbatches=(1,)) if p.pp == 1 and p.tp == 1
    }
    assert found == {(1, 0), (2, 0)}  # 4 does not divide 6 GPUs; without copies ep divides the experts


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 24).flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=n, max_size=n).filter(lambda w: sum(w) > 0),
            st.integers(1, 12),
            st.integers(0, 30),
        )
    )
)
def test_eplb_places_every_copy_of_every_expert_and_fills_every_rank(case):
    weights, ep, extra = case
    n = len(weights)
    redundant = extra + (-n - extra) % ep  # a copy count that fills the ranks
    loads = tuple(w / sum(weights) for w in weights)
    slots = eplb_slots(loads, ep, redundant)
    assert len(slots) == ep
    shares: dict[int, float] = {}
    for rank in slots:
        assert len({e for e, _ in rank}) == len(rank)  # a rank lists an expert once (its copies merged)
        for e, share in rank:
            assert 0.0 < share <= 1.0
            shares[e] = shares.get(e, 0.0) + share
    assert shares == pytest.approx(dict.fromkeys(range(n), 1.0))  # every expert's tokens, all of them, placed
    # every rank lists at most its slots (copies of one expert on one rank are merged into one entry)
    assert all(len(rank) <= (n + redundant) // ep for rank in slots)
    assert n <= sum(len(rank) for rank in slots) <= n + redundant
