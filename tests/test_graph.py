"""The operator DAG: placement, annotation, conservation against closed forms."""

from __future__ import annotations

import networkx as nx
import pytest
from conftest import DEEPSEEK_TINY, TINY_MOE, make_scenario

from simulator.costs import attention_pairs
from simulator.graph import NodeKind, build_dag, digraph
from simulator.placement import Placement


@pytest.fixture(scope="module")
def seed_small_graph():
    from conftest import seed_dict

    return build_dag(make_scenario(seed_dict(), workload={"output_len_tokens": 3}))


def test_seed_placement_matches_origin_document(seed):
    pl = Placement.of(seed)
    assert [pl.layers_of_gpu(g) for g in range(4)] == [tuple(range(8))] * 2 + [tuple(range(8, 16))] * 2
    assert pl.experts_of_gpu(0) == pl.experts_of_gpu(2) == list(range(8))
    assert pl.experts_of_gpu(1) == pl.experts_of_gpu(3) == list(range(8, 16))
    assert pl.tp_group(0, 0) == [0, 1] and pl.tp_group(1, 0) == [2, 3]
    assert pl.ep_groups(0) == [[0, 1]] and pl.ep_groups(1) == [[2, 3]]


def test_rank_order_formula():
    s = make_scenario(
        TINY_MOE,
        parallel={"tp": 2, "dp": 2, "pp": 2, "ep": 2},
        cluster={"num_gpus": 8, "gpus_per_node": 8},
        workload={"batch_size": 4},
    )
    pl = Placement.of(s)
    assert pl.gpu(stage=1, dp_rank=1, tp_rank=0) == 1 * 4 + 1 * 2 + 0 == 6
    assert pl.ep_groups(1) == [[4, 5], [6, 7]]  # experts replicated over the two dp ranks
    assert pl.experts_of_gpu(6) == [0, 1] and pl.experts_of_gpu(7) == [2, 3]


def test_seed_graph_nodes_on_their_gpus(seed_small_graph):
    g = seed_small_graph
    assert g.nodes["p.mb0.L0.g0.q_proj"]["gpu"] == 0
    assert g.nodes["p.mb0.L8.g2.expert_fc1"]["experts"] == tuple(range(8))
    assert g.nodes["p.mb0.L8.g3.expert_fc1"]["experts"] == tuple(range(8, 16))
    assert g.nodes["p.mb0.L0.s0d0.tp_allreduce"]["gpu"] == (0, 1)
    assert g.nodes["p.mb0.g1-g3.pp_send"]["gpu"] == (1, 3)


def test_seed_every_operator_present(seed_small_graph):
    ops = {a["op"] for _, a in seed_small_graph.nodes(data=True)}
    for op in (
        "q_proj",
        "k_proj",
        "v_proj",
        "attn_scores",
        "attn_softmax",
        "attn_context",
        "o_proj",
        "tp_allreduce",
        "router",
        "topk",
        "a2a_dispatch",
        "expert_fc1",
        "expert_act",
        "expert_fc2",
        "a2a_combine",
        "moe_combine",
        "tp_allgather",
        "pp_send",
        "token_send",
        "norm_attn",
        "norm_moe",
        "residual_add",
    ):
        assert op in ops, op


def test_seed_node_annotation_by_hand(seed_small_graph):
    g = seed_small_graph
    T = 128 * 10240  # prefill tokens per TP rank (dp = 1)
    q = g.nodes["p.mb0.L0.g0.q_proj"]
    assert q["flops"] == 2 * T * 512 * 256  # 8 of 16 heads x 32 on each TP rank
    assert q["in_shape"] == (T, 512) and q["out_shape"] == (128, 8, 10240, 32)
    ar = g.nodes["p.mb0.L0.s0d0.tp_allreduce"]
    assert ar["message_bytes"] == T * 512 * 2
    disp = g.nodes["p.mb0.L0.s0r0.a2a_dispatch"]
    # each TP rank routes T/2 tokens, top-2: T copies, half of them to the other GPU, 512 x 2 bytes each
    assert disp["send_bytes"] == (T / 2 * 512 * 2, T / 2 * 512 * 2)
    assert disp["recv_bytes"] == disp["send_bytes"]
    fc1 = g.nodes["p.mb0.L0.g0.expert_fc1"]
    assert fc1["flops"] == 2 * T * 512 * 1024  # 8 of 16 experts receive half of the 2T copies
    send = g.nodes["p.mb0.g0-g2.pp_send"]
    assert send["message_bytes"] == T / 2 * 512 * 2  # each rank sends only its slice
    d1 = g.nodes["d1.mb0.L0.g0.attn_scores"]
    assert d1["kv_len"] == 10241 and d1["flops"] == 2 * 128 * 8 * 10241 * 32
    assert g.nodes["d2.mb0.L0.g0.attn_scores"]["kv_len"] == 10242


