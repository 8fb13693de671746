"""Serving metrics stage: a ServingRun -> per-request table, latency percentiles, throughput, goodput, verdicts.

Definitions (as vLLM's `benchmark_serving.py`): TTFT = first token - arrival; TPOT = (finish - first token)
/ (output_tokens - 1), undefined (NaN, left out of TPOT statistics, and counted as meeting a TPOT target)
for a one-token output; ITL = gaps between consecutive tokens of a request, pooled over requests;
e2e = finish - arrival; queueing = first scheduled - arrival. Warmup requests are left out of everything.
Throughput counts the measured requests' tokens over the window from their first arrival to their last
finish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from simulator.config.serving import TargetsSpec
from simulator.serving.simulate import TIMESERIES_COLUMNS, ServingRun

LATENCY_METRICS = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queueing_s")
STATISTICS = ("mean", "p50", "p90", "p99", "max")


def request_table(run: ServingRun) -> pd.DataFrame:
    """One row per request (warmup ones included, flagged), by request_id."""
    r = run.records
    first_token_s = np.array([rec.token_times_s[0] for rec in r])
    finish_s = np.array([rec.finish_s for rec in r])
    arrival_s = np.array([rec.arrival_s for rec in r])
    output_tokens = np.array([rec.output_tokens for rec in r], dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot_s = np.where(output_tokens > 1, (finish_s - first_token_s) / (output_tokens - 1), math.nan)
    table = pd.DataFrame(
        {
            "request_id": np.array([rec.request_id for rec in r], dtype=np.int64),
            "replica": np.array([rec.replica for rec in r], dtype=np.int64),
            "warmup": np.array([rec.warmup for rec in r], dtype=bool),
            "input_tokens": np.array([rec.input_tokens for rec in r], dtype=np.int64),
            "output_tokens": output_tokens,
            "arrival_s": arrival_s,
            "first_scheduled_s": np.array([rec.first_scheduled_s for rec in r]),
            "first_token_s": first_token_s,
            "finish_s": finish_s,
            "preemptions": np.array([rec.preemptions for rec in r], dtype=np.int64),
        }
    )
    if run.prefix_cache is not None:  # prefix caching: the prompt tokens each read from the cache
        table["cached_tokens"] = np.array([rec.cached_tokens for rec in r], dtype=np.int64)
    if run.spec.workload.conversation is not None:  # conversations: each request's and its turn (1 = the first)
        table["conversation"] = np.array([rec.conversation for rec in r], dtype=np.int64)
        table["turn"] = np.array([rec.turn for rec in r], dtype=np.int64) + 1
    table["queueing_s"] = table["first_scheduled_s"] - arrival_s
    table["ttft_s"] = first_token_s - arrival_s
    table["tpot_s"] = tpot_s
    table["e2e_s"] = finish_s - arrival_s
    table["good"] = meets_targets(table, run.spec.targets)
    return table


def meets_targets(table: pd.DataFrame, targets: TargetsSpec) -> np.ndarray:
    """Per request: True when it meets every latency bound given (a NaN TPOT meets its bound)."""
    good = np.ones(len(table), dtype=bool)
    if targets.ttft_p99_s is not None:
        good &= table["ttft_s"].to_numpy() <= targets.ttft_p99_s
    if targets.tpot_p99_s is not None:
        tpot = table["tpot_s"].to_numpy()
        good &= np.isnan(tpot) | (tpot <= targets.tpot_p99_s)
    if targets.e2e_p99_s is not None:
        good &= table["e2e_s"].to_numpy() <= targets.e2e_p99_s
    return good


def inter_token_latencies_s(run: ServingRun) -> np.ndarray:
    """Gaps between consecutive output tokens, pooled over the measured requests."""
    times = [rec.token_times_s for rec in run.records if not rec.warmup and rec.output_tokens > 1]
    if not times:
        return np.empty(0)
    gaps = np.diff(np.concatenate(times))  # every request's gaps, and one between each request and the next
    ends = np.cumsum(np.fromiter(map(len, times), np.int64, len(times)))[:-1]
    return np.delete(gaps, ends - 1)


def describe(values: np.ndarray) -> dict[str, float]:
    """mean, p50, p90, p99, max of the non-NaN values (all NaN when there are none)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return {name: math.nan for name in STATISTICS}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"mean": float(v.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(v.max())}


