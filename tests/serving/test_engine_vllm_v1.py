"""The vLLM V1 engine profile (engine_profiles/vllm-v1.yaml): capture sizes counted in tokens up to twice
max_num_seqs, piecewise CUDA graphs for batches with a prefill chunk (attention, LM head and sampling eager),
batch limits chosen by GPU, and its expert-parallel exchange."""

from __future__ import annotations

import copy
import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.config import ScenarioError, gpus_per_node, load_scenario, parse_scenario
from simulator.config import engine as engine_config
from simulator.config.engine import DeviceDefaultsSpec, device_limits, load_engine_profile
from simulator.graph.ragged import PIECEWISE_EAGER_OPS, build_forward, ragged_shape
from simulator.serving.dag_pricer import DagPricer, price_error
from simulator.serving.engine_pricing import EnginePricer, mixed_plan
from simulator.serving.pricing import LinearPricer, SeqWork
from simulator.serving.session import serving_inputs, with_engine_kernels
from simulator.simulate import node_time_s, simulate_dag
from tests.conftest import DEEPSEEK_TINY, seed_dict

V1 = load_engine_profile("vllm-v1")
V1_GRAPH = V1.cuda_graph
assert V1_GRAPH is not None


# ---------------------------------------------------------------- capture sizes


def test_v1_captures_steps_of_eight_then_sixteen_up_to_512_tokens():
    # [1, 2, 4] + range(8, 256, 8) + range(256, max + 1, 16), max = min(2 x 1024, 512): 3 + 31 + 17 sizes
    sizes = V1_GRAPH.capture_sizes(1024, 8192)
    assert sizes == (1, 2, 4) + tuple(range(8, 256, 8)) + tuple(range(256, 513, 16))
    assert len(sizes) == 51


def test_v1_caps_the_sizes_at_twice_max_num_seqs_and_at_the_token_budget():
    assert V1_GRAPH.capture_sizes(100, 8192)[-1] == 200  # min(2 x 100, 512)
    assert V1_GRAPH.capture_sizes(150, 8192)[-1] == 288  # max 300 is off the 16-step grid: 288
    assert V1_GRAPH.capture_sizes(256, 300)[-1] == 288  # min(512, 300)
    assert V1_GRAPH.capture_sizes(2, 8192) == (1, 2, 4)


# ---------------------------------------------------------------- piecewise plan


def test_a_mixed_batch_is_padded_to_the_next_size_in_tokens_and_a_large_one_runs_eagerly():
    sizes = V1_GRAPH.capture_sizes(1024, 8192)
    assert mixed_plan((SeqWork(100, 0), SeqWork(1, 50), SeqWork(1, 9), SeqWork(1, 3)), sizes) == 104
    assert mixed_plan((SeqWork(512, 0),), sizes) == 512
    assert mixed_plan((SeqWork(500, 0), SeqWork(13, 0)), sizes) is None  # 513 tokens: beyond every graph
    assert mixed_plan((SeqWork(1, 5),) * 3, sizes) is None  # decode only: a full graph (decode_plan)
    assert mixed_plan((), sizes) is None


GRAPH = LinearPricer(0.25, 2**-6, 2**-10)
PIECEWISE = LinearPricer(0.375, 2**-6, 2**-10)
EAGER = LinearPricer(0.5, 2**-6, 2**-10)


def test_engine_pricer_sends_mixed_batches_to_the_piecewise_pricer_padded_with_dummy_rows():
    engine = EnginePricer(V1, GRAPH, lambda: EAGER, (1, 2, 4, 8, 16), lambda: PIECEWISE)
    batch = (SeqWork(10, 0), SeqWork(1, 40))  # 11 tokens -> 16: five dummy rows of (1, 0)
    assert engine(batch) == 0.375 + 16 * 2**-6 + 40 * 2**-10
    assert engine.launch(batch) == ("piecewise", 11, 5)
    assert engine((SeqWork(17, 0),)) == 0.5 + 17 * 2**-6  # beyond the graphs: eager, unpadded
    assert engine((SeqWork(1, 8),) * 3) == 0.25 + 4 * 2**-6 + 24 * 2**-10  # decode: the full graph, 4 rows
    eager_only = EnginePricer(V1, GRAPH, lambda: EAGER, (1, 2, 4, 8, 16))  # no piecewise pricer: as V0
    assert eager_only(batch) == 0.5 + 11 * 2**-6 + 40 * 2**-10


