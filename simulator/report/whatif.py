"""Reports stage, what-if: the answers as a terminal table, whatif.csv, whatif_points.csv, whatif.md, and one plot
per target (the target metric against each knob's value, the target line drawn, the answer marked)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from simulator.files import write_atomic
from simulator.whatif import KNOBS, Answer, Goal, WhatIf, fmt_figure
from simulator.whatif.explain import METRIC_WORDS

CSV_COLUMNS = (
    "target",
    "bound",
    "limit",
    "current_figure",
    "knob",
    "status",
    "current",
    "value",
    "figure",
    "below_value",
    "below_figure",
    "layout",
    "method",
    "monotone",
    "range",
    "tolerance",
    "other_targets",
    "bounded_by",
    "why_not",
)


def goal_text(goal: Goal) -> str:
    sign = ">=" if goal.bound == "min" else "<="
    return f"{goal.metric} {sign} {fmt_figure(goal.metric, goal.limit)} (now {fmt_figure(goal.metric, goal.actual)})"


def _change(a: Answer) -> str:
    """The answer's value in words, with the layout a GPU count takes."""
    if a.status == "n/a":
        return "n/a"
    if a.status == "none" or a.best is None:
        return "none in range"
    text = a.best.label
    if a.knob == "num_gpus":
        text += f" ({a.best.result.label})"
    return text


def _row(goal: Goal, a: Answer) -> dict:
    best, below = a.best, a.below
    return {
        "target": goal.metric,
        "bound": goal.bound,
        "limit": repr(goal.limit),
        "current_figure": repr(goal.actual),
        "knob": a.knob,
        "status": a.status,
        "current": a.current,
        "value": best.label if best is not None and a.status == "found" else "",
        "figure": repr(best.figure) if best is not None else "",
        "below_value": below.label if below is not None else "",
        "below_figure": repr(below.figure) if below is not None else "",
        "layout": best.result.label if best is not None and best.result.status == "ok" else "",
        "method": a.method,
        "monotone": "" if a.monotone is None else str(a.monotone).lower(),
        "range": a.range_text,
        "tolerance": a.tolerance,
        "other_targets": a.others,
        "bounded_by": a.bound,
        "why_not": a.reason,
    }


def _csv(rows: list[dict], columns) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def markdown(w: WhatIf) -> str:
    s = w.scenario
    lines = [
        f"# What it would take: {s.name}",
        "",
        f"{s.num_gpus} x `{s.hardware.profile}`, layout {s.parallel.label}, batch {s.workload.batch_size}, "
        f"input {s.workload.input_len_tokens}, output {s.workload.output_len_tokens} tokens. Each knob is moved "
        "alone, everything else held fixed; every figure is a simulated run (folded, decode sampled as "
        "`moesim compare` does).",
        "",
    ]
    for goal in w.goals:
        lines += [f"## {goal_text(goal)}", ""]
        lines += [
            "| knob | now | smallest change that meets it | figure there | method | what then bounds it, or why none |",
            "|---|---|---|---:|---|---|",
        ]
        for a in w.answers:
            if a.metric != goal.metric:
                continue
            figure = fmt_figure(goal.metric, a.best.figure) if a.best is not None else "-"
            if a.status == "none":
                figure = f"best simulated {figure} at {a.best.label}" if a.best is not None else "-"
            why = a.reason if a.status != "found" else a.bound
            if a.status == "none" and a.bound:
                why += f". At the best value: {a.bound}"
            if a.others:
                why += f" (the change {a.others})"
            lines.append(f"| {KNOBS[a.knob].words} | {a.current} | {_change(a)} | {figure} | {a.method} | {_md(why)} |")
        lines += ["", f"![{goal.metric} against each knob](whatif_{goal.metric}.png)", ""]
    lines += [
        "## Ranges and tolerances",
        "",
        "| knob | range searched | tolerance |",
        "|---|---|---|",
    ]
    seen = set()
    for a in w.answers:
        if a.knob not in seen:
            seen.add(a.knob)
            lines.append(f"| {KNOBS[a.knob].words} | {_md(a.range_text)} | {_md(a.tolerance)} |")
    lines += [
        "",
        "Found by bisection: the value meets the target and its grid neighbour towards the current value does "
        "not (`below_value` in whatif.csv). Every simulated point is in whatif_points.csv.",
        "",
    ]
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def points_csv(w: WhatIf) -> str:
    rows = []
    for a in w.answers:
        for p in a.points:
            rows.append(
                {
                    "target": a.metric,
                    "knob": a.knob,
                    "value": p.label,
                    "layout": p.result.label if p.result.status == "ok" else "",
                    "status": p.result.status,
                    "figure": repr(p.figure),
                    "met": str(p.met).lower(),
                }
            )
    return _csv(rows, ("target", "knob", "value", "layout", "status", "figure", "met"))


