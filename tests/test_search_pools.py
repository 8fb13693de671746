"""The disaggregated search's optional pool shapes (sweep.candidates POOL_OPTIONS, `--disagg-pools`): pool
instances with pipeline parallelism and the separate_nodes placement, enumerated by hand on a toy cluster of 2
nodes x 2 GPUs, validated by the config stage's rules, screened (not failed) when a pool cannot hold the model,
simulated end to end, and a separate_nodes split's idle GPUs counted in its figures per GPU."""

from __future__ import annotations

import pytest

from simulator.cli import main
from simulator.config import load_scenario
from simulator.sweep.candidates import (
    CandidateScenarios,
    SearchSpace,
    enumerate_candidates,
    instance_layouts,
    packs,
    paid_gpu_share,
    separate_node_splits,
)
from simulator.sweep.search import SearchResult, SearchSettings, run_search
from tests.test_launch import ROOT

SEED = ROOT / "scenarios/seed_moe_4gpu_serving.yaml"
MIXTRAL = ROOT / "scenarios/mixtral_8x7b_8xh100_serving.yaml"
#: The seed (16 layers, 16 experts) on 2 nodes of 2 GPUs.
TOY = ["cluster.gpus_per_node=2"]


def _disagg(options: tuple[str, ...], overrides: list[str] = TOY, path=SEED, n: int = 4) -> list[str]:
    s = load_scenario(path, overrides)
    space = SearchSpace(
        gpu_counts=(n,),
        hardware=(s.hardware.profile,),
        weight_dtypes=(s.model.dtype,),
        kv_cache_dtypes=(s.model.dtype,),
        kinds=("disaggregated",),
        pool_options=options,
    )
    found = enumerate_candidates(s, space)
    assert len({c.key() for c in found.candidates}) == len(found.candidates)
    return [c.layout_label for c in found.candidates]


#: The 11 packed splits of 4 GPUs without options (as tests/test_search_disagg.py lists them).
TP2 = ("TP2 EP2", "TP2 ETP2")
PACKED = (
    {f"{x}P (1 GPU) + {4 - x}D (1 GPU)" for x in (1, 2, 3)}
    | {f"2P (1 GPU) + 1D ({d})" for d in TP2}
    | {f"1P ({p}) + 2D (1 GPU)" for p in TP2}
    | {f"1P ({p}) + 1D ({d})" for p in TP2 for d in TP2}
)


def test_without_options_the_space_is_unchanged():
    labels = _disagg(())
    assert len(labels) == 11 and set(labels) == PACKED


def test_pp_adds_the_pipeline_instances_enumerated_by_hand():
    """A third 2-GPU instance layout, PP2 (tp 1: 8 layers per stage): 2P (1 GPU) + 1D (PP2), 1P (PP2) + 2D
    (1 GPU), and 1P1D with PP2 on either side or both: 1 + 1 + 2 + 2 + 1 = 7 more."""
    labels = _disagg(("pp",))
    assert len(labels) == 18
    assert set(labels) - PACKED == {
        "2P (1 GPU) + 1D (PP2)",
        "1P (PP2) + 2D (1 GPU)",
        "1P (PP2) + 1D (TP2 EP2)",
        "1P (PP2) + 1D (TP2 ETP2)",
        "1P (TP2 EP2) + 1D (PP2)",
        "1P (TP2 ETP2) + 1D (PP2)",
        "1P (PP2) + 1D (PP2)",
    }


def test_separate_nodes_adds_the_splits_that_leave_the_prefill_node_part_idle():
    """Prefill pools that end inside a node: 1 GPU (x = 1; x = 3 leaves no room). The decode pool starts on
    GPU 2 and fills the second node: 2D (1 GPU), or 1D TP2 EP2 / ETP2 (and PP2 with the pp option)."""
    labels = _disagg(("separate_nodes",))
    added = {
        "1P (1 GPU) + 2D (1 GPU), separate nodes",
        "1P (1 GPU) + 1D (TP2 EP2), separate nodes",
        "1P (1 GPU) + 1D (TP2 ETP2), separate nodes",
    }
    assert len(labels) == 14 and set(labels) == PACKED | added
    both = _disagg(("pp", "separate_nodes"))
    assert len(both) == 22 and "1P (1 GPU) + 1D (PP2), separate nodes" in both


def test_separate_nodes_needs_more_than_one_node():
    assert len(_disagg(("separate_nodes",), overrides=[])) == 11  # the seed's one node of 4 GPUs


def test_the_separate_node_placement_rules():
    """Nodes of 4, N = 8: 3 prefill GPUs round up to the first node, the decode pool fills the second; a TP4
    decode instance after 2 prefill GPUs packs across the boundary but fits on its own node."""
    assert ((3, 1, 1, 1), (4, 1, 1, 1)) in separate_node_splits(8, [(1, 1, 1)], 4)
    assert ((4, 1, 1, 1), (4, 1, 1, 1)) not in separate_node_splits(8, [(1, 1, 1)], 4)  # that one is packed
    assert not packs((2, 1, 1, 1), (1, 4, 4, 1), 4)
    assert packs((2, 1, 1, 1), (1, 4, 4, 1), 4, "separate_nodes")
    assert not packs((1, 1, 1, 1, 1), (1, 1, 1, 1, 2), 2)  # a PP2 instance on GPUs 1..2 straddles


