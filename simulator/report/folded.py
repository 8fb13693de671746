"""Report stage: the folded view of the operator DAG, a small subgraph for drawing.

The full seed graph has ~78k operators; the view keeps one microbatch, the first and last layer of
every pipeline stage and the first decode step, and folds the repeats into boxes whose edges stand for
the dependencies of the operators they replace.
"""

from __future__ import annotations

from collections import defaultdict

import networkx as nx

from simulator.graph import Dag, NodeKind, as_dag
from simulator.placement import represented_gpus

FOLDED = "folded"  # kind of the boxes that stand for folded operators
TRANSFER_OPS = frozenset({"pp_send", "token_send"})


def _span(values) -> str:
    """'1-6' for a contiguous run, '3' for one value, '1, 3, 5' otherwise."""
    v = sorted(set(values))
    if not v:
        return ""
    if len(v) > 1 and v[-1] - v[0] == len(v) - 1:
        return f"{v[0]}-{v[-1]}"
    return ", ".join(str(x) for x in v)


def gpu_list(gpus) -> str:
    """GPU numbers as '0-3' for a contiguous run of three or more, else '0,2'."""
    v = sorted(set(gpus))
    if len(v) >= 3 and v[-1] - v[0] == len(v) - 1:
        return f"{v[0]}-{v[-1]}"
    return ",".join(str(x) for x in v)


def pass_name(phase: str, step: int, mb: int) -> str:
    """'Prefill, microbatch 0' or 'Decode step 2, microbatch 0'."""
    return f"Prefill, microbatch {mb}" if phase == "prefill" else f"Decode step {step}, microbatch {mb}"


def stage_layers_of(g: Dag | nx.DiGraph) -> dict[int, list[int]]:
    """Layers each pipeline stage computes, read from its compute and routing operators."""
    layers: dict[int, set[int]] = defaultdict(set)
    for a in g.attrs if isinstance(g, Dag) else g._node.values():
        if a.get("kind") in (NodeKind.COMPUTE, NodeKind.ROUTING) and a.get("layer", -1) >= 0:
            layers[a["stage"]].add(a["layer"])
    return {s: sorted(v) for s, v in sorted(layers.items())}


def folded_view(g: Dag | nx.DiGraph, max_decode_steps: int = 1) -> tuple[nx.DiGraph, list[str]]:
    """A small subgraph of `g` for drawing, and sentences saying what was folded.

    Kept in full: the phase markers; prefill and the first `max_decode_steps` decode steps of the first
    microbatch, each with the first and last layer of every pipeline stage, the stage transfers and
    the token markers. Folded into one box each: the middle layers of a stage in a shown pass, the
    remaining decode steps, and (per phase) the other microbatches. A box inherits every edge between
    its operators and the rest of the graph, so the view keeps the dependency order of `g`.
    Assumes the node attributes written by `simulator.graph.build_dag`. Reads a Dag's own lists
    (a networkx graph is read as one, in its node order); only the view is a networkx graph.
    """
    dag = as_dag(g)
    names, attrs = dag.names, dag.attrs
    stage_layers = stage_layers_of(dag)
    middle = {s: set(ls[1:-1]) for s, ls in stage_layers.items()}
    mbs = sorted({a["microbatch"] for a in attrs if a.get("microbatch", -1) >= 0})
    first_mb = mbs[0] if mbs else 0

    key_of: list[str] = []
    boxes: dict[str, dict] = {}
    view = nx.DiGraph(**dag.graph)
    for n, a in zip(names, attrs):
        key = _fold_key(a, first_mb, max_decode_steps, middle)
        if key is None:
            view.add_node(n, **a)
            key_of.append(n)
            continue
        key_of.append(key)
        box = boxes.get(key)
        if box is None:
            box = boxes[key] = {
                "nodes": 0,
                "gpus": set(),
                "layers": set(),
                "steps": set(),
                "mbs": set(),
                "kv": set(),
                "phase": a["phase"],
                "stage": a["stage"],
            }
            view.add_node(key)  # attributes filled in below; added now to keep the graph's order
        box["nodes"] += 1
        gpu = a.get("gpu")
        box["gpus"].update(gpu if isinstance(gpu, tuple) else () if gpu is None else (gpu,))
        if a.get("layer", -1) >= 0:
            box["layers"].add(a["layer"])
        box["steps"].add(a["step"])
        box["mbs"].add(a["microbatch"])
        if "kv_len" in a:
            box["kv"].add(a["kv_len"])

    edges: dict[tuple[str, str], None] = {}  # ordered set: the drawing follows the graph's order
    src, dst = dag.edges_by_source()  # networkx's edge order
    for u, v in zip(src.tolist(), dst.tolist()):
        ku, kv = key_of[u], key_of[v]
        if ku != kv:
            edges[(ku, kv)] = None
    view.add_edges_from(edges)

    shown_steps = sorted(
        {a["step"] for _, a in view.nodes(data=True) if a.get("phase") == "decode" and a.get("microbatch") == first_mb}
    )
    for key, box in boxes.items():
        view.nodes[key].update(_box_attrs(key, box, stage_layers, first_mb, shown_steps))
    notes = _notes(dag, view, boxes, stage_layers, first_mb)
    return view, notes