# ---------------------------------------------------------------- the piecewise DAG pass


def seed_serving(engine: str, *overrides: str):
    return load_scenario("scenarios/seed_moe_4gpu_serving.yaml", [f"serving.engine={engine}", *overrides])


def test_piecewise_pass_launches_only_attention_head_and_sampling_eagerly():
    scenario = with_engine_kernels(seed_serving("vllm-v1"), V1)
    hw = DagPricer(scenario).hw
    gpn = gpus_per_node(scenario, hw)
    custom_ar = scenario.runtime.custom_allreduce_max_bytes
    dag = build_forward(scenario, ragged_shape(((40, 0), (1, 200), (1, 300))))
    eager = simulate_dag(dag, scenario, hw, host_thread=False)
    piece = simulate_dag(dag, scenario, hw, host_thread=False, piecewise=True)
    floors_dropped = 0
    for i, a in dag.distinct():
        if a.get("op") in PIECEWISE_EAGER_OPS:
            assert piece.duration_s[i] == eager.duration_s[i]
        else:  # replayed: its device time, no eager floor
            replayed = node_time_s(a, hw, gpn, False, scenario.model.gated, custom_ar)[0]
            assert piece.duration_s[i] == replayed
            floors_dropped += replayed < eager.duration_s[i]
    assert floors_dropped > 0
    assert piece.makespan_s < eager.makespan_s


def test_piecewise_needs_the_additive_passes():
    scenario = seed_serving("vllm-v1")
    dag = build_forward(scenario, ragged_shape(((4, 0),)))
    with pytest.raises(ValueError, match="host_thread=False"):
        simulate_dag(dag, scenario, DagPricer(scenario).hw, piecewise=True)


@pytest.mark.parametrize("mla", [False, True])
def test_piecewise_fast_price_matches_its_exact_pass(mla):
    """The eager nodes of a piecewise pass are exactly the ones node_parts prices apart (attention with MLA's
    split-dependent up-projections, LM head, sampling), so the trunk decomposition holds as in an eager pass."""
    data = copy.deepcopy(seed_dict())
    data["serving"] = {
        "workload": {
            "arrivals": {"kind": "closed_loop", "concurrency": 1},
            "num_requests": 1,
            "input_len": {"kind": "fixed", "tokens": 64},
            "output_len": {"kind": "fixed", "tokens": 2},
        },
    }
    if mla:
        data["model"] = {**DEEPSEEK_TINY, "num_layers": 4, "hidden_size": 256, "num_heads": 8}
    pricer = DagPricer(parse_scenario(data, "piecewise"), piecewise=True)
    rng = random.Random(3)
    batches = [
        tuple([(rng.randint(2, 300), rng.randint(0, 4000))] + [(1, rng.randint(1, 6000))] * rng.randint(0, 60))
        for _ in range(10)
    ]
    assert price_error(pricer, batches) < 1e-3


# ---------------------------------------------------------------- through serving_inputs


def test_v1_engine_prices_a_small_mixed_batch_piecewise_and_below_the_eager_price():
    scenario = seed_serving("vllm-v1")
    spec, pricer, _ = serving_inputs(scenario)
    engine = pricer.pricer  # type: ignore[attr-defined]
    assert isinstance(engine, EnginePricer) and engine.make_piecewise is not None
    assert engine.capture_sizes == V1_GRAPH.capture_sizes(
        spec.scheduler.max_num_seqs, spec.scheduler.max_num_batched_tokens
    )
    batch = (SeqWork(30, 0), SeqWork(1, 100))  # 31 tokens -> 32
    with_kernels = with_engine_kernels(scenario, V1)
    piecewise = DagPricer(with_kernels, piecewise=True)
    assert engine(batch) == piecewise.timing(batch + (SeqWork(1, 0),)).latency_s
    eager_mode = with_kernels.model_copy(update={"runtime": with_kernels.runtime.model_copy(update={"mode": "eager"})})
    assert engine(batch) < DagPricer(eager_mode).timing(batch).latency_s


def test_v1_engine_sets_the_expert_exchange_unless_the_scenario_does():
    assert with_engine_kernels(seed_serving("vllm-v1"), V1).runtime.ep_dispatch == "allgather"
    own = seed_serving("vllm-v1", "runtime.ep_dispatch=all_to_all")
    assert with_engine_kernels(own, V1).runtime.ep_dispatch == "all_to_all"
    # the V0 profile names no exchange: the scenario's (default all_to_all) stays
    assert with_engine_kernels(seed_serving("vllm"), load_engine_profile("vllm")).runtime.ep_dispatch == "all_to_all"