def test_pipeline_instances_follow_the_config_rules():
    """On 4 GPUs the seed's instances have 1 or 2 GPUs: 1 GPU, TP2 EP2, TP2 ETP2, PP2. On 8 GPUs a 2-layer model
    gets tp x pp = 4 as TP4 (EP or ETP), TP2 PP2 (EP or ETP), but no PP4: config.scenario.check_layout refuses
    pp above num_layers, so pool_layout rejects it and it is not enumerated."""
    s = load_scenario(SEED)
    assert instance_layouts(s, 4, pipeline=True) == [(1, 1, 1, 1), (2, 2, 1, 1), (2, 1, 2, 1), (1, 1, 1, 2)]
    two = load_scenario(SEED, ["model.num_layers=2", "parallel.pp=1", "parallel.dp=2"])
    assert instance_layouts(two, 8, pipeline=True)[4:] == [(4, 4, 1, 1), (4, 1, 4, 1), (2, 2, 1, 2), (2, 1, 2, 2)]


def test_the_candidate_scenario_carries_the_pools_and_placement():
    s = load_scenario(SEED, TOY)
    space = SearchSpace(
        gpu_counts=(4,),
        hardware=(s.hardware.profile,),
        weight_dtypes=("fp16",),
        kv_cache_dtypes=("fp16",),
        kinds=("disaggregated",),
        pool_options=("pp", "separate_nodes"),
    )
    found = {c.layout_label: c for c in enumerate_candidates(s, space).candidates}
    c = found["1P (1 GPU) + 1D (PP2), separate nodes"]
    d = CandidateScenarios(s).scenario(c).serving.disaggregation
    assert d.placement == "separate_nodes" and d.decode.parallel.pp == 2 and d.prefill.parallel.gpus == 1
    assert paid_gpu_share(c) == 0.75  # GPU 1 idle
    assert paid_gpu_share(found["1P (PP2) + 1D (PP2)"]) == 1.0


def _stub(index, candidate, scenario, settings):  # module level: picklable
    return SearchResult(index, candidate, "ok", meets=True, output_tokens_per_s_per_gpu=1.0, tpot_s=0.01)


def test_a_pipeline_pool_that_cannot_hold_the_model_is_screened_not_failed():
    """Mixtral-8x7B (93.4 GB of bf16 weights) on 4 H100s with the pp option: PP2 (tp 1) instances hold 46.7 GB
    per GPU and are evaluated; every split with a 1-GPU pool is screened by the serving stage's own check."""
    s = load_scenario(MIXTRAL, ["parallel.dp=1", "cluster.num_gpus=4"])
    space = SearchSpace(
        gpu_counts=(4,),
        hardware=(s.hardware.profile,),
        weight_dtypes=("bf16",),
        kv_cache_dtypes=("bf16",),
        kinds=("disaggregated",),
        pool_options=("pp",),
    )
    found = enumerate_candidates(s, space)
    settings = SearchSettings(objective="max_rate", serving=True, base_dir=str(MIXTRAL.parent))
    results = run_search(s, found.candidates, settings, evaluate=_stub)
    assert not any(r.status == "failed" for r in results)
    screened = [r for r in results if r.status == "pruned"]
    assert screened and all(r.rule == "memory" and "1 GPU" in r.candidate.layout_label for r in screened)
    ok = {r.candidate.layout_label for r in results if r.status == "ok"}
    assert {"1P (PP2) + 1D (PP2)", "1P (PP2) + 1D (TP2 EP2)", "1P (TP2 ETP2) + 1D (PP2)"} <= ok


def test_pipeline_and_separate_node_candidates_simulate_and_count_idle_gpus():
    """The seed on the toy cluster at a fixed rate, 40 requests: a PP2 decode pool on its own node after a 1-GPU
    prefill pool is simulated end to end; its output tokens per GPU are the serving figure over its 3 pool GPUs
    times 3/4 (GPU 1 is idle and paid)."""
    from simulator.serving.disagg import disaggregated_inputs
    from simulator.serving.maxrate import evaluate

    s = load_scenario(SEED, [*TOY, "serving.workload.num_requests=40", "serving.workload.warmup_requests=4"])
    space = SearchSpace(
        gpu_counts=(4,),
        hardware=(s.hardware.profile,),
        weight_dtypes=("fp16",),
        kv_cache_dtypes=("fp16",),
        kinds=("disaggregated",),
        pool_options=("pp", "separate_nodes"),
    )
    found = {c.layout_label: c for c in enumerate_candidates(s, space).candidates}
    keep = [found["1P (1 GPU) + 1D (PP2), separate nodes"], found["1P (PP2) + 1D (PP2)"]]
    settings = SearchSettings(objective="fewest_gpus", serving=True, rate_per_s=5.0, base_dir=str(SEED.parent))
    results = run_search(s, keep, settings, prune=False)
    assert all(r.status == "ok" for r in results), [(r.candidate.label, r.reason) for r in results]
    separate = next(r for r in results if r.candidate.placement == "separate_nodes")
    scenario = CandidateScenarios(s).scenario(separate.candidate)
    row, _ = evaluate(scenario.serving, None, 5.0, str(SEED.parent), disaggregated_inputs(scenario).simulate)
    assert separate.output_tokens_per_s_per_gpu == pytest.approx(0.75 * row["output_tokens_per_s_per_gpu"], rel=1e-12)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--kinds", "aggregated,disaggregated", "--disagg-pools", "pp,stacked"],
            "--disagg-pools pp,stacked: expected",
        ),
        (["--disagg-pools", "pp"], "--disagg-pools pp: widens disaggregated candidates; add --kinds"),
    ],
)
def test_bad_pool_options_are_answered_in_one_line(tmp_path, capsys, extra, message):
    code = main(["compare", str(SEED), "--gpus", "4", *extra, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
