"""Precision as engines run it (config.precision): formats and their bytes, presets, the legacy dtype
fields, GEMM / attention / KV / collective costs per class, the peak each GEMM runs at, memory per GPU,
the summary line and bad input. Every expected figure is computed by hand from the formulas."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from conftest import ROOT, TINY_MOE, make_scenario
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import small_scenarios

from simulator import costs
from simulator.cli import main
from simulator.config import ScenarioError, parse_scenario, precision_line, resolve_hardware
from simulator.config.hardware import load_profile
from simulator.config.precision import FORMAT_BYTES, PrecisionSpec, resolve_precision
from simulator.graph import build, build_dag
from simulator.memory import kv_cache_bytes_per_gpu, weight_bytes_per_gpu
from simulator.op_time import node_time_s, transferred_gemm_s
from simulator.pipeline import run_scenario

# A dense layer of Llama-3-8B's shape (hidden 4096, 32 heads of 128, SwiGLU 14336), one layer, TP 1.
DENSE = {
    "name": "dense_precision",
    "model": {
        "name": "dense",
        "num_layers": 1,
        "hidden_size": 4096,
        "num_heads": 32,
        "num_kv_heads": 8,
        "head_dim": 128,
        "ffn_size": 14336,
        "activation": "swiglu",
        "dtype": "bf16",
    },
    # roofline only (no measured tables): every time below is a closed form of the profile's figures
    "hardware": {"profile": "h100-sxm-80gb", "calibration": None},
    "cluster": {"num_gpus": 1, "gpus_per_node": 1},
    "parallel": {"tp": 1},
    "workload": {"batch_size": 1, "input_len_tokens": 4096, "output_len_tokens": 2},
}


def dense(precision=None, **model) -> dict:
    data = copy.deepcopy(DENSE)
    data["model"].update(model)
    if precision is not None:
        data["model"]["precision"] = precision
    return data


def node(scenario, op: str, phase: str) -> dict:
    """The attributes of the first node of `op` in `phase` (GPU 0)."""
    graph = build_dag(scenario)
    return next(a for _, a in graph.nodes(data=True) if a.get("op") == op and a.get("phase") == phase)


# ---------------------------------------------------------------------------------------------
# Formats


def test_block_scaled_formats_count_their_scales():
    assert FORMAT_BYTES["mxfp4"] == 0.5 + 1 / 32  # OCP MX v1.0: 32 E2M1 elements share one E8M0 byte
    assert FORMAT_BYTES["nvfp4"] == 0.5 + 1 / 16  # NVFP4: 16 E2M1 elements share one E4M3 byte
    assert FORMAT_BYTES["int4"] == 0.5 + 2.5 / 128  # group 128: fp16 scale + 4-bit zero point
    assert (FORMAT_BYTES["fp8"], FORMAT_BYTES["int8"], FORMAT_BYTES["bf16"], FORMAT_BYTES["fp32"]) == (1, 1, 2, 4)


def test_legacy_fields_map_onto_the_classes():
    p = resolve_precision("bf16", "fp8", None, None)
    assert (p.name, p.explicit) == ("model dtypes", False)
    for c in (p.dense_gemm, p.expert_gemm, p.lm_head, p.router):
        assert (c.storage, c.compute) == ("fp8", "bf16")
    assert (p.activations, p.attention, p.kv_cache, p.communication) == ("bf16",) * 4
    q = resolve_precision("fp16", None, "fp8", None)
    assert q.kv_cache == "fp8" and q.dense_gemm.storage == "fp16" and not q.uniform
    assert resolve_precision("fp16", None, None, None).uniform


def test_fp8_w8a8_preset_keeps_16_bit_what_engines_keep():
    p = resolve_precision("fp16", None, None, PrecisionSpec.model_validate("fp8-w8a8"))
    assert (p.dense_gemm.storage, p.dense_gemm.compute) == ("fp8", "fp8")
    assert (p.expert_gemm.storage, p.expert_gemm.compute) == ("fp8", "fp8")
    assert (p.lm_head.storage, p.router.storage) == ("fp16", "fp16")  # the model's 16-bit dtype
    assert (p.kv_cache, p.attention, p.communication, p.activations) == ("fp8", "fp16", "fp16", "fp16")
    assert p.describe() == (
        "precision: fp8-w8a8 (weights fp8, GEMMs fp8, LM head fp16, attention fp16, KV fp8, collectives fp16)"
    )


def test_weight_only_and_expert_only_presets():
    w4 = resolve_precision("bf16", None, None, PrecisionSpec.model_validate("w4a16"))
    assert (w4.dense_gemm.storage, w4.dense_gemm.compute, w4.kv_cache) == ("int4", "bf16", "bf16")
    mx = resolve_precision("bf16", None, None, PrecisionSpec.model_validate("mxfp4"))
    assert (mx.expert_gemm.storage, mx.expert_gemm.compute) == ("mxfp4", "bf16")
    assert (mx.dense_gemm.storage, mx.dense_gemm.compute) == ("bf16", "bf16")  # gpt-oss: attention in bf16
    nv = resolve_precision("bf16", None, None, PrecisionSpec.model_validate("nvfp4"))
    assert (nv.dense_gemm.storage, nv.dense_gemm.compute) == ("nvfp4", "nvfp4")


def test_a_preset_replaces_the_legacy_fields_and_overrides_replace_the_preset():
    spec = PrecisionSpec.model_validate({"preset": "fp8-w8a8", "attention": "fp8", "communication": {"payload": "fp8"}})
    p = resolve_precision("bf16", "fp32", "fp32", spec)
    assert p.name == "fp8-w8a8 + overrides"
    assert (p.attention, p.communication, p.kv_cache, p.dense_gemm.storage) == ("fp8", "fp8", "fp8", "fp8")
    custom = resolve_precision("bf16", None, None, PrecisionSpec.model_validate({"kv_cache": "fp8"}))
    assert (custom.name, custom.kv_cache, custom.dense_gemm.storage) == ("custom", "fp8", "bf16")


# ---------------------------------------------------------------------------------------------
# Bytes and FLOPs of one GEMM, by hand


def test_linear_cost_reads_stored_weights_and_inputs_in_the_compute_format():
    # x[4, 32] @ W[32, 16]: mxfp4 weights (0.53125 B), fp8 input (1 B), bf16 output (2 B)
    cost = costs.linear_cost(4, 32, 16, 2.0, FORMAT_BYTES["mxfp4"], 1, 1.0)
    assert cost.flops == 2 * 4 * 32 * 16
    assert cost.bytes_read == 4 * 32 * 1.0 + 32 * 16 * 0.53125  # 128 + 272
    assert cost.bytes_written == 4 * 16 * 2.0


def test_expert_costs_take_the_expert_formats():
    fc1, act, fc2 = costs.expert_ffn_costs([3.0, 0.0, 1.0], 8, 16, False, "gelu", 2.0, 0.5625, 0.5625)
    # 4 tokens over 2 active experts, nvfp4 weights and inputs, bf16 outputs
    assert fc1 == costs.OpCost(2 * 4 * 8 * 16, 4 * 8 * 0.5625 + 2 * 8 * 16 * 0.5625, 4 * 16 * 2.0)
    assert fc2 == costs.OpCost(2 * 4 * 16 * 8, 4 * 16 * 0.5625 + 2 * 16 * 8 * 0.5625, 4 * 8 * 2.0)
    assert act.bytes_read == 4 * 16 * 2.0  # the activation function stays in the activations' format


def test_gemm_node_attributes_under_w8a8():
    s = parse_scenario(dense("fp8-w8a8"), "t")
    q = node(s, "q_proj", "prefill")
    tokens, hidden, n = 4096, 4096, 32 * 128
    assert (q["dtype"], q["weight_b"], q["out_b"]) == ("fp8", 1.0, 2.0)
    assert q["bytes_read"] == tokens * hidden * 1.0 + hidden * n * 1.0
    assert q["bytes_written"] == tokens * n * 2.0
    assert q["flops"] == 2.0 * tokens * hidden * n


def test_legacy_gemm_nodes_carry_no_new_attribute():
    q = node(parse_scenario(dense(weight_dtype="fp8"), "t"), "q_proj", "prefill")
    assert (q["dtype"], q["weight_b"]) == ("bf16", 1.0) and "out_b" not in q


# ---------------------------------------------------------------------------------------------
# The peak each GEMM runs at, and what changes with the precision (roofline profile)


def assert_time(actual: tuple[float, str], seconds: float, bound: str) -> None:
    assert actual[1] == bound and actual[0] == pytest.approx(seconds, rel=1e-12)


def _time(scenario, op: str, phase: str) -> tuple[float, str]:
    hw = resolve_hardware(scenario)
    return node_time_s(node(scenario, op, phase), hw, 1, eager=False, gated=True)


def test_weight_only_fp8_keeps_prefill_gemm_time_and_halves_decode_gemm_time():
    hw = resolve_hardware(parse_scenario(dense(), "t"))
    bf16, w8a16 = parse_scenario(dense("bf16"), "t"), parse_scenario(dense("fp8-w8a16"), "t")
    tokens, k, n = 4096, 4096, 2 * 14336
    peak = hw.peak_flops_per_s.bf16 * hw.compute_efficiency
    prefill_s = 2.0 * tokens * k * n / peak + hw.kernel_overhead_s
    assert_time(_time(bf16, "ffn_fc1", "prefill"), prefill_s, "compute")
    assert_time(_time(w8a16, "ffn_fc1", "prefill"), prefill_s, "compute")
    hbm = hw.hbm_bytes_per_s * hw.memory_efficiency
    decode_bf16_s = (k * 2 + k * n * 2 + n * 2) / hbm + hw.kernel_overhead_s  # one token
    decode_w8_s = (k * 2 + k * n * 1 + n * 2) / hbm + hw.kernel_overhead_s
    assert_time(_time(bf16, "ffn_fc1", "decode"), decode_bf16_s, "memory")
    assert_time(_time(w8a16, "ffn_fc1", "decode"), decode_w8_s, "memory")
    assert 0.49 < (decode_w8_s - hw.kernel_overhead_s) / (decode_bf16_s - hw.kernel_overhead_s) < 0.51


def test_int4_weights_quarter_decode_gemm_bytes_at_the_same_prefill_time():
    w4 = parse_scenario(dense("w4a16"), "t")
    bf16 = parse_scenario(dense("bf16"), "t")
    assert _time(w4, "ffn_fc2", "prefill") == _time(bf16, "ffn_fc2", "prefill")
    d = node(w4, "ffn_fc2", "decode")
    k, n = 14336, 4096
    assert d["bytes_read"] == k * 2.0 + k * n * (0.5 + 2.5 / 128) and d["dtype"] == "bf16"


def test_w8a8_runs_prefill_gemms_at_the_fp8_peak():
    hw = resolve_hardware(parse_scenario(dense(), "t"))
    bf16, w8a8 = parse_scenario(dense("bf16"), "t"), parse_scenario(dense("fp8-w8a8"), "t")
    tokens, k, n = 4096, 4096, 2 * 14336
    fp8_s = 2.0 * tokens * k * n / (hw.peak_flops_per_s.fp8 * hw.compute_efficiency) + hw.kernel_overhead_s
    assert_time(_time(w8a8, "ffn_fc1", "prefill"), fp8_s, "compute")
    bf16_s = _time(bf16, "ffn_fc1", "prefill")[0]
    ratio = hw.peak_flops_per_s.fp8 / hw.peak_flops_per_s.bf16  # 1978.9 / 989.4: twice, to the datasheet's rounding
    assert ratio == pytest.approx(2.0, rel=1e-4)
    assert bf16_s - hw.kernel_overhead_s == pytest.approx(ratio * (fp8_s - hw.kernel_overhead_s), rel=1e-12)


def test_w8a8_on_the_measured_profile_halves_all_but_the_fixed_part_and_the_output_write():
    """The H200's tables were measured in fp16: an fp8 GEMM keeps the shape's fixed part (the profile's
    kernel_overhead_s and the bf16 output write) and halves the rest (costs.format_transfer_gemm_s)."""
    hw_ref = {"profile": "h200-sxm-141gb"}
    bf16 = parse_scenario({**dense("bf16"), "hardware": hw_ref}, "t")
    w8a8 = parse_scenario({**dense("fp8-w8a8"), "hardware": hw_ref}, "t")
    w8a16 = parse_scenario({**dense("fp8-w8a16"), "hardware": hw_ref}, "t")
    hw = resolve_hardware(bf16)
    hbm = hw.hbm_bytes_per_s * hw.memory_efficiency  # 4.8e12 x 0.8702

    def t(s, op, phase):
        return node_time_s(node(s, op, phase), hw, 1, eager=False, gated=True)[0]

    # prefill: 4096 tokens, compute-bound: x 989.4 / 1978.9 (the datasheet peaks); decode: one token,
    # memory-bound: x 1/2 (the fp8 operands' bytes)
    compute = hw.peak_for("fp16") / hw.peak_for("fp8")
    for op, phase, out_elements, ratio in (
        ("q_proj", "prefill", 4096 * 4096, compute),
        ("ffn_fc1", "prefill", 4096 * 2 * 14336, compute),
        ("ffn_fc2", "prefill", 4096 * 4096, compute),
        ("q_proj", "decode", 4096, 0.5),
        ("ffn_fc1", "decode", 2 * 14336, 0.5),
    ):
        t16 = t(bf16, op, phase)  # bf16 runs at the fp16 peak: the table's own time
        fixed = hw.kernel_overhead_s + out_elements * 2.0 / hbm
        assert t(w8a8, op, phase) == pytest.approx(fixed + (t16 - fixed) * ratio, rel=1e-12), (op, phase)
        assert t16 / 2 < t(w8a8, op, phase) < t16
        assert t(w8a16, op, phase) <= t16  # weight-only: the 16-bit compute, fewer weight bytes


def test_int8_w8a8_on_the_measured_h200_equals_fp8_w8a8():
    """Hopper's int8 and fp8 tensor cores have the same dense peak (1978.9 T, datasheet) and the same
    bytes per element: the transfer prices both alike."""
    hw_ref = {"profile": "h200-sxm-141gb"}
    fp8 = parse_scenario({**dense("fp8-w8a8"), "hardware": hw_ref}, "t")
    int8 = parse_scenario({**dense("int8-w8a8"), "hardware": hw_ref}, "t")
    hw = resolve_hardware(fp8)
    assert hw.peak_for("int8") == hw.peak_for("fp8") == 1978.9e12
    for op in ("q_proj", "ffn_fc1", "ffn_fc2", "o_proj"):
        a, b = node(fp8, op, "prefill"), node(int8, op, "prefill")
        assert b["dtype"] == "int8"
        assert node_time_s(b, hw, 1, False, True) == node_time_s(a, hw, 1, False, True), op


def test_nvfp4_on_a_measured_profile_given_an_fp4_peak_quarters_the_streaming_part():
    hw_ref = {"profile": "h200-sxm-141gb", "peak_flops_per_s": {"fp4": 4 * 989.4e12}}
    bf16 = parse_scenario({**dense("bf16"), "hardware": hw_ref}, "t")
    fp4 = parse_scenario({**dense("nvfp4"), "hardware": hw_ref}, "t")
    hw = resolve_hardware(fp4)
    t16 = node_time_s(node(bf16, "q_proj", "prefill"), hw, 1, False, True)[0]
    t4, bound = node_time_s(node(fp4, "q_proj", "prefill"), hw, 1, False, True)
    fixed = hw.kernel_overhead_s + 4096 * 4096 * 2.0 / (hw.hbm_bytes_per_s * hw.memory_efficiency)
    # 4096^3 x 2 FLOPs at 4 x the 16-bit peak; operands at 0.5625 B: compute-bound, x 1/4
    assert t4 == pytest.approx(fixed + (t16 - fixed) * 989.4 / (4 * 989.4), rel=1e-12) and bound == "compute"


def test_16_bit_gemms_never_take_the_format_transfer(monkeypatch):
    """fp16 and bf16 GEMMs compute at the table's peak on the table's bytes: their times are the
    table's, bit for bit."""
    import simulator.op_time as op_time

    def refuse(*_args, **_kwargs):
        raise AssertionError("a 16-bit GEMM took the format transfer")

    monkeypatch.setattr(op_time, "transferred_gemm_s", refuse)
    hw_ref = {"profile": "h200-sxm-141gb"}
    for preset in ("bf16", "fp16"):
        s = parse_scenario({**dense(preset), "hardware": hw_ref}, "t")
        hw = resolve_hardware(s)
        for _, attrs in build_dag(s).nodes(data=True):
            node_time_s(attrs, hw, 1, False, True)