def test_decode_steps_are_output_len_minus_one(seed_small_graph):
    steps = {a["step"] for _, a in seed_small_graph.nodes(data=True) if a["phase"] == "decode"}
    assert steps == {1, 2}
    assert nx.has_path(seed_small_graph, "p.mb0.token", "d1.mb0.token")
    assert nx.has_path(seed_small_graph, "d1.mb0.token", "d2.mb0.token")


def _closed_form_matmul_flops(s) -> float:
    """Tensor-core FLOPs of the whole workload, written independently of the graph code."""
    m, p, w = s.model, s.parallel, s.workload
    h, hd, H, kv, B = m.hidden_size, m.head_size, m.num_heads, m.kv_heads, w.batch_size
    kv_computed = max(kv, p.tp)  # KV heads replicated when fewer than TP ranks
    g = 2 if m.gated else 1
    ffn = m.expert_ffn_size or m.ffn_size
    total = 0.0
    passes = [(w.input_len_tokens, w.input_len_tokens)] + [
        (1, w.input_len_tokens + t) for t in range(1, w.output_len_tokens)
    ]
    for q_len, kv_len in passes:
        T = B * q_len
        pairs = attention_pairs(q_len, kv_len)
        if m.kv_lora_rank:  # MLA: down-projections replicated on each TP rank
            nope, rope, vd, lora, ql = hd, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank, m.q_lora_rank
            attn = (2 * T * h * ql * p.tp + 2 * T * ql * H * (nope + rope)) if ql else 2 * T * h * H * (nope + rope)
            attn += 2 * T * h * (lora + rope) * p.tp + 2 * T * H * vd * h
            if q_len > 1 and s.runtime.mla_prefill == "decompressed":  # every position up-projected, then MHA
                attn += 2 * B * kv_len * lora * H * (nope + vd)
                attn += 2 * B * H * pairs * (nope + rope) + 2 * B * H * pairs * vd
            else:  # absorbed: W_UK into the query, MQA over the latent, W_UV after
                attn += 2 * T * H * nope * lora + 2 * B * H * pairs * (lora + rope) + 2 * B * H * pairs * lora
                attn += 2 * T * H * lora * vd
        else:
            attn = 2 * T * h * H * hd + 2 * 2 * T * h * kv_computed * hd + 2 * T * H * hd * h
            attn += 2 * 2 * B * H * pairs * hd
        for layer in range(m.num_layers):
            total += attn
            if m.num_experts and layer >= m.first_k_dense_layers:
                # the router runs on every TP rank over all tokens in the engines' TP MoE (moe_dispatch allreduce)
                routers = p.tp if s.moe_allreduce else 1
                total += routers * 2 * T * h * m.num_experts + m.top_k * T * (2 * h * g * ffn + 2 * ffn * h)
                fs = m.num_shared_experts * (m.shared_expert_ffn_size or ffn)
                total += T * (2 * h * g * fs + 2 * fs * h)
            else:
                total += T * (2 * h * g * m.ffn_size + 2 * m.ffn_size * h)
        if m.vocab_size:
            total += 2 * B * h * m.vocab_size
    return total


LAYOUTS = [
    dict(tp=2, ep=2, pp=2, dp=1, microbatches=1),
    dict(tp=1, ep=1, pp=1, dp=1, microbatches=1),
    dict(tp=4, ep=4, pp=1, dp=1, microbatches=2),
    dict(tp=1, ep=4, pp=1, dp=4, microbatches=1),
    dict(tp=2, ep=2, pp=1, dp=2, etp=1, microbatches=2),
    dict(tp=2, ep=1, pp=1, dp=2, etp=2, microbatches=1),
    dict(tp=1, ep=1, pp=4, dp=1, microbatches=4),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: "-".join(f"{k}{v}" for k, v in lay.items()))
