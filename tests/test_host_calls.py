"""PyTorch calls on the launch thread beyond one eager floor per kernel: no-kernel calls and the dispatch of
costlier kernel ops; their measured times (calibration.host_calls), their count per node (graph.PYTORCH_HOST_CALLS
and PYTORCH_KERNEL_OPS, checked against the reference implementation simulator/calibration/e2e.py) and their
share of a node's host dispatch (op_time.host_dispatch_s)."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import TINY_MOE, make_scenario
from pydantic import ValidationError

from simulator.calibration.host_calls import bench_host_calls, fit_host_call_s
from simulator.config import resolve_hardware
from simulator.config.hardware import HOST_CALL_KINDS, KERNEL_OP_KINDS, Calibration
from simulator.graph import build
from simulator.op_time import host_calls_s, host_dispatch_s

HAS_TORCH = importlib.util.find_spec("torch") is not None
ONE_GPU = {"cluster": {"num_gpus": 1, "gpus_per_node": 1}, "parallel": {"tp": 1, "ep": 1, "pp": 1, "dp": 1}}
PYTORCH_EAGER = {"mode": "eager", "framework": "pytorch"}


def test_split_is_fitted_as_a_line_in_its_part_count_and_other_kinds_kept():
    rows = [
        {"call": "view", "s": 1e-6},
        {"call": "split", "parts": 2, "s": 3e-6},
        {"call": "split", "parts": 4, "s": 4e-6},
        {"call": "split", "parts": 8, "s": 6e-6},
    ]
    fitted = fit_host_call_s(rows)
    assert fitted["view"] == 1e-6
    assert fitted["split"] == pytest.approx(2e-6)  # 3 = a + 2b, 4 = a + 4b, 6 = a + 8b: a = 2, b = 0.5
    assert fitted["split_per_part"] == pytest.approx(0.5e-6)
    assert fit_host_call_s([]) == {}


def test_a_kernel_op_is_fitted_as_its_paired_time_beyond_the_add():
    rows = [
        {"call": "op:index", "s": 3.6e-6, "s_add": 1.2e-6, "beyond_add_s": 2.3e-6},  # the paired median is kept
        {"call": "op:cat", "s": 1.0e-6, "s_add": 1.2e-6, "beyond_add_s": -0.2e-6},  # no cheaper than the add
        {"call": "op:where", "s": 3.0e-6, "s_add": 1.0e-6},  # only the two times: their difference
    ]
    assert fit_host_call_s(rows) == pytest.approx({"index": 2.3e-6, "cat": 0.0, "where": 2.0e-6})


def test_a_nodes_calls_cost_count_times_kind_plus_parts_times_per_part():
    times = {"split": 3e-6, "split_per_part": 0.5e-6, "view": 0.6e-6, "transpose": 0.8e-6}
    calls = (("split", 1, 3), ("view", 3), ("transpose", 3))
    # 3 + 3 x 0.5 + 3 x 0.6 + 3 x 0.8 = 8.7 us
    assert host_calls_s(calls, times) == pytest.approx(8.7e-6)
    assert host_calls_s((("select", 2),), times) == 0.0  # a kind the profile never timed adds nothing


def test_the_profile_refuses_an_unknown_kind_or_a_negative_time():
    cal = resolve_hardware(make_scenario(TINY_MOE)).calibration
    raw = json.loads(cal.model_dump_json())
    with pytest.raises(ValidationError, match=r"host_call_s.reshap: unknown kind"):
        Calibration.model_validate({**raw, "host_call_s": {"reshap": 1e-6}})
    with pytest.raises(ValidationError, match=r"host_call_s.view = -1e-06: must be seconds"):
        Calibration.model_validate({**raw, "host_call_s": {"view": -1e-6}})


def _layer_calls(scenario, phase: str, layer: int = 1, kinds=HOST_CALL_KINDS) -> Counter:
    """Per kind of `kinds`, the calls of one layer of one pass (a split counts once per part too)."""
    dag = build(scenario)
    total: Counter = Counter()
    step = 0 if phase == "prefill" else 1
    for a in dag.attrs:
        if a.get("phase") == phase and a.get("layer") == layer and a.get("step") == step:
            for kind, count, *parts in a.get("host_calls", ()):
                if kind not in kinds:
                    continue
                total[kind] += count
                if parts:
                    total[f"{kind}_parts"] += count * parts[0]
    return total


SEED_LIKE = {
    **TINY_MOE["model"],
    "num_experts": 16,
    "top_k": 2,
    "fused_qkv": True,
}


def _seed_like(moe_impl: str):
    model = {**SEED_LIKE, "moe_impl": moe_impl}
    if moe_impl == "capacity":
        model["capacity_factor"] = 1.25
    return make_scenario(
        TINY_MOE,
        model=model,
        runtime=PYTORCH_EAGER,
        workload={"batch_size": 4, "input_len_tokens": 16, "output_len_tokens": 2},
        **ONE_GPU,
    )


#: Counted by hand, line by line, in simulator/calibration/e2e.py.
#: decode_block: split of the QKV output (3 parts); q/k/v view + transpose; cache[i][:, :, -1:] = k, v;
#: o.transpose(1, 2).reshape(...); norm(x).view(b, h); top_e.view(-1); flat_e.unsqueeze(1) twice; .squeeze(1);
#: buf[:-1].view(e, c, h); bmm(...).view(e*c, h); buf[-1:]; top_w.view(-1) ... .unsqueeze(1);
#: y.view(b, k, h) ... .view(b, 1, h).
DECODE_CAPACITY = {
    "split": 1,
    "split_parts": 3,
    "view": 10,
    "transpose": 4,
    "reshape": 1,
    "slice_nd": 2,
    "unsqueeze": 3,
    "squeeze": 1,
    "slice": 2,
}
#: prefill_block: split (3 parts), q/k/v view + transpose, o.transpose(1, 2).reshape(...), norm(x).view(-1, h),
#: top_e.view(-1) twice (argsort, bincount), .split(counts) in 16, w1[e] and w2[e] per expert,
#: top_w.view(-1)[order].unsqueeze(1), the combined output's .view(b, s, h).
PREFILL_SORTED = {
    "split": 2,
    "split_parts": 3 + 16,
    "view": 8,
    "transpose": 4,
    "reshape": 1,
    "select": 32,
    "unsqueeze": 1,
}


#: decode_block's kernel ops that cost the host more than the add: F.rms_norm twice; softmax, topk, sum(keepdim);
#: arange twice, ==, .to(int32), cumsum, - 1, gather, < cap, flat_e * cap, where, repeat_interleave, zeros,
#: index_copy_; a[token]; buf[-1:] * 0, cat, [slot], top_w.view(-1) * kept, .to(dtype); .sum(1).
DECODE_CAPACITY_OPS = {
    "rms_norm": 2,
    "softmax": 1,
    "topk": 1,
    "sum": 2,
    "arange": 2,
    "eq": 1,
    "to": 2,
    "cumsum": 1,
    "sub_scalar": 1,
    "gather": 1,
    "lt_scalar": 1,
    "mul_scalar": 2,
    "mul_bool": 1,
    "where": 1,
    "repeat_interleave": 1,
    "zeros": 1,
    "index_copy": 1,
    "index": 2,
    "cat": 1,
}
#: prefill_block's: F.rms_norm twice; softmax, topk, sum; argsort, // k; index_select; cat, [order], .to(dtype),
#: zeros_like, index_add_ (MHA: no repeat_interleave of K and V).
PREFILL_SORTED_OPS = {
    "rms_norm": 2,
    "softmax": 1,
    "topk": 1,
    "sum": 1,
    "argsort": 1,
    "floordiv_scalar": 1,
    "index_select": 1,
    "cat": 1,
    "index": 1,
    "to": 1,
    "zeros_like": 1,
    "index_add": 1,
}


def test_a_layer_charges_the_reference_implementations_costlier_kernel_ops():
    assert dict(_layer_calls(_seed_like("capacity"), "decode", kinds=KERNEL_OP_KINDS)) == DECODE_CAPACITY_OPS
    assert dict(_layer_calls(_seed_like("per_expert"), "prefill", kinds=KERNEL_OP_KINDS)) == PREFILL_SORTED_OPS


def test_a_kernel_ops_dispatch_is_added_to_its_nodes_floors():
    scenario = _seed_like("capacity")
    hw = resolve_hardware(scenario)
    cal = hw.calibration
    node = next(a for a in build(scenario).attrs if a["op"] == "topk" and a["phase"] == "decode")
    t = cal.host_call_s
    # 5 kernels (softmax, topk's two, sum, divide) at the floor, then softmax's, topk's and sum's dispatch beyond it
    expected = 5 * cal.eager_floor_s["elementwise"] + t["softmax"] + t["topk"] + t["sum"]
    assert host_dispatch_s(node, hw) == pytest.approx(expected)
    assert t["topk"] > 0.0 and t["index"] > 0.0  # the shipped profile has them measured


def test_a_capacity_decode_layer_makes_the_reference_implementations_calls():
    assert dict(_layer_calls(_seed_like("capacity"), "decode")) == DECODE_CAPACITY


def test_a_sorted_prefill_layer_makes_the_reference_implementations_calls():
    assert dict(_layer_calls(_seed_like("per_expert"), "prefill")) == PREFILL_SORTED


def test_a_fused_engine_makes_no_such_calls():
    scenario = make_scenario(TINY_MOE, runtime={"mode": "eager", "framework": "fused"}, **ONE_GPU)
    assert not any("host_calls" in a for a in build(scenario).attrs)


def test_the_calls_are_added_to_the_nodes_host_dispatch():
    scenario = _seed_like("capacity")
    hw = resolve_hardware(scenario)
    cal = hw.calibration
    dag = build(scenario)
    node = next(a for a in dag.attrs if a["op"] == "kv_append" and a["phase"] == "decode")
    expected = node["launches"] * cal.eager_floor_s["elementwise"] + (
        cal.host_call_s["split"]
        + 3 * cal.host_call_s["split_per_part"]
        + 3 * cal.host_call_s["view"]
        + 3 * cal.host_call_s["transpose"]
        + 2 * cal.host_call_s["slice_nd"]
    )
    assert host_dispatch_s(node, hw) == pytest.approx(expected)
    assert cal.host_call_s["view"] > 0.0  # the shipped profile has them measured


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_quick_cpu_measurement_gives_every_kind_a_positive_time():
    import torch

    from simulator.calibration.host_calls import CUDA_ONLY_OPS, KERNEL_OP_FORMS

    fitted = fit_host_call_s(bench_host_calls(torch, "cpu", quick=True))
    assert set(fitted) == set(HOST_CALL_KINDS) | (set(KERNEL_OP_KINDS) - CUDA_ONLY_OPS)
    assert set(KERNEL_OP_FORMS) == {"add", *KERNEL_OP_KINDS}
    assert all(fitted[k] > 0 for k in HOST_CALL_KINDS if k != "split_per_part")
    assert all(fitted[k] >= 0 for k in KERNEL_OP_KINDS if k in fitted)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_the_counts_are_those_the_reference_implementation_makes():
    """Run e2e.py's blocks on CPU under a TorchFunctionMode that records every view-type call, and compare
    one layer's counts with the tables above (and so with the graph)."""
    import torch
    from torch.overrides import TorchFunctionMode

    from simulator.calibration import e2e

    #: kernel ops by the name __torch_function__ sees; the operators are classified by their operands below
    plain = {"rms_norm", "softmax", "topk", "sum", "arange", "to", "cumsum", "gather", "where", "repeat_interleave"}
    plain |= {"zeros", "zeros_like", "index_select", "cat", "argsort"}
    renamed = {
        "index_copy_": "index_copy",
        "index_add_": "index_add",
        "__eq__": "eq",
        "__floordiv__": "floordiv_scalar",
    }

    class Count(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls: Counter = Counter()
            self.ops: Counter = Counter()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", str(func))
            if name in ("view", "transpose", "reshape", "unsqueeze", "squeeze", "chunk"):
                self.calls[name] += 1
            elif name == "split":
                self.calls["split"] += 1
                self.calls["split_parts"] += len(args[1]) if isinstance(args[1], (list, tuple)) else 0
            elif name in ("__getitem__", "__setitem__"):
                index = args[1] if isinstance(args[1], tuple) else (args[1],)
                if all(isinstance(i, slice) for i in index):
                    self.calls["slice_nd" if len(index) > 1 else "slice"] += 1
                elif all(isinstance(i, int) for i in index):
                    self.calls["select"] += 1
                elif name == "__getitem__" and all(isinstance(i, torch.Tensor) for i in index):
                    self.ops["index"] += 1
            elif name in plain:
                self.ops[name] += 1
            elif name in renamed:
                self.ops[renamed[name]] += 1
            elif name.strip("_") in ("mul", "sub", "lt"):  # Tensor.__mul__ reaches the mode as "mul"
                name, other = name.strip("_"), args[1]
                if not isinstance(other, torch.Tensor):
                    self.ops[f"{name}_scalar"] += 1
                elif name == "mul" and (other.dtype == torch.bool) != (args[0].dtype == torch.bool):
                    self.ops["mul_bool"] += 1
            return func(*args, **kwargs)

    m = e2e.BlockModel("seed_like", 1, 64, 4, 4, 16, 16, 2, 128, "gelu")
    lw = e2e.layer_weights(torch, m, "cpu")
    with torch.inference_mode():
        x = torch.randn(2, 1, 64, dtype=torch.float16)
        cache = tuple(torch.randn(2, 4, 8, 16, dtype=torch.float16) for _ in range(2))
        with Count() as decode:
            e2e.decode_block(torch, m, lw, cache, x)
        with Count() as prefill:
            e2e.prefill_block(torch, m, lw, torch.randn(2, 64, 64, dtype=torch.float16))
    assert dict(decode.calls) == DECODE_CAPACITY
    assert dict(prefill.calls) == PREFILL_SORTED
    assert dict(decode.ops) == DECODE_CAPACITY_OPS
    assert dict(prefill.ops) == PREFILL_SORTED_OPS


def test_a_bad_host_calls_file_is_one_line_naming_the_option(tmp_path):
    from simulator.commands.calibrate import read_host_calls
    from simulator.config import ScenarioError

    with pytest.raises(ScenarioError, match=r"^--host-calls .*nope.json: no such file$"):
        read_host_calls(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"host_calls": [{"kind": "view"}]}')
    with pytest.raises(ScenarioError, match=r'^--host-calls .*bad.json: expected \{"host_calls"'):
        read_host_calls(bad)
    bad.write_text("{not json")
    with pytest.raises(ScenarioError, match=r"^--host-calls .*bad.json: not JSON$"):
        read_host_calls(bad)
    good = read_host_calls(Path(__file__).resolve().parents[1] / "hardware_profiles/measurements/host_calls.json")
    assert good["host_calls"] and "AMD EPYC" in good["host_calls_source"]
