"""Calibration input, end-to-end part: random-weight MoE transformer blocks timed as whole forward passes,
in the format of the `e2e_dev` and `kernel_breakdown` sections of hardware_profiles/measurements/h200_micro.json.

Prefill uses a "sorted" MoE (tokens argsorted by expert, one GEMM pair per expert over exactly its tokens);
decode steps use capacity dispatch (static shapes), timed eagerly and, on CUDA, replayed from a CUDA graph.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace

from simulator.calibration.timing import Timer, flash_attention_only, rand_fp16, rms_norm

TOP_KERNELS, KERNEL_NAME_CHARS = 25, 160
CAPACITY_FACTOR = 1.25  # decode MoE: expert slots per evenly routed token (GShard style)


@dataclass(frozen=True)
class BlockModel:
    """A stack of MoE transformer blocks (no embedding, no LM head), as the shared file's e2e cases."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    top_k: int
    expert_ffn_size: int
    activation: str  # "gelu" or "swiglu"


SEED = BlockModel("seed_moe_16L", 16, 512, 16, 16, 32, 16, 2, 1024, "gelu")
MIXTRAL = BlockModel("mixtral_like_1L", 1, 4096, 32, 8, 128, 8, 2, 14336, "swiglu")
E2E_PREFILL = ((SEED, 8, 4096), (MIXTRAL, 8, 2048))  # model, batch, seq
E2E_DECODE = ((SEED, 32, 4096),)  # model, batch, kv_len
QUICK_E2E_PREFILL = ((replace(SEED, num_layers=2), 1, 16),)
QUICK_E2E_DECODE = ((replace(SEED, num_layers=2), 2, 64),)


def layer_weights(torch, m: BlockModel, device: str) -> dict:
    h, d, e, f = m.hidden_size, m.head_dim, m.num_experts, m.expert_ffn_size
    up = 2 * f if m.activation == "swiglu" else f
    ones = torch.ones(h, device=device, dtype=torch.float16)
    return {
        "norm1": ones,
        "norm2": ones,
        "router": rand_fp16(torch, (h, e), device, h**-0.5),
        "wqkv": rand_fp16(torch, (h, (m.num_heads + 2 * m.num_kv_heads) * d), device, h**-0.5),
        "wo": rand_fp16(torch, (m.num_heads * d, h), device, (m.num_heads * d) ** -0.5),
        "w1": rand_fp16(torch, (e, h, up), device, h**-0.5),
        "w2": rand_fp16(torch, (e, f, h), device, f**-0.5),
    }


def _act(F, m: BlockModel, x):
    if m.activation == "swiglu":
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(x)


def _route(torch, m: BlockModel, lw: dict, a):
    """Router GEMM, fp32 softmax, top-k, renormalised weights: ([T,k] fp32, [T,k] int64)."""
    probs = torch.softmax(a @ lw["router"], -1, dtype=torch.float32)  # [T, E]
    top_w, top_e = probs.topk(m.top_k, dim=-1)
    return top_w / top_w.sum(-1, keepdim=True), top_e


def _attention_qkv(m: BlockModel, lw: dict, a, b: int, q_len: int):
    hq, hkv, d = m.num_heads, m.num_kv_heads, m.head_dim
    q, k, v = (a @ lw["wqkv"]).split([hq * d, hkv * d, hkv * d], dim=-1)  # fused QKV GEMM
    return (
        q.view(b, q_len, hq, d).transpose(1, 2),
        k.view(b, q_len, hkv, d).transpose(1, 2),
        v.view(b, q_len, hkv, d).transpose(1, 2),
    )  # [B, heads, q_len, D]


