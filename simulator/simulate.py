"""Timing stage: put a duration and a resource set on every DAG node, run the engine, return the trace.

This is where the graph meets the hardware: `op_time` gives each node its time on the profile,
streams and link ports become engine resources, and the engine's start/end times
come back as a table (one row per node).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from typing import NamedTuple

import networkx as nx
import pandas as pd

from simulator import engine
from simulator.config import Scenario, gpus_per_node
from simulator.config.hardware import HardwareProfile
from simulator.graph import Dag
from simulator.graph.dag import COMM, MARKER  # NodeKind members, bound once (hot loops)
from simulator.graph.ragged import PIECEWISE_EAGER_OPS
from simulator.op_time import host_dispatch_s, node_time_s


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


class WeightedNode(NamedTuple):
    """One row of SimResult.weighted_nodes: a distinct node of one step and what it stands for."""

    node: int  # position in the Dag
    attrs: dict
    copies: int  # the nodes of that step it stands for: itself and its copies
    weight: float  # the decode steps its step stands for (metrics.decode_step_weights; 1 in prefill)
    weighted_s: float  # one node's duration times weight
    step: int


def node_resources(attrs: dict, res: Resources, keep: frozenset[int] | None = None) -> tuple[int, ...]:
    """The engine resources a node holds while it runs: its GPU's compute stream; for a transfer,
    the communication stream of every member and the link directions its bytes cross. In a folded
    graph (`keep`: graph.symmetric_representatives) only the materialised members' resources."""
    kind = attrs["kind"]
    if kind == MARKER:
        return ()
    if kind != COMM:
        return (res.compute(attrs["gpu"]),)
    gpus = attrs["gpu"] if keep is None else [g for g in attrs["gpu"] if g in keep]
    if attrs["collective"] == "send_recv":
        src, dst = gpus
        return (res.comm(src), res.comm(dst), res.tx(src), res.rx(dst))
    return tuple(res.comm(g) for g in gpus) + tuple(res.tx(g) for g in gpus) + tuple(res.rx(g) for g in gpus)


@dataclass(frozen=True, eq=False)
class SimResult:
    """The trace of one simulated run: per node of the DAG (in its order) the duration, what bounds
    it, start and end; and the engine's makespan. `ops` is the same as a table, one row per node."""

    dag: Dag
    duration_s: list[float]
    bound: list[str]
    start_s: Sequence[float]
    end_s: Sequence[float]
    makespan_s: float
    num_events: int
    host_busy_s: float = 0.0  # the hosts' launch threads' busy seconds, all GPUs together (host_tasks)

    @classmethod
    def from_frame(cls, ops: pd.DataFrame, makespan_s: float, num_events: int = 0) -> SimResult:
        """A trace given as a table with `ops`'s columns (a hand-made one, in tests)."""
        rows = ops.to_dict("records")
        dag = Dag([r["node"] for r in rows], rows, [-1] * len(rows), [], [], [], {})
        return cls(
            dag,
            ops["duration_s"].tolist(),
            ops["bound"].tolist(),
            ops["start_s"].tolist(),
            ops["end_s"].tolist(),
            makespan_s,
            num_events,
        )

    def weighted_nodes(self, weights: dict[int, float]) -> list[WeightedNode]:
        """One WeightedNode per distinct node and step (Dag.counted), its weight from `weights`
        (decode step -> the steps it stands for). Kept for the last `weights` asked for (metrics
        and cost shares ask alike)."""
        memo = self.__dict__.get("_weighted")
        if memo is not None:
            asked, rows = memo
            if asked == weights:
                return rows
        duration_s = self.duration_s
        rows = []
        for i, a, count, step in self.dag.counted():
            weight = weights.get(step, 1.0) if a["phase"] == "decode" else 1.0
            rows.append(WeightedNode(i, a, count, weight, duration_s[i] * weight, step))
        self.__dict__["_weighted"] = (dict(weights), rows)
        return rows

    @cached_property
    def ops(self) -> pd.DataFrame:
        """node, op, kind, category, phase, step, microbatch, layer, stage, gpu, flops, bytes_read,
        bytes_written, stream, start_s, end_s, duration_s, bound: one row per node."""
        get = itemgetter(*_COLUMNS)
        records = [get(a) for a in self.dag.attrs]
        frame = pd.DataFrame.from_records(records, columns=_COLUMNS)
        frame.insert(0, "node", self.dag.names)
        # ints, tuples and None: keep them as Python objects (a one-GPU run would otherwise turn to floats)
        frame["gpu"] = pd.Series([r[_GPU] for r in records], dtype=object)
        frame["stream"] = frame["kind"].map({COMM: "comm", MARKER: "none"}).fillna("compute")
        frame["start_s"] = self.start_s
        frame["end_s"] = self.end_s
        frame["duration_s"] = self.duration_s
        frame["bound"] = self.bound
        return frame


