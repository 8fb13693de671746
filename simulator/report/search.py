"""Reports of a deployment search: the terminal table, search.csv / search.md, pareto_user.png and best.yaml."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from simulator.config import Scenario
from simulator.files import write_atomic
from simulator.report.pareto import UserSpeedPoint, fmt_figure, user_speed_pareto_png
from simulator.sweep.candidates import Candidate, CandidateScenarios
from simulator.sweep.search import PRUNE_RULES, SearchResult, prune_counts, winner

TERMINAL_ROWS = 15
RUNNERS_UP = 4

OBJECTIVE_TEXT = {
    "targets": "highest output tokens/s per GPU meeting every target",
    "max_rate": "highest output tokens/s per GPU at the highest Poisson rate meeting every serving target",
    "cost": "lowest cost per million output tokens meeting every target",
    "fewest_gpus": "fewest GPUs meeting every serving target at the given rate (then cost, then throughput)",
}
_COLUMNS = (
    "rank",
    "hardware",
    "GPUs",
    "layout",
    "weights",
    "KV",
    "max seqs",
    "token budget",
    "chunk",
    "kind",
    "out tok/s/GPU",
    "tok/s/user",
    "TPOT",
    "TTFT",
    "rate req/s",
    "$/M out tok",
    "targets",
)


def _cells(r: SearchResult) -> list[str]:
    c = r.candidate
    common = [
        str(r.rank) if r.rank is not None else "-",
        c.hardware_name,
        str(c.num_gpus),
        c.layout_label,
        c.weight_dtype,
        c.kv_cache_dtype,
        "" if c.max_num_seqs is None else str(c.max_num_seqs),
        "" if c.max_num_batched_tokens is None else str(c.max_num_batched_tokens),
        "" if c.chunk_size_tokens is None else str(c.chunk_size_tokens),
        c.kind,
    ]
    if r.status != "ok":
        return [*common, "", "", "", "", "", "", f"{r.status}: {r.rule or r.reason}"]
    return [
        *common,
        fmt_figure(r.output_tokens_per_s_per_gpu, ""),
        fmt_figure(r.tokens_per_s_per_user, ""),
        fmt_figure(r.tpot_s, "s"),
        fmt_figure(r.ttft_s, "s"),
        fmt_figure(r.rate_per_s, ""),
        fmt_figure(r.cost_per_million_output_tokens_usd, ""),
        "met" if r.meets else "missed",
    ]


def summary_line(results: Sequence[SearchResult]) -> str:
    """'N candidates: S simulated, F failed, P pruned (memory 3, tpot_bound 0, ...)'."""
    counts = prune_counts(results)
    ok = sum(r.status == "ok" for r in results)
    failed = sum(r.status == "failed" for r in results)
    pruned = ", ".join(f"{rule} {counts[rule]}" for rule in PRUNE_RULES)
    return f"{len(results)} candidates: {ok} simulated, {failed} failed, {sum(counts.values())} pruned ({pruned})"


def print_search_table(console: Console, scenario: Scenario, results: Sequence[SearchResult], objective: str) -> None:
    table = Table(title=f"{scenario.name}: deployments ranked by {OBJECTIVE_TEXT[objective]}")
    for col in _COLUMNS:
        table.add_column(col, justify="left" if col in ("hardware", "layout", "kind", "targets") else "right")
    for r in results[:TERMINAL_ROWS]:
        table.add_row(*_cells(r), style="green" if r.meets and r.status == "ok" else None)
    console.print(table)
    best = winner(results)
    if best is None:
        console.print("no candidate meets every target")
    else:
        console.print(f"best: [bold]{best.candidate.label}[/bold] ({OBJECTIVE_TEXT[objective]})")


def search_csv(results: Sequence[SearchResult]) -> str:
    buffer = io.StringIO()
    fields = [
        "rank",
        "status",
        "rule",
        "reason",
        "kind",
        "hardware",
        "num_gpus",
        "pp",
        "dp",
        "tp",
        "ep",
        "etp",
        "microbatches",
        *(["redundant_experts"] if any(r.candidate.layout.redundant_experts for r in results) else []),
        "pools",
        "weight_dtype",
        "kv_cache_dtype",
        "max_num_seqs",
        "max_num_batched_tokens",
        "chunk_size_tokens",
        "meets_targets",
        "output_tokens_per_s_per_gpu",
        "tokens_per_s_per_user",
        "tpot_s",
        "ttft_s",
        "rate_per_s",
        "memory_bytes_per_gpu",
        "bound_tokens_per_s_per_gpu",
        "price_per_gpu_hour_usd",
        "cost_per_million_output_tokens_usd",
    ]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in results:
        c = r.candidate
        row = {
            "rank": "" if r.rank is None else r.rank,
            "status": r.status,
            "rule": r.rule,
            "reason": r.reason,
            "kind": c.kind,
            "hardware": c.hardware_name,
            "num_gpus": c.num_gpus,
            **(
                c.layout.degrees()
                if c.kind != "disaggregated"
                else dict.fromkeys(("pp", "dp", "tp", "ep", "etp", "microbatches"), "")
            ),
            "pools": c.layout_label if c.kind == "disaggregated" else "",
            "weight_dtype": c.weight_dtype,
            "kv_cache_dtype": c.kv_cache_dtype,
            "max_num_seqs": c.max_num_seqs,
            "max_num_batched_tokens": c.max_num_batched_tokens,
            "chunk_size_tokens": c.chunk_size_tokens,
            "meets_targets": r.meets if r.status == "ok" else "",
            "output_tokens_per_s_per_gpu": r.output_tokens_per_s_per_gpu,
            "tokens_per_s_per_user": r.tokens_per_s_per_user,
            "tpot_s": r.tpot_s,
            "ttft_s": r.ttft_s,
            "rate_per_s": r.rate_per_s,
            "memory_bytes_per_gpu": r.memory_bytes_per_gpu,
            "bound_tokens_per_s_per_gpu": r.bound_tokens_per_s_per_gpu,
            "price_per_gpu_hour_usd": r.price_per_gpu_hour_usd,
            "cost_per_million_output_tokens_usd": r.cost_per_million_output_tokens_usd,
        }
        if "redundant_experts" in fields and c.kind != "disaggregated":
            row.setdefault("redundant_experts", 0)
        writer.writerow({k: _text(v) for k, v in row.items()})
    return buffer.getvalue()


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def search_check_lines(scenario: Scenario, results: Sequence[SearchResult]) -> list[str]:
    """report.checks.check_lines of the simulated candidates: per hardware profile and deployment class among
    them (a disaggregated candidate's pools have no DP ranks: never attention DP + EP), the profile's
    calibration note and the engine profile's end-to-end checks."""
    from simulator.config import resolve_hardware
    from simulator.config.checked import ResultClass
    from simulator.config.scenario import layout_result_class
    from simulator.report.checks import check_lines

    moe = scenario.model.is_moe
    seen: dict[tuple[str, ResultClass], Candidate] = {}
    for r in results:
        if r.status == "ok":
            c = r.candidate
            cls = layout_result_class(moe, c.layout) if c.kind == "aggregated" else ResultClass(moe)
            seen.setdefault((c.hardware, cls), c)
    scenarios = CandidateScenarios(scenario)  # each profile with the scenario's overrides, as the search ran it
    pairs = [(resolve_hardware(scenarios.scenario(c)), cls) for (_, cls), c in sorted(seen.items())]
    serving = scenario.serving
    engine = serving.engine_profile() if serving is not None and serving.engine else None
    return check_lines(pairs, engine)


def search_md(scenario: Scenario, results: Sequence[SearchResult], objective: str, elapsed_s: float) -> str:
    lines = [
        f"# Deployment search: {scenario.name}",
        "",
        f"{summary_line(results)}; {elapsed_s:.1f} s. Ranked by {OBJECTIVE_TEXT[objective]}."
        + (
            f" Priced with engine profile {scenario.serving.engine} (engine_profiles/{scenario.serving.engine}.yaml)."
            if scenario.serving is not None and scenario.serving.engine
            else ""
        ),
        "",
    ]
    notes = search_check_lines(scenario, results)
    if notes:
        lines += [*notes, ""]
    best = winner(results)
    lines += [
        f"**Best: {best.candidate.label}**. `best.yaml` holds it as a scenario."
        if best
        else "No candidate meets every target.",
        "",
    ]
    lines += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in results]
    lines += [
        "",
        "Pruning rules: memory (weights + KV cache cannot fit), tpot_bound (the roofline TPOT misses the target), "
        "target_bound (the roofline throughput misses a throughput target), more_gpus (fewer GPUs already meet "
        "the targets), dominated_bound (the roofline bound cannot beat the best result found), dominated_rate (a "
        "rate its max-rate search missed caps its throughput below the best result found). Serving figures "
        "are p99 (TPOT, TTFT) at the rate shown. Cost: price per GPU-hour x GPUs / output tokens per hour, per "
        "million.",
        "",
    ]
    return "\n".join(lines)


