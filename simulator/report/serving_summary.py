"""Reports stage, serving: requests.csv, summary.json / summary.md of a serving run, rate_curve.csv, and the
terminal tables of `moesim serve`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from simulator.config.checked import ResultClass
from simulator.config.engine import SCENARIO_HOST_SOURCE, host_rate_text
from simulator.config.serving import CHUNKED_POLICIES
from simulator.files import write_atomic
from simulator.report.summary import calibration_line, fmt_s
from simulator.serving.simulate import ServingRun
from simulator.serving.stats import (
    LATENCY_METRICS,
    STATISTICS,
    ServingSummary,
    group_balance_ratio,
    kv_cache_figures,
    request_itl_table,
    request_table,
    turn_rows,
)

#: Columns of requests.csv, in order.
REQUEST_COLUMNS = (
    "request_id",
    "replica",
    "warmup",
    "arrival_s",
    "queueing_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "input_tokens",
    "output_tokens",
    "preemptions",
    "itl_mean_s",
    "itl_p99_s",
    "itl_max_s",
    "first_scheduled_s",
    "first_token_s",
    "finish_s",
    "good",
)
LATENCY_TEXT = {"ttft_s": "TTFT", "tpot_s": "TPOT", "itl_s": "ITL", "e2e_s": "end to end", "queueing_s": "queueing"}
_TARGET_TEXT = {
    "ttft_p99_s": "TTFT p99",
    "tpot_p99_s": "TPOT p99",
    "e2e_p99_s": "e2e p99",
    "min_goodput_fraction": "goodput fraction",
}
THROUGHPUT_ROWS = (
    ("requests / s", "requests_per_s"),
    ("output tokens / s", "output_tokens_per_s"),
    ("input tokens / s", "input_tokens_per_s"),
    ("total tokens / s", "total_tokens_per_s"),
    ("output tokens / s / GPU", "output_tokens_per_s_per_gpu"),
    ("total tokens / s / GPU", "total_tokens_per_s_per_gpu"),
    ("output tokens / ms / GPU", "output_tokens_per_ms_per_gpu"),
    ("total tokens / ms / GPU", "total_tokens_per_ms_per_gpu"),
    ("goodput (requests / s)", "goodput_requests_per_s"),
)


def requests_frame(run: ServingRun, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per request (REQUEST_COLUMNS), warmup requests included and flagged."""
    table = request_table(run) if table is None else table
    frame = pd.concat([table.reset_index(drop=True), request_itl_table(run)], axis=1)
    # prefix caching and conversations add what only they have: prompt tokens read from the cache, conversation, turn
    extra = [c for c in ("cached_tokens", "conversation", "turn") if c in frame.columns]
    return frame[list(REQUEST_COLUMNS) + extra]