# ---------------------------------------------------------------- batch limits by GPU


def without_scheduler(hardware: str, *overrides: str):
    data = copy.deepcopy(seed_dict())
    data["hardware"] = hardware
    data["serving"] = {
        "engine": "vllm-v1",
        "workload": {
            "arrivals": {"kind": "closed_loop", "concurrency": 1},
            "num_requests": 1,
            "input_len": {"kind": "fixed", "tokens": 64},
            "output_len": {"kind": "fixed", "tokens": 2},
        },
    }
    for item in overrides:
        key, value = item.split("=")
        data["serving"].setdefault("scheduler", {})[key] = int(value)
    return parse_scenario(data, "v1-defaults").serving


@pytest.mark.parametrize(
    ("hardware", "seqs", "tokens"),
    [
        ("h100-sxm-80gb", 1024, 8192),  # 85.03e9 bytes = 79.2 GiB >= 70 GiB, not an A100
        ("h200-sxm-141gb", 1024, 8192),
        ("a100-sxm-80gb", 256, 2048),  # large, but an A100 (vLLM PR 17885)
        ("generic-64gb", 256, 2048),  # 64 GB < 70 GiB
    ],
)
def test_v1_batch_limits_follow_the_gpu(hardware, seqs, tokens):
    spec = without_scheduler(hardware)
    assert spec is not None
    assert (spec.scheduler.max_num_seqs, spec.scheduler.max_num_batched_tokens) == (seqs, tokens)
    assert spec.scheduler.policy == "chunked_prefill" and spec.scheduler.admission == "on_demand"
    assert spec.scheduler.kv_cache.block_size_tokens == 16


def test_a_scenarios_own_limits_win_over_the_gpus():
    spec = without_scheduler("h100-sxm-80gb", "max_num_seqs=64")
    assert spec is not None
    assert (spec.scheduler.max_num_seqs, spec.scheduler.max_num_batched_tokens) == (64, 8192)


def test_device_rule_reads_memory_in_bytes_and_names_case_blind():
    rule = DeviceDefaultsSpec(min_device_memory_bytes=70 * 2**30, exclude_names=("a100",), max_num_seqs=8, source="t")
    assert device_limits(rule, {}, ("h100", 70 * 2**30)) == {"max_num_seqs": 8, "engine_defaults": {"max_num_seqs": 8}}
    assert device_limits(rule, {}, ("h100", 70 * 2**30 - 1)) == {}
    assert device_limits(rule, {}, ("NVIDIA-A100-80GB", 90e9)) == {}
    same = {"max_num_seqs": 3}
    assert device_limits(rule, same, ("h100", 90e9)) is same
    small = DeviceDefaultsSpec(below_device_memory_bytes=25_000 * 2**20, max_num_batched_tokens=2048, source="t")
    record = {"max_num_batched_tokens": 2048}
    assert device_limits(small, {}, ("l4", 24e9)) == {**record, "engine_defaults": record}
    assert device_limits(small, {}, ("h100", 85.03e9)) == {}


def test_the_gpus_limits_are_recorded_and_derived_again_on_another_gpu():
    # A scenario written on an H100 (a search's chosen scenario, an API override) keeps the limits vLLM sets
    # there only while it stays there: on an A100 they are 256 / 2,048, back on an H200 1,024 / 8,192.
    spec = without_scheduler("h100-sxm-80gb")
    assert spec is not None and spec.scheduler.engine_defaults == {"max_num_seqs": 1024, "max_num_batched_tokens": 8192}
    data = copy.deepcopy(seed_dict())
    data["serving"] = spec.model_dump(mode="json", exclude_none=True)
    limits = []
    for hardware in ("a100-sxm-80gb", "h200-sxm-141gb", "generic-64gb"):
        data["hardware"] = hardware
        scenario = parse_scenario(data, "moved")
        assert scenario.serving is not None
        s = scenario.serving.scheduler
        limits.append((s.max_num_seqs, s.max_num_batched_tokens, s.engine_defaults))
        data["serving"] = scenario.serving.model_dump(mode="json", exclude_none=True)
    both = ("max_num_seqs", "max_num_batched_tokens")
    assert limits == [
        (256, 2048, dict(zip(both, (256, 2048)))),  # the profile's general defaults, recorded too
        (1024, 8192, dict(zip(both, (1024, 8192)))),
        (256, 2048, dict(zip(both, (256, 2048)))),
    ]


