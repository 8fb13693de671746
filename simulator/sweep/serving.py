"""Sweep stage, serving objectives: rank layouts by what they serve, with the scenario's serving section.

Each layout is simulated as any other (simulate_layout), then its serving workload is simulated
request by request with the layout's iteration prices (serving.session.serving_inputs): goodput per
GPU at the workload's own arrivals, and with `max_rate` also the highest Poisson rate meeting every
serving target (serving.maxrate.search_max_rate).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from simulator.config import Scenario
from simulator.serving.maxrate import search_max_rate
from simulator.serving.session import serving_inputs
from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import summarize
from simulator.sweep.rank import SERVING_OBJECTIVES
from simulator.sweep.results import LayoutResult, failed_result
from simulator.sweep.run import simulate_layout

MAX_RATE_REL_TOL = 0.02

__all__ = ["MAX_RATE_REL_TOL", "SERVING_OBJECTIVES", "serving_figures", "simulate_serving_layout"]


def serving_figures(scenario: Scenario, objective: str, base_dir: str | Path | None = None) -> dict[str, float]:
    """The serving figures of one layout: goodput, throughput and p99 latencies at the workload's own
    arrivals, the share of iterations the engine's host work set (where its profile has host time), and with
    objective 'max_rate' the max rate (NaN when even the lowest rate tried misses)."""
    spec, pricer, num_gpus = serving_inputs(scenario)
    run = simulate_serving(spec, pricer, base_dir=base_dir)
    summary = summarize(run)
    f, lat = summary.figures, summary.latency
    figures = {
        "goodput_requests_per_s_per_gpu": f["goodput_requests_per_s"] / num_gpus,
        "goodput_fraction": f["goodput_fraction"],
        "output_tokens_per_s_per_gpu": f["output_tokens_per_s"] / num_gpus,
        "ttft_p99_s": float(lat.loc["ttft_s", "p99"]),
        "tpot_p99_s": float(lat.loc["tpot_s", "p99"]),
        "targets_met": float(summary.all_targets_met),
    }
    host = run.host
    if host is not None and host.seconds > 0.0 and host.iterations:  # an engine with host time: its share
        figures["host_bound_share"] = host.host_bound / host.iterations
    if objective == "max_rate":
        found = search_max_rate(spec, pricer, f["requests_per_s"], MAX_RATE_REL_TOL, base_dir=base_dir)
        rate = math.nan if found.rate_per_s is None else found.rate_per_s
        figures.update(max_rate_per_s=rate, max_rate_per_s_per_gpu=rate / num_gpus, max_rate_capped=float(found.capped))
    return figures


def simulate_serving_layout(
    index: int,
    own: bool,
    scenario: Scenario,
    decode_sample: int,
    objective: str = "goodput_per_gpu",
    base_dir: str | None = None,
) -> LayoutResult:
    """simulate_layout, then the serving figures of the layout (run_sweep's `simulate`; bind
    objective and base_dir with functools.partial, which pickles). A serving error fails the row."""
    result = simulate_layout(index, own, scenario, decode_sample)
    if result.status != "ok":
        return result
    try:
        return replace(result, serving=serving_figures(scenario, objective, base_dir))
    except Exception as exc:  # recorded in the table; the sweep goes on
        return failed_result(index, result.layout, own, exc)
