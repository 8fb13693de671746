"""Timing stage: put a duration and a resource set on every DAG node, run the engine, return the trace.

This is the only place where the graph meets the hardware: `costs` gives each node its time on
the profile, streams and link ports become engine resources, and the engine's start/end times
come back as a table (one row per node).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from typing import Sequence

import networkx as nx
import pandas as pd

from simulator import costs, engine
from simulator.config import DTYPE_BYTES, Scenario, gpus_per_node
from simulator.config.hardware import Calibration, HardwareProfile, series_interpolate
from simulator.graph import Dag, NodeKind


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


def node_time_s(attrs: dict, hw: HardwareProfile, gpn: int, eager: bool, gated: bool = False) -> tuple[float, str]:
    """Duration of one node on the profile, and what bounds it."""
    kind = attrs["kind"]
    if kind == NodeKind.MARKER:
        return 0.0, "none"
    if kind == NodeKind.COMM:
        gpus = attrs["gpu"]
        per_node: dict[int, int] = {}
        for g in gpus:
            per_node[g // gpn] = per_node.get(g // gpn, 0) + 1
        same_node = len(per_node) == 1
        link = hw.intra_node if same_node else hw.inter_node
        # collectives spanning nodes: hierarchical (NVLink inside each node, NICs between nodes)
        local, nodes = max(per_node.values()), len(per_node)
        intra, inter = hw.intra_node, hw.inter_node
        coll = attrs["collective"]
        if coll == "all_reduce":
            t = costs.hierarchical_allreduce_s(attrs["message_bytes"], local, nodes, intra, inter)
        elif coll in ("all_gather", "reduce_scatter"):
            t = costs.hierarchical_allgather_s(attrs["message_bytes"], local, nodes, intra, inter)
        elif coll == "all_to_all":
            t = costs.hierarchical_alltoall_s(list(attrs["send_bytes"]), list(attrs["recv_bytes"]), local, nodes,
                                              intra, inter)
        elif coll == "send_recv":
            t = costs.sendrecv_s(attrs["message_bytes"], link)
        else:
            raise ValueError(f"unknown collective {coll!r}")
        return t, ("nvlink" if same_node else "network")
    if hw.calibration is not None:
        return calibrated_node_s(attrs, hw, hw.calibration, eager, gated)
    return costs.compute_op_s(
        attrs["flops"],
        attrs["bytes_read"] + attrs["bytes_written"],
        hw,
        attrs["dtype"],
        attrs["tensor_core"],
        attrs["launches"],
        eager,
    )


#: Which measured element-wise class times each memory-bound op (per output byte).
ELEMENTWISE_CLASS = {"norm_attn": "rmsnorm", "norm_moe": "rmsnorm", "norm_ffn": "rmsnorm", "residual_add": "add"}


def calibrated_node_s(attrs: dict, hw: HardwareProfile, cal: Calibration, eager: bool, gated: bool) -> tuple[float, str]:
    """Time of a compute node from the profile's measured tables (see hardware.Calibration)."""
    op, dtype = attrs["op"], attrs["dtype"]
    b = DTYPE_BYTES[dtype]
    peak, hbm = hw.peak_for(dtype), hw.hbm_bytes_per_s
    floors = cal.eager_floor_s
    if "gemm" in attrs:
        m, k, n = attrs["gemm"]
        if "grouped" in attrs and attrs["grouped"][0] > 1:
            experts, rows = attrs["grouped"]
            frac = series_interpolate(cal.grouped_gemm, (experts, k, n), rows)
            t, bound = costs.calibrated_grouped_gemm_s(experts, rows, k, n, b, peak, hbm, frac, attrs.get("weight_b"))
            floor = floors["grouped_gemm"]
        else:
            frac = series_interpolate(cal.gemm, (k, n), m)
            t, bound = costs.calibrated_gemm_s(m, k, n, b, peak, hbm, frac, attrs.get("weight_b"))
            floor = floors["gemm"]
    elif attrs.get("fused") == "flash_attention":
        if op == "attn_softmax":
            return 0.0, "fused"  # inside the measured flash-attention rate
        d, q_len = attrs["head_dim"], attrs["q_len"]
        if q_len > 1:
            frac = series_interpolate(cal.attention_prefill, (d,), attrs["batch_heads"] * q_len * attrs["kv_len"])
        else:
            frac = series_interpolate(cal.attention_decode, (d,), attrs["kv_bytes_total"])
        t, bound = costs.calibrated_attention_s(attrs["flops"], attrs["bytes_read"] + attrs["bytes_written"], q_len,
                                                peak, hbm, frac)
        floor = floors["attention"]
    else:
        per_byte = cal.elementwise_s_per_byte
        if op == "topk":
            rows = attrs["in_shape"][0]
            t = rows * cal.topk_s_per_row + per_byte.get("softmax", 0.0) * attrs["bytes_read"]
        elif op in ("expert_act", "ffn_act", "shared_act"):
            # measured per byte of input: SwiGLU reads gate and up (twice its output), GELU reads what it writes
            t = per_byte["silu_mul" if gated else "gelu"] * attrs["bytes_read"]
        elif op in ELEMENTWISE_CLASS:
            t = per_byte[ELEMENTWISE_CLASS[op]] * attrs["bytes_written"]
        elif attrs.get("scatter_add") and "index_add" in per_byte:  # measured atomics, per byte of input
            t = per_byte["index_add"] * attrs["bytes_read"]
        else:  # gathers, scatters, weighted sums: at the measured copy rate on the bytes they move
            t = per_byte["copy"] * (attrs["bytes_read"] + attrs["bytes_written"]) / 2.0
        bound, floor = "memory", floors["elementwise"]
    return costs.eager_time_s(t, bound, attrs["launches"], hw.kernel_overhead_s, floor, eager)


