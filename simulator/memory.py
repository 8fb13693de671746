"""Memory stage: closed-form parameter counts and the memory each GPU needs (weights, KV cache,
transient activations, runtime reserve)."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from simulator import costs
from simulator.config import Scenario
from simulator.graph import Dag, node_dicts
from simulator.graph.dag import COMM, MARKER  # NodeKind members, bound once (hot loops)
from simulator.placement import Placement, expand_per_gpu


@dataclass(frozen=True)
class GpuMemory:
    gpu: int
    weight_bytes: float
    kv_cache_bytes: float
    activation_bytes: float
    reserve_bytes: float
    capacity_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.weight_bytes + self.kv_cache_bytes + self.activation_bytes + self.reserve_bytes

    @property
    def utilization(self) -> float:
        return self.total_bytes / self.capacity_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.capacity_bytes


def _attention_params(m, tp: int = 1) -> float:
    """Attention weights of one layer held by one of `tp` ranks (tp = 1: the whole layer). MLA's
    down-projections are replicated over TP (graph.layers.LayerBuilder.mla); its latent norms are included."""
    hl = m.num_heads // tp
    if m.is_mla:
        return (
            costs.mla_attention_params(
                m.hidden_size, hl, m.head_size, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank, m.q_lora_rank
            )
            + m.kv_lora_rank
            + (m.q_lora_rank or 0)
        )
    return costs.attention_params(m.hidden_size, hl, max(1, m.kv_heads // tp), m.head_size)


def parameter_counts(scenario: Scenario) -> dict[str, float]:
    """Total and active (per token) parameters of the model, by part. Active: the top_k routed
    experts and the shared experts of every MoE layer; embedding and LM head both count."""
    m = scenario.model
    h = m.hidden_size
    attn = _attention_params(m)
    norms = 2 * h
    dense = costs.ffn_params(h, m.ffn_size or 0, m.gated)
    moe_layers = sum(1 for layer in range(m.num_layers) if m.is_moe_layer(layer))
    dense_layers = m.num_layers - moe_layers
    if m.is_moe:
        expert = costs.ffn_params(h, m.expert_ffn_size or 0, m.gated)
        shared = costs.ffn_params(h, m.shared_ffn_size, m.gated)
        ffn_total = moe_layers * (m.num_experts * expert + shared) + dense_layers * dense
        ffn_active = moe_layers * (m.top_k * expert + shared) + dense_layers * dense
        router = moe_layers * h * m.num_experts
    else:
        ffn_total = ffn_active = m.num_layers * dense
        router = 0
    embed = 2 * m.vocab_size * h  # input embedding + untied LM head
    final_norm = h if m.vocab_size else 0
    common = m.num_layers * (attn + norms) + router + embed + final_norm
    return {
        "attention": float(m.num_layers * attn),
        "ffn_or_experts": float(ffn_total),
        "router": float(router),
        "norms": float(m.num_layers * norms + final_norm),
        "embedding_and_head": float(embed),
        "total": float(common + ffn_total),
        "active": float(common + ffn_active),
    }


def weight_bytes_per_gpu(scenario: Scenario, gpu: int) -> float:
    """Weights resident on one GPU: its attention shard, its experts and the shared experts (or its
    FFN shard in dense layers), the router and norms of its stage's layers; embedding on the first
    stage, LM head on the last (split over tp). Each at its storage format (model.formats), block
    scales included: attention and dense FFN at dense_gemm's, experts (routed and shared) at
    expert_gemm's, router and norms at router's, embedding and LM head at lm_head's."""
    m, p = scenario.model, scenario.parallel
    f = m.formats
    dense_b, expert_b = f.dense_gemm.weight_bytes, f.expert_gemm.weight_bytes
    small_b, head_b = f.router.weight_bytes, f.lm_head.weight_bytes  # router and norms; embedding and head
    pl = Placement.of(scenario)
    h = m.hidden_size
    attn = _attention_params(m, p.tp) * dense_b
    dense = costs.ffn_params(h, (m.ffn_size or 0) // p.tp, m.gated) * dense_b
    if m.is_moe:
        moe = pl.slots_per_rank * costs.ffn_params(h, (m.expert_ffn_size or 0) // p.etp, m.gated) * expert_b
        shards = p.tp if scenario.moe_allreduce else 1  # the engines' TP MoE shards the shared experts over tp
        moe += costs.ffn_params(h, m.shared_ffn_size, m.gated) / shards * expert_b + h * m.num_experts * small_b
    else:
        moe = 0
    weight_bytes = 0.0
    for layer in pl.layers_of_gpu(gpu):
        weight_bytes += attn + 2 * h * small_b + (moe if m.is_moe_layer(layer) else dense)
    stage = pl.stage_of_gpu(gpu)
    if m.vocab_size:
        if stage == 0:
            weight_bytes += m.vocab_size * h / p.tp * head_b
        if stage == p.pp - 1:
            weight_bytes += m.vocab_size * h / p.tp * head_b + h * small_b
    return weight_bytes


def kv_bytes_kept(scenario: Scenario, gpu: int, positions: int, sequences: float = 1.0) -> float:
    """KV cache bytes `sequences` sequences of `positions` positions keep on this GPU: its stage's layers and local
    KV heads (MLA: the whole latent on every TP rank), at the KV cache dtype; a sliding-window layer keeps only its
    window's last positions (ModelSpec.kept_positions: the engines free what falls out of it)."""
    m, p = scenario.model, scenario.parallel
    layers = Placement.of(scenario).layers_of_gpu(gpu)
    if m.is_mla:
        return costs.mla_kv_cache_bytes(
            sequences, positions, len(layers), m.kv_lora_rank or 0, m.qk_rope_head_dim or 0, m.kv_bytes_per_element
        )
    kvl = max(1, m.kv_heads // p.tp)
    return costs.kv_cache_bytes(
        sequences, m.kept_positions(layers, positions), 1, kvl, m.head_size, m.kv_bytes_per_element
    )


def kv_cache_bytes_per_gpu(scenario: Scenario, gpu: int) -> float:
    """Peak KV cache: every sequence of the GPU's dp rank, at its longest (input + output - 1 positions: the last
    token is never fed back), as kv_bytes_kept keeps it."""
    w = scenario.workload
    return kv_bytes_kept(
        scenario, gpu, w.input_len_tokens + w.output_len_tokens - 1, w.batch_size / scenario.parallel.dp
    )


def activation_bytes_per_gpu(graph: Dag | nx.DiGraph, scenario: Scenario) -> dict[int, float]:
    """Peak transient activations: the residual stream of the largest pass plus the largest single
    op's input and output activations (weights and KV cache excluded) on that GPU."""
    m, p, w = scenario.model, scenario.parallel, scenario.workload
    seqs = w.batch_size / (p.dp * p.microbatches)
    residual_bytes = seqs * w.input_len_tokens * m.hidden_size * m.dtype_bytes_per_element
    peak_bytes: dict[int, float] = {g: 0.0 for g in range(scenario.num_gpus)}
    for a in node_dicts(graph):
        if a["kind"] == MARKER:
            continue
        if a["kind"] == COMM:
            for g, recv_bytes in zip(a["gpu"], a["recv_bytes"]):
                peak_bytes[g] = max(peak_bytes[g], recv_bytes)
        elif a["act_bytes"] > peak_bytes[a["gpu"]]:
            peak_bytes[a["gpu"]] = a["act_bytes"]
    return expand_per_gpu({g: residual_bytes + v for g, v in peak_bytes.items()}, graph)


def memory_per_gpu(graph: Dag | nx.DiGraph, scenario: Scenario, capacity_bytes: float) -> list[GpuMemory]:
    activation_bytes = activation_bytes_per_gpu(graph, scenario)
    # Weights and KV cache are alike on the GPUs of a stage (its layers; num_experts / ep experts each):
    # computed for each stage's first GPU.
    per_stage = scenario.parallel.dp * scenario.parallel.tp
    firsts = range(0, scenario.num_gpus, per_stage)
    weight_bytes = {g: weight_bytes_per_gpu(scenario, g) for g in firsts}
    kv_cache_bytes = {g: kv_cache_bytes_per_gpu(scenario, g) for g in firsts}
    return [
        GpuMemory(
            gpu=g,
            weight_bytes=weight_bytes[g - g % per_stage],
            kv_cache_bytes=kv_cache_bytes[g - g % per_stage],
            activation_bytes=activation_bytes[g],
            reserve_bytes=scenario.runtime.memory_reserve_bytes,
            capacity_bytes=capacity_bytes,
        )
        for g in range(scenario.num_gpus)
    ]
