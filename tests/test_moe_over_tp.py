"""The serving engines' TP MoE (runtime.moe_dispatch allreduce, graph.layers.LayerBuilder.moe_over_tp): every TP
rank holds all tokens, runs its own experts on the copies routed to them and adds its shard of the shared experts;
one TP all-reduce replaces the all-to-all dispatch and combine and the all-gather. Hand-computed structure and
bytes, memory, where it applies, and the invariant that both flows do the same expert work."""

from __future__ import annotations

from collections import Counter

import pytest

from simulator.config import ScenarioError, resolve_hardware
from simulator.graph import build
from simulator.memory import weight_bytes_per_gpu
from simulator.simulate import simulate_dag
from tests.conftest import TINY_MOE, make_scenario

# 4 layers, hidden 64, 4 experts (top-2, width 128), on TP4 x EP4 in one stage
TP4 = {"tp": 4, "ep": 4, "pp": 1, "dp": 1, "microbatches": 1}


def scenario(dispatch: str, parallel: dict | None = None, **model):
    return make_scenario(
        TINY_MOE,
        parallel=parallel or TP4,
        model={**TINY_MOE["model"], **model},
        runtime={"moe_dispatch": dispatch},
    )


def ops_of(s) -> Counter:
    return Counter(a["op"] for a in build(s).attrs)


def test_no_all_to_all_and_no_all_gather_but_one_tp_allreduce_per_moe_layer():
    s = scenario("allreduce")
    assert s.moe_allreduce
    ops = ops_of(s)
    assert ops["a2a_dispatch"] == ops["a2a_combine"] == ops["tp_allgather"] == 0
    # 4 layers x (1 prefill + 2 decode steps): the attention's all-reduce and the MoE's per TP group
    assert ops["tp_allreduce"] == 2 * 4 * 3
    a2a = ops_of(scenario("all_to_all"))
    assert a2a["a2a_dispatch"] == a2a["a2a_combine"] == a2a["tp_allgather"] == a2a["tp_allreduce"] == 4 * 3


def test_each_rank_routes_all_tokens_and_runs_its_expert_on_the_copies_sent_to_it():
    dag = build(scenario("allreduce"))
    prefill = [a for a in dag.attrs if a["phase"] == "prefill" and a["layer"] == 0]
    tokens = 4 * 16  # batch x input
    router = next(a for a in prefill if a["op"] == "router" and a["gpu"] == 1)
    assert router["in_shape"] == (tokens, 64)  # all tokens, not the 1/tp slice
    fc1 = next(a for a in prefill if a["op"] == "expert_fc1" and a["gpu"] == 1)
    # uniform routing: 64 tokens x top-2 = 128 copies over 4 experts, one expert per rank: 32 rows
    assert fc1["experts"] == (1,) and fc1["gemm"] == (32.0, 64, 128)
    attention_ar, allreduce = (a for a in prefill if a["op"] == "tp_allreduce")  # in build order
    assert allreduce["gpu"] == attention_ar["gpu"] == (0, 1, 2, 3)
    assert allreduce["message_bytes"] == tokens * 64 * 2  # [tokens, hidden] fp16
    assert allreduce["send_bytes"] == (2 * 3 / 4 * tokens * 64 * 2,) * 4  # the ring's volume, as every all-reduce