@dataclass(frozen=True)
class ServingSummary:
    """Latency statistics (rows LATENCY_METRICS, columns STATISTICS), throughput and goodput figures, and
    one verdict per target given: (value, target, met)."""

    latency: pd.DataFrame
    figures: dict[str, float]
    verdicts: dict[str, tuple[float, float, bool]]

    @property
    def all_targets_met(self) -> bool:
        return all(met for _, _, met in self.verdicts.values())


def turn_rows(table: pd.DataFrame) -> list[dict]:
    """Per turn of a conversation workload (request_table's `turn` column), over the measured requests: how many,
    their mean prompt, the share of it read from the cache (NaN without prefix caching) and TTFT p50 / p99."""
    measured = table[~table["warmup"]]
    rows = []
    for turn, group in measured.groupby("turn"):
        prompt = int(group["input_tokens"].sum())
        cached = int(group["cached_tokens"].sum()) if "cached_tokens" in group else None
        ttft = group["ttft_s"].to_numpy()
        rows.append(
            {
                "turn": int(turn),
                "requests": len(group),
                "prompt_tokens_mean": prompt / len(group),
                "cached_fraction": math.nan if cached is None else cached / prompt,
                "ttft_p50_s": float(np.percentile(ttft, 50)),
                "ttft_p99_s": float(np.percentile(ttft, 99)),
            }
        )
    return rows


def summarize(run: ServingRun, table: pd.DataFrame | None = None) -> ServingSummary:
    """Summary of the measured (non-warmup) requests of a run; GPUs from the spec's replicas."""
    if table is None:
        table = request_table(run)
    measured = table[~table["warmup"]]
    latency = pd.DataFrame(
        {
            "ttft_s": describe(measured["ttft_s"].to_numpy()),
            "tpot_s": describe(measured["tpot_s"].to_numpy()),
            "itl_s": describe(inter_token_latencies_s(run)),
            "e2e_s": describe(measured["e2e_s"].to_numpy()),
            "queueing_s": describe(measured["queueing_s"].to_numpy()),
        }
    ).T.loc[list(LATENCY_METRICS), list(STATISTICS)]
    num_gpus = run.spec.num_gpus
    window_s = float(measured["finish_s"].max() - measured["arrival_s"].min())
    n = len(measured)
    input_tokens = int(measured["input_tokens"].sum())
    output_tokens = int(measured["output_tokens"].sum())
    good = int(measured["good"].sum())
    figures = {
        "num_requests": float(n),
        "num_gpus": float(num_gpus),
        "duration_s": window_s,
        "requests_per_s": n / window_s,
        "input_tokens_per_s": input_tokens / window_s,
        "output_tokens_per_s": output_tokens / window_s,
        "total_tokens_per_s": (input_tokens + output_tokens) / window_s,
        "output_tokens_per_s_per_gpu": output_tokens / window_s / num_gpus,
        "total_tokens_per_s_per_gpu": (input_tokens + output_tokens) / window_s / num_gpus,
        "output_tokens_per_ms_per_gpu": output_tokens / window_s / num_gpus / 1000.0,
        "total_tokens_per_ms_per_gpu": (input_tokens + output_tokens) / window_s / num_gpus / 1000.0,
        "goodput_requests_per_s": good / window_s,
        "goodput_fraction": good / n,
        "tpot_undefined_requests": float((measured["output_tokens"] == 1).sum()),
        "preemptions": float(run.preemptions),
        "mean_in_system": run.mean_in_system,
    }
    if run.disaggregation is not None:
        figures.update(transfer_figures(run, table))
    return ServingSummary(latency, figures, _verdicts(latency, figures, run.spec.targets))