def best_search_yaml(scenario: Scenario, results: Sequence[SearchResult], objective: str) -> str | None:
    """The winner as a scenario file (`moesim run` / `moesim serve` accept it), headed by the winner and the
    runners-up with every chosen dimension; None when no candidate meets the targets."""
    best = winner(results)
    if best is None:
        return None
    chosen = CandidateScenarios(scenario).scenario(best.candidate)
    data = chosen.model_dump(mode="json", exclude_none=True, exclude={"declared"})
    data["name"] = f"{scenario.name}_best"
    data["description"] = f"{scenario.name}: best deployment by moesim compare ({OBJECTIVE_TEXT[objective]})"
    ranked = [r for r in results if r.rank is not None and r.meets]
    header = [f"# Written by `moesim compare` (objective: {OBJECTIVE_TEXT[objective]}).", "# Winner and runners-up:"]
    for r in ranked[: 1 + RUNNERS_UP]:
        header.append(
            f"#  {r.rank}. {r.candidate.label}: {fmt_figure(r.output_tokens_per_s_per_gpu, '')} output tok/s/GPU, "
            f"TPOT {fmt_figure(r.tpot_s, 's')}, {fmt_figure(r.cost_per_million_output_tokens_usd, '')} $/M output tokens"
        )
    return "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False)