def test_flops_conserved_against_closed_form(layout):
    n = layout["tp"] * layout["pp"] * layout["dp"]
    s = make_scenario(TINY_MOE, parallel=layout, cluster={"num_gpus": n, "gpus_per_node": 8})
    g = build_dag(s)
    dag = sum(a["flops"] for _, a in g.nodes(data=True) if a.get("tensor_core"))
    assert dag == pytest.approx(_closed_form_matmul_flops(s), rel=1e-12)


def test_flops_conserved_dense_with_vocab_and_gqa():
    dense = {
        **TINY_MOE["model"],
        "num_experts": 0,
        "expert_ffn_size": None,
        "ffn_size": 96,
        "activation": "swiglu",
        "num_kv_heads": 1,
        "vocab_size": 1000,
    }
    s = make_scenario(TINY_MOE, model=dense, parallel={"tp": 2, "ep": 1, "pp": 2})
    g = build_dag(s)
    dag = sum(a["flops"] for _, a in g.nodes(data=True) if a.get("tensor_core"))
    assert dag == pytest.approx(_closed_form_matmul_flops(s), rel=1e-12)
    assert {"embed", "lm_head", "sample", "token_send", "ffn_fc1"} <= {a["op"] for _, a in g.nodes(data=True)}


def test_token_copies_never_double_counted(tiny_moe):
    """Dispatch moves each routed token copy at most once: total sent + kept = top_k x tokens."""
    g = build_dag(tiny_moe)
    m = tiny_moe.model
    T = tiny_moe.workload.batch_size * tiny_moe.workload.input_len_tokens
    d = g.nodes["p.mb0.L0.s0r0.a2a_dispatch"]
    expert_tokens = sum(
        sum(a["expert_tokens"])
        for n, a in g.nodes(data=True)
        if a["op"] == "expert_fc1" and a["layer"] == 0 and a["phase"] == "prefill"
    )
    assert expert_tokens == pytest.approx(T * m.top_k)
    assert sum(d["send_bytes"]) == pytest.approx(T * m.top_k / 2 * m.hidden_size * 2)


def test_per_expert_impl_makes_one_kernel_per_expert(tiny_moe):
    s = make_scenario(TINY_MOE, model={"moe_impl": "per_expert"})
    g = build_dag(s)
    fc1 = [a for _, a in g.nodes(data=True) if a["op"] == "expert_fc1" and a["phase"] == "prefill" and a["layer"] == 0]
    assert len(fc1) == 4 and all(len(a["experts"]) == 1 for a in fc1)
    grouped = build_dag(tiny_moe)

    def total(gr):
        return sum(a["flops"] for _, a in gr.nodes(data=True) if a["op"] == "expert_fc1")

    assert total(g) == pytest.approx(total(grouped))


def test_comm_nodes_carry_per_rank_volumes(tiny_moe):
    g = build_dag(tiny_moe)
    for _, a in g.nodes(data=True):
        if a["kind"] == NodeKind.COMM:
            assert len(a["send_bytes"]) == len(a["recv_bytes"]) == len(a["gpu"])


def test_fast_digraph_equals_networkx_build():
    nodes = [("a", {"x": 1}), ("b", {"x": 2}), ("c", {})]
    edges = [("a", "b"), ("a", "c"), ("b", "c")]
    ref = nx.DiGraph()
    ref.add_nodes_from(nodes)
    ref.add_edges_from(edges)
    assert nx.utils.graphs_equal(digraph(nodes, edges), ref)
    with pytest.raises(KeyError):
        digraph(nodes, [("a", "zz")])


# ---------------------------------------------------------------------------------------------
# Uneven routing