def test_weight_only_gemms_keep_the_fixed_part_and_scale_the_streaming_part_by_the_operand_bytes():
    """w4a16 on the H200 (fp16 tables): a compute-bound prefill GEMM takes the table's time; a decode
    GEMM (one token, memory-bound) keeps the shape's fixed part (kernel_overhead_s and the 16-bit output
    write) and scales the rest by its operands' bytes, int4 weights with their group scales against
    16 bits: the fixed part of a kernel does not shrink with its weights."""
    hw_ref = {"profile": "h200-sxm-141gb"}
    bf16 = parse_scenario({**dense("bf16"), "hardware": hw_ref}, "t")
    w4 = parse_scenario({**dense("w4a16"), "hardware": hw_ref}, "t")
    hw = resolve_hardware(bf16)
    hbm = hw.hbm_bytes_per_s * hw.memory_efficiency

    def t(s, op, phase):
        return node_time_s(node(s, op, phase), hw, 1, eager=False, gated=True)[0]

    assert t(w4, "ffn_fc1", "prefill") == pytest.approx(t(bf16, "ffn_fc1", "prefill"), rel=1e-12)
    k, n = 4096, 2 * 14336
    w_b = 0.5 + 2.5 / 128  # int4 and its group-of-128 scales, as the node counts them
    t16 = t(bf16, "ffn_fc1", "decode")
    fixed = hw.kernel_overhead_s + n * 2.0 / hbm
    ratio = (k * 2.0 + k * n * w_b) / (k * 2.0 + k * n * 2.0)
    assert t(w4, "ffn_fc1", "decode") == pytest.approx(fixed + (t16 - fixed) * ratio, rel=1e-12)


