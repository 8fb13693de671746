"""Memory stage: closed-form parameter counts and the memory each GPU needs (weights, KV cache,
transient activations, runtime reserve)."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from simulator import costs
from simulator.config import Scenario
from simulator.graph import COMM, MARKER, Placement


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


def parameter_counts(scenario: Scenario) -> dict[str, float]:
    """Total and active (per token) parameters of the model, by part."""
    m = scenario.model
    attn = costs.attention_params(m.hidden_size, m.num_heads, m.kv_heads, m.head_size)
    norms = 2 * m.hidden_size
    if m.is_moe:
        expert = costs.ffn_params(m.hidden_size, m.expert_ffn_size or 0, m.gated)
        ffn_total, ffn_active = m.num_experts * expert, m.top_k * expert
        router = m.hidden_size * m.num_experts
    else:
        ffn_total = ffn_active = costs.ffn_params(m.hidden_size, m.ffn_size or 0, m.gated)
        router = 0
    per_layer_total = attn + ffn_total + router + norms
    per_layer_active = attn + ffn_active + router + norms
    embed = 2 * m.vocab_size * m.hidden_size  # input embedding + untied LM head
    return {
        "attention": float(m.num_layers * attn),
        "ffn_or_experts": float(m.num_layers * ffn_total),
        "router": float(m.num_layers * router),
        "norms": float(m.num_layers * norms + (m.hidden_size if m.vocab_size else 0)),
        "embedding_and_head": float(embed),
        "total": float(m.num_layers * per_layer_total + embed + (m.hidden_size if m.vocab_size else 0)),
        "active": float(m.num_layers * per_layer_active + embed + (m.hidden_size if m.vocab_size else 0)),
    }


def weight_bytes_per_gpu(scenario: Scenario, gpu: int) -> float:
    """Weights resident on one GPU: its attention shard, its experts (or FFN shard), the router and
    norms of its stage's layers; embedding on the first stage, LM head on the last (split over tp)."""
    m, p = scenario.model, scenario.parallel
    pl = Placement.of(scenario)
    h, hd, b = m.hidden_size, m.head_size, m.dtype_bytes
    hl, kvl = m.num_heads // p.tp, max(1, m.kv_heads // p.tp)
    attn = h * hl * hd * 2 + 2 * h * kvl * hd
    if m.is_moe:
        ffn = len(pl.experts_of_gpu(gpu)) * costs.ffn_params(h, (m.expert_ffn_size or 0) // p.etp, m.gated)
        router = h * m.num_experts
    else:
        ffn = costs.ffn_params(h, (m.ffn_size or 0) // p.tp, m.gated)
        router = 0
    layers = len(pl.layers_of_gpu(gpu))
    params = layers * (attn + ffn + router + 2 * h)
    stage = pl.stage_of_gpu(gpu)
    if m.vocab_size:
        if stage == 0:
            params += m.vocab_size * h / p.tp
        if stage == p.pp - 1:
            params += m.vocab_size * h / p.tp + h
    return params * b


def kv_cache_bytes_per_gpu(scenario: Scenario, gpu: int) -> float:
    """Peak KV cache: every sequence of the GPU's dp rank, at its longest (input + output - 1
    positions: the last token is never fed back), for the stage's layers and local KV heads."""
    m, p, w = scenario.model, scenario.parallel, scenario.workload
    pl = Placement.of(scenario)
    kvl = max(1, m.kv_heads // p.tp)
    positions = w.input_len_tokens + w.output_len_tokens - 1
    return costs.kv_cache_bytes(w.batch_size / p.dp, positions, len(pl.layers_of_gpu(gpu)), kvl, m.head_size,
                                m.dtype_bytes)


def activation_bytes_per_gpu(graph: nx.DiGraph, scenario: Scenario) -> dict[int, float]:
    """Peak transient activations: the residual stream of the largest pass plus the largest single
    op's input and output activations (weights and KV cache excluded) on that GPU."""
    m, p, w = scenario.model, scenario.parallel, scenario.workload
    seqs = w.batch_size / (p.dp * p.microbatches)
    residual = seqs * w.input_len_tokens * m.hidden_size * m.dtype_bytes
    peak: dict[int, float] = {g: 0.0 for g in range(scenario.num_gpus)}
    for _, a in graph.nodes(data=True):
        if a["kind"] == MARKER:
            continue
        if a["kind"] == COMM:
            for g, r in zip(a["gpu"], a["recv_bytes"]):
                peak[g] = max(peak[g], r)
        elif a["act_bytes"] > peak[a["gpu"]]:
            peak[a["gpu"]] = a["act_bytes"]
    return {g: residual + v for g, v in peak.items()}


def memory_per_gpu(graph: nx.DiGraph, scenario: Scenario, capacity_bytes: float) -> list[GpuMemory]:
    acts = activation_bytes_per_gpu(graph, scenario)
    return [
        GpuMemory(
            gpu=g,
            weight_bytes=weight_bytes_per_gpu(scenario, g),
            kv_cache_bytes=kv_cache_bytes_per_gpu(scenario, g),
            activation_bytes=acts[g],
            reserve_bytes=scenario.runtime.memory_reserve_bytes,
            capacity_bytes=capacity_bytes,
        )
        for g in range(scenario.num_gpus)
    ]


