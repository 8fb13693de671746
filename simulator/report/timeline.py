"""Reports stage: timeline.png, a Gantt chart of every GPU stream and link port of a run.

Three panels share the rows: the whole run, the prefill, and one decode step from the middle of
decoding. Rows per GPU: its compute stream, its communication stream and its link port (thin:
tx above rx). Bars are coloured by category; white space is idle time, so pipeline bubbles and
communication that overlaps compute show directly. A top row draws the critical path. In the
zoomed panels, work of other passes that falls in the window is drawn faded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib
import matplotlib.colors
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import offset_copy
from PIL import Image

from simulator.placement import gpu_ranges
from simulator.report.slices import Slices

if TYPE_CHECKING:  # matplotlib.typing is newer than the oldest matplotlib supported (3.7): for the checker only
    from matplotlib.typing import RcKeyType

#: One colour per category, shared by every picture of a run.
CATEGORY_COLOURS = {
    "attention": "#4C72B0",
    "experts": "#DD8452",
    "ffn": "#E5AE38",
    "router": "#937860",
    "norm_residual": "#A5A5A5",
    "embed_head": "#64B5CD",
    "tp_comm": "#55A868",
    "ep_comm": "#C44E52",
    "pp_comm": "#8172B3",
}
CATEGORY_LABELS = {
    "attention": "attention",
    "experts": "experts (FC1, act, FC2, combine)",
    "ffn": "dense FFN",
    "router": "router / top-k",
    "norm_residual": "norms, residual adds",
    "embed_head": "embedding, LM head",
    "tp_comm": "TP all-reduce / all-gather",
    "ep_comm": "EP all-to-all",
    "pp_comm": "pipeline send/recv",
}
_FALLBACK_COLOUR = "#333333"

#: Text rendered without hinting, at whole pixels: glyphs as legible at these sizes, drawn in about
#: half the time (matplotlib's default auto-hints every glyph at 8x the horizontal resolution;
#: text is most of the time a figure of a run takes).
FAST_TEXT: dict[RcKeyType, Any] = {"text.hinting": "no_hinting"}

#: Most GPUs drawn; larger runs show a representative subset and say which.
MAX_GPUS_SHOWN = 8

# Row geometry in y units: a stream row is 1 unit, a link row 1 unit split into tx and rx lanes.
_BAR = 0.8
_LANE = 0.38


def colour_of(category: str) -> str:
    return CATEGORY_COLOURS.get(category, _FALLBACK_COLOUR)


def select_gpus(layout: dict, max_gpus: int = MAX_GPUS_SHOWN) -> tuple[list[int], str]:
    """GPUs to draw and a note on the choice.

    Assumes the layout semantics of graph.Placement (gpu = stage*dp*tp + dp_rank*tp + tp_rank) and
    that ranks of a group behave alike (uniform routing), so one dp replica, then tp rank 0 of each
    stage, then evenly spaced stages stand for the rest.
    """
    n = int(layout["num_gpus"])
    tp, dp, pp = int(layout.get("tp", 1)), int(layout.get("dp", 1)), int(layout.get("pp", 1))
    if n <= max_gpus:
        return list(range(n)), ""
    if pp * tp <= max_gpus:
        gpus = [s * dp * tp + t for s in range(pp) for t in range(tp)]
        return gpus, f"showing dp replica 0 of {dp} (GPUs {gpu_ranges(gpus)}); other replicas run the same schedule"
    if pp <= max_gpus:
        per_stage = max(1, max_gpus // pp)
        ranks = (
            sorted({round(i * (tp - 1) / max(1, per_stage - 1)) for i in range(per_stage)}) if per_stage > 1 else [0]
        )
        gpus = [s * dp * tp + t for s in range(pp) for t in ranks]
        return gpus, (
            f"showing tp rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of dp replica 0 "
            f"in each of {pp} stages (GPUs {gpu_ranges(gpus)}); the other {n - len(gpus)} GPUs mirror them"
        )
    stages = sorted({round(i * (pp - 1) / (max_gpus - 1)) for i in range(max_gpus)})
    gpus = [s * dp * tp for s in stages]
    return (
        gpus,
        f"showing tp rank 0 of dp replica 0 in stages {', '.join(map(str, stages))} of {pp} (GPUs {gpu_ranges(gpus)})",
    )


def shown_gpus(summary: dict, num_gpus: int, max_gpus: int = MAX_GPUS_SHOWN) -> tuple[list[int], str]:
    """GPUs to draw for a run and a note on the choice: select_gpus' choice, or for a folded run
    (summary.json's "folded") its representative GPUs, each named with the GPUs it stands for."""
    folded = summary.get("folded")
    if not folded:
        return select_gpus({**summary.get("layout", {}), "num_gpus": num_gpus}, max_gpus)
    groups = {int(g): list(v) for g, v in folded["representatives"].items()}
    reps = sorted(groups)
    if len(reps) > max_gpus:
        reps = sorted({reps[round(i * (len(reps) - 1) / (max_gpus - 1))] for i in range(max_gpus)})
    stands = "; ".join(f"GPU {g} for GPUs {gpu_ranges(groups[g])}" for g in reps)
    return reps, f"symmetric GPUs folded, each GPU shown stands for its stage: {stands}"


@dataclass(frozen=True)
class _Window:
    title: str
    start_s: float
    end_s: float
    focus: np.ndarray | None  # per ops row: drawn at full strength (None: all)
    marks: list[tuple[float, str]]  # vertical lines: time, label


def _windows(ops: pd.DataFrame, total_steps: int | None = None) -> list[_Window]:
    """Whole run, prefill, and the middle simulated decode step. `total_steps`: decode steps of
    the workload, when only a sample of them was simulated."""
    phase = ops["phase"].to_numpy()
    step = ops["step"].to_numpy()
    start = ops["start_s"].to_numpy(dtype=float)
    end = ops["end_s"].to_numpy(dtype=float)
    is_token = (ops["op"] == "token").to_numpy()
    first_tokens = sorted(end[is_token & (phase == "prefill")])
    total_s = float(end.max()) if len(end) else 0.0
    steps = sorted(set(step[(phase == "decode") & ~is_token].tolist()))
    many = len(first_tokens) > 1
    marks = [(t, f"mb{i}" if many else "first token") for i, t in enumerate(first_tokens)]
    dashed = "; dashed: first token of each microbatch" if many else ""
    sampled = total_steps is not None and total_steps > len(steps)
    counted = (
        f"{len(steps)} of {total_steps} decode steps (a sample; the rest are interpolated)"
        if sampled
        else (f"{len(steps)} decode step{'s' if len(steps) != 1 else ''}")
    )
    whole = _Window(f"Whole run: prefill, then {counted}{dashed}", 0.0, total_s, None, marks)
    is_prefill = phase == "prefill"
    prefill_end_s = float(end[is_prefill].max())
    windows = [
        whole,
        _Window(f"Prefill{dashed}; faded: decode work in the window", 0.0, prefill_end_s, is_prefill, marks),
    ]
    if steps:
        k = steps[len(steps) // 2]
        in_step = (phase == "decode") & (step == k)
        lo, hi = float(start[in_step & ~is_token].min()), float(end[in_step].max())
        tokens = sorted(end[is_token & (phase == "decode") & (step == k)])
        step_marks = [(t, f"mb{i}" if len(tokens) > 1 else f"token {k + 1}") for i, t in enumerate(tokens)]
        title = (
            f"Decode step {k} of {total_steps if sampled else len(steps)} (middle of decoding); dashed: token {k + 1}"
        )
        if len(tokens) > 1:
            title += " of each microbatch"
        windows.append(_Window(title + "; faded: other steps", lo, hi, in_step, step_marks))
    return windows


def _lanes(gpus: list[int], num_gpus: int, layout: dict, with_path: bool):
    """Where each engine resource is drawn.

    Returns lane_of (per resource: lane index, or -1 when not shown), lanes_y and lanes_h (per
    lane: centre and bar height; lane 0 is the critical path) and the y tick labels.
    """
    tp, dp = int(layout.get("tp", 1)), int(layout.get("dp", 1))
    lane_of = np.full(4 * num_gpus, -1, dtype=np.int64)
    lanes_y, lanes_h = [0.0], [_BAR]
    ticks: list[tuple[float, str]] = []
    y = 0.0
    if with_path:
        ticks.append((y, "critical path"))
        y += 1.3
    for g in gpus:
        stage = g // (dp * tp)
        lanes = (
            (g, y, _BAR),
            (num_gpus + g, y + 1, _BAR),
            (2 * num_gpus + g, y + 2 - _LANE / 2 - 0.02, _LANE),
            (3 * num_gpus + g, y + 2 + _LANE / 2 + 0.02, _LANE),
        )
        for resource, lane_y, height in lanes:
            lane_of[resource] = len(lanes_y)
            lanes_y.append(lane_y)
            lanes_h.append(height)
        ticks += [(y, f"GPU {g} (stage {stage}) compute"), (y + 1, f"GPU {g} comm"), (y + 2, f"GPU {g} link tx/rx")]
        y += 3.4
    return lane_of, np.asarray(lanes_y), np.asarray(lanes_h), ticks


def coverage(x0: np.ndarray, x1: np.ndarray, group: np.ndarray, num_groups: int, width: int) -> np.ndarray:
    """Busy fraction of each pixel column, per group: shape (num_groups, width).

    Bars are [x0, x1) in pixel units (clipped to [0, width]). Exact for any bar length: each bar
    adds +1 to the slope of the covered-length function F at x0 and -1 at x1; F is accumulated at
    integer positions with two cumulative sums, and pixel p gets F(p + 1) - F(p).
    """
    x = np.clip(np.concatenate([x0, x1]), 0.0, float(width))
    w = np.concatenate([np.ones(len(x0)), -np.ones(len(x1))])
    g = np.concatenate([group, group])
    idx = np.minimum(np.floor(x).astype(np.int64) + 1, width + 1)
    n = width + 2
    flat = g * n + idx
    slope = np.bincount(flat, weights=w, minlength=num_groups * n).reshape(num_groups, n)
    offset = np.bincount(flat, weights=w * (idx - x), minlength=num_groups * n).reshape(num_groups, n)
    ramp = np.zeros_like(slope)
    ramp[:, 1:] = np.cumsum(np.cumsum(slope, axis=1), axis=1)[:, :-1]
    covered = np.cumsum(offset, axis=1) + ramp  # F(p), p = 0 .. width + 1
    return np.clip(np.diff(covered[:, : width + 1], axis=1), 0.0, 1.0)


def _strip(cov: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """One lane's pixels: the colour of the group busiest in each column; opacity grows with how
    busy the column is (with a floor, so that a 2 % busy stream still shows), none when idle."""
    total = cov.sum(axis=0)
    rgba = palette[np.argmax(cov, axis=0)].copy()
    rgba[:, 3] *= np.where(total > 1e-6, 0.2 + 0.8 * np.minimum(total, 1.0), 0.0)
    return rgba


@dataclass(frozen=True)
class _Data:
    start_s: np.ndarray  # per ops row
    end_s: np.ndarray
    colour: np.ndarray  # per ops row: index into palette (add ncat for the faded variant)
    palette: np.ndarray  # RGBA rows: the categories, then the same faded
    lane_of: np.ndarray
    lanes_y: np.ndarray
    lanes_h: np.ndarray
    ticks: list


def _window_range(window: _Window) -> tuple[float, float]:
    pad_s = 0.01 * max(window.end_s - window.start_s, 1e-12)
    return window.start_s - pad_s, window.end_s + pad_s


def _frame(ax, window: _Window, d: _Data, total_s: float) -> None:
    """Everything but the bars: limits, labels, phase marks, row backgrounds."""
    lo_s, hi_s = _window_range(window)
    for y, _ in d.ticks:
        ax.axhspan(y - 0.5, y + 0.5, color="#f4f4f4", zorder=0, lw=0)
    for t_s, label in window.marks:
        if lo_s <= t_s <= hi_s:
            where = (t_s - lo_s) / (hi_s - lo_s)
            # Alone on the whole-run panel, the first-token label sits left of its line, clear of "decode".
            alone = window.focus is None and len(window.marks) == 1
            ha = "right" if where > 0.95 or alone else "left" if where < 0.05 else "center"
            ax.axvline(t_s * 1e3, color="black", lw=0.8, ls="--", zorder=3)
            ax.annotate(
                label,
                (t_s * 1e3, 1),
                xytext=(-2 if ha == "right" else 0, 2),
                textcoords="offset points",
                fontsize=7,
                va="bottom",
                ha=ha,
                annotation_clip=False,
                xycoords=("data", "axes fraction"),
            )
    if window.focus is None and len(window.marks) == 1:
        first_token_ms = window.marks[0][0] * 1e3
        for a_ms, b_ms, label in ((0.0, first_token_ms, "prefill"), (first_token_ms, total_s * 1e3, "decode")):
            if b_ms - a_ms > 0.1 * total_s * 1e3:
                ax.annotate(
                    label,
                    ((a_ms + b_ms) / 2, 1),
                    xytext=(0, 2),
                    textcoords="offset points",
                    fontsize=8,
                    ha="center",
                    va="bottom",
                    xycoords=("data", "axes fraction"),
                    fontweight="bold",
                    color="#555555",
                )
    ys = [y for y, _ in d.ticks]
    ax.set_xlim(lo_s * 1e3, hi_s * 1e3)
    ax.set_ylim(max(ys) + 0.8, min(ys) - 0.8)
    # Row labels as plain text where tick labels would be (tick pad 3.5 pt): a tick builds five
    # artists per label, and the panels have dozens of rows.
    ax.set_yticks([])
    beside = offset_copy(ax.get_yaxis_transform(), fig=ax.figure, x=-3.5, units="points")
    for y, label in d.ticks:
        ax.text(0, y, label, transform=beside, fontsize=7, ha="right", va="center")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("time (ms)", fontsize=8)
    ax.set_title(
        f"{window.title}: {1e3 * window.start_s:.4g} to {1e3 * window.end_s:.4g} ms "
        f"({_fmt_ms(window.end_s - window.start_s)})",
        fontsize=9,
        loc="left",
        pad=12,
        y=1.0,  # placed, not auto-positioned: that measures every tick label of the panel
    )
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _bars(ax, window: _Window, d: _Data, slices: Slices, path_rows, width_px: int, height_px: int) -> None:
    """The bars of one panel, rasterised at the panel's size in pixels (see coverage): one image,
    each lane's pixel rows filled with its strip, transparent elsewhere."""
    start, end = d.start_s, d.end_s
    ncolours = len(d.palette)
    lo_s, hi_s = _window_range(window)
    lane = d.lane_of[slices.resource]
    keep = (end[slices.row] >= lo_s) & (start[slices.row] <= hi_s) & (lane >= 0)
    rows, lane = slices.row[keep], lane[keep]
    colour = d.colour[rows]
    if window.focus is not None:
        colour = np.where(window.focus[rows], colour, colour + ncolours // 2)
    if path_rows is not None and len(path_rows):
        p = path_rows[(end[path_rows] >= lo_s) & (start[path_rows] <= hi_s)]
        rows = np.concatenate([rows, p])
        lane = np.concatenate([lane, np.zeros(len(p), dtype=np.int64)])
        colour = np.concatenate([colour, d.colour[p]])
    scale = width_px / (hi_s - lo_s)
    cov = coverage(
        (start[rows] - lo_s) * scale,
        (end[rows] - lo_s) * scale,
        lane * ncolours + colour,
        len(d.lanes_y) * ncolours,
        width_px,
    ).reshape(len(d.lanes_y), ncolours, width_px)
    ys = [y for y, _ in d.ticks]
    top_y, bottom_y = min(ys) - 0.8, max(ys) + 0.8  # the y axis runs downwards
    centres_y = top_y + (np.arange(height_px) + 0.5) * (bottom_y - top_y) / height_px
    image = np.zeros((height_px, width_px, 4), dtype=np.uint8)
    for k in np.unique(lane).tolist():
        inside = np.abs(centres_y - d.lanes_y[k]) < d.lanes_h[k] / 2
        image[inside] = np.round(255 * _strip(cov[k], d.palette)).astype(np.uint8)
    ax.imshow(
        image,
        extent=(lo_s * 1e3, hi_s * 1e3, bottom_y, top_y),
        aspect="auto",
        interpolation="nearest",
        zorder=2,
    )
    ax.set_xlim(lo_s * 1e3, hi_s * 1e3)
    ax.set_ylim(bottom_y, top_y)


def _fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g} ms" if ms < 1000 else f"{seconds:.3g} s"


def timeline_png(
    ops: pd.DataFrame, slices: Slices, summary: dict, path_rows: np.ndarray | None = None, dpi: int = 110
) -> bytes:
    """The timeline figure as PNG bytes.

    Args:
        ops: The trace table (simulate.SimResult.ops, or ops.csv read back).
        slices: Its busy intervals per resource.
        summary: summary.json of the run (for the layout and the name).
        path_rows: ops rows of the critical path, earliest first; None draws no path row.
    """
    layout = {**summary.get("layout", {}), "num_gpus": slices.num_gpus}
    gpus, note = shown_gpus(summary, slices.num_gpus)
    lane_of, lanes_y, lanes_h, ticks = _lanes(gpus, slices.num_gpus, layout, path_rows is not None)
    codes, categories = pd.factorize(ops["category"])
    names = categories.tolist()
    palette = np.array([matplotlib.colors.to_rgba(colour_of(c)) for c in names])
    faded = palette.copy()
    faded[:, 3] = 0.3
    data = _Data(
        ops["start_s"].to_numpy(dtype=float),
        ops["end_s"].to_numpy(dtype=float),
        codes.astype(np.int64),
        np.vstack([palette, faded]),
        lane_of,
        lanes_y,
        lanes_h,
        ticks,
    )
    output_len = summary.get("workload", {}).get("output_len_tokens")
    windows = _windows(ops, output_len - 1 if output_len else None)
    with matplotlib.rc_context(FAST_TEXT):
        return _draw(windows, data, summary, slices, path_rows, names, note, ticks, dpi)


def _draw(windows, data: _Data, summary: dict, slices: Slices, path_rows, names, note: str, ticks, dpi: int) -> bytes:
    total_s = windows[0].end_s
    # Fixed margins in inches (tight_layout would cost as much as drawing the bars).
    axes_in = 0.19 * (max(y for y, _ in ticks) + 1.6)
    header_in, above_in, below_in, left_in, right_in = 0.85, 0.45, 0.5, 1.75, 0.25
    width_in = 15.0
    height_in = header_in + len(windows) * (above_in + axes_in + below_in)
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    axes = []
    for i, window in enumerate(windows):
        top_in = header_in + i * (above_in + axes_in + below_in) + above_in
        ax = fig.add_axes(
            (
                left_in / width_in,
                1 - (top_in + axes_in) / height_in,
                1 - (left_in + right_in) / width_in,
                axes_in / height_in,
            )
        )
        _frame(ax, window, data, total_s)
        axes.append(ax)
    present = [c for c in CATEGORY_COLOURS if c in names] + sorted(set(names) - set(CATEGORY_COLOURS) - {"marker"})
    handles = [Patch(color=colour_of(c), label=CATEGORY_LABELS.get(c, c)) for c in present]
    handles.append(Patch(facecolor="#f4f4f4", edgecolor="#cccccc", label="idle (empty row)"))
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=min(len(handles), 5),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 1.0 - 0.3 / height_in),
    )
    title = f"Timeline of {summary.get('scenario', 'run')}: {slices.num_gpus} GPUs"
    if note:
        title += ";\n" + note if len(title) + len(note) > 150 else f"; {note}"
    fig.suptitle(title, fontsize=11, x=0.01, ha="left", y=1.0 - 0.05 / height_in)
    # Bars last: rasterised to each panel's size in pixels.
    for ax, window in zip(axes, windows):
        box = ax.get_window_extent()
        _bars(ax, window, data, slices, path_rows, max(1, round(box.width)), max(1, round(box.height)))
    return png_bytes(fig)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG: drawn by Agg, written as RGB (the figures are opaque: the alpha channel
    would be a quarter of the pixels for nothing) at zlib level 1 (a third of level 6's time,
    files ~1.5x)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()
