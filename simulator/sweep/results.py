"""Sweep stage, results: one layout's row of the comparison, its target verdicts and where its GPU time goes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from simulator.config import ParallelSpec
from simulator.graph.dag import COMM, MARKER  # NodeKind members, bound once (hot loops)

#: Classes of GPU time a layout spends, in the order ties are broken.
COST_CLASSES = ("compute", "memory-bound", "kernel launches", "TP comm", "EP all-to-all", "pipeline bubbles")
#: The classes that are overhead rather than kernel work: what separates layouts of the same model.
OVERHEAD_CLASSES = ("kernel launches", "TP comm", "EP all-to-all", "pipeline bubbles")
_BOUND_CLASS = {"compute": "compute", "fused": "compute", "memory": "memory-bound", "launch": "kernel launches"}
_COMM_CLASS = {"tp_comm": "TP comm", "ep_comm": "EP all-to-all", "pp_comm": "pipeline bubbles"}


class TargetVerdict(NamedTuple):
    """One target of a layout: a plain record of `metrics.TargetResult`, light to ship between processes."""

    metric: str
    bound: str  # "min" or "max"
    limit: float
    actual: float
    met: bool

    @classmethod
    def of(cls, target) -> TargetVerdict:
        """The verdict of a `metrics.TargetResult`."""
        return cls(target.metric, target.bound, target.limit, target.actual, target.met)


@dataclass(frozen=True)
class LayoutResult:
    """One row of the comparison. status: 'ok' (simulated), 'screened' (cannot fit, not
    simulated; memory is the closed-form weights + KV cache + reserve) or 'failed' (error)."""

    index: int
    layout: ParallelSpec
    own: bool
    status: str
    error: str = ""
    ttft_mean_s: float = math.nan
    ttft_max_s: float = math.nan
    tpot_s: float = math.nan
    throughput: dict[str, float] = field(default_factory=dict)
    memory_bytes_per_gpu: float = math.nan
    capacity_bytes: float = math.nan
    targets: tuple[TargetVerdict, ...] = ()
    cost_shares: dict[str, float] = field(default_factory=dict)
    rank: int | None = None
    serving: dict[str, float] = field(default_factory=dict)  # serving objectives' figures (sweep.serving)
    sim_s: float = field(default=0.0, compare=False)  # wall time of the simulation, not a result

    @property
    def label(self) -> str:
        return self.layout.label

    @property
    def fits(self) -> bool:
        return self.memory_bytes_per_gpu <= self.capacity_bytes

    @property
    def all_met(self) -> bool:
        return self.status == "ok" and all(t.met for t in self.targets)

    @property
    def output_tput(self) -> float:
        return self.throughput.get("output_tokens_per_ms_per_gpu", math.nan)

    @property
    def dominant(self) -> str:
        if not self.cost_shares:
            return ""
        return max(COST_CLASSES, key=lambda c: (self.cost_shares.get(c, 0.0), -COST_CLASSES.index(c)))

    @property
    def overhead(self) -> str:
        """The largest overhead class with its share, e.g. 'pipeline bubbles 50%'; '' if none."""
        if not self.cost_shares:
            return ""
        cls = max(OVERHEAD_CLASSES, key=lambda c: (self.cost_shares.get(c, 0.0), -OVERHEAD_CLASSES.index(c)))
        share = self.cost_shares.get(cls, 0.0)
        return f"{cls} {100 * share:.0f}%" if share >= 0.005 else "none"


def cost_shares(run) -> dict[str, float]:
    """Share of all GPU time (makespan x GPUs) each cost class takes.

    Compute-stream busy time splits by what bounds each kernel (compute, memory, launch). Idle
    compute-stream time is first put down to communication the GPU was part of (exposed at most
    for as long as it lasted), by category; what is left waits on other pipeline stages: bubbles.
    Decode steps are weighted as the metrics weight them when decode steps are sampled.
    """
    from simulator.metrics import ExactSums, decode_step_weights

    busy, dag = run.metrics.busy_s, run.dag
    weights = decode_step_weights(
        dag.graph["decode_steps"], run.scenario.workload.output_len_tokens - 1, dag.graph.get("warmup_steps", 0)
    )
    nodes = run.sim.weighted_nodes(weights)
    comm_cats = {a["category"] for _, a, _, _, _, _ in nodes if a["kind"] == COMM}
    sums = ExactSums()
    bound = run.sim.bound
    for i, a, count, _, w, _ in nodes:
        if a["kind"] != COMM and a["kind"] != MARKER:
            sums.add(bound[i], w, count)
    by_bound = sums.totals()
    bound_total = math.fsum(by_bound.values()) or 1.0

    shares = dict.fromkeys(COST_CLASSES, 0.0)
    compute_stream_s = 0.0
    for per_cat in busy.values():
        idle = per_cat.get("idle", 0.0)
        compute_stream_s += sum(v for c, v in per_cat.items() if c not in comm_cats and c != "idle")
        comm = {c: per_cat.get(c, 0.0) for c in sorted(comm_cats)}  # a set's order varies by process: sum in one
        comm_s = sum(comm.values())
        exposed = min(idle, comm_s)
        for c, v in comm.items():
            cls = _COMM_CLASS.get(c, "pipeline bubbles")
            shares[cls] += exposed * v / comm_s if comm_s else 0.0
        shares["pipeline bubbles"] += idle - exposed
    for b, s in sorted(by_bound.items()):
        shares[_BOUND_CLASS.get(b, "compute")] += compute_stream_s * s / bound_total
    whole = sum(shares.values()) or 1.0
    return {c: v / whole for c, v in shares.items()}


def failed_result(index: int, layout: ParallelSpec, own: bool, exc: BaseException) -> LayoutResult:
    """The row of a layout whose simulation raised `exc`: its first line, after the exception's type."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return LayoutResult(
        index=index, layout=layout, own=own, status="failed", error=f"{type(exc).__name__}: {message}".rstrip(": ")
    )
