"""Engine profiles in the serving pricing: CUDA-graph capture sizes, padding of decode batches, host time per
iteration (hand-computed with dyadic figures, so every time is exact), and the wiring through serving_inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.config import ScenarioError, load_scenario, parse_scenario
from simulator.config.engine import (
    AllReduceSpec,
    CudaGraphSpec,
    EngineProfile,
    HostTimeSpec,
    available_engines,
    load_engine_profile,
)
from simulator.config.serving import ServingError
from simulator.serving.dag_pricer import DagPricer
from simulator.serving.engine_pricing import EnginePricer, decode_plan, iteration_s, padded_size
from simulator.serving.pricing import CachedPricer, LinearPricer, SeqWork
from simulator.serving.session import serving_inputs, with_engine_kernels
from tests.serving.conftest import BASE, merge

VLLM_256 = load_engine_profile("vllm").cuda_graph.capture_sizes(256)  # type: ignore[union-attr]


# ---------------------------------------------------------------- capture sizes


def test_vllm_v0_captures_one_two_four_then_multiples_of_eight_up_to_max_num_seqs():
    # vllm/config.py _set_cudagraph_sizes (V0): [1, 2, 4, 8, 16, ..., 256] for the default max_num_seqs 256
    assert VLLM_256 == (1, 2, 4) + tuple(range(8, 257, 8))
    assert len(VLLM_256) == 35


def test_vllm_v0_keeps_sizes_up_to_the_first_at_or_above_max_num_seqs():
    sizes = load_engine_profile("vllm").cuda_graph.capture_sizes(20)  # type: ignore[union-attr]
    assert sizes == (1, 2, 4, 8, 16, 24)


def test_sglang_adds_max_running_requests_only_below_its_largest_size():
    graph = load_engine_profile("sglang").cuda_graph
    assert graph is not None
    assert graph.capture_sizes(100) == (1, 2, 4, 8) + tuple(range(16, 97, 8)) + (100,)
    assert graph.capture_sizes(256)[-1] == 160  # 256 > 160: nothing added, larger batches run eagerly


def test_trtllm_engine_flow_replays_no_graphs():
    assert load_engine_profile("trtllm").cuda_graph is None


@pytest.mark.parametrize("name", available_engines())
def test_every_bundled_engine_profile_loads_and_cites_its_figures(name):
    profile = load_engine_profile(name)
    assert profile.name == name and profile.version
    assert profile.host.source and profile.kernels.source
    assert profile.cuda_graph is None or profile.cuda_graph.source
    assert profile.scheduler_defaults is None or profile.scheduler_defaults.source
    assert profile.allreduce is None or profile.allreduce.source


# ---------------------------------------------------------------- scheduler defaults


def _silent(**kv) -> dict:
    """BASE with a scheduler that says nothing but its policy and the KV fields given."""
    return merge(BASE, {}) | {"scheduler": {"policy": "chunked_prefill", "kv_cache": kv}}


def test_trtllm_fills_what_the_scheduler_leaves_out_with_its_own_defaults():
    from simulator.config.serving import parse_serving_spec

    s = parse_serving_spec({**_silent(), "engine": "trtllm"}).scheduler
    # GUARANTEED_NO_EVICT, KvCacheConfig's 0.9 of free memory and 32-token blocks, BuildConfig's 2048 / 8192
    assert (s.admission, s.max_num_seqs, s.max_num_batched_tokens) == ("reserve", 2048, 8192)
    assert (s.kv_cache.free_memory_fraction, s.kv_cache.gpu_memory_utilization) == (0.9, None)
    assert s.kv_cache.block_size_tokens == 32
    # the scheduler section itself may be left out: the engine's defaults, else moesim's
    bare = {k: v for k, v in BASE.items() if k != "scheduler"}
    assert parse_serving_spec({**bare, "engine": "trtllm"}).scheduler.admission == "reserve"
    own = parse_serving_spec(bare).scheduler
    assert (own.policy, own.admission, own.max_num_seqs, own.kv_cache.block_size_tokens) == (
        "chunked_prefill",
        "on_demand",
        256,
        16,
    )


def test_vllm_fills_its_share_of_the_gpu_and_what_the_scenario_gives_wins():
    from simulator.config.serving import parse_serving_spec

    s = parse_serving_spec({**_silent(), "engine": "vllm"}).scheduler
    assert (s.kv_cache.gpu_memory_utilization, s.kv_cache.block_size_tokens, s.admission) == (0.9, 16, "on_demand")
    given = _silent(block_size_tokens=64, free_memory_fraction=0.5)
    given["scheduler"] |= {"admission": "reserve", "max_num_seqs": 8}
    s = parse_serving_spec({**given, "engine": "vllm"}).scheduler
    assert (s.kv_cache.block_size_tokens, s.admission, s.max_num_seqs) == (64, "reserve", 8)
    # the scenario's own KV rule stands: the engine's is not added beside it
    assert (s.kv_cache.free_memory_fraction, s.kv_cache.gpu_memory_utilization) == (0.5, None)
    fixed = parse_serving_spec({**_silent(capacity_blocks=100), "engine": "trtllm"}).scheduler.kv_cache
    assert (fixed.capacity_blocks, fixed.free_memory_fraction) == (100, None)


def test_without_an_engine_or_with_sglang_moesims_own_kv_and_admission_defaults_stay():
    from simulator.config.serving import parse_serving_spec

    for extra, admission in (({}, "on_demand"), ({"engine": "sglang"}, "estimate")):
        s = parse_serving_spec({**_silent(), **extra}).scheduler
        assert (s.admission, s.max_num_seqs, s.max_num_batched_tokens) == (admission, 256, 8192)
        assert (s.kv_cache.block_size_tokens, s.kv_cache.gpu_memory_utilization) == (16, None)
        assert s.kv_cache.free_memory_fraction is None


def test_sglang_runs_prefill_only_iterations_first_with_its_chunk_by_gpu():
    # scheduler.py get_next_batch_to_run ("Run prefill first if possible"), enable_mixed_chunk False;
    # chunked_prefill_size 8192, 2048 below 25,000 MiB (server_args.py)
    bare = {
        "name": "s",
        "model": {"preset": "mixtral-8x7b"},
        "cluster": {"num_gpus": 2},
        "parallel": {"tp": 2},
        "workload": {"batch_size": 1, "input_len_tokens": 8, "output_len_tokens": 2},
        "serving": {**{k: v for k, v in BASE.items() if k != "scheduler"}, "engine": "sglang"},
    }
    h100 = parse_scenario({**bare, "hardware": "h100-sxm-80gb"}, "s").serving.scheduler  # type: ignore[union-attr]
    assert (h100.policy, h100.max_num_batched_tokens) == ("prefill_first_chunked", 8192)
    assert h100.admission == "estimate"  # PrefillAdder's new_token_ratio
    small = {"profile": "h100-sxm-80gb", "memory_bytes": 24e9}  # a 24 GB card: below SGLang's 25,000 MiB
    l4 = parse_scenario({**bare, "hardware": small}, "s").serving.scheduler  # type: ignore[union-attr]
    assert (l4.policy, l4.max_num_batched_tokens) == ("prefill_first_chunked", 2048)
    own = parse_scenario(
        {**bare, "hardware": small, "serving": {**bare["serving"], "scheduler": {"policy": "chunked_prefill"}}}, "s"
    ).serving.scheduler  # type: ignore[union-attr]
    assert (own.policy, own.max_num_batched_tokens) == ("chunked_prefill", 2048)


def test_unknown_engine_names_the_available_ones():
    with pytest.raises(ScenarioError, match="engine 'vlm' not found; did you mean 'vllm'"):
        load_engine_profile("vlm")


def test_serving_section_refuses_an_unknown_engine():
    from simulator.config.serving import parse_serving_spec

    with pytest.raises(ServingError, match="serving: engine: .*'sglng' not found"):
        parse_serving_spec(merge(BASE, {"engine": "sglng"}))


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize(("n", "padded"), [(1, 1), (3, 4), (5, 8), (9, 16), (17, 24), (255, 256), (256, 256)])
def test_a_decode_batch_pads_up_to_the_next_captured_size(n, padded):
    assert padded_size(n, VLLM_256) == padded


def test_a_batch_above_the_largest_captured_size_is_not_padded():
    assert padded_size(257, VLLM_256) is None
    assert decode_plan((SeqWork(1, 5),) * 257, VLLM_256, None) == (False, 257)


def test_a_batch_with_a_prefill_chunk_runs_eagerly_unpadded():
    assert decode_plan((SeqWork(1, 5), SeqWork(7, 0), SeqWork(1, 9)), VLLM_256, None) == (False, 3)


def test_a_context_beyond_max_context_tokens_runs_eagerly():
    # vLLM max_seq_len_to_capture 8192: a sequence attending to 8193 positions falls back to eager mode
    assert decode_plan((SeqWork(1, 8191),) * 3, VLLM_256, 8192) == (True, 4)
    assert decode_plan((SeqWork(1, 8192),) * 3, VLLM_256, 8192) == (False, 3)


# ---------------------------------------------------------------- iteration time


def profile(graph: bool, per_iteration_s: float = 0.0, per_sequence_s: float = 0.0, overlapped: bool = False):
    return EngineProfile(
        name="test",
        version="1",
        cuda_graph=CudaGraphSpec(sizes=(1, 2, 4, 8), source="test") if graph else None,
        host=HostTimeSpec(
            per_iteration_s=per_iteration_s, per_sequence_s=per_sequence_s, overlapped=overlapped, source="test"
        ),
        kernels={"moe_impl": "grouped", "source": "test"},
    )


GRAPH = LinearPricer(0.25, 2**-6, 2**-10)
EAGER = LinearPricer(0.5, 2**-6, 2**-10)


def test_padded_decode_iteration_prices_the_dummy_rows_and_adds_serial_host_time():
    engine = EnginePricer(profile(True, 2**-8, 2**-10), GRAPH, lambda: EAGER, (1, 2, 4, 8))
    batch = (SeqWork(1, 10), SeqWork(1, 20), SeqWork(1, 30))
    # padded to 4 rows: one dummy row (1 new token, 0 cached); GPU = 0.25 + 4 * 2^-6 + (10+20+30+0) * 2^-10
    gpu_s = 0.25 + 4 * 2**-6 + 60 * 2**-10
    host_s = 2**-8 + 3 * 2**-10  # per iteration + per real sequence
    assert engine(batch) == gpu_s + host_s
    assert engine.launch(batch) == ("graph", 3, 1)


def test_overlapped_host_time_hides_behind_the_gpu_pass():
    short = EnginePricer(profile(True, 2**-8, overlapped=True), GRAPH, lambda: EAGER, (1, 2, 4, 8))
    batch = (SeqWork(1, 0), SeqWork(1, 0))
    assert short(batch) == 0.25 + 2 * 2**-6  # host 2^-8 < GPU
    long = EnginePricer(profile(True, 1.0, overlapped=True), GRAPH, lambda: EAGER, (1, 2, 4, 8))
    assert long(batch) == 1.0  # the host is slower: it sets the pace
    assert iteration_s(0.5, HostTimeSpec(per_iteration_s=0.25, source="t"), 3) == 0.75


def test_a_batch_beyond_the_graphs_runs_on_the_eager_pricer_unpadded():
    engine = EnginePricer(profile(True), GRAPH, lambda: EAGER, (1, 2, 4, 8))
    batch = (SeqWork(1, 4),) * 9
    assert engine(batch) == 0.5 + 9 * 2**-6 + 36 * 2**-10
    prefill = (SeqWork(16, 0), SeqWork(1, 4))
    assert engine(prefill) == 0.5 + 17 * 2**-6 + 4 * 2**-10
    assert engine.launch(batch) == ("eager", 9, 0) and engine.launch(prefill) == ("eager", 17, 0)


def test_the_empty_dummy_batch_of_an_idle_lockstep_replica_replays_a_graph_unpadded():
    engine = EnginePricer(profile(True), GRAPH, lambda: EAGER, (1, 2, 4, 8))
    assert engine(()) == 0.25
    assert EnginePricer(profile(False), None, lambda: EAGER, ())(()) == 0.5


def test_without_graphs_every_iteration_is_eager():
    engine = EnginePricer(profile(False), None, lambda: EAGER, ())
    assert engine((SeqWork(1, 0),) * 3) == 0.5 + 3 * 2**-6


# ---------------------------------------------------------------- through serving_inputs


def seed_serving(engine: str | None, mode: str = "cuda_graph"):
    overrides = [f"runtime.mode={mode}"]
    if engine is not None:
        overrides.append(f"serving.engine={engine}")
    if engine is not None and engine.startswith("trtllm"):  # the seed's 10,240-token prompts: chunked context on
        overrides.append("serving.scheduler.split_prompts=true")
    return load_scenario("scenarios/seed_moe_4gpu_serving.yaml", overrides)


def test_without_an_engine_the_pricer_is_the_plain_dag_pricer():
    _, pricer, _ = serving_inputs(seed_serving(None))
    assert isinstance(pricer, CachedPricer) and isinstance(pricer.pricer, DagPricer)


def test_vllm_engine_prices_a_decode_batch_as_the_dag_pass_of_the_padded_batch():
    scenario = seed_serving("vllm")
    spec, pricer, _ = serving_inputs(scenario)
    assert isinstance(pricer, CachedPricer)
    engine = pricer.pricer
    assert isinstance(engine, EnginePricer)
    assert engine.capture_sizes == load_engine_profile("vllm").cuda_graph.capture_sizes(spec.scheduler.max_num_seqs)  # type: ignore[union-attr]
    batch = tuple(SeqWork(1, 100 + i) for i in range(5))
    dag = DagPricer(with_engine_kernels(scenario, load_engine_profile("vllm")))  # the engine's MoE and all-reduce
    assert engine(batch) == dag.timing(batch + (SeqWork(1, 0),) * 3).latency_s  # 5 -> 8 rows, host time 0


def test_runtime_mode_eager_turns_the_engine_graphs_off():
    _, pricer, _ = serving_inputs(seed_serving("vllm", mode="eager"))
    engine = pricer.pricer  # type: ignore[attr-defined]
    assert engine.capture_sizes == () and engine.graph_pricer is None


def test_engine_kernels_fill_moe_impl_and_refuse_a_contradiction():
    scenario = seed_serving("vllm")
    assert with_engine_kernels(scenario, load_engine_profile("vllm")).model.moe_impl == "grouped"
    explicit = load_scenario(
        "scenarios/seed_moe_4gpu_serving.yaml", ["model.moe_impl=per_expert", "serving.engine=vllm"]
    )
    with pytest.raises(ScenarioError, match="model.moe_impl = per_expert contradicts serving.engine vllm"):
        serving_inputs(explicit)


def test_engines_run_their_custom_allreduce_unless_the_scenario_turns_it_off():
    # vLLM's max_size 8 MiB; SGLang's and TensorRT-LLM's 8,000,000-byte workspace (engine_profiles/*.yaml)
    for engine, cap in (("vllm", 8 * 2**20), ("sglang", 8e6), ("trtllm", 8e6)):
        runtime = with_engine_kernels(seed_serving(engine), load_engine_profile(engine)).runtime
        assert (runtime.allreduce, runtime.custom_allreduce_max_bytes) == ("custom", cap)
    # vLLM's --disable-custom-all-reduce: the scenario's own choice wins, and its own buffer size
    off = load_scenario("scenarios/seed_moe_4gpu_serving.yaml", ["runtime.allreduce=nccl", "serving.engine=vllm"])
    assert with_engine_kernels(off, load_engine_profile("vllm")).runtime.allreduce == "nccl"
    small = load_scenario(
        "scenarios/seed_moe_4gpu_serving.yaml", ["runtime.custom_allreduce_max_bytes=1024", "serving.engine=vllm"]
    )
    assert with_engine_kernels(small, load_engine_profile("vllm")).runtime.custom_allreduce_max_bytes == 1024
    # without an engine: the custom all-reduce of the fused framework, NCCL under plain PyTorch
    assert seed_serving(None).runtime.allreduce == "custom"
    plain = load_scenario("scenarios/seed_moe_4gpu_serving.yaml", ["runtime.framework=pytorch"])
    assert plain.runtime.allreduce == "nccl"


def test_a_custom_allreduce_without_its_buffer_size_is_refused():
    with pytest.raises(ValueError, match="max_bytes: a custom all-reduce needs its buffer size"):
        AllReduceSpec(algorithm="custom", source="x")


# ---------------------------------------------------------------- invariants


@given(
    sizes=st.lists(st.integers(1, 600), min_size=1, max_size=30, unique=True).map(lambda s: tuple(sorted(s))),
    n=st.integers(1, 700),
)
def test_padding_picks_the_smallest_captured_size_that_holds_the_batch(sizes, n):
    padded = padded_size(n, sizes)
    if n > sizes[-1]:
        assert padded is None
    else:
        assert padded in sizes and padded >= n
        assert not [s for s in sizes if n <= s < padded]


def test_trtllm_1_0_host_time_is_the_published_host_step_over_its_requests():
    # TensorRT-LLM PR 10273: host_step_time 45.11 ms an iteration at 1,536 requests a rank (C++ scheduler)
    host = load_engine_profile("trtllm-1.0").host
    assert host.overlapped and host.per_iteration_s == 0.0
    assert host.per_sequence_s == pytest.approx(45.11e-3 / 1536, rel=1e-3)
    assert iteration_s(0.010, host, 1536) == pytest.approx(45.11e-3, rel=1e-3)  # host-bound: the host's 45 ms
    assert iteration_s(0.030, host, 512) == 0.030  # 15.0 ms of host work hidden behind a 30 ms pass
    for name in ("vllm", "vllm-v1", "sglang", "sglang-0.5", "trtllm"):  # unpublished for these: 0
        assert load_engine_profile(name).host.host_s(1024) == 0.0


@given(
    gpu_s=st.floats(1e-6, 10.0),
    per_iteration_s=st.floats(0.0, 1.0),
    per_sequence_s=st.floats(0.0, 1e-3),
    n=st.integers(0, 1024),
    overlapped=st.booleans(),
)
def test_an_iteration_takes_at_least_its_gpu_pass_and_its_host_work(
    gpu_s, per_iteration_s, per_sequence_s, n, overlapped
):
    host = HostTimeSpec(
        per_iteration_s=per_iteration_s, per_sequence_s=per_sequence_s, overlapped=overlapped, source="t"
    )
    t = iteration_s(gpu_s, host, n)
    assert t >= gpu_s and t >= host.host_s(n)
    assert t <= gpu_s + host.host_s(n)


@given(
    seqs=st.one_of(st.none(), st.integers(1, 4)),
    tokens=st.one_of(st.none(), st.integers(2048, 8192)),  # at least every default max_num_seqs
    admission=st.sampled_from([None, "on_demand", "reserve"]),
    block=st.one_of(st.none(), st.sampled_from([1, 16, 64])),
    rule=st.sampled_from(
        [None, ("gpu_memory_utilization", 0.5), ("free_memory_fraction", 0.5), ("capacity_blocks", 99)]
    ),
    engine=st.sampled_from(["vllm", "sglang", "trtllm"]),
)
def test_engine_defaults_fill_only_what_the_scenario_leaves_out(seqs, tokens, admission, block, rule, engine):
    from simulator.config.serving import parse_serving_spec

    given_fields = {"max_num_seqs": seqs, "max_num_batched_tokens": tokens, "admission": admission}
    scheduler: dict = {"policy": "chunked_prefill", **{k: v for k, v in given_fields.items() if v is not None}}
    kv: dict = {} if block is None else {"block_size_tokens": block}
    if rule is not None:
        kv[rule[0]] = rule[1]
    data = {**{k: v for k, v in BASE.items() if k != "scheduler"}, "scheduler": {**scheduler, "kv_cache": kv}}
    s = parse_serving_spec({**data, "engine": engine}).scheduler
    defaults = load_engine_profile(engine).scheduler_defaults
    for key, value in given_fields.items():
        expected = value if value is not None else getattr(defaults, key, None) if defaults else None
        assert getattr(s, key) == (
            expected if expected is not None else getattr(parse_serving_spec(data).scheduler, key)
        )
    engine_block = defaults.block_size_tokens if defaults is not None else None
    assert s.kv_cache.block_size_tokens == (block or engine_block or 16)  # 16: moesim's own default
    # never two share rules: the scenario's own, or else the engine's default (if it has one)
    assert s.kv_cache.gpu_memory_utilization is None or s.kv_cache.free_memory_fraction is None
    if rule is not None:  # the scenario's own rule stands alone
        assert getattr(s.kv_cache, rule[0]) == rule[1]
        assert [
            r
            for r in ("gpu_memory_utilization", "free_memory_fraction", "capacity_blocks")
            if getattr(s.kv_cache, r) is not None
        ] == [rule[0]]


def closed_loop_spec(concurrency: int, requests: int, output_tokens: int):
    """`requests` requests of 8 prompt tokens + `output_tokens`, `concurrency` at a time, continuous batching."""
    from tests.serving.conftest import make_spec

    return make_spec(
        workload={
            "arrivals": {"kind": "closed_loop", "concurrency": concurrency},
            "num_requests": requests,
            "input_len": {"kind": "fixed", "tokens": 8},
            "output_len": {"kind": "fixed", "tokens": output_tokens},
        },
        scheduler={"policy": "continuous"},
    )


def test_a_run_counts_every_iteration_by_how_the_engine_launches_it():
    # 3 requests of 8 + 4 at once, continuous batching: one prefill of 24 tokens (eager), then 3 decode steps of
    # 3 sequences, each replayed from the graph of 4 (one padding row). The cache in front does not hide repeats.
    from simulator.report.serving_summary import launches_line, serving_summary_dict
    from simulator.serving.simulate import simulate_serving
    from simulator.serving.stats import summarize

    spec = closed_loop_spec(concurrency=3, requests=3, output_tokens=4)
    engine = EnginePricer(profile(True), GRAPH, lambda: EAGER, (1, 2, 4))
    run = simulate_serving(spec, CachedPricer(engine))
    assert run.launches == {"eager": (1, 24, 0), "graph": (3, 9, 3)}
    doc = serving_summary_dict("t", run, summarize(run), "p")
    assert doc["launches"]["graph"] == {"iterations": 3, "sequences": 9, "padding": 3}
    assert launches_line(doc) == "iterations launched: 3 replayed from CUDA graphs (25.0 % padding rows), 1 eagerly"
    plain = simulate_serving(spec, CachedPricer(EAGER))
    assert plain.launches is None and "launches" not in serving_summary_dict("t", plain, summarize(plain), "p")
    piecewise = {"launches": {"piecewise": {"iterations": 2, "new_tokens": 30, "padding": 2}}}
    assert launches_line(piecewise) == "iterations launched: 2 from piecewise graphs (6.2 % padding tokens)"


def test_a_run_counts_the_iterations_the_engines_host_work_set():
    # The run above (one prefill of 3 sequences, 3 decode steps of 3): host work of 0.5 s a sequence, overlapped,
    # outlasts every GPU pass (at most 0.5 + 3 x 2^-6 + 24 x 2^-10 s), so each iteration takes the host's 1.5 s;
    # 2^-20 s a sequence hides behind every pass; a serial 2^-4 s an iteration lengthens all four.
    from simulator.report.serving_summary import host_line, serving_summary_dict
    from simulator.serving.simulate import simulate_serving
    from simulator.serving.stats import summarize

    spec = closed_loop_spec(concurrency=3, requests=3, output_tokens=4)

    def run_with(host_profile):
        return simulate_serving(spec, CachedPricer(EnginePricer(host_profile, GRAPH, lambda: EAGER, (1, 2, 4))))

    slow = run_with(profile(True, per_sequence_s=0.5, overlapped=True))
    assert slow.host is not None and slow.host[:3] == (4, 4, 6.0) and slow.end_s == 6.0
    doc = serving_summary_dict("t", slow, summarize(slow), "p")
    assert doc["host"] == {
        "iterations": 4,
        "host_bound_iterations": 4,
        "host_seconds": 6.0,
        "per_iteration_s": 0.0,
        "per_sequence_s": 0.5,
        "overlapped": True,
        "from_scenario": False,
    }
    assert host_line(doc) == (
        "host work (5e+05 us a sequence, overlapped with the GPU pass) outlasted the GPU pass in 4 of 4 "
        "iterations, which took it instead"
    )
    hidden = run_with(profile(True, per_sequence_s=2**-20, overlapped=True))
    assert hidden.host is not None and hidden.host[:3] == (4, 0, 12 * 2**-20)
    serial = run_with(profile(True, per_iteration_s=2**-4))
    assert serial.host is not None and serial.host[:3] == (4, 4, 0.25) and not serial.host.overlapped
    assert host_line(serving_summary_dict("t", serial, summarize(serial), "p")) == (
        "host work (62.5 ms an iteration, between GPU passes) added 0.25 s over 4 iterations"
    )
    none = run_with(profile(True))  # no host time: no line, nothing in summary.json
    assert (
        none.host is not None
        and none.host[:3] == (4, 0, 0.0)
        and "host" not in serving_summary_dict("t", none, summarize(none), "p")
    )


@given(
    per_iteration_s=st.sampled_from([0.0, 2**-6, 2**-2]),
    per_sequence_s=st.sampled_from([0.0, 2**-10, 2**-4]),
    overlapped=st.booleans(),
    concurrency=st.integers(1, 6),
)
def test_a_runs_host_tally_adds_up_its_iterations_host_work(per_iteration_s, per_sequence_s, overlapped, concurrency):
    # every iteration counted once; the host seconds the profile's rate over the sequences each iteration ran;
    # overlapped, the host sets an iteration exactly when its work is the iteration's time
    from simulator.serving.simulate import simulate_serving

    spec = closed_loop_spec(concurrency=concurrency, requests=6, output_tokens=3)
    host = profile(True, per_iteration_s, per_sequence_s, overlapped)
    run = simulate_serving(spec, CachedPricer(EnginePricer(host, GRAPH, lambda: EAGER, (1, 2, 4))))
    tally = run.host
    assert tally is not None and tally.iterations == run.num_iterations
    seqs = run.timeseries["batch_seqs"]
    assert tally.seconds == pytest.approx(per_iteration_s * len(seqs) + per_sequence_s * float(seqs.sum()))
    host_s = per_iteration_s + per_sequence_s * seqs
    dt = run.timeseries["iteration_s"]
    expected = (host_s > 0) & ((host_s >= dt) if overlapped else True)
    assert tally.host_bound == int(expected.sum())


def test_an_engine_without_padding_replays_only_batches_of_a_captured_size():
    # TensorRT-LLM's PyTorch backend: sizes 1-32, 64, 128, enable_padding False (a batch of 33 runs eagerly)
    sizes = load_engine_profile("trtllm-1.0").cuda_graph.capture_sizes(2048, 8192)  # type: ignore[union-attr]
    assert sizes == (*range(1, 33), 64, 128)
    assert decode_plan((SeqWork(1, 5),) * 32, sizes, None, padding=False) == (True, 32)
    assert decode_plan((SeqWork(1, 5),) * 33, sizes, None, padding=False) == (False, 33)
    assert decode_plan((SeqWork(1, 5),) * 33, sizes, None) == (True, 64)  # with padding: the graph of 64
    unpadded = profile(True).model_copy(
        update={"cuda_graph": CudaGraphSpec(sizes=(1, 2, 4, 8), padding=False, source="test")}
    )
    engine = EnginePricer(unpadded, GRAPH, lambda: EAGER, (1, 2, 4, 8))
    assert engine.launch((SeqWork(1, 4),) * 3) == ("eager", 3, 0)
    assert engine((SeqWork(1, 4),) * 3) == 0.5 + 3 * 2**-6 + 12 * 2**-10
    assert engine.launch((SeqWork(1, 4),) * 4) == ("graph", 4, 0)
    assert "when of exactly such a size (no padding)" in engine.launches_text()


def test_a_scenarios_own_cuda_graph_sizes_and_padding_replace_the_engines():
    # trtllm-bench's llm_options (TensorRT-LLM 1.0 perf overview): batch_sizes [1, 2, 4, ..., 8192], enable_padding
    # true; the seed's scheduler limit (max_num_seqs 128) still caps what is captured.
    own = load_scenario(
        "scenarios/seed_moe_4gpu_serving.yaml",
        [
            "serving.scheduler.split_prompts=true",
            "serving.engine=trtllm-1.0",
            "serving.cuda_graph={sizes: [1, 2, 4, 64, 8, 256, 16, 32, 128], padding: true}",
        ],
    )
    spec, pricer, _ = serving_inputs(own)
    engine = pricer.pricer  # type: ignore[attr-defined]
    assert spec.scheduler.max_num_seqs == 128
    assert engine.capture_sizes == (1, 2, 4, 8, 16, 32, 64, 128) and engine.padding
    assert engine.launch((SeqWork(1, 5),) * 33) == ("graph", 33, 31)  # 33 rows padded to 64 (TensorRT-LLM's own: eager)
    profile = spec.engine_profile()
    assert profile.cuda_graph.outside == ("sample",) and profile.cuda_graph.limit == "max_num_seqs"  # type: ignore[union-attr]
    # padding alone keeps the engine's sizes; sizes alone keep its padding
    padded = load_scenario(
        "scenarios/seed_moe_4gpu_serving.yaml",
        ["serving.scheduler.split_prompts=true", "serving.engine=trtllm-1.0", "serving.cuda_graph.padding=true"],
    )
    graphs = padded.serving.engine_profile().cuda_graph  # type: ignore[union-attr]
    assert graphs.padding and graphs.capture_sizes(128) == (*range(1, 33), 64, 128)  # type: ignore[union-attr]
    # explicit sizes drop SGLang 0.5's largest-graph rule (as --cuda-graph-bs sets cuda_graph_max_bs)
    sglang = load_scenario(
        "scenarios/seed_moe_4gpu_serving.yaml", ["serving.engine=sglang-0.5", "serving.cuda_graph.sizes=[1, 600]"]
    )
    assert sglang.serving.engine_profile().cuda_graph.capture_sizes(2048, None, 85.03e9, 1) == (1, 600)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["serving.cuda_graph.padding=true"], "cuda_graph: sets an engine's CUDA-graph capture; name the engine"),
        (
            ["serving.scheduler.split_prompts=true", "serving.engine=trtllm", "serving.cuda_graph.padding=true"],
            "engine profile trtllm captures no CUDA graphs",
        ),
        (["serving.engine=vllm", "serving.cuda_graph.sizes=[0, 8]"], "cuda_graph.sizes"),
        (["serving.engine=vllm", "serving.cuda_graph.sizes=[]"], "cuda_graph.sizes"),
        (["serving.host.per_sequence_s=1e-5"], "host: sets an engine's host time per iteration; name the engine"),
        (["serving.engine=vllm", "serving.host.per_iteration_s=-1"], "host.per_iteration_s"),
        (["serving.engine=vllm", "serving.host.overlaped=true"], "host.overlaped"),
    ],
)
def test_a_bad_cuda_graph_or_host_section_is_one_line(overrides, message):
    with pytest.raises(ScenarioError, match=message) as err:
        load_scenario("scenarios/seed_moe_4gpu_serving.yaml", overrides)
    assert "\n" not in str(err.value)


def test_a_scenarios_own_host_time_replaces_the_engines():
    # e.g. a deployment's own TensorRT-LLM iteration log (print_iter_log's host_step_time): 10 us a sequence, the
    # profile's overlap kept; the iteration priced takes the longer of its GPU pass and the scenario's host work
    from simulator.config.engine import SCENARIO_HOST_SOURCE

    own = load_scenario(
        "scenarios/seed_moe_4gpu_serving.yaml",
        ["serving.scheduler.split_prompts=true", "serving.engine=trtllm-1.0", "serving.host.per_sequence_s=1e-5"],
    )
    host = own.serving.engine_profile().host
    assert (host.per_iteration_s, host.per_sequence_s, host.overlapped) == (0.0, 1e-5, True)
    assert host.source == SCENARIO_HOST_SOURCE
    spec, pricer, _ = serving_inputs(own)
    engine = pricer.pricer  # type: ignore[attr-defined]
    batch = (SeqWork(1, 5),) * 4
    assert engine(batch) == max(engine.gpu_timing(batch).latency_s, 4e-5)
    serial = load_scenario(
        "scenarios/seed_moe_4gpu_serving.yaml",
        [
            "serving.scheduler.split_prompts=true",
            "serving.engine=trtllm-1.0",
            "serving.host={per_iteration_s: 0.002, overlapped: false}",
        ],
    )
    _, serial_pricer, _ = serving_inputs(serial)
    serial_engine = serial_pricer.pricer  # type: ignore[attr-defined]
    gpu_s = serial_engine.gpu_timing(batch).latency_s
    assert serial_engine(batch) == gpu_s + 0.002 + 4 * 2.937e-05  # the profile's per-sequence figure stays


def test_every_serving_output_states_how_close_its_engine_profile_came_to_published_runs():
    from simulator.report.serving_summary import engine_check_line, serving_markdown, serving_summary_dict
    from simulator.serving.simulate import simulate_serving
    from simulator.serving.stats import summarize
    from tests.serving.conftest import make_spec

    for engine, text in (
        ("trtllm-1.0", "Engine: profile trtllm-1.0 checked against 54 published figures"),
        ("sglang-0.5", "Engine: profile sglang-0.5 has not been checked against a published run of its engine"),
    ):
        spec = make_spec(engine=engine)
        run = simulate_serving(spec, CachedPricer(EAGER))
        doc = serving_summary_dict("t", run, summarize(run), "p")
        assert engine_check_line(doc).startswith(text) and engine_check_line(doc) in serving_markdown(doc)
    plain = make_spec()
    run = simulate_serving(plain, CachedPricer(EAGER))
    assert engine_check_line(serving_summary_dict("t", run, summarize(run), "p")) == ""  # no engine, no line
