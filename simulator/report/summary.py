"""Reports stage: summary.json / summary.md / ops.csv of a run, and the terminal tables."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from simulator import critical_path
from simulator.audit import AuditLine
from simulator.config import precision_line
from simulator.config.checked import ResultClass
from simulator.files import write_atomic
from simulator.pipeline import DagResult, RunResult
from simulator.placement import gpu_ranges, represented_gpus
from simulator.report.csv_text import csv_text
from simulator.verify import Check, per_gpu_table


def fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds >= 1.0:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.2f} us"


def fmt_tpot(tpot_s: float) -> str:
    """TPOT as fmt_s; 0 (metrics' figure for a single output token, where no token follows
    another) is shown as undefined, not as a time."""
    return "undefined (one output token)" if tpot_s == 0.0 else fmt_s(tpot_s)


def fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _sliding_window(model) -> dict:
    """summary.json's sliding_window (only for a model with one): the window and the layers that slide."""
    if model.sliding_window is None:
        return {}
    layers = [i for i in range(model.num_layers) if model.attention_window(i) is not None]
    return {"sliding_window": {"window_tokens": model.sliding_window, "layers": layers}}


def _layout(run: RunResult | DagResult) -> dict:
    s = run.scenario
    rt = s.runtime
    return {
        **s.parallel.model_dump(exclude_none=True),
        "num_gpus": s.num_gpus,
        "hardware": run.hardware.name,
        "mode": rt.mode,
        "allreduce": rt.allreduce,
        "custom_allreduce_max_bytes": rt.custom_allreduce_max_bytes,
        "moe_over_tp_allreduce": s.moe_allreduce,
        **({"mla_prefill": rt.mla_prefill} if s.model.is_mla else {}),
        **({"ep_dispatch": rt.ep_dispatch} if rt.ep_dispatch != "all_to_all" and _has_ep_exchange(s) else {}),
    }


def _has_ep_exchange(s) -> bool:
    """Whether the MoE layers exchange tokens across an expert group (the all-to-all flow over several ranks)."""
    p = s.parallel
    return s.model.is_moe and not s.moe_allreduce and p.ep * p.etp > 1


def _collectives(layout: dict) -> str:
    """How the layout's TP collectives were priced, after the decode mode: ', custom all-reduce below 8.39 MB'
    (or ', NCCL ring all-reduce') when there is TP, and ', MoE over TP by one all-reduce' for the engines' TP MoE;
    an expert group's all-gather exchange (runtime.ep_dispatch allgather); with MLA, how its prefill ran
    (', MLA prefill decompressed')."""
    tail = f", MLA prefill {layout['mla_prefill']}" if "mla_prefill" in layout else ""
    if "ep_dispatch" in layout:  # (only an allgather exchange is named: all-to-all is the default)
        tail = ", experts reached by all-gather and reduce-scatter" + tail
    if layout["tp"] == 1 and layout["etp"] == 1:
        return tail
    if layout["allreduce"] == "custom":
        text = f", custom all-reduce below {fmt_bytes(layout['custom_allreduce_max_bytes'])}"
    else:
        text = ", NCCL ring all-reduce"
    return text + (", MoE over TP by one all-reduce" if layout["moe_over_tp_allreduce"] else "") + tail


