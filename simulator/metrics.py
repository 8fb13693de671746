"""Metrics stage: trace -> TTFT, TPOT, throughput, memory per GPU, busy time, target verdicts.

Definitions (README, "Metrics"): all sequences arrive at t = 0; a sequence's first token exists
when the prefill pass of its microbatch ends; TPOT = (last token time - first token time) /
(output_len - 1); throughputs are tokens per millisecond per GPU over the time they refer to.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import networkx as nx
import numpy as np
import pandas as pd

from simulator.config import Scenario
from simulator.graph import COMM, MARKER
from simulator.memory import GpuMemory, memory_per_gpu
from simulator.simulate import SimResult


@dataclass(frozen=True)
class Stats:
    mean: float
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> "Stats":
        return cls(float(np.mean(values)), float(np.percentile(values, 50)), float(np.percentile(values, 99)),
                   float(np.max(values)))


@dataclass(frozen=True)
class TargetResult:
    metric: str
    bound: str  # "min" or "max"
    limit: float
    actual: float
    met: bool


@dataclass(frozen=True)
class Metrics:
    ttft_s: Stats
    tpot_s: float
    prefill_s: float
    decode_s: float
    total_s: float
    throughput: dict[str, float]  # {output,prefill,total}_tokens_per_ms_per_gpu
    memory: list[GpuMemory]
    busy_s: dict[int, dict[str, float]]  # gpu -> category -> seconds (plus "idle")
    bottleneck: dict[str, str]  # phase -> sentence
    targets: list[TargetResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"] = [
            {**asdict(m), "total_bytes": m.total_bytes, "utilization": m.utilization, "fits": m.fits}
            for m in self.memory
        ]
        d["busy_s"] = {str(k): v for k, v in self.busy_s.items()}
        return d


# ---------------------------------------------------------------------------------------------
# Timing metrics


def token_times(ops: pd.DataFrame, microbatches: int) -> tuple[np.ndarray, np.ndarray]:
    """End time of the first and the last token of every microbatch."""
    tokens = ops[ops["op"] == "token"]
    first = np.zeros(microbatches)
    last = np.zeros(microbatches)
    for phase, mb, end in zip(tokens["phase"], tokens["microbatch"], tokens["end_s"]):
        if phase == "prefill":
            first[mb] = end
        last[mb] = max(last[mb], end)
    return first, last


def busy_time(ops: pd.DataFrame, num_gpus: int, makespan_s: float, phase: str | None = None) -> dict[int, dict[str, float]]:
    """Seconds each GPU spends per category (collectives count on every member) and idle compute time."""
    frame = ops if phase is None else ops[ops["phase"] == phase]
    busy: dict[int, dict[str, float]] = {g: {} for g in range(num_gpus)}
    compute_busy = [0.0] * num_gpus
    for kind, gpu, cat, dur in zip(frame["kind"], frame["gpu"], frame["category"], frame["duration_s"]):
        if kind == MARKER:
            continue
        members = gpu if kind == COMM else (gpu,)
        for g in members:
            busy[g][cat] = busy[g].get(cat, 0.0) + dur
        if kind != COMM:
            compute_busy[gpu] += dur
    for g in range(num_gpus):
        busy[g]["idle"] = max(0.0, makespan_s - compute_busy[g])
    return busy


def _bottleneck(ops: pd.DataFrame, phase: str) -> str:
    """One sentence: what takes most of the busiest GPU's compute stream in this phase."""
    frame = ops[(ops["phase"] == phase) & (ops["kind"] != MARKER) & (ops["kind"] != COMM)]
    if frame.empty:
        return f"{phase}: no work"
    per_gpu = frame.groupby("gpu")["duration_s"].sum()
    gpu = int(per_gpu.idxmax())
    mine = frame[frame["gpu"] == gpu]
    by = mine.groupby(["category", "bound"])["duration_s"].sum().sort_values(ascending=False)
    (cat, bound), top = by.index[0], by.iloc[0]
    comm = ops[(ops["phase"] == phase) & (ops["kind"] == COMM)]
    comm_s = sum(d for g, d in zip(comm["gpu"], comm["duration_s"]) if gpu in g)
    span = frame["end_s"].max() - ops[ops["phase"] == phase]["start_s"].min()
    what = {"memory": "memory-bound", "compute": "compute-bound", "launch": "kernel-launch-bound",
            "fused": "fused"}.get(bound, bound)
    return (f"{phase} is bound by {cat} ({what}) on GPU {gpu}: {100 * top / mine['duration_s'].sum():.0f}% of its "
            f"compute-stream time; communication occupies {100 * comm_s / span:.0f}% of the phase's span on that GPU")


def compute_metrics(graph: nx.DiGraph, scenario: Scenario, result: SimResult, capacity_bytes: float) -> Metrics:
    w, p = scenario.workload, scenario.parallel
    first, last = token_times(result.ops, p.microbatches)
    per_mb = w.batch_size // p.microbatches
    ttft = np.repeat(first, per_mb)
    out = w.output_len_tokens
    tpot = float(np.mean((last - first) / (out - 1))) if out > 1 else 0.0
    total_s = result.makespan_s
    prefill_s = float(first.max())
    gpus = scenario.num_gpus
    throughput = {
        "output_tokens_per_ms_per_gpu": w.batch_size * out / (total_s * 1e3) / gpus,
        "prefill_tokens_per_ms_per_gpu": w.batch_size * w.input_len_tokens / (prefill_s * 1e3) / gpus,
        "total_tokens_per_ms_per_gpu": w.batch_size * (w.input_len_tokens + out) / (total_s * 1e3) / gpus,
    }
    phases = ["prefill"] + (["decode"] if out > 1 else [])
    metrics = Metrics(
        ttft_s=Stats.of(ttft),
        tpot_s=tpot,
        prefill_s=prefill_s,
        decode_s=total_s - prefill_s,
        total_s=total_s,
        throughput=throughput,
        memory=memory_per_gpu(graph, scenario, capacity_bytes),
        busy_s=busy_time(result.ops, gpus, total_s),
        bottleneck={ph: _bottleneck(result.ops, ph) for ph in phases},
    )
    return _with_targets(metrics, scenario)


def metric_value(metrics: Metrics, metric: str, stat: str = "max") -> float:
    if metric in metrics.throughput:
        return metrics.throughput[metric]
    if metric == "ttft_s":
        return getattr(metrics.ttft_s, stat)
    if metric == "memory_bytes_per_gpu":
        return max(m.total_bytes for m in metrics.memory)
    return float(getattr(metrics, metric))


def _with_targets(metrics: Metrics, scenario: Scenario) -> Metrics:
    results = []
    for name, target in scenario.targets.items():
        actual = metric_value(metrics, name, target.stat)
        if target.min is not None:
            results.append(TargetResult(name, "min", target.min, actual, actual >= target.min))
        else:
            assert target.max is not None
            results.append(TargetResult(name, "max", target.max, actual, actual <= target.max and math.isfinite(actual)))
    return Metrics(**{**metrics.__dict__, "targets": results})
