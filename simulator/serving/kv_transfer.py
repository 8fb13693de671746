"""Serving cost stage, disaggregation: which bytes of one request's KV cache move from which prefill GPU to
which decode GPU, from the model's KV layout and the two pools' tensor/pipeline splits (pure functions).

A GPU of an instance (stage s, tensor rank r) holds the K and V of its stage's layers and of its KV heads:
with kv_heads >= tp, heads [r kv/tp, (r+1) kv/tp); with kv_heads < tp, head floor(r kv / tp) (a head is
replicated on tp / kv_heads ranks, as vLLM does). MLA (DeepSeek) caches one latent per layer, whole on every
tensor rank. Each decode GPU receives exactly what it holds:

    bytes(src -> dst) = tokens x sum over (layer, head) that dst holds and takes from src of 2 x head_dim x b
                      = tokens x shared layers x shared heads x 2 x head_dim x kv_bytes_per_element

and for MLA tokens x shared layers x (kv_lora_rank + qk_rope_head_dim) x b. A (layer, head) that several
prefill ranks hold (replicated heads, or MLA's latent) is taken from holder number (dst rank mod holders), so
the decode ranks spread over the prefill ranks. A TP4 prefill feeding a TP8 decode thus sends each decode rank
its own head(s) from the one prefill rank that holds them; TP8 -> TP4 gathers two ranks' heads on each decode
rank; PP2 -> PP1 sends each stage's layers from that stage. A sliding-window layer holds, and sends, only its
window's last min(tokens, sliding_window) positions.
"""

from __future__ import annotations

from typing import NamedTuple

from simulator.config import ModelSpec
from simulator.config.scenario import even_split


class PoolLayout(NamedTuple):
    """The KV-relevant split of one instance: tensor and pipeline degrees and layers per stage."""

    tp: int
    pp: int
    layer_split: tuple[int, ...] | None = None

    def stage_of_layer(self, num_layers: int) -> list[int]:
        split = self.layer_split or even_split(num_layers, self.pp)
        return [s for s, count in enumerate(split) for _ in range(count)]

    def local_gpu(self, stage: int, rank: int) -> int:
        """GPU index inside the instance (stage-major, as simulator.placement numbers them)."""
        return stage * self.tp + rank


class KVFlow(NamedTuple):
    """One point-to-point piece of a request's KV transfer, by GPU index inside each instance."""

    src_gpu: int
    dst_gpu: int
    num_bytes: float


def heads_of_rank(kv_heads: int, tp: int, rank: int) -> range:
    """KV heads a tensor rank holds: its slice, or the one head it replicates when kv_heads < tp."""
    if kv_heads >= tp:
        per = kv_heads // tp
        return range(rank * per, (rank + 1) * per)
    head = rank * kv_heads // tp
    return range(head, head + 1)


class KVFlowRate(NamedTuple):
    """One point-to-point piece of a request's KV transfer per prompt token: the full layers' bytes a token, and the
    sliding-window layers' bytes a token up to the window (the positions they keep)."""

    src_gpu: int
    dst_gpu: int
    full_bytes_per_token: float
    window_bytes_per_token: float


def kv_transfer_rates(model: ModelSpec, src: PoolLayout, dst: PoolLayout) -> list[KVFlowRate]:
    """The flows of one request's transfer from one prefill instance (src) to one decode instance (dst), one per
    (src GPU, dst GPU) pair that shares data, in (dst, src) order, per token (module docstring)."""
    layers = model.num_layers
    src_stage, dst_stage = src.stage_of_layer(layers), dst.stage_of_layer(layers)
    b = model.kv_bytes_per_element
    if model.is_mla:
        per_unit = (model.kv_lora_rank or 0) + (model.qk_rope_head_dim or 0)
        heads = 1
    else:
        per_unit = 2 * model.head_size
        heads = model.kv_heads
    units: dict[tuple[int, int], list[int]] = {}  # (src gpu, dst gpu) -> [full, sliding] (layer, head) units
    for d_rank in range(dst.tp):
        d_heads = range(heads) if model.is_mla else heads_of_rank(heads, dst.tp, d_rank)
        for layer in range(layers):
            d_gpu = dst.local_gpu(dst_stage[layer], d_rank)
            slides = int(model.attention_window(layer) is not None)  # a sliding layer sends its window's positions
            for head in d_heads:
                if model.is_mla:
                    holders = list(range(src.tp))
                else:
                    holders = [r for r in range(src.tp) if head in heads_of_rank(heads, src.tp, r)]
                s_rank = holders[d_rank % len(holders)]
                key = (src.local_gpu(src_stage[layer], s_rank), d_gpu)
                units.setdefault(key, [0, 0])[slides] += 1
    return [
        KVFlowRate(s, d, float(n[0] * per_unit) * b, float(n[1] * per_unit) * b)
        for (s, d), n in sorted(units.items(), key=lambda kv: kv[0][::-1])
    ]


def kv_transfer_flows(model: ModelSpec, src: PoolLayout, dst: PoolLayout, tokens: int) -> list[KVFlow]:
    """The flows that move `tokens` tokens of KV from one prefill instance (src) to one decode instance
    (dst) (kv_transfer_rates at `tokens`: a sliding layer's at min(tokens, sliding_window))."""
    kept = min(tokens, model.sliding_window or 0)
    return [
        KVFlow(r.src_gpu, r.dst_gpu, float(tokens) * r.full_bytes_per_token + kept * r.window_bytes_per_token)
        for r in kv_transfer_rates(model, src, dst)
    ]


def kv_transfer_bytes(model: ModelSpec, src: PoolLayout, dst: PoolLayout, tokens: int) -> float:
    """Bytes one request's transfer moves in all (replicated heads count once per decode rank holding them)."""
    return sum(f.num_bytes for f in kv_transfer_flows(model, src, dst, tokens))