def test_loads_vector_sets_per_rank_dispatch_volumes():
    s = make_scenario(TINY_MOE, workload={"routing": {"loads": [0.4, 0.3, 0.2, 0.1]}})
    g = build_dag(s)
    # 4 x 16 prefill tokens, each TP rank routes 32; top-2 copies of 64 x 2 bytes: 8192 bytes per rank.
    # GPU 0 holds experts 0, 1 (0.7 of the copies), GPU 1 experts 2, 3 (0.3).
    d = g.nodes["p.mb0.L0.s0r0.a2a_dispatch"]
    assert d["send_bytes"] == pytest.approx((8192 * 0.3, 8192 * 0.7))
    assert d["recv_bytes"] == pytest.approx((8192 * 0.7, 8192 * 0.3))
    c = g.nodes["p.mb0.L0.s0r0.a2a_combine"]
    assert c["send_bytes"] == d["recv_bytes"] and c["recv_bytes"] == d["send_bytes"]
    # 128 copies in the EP group: expert 0 gets 0.4 of them
    assert g.nodes["p.mb0.L0.g0.expert_fc1"]["expert_tokens"] == pytest.approx((51.2, 38.4))
    assert g.nodes["p.mb0.L0.g1.expert_fc1"]["expert_tokens"] == pytest.approx((25.6, 12.8))


def test_routing_spellings_and_checks():
    from simulator.config import ScenarioError
    from simulator.placement import routing_loads

    assert routing_loads(make_scenario(TINY_MOE, workload={"routing": "uniform"})) == [0.25] * 4
    z = routing_loads(make_scenario(TINY_MOE, workload={"routing": {"zipf": 1.0}}))
    assert z == pytest.approx([x / (1 + 1 / 2 + 1 / 3 + 1 / 4) for x in (1, 1 / 2, 1 / 3, 1 / 4)])
    a = make_scenario(TINY_MOE, workload={"routing": {"sampled": 3}})
    assert routing_loads(a, 1) == routing_loads(make_scenario(TINY_MOE, workload={"routing": {"sampled": 3}}), 1)
    assert routing_loads(a, 0) != routing_loads(a, 1)  # one draw per layer
    assert sum(routing_loads(a, 0)) == pytest.approx(1.0)
    with pytest.raises(ScenarioError, match="workload.routing.loads: routing.loads has 3 entries"):
        make_scenario(TINY_MOE, workload={"routing": {"loads": [1, 1, 1]}})
    with pytest.raises(ScenarioError, match="give one of zipf, loads, sampled"):
        make_scenario(TINY_MOE, workload={"routing": {"zipf": 1.0, "sampled": 1}})


def test_capacity_factor_drops_and_counts_copies():
    from simulator.placement import routing_summary

    s = make_scenario(TINY_MOE, workload={"routing": {"loads": [0.7, 0.1, 0.1, 0.1], "capacity_factor": 1.0}})
    g = build_dag(s)
    # 128 copies per EP group and layer; capacity ceil(128 / 4) = 32; expert 0 wants 89.6, keeps 32
    assert g.nodes["p.mb0.L0.g0.expert_fc1"]["expert_tokens"] == pytest.approx((32.0, 12.8))
    dropped = sum(a.get("dropped_copies", 0.0) for _, a in g.nodes(data=True) if a["phase"] == "prefill")
    assert dropped == pytest.approx(57.6 * 4)
    summary = routing_summary(s)
    assert summary["dropped_copies_prefill"] == pytest.approx(57.6 * 4)
    assert summary["max_over_mean_tokens_per_ep_rank"] == pytest.approx(44.8 / ((44.8 + 25.6) / 2))


# ---------------------------------------------------------------------------------------------
# MoE variants: shared experts, leading dense layers, MLA, separate dtypes


@pytest.mark.parametrize("layout", LAYOUTS[:4], ids=lambda lay: "-".join(f"{k}{v}" for k, v in lay.items()))
def test_flops_conserved_deepseek_style(layout):
    n = layout["tp"] * layout["pp"] * layout["dp"]
    s = make_scenario(TINY_MOE, model=DEEPSEEK_TINY, parallel=layout, cluster={"num_gpus": n, "gpus_per_node": 8})
    g = build_dag(s)
    dag = sum(a["flops"] for _, a in g.nodes(data=True) if a.get("tensor_core"))
    assert dag == pytest.approx(_closed_form_matmul_flops(s), rel=1e-12)


@pytest.mark.parametrize("mla_prefill", ["decompressed", "absorbed"])
def test_flops_conserved_mla_without_q_lora(mla_prefill):
    s = make_scenario(TINY_MOE, model={**DEEPSEEK_TINY, "q_lora_rank": None}, runtime={"mla_prefill": mla_prefill})
    g = build_dag(s)
    dag = sum(a["flops"] for _, a in g.nodes(data=True) if a.get("tensor_core"))
    assert dag == pytest.approx(_closed_form_matmul_flops(s), rel=1e-12)


