"""Report stage: the folded operator DAG as a Graphviz drawing (DOT text, styling, SVG and PNG).

The drawing is made from `simulator.report.folded.folded_view`; `render_dag` also writes the complete
graph as node-link JSON (`simulator.report.graph_json`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import networkx as nx

from simulator.files import write_atomic
from simulator.graph import Dag, NodeKind
from simulator.report.folded import FOLDED, TRANSFER_OPS, folded_view, gpu_list, pass_name, stage_layers_of
from simulator.report.graph_json import write_graph_json

# ColorBrewer Set3 (pastel, black text stays readable on every entry); cycles for more GPUs.
GPU_PALETTE = (
    "#8dd3c7",
    "#ffffb3",
    "#bebada",
    "#fb8072",
    "#80b1d3",
    "#fdb462",
    "#b3de69",
    "#fccde5",
    "#bc80bd",
    "#ccebc5",
)
COMM_FILL, COMM_BORDER, FOLDED_FILL = "#f2f2f2", "#505050", "#fff7dc"
SHAPES = {
    NodeKind.COMPUTE: "box",
    NodeKind.COMM: "ellipse",
    NodeKind.ROUTING: "parallelogram",
    FOLDED: "box3d",
    NodeKind.MARKER: "plaintext",
}
ROUTING_SOURCE_OPS = frozenset({"topk", "router", "moe_permute", "moe_align"})
DOT_MISSING = "Graphviz 'dot' not found: install it (apt-get install graphviz)"
DOT_TIMEOUT_S = 300
MAX_SIZE_IN = (60, 166)  # larger drawings are scaled down: at 72 dpi the PNG stays within ~12k pixels


def _q(text: str, justify: str = "\\n") -> str:
    """A quoted DOT string; lines end with `justify` (\\n centred, \\l left)."""
    esc = str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\r", "")
    lines = esc.split("\n")
    return '"' + (justify.join(lines) + ("\\l" if justify == "\\l" else "")) + '"'


def _attrs(**kw) -> str:
    return "[" + ", ".join(f"{k}={v}" for k, v in kw.items() if v is not None) + "]"


def format_shape(shape) -> str:
    """`(655360, 512)` -> '[655360, 512]'; a tuple of shapes -> '[a, b]; [c, d]'."""
    if shape is None or (isinstance(shape, (tuple, list)) and not shape):
        return "[]"
    if isinstance(shape, (tuple, list)) and any(isinstance(x, (tuple, list)) for x in shape):
        return "; ".join(format_shape(s) for s in shape)
    if isinstance(shape, (tuple, list)):
        return "[" + ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in shape) + "]"
    return str(shape)


def format_gpus(attrs: dict) -> str:
    """'GPU 0', 'GPU 0,1' for a group, 'GPU 0 -> 2' for a point-to-point send; '' when none."""
    gpu = attrs.get("gpu")
    if gpu is None or (isinstance(gpu, (tuple, list)) and not gpu):
        return ""
    if isinstance(gpu, (tuple, list)):
        if attrs.get("collective") == "send_recv" and len(gpu) == 2:
            return f"GPU {gpu[0]} -> {gpu[1]}"
        return f"GPU {gpu_list(gpu)}"
    return f"GPU {gpu}"


def gpu_colour(gpu: int) -> str:
    return GPU_PALETTE[gpu % len(GPU_PALETTE)]


def _node_label(n: str, a: dict) -> str:
    kind = a.get("kind")
    if kind == FOLDED:
        return a.get("label", n)
    if kind == NodeKind.MARKER:
        if a.get("op") == "token":
            return f"token out\n({pass_name(a['phase'], a['step'], a['microbatch']).lower()})"
        return n
    lines = [
        str(a.get("op", n)),
        format_gpus(a),
        f"{format_shape(a.get('in_shape'))} -> {format_shape(a.get('out_shape'))}",
    ]
    return "\n".join(x for x in lines if x)


def _node_style(a: dict, label: str) -> dict:
    kind = a.get("kind", NodeKind.COMPUTE)
    style = {"shape": SHAPES.get(kind, "box")}
    if kind == NodeKind.ROUTING:
        # Graphviz grows a parallelogram around its label's box, to ~3x a rectangle; size it by hand.
        chars = max(len(line) for line in label.split("\n"))
        style.update(
            fixedsize="true",
            width=f"{chars * 11 * 0.56 / 72 + 0.7:.2f}",
            height=f"{0.2 + 0.19 * (label.count(chr(10)) + 1):.2f}",
        )
    if kind in (NodeKind.COMPUTE, NodeKind.ROUTING):
        gpu = a.get("gpu")
        fill = gpu_colour(gpu) if isinstance(gpu, int) else COMM_FILL
        style.update(style='"filled,rounded"' if kind == NodeKind.COMPUTE else "filled", fillcolor=_q(fill))
    elif kind == NodeKind.COMM:
        style.update(style="filled", fillcolor=_q(COMM_FILL), color=_q(COMM_BORDER), penwidth="1.5")
    elif kind == FOLDED:
        style.update(style="filled", fillcolor=_q(FOLDED_FILL), penwidth="1.5", fontsize="13", margin='"0.2,0.08"')
    else:
        style.update(fontsize="12", fontname='"Helvetica-Bold"')
    return style


def _node_attrs(n: str, a: dict) -> str:
    label = _node_label(n, a)
    return _attrs(label=_q(label), **_node_style(a, label))


def _edge_line(u: str, v: str, view: nx.DiGraph) -> str:
    su, sv = view.nodes[u], view.nodes[v]
    routing = su.get("op") in ROUTING_SOURCE_OPS and sv.get("kind") != NodeKind.ROUTING
    return f"  {_q(u)} -> {_q(v)}{' [style=dashed]' if routing else ''};"


def _placement(n: str, a: dict, stage_layers: dict[int, list[int]]) -> tuple:
    """Cluster path of a node: (phase, pass, stage); shorter for markers, transfers and boxes."""
    phase = a.get("phase", "")
    if a.get("microbatch", -1) < 0:
        return (phase,)
    if a.get("kind") == FOLDED and not n.endswith(".layers"):
        return (phase,)
    pass_key = (a.get("step", 0), a.get("microbatch", 0))
    stage, layer = a.get("stage", -1), a.get("layer", -1)
    # Stage transfers (their layer lies outside the stage) sit between the stage clusters.
    transfer = (
        a.get("op") in TRANSFER_OPS
        or a.get("kind") == NodeKind.MARKER
        or (layer >= 0 and layer not in stage_layers.get(stage, ()))
    )
    if transfer or stage < 0:
        return (phase, pass_key)
    return (phase, pass_key, stage)


def to_dot(view: nx.DiGraph, title: str, notes: list[str]) -> str:
    """DOT text for a (folded) operator graph.

    Rectangles compute, ellipses communicate, parallelograms route (router, top-k, sampling); routing
    decisions leave the gate as dashed edges. Fill colour marks the GPU; collectives are light grey and
    name their GPU group. Nodes sit in clusters per phase, pass and pipeline stage; a legend and the
    fold notes head the drawing.
    """
    stage_layers = stage_layers_of(view)
    tree: dict = {}
    for n, a in view.nodes(data=True):
        node = tree
        for part in _placement(n, a, stage_layers):
            node = node.setdefault(part, {})
        node.setdefault(None, []).append(n)

    gpus = sorted(
        {
            x
            for _, a in view.nodes(data=True)
            if a.get("kind") != FOLDED
            for x in (
                a["gpu"] if isinstance(a.get("gpu"), (tuple, list)) else () if a.get("gpu") is None else (a["gpu"],)
            )
        }
    )
    out = [
        "digraph dag {",
        f"  graph [rankdir=TB, newrank=true, label={_q(title)}, labelloc=t, fontsize=26, "
        'fontname="Helvetica-Bold", nodesep=0.18, ranksep=0.28, dpi=72, pad=0.3, '
        f'outputorder=edgesfirst, size="{MAX_SIZE_IN[0]},{MAX_SIZE_IN[1]}"];',
        '  node [fontname="Helvetica", fontsize=11, margin="0.10,0.04", height=0.3, penwidth=1];',
        '  edge [color="#606060", arrowsize=0.6];',
    ]
    out += _legend(gpus, notes)
    for key in sorted((k for k in tree if k is not None), key=_phase_rank):
        out += _cluster(view, tree[key], (key,), stage_layers, depth=1)
    out += [f"  {_q(n)} {_node_attrs(n, view.nodes[n])};" for n in tree.get(None, [])]
    out += [_edge_line(u, v, view) for u, v in view.edges()]
    out += _stacking_edges(view, bool(notes))
    out.append("}")
    return "\n".join(out) + "\n"


def _stacking_edges(view: nx.DiGraph, has_notes: bool) -> list[str]:
    """Invisible edges that stack legend, prefill and decode vertically instead of side by side."""
    marks = {
        (a.get("phase"), a.get("op")): n
        for n, a in view.nodes(data=True)
        if a.get("op") in ("phase_start", "phase_end")
    }
    phases = sorted({p for p, _ in marks}, key=_phase_rank)
    lines = []
    if phases and (phases[0], "phase_start") in marks:
        first = marks[(phases[0], "phase_start")]
        for src in ("legend.compute",) + (("notes",) if has_notes else ()):
            lines.append(f"  {_q(src)} -> {_q(first)} [style=invis];")
    for prev, nxt in zip(phases, phases[1:]):
        if (prev, "phase_end") in marks and (nxt, "phase_start") in marks:
            lines.append(f"  {_q(marks[(prev, 'phase_end')])} -> {_q(marks[(nxt, 'phase_start')])} [style=invis];")
    return lines


def _phase_rank(key) -> tuple:
    return ({"prefill": 0, "decode": 1}.get(key, 2), str(key))


def _cluster_caption(path: tuple, view: nx.DiGraph, members: list[str], stage_layers) -> str:
    if len(path) == 1:
        return {"prefill": "PREFILL", "decode": "DECODE"}.get(path[0], str(path[0]).upper())
    if len(path) == 2:
        step, mb = path[1]
        return pass_name(path[0], step, mb)
    stage = path[2]
    gpus = {a["gpu"] for a in (view.nodes[n] for n in members) if isinstance(a.get("gpu"), int)}
    layers = stage_layers.get(stage, [])
    span = f", layers {layers[0]}-{layers[-1]}" if layers else ""
    return f"Pipeline stage {stage}" + (f" (GPU {gpu_list(gpus)}" + span + ")" if gpus else "")


def _cluster(view, subtree: dict, path: tuple, stage_layers, depth: int) -> list[str]:
    pad = "  " * depth
    members = _members(subtree)
    name = "cluster_" + "_".join(str(p).replace(" ", "").replace(",", "_").strip("()") for p in path)
    fill = ("#fafafa", "#f3f6fb", "#ffffff")[min(depth - 1, 2)]
    lines = [
        f"{pad}subgraph {_q(name)} {{",
        f"{pad}  graph [label={_q(_cluster_caption(path, view, members, stage_layers))}, "
        f'fontsize={max(14, 24 - 4 * depth)}, fontname="Helvetica-Bold", labeljust=l, '
        f'style="rounded,filled", fillcolor={_q(fill)}, color="#9a9a9a", margin=12];',
    ]
    for n in subtree.get(None, []):
        a = view.nodes[n]
        lines.append(f"{pad}  {_q(n)} {_node_attrs(n, a)};")
    children = [k for k in subtree if k is not None]
    for key in sorted(children):  # one level holds passes (step, microbatch), the next stages
        lines += _cluster(view, subtree[key], path + (key,), stage_layers, depth + 1)
    lines.append(f"{pad}}}")
    return lines


def _members(subtree: dict) -> list[str]:
    out = list(subtree.get(None, []))
    for k, v in subtree.items():
        if k is not None:
            out += _members(v)
    return out


def _legend(gpus: list[int], notes: list[str]) -> list[str]:
    """A legend cluster (shapes, edge styles, GPU colours) and the fold notes, above the graph."""
    lines = [
        '  subgraph "cluster_legend" {',
        '    graph [label="Legend", fontsize=18, fontname="Helvetica-Bold", labeljust=l, style="rounded,filled", '
        'fillcolor="#ffffff", color="#9a9a9a", margin=10];',
    ]
    samples: list[tuple[str, str, dict]] = [  # (node id, label, node attributes)
        ("legend.compute", "computation\n(GPU colour)", {"kind": "compute", "gpu": 0}),
        ("legend.comm", "communication\n(GPU group named)", {"kind": "communication"}),
        ("legend.routing", "routing\n(router, top-k, sample)", {"kind": "routing", "gpu": 0}),
        ("legend.folded", "folded repeats\n(layers, steps, microbatches)", {"kind": FOLDED}),
        ("legend.marker", "marker\n(phase start/end, token)", {"kind": "marker"}),
        (
            "legend.edge",
            "solid arrow: dependency\ndashed arrow: routing decision\n(gate -> dispatch)",
            {"kind": "text"},
        ),
    ]
    palette = len(GPU_PALETTE)
    for i, gpu in enumerate(gpus[:palette]):
        same = [g for g in gpus if g % palette == gpu % palette]
        text = "GPU " + ", ".join(str(g) for g in same[:4]) + (", ..." if len(same) > 4 else "")
        samples.append((f"legend.gpu{i}", text, {"kind": "compute", "gpu": gpu}))
    for nid, label, attrs in samples:
        style = {"shape": "plaintext"} if attrs["kind"] == "text" else _node_style(attrs, label)
        lines.append(f"    {_q(nid)} {_attrs(label=_q(label), **style)};")
    # Same rank plus invisible edges: a left-to-right row in this order.
    lines.append("    { rank=same; " + " -> ".join(_q(nid) for nid, _, _ in samples) + " [style=invis]; }")
    lines.append("  }")
    if notes:
        wrapped = "\n".join("\n".join(textwrap.wrap("- " + s, 110, subsequent_indent="  ")) for s in notes)
        label = _q(wrapped, justify="\\l")
        lines += [
            '  subgraph "cluster_notes" {',
            '    graph [label="What is folded", fontsize=18, fontname="Helvetica-Bold", labeljust=l, '
            'style="rounded,filled", fillcolor="#fffdf3", color="#9a9a9a", margin=10];',
            f'    "notes" [shape=plaintext, fontsize=13, label={label}];',
            "  }",
        ]
    return lines


def require_graphviz(hint: str = "") -> None:
    """Raise RuntimeError (DOT_MISSING, then `hint`) unless Graphviz's `dot` is on the PATH: a
    command checks this before it simulates, not when it writes the drawing."""
    if shutil.which("dot") is None:
        raise RuntimeError(DOT_MISSING + hint)


def render_dag(
    g: Dag | nx.DiGraph,
    out_dir: str | Path,
    title: str | None = None,
    max_decode_steps: int = 1,
    full_json: bool = True,
    draw: bool = True,
    formats: tuple[str, ...] = ("svg", "png"),
) -> dict[str, Path]:
    """Write the folded drawing as `dag.dot` and `dag.<format>` for each of `formats` (unless not
    `draw`; Graphviz takes ~50 ms for the SVG, seconds for the PNG) and, when `full_json`,
    `dag.json` (the complete graph, node-link JSON: large).

    Each file is written beside its final name and renamed into place, so no half-written file is
    left behind. Raises RuntimeError when Graphviz's `dot` is missing or fails.
    """
    return start_render_dag(g, out_dir, title, max_decode_steps, full_json, draw, formats).wait()


class PendingDrawing:
    """A Graphviz run started by start_render_dag: `wait()` for its files, or `cancel()` it.
    Cancelling after `wait()` does nothing (so a `finally` can always cancel)."""

    def __init__(self, proc: subprocess.Popen | None, tmp: dict[str, str], paths: dict[str, Path], started_s: float):
        self._proc, self._tmp, self._paths, self._started_s = proc, tmp, paths, started_s
        self._cancelled = False

    def wait(self) -> dict[str, Path]:
        """The files written, once Graphviz has finished (RuntimeError if it failed, ran too long
        or was cancelled)."""
        if self._cancelled:
            raise RuntimeError(f"the drawing of {self._paths.get('dot', 'the DAG')} was cancelled")
        proc, self._proc = self._proc, None
        if proc is None:
            return self._paths
        try:
            left_s = max(0.0, DOT_TIMEOUT_S - (time.monotonic() - self._started_s))
            try:
                _, stderr = proc.communicate(timeout=left_s)
            except subprocess.TimeoutExpired as e:
                raise RuntimeError(f"Graphviz 'dot' took over {DOT_TIMEOUT_S} s on {self._paths['dot']}") from e
            if proc.returncode != 0:
                first = (stderr.strip().splitlines() or ["no message"])[0]
                raise RuntimeError(f"Graphviz 'dot' failed on {self._paths['dot']}: {first}")
            for fmt, tmp in self._tmp.items():
                os.chmod(tmp, 0o644)
                os.replace(tmp, self._paths[fmt])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self._remove_temporary()
        return self._paths

    def cancel(self) -> None:
        """Stop Graphviz (if still running) and remove what it was writing."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._cancelled = True
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._remove_temporary()

    def _remove_temporary(self) -> None:
        for t in self._tmp.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(t)
        self._tmp = {}