def test_a_limit_edited_since_it_was_recorded_is_the_scenarios_own():
    scheduler = {
        "max_num_seqs": 512,
        "max_num_batched_tokens": 8192,
        "engine_defaults": {"max_num_seqs": 1024, "max_num_batched_tokens": 8192},
    }
    assert engine_config.forget_engine_limits(scheduler) == {"max_num_seqs": 512}
    same = {"max_num_seqs": 3}
    assert engine_config.forget_engine_limits(same) is same
    data = copy.deepcopy(seed_dict())
    data["hardware"] = "a100-sxm-80gb"
    data["serving"] = without_scheduler("h100-sxm-80gb").model_dump(mode="json", exclude_none=True)
    data["serving"]["scheduler"]["max_num_seqs"] = 512
    s = parse_scenario(data, "edited").serving.scheduler
    assert (s.max_num_seqs, s.max_num_batched_tokens, s.engine_defaults) == (
        512,
        2048,
        {"max_num_batched_tokens": 2048},
    )


def test_a_search_over_gpus_takes_each_gpus_engine_limits():
    from simulator.sweep.candidates import SearchSpace, enumerate_candidates

    data = copy.deepcopy(seed_dict())
    data["serving"] = without_scheduler("h100-sxm-80gb").model_dump(mode="json", exclude_none=True)
    data["hardware"] = "h100-sxm-80gb"
    base = parse_scenario(data, "search")
    space = SearchSpace(
        gpu_counts=(4,),
        hardware=("h100-sxm-80gb", "a100-sxm-80gb"),
        weight_dtypes=("fp16",),
        kv_cache_dtypes=("fp16",),
        microbatches=(1,),
    )
    found = enumerate_candidates(base, space)
    limits = {(c.hardware_name, c.max_num_seqs, c.max_num_batched_tokens) for c in found.candidates}
    assert limits == {("h100-sxm-80gb", 1024, 8192), ("a100-sxm-80gb", 256, 2048)}
    from simulator.sweep.candidates import CandidateScenarios

    scenarios = CandidateScenarios(base)
    a100 = next(c for c in found.candidates if c.hardware_name == "a100-sxm-80gb")
    s = scenarios.variant(a100).serving.scheduler
    assert (s.max_num_seqs, s.max_num_batched_tokens) == (256, 2048)


def test_engine_profiles_are_read_once_per_file_version(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_config, "ENGINE_PROFILES_DIR", tmp_path)
    path = tmp_path / "vllm-v1.yaml"
    shutil.copy(Path(__file__).resolve().parents[2] / "engine_profiles" / "vllm-v1.yaml", path)
    first = load_engine_profile("vllm-v1")
    assert load_engine_profile("vllm-v1") is first  # the same file: no second read
    path.write_text(path.read_text().replace('version: "0.11.x (V1 engine)"', 'version: "edited"'))
    os.utime(path, ns=(1, 1))  # another file version even within the clock's resolution
    assert load_engine_profile("vllm-v1").version == "edited"


@pytest.fixture(scope="module")
def seed_passes():
    scenario = with_engine_kernels(seed_serving("vllm-v1"), V1)
    return DagPricer(scenario), DagPricer(scenario, piecewise=True)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.lists(st.tuples(st.integers(2, 600), st.integers(0, 4000)), min_size=1, max_size=3),
    decodes=st.lists(st.integers(1, 6000), max_size=40),
)
def test_a_piecewise_pass_is_never_slower_than_the_same_pass_launched_eagerly(seed_passes, chunks, decodes):
    """Replaying a node drops its eager floor and changes nothing else (same nodes, same device times below the
    floor's max), so no pass can get slower; the padding to a captured size is the EnginePricer's, not this."""
    eager, piecewise = seed_passes
    batch = tuple(chunks) + tuple((1, c) for c in decodes)
    assert piecewise.exact(batch).latency_s <= eager.exact(batch).latency_s * (1 + 1e-12)


# ---------------------------------------------------------------- the head outside the decode graph