def _json_number(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _launch_dict(tally: dict[str, tuple[int, int, int]]) -> dict:
    """A launch tally (ServingRun.launches) as summary.json writes it: per kind the iterations, their sequences
    (graph) or new tokens, and the padding."""
    return {
        kind: {"iterations": n, "sequences" if kind == "graph" else "new_tokens": u, "padding": p}
        for kind, (n, u, p) in tally.items()
    }


def serving_summary_dict(
    name: str, run: ServingRun, summary: ServingSummary, pricer: str, result: ResultClass | None = None
) -> dict:
    """summary.json: the latency statistics and figures of stats.summarize (NaN written as null), the
    KV-cache use, the verdicts and what was simulated (result: the scenario's result_class, for the engine
    profile's checks)."""
    spec = run.spec
    figures = {
        **summary.figures,
        **kv_cache_figures(run),
        "num_replicas": float(len(run.peak_kv_blocks)),
        "num_iterations": float(run.num_iterations),
        "end_s": run.end_s,
    }
    extra: dict = {}  # what only some runs have: the engine's launches and end-to-end check
    if run.launches is not None:
        extra["launches"] = _launch_dict(run.launches)
        d = run.disaggregation
        if d is not None and d.prefill_launches is not None and d.decode_launches is not None:
            extra["launches_by_pool"] = {
                "prefill": _launch_dict(d.prefill_launches),
                "decode": _launch_dict(d.decode_launches),
            }
    if run.host is not None and run.host.seconds > 0.0:  # the engine's host work, where its profile has any
        h = run.host
        extra["host"] = {
            "iterations": h.iterations,
            "host_bound_iterations": h.host_bound,
            "host_seconds": h.seconds,
            "per_iteration_s": h.per_iteration_s,
            "per_sequence_s": h.per_sequence_s,
            "overlapped": h.overlapped,
            "from_scenario": h.source == SCENARIO_HOST_SOURCE,
        }
    ratio = group_balance_ratio(run)
    if not math.isnan(ratio):  # a lockstep group: how evenly its ranks shared the iterations' work
        adp = spec.replicas.attention_dp_balance
        extra["lockstep"] = {
            "ranks": len(run.peak_kv_blocks),
            "router": spec.replicas.router,
            "balance_ratio": ratio,
            "attention_dp_balance": None if adp is None else adp.model_dump(),
            "held_iterations": run.balance_held,
        }
    if run.prefix_cache is not None:  # prefix caching of a shared prefix or of conversations: what the cache saved
        hit, admitted = run.prefix_cache
        prefix, conversation = spec.workload.shared_prefix, spec.workload.conversation
        if prefix is not None:
            source: dict = {"shared_prefix_tokens": prefix.tokens, "groups": prefix.groups}
        else:
            assert conversation is not None
            source = {"conversation_turns": conversation.turns, "think_time_s": conversation.think_time_s}
        extra["prefix_cache"] = {
            **source,
            "prompt_tokens_admitted": admitted,
            "prompt_tokens_from_cache": hit,
            "hit_fraction": hit / admitted if admitted else 0.0,
        }
    if spec.workload.conversation is not None and run.disaggregation is None:  # conversations: by turn
        extra["turns"] = turn_rows(request_table(run))
    if spec.engine is not None:  # how close the engine profile came to published runs (EngineProfile.checked)
        extra["engine_check"] = spec.engine_profile().check_note(result)
    return {
        **extra,
        "scenario": name,
        "pricer": pricer,
        "serving": spec.model_dump(mode="json"),
        "latency": {
            m: {s: _json_number(float(summary.latency.loc[m, s])) for s in STATISTICS} for m in LATENCY_METRICS
        },
        "figures": {k: _json_number(float(v)) for k, v in figures.items()},
        "targets": [
            {"target": k, "limit": limit, "actual": _json_number(actual), "met": met}
            for k, (actual, limit, met) in summary.verdicts.items()
        ],
        "all_targets_met": summary.all_targets_met,
    }


def format_value(value, kind: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "s":
        return fmt_s(value)
    if kind == "%":
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def target_rows(summary: dict) -> list[tuple[str, str, str, str]]:
    """(target, limit, actual, verdict) per target given."""
    rows = []
    for t in summary["targets"]:
        kind = "%" if t["target"] == "min_goodput_fraction" else "s"
        op = ">=" if t["target"] == "min_goodput_fraction" else "<="
        rows.append(
            (
                _TARGET_TEXT[t["target"]],
                f"{op} {format_value(t['limit'], kind)}",
                format_value(t["actual"], kind),
                "MET" if t["met"] else "MISSED",
            )
        )
    return rows


def _kv_text(summary: dict) -> str:
    f = summary["figures"]
    cached = " with cached prefixes (evicted when a request needs their room)" if summary.get("prefix_cache") else ""
    return (
        f"peak {f['kv_peak_blocks']:.0f} / mean {f['kv_mean_blocks']:.1f} of {f['kv_capacity_blocks']:.0f} "
        f"blocks ({format_value(f['kv_peak_fraction'], '%')} / {format_value(f['kv_mean_fraction'], '%')}){cached}"
    )


def headline(summary: dict) -> str:
    s, f = summary["serving"], summary["figures"]
    if s.get("disaggregation"):
        return (
            f"{f['num_requests']:.0f} measured requests ({s['workload']['arrivals']['kind']} arrivals), "
            f"disaggregated {pools_text(s['disaggregation'])}, {f['num_gpus']:.0f} GPU(s); iterations priced "
            f"by {summary['pricer']}"
        )
    conversation = s["workload"].get("conversation")
    turns = (
        ""
        if not conversation
        else f" in conversations of {conversation['turns']} turns {conversation['think_time_s']:g} s apart"
    )
    return (
        f"{f['num_requests']:.0f} measured requests ({s['workload']['arrivals']['kind']} arrivals){turns}, "
        f"{s['scheduler']['policy']} scheduler, {f['num_replicas']:.0f} replica(s), "
        f"{f['num_gpus']:.0f} GPU(s); iterations priced by {summary['pricer']}"
    )


def scheduler_line(summary: dict) -> str | None:
    """The scheduler as simulated, and where the fields the scenario leaves out come from: 'scheduler: at most 2048
    sequences and 8192 tokens an iteration, admission reserve; KV 51704 blocks of 32 tokens (free_memory_fraction
    0.9 of what the weights leave); ...'. None for a disaggregated run (its pools have schedulers of their own)."""
    s = summary["serving"]
    if s.get("disaggregation"):
        return None
    sch, kv = s["scheduler"], s["scheduler"]["kv_cache"]
    if kv.get("gpu_memory_utilization") is not None:
        rule = f"gpu_memory_utilization {kv['gpu_memory_utilization']:g} of the GPU"
    elif kv.get("free_memory_fraction") is not None:
        rule = f"free_memory_fraction {kv['free_memory_fraction']:g} of what the weights leave"
    elif kv.get("mem_fraction_static") is not None:
        rule = f"mem_fraction_static {kv['mem_fraction_static']:g} of the GPU for the weights and the KV cache"
    else:
        rule = "the memory model: the GPU's memory less the reserve, weights and activations, or capacity_blocks"
    source = f"engine {s['engine']}'s defaults, else moesim's" if s.get("engine") else "moesim's defaults"
    sliding = kv.get("sliding")
    if sliding:
        window = (
            f"; {sliding['sliding_layers']} sliding-window layers keep their last {sliding['window_tokens']} "
            f"positions' blocks, {sliding['full_layers']} full layers all"
        )
    else:
        window = ""
    whole = ""
    if sch.get("split_prompts") is False and sch["policy"] in CHUNKED_POLICIES:
        whole = ", prompts whole (split_prompts false)"
    return (
        f"scheduler: at most {sch['max_num_seqs']} sequences and {sch['max_num_batched_tokens']} tokens an iteration, "
        f"admission {sch['admission']}{whole}; KV {summary['figures']['kv_capacity_blocks']:.0f} blocks of "
        f"{kv['block_size_tokens']} tokens ({rule}){window}; fields the scenario leaves out: {source}"
    )


def engine_check_line(summary: dict) -> str:
    """One sentence on the engine profile's end-to-end check; empty without an engine."""
    note = summary.get("engine_check")
    return f"Engine: {note}." if note else ""


def launches_line(summary: dict) -> str | None:
    """How the engine launched the run's iterations (every replica's batch; each pool's when disaggregated):
    'iterations launched: 9,512 replayed from CUDA graphs (2.1 % padding rows), 320 from piecewise graphs
    (6.0 % padding tokens), 48 eagerly'; None without an engine."""
    by_pool = summary.get("launches_by_pool")
    if by_pool:
        return "iterations launched: " + "; ".join(
            f"{pool} pool {_launch_parts(by_pool[pool])}" for pool in ("prefill", "decode")
        )
    launches = summary.get("launches")
    if not launches:
        return None
    return "iterations launched: " + _launch_parts(launches)


def host_line(summary: dict) -> str | None:
    """What the engine's host work did to the run's iterations: 'host work (29.37 us a sequence, overlapped with
    the GPU pass) outlasted the GPU pass in 4,120 of 6,011 iterations, which took it instead'; None where the
    engine profile has no host time."""
    host = summary.get("host")
    if not host:
        return None
    rate = host_rate_text(host["per_iteration_s"], host["per_sequence_s"])
    if host.get("from_scenario"):
        rate += ", the scenario's serving.host"
    n, bound = host["iterations"], host["host_bound_iterations"]
    if host["overlapped"]:
        return (
            f"host work ({rate}, overlapped with the GPU pass) outlasted the GPU pass in {bound:,} of {n:,} "
            "iterations, which took it instead"
        )
    return f"host work ({rate}, between GPU passes) added {host['host_seconds']:.3g} s over {n:,} iterations"


def lockstep_line(summary: dict) -> str | None:
    """How evenly a lockstep group's ranks shared its iterations, and what the attention-DP balance held:
    '4 ranks stepping together, requests sent round robin on arrival: rank balance 0.62 (...); attention_dp_balance
    off (...)'; None without a group."""
    group = summary.get("lockstep")
    if not group:
        return None
    adp, held_n = group["attention_dp_balance"], group["held_iterations"]
    if adp is None:
        held = "attention_dp_balance off (TensorRT-LLM's default)"
    else:
        held = (
            f"attention_dp_balance (timeout_iters {adp['timeout_iters']}, batching_wait_iters "
            f"{adp['batching_wait_iters']}) held the context requests of {held_n:,} "
            f"iteration{'' if held_n == 1 else 's'}"
        )
    router = ROUTER_TEXT.get(group.get("router"), group.get("router"))
    return (
        f"{group['ranks']} ranks stepping together, {router}: rank balance {group['balance_ratio']:.2f} (the ranks' "
        f"mean new tokens an iteration over the largest, averaged); {held}"
    )


def prefix_cache_line(summary: dict) -> str | None:
    """'prefix cache: 9,600 of 24,000 prompt tokens read from the cache (40.0 %), a shared prefix of 512 tokens in
    1 group' (or '..., conversations of 4 turns'), or None without prefix caching."""
    p = summary.get("prefix_cache")
    if not p:
        return None
    head = (
        f"prefix cache: {p['prompt_tokens_from_cache']:,} of {p['prompt_tokens_admitted']:,} prompt tokens read from "
        f"the cache ({100 * p['hit_fraction']:.1f} %), "
    )
    if "conversation_turns" in p:
        return head + f"conversations of {p['conversation_turns']:,} turns"
    groups = p["groups"]
    return (
        head
        + f"a shared prefix of {p['shared_prefix_tokens']:,} tokens in {groups:,} group{'' if groups == 1 else 's'}"
    )


def turns_line(summary: dict) -> str | None:
    """'by turn: TTFT p50 43.8 / 40.1 ms over prompts of 1,024 / 2,176 tokens, 0.0 / 52.2 % of them from the
    cache' for a conversation workload, else None."""
    rows = summary.get("turns")
    if not rows:
        return None
    ttft = " / ".join(f"{1e3 * r['ttft_p50_s']:.1f}" for r in rows)
    p99 = " / ".join(f"{1e3 * r['ttft_p99_s']:.1f}" for r in rows)
    prompts = " / ".join(f"{r['prompt_tokens_mean']:,.0f}" for r in rows)
    line = f"by turn: TTFT p50 {ttft} ms (p99 {p99}) over prompts of {prompts} tokens"
    cached = [r["cached_fraction"] for r in rows]
    if not any(c is None or math.isnan(c) for c in cached):
        line += ", " + " / ".join(f"{100 * c:.1f}" for c in cached) + " % of them from the cache"
    return line


#: How serving.replicas.router sends requests, for the lockstep line.
ROUTER_TEXT = {
    "round_robin": "requests sent round robin on arrival",
    "least_loaded": "requests sent on arrival to the rank with the fewest",
    "session": "every turn of a conversation sent to one rank (session affinity)",
    "vllm_dp": "requests sent on arrival to the rank with the lowest waiting x 4 + running as last published "
    "(vLLM's data-parallel load balancer)",
    "attention_dp": "requests queued and bound to a rank when the ranks have room (TensorRT-LLM's attention-DP queue)",
}


def _launch_parts(launches: dict) -> str:
    parts = []
    for kind, text, unit, what in (
        ("graph", "replayed from CUDA graphs", "sequences", "rows"),
        ("piecewise", "from piecewise graphs", "new_tokens", "tokens"),
        ("eager", "eagerly", "new_tokens", ""),
    ):
        if kind not in launches:
            continue
        row = launches[kind]
        part = f"{row['iterations']:,} {text}"
        total = row[unit] + row["padding"]
        if what and total:
            part += f" ({100 * row['padding'] / total:.1f} % padding {what})"
        parts.append(part)
    return ", ".join(parts)


def pools_text(d: dict) -> str:
    """'1P (TP4) + 1D (TP4 EP4), packed' from a dumped serving.disaggregation."""

    def pool(p: dict) -> str:
        degrees = [f"{k.upper()}{p['parallel'][k]}" for k in ("tp", "pp", "ep", "etp") if p["parallel"][k] > 1]
        return " ".join(degrees) or "1 GPU"

    return (
        f"{d['prefill']['instances']}P ({pool(d['prefill'])}) + {d['decode']['instances']}D ({pool(d['decode'])}), "
        f"{d['placement']}"
    )


#: (text, figure key, kind) rows of a disaggregated run's transfer table.
TRANSFER_ROWS = (
    ("KV transfers (measured)", "transfers", ""),
    ("bytes per transfer", "transfer_bytes_mean", ""),
    ("transfer time mean", "transfer_mean_s", "s"),
    ("transfer time p50", "transfer_p50_s", "s"),
    ("transfer time p99", "transfer_p99_s", "s"),
    ("wait for a decode slot mean", "transfer_wait_mean_s", "s"),
    ("wait for a decode slot p99", "transfer_wait_p99_s", "s"),
    ("link utilisation, busiest port", "link_utilisation_max", "%"),
    ("link utilisation, mean of ports used", "link_utilisation_mean", "%"),
    ("link busy time, busiest port", "link_busy_fraction_max", "%"),
)


def _prefill_kv_text(f: dict) -> str:
    return (
        f"peak {f['prefill_kv_peak_blocks']:.0f} / mean {f['prefill_kv_mean_blocks']:.1f} of "
        f"{f['prefill_kv_capacity_blocks']:.0f} blocks ({format_value(f['prefill_kv_peak_fraction'], '%')} / "
        f"{format_value(f['prefill_kv_mean_fraction'], '%')})"
    )


def serving_markdown(summary: dict) -> str:
    f = summary["figures"]
    lines = [
        f"# moesim serve: {summary['scenario']}",
        "",
        headline(summary) + ".",
        "",
        *([f"{line}.", ""] if (line := scheduler_line(summary)) else []),
        *([f"{line}.", ""] if (line := launches_line(summary)) else []),
        *([f"{line}.", ""] if (line := host_line(summary)) else []),
        *([f"{line}.", ""] if (line := lockstep_line(summary)) else []),
        *([f"{line[0].upper()}{line[1:]}.", ""] if (line := prefix_cache_line(summary)) else []),
        *([f"{line[0].upper()}{line[1:]}.", ""] if (line := turns_line(summary)) else []),
        *([calibration_line(summary), ""] if calibration_line(summary) else []),
        *([engine_check_line(summary), ""] if engine_check_line(summary) else []),
        "## Latency",
        "",
        "| metric | " + " | ".join(STATISTICS) + " |",
        "|---" * (len(STATISTICS) + 1) + "|",
    ]
    for m in LATENCY_METRICS:
        row = summary["latency"][m]
        lines.append(f"| {LATENCY_TEXT[m]} | " + " | ".join(format_value(row[s], "s") for s in STATISTICS) + " |")
    lines += ["", "## Throughput", "", "| figure | value |", "|---|---|"]
    lines += [f"| {text} | {format_value(f[key])} |" for text, key in THROUGHPUT_ROWS]
    lines += [
        f"| goodput fraction | {format_value(f['goodput_fraction'], '%')} |",
        f"| preemptions | {f['preemptions']:.0f} |",
        f"| KV cache{' (decode pool)' if 'transfer_mean_s' in f else ''} | {_kv_text(summary)} |",
        f"| measured window | {format_value(f['duration_s'], 's')} |",
    ]
    if "transfer_mean_s" in f:
        lines += ["", "## KV transfers (disaggregated)", "", "| figure | value |", "|---|---|"]
        lines += [f"| {text} | {format_value(f[key], kind)} |" for text, key, kind in TRANSFER_ROWS]
        lines.append(f"| KV cache (prefill pool) | {_prefill_kv_text(f)} |")
    if "max_rate" in summary:
        lines += ["", "## Max rate", "", max_rate_sentence(summary["max_rate"])]
    if summary["targets"]:
        lines += ["", "## Targets", "", "| target | limit | actual | verdict |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in target_rows(summary)]
    return "\n".join(lines) + "\n"


def max_rate_sentence(max_rate: dict) -> str:
    rate = max_rate["rate_per_s"]
    if rate is None:
        return "No arrival rate tried meets every target."
    capped = " (the highest rate tried: the true maximum may be higher)" if max_rate["capped"] else ""
    return (
        f"Highest Poisson arrival rate meeting every target: {format_value(rate)} "
        f"{max_rate.get('unit', 'requests/s')}{capped}, "
        f"within {100 * max_rate['rel_tol']:.3g}%; {max_rate['rates_tried']} rates simulated (rate_curve.csv)."
    )


def write_serving_files(
    name: str,
    run: ServingRun,
    summary: ServingSummary,
    pricer: str,
    out_dir: Path,
    table: pd.DataFrame | None = None,
    max_rate: dict | None = None,
    calibration: dict | None = None,
    result: ResultClass | None = None,
) -> dict:
    """requests.csv, summary.json and summary.md (with the max-rate search's result when given, and the
    hardware profile's calibration status: summary.calibration_dict), and for a disaggregated run
    transfers.csv and links.csv; returns the summary dict."""
    doc = serving_summary_dict(name, run, summary, pricer, result)
    if calibration is not None:
        doc["calibration"] = calibration
    if max_rate is not None:
        doc["max_rate"] = max_rate
    write_atomic(out_dir / "requests.csv", requests_frame(run, table).to_csv(index=False))
    if run.disaggregation is not None:  # one row per KV transfer, one per link port that carried KV
        transfers = pd.DataFrame(run.disaggregation.transfers)
        transfers["transfer_s"] = transfers["end_s"] - transfers["start_s"]
        transfers["wait_s"] = transfers["start_s"] - transfers["ready_s"]
        write_atomic(out_dir / "transfers.csv", transfers.to_csv(index=False))
        links = pd.DataFrame(run.disaggregation.links)
        links["utilisation"] = links["carried_bytes"] / (links["bytes_per_s"] * run.end_s)
        write_atomic(out_dir / "links.csv", links.to_csv(index=False))
    write_atomic(out_dir / "summary.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
    write_atomic(out_dir / "summary.md", serving_markdown(doc))
    return doc


def write_rate_curve(curve: pd.DataFrame, out_dir: Path) -> Path:
    path = out_dir / "rate_curve.csv"
    write_atomic(path, curve.to_csv(index=False))
    return path


# ---------------------------------------------------------------------------------------------
# Terminal


def print_serving(console: Console, summary: dict) -> None:
    console.print(f"[bold]{summary['scenario']}[/bold]: {headline(summary)}")
    if line := scheduler_line(summary):
        console.print(escape(line))
    if line := launches_line(summary):
        console.print(escape(line))
    if line := host_line(summary):
        console.print(escape(line))
    if line := lockstep_line(summary):
        console.print(escape(line))
    if line := prefix_cache_line(summary):
        console.print(escape(line))
    if line := turns_line(summary):
        console.print(escape(line))
    if calibration_line(summary):
        console.print(f"[yellow]{escape(calibration_line(summary))}[/yellow]")
    if engine_check_line(summary):
        console.print(escape(engine_check_line(summary)))
    lat = Table(title="Serving latency")
    lat.add_column("metric")
    for s in STATISTICS:
        lat.add_column(s, justify="right")
    for m in LATENCY_METRICS:
        lat.add_row(LATENCY_TEXT[m], *(format_value(summary["latency"][m][s], "s") for s in STATISTICS))
    console.print(lat)
    f = summary["figures"]
    tput = Table(title="Serving throughput")
    tput.add_column("figure")
    tput.add_column("value", justify="right")
    for text, key in THROUGHPUT_ROWS:
        tput.add_row(text, format_value(f[key]))
    tput.add_row("goodput fraction", format_value(f["goodput_fraction"], "%"))
    tput.add_row("preemptions", f"{f['preemptions']:.0f}")
    tput.add_row("KV cache (decode pool)" if "transfer_mean_s" in f else "KV cache", _kv_text(summary))
    console.print(tput)
    if "transfer_mean_s" in f:
        moves = Table(title="KV transfers (disaggregated)")
        moves.add_column("figure")
        moves.add_column("value", justify="right")
        for text, key, kind in TRANSFER_ROWS:
            moves.add_row(text, format_value(f[key], kind))
        moves.add_row("KV cache (prefill pool)", _prefill_kv_text(f))
        console.print(moves)
    print_targets(console, summary["targets"])


def print_targets(console: Console, targets: list[dict]) -> None:
    if not targets:
        return
    table = Table(title="Targets")
    for col in ("target", "limit", "actual", "verdict"):
        table.add_column(col)
    for a, b, c, d in target_rows({"targets": targets}):
        table.add_row(a, b, c, f"[green]{d}[/green]" if d == "MET" else f"[red]{d}[/red]")
    console.print(table)