H200 = load_profile("h200-sxm-141gb")


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    st.sampled_from([1, 1, 4, 8, 64]),
    st.integers(min_value=1, max_value=65536),
    st.integers(min_value=16, max_value=32768),
    st.integers(min_value=16, max_value=32768),
    st.sampled_from(["fp8", "int8"]),
)
def test_an_8_bit_gemm_takes_between_half_and_all_of_its_16_bit_time(experts, rows, k, n, fmt):
    """W8A8 with a 16-bit output on the measured H200 tables: never slower than the same GEMM in
    16 bits, never more than twice as fast (the fixed part and the output write do not shrink; the
    datasheet's fp8 peak is 1978.9 T, a hair under twice 989.4 T)."""
    hw = H200
    cal = hw.calibration
    frac = hw.gemm_table_fraction(experts, rows, k, n)
    t16, _ = costs.calibrated_grouped_gemm_s(experts, rows, k, n, 2.0, hw.peak_for("fp16"), hw.hbm_bytes_per_s, frac)
    t8, _ = transferred_gemm_s(hw, cal.gemm_format, fmt, experts, rows, k, n, frac, 1.0, 2.0)
    assert t16 / 2 * (1 - 1e-12) <= t8 <= t16 * (1 + 1e-12)


def test_attention_computes_in_its_format_and_reads_the_kv_cache_in_its_own():
    s = parse_scenario(dense({"preset": "fp8-w8a8", "attention": "fp8"}), "t")
    sc = node(s, "attn_scores", "decode")
    # one query of 32 heads x 128 in fp8, K of 8 KV heads x 4097 positions in fp8
    assert sc["dtype"] == "fp8"
    assert sc["bytes_read"] == 32 * 1 * 128 * 1.0 + 8 * 4097 * 128 * 1.0
    cx = node(s, "attn_context", "decode")
    assert cx["bytes_written"] == 32 * 128 * 2.0  # the output in bf16
    plain = node(parse_scenario(dense({"kv_cache": "fp8"}), "t"), "attn_scores", "decode")
    assert plain["dtype"] == "bf16" and plain["bytes_read"] == 32 * 128 * 2.0 + 8 * 4097 * 128 * 1.0


