"""Reports stage, serving pictures: latency CDFs with the targets, time series, a Gantt chart of the first
requests, and the throughput-latency curve of a rate sweep. Each function returns PNG bytes (matplotlib Agg)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from simulator.serving.simulate import ServingRun
from simulator.serving.stats import throughput_series

GANTT_REQUESTS = 40
_PHASE_COLORS = {"queued": "#d9d9d9", "prefill": "tab:orange", "decode": "tab:blue"}


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False, **kwargs)


def _png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _ms_axis(values_s: np.ndarray) -> tuple[float, str]:
    """Scale and unit that keep the largest value readable."""
    top = float(np.nanmax(values_s)) if len(values_s) and np.isfinite(values_s).any() else 0.0
    return (1.0, "s") if top >= 10.0 else (1e3, "ms")


def latency_cdf_png(table: pd.DataFrame, targets, title: str) -> bytes:
    """Empirical CDFs of TTFT and TPOT of the measured requests; each target is a dashed vertical line,
    and the 99th percentile a dotted horizontal one."""
    fig, axes = _figure(13, 4.8, 1, 2)
    measured = table[~table["warmup"]]
    for ax, column, name, bound in (
        (axes[0, 0], "ttft_s", "TTFT", targets.ttft_p99_s),
        (axes[0, 1], "tpot_s", "TPOT", targets.tpot_p99_s),
    ):
        values = measured[column].to_numpy(dtype=float)
        values = np.sort(values[~np.isnan(values)])
        scale, unit = _ms_axis(np.append(values, bound if bound is not None else np.nan))
        if len(values):
            y = np.arange(1, len(values) + 1) / len(values)
            ax.step(values * scale, y, where="post", color="tab:blue", lw=1.8, label=f"{name} ({len(values)} requests)")
            p99 = float(np.percentile(values, 99))
            ax.axvline(p99 * scale, color="tab:blue", ls=":", lw=1, label=f"p99 = {p99 * scale:.4g} {unit}")
        else:
            ax.text(0.5, 0.5, f"no {name} (every output is one token)", ha="center", transform=ax.transAxes)
        ax.axhline(0.99, color="0.5", ls=":", lw=0.8)
        if bound is not None:
            met = len(values) == 0 or float(np.percentile(values, 99)) <= bound
            ax.axvline(
                bound * scale,
                color="tab:green" if met else "tab:red",
                ls="--",
                lw=1.8,
                label=f"target p99 <= {bound * scale:.4g} {unit} ({'met' if met else 'MISSED'})",
            )
        ax.set_xlabel(f"{name} [{unit}]")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # none when the metric has no values and no bound (one-token outputs)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"{name} CDF")
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def timeseries_png(run: ServingRun, title: str) -> bytes:
    """Four panels over time, per replica: waiting requests, running batch, KV blocks used (capacity
    dashed), and output throughput (all replicas, in bins)."""
    fig, axes = _figure(13, 9, 4, 1, sharex=True)
    ts = run.timeseries
    start = ts["start_s"]
    replicas = sorted(set(ts["replica"].tolist()))
    shown = replicas[:8]
    for r in shown:
        mask = ts["replica"] == r
        label = f"replica {r}" if len(replicas) > 1 else None
        for ax, column in ((axes[0, 0], "waiting"), (axes[1, 0], "running"), (axes[2, 0], "kv_blocks_used")):
            ax.step(start[mask], ts[column][mask], where="post", lw=1, label=label)
    capacity = run.spec.scheduler.kv_cache.capacity_blocks
    axes[2, 0].axhline(capacity, color="tab:red", ls="--", lw=1, label=f"capacity {capacity} blocks")
    bin_s = max(run.end_s / 100.0, 1e-6)
    tput = throughput_series(run, bin_s)
    axes[3, 0].bar(tput["start_s"], tput["output_tokens_per_s"], width=bin_s, align="edge", color="tab:blue", alpha=0.7)
    for ax, label in zip(axes[:, 0], ("waiting requests", "running requests", "KV blocks used", "output tokens / s")):
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))
    axes[2, 0].legend(loc="upper right", fontsize=8, ncol=min(len(shown) + 1, 5))
    if len(replicas) > len(shown):
        axes[0, 0].set_title(f"first {len(shown)} of {len(replicas)} replicas", fontsize=9)
    axes[3, 0].set_xlabel("time [s]")
    axes[3, 0].set_xlim(0, run.end_s)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def gantt_png(run: ServingRun, title: str, num_requests: int = GANTT_REQUESTS) -> bytes:
    """The first requests, one bar each: queued (arrival to first scheduled), prefill (to the first
    token; a chunked or preempted prefill included) and decode (to the finish)."""
    records = run.records[:num_requests]
    fig, axes = _figure(13, max(3.0, 0.22 * len(records) + 1.5))
    ax = axes[0, 0]
    ys = np.arange(len(records))
    spans: dict[str, list[tuple[float, float]]] = {"queued": [], "prefill": [], "decode": []}  # (start_s, length_s)
    for rec in records:
        first = rec.first_token_s
        spans["queued"].append((rec.arrival_s, rec.first_scheduled_s - rec.arrival_s))
        spans["prefill"].append((rec.first_scheduled_s, first - rec.first_scheduled_s))
        spans["decode"].append((first, rec.finish_s - first))
    for phase, values in spans.items():
        left = np.array([v[0] for v in values])
        width = np.array([v[1] for v in values])
        ax.barh(ys, width, left=left, height=0.7, color=_PHASE_COLORS[phase], label=phase)
    for y, rec in zip(ys, records):
        if rec.preemptions:
            ax.text(rec.finish_s, y, f" preempted x{rec.preemptions}", va="center", fontsize=7, color="tab:red")
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{rec.request_id} (r{rec.replica})" for rec in records], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time [s]")
    ax.set_ylabel("request (replica)")
    ax.set_xlim(left=0)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{title}: first {len(records)} of {len(run.records)} requests", fontsize=11)
    return _png(fig)


def rate_curve_png(
    curve: pd.DataFrame, targets, max_rate_per_s: float | None, title: str, rate_unit: str = "requests/s"
) -> bytes:
    """The rate sweep against the offered Poisson rate, as serving benchmarks publish it: p99 TTFT, p99 TPOT
    and the output tokens/s/GPU delivered, one point per rate tried (green: every target met and the
    deployment keeps up; red: not); targets dashed, the max rate a vertical line. Throughput that stops
    rising with the rate is the deployment's capacity: rates beyond it only grow the queue."""
    fig, axes = _figure(14, 4.4, 1, 3)
    curve = curve.sort_values("rate_per_s")
    rates = curve["rate_per_s"].to_numpy(dtype=float)
    met = curve["all_targets_met"].to_numpy(dtype=bool)
    log_x = len(rates) > 1 and rates.max() > 8 * rates.min()
    panels = (
        (axes[0, 0], "ttft_p99_s", "TTFT p99", targets.ttft_p99_s),
        (axes[0, 1], "tpot_p99_s", "TPOT p99", targets.tpot_p99_s),
        (axes[0, 2], "output_tokens_per_s_per_gpu", "output tokens / s / GPU", None),
    )
    for ax, column, name, bound in panels:
        values = curve[column].to_numpy(dtype=float)
        if column.endswith("_s"):
            scale, unit = _ms_axis(np.append(values, bound if bound is not None else np.nan))
            ax.set_ylabel(f"{name} [{unit}]")
        else:
            scale, unit = 1.0, ""
            ax.set_ylabel(name)
        y = values * scale
        ax.plot(rates, y, "-", color="0.6", lw=1, zorder=1)
        ax.scatter(rates[met], y[met], c="tab:green", s=25, zorder=3, label="targets met, keeps up")
        ax.scatter(rates[~met], y[~met], c="tab:red", s=25, zorder=3, label="a target missed or overloaded")
        if bound is not None:
            ax.axhline(bound * scale, color="tab:purple", ls="--", lw=1.5, label=f"target {bound * scale:.4g} {unit}")
        if max_rate_per_s is not None:
            ax.axvline(max_rate_per_s, color="tab:blue", ls=":", lw=1.5, label=f"max rate {max_rate_per_s:.4g}/s")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(f"offered Poisson rate [{rate_unit}]")
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(name, fontsize=10)
    axes[0, 0].legend(loc="upper left", fontsize=7)
    fig.suptitle(title, fontsize=11)
    return _png(fig)
