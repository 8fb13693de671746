"""The SGLang 0.5 engine profile (engine_profiles/sglang-0.5.yaml): CUDA-graph sizes, chunk and static memory share
chosen by GPU memory and TP size as ServerArgs._handle_gpu_memory_settings does, hand-computed."""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from simulator.config import ScenarioError, parse_scenario
from simulator.config.engine import load_engine_profile
from simulator.config.hardware import load_profile
from simulator.memory import weight_bytes_per_gpu
from simulator.serving.capacity import kv_bytes_per_token
from simulator.serving.session import serving_inputs
from tests.conftest import ROOT

SG = load_engine_profile("sglang-0.5")
GRAPH = SG.cuda_graph
DEFAULTS = SG.scheduler_defaults
assert GRAPH is not None and DEFAULTS is not None and DEFAULTS.static_memory is not None
RULE = DEFAULTS.static_memory
H100_MIB = 85.03e9 / 2**20  # 81,090.9 MiB: the profile's device_memory_bytes


@pytest.mark.parametrize(
    ("hardware", "tp", "graph_max"),
    [
        ("h100-sxm-80gb", 4, 512),  # below 90 GiB, tp >= 4
        ("h100-sxm-80gb", 2, 256),
        ("h200-sxm-141gb", 1, 256),  # below 160 GiB
        ("h200-sxm-141gb", 8, 512),
        ("b200-sxm-180gb", 1, 512),  # above: 512 whatever the TP
        ("generic-64gb", 2, 32),  # 64e9 bytes < 60 GiB
        ("generic-64gb", 4, 160),
    ],
)
def test_the_largest_graph_follows_the_gpus_memory_and_the_tp_size(hardware, tp, graph_max):
    memory = load_profile(hardware).engine_memory_bytes
    assert GRAPH.graph_max(memory, tp) == graph_max
    sizes = GRAPH.capture_sizes(4096, 8192, memory, tp)
    assert sizes[-1] == graph_max and sizes[:6] == (1, 2, 4, 8, 12, 16)


def test_capture_sizes_step_by_8_then_16_then_32_and_stop_at_the_running_limit():
    sizes = GRAPH.capture_sizes(4096, 8192, 85.03e9, 4)
    assert sizes == (1, 2, 4, 8, 12, *range(16, 257, 8), *range(272, 512, 16), 512)
    assert len(sizes) == 5 + 31 + 15 + 1
    # max_running_requests 100: sizes above it dropped, 100 itself captured (get_batch_sizes_to_capture)
    assert GRAPH.capture_sizes(100, 8192, 85.03e9, 4)[-3:] == (88, 96, 100)


def test_static_share_is_sglangs_formula_in_mib():
    # Mixtral TP4 on an H100, chunk 8192, graphs up to 512: 512 + 1.5 x 8192 + 2 x 512 + 4 / 8 x 1024 = 14,336 MiB
    assert RULE.reserved_mib(H100_MIB, 8192, 512, 4, 1) == 14336
    assert RULE.fraction(H100_MIB, 8192, 512, 4, 1) == round((H100_MIB - 14336) / H100_MIB, 3) == 0.823
    # TP1, chunk 2048, graphs up to 256: 512 + 3072 + 512 + 128 = 4,224 MiB, raised to 10 GiB on a GPU above 60 GiB
    assert RULE.reserved_mib(H100_MIB, 2048, 256, 1, 1) == 10240
    assert RULE.reserved_mib(20000, 2048, 256, 1, 1) == 4224
    # a chunk under 2048 counts as 2048
    assert RULE.reserved_mib(20000, 512, 256, 1, 1) == 4224
    # DP attention over 8 ranks with graphs of 512: + 3 x 512 x 8 + 1.5 x 512 x 8 (above 300)
    assert RULE.reserved_mib(H100_MIB, 8192, 512, 1, 1, 8) == 512 + 12288 + 1024 + 128 + 12288 + 6144


def _mixtral(engine: str, **scheduler) -> dict:
    data = yaml.safe_load((ROOT / "scenarios/mixtral_8x7b_8xh100_serving.yaml").read_text())
    data["serving"]["engine"] = engine
    data["serving"]["scheduler"] = scheduler
    return data