def test_collectives_stay_16_bit_under_fp8_gemms_unless_configured():
    data = dense("fp8-w8a8")
    data["parallel"], data["cluster"] = {"tp": 2}, {"num_gpus": 2, "gpus_per_node": 2}
    ar = node(parse_scenario(data, "t"), "tp_allreduce", "prefill")
    assert ar["message_bytes"] == 4096 * 4096 * 2.0 and ar["dtype"] == "bf16"
    data["model"]["precision"] = {"preset": "fp8-w8a8", "communication": "fp8"}
    assert node(parse_scenario(data, "t"), "tp_allreduce", "prefill")["message_bytes"] == 4096 * 4096 * 1.0


def test_the_ep_dispatch_can_move_another_format_than_the_combine():
    # TINY_MOE (hidden 64, top-2, 4 experts) on EP2 (tp 2, ep 2): each TP rank routes its half of the 4 x 16
    # tokens, 32 tokens x 2 copies, and sends the copies for the other rank's 2 experts (half): 32 copies x 64
    data = {
        **copy.deepcopy(TINY_MOE),
        "model": {**TINY_MOE["model"], "precision": {"communication": {"dispatch": "fp8"}}},
    }
    s = parse_scenario(data, "t")
    dispatch, combine = node(s, "a2a_dispatch", "prefill"), node(s, "a2a_combine", "prefill")
    assert list(dispatch["send_bytes"]) == [32 * 64 * 1.0] * 2  # fp8
    assert list(combine["send_bytes"]) == [32 * 64 * 2.0] * 2  # the model's fp16
    assert s.model.formats.dispatch_bytes == 1.0 and s.model.formats.payload_bytes == 2.0
    assert "EP dispatch fp8" in s.model.formats.describe()
    plain = node(make_scenario(TINY_MOE), "a2a_dispatch", "prefill")
    assert list(plain["send_bytes"]) == [32 * 64 * 2.0] * 2


