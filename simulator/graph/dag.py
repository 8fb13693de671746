"""Graph stage, the DAG itself: the node schema (kinds and attribute names) and the Dag container
that the builder fills and every later stage reads.
"""

from __future__ import annotations

import bisect
import enum
import sys
from functools import cached_property
from typing import NamedTuple, TypedDict

import networkx as nx
import numpy as np

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, enum.Enum):
        """A str whose str() and format() are its plain value, as enum.StrEnum's are."""

        def __str__(self) -> str:
            return str.__str__(self)

        def __format__(self, spec: str) -> str:
            return str.__format__(str.__str__(self), spec)


class NodeKind(StrEnum):
    """What a node is (its `kind` attribute). Members are str: files show the plain value."""

    COMPUTE = "compute"  # a kernel on one GPU
    COMM = "communication"  # a collective or point-to-point transfer over a group of GPUs
    ROUTING = "routing"  # a memory-bound routing/bookkeeping kernel (router, top-k, sample, PyTorch helpers)
    MARKER = "marker"  # zero-cost: phase start/end, a pass's token


#: The members as module constants, for the builder's hot paths (a module global is read several
#: times faster than an enum member on Python 3.11).
COMPUTE, COMM, ROUTING, MARKER = NodeKind.COMPUTE, NodeKind.COMM, NodeKind.ROUTING, NodeKind.MARKER


class NodeAttrs(TypedDict, total=False):
    """A node's attributes (the dict of each node; keys below, values in the units named)."""

    op: str  # operator name (q_proj, expert_fc1, tp_allreduce, token, ...)
    kind: NodeKind
    category: str  # cost category (attention, experts, tp_comm, ...)
    phase: str  # "prefill" or "decode"
    step: int  # decode step (0: prefill)
    microbatch: int  # -1: phase markers
    layer: int  # -1: outside the layers (embedding, head, markers, token transfers)
    stage: int  # pipeline stage
    gpu: int | tuple[int, ...] | None  # the GPU (compute), the group (communication), None (marker)
    flops: float  # floating-point operations
    bytes_read: float  # bytes read from HBM (communication: bytes sent over the group)
    bytes_written: float  # bytes written to HBM (communication: bytes received)
    act_bytes: float  # transient activation bytes, in + out (bytes_read + bytes_written - resident)
    in_shape: tuple  # elements per dimension (tokens, hidden, ...)
    out_shape: tuple
    tensor_core: bool  # a GEMM-like kernel on the tensor cores
    launches: int  # kernels launched
    dtype: str  # the activation dtype
    gemm: tuple  # (rows, k, n) of a GEMM, in elements
    weight_b: float  # bytes per weight element
    grouped: tuple  # (groups, rows per group) of a grouped GEMM
    experts: tuple  # expert ids of an expert node
    expert_tokens: tuple  # token copies per expert of an expert node
    dropped_copies: float  # token copies dropped at capacity (on one FC1 per EP group)
    scatter_add: bool  # the combine is an index_add (PyTorch per_expert MoE)
    host_sync: bool  # the host waits for this node to end before issuing more (a .tolist() of its result)
    helper_kernels: tuple  # (kernel class, bytes written, bytes read) per kernel of a PyTorch helper node (op_time)
    collective: str  # all_reduce, all_gather, all_to_all, send_recv
    group: str  # tp, ep, pp
    send_bytes: tuple  # bytes each member sends
    recv_bytes: tuple  # bytes each member receives
    message_bytes: float  # the collective's message size in bytes
    fused: str  # "flash_attention" for the three nodes of one attention kernel
    kv_len: int  # KV positions attended to
    q_len: int  # query positions per sequence
    head_dim: int  # elements per head for the scores
    batch_heads: float  # sequences x local heads
    kv_bytes_total: float  # bytes of the K and V (or latent) cache read


class CopiedBlock(NamedTuple):
    """A block of nodes copied from an earlier one (the builder's copies; see blocks.BlockBuilder.reused)."""

    first: int  # index of the copy's first node
    source_first: int  # the original block's nodes: source_first .. source_end - 1
    source_end: int
    prefix: str  # the copy's name prefix, which replaces the original's first `cut` characters
    cut: int
    fields: dict  # attributes the copy changes (step, microbatch, layer)


