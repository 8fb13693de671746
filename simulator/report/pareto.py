"""Reports stage, the Pareto plot of a comparison: output tokens/ms/GPU against worst TTFT and against TPOT,
every simulated layout a point, the Pareto front named, targets drawn, labels placed where they have room."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from simulator.config import Scenario, TargetMetric
from simulator.report.summary import fmt_bytes, fmt_s
from simulator.sweep import LayoutResult

SHORT_NAMES = {
    "output_tokens_per_ms_per_gpu": "out tok/ms/GPU",
    "prefill_tokens_per_ms_per_gpu": "prefill tok/ms/GPU",
    "total_tokens_per_ms_per_gpu": "total tok/ms/GPU",
    "ttft_s": "TTFT",
    "tpot_s": "TPOT",
    "total_s": "total time",
    "memory_bytes_per_gpu": "memory/GPU",
}


def fmt_figure(x: float, kind: str) -> str:
    if not math.isfinite(x):
        return "-"
    if kind == "s":
        return fmt_s(x)
    if kind == "bytes":
        return fmt_bytes(x)
    return f"{x:.4g}"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both lower x and higher y, by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def pareto_png(scenario: Scenario, results: Sequence[LayoutResult]) -> bytes:
    """Two panels: output tokens/ms/GPU against worst TTFT, and against TPOT (per-user speed).

    Every simulated layout that fits is a point labelled with its rank (where the label has room);
    Pareto-optimal ones are joined, highlighted and named; the scenario's own layout is circled;
    targets are dashed lines, or a note when they lie far off the data."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in results if r.rank is not None and r.fits]
    fig = Figure(figsize=(16, 7.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels: tuple[tuple[str, TargetMetric, str], ...] = (
        ("ttft_max_s", "ttft_s", "worst-case TTFT"),
        ("tpot_s", "tpot_s", "TPOT (time per output token, per user)"),
    )
    placements = []
    for ax, (attr, metric, title) in zip(axes, panels):
        xs = [getattr(r, attr) * 1e3 for r in rows]
        ys = [r.output_tput for r in rows]
        front = sorted(pareto_front(list(zip(xs, ys))), key=lambda i: xs[i])
        colors = ["tab:green" if r.all_met else "tab:gray" for r in rows]
        ax.scatter(xs, ys, s=24, c=colors, alpha=0.6, zorder=2, linewidths=0)
        ax.plot(
            [xs[i] for i in front],
            [ys[i] for i in front],
            "-o",
            color="tab:red",
            lw=1.6,
            ms=7,
            zorder=3,
            label="Pareto-optimal (named)",
        )
        own = [i for i, r in enumerate(rows) if r.own]
        for i in own:
            ax.scatter(
                [xs[i]],
                [ys[i]],
                s=280,
                facecolors="none",
                edgecolors="tab:blue",
                linewidths=2,
                zorder=6,
                label=f"scenario's layout: {rows[i].label} (#{rows[i].rank})",
            )
        ax.scatter([], [], s=24, c="tab:green", label="meets every target")
        ax.scatter([], [], s=24, c="tab:gray", label="misses a target")
        _scale_axes(ax, xs, ys)
        notes = _target_lines(ax, scenario, metric, xs, ys)
        ax.set_xlabel(f"{title} [ms]  (lower is better)")
        ax.set_ylabel("output tokens / ms / GPU  (higher is better)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
        if notes:
            ax.text(
                0.01,
                0.01,
                "\n".join(notes),
                transform=ax.transAxes,
                fontsize=8,
                va="bottom",
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9},
            )
        labels = [(i, f"#{rows[i].rank} {rows[i].label}", True) for i in front]
        labels += [(i, f"#{rows[i].rank} {rows[i].label}", True) for i in own if i not in front]
        labels += [(i, str(r.rank), False) for i, r in enumerate(rows) if i not in front and not r.own]
        placements.append((ax, xs, ys, labels))
    w = scenario.workload
    fig.suptitle(
        f"{scenario.name}: {len(rows)} layouts on {rows[0].layout.num_gpus if rows else 0} GPUs that fit "
        f"(batch {w.batch_size}, input {w.input_len_tokens}, output {w.output_len_tokens} tokens); "
        f"small numbers are ranks in comparison.md",
        fontsize=11,
    )
    fig.tight_layout()  # before the labels: they are placed where the axes end up, and kept inside them
    for ax, xs, ys, labels in placements:
        _place_labels(fig, ax, xs, ys, labels)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _scale_axes(ax, xs: list[float], ys: list[float]) -> None:
    """Log axes for data spanning more than 20x; limits hug the data (targets do not stretch them)."""
    for values, set_scale, set_lim in ((xs, ax.set_xscale, ax.set_xlim), (ys, ax.set_yscale, ax.set_ylim)):
        finite = [v for v in values if math.isfinite(v) and v > 0]
        if not finite:
            continue
        lo, hi = min(finite), max(finite)
        if hi / lo > 20:
            set_scale("log")
            set_lim(lo / 1.4, hi * 1.4)
        else:
            pad = (hi - lo) * 0.12 or hi * 0.1
            set_lim(max(0.0, lo - pad), hi + pad)


def _target_lines(ax, scenario: Scenario, metric: TargetMetric, xs: list[float], ys: list[float]) -> list[str]:
    """Dashed target lines inside the plotted range; a note for a target far outside it."""
    notes = []
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    target = scenario.targets.get(metric)
    if target is not None and target.max is not None:
        limit_ms = target.max * 1e3
        text = f"target {SHORT_NAMES[metric]} <= {fmt_figure(target.max, 's')}"
        if limit_ms <= x1 * 1.5:
            ax.axvline(limit_ms, color="tab:orange", ls="--", lw=1.4, label=text)
            ax.set_xlim(x0, max(x1, limit_ms * 1.05))
        else:
            notes.append(f"{text}: every layout shown is well inside (line off the chart, right)")
    tput = scenario.targets.get("output_tokens_per_ms_per_gpu")
    if tput is not None and tput.min is not None:
        text = f"target output >= {tput.min:.4g} tok/ms/GPU"
        if tput.min <= y1 * 1.5:
            ax.axhline(tput.min, color="tab:purple", ls="--", lw=1.4, label=text)
            ax.set_ylim(y0, max(y1, tput.min * 1.05))
        else:
            best = max((y for y in ys if math.isfinite(y)), default=math.nan)
            notes.append(
                f"{text}: out of reach (best {best:.3g}, {tput.min / best:.0f}x short; line off the chart, top)"
            )
    return notes


_OFFSETS = [
    (6, 5),
    (6, -12),
    (-8, 6),
    (-8, -12),
    (10, -3),
    (-12, -3),
    (0, 10),
    (0, -15),
    (14, 10),
    (14, -18),
    (-18, 10),
    (-18, -18),
    (22, 0),
    (-26, 0),
]


def _place_labels(
    fig,
    ax,
    xs: list[float],
    ys: list[float],
    labels: list[tuple[int, str, bool]],
    major_colour: str = "tab:red",
    grid: _BoxGrid | None = None,
) -> None:
    """Greedy placement: each label takes the first offset where it overlaps no label placed
    before it (and stays inside the axes); rank numbers with no room are left out. `grid`: the boxes
    already placed by an earlier call on the same axes (labels of another series), filled in here.

    Candidate boxes are measured from the text's metrics, not drawn and removed (that took a
    minute for a 64-GPU sweep's ~1,500 points), and checked against the placed ones through a
    grid of cells, so each check looks at its neighbours only."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.transforms import Bbox, offset_copy

    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    px_per_point = fig.dpi / 72.0
    anchors = ax.transData.transform(np.column_stack([xs, ys]))
    grid = _BoxGrid(cell_px=40.0) if grid is None else grid
    fonts = {True: FontProperties(size=8.5, weight="bold"), False: FontProperties(size=6.5)}
    # a Text's box spans a whole line: at least the height and descent of "lp" (as matplotlib lays it out)
    line = {
        major: renderer.get_text_width_height_descent("lp", font, ismath=False)[1:] for major, font in fonts.items()
    }
    for i, text, major in labels:
        if not (math.isfinite(xs[i]) and math.isfinite(ys[i])):
            continue
        style = (
            {"fontsize": 8.5, "fontweight": "bold", "color": major_colour}
            if major
            else {"fontsize": 6.5, "color": "0.3"}
        )
        width, height, descent = renderer.get_text_width_height_descent(text, fonts[major], ismath=False)
        height, descent = max(height, line[major][0]), max(descent, line[major][1])

        def box_at(dx: float, dy: float, ha: str) -> Bbox:
            # the text's baseline starts (ha "left") or ends (ha "right") at the offset
            x0 = anchors[i][0] + dx * px_per_point - (width if ha == "right" else 0.0)
            return Bbox.from_bounds(x0, anchors[i][1] + dy * px_per_point - descent, width, height)

        chosen = None
        # left-aligned to the right of the point first, then (a long name near the right edge) ending left of it
        for dx, dy, ha in [(dx, dy, "left") for dx, dy in _OFFSETS] + [(-6, 5, "right"), (-6, -12, "right")]:
            box = box_at(dx, dy, ha).expanded(1.05, 1.1)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if inside and not grid.overlaps(box):
                chosen = (dx, dy, ha)
                break
        if chosen is None:
            if not major:
                continue
            chosen = (*_OFFSETS[0], "left")  # a Pareto name is always shown, even where it must overlap
            box = box_at(*chosen)
        # a plain Text at the point, shifted by the offset in points (lighter than an Annotation)
        ax.text(
            xs[i],
            ys[i],
            text,
            zorder=7,
            ha=chosen[2],
            **style,
            transform=offset_copy(ax.transData, fig=fig, x=chosen[0], y=chosen[1], units="points"),
        )
        grid.add(box)


class _BoxGrid:
    """Placed label boxes (display pixels), filed under every grid cell they touch."""

    def __init__(self, cell_px: float):
        self.cell = cell_px
        self.cells: dict[tuple[int, int], list] = {}

    def _keys(self, box):
        c = self.cell
        return [
            (gx, gy)
            for gx in range(math.floor(box.x0 / c), math.floor(box.x1 / c) + 1)
            for gy in range(math.floor(box.y0 / c), math.floor(box.y1 / c) + 1)
        ]

    def overlaps(self, box) -> bool:
        return any(box.overlaps(other) for key in self._keys(box) for other in self.cells.get(key, ()))

    def add(self, box) -> None:
        for key in self._keys(box):
            self.cells.setdefault(key, []).append(box)


# ---------------------------------------------------------------------------------------------
# The serving benchmarks' Pareto plot: throughput per GPU against tokens/s per user

#: Colour of each candidate kind (sweep.candidates.KINDS); a kind added there gets its colour here.
KIND_COLOURS = {"aggregated": "tab:blue", "disaggregated": "tab:orange"}


class UserSpeedPoint(NamedTuple):
    """One simulated candidate on the plot: tokens/s per user (1 / TPOT), output tokens/s per GPU."""

    tokens_per_s_per_user: float
    tokens_per_s_per_gpu: float
    kind: str
    meets: bool
    label: str


def user_speed_front(points: Sequence[UserSpeedPoint]) -> list[int]:
    """Indices of the points no other point beats on both a faster user and more throughput per GPU,
    by increasing speed per user."""
    pairs = [(-p.tokens_per_s_per_user, p.tokens_per_s_per_gpu) for p in points]
    return sorted(pareto_front(pairs), key=lambda i: points[i].tokens_per_s_per_user)


def user_speed_pareto_png(title: str, points: Sequence[UserSpeedPoint], tpot_target_s: float | None) -> bytes:
    """Output tokens/s per GPU (y) against tokens/s per user (x = 1 / TPOT): every candidate a point coloured
    by kind (filled: meets every target; hollow: misses one), each kind's Pareto front drawn in its colour and
    the best-ranked points named, the TPOT target a vertical line at 1 / TPOT."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finite = [p for p in points if math.isfinite(p.tokens_per_s_per_user) and math.isfinite(p.tokens_per_s_per_gpu)]
    fig = Figure(figsize=(11, 7), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    named: list[tuple[str, list[UserSpeedPoint], list[int]]] = []  # per kind: its colour, points, front to name
    for kind in sorted({p.kind for p in finite}, key=lambda k: (k not in KIND_COLOURS, k)):
        colour = KIND_COLOURS.get(kind, "tab:gray")
        mine = [p for p in finite if p.kind == kind]
        met = [p for p in mine if p.meets]
        missed = [p for p in mine if not p.meets]
        ax.scatter(
            [p.tokens_per_s_per_user for p in met],
            [p.tokens_per_s_per_gpu for p in met],
            s=28,
            color=colour,
            alpha=0.7,
            linewidths=0,
            label=f"{kind}: meets the targets ({len(met)})",
        )
        ax.scatter(
            [p.tokens_per_s_per_user for p in missed],
            [p.tokens_per_s_per_gpu for p in missed],
            s=28,
            facecolors="none",
            edgecolors=colour,
            alpha=0.7,
            label=f"{kind}: misses a target ({len(missed)})",
        )
        front = user_speed_front(mine)
        ax.plot(
            [mine[i].tokens_per_s_per_user for i in front],
            [mine[i].tokens_per_s_per_gpu for i in front],
            "-",
            color=colour,
            lw=1.6,
            label=f"{kind}: Pareto front",
        )
        named.append((colour, mine, front[:12]))
    if tpot_target_s:
        speed = 1.0 / tpot_target_s
        ax.axvline(
            speed,
            color="tab:red",
            ls="--",
            lw=1.4,
            label=f"TPOT target {fmt_s(tpot_target_s)} = {speed:.4g} tok/s/user",
        )
    ax.set_xlabel("tokens / s per user  (1 / TPOT; faster to the right)")
    ax.set_ylabel("output tokens / s per GPU  (higher is better)")
    ax.grid(True, alpha=0.25)
    if ax.get_legend_handles_labels()[0]:  # nothing simulated and no target: no legend to draw
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()  # before the labels: they are placed where the axes end up, and kept off each other
    grid = _BoxGrid(cell_px=40.0)
    for colour, mine, front in named:
        xs = [p.tokens_per_s_per_user for p in mine]
        ys = [p.tokens_per_s_per_gpu for p in mine]
        _place_labels(fig, ax, xs, ys, [(i, mine[i].label, True) for i in front], major_colour=colour, grid=grid)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
