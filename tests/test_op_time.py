"""Op time of PyTorch helper nodes priced kernel by kernel (op_time.helper_kernels_s)."""

from __future__ import annotations

import pytest
from conftest import TINY_MOE, make_scenario

from simulator.config import resolve_hardware
from simulator.graph import PYTORCH_HELPER_KERNELS, build
from simulator.graph.blocks import SORT_MEMSETS
from simulator.op_time import helper_kernels_s, node_time_s

H200 = resolve_hardware(make_scenario(TINY_MOE, hardware="h200-sxm-141gb"))


def _calibration(**update):
    cal = H200.calibration
    assert cal is not None
    return cal.model_copy(update=update)


def test_each_kernel_at_its_rate_or_its_measured_time_per_call():
    """gather at its rate per byte written; a copy-class kernel at the copy rate on (read + written) / 2;
    a memset at its measured 1 us, below the 2 us assumed minimum; a radix pass at its measured 6 us
    unless its bytes take longer; an unmeasured small kernel at the 2 us minimum."""
    cal = _calibration(
        elementwise_s_per_byte={**H200.calibration.elementwise_s_per_byte, "gather": 1e-9, "copy": 2e-9},
        helper_kernel_s={"memset": 1e-6, "radix_sort_pass": 6e-6},
    )
    kernels = (
        ("gather", 5000.0, 0.0),  # 5 us
        ("copy", 3000.0, 1000.0),  # 2e-9 x 2000 = 4 us
        ("memset", 0.0, 0.0),  # 1 us measured (not the 2 us floor)
        ("radix_sort_pass", 1000.0, 1000.0),  # 2 us of bytes -> its 6 us per call
        ("radix_sort_pass", 5000.0, 5000.0),  # 10 us of bytes -> 10 us
        ("to_host", 8.0, 8.0),  # unmeasured: the 2 us minimum
    )
    time_s, bound = helper_kernels_s(kernels, cal, 2e-6)
    assert time_s == pytest.approx((5 + 4 + 1 + 6 + 10 + 2) * 1e-6)
    assert bound == "memory"  # the per-call minimums (1 + 6 + 2 us) are under half of the 28 us


def test_without_a_measured_class_the_kernels_take_the_copy_rate_and_the_minimum():
    cal = _calibration(helper_kernel_s={})
    copy = cal.elementwise_s_per_byte["copy"]
    kernels = (("memset", 0.0, 0.0), ("copy", 1e9, 1e9))
    assert helper_kernels_s(kernels, cal, 2e-6) == (pytest.approx(2e-6 + copy * 1e9), "memory")
    assert helper_kernels_s(kernels[:1], cal, 2e-6) == (2e-6, "launch")


def test_sorted_moe_helpers_in_the_graph():
    """The sorted MoE's routing as the reference runs it: argsort (12 kernels + 10 CUB memsets), then the
    three host reads of bincount and .tolist(); launches match PYTORCH_HELPER_KERNELS (memsets are not
    launches); no copy of the attention context (a view); device time from the measured classes."""
    scenario = make_scenario(
        TINY_MOE,
        hardware="h200-sxm-141gb",
        cluster={"num_gpus": 1, "gpus_per_node": 1},
        parallel={"tp": 1, "ep": 1, "pp": 1, "dp": 1},
        runtime={"mode": "eager", "framework": "pytorch"},
        model={"moe_impl": "per_expert"},
    )
    attrs = [a for a in build(scenario).attrs if a["phase"] == "prefill" and a["layer"] == 0]
    ops = [a["op"] for a in attrs]
    assert "attn_out_copy" not in ops
    i = ops.index("moe_sort")
    assert ops[i : i + 5] == ["moe_sort", "moe_count_min", "moe_count_max", "moe_count", "moe_permute"]
    for a in attrs[i : i + 4]:
        kernels = a["helper_kernels"]
        assert a["launches"] == PYTORCH_HELPER_KERNELS[a["op"]] == sum(k[0] != "memset" for k in kernels)
        assert a["bytes_written"] == sum(k[1] for k in kernels) and a["bytes_read"] == sum(k[2] for k in kernels)
    sort = attrs[i]["helper_kernels"]
    assert [k[0] for k in sort].count("radix_sort_pass") == 8 and [k[0] for k in sort].count("memset") == SORT_MEMSETS
    count_min = attrs[i + 1]
    cal = H200.calibration
    # a full reduction (measured per call) and a copy to the host (the assumed 2 us minimum)
    expected = cal.helper_kernel_s["reduce_all"] + H200.kernel_overhead_s
    assert node_time_s(count_min, H200, 8, eager=False) == (pytest.approx(expected), "launch")
    assert attrs[i + 4]["helper_kernels"][0][0] == "gather"


