"""Metrics stage: trace -> TTFT, TPOT, throughput, memory per GPU, busy time, target verdicts.

Definitions (docs/concepts.md, "Metrics"): all sequences arrive at t = 0; a sequence's first token exists
when the prefill pass of its microbatch ends; TPOT = (last token time - first token time) /
(output_len - 1); throughputs are tokens per millisecond per GPU over the time they refer to.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np

from simulator.config import Scenario, gpus_per_node
from simulator.config.hardware import HardwareProfile
from simulator.graph.dag import COMM, MARKER  # NodeKind members, bound once (hot loops)
from simulator.memory import GpuMemory, memory_per_gpu
from simulator.placement import expand_per_gpu, placement_summary, routing_summary
from simulator.simulate import SimResult, WeightedNode


@dataclass(frozen=True)
class Stats:
    mean: float
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> Stats:
        return cls(
            float(np.mean(values)),
            float(np.percentile(values, 50)),
            float(np.percentile(values, 99)),
            float(np.max(values)),
        )


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
    rest = steps[len(warm) :]
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


#: SimResult.weighted_nodes' rows: per distinct node and step, its count, weight and weighted seconds
Weighted = list[WeightedNode]


#: Veltkamp's splitter for doubles (2^27 + 1): splits a float into two halves of 26 bits.
_SPLITTER = 134217729.0


def repeated(value: float, count: int) -> tuple[float, ...]:
    """Floats whose exact sum is count x value, exactly (count < 2^26): the 26-bit halves of
    `value` (Veltkamp split) each times count, products that need no rounding. A sum of these
    through math.fsum equals the sum of `count` copies of value, term for term."""
    if count == 1:
        return (value,)
    c = _SPLITTER * value
    high = c - (c - value)
    return (count * high, count * (value - high))


class ExactSums(dict):
    """Sums by key whose terms are added exactly (math.fsum, a node's figure as repeated() for
    the nodes it stands for) and rounded once: a sum depends neither on the order of its terms
    nor on how nodes are grouped into originals and copies (a folded run sums to the same float
    as the full one, a copied layer to the same float as a built one)."""

    def add(self, key, value: float, count: int = 1) -> None:
        terms = self.get(key)
        if terms is None:
            terms = self[key] = []
        terms.extend(repeated(value, count))

    def total(self, key) -> float:
        return math.fsum(self.get(key, ()))

    def totals(self) -> dict:
        return {k: math.fsum(v) for k, v in self.items()}


def token_times(
    sim: SimResult, microbatches: int, weights: dict[int, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Time of the first and the last token of every microbatch.

    The last token time is the first plus the sum of every decode step's duration (the time
    between consecutive tokens of the microbatch), each weighted by the steps it stands for.
    """
    first_s = np.zeros(microbatches)
    decode: dict[int, list[tuple[int, float]]] = {mb: [] for mb in range(microbatches)}  # (step, token time)
    end_s, dag = sim.end_s, sim.dag
    for i in dag.instances([i for i, a in dag.distinct() if a["op"] == "token"]):
        a = dag.node_attrs(i)  # a copied pass's token: the microbatch is its own
        if a["phase"] == "prefill":
            first_s[a["microbatch"]] = end_s[i]
        else:
            decode[a["microbatch"]].append((a["step"], end_s[i]))
    last_s = first_s.copy()
    for mb, chain in decode.items():
        previous_s = first_s[mb]
        for step, token_s in sorted(chain):
            last_s[mb] += (weights or {}).get(step, 1.0) * (token_s - previous_s)
            previous_s = token_s
    return first_s, last_s


def busy_time(nodes: Weighted, num_gpus: int, makespan_s: float) -> dict[int, dict[str, float]]:
    """Seconds each GPU spends per category (collectives count on every member) and idle compute
    time, from SimResult.weighted_nodes' weighted seconds."""
    busy, compute_busy = ExactSums(), ExactSums()
    for _, a, count, _, weighted_s, _ in nodes:
        kind = a["kind"]
        if kind == MARKER:
            continue
        terms = repeated(weighted_s, count)
        gpu, cat = a["gpu"], a["category"]
        if kind == COMM:
            for g in gpu:
                busy.setdefault((g, cat), []).extend(terms)
        else:
            busy.setdefault((gpu, cat), []).extend(terms)
            compute_busy.setdefault(gpu, []).extend(terms)
    out: dict[int, dict[str, float]] = {g: {} for g in range(num_gpus)}
    for (g, cat), total in busy.totals().items():
        out[g][cat] = total
    for g in range(num_gpus):
        out[g]["idle"] = max(0.0, makespan_s - compute_busy.total(g))
    return out


