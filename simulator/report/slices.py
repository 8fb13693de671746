"""Reports stage: the engine's trace unrolled into busy intervals, one per (node, resource) it held.

Every picture and the Perfetto trace read this one table: a compute kernel is one slice on its
GPU's compute stream; a collective is a slice on the communication stream of every member and
on each link port (tx / rx) its bytes cross, exactly the resources the engine made it hold
(simulate.node_resources). It is saved beside ops.csv as `slices.npz` so that `moesim plot` can
redraw a run directory without the graph.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from simulator.files import OutputError, write_atomic
from simulator.graph import Dag, NodeKind, row_attrs
from simulator.simulate import Resources, node_resources

SLICES_FILE = "slices.npz"


@dataclass(frozen=True)
class Slices:
    """Busy intervals of a run, as parallel arrays (one entry per slice).

    Attributes:
        row: Row of the node in ops.csv (= engine task index).
        resource: Engine resource (Resources numbering: kind * num_gpus + gpu).
        act_bytes: Transient activation bytes the slice keeps alive on its GPU while it runs: a
            kernel's inputs and outputs that are neither weights nor KV cache; a collective's
            receive buffer on the member's communication stream; 0 on link ports.
        residual_bytes: Per ops row, the residual stream of the node's pass (the hidden states
            of its microbatch, held from the pass's first to its last op on a GPU).
        num_gpus: GPUs in the run.
    """

    row: np.ndarray
    resource: np.ndarray
    act_bytes: np.ndarray
    residual_bytes: np.ndarray
    num_gpus: int

    @property
    def gpu(self) -> np.ndarray:
        return self.resource % self.num_gpus

    @property
    def kind(self) -> np.ndarray:
        """Resource kind per slice: 0 compute stream, 1 comm stream, 2 link tx, 3 link rx (simulate.Resources)."""
        return self.resource // self.num_gpus


def _held(a: dict, res: Resources, num_gpus: int) -> tuple[list[int], list[float]]:
    """The resources one node holds and the activation bytes of each of its slices."""
    held = node_resources(a, res)
    if a["kind"] == NodeKind.COMM:
        recv = dict(zip(a["gpu"], a["recv_bytes"]))
        return list(held), [recv[r - num_gpus] if num_gpus <= r < 2 * num_gpus else 0.0 for r in held]
    return list(held), [a.get("act_bytes", 0.0)] * len(held)


def _unrolled_copies(dag: Dag, num_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, resource, act_bytes) per slice of a Dag in its own order: the slices of each distinct
    node once, then every node takes those of the node it copies (a copy holds the same resources
    and moves the same bytes; only its step, microbatch and layer differ)."""
    res = Resources(num_gpus)
    count = np.zeros(len(dag), dtype=np.int64)
    first = np.zeros(len(dag), dtype=np.int64)
    resources: list[int] = []
    acts: list[float] = []
    for i, a in dag.distinct():
        if a["kind"] == NodeKind.MARKER:
            continue
        held, act = _held(a, res, num_gpus)
        first[i], count[i] = len(resources), len(held)
        resources += held
        acts += act
    original = dag.original_array
    per_node = count[original]
    total = int(per_node.sum())
    # slice k of node i is entry first[original[i]] + k of the distinct nodes' lists
    starts = np.cumsum(per_node) - per_node
    index = np.repeat(first[original] - starts, per_node) + np.arange(total)
    return (
        np.repeat(np.arange(len(dag), dtype=np.int64), per_node),
        np.asarray(resources, dtype=np.int64)[index],
        np.asarray(acts, dtype=float)[index],
    )


def build_slices(
    graph: Dag | nx.DiGraph,
    ops: pd.DataFrame,
    num_gpus: int,
    residual_bytes_per_token: float,
    tokens_per_pass: dict[str, float],
) -> Slices:
    """Unroll the trace. `tokens_per_pass[phase]`: tokens of one microbatch's pass on one dp rank."""
    nodes = ops["node"].tolist()
    if isinstance(graph, Dag) and graph.names == nodes:
        rows, resources, acts = _unrolled_copies(graph, num_gpus)
    else:
        res = Resources(num_gpus)
        row_list: list[int] = []
        resource_list: list[int] = []
        act_list: list[float] = []
        for i, a in enumerate(row_attrs(graph, nodes)):
            if a["kind"] == NodeKind.MARKER:
                continue
            held, act = _held(a, res, num_gpus)
            row_list += [i] * len(held)
            resource_list += held
            act_list += act
        rows = np.asarray(row_list, dtype=np.int64)
        resources = np.asarray(resource_list, dtype=np.int64)
        acts = np.asarray(act_list, dtype=float)
    phase = ops["phase"].to_numpy()
    residual = np.zeros(len(ops))
    for name, tokens in tokens_per_pass.items():
        residual[phase == name] = tokens * residual_bytes_per_token
    return Slices(rows, resources, acts, residual, num_gpus)


def slices_of_run(run) -> Slices:
    """The slices of a pipeline.RunResult."""
    s = run.scenario
    m, w, p = s.model, s.workload, s.parallel
    seqs = w.batch_size / (p.dp * p.microbatches)
    return build_slices(
        run.dag,
        run.sim.ops,
        s.num_gpus,
        m.hidden_size * m.dtype_bytes_per_element,
        {"prefill": seqs * w.input_len_tokens, "decode": seqs},
    )


def save_slices(slices: Slices, path: Path) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        row=slices.row.astype(np.int32),
        resource=slices.resource.astype(np.int32),
        act_bytes=slices.act_bytes,
        residual_bytes=slices.residual_bytes,
        num_gpus=np.int64(slices.num_gpus),
    )
    write_atomic(path, buffer.getvalue())


def load_slices(path: Path) -> Slices:
    try:
        with np.load(path) as data:
            return Slices(
                data["row"].astype(np.int64),
                data["resource"].astype(np.int64),
                data["act_bytes"],
                data["residual_bytes"],
                int(data["num_gpus"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise OutputError(f"{path}: cannot read the slices ({exc}); rerun `moesim run` to rewrite it") from None