def test_dense_first_layer_and_shared_experts_in_dag():
    s = make_scenario(TINY_MOE, model=DEEPSEEK_TINY)
    g = build_dag(s)
    assert "p.mb0.L0.g0.ffn_fc1" in g and "p.mb0.L0.g0.router" not in g
    assert "p.mb0.L1.g0.router" in g and "p.mb0.L1.g0.ffn_fc1" not in g
    fc1 = g.nodes["p.mb0.L1.g0.shared_fc1"]  # 32 tokens of this TP rank's slice, 2 x 32 wide, gated
    assert fc1["gemm"] == (32, 64, 2 * 2 * 32) and fc1["flops"] == 2 * 32 * 64 * 128
    assert "p.mb0.L1.g0.shared_fc2" in set(g.predecessors("p.mb0.L1.g0.moe_combine"))


def test_mla_nodes_by_hand():
    s = make_scenario(TINY_MOE, model=DEEPSEEK_TINY)
    g = build_dag(s)
    # tp = 2: 2 of 4 heads per rank (nope 16, rope 8, v 12, latent 24); 4 sequences of 16 prefill tokens
    assert g.nodes["p.mb0.L0.g0.kv_a_proj"]["gemm"] == (64, 64, 32)
    assert g.nodes["p.mb0.L0.g0.o_proj"]["gemm"] == (64, 2 * 12, 64)
    # the prefill runs decompressed: kv_b_proj up-projects the 64 positions' latent to 2 heads x (16 + 12)
    kvb = g.nodes["p.mb0.L0.g0.kv_b_proj"]
    assert kvb["gemm"] == (64, 24, 56) and kvb["flops"] == 2 * 64 * 24 * 56
    assert kvb["bytes_read"] == (64 * 24 + 24 * 56) * 2 and kvb["bytes_written"] == 64 * 56 * 2
    cat = g.nodes["p.mb0.L0.g0.k_rope_concat"]  # reads k_nope (2 x 16) and the shared rope key (8), writes 2 x 24
    assert cat["flops"] == 0 and cat["bytes_read"] == 64 * (2 * 16 + 8) * 2 and cat["bytes_written"] == 64 * 48 * 2
    sc = g.nodes["p.mb0.L0.g0.attn_scores"]  # MHA, q/k head dim 16 + 8
    assert sc["flops"] == 2 * 4 * 2 * attention_pairs(16, 16) * 24 and sc["head_dim"] == 24
    assert sc["bytes_read"] == (4 * 2 * 16 * 24 + 4 * 2 * 16 * 24) * 2  # Q and K, 2 heads each
    cx = g.nodes["p.mb0.L0.g0.attn_context"]  # reads V (2 heads x 12), writes 2 heads x 12
    assert cx["flops"] == 2 * 4 * 2 * attention_pairs(16, 16) * 12
    assert cx["bytes_read"] == 4 * 2 * 16 * 12 * 2 and cx["bytes_written"] == 4 * 2 * 16 * 12 * 2
    assert "p.mb0.L0.g0.q_absorb" not in g and "p.mb0.L0.g0.v_up" not in g
    assert set(g.predecessors("p.mb0.L0.g0.attn_scores")) == {"p.mb0.L0.g0.q_b_proj", "p.mb0.L0.g0.k_rope_concat"}
    # decode runs absorbed: 4 tokens mapped into the latent, MQA over the cached latent of 17 positions
    qa = g.nodes["d1.mb0.L0.g0.q_absorb"]
    assert qa["flops"] == 2 * 4 * 2 * 16 * 24 and qa["grouped"] == (2, 4)
    sc = g.nodes["d1.mb0.L0.g0.attn_scores"]
    assert sc["flops"] == 2 * 4 * 2 * 17 * (24 + 8)
    # reads Q (2 heads x 32 dims) and the latent (one head of 32) for 4 sequences, 17 positions
    assert sc["bytes_read"] == (4 * 2 * 1 * 32 + 4 * 1 * 17 * 32) * 2
    assert g.nodes["d1.mb0.L0.g0.v_up"]["gemm"] == (2 * 4, 24, 12) and "d1.mb0.L0.g0.kv_b_proj" not in g


