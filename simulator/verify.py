"""Graph checks: structural verification of the operator DAG and its per-GPU summary table."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd

from simulator.config import Scenario
from simulator.graph import Dag, NodeKind, as_dag
from simulator.memory import weight_bytes_per_gpu
from simulator.placement import Placement, gpu_ranges, routing_loads


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def verify_dag(graph: Dag | nx.DiGraph, scenario: Scenario) -> list[Check]:
    """Every structural property the DAG must have; each check says what it found.

    Works on the Dag's own lists and edge arrays (a networkx graph is read as a Dag in its node
    order), so verifying a run never builds a networkx graph; a DAG whose edges all point to later
    nodes (the builder's creation order) is acyclic without a sort."""
    dag = as_dag(graph)
    pl = Placement.of(scenario)
    names, attrs = dag.names, dag.attrs
    src, dst = dag.edge_arrays()
    forward = bool((src < dst).all())
    checks = []
    cycle = None if forward or _acyclic(len(dag), src, dst) else _cycle_text(graph)
    checks.append(Check("acyclic", cycle is None, "no cycle" if cycle is None else f"cycle through {cycle}"))
    parts = _weak_components(len(dag), src, dst)
    checks.append(Check("connected", parts == 1, f"{parts} weakly connected component(s)"))
    checks.append(_sources_and_sinks(names, attrs, src, dst))
    checks.append(_placement(names, attrs, pl))
    kept = frozenset(dag.graph.get("representatives") or ()) or None
    checks.append(_expert_ownership(names, attrs, pl, kept, scenario))
    checks.append(_collective_groups(names, attrs, pl))
    checks.append(
        _decode_order(dag, attrs, forward)
        if cycle is None
        else Check("decode steps ordered", False, "graph has a cycle")
    )
    return checks


def _acyclic(num_nodes: int, src: np.ndarray, dst: np.ndarray) -> bool:
    """Kahn's topological sort: every node is removed once its predecessors are."""
    indegree = np.bincount(dst, minlength=num_nodes).tolist()
    succ = _adjacency(num_nodes, src, dst)
    ready = [i for i in range(num_nodes) if indegree[i] == 0]
    removed = 0
    while ready:
        u = ready.pop()
        removed += 1
        for v in succ[u]:
            indegree[v] -= 1
            if indegree[v] == 0:
                ready.append(v)
    return removed == num_nodes


def _cycle_text(graph: Dag | nx.DiGraph) -> str:
    """Up to four nodes of a cycle of a cyclic graph (networkx finds it; only a broken DAG comes here)."""
    g = graph.to_networkx() if isinstance(graph, Dag) else graph
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:  # pragma: no cover - _acyclic said there is one
        return "no cycle found"
    return " -> ".join(u for u, _ in cycle[:4]) + (" ..." if len(cycle) > 4 else "")


def _adjacency(num_nodes: int, src: np.ndarray, dst: np.ndarray) -> list[list[int]]:
    """Per node, its successors (in the order the edges were added)."""
    succ: list[list[int]] = [[] for _ in range(num_nodes)]
    for u, v in zip(src.tolist(), dst.tolist()):
        succ[u].append(v)
    return succ


def _weak_components(num_nodes: int, src: np.ndarray, dst: np.ndarray) -> int:
    """Weakly connected components, by label propagation: each node takes the smallest label across
    its edges, then follows labels to their labels (pointer jumping), until nothing changes. A label
    is always a node of the same component, so at the end each component has one label."""
    if num_nodes == 0:
        return 0
    label = np.arange(num_nodes)
    while True:
        new = label.copy()
        low = np.minimum(label[src], label[dst])
        np.minimum.at(new, src, low)
        np.minimum.at(new, dst, low)
        while True:
            jumped = new[new]
            if (jumped == new).all():
                break
            new = jumped
        if (new == label).all():
            return len(np.unique(label))
        label = new


def _sources_and_sinks(names: list[str], attrs: list[dict], src: np.ndarray, dst: np.ndarray) -> Check:
    problems = []
    phase_of = [a.get("phase") for a in attrs]
    for phase in ("prefill", "decode"):
        mine = np.fromiter((p == phase for p in phase_of), bool, len(phase_of))
        if not mine.any():
            continue
        inner = mine[src] & mine[dst]  # an edge between two nodes of this phase
        has_pred = np.zeros(len(mine), bool)
        has_pred[dst[inner]] = True
        has_succ = np.zeros(len(mine), bool)
        has_succ[src[inner]] = True
        sources = [names[i] for i in np.flatnonzero(mine & ~has_pred).tolist()]
        sinks = [names[i] for i in np.flatnonzero(mine & ~has_succ).tolist()]
        if len(sources) != 1 or len(sinks) != 1:
            problems.append(
                f"{phase}: {len(sources)} sources ({', '.join(sources[:3])}), {len(sinks)} sinks ({', '.join(sinks[:3])})"
            )
    return Check(
        "one source and one sink per phase", not problems, "; ".join(problems) or "prefill and decode each have one"
    )


def _placement(names: list[str], attrs: list[dict], pl: Placement) -> Check:
    bad = []
    layers_of = {g: frozenset(pl.layers_of_gpu(g)) for g in range(pl.num_gpus)}
    for n, a in zip(names, attrs):
        if a["kind"] in (NodeKind.COMM, NodeKind.MARKER) or a["layer"] < 0:
            continue
        gpu = a["gpu"]
        layers = layers_of.get(gpu) if isinstance(gpu, int) else None
        if layers is None:
            bad.append(f"{n} on invalid GPU {gpu!r}")
        elif a["layer"] not in layers:
            bad.append(f"{n}: layer {a['layer']} is not on GPU {gpu}'s stage {pl.stage_of_gpu(gpu)}")
        if len(bad) >= 3:
            break
    return Check("every compute node on a GPU of its layer's stage", not bad, "; ".join(bad) or "all placed")


def _expert_ownership(
    names: list[str], attrs: list[dict], pl: Placement, kept: frozenset[int] | None, scenario: Scenario
) -> Check:
    """Each expert runs on its etp shards in each replica: on every GPU of the replica that holds it (with
    redundant copies, every GPU holding a copy in that layer's placement), or, in a DAG folded to representative
    GPUs (`kept`), on every one of those that is simulated."""
    if not pl.num_experts:
        return Check("each expert on exactly one EP rank per replica", True, "dense model: no experts")
    held_in: dict[int, dict[int, set[int]]] = {}  # layer -> gpu -> experts held

    def held(layer: int) -> dict[int, set[int]]:
        if layer not in held_in:
            slots = pl.rank_slots(tuple(routing_loads(scenario, layer)))
            held_in[layer] = {g: {e for e, _ in slots[pl.ep_rank_of(g)]} for g in range(pl.num_gpus)}
        return held_in[layer]

    replica_of = {g: i for s in range(pl.pp) for i, grp in enumerate(pl.ep_groups(s)) for g in grp}
    members = {(s, i): grp for s in range(pl.pp) for i, grp in enumerate(pl.ep_groups(s))}
    seen: dict[tuple, dict[int, set[int]]] = {}
    for n, a in zip(names, attrs):
        if a["op"] != "expert_fc1":
            continue
        gpu = a["gpu"]
        owners = seen.setdefault(
            (a["phase"], a["step"], a["microbatch"], a["layer"], pl.stage_of_gpu(gpu), replica_of[gpu]), {}
        )
        for e in a["experts"]:
            if e not in held(a["layer"])[gpu]:
                return Check(
                    "each expert on exactly one EP rank per replica", False, f"{n}: expert {e} not held by GPU {gpu}"
                )
            owners.setdefault(e, set()).add(gpu)
    for key, owners in seen.items():
        replica = members[key[4], key[5]]
        for e, gpus in owners.items():
            shards = [g for g in replica if e in held(key[3])[g] and (kept is None or g in kept)]
            if sorted(gpus) != shards:
                return Check(
                    "each expert on exactly one EP rank per replica",
                    False,
                    f"expert {e} runs on GPUs {sorted(gpus)} in {key[:5]} (expected its {len(shards)} shard(s) {shards})",
                )
    return Check(
        "each expert on exactly one EP rank per replica",
        True,
        f"{pl.num_experts} experts x {pl.dp * pl.tp // (pl.ep * pl.etp)} replica(s) per stage"
        + (f", {pl.redundant} redundant copies each" if pl.redundant else ""),
    )


def _collective_groups(names: list[str], attrs: list[dict], pl: Placement) -> Check:
    tp_groups = {tuple(pl.tp_group(s, d)) for s in range(pl.pp) for d in range(pl.dp)}
    ep_groups = {tuple(grp) for s in range(pl.pp) for grp in pl.ep_groups(s)}
    for n, a in zip(names, attrs):
        if a["kind"] != NodeKind.COMM:
            continue
        gpus, group = tuple(a["gpu"]), a["group"]
        if group == "tp" and gpus not in tp_groups:
            return Check("collectives only within their group", False, f"{n} spans {gpus}, not a TP group")
        if group == "ep" and gpus not in ep_groups:
            return Check("collectives only within their group", False, f"{n} spans {gpus}, not an EP group")
        if group == "pp":
            src, dst = gpus
            if pl.stage_of_gpu(src) == pl.stage_of_gpu(dst) or src % (pl.dp * pl.tp) != dst % (pl.dp * pl.tp):
                return Check(
                    "collectives only within their group",
                    False,
                    f"{n} sends {src}->{dst}, not matching ranks of two stages",
                )
    return Check("collectives only within their group", True, "TP, EP and pipeline transfers stay in their groups")


def _reaches(succ: list[list[int]], source: int, target: int) -> bool:
    """Whether a path leads from `source` to `target` (depth-first search)."""
    seen = {source}
    todo = [source]
    while todo:
        u = todo.pop()
        if u == target:
            return True
        for v in succ[u]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return False


def _reached_from(dag: Dag, sources: list[int]) -> list[int]:
    """Per node, a bit mask of the `sources` (bit k: sources[k]) it can be reached from (itself
    included), for a DAG whose edges all point to later nodes: one sweep of the edges by source
    node, as every edge into a node comes from an earlier one."""
    reach = [0] * len(dag)
    for k, i in enumerate(sources):
        reach[i] |= 1 << k
    src, dst = dag.edges_by_source()
    first = min(sources)
    start = int(np.searchsorted(src, first))  # nothing before the first source is reached
    for u, v in zip(src[start:].tolist(), dst[start:].tolist()):
        mask = reach[u]
        if mask:
            reach[v] |= mask
    return reach


def _decode_order(dag: Dag, attrs: list[dict], forward: bool) -> Check:
    chains: dict[int, list[tuple[int, int]]] = {}
    for i, a in enumerate(attrs):
        if a["op"] == "token":
            chains.setdefault(a["microbatch"], []).append((a["step"] if a["phase"] == "decode" else 0, i))
    names = dag.names
    tokens = [i for chain in chains.values() for _, i in chain]
    if forward and tokens:
        bit = {i: k for k, i in enumerate(tokens)}
        reach = _reached_from(dag, tokens)

        def follows(prev: int, n: int) -> bool:
            return bool(reach[n] >> bit[prev] & 1)
    else:
        succ = dag.successors()

        def follows(prev: int, n: int) -> bool:
            return _reaches(succ, prev, n)

    for mb, chain in sorted(chains.items()):
        chain.sort(key=lambda t: (t[0], names[t[1]]))  # by step, then name
        for (prev_step, prev), (step, n) in zip(chain, chain[1:]):
            if not follows(prev, n):
                return Check(
                    "decode steps ordered",
                    False,
                    f"token of step {step} (microbatch {mb}) does not follow step {prev_step}",
                )
    count = max((len(c) for c in chains.values()), default=0)
    return Check("decode steps ordered", True, f"{count} tokens per microbatch chain in order")


def per_gpu_table(graph: nx.DiGraph, scenario: Scenario) -> pd.DataFrame:
    """Per GPU: layers, experts, parameter bytes, FLOPs and bytes moved (compute + sent)."""
    pl = Placement.of(scenario)
    flops = [0.0] * pl.num_gpus
    moved = [0.0] * pl.num_gpus
    sent = [0.0] * pl.num_gpus
    for _, a in graph.nodes(data=True):
        if a["kind"] == NodeKind.MARKER:
            continue
        if a["kind"] == NodeKind.COMM:
            for g, s in zip(a["gpu"], a["send_bytes"]):
                sent[g] += s
        else:
            flops[a["gpu"]] += a["flops"]
            moved[a["gpu"]] += a["bytes_read"] + a["bytes_written"]
    rows = []
    for g in range(pl.num_gpus):
        layers = pl.layers_of_gpu(g)
        experts = pl.experts_of_gpu(g)
        rows.append(
            {
                "gpu": g,
                "stage": pl.stage_of_gpu(g),
                "layers": f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0]),
                "experts": (gpu_ranges(experts) if pl.redundant else f"{experts[0]}-{experts[-1]}") if experts else "-",
                "weight_bytes": weight_bytes_per_gpu(scenario, g),
                "flops": flops[g],
                "hbm_bytes": moved[g],
                "sent_bytes": sent[g],
            }
        )
    return pd.DataFrame(rows)
