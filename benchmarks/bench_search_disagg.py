"""Aggregated versus disaggregated on one GPU count, max-rate objective, with an optional restriction of the
layouts (the full Mixtral-8x7B space on 8 GPUs is ~65 aggregated + 47 disaggregated candidates, more than a
2-core machine simulates in a few minutes).

    .venv/bin/python benchmarks/bench_search_disagg.py SCENARIO GPUS OUT [--restrict]

--restrict keeps the layouts the scenario's engines launch as replicas with the scenario's expert folding:
aggregated pp 1 with experts over each replica's TP group (ep x etp = tp, the scenario's choice of ep or etp),
disaggregated pools whose instances fold experts the same way. Writes OUT/search.csv, search.md,
pareto_user.png, best.yaml and OUT/launch/ (the winner's launch configs), and prints the ranking.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from simulator.config import load_scenario
from simulator.report.launch import launch_files
from simulator.report.search import write_search
from simulator.sweep.candidates import Candidate, CandidateScenarios, SearchSpace, enumerate_candidates
from simulator.sweep.executors import make_executor
from simulator.sweep.search import SearchSettings, prune_counts, rank_search, run_search, winner


def folds_like(scenario, c: Candidate) -> bool:
    """The candidate folds experts as the scenario does (all ep or all etp over each TP group), pp 1."""
    expert_tp = scenario.parallel.etp > 1
    if c.kind == "aggregated":
        p = c.layout
        return p.pp == 1 and (p.etp if expert_tp else p.ep) == p.tp and p.ep * p.etp == p.tp
    return all((pool["etp"] if expert_tp else pool["ep"]) == pool["tp"] for pool in c.pools.values())


def main(argv: list[str]) -> int:
    path, gpus, out = Path(argv[0]), int(argv[1]), Path(argv[2])
    restrict = "--restrict" in argv
    scenario = load_scenario(path)
    own = scenario.model.dtype
    space = SearchSpace(
        gpu_counts=(gpus,),
        hardware=(scenario.hardware.profile,),
        weight_dtypes=(scenario.model.weight_dtype or own,),
        kv_cache_dtypes=(scenario.model.kv_cache_dtype or own,),
        kinds=("aggregated", "disaggregated"),
    )
    candidates = enumerate_candidates(scenario, space).candidates
    total = len(candidates)
    if restrict:
        candidates = [c for c in candidates if folds_like(scenario, c)]
    print(f"{len(candidates)} of {total} candidates" + (" (restricted)" if restrict else ""))
    settings = SearchSettings(objective="max_rate", serving=True, base_dir=str(path.parent))
    started = time.perf_counter()
    with make_executor("process", 2) as executor:
        results = run_search(scenario, candidates, settings, executor=executor, wave=2)
    elapsed = time.perf_counter() - started
    ranked = rank_search(results, "max_rate")
    out.mkdir(parents=True, exist_ok=True)
    write_search(scenario, ranked, out, "max_rate", elapsed)
    best = winner(ranked)
    if best is not None:
        (out / "launch").mkdir(exist_ok=True)
        for name, text in launch_files(CandidateScenarios(scenario).scenario(best.candidate)).items():
            (out / "launch" / name).write_text(text)
    print(f"{elapsed:.1f} s wall; pruned {prune_counts(ranked)}")
    print("rank | kind | deployment | out tok/s/GPU | tok/s/user | TPOT p99 ms | TTFT p99 ms | rate req/s | status")
    for r in ranked:
        print(
            f"{r.rank} | {r.candidate.kind} | {r.candidate.layout_label} | {r.output_tokens_per_s_per_gpu:.0f} | "
            f"{r.tokens_per_s_per_user:.1f} | {r.tpot_s * 1e3:.2f} | {r.ttft_s * 1e3:.1f} | {r.rate_per_s:.2f} | "
            f"{r.status} {r.rule} {'met' if r.meets else ''}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