def node_resources(attrs: dict, res: Resources, keep: frozenset[int] | None = None) -> tuple[int, ...]:
    """The engine resources a node holds while it runs: its GPU's compute stream; for a transfer,
    the communication stream of every member and the link directions its bytes cross. In a folded
    graph (`keep`: graph.symmetric_representatives) only the materialised members' resources."""
    kind = attrs["kind"]
    if kind == NodeKind.MARKER:
        return ()
    if kind != NodeKind.COMM:
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

    @classmethod
    def from_frame(cls, ops: pd.DataFrame, makespan_s: float, num_events: int = 0) -> "SimResult":
        """A trace given as a table with `ops`'s columns (a hand-made one, in tests)."""
        rows = ops.to_dict("records")
        dag = Dag([r["node"] for r in rows], rows, [-1] * len(rows), [], [], [], {})
        return cls(dag, ops["duration_s"].tolist(), ops["bound"].tolist(), ops["start_s"].tolist(),
                   ops["end_s"].tolist(), makespan_s, num_events)

    def weighted_nodes(self, weights: dict[int, float]) -> list[tuple[int, dict, int, float, float, int]]:
        """(index, attributes, count, weight, weighted seconds, step) per distinct node and step
        (Dag.counted): the nodes of that step it stands for (count: itself and its copies), the
        decode steps the step stands for (weight, from metrics.decode_step_weights; 1 in prefill)
        and one node's duration times that weight. Kept for the last `weights` asked for (metrics
        and cost shares ask alike)."""
        memo = self.__dict__.get("_weighted")
        if memo is not None and memo[0] == weights:
            return memo[1]
        duration = self.duration_s
        out = []
        for i, a, count, step in self.dag.counted():
            weight = weights.get(step, 1.0) if a["phase"] == "decode" else 1.0
            out.append((i, a, count, weight, duration[i] * weight, step))
        self.__dict__["_weighted"] = (dict(weights), out)
        return out

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
        frame["stream"] = frame["kind"].map({NodeKind.COMM: "comm", NodeKind.MARKER: "none"}).fillna("compute")
        frame["start_s"] = self.start_s
        frame["end_s"] = self.end_s
        frame["duration_s"] = self.duration_s
        frame["bound"] = self.bound
        return frame


def simulate_dag(graph: Dag | nx.DiGraph, scenario: Scenario, hw: HardwareProfile) -> SimResult:
    """Cost every node, schedule the DAG on the engine and return the trace."""
    dag = graph if isinstance(graph, Dag) else Dag.from_networkx(graph)
    res = Resources(scenario.num_gpus)
    gpn = gpus_per_node(scenario, hw)
    prefill_eager = True  # prefill runs eagerly in both modes (vLLM captures decode only)
    decode_eager = scenario.runtime.mode == "eager"
    gated = scenario.model.gated
    keep = frozenset(dag.graph.get("representatives") or ()) or None

    # Copies of an earlier node (graph.blocks.BlockBuilder.layer_reused) take its cost and resources: only
    # the distinct nodes are priced, then every node looks up its original (itself, or its twin).
    num = len(dag)
    durations: list[float] = [0.0] * num
    bounds: list[str] = [""] * num
    resources: list[tuple[int, ...]] = [()] * num
    held_of: dict[tuple, tuple[int, ...]] = {}  # each GPU (set) holds the same resources throughout
    for i, a in dag.distinct():
        eager = prefill_eager if a["phase"] == "prefill" else decode_eager
        durations[i], bounds[i] = node_time_s(a, hw, gpn, eager, gated)
        held_key = (a["kind"], a.get("gpu"), a.get("collective"))  # all node_resources reads (keep is fixed)
        held = held_of.get(held_key)
        if held is None:
            held = held_of[held_key] = node_resources(a, res, keep)
        resources[i] = held
    original = dag.original
    durations = list(map(durations.__getitem__, original))
    bounds = list(map(bounds.__getitem__, original))
    resources = list(map(resources.__getitem__, original))

    trace = engine.simulate(engine.EngineInput(durations, resources, dag.successors(), res.count))
    return SimResult(dag, durations, bounds, trace.start_s, trace.end_s, trace.makespan_s, trace.num_events)


_COLUMNS = ("op", "kind", "category", "phase", "step", "microbatch", "layer", "stage", "gpu", "flops",
            "bytes_read", "bytes_written")
_GPU = _COLUMNS.index("gpu")
