"""The deployment search (sweep.candidates, sweep.bounds, sweep.search): candidates, bounds, pruning, ranking,
resume, and the command's one-line answers to bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.cli import main
from simulator.config import resolve_hardware
from simulator.sweep.bounds import output_tput_upper_bound, tpot_lower_bound_s
from simulator.sweep.candidates import Candidate, SearchSpace, enumerate_candidates
from simulator.sweep.resume import Progress, search_from_record, search_key, search_to_record
from simulator.sweep.run import SweepInterrupted, simulate_layout
from simulator.sweep.search import (
    SearchResult,
    SearchSettings,
    candidate_bound,
    prune_counts,
    rank_search,
    run_search,
    winner,
)
from tests.conftest import TINY_MOE, TINY_SERVING, make_scenario, run_engine_search

TINY_SPACE = SearchSpace(
    gpu_counts=(1, 2),
    hardware=("h100-sxm-80gb", "h200-sxm-141gb"),
    weight_dtypes=("fp16",),
    kv_cache_dtypes=("fp16",),
    microbatches=(1,),
)


def tiny():
    """The tiny MoE with a TTFT target only (TINY_MOE's 1e6 tokens/ms/GPU target no layout can reach)."""
    return make_scenario(TINY_MOE | {"targets": {"ttft_s": {"max": 1.0}}})


# ---------------------------------------------------------------------------------------------
# A stub evaluation with hand-set figures (picklable: module level)

#: Output tokens/s per GPU of each profile in the stub; candidates on 1 GPU miss the targets.
STUB_TPUT = {"h100-sxm-80gb": 1000.0, "h200-sxm-141gb": 1600.0}


def stub_evaluate(index, candidate, scenario, settings):
    tput = STUB_TPUT[candidate.hardware_name] / candidate.layout.tp  # TP costs throughput in the stub
    return SearchResult(
        index, candidate, "ok", meets=candidate.num_gpus >= 2, output_tokens_per_s_per_gpu=tput, tpot_s=0.01
    )


def test_cost_objective_finds_the_hand_computed_optimum():
    """h100 at $2/GPU-hour serves 1000 tok/s/GPU: 2e6 / (3600 x 1000) = 0.5556 $/M; h200 at $3 serves 1600:
    3e6 / (3600 x 1600) = 0.5208 $/M. On 2 GPUs, DP2 (tp 1) keeps the full rate: the winner is h200 DP2."""
    base = tiny()
    found = enumerate_candidates(base, TINY_SPACE)
    prices = {"h100-sxm-80gb": 2.0, "h200-sxm-141gb": 3.0}
    results = rank_search(
        run_search(base, found.candidates, SearchSettings(objective="cost"), prices, evaluate=stub_evaluate),
        "cost",
    )
    best = winner(results)
    assert best is not None
    assert (best.candidate.hardware_name, best.candidate.layout.label) == ("h200-sxm-141gb", "DP2")
    assert best.cost_per_million_output_tokens_usd == pytest.approx(3.0e6 / (3600 * 1600))
    runner_up = next(r for r in results if r.rank == 2)
    assert runner_up.cost_per_million_output_tokens_usd >= best.cost_per_million_output_tokens_usd


def test_fewest_gpus_stops_at_the_first_count_that_meets():
    base = tiny()
    found = enumerate_candidates(base, replace(TINY_SPACE, gpu_counts=(1, 2, 4)))
    results = run_search(
        base, found.candidates, SearchSettings(objective="fewest_gpus", rate_per_s=1.0), {}, evaluate=stub_evaluate
    )
    counts = prune_counts(results)
    assert counts["more_gpus"] == sum(c.num_gpus == 4 for c in found.candidates) > 0
    assert winner(rank_search(results, "fewest_gpus")).num_gpus == 2


def test_candidates_span_every_dimension_and_skip_fp8_without_fp8_units():
    space = replace(TINY_SPACE, hardware=("h100-sxm-80gb", "a100-sxm-80gb"), weight_dtypes=("fp16", "fp8"))
    found = enumerate_candidates(tiny(), space)
    assert found.unsupported == 1  # fp8 weights on the A100 profile (no FP8 units)
    kinds = {(c.hardware_name, c.weight_dtype) for c in found.candidates}
    assert kinds == {("h100-sxm-80gb", "fp16"), ("h100-sxm-80gb", "fp8"), ("a100-sxm-80gb", "fp16")}
    keys = [c.key() for c in found.candidates]
    assert len(set(keys)) == len(keys)
    assert Candidate.from_dims(found.candidates[3].dims()) == found.candidates[3]


# ---------------------------------------------------------------------------------------------
# Bounds hold against the simulation (what makes a pruned candidate unable to win)


@pytest.mark.parametrize("name", ["tiny", "seed"])
def test_bounds_hold_for_every_layout(name, seed):
    base = tiny() if name == "tiny" else seed
    space = SearchSpace(
        gpu_counts=(base.num_gpus,),
        hardware=(base.hardware.profile,),
        weight_dtypes=(base.model.dtype,),
        kv_cache_dtypes=(base.model.dtype,),
        microbatches=(1,),
    )
    from simulator.sweep.candidates import CandidateScenarios

    scenarios = CandidateScenarios(base)
    for c in enumerate_candidates(base, space).candidates[:12]:
        scenario = scenarios.scenario(c)
        r = simulate_layout(0, False, scenario, 0)
        assert r.status == "ok"
        b = candidate_bound(scenario, serving=False)
        assert r.output_tput * 1e3 <= b.tokens_per_s_per_gpu
        assert r.tpot_s >= b.tpot_s


def test_throughput_bound_is_the_hand_computed_roofline():
    """Dense toy, no calibration tables (the A100 profile): GEMM FLOPs 2 x 4 layers x (attention 4 x 64 x 64 +
    FFN 2 x 64 x 128) per token over 20 + 4 - 1 tokens at the fp16 peak, plus 3 decode steps each reading
    20 tokens of K and V (2 x 4 layers x 4 heads x 16 x 2 bytes per token)."""
    s = make_scenario(
        TINY_MOE,
        model={"num_experts": 0, "ffn_size": 128, "expert_ffn_size": None, "top_k": 1},
        hardware="a100-sxm-80gb",
        cluster={"num_gpus": 1},
        parallel={"tp": 1, "ep": 1, "pp": 1, "dp": 1},
        workload={"batch_size": 4, "input_len_tokens": 20, "output_len_tokens": 4},
    )
    hw = resolve_hardware(s)
    assert hw.calibration is None
    flops = 2 * 4 * (4 * 64 * 64 + 2 * 64 * 128) * 23
    kv = 3 * 2 * 20 * 4 * 4 * 16 * 2
    expected = 4 / (flops / hw.peak_flops_per_s.fp16 + kv / hw.hbm_bytes_per_s)
    assert output_tput_upper_bound(s, hw, 20, 4) == pytest.approx(expected, rel=1e-12)
    assert tpot_lower_bound_s(s, hw, 20) > 0


# ---------------------------------------------------------------------------------------------
# Pruning never changes the winner (property test on small spaces with stub figures below the bounds)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fractions=st.lists(st.floats(0.05, 1.0), min_size=16, max_size=16),
    meets=st.lists(st.booleans(), min_size=16, max_size=16),
    margins=st.lists(st.floats(1.0, 1.5, exclude_min=True), min_size=16, max_size=16),
    objective=st.sampled_from(["targets", "cost", "fewest_gpus"]),
    wave=st.integers(1, 4),
)
def test_pruned_search_finds_the_unpruned_winner(fractions, meets, margins, objective, wave):
    """Stub figures below the bounds; each candidate also stops as a max-rate search does ('dominated_rate')
    when the floor its task is given reaches a cap above its figure (margins: cap / figure)."""
    base = tiny()
    found = enumerate_candidates(base, TINY_SPACE)
    from simulator.sweep.candidates import CandidateScenarios

    scenarios = CandidateScenarios(base)
    bounds = {c.key(): candidate_bound(scenarios.scenario(c), False) for c in found.candidates}
    table = {
        c.key(): (fractions[i % 16] * bounds[c.key()].tokens_per_s_per_gpu, meets[i % 16], margins[i % 16])
        for i, c in enumerate(found.candidates)
    }

    def evaluate(index, candidate, scenario, settings):
        tput, met, margin = table[candidate.key()]
        if tput * margin <= settings.floor_tokens_per_s_per_gpu:
            return SearchResult(index, candidate, "pruned", "dominated_rate")
        return SearchResult(index, candidate, "ok", meets=met, output_tokens_per_s_per_gpu=tput, tpot_s=0.01)

    prices = {"h100-sxm-80gb": 2.0, "h200-sxm-141gb": 3.5}
    settings_ = SearchSettings(objective=objective, rate_per_s=1.0)
    pruned = rank_search(run_search(base, found.candidates, settings_, prices, wave=wave, evaluate=evaluate), objective)
    full = rank_search(
        run_search(base, found.candidates, settings_, prices, wave=wave, prune=False, evaluate=evaluate), objective
    )
    a, b = winner(pruned), winner(full)
    assert (a is None) == (b is None)
    if a is not None:
        assert a.candidate == b.candidate


