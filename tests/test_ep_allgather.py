"""The expert group's exchange as vLLM's allgather_reducescatter backend runs it (runtime.ep_dispatch allgather,
graph.layers.LayerBuilder.build_layer with ring_collective): an all-gather of every rank's tokens to the whole group,
the experts on the copies routed to each rank, a reduce-scatter back. Hand-computed bytes, the same expert work as the
all-to-all flow, and its cost against the all-to-all when top_k is below the group's size."""

from __future__ import annotations

from collections import Counter

import pytest

from simulator.config import resolve_hardware
from simulator.graph import build
from simulator.simulate import simulate_dag
from tests.conftest import TINY_MOE, make_scenario

# 4 layers, hidden 64, 4 experts (top-2), fp16; DP4 attention with the experts over the 4 ranks (EP4)
DP4_EP4 = {"tp": 1, "ep": 4, "pp": 1, "dp": 4, "microbatches": 1}


def scenario(dispatch: str, parallel: dict | None = None):
    return make_scenario(
        TINY_MOE,
        parallel=parallel or DP4_EP4,
        runtime={"moe_dispatch": "all_to_all", "ep_dispatch": dispatch},
        workload={"batch_size": 8},
    )


def test_one_all_gather_and_one_reduce_scatter_per_moe_layer_by_hand():
    dag = build(scenario("allgather"))
    ops = Counter(a["op"] for a in dag.attrs if a["phase"] == "prefill")
    assert ops["ep_allgather"] == ops["ep_reducescatter"] == 4  # one expert group, 4 MoE layers
    assert ops["a2a_dispatch"] == ops["a2a_combine"] == 0
    gather = next(a for a in dag.attrs if a["op"] == "ep_allgather" and a["phase"] == "prefill")
    # each dp rank holds 8 / 4 = 2 sequences x 16 tokens = 32 tokens: hidden 64 in fp16, top-2 ids (int32) and
    # weights (fp32); every rank receives the other 3 ranks' tokens
    per_rank = 32 * (64 * 2 + 2 * (4 + 4))
    assert gather["collective"] == "all_gather" and gather["message_bytes"] == 4 * per_rank
    assert gather["recv_bytes"] == (3 * per_rank,) * 4
    scatter = next(a for a in dag.attrs if a["op"] == "ep_reducescatter" and a["phase"] == "prefill")
    assert scatter["collective"] == "reduce_scatter" and scatter["message_bytes"] == 4 * 32 * 64 * 2


def test_both_exchanges_do_the_same_expert_work():
    flops = {}
    for d in ("all_to_all", "allgather"):
        dag = build(scenario(d))
        flops[d] = sum(a["flops"] for a in dag.attrs if a["op"] in ("expert_fc1", "expert_fc2"))
    assert flops["allgather"] == pytest.approx(flops["all_to_all"])


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_gathering_every_token_costs_more_than_sending_the_routed_copies(phase):
    """Top-2 of 4 experts over 4 ranks: the all-to-all moves each token's 2 copies (3/4 of them off the rank), the
    all-gather each token to all 3 other ranks."""
    times = {}
    for d in ("all_to_all", "allgather"):
        s = scenario(d)
        sim = simulate_dag(build(s), s, resolve_hardware(s))
        comm = sim.ops[(sim.ops["phase"] == phase) & (sim.ops["category"] == "ep_comm")]
        times[d] = comm["duration_s"].sum()
    assert times["allgather"] > times["all_to_all"] > 0


def test_the_engines_tp_moe_is_not_affected():
    """A TP group's experts priced as the engines run them (moe_dispatch allreduce) have no expert-group exchange."""
    s = make_scenario(
        TINY_MOE,
        parallel={"tp": 4, "ep": 4, "pp": 1, "dp": 1, "microbatches": 1},
        runtime={"moe_dispatch": "allreduce", "ep_dispatch": "allgather"},
    )
    ops = Counter(a["op"] for a in build(s).attrs)
    assert ops["ep_allgather"] == ops["ep_reducescatter"] == 0