def summary_dict(run: RunResult, critical: dict | None = None) -> dict:
    """Everything a pipeline needs, machine-readable; deterministic for a given scenario.

    `critical`: the critical-path summary if already computed (critical_path.analyse), else it is.
    """
    m = run.metrics
    d = m.to_dict()
    if critical is None:
        critical, _ = critical_path.analyse(run.dag, run.sim.ops, run.scenario.num_gpus)
    out = {
        "scenario": run.scenario.name,
        "model": run.scenario.model.name,
        "layout": _layout(run),
        "workload": run.scenario.workload.model_dump(),
        **_sliding_window(run.scenario.model),
        "ttft_s": d["ttft_s"],
        "tpot_s": m.tpot_s,
        "prefill_s": m.prefill_s,
        "decode_s": m.decode_s,
        "total_s": m.total_s,
        "throughput": m.throughput,
        "memory": d["memory"],
        "busy_s": d["busy_s"],
        "bottleneck": m.bottleneck,
        "routing": d["routing"],
        "placement": d["placement"],
        "critical_path": critical,
        "targets": d["targets"],
        "all_targets_met": all(t.met for t in m.targets),
        "calibration": calibration_dict(run.hardware, run.scenario.result_class),
        "audit": [a.to_dict() for a in run.audit],
        "verification": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in run.checks],
        "dag": {
            "nodes": len(run.dag),
            "edges": len(run.dag.src),
            "engine_events": run.sim.num_events,
        },
    }
    if run.sampling is not None:
        out["sampling"] = run.sampling
    formats = run.scenario.model.formats
    line = precision_line(formats, run.hardware)
    if formats.explicit or not formats.uniform or line != formats.describe():
        # a plain `dtype` model, computable as such, needs no line (the summaries of such runs stay as
        # they were); the terminal prints it always
        out["precision"] = line
    if run.scenario.model.weight_memory_approximation:
        out["memory_approximate"] = run.scenario.model.weight_memory_approximation
    representatives = run.dag.graph.get("representatives")
    if representatives:
        groups = represented_gpus(representatives, run.scenario.num_gpus)
        out["folded"] = {"representatives": {str(r): gpus for r, gpus in groups.items()}}
    return out


def calibration_dict(hw, result: ResultClass | None = None) -> dict:
    """The profile's calibration status and, unless calibrated, what the result rests on and what error to
    expect (config.hardware.calibration_note; result: the scenario's result_class, for the profile's checks)."""
    from simulator.config.hardware import calibration_note

    out = {"status": hw.calibration_status}
    note = calibration_note(hw, result)
    if note:
        out["note"] = note
    return out


def calibration_line(summary: dict) -> str:
    """One sentence for every output: empty on a calibrated profile."""
    note = summary.get("calibration", {}).get("note")
    return f"Calibration: {note}." if note else ""


def sampled_note(summary: dict, figure: str) -> str:
    """' (sampled: ±0.012 %)' after a figure that decode sampling interpolated, else ''."""
    sampling = summary.get("sampling")
    if not sampling or figure not in sampling["relative_error"]:
        return ""
    return f" (sampled: error {fmt_error(sampling['relative_error'][figure])})"


def fmt_error(relative: float) -> str:
    """A measured relative error as a percentage: '0.12 %', or '< 0.001 %'."""
    return "< 0.001 %" if relative < 1e-5 else f"{100 * relative:.2g} %"


def sampling_sentence(summary: dict) -> str:
    """How the run was simulated: decode sampling with its measured error, and folding; '' for neither."""
    parts = []
    sampling = summary.get("sampling")
    if sampling:
        parts.append(
            f"{len(sampling['simulated_steps'])} of {sampling['decode_steps']} decode steps simulated, the rest "
            f"interpolated; figures marked 'sampled' differ by {fmt_error(sampling['max_relative_error'])} at most "
            f"from a simulation of {sampling['check_steps']} steps ({len(sampling['held_out_steps'])} of them "
            f"held out from the interpolation)"
        )
    folded = summary.get("folded")
    if folded:
        groups = "; ".join(f"GPU {r} for GPUs {gpu_ranges(g)}" for r, g in folded["representatives"].items())
        parts.append(f"symmetric GPUs folded (exact): each simulated GPU stands for its pipeline stage ({groups})")
    if not parts:
        return ""
    return "; ".join(parts) + ". `moesim run --full` simulates every step on every GPU."