def transfer_figures(run: ServingRun, table: pd.DataFrame | None = None) -> dict[str, float]:
    """A disaggregated run's KV transfers of the measured requests: time on the links (latency and
    contention included; start to last byte) and time waiting for a decode slot before it (prefill end to
    start), mean / p50 / p99, bytes per transfer; and per GPU port that carried KV, utilisation = bytes
    carried / (bandwidth x end_s) and busy fraction = time with a flow / end_s (the busiest port and the
    mean over those ports)."""
    d = run.disaggregation
    assert d is not None
    if table is None:
        table = request_table(run)
    measured = set(table.loc[~table["warmup"], "request_id"].tolist())
    t = d.transfers
    keep = np.array([rid in measured for rid in t["request_id"].tolist()], dtype=bool)
    on_link = (t["end_s"] - t["start_s"])[keep]
    waiting = (t["start_s"] - t["ready_s"])[keep]
    figures = {
        "transfers": float(keep.sum()),
        "transfer_bytes_mean": float(t["num_bytes"][keep].mean()) if keep.any() else math.nan,
    }
    for name, values in (("transfer", on_link), ("transfer_wait", waiting)):
        stats = describe(values)
        figures.update({f"{name}_{k}_s": stats[k] for k in ("mean", "p50", "p99", "max")})
    links = d.links
    if len(links["link"]) and run.end_s > 0:
        utilisation = links["carried_bytes"] / (links["bytes_per_s"] * run.end_s)
        busy = links["busy_s"] / run.end_s
        figures.update(
            {
                "link_utilisation_max": float(utilisation.max()),
                "link_utilisation_mean": float(utilisation.mean()),
                "link_busy_fraction_max": float(busy.max()),
            }
        )
    else:
        figures.update({"link_utilisation_max": 0.0, "link_utilisation_mean": 0.0, "link_busy_fraction_max": 0.0})
    return figures


def _verdicts(
    latency: pd.DataFrame, figures: dict[str, float], targets: TargetsSpec
) -> dict[str, tuple[float, float, bool]]:
    verdicts = {}
    for name, metric in (("ttft_p99_s", "ttft_s"), ("tpot_p99_s", "tpot_s"), ("e2e_p99_s", "e2e_s")):
        bound = getattr(targets, name)
        if bound is not None:
            value = float(latency.loc[metric, "p99"])
            # A NaN p99 (every output one token long) has no TPOT to miss.
            verdicts[name] = (value, bound, bool(math.isnan(value) or value <= bound))
    if targets.min_goodput_fraction is not None:
        value = figures["goodput_fraction"]
        verdicts["min_goodput_fraction"] = (value, targets.min_goodput_fraction, value >= targets.min_goodput_fraction)
    return verdicts


@dataclass(frozen=True)
class IterationProfile:
    """One replica's iterations (a lockstep group's replicas share each iteration's length), as an engine's
    iteration log would show them, to compare with one: the iterations that ran something, their mean length,
    the share that only decoded, with those iterations' median length and batch, and the median length and new
    tokens of those with a prefill chunk (NaN where there is none)."""

    iterations: int
    mean_s: float
    decode_share: float
    decode_p50_s: float
    decode_batch_p50: float
    mixed_p50_s: float
    mixed_new_tokens_p50: float
    balance_ratio: float = math.nan  # a lockstep group's (group_balance_ratio), NaN for independent replicas


def group_balance_ratio(run: ServingRun) -> float:
    """How evenly a lockstep group's ranks share its iterations' work, as TensorRT-LLM's attention-DP balance
    blog measures it: each iteration's mean over the ranks of the new tokens it computes divided by the largest
    (1: every rank computes as many; an idle rank's dummy pass counts 0), averaged over the iterations in which
    a rank computes any. NaN for independent replicas, one replica, or pipeline batches."""
    spec = run.spec
    if not spec.replicas.lockstep or len(run.peak_kv_blocks) < 2 or (spec.scheduler.pipeline_batches or 1) > 1:
        return math.nan
    ts = run.timeseries
    # A group's rows of one iteration share its start (they are written together, one per rank).
    _, group = np.unique(ts["start_s"], return_inverse=True)
    new = ts["new_tokens"].astype(float)
    largest = np.zeros(group.max() + 1 if len(group) else 0)
    np.maximum.at(largest, group, new)
    total = np.bincount(group, weights=new, minlength=len(largest))
    ranks = np.bincount(group, minlength=len(largest))
    busy = largest > 0
    if not busy.any():
        return math.nan
    return float(np.mean(total[busy] / ranks[busy] / largest[busy]))