def test_mla_absorbed_prefill_by_hand():
    s = make_scenario(TINY_MOE, model=DEEPSEEK_TINY, runtime={"mla_prefill": "absorbed"})
    g = build_dag(s)
    qa = g.nodes["p.mb0.L0.g0.q_absorb"]
    assert qa["flops"] == 2 * 64 * 2 * 16 * 24 and qa["grouped"] == (2, 64)
    sc = g.nodes["p.mb0.L0.g0.attn_scores"]
    assert sc["flops"] == 2 * 4 * 2 * attention_pairs(16, 16) * (24 + 8)
    assert sc["bytes_read"] == (4 * 2 * 16 * 32 + 4 * 1 * 16 * 32) * 2
    assert "p.mb0.L0.g0.kv_b_proj" not in g


def test_mla_decompressed_prefill_has_fewer_attention_flops_at_long_context():
    """DeepSeek-V3's shapes (128 heads, nope 128, rope 64, v 128, latent 512): per position pair the absorbed form
    computes 2 x (576 + 512) FLOPs per head, the decompressed 2 x (192 + 128), 3.4x fewer; kv_b_proj adds
    2 x 512 x 128 x 256 per position."""
    v3 = {
        **DEEPSEEK_TINY,
        "hidden_size": 7168,
        "num_heads": 128,
        "head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "kv_lora_rank": 512,
        "q_lora_rank": 1536,
        "num_layers": 1,
        "first_k_dense_layers": 1,
    }
    flops = {}
    for form in ("decompressed", "absorbed"):
        s = make_scenario(
            TINY_MOE,
            model=v3,
            parallel={"tp": 1, "ep": 1, "pp": 1, "dp": 1},
            cluster={"num_gpus": 1, "gpus_per_node": 1},
            workload={"batch_size": 1, "input_len_tokens": 4096, "output_len_tokens": 1},
            runtime={"mla_prefill": form},
        )
        g = build_dag(s)
        attn_ops = ("attn_scores", "attn_context", "kv_b_proj", "q_absorb", "v_up")
        flops[form] = sum(a["flops"] for _, a in g.nodes(data=True) if a["op"] in attn_ops)
    pairs = attention_pairs(4096, 4096)
    assert flops["decompressed"] == 2 * 128 * pairs * (192 + 128) + 2 * 4096 * 512 * 128 * 256
    assert flops["absorbed"] == 2 * 128 * pairs * (576 + 512) + 2 * 4096 * 128 * (128 * 512 + 512 * 128)
    assert flops["absorbed"] / flops["decompressed"] > 2.5


def test_weight_and_kv_dtypes_change_bytes_not_flops():
    base = make_scenario(TINY_MOE, model={"dtype": "bf16"})
    fp8 = make_scenario(TINY_MOE, model={"dtype": "bf16", "weight_dtype": "fp8", "kv_cache_dtype": "fp8"})
    a, b = build_dag(base), build_dag(fp8)
    q0, q1 = a.nodes["p.mb0.L0.g0.q_proj"], b.nodes["p.mb0.L0.g0.q_proj"]
    assert q0["flops"] == q1["flops"]
    assert q0["bytes_read"] - q1["bytes_read"] == 64 * 32 * 1  # [64, 2 heads x 16] weight: 2 -> 1 byte
    s0, s1 = a.nodes["d1.mb0.L0.g0.attn_scores"], b.nodes["d1.mb0.L0.g0.attn_scores"]
    assert s0["bytes_read"] - s1["bytes_read"] == 4 * 2 * 17 * 16 * 1  # K cache of 17 positions, 2 heads
    assert b.nodes["p.mb0.L0.g0.expert_fc1"]["dtype"] == "bf16"


def test_placement_summary_says_where_groups_landed():
    from simulator.placement import placement_summary

    s = make_scenario(
        TINY_MOE,
        parallel={"tp": 2, "ep": 4, "pp": 2, "dp": 2},
        cluster={"num_gpus": 8, "gpus_per_node": 4},
        workload={"batch_size": 4},
    )
    p = placement_summary(s, 4)
    assert p["nodes"] == 2 and p["tp_groups_within_node"] and p["max_nodes_per_ep_group"] == 1
    assert "pipeline stages on nodes stage 0: 0; stage 1: 1" in p["notes"]
    wide = placement_summary(make_scenario(TINY_MOE, parallel={"tp": 4, "ep": 4, "pp": 1}), 2)
    assert not wide["tp_groups_within_node"] and wide["max_nodes_per_ep_group"] == 2
    assert "all-to-all crosses the NICs" in wide["notes"][1]