def test_nvfp4_runs_at_the_fp4_peak_where_the_profile_has_one():
    data = dense("nvfp4")
    data["hardware"] = {"profile": "h100-sxm-80gb", "calibration": None, "peak_flops_per_s": {"fp4": 4.0e15}}
    s = parse_scenario(data, "t")
    hw = resolve_hardware(s)
    q = node(s, "ffn_fc1", "prefill")
    assert q["dtype"] == "nvfp4" and hw.peak_for("nvfp4") == 4.0e15
    tokens, k, n = 4096, 4096, 2 * 14336
    assert q["bytes_read"] == tokens * k * 0.5625 + k * n * 0.5625  # inputs and weights in NVFP4
    expected = 2.0 * tokens * k * n / (4.0e15 * hw.compute_efficiency) + hw.kernel_overhead_s
    assert_time(_time(s, "ffn_fc1", "prefill"), expected, "compute")


def test_legacy_fp8_dtype_on_a100_falls_back_to_the_16_bit_peak_and_says_so():
    data = dense(dtype="fp8")
    data["hardware"] = "a100-sxm-80gb"
    s = parse_scenario(data, "t")
    hw = resolve_hardware(s)
    assert hw.peak_for("fp8") == hw.peak_flops_per_s.fp16 and hw.peak_used("fp8") == "fp16"
    assert "fp8 GEMMs run at the fp16 peak (the hardware has no fp8 tensor cores)" in precision_line(
        s.model.formats, hw
    )