def test_a_silent_scenario_takes_the_engines_limits_and_kv_share():
    spec, pricer, _ = serving_inputs(parse_scenario(_mixtral("sglang-0.5"), "sglang-0.5"))
    s = spec.scheduler
    assert (s.policy, s.admission, s.preempt) == ("prefill_first_chunked", "estimate", "fewest_decoded")
    assert (s.max_num_seqs, s.max_num_batched_tokens) == (2048, 8192)
    assert s.kv_cache.mem_fraction_static == 0.823
    # KV = 0.823 x 85.03e9 - the weights, no activations (outside the share), in 16-token blocks
    scenario = parse_scenario(_mixtral("sglang-0.5"), "sglang-0.5")
    free = 0.823 * 85.03e9 - weight_bytes_per_gpu(scenario, 0)
    assert s.kv_cache.capacity_blocks == math.floor(free / (16 * kv_bytes_per_token(scenario, 0)))
    assert pricer.pricer.capture_sizes[-1] == 512  # type: ignore[attr-defined]


def test_a_scenarios_own_kv_rule_wins_over_the_engines_share():
    spec, _, _ = serving_inputs(parse_scenario(_mixtral("sglang-0.5", kv_cache={"gpu_memory_utilization": 0.9}), "x"))
    assert spec.scheduler.kv_cache.mem_fraction_static is None
    own = _mixtral("sglang-0.5", kv_cache={"mem_fraction_static": 0.7})
    spec, _, _ = serving_inputs(parse_scenario(own, "x"))
    assert spec.scheduler.kv_cache.mem_fraction_static == 0.7


def test_the_chunk_follows_the_gpu():
    data = _mixtral("sglang-0.5")
    chunks = {}
    for hardware in ("h100-sxm-80gb", "b200-sxm-180gb", "generic-64gb"):
        data = copy.deepcopy(data)
        data["hardware"] = hardware
        chunks[hardware] = parse_scenario(data, hardware).serving.scheduler.max_num_batched_tokens
    assert chunks == {"h100-sxm-80gb": 8192, "b200-sxm-180gb": 16384, "generic-64gb": 4096}


def test_two_kv_rules_are_one_line():
    bad = _mixtral("sglang-0.5", kv_cache={"mem_fraction_static": 0.7, "gpu_memory_utilization": 0.9})
    with pytest.raises(ScenarioError, match="gpu_memory_utilization and mem_fraction_static: give one"):
        parse_scenario(bad, "x")


DP_ATTENTION = ["parallel.dp=4", "parallel.tp=1", "parallel.pp=1", "parallel.ep=4", "parallel.etp=1"]


@pytest.mark.parametrize(("engine", "budget"), [("sglang", 8192), ("sglang-0.5", 4096)])
def test_dp_attention_divides_the_engines_chunk_by_dp(engine, budget):
    # ServerArgs._handle_data_parallelism: chunked_prefill_size // dp_size per DP-attention rank; the seed's GPU
    # (64 GB) takes 8,192 from 0.4.6 and 4,096 from 0.5; the launch file writes the engine's global figure back
    from simulator.config import load_scenario
    from simulator.report.launch import sglang_script

    path = ROOT / "scenarios/seed_moe_4gpu_serving.yaml"
    scenario = load_scenario(path, [f"serving.engine={engine}", *DP_ATTENTION, "serving.scheduler={}"])
    assert scenario.dp_attention and scenario.serving.scheduler.max_num_batched_tokens == budget
    spec, _, _ = serving_inputs(scenario)
    assert spec.scheduler.max_num_batched_tokens == budget // 4
    assert f"--chunked-prefill-size {budget} " in sglang_script(scenario).replace("\\\n", "\n") + " "
    # a budget the scenario gives is its own: not divided; nor under a layout without DP attention
    own = load_scenario(
        path, [f"serving.engine={engine}", *DP_ATTENTION, "serving.scheduler={max_num_batched_tokens: 2048}"]
    )
    assert serving_inputs(own)[0].scheduler.max_num_batched_tokens == 2048
    replicas = load_scenario(path, [f"serving.engine={engine}", "serving.scheduler={}"])
    assert not replicas.dp_attention
    assert serving_inputs(replicas)[0].scheduler.max_num_batched_tokens == budget


@pytest.mark.parametrize(
    ("engine", "given", "priced"), [("sglang-0.5", None, 0.3), ("sglang", 2.0, 0.6), ("vllm-v1", 2.0, 2.0)]
)
def test_dp_attention_scales_sglangs_conservativeness_by_0_3(engine, given, priced):
    from simulator.config import load_scenario

    extra = [] if given is None else [f"serving.scheduler.schedule_conservativeness={given}"]
    scenario = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu_serving.yaml", [f"serving.engine={engine}", *DP_ATTENTION, *extra]
    )
    assert serving_inputs(scenario)[0].scheduler.schedule_conservativeness == pytest.approx(priced, rel=1e-12)