class HostTasks(NamedTuple):
    """The host launch threads as engine tasks (host_tasks): their durations and successors (numbered
    after the DAG's nodes), and per DAG node the host tasks it must precede (synchronisations)."""

    duration_s: list[float]
    successors: list[list[int]]
    sync_edges: list[tuple[int, int]]  # (DAG node, host task index) pairs


def host_tasks(dag: Dag, dispatch_s: Sequence[float], eager_decode: bool, graph_launch_s: float) -> HostTasks:
    """One launch thread per GPU (per process) that issues its kernels one after another in DAG order.

    Eager (prefill always, decode when runtime.mode is eager): each node with kernels gets a host task
    of `dispatch_s[node]` that the node waits for; the thread's tasks are chained, so the host runs
    ahead of the GPU streams until it must wait: after a node marked `host_sync` (a copy to the host,
    as the sorted MoE's bincount and `.tolist()` make) its thread's next task waits for that node to end.
    A node of n > 1 kernels waits only for the dispatch of its first kernel (a task of dispatch / n):
    its GPU work starts then, while the host issues the other n - 1 (a second task, which the thread's
    next task follows). The node's device time is then not stretched by its own later launches: exact
    when the host is ahead, optimistic by at most what the node's later kernels would wait when the
    GPU drains faster than the host issues them. CUDA graph
    (decode in cuda_graph mode): one task of `graph_launch_s` per GPU, decode step and microbatch,
    which every node of that step on that GPU waits for. Either way a pass of a decode step is issued
    only once the host has its input token: the first host task of each GPU in a decode pass waits
    for the token node of that microbatch's previous pass (the sampled tokens come to the host).
    """
    n = len(dag)
    durations: list[float] = []
    successors: list[list[int]] = []
    sync_edges: list[tuple[int, int]] = []
    last_task: dict[int, int] = {}  # per GPU: its thread's latest task (engine index)
    pending_sync: dict[int, int] = {}  # per GPU: a host_sync node its next task waits for
    open_pass: dict[int, tuple] = {}  # per GPU: the (phase, step, microbatch) its latest task belongs to
    graph_task: dict[int, int] = {}  # per GPU: the graph launch of its open pass (cuda_graph decode)
    last_token: dict[int, int] = {}  # per microbatch: its latest token node

    def new_task(g: int, duration_s: float, pass_key: tuple, token: int | None) -> int:
        t = n + len(durations)
        durations.append(duration_s)
        successors.append([])
        prev = last_task.get(g)
        if prev is not None:
            successors[prev - n].append(t)
        last_task[g] = t
        sync = pending_sync.pop(g, None)
        if sync is not None:
            sync_edges.append((sync, t))
        if open_pass.get(g) != pass_key:
            open_pass[g] = pass_key
            if token is not None:
                sync_edges.append((token, t))
        return t

    keep = dag.graph.get("representatives")
    kept = frozenset(keep) if keep else None
    for i, a in enumerate(dag.attrs):
        kind = a["kind"]
        if kind == MARKER:
            if a["op"] == "token":
                last_token[a["microbatch"]] = i
            continue
        gpus = a["gpu"] if kind == COMM else (a["gpu"],)
        if kind == COMM and kept is not None:
            gpus = [g for g in gpus if g in kept]
        phase, mb = a["phase"], a["microbatch"]
        pass_key = (phase, a["step"], mb)
        token = last_token.get(mb) if phase == "decode" else None
        graph_mode = phase == "decode" and not eager_decode
        for g in gpus:
            rest_s = None  # the dispatch of a multi-kernel node's later kernels
            if graph_mode:
                t = graph_task.get(g) if open_pass.get(g) == pass_key else None
                if t is None:
                    t = graph_task[g] = new_task(g, graph_launch_s, pass_key, token)
            elif dispatch_s[i] > 0.0 or kind == COMM:
                launches = a.get("launches", 1)
                first_s = dispatch_s[i] / launches if launches > 1 else dispatch_s[i]
                t = new_task(g, first_s, pass_key, token)  # the node starts once its first kernel is issued
                rest_s = dispatch_s[i] - first_s if launches > 1 else None
            else:
                continue  # a fused sub-op: issued with its kernel
            successors[t - n].append(i)
            if rest_s is not None:  # the host issues the rest while the node runs
                new_task(g, rest_s, pass_key, token)
            if a.get("host_sync") and not graph_mode:
                pending_sync[g] = i
    return HostTasks(durations, successors, sync_edges)