# ---------------------------------------------------------------------------------------------
# Memory per GPU


TINY_DENSE = {
    "name": "tiny_dense",
    "model": {
        "num_layers": 2,
        "hidden_size": 64,
        "num_heads": 4,
        "head_dim": 16,
        "ffn_size": 128,
        "activation": "gelu",
        "dtype": "bf16",
    },
    "hardware": "h100-sxm-80gb",
    "cluster": {"num_gpus": 1},
    "workload": {"batch_size": 2, "input_len_tokens": 8, "output_len_tokens": 3},
}


@pytest.mark.parametrize(
    ("precision", "per_layer_bytes"),
    [
        # attention 4 * 64 * 64 = 16384 and FFN 2 * 64 * 128 = 16384 weights; 2 * 64 norm weights (16-bit)
        (None, 32768 * 2.0 + 128 * 2.0),
        ("fp8-w8a8", 32768 * 1.0 + 128 * 2.0),
        ("w4a16", 32768 * (0.5 + 2.5 / 128) + 128 * 2.0),
        ("nvfp4", 32768 * 0.5625 + 128 * 2.0),
        ("mxfp4", 32768 * 2.0 + 128 * 2.0),  # a dense model has no experts: nothing in mxfp4
    ],
)
def test_dense_weights_per_gpu_at_their_storage_format(precision, per_layer_bytes):
    model = dict(TINY_DENSE["model"], **({"precision": precision} if precision else {}))
    fp4 = {"profile": "h100-sxm-80gb", "peak_flops_per_s": {"fp4": 4.0e15}}  # a Hopper with fp4 units, for nvfp4
    s = make_scenario(TINY_DENSE, model=model, hardware=fp4)
    assert weight_bytes_per_gpu(s, 0) == 2 * per_layer_bytes