def start_render_dag(
    g: Dag | nx.DiGraph,
    out_dir: str | Path,
    title: str | None = None,
    max_decode_steps: int = 1,
    full_json: bool = True,
    draw: bool = True,
    formats: tuple[str, ...] = ("svg", "png"),
) -> PendingDrawing:
    """render_dag, with Graphviz left running: `dag.dot` (and `dag.json`) are written before this
    returns, the drawings when the returned PendingDrawing's `wait()` returns. The caller can do
    other work meanwhile (`moesim run` draws its plots) and must wait for it or cancel it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not draw:
        return PendingDrawing(None, {}, {"json": write_graph_json(g, out / "dag.json")} if full_json else {}, 0.0)
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError(DOT_MISSING)
    view, notes = folded_view(g, max_decode_steps)
    title = title or f"Operator DAG: {g.graph.get('scenario', 'scenario')}"
    paths = {"dot": out / "dag.dot", **{fmt: out / f"dag.{fmt}" for fmt in formats}}
    write_atomic(paths["dot"], to_dot(view, title, notes).encode())

    tmp: dict[str, str] = {}
    pending = PendingDrawing(None, tmp, paths, time.monotonic())
    try:
        for fmt in formats:
            fd, tmp[fmt] = tempfile.mkstemp(dir=out, prefix=f".dag.{fmt}.", suffix=".tmp")
            os.close(fd)
        # One dot run lays the graph out once and writes every format.
        cmd = [dot, *[arg for fmt in formats for arg in (f"-T{fmt}", "-o", tmp[fmt])], str(paths["dot"])]
        pending._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if full_json:  # written while Graphviz works
            paths["json"] = write_graph_json(g, out / "dag.json")
    except BaseException:
        pending.cancel()
        raise
    return pending