def test_fp8_weights_speed_up_memory_bound_decode_gemms(h100):
    from simulator.op_time import node_time_s

    big = {**TINY_MOE["model"], "hidden_size": 4096, "num_heads": 32, "head_dim": 128, "dtype": "bf16"}
    times = []
    for extra in ({}, {"weight_dtype": "fp8"}):
        g = build_dag(make_scenario(TINY_MOE, model={**big, **extra}, workload={"output_len_tokens": 2}))
        times.append(node_time_s(g.nodes["d1.mb0.L0.g0.q_proj"], h100, 8, eager=False)[0])
    assert times[1] < 0.75 * times[0]


def _launches_per_layer(graph, phase: str, layer: int = 0) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, a in graph.nodes(data=True):
        if (
            a["phase"] == phase
            and a.get("layer") == layer
            and a["kind"] not in (NodeKind.MARKER, NodeKind.COMM)
            and (phase == "prefill" or a["step"] == 1)
        ):
            out[a["op"]] = out.get(a["op"], 0) + a.get("launches", 1)
    return out


def test_pytorch_framework_adds_the_reference_helper_kernels(tiny_moe):
    """Decode with the capacity MoE on one GPU, kernel by kernel as simulator/calibration/e2e.py issues
    them: norm, fused QKV, K and V written to the cache (2), flash attention, output projection,
    residual; norm, router, softmax + top-k (2) + sum + divide, dispatch index arithmetic and
    buffer (14), token gather, bmm, GELU, bmm, slot gather and scaling (6), sum over k, residual."""
    one = {"parallel": {"tp": 1, "ep": 1, "pp": 1, "dp": 1}, "cluster": {"num_gpus": 1, "gpus_per_node": 1}}
    model = {**tiny_moe.model.model_dump(exclude_none=True), "moe_impl": "capacity", "fused_qkv": True}
    fused = build_dag(make_scenario(TINY_MOE, model=model, **one))
    plain = build_dag(make_scenario(TINY_MOE, model=model, runtime={"framework": "pytorch"}, **one))
    assert sum(_launches_per_layer(fused, "decode").values()) == 14
    per_op = _launches_per_layer(plain, "decode")
    assert per_op["kv_append"] == 2 and per_op["topk"] == 5
    assert per_op["moe_dispatch_index"] == 14 and per_op["moe_undispatch"] == 6
    assert per_op["moe_permute"] == 1  # the token gather a[token], counted once
    assert sum(per_op.values()) == 40
    # prefill with the sorted MoE: argsort and order // k (12), bincount's min and max each read back
    # (2 + 2), its histogram and .tolist() (3), cat/scale/zero (5); the context is not copied (a view)
    model["moe_impl"] = "per_expert"
    plain = build_dag(make_scenario(TINY_MOE, model=model, runtime={"framework": "pytorch"}, **one))
    per_op = _launches_per_layer(plain, "prefill")
    counts = ("moe_sort", "moe_count_min", "moe_count_max", "moe_count", "moe_unsort")
    assert tuple(per_op[op] for op in counts) == (12, 2, 2, 3, 5)
    assert "attn_out_copy" not in per_op
    assert "kv_append" not in per_op and "attn_gqa_expand" not in per_op  # MHA, no cache write in prefill