def simulate_dag(
    graph: Dag | nx.DiGraph,
    scenario: Scenario,
    hw: HardwareProfile,
    host_thread: bool = True,
    piecewise: bool = False,
    graph_outside_ops: frozenset[str] = frozenset(),
) -> SimResult:
    """Cost every node, schedule the DAG and the hosts' launch threads (host_tasks) on the engine and
    return the trace. Node durations are GPU (device) time; what the host adds shows as later starts.

    host_thread=False: no launch threads; an eagerly launched node instead takes at least its kernels'
    eager floors (op_time: the host's dispatch as a per-kernel minimum), a pass whose time is then a sum
    of node times (serving.dag_pricer decomposes passes so). piecewise (with host_thread False): prefill
    nodes replay piecewise CUDA graphs, only graph.ragged.PIECEWISE_EAGER_OPS launched eagerly.
    graph_outside_ops (with host_thread False): the decode nodes of these ops ('lm_head', 'sample') launched
    eagerly after a replayed decode graph (engine_profiles' cuda_graph.outside)."""
    if (piecewise or graph_outside_ops) and host_thread:
        raise ValueError("piecewise graphs are priced without launch threads (host_thread=False)")
    dag = graph if isinstance(graph, Dag) else Dag.from_networkx(graph)
    res = Resources(scenario.num_gpus)
    gpn = gpus_per_node(scenario, hw)
    decode_eager = scenario.runtime.mode == "eager"  # prefill runs eagerly in both modes (vLLM captures decode only)
    gated = scenario.model.gated
    custom_ar = scenario.runtime.custom_allreduce_max_bytes if scenario.runtime.allreduce == "custom" else None
    keep = frozenset(dag.graph.get("representatives") or ()) or None

    # Copies of an earlier node (graph.blocks.BlockBuilder.layer_reused) take its cost and resources: only
    # the distinct nodes are priced, then every node looks up its original (itself, or its twin).
    num = len(dag)
    durations_s: list[float] = [0.0] * num
    dispatch_s: list[float] = [0.0] * num
    bounds: list[str] = [""] * num
    resources: list[tuple[int, ...]] = [()] * num
    held_of: dict[tuple, tuple[int, ...]] = {}  # each GPU (set) holds the same resources throughout
    for i, a in dag.distinct():
        # device time: the host's dispatch is its own task (host_tasks), not a floor on the kernel
        eager = not host_thread and (
            (a["phase"] == "prefill" and (not piecewise or a.get("op") in PIECEWISE_EAGER_OPS))
            or decode_eager
            or (a["phase"] == "decode" and a.get("op") in graph_outside_ops)
        )
        durations_s[i], bounds[i] = node_time_s(a, hw, gpn, eager, gated, custom_ar)
        dispatch_s[i] = host_dispatch_s(a, hw)
        held_key = (a["kind"], a.get("gpu"), a.get("collective"))  # all node_resources reads (keep is fixed)
        held = held_of.get(held_key)
        if held is None:
            held = held_of[held_key] = node_resources(a, res, keep)
        resources[i] = held
    original = dag.original
    durations_s = list(map(durations_s.__getitem__, original))
    dispatch_s = list(map(dispatch_s.__getitem__, original))
    bounds = list(map(bounds.__getitem__, original))
    resources = list(map(resources.__getitem__, original))

    if not host_thread:
        trace = engine.simulate(engine.EngineInput(durations_s, resources, dag.successors(), res.count))
        return SimResult(dag, durations_s, bounds, trace.start_s, trace.end_s, trace.makespan_s, trace.num_events)
    host = host_tasks(dag, dispatch_s, decode_eager, hw.graph_launch_s)
    successors = dag.successors()
    for node, task in host.sync_edges:
        successors[node].append(task)
    trace = engine.simulate(
        engine.EngineInput(
            durations_s + host.duration_s,
            resources + [()] * len(host.duration_s),
            successors + host.successors,
            res.count,
        )
    )
    start_s, end_s = trace.start_s[:num], trace.end_s[:num]
    return SimResult(
        dag, durations_s, bounds, start_s, end_s, max(end_s, default=0.0), trace.num_events, sum(host.duration_s)
    )


_COLUMNS = (
    "op",
    "kind",
    "category",
    "phase",
    "step",
    "microbatch",
    "layer",
    "stage",
    "gpu",
    "flops",
    "bytes_read",
    "bytes_written",
)
_GPU = _COLUMNS.index("gpu")