class Counted(NamedTuple):
    """A distinct node in one decode step and the nodes it stands for there (Dag.counted)."""

    node: int  # position in the Dag
    attrs: dict
    copies: int  # the nodes of that step it stands for: itself and its copies
    step: int


#: Attribute of a built networkx graph (not of the DAG, so not in graph.graph or any export): per
#: node, the index of the node it copies (see blocks.BlockBuilder.reused), or -1. A copy of the graph drops it.
TWINS = "moesim_twins"


class Dag:
    """The operator DAG in creation order, which is the engine's priority order.

    Node i has a name, an attribute dict and successors (node indices). `twins[i]` is the index of
    the node it copies (blocks.BlockBuilder.reused: same attributes but step, microbatch and layer, same
    cost) or -1; a copy's name and attributes are only made when asked for (`names`, `attrs`,
    `to_networkx`), so that simulating and measuring a sweep's layout never makes them: the
    simulation prices a copy as its original, and aggregates over nodes (metrics) count each
    original once per copy and step (`counted`: a decode layer may copy one of another step).
    `graph` holds the DAG's attributes, as networkx's does.
    """

    def __init__(
        self,
        names: list,
        attrs: list,
        twins: list[int],
        copies: list[CopiedBlock],
        src: list[int],
        dst: list[int],
        info: dict,
        steps: list[int] | None = None,
    ):
        self._names, self._attrs, self.twins, self._copies = names, attrs, twins, copies
        self.src, self.dst = src, dst
        self.graph = info
        # per node, its decode step (a layer copied from another step has its own); None: the originals'
        self._steps = steps
        self._distinct: list[tuple[int, dict]] | None = None
        self._counted: list[Counted] | None = None
        self._copy_starts = [c.first for c in copies]

    @classmethod
    def from_networkx(cls, graph: nx.DiGraph) -> Dag:
        """A networkx graph (build_dag's, or any with its node attributes), in node order."""
        names = list(graph.nodes)
        index = {n: i for i, n in enumerate(names)}
        src, dst = [], []
        for n, succ in graph._succ.items():
            i = index[n]
            for v in succ:
                src.append(i)
                dst.append(index[v])
        twins = getattr(graph, TWINS, None)
        if twins is None or len(twins) != len(names):
            twins = [-1] * len(names)
        return cls(names, [graph._node[n] for n in names], list(twins), [], src, dst, graph.graph)

    def __len__(self) -> int:
        return len(self.twins)

    def _materialise(self) -> None:
        names, attrs = self._names, self._attrs
        for first, n0, n1, prefix, cut, fields in self._copies:
            names[first : first + n1 - n0] = [prefix + nid[cut:] for nid in names[n0:n1]]
            # a copied decode layer's attention nodes have their own attributes already
            attrs[first : first + n1 - n0] = [
                {**a, **fields} if mine is None else mine
                for a, mine in zip(attrs[n0:n1], attrs[first : first + n1 - n0])
            ]
        self._copies, self._copy_starts = [], []

    @property
    def names(self) -> list[str]:
        """Every node's name (copies named on first use)."""
        self._materialise()
        return self._names

    @property
    def attrs(self) -> list[dict]:
        """Every node's attribute dict (copies made on first use)."""
        self._materialise()
        return self._attrs

    def distinct(self) -> list[tuple[int, dict]]:
        """(index, attributes) of every node that copies no other: maxima of what copies share
        with their original (kind, GPU, category, phase, duration, bytes) go over these alone;
        sums go over `counted`."""
        if self._distinct is None:
            attrs = self._attrs
            self._distinct = [(i, attrs[i]) for i, t in enumerate(self.twins) if t < 0]
        return self._distinct

    def counted(self) -> list[Counted]:
        """(index, attributes, count, step) per distinct node and decode step: a distinct node stands
        for `count` nodes of that step (itself and its copies there). A decode layer copied from
        another step shares all but its attention nodes with that step's, so its nodes count
        under their own step: sums weighted by step (metrics) go over these rows."""
        if self._counted is None:
            original = self.original_array
            steps = None if self._steps is None else np.fromiter(self._steps, np.int64, len(original))
            if steps is None or (steps == steps[original]).all():  # every copy in its original's step
                counts = np.bincount(original, minlength=len(original))
                self._counted = [Counted(i, a, int(counts[i]), a["step"]) for i, a in self.distinct()]
            else:
                span = int(steps.max()) + 1
                keys, counts = np.unique(original * span + steps, return_counts=True)
                attrs = self._attrs
                self._counted = [
                    Counted(int(k) // span, attrs[int(k) // span], int(c), int(k) % span) for k, c in zip(keys, counts)
                ]
        return self._counted

    @cached_property
    def original(self) -> list[int]:
        """Per node, the index of the distinct node it is (itself) or copies (its twin)."""
        return [i if t < 0 else t for i, t in enumerate(self.twins)]

    @cached_property
    def original_array(self) -> np.ndarray:
        """`original` as a numpy array."""
        return np.fromiter(self.original, np.int64, len(self.twins))

    def instances(self, distinct: list[int]) -> list[int]:
        """Every node that is, or copies, one of the given distinct nodes, in node order."""
        return np.flatnonzero(np.isin(self.original_array, distinct)).tolist()

    def node_attrs(self, i: int) -> dict:
        """Node i's attributes, made for this node alone if it is a copy not made yet."""
        a = self._attrs[i]
        if a is not None:
            return a
        r = bisect.bisect_right(self._copy_starts, i) - 1
        block = self._copies[r]
        return {**self.node_attrs(block.source_first + i - block.first), **block.fields}

    def successors(self) -> list[list[int]]:
        """Per node, the indices of its successors, in the order the edges were added."""
        succ: list[list[int]] = [[] for _ in self.twins]
        for u, v in zip(self.src, self.dst):
            succ[u].append(v)
        return succ

    def edge_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(source, target) node indices of every edge, as int64 arrays in the order the edges were added."""
        return (np.fromiter(self.src, np.int64, len(self.src)), np.fromiter(self.dst, np.int64, len(self.dst)))

    def edges_by_source(self) -> tuple[np.ndarray, np.ndarray]:
        """`edge_arrays` ordered as networkx lists the edges of `to_networkx()`: by source node, then
        in the order they were added (the builder adds each dependency once)."""
        src, dst = self.edge_arrays()
        order = np.argsort(src, kind="stable")
        return src[order], dst[order]

    def to_networkx(self) -> nx.DiGraph:
        names = self.names
        graph = digraph(
            list(zip(names, self.attrs)), [(names[u], names[v]) for u, v in zip(self.src, self.dst)], **self.graph
        )
        setattr(graph, TWINS, self.twins)
        return graph


def as_dag(graph: Dag | nx.DiGraph) -> Dag:
    """The graph as a Dag: itself, or a networkx graph's nodes in their order (attribute dicts shared)."""
    return graph if isinstance(graph, Dag) else Dag.from_networkx(graph)


def row_attrs(graph: Dag | nx.DiGraph, nodes: list[str]) -> list[dict]:
    """The attribute dicts of the named nodes, in that order (a Dag in its own order: its list)."""
    if isinstance(graph, Dag):
        if graph.names == nodes:
            return graph.attrs
        by_name = dict(zip(graph.names, graph.attrs))
    else:
        by_name = graph._node
    return [by_name[n] for n in nodes]


def node_dicts(graph: Dag | nx.DiGraph) -> list[dict]:
    """The attribute dicts of a graph's nodes; of a Dag, the distinct ones (a copy's equal its
    original's but for step, microbatch and layer): enough for maxima over nodes."""
    if isinstance(graph, Dag):
        return [a for _, a in graph.distinct()]
    return list(graph._node.values())


def digraph(nodes: list[tuple[str, dict]], edges: list[tuple[str, str]], **graph_attrs) -> nx.DiGraph:
    """A networkx DiGraph filled through its adjacency dicts.

    Same structure as add_nodes_from/add_edges_from (tests check it) at a fifth of the cost: those
    copy every attribute dict and re-check every node, which dominated building the seed DAG.
    """
    g = nx.DiGraph(**graph_attrs)
    node, succ, pred = g._node, g._succ, g._pred
    for nid, attrs in nodes:
        node[nid] = attrs
        succ[nid] = {}
        pred[nid] = {}
    for u, v in edges:
        if u not in node or v not in node:
            raise KeyError(f"edge {u} -> {v} names an unknown node")
        data: dict = {}
        succ[u][v] = data
        pred[v][u] = data
    return g
