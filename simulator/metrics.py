"""Metrics stage: trace -> TTFT, TPOT, throughput, memory per GPU, busy time, target verdicts.

Definitions (README, "Metrics"): all sequences arrive at t = 0; a sequence's first token exists
when the prefill pass of its microbatch ends; TPOT = (last token time - first token time) /
(output_len - 1); throughputs are tokens per millisecond per GPU over the time they refer to.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field

import networkx as nx
import numpy as np
import pandas as pd

from simulator.config import Scenario, gpus_per_node, resolve_hardware
from simulator.graph import COMM, MARKER, expand_per_gpu, placement_summary, routing_summary
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
    # MoE routing (graph.routing_summary) plus, from the trace: straggler_s, the time the busiest
    # rank's experts take beyond the mean rank's, summed over layers and passes; dropped_copies,
    # token copies dropped at capacity over the whole run.
    routing: dict = field(default_factory=dict)
    placement: dict = field(default_factory=dict)  # graph.placement_summary: which nodes each group landed on

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


def decode_step_weights(steps: tuple[int, ...], total_steps: int, warmup_steps: int = 0) -> dict[int, float]:
    """How many real decode steps each simulated step stands for.

    All steps simulated: 1 each. A sample (graph.sampled_decode_steps): the warm-up steps stand for
    themselves (transients); the time of the later steps is interpolated linearly in t between the
    samples (exact when a step's time is linear in its KV length, as memory-bound attention is),
    so each sample gets its share of the steps around it.
    """
    steps = tuple(sorted(steps))
    weights = {s: 0.0 for s in steps}
    if not steps:
        return weights
    if len(steps) == total_steps:
        return {s: 1.0 for s in steps}
    warm = [s for s in steps if s <= warmup_steps]
    for s in warm:
        weights[s] = 1.0
    rest = steps[len(warm):]
    for t in range(len(warm) + 1, total_steps + 1):
        j = bisect.bisect_right(rest, t) - 1
        if j < 0:
            weights[rest[0]] += 1.0
        elif rest[j] == t or j == len(rest) - 1:
            weights[rest[j]] += 1.0
        else:
            lam = (t - rest[j]) / (rest[j + 1] - rest[j])
            weights[rest[j]] += 1.0 - lam
            weights[rest[j + 1]] += lam
    return weights


def token_times(ops: pd.DataFrame, microbatches: int, weights: dict[int, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Time of the first and the last token of every microbatch.

    The last token time is the first plus the sum of every decode step's duration (the time
    between consecutive tokens of the microbatch), each weighted by the steps it stands for.
    """
    tokens = ops[ops["op"] == "token"]
    first = np.zeros(microbatches)
    decode: dict[int, list[tuple[int, float]]] = {mb: [] for mb in range(microbatches)}
    for phase, mb, step, end in zip(tokens["phase"], tokens["microbatch"], tokens["step"], tokens["end_s"]):
        if phase == "prefill":
            first[mb] = end
        else:
            decode[mb].append((step, end))
    last = first.copy()
    for mb, chain in decode.items():
        previous = first[mb]
        for step, end in sorted(chain):
            last[mb] += (weights or {}).get(step, 1.0) * (end - previous)
            previous = end
    return first, last


def busy_time(ops: pd.DataFrame, num_gpus: int, makespan_s: float, phase: str | None = None) -> dict[int, dict[str, float]]:
    """Seconds each GPU spends per category (collectives count on every member) and idle compute time."""
    frame = ops if phase is None else ops[ops["phase"] == phase]
    busy: dict[int, dict[str, float]] = {g: {} for g in range(num_gpus)}
    compute_busy = [0.0] * num_gpus
    durations = frame["weighted_s"] if "weighted_s" in frame else frame["duration_s"]
    # Plain lists: iterating a pandas string column goes through __getitem__ once per row.
    columns = (frame["kind"].tolist(), frame["gpu"].tolist(), frame["category"].tolist(), durations.tolist())
    for kind, gpu, cat, dur in zip(*columns):
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
    # Each mask once, and only the columns used: selecting rows of the string columns is most of the cost.
    in_phase, kind = ops["phase"] == phase, ops["kind"]
    frame = ops.loc[in_phase & (kind != MARKER) & (kind != COMM),
                    ["gpu", "category", "bound", "weighted_s", "duration_s", "end_s"]]
    if frame.empty:
        return f"{phase}: no work"
    per_gpu = frame.groupby("gpu")["weighted_s"].sum()
    gpu = int(per_gpu.idxmax())
    mine = frame[frame["gpu"] == gpu]
    by = mine.groupby(["category", "bound"])["weighted_s"].sum().sort_values(ascending=False)
    (cat, bound), top = by.index[0], by.iloc[0]
    comm = ops.loc[in_phase & (kind == COMM), ["gpu", "weighted_s"]]
    comm_s = sum(d for g, d in zip(comm["gpu"], comm["weighted_s"]) if gpu in g)
    span = frame["end_s"].max() - ops.loc[in_phase, "start_s"].min()
    span *= frame["weighted_s"].sum() / frame["duration_s"].sum() if frame["duration_s"].sum() else 1.0
    what = {"memory": "memory-bound", "compute": "compute-bound", "launch": "kernel-launch-bound",
            "fused": "fused"}.get(bound, bound)
    return (f"{phase} is bound by {cat} ({what}) on GPU {gpu}: {100 * top / mine['weighted_s'].sum():.0f}% of its "
            f"compute-stream time; communication occupies {100 * comm_s / span:.0f}% of the phase's span on that GPU")


EXPERT_OPS = ("expert_fc1", "expert_act", "expert_fc2")


def straggler_s(ops: pd.DataFrame) -> float:
    """Seconds the busiest GPU's routed-expert kernels take beyond the mean GPU's, per layer and
    pass of every stage, summed (weighted by the decode steps each sampled step stands for)."""
    frame = ops[ops["op"].isin(EXPERT_OPS)]
    if frame.empty:
        return 0.0
    per_gpu = frame.groupby(["phase", "step", "microbatch", "layer", "gpu"])["weighted_s"].sum()
    per_layer = per_gpu.groupby(level=[0, 1, 2, 3]).agg(["max", "mean"])
    return float((per_layer["max"] - per_layer["mean"]).sum())


def routing_metrics(graph: nx.DiGraph, scenario: Scenario, ops: pd.DataFrame, weights: dict[int, float]) -> dict:
    """Imbalance (max / mean tokens per EP rank), its straggler cost and the capacity drops."""
    summary = routing_summary(scenario)
    dropped = 0.0
    for a in graph._node.values():  # the node dicts, without NodeDataView's tuple per node
        if "dropped_copies" in a:
            dropped += a["dropped_copies"] * (weights.get(a["step"], 1.0) if a["phase"] == "decode" else 1.0)
    return {**summary, "straggler_s": straggler_s(ops), "dropped_copies": dropped}


def compute_metrics(graph: nx.DiGraph, scenario: Scenario, result: SimResult, capacity_bytes: float) -> Metrics:
    w, p = scenario.workload, scenario.parallel
    out = w.output_len_tokens
    sampled = tuple(graph.graph.get("decode_steps", range(1, out)))
    weights = decode_step_weights(sampled, out - 1, graph.graph.get("warmup_steps", 0))
    ops = result.ops.assign(weighted_s=result.ops["duration_s"] * np.where(
        result.ops["phase"] == "decode", result.ops["step"].map(weights).fillna(1.0), 1.0))
    first, last = token_times(ops, p.microbatches, weights)
    per_mb = w.batch_size // p.microbatches
    ttft = np.repeat(first, per_mb)
    tpot = float(np.mean((last - first) / (out - 1))) if out > 1 else 0.0
    total_s = float(max(last.max(), first.max()))
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
        busy_s=expand_per_gpu(busy_time(ops, gpus, total_s), graph),
        bottleneck={ph: _bottleneck(ops, ph) for ph in phases},
        routing=routing_metrics(graph, scenario, ops, weights) if scenario.model.is_moe else {},
        placement=placement_summary(scenario, gpus_per_node(scenario, resolve_hardware(scenario))),
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