@pytest.mark.parametrize("outside", [("lm_head", "sample"), ("sample",)])
def test_the_head_outside_the_graph_adds_its_eager_floors_and_the_fast_price_still_matches(outside):
    """vLLM calls compute_logits and the sampler after the replayed decode graph, SGLang the sampler: those
    nodes take their eager time (at least their floor), everything else its replayed time; they are nodes the
    fast price prices apart, so it still matches the exact pass."""
    scenario = seed_serving("vllm-v1", "model.vocab_size=32000")  # the seed model has no LM head of its own
    hw = DagPricer(scenario).hw
    batch = ((1, 300), (1, 1200), (1, 40))
    dag = build_forward(scenario, ragged_shape(batch))
    replayed = simulate_dag(dag, scenario, hw, host_thread=False)
    mixed = simulate_dag(dag, scenario, hw, host_thread=False, graph_outside_ops=frozenset(outside))
    gpn = gpus_per_node(scenario, hw)
    seen = set()
    for i, a in dag.distinct():
        if a["op"] in outside:
            seen.add(a["op"])
            eager_s = node_time_s(a, hw, gpn, True, scenario.model.gated)[0]
            assert mixed.duration_s[i] == eager_s >= replayed.duration_s[i]
        else:
            assert mixed.duration_s[i] == replayed.duration_s[i]
    assert seen == set(outside) and mixed.makespan_s > replayed.makespan_s
    pricer = DagPricer(scenario, graph_outside_ops=frozenset(outside))
    rng = random.Random(5)
    batches = [tuple((1, rng.randint(1, 6000)) for _ in range(rng.randint(1, 60))) for _ in range(8)]
    assert price_error(pricer, batches) < 1e-3
    plain = DagPricer(scenario)
    assert pricer.timing(batch).latency_s > plain.timing(batch).latency_s


def test_each_engine_says_which_head_nodes_run_outside_its_decode_graph():
    assert V1_GRAPH.outside == ("lm_head", "sample")
    assert load_engine_profile("vllm").cuda_graph.outside == ("lm_head", "sample")  # type: ignore[union-attr]
    assert load_engine_profile("sglang").cuda_graph.outside == ("sample",)  # type: ignore[union-attr]
    _, pricer, _ = serving_inputs(seed_serving("vllm-v1"))
    assert "lm_head and sample outside the graph" in repr(pricer.pricer.graph_pricer)  # type: ignore[attr-defined]
    assert pricer.pricer.graph_pricer.graph_outside_ops == {"lm_head", "sample"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"foo": 3}, "serving.scheduler.engine_defaults.foo: unknown key; valid keys: max_num_seqs"),
        (5, "serving.scheduler.engine_defaults: Input should be a valid dictionary"),
    ],
)
def test_a_malformed_record_of_the_engines_limits_is_refused_in_one_line(record, message):
    data = copy.deepcopy(seed_dict())
    data["serving"] = without_scheduler("h100-sxm-80gb").model_dump(mode="json", exclude_none=True)
    data["serving"]["scheduler"]["engine_defaults"] = record
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(data, "bad")


@pytest.mark.parametrize(
    ("hardware", "tp", "max_mib"),
    [
        ("h100-sxm-80gb", 8, 64),  # symmetric memory (multimem) up to 64 MiB beyond the custom 256 KiB
        ("h100-sxm-80gb", 4, 32),  # the custom all-reduce up to 32 MiB
        ("h200-sxm-141gb", 2, 64),
        ("b200-sxm-180gb", 2, 8),  # Blackwell: symmetric memory (two-shot) up to 8 MiB
        ("b200-sxm-180gb", 8, 128),
        ("a100-sxm-80gb", 8, 8),  # no symmetric memory: the custom all-reduce's own buffer
    ],
)
def test_v1_all_reduce_limit_follows_the_gpu_and_the_tp_size(hardware, tp, max_mib):
    def on(engine: str):  # only the GPU's name and the TP group's size matter to the limit
        s = seed_serving(engine)
        return s.model_copy(
            update={
                "hardware": s.hardware.model_copy(update={"profile": hardware}),
                "parallel": s.parallel.model_copy(update={"tp": tp}),
            }
        )

    assert with_engine_kernels(on("vllm-v1"), V1).runtime.custom_allreduce_max_bytes == max_mib * 2**20
    # the V0 profile keeps its 8 MiB on every GPU
    v0 = with_engine_kernels(on("vllm"), load_engine_profile("vllm"))
    assert v0.runtime.custom_allreduce_max_bytes == 8 * 2**20
