"""Timing stage: put a duration and a resource set on every DAG node, run the engine, return the trace.

This is the only place where the graph meets the hardware: `costs` gives each node its time on
the profile, streams and link ports become engine resources, and the engine's start/end times
come back as a table (one row per node).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

import networkx as nx
import pandas as pd

from simulator import costs, engine
from simulator.config import Scenario, gpus_per_node
from simulator.graph import COMM, MARKER
from simulator.hardware import HardwareProfile

STREAMS = ("compute", "comm")


@dataclass(frozen=True)
class Resources:
    """Engine resource numbering: per GPU a compute stream, a communication stream, and the two
    directions of its port to the fabric (NVLink switch or NIC)."""

    num_gpus: int

    def compute(self, gpu: int) -> int:
        return gpu

    def comm(self, gpu: int) -> int:
        return self.num_gpus + gpu

    def tx(self, gpu: int) -> int:
        return 2 * self.num_gpus + gpu

    def rx(self, gpu: int) -> int:
        return 3 * self.num_gpus + gpu

    @property
    def count(self) -> int:
        return 4 * self.num_gpus

    def name(self, index: int) -> str:
        kind, gpu = divmod(index, self.num_gpus)
        return f"gpu{gpu}.{('compute', 'comm', 'tx', 'rx')[kind]}"


def node_time_s(attrs: dict, hw: HardwareProfile, gpn: int, eager: bool) -> tuple[float, str]:
    """Duration of one node on the profile, and what bounds it."""
    kind = attrs["kind"]
    if kind == MARKER:
        return 0.0, "none"
    if kind == COMM:
        gpus = attrs["gpu"]
        same_node = len({g // gpn for g in gpus}) == 1
        link = hw.intra_node if same_node else hw.inter_node
        coll, n = attrs["collective"], len(gpus)
        if coll == "all_reduce":
            t = costs.ring_allreduce_s(attrs["message_bytes"], n, link)
        elif coll in ("all_gather", "reduce_scatter"):
            t = costs.allgather_s(attrs["message_bytes"], n, link)
        elif coll == "all_to_all":
            t = costs.alltoall_s(list(attrs["send_bytes"]), list(attrs["recv_bytes"]), link)
        elif coll == "send_recv":
            t = costs.sendrecv_s(attrs["message_bytes"], link)
        else:
            raise ValueError(f"unknown collective {coll!r}")
        return t, ("nvlink" if same_node else "network")
    return costs.compute_op_s(
        attrs["flops"],
        attrs["bytes_read"] + attrs["bytes_written"],
        hw,
        attrs["dtype"],
        attrs["tensor_core"],
        attrs["launches"],
        eager,
    )


def node_resources(attrs: dict, res: Resources) -> tuple[int, ...]:
    """The engine resources a node holds while it runs: its GPU's compute stream; for a transfer,
    the communication stream of every member and the link directions its bytes cross."""
    kind = attrs["kind"]
    if kind == MARKER:
        return ()
    if kind != COMM:
        return (res.compute(attrs["gpu"]),)
    gpus = attrs["gpu"]
    if attrs["collective"] == "send_recv":
        src, dst = gpus
        return (res.comm(src), res.comm(dst), res.tx(src), res.rx(dst))
    return tuple(res.comm(g) for g in gpus) + tuple(res.tx(g) for g in gpus) + tuple(res.rx(g) for g in gpus)


@dataclass(frozen=True)
class SimResult:
    """The trace of one simulated run: one row per node, plus the engine's makespan."""

    ops: pd.DataFrame  # node, op, kind, category, phase, step, microbatch, layer, gpu, stream, start_s, end_s, ...
    makespan_s: float
    num_events: int


def simulate_dag(graph: nx.DiGraph, scenario: Scenario, hw: HardwareProfile) -> SimResult:
    """Cost every node, schedule the DAG on the engine and return the trace."""
    nodes = list(graph.nodes)  # creation order = scheduling priority
    index = {n: i for i, n in enumerate(nodes)}
    res = Resources(scenario.num_gpus)
    gpn = gpus_per_node(scenario, hw)
    prefill_eager = True  # prefill runs eagerly in both modes (vLLM captures decode only)
    decode_eager = scenario.runtime.mode == "eager"

    durations, bounds, resources, successors = [], [], [], []
    node_attrs = graph._node
    succ = graph._succ
    for n in nodes:
        a = node_attrs[n]
        eager = prefill_eager if a["phase"] == "prefill" else decode_eager
        t, bound = node_time_s(a, hw, gpn, eager)
        durations.append(t)
        bounds.append(bound)
        resources.append(node_resources(a, res))
        successors.append([index[v] for v in succ[n]])

    trace = engine.simulate(engine.EngineInput(durations, resources, successors, res.count))
    ops = _trace_table(graph, nodes, durations, bounds, trace)
    return SimResult(ops=ops, makespan_s=trace.makespan_s, num_events=trace.num_events)


_COLUMNS = ("op", "kind", "category", "phase", "step", "microbatch", "layer", "stage", "gpu", "flops",
            "bytes_read", "bytes_written")


def _trace_table(graph, nodes, durations, bounds, trace) -> pd.DataFrame:
    attrs = graph._node
    get = itemgetter(*_COLUMNS)
    frame = pd.DataFrame.from_records([get(attrs[n]) for n in nodes], columns=_COLUMNS)
    frame.insert(0, "node", nodes)
    frame["stream"] = frame["kind"].map({COMM: "comm", MARKER: "none"}).fillna("compute")
    frame["start_s"] = trace.start_s
    frame["end_s"] = trace.end_s
    frame["duration_s"] = durations
    frame["bound"] = bounds
    return frame