# ---------------------------------------------------------------------------------------------
# Resume: the progress file keyed by every dimension


class Boom:
    """An evaluation that stops the search (Ctrl-C) at its n-th call."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, index, candidate, scenario, settings):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return stub_evaluate(index, candidate, scenario, settings)


def test_resume_reuses_finished_candidates_by_their_full_key(tmp_path):
    base = tiny()
    found = enumerate_candidates(base, TINY_SPACE)
    keys = [c.key() for c in found.candidates]
    path = tmp_path / "out.progress.jsonl"
    inputs = {"scenario": "x"}
    settings_ = SearchSettings(objective="targets")
    journal = Progress(path, inputs, False, keys, key=search_key, encode=search_to_record, decode=search_from_record)
    with pytest.raises(SweepInterrupted):
        run_search(base, found.candidates, settings_, {}, prune=False, evaluate=Boom(3), journal=journal.append)
    journal.close()
    resumed = Progress(path, inputs, True, keys, key=search_key, encode=search_to_record, decode=search_from_record)
    assert len(resumed.done) == 2
    calls = Boom(10**9)
    results = run_search(
        base, found.candidates, settings_, {}, prune=False, evaluate=calls, done=resumed.done, journal=resumed.append
    )
    resumed.close()
    assert calls.calls == len(found.candidates) - 2
    fresh = run_search(base, found.candidates, settings_, {}, prune=False, evaluate=stub_evaluate)
    assert [(r.candidate, r.output_tokens_per_s_per_gpu) for r in results] == [
        (r.candidate, r.output_tokens_per_s_per_gpu) for r in fresh
    ]
    # Another hardware profile is another candidate: its key differs, nothing of h100 is reused for it.
    h100 = next(c for c in found.candidates if c.hardware_name == "h100-sxm-80gb")
    assert replace(h100, hardware="h200-sxm-141gb").key() != h100.key()


def test_search_record_round_trips():
    c = enumerate_candidates(tiny(), TINY_SPACE).candidates[0]
    r = SearchResult(0, c, "ok", meets=True, output_tokens_per_s_per_gpu=12.5, tpot_s=0.002, rate_per_s=math.nan)
    back = search_from_record(search_to_record(r))
    assert back.candidate == c and back.output_tokens_per_s_per_gpu == 12.5 and math.isnan(back.rate_per_s)


# ---------------------------------------------------------------------------------------------
# The command: a small real search, and bad input in one line


def test_compare_search_writes_ranking_best_and_launch(tmp_path, capsys):
    scenario = tmp_path / "tiny.yaml"
    import yaml

    scenario.write_text(yaml.safe_dump(TINY_MOE | {"targets": {"ttft_s": {"max": 1.0}}}))
    out = tmp_path / "out"
    code = main(
        [
            "compare",
            str(scenario),
            "--gpus",
            "1,2",
            "--hardware",
            "h100-sxm-80gb,h200-sxm-141gb",
            "--microbatches",
            "1",
            "--objective",
            "cost",
            "--price",
            "h100-sxm-80gb=2.0",
            "--price",
            "h200-sxm-141gb=3.0",
            "--jobs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"search.csv", "search.md", "pareto_user.png", "best.yaml", "launch"} <= names
    assert {p.name for p in (out / "launch").iterdir()} >= {"vllm.sh", "sglang.sh", "trtllm.sh"}
    best = (out / "best.yaml").read_text()
    assert "Winner and runners-up" in best and "$/M output tokens" in best
    assert "pruned (memory" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hardware", "nope-gpu"], "--hardware nope-gpu: hardware profile 'nope-gpu' not found"),
        (["--objective", "cost", "--hardware", "h100-sxm-80gb"], "--objective cost: no price for h100-sxm-80gb"),
        (["--gpus", "5..7"], "--gpus 5..7: no count fits the cluster (gpus_per_node = 4"),
        (["--objective", "fewest_gpus"], "--objective fewest_gpus: needs a serving section"),
        (["--weight-dtype", "int4"], "--weight-dtype int4: unknown precision 'int4'"),
        (["--max-num-seqs", "8"], "scheduler limits need a serving section"),
    ],
)
def test_bad_search_input_is_one_line(tmp_path, capsys, extra, message):
    import yaml

    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(TINY_MOE))
    code = main(["compare", str(scenario), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_engine_filter_keeps_only_launchable_candidates(tmp_path):
    import csv

    import yaml

    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(TINY_MOE | {"targets": {"ttft_s": {"max": 1.0}}}))
    out = tmp_path / "out"
    argv = ["compare", str(scenario), "--gpus", "4,4", "--microbatches", "1", "--jobs", "1", "--engine", "vllm"]
    assert main([*argv, "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "search.csv").open()))
    assert rows and all(not (int(r["ep"]) > 1 and int(r["etp"]) > 1) for r in rows)  # vLLM: EP or expert TP
    assert all(int(r["ep"]) * int(r["etp"]) in (int(r["tp"]), int(r["tp"]) * int(r["dp"])) for r in rows)
    assert "NOT EXPRESSIBLE" not in (out / "launch" / "vllm.sh").read_text()


@pytest.mark.parametrize(
    ("engines", "own", "profile", "line"),
    [
        (["sglang"], None, "sglang-0.5", "priced as sglang runs it: serving.engine sglang-0.5 (--engine sglang)"),
        (["trtllm", "trtllm"], None, "trtllm-1.0", "priced as trtllm runs it: serving.engine trtllm-1.0"),
        (["vllm"], "vllm", None, ""),  # the scenario's own profile of the same engine wins, silently
        (["vllm"], "sglang", None, "priced with the scenario's serving.engine sglang, not vllm's; --set serving"),
        (["vllm", "sglang"], None, None, ""),  # two engines: no one profile to price with
        ([], None, None, ""),
    ],
)
def test_one_engine_named_prices_a_serving_search_as_that_engine_runs_it(engines, own, profile, line):
    from simulator.commands.search import engine_pricing

    serving = TINY_SERVING | ({"engine": own} if own else {})
    pricing = engine_pricing(make_scenario(TINY_MOE, serving=serving), engines)
    assert pricing.profile == profile
    assert pricing.line.startswith(line) and bool(pricing.line) == bool(line)
    assert engine_pricing(make_scenario(TINY_MOE), ["sglang"]).profile is None  # a static batch has no engine


def test_an_engine_search_writes_the_profile_it_priced_with(tmp_path, capsys):
    import yaml

    out = run_engine_search(tmp_path, "sglang")
    assert "priced as sglang runs it: serving.engine sglang-0.5" in capsys.readouterr().out
    assert "Priced with engine profile sglang-0.5" in (out / "search.md").read_text()
    assert yaml.safe_load((out / "best.yaml").read_text())["serving"]["engine"] == "sglang-0.5"
    assert "# moesim priced it as this version runs it" in (out / "launch" / "sglang.sh").read_text()


def test_the_floor_of_a_cost_search_is_the_throughput_that_ties_the_best_cost():
    """Best $0.5 per million output tokens; at $3 per GPU-hour a candidate ties it at 3e6 / (3600 x 0.5) =
    1666.67 output tokens/s/GPU. max_rate and targets: the best figure itself; fewest_gpus: none."""
    from simulator.sweep.search import _floor

    assert _floor((0.5,), 3.0, "cost") == 3.0e6 / (3600 * 0.5)
    assert _floor((-1234.5,), math.nan, "max_rate") == _floor((-1234.5,), 2.0, "targets") == 1234.5
    assert math.isnan(_floor((2, 0.5, -100.0), 3.0, "fewest_gpus")) and math.isnan(_floor(None, 3.0, "cost"))