def prefill_block(torch, m: BlockModel, lw: dict, x):
    """Pre-RMSNorm block with flash attention and a sorted MoE (one GEMM pair per expert over exactly
    its routed tokens, weighted index_add combine). x [B,S,h]; the split sizes need host syncs (on CUDA,
    bincount reads min and max back before counting, then .tolist() copies the counts: three)."""
    import torch.nn.functional as F

    b, s_len, h = x.shape
    q, k, v = _attention_qkv(m, lw, rms_norm(torch, x, lw["norm1"]), b, s_len)
    if m.num_kv_heads != m.num_heads:  # GQA: expand K/V so the flash kernels apply
        k, v = (t.repeat_interleave(m.num_heads // m.num_kv_heads, dim=1) for t in (k, v))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, S, D]
    x = x + o.transpose(1, 2).reshape(b, s_len, -1) @ lw["wo"]
    a = rms_norm(torch, x, lw["norm2"]).view(-1, h)  # [T, h]
    top_w, top_e = _route(torch, m, lw, a)
    order = top_e.view(-1).argsort()  # assignments sorted by expert
    token = order // m.top_k
    counts = torch.bincount(top_e.view(-1), minlength=m.num_experts).tolist()
    ys = [_act(F, m, xe @ lw["w1"][e]) @ lw["w2"][e] for e, xe in enumerate(a.index_select(0, token).split(counts))]
    ys = torch.cat(ys) * top_w.view(-1)[order].unsqueeze(1).to(a.dtype)  # [T*k, h]
    return x + torch.zeros_like(a).index_add_(0, token, ys).view(b, s_len, h)


def decode_block(torch, m: BlockModel, lw: dict, cache: tuple, x):
    """One decode step of a block with static shapes (CUDA-graph capturable): the new K/V overwrite the
    last cache slot, attention reads all L slots, and the MoE uses capacity dispatch: each expert gets
    C = ceil(T*k/E*1.25) slots, tokens are scattered into [E,C,h], one bmm pair runs over all experts,
    results are gathered back; overflowing tokens go to a trash row. x [B,1,h]."""
    import torch.nn.functional as F

    b, _, h = x.shape
    e_num, k_top = m.num_experts, m.top_k
    q, k, v = _attention_qkv(m, lw, rms_norm(torch, x, lw["norm1"]), b, 1)
    cache[0][:, :, -1:] = k
    cache[1][:, :, -1:] = v
    o = F.scaled_dot_product_attention(q, cache[0], cache[1], enable_gqa=m.num_kv_heads != m.num_heads)
    x = x + o.transpose(1, 2).reshape(b, 1, -1) @ lw["wo"]
    a = rms_norm(torch, x, lw["norm2"]).view(b, h)  # [T, h]
    top_w, top_e = _route(torch, m, lw, a)
    cap = math.ceil(b * k_top / e_num * CAPACITY_FACTOR)
    flat_e = top_e.view(-1)  # [T*k]
    onehot = (flat_e.unsqueeze(1) == torch.arange(e_num, device=x.device)).to(torch.int32)  # no host sync
    pos = (onehot.cumsum(0) - 1).gather(1, flat_e.unsqueeze(1)).squeeze(1)
    kept = pos < cap
    slot = torch.where(kept, flat_e * cap + pos, e_num * cap)  # trash row at E*C
    token = torch.arange(b, device=x.device).repeat_interleave(k_top)
    buf = torch.zeros(e_num * cap + 1, h, device=x.device, dtype=a.dtype).index_copy_(0, slot, a[token])
    hid = _act(F, m, torch.bmm(buf[:-1].view(e_num, cap, h), lw["w1"]))
    y = torch.cat([torch.bmm(hid, lw["w2"]).view(e_num * cap, h), buf[-1:] * 0])[slot]  # [T*k, h]
    y = y * (top_w.view(-1) * kept).unsqueeze(1).to(a.dtype)
    return x + y.view(b, k_top, h).sum(1).view(b, 1, h)


def _kernel_breakdown(torch, device: str, fn) -> tuple[float, list]:
    """One profiled call: total GPU kernel time and the top kernels as [name, count, seconds].
    On CPU the 'kernels' are operators (self CPU time)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        (torch.cuda if cuda else torch.cpu).synchronize()
    agg: dict[str, list] = {}
    for ev in prof.events():
        if ev.device_type != (DeviceType.CUDA if cuda else DeviceType.CPU):
            continue
        us = ev.time_range.elapsed_us() if cuda else ev.self_cpu_time_total
        entry = agg.setdefault(ev.name[:KERNEL_NAME_CHARS], [ev.name[:KERNEL_NAME_CHARS], 0, 0.0])
        entry[1] += 1
        entry[2] += us / 1e6
    top = sorted(agg.values(), key=lambda row: -row[2])[:TOP_KERNELS]
    return sum(row[2] for row in agg.values()), top


def bench_e2e(torch, t: Timer, device: str, prefill_cases, decode_cases, progress) -> tuple[list, list]:
    """Whole forward passes of random-weight blocks: prefill (sorted MoE, eager, plus a kernel
    breakdown) and decode steps (capacity MoE, eager and replayed from a CUDA graph on CUDA)."""
    e2e, breakdown = [], []
    for m, batch, seq in prefill_cases:
        layers = [layer_weights(torch, m, device) for _ in range(m.num_layers)]
        x = rand_fp16(torch, (batch, seq, m.hidden_size), device)

        def forward():
            y = x
            for lw in layers:
                y = prefill_block(torch, m, lw, y)
            return y

        with flash_attention_only(torch, device):
            s = t.per_call_s(forward)
            kernel_s, top = _kernel_breakdown(torch, device, forward)
        head = {
            "case": m.name,
            "impl": "sorted",
            "phase": "prefill",
            "batch": batch,
            "seq": seq,
            "layers": m.num_layers,
        }
        e2e.append({**head, "s": s})
        breakdown.append({**head, "wall_s": s, "kernel_total_s": kernel_s, "top_kernels": top})
        progress(f"e2e {m.name} prefill B={batch} S={seq}: {s * 1e3:.2f} ms")
    for m, batch, kv_len in decode_cases:
        layers = [layer_weights(torch, m, device) for _ in range(m.num_layers)]
        caches = [
            tuple(rand_fp16(torch, (batch, m.num_kv_heads, kv_len, m.head_dim), device) for _ in range(2))
            for _ in layers
        ]
        x = rand_fp16(torch, (batch, 1, m.hidden_size), device)

        def step():
            y = x
            for lw, cache in zip(layers, caches):
                y = decode_block(torch, m, lw, cache, y)
            return y

        entry = {
            "case": m.name,
            "phase": "decode_step",
            "layers": m.num_layers,
            "batch": batch,
            "kv_len": kv_len,
            "s_eager": t.per_call_s(step),
            "s_cuda_graph": None,
        }
        if device.startswith("cuda"):
            entry["s_cuda_graph"] = _graph_replay_s(torch, t, step)
        e2e.append(entry)
        graph = "-" if entry["s_cuda_graph"] is None else f"{entry['s_cuda_graph'] * 1e3:.2f} ms"
        progress(f"e2e {m.name} decode B={batch} L={kv_len}: eager {entry['s_eager'] * 1e3:.2f} ms, graph {graph}")
    return e2e, breakdown


def _graph_replay_s(torch, t: Timer, step) -> float | None:
    """Capture step into a CUDA graph (after side-stream warm-up, as PyTorch requires) and time replays."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return t.per_call_s(graph.replay)
    except RuntimeError as exc:  # a kernel that cannot be captured: report eager only
        print(f"microbench: CUDA graph capture failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        return None