def test_shared_experts_are_sharded_over_tp_in_the_graph_and_in_memory():
    with_shared = {"num_shared_experts": 1, "shared_expert_ffn_size": 256}
    tp = scenario("allreduce", **with_shared)
    a2a = scenario("all_to_all", **with_shared)
    fc1 = next(a for a in build(tp).attrs if a["op"] == "shared_fc1" and a["phase"] == "prefill")
    assert fc1["gemm"] == (64, 64, 256 // 4)  # all 64 tokens, a quarter of the width (gelu: one up projection)
    fc1_a2a = next(a for a in build(a2a).attrs if a["op"] == "shared_fc1" and a["phase"] == "prefill")
    assert fc1_a2a["gemm"] == (16, 64, 256)  # the 1/tp slice of the tokens, the whole width
    # the shared expert's 2 x 64 x 256 fp16 weights per layer, 4 layers: a quarter of them per GPU
    shared_bytes = 4 * 2 * 64 * 256 * 2
    assert weight_bytes_per_gpu(a2a, 0) - weight_bytes_per_gpu(tp, 0) == pytest.approx(shared_bytes * 3 / 4)


@pytest.mark.parametrize(
    "parallel",
    [
        {"tp": 2, "ep": 4, "pp": 1, "dp": 2, "microbatches": 1},  # experts over dp x tp: DP attention
        {"tp": 4, "ep": 1, "pp": 1, "dp": 1, "microbatches": 1, "etp": 2},  # expert group of 2 inside TP4
        {"tp": 1, "ep": 4, "pp": 1, "dp": 4, "microbatches": 1},  # no TP
    ],
)
def test_experts_outside_the_tp_group_keep_the_all_to_all(parallel):
    s = scenario("allreduce", parallel)
    assert not s.moe_allreduce
    assert ops_of(s) == ops_of(scenario("all_to_all", parallel))


@pytest.mark.parametrize(
    "parallel",
    [
        TP4,
        {"tp": 4, "ep": 1, "etp": 4, "pp": 1, "dp": 1, "microbatches": 1},  # TP MoE: experts sharded, ep 1
        {"tp": 2, "ep": 2, "pp": 2, "dp": 1, "microbatches": 2},  # the seed's folding, two stages
        {"tp": 2, "ep": 1, "etp": 2, "pp": 1, "dp": 2, "microbatches": 1},
    ],
)
def test_both_flows_do_the_same_expert_work_and_the_dag_verifies(parallel):
    from simulator.verify import verify_dag

    flows = {d: scenario(d, parallel) for d in ("all_to_all", "allreduce")}
    expert_flops = {}
    for d, s in flows.items():
        dag = build(s)
        assert all(check.ok for check in verify_dag(dag, s))
        expert_flops[d] = sum(a["flops"] for a in dag.attrs if a["op"] in ("expert_fc1", "expert_fc2"))
    assert expert_flops["allreduce"] == pytest.approx(expert_flops["all_to_all"])


def test_a_decode_step_without_the_all_to_all_is_faster():
    times = {}
    for d in ("all_to_all", "allreduce"):
        s = scenario(d)
        sim = simulate_dag(build(s), s, resolve_hardware(s))
        decode = sim.ops[sim.ops["phase"] == "decode"]
        times[d] = decode["end_s"].max() - decode["start_s"].min()
    assert times["allreduce"] < times["all_to_all"]


def test_plain_pytorch_refuses_the_engines_dispatch():
    with pytest.raises(ScenarioError, match="moe_dispatch: allreduce is how the serving engines run"):
        make_scenario(TINY_MOE, runtime={"moe_dispatch": "allreduce", "framework": "pytorch"})


def test_the_default_follows_the_framework():
    """Unset, moe_dispatch is the engines' allreduce with framework fused and the all-to-all with plain PyTorch;
    a scenario's own choice wins (the seed declares the origin's all_to_all)."""
    bare = {k: v for k, v in TINY_MOE.items() if k != "runtime"}
    assert make_scenario(bare).runtime.moe_dispatch == "allreduce"
    assert make_scenario(bare, parallel=TP4).moe_allreduce
    plain = make_scenario(bare, runtime={"framework": "pytorch"})
    assert plain.runtime.moe_dispatch == "all_to_all" and plain.runtime.allreduce == "nccl"
    assert make_scenario(bare, runtime={"moe_dispatch": "all_to_all"}).runtime.moe_dispatch == "all_to_all"
    from tests.conftest import seed_dict

    assert seed_dict()["runtime"]["moe_dispatch"] == "all_to_all"
