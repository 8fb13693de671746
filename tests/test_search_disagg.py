"""The deployment search's aggregated versus disaggregated dimension (sweep.candidates KINDS, sweep.search): the
xPyD splits enumerated by hand, pools that cannot hold the model screened (not failed), both kinds simulated
and ranked by the same objective, and the command's one-line answers."""

from __future__ import annotations

import pytest

from simulator.cli import main
from simulator.config import load_scenario
from simulator.sweep.candidates import SearchSpace, enumerate_candidates, instance_layouts, packs, xpyd_splits
from simulator.sweep.search import SearchResult, SearchSettings, rank_search, run_search
from tests.test_launch import ROOT

SEED = ROOT / "scenarios/seed_moe_4gpu_serving.yaml"
MIXTRAL = ROOT / "scenarios/mixtral_8x7b_8xh100_serving.yaml"


def _space(scenario, n: int, kinds=("aggregated", "disaggregated")) -> SearchSpace:
    own = scenario.model.dtype
    return SearchSpace(
        gpu_counts=(n,),
        hardware=(scenario.hardware.profile,),
        weight_dtypes=(own,),
        kv_cache_dtypes=(own,),
        kinds=kinds,
    )


def test_the_seed_on_4_gpus_has_the_xpyd_splits_enumerated_by_hand():
    """Instance layouts on fewer than 4 GPUs: 1 GPU, TP2 with the 16 experts expert-parallel (EP2) or tensor-
    parallel (ETP2). x g_p + y g_d = 4: (1,1): 1P3D 2P2D 3P1D; (1,2): 2P1D with 2 decode layouts; (2,1):
    1P2D with 2 prefill layouts; (2,2): 1P1D with 2 x 2 layouts. 3 + 2 + 2 + 4 = 11."""
    s = load_scenario(SEED)
    found = enumerate_candidates(s, _space(s, 4))
    disagg = [c.layout_label for c in found.candidates if c.kind == "disaggregated"]
    tp2 = ("TP2 EP2", "TP2 ETP2")
    expected = {f"{x}P (1 GPU) + {4 - x}D (1 GPU)" for x in (1, 2, 3)}
    expected |= {f"2P (1 GPU) + 1D ({d})" for d in tp2}
    expected |= {f"1P ({p}) + 2D (1 GPU)" for p in tp2}
    expected |= {f"1P ({p}) + 1D ({d})" for p in tp2 for d in tp2}
    assert len(disagg) == 11 and set(disagg) == expected
    assert all(c.num_gpus == 4 for c in found.candidates)
    assert {c.kind for c in found.candidates} == {"aggregated", "disaggregated"}
    assert len({c.key() for c in found.candidates}) == len(found.candidates)


def test_splits_that_straddle_a_node_are_not_enumerated():
    """Nodes of 2 GPUs, N = 4: 1 GPU + TP2 puts the TP2 instance on GPUs 1..2, across the node boundary."""
    assert not packs((1, 1, 1, 1), (1, 2, 2, 1), 2)
    assert packs((2, 1, 1, 1), (1, 2, 2, 1), 2)
    splits = xpyd_splits(4, [(1, 1, 1), (2, 2, 1)])
    assert ((1, 1, 1, 1), (3, 1, 1, 1)) in splits and ((1, 2, 2, 1), (2, 1, 1, 1)) in splits
    assert all(p[0] * p[1] + d[0] * d[1] == 4 for p, d in splits)


def test_instance_layouts_follow_the_models_expert_rules():
    """Mixtral (8 experts, expert FFN 14336) on 8 GPUs: 1 GPU, TP2 and TP4, each all-EP or all-ETP; (tp, ep, etp,
    pp), pp 1 unless the search asks for pipeline-parallel instances (tests/test_search_pools.py)."""
    s = load_scenario(MIXTRAL)
    assert instance_layouts(s, 8) == [(1, 1, 1, 1), (2, 2, 1, 1), (2, 1, 2, 1), (4, 4, 1, 1), (4, 1, 4, 1)]


def _stub(index, candidate, scenario, settings):  # module level: picklable
    return SearchResult(index, candidate, "ok", meets=True, output_tokens_per_s_per_gpu=1.0, tpot_s=0.01)


def test_a_pool_that_cannot_hold_the_model_is_screened_not_failed():
    """Mixtral-8x7B in bf16 is ~93 GB of weights: a 1-GPU instance of an 80 GB H100 cannot hold it. On 4 GPUs
    the splits with a 1-GPU pool (1P3D 2P2D 3P1D, 2P1D x 2, 1P2D x 2: 7) are screened by the serving stage's
    own per-pool check; the 4 TP2 + TP2 pairs are evaluated."""
    s = load_scenario(MIXTRAL, ["parallel.dp=1", "cluster.num_gpus=4"])
    found = enumerate_candidates(s, _space(s, 4, ("disaggregated",)))
    settings = SearchSettings(objective="max_rate", serving=True, base_dir=str(MIXTRAL.parent))
    results = run_search(s, found.candidates, settings, evaluate=_stub)
    screened = [r for r in results if r.status == "pruned"]
    assert len(results) == 11 and len(screened) == 7
    for r in screened:
        pool = "prefill" if r.candidate.layout_label.startswith(("1P (1 GPU)", "2P (1 GPU)", "3P")) else "decode"
        assert r.rule == "memory" and "1 GPU" in r.candidate.layout_label
        assert r.reason.startswith(f"serving.disaggregation.{pool}.scheduler.kv_cache: no room for a KV block")
        assert "weights 93.41 GB" in r.reason
    assert not any(r.status == "failed" for r in results)
    ok = [r for r in results if r.status == "ok"]
    assert {r.candidate.layout_label for r in ok} == {
        f"1P ({p}) + 1D ({d})" for p in ("TP2 EP2", "TP2 ETP2") for d in ("TP2 EP2", "TP2 ETP2")
    }


