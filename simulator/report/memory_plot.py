"""Reports stage: memory.png, the memory of each GPU over the run against its capacity.

Derived from the trace (slices.Slices and the ops table), with these approximations:

* weights and the runtime reserve are constant (summary.json's per-GPU figures);
* KV cache: the K (or V) of a layer's new tokens exists once that pass's k_proj (v_proj) on the
  GPU has ended, and stays to the end of the run (no eviction): the curve is the running sum of
  the bytes those projections write. A sliding-window layer (summary.json's sliding_window) keeps
  only its window's last positions: a pass adds what it writes within the window's reach and the
  positions that fall out of the window leave. At the end it equals summary.json's kv_cache_bytes;
* transient activations: the residual stream of every pass in flight on the GPU (from its first
  to its last op there) plus the inputs and outputs of the kernels and receive buffers of the
  collectives running at that instant. Its peak is close to summary.json's activation_bytes
  (which counts one pass and the single largest op).

So a panel's peak over time and summary.json's total_bytes (weights + reserve + the KV cache at the
end + that closed-form activation figure, the one the memory target is checked against) count
different activations; each panel's title gives both, named.

Time is binned to the figure's resolution; a bin shows the highest activation level inside it.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from simulator.report.slices import Slices
from simulator.report.timeline import FAST_TEXT, png_bytes, shown_gpus

KV_WRITE_OPS = ("k_proj", "v_proj")
COLOURS = {"weights": "#4C72B0", "reserve": "#B0B0B0", "kv": "#DD8452", "activations": "#55A868"}
_BINS = 1200


def _binned_max(times: np.ndarray, deltas: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Highest level in each bin of the step function that starts at 0 and jumps by `deltas`
    at `times`. Jumps at the same time are applied together."""
    order = np.argsort(times, kind="stable")
    times, level = times[order], np.cumsum(deltas[order])
    # Only the last of several jumps at one instant is a level the function holds.
    keep = np.ones(len(times), dtype=bool)
    keep[:-1] = times[1:] != times[:-1]
    times, values = times[keep], np.concatenate([[0.0], level[keep]])
    first = np.searchsorted(times, edges[:-1], side="right")
    return np.maximum.reduceat(values, first)


def kept_kv_bytes(ops: pd.DataFrame, rows: np.ndarray, input_len_tokens: int, sliding: dict | None) -> np.ndarray:
    """The KV bytes each k_proj / v_proj row in `rows` adds to what its layer keeps: all it writes, or in a
    sliding-window layer (sliding: summary.json's {"window_tokens", "layers"}) its net change, the bytes of
    min(positions after, window) - min(positions before, window) (a prefill goes from 0 to the prompt's
    positions, decode step s from input + s - 1 to input + s)."""
    written = ops["bytes_written"].to_numpy(dtype=float)[rows]
    if not sliding:
        return written
    window = int(sliding["window_tokens"])
    slides = np.isin(ops["layer"].to_numpy()[rows], list(sliding["layers"]))
    prefill = ops["phase"].to_numpy()[rows] == "prefill"
    step = ops["step"].to_numpy()[rows].astype(float)
    after = np.where(prefill, float(input_len_tokens), input_len_tokens + step)
    before = np.where(prefill, 0.0, after - 1.0)
    kept = np.minimum(after, window) - np.minimum(before, window)
    return np.where(slides, written * kept / np.maximum(after - before, 1.0), written)


def memory_curves(
    ops: pd.DataFrame,
    slices: Slices,
    gpu: int,
    edges_s: np.ndarray,
    input_len_tokens: int = 0,
    sliding: dict | None = None,
) -> dict[str, np.ndarray]:
    """KV cache (at each bin's end) and peak transient activations (within each bin) of one GPU, bytes;
    `sliding` and `input_len_tokens` for a model with sliding-window layers (kept_kv_bytes)."""
    start = ops["start_s"].to_numpy(dtype=float)
    end = ops["end_s"].to_numpy(dtype=float)
    op = ops["op"].to_numpy()

    on_gpu = (slices.gpu == gpu) & (slices.kind < 2)  # its compute and comm streams
    rows = slices.row[on_gpu]
    compute_rows = slices.row[on_gpu & (slices.kind == 0)]
    kv_rows = compute_rows[np.isin(op[compute_rows], KV_WRITE_OPS)]
    kv_times, kv_bytes = end[kv_rows], kept_kv_bytes(ops, kv_rows, input_len_tokens, sliding)
    order = np.argsort(kv_times, kind="stable")
    kv_cum = np.cumsum(kv_bytes[order])
    kv = np.concatenate([[0.0], kv_cum])[np.searchsorted(kv_times[order], edges_s[1:], side="right")]

    act = slices.act_bytes[on_gpu]
    times = [start[rows], end[rows]]
    deltas = [act, -act]
    # Residual stream of each pass (phase, step, microbatch) while it is on this GPU.
    passes = pd.DataFrame(
        {
            "phase": ops["phase"].to_numpy()[rows],
            "step": ops["step"].to_numpy()[rows],
            "mb": ops["microbatch"].to_numpy()[rows],
            "start": start[rows],
            "end": end[rows],
            "residual": slices.residual_bytes[rows],
        }
    )
    spans = passes.groupby(["phase", "step", "mb"], sort=False).agg(
        start=("start", "min"), end=("end", "max"), residual=("residual", "max")
    )
    times += [spans["start"].to_numpy(), spans["end"].to_numpy()]
    deltas += [spans["residual"].to_numpy(), -spans["residual"].to_numpy()]
    activations = _binned_max(np.concatenate(times), np.concatenate(deltas), edges_s)
    return {"kv": kv, "activations": np.maximum(activations, 0.0)}


