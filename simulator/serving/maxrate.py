"""Serving capacity stage: the highest Poisson request rate at which every target holds, and the rate curve.

Runs at different rates share their random numbers (common random numbers, see workload.py): request i
has the same lengths at every rate and arrives at E_i / rate for the same unit-rate time E_i. Arrivals
only move closer together as the rate rises, so latency percentiles do not fall with the rate (up to
batching effects), and bisection on "every target holds" is well posed.

A rate also has to be sustainable: a finite run of N requests at a rate above what the deployment serves
still ends, and its latencies stay bounded by the time to drain N requests, so an overloaded rate can meet
a TTFT target only because the run is short. A rate counts as met only when the run meets every target AND
the deployment keeps up (`keeps_up`): between the first measured completion and the last measured arrival,
at least KEEP_UP_FRACTION as many requests complete as arrive (a stable queue passes on what arrives; an
overloaded one completes at its capacity, whatever the rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from simulator.config.serving import PoissonArrivals, ServingError, ServingSpec
from simulator.serving.pricing import IterationPricer
from simulator.serving.simulate import ServingRun, simulate_serving
from simulator.serving.stats import ServingSummary, request_table, summarize

#: progress(rate_per_s, summary) is called after each simulated rate.
Progress = Callable[[float, ServingSummary], None]
#: simulate(spec, base_dir) serves spec's workload on some deployment (e.g. a disaggregated one:
#: serving.disagg.DisaggregatedDeployment.simulate); None: simulate_serving(spec, pricer).
Simulate = Callable[[ServingSpec, "str | Path | None"], ServingRun]

CURVE_COLUMNS = (
    "rate_per_s",
    "requests_per_s",
    "output_tokens_per_s_per_gpu",
    "total_tokens_per_s_per_gpu",
    "ttft_p99_s",
    "tpot_p99_s",
    "e2e_p99_s",
    "goodput_fraction",
    "keep_up_ratio",
    "keeps_up",
    "all_targets_met",
)

#: A rate is sustained when the completions during the arrivals reach this fraction of the arrivals then.
KEEP_UP_FRACTION = 0.95


@dataclass(frozen=True)
class MaxRate:
    """rate_per_s: the highest rate found meeting every target, within rel_tol; None when even lo_per_s
    misses one. capped: hi_per_s itself met them (the true maximum may be higher). curve: every rate tried."""

    rate_per_s: float | None
    capped: bool
    curve: pd.DataFrame


def at_rate(spec: ServingSpec, rate_per_s: float) -> ServingSpec:
    """spec with Poisson arrivals at rate_per_s (everything else, the seed included, unchanged)."""
    if spec.workload.arrivals.kind == "trace":
        raise ServingError(
            "workload.arrivals: a trace fixes its arrival times; give length distributions "
            "(input_len, output_len) to sweep the rate"
        )
    if not rate_per_s > 0:
        raise ServingError(f"rate_per_s = {rate_per_s} must be > 0")
    workload = spec.workload.model_copy(update={"arrivals": PoissonArrivals(rate_per_s=rate_per_s)})
    return spec.model_copy(update={"workload": workload})


def evaluate(
    spec: ServingSpec,
    pricer: IterationPricer | None,
    rate_per_s: float,
    base_dir: str | Path | None = None,
    simulate: Simulate | None = None,
) -> tuple[dict, ServingSummary]:
    """Simulate at one rate (with `simulate` when given, else simulate_serving with `pricer`); returns its
    curve row (CURVE_COLUMNS) and summary. The row's all_targets_met: the run met every target and the
    deployment keeps up with the rate (see the module's docstring)."""
    if simulate is not None:
        run = simulate(at_rate(spec, rate_per_s), base_dir)
    else:
        assert pricer is not None, "evaluate needs a pricer or a simulate function"
        run = simulate_serving(at_rate(spec, rate_per_s), pricer, base_dir=base_dir)
    table = request_table(run)
    summary = summarize(run, table)
    ratio = keep_up_ratio(table)
    keeps_up = ratio >= KEEP_UP_FRACTION
    f, lat = summary.figures, summary.latency
    row = {
        "rate_per_s": rate_per_s,
        "requests_per_s": f["requests_per_s"],
        "output_tokens_per_s_per_gpu": f["output_tokens_per_s_per_gpu"],
        "total_tokens_per_s_per_gpu": f["total_tokens_per_s_per_gpu"],
        "ttft_p99_s": lat.loc["ttft_s", "p99"],
        "tpot_p99_s": lat.loc["tpot_s", "p99"],
        "e2e_p99_s": lat.loc["e2e_s", "p99"],
        "goodput_fraction": f["goodput_fraction"],
        "keep_up_ratio": ratio,
        "keeps_up": keeps_up,
        "all_targets_met": summary.all_targets_met and keeps_up,
    }
    return row, summary


def keep_up_ratio(table: pd.DataFrame) -> float:
    """Measured requests completed / measured requests arrived between the first measured completion and the
    last measured arrival: ~1 in a stable queue (what arrives leaves), capacity / rate in an overloaded one;
    0 when every request arrived before the first one finished, inf when no request arrived in between."""
    measured = table[~table["warmup"]]
    start, end = float(measured["finish_s"].min()), float(measured["arrival_s"].max())
    if not end > start:
        return 0.0
    arrived = int(((measured["arrival_s"] > start) & (measured["arrival_s"] <= end)).sum())
    done = int(((measured["finish_s"] > start) & (measured["finish_s"] <= end)).sum())
    return done / arrived if arrived else math.inf


def rate_curve(
    spec: ServingSpec,
    pricer: IterationPricer | None,
    rates_per_s: Iterable[float],
    progress: Progress | None = None,
    base_dir: str | Path | None = None,
    simulate: Simulate | None = None,
) -> pd.DataFrame:
    """One row per rate (CURVE_COLUMNS), in the order given."""
    rows = []
    for rate in rates_per_s:
        row, summary = evaluate(spec, pricer, float(rate), base_dir, simulate)
        rows.append(row)
        if progress is not None:
            progress(float(rate), summary)
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def max_rate(
    spec: ServingSpec,
    pricer: IterationPricer | None,
    lo_per_s: float,
    hi_per_s: float,
    rel_tol: float = 0.01,
    progress: Progress | None = None,
    base_dir: str | Path | None = None,
    simulate: Simulate | None = None,
) -> MaxRate:
    """Bisect [lo_per_s, hi_per_s] for the highest Poisson rate meeting every target of spec.targets.

    Assumes the targets, once missed, stay missed at higher rates (common random numbers make this hold
    for FIFO queueing; batching can bend it slightly). Stops when (hi - lo) / lo <= rel_tol.
    """
    t = spec.targets
    if all(v is None for v in (t.ttft_p99_s, t.tpot_p99_s, t.e2e_p99_s, t.min_goodput_fraction)):
        raise ServingError("targets: none given; set ttft_p99_s, tpot_p99_s, e2e_p99_s or min_goodput_fraction")
    if not 0 < lo_per_s < hi_per_s:
        raise ServingError(f"lo_per_s = {lo_per_s}, hi_per_s = {hi_per_s}: need 0 < lo_per_s < hi_per_s")
    if not rel_tol > 0:
        raise ServingError(f"rel_tol = {rel_tol} must be > 0 (e.g. 0.01)")
    rows = []

    def met(rate: float) -> bool:
        row, summary = evaluate(spec, pricer, rate, base_dir, simulate)
        rows.append(row)
        if progress is not None:
            progress(rate, summary)
        return bool(row["all_targets_met"])

    def curve() -> pd.DataFrame:
        return pd.DataFrame(rows, columns=list(CURVE_COLUMNS)).sort_values("rate_per_s", ignore_index=True)

    if not met(lo_per_s):
        return MaxRate(None, False, curve())
    if met(hi_per_s):
        return MaxRate(hi_per_s, True, curve())
    lo, hi = lo_per_s, hi_per_s
    while (hi - lo) / lo > rel_tol:
        mid = 0.5 * (lo + hi)
        if met(mid):
            lo = mid
        else:
            hi = mid
    return MaxRate(lo, False, curve())


def search_max_rate(
    spec: ServingSpec,
    pricer: IterationPricer | None,
    start_per_s: float,
    rel_tol: float = 0.02,
    progress: Progress | None = None,
    base_dir: str | Path | None = None,
    max_doublings: int = 20,
    simulate: Simulate | None = None,
) -> MaxRate:
    """max_rate without bounds: bracket from start_per_s by doubling (while every target holds) or
    halving (while one is missed), at most max_doublings times, then bisect the bracket. Every rate is
    simulated once; the curve holds them all, by rate."""
    t = spec.targets
    if all(v is None for v in (t.ttft_p99_s, t.tpot_p99_s, t.e2e_p99_s, t.min_goodput_fraction)):
        raise ServingError("targets: none given; set ttft_p99_s, tpot_p99_s, e2e_p99_s or min_goodput_fraction")
    if not start_per_s > 0:
        raise ServingError(f"start_per_s = {start_per_s} must be > 0")
    if not rel_tol > 0:
        raise ServingError(f"rel_tol = {rel_tol} must be > 0 (e.g. 0.02)")
    verdicts: dict[float, bool] = {}
    rows = []

    def met(rate: float) -> bool:
        if rate not in verdicts:
            row, summary = evaluate(spec, pricer, rate, base_dir, simulate)
            rows.append(row)
            verdicts[rate] = bool(row["all_targets_met"])
            if progress is not None:
                progress(rate, summary)
        return verdicts[rate]

    def result(rate: float | None, capped: bool) -> MaxRate:
        curve = pd.DataFrame(rows, columns=list(CURVE_COLUMNS)).sort_values("rate_per_s", ignore_index=True)
        return MaxRate(rate, capped, curve)

    lo = hi = float(start_per_s)
    if met(lo):
        for _ in range(max_doublings):
            hi = 2.0 * lo
            if not met(hi):
                break
            lo = hi
        else:
            return result(lo, True)
    else:
        for _ in range(max_doublings):
            lo = 0.5 * hi
            if met(lo):
                break
            hi = lo
        else:
            return result(None, False)
    while (hi - lo) / lo > rel_tol:
        mid = 0.5 * (lo + hi)
        if met(mid):
            lo = mid
        else:
            hi = mid
    return result(lo, False)
