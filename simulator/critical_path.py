"""Analysis stage: the critical path of a simulated run, and what bounds TTFT and TPOT.

The critical path is the chain of nodes that sets when a sink (the last token, or the first token
of the last microbatch) ends. It is read off the trace by walking back from the sink. The engine
starts a node at the first moment when all its predecessors have ended *and* every resource it
holds (stream, link port) is free, so a node's start time equals either

* the end of one of its predecessors (it waited for data: a *dependency* hop), or
* the end of a node that held one of its resources (it waited for a busy stream or link port:
  a *resource* hop, e.g. k_proj waiting for q_proj on the same compute stream), or
* the end of its host launch task (simulate.host_tasks: the host had not issued it yet): a *host*
  hop to its latest-ending predecessor, the gap between the two counted as host launch time.

The walk takes, at each node, a predecessor that ended exactly at the node's start; failing that
(the node was ready earlier), the resource holder that released at that instant. Ties go to the
longer node, then the lower index (the engine's priority). Every hop joins an end to a start, so
the path covers [0, sink end] without gaps and each category's share of the path is a share of the
end-to-end time. Cost: O(path length x degree) dictionary lookups plus one sort per resource.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import networkx as nx
import numpy as np
import pandas as pd

from simulator.graph import Dag, NodeKind, as_dag
from simulator.simulate import Resources, node_resources

#: Relative tolerance when matching an end time to a start time. The engine computes both with the
#: same additions, so they match exactly; the tolerance only absorbs a CSV round trip.
TIME_RTOL = 1e-12

#: Plain words for a category in a sentence.
CATEGORY_WORDS = {
    "attention": "attention",
    "experts": "expert FFNs",
    "router": "routing",
    "norm_residual": "norms and residual adds",
    "ffn": "dense FFN",
    "embed_head": "embedding and LM head",
    "tp_comm": "TP all-reduce/all-gather",
    "ep_comm": "EP all-to-all",
    "pp_comm": "pipeline send/recv",
    "marker": "markers",
    "host": "the host's kernel launches",
}

_BOUND_WORDS = {
    "memory": "memory-bound",
    "compute": "compute-bound",
    "launch": "kernel-launch-bound",
    "nvlink": "NVLink-bound",
    "network": "network-bound",
    "host": "host-bound",
}

#: Ops that stream the KV cache from HBM (the flash-attention pair of a decode step).
KV_READ_OPS = ("attn_scores", "attn_context")


@dataclass(frozen=True)
class CriticalPath:
    """A chain of trace rows, earliest first.

    Attributes:
        rows: Row positions in the ops table (= engine task indices).
        via: Per row, how its successor on the path waited for it: "dependency" or "resource"
            (the last row, the sink, has "sink").
        length_s: End time of the sink (= sum of the rows' durations).
    """

    rows: np.ndarray
    via: tuple[str, ...]
    length_s: float


class _Holders:
    """Answers 'which node holding one of these resources ended at t' from one sort of all end times;
    resource sets are computed only for the few nodes that end at such instants."""

    def __init__(self, attrs: list[dict], end_s: np.ndarray, num_gpus: int):
        self._attrs = attrs
        self._res = Resources(num_gpus)
        self._order = np.argsort(end_s, kind="stable")
        self._ends_s = end_s[self._order]
        self._cache: dict[int, tuple[int, ...]] = {}

    def resources(self, i: int) -> tuple[int, ...]:
        rs = self._cache.get(i)
        if rs is None:
            rs = self._cache[i] = node_resources(self._attrs[i], self._res)
        return rs

    def released_at(self, i: int, time_s: float) -> list[int]:
        """Nodes other than i that ended at time_s holding a resource node i holds."""
        mine = set(self.resources(i))
        if not mine:
            return []
        tol_s = TIME_RTOL * max(1.0, abs(time_s))
        lo = np.searchsorted(self._ends_s, time_s - tol_s, "left")
        hi = np.searchsorted(self._ends_s, time_s + tol_s, "right")
        return [j for j in self._order[lo:hi].tolist() if j != i and mine.intersection(self.resources(j))]


class _Rows(NamedTuple):
    """The graph in the rows of an ops table: per row its attributes, and its predecessors' rows
    (row i's are pred[first[i]:first[i + 1]])."""

    attrs: list[dict]
    pred: np.ndarray
    first: np.ndarray

    def predecessors(self, i: int) -> list[int]:
        return self.pred[self.first[i] : self.first[i + 1]].tolist()


def _rows(graph: Dag | nx.DiGraph, nodes: list[str]) -> _Rows:
    """`graph` indexed by the rows of a table whose `node` column is `nodes` (the Dag's own order,
    as simulate.simulate_dag makes it, needs no lookup)."""
    dag = as_dag(graph)
    src, dst = dag.edge_arrays()
    attrs = dag.attrs
    if dag.names != nodes:
        index = {n: i for i, n in enumerate(nodes)}
        row_of = np.fromiter((index[n] for n in dag.names), np.int64, len(dag))
        src, dst = row_of[src], row_of[dst]
        by_row: list[dict] = [{}] * len(nodes)
        for r, a in zip(row_of.tolist(), attrs):
            by_row[r] = a
        attrs = by_row
    order = np.argsort(dst, kind="stable")
    first = np.searchsorted(dst[order], np.arange(len(nodes) + 1))
    return _Rows(attrs, src[order], first)


def walk_back(graph: Dag | nx.DiGraph, ops: pd.DataFrame, sinks: list[int], num_gpus: int) -> list[CriticalPath]:
    """The critical path to each sink row (see the module docstring for the rule).

    Assumes `ops` has one row per graph node in the order the engine received them (as
    simulate.simulate_dag returns it).
    """
    rows_of = _rows(graph, ops["node"].tolist())
    end_array = ops["end_s"].to_numpy(dtype=float)
    # Python lists: scalar indexing of numpy arrays in this loop would cost more than the walk.
    start_s, end_s, dur_s = ops["start_s"].tolist(), end_array.tolist(), ops["duration_s"].tolist()
    holders = _Holders(rows_of.attrs, end_array, num_gpus)
    paths = []
    for sink in sinks:
        rows, via = [sink], ["sink"]
        seen = {sink}
        i = sink
        while start_s[i] > TIME_RTOL:
            began_s = start_s[i]
            tol_s = TIME_RTOL * max(1.0, began_s)
            best, how = -1, ""
            for j in rows_of.predecessors(i):
                if (
                    j not in seen
                    and abs(end_s[j] - began_s) <= tol_s
                    and (best < 0 or (dur_s[j], -j) > (dur_s[best], -best))
                ):
                    best, how = j, "dependency"
            if best < 0:
                for j in holders.released_at(i, began_s):
                    if j not in seen and start_s[j] < began_s and (best < 0 or (dur_s[j], -j) > (dur_s[best], -best)):
                        best, how = j, "resource"
            if best < 0:  # it waited for the host's launch thread (simulate.host_tasks): the gap is host time
                for j in rows_of.predecessors(i):
                    if j not in seen and end_s[j] <= began_s + tol_s and (best < 0 or end_s[j] > end_s[best]):
                        best, how = j, "host"
            if best < 0:  # nothing explains the start
                break
            rows.append(best)
            via.append(how)
            seen.add(best)
            i = best
        paths.append(CriticalPath(np.asarray(rows[::-1], dtype=np.int64), tuple(via[::-1]), float(end_s[sink])))
    return paths


_COLUMNS = ["node", "op", "kind", "category", "phase", "step", "gpu", "start_s", "duration_s", "bound"]


def _path_frame(ops: pd.DataFrame, path: CriticalPath) -> pd.DataFrame:
    """The path's rows, plus one row (category and bound "host") per host hop for the time the GPU
    waited for the host to issue the next node."""
    frame = ops.iloc[path.rows][_COLUMNS]
    hops = [k for k, v in enumerate(path.via) if v == "host"]
    if not hops:
        return frame
    end_s, start_s = ops["end_s"].to_numpy(dtype=float), ops["start_s"].to_numpy(dtype=float)
    extra = []
    for k in hops:
        before, after = int(path.rows[k]), int(path.rows[k + 1])
        gap_s = float(start_s[after] - end_s[before])
        if gap_s > 0.0:
            waiting = ops.iloc[after]
            extra.append(
                {
                    "node": f"host launch before {waiting['node']}",
                    "op": "host_launch",
                    "kind": NodeKind.COMPUTE,
                    "category": "host",
                    "phase": waiting["phase"],
                    "step": waiting["step"],
                    # a collective waits for its members' hosts: shown on its first member
                    "gpu": waiting["gpu"][0] if isinstance(waiting["gpu"], tuple) else waiting["gpu"],
                    "start_s": float(end_s[before]),
                    "duration_s": gap_s,
                    "bound": "host",
                }
            )
    return pd.concat([frame, pd.DataFrame(extra, columns=_COLUMNS)], ignore_index=True) if extra else frame


def _breakdown(ops: pd.DataFrame, path: CriticalPath, span_s: float) -> dict:
    """Seconds and share of the span per category (the host's launch gaps as "host"), per (category,
    bound) and per GPU."""
    frame = _path_frame(ops, path)
    frame = frame[frame["kind"] != NodeKind.MARKER]
    dur_s = frame["duration_s"].tolist()
    cats = frame["category"].tolist()
    seconds: dict[str, float] = defaultdict(float)
    for c, d_s in zip(cats, dur_s):
        seconds[c] += d_s
    seconds = dict(sorted(seconds.items(), key=lambda kv: (-kv[1], kv[0])))
    where: dict[str, float] = defaultdict(float)  # seconds by place
    for kind, gpu, d_s in zip(frame["kind"].tolist(), frame["gpu"].tolist(), dur_s):
        where["links" if kind == NodeKind.COMM else f"GPU {gpu}"] += d_s
    waits = sum(1 for v in path.via if v == "resource")
    return {
        "length_s": span_s,
        "nodes": int(len(path.rows)),
        "seconds": seconds,
        "shares": {c: (s / span_s if span_s > 0 else 0.0) for c, s in seconds.items()},
        "seconds_by_place": dict(sorted(where.items(), key=lambda kv: (-kv[1], kv[0]))),
        "resource_waits": waits,
    }


def _describe(frame: pd.DataFrame, span_s: float, what: str, per: str) -> str:
    """One sentence: the category with most time on the path, its main bound, ops and GPUs, and
    the next categories. Attention that is memory-bound in the flash-attention ops is named for
    what it does: reading the KV cache."""
    frame = frame[frame["kind"] != NodeKind.MARKER]
    if frame.empty or span_s <= 0:
        return f"{what}: nothing on the critical path"
    per_cat = frame.groupby("category")["duration_s"].sum().sort_values(ascending=False, kind="stable")
    cat, cat_s = per_cat.index[0], float(per_cat.iloc[0])
    mine = frame[frame["category"] == cat]
    per_bound = mine.groupby("bound")["duration_s"].sum().sort_values(ascending=False, kind="stable")
    bound, bound_s = per_bound.index[0], float(per_bound.iloc[0])
    main = mine[mine["bound"] == bound]
    op_s = main.groupby("op")["duration_s"].sum().sort_values(ascending=False, kind="stable")
    top_ops = [o for o, t in op_s.items() if t >= 0.2 * bound_s][:3]
    ops_text = " and ".join(top_ops) if len(top_ops) <= 2 else ", ".join(top_ops[:-1]) + " and " + top_ops[-1]
    if cat.endswith("_comm"):
        place = "the links"
    else:
        gpus = main.groupby("gpu")["duration_s"].sum().sort_values(ascending=False, kind="stable")
        ids = sorted(int(g) for g, t in gpus.items() if t >= 0.2 * bound_s)
        if ids:
            place = ("GPU " if len(ids) == 1 else "GPUs ") + ", ".join(map(str, ids))
        else:  # spread thin, e.g. one GPU per pipeline stage
            every = sorted(int(g) for g in gpus.index)
            shown = ", ".join(map(str, every[:8])) + (", ..." if len(every) > 8 else "")
            place = f"{len(every)} GPUs in turn ({shown})"
    share = f"{100 * cat_s / span_s:.0f} %"
    inner = f"{100 * bound_s / span_s:.0f} %"
    if cat == "attention" and bound == "memory" and set(top_ops) <= set(KV_READ_OPS):
        head = (
            f"{what} is bound by KV-cache reads on {place}: {inner} of {per} is memory-bound {ops_text} "
            f"streaming the KV cache (attention in all: {share})"
        )
    else:
        head = (
            f"{what} is bound by {CATEGORY_WORDS.get(cat, cat)} on {place}: {share} of {per} "
            f"({inner} {_BOUND_WORDS.get(bound, bound)} {ops_text})"
        )
    rest = [
        f"{CATEGORY_WORDS.get(c, c)} {100 * t / span_s:.0f} %"
        for c, t in per_cat.iloc[1:].items()
        if t / span_s >= 0.05
    ][:2]
    return head + (f"; then {', '.join(rest)}" if rest else "")


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def analyse(graph: Dag | nx.DiGraph, ops: pd.DataFrame, num_gpus: int) -> tuple[dict, dict[str, CriticalPath]]:
    """Critical paths to the first token of the last microbatch (TTFT) and to the end of the run.

    Returns a JSON-ready summary (per path: length, node count, seconds and share per category and
    per place, resource waits; the decode part of the total path per decode step; one sentence
    each for TTFT and TPOT) and the paths themselves. With sampled decode steps the decode part is
    what was simulated; per-step figures average over the simulated steps.
    """
    end_s = ops["end_s"].to_numpy(dtype=float)
    is_token = (ops["op"] == "token").to_numpy()
    prefill_tokens = np.flatnonzero(is_token & (ops["phase"] == "prefill").to_numpy())
    ttft_sink = int(prefill_tokens[np.argmax(end_s[prefill_tokens])]) if len(prefill_tokens) else int(np.argmax(end_s))
    total_sink = int(len(end_s) - 1 - np.argmax(end_s[::-1]))  # the latest end; ties go to the last row
    ttft_path, total_path = walk_back(graph, ops, [ttft_sink, total_sink], num_gpus)
    result = {
        "ttft": {"sink": ops["node"].iat[ttft_sink], **_breakdown(ops, ttft_path, ttft_path.length_s)},
        "total": {"sink": ops["node"].iat[total_sink], **_breakdown(ops, total_path, total_path.length_s)},
    }
    frame = _path_frame(ops, ttft_path)
    sentences = {
        "ttft": _describe(
            frame, ttft_path.length_s, f"TTFT ({_fmt_ms(ttft_path.length_s)})", "the critical path to the first token"
        )
    }

    # The decode part: the path after its last prefill node (with several microbatches the path
    # can weave between one microbatch's prefill and another's decode before that).
    on_path = ops.iloc[total_path.rows][_COLUMNS]
    is_prefill = (on_path["phase"] == "prefill").to_numpy()
    first = int(np.flatnonzero(is_prefill)[-1]) + 1 if is_prefill.any() else 0
    decode = on_path.iloc[first:]
    steps = sorted(set(decode.loc[decode["kind"] != NodeKind.MARKER, "step"].tolist()))
    if steps:
        decode_start_s = float(decode["start_s"].iloc[0])
        decode_span_s = total_path.length_s - decode_start_s
        step_s = decode_span_s / len(steps)
        part = CriticalPath(total_path.rows[first:], total_path.via[first:], decode_span_s)
        per_step = _breakdown(ops, part, decode_span_s)
        result["decode_step"] = {
            "steps_on_path": len(steps),
            "step_s": step_s,
            "shares": per_step["shares"],
            "seconds": {c: t / len(steps) for c, t in per_step["seconds"].items()},
        }
        sentences["tpot"] = _describe(
            _path_frame(ops, part), decode_span_s, "TPOT", "each decode step's critical path"
        ) + (f"; a step takes {_fmt_ms(step_s)} on the path (mean of {len(steps)})")
    result["sentences"] = sentences
    return result, {"ttft": ttft_path, "total": total_path}


def path_table(ops: pd.DataFrame, path: CriticalPath) -> pd.DataFrame:
    """The path as a table (for critical_path.csv): one row per node, earliest first."""
    cols = [
        "node",
        "op",
        "category",
        "phase",
        "step",
        "microbatch",
        "layer",
        "gpu",
        "start_s",
        "end_s",
        "duration_s",
        "bound",
    ]
    frame = ops.iloc[path.rows][cols].reset_index(drop=True)
    frame["gpu"] = [
        ",".join(map(str, g)) if isinstance(g, tuple) else ("" if g is None else str(g)) for g in frame["gpu"]
    ]
    frame["waited_via"] = path.via
    return frame
