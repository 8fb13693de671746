"""Reports of a layout sweep: the terminal table, comparison.csv / .md, pareto.png and best.yaml."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from simulator.config import Scenario, with_layout
from simulator.files import write_atomic
from simulator.metrics import THROUGHPUTS
from simulator.report.pareto import fmt_figure, pareto_png
from simulator.sweep import COST_CLASSES, LayoutResult

TERMINAL_ROWS = 15

_OBJECTIVE_TEXT = {
    "targets": "meets every target first, then highest output tokens/ms/GPU",
    "throughput": "highest output tokens/ms/GPU",
    "ttft": "lowest worst-case TTFT",
    "tpot": "lowest TPOT",
    "memory": "lowest peak memory per GPU",
    "goodput_per_gpu": "highest serving goodput per GPU (requests/s meeting every serving target)",
    "max_rate": "highest Poisson arrival rate per GPU meeting every serving target (requests/s; conversations/s "
    "with workload.conversation)",
}
#: Serving figures of LayoutResult.serving shown beside a serving objective's ranking: (key, header, kind).
_SERVING_COLUMNS = (
    ("goodput_requests_per_s_per_gpu", "goodput req/s/GPU", ""),
    ("max_rate_per_s", "max rate /s", ""),
    ("output_tokens_per_s_per_gpu", "serving out tok/s/GPU", ""),
    ("ttft_p99_s", "TTFT p99", "s"),
    ("tpot_p99_s", "TPOT p99", "s"),
    ("goodput_fraction", "goodput fraction", ""),
    ("host_bound_share", "host-set iterations", ""),  # the share its engine's host work set (ServingRun.host)
)
_TARGET_TAG = {
    "output_tokens_per_ms_per_gpu": "out",
    "prefill_tokens_per_ms_per_gpu": "prefill",
    "total_tokens_per_ms_per_gpu": "total",
    "ttft_s": "TTFT",
    "tpot_s": "TPOT",
    "total_s": "time",
    "memory_bytes_per_gpu": "mem",
}


def _verdicts(r: LayoutResult) -> str:
    if r.status != "ok":
        return "-"
    return " ".join(f"{_TARGET_TAG.get(t.metric, t.metric)} {'✓' if t.met else '✗'}" for t in r.targets) or "no targets"


def _memory_text(r: LayoutResult) -> str:
    text = fmt_figure(r.memory_bytes_per_gpu, "bytes")
    if r.status == "screened":
        return f">= {text} (does not fit)"
    if r.status == "ok" and not r.fits:
        return f"{text} (does not fit)"
    return text


def _serving_columns(results: Sequence[LayoutResult]) -> list[tuple[str, str, str]]:
    """The serving columns some row has figures for (none unless a serving objective ran)."""
    keys = {k for r in results for k in r.serving}
    return [c for c in _SERVING_COLUMNS if c[0] in keys]


def winner(results: Sequence[LayoutResult]) -> LayoutResult | None:
    """The first ranked layout that was simulated and fits in memory."""
    return next((r for r in results if r.rank is not None and r.fits), None)


# ---------------------------------------------------------------------------------------------
# Terminal


def print_table(console: Console, scenario: Scenario, results: Sequence[LayoutResult], objective: str) -> None:
    """The best rows (and the scenario's own layout wherever it ranks); the files hold every row."""
    shown = list(results[:TERMINAL_ROWS])
    own = next((r for r in results if r.own), None)
    if own is not None and own not in shown:
        shown.append(own)
    table = Table(title=f"{scenario.name}: layouts ranked by {_OBJECTIVE_TEXT[objective]}")
    for col in (
        "rank",
        "layout",
        "TTFT mean",
        "TTFT max",
        "TPOT",
        "out tok/ms/GPU",
        "prefill tok/ms/GPU",
        "total tok/ms/GPU",
        "memory/GPU",
        "targets",
        "dominant cost",
        "largest overhead",
    ):
        table.add_column(
            col, justify="left" if col in ("layout", "targets", "dominant cost", "largest overhead") else "right"
        )
    for r in shown:
        name = f"{r.label} [bold](scenario)[/bold]" if r.own else r.label
        if r.status != "ok":
            table.add_row("-", name, "", "", "", "", "", "", _memory_text(r), r.status, r.error, "")
            continue
        table.add_row(
            str(r.rank),
            name,
            fmt_figure(r.ttft_mean_s, "s"),
            fmt_figure(r.ttft_max_s, "s"),
            fmt_figure(r.tpot_s, "s"),
            *(fmt_figure(r.throughput[k], "") for k in THROUGHPUTS),
            _memory_text(r),
            _verdicts(r),
            r.dominant,
            r.overhead,
            style="green" if r.all_met else None,
        )
    console.print(table)
    columns = _serving_columns(results)
    if columns:
        serving = Table(title=f"{scenario.name}: serving simulation per layout")
        for col in ("rank", "layout", *(header for _, header, _ in columns)):
            serving.add_column(col, justify="left" if col == "layout" else "right")
        for r in shown:
            if r.status == "ok":
                serving.add_row(
                    str(r.rank), r.label, *(fmt_figure(r.serving.get(k, math.nan), kind) for k, _, kind in columns)
                )
        console.print(serving)
    best = winner(results)
    if best is not None:
        console.print(
            f"best: [bold]{best.label}[/bold] ({_OBJECTIVE_TEXT[objective]}); "
            f"{'meets every target' if best.all_met else 'misses a target'}; "
            f"dominant cost {best.dominant}"
        )


# ---------------------------------------------------------------------------------------------
# Files


def _row(r: LayoutResult, target_names: Sequence[str]) -> dict:
    row = {
        "rank": r.rank if r.rank is not None else "",
        "layout": r.label,
        "own": r.own,
        "status": r.status,
        **r.layout.degrees(),
        "ttft_mean_s": r.ttft_mean_s,
        "ttft_max_s": r.ttft_max_s,
        "tpot_s": r.tpot_s,
    }
    for k in THROUGHPUTS:
        row[k] = r.throughput.get(k, math.nan)
    row.update(
        memory_bytes_per_gpu=r.memory_bytes_per_gpu,
        capacity_bytes=r.capacity_bytes,
        fits=r.fits if math.isfinite(r.memory_bytes_per_gpu) else "",
    )
    met = {t.metric: t.met for t in r.targets}
    for name in target_names:
        row[f"target_{name}"] = ("met" if met[name] else "missed") if name in met else ""
    row["all_targets_met"] = r.all_met if r.status == "ok" else ""
    row["dominant_cost"] = r.dominant
    row["largest_overhead"] = r.overhead
    for c in COST_CLASSES:
        row[f"share_{c.replace(' ', '_').replace('-', '_')}"] = r.cost_shares.get(c, "")
    row["error"] = r.error
    return row


def comparison_rows(results: Sequence[LayoutResult], target_names: Sequence[str]) -> list[dict]:
    """One row per layout, in `results` order: the columns of comparison.csv (`serving_*` ones when any
    layout has serving figures)."""
    rows = [_row(r, target_names) for r in results]
    if any(r.layout.redundant_experts for r in results):  # the column, after microbatches, for every row
        rows = [with_redundant_experts(row, r.layout.redundant_experts) for row, r in zip(rows, results)]
    serving = sorted({k for r in results for k in r.serving})
    for row, r in zip(rows, results):
        row.update({f"serving_{k}": r.serving.get(k, math.nan) for k in serving})
    return rows


def with_redundant_experts(row: dict, redundant_experts: int) -> dict:
    """`row` with a redundant_experts column right after its microbatches column."""
    out = {}
    for k, v in row.items():
        if k != "redundant_experts":
            out[k] = v
        if k == "microbatches":
            out["redundant_experts"] = redundant_experts
    return out


def comparison_csv(results: Sequence[LayoutResult], target_names: Sequence[str]) -> str:
    rows = comparison_rows(results, target_names)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["layout"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: (repr(v) if isinstance(v, float) and math.isfinite(v) else ("" if isinstance(v, float) else v))
                for k, v in row.items()
            }
        )
    return buffer.getvalue()


