"""Sweep stage, ranking: the layouts' rows sorted best first by an objective, with ranks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from simulator.config import ScenarioError
from simulator.sweep.results import LayoutResult

#: Objectives that rank by the serving simulation (sweep.serving): the figure of LayoutResult.serving each
#: ranks by, highest first.
SERVING_OBJECTIVES = {"goodput_per_gpu": "goodput_requests_per_s_per_gpu", "max_rate": "max_rate_per_s_per_gpu"}
OBJECTIVES = ("targets", "throughput", "ttft", "tpot", "memory", *SERVING_OBJECTIVES)


def rank_results(results: Sequence[LayoutResult], objective: str = "targets") -> list[LayoutResult]:
    """Sorted best first, with ranks on the simulated rows.

    Simulated layouts that fit come first, then simulated ones that do not fit, then screened
    and failed ones. Objectives: 'targets' (meets every target, then highest output tokens/ms/GPU),
    'throughput' (highest output tokens/ms/GPU), 'ttft' (lowest worst TTFT), 'tpot' (lowest TPOT),
    'memory' (lowest peak memory per GPU); the serving ones: 'goodput_per_gpu' (highest goodput per GPU
    of the serving workload), 'max_rate' (highest Poisson rate per GPU meeting every serving target).
    Ties: higher output throughput, then enumeration order.
    """
    if objective not in OBJECTIVES:
        raise ScenarioError(f"--objective {objective}: choose one of {', '.join(OBJECTIVES)}")

    def key(r: LayoutResult) -> tuple:
        group = {"ok": 0, "screened": 2, "failed": 3}[r.status] + (1 if r.status == "ok" and not r.fits else 0)
        tput = -_finite(r.output_tput, -math.inf)
        if objective in SERVING_OBJECTIVES:
            figure = r.serving.get(SERVING_OBJECTIVES[objective], math.nan)
            return (group, -_finite(figure, -math.inf), tput, r.index)
        primary = {
            "targets": (0 if r.all_met else 1, tput),
            "throughput": (tput,),
            "ttft": (_finite(r.ttft_max_s, math.inf), tput),
            "tpot": (_finite(r.tpot_s, math.inf), tput),
            "memory": (_finite(r.memory_bytes_per_gpu, math.inf), tput),
        }[objective]
        return (group, *primary, r.index)

    ordered = sorted(results, key=key)
    ranked, n = [], 0
    for r in ordered:
        if r.status == "ok":
            n += 1
            ranked.append(replace(r, rank=n))
        else:
            ranked.append(replace(r, rank=None))
    return ranked


def _finite(x: float, default: float) -> float:
    return x if math.isfinite(x) else default