def test_both_kinds_are_simulated_and_ranked_together():
    """The seed on 2 GPUs at a fixed rate (fewest_gpus: one simulation per candidate), 40 requests: the
    aggregated layouts and the one split 1P (1 GPU) + 1D (1 GPU) are all simulated and ranked by one key."""
    s = load_scenario(SEED, ["serving.workload.num_requests=40", "serving.workload.warmup_requests=4"])
    space = SearchSpace(
        gpu_counts=(2,),
        hardware=(s.hardware.profile,),
        weight_dtypes=("fp16",),
        kv_cache_dtypes=("fp16",),
        microbatches=(1,),
        kinds=("aggregated", "disaggregated"),
    )
    found = enumerate_candidates(s, space)
    disagg = [c for c in found.candidates if c.kind == "disaggregated"]
    assert [c.layout_label for c in disagg] == ["1P (1 GPU) + 1D (1 GPU)"]
    keep = [c for c in found.candidates if c.kind == "disaggregated" or c.layout.label in ("DP2", "TP2")]
    settings = SearchSettings(objective="fewest_gpus", serving=True, rate_per_s=5.0, base_dir=str(SEED.parent))
    ranked = rank_search(run_search(s, keep, settings, prune=False), "fewest_gpus")
    assert all(r.status == "ok" for r in ranked), [(r.candidate.label, r.reason) for r in ranked]
    assert {r.candidate.kind for r in ranked} == {"aggregated", "disaggregated"}
    assert sorted(r.rank for r in ranked) == list(range(1, len(ranked) + 1))
    for r in ranked:
        assert r.output_tokens_per_s_per_gpu > 0 and r.rate_per_s == 5.0
    # Same metric, same key: ranks follow output tokens/s per GPU among equal GPU counts (no prices).
    tputs = [r.output_tokens_per_s_per_gpu for r in ranked if r.meets]
    assert tputs == sorted(tputs, reverse=True)


@pytest.mark.parametrize(
    "scenario, extra, message",
    [
        (SEED, ["--kinds", "aggregated,pooled"], "--kinds aggregated,pooled: expected a comma-separated list"),
        (ROOT / "scenarios/seed_moe_4gpu.yaml", ["--kinds", "disaggregated"], "--kinds disaggregated: needs a serving"),
    ],
)
def test_bad_kinds_are_one_line(tmp_path, capsys, scenario, extra, message):
    code = main(["compare", str(scenario), "--gpus", "4", "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_max_rate_searches_stopped_by_a_missed_rate_cannot_change_the_winner():
    """The seed on 1 and 3 GPUs, both kinds, two batch limits, 40 requests per rate: a pruned search stops the
    max-rate searches whose missed rate caps them below the best found ('dominated_rate', and the 3-GPU
    disaggregated candidates' placeholder layout is PP3: a static batch of 128 does not split over DP3); the
    winner and every figure of a candidate simulated in both searches are those of the unpruned search."""
    s = load_scenario(SEED, ["serving.workload.num_requests=40", "serving.workload.warmup_requests=4"])
    space = SearchSpace(
        gpu_counts=(1, 3),
        hardware=(s.hardware.profile,),
        weight_dtypes=("fp16",),
        kv_cache_dtypes=("fp16",),
        max_num_seqs=(16, 128),
        microbatches=(1,),
        kinds=("aggregated", "disaggregated"),
    )
    found = enumerate_candidates(s, space).candidates
    assert {c.layout.label for c in found if c.kind == "disaggregated" and c.num_gpus == 3} == {"PP3"}
    settings = SearchSettings(objective="max_rate", serving=True, base_dir=str(SEED.parent), rel_tol=0.05)
    pruned = rank_search(run_search(s, found, settings, wave=2), "max_rate")
    full = rank_search(run_search(s, found, settings, wave=2, prune=False), "max_rate")
    assert all(r.status == "ok" for r in full)
    stopped = [r for r in pruned if r.rule == "dominated_rate"]
    assert stopped and all(r.status in ("ok", "pruned") for r in pruned)
    best = next(r for r in full if r.rank == 1)
    assert next(r for r in pruned if r.rank == 1).candidate == best.candidate
    by_key = {r.candidate.key(): r for r in full}
    for r in pruned:
        twin = by_key[r.candidate.key()]
        if r.status == "ok":
            assert (r.output_tokens_per_s_per_gpu, r.rate_per_s, r.tpot_s) == (
                twin.output_tokens_per_s_per_gpu,
                twin.rate_per_s,
                twin.tpot_s,
            )
        else:  # stopped: the full search's figure is below the best, as the cap said
            assert twin.output_tokens_per_s_per_gpu < best.output_tokens_per_s_per_gpu or not twin.meets
