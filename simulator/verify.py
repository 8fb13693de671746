"""Graph checks: structural verification of the operator DAG and its per-GPU summary table."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import pandas as pd

from simulator.config import Scenario
from simulator.graph import NodeKind
from simulator.memory import weight_bytes_per_gpu
from simulator.placement import Placement


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def verify_dag(graph: nx.DiGraph, scenario: Scenario) -> list[Check]:
    """Every structural property the DAG must have; each check says what it found."""
    pl = Placement.of(scenario)
    checks = []
    cycle = _find_cycle(graph)
    checks.append(Check("acyclic", cycle is None, "no cycle" if cycle is None else f"cycle through {cycle}"))
    parts = nx.number_weakly_connected_components(graph) if graph.number_of_nodes() else 0
    checks.append(Check("connected", parts == 1, f"{parts} weakly connected component(s)"))
    checks.append(_sources_and_sinks(graph))
    checks.append(_placement(graph, pl))
    checks.append(_expert_ownership(graph, pl))
    checks.append(_collective_groups(graph, pl))
    checks.append(_decode_order(graph) if cycle is None else Check("decode steps ordered", False, "graph has a cycle"))
    return checks


def _find_cycle(graph: nx.DiGraph) -> str | None:
    if nx.is_directed_acyclic_graph(graph):  # a topological sort: linear and fast
        return None
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return None
    return " -> ".join(u for u, _ in cycle[:4]) + (" ..." if len(cycle) > 4 else "")


def _sources_and_sinks(graph: nx.DiGraph) -> Check:
    problems = []
    phase_of = dict(graph.nodes(data="phase"))
    for phase in ("prefill", "decode"):
        nodes = [n for n, p in phase_of.items() if p == phase]
        if not nodes:
            continue
        sources = [n for n in nodes if not any(phase_of[u] == phase for u in graph._pred[n])]
        sinks = [n for n in nodes if not any(phase_of[v] == phase for v in graph._succ[n])]
        if len(sources) != 1 or len(sinks) != 1:
            problems.append(
                f"{phase}: {len(sources)} sources ({', '.join(sources[:3])}), {len(sinks)} sinks ({', '.join(sinks[:3])})"
            )
    return Check(
        "one source and one sink per phase", not problems, "; ".join(problems) or "prefill and decode each have one"
    )


def _placement(graph: nx.DiGraph, pl: Placement) -> Check:
    bad = []
    for n, a in graph.nodes(data=True):
        if a["kind"] in (NodeKind.COMM, NodeKind.MARKER) or a["layer"] < 0:
            continue
        gpu = a["gpu"]
        if not isinstance(gpu, int) or not 0 <= gpu < pl.num_gpus:
            bad.append(f"{n} on invalid GPU {gpu!r}")
        elif a["layer"] not in pl.layers_of_gpu(gpu):
            bad.append(f"{n}: layer {a['layer']} is not on GPU {gpu}'s stage {pl.stage_of_gpu(gpu)}")
        if len(bad) >= 3:
            break
    return Check("every compute node on a GPU of its layer's stage", not bad, "; ".join(bad) or "all placed")


def _expert_ownership(graph: nx.DiGraph, pl: Placement) -> Check:
    if not pl.num_experts:
        return Check("each expert on exactly one EP rank per replica", True, "dense model: no experts")
    held = {g: set(pl.experts_of_gpu(g)) for g in range(pl.num_gpus)}
    replica_of = {g: i for s in range(pl.pp) for i, grp in enumerate(pl.ep_groups(s)) for g in grp}
    seen: dict[tuple, dict[int, set[int]]] = {}
    for n, a in graph.nodes(data=True):
        if a["op"] != "expert_fc1":
            continue
        gpu = a["gpu"]
        owners = seen.setdefault((a["phase"], a["step"], a["microbatch"], a["layer"], replica_of[gpu]), {})
        for e in a["experts"]:
            if e not in held[gpu]:
                return Check(
                    "each expert on exactly one EP rank per replica", False, f"{n}: expert {e} not held by GPU {gpu}"
                )
            owners.setdefault(e, set()).add(gpu)
    for key, owners in seen.items():
        for e, gpus in owners.items():
            if len(gpus) != pl.etp:
                return Check(
                    "each expert on exactly one EP rank per replica",
                    False,
                    f"expert {e} runs on GPUs {sorted(gpus)} in {key} (expected {pl.etp} shard(s))",
                )
    return Check(
        "each expert on exactly one EP rank per replica",
        True,
        f"{pl.num_experts} experts x {pl.dp * pl.tp // (pl.ep * pl.etp)} replica(s) per stage",
    )


def _collective_groups(graph: nx.DiGraph, pl: Placement) -> Check:
    tp_groups = {tuple(pl.tp_group(s, d)) for s in range(pl.pp) for d in range(pl.dp)}
    ep_groups = {tuple(grp) for s in range(pl.pp) for grp in pl.ep_groups(s)}
    for n, a in graph.nodes(data=True):
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


def _decode_order(graph: nx.DiGraph) -> Check:
    chains: dict[int, list[tuple[int, str]]] = {}
    for n, a in graph.nodes(data=True):
        if a["op"] == "token":
            chains.setdefault(a["microbatch"], []).append((a["step"] if a["phase"] == "decode" else 0, n))
    for mb, chain in sorted(chains.items()):
        chain.sort()
        for (prev_step, prev), (step, n) in zip(chain, chain[1:]):
            if not nx.has_path(graph, prev, n):
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
                "experts": f"{experts[0]}-{experts[-1]}" if experts else "-",
                "weight_bytes": weight_bytes_per_gpu(scenario, g),
                "flops": flops[g],
                "hbm_bytes": moved[g],
                "sent_bytes": sent[g],
            }
        )
    return pd.DataFrame(rows)