@pytest.mark.parametrize(
    "sections",
    [
        {"model": {**TINY_MOE["model"], "num_layers": 8}},
        {
            "model": {**TINY_MOE["model"], "num_layers": 8},
            "parallel": {"tp": 2, "ep": 2, "pp": 2, "dp": 1, "microbatches": 2},
        },
        {"model": {**TINY_MOE["model"], "num_layers": 8}, "workload": {"routing": {"sampled": 7}}},
        {
            "model": {**TINY_MOE["model"], "num_layers": 8, "first_k_dense_layers": 1, "ffn_size": 96},
            "runtime": {"framework": "pytorch"},
        },
        # four microbatches on a pipeline: passes copied from microbatch 0's, holding copied layers
        {
            "model": {**TINY_MOE["model"], "num_layers": 8},
            "parallel": {"tp": 1, "ep": 2, "pp": 2, "dp": 2, "microbatches": 4},
            "workload": {"batch_size": 16},
        },
    ],
)
def test_reused_layers_equal_built_ones(monkeypatch, sections):
    """Copies of identical layers (BlockBuilder.layer_reused) give exactly the nodes, attributes and
    edges that building every layer gives, and the simulation prices each copy as its original."""
    from simulator.config import resolve_hardware
    from simulator.graph import PassBuilder
    from simulator.simulate import simulate_dag

    s = make_scenario(TINY_MOE, **sections)
    reused = build_dag(s)
    copies = sum(t >= 0 for t in reused.moesim_twins)
    assert copies > reused.number_of_nodes() / 5 or s.workload.routing.sampled is not None
    monkeypatch.setattr(PassBuilder, "layer_reused", PassBuilder.build_layer)
    monkeypatch.setattr(PassBuilder, "pass_reused", PassBuilder.build_pass)
    built = build_dag(s)
    assert list(reused.nodes(data=True)) == list(built.nodes(data=True))
    assert list(reused.edges) == list(built.edges)
    hw = resolve_hardware(s)
    sim_a, sim_b = simulate_dag(reused, s, hw), simulate_dag(built, s, hw)
    a, b = sim_a.ops, sim_b.ops
    assert a["duration_s"].tolist() == b["duration_s"].tolist() and a["end_s"].tolist() == b["end_s"].tolist()
    # the metrics sum each original once per copy; the full graph sums every node: the same floats
    from simulator.metrics import compute_metrics

    ma, mb = (compute_metrics(sim, s, hw) for sim in (sim_a, sim_b))
    assert ma == mb


def test_decode_layers_of_later_steps_are_copies_with_attention_of_their_own():
    """A decode layer repeats the same layer of an earlier step but for its attention nodes (the
    KV length): those are its own, everything else is a copy across steps."""
    from simulator.graph import build

    s = make_scenario(TINY_MOE, model={**TINY_MOE["model"], "num_layers": 8}, workload={"output_len_tokens": 6})
    dag = build(s)
    attrs, twins = dag.attrs, dag.twins
    decode = [i for i, a in enumerate(attrs) if a["phase"] == "decode" and a["layer"] >= 0]
    across = [i for i in decode if twins[i] >= 0 and attrs[twins[i]]["step"] != attrs[i]["step"]]
    assert across and not [i for i in across if attrs[i]["op"].startswith("attn_")]
    for i in decode:
        if attrs[i]["op"].startswith("attn_") and twins[i] >= 0:
            assert attrs[twins[i]]["kv_len"] == attrs[i]["kv_len"]
    # one row per distinct node and step: the counts add up to every node
    assert sum(count for _, _, count, _ in dag.counted()) == len(dag)


def test_sparse_decode_reads_the_experts_it_touches():
    """One decode token, top-2 of 4 experts on one GPU: each expert expects 0.5 copies, and the grouped GEMM
    reads exactly the 2 it picks (costs.expected_touched_experts), each with 1 row; per_expert keeps one GEMM
    pair per expert with tokens."""
    from simulator.graph.ragged import build_forward, ragged_shape

    one_gpu = {"cluster": {"num_gpus": 1, "gpus_per_node": 1}, "parallel": {"tp": 1, "ep": 1, "pp": 1, "dp": 1}}
    scenario = make_scenario(TINY_MOE, **one_gpu)
    fc1 = [a for a in build_forward(scenario, ragged_shape(((1, 10),))).attrs if a["op"] == "expert_fc1"]
    assert len(fc1) == TINY_MOE["model"]["num_layers"]
    a = fc1[0]
    assert a["grouped"] == (2.0, 1.0)
    # 2 copies of a 64-wide token in, 2 experts' [64, 128] fp16 weights
    assert a["bytes_read"] == 2 * 64 * 2 + 2.0 * 64 * 128 * 2
    assert a["act_bytes"] == a["bytes_read"] + a["bytes_written"] - 2.0 * 64 * 128 * 2