def pareto_points(results: Sequence[SearchResult]) -> list[UserSpeedPoint]:
    return [
        UserSpeedPoint(
            r.tokens_per_s_per_user,
            r.output_tokens_per_s_per_gpu,
            r.candidate.kind,
            r.meets,
            f"#{r.rank} {r.candidate.hardware_name} {r.candidate.layout_label}",
        )
        for r in results
        if r.status == "ok"
    ]


def tpot_target_s(scenario: Scenario) -> float | None:
    if scenario.serving is not None:
        return scenario.serving.targets.tpot_p99_s
    target = scenario.targets.get("tpot_s")
    return target.max if target is not None else None


def write_search(
    scenario: Scenario, results: Sequence[SearchResult], out: Path, objective: str, elapsed_s: float
) -> list[Path]:
    """search.csv, search.md, pareto_user.png and (when a candidate meets the targets) best.yaml into `out`."""
    out = Path(out)
    files = [out / "search.csv", out / "search.md", out / "pareto_user.png"]
    write_atomic(files[0], search_csv(results))
    write_atomic(files[1], search_md(scenario, results, objective, elapsed_s))
    title = f"{scenario.name}: {sum(r.status == 'ok' for r in results)} simulated deployments"
    write_atomic(files[2], user_speed_pareto_png(title, pareto_points(results), tpot_target_s(scenario)))
    best = best_search_yaml(scenario, results, objective)
    if best is not None:
        files.append(out / "best.yaml")
        write_atomic(files[-1], best)
    return files