def test_residual_add_and_norm_at_their_rate_per_byte_moved():
    """The element-wise classes were measured reading one tensor and writing one of its size, so their
    rate per byte moved is half their time per output byte: a residual add (reads x and y, writes x + y)
    of 33.55 MB tensors moves 100.66 MB; at the H200's 'add' rate (0.5198 ms for 2 x 1 GiB) that is
    24.37 us, the seed's kernel_breakdown figure (0.7805 ms / 32 calls = 24.39 us)."""
    from simulator.op_time import calibrated_node_s

    cal = H200.calibration
    tensor = 8 * 4096 * 512 * 2.0
    attrs = {"op": "residual_add", "dtype": "fp16", "bytes_read": 2 * tensor, "bytes_written": tensor, "launches": 1}
    attrs |= {"kind": "compute", "flops": tensor / 2, "tensor_core": False}
    time_s, bound = calibrated_node_s(attrs, H200, cal, eager=False, gated=False)
    assert time_s == pytest.approx(cal.elementwise_s_per_byte["add"] * 1.5 * tensor)
    assert time_s == pytest.approx(0.7805e-3 / 32, rel=0.002) and bound == "memory"
    norm = attrs | {"op": "norm_attn", "bytes_read": tensor + 1024.0, "bytes_written": tensor}
    assert calibrated_node_s(norm, H200, cal, eager=False, gated=False)[0] == pytest.approx(
        cal.elementwise_s_per_byte["rmsnorm"] * (tensor + 512.0)
    )


def test_fused_swiglu_is_one_kernel_at_the_activation_rate_per_byte_moved():
    """An engine's fused SwiGLU (one kernel: reads gate and up, writes their product) moves 3 units per row;
    the measured "silu_mul" class is PyTorch's pair (silu on a strided half, then mul), which moves 5. The
    fused node takes the one-kernel "gelu" rate per byte moved: rows 4096, f 14336, bf16 -> reads 234.88 MB,
    writes 117.44 MB; at the H200's gelu figure (1.3090 ms for 2 x 2 GiB moved) that is 107.4 us, where
    the PyTorch pair at its measured 1.1825 ps per input byte takes 277.7 us."""
    from simulator.op_time import calibrated_node_s

    cal = H200.calibration
    rows, f = 4096, 14336
    read, written = rows * 2 * f * 2.0, rows * f * 2.0
    fused = {"op": "ffn_act", "dtype": "bf16", "bytes_read": read, "bytes_written": written, "launches": 1}
    fused |= {"kind": "compute", "flops": 6.0 * rows * f, "tensor_core": False}
    time_s, bound = calibrated_node_s(fused, H200, cal, eager=False, gated=True)
    assert time_s == pytest.approx(cal.elementwise_s_per_byte["gelu"] * (read + written) / 2.0)
    assert time_s == pytest.approx(1.3090e-3 * (read + written) / (4 * 2**30), rel=1e-4)
    assert time_s == pytest.approx(107.4e-6, rel=1e-3) and bound == "memory"
    pair = fused | {"launches": 2}
    assert calibrated_node_s(pair, H200, cal, eager=False, gated=True)[0] == pytest.approx(277.7e-6, rel=1e-3)


