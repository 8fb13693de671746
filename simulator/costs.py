"""Costs stage: pure functions for FLOPs, bytes, communication volumes, memory and the time of one op.

Conventions: a multiply-add is 2 FLOPs; `b` is bytes per element; token counts may be fractional
(expected values under a routing distribution). Every function returns values and stores nothing.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from simulator.config.hardware import HardwareProfile, LinkSpec

# ---------------------------------------------------------------------------------------------
# FLOPs and bytes of compute ops


class OpCost(NamedTuple):
    flops: float
    bytes_read: float
    bytes_written: float


def linear_cost(
    tokens: float,
    in_features: float,
    out_features: float,
    b: float,
    weight_b: float | None = None,
    groups: int = 1,
    in_b: float | None = None,
) -> OpCost:
    """y[T, N] = x[T, K] @ W[K, N]: 2TKN FLOPs (Kaplan et al. 2020, sec. 2.1); reads x and W, writes y.

    `b`: bytes per element of y (the activations). `weight_b`: bytes per stored weight element, block
    scales included (default b). `in_b`: bytes per element of x in the GEMM's compute format (fp8 in
    a W8A8 GEMM; default b). Weights stored in another format than the compute format are converted
    in the GEMM's main loop (mixed-input kernels: Marlin, Machete, CUTLASS), costing their load only.
    `groups`: a batched GEMM of that many independent [K, N] weights, each over the same T rows."""
    wb = b if weight_b is None else weight_b
    ib = b if in_b is None else in_b
    return OpCost(
        2.0 * groups * tokens * in_features * out_features,
        groups * (tokens * in_features * ib + in_features * out_features * wb),
        groups * tokens * out_features * b,
    )


def attention_pairs(q_len: int, kv_len: float, causal: bool = True) -> float:
    """(query, key) pairs scored per head. Causal: query i (of q_len, the last q_len positions of
    kv_len) sees kv_len - q_len + i + 1 keys, summing to q_len*kv_len - q_len*(q_len-1)/2.

    Linear in kv_len, as are the attention costs below: a batch of one-token (decode) sequences of
    different KV lengths is priced exactly with their mean kv_len (a float)."""
    if not causal:
        return float(q_len * kv_len)
    return q_len * kv_len - q_len * (q_len - 1) / 2.0


def windowed_kv_len(q_len: int, kv_len: float, window: int | None) -> float:
    """The KV length a causal chunk over every position would need to score as many (query, key) pairs as
    `q_len` queries (the last q_len of `kv_len` positions) that each attend only to the last `window`
    positions (sliding-window attention, Beltagy et al. 2020; their own included). Query p (0-based) scores
    min(p + 1, window) keys, so the chunk scores sum_{x=a}^{b} min(x, window) with a = kv_len - q_len + 1 and
    b = kv_len, and attention_pairs(q_len, k) = that sum at k = sum / q_len + (q_len - 1) / 2. A decode token
    (q_len 1) gives min(kv_len, window): the positions it reads. None (no window): kv_len.

    Every attention cost above is linear in kv_len, so the window enters as this equivalent length: FLOPs
    exact; K and V bytes as kv_len positions read once, which for a decode token is exact and for a prefill
    chunk (which reads up to q_len + window - 1 positions) a lower figure, where the kernel is compute-bound."""
    if window is None or kv_len <= window:
        return kv_len
    if q_len == 1:
        return float(window)
    a, b, w = kv_len - q_len + 1, kv_len, window
    if a >= w:
        pairs = w * (b - a + 1)
    else:
        pairs = (a + w) * (w - a + 1) / 2.0 + w * (b - w)
    return pairs / q_len + (q_len - 1) / 2.0


def attention_scores_cost(
    batch: float,
    heads: int,
    kv_heads: int,
    q_len: int,
    kv_len: float,
    head_dim: int,
    b: float,
    kv_b: float | None = None,
) -> OpCost:
    """QK^T inside a flash-attention kernel: 2 FLOPs per (query, key, dim); reads Q and K once
    (Dao et al. 2022: scores stay on chip, so nothing is written to HBM). `kv_b`: bytes per
    element of the KV cache (default b)."""
    pairs = attention_pairs(q_len, kv_len)
    kb = b if kv_b is None else kv_b
    return OpCost(
        2.0 * batch * heads * pairs * head_dim,
        batch * heads * q_len * head_dim * b + batch * kv_heads * kv_len * head_dim * kb,
        0.0,
    )


SOFTMAX_FLOPS_PER_ELEMENT = 5.0  # max, subtract, exp, sum, divide (online softmax, Milakov & Gimelshein 2018)


def attention_softmax_cost(batch: float, heads: int, q_len: int, kv_len: float) -> OpCost:
    """Softmax of the scores, fused in the flash kernel: FLOPs on the vector units, no HBM traffic."""
    return OpCost(SOFTMAX_FLOPS_PER_ELEMENT * batch * heads * attention_pairs(q_len, kv_len), 0.0, 0.0)


def attention_context_cost(
    batch: float,
    heads: int,
    kv_heads: int,
    q_len: int,
    kv_len: float,
    head_dim: int,
    b: float,
    kv_b: float | None = None,
) -> OpCost:
    """P @ V inside the flash kernel: 2 FLOPs per (query, key, dim); reads V, writes the output."""
    pairs = attention_pairs(q_len, kv_len)
    kb = b if kv_b is None else kv_b
    return OpCost(
        2.0 * batch * heads * pairs * head_dim,
        batch * kv_heads * kv_len * head_dim * kb,
        batch * heads * q_len * head_dim * b,
    )


def elementwise_cost(elements_in: float, elements_out: float, flops_per_element: float, b: float) -> OpCost:
    """A memory-bound element-wise op: reads its inputs once, writes its outputs once."""
    return OpCost(flops_per_element * elements_out, elements_in * b, elements_out * b)


# FLOPs per output element of common element-wise ops (tanh-GELU ~8, RMSNorm: square, sum, rsqrt, scale ~4).
ACTIVATION_FLOPS_PER_ELEMENT = {"gelu": 8.0, "relu": 1.0, "swiglu": 6.0, "geglu": 9.0}
NORM_FLOPS_PER_ELEMENT = 4.0


def expert_ffn_costs(
    expert_tokens: list[float],
    hidden: int,
    ffn: int,
    gated: bool,
    activation: str,
    b: float,
    weight_b: float | None = None,
    in_b: float | None = None,
    active_experts: float | None = None,
) -> tuple[OpCost, OpCost, OpCost]:
    """FC1, activation, FC2 of a group of experts on one GPU (grouped GEMM over their tokens).

    FC1: [T_e, h] x [h, f] (x2 when gated: gate and up); FC2: [T_e, f] x [f, h]. Each expert's
    weights (`weight_b` bytes per element with block scales, default b) are read once if it
    receives any token: `active_experts` of them (default: those with expected tokens > 0; an expected
    count such as expected_touched_experts gives). `b`: the activations' bytes per element (GEMM outputs,
    the activation function); `in_b`: the GEMMs' inputs in their compute format (default b), as linear_cost.
    """
    wb = b if weight_b is None else weight_b
    ib = b if in_b is None else in_b
    tokens = float(sum(expert_tokens))
    active = sum(1 for t in expert_tokens if t > 0) if active_experts is None else active_experts
    up = 2 * ffn if gated else ffn
    fc1 = OpCost(2.0 * tokens * hidden * up, tokens * hidden * ib + active * hidden * up * wb, tokens * up * b)
    act = elementwise_cost(tokens * up, tokens * ffn, ACTIVATION_FLOPS_PER_ELEMENT[activation], b)
    fc2 = OpCost(2.0 * tokens * ffn * hidden, tokens * ffn * ib + active * ffn * hidden * wb, tokens * hidden * b)
    return fc1, act, fc2


def expected_touched_experts(expert_tokens: list[float], routed_tokens: float) -> float:
    """Expected number of experts that receive at least one token copy, when `routed_tokens` tokens are routed
    independently and expert e expects expert_tokens[e] copies of them: each token picks e with probability
    p = expert_tokens[e] / routed_tokens (at most once: top-k picks distinct experts), so e stays idle with
    probability (1 - p)^routed_tokens (the occupancy problem). A grouped MoE kernel reads an expert's weights
    only when it has a token, so this, not the count of experts with expected tokens > 0, is what a batch
    reads on average: 16 tokens of top-8 routing over 256 experts touch 256 (1 - (1 - 1/32)^16) = 101.96
    experts, not 256. Large batches touch every expert ((1 - p)^T vanishes)."""
    if routed_tokens <= 0.0:
        return 0.0
    touched = 0.0
    for t in expert_tokens:
        if t > 0.0:
            touched += 1.0 - (1.0 - min(t / routed_tokens, 1.0)) ** routed_tokens
    return touched


def kept_copies(copies: float, loads: list[float], capacity_factor: float | None) -> tuple[list[float], float]:
    """Token copies each expert processes out of `copies` routed with fractions `loads`, and the
    copies dropped: with a capacity factor c an expert keeps at most ceil(c * copies / E)
    (GShard, Lepikhin et al. 2020, sec. 2.2); without one it keeps all."""
    wanted = [copies * f for f in loads]
    if capacity_factor is None or not loads:
        return wanted, 0.0
    cap = math.ceil(capacity_factor * copies / len(loads))
    kept = [min(x, cap) for x in wanted]
    return kept, sum(wanted) - sum(kept)


# ---------------------------------------------------------------------------------------------
# Parameters and memory


def attention_params(hidden: int, heads: int, kv_heads: int, head_dim: int) -> int:
    """Q, K, V and output projection weights (no biases)."""
    return hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden


def ffn_params(hidden: int, ffn: int, gated: bool) -> int:
    """One FFN / expert: up (and gate) [h, f] plus down [f, h]."""
    return (3 if gated else 2) * hidden * ffn


def kv_cache_bytes(sequences: float, tokens: int, layers: int, kv_heads: int, head_dim: int, b: float) -> float:
    """K and V for `tokens` positions of `sequences` sequences over `layers` layers."""
    return 2.0 * sequences * tokens * layers * kv_heads * head_dim * b


def mla_attention_params(
    hidden: int, heads: int, nope_dim: int, rope_dim: int, v_dim: int, kv_lora_rank: int, q_lora_rank: int | None
) -> int:
    """Multi-head latent attention weights (DeepSeek-V2, Liu et al. 2024, sec. 2.1): query path
    (W_DQ [h, q_lora] and W_UQ [q_lora, H(nope+rope)], or one [h, H(nope+rope)]), the joint KV
    down-projection with the shared rotary key [h, kv_lora + rope], the KV up-projections
    [kv_lora, H(nope + v)] and the output [H v, h]. The latent norms are counted with the norms."""
    q_out = heads * (nope_dim + rope_dim)
    q = hidden * q_lora_rank + q_lora_rank * q_out if q_lora_rank else hidden * q_out
    return q + hidden * (kv_lora_rank + rope_dim) + kv_lora_rank * heads * (nope_dim + v_dim) + heads * v_dim * hidden


def mla_kv_cache_bytes(sequences: float, tokens: int, layers: int, kv_lora_rank: int, rope_dim: int, b: float) -> float:
    """MLA caches the compressed latent and the shared rotary key: kv_lora + rope values per token
    and layer, for all heads together (DeepSeek-V2, sec. 2.1.2)."""
    return sequences * tokens * layers * (kv_lora_rank + rope_dim) * b


# ---------------------------------------------------------------------------------------------
# Communication (alpha-beta model; Thakur, Rabenseifner & Gropp 2005; NCCL's bus bandwidth docs)


def ring_allreduce_s(message_bytes: float, n: int, link: LinkSpec) -> float:
    """Ring all-reduce: 2(n-1)/n * S / bw + 2(n-1) * latency."""
    if n <= 1:
        return 0.0
    bw = link.bytes_per_s * link.efficiency
    return 2.0 * (n - 1) / n * message_bytes / bw + 2.0 * (n - 1) * link.latency_s


def oneshot_allreduce_s(message_bytes: float, n: int, link: LinkSpec) -> float:
    """One-shot all-reduce over peer memory (an engine's custom all-reduce inside one NVLink node): after a
    barrier every rank reads the whole S from each of its n - 1 peers at once and sums; a second barrier ends
    it. (n-1) * S / bw + 2 * latency."""
    if n <= 1:
        return 0.0
    bw = link.bytes_per_s * link.efficiency
    return (n - 1) * message_bytes / bw + 2.0 * link.latency_s


def twoshot_allreduce_s(message_bytes: float, n: int, link: LinkSpec) -> float:
    """Two-shot all-reduce over peer memory: a reduce-scatter (each rank reads its 1/n of S from the n - 1
    peers and sums it), then an all-gather (each reads the other ranks' reduced 1/n), with a barrier before,
    between and after. 2(n-1)/n * S / bw + 3 * latency."""
    if n <= 1:
        return 0.0
    bw = link.bytes_per_s * link.efficiency
    return 2.0 * (n - 1) / n * message_bytes / bw + 3.0 * link.latency_s


def custom_allreduce_s(message_bytes: float, n: int, link: LinkSpec, max_bytes: float) -> float:
    """An engine's custom all-reduce inside one NVLink node (vLLM's and SGLang's custom_all_reduce, TensorRT-LLM's
    AUTO strategy): the fastest of one-shot, two-shot and NCCL's ring for a message that fits the engine's
    buffer (S < max_bytes, as the engines test it), NCCL's ring from there on. One-shot wins small messages
    (2 latencies instead of the ring's 2(n-1)), two-shot the middle; on two GPUs all three move the same bytes.
    Checked on published micro-benchmarks: hardware_profiles/measurements/public_allreduce.yaml,
    benchmarks/bench_allreduce.py."""
    ring = ring_allreduce_s(message_bytes, n, link)
    if message_bytes >= max_bytes:
        return ring
    return min(oneshot_allreduce_s(message_bytes, n, link), twoshot_allreduce_s(message_bytes, n, link), ring)


def allgather_s(message_bytes: float, n: int, link: LinkSpec) -> float:
    """Ring all-gather (or reduce-scatter) of a total of S bytes: (n-1)/n * S / bw + (n-1) * latency."""
    if n <= 1:
        return 0.0
    bw = link.bytes_per_s * link.efficiency
    return (n - 1) / n * message_bytes / bw + (n - 1) * link.latency_s


def alltoall_s(send_bytes: list[float], recv_bytes: list[float], link: LinkSpec) -> float:
    """All-to-all: the busiest rank sets the pace; each rank's port moves max(send, recv) bytes
    (full duplex), plus one latency per peer."""
    n = len(send_bytes)
    if n <= 1:
        return 0.0
    busiest = max(max(send_bytes), max(recv_bytes))
    return busiest / (link.bytes_per_s * link.efficiency) + (n - 1) * link.latency_s


def hierarchical_allreduce_s(
    message_bytes: float, ranks_per_node: int, nodes: int, intra: LinkSpec, inter: LinkSpec
) -> float:
    """All-reduce over `nodes` nodes of `ranks_per_node` ranks: reduce-scatter inside each node, a
    ring all-reduce of each 1/ranks_per_node shard across the nodes (every GPU on its own NIC, in
    parallel), all-gather inside the node (NCCL's tree/ring hierarchy; Thakur et al. 2005)."""
    if nodes <= 1:
        return ring_allreduce_s(message_bytes, ranks_per_node, intra)
    local = allgather_s(message_bytes, ranks_per_node, intra)  # reduce-scatter costs as an all-gather
    return 2.0 * local + ring_allreduce_s(message_bytes / ranks_per_node, nodes, inter)


def hierarchical_allgather_s(
    message_bytes: float, ranks_per_node: int, nodes: int, intra: LinkSpec, inter: LinkSpec
) -> float:
    """All-gather of S bytes in total: ranks with the same local index gather their S/ranks_per_node
    across the nodes over their NICs, then each node all-gathers the whole S over NVLink."""
    if nodes <= 1:
        return allgather_s(message_bytes, ranks_per_node, intra)
    return allgather_s(message_bytes / ranks_per_node, nodes, inter) + allgather_s(message_bytes, ranks_per_node, intra)


def hierarchical_alltoall_s(
    send_bytes: list[float], recv_bytes: list[float], ranks_per_node: int, nodes: int, intra: LinkSpec, inter: LinkSpec
) -> float:
    """All-to-all across nodes: each rank's traffic splits over its peers in proportion to their
    number (n - ranks_per_node of its n - 1 peers are off the node); the off-node part crosses the
    GPU's NIC, the rest NVLink, concurrently. The slower of the two sets the pace: the NIC, unless
    nearly all peers share the node. The NIC's transfers to its off-node peers are issued at once (DeepEP's
    GPU-initiated RDMA writes, NCCL's grouped send/receive), so they pay one latency, not one per peer: DeepEP's
    published low-latency dispatch takes 173 us on EP64 and 194 us on EP256 for the same bytes per rank (about
    0.1 us per added peer; hardware_profiles/measurements/public_alltoall.yaml, benchmarks/bench_alltoall.py)."""
    n = len(send_bytes)
    if nodes <= 1 or n <= 1:
        return alltoall_s(send_bytes, recv_bytes, intra)
    busiest = max(max(send_bytes), max(recv_bytes))
    off = (n - ranks_per_node) / (n - 1)
    nic_s = busiest * off / (inter.bytes_per_s * inter.efficiency) + inter.latency_s
    nvl_s = busiest * (1.0 - off) / (intra.bytes_per_s * intra.efficiency) + (ranks_per_node - 1) * intra.latency_s
    return max(nic_s, nvl_s)


def sendrecv_s(message_bytes: float, link: LinkSpec) -> float:
    """Point-to-point: S / bw + latency."""
    return message_bytes / (link.bytes_per_s * link.efficiency) + link.latency_s


# ---------------------------------------------------------------------------------------------
# Time of one compute op (roofline + launch)


def roofline_s(flops: float, bytes_moved: float, peak_flops_per_s: float, hbm_bytes_per_s: float) -> tuple[float, str]:
    """max(compute time, memory time) and which bound applied (Williams et al. 2009)."""
    compute_s = flops / peak_flops_per_s
    memory_s = bytes_moved / hbm_bytes_per_s
    return (compute_s, "compute") if compute_s >= memory_s else (memory_s, "memory")


def compute_op_s(
    flops: float,
    bytes_moved: float,
    hw: HardwareProfile,
    dtype: str,
    tensor_core: bool,
    launches: int,
    eager: bool,
    gemm: bool = False,
) -> tuple[float, str]:
    """Time of one compute op on one GPU and its bound.

    GPU time = roofline at the profile's efficiencies + kernel_overhead_s per launch; a tensor-core
    op runs at the peak of its compute format `dtype` (hw.peak_for: the next format the GPU has
    where it lacks that one), a GEMM at the profile's GEMM efficiency for that format where it has one
    (hw.gemm_efficiency_for: public GEMM micro-benchmarks), else compute_efficiency. Eager
    execution: the host issues kernels one at a time, so a kernel cannot take less than
    host_launch_s (the GPU would wait for the next launch). A fused sub-op (launches = 0) adds none.
    """
    efficiency = hw.gemm_efficiency_for(dtype) if gemm and tensor_core else hw.compute_efficiency
    peak = (hw.peak_for(dtype) if tensor_core else hw.vector_flops_per_s) * efficiency
    gpu_s, bound = roofline_s(flops, bytes_moved, peak, hw.hbm_bytes_per_s * hw.memory_efficiency)
    if launches == 0:
        return gpu_s, ("fused" if gpu_s == 0.0 else bound)
    gpu_s += launches * hw.kernel_overhead_s
    if eager and gpu_s < launches * hw.host_launch_s:
        return launches * hw.host_launch_s, "launch"
    return gpu_s, bound


# ---------------------------------------------------------------------------------------------
# Time of one op from measured tables (hardware.Calibration): roofline / measured fraction


def _split_roofline(flops: float, bytes_moved: float, peak: float, hbm: float) -> tuple[float, str]:
    compute_s, memory_s = flops / peak, bytes_moved / hbm
    return (compute_s, "compute") if compute_s >= memory_s else (memory_s, "memory")


def calibrated_gemm_s(
    m: float,
    k: float,
    n: float,
    b: float,
    peak: float,
    hbm: float,
    fraction: float,
    weight_b: float | None = None,
    out_b: float | None = None,
) -> tuple[float, str]:
    """GEMM [m,k] x [k,n]: its roofline time divided by the measured fraction for its shape. `b`:
    bytes per input element (its compute format), `out_b`: per output element (default b). The grouped
    GEMM of one matrix (the same FLOPs and bytes, to the bit)."""
    return calibrated_grouped_gemm_s(1, m, k, n, b, peak, hbm, fraction, weight_b, out_b)


def calibrated_grouped_gemm_s(
    experts: float,
    rows_per_expert: float,
    k: float,
    n: float,
    b: float,
    peak: float,
    hbm: float,
    fraction: float,
    weight_b: float | None = None,
    out_b: float | None = None,
) -> tuple[float, str]:
    """One batched/grouped GEMM over `experts` weight matrices [k,n], each with its rows (bytes as
    calibrated_gemm_s)."""
    e, c = experts, rows_per_expert
    wb = b if weight_b is None else weight_b
    act_bytes = (c * k + c * n) * b if out_b is None else c * k * b + c * n * out_b
    roof, bound = _split_roofline(2.0 * e * c * k * n, e * (act_bytes + k * n * wb), peak, hbm)
    return roof / fraction, bound


class GemmTransfer(NamedTuple):
    """A GEMM's time in the calibrated table's format and what moves the time to another format.

    table_s: the calibrated time of the shape computed in the table's format (roofline / measured
    fraction, every operand and the output at the table format's bytes); operand bytes are the
    streamed inputs (activations + weights), output bytes the result written once."""

    table_s: float
    flops: float
    table_operand_bytes: float
    operand_bytes: float
    table_out_bytes: float
    out_bytes: float


def format_transfer_gemm_s(
    g: GemmTransfer, table_peak: float, peak: float, hbm: float, fixed_s: float
) -> tuple[float, str]:
    """Time of a GEMM whose compute format differs from the format its calibration table was measured
    in (e.g. an fp8 W8A8 GEMM on an fp16-measured table), and its bound.

    The measured time of the shape in the table's format is split into a part that does not depend on
    the compute format and a streaming part that does:

        fixed    = min(t_table, fixed_s + out_bytes_table / hbm)
        stream   = t_table - fixed
        S(fmt)   = max(flops / peak(fmt), operand_bytes(fmt) / hbm)
        t(fmt)   = fixed + (out_bytes(fmt) - out_bytes_table) / hbm + stream * S(fmt) / S(table)

    `fixed_s` (the profile's kernel_overhead_s: launch on the GPU, pipeline fill and drain, the
    last wave's tail) and the output write (the epilogue stores the result after the main loop; its
    bytes are those of the output format, bf16 under fp8 GEMMs) do not shrink with a faster format.
    The streaming part (the main loop: MMAs fed by the operand loads) scales with the roofline of the
    operands: with the peak when compute-bound (fp8: x 1/2), with the operand bytes when memory-bound
    (fp8 weights and activations: x 1/2), so the shape's measured inefficiency in the main loop (wave
    quantisation, clocks under load) carries over in proportion. `hbm` is the sustained rate (peak x
    memory_efficiency). Checked against public fp8 micro-benchmarks (H800 / H100: TileLang, DeepGEMM,
    FBGEMM, vLLM, torch._scaled_mm) in docs/precision.md; `benchmarks/bench_fp8_gemm.py` prints it.
    """
    fixed = min(g.table_s, fixed_s + g.table_out_bytes / hbm)
    stream = g.table_s - fixed
    table_stream = max(g.flops / table_peak, g.table_operand_bytes / hbm)
    compute_s, memory_s = g.flops / peak, g.operand_bytes / hbm
    stream_s = max(compute_s, memory_s)
    time_s = fixed + (g.out_bytes - g.table_out_bytes) / hbm + stream * stream_s / table_stream
    return max(time_s, 0.0), ("compute" if compute_s >= memory_s else "memory")


def calibrated_attention_s(
    flops: float,
    bytes_moved: float,
    q_len: int,
    peak: float,
    hbm: float,
    fraction: float,
    compute_fraction: float | None = None,
) -> tuple[float, str]:
    """A share of a flash-attention kernel: prefill at the measured fraction of tensor peak on its
    FLOPs; decode (one query) at the measured fraction of HBM bandwidth on its bytes, or, when longer, its
    FLOPs at `compute_fraction` of the tensor peak (the measured flash-attention compute rate at the same
    work): a decode kernel whose query heads share few KV heads is compute-bound (MLA's absorbed decode, 128
    heads over one latent: 2 x 128 x (576 + 512) FLOPs per 576 cached bytes; GQA's groups of 4-16 stay far
    below the ridge)."""
    if q_len > 1:
        return flops / (peak * fraction), "compute"
    memory_s = bytes_moved / (hbm * fraction)
    if compute_fraction is not None:
        compute_s = flops / (peak * compute_fraction)
        if compute_s > memory_s:
            return compute_s, "compute"
    return memory_s, "memory"


def eager_time_s(
    gpu_s: float, bound: str, launches: int, kernel_overhead_s: float, floor_s: float, eager: bool
) -> tuple[float, str]:
    """A node of `launches` kernels takes at least the smallest kernel time on the GPU for each
    and, launched eagerly, at least its class's eager floor for each (the host cannot issue them
    faster). Fused sub-ops (launches=0) take only their share of the GPU time."""
    if launches == 0:
        return gpu_s, bound
    if gpu_s < launches * kernel_overhead_s:
        gpu_s, bound = launches * kernel_overhead_s, "launch"
    if eager and gpu_s < launches * floor_s:
        return launches * floor_s, "launch"
    return gpu_s, bound
