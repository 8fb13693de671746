"""Invariants over random valid small scenarios (hypothesis): the DAG's shape and FLOPs, the engine's
bounds, monotonicity in hardware speed and workload length, and determinism.

Scenarios: 1-4 layers, hidden 32-128 with heads dividing it, 0/2/4 experts, every tp x pp x dp
(x ep x etp) layout valid for 1-8 GPUs, batch 1-8, input 1-64, output 1-6 tokens. Example counts
are bounded (and derandomized) so the module runs in well under a minute on two cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import networkx as nx
import pytest
from conftest import ROOT, make_scenario
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_graph import _closed_form_matmul_flops

from simulator.config import Scenario
from simulator.graph import build_dag
from simulator.pipeline import run_scenario
from simulator.report.summary import summary_dict


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def small_scenarios(draw) -> dict:
    """A valid scenario mapping, valid by construction (no filtering)."""
    num_gpus = draw(st.sampled_from([1, 2, 4, 8]))
    tp = draw(st.sampled_from(_divisors(num_gpus)))
    pp = draw(st.sampled_from([d for d in _divisors(num_gpus // tp) if d <= 4]))
    dp = num_gpus // (tp * pp)
    num_layers = draw(st.integers(pp, 4))
    hidden = draw(st.sampled_from([32, 64, 128]))
    heads = draw(st.sampled_from([h for h in _divisors(hidden) if h % tp == 0 and hidden // h >= 4 and h <= 16]))
    kv_heads = draw(st.sampled_from([k for k in _divisors(heads) if k <= tp or k % tp == 0]))
    experts = draw(st.sampled_from([0, 2, 4]))
    ffn = draw(st.sampled_from([64, 128]))
    model = {
        "name": "prop",
        "num_layers": num_layers,
        "hidden_size": hidden,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "activation": draw(st.sampled_from(["gelu", "swiglu"])),
        "dtype": draw(st.sampled_from(["fp16", "bf16"])),
    }
    if draw(st.booleans()):  # multi-head latent attention (DeepSeek style): one latent shared by all heads
        model.pop("num_kv_heads")
        model.update(
            kv_lora_rank=draw(st.sampled_from([8, 24])),
            q_lora_rank=draw(st.sampled_from([None, 16])),
            qk_rope_head_dim=draw(st.sampled_from([4, 8])),
            v_head_dim=draw(st.sampled_from([8, 12])),
        )
    ep = etp = 1
    if experts:
        model.update(num_experts=experts, top_k=draw(st.integers(1, experts)), expert_ffn_size=ffn)
        layouts = [(e, t) for e in _divisors(experts) for t in (1, 2) if (dp * tp) % (e * t) == 0]
        ep, etp = draw(st.sampled_from(layouts))
    else:
        model["ffn_size"] = ffn
    microbatches = draw(st.sampled_from([m for m in (1, 2) if dp * m <= 8]))
    batch = dp * microbatches * draw(st.integers(1, 8 // (dp * microbatches)))
    gpus_per_node = draw(st.sampled_from([n for n in (2, 8) if n >= num_gpus or num_gpus % n == 0]))
    return {
        "name": "prop",
        "model": model,
        "hardware": "h100-sxm-80gb",
        "cluster": {"num_gpus": num_gpus, "gpus_per_node": gpus_per_node},
        "parallel": {"tp": tp, "pp": pp, "dp": dp, "ep": ep, "etp": etp, "microbatches": microbatches},
        "workload": {
            "batch_size": batch,
            "input_len_tokens": draw(st.integers(1, 64)),
            "output_len_tokens": draw(st.integers(1, 6)),
        },
        "runtime": {
            "mode": draw(st.sampled_from(["eager", "cuda_graph"])),
            "moe_dispatch": draw(st.sampled_from(["all_to_all", "allreduce"])),
            "allreduce": draw(st.sampled_from(["nccl", "custom"])),
            "mla_prefill": draw(st.sampled_from(["decompressed", "absorbed"])),
            "ep_dispatch": draw(st.sampled_from(["all_to_all", "allgather"])),
        },
    }


def _scenario(data: dict, **sections) -> Scenario:
    return make_scenario(data, **sections)


@_settings(40)
@given(small_scenarios())
def test_dag_is_acyclic_connected_and_conserves_flops(data):
    s = _scenario(data)
    g = build_dag(s)
    assert nx.is_directed_acyclic_graph(g)
    assert nx.is_weakly_connected(g)
    dag_flops = sum(a["flops"] for _, a in g.nodes(data=True) if a.get("tensor_core"))
    assert dag_flops == pytest.approx(_closed_form_matmul_flops(s), rel=1e-9)


def _critical_path_s(run) -> float:
    duration = dict(zip(run.sim.ops["node"], run.sim.ops["duration_s"]))
    finish: dict[str, float] = {}
    for n in nx.topological_sort(run.graph):
        finish[n] = duration[n] + max((finish[p] for p in run.graph.predecessors(n)), default=0.0)
    return max(finish.values())


@_settings(20)
@given(small_scenarios())
def test_makespan_between_critical_path_and_sum_of_durations(data):
    run = run_scenario(_scenario(data), verify=False)
    durations = run.sim.ops["duration_s"]
    critical = _critical_path_s(run)
    eps = 1e-12 * max(run.sim.makespan_s, 1e-9)
    assert run.sim.makespan_s >= critical - eps
    assert critical >= durations.max() - eps
    assert run.sim.makespan_s <= durations.sum() + run.sim.host_busy_s + eps  # GPU and host launch tasks


def _faster(data: dict, factor: float, what: str) -> dict:
    """The scenario on a profile with `factor` x the FLOP/s or bandwidths (hardware overrides)."""
    from simulator.config.hardware import load_profile

    base = load_profile("h100-sxm-80gb")
    hw: dict = {"profile": "h100-sxm-80gb"}
    if what == "flops":
        hw["peak_flops_per_s"] = {k: v * factor for k, v in base.peak_flops_per_s.model_dump(exclude_none=True).items()}
        hw["vector_flops_per_s"] = base.vector_flops_per_s * factor
    if what in ("hbm", "bandwidth"):
        hw["hbm_bytes_per_s"] = base.hbm_bytes_per_s * factor
    if what in ("links", "bandwidth"):
        hw["intra_node"] = {**base.intra_node.model_dump(), "bytes_per_s": base.intra_node.bytes_per_s * factor}
        hw["inter_node"] = {**base.inter_node.model_dump(), "bytes_per_s": base.inter_node.bytes_per_s * factor}
    return {**data, "hardware": hw}


#: Found by this test: faster FLOPs end the prefill sooner, so microbatch 1's token crosses GPUs 0-1's ports just
#: before microbatch 0's TP all-reduce, which then waits for it (a list-scheduling anomaly, Graham 1969: greedy
#: schedules are not monotone in task times). The whole run is 0.8 % slower; TTFT and the prefill are faster.
ANOMALY = {
    "name": "prop",
    "model": {
        "name": "prop",
        "num_layers": 2,
        "hidden_size": 32,
        "num_heads": 2,
        "num_kv_heads": 1,
        "activation": "gelu",
        "dtype": "fp16",
        "ffn_size": 64,
    },
    "hardware": "h100-sxm-80gb",
    "cluster": {"num_gpus": 4, "gpus_per_node": 2},
    "parallel": {"tp": 2, "pp": 2, "dp": 1, "ep": 1, "etp": 1, "microbatches": 2},
    "workload": {"batch_size": 2, "input_len_tokens": 2, "output_len_tokens": 2},
    "runtime": {"mode": "cuda_graph", "allreduce": "nccl"},
}


@_settings(20)
@given(small_scenarios(), st.sampled_from(["flops", "hbm", "links", "bandwidth"]), st.sampled_from([1.5, 2.0, 10.0]))
@example(ANOMALY, "flops", 1.5)
def test_faster_hardware_is_never_slower(data, what, factor):
    """TTFT and the prefill never get slower on faster hardware; the whole run may, by a list-scheduling anomaly
    (ANOMALY), but by no more than 2 %."""
    base = run_scenario(_scenario(data), verify=False).metrics
    fast = run_scenario(_scenario(_faster(data, factor, what)), verify=False).metrics
    tol = 1e-9
    assert fast.total_s <= base.total_s * 1.02
    assert fast.ttft_s.max <= base.ttft_s.max * (1 + tol)
    assert fast.prefill_s <= base.prefill_s * (1 + tol)


@_settings(15)
@given(small_scenarios())
def test_more_output_tokens_never_shorten_the_run_nor_lower_kv_peak(data):
    n = data["workload"]["output_len_tokens"]
    short = run_scenario(_scenario(data), verify=False).metrics
    long = run_scenario(_scenario(data, workload={"output_len_tokens": n + 1}), verify=False).metrics
    assert long.total_s >= short.total_s
    assert long.prefill_s == pytest.approx(short.prefill_s, rel=1e-12)
    for a, b in zip(short.memory, long.memory):
        assert b.kv_cache_bytes >= a.kv_cache_bytes


def _summary_json(run) -> str:
    return json.dumps(summary_dict(run), indent=2, sort_keys=True)


@_settings(8)
@given(small_scenarios())
def test_same_scenario_same_summary(data):
    assert _summary_json(run_scenario(_scenario(data))) == _summary_json(run_scenario(_scenario(data)))


def _summary_in_worker(data: dict) -> str:
    return _summary_json(run_scenario(make_scenario(data)))


@_settings(25)
@given(small_scenarios())
def test_folding_symmetric_stages_changes_no_figure(data):
    """Simulating one GPU per stage (sweeps) gives the figures of the whole, whenever it applies."""
    s = _scenario(data)
    full, folded = run_scenario(s, verify=False), run_scenario(s, verify=False, fold=True)
    a, b = full.metrics, folded.metrics
    assert (b.ttft_s, b.tpot_s, b.throughput, b.busy_s) == (a.ttft_s, a.tpot_s, a.throughput, a.busy_s)
    assert [g.total_bytes for g in b.memory] == [g.total_bytes for g in a.memory]


def test_summary_identical_serial_and_in_worker_processes():
    from conftest import TINY_MOE

    layouts = [TINY_MOE, {**TINY_MOE, "parallel": {**TINY_MOE["parallel"], "microbatches": 2}}]
    serial = [_summary_in_worker(d) for d in layouts]
    with ProcessPoolExecutor(max_workers=2) as pool:
        parallel = list(pool.map(_summary_in_worker, layouts))
    assert serial == parallel


def test_cli_run_twice_writes_byte_identical_summary(tmp_path):
    import yaml
    from conftest import TINY_MOE

    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(TINY_MOE))
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        proc = subprocess.run(
            [sys.executable, "-m", "simulator.cli", "run", str(scenario), "--out", str(out), "--no-dag"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    a, b = ((out / "summary.json").read_bytes() for out in outs)
    assert a == b
    assert (outs[0] / "ops.csv.gz").read_bytes() == (outs[1] / "ops.csv.gz").read_bytes()
