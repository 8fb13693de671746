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

import numpy as np
import pandas as pd

from simulator.config.serving import PoissonArrivals, ServingError, ServingSpec
from simulator.serving.pricing import IterationPricer
from simulator.serving.simulate import ServingRun, StoppedEarly, simulate_serving, stop_when
from simulator.serving.stats import ServingSummary, request_table, summarize
from simulator.serving.workload import generate_requests

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
    given_up_at_per_s: float | None = None  # search_max_rate's give_up ended the search at this missed rate


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


def evaluate_verdict(
    spec: ServingSpec,
    pricer: IterationPricer | None,
    rate_per_s: float,
    base_dir: str | Path | None = None,
    simulate: Simulate | None = None,
) -> dict:
    """evaluate's curve row, or, when the deployment has fallen behind by the last measured arrival (the rate
    misses, whatever the rest of the run gives), a row with that verdict only: the run stops there."""
    try:
        with stop_when(falls_behind):
            return evaluate(spec, pricer, rate_per_s, base_dir, simulate)[0]
    except StoppedEarly as stop:
        row: dict = dict.fromkeys(CURVE_COLUMNS, math.nan)
        ratio = keep_up_ratio_of(stop.arrival_s, stop.finish_s)
        row.update(rate_per_s=rate_per_s, keep_up_ratio=ratio, keeps_up=False, all_targets_met=False)
        return row


def keep_up_ratio(table: pd.DataFrame) -> float:
    """Measured requests completed / measured requests arrived between the first measured completion and the
    last measured arrival: ~1 in a stable queue (what arrives leaves), capacity / rate in an overloaded one;
    0 when every request arrived before the first one finished, inf when no request arrived in between."""
    measured = table[~table["warmup"]]
    return keep_up_ratio_of(measured["arrival_s"].to_numpy(), measured["finish_s"].to_numpy())


def keep_up_ratio_of(arrival_s: np.ndarray, finish_s: np.ndarray) -> float:
    """keep_up_ratio of the measured requests' arrival and finish times. It reads no finish after the last
    arrival, so a run stopped there (unfinished requests at inf) gives the ratio of the whole run."""
    start, end = float(finish_s.min()), float(arrival_s.max())
    if not end > start:
        return 0.0
    arrived = int(((arrival_s > start) & (arrival_s <= end)).sum())
    done = int(((finish_s > start) & (finish_s <= end)).sum())
    return done / arrived if arrived else math.inf


def falls_behind(arrival_s: np.ndarray, finish_s: np.ndarray) -> bool:
    """The rate misses whatever the rest of the run gives: checked when the last measured request has arrived
    (simulate.stop_when), with every measured request's arrival and finish so far (inf: not finished)."""
    return keep_up_ratio_of(arrival_s, finish_s) < KEEP_UP_FRACTION


def throughput_cap(spec: ServingSpec, rate_per_s: float, base_dir: str | Path | None = None) -> float:
    """Output tokens/s per GPU that no run of spec's workload at a rate below rate_per_s reports: the measured
    requests' output tokens over the span of their arrivals at rate_per_s, per GPU (stats.summarize divides by
    the window from the first measured arrival to the last measured finish, never shorter than that span).
    Runs share their random numbers (workload.py): at a lower rate the same requests arrive over a span longer
    by rate_per_s / rate, so the cap falls in proportion, and a search's found rate, below every rate it saw
    missed, reports less than the cap at any of them. inf where that does not hold: a workload that ends at
    workload.duration_s (how many requests arrive depends on the rate), or one measured request."""
    w = spec.workload
    if w.num_requests is None:
        return math.inf
    requests = generate_requests(at_rate(spec, rate_per_s), base_dir)[w.warmup_requests :]
    span_s = requests[-1].arrival_s - requests[0].arrival_s if requests else 0.0
    if not span_s > 0:
        return math.inf
    return sum(r.output_tokens for r in requests) / span_s / spec.num_gpus


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
    give_up: Callable[[float], bool] | None = None,
    verdict_only: bool = False,
) -> MaxRate:
    """max_rate without bounds: bracket from start_per_s by doubling (while every target holds) or
    halving (while one is missed), at most max_doublings times, then bisect the bracket. Every rate is
    simulated once; the curve holds them all, by rate.

    give_up(rate) is asked after each rate that misses (every rate found later is below it); True ends the
    search there, with given_up_at_per_s set (a caller that knows the result cannot matter: sweep.search).
    verdict_only: a rate whose deployment has fallen behind by its last measured arrival (falls_behind) stops
    there (simulate.stop_when) and gives a curve row with its verdict only (figures NaN); the found rate is
    the same. When even the lowest rate tried misses, that rate is simulated to the end for its figures."""
    t = spec.targets
    if all(v is None for v in (t.ttft_p99_s, t.tpot_p99_s, t.e2e_p99_s, t.min_goodput_fraction)):
        raise ServingError("targets: none given; set ttft_p99_s, tpot_p99_s, e2e_p99_s or min_goodput_fraction")
    if not start_per_s > 0:
        raise ServingError(f"start_per_s = {start_per_s} must be > 0")
    if not rel_tol > 0:
        raise ServingError(f"rel_tol = {rel_tol} must be > 0 (e.g. 0.02)")
    verdicts: dict[float, bool] = {}
    rows: dict[float, dict] = {}

    class GaveUp(Exception):
        pass

    def met(rate: float) -> bool:
        if rate not in verdicts:
            if verdict_only and progress is None:
                row = evaluate_verdict(spec, pricer, rate, base_dir, simulate)
            else:
                row, summary = evaluate(spec, pricer, rate, base_dir, simulate)
                if progress is not None:
                    progress(rate, summary)
            rows[rate] = row
            verdicts[rate] = bool(row["all_targets_met"])
            if not verdicts[rate] and give_up is not None and give_up(rate):
                raise GaveUp(rate)
        return verdicts[rate]

    def result(rate: float | None, capped: bool, given_up: float | None = None) -> MaxRate:
        curve = pd.DataFrame(list(rows.values()), columns=list(CURVE_COLUMNS))
        return MaxRate(rate, capped, curve.sort_values("rate_per_s", ignore_index=True), given_up)

    lo = hi = float(start_per_s)
    try:
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
                if verdict_only:  # the lowest rate's figures stand for the candidate: simulate it to the end
                    rows[lo] = evaluate(spec, pricer, lo, base_dir, simulate)[0]
                return result(None, False)
        while (hi - lo) / lo > rel_tol:
            mid = 0.5 * (lo + hi)
            if met(mid):
                lo = mid
            else:
                hi = mid
    except GaveUp as stop:
        return result(None, False, stop.args[0])
    return result(lo, False)