def panel_title(gpu: int, peak_bytes: float, memory: dict, kv_end_bytes: float, activation_peak_bytes: float) -> str:
    """A panel's title: the peak over time, and summary.json's total (its closed-form activations
    count one pass's residual and the single largest op at once), both named."""
    cap = memory.get("capacity_bytes", 0.0)
    pct = f" = {100 * peak_bytes / cap:.1f} % of {cap / 1e9:.0f} GB" if cap else ""
    total = memory.get("total_bytes")
    summary = f"\nsummary (closed form, as the target) {total / 1e9:.2f} GB" if total is not None else ""
    return (
        f"GPU {gpu}: peak over time {peak_bytes / 1e9:.2f} GB{pct}{summary}\nweights "
        f"{memory.get('weight_bytes', 0.0) / 1e9:.2f} · reserve {memory.get('reserve_bytes', 0.0) / 1e9:.2f} · "
        f"KV (end) {kv_end_bytes / 1e9:.2f} · act. ≤ {activation_peak_bytes / 1e9:.2f} "
        f"(summary {memory.get('activation_bytes', 0.0) / 1e9:.2f}) GB"
    )


def memory_png(ops: pd.DataFrame, slices: Slices, summary: dict, dpi: int = 110) -> bytes:
    """memory.png as bytes: one panel per GPU shown (all up to 8, else those of the timeline)."""
    with matplotlib.rc_context(FAST_TEXT):
        return _memory_png(ops, slices, summary, dpi)


def _memory_png(ops: pd.DataFrame, slices: Slices, summary: dict, dpi: int) -> bytes:
    gpus, note = shown_gpus(summary, slices.num_gpus)
    memory = {int(m["gpu"]): m for m in summary.get("memory", [])}
    total_s = float(ops["end_s"].max())
    edges_s = np.linspace(0.0, total_s, _BINS + 1)
    mid_ms = 0.5 * (edges_s[1:] + edges_s[:-1]) * 1e3
    first_tokens_ms = sorted(ops.loc[(ops["op"] == "token") & (ops["phase"] == "prefill"), "end_s"] * 1e3)

    ncols = 2 if len(gpus) <= 4 else 4
    nrows = math.ceil(len(gpus) / ncols)
    # Fixed margins in inches (tight_layout costs more than the curves).
    panel_w, panel_h, left, right, top, bottom, wgap, hgap = 4.4, 2.2, 0.6, 0.2, 1.25, 0.45, 0.35, 1.05
    width_in = left + right + ncols * panel_w + (ncols - 1) * wgap
    height_in = top + bottom + nrows * panel_h + (nrows - 1) * hgap
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    fig.subplots_adjust(
        left=left / width_in,
        right=1 - right / width_in,
        top=1 - top / height_in,
        bottom=bottom / height_in,
        wspace=wgap / panel_w,
        hspace=hgap / panel_h,
    )
    capacity_gb = 0.0
    for ax, g in zip(axes.ravel(), gpus):
        m = memory.get(g, {})
        curves = memory_curves(
            ops,
            slices,
            g,
            edges_s,
            summary.get("workload", {}).get("input_len_tokens", 0),
            summary.get("sliding_window"),
        )
        weights = np.full(_BINS, m.get("weight_bytes", 0.0))
        reserve = np.full(_BINS, m.get("reserve_bytes", 0.0))
        layers = [weights, reserve, curves["kv"], curves["activations"]]
        labels = ["weights", "runtime reserve", "KV cache", "activations (peak in bin)"]
        ax.stackplot(
            mid_ms,
            *[v / 1e9 for v in layers],
            labels=labels,
            colors=[COLOURS[k] for k in ("weights", "reserve", "kv", "activations")],
            linewidth=0,
        )
        cap = m.get("capacity_bytes", 0.0) / 1e9
        capacity_gb = max(capacity_gb, cap)
        if cap:
            ax.axhline(cap, color="#C44E52", ls="--", lw=1.2, label="capacity")
        peak_gb = float(np.max(sum(layers))) / 1e9
        for t in first_tokens_ms:
            ax.axvline(t, color="black", lw=0.6, ls=":")
        title = panel_title(g, peak_gb * 1e9, m, curves["kv"][-1], curves["activations"].max())
        ax.set_title(title, fontsize=7.5, y=1.0)  # placed, not auto-positioned (that measures every tick label)
        ax.set_xlabel("time (ms)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_xlim(0, total_s * 1e3)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("GB", fontsize=8)
    for ax in axes.ravel()[len(gpus) :]:
        ax.axis("off")
    top = max(capacity_gb, max(float(np.max(a.get_ylim())) for a in axes.ravel()[: len(gpus)]))
    axes[0, 0].set_ylim(0, 1.08 * top)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="black", lw=0.6, ls=":"))
    labels.append("first token")
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=len(labels),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 1 - 0.32 / height_in),
    )
    title = f"Memory per GPU over time: {summary.get('scenario', 'run')}"
    if note:
        title += f" ({note})"
    fig.suptitle(title, fontsize=10, x=0.01, ha="left", y=1 - 0.04 / height_in)
    return png_bytes(fig)