@pytest.mark.parametrize("framework, launches", [("fused", 1), ("pytorch", 2)])
def test_gated_activations_launch_what_the_framework_runs(framework, launches):
    """PyTorch's SwiGLU is silu then mul (two kernels) in dense FFNs, shared and routed experts alike; an
    engine's is one fused kernel."""
    runtime = {"framework": framework}
    moe = make_scenario(
        TINY_MOE,
        runtime=runtime,
        model={"activation": "swiglu", "num_shared_experts": 1, "shared_expert_ffn_size": 64},
    )
    dense_model = {k: v for k, v in TINY_MOE["model"].items() if k not in ("num_experts", "top_k", "expert_ffn_size")}
    dense = make_scenario(
        {**TINY_MOE, "model": {**dense_model, "ffn_size": 128, "activation": "swiglu"}},
        runtime=runtime,
        parallel={"tp": 2, "ep": 1, "pp": 2, "dp": 1},
    )
    seen: dict[str, set[int]] = {}
    for scenario in (moe, dense):
        for a in build(scenario).attrs:
            if a["op"] in ("ffn_act", "shared_act", "expert_act"):
                seen.setdefault(a["op"], set()).add(a["launches"])
    assert seen == {"ffn_act": {launches}, "shared_act": {launches}, "expert_act": {launches}}


def test_mla_decode_attention_is_compute_bound_and_gqa_decode_memory_bound():
    """MLA's absorbed decode is MQA of 128 heads over one 576-wide latent: the scores make 2 x 128 x 576 FLOPs per
    576 cached bytes (fp8), 256 FLOP/B, and the context 2 x 128 x 512 more over the latent already on chip, so
    on an H200 (989 TFLOP/s bf16 at the measured flash-attention fraction, 4.8 TB/s) the kernel is compute-bound:
    each node takes its FLOPs at the prefill table's fraction for its work (batch heads x KV length). Llama 3
    8B's groups of 4 query heads per KV head make 2 x 4 FLOPs per cached byte: memory-bound as before."""
    from simulator.config.hardware import series_interpolate
    from simulator.op_time import calibrated_node_s

    cal = H200.calibration
    seqs, kv_len = 38, 17_400
    ds = make_scenario(
        {"name": "ds", "model": {"preset": "deepseek-v3", "precision": {"preset": "fp8-w8a8", "kv_cache": "fp8"}}},
        hardware="h200-sxm-141gb",
        cluster={"num_gpus": 1},
        workload={"batch_size": seqs, "input_len_tokens": kv_len, "output_len_tokens": 2},
    )
    nodes = {a["op"]: a for a in build(ds).attrs if a.get("phase") == "decode" and a.get("layer") == 0}
    scores, context = nodes["attn_scores"], nodes["attn_context"]
    assert scores["kv_len"] == kv_len + 1  # the first decode step attends to the prompt and its first token
    kv_len += 1
    assert scores["flops"] == 2 * seqs * 128 * kv_len * 576 and context["flops"] == 2 * seqs * 128 * kv_len * 512
    assert scores["bytes_read"] - 2 * seqs * 128 * 576 == seqs * kv_len * 576  # the fp8 latent, queries in bf16
    frac = series_interpolate(cal.attention_prefill, (576,), seqs * 128 * kv_len)
    assert 0.40 < frac < 0.45  # d = 576 lies beyond the table's head dims: blended from its 32 and 128 series
    time_s, bound = calibrated_node_s(context, H200, cal, eager=False, gated=True)
    assert bound == "compute" and time_s == pytest.approx(context["flops"] / (H200.peak_for("bf16") * frac))
    assert calibrated_node_s(scores, H200, cal, eager=False, gated=True)[1] == "compute"
    llama = make_scenario(
        {"name": "l8", "model": {"preset": "llama-3-8b", "precision": {"preset": "fp8-w8a8", "kv_cache": "fp8"}}},
        hardware="h200-sxm-141gb",
        cluster={"num_gpus": 1},
        workload={"batch_size": seqs, "input_len_tokens": kv_len - 1, "output_len_tokens": 2},
    )
    gqa = {a["op"]: a for a in build(llama).attrs if a.get("phase") == "decode" and a.get("layer") == 0}
    assert gqa["attn_scores"]["kv_len"] == kv_len
    assert gqa["attn_scores"]["flops"] == 2 * seqs * 32 * kv_len * 128
    assert calibrated_node_s(gqa["attn_scores"], H200, cal, eager=False, gated=True)[1] == "memory"
    assert calibrated_node_s(gqa["attn_context"], H200, cal, eager=False, gated=True)[1] == "memory"
