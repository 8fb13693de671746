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


def build_slices(
    graph: Dag | nx.DiGraph,
    ops: pd.DataFrame,
    num_gpus: int,
    residual_bytes_per_token: float,
    tokens_per_pass: dict[str, float],
) -> Slices:
    """Unroll the trace. `tokens_per_pass[phase]`: tokens of one microbatch's pass on one dp rank."""
    res = Resources(num_gpus)
    rows, resources, acts = [], [], []
    for i, a in enumerate(row_attrs(graph, ops["node"].tolist())):
        kind = a["kind"]
        if kind == NodeKind.MARKER:
            continue
        held = node_resources(a, res)
        if kind == NodeKind.COMM:
            recv = dict(zip(a["gpu"], a["recv_bytes"]))
            for r in held:
                rows.append(i)
                resources.append(r)
                acts.append(recv[r - num_gpus] if num_gpus <= r < 2 * num_gpus else 0.0)
        else:
            for r in held:
                rows.append(i)
                resources.append(r)
                acts.append(a.get("act_bytes", 0.0))
    phase = ops["phase"].to_numpy()
    residual = np.zeros(len(ops))
    for name, tokens in tokens_per_pass.items():
        residual[phase == name] = tokens * residual_bytes_per_token
    return Slices(
        np.asarray(rows, dtype=np.int64),
        np.asarray(resources, dtype=np.int64),
        np.asarray(acts, dtype=float),
        residual,
        num_gpus,
    )


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