def target_rows(summary: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for t in summary["targets"]:
        op = ">=" if t["bound"] == "min" else "<="
        unit = _fmt_metric(t["metric"], t["actual"]), _fmt_metric(t["metric"], t["limit"])
        verdict = "MET" if t["met"] else "MISSED"
        if t["metric"].startswith("memory") and summary.get("memory_approximate"):
            verdict += " (approximate)"
        rows.append((t["metric"], f"{op} {unit[1]}", unit[0], verdict))
    return rows


def _fmt_metric(metric: str, value: float) -> str:
    if metric.endswith("_s"):
        return fmt_s(value)
    if metric.startswith("memory"):
        return fmt_bytes(value)
    return f"{value:.4g}"


def _copies(layout: dict) -> str:
    """' (+32 redundant experts)' after the EP degree when the layout has copies, else ''."""
    n = layout.get("redundant_experts", 0)
    return f" (+{n} redundant experts)" if n else ""


def summary_markdown(summary: dict) -> str:
    lay = summary["layout"]
    lines = [
        f"# moesim run: {summary['scenario']}",
        "",
        f"Model `{summary['model']}` on {lay['num_gpus']} x `{lay['hardware']}`, "
        f"TP={lay['tp']} EP={lay['ep']}{_copies(lay)} ETP={lay['etp']} PP={lay['pp']} DP={lay['dp']}, "
        f"{lay['microbatches']} microbatch(es), {lay['mode']} decode{_collectives(lay)}. Workload: "
        f"batch {summary['workload']['batch_size']}, input {summary['workload']['input_len_tokens']}, "
        f"output {summary['workload']['output_len_tokens']} tokens.",
        "",
    ]
    if summary.get("precision"):
        lines += [summary["precision"][0].upper() + summary["precision"][1:] + ".", ""]
    lines += [
        "| metric | value |",
        "|---|---|",
        f"| TTFT mean / p50 / p99 / max | {' / '.join(fmt_s(summary['ttft_s'][k]) for k in ('mean', 'p50', 'p99', 'max'))} |",
        f"| TPOT (time per output token) | {fmt_tpot(summary['tpot_s'])}{sampled_note(summary, 'tpot_s')} |",
        f"| prefill / decode / total | {fmt_s(summary['prefill_s'])} / {fmt_s(summary['decode_s'])} / {fmt_s(summary['total_s'])}"
        f"{sampled_note(summary, 'total_s')} |",
    ]
    for k, v in summary["throughput"].items():
        lines.append(f"| {k.replace('_', ' ')} | {v:.4g}{sampled_note(summary, k)} |")
    if sampling_sentence(summary):
        lines += ["", sampling_sentence(summary)]
    if calibration_line(summary):
        lines += ["", calibration_line(summary)]
    lines += ["", "## Targets", "", "| target | limit | actual | verdict |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in target_rows(summary)]
    lines += [
        "",
        "## Memory per GPU",
        "",
        "| GPU | weights | KV cache | activations | reserve | total | of capacity | fits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mem in summary["memory"]:
        lines.append(
            f"| {mem['gpu']} | {fmt_bytes(mem['weight_bytes'])} | {fmt_bytes(mem['kv_cache_bytes'])} | "
            f"{fmt_bytes(mem['activation_bytes'])} | {fmt_bytes(mem['reserve_bytes'])} | {fmt_bytes(mem['total_bytes'])} | "
            f"{100 * mem['utilization']:.1f}% | {'yes' if mem['fits'] else 'NO: does not fit'} |"
        )
    if summary.get("memory_approximate"):
        lines += ["", f"**Memory is approximate**: {summary['memory_approximate']}."]
    lines += [
        "",
        "Activations here are a closed form (one pass's residual stream plus the largest kernel's inputs "
        "and outputs), the figure the memory target is checked against; memory.png follows memory over time, "
        "whose peak can be lower.",
    ]
    lines += ["", "## What bounds the run", ""] + [f"- {v}" for v in summary["bottleneck"].values()]
    lines += _critical_path_markdown(summary.get("critical_path"))
    cats = sorted({c for per in summary["busy_s"].values() for c in per})
    lines += ["", "## Busy time per GPU (s)", "", "| GPU | " + " | ".join(cats) + " |", "|---" * (len(cats) + 1) + "|"]
    for g, per in summary["busy_s"].items():
        lines.append(f"| {g} | " + " | ".join(f"{per.get(c, 0.0):.4g}" for c in cats) + " |")
    if summary["audit"]:
        lines += ["", "## Claim audit", "", "| claim | declared | computed | verdict | why |", "|---|---|---|---|---|"]
        lines += [
            f"| {a['claim']} | {a['declared']} | {a['computed']} | {a['verdict']} | {a['explanation']} |"
            for a in summary["audit"]
        ]
    lines += ["", "## DAG verification", ""]
    lines += [f"- {'ok' if c['ok'] else 'FAILED'}: {c['check']} ({c['detail']})" for c in summary["verification"]]
    return "\n".join(lines) + "\n"


def _critical_path_markdown(cp: dict | None) -> list[str]:
    if not cp:
        return []
    lines = [
        "",
        "## Critical path",
        "",
        "The chain of operations that sets the time (critical_path.csv lists it); shares are of the path's length.",
        "",
    ]
    sentences = cp.get("sentences", {})
    lines += [f"- {sentences[k]}" for k in ("ttft", "tpot") if k in sentences]
    paths = [
        (name, cp[key])
        for name, key in (
            ("to the first token (TTFT)", "ttft"),
            ("whole run", "total"),
            ("one decode step (mean)", "decode_step"),
        )
        if key in cp
    ]
    last = paths[-1][1]["shares"] if paths else {}
    cats = sorted({c for _, p in paths for c in p["shares"]}, key=lambda c: (-last.get(c, 0.0), c))
    lines += ["", "| path | length | " + " | ".join(cats) + " |", "|---" * (len(cats) + 2) + "|"]
    for name, p in paths:
        length = p.get("length_s", p.get("step_s", 0.0))
        lines.append(
            f"| {name} | {fmt_s(length)} | " + " | ".join(f"{100 * p['shares'].get(c, 0.0):.1f}%" for c in cats) + " |"
        )
    return lines


def write_run_files(run: RunResult, out_dir: Path, ops: bool = True, analysis: tuple | None = None) -> dict:
    """summary.json, summary.md, critical_path.csv (both paths, one row per node; `row` is the
    node's row in the operator table) and that table: ops.csv when `ops`, else gzip-compressed
    as ops.csv.gz (what `moesim plot` reads back). `analysis`: critical_path.analyse's answer when
    already computed."""
    critical, paths = analysis or critical_path.analyse(run.dag, run.sim.ops, run.scenario.num_gpus)
    summary = summary_dict(run, critical)
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    write_atomic(out_dir / "summary.md", summary_markdown(summary))
    table = run.sim.ops.copy()
    table["gpu"] = [
        ",".join(map(str, g)) if isinstance(g, tuple) else ("" if g is None else str(g)) for g in table["gpu"]
    ]
    text = csv_text(table)
    if ops:
        write_atomic(out_dir / "ops.csv", text)
    else:  # level 1: a fifth of the size at a tenth of level 6's time; mtime 0 keeps the bytes reproducible
        write_atomic(out_dir / "ops.csv.gz", gzip.compress(text.encode(), compresslevel=1, mtime=0))
    tables = []
    for name, path in paths.items():
        table = critical_path.path_table(run.sim.ops, path)
        table.insert(0, "row", path.rows)
        table.insert(0, "path", name)
        tables.append(table)
    write_atomic(out_dir / "critical_path.csv", csv_text(pd.concat(tables, ignore_index=True)))
    return summary


# ---------------------------------------------------------------------------------------------
# Terminal


def print_checks(console: Console, checks: list[Check]) -> None:
    table = Table(title="DAG verification", show_header=True)
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for c in checks:
        table.add_row(escape(c.name), "[green]ok[/green]" if c.ok else "[red]FAILED[/red]", escape(c.detail))
    console.print(table)


def print_audit(console: Console, lines: list[AuditLine], source: str = "") -> None:
    if not lines:
        return
    table = Table(title=escape(f"Claim audit{f' ({source})' if source else ''}"))
    for col, width in (("claim", 20), ("declared", 18), ("computed", 22), ("verdict", 13)):
        table.add_column(col, overflow="fold", max_width=width)
    table.add_column("why", overflow="fold", ratio=1)
    colour = {"holds": "green", "holds only with EP folded": "yellow", "does not hold": "red", "pending": "yellow"}
    for a in lines:
        table.add_row(
            escape(a.claim),
            escape(a.declared),
            escape(a.computed),
            f"[{colour[a.verdict]}]{a.verdict}[/]",
            escape(a.explanation),
        )
    console.print(table)


def print_gpu_table(console: Console, result: DagResult | RunResult) -> None:
    frame = per_gpu_table(result.graph, result.scenario)
    table = Table(title="Per GPU")
    for col in ("GPU", "stage", "layers", "experts", "weights", "FLOPs", "HBM bytes", "sent"):
        table.add_column(col, justify="right")
    for r in frame.itertuples():
        table.add_row(
            str(r.gpu),
            str(r.stage),
            escape(r.layers),
            escape(r.experts),
            fmt_bytes(r.weight_bytes),
            f"{r.flops:.3e}",
            fmt_bytes(r.hbm_bytes),
            fmt_bytes(r.sent_bytes),
        )
    console.print(table)


def print_run(console: Console, run: RunResult, summary: dict) -> None:
    lay = summary["layout"]
    console.print(
        f"[bold]{escape(summary['scenario'])}[/bold]: {escape(summary['model'])} on {lay['num_gpus']} x {lay['hardware']}, "
        f"TP={lay['tp']} EP={lay['ep']}{_copies(lay)} PP={lay['pp']} DP={lay['dp']} ETP={lay['etp']}, "
        f"{lay['microbatches']} microbatch(es), {lay['mode']} decode{escape(_collectives(lay))}"
    )
    console.print(escape(precision_line(run.scenario.model.formats, run.hardware)))
    if calibration_line(summary):
        console.print(f"[yellow]{escape(calibration_line(summary))}[/yellow]")
    t = Table(title="Results")
    t.add_column("metric")
    t.add_column("value", justify="right")
    ttft = summary["ttft_s"]
    t.add_row("TTFT mean / p99 / max", f"{fmt_s(ttft['mean'])} / {fmt_s(ttft['p99'])} / {fmt_s(ttft['max'])}")
    t.add_row("TPOT", fmt_tpot(summary["tpot_s"]) + sampled_note(summary, "tpot_s"))
    t.add_row(
        "prefill / decode / total",
        f"{fmt_s(summary['prefill_s'])} / {fmt_s(summary['decode_s'])} / "
        f"{fmt_s(summary['total_s'])}{sampled_note(summary, 'total_s')}",
    )
    for k, v in summary["throughput"].items():
        t.add_row(k, f"{v:.4g}{sampled_note(summary, k)}")
    mem = max(summary["memory"], key=lambda m: m["total_bytes"])
    t.add_row(
        "memory (busiest GPU)",
        f"{fmt_bytes(mem['total_bytes'])} = {100 * mem['utilization']:.1f}% of "
        f"{fmt_bytes(mem['capacity_bytes'])} (weights {fmt_bytes(mem['weight_bytes'])}, KV {fmt_bytes(mem['kv_cache_bytes'])}, "
        f"activations {fmt_bytes(mem['activation_bytes'])})" + ("" if mem["fits"] else " [red]DOES NOT FIT[/red]"),
    )
    console.print(t)
    if summary["targets"]:
        tt = Table(title="Targets")
        for col in ("target", "limit", "actual", "verdict"):
            tt.add_column(col)
        for a, b, c, d in target_rows(summary):
            tt.add_row(a, b, c, f"[green]{d}[/green]" if d.startswith("MET") else f"[red]{d}[/red]")
        console.print(tt)
    routing = summary.get("routing") or {}
    if (
        routing.get("routing", "uniform") != "uniform"
        or routing.get("max_over_mean_tokens_per_ep_rank", 1.0) > 1.0 + 1e-9
    ):
        console.print(
            f"- routing ({routing['routing']}): the busiest EP rank gets "
            f"{routing['max_over_mean_tokens_per_ep_rank']:.2f}x the mean tokens (worst layer); its experts take "
            f"{fmt_s(routing['straggler_s'])} longer than the mean rank's in all"
            + (
                f"; {100 * routing['dropped_fraction']:.1f}% of token copies dropped at capacity"
                if routing.get("dropped_fraction")
                else ""
            )
        )
    for note in summary["placement"].get("notes", []):
        console.print(f"- placement: {escape(note)}")
    for sentence in summary["bottleneck"].values():
        console.print(f"- {escape(sentence)}")
    sentences = summary.get("critical_path", {}).get("sentences", {})
    for key in ("ttft", "tpot"):
        if key in sentences:
            console.print(f"- critical path: {escape(sentences[key])}")
    if sampling_sentence(summary):
        console.print(f"- {escape(sampling_sentence(summary))}")
    if summary.get("memory_approximate"):
        console.print(f"- [yellow]memory is approximate[/yellow]: {escape(summary['memory_approximate'])}")
    print_audit(console, run.audit, (run.scenario.declared.source if run.scenario.declared else ""))