def bottlenecks(sim: SimResult, nodes: Weighted, phases: list[str]) -> dict[str, str]:
    """Per phase, one sentence: what takes most of the busiest GPU's compute stream."""
    duration_s, bound = sim.duration_s, sim.bound
    per_gpu, by, comm = ExactSums(), ExactSums(), ExactSums()
    weighted, unweighted = ExactSums(), ExactSums()
    for i, a, count, _, weighted_s, _ in nodes:
        kind = a["kind"]
        if kind == MARKER:
            continue
        phase, terms = a["phase"], repeated(weighted_s, count)
        if kind == COMM:
            for g in a["gpu"]:
                comm.setdefault((phase, g), []).extend(terms)
            continue
        gpu = a["gpu"]
        per_gpu.setdefault((phase, gpu), []).extend(terms)
        by.setdefault((phase, gpu, a["category"], bound[i]), []).extend(terms)
        weighted.setdefault(phase, []).extend(terms)
        unweighted.setdefault(phase, []).extend(repeated(duration_s[i], count))
    spans = _phase_bounds(sim)
    gpu_s = per_gpu.totals()
    out = {}
    for phase in phases:
        mine = {g: s for (ph, g), s in gpu_s.items() if ph == phase}
        if not mine:
            out[phase] = f"{phase}: no work"
            continue
        gpu = max(sorted(mine), key=mine.__getitem__)  # the lowest of equals
        parts = {(c, b): math.fsum(terms) for (ph, g, c, b), terms in by.items() if ph == phase and g == gpu}
        cat, kernel_bound = max(sorted(parts), key=parts.__getitem__)
        first_s, last_s = spans[phase]  # the earliest start of the phase's nodes, the latest end of its kernels
        span_s = last_s - first_s
        plain_s = unweighted.total(phase)
        span_s *= weighted.total(phase) / plain_s if plain_s else 1.0
        what = {
            "memory": "memory-bound",
            "compute": "compute-bound",
            "launch": "kernel-launch-bound",
            "fused": "fused",
        }.get(kernel_bound, kernel_bound)
        out[phase] = (
            f"{phase} is bound by {cat} ({what}) on GPU {gpu}: {100 * parts[(cat, kernel_bound)] / mine[gpu]:.0f}% "
            f"of its compute-stream time; communication occupies {100 * comm.total((phase, gpu)) / span_s:.0f}% "
            f"of the phase's span on that GPU"
        )
    return out


def _phase_bounds(sim: SimResult) -> dict[str, tuple[float, float]]:
    """Per phase, the earliest start of its nodes and the latest end of its compute nodes (a copy
    has its original's phase and kind, but times of its own)."""
    dag = sim.dag
    n, distinct = len(dag), dag.distinct()
    phases: dict[str, int] = {}
    code = np.fromiter((phases.setdefault(a["phase"], len(phases)) for _, a in distinct), np.int64, len(distinct))
    kernel = np.fromiter((a["kind"] != MARKER and a["kind"] != COMM for _, a in distinct), bool, len(distinct))
    position = np.zeros(n, dtype=np.int64)  # of each distinct node in `distinct`
    position[np.fromiter((i for i, _ in distinct), np.int64, len(distinct))] = np.arange(len(distinct))
    of_node = position[dag.original_array]
    code, kernel = code[of_node], kernel[of_node]
    start, end = np.fromiter(sim.start_s, float, n), np.fromiter(sim.end_s, float, n)
    out = {}
    for phase, c in phases.items():
        mine = code == c
        ends = end[mine & kernel]
        out[phase] = (float(start[mine].min()), float(ends.max()) if ends.size else -math.inf)
    return out


EXPERT_OPS = ("expert_fc1", "expert_act", "expert_fc2")

#: The throughput figures of a run (Metrics.throughput's keys), in the order reports show them.
THROUGHPUTS = ("output_tokens_per_ms_per_gpu", "prefill_tokens_per_ms_per_gpu", "total_tokens_per_ms_per_gpu")


