"""Metric definitions on hand-built traces, memory by hand, invariants and determinism of real runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_MOE, make_scenario, seed_dict
from hypothesis import given
from hypothesis import strategies as st

from simulator.config import resolve_hardware
from simulator.memory import kv_cache_bytes_per_gpu, parameter_counts, weight_bytes_per_gpu
from simulator.metrics import compute_metrics
from simulator.pipeline import run_scenario
from simulator.report.summary import summary_dict
from simulator.simulate import SimResult


def _token_rows(times: dict[tuple[str, int, int], float]) -> pd.DataFrame:
    rows = [
        {
            "node": f"{ph}{st}.mb{mb}.token",
            "op": "token",
            "kind": "marker",
            "category": "marker",
            "phase": ph,
            "step": st,
            "microbatch": mb,
            "layer": -1,
            "stage": 1,
            "gpu": None,
            "flops": 0.0,
            "bytes_read": 0.0,
            "bytes_written": 0.0,
            "stream": "none",
            "start_s": t,
            "end_s": t,
            "duration_s": 0.0,
            "bound": "none",
        }
        for (ph, st, mb), t in times.items()
    ]
    return pd.DataFrame(rows)


def test_metric_definitions_on_hand_built_trace():
    s = make_scenario(TINY_MOE, parallel={"microbatches": 2})
    ops = _token_rows(
        {
            ("prefill", 0, 0): 1.0,
            ("prefill", 0, 1): 2.0,
            ("decode", 1, 0): 1.5,
            ("decode", 1, 1): 2.5,
            ("decode", 2, 0): 2.0,
            ("decode", 2, 1): 3.0,
        }
    )
    m = compute_metrics(SimResult.from_frame(ops, makespan_s=3.0), s, resolve_hardware(s))
    # 4 sequences: two first tokens at 1.0 s, two at 2.0 s
    assert (m.ttft_s.mean, m.ttft_s.p50, m.ttft_s.max) == (1.5, 1.5, 2.0)
    assert m.ttft_s.p99 == pytest.approx(np.percentile([1, 1, 2, 2], 99))
    assert m.tpot_s == pytest.approx(0.5)  # (2.0 - 1.0) / 2 and (3.0 - 2.0) / 2
    assert (m.prefill_s, m.decode_s, m.total_s) == (2.0, 1.0, 3.0)
    assert m.throughput["output_tokens_per_ms_per_gpu"] == pytest.approx(4 * 3 / 3000 / 4)
    assert m.throughput["prefill_tokens_per_ms_per_gpu"] == pytest.approx(4 * 16 / 2000 / 4)
    assert m.throughput["total_tokens_per_ms_per_gpu"] == pytest.approx(4 * 19 / 3000 / 4)
    verdicts = {t.metric: t.met for t in m.targets}
    assert verdicts == {"ttft_s": False, "output_tokens_per_ms_per_gpu": False}


def test_seed_memory_by_hand(seed):
    # GPU 0: layers 0-7, experts 0-7, 8 of 16 heads
    per_layer = 4 * 512 * 256 + 8 * (2 * 512 * 1024) + 512 * 16 + 2 * 512
    assert weight_bytes_per_gpu(seed, 0) == 8 * per_layer * 2
    # K and V, 128 sequences x (10240 + 128 - 1) positions x 8 layers x 8 local heads x 32 x 2 bytes
    assert kv_cache_bytes_per_gpu(seed, 0) == 2 * 128 * 10367 * 8 * 8 * 32 * 2
    counts = parameter_counts(seed)
    assert counts["total"] == 16 * (4 * 512 * 512 + 16 * 2 * 512 * 1024 + 512 * 16 + 2 * 512)
    assert counts["active"] == 16 * (4 * 512 * 512 + 2 * 2 * 512 * 1024 + 512 * 16 + 2 * 512)


def test_more_output_tokens_never_lower_kv_peak(seed):
    longer = make_scenario(seed_dict(), workload={"output_len_tokens": 256})
    assert kv_cache_bytes_per_gpu(longer, 0) > kv_cache_bytes_per_gpu(seed, 0)


def _critical_path_s(ops: pd.DataFrame, graph) -> float:
    dur = dict(zip(ops["node"], ops["duration_s"]))
    finish: dict[str, float] = {}
    import networkx as nx

    for n in nx.topological_sort(graph):
        finish[n] = dur[n] + max((finish[p] for p in graph.predecessors(n)), default=0.0)
    return max(finish.values())


@pytest.mark.parametrize("overrides", [{}, {"parallel": {"microbatches": 2}}, {"runtime": {"mode": "eager"}}])
def test_engine_invariants_on_real_runs(overrides):
    s = make_scenario(TINY_MOE, **overrides)
    run = run_scenario(s)
    ops = run.sim.ops
    critical = _critical_path_s(ops, run.graph)
    assert run.sim.makespan_s >= critical - 1e-12
    assert critical >= ops["duration_s"].max()
    # list scheduling never idles: at most every GPU task's and every host launch task's time
    assert run.sim.makespan_s <= ops["duration_s"].sum() + run.sim.host_busy_s
    assert all(c.ok for c in run.checks)


def test_seed_invariants_and_verdicts():
    s = make_scenario(seed_dict(), workload={"output_len_tokens": 4})
    run = run_scenario(s)
    ops = run.sim.ops
    assert run.sim.makespan_s >= _critical_path_s(ops, run.graph) - 1e-12
    # list scheduling never idles: at most every GPU task's and every host launch task's time
    assert run.sim.makespan_s <= ops["duration_s"].sum() + run.sim.host_busy_s
    # every node starts after its predecessors end
    start, end = dict(zip(ops["node"], ops["start_s"])), dict(zip(ops["node"], ops["end_s"]))
    assert all(start[v] >= end[u] - 1e-15 for u, v in run.graph.edges)
    assert run.metrics.ttft_s.max == pytest.approx(run.metrics.prefill_s)


def test_summary_is_deterministic(tiny_moe):
    a = json.dumps(summary_dict(run_scenario(tiny_moe)), sort_keys=True)
    b = json.dumps(summary_dict(run_scenario(tiny_moe)), sort_keys=True)
    assert a == b


def test_faster_hardware_is_never_slower(tiny_moe):
    base = run_scenario(tiny_moe).metrics.total_s
    fast = make_scenario(
        TINY_MOE,
        hardware={
            "profile": "h100-sxm-80gb",
            "hbm_bytes_per_s": 6.7e12,
            "intra_node": {"bytes_per_s": 900e9, "latency_s": 3e-6, "efficiency": 0.82},
        },
    )
    assert run_scenario(fast).metrics.total_s <= base


def test_decode_step_weights_cover_every_step_once():
    from simulator.graph import sampled_decode_steps
    from simulator.metrics import decode_step_weights

    steps = sampled_decode_steps(127, 8, warmup_steps=3)
    assert steps[:3] == [1, 2, 3] and steps[-1] == 127
    weights = decode_step_weights(tuple(steps), 127, warmup_steps=3)
    assert sum(weights.values()) == pytest.approx(127)
    assert weights[1] == weights[2] == weights[3] == 1.0
    assert decode_step_weights((1, 2, 3), 3) == {1: 1.0, 2: 1.0, 3: 1.0}


@pytest.mark.parametrize("parallel", [{}, {"microbatches": 2}, {"pp": 4, "tp": 1, "ep": 1, "microbatches": 4}])
def test_sampled_decode_matches_full_simulation(parallel):
    s = make_scenario(TINY_MOE, parallel=parallel, workload={"output_len_tokens": 40})
    full = run_scenario(s, verify=False).metrics
    sampled = run_scenario(s, verify=False, decode_sample=6).metrics
    assert sampled.ttft_s == full.ttft_s  # prefill is always simulated whole
    assert sampled.total_s == pytest.approx(full.total_s, rel=0.01)
    assert sampled.tpot_s == pytest.approx(full.tpot_s, rel=0.01)


def test_zipf_routing_straggler_is_slower_than_uniform():
    from conftest import seed_dict

    from simulator.pipeline import run_scenario

    runs = {}
    for name, routing in (("uniform", "uniform"), ("zipf", {"zipf": 1.2})):
        s = make_scenario(seed_dict(), workload={"output_len_tokens": 3, "routing": routing})
        runs[name] = run_scenario(s, verify=False).metrics
    assert runs["zipf"].ttft_s.max > runs["uniform"].ttft_s.max * 1.05
    assert runs["zipf"].routing["max_over_mean_tokens_per_ep_rank"] > 1.5
    assert runs["zipf"].routing["straggler_s"] > 0.0 == runs["uniform"].routing["straggler_s"]
    assert "routing" in runs["zipf"].to_dict()


def test_parameter_counts_deepseek_style_by_hand():
    from conftest import DEEPSEEK_TINY

    s = make_scenario(TINY_MOE, model=DEEPSEEK_TINY)
    c = parameter_counts(s)
    h = 64
    # MLA: q_a [64, 40] + q_b [40, 4 x 24] + kv_a [64, 32] + kv_b [24, 4 x 28] + o [48, 64] + latent norms 24 + 40
    attn = 64 * 40 + 40 * 96 + 64 * 32 + 24 * 112 + 48 * 64 + 24 + 40
    assert c["attention"] == 4 * attn
    expert, shared, dense = 3 * h * 128, 3 * h * 64, 3 * h * 96
    assert c["ffn_or_experts"] == 3 * (4 * expert + shared) + dense
    assert c["router"] == 3 * h * 4
    common = 4 * (attn + 2 * h) + 3 * h * 4 + 2 * 100 * h + h
    assert c["total"] == common + 3 * (4 * expert + shared) + dense
    assert c["active"] == common + 3 * (2 * expert + shared) + dense


def test_mla_kv_cache_and_fp8_memory_by_hand():
    from conftest import DEEPSEEK_TINY

    s = make_scenario(TINY_MOE, model=DEEPSEEK_TINY)
    # 4 sequences x (16 + 3 - 1) positions x 2 layers per stage x (24 + 8) latent x 2 bytes, on every TP rank
    assert kv_cache_bytes_per_gpu(s, 0) == kv_cache_bytes_per_gpu(s, 1) == 4 * 18 * 2 * 32 * 2
    fp8 = make_scenario(
        TINY_MOE, model={**DEEPSEEK_TINY, "dtype": "bf16", "weight_dtype": "fp8", "kv_cache_dtype": "fp8"}
    )
    assert kv_cache_bytes_per_gpu(fp8, 0) * 2 == kv_cache_bytes_per_gpu(s, 0)
    assert weight_bytes_per_gpu(fp8, 0) * 2 == weight_bytes_per_gpu(s, 0)
    # GPU 0: stage 0 = layer 0 (dense, FFN split over tp 2) and layer 1 (MoE: experts 0-1, shared, router)
    h = 64
    attn = 64 * 40 + 40 * 48 + 64 * 32 + 24 * 56 + 24 * 64 + 24 + 40  # two of four heads
    dense = 3 * h * 48
    moe = 2 * 3 * h * 128 + 3 * h * 64 + h * 4
    assert weight_bytes_per_gpu(s, 0) == (2 * (attn + 2 * h) + dense + moe + 100 * h / 2) * 2


def test_exact_sums_do_not_depend_on_order_or_grouping():
    from simulator.metrics import ExactSums

    terms = [0.1, 1e16, 0.3, -1e16, 0.2, 1e-9]
    a, b = ExactSums(), ExactSums()
    for t in terms:
        a.add("k", t)
    for t in reversed(terms):
        b.add("k", t)
    assert a.total("k") == b.total("k") == pytest.approx(0.6 + 1e-9, rel=1e-15)
    grouped = ExactSums()
    grouped.add("k", 0.1, count=10)  # an original standing for itself and nine copies
    assert grouped.total("k") == 1.0 != sum([0.1] * 10)  # correctly rounded; a running sum drifts
    assert grouped.total("other") == 0.0 and grouped.totals() == {"k": 1.0}


@given(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), st.integers(min_value=1, max_value=10**6))
def test_repeated_sums_exactly_to_count_copies(value, count):
    from simulator.metrics import repeated

    assert math.fsum(repeated(value, count)) == math.fsum([value] * count)