def _fold_key(a: dict, first_mb: int, max_decode_steps: int, middle: dict[int, set[int]]) -> str | None:
    """The box a node folds into, or None to keep it."""
    mb, phase, step = a.get("microbatch", -1), a.get("phase"), a.get("step", 0)
    if mb < 0:
        return None  # phase markers
    if mb != first_mb:
        return f"fold.{phase}.microbatches"
    if phase == "decode" and step > max_decode_steps:
        return "fold.decode.steps"
    stage, layer = a.get("stage", -1), a.get("layer", -1)
    if a.get("op") not in TRANSFER_OPS and layer in middle.get(stage, ()):
        tag = "p" if phase == "prefill" else f"d{step}"
        return f"fold.{tag}.mb{mb}.s{stage}.layers"
    return None


def _plural(word: str, values) -> str:
    """'layer 3' or 'layers 1-6'."""
    n = len(set(values))
    return f"{word}{'' if n == 1 else 'es' if word.endswith('h') else 's'} {_span(values)}"


def _box_attrs(key: str, box: dict, stage_layers, first_mb: int, shown_steps: list[int]) -> dict:
    gpus = tuple(sorted(box["gpus"]))
    where = f"GPU {gpu_list(gpus)}" if gpus else ""
    if key.endswith(".layers"):
        head = f"{_plural('layer', box['layers'])}: same as layer {stage_layers[box['stage']][0]}"
        detail = [where]
    elif key == "fold.decode.steps":
        steps = _plural("decode step", box["steps"])
        if shown_steps:
            head = f"{steps}: same as step {shown_steps[-1]},\nKV length grows by one per step"
        else:
            head = f"{steps}: same layers as prefill,\none new token per sequence per step"
        detail = [f"microbatch {first_mb}"]
        if box["kv"]:
            detail.append(f"KV length {_kv_range(box['kv'])}")
    else:
        head = f"{_plural('microbatch', box['mbs'])} ({box['phase']}): same as microbatch {first_mb}"
        if box["phase"] == "decode":
            head += f"\n{_plural('decode step', box['steps'])}"
        detail = [where]
    detail.append(f"{box['nodes']} operators folded")
    return {
        "op": FOLDED,
        "kind": FOLDED,
        "category": FOLDED,
        "phase": box["phase"],
        "step": min(box["steps"]),
        "microbatch": min(box["mbs"]),
        "stage": box["stage"],
        "layer": -1,
        "gpu": gpus,
        "in_shape": (),
        "out_shape": (),
        "folded_nodes": box["nodes"],
        "label": "\n".join([head] + [d for d in detail if d]),
    }


def _kv_range(kv: set) -> str:
    return f"{min(kv)}" if min(kv) == max(kv) else f"{min(kv)} -> {max(kv)}"


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _notes(g: Dag, view, boxes, stage_layers, first_mb) -> list[str]:
    notes = [
        f"The full graph has {len(g)} operators and {len(g.src)} dependencies; "
        f"this drawing shows {view.number_of_nodes()} nodes. Each box stands for the operators folded "
        "into it and keeps their dependencies as edges."
    ]
    representatives = g.graph.get("representatives")
    if representatives:
        groups = represented_gpus(representatives, g.graph["num_gpus"])
        notes.append(
            "Symmetric GPUs folded (exact): only "
            + "; ".join(f"GPU {r}, standing for GPUs {', '.join(map(str, gpus))}" for r, gpus in groups.items())
            + ", were built and simulated."
        )
    layer_boxes = defaultdict(list)
    for key, box in boxes.items():
        if key.endswith(".layers"):
            layer_boxes[(box["phase"], min(box["steps"]))].append(box)
    for (phase, step), bs in layer_boxes.items():
        bs = sorted(bs, key=lambda b: b["stage"])
        parts = [f"{_plural('layer', b['layers'])} of stage {b['stage']} (GPU {gpu_list(b['gpus'])})" for b in bs]
        per_layer = bs[0]["nodes"] // max(1, len(bs[0]["layers"]))
        per = " per stage" if len(bs) > 1 else ""
        notes.append(
            f"{pass_name(phase, step, first_mb)}: {_and(parts)} folded into one box{per}; "
            f"each folded layer repeats the operators of its stage's first layer "
            f"({per_layer} operators per layer)."
        )
    if "fold.decode.steps" in boxes:
        b = boxes["fold.decode.steps"]
        kv = f" (KV length {_kv_range(b['kv'])})" if b["kv"] else ""
        notes.append(
            f"{_plural('Decode step', b['steps'])} of microbatch {first_mb}: folded into one box "
            f"({b['nodes']} operators); each repeats the step shown with the KV length one longer "
            f"per step{kv}."
        )
    other = [b for k, b in boxes.items() if k.endswith(".microbatches")]
    if other:
        mbs = set().union(*(b["mbs"] for b in other))
        n = sum(b["nodes"] for b in other)
        notes.append(
            f"{_plural('Microbatch', mbs)}: folded into one box per phase ({n} operators), the same "
            f"operators as microbatch {first_mb} on the same GPUs."
        )
    return notes