def test_mxfp4_experts_with_bf16_attention_router_and_norms():
    model = dict(TINY_MOE["model"], dtype="bf16", precision="mxfp4")
    s = make_scenario(TINY_MOE, model=model, parallel={"tp": 1, "ep": 1, "pp": 1}, cluster={"num_gpus": 1})
    # per layer: attention 16384 x 2 B, 4 experts x 2 x 64 x 128 x 0.53125 B, router 64 x 4 x 2 B, norms 128 x 2 B
    per_layer = 16384 * 2.0 + 4 * 16384 * 0.53125 + 256 * 2.0 + 128 * 2.0
    assert weight_bytes_per_gpu(s, 0) == 4 * per_layer


def test_fp8_kv_cache_halves_the_cache():
    base = make_scenario(TINY_DENSE)
    fp8 = make_scenario(TINY_DENSE, model=dict(TINY_DENSE["model"], precision="fp8-w8a8"))
    # 2 sequences x 10 positions x 2 layers x 4 KV heads x 16 x (K and V)
    assert kv_cache_bytes_per_gpu(base, 0) == 2 * 2 * 10 * 2 * 4 * 16 * 2.0
    assert kv_cache_bytes_per_gpu(fp8, 0) == kv_cache_bytes_per_gpu(base, 0) / 2


# ---------------------------------------------------------------------------------------------
# End to end, the summary, bad input


def test_weight_only_leaves_a_compute_bound_prefill_unchanged_and_speeds_up_decode():
    data = dense()
    data["workload"] = {"batch_size": 4, "input_len_tokens": 2048, "output_len_tokens": 4}
    runs = {p: run_scenario(parse_scenario(dense(p) | {"workload": data["workload"]}, "t")) for p in ("bf16", "w4a16")}
    assert runs["w4a16"].metrics.prefill_s == runs["bf16"].metrics.prefill_s
    assert runs["w4a16"].metrics.tpot_s < 0.6 * runs["bf16"].metrics.tpot_s


def test_summary_names_the_precision_and_plain_runs_stay_as_they_were(tmp_path):
    path = tmp_path / "s.yaml"
    tiny = copy.deepcopy(TINY_MOE)
    path.write_text(yaml.safe_dump(tiny))
    assert main(["run", str(path), "--out", str(tmp_path / "plain"), "--no-dag"]) == 0
    assert "precision" not in json.loads((tmp_path / "plain" / "summary.json").read_text())
    tiny["model"]["precision"] = "fp8-w8a8"
    path.write_text(yaml.safe_dump(tiny))
    assert main(["run", str(path), "--out", str(tmp_path / "fp8"), "--no-dag"]) == 0
    line = "precision: fp8-w8a8 (weights fp8, GEMMs fp8, LM head fp16, attention fp16, KV fp8, collectives fp16)"
    assert json.loads((tmp_path / "fp8" / "summary.json").read_text())["precision"] == line
    assert "Precision: fp8-w8a8 (weights fp8" in (tmp_path / "fp8" / "summary.md").read_text()


@pytest.mark.parametrize(
    ("precision", "hardware", "expected"),
    [
        ("fp9", "h100-sxm-80gb", "precision preset 'fp9' is unknown; presets: bf16, fp16, fp8-w8a8"),
        ({"dense_gemm": {"storage": "fp6"}}, "h100-sxm-80gb", "model.precision.dense_gemm.storage: Input should be"),
        ({"dense_gemm": {"compute": "int4"}}, "h100-sxm-80gb", "dense_gemm.compute = int4: int4 is a storage format"),
        ({"kv_cache": {"format": "fp8"}}, "h100-sxm-80gb", "model.precision.kv_cache.format: unknown key"),
        (
            "fp8-w8a8",
            "a100-sxm-80gb",
            "model.precision.dense_gemm.compute = fp8: a100-sxm-80gb has no fp8 tensor cores "
            "(no peak_flops_per_s.fp8); compute in bf16 (e.g. precision: fp8-w8a16)",
        ),
        (
            "nvfp4",
            "h200-sxm-141gb",
            "model.precision.dense_gemm.compute = nvfp4: h200-sxm-141gb has no nvfp4 tensor cores "
            "(no peak_flops_per_s.fp4); compute in bf16 (e.g. precision: w4a16)",
        ),
    ],
)
def test_bad_precision_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, precision, hardware, expected):
    data = copy.deepcopy(TINY_MOE)
    data["model"]["precision"] = precision
    data["hardware"] = hardware
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-dag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not out.exists()
    with pytest.raises(ScenarioError):
        parse_scenario(data, "t")