class _LayerExperts(NamedTuple):
    """straggler_s' sums for one layer of one pass: expert seconds per GPU, and the layer's count."""

    seconds_by_gpu: ExactSums
    copies: int


def straggler_s(nodes: Weighted) -> float:
    """Seconds the busiest GPU's routed-expert kernels take beyond the mean GPU's, per layer and
    pass of every stage, summed (weighted by the decode steps each sampled step stands for). A
    layer's copies repeat its figure: each layer counts once per copy (SimResult.weighted_nodes' counts)."""
    per_layer: dict[tuple, _LayerExperts] = {}
    for _, a, count, _, weighted_s, step in nodes:
        if a["op"] in EXPERT_OPS:
            key = (a["phase"], step, a["microbatch"], a["layer"])
            layer = per_layer.get(key)
            if layer is None:
                layer = per_layer[key] = _LayerExperts(ExactSums(), count)
            layer.seconds_by_gpu.add(a["gpu"], weighted_s)
    total = ExactSums()
    for seconds_by_gpu, count in per_layer.values():
        per_gpu_s = list(seconds_by_gpu.totals().values())
        total.add(0, max(per_gpu_s) - math.fsum(per_gpu_s) / len(per_gpu_s), count)
    return total.total(0)


def routing_metrics(scenario: Scenario, nodes: Weighted) -> dict:
    """Imbalance (max / mean tokens per EP rank), its straggler cost and the capacity drops."""
    summary = routing_summary(scenario)
    dropped = ExactSums()
    for _, a, count, weight, _, _ in nodes:
        if "dropped_copies" in a:
            dropped.add(0, a["dropped_copies"] * weight, count)
    return {**summary, "straggler_s": straggler_s(nodes), "dropped_copies": dropped.total(0)}


def compute_metrics(sim: SimResult, scenario: Scenario, hw: HardwareProfile, explain: bool = True) -> Metrics:
    """Every metric of a simulated run (the DAG is the trace's: sim.dag) on the scenario's hardware
    profile. `explain=False` leaves out the bottleneck sentences (a sweep ranks layouts by the
    figures alone and never shows them)."""
    w, p = scenario.workload, scenario.parallel
    dag = sim.dag
    out_tokens = w.output_len_tokens
    sampled = tuple(dag.graph.get("decode_steps", range(1, out_tokens)))
    weights = decode_step_weights(sampled, out_tokens - 1, dag.graph.get("warmup_steps", 0))
    nodes = sim.weighted_nodes(weights)
    first_s, last_s = token_times(sim, p.microbatches, weights)
    seqs_per_mb = w.batch_size // p.microbatches
    ttft_s = np.repeat(first_s, seqs_per_mb)
    tpot_s = float(np.mean((last_s - first_s) / (out_tokens - 1))) if out_tokens > 1 else 0.0
    total_s = float(max(last_s.max(), first_s.max()))
    prefill_s = float(first_s.max())
    gpus = scenario.num_gpus
    throughput = {
        "output_tokens_per_ms_per_gpu": w.batch_size * out_tokens / (total_s * 1e3) / gpus,
        "prefill_tokens_per_ms_per_gpu": w.batch_size * w.input_len_tokens / (prefill_s * 1e3) / gpus,
        "total_tokens_per_ms_per_gpu": w.batch_size * (w.input_len_tokens + out_tokens) / (total_s * 1e3) / gpus,
    }
    phases = ["prefill"] + (["decode"] if out_tokens > 1 else [])
    metrics = Metrics(
        ttft_s=Stats.of(ttft_s),
        tpot_s=tpot_s,
        prefill_s=prefill_s,
        decode_s=total_s - prefill_s,
        total_s=total_s,
        throughput=throughput,
        memory=memory_per_gpu(dag, scenario, hw.memory_bytes),
        busy_s=expand_per_gpu(busy_time(nodes, gpus, total_s), dag),
        bottleneck=bottlenecks(sim, nodes, phases) if explain else {},
        routing=routing_metrics(scenario, nodes) if scenario.model.is_moe else {},
        placement=placement_summary(scenario, gpus_per_node(scenario, hw)),
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
            results.append(
                TargetResult(name, "max", target.max, actual, actual <= target.max and math.isfinite(actual))
            )
    return Metrics(**{**metrics.__dict__, "targets": results})