def iteration_profile(run: ServingRun, replica: int = 0) -> IterationProfile | None:
    """The IterationProfile of `replica`'s rows of the run's time series (None when it ran nothing). An
    iteration only decodes when each of its sequences computes one token (new tokens = batch size)."""
    ts = run.timeseries
    mine = (ts["replica"] == replica) & (ts["batch_seqs"] > 0)
    if not mine.any():
        return None
    length, batch, new = ts["iteration_s"][mine], ts["batch_seqs"][mine], ts["new_tokens"][mine]
    decode = new == batch

    def median(values: np.ndarray) -> float:
        return float(np.median(values)) if len(values) else math.nan

    return IterationProfile(
        iterations=int(mine.sum()),
        mean_s=float(length.mean()),
        decode_share=float(decode.mean()),
        decode_p50_s=median(length[decode]),
        decode_batch_p50=median(batch[decode]),
        mixed_p50_s=median(length[~decode]),
        mixed_new_tokens_p50=median(new[~decode]),
        balance_ratio=group_balance_ratio(run),
    )


def timeseries_table(run: ServingRun) -> pd.DataFrame:
    """One row per replica per iteration: TIMESERIES_COLUMNS (queue, running batch, KV blocks, tokens)."""
    return pd.DataFrame({name: run.timeseries[name] for name in TIMESERIES_COLUMNS})


def throughput_series(run: ServingRun, bin_s: float) -> pd.DataFrame:
    """Output tokens per second in bins of bin_s (tokens counted when their iteration ends)."""
    if not bin_s > 0:
        raise ValueError(f"bin_s = {bin_s} must be > 0")
    ts = run.timeseries
    end_s = ts["start_s"] + ts["iteration_s"]
    bins = np.floor(end_s / bin_s).astype(np.int64)
    num_bins = int(bins.max()) + 1 if len(bins) else 0
    tokens = np.bincount(bins, weights=ts["tokens_out"], minlength=num_bins)
    return pd.DataFrame({"start_s": np.arange(num_bins) * bin_s, "output_tokens_per_s": tokens / bin_s})


def kv_cache_figures(run: ServingRun) -> dict[str, float]:
    """KV-cache use per replica: peak and time-averaged blocks (over [0, end_s]; an idle replica holds
    none), and both as fractions of the capacity; the peak is the busiest replica's, the mean the
    replicas' average."""
    ts = run.timeseries
    d = run.disaggregation
    if d is None:
        return _kv_figures(run, ts["kv_blocks_used"], ts["iteration_s"], run.peak_kv_blocks, "kv")
    # Disaggregated: the decode pool's (spec.scheduler is its), and the prefill pool's under prefill_kv_*.
    x = d.prefill_instances
    dec = ts["replica"] >= x
    figures = _kv_figures(run, ts["kv_blocks_used"][dec], ts["iteration_s"][dec], run.peak_kv_blocks[x:], "kv")
    pre = _kv_figures(
        run,
        ts["kv_blocks_used"][~dec],
        ts["iteration_s"][~dec],
        run.peak_kv_blocks[:x],
        "prefill_kv",
        d.prefill_kv_capacity_blocks,
    )
    return {**figures, **pre}


def _kv_figures(run: ServingRun, used, seconds, peaks, prefix: str, capacity: int | None = None) -> dict[str, float]:
    if capacity is None:
        capacity = run.spec.scheduler.kv_cache.capacity_blocks
    assert capacity is not None
    area = float(np.dot(used, seconds)) if len(seconds) else 0.0
    mean = area / run.end_s / len(peaks) if run.end_s > 0 else 0.0
    peak = float(max(peaks))
    return {
        f"{prefix}_capacity_blocks": float(capacity),
        f"{prefix}_peak_blocks": peak,
        f"{prefix}_mean_blocks": mean,
        f"{prefix}_peak_fraction": peak / capacity,
        f"{prefix}_mean_fraction": mean / capacity,
    }


def request_itl_table(run: ServingRun) -> pd.DataFrame:
    """Per request: the mean, p99 and max of its inter-token latencies (NaN for a one-token output)."""
    rows = []
    for rec in run.records:
        gaps = np.diff(rec.token_times_s)
        if len(gaps):
            rows.append((float(gaps.mean()), float(np.percentile(gaps, 99)), float(gaps.max())))
        else:
            rows.append((math.nan, math.nan, math.nan))
    return pd.DataFrame(rows, columns=["itl_mean_s", "itl_p99_s", "itl_max_s"])