def compare_check_lines(scenario: Scenario, results: Sequence[LayoutResult]) -> list[str]:
    """report.checks.check_lines of the simulated layouts: the profile's calibration note and, where they were
    served with an engine profile, its end-to-end checks, per deployment class the layouts span (attention DP
    + EP apart)."""
    from simulator.config import resolve_hardware
    from simulator.config.scenario import layout_result_class
    from simulator.report.checks import check_lines

    ok = [r for r in results if r.status == "ok"]
    moe = scenario.model.is_moe
    classes = {layout_result_class(moe, r.layout) for r in ok} or {scenario.result_class}
    serving = scenario.serving
    engine = serving.engine_profile() if serving is not None and serving.engine and any(r.serving for r in ok) else None
    hw = resolve_hardware(scenario)
    return check_lines(((hw, c) for c in classes), engine)


def comparison_md(scenario: Scenario, results: Sequence[LayoutResult], objective: str) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "screened", "failed")}
    lines = [
        f"# Layout comparison: {scenario.name}",
        "",
        f"{len(results)} layouts on {results[0].layout.num_gpus if results else 0} GPUs: {counts['ok']} simulated, "
        f"{counts['screened']} screened out (weights + KV cache do not fit), {counts['failed']} failed. "
        f"Ranked by {_OBJECTIVE_TEXT[objective]}. Workload: batch {scenario.workload.batch_size}, "
        f"input {scenario.workload.input_len_tokens}, output {scenario.workload.output_len_tokens} tokens.",
        "",
    ]
    notes = compare_check_lines(scenario, results)
    if notes:
        lines += [*notes, ""]
    best = winner(results)
    if best is not None:
        lines += [
            f"**Best: {best.label}** ({'meets every target' if best.all_met else 'misses a target'}; "
            f"dominant cost: {best.dominant}). `best.yaml` holds it as a scenario.",
            "",
        ]
    lines += [
        "| rank | layout | TTFT mean | TTFT max | TPOT | out tok/ms/GPU | prefill tok/ms/GPU | total tok/ms/GPU "
        "| memory/GPU | targets | dominant cost | largest overhead |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in results:
        name = f"**{r.label}** (scenario)" if r.own else r.label
        if r.status != "ok":
            lines.append(f"| - | {name} | | | | | | | {_memory_text(r)} | {r.status} | {r.error} | |")
            continue
        lines.append(
            f"| {r.rank} | {name} | {fmt_figure(r.ttft_mean_s, 's')} | {fmt_figure(r.ttft_max_s, 's')} | "
            f"{fmt_figure(r.tpot_s, 's')} | "
            + " | ".join(fmt_figure(r.throughput[k], "") for k in THROUGHPUTS)
            + f" | {_memory_text(r)} | {_verdicts(r)} | {r.dominant} | {r.overhead} |"
        )
    columns = _serving_columns(results)
    if columns:
        lines += [
            "",
            "## Serving simulation per layout",
            "",
            "| rank | layout | " + " | ".join(header for _, header, _ in columns) + " |",
            "|---:|---|" + "---:|" * len(columns),
        ]
        lines += [
            f"| {r.rank} | {r.label} | "
            + " | ".join(fmt_figure(r.serving.get(k, math.nan), kind) for k, _, kind in columns)
            + " |"
            for r in results
            if r.status == "ok"
        ]
    tags = ", ".join(f"{tag} = {metric}" for metric, tag in _TARGET_TAG.items() if metric in scenario.targets)
    lines += [
        "",
        "Dominant cost: the largest share of GPU time (makespan x GPUs) among compute-bound kernels, "
        "memory-bound kernels, kernel launches, exposed TP communication, exposed EP all-to-all, and "
        "pipeline bubbles (compute streams idle waiting for other stages); largest overhead: the biggest of "
        "the last four, with its share. Layout names list the degrees above 1 (PP, DP, TP, EP, ETP) and the "
        f"microbatch count (mb). Targets: {tags}.",
        "",
    ]
    return "\n".join(lines)


def best_yaml(scenario: Scenario, best: LayoutResult, objective: str) -> str:
    """The winning layout as a scenario file `moesim run` accepts. The declared section is dropped:
    it describes the original deployment's claims, not this layout."""
    variant = with_layout(scenario, best.layout)
    data = variant.model_dump(mode="json", exclude_none=True, exclude={"declared"})
    data["description"] = f"{scenario.name} on its best layout by moesim compare: {best.label}"
    tput = best.throughput.get("output_tokens_per_ms_per_gpu", math.nan)
    header = (
        f"# Written by `moesim compare` (objective: {_OBJECTIVE_TEXT[objective]}).\n"
        f"# Layout {best.label}: TTFT max {fmt_figure(best.ttft_max_s, 's')}, TPOT {fmt_figure(best.tpot_s, 's')}, "
        f"{tput:.4g} output tokens/ms/GPU, {fmt_figure(best.memory_bytes_per_gpu, 'bytes')} per GPU.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def write_comparison(scenario: Scenario, results: Sequence[LayoutResult], out: Path, objective: str) -> list[Path]:
    """comparison.csv, comparison.md, pareto.png and best.yaml (when a layout fits) into `out`."""
    out = Path(out)
    names = list(scenario.targets)
    files = [out / "comparison.csv", out / "comparison.md", out / "pareto.png"]
    write_atomic(files[0], comparison_csv(results, names))
    write_atomic(files[1], comparison_md(scenario, results, objective))
    write_atomic(files[2], pareto_png(scenario, results))
    best = winner(results)
    if best is not None:
        files.append(out / "best.yaml")
        write_atomic(files[-1], best_yaml(scenario, best, objective))
    return files


# ---------------------------------------------------------------------------------------------
# Pareto plot