def test_every_scenario_keeps_its_graph_under_the_legacy_mapping():
    """The shipped scenarios (dtype fields only) build the same nodes as before: spot-check that no
    node carries an attribute the precision model adds only when formats differ."""
    s = parse_scenario(yaml.safe_load((ROOT / "scenarios" / "seed_moe_4gpu.yaml").read_text()), "seed")
    dag = build(s)
    assert all("out_b" not in a for _, a in dag.distinct())


# ---------------------------------------------------------------------------------------------
# Invariant: fewer bytes or a faster peak never make an operator slower, nor a GPU's memory larger


@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(small_scenarios(), st.sampled_from(["fp8-w8a16", "w4a16", "fp8-w8a8", "int8-w8a8", "mxfp4"]))
def test_a_quantised_preset_never_slows_an_operator_nor_grows_memory(data, preset):
    data = {**data, "hardware": {"profile": "h100-sxm-80gb", "calibration": None}}  # the roofline: monotone
    base = make_scenario(data)
    quant = make_scenario(data, model=dict(data["model"], precision=preset))
    hw = resolve_hardware(base)
    gpn = data["cluster"]["gpus_per_node"]
    eager = data["runtime"]["mode"] == "eager"
    before = dict(build_dag(base).nodes(data=True))
    for name, attrs in build_dag(quant).nodes(data=True):
        quant_s = node_time_s(attrs, hw, gpn, eager, True)[0]
        assert quant_s <= node_time_s(before[name], hw, gpn, eager, True)[0] * (1 + 1e-12), name
    for gpu in range(base.num_gpus):
        assert weight_bytes_per_gpu(quant, gpu) <= weight_bytes_per_gpu(base, gpu)
        assert kv_cache_bytes_per_gpu(quant, gpu) <= kv_cache_bytes_per_gpu(base, gpu)


def test_the_line_names_a_router_that_differs_and_an_explicit_uniform_precision_is_shown(tmp_path):
    spec = PrecisionSpec.model_validate({"preset": "w4a16", "router": "fp8"})
    line = resolve_precision("bf16", None, None, spec).describe()
    assert line == (
        "precision: w4a16 + overrides (weights int4, GEMMs bf16, LM head bf16, router fp8, attention bf16, "
        "KV bf16, collectives bf16)"
    )
    tiny = copy.deepcopy(TINY_MOE)
    tiny["model"]["precision"] = "fp16"  # the model's own dtype everywhere, but said explicitly
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny))
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--no-dag"]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["precision"].startswith("precision: fp16 (")


def test_int8_w8a8_runs_at_the_int8_peak_on_an_a100():
    data = dense("int8-w8a8")
    data["hardware"] = "a100-sxm-80gb"  # no fp8 units, int8 ones: 624 TOPS dense (datasheet)
    s = parse_scenario(data, "t")
    hw = resolve_hardware(s)
    assert hw.peak_for("int8") == 624.0e12
    q = node(s, "ffn_fc1", "prefill")
    tokens, k, n = 4096, 4096, 2 * 14336
    assert (q["dtype"], q["weight_b"], q["out_b"]) == ("int8", 1.0, 2.0)
    expected = 2.0 * tokens * k * n / (624.0e12 * hw.compute_efficiency) + hw.kernel_overhead_s
    assert_time(_time(s, "ffn_fc1", "prefill"), expected, "compute")


def test_mxfp4_experts_read_their_scales_and_compute_in_16_bits():
    model = dict(TINY_MOE["model"], dtype="bf16", precision="mxfp4")
    s = make_scenario(TINY_MOE, model=model, parallel={"tp": 1, "ep": 1, "pp": 1}, cluster={"num_gpus": 1})
    fc1 = node(s, "expert_fc1", "decode")
    q = node(s, "q_proj", "decode")
    assert (fc1["dtype"], fc1["weight_b"], "out_b" in fc1) == ("bf16", 0.53125, False)
    assert (q["dtype"], q["weight_b"]) == ("bf16", 2.0)
    # 4 sequences x top-2 = 8 token copies over 4 experts (uniform): each expert is idle with probability
    # (1 - 2/4)^4, so 4 x 15/16 = 3.75 experts' [64, 128] weights are read (costs.expected_touched_experts)
    assert fc1["bytes_read"] == 8 * 64 * 2.0 + 3.75 * 64 * 128 * 0.53125
