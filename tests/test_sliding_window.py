"""Sliding-window attention: the model fields, the equivalent KV length of a windowed chunk, the graph's
per-layer attention, the serving fast path, the KV memory a sliding layer keeps (static and paged), the KV a
disaggregated transfer moves, and import-hf's reading of layer_types."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator import costs
from simulator.config import ScenarioError, parse_scenario, resolve_hardware
from simulator.config.import_hf import attention_pattern, convert
from simulator.config.model import ModelSpec
from simulator.config.serving import SlidingKVSpec, kv_blocks_needed, kv_layer_blocks
from simulator.graph import build
from simulator.graph.ragged import build_forward, ragged_shape
from simulator.memory import kv_bytes_kept, kv_cache_bytes_per_gpu
from simulator.serving.capacity import resolve_serving, sliding_kv
from simulator.serving.dag_pricer import DagPricer, price_error
from simulator.serving.kv_transfer import PoolLayout, kv_transfer_bytes
from simulator.serving.kvcache import PagedKVCache
from tests.conftest import ROOT, seed_dict
from tests.serving.test_dag_pricer import random_batches, seed_serving

BASE = {"name": "m", "num_layers": 4, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "ffn_size": 128}


def sliding_seed(data: dict, window: int = 512, pattern=("sliding", "full")) -> dict:
    data = copy.deepcopy(data)
    data["model"] = {**data["model"], "sliding_window": window, "attention_pattern": list(pattern)}
    return data


# ---------------------------------------------------------------- the model


def test_attention_window_follows_the_pattern_cycle():
    m = ModelSpec.model_validate(
        {**BASE, "num_layers": 7, "sliding_window": 128, "attention_pattern": ["sliding"] * 2 + ["full"]}
    )
    assert [m.attention_window(i) for i in range(7)] == [128, 128, None, 128, 128, None, 128]
    assert m.sliding_layers(range(7)) == 5 and m.sliding_layers([2, 5]) == 0
    # 5 sliding layers keep 128 of 1000 positions, 2 full ones all 1000
    assert m.kept_positions(range(7), 1000) == 5 * 128 + 2 * 1000
    assert m.kept_positions(range(7), 100) == 7 * 100  # inside the window: everything
    every = ModelSpec.model_validate({**BASE, "sliding_window": 64})  # Mistral: every layer slides
    assert [every.attention_window(i) for i in range(4)] == [64] * 4
    plain = ModelSpec.model_validate(BASE)
    assert plain.attention_window(0) is None and plain.kept_positions(range(4), 1000) == 4000


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"attention_pattern": ["sliding", "full"]}, "no sliding_window"),
        ({"sliding_window": 128, "attention_pattern": ["full"]}, "no sliding layer"),
        ({"sliding_window": 0}, "greater than 0"),
        ({"sliding_window": 128, "attention_pattern": ["sliding", "global"]}, "attention_pattern"),
    ],
)
def test_bad_sliding_fields_say_what_to_fix(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec.model_validate({**BASE, **fields})


# ---------------------------------------------------------------- the equivalent KV length


def test_windowed_kv_len_by_hand():
    assert costs.windowed_kv_len(1, 1000, 128) == 128  # a decode token reads its window
    assert costs.windowed_kv_len(1, 100, 128) == 100
    assert costs.windowed_kv_len(1, 1000.5, None) == 1000.5
    # 4 queries at positions 6..9 with window 3: 3 keys each, 12 pairs; attention_pairs(4, k) = 4k - 6 = 12
    assert costs.windowed_kv_len(4, 10, 3) == 4.5
    assert costs.attention_pairs(4, 4.5) == 12
    # positions 1..4 with window 3: 2 + 3 + 3 + 3 = 11 pairs -> 11 / 4 + 3 / 2
    assert costs.windowed_kv_len(4, 5, 3) == 4.25
    # a prompt of 8 with window 8 or more: nothing cut
    assert costs.windowed_kv_len(8, 8, 8) == 8


@given(st.integers(1, 60), st.integers(0, 60), st.integers(1, 80))
def test_windowed_kv_len_scores_the_window_pairs(q_len, cached, window):
    """attention_pairs at the equivalent length is the brute-force count of (query, key) pairs in the window,
    and the length never exceeds the full one."""
    kv_len = cached + q_len
    pairs = sum(min(p + 1, window) for p in range(cached, kv_len))
    eq = costs.windowed_kv_len(q_len, kv_len, window)
    assert costs.attention_pairs(q_len, eq) == pytest.approx(pairs, rel=1e-12)
    assert eq <= kv_len


# ---------------------------------------------------------------- the graph


def test_static_graph_windows_only_the_sliding_layers():
    scenario = parse_scenario(sliding_seed(seed_dict(), 256), "seed-swa")
    dag = build(scenario, [1, 3])
    m = scenario.model
    seen = set()
    for _, a in dag.distinct():
        if a["op"] != "attn_scores":
            continue
        kv = scenario.workload.input_len_tokens + (a["step"] if a["phase"] == "decode" else 0)
        window = m.attention_window(a["layer"])
        expect = costs.windowed_kv_len(a["q_len"], kv, window)
        assert a["kv_len"] == expect
        seen.add((a["phase"], window is None))
        if a["phase"] == "decode" and window is not None:
            # 2 FLOPs x local heads x 256 keys x head_dim per sequence (seed: 16 heads / tp 2, head_dim 32)
            seqs = scenario.workload.batch_size / scenario.parallel.dp
            assert a["flops"] == 2.0 * seqs * 8 * 256 * 32
    assert seen == {("prefill", True), ("prefill", False), ("decode", True), ("decode", False)}


def test_a_model_whose_window_is_never_reached_prices_as_full_attention():
    """Every KV length inside the window: the sliding layers' attention is the full layers' own, so the pass
    takes the same time as without the window."""
    plain = DagPricer(parse_scenario(seed_serving(), "seed"))
    wide = DagPricer(parse_scenario(sliding_seed(seed_serving(), 100_000), "wide"))
    for batch in [((1, 300),) * 16, ((2048, 0),), ((500, 1000), (1, 40), (1, 7000))]:
        assert wide(batch) == plain(batch)
        assert wide.exact(batch) == plain.exact(batch)


def test_fast_price_matches_the_exact_pass_with_sliding_layers():
    pricer = DagPricer(parse_scenario(sliding_seed(seed_serving(), 512), "seed-swa"))
    assert pricer.total_sliding == 8 and pricer.kind_layers == (1, 0)
    assert price_error(pricer, random_batches(20, seed=3)) < 1e-3
    # decode KVs 100 and 900 sum to 2 x 500: alike for full layers, not for the window (100 + 512 != 2 x 500)
    odd = ((1, 99), (1, 899))
    assert pricer.exact(odd) == pricer.exact_shape(ragged_shape(odd, 512))
    assert pricer.timing(odd).latency_s == pytest.approx(pricer.exact(odd).latency_s, rel=1e-3)
    assert pricer.timing(odd) != pricer.timing(((1, 499), (1, 499)))


def test_calibrated_attention_fast_path_is_the_node_path_with_sliding_layers():
    pricer = DagPricer(parse_scenario(sliding_seed(seed_serving(), 300), "seed-swa"))
    assert pricer.fast is not None
    batches = random_batches(60, seed=11) + [((1, 100),) * 8, ((1, 99), (1, 899)), ((700, 300),), ()]
    fast = [pricer.node_parts(ragged_shape(b, 300)) for b in batches]
    pricer.fast = None
    assert [pricer.node_parts(ragged_shape(b, 300)) for b in batches] == fast
    assert all(f[1] <= f[0] for f in fast)  # a sliding layer never attends to more than a full one


def test_a_shape_for_another_window_is_refused():
    scenario = parse_scenario(sliding_seed(seed_serving(), 512), "seed-swa")
    with pytest.raises(ValueError, match="ragged_shape"):
        build_forward(scenario, ragged_shape(((1, 10),)))
    build_forward(scenario, ragged_shape(((64, 0),)))  # a prefill shape carries no window sum: accepted


# ---------------------------------------------------------------- memory


def test_static_kv_memory_keeps_the_window_of_sliding_layers():
    plain = parse_scenario(seed_dict(), "seed")
    swa = parse_scenario(sliding_seed(seed_dict(), 256), "seed-swa")
    w = plain.workload
    positions = w.input_len_tokens + w.output_len_tokens - 1
    # 8 layers a GPU (pp 2), 4 of them sliding: 4 x positions + 4 x 256 layer positions instead of 8 x positions
    ratio = (4 * positions + 4 * 256) / (8 * positions)
    assert kv_cache_bytes_per_gpu(swa, 0) == pytest.approx(kv_cache_bytes_per_gpu(plain, 0) * ratio, rel=1e-12)
    # one sequence: 2 (K, V) x kept positions x local KV heads (16 / tp 2) x head_dim 32 x 2 bytes
    assert kv_bytes_kept(swa, 0, 1000) == 2.0 * (4 * 1000 + 4 * 256) * 8 * 32 * 2


def test_paged_kv_holds_the_window_blocks_of_sliding_layers():
    sliding = SlidingKVSpec(window_tokens=128, full_layers=2, sliding_layers=6)
    assert sliding.window_blocks(32) == 5  # 127 cached positions + the new one straddle at most 5 blocks of 32
    assert sliding.window_blocks(16) == 9
    # 1000 positions = 32 blocks of 32: full layers 2 x 32, sliding ones 6 x 5 layer blocks
    assert kv_layer_blocks(1000, 32, sliding) == 2 * 32 + 6 * 5
    assert kv_layer_blocks(64, 32, sliding) == 8 * 2  # inside the window: every layer's 2 blocks
    assert kv_blocks_needed(500, 501, 32, sliding) == -(-(2 * 32 + 6 * 5) // 8)  # 94 layer blocks -> 12 blocks
    kv = PagedKVCache(10, 32, sliding)  # 80 layer blocks
    assert kv.grow(0, 64) and kv.used_units == 16 and kv.tokens_held(0) == 64
    assert not kv.grow(0, 1000) and kv.used_units == 16  # 94 layer blocks do not fit in 80: nothing allocated
    kv2 = PagedKVCache(12, 32, sliding)
    assert kv2.grow(7, 1000) and kv2.used_units == 94 and kv2.used_blocks == 12 and kv2.free_blocks == 0
    assert kv2.tokens_held(7) == 1024  # 32 blocks of the full layers
    assert not kv2.grow(8, 33)  # 2 units left, 16 needed
    assert kv2.free(7) == 94 and kv2.used_units == 0 and kv2.peak_used_blocks == 12
    every = PagedKVCache(100, 32, SlidingKVSpec(window_tokens=128, full_layers=0, sliding_layers=4))
    assert every.grow(1, 5000) and every.used_units == 20 and every.tokens_held(1) == float("inf")


def test_serving_resolves_the_sliding_layers_and_holds_more_sequences():
    plain_scenario = parse_scenario(seed_serving(), "seed")
    plain = resolve_serving(plain_scenario, resolve_hardware(plain_scenario))
    swa_scenario = parse_scenario(sliding_seed(seed_serving(), 256), "seed-swa")
    swa = resolve_serving(swa_scenario, resolve_hardware(swa_scenario))
    assert plain.scheduler.kv_cache.sliding is None
    assert swa.scheduler.kv_cache.sliding == SlidingKVSpec(window_tokens=256, full_layers=8, sliding_layers=8)
    assert sliding_kv(swa_scenario) == swa.scheduler.kv_cache.sliding
    # the same bytes a block: the same capacity in blocks of every layer
    assert swa.scheduler.kv_cache.capacity_blocks == plain.scheduler.kv_cache.capacity_blocks


def test_a_disaggregated_transfer_moves_the_window_of_sliding_layers():
    plain = ModelSpec.model_validate(BASE)
    swa = ModelSpec.model_validate({**BASE, "sliding_window": 100, "attention_pattern": ["sliding", "full"]})
    one = PoolLayout(tp=1, pp=1)
    # 2 full layers x 1000 positions + 2 sliding x 100, of 2 KV heads x 2 (K, V) x head_dim 16 x 2 bytes
    assert kv_transfer_bytes(swa, one, one, 1000) == (2 * 1000 + 2 * 100) * 2 * 2 * 16 * 2
    assert kv_transfer_bytes(plain, one, one, 1000) == 4 * 1000 * 2 * 2 * 16 * 2
    assert kv_transfer_bytes(swa, one, one, 50) == kv_transfer_bytes(plain, one, one, 50)


# ---------------------------------------------------------------- import-hf


def test_import_reads_layer_types_and_the_window():
    cfg = {
        "model_type": "gpt_oss",
        "num_hidden_layers": 6,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "sliding_window": 128,
        "layer_types": ["sliding_attention", "full_attention"] * 3,
    }
    spec, src, _, _ = convert(cfg, "x")
    assert spec["sliding_window"] == 128 and spec["attention_pattern"] == ["sliding", "full"]
    assert "6 entries" in src["attention_pattern"]
    mistral = {k: v for k, v in cfg.items() if k not in ("layer_types", "model_type")}
    spec, _, _, _ = convert(mistral, "m")
    assert spec["sliding_window"] == 128 and "attention_pattern" not in spec  # every layer slides
    qwen2 = {**mistral, "use_sliding_window": False}
    assert "sliding_window" not in convert(qwen2, "q")[0]
    assert attention_pattern({"use_sliding_window": True, "max_window_layers": 4, "num_hidden_layers": 6}) == (
        ["full"] * 4 + ["sliding"] * 2,
        "max_window_layers = 4: the first 4 layers full, the rest sliding",
    )
    whole = {**mistral, "use_sliding_window": True, "max_window_layers": 6}
    assert "sliding_window" not in convert(whole, "w")[0]  # no layer slides
    assert attention_pattern({"sliding_window_pattern": 6})[0] == ["sliding"] * 5 + ["full"]
    assert attention_pattern({"model_type": "gemma2"})[0] == ["sliding", "full"]
    assert convert({**mistral, "sliding_window": 128.0}, "f")[0]["sliding_window"] == 128  # a whole float


@pytest.mark.parametrize("window", [":", "128", 12.5, [128], {"w": 1}, float("inf")])
def test_import_refuses_a_window_that_is_not_a_whole_number(window):
    """Found by the long fuzz run (sliding_window ':' ended in an internal int() error)."""
    cfg = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    with pytest.raises(ScenarioError, match=r"sliding_window = .*: expected a whole number of positions"):
        convert({**cfg, "sliding_window": window}, "x")


def test_an_engine_that_keeps_the_window_blocks_counts_every_layer_whole():
    """TensorRT-LLM 1.0 sizes every layer's cache for the whole sequence (no max_attention_window): no sliding KV
    spec, blocks as for full attention; vLLM V1's hybrid manager frees them; a scenario's own value wins."""
    for engine, kept in (("trtllm-1.0", "kept"), ("vllm-v1", "freed")):
        data = sliding_seed(seed_serving(), 256)
        data["serving"]["engine"] = engine
        scenario = parse_scenario(data, "seed-swa")
        assert scenario.serving.scheduler.kv_cache.sliding_window_kv == kept
        resolved = resolve_serving(scenario, resolve_hardware(scenario))
        assert (resolved.scheduler.kv_cache.sliding is None) == (kept == "kept")
    data = sliding_seed(seed_serving(), 256)
    data["serving"]["engine"] = "trtllm-1.0"
    data["serving"]["scheduler"]["kv_cache"]["sliding_window_kv"] = "freed"
    scenario = parse_scenario(data, "seed-swa")
    assert sliding_kv(scenario) == SlidingKVSpec(window_tokens=256, full_layers=8, sliding_layers=8)
    data["serving"]["scheduler"]["kv_cache"]["sliding_window_kv"] = "gone"
    with pytest.raises(Exception, match="sliding_window_kv"):
        parse_scenario(data, "seed-swa")


def test_the_scheduler_line_names_the_sliding_layers_blocks():
    from simulator.report.serving_summary import scheduler_line

    scenario = parse_scenario(sliding_seed(seed_serving(), 256), "seed-swa")
    spec = resolve_serving(scenario, resolve_hardware(scenario))
    summary = {"serving": spec.model_dump(mode="json"), "figures": {"kv_capacity_blocks": 1000.0}}
    line = scheduler_line(summary)
    assert "; 8 sliding-window layers keep their last 256 positions' blocks, 8 full layers all;" in line
    plain = parse_scenario(seed_serving(), "seed")
    summary["serving"] = resolve_serving(plain, resolve_hardware(plain)).model_dump(mode="json")
    assert "sliding" not in scheduler_line(summary)


@given(st.integers(1, 40), st.integers(1, 300), st.integers(1, 300), st.integers(1, 64))
def test_windowed_kv_len_grows_with_the_window_and_the_context(q_len, cached, window, more):
    kv_len = cached + q_len
    eq = costs.windowed_kv_len(q_len, kv_len, window)
    assert eq <= costs.windowed_kv_len(q_len, kv_len, window + more) + 1e-9
    assert eq <= costs.windowed_kv_len(q_len, kv_len + more, window) + 1e-9


@given(
    st.integers(0, 6),
    st.integers(1, 6),
    st.integers(1, 300),
    st.sampled_from([1, 16, 32]),
    st.integers(1, 2000),
)
def test_tokens_held_is_the_last_position_the_held_blocks_cover(full, sliding, window, block, kv_tokens):
    """After growing a sequence to kv_tokens, its units cover tokens_held positions (>= kv_tokens) and one more
    position needs a unit, unless every layer slides and holds its window (then never)."""
    spec = SlidingKVSpec(window_tokens=window, full_layers=full, sliding_layers=sliding)
    kv = PagedKVCache(10**6, block, spec)
    assert kv.grow(0, kv_tokens)
    held, covered = kv.held(0), kv.tokens_held(0)
    assert held == kv_layer_blocks(kv_tokens, block, spec) == kv.used_units
    assert covered >= kv_tokens
    if covered == float("inf"):
        assert full == 0 and kv_layer_blocks(10**7, block, spec) == held
    else:
        assert kv_layer_blocks(int(covered), block, spec) == held < kv_layer_blocks(int(covered) + 1, block, spec)


def test_launch_files_say_what_the_engines_do_with_the_window_blocks():
    from simulator.config import load_scenario
    from simulator.report.launch import launch_files

    path = ROOT / "scenarios" / "gpt_oss_20b_1xh200_vllm.yaml"
    freed = launch_files(load_scenario(path))  # vLLM V1's default: freed
    assert "--disable-hybrid-kv-cache-manager" not in freed["vllm.sh"]
    assert "--disable-hybrid-swa-memory" not in freed["sglang.sh"]
    assert "# Sliding-window KV: SGLang keeps the sliding layers in a pool of their own" in freed["sglang.sh"]
    assert "TensorRT-LLM 1.0 sizes every layer's cache for the whole sequence" in freed["trtllm.sh"]
    data = load_scenario(path).model_dump(mode="json", exclude_none=True)
    data["serving"]["scheduler"]["kv_cache"]["sliding_window_kv"] = "kept"
    kept = launch_files(parse_scenario(data, "kept"))
    assert "  --disable-hybrid-kv-cache-manager" in kept["vllm.sh"]
    assert "  --disable-hybrid-swa-memory" in kept["sglang.sh"]
    assert "Sliding-window KV" not in kept["trtllm.sh"] + kept["sglang.sh"]
    plain = launch_files(load_scenario(ROOT / "scenarios" / "qwen3_30b_a3b_fp8_1xh100_vllm.yaml"))
    assert "hybrid" not in plain["vllm.sh"] + plain["sglang.sh"] and "Sliding" not in plain["trtllm.sh"]


def test_a_disaggregated_fabric_sends_the_sliding_layers_window_only():
    """The transfer fabric's routes carry the full layers' bytes a prompt token and the sliding layers' up to the
    window: a 10,240-token prompt of the seed with a 1,024 window on every second layer moves (10,240 + 1,024) /
    (2 x 10,240) of what it moves without."""
    from simulator.config import load_scenario
    from simulator.serving.disagg import disaggregated_inputs
    from simulator.serving.link_network import TransferRoute

    route = TransferRoute(100.0, (0, 1), 40.0, 128)
    assert (route.num_bytes(1000), route.num_bytes(50)) == (100.0 * 1000 + 40.0 * 128, 140.0 * 50)
    path = ROOT / "scenarios" / "seed_moe_4gpu_disagg.yaml"
    plain = load_scenario(path)
    data = sliding_seed(plain.model_dump(mode="json", exclude_none=True), 1024)
    swa = parse_scenario(data, "seed-disagg-swa")

    def moved(scenario, tokens):
        fabric = disaggregated_inputs(scenario).fabric
        return sum(r.num_bytes(tokens) for r in fabric.routes[(0, 0)])

    assert moved(swa, 10240) == pytest.approx(moved(plain, 10240) * (10240 + 1024) / (2 * 10240), rel=1e-12)
    assert moved(swa, 1000) == moved(plain, 1000)  # inside the window: every position