def plot_png(w: WhatIf, goal: Goal) -> bytes:
    """One panel per knob: the target metric against the knob's value (ordered knobs on a log axis
    when their range is wide; discrete ones sorted by figure), the target dashed, the current value
    (or, for a discrete knob, its figure) dotted grey, the answer a green star (or the best value an
    orange cross when none meets); log figures when the target lies far from them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    answers = [a for a in w.answers if a.metric == goal.metric and a.points]
    cols = 3
    rows = max(1, math.ceil(len(answers) / cols))
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    words = METRIC_WORDS.get(goal.metric, goal.metric)
    scale = 1e-9 if goal.metric == "memory_bytes_per_gpu" else (1e3 if goal.metric.endswith("_s") else 1.0)
    unit = {1e-9: " (GB)", 1e3: " (ms)"}.get(scale, " (tokens/ms/GPU)" if "tokens" in goal.metric else "")
    for ax, a in zip(axes, answers):
        knob = KNOBS[a.knob]
        ordered = a.ordered
        points = [p for p in a.points if not math.isnan(p.figure)]
        if ordered:
            points.sort(key=lambda p: float(p.value))
            xs = [float(p.value) for p in points]
            ax.plot(xs, [p.figure * scale for p in points], "o-", color="#1f77b4", ms=3, lw=1)
            if xs and xs[-1] / max(xs[0], 1e-30) > 20:
                ax.set_xscale("log")
            current = [p for p in points if p.label == a.current]
            for p in current:
                ax.axvline(float(p.value), color="0.6", lw=1, ls=":")
            mark = (float(a.best.value), a.best.figure * scale) if a.best is not None else None
        else:
            points.sort(key=lambda p: p.figure, reverse=goal.bound == "min")
            xs = list(range(len(points)))
            ax.plot(xs, [p.figure * scale for p in points], "o", color="#1f77b4", ms=3)
            if len(points) <= 12:
                ax.set_xticks(xs, [p.label for p in points], rotation=30, ha="right", fontsize=7)
            else:
                ax.set_xticks([])
                ax.set_xlabel(f"{len(points)} values, sorted by figure", fontsize=8)
            at = next((i for i, p in enumerate(points) if a.best is not None and p.label == a.best.label), None)
            mark = (at, a.best.figure * scale) if at is not None and a.best is not None else None
        if not ordered:  # the current value is not among the alternatives: its figure as a level
            ax.axhline(goal.actual * scale, color="0.6", lw=1, ls=":")
        ax.axhline(goal.limit * scale, color="#d62728", ls="--", lw=1.2, label="target")
        shown = [p.figure for p in points if p.figure > 0] + [goal.limit, goal.actual]
        if min(shown) > 0 and max(shown) / min(shown) > 20:  # a target far from the figures: keep both readable
            ax.set_yscale("log")
        if mark is not None:
            style = ("*", "#2ca02c", 14) if a.status == "found" else ("X", "#ff7f0e", 9)
            ax.plot([mark[0]], [mark[1]], style[0], color=style[1], ms=style[2], zorder=5)
        title = f"{knob.words}: {_change(a)}"
        ax.set_title(title if len(title) < 60 else title[:57] + "...", fontsize=9)
        ax.set_ylabel(words + unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(answers) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"{w.scenario.name}: {words} against each knob (target dashed red; star: smallest change that meets it; "
        "cross: best when none does; dotted grey: now)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_whatif(w: WhatIf, out_dir: Path) -> list[Path]:
    """whatif.csv (one row per target and knob), whatif_points.csv (every simulated point), whatif.md and
    whatif_<target>.png into `out_dir`."""
    out_dir = Path(out_dir)
    goals = {g.metric: g for g in w.goals}
    files = {
        "whatif.csv": _csv([_row(goals[a.metric], a) for a in w.answers], CSV_COLUMNS),
        "whatif_points.csv": points_csv(w),
        "whatif.md": markdown(w),
    }
    written = []
    for name, text in files.items():
        write_atomic(out_dir / name, text)
        written.append(out_dir / name)
    for goal in w.goals:
        path = out_dir / f"whatif_{goal.metric}.png"
        write_atomic(path, plot_png(w, goal))
        written.append(path)
    return written


def print_whatif(console: Console, w: WhatIf) -> None:
    for goal in w.goals:
        table = Table(title=escape(f"{w.scenario.name}: what meets {goal_text(goal)}"))
        for col in ("knob", "now", "smallest change", "figure there", "method", "what then bounds it, or why none"):
            table.add_column(col, justify="right" if col == "figure there" else "left")
        for a in w.answers:
            if a.metric != goal.metric:
                continue
            figure = fmt_figure(goal.metric, a.best.figure) if a.best is not None else "-"
            if a.status == "none" and a.best is not None:
                figure = f"best simulated {figure} at {a.best.label}"
            why = a.bound if a.status == "found" else a.reason
            if a.status == "none" and a.bound:
                why += f". At the best value: {a.bound}"
            if a.others:
                why += f" (the change {a.others})"
            table.add_row(
                escape(a.knob),
                escape(a.current),
                escape(_change(a)),
                escape(figure),
                escape(a.method),
                escape(why),
                style="green" if a.status == "found" else None,
            )
        console.print(table)
