"""Reports: predicted-vs-measured table and log-log plot of a validation run."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402

from simulator.files import write_atomic  # noqa: E402


def write_validation(outcomes, out_dir: Path) -> None:
    frame = pd.DataFrame(
        [
            {"case": o.case, "metric": o.metric, "predicted": o.predicted, "measured": o.measured, "error": o.error}
            for o in outcomes
        ]
    )
    write_atomic(out_dir / "validation.csv", frame.to_csv(index=False))
    fig, ax = plt.subplots(figsize=(7, 6.5), dpi=110)
    lo = min(frame["predicted"].min(), frame["measured"].min()) / 2
    hi = max(frame["predicted"].max(), frame["measured"].max()) * 2
    line = [lo, hi]
    ax.plot(line, line, color="black", lw=1, label="predicted = measured")
    ax.fill_between(
        line, [v * 0.9 for v in line], [v * 1.1 for v in line], color="tab:green", alpha=0.15, label="±10 %"
    )
    for metric, part in frame.groupby("metric"):
        ax.scatter(part["measured"], part["predicted"], s=50, label=metric, zorder=3)
    for row in frame.itertuples():
        parts = [part.strip() for part in row.case.split(",")]
        label = parts[0] if len(parts) == 1 else f"{parts[0]}, {parts[-1]}"  # the case and how it ran
        ax.annotate(
            f"{label} ({100 * row.error:+.1f}%)",
            (row.measured, row.predicted),
            textcoords="offset points",
            xytext=(6, -4),
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    seconds = ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 0.002, not 2x10^-3; no crowded minor labels
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(seconds)
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("measured (s)")
    ax.set_ylabel("predicted by moesim (s)")
    errors = frame["error"].abs()
    ax.set_title(f"moesim vs measurement: median |error| {100 * errors.median():.1f}%, max {100 * errors.max():.1f}%")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(out_dir / "validation.png", buf.getvalue())


def host_share_text(share: float | None) -> str:
    """The share of a case's iterations its engine's host work set: '62 %'; '-' without host time."""
    return "-" if share is None else f"{100 * share:.0f} %"


def serving_validation_markdown(outcomes, skipped, summary: dict[str, float], title: str) -> str:
    """The serving validation table as Markdown: one row per (case, metric), the median and largest |error|,
    and the skipped cases with their reasons."""
    host = any(o.host_bound_share is not None for o in outcomes)
    head = "| case | metric | measured | predicted | error |" + (" host-set iterations |" if host else "")
    lines = [f"# {title}", "", head, "|---|---|---|---|---|" + ("---|" if host else "")]
    for o in outcomes:
        lines.append(
            f"| {o.case} | {o.metric} | {o.measured:.4g} | {o.predicted:.4g} | {100 * o.error:+.1f} % |"
            + (f" {host_share_text(o.host_bound_share)} |" if host else "")
        )
    lines.append("")
    if summary["rows"]:
        lines.append(
            f"Median |error| **{100 * summary['median_abs_error']:.1f} %**, largest "
            f"{100 * summary['max_abs_error']:.1f} %, over {int(summary['rows'])} rows; moesim faster than "
            f"measured in {int(summary['faster_rows'])}."
        )
    for s in skipped:
        lines.append(f"- skipped {s.case}: {s.reason}")
    profiles = {o.case: o.iterations for o in outcomes if o.iterations is not None}
    if profiles:
        lines += [
            "",
            "## Iterations (replica 0, as an engine's iteration log shows them)",
            "",
            "| case | iterations | mean | decode only | decode: median | decode: median batch | with a prefill "
            "chunk: median | its median new tokens | rank balance |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for case, p in profiles.items():
            balance = "-" if math.isnan(p.balance_ratio) else f"{p.balance_ratio:.2f}"
            lines.append(
                f"| {case} | {p.iterations} | {_ms(p.mean_s)} | {100 * p.decode_share:.0f} % | {_ms(p.decode_p50_s)} "
                f"| {_figure(p.decode_batch_p50)} | {_ms(p.mixed_p50_s)} | {_figure(p.mixed_new_tokens_p50)} "
                f"| {balance} |"
            )
        if any(not math.isnan(p.balance_ratio) for p in profiles.values()):
            lines += [
                "",
                "Rank balance: a lockstep group's mean over its iterations of the ranks' mean new tokens over the "
                "largest (TensorRT-LLM's attention-DP balance ratio; 1 = every rank computes as many).",
            ]
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{1e3 * seconds:.2f} ms"


def _figure(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:g}"


#: validation.csv's iteration columns (stats.IterationProfile's fields, lengths in ms).
ITERATION_COLUMNS = (
    ("iterations", "iterations", 1),
    ("iteration_ms_mean", "mean_s", 1e3),
    ("decode_share", "decode_share", 1),
    ("decode_iteration_ms_p50", "decode_p50_s", 1e3),
    ("decode_batch_p50", "decode_batch_p50", 1),
    ("mixed_iteration_ms_p50", "mixed_p50_s", 1e3),
    ("mixed_new_tokens_p50", "mixed_new_tokens_p50", 1),
    ("balance_ratio", "balance_ratio", 1),
)


def _iteration_cells(profile) -> dict:
    """validation.csv's ITERATION_COLUMNS of one row: empty without a profile (a decode phase, a skipped case)
    or where the figure is NaN."""
    if profile is None:
        return dict.fromkeys((column for column, _, _ in ITERATION_COLUMNS), "")
    values = {column: getattr(profile, field) * scale for column, field, scale in ITERATION_COLUMNS}
    return {column: "" if math.isnan(value) else value for column, value in values.items()}


def write_serving_validation(outcomes, skipped, summary: dict[str, float], out_dir: Path, title: str) -> None:
    """validation.csv (one row per case and metric; skipped cases with their reason) and validation.md."""
    rows = [
        {
            "case": o.case,
            "metric": o.metric,
            "measured": o.measured,
            "predicted": o.predicted,
            "error": o.error,
            "host_bound_share": "" if o.host_bound_share is None else o.host_bound_share,
            **_iteration_cells(o.iterations),
            "skipped": "",
        }
        for o in outcomes
    ]
    rows += [
        {
            "case": s.case,
            "metric": "",
            "measured": "",
            "predicted": "",
            "error": "",
            "host_bound_share": "",
            **_iteration_cells(None),
            "skipped": s.reason,
        }
        for s in skipped
    ]
    write_atomic(out_dir / "validation.csv", pd.DataFrame(rows).to_csv(index=False))
    write_atomic(out_dir / "validation.md", serving_validation_markdown(outcomes, skipped, summary, title))
