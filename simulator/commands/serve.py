"""Command stage: `moesim serve`, simulate the scenario's serving workload request by request and write its
report (requests.csv, summary.json / .md, plots, serving_trace.json, index.html); `--max-rate` also finds the
highest Poisson arrival rate at which every target holds, and writes the rate curve."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from simulator.commands import EXIT_OK, EXIT_TARGET_MISSED, add_scenario_arguments


def add_arguments(parser) -> None:
    add_scenario_arguments(parser)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--max-rate",
        action="store_true",
        help="also find the highest Poisson arrival rate meeting every target (rate_curve.csv/.png)",
    )
    parser.add_argument(
        "--rel-tol", type=float, default=0.02, metavar="R", help="relative precision of --max-rate (default 0.02)"
    )


def command(args, console: Console) -> int:
    from simulator.config import ScenarioError, resolve_hardware
    from simulator.files import run_directory
    from simulator.report.serving_html import write_serving_index
    from simulator.report.serving_summary import print_serving, write_rate_curve, write_serving_files
    from simulator.report.summary import calibration_dict
    from simulator.serving.session import load_serving_scenario, pricer_name, serving_inputs
    from simulator.serving.simulate import simulate_serving
    from simulator.serving.stats import request_table, summarize

    if not args.rel_tol > 0:
        raise ScenarioError(f"--rel-tol {args.rel_tol}: expected a positive fraction, e.g. 0.02")
    loaded = load_serving_scenario(args.scenario, args.set, "--max-rate" if args.max_rate else "moesim serve")
    spec, pricer, _ = serving_inputs(loaded.scenario)
    hw = resolve_hardware(loaded.scenario)
    if args.max_rate and not _has_targets(spec):
        raise ScenarioError(
            f"{args.scenario}: --max-rate needs a target; set serving.targets.ttft_p99_s, "
            f"tpot_p99_s, e2e_p99_s or min_goodput_fraction"
        )
    name = loaded.scenario.name
    out = args.out or Path("reports") / name / "serve"
    started = time.perf_counter()
    run = simulate_serving(spec, pricer, base_dir=loaded.base_dir)
    table = request_table(run)
    summary = summarize(run, table)
    elapsed = time.perf_counter() - started
    found = _max_rate(console, spec, pricer, summary, args.rel_tol, loaded.base_dir) if args.max_rate else None

    max_rate_doc = None
    if found is not None:
        max_rate_doc = {
            "rate_per_s": found.rate_per_s,
            "capped": found.capped,
            "rel_tol": args.rel_tol,
            "rates_tried": len(found.curve),
        }
    with run_directory(out, args.force) as staging:
        doc = write_serving_files(
            name, run, summary, pricer_name(pricer), staging, table, max_rate_doc, calibration_dict(hw)
        )
        if found is not None:
            write_rate_curve(found.curve, staging)
        _write_pictures(staging, name, run, table, spec, found)
        write_serving_index(staging, doc)
    print_serving(console, doc)
    if found is not None:
        _print_max_rate(console, found, spec)
    console.print(
        f"simulated {len(run.records)} requests ({run.num_iterations} iterations) in {elapsed:.2f} s; wrote {out}/"
    )
    missed = not summary.all_targets_met or (found is not None and found.rate_per_s is None)
    return EXIT_TARGET_MISSED if args.check and missed else EXIT_OK


def _has_targets(spec) -> bool:
    t = spec.targets
    return any(v is not None for v in (t.ttft_p99_s, t.tpot_p99_s, t.e2e_p99_s, t.min_goodput_fraction))


def _max_rate(console: Console, spec, pricer, summary, rel_tol: float, base_dir: Path):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from simulator.serving.maxrate import search_max_rate

    start = summary.figures["requests_per_s"]
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]max rate[/bold]"),
        TimeElapsedColumn(),
        TextColumn("{task.completed} rates; {task.description}"),
    )
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("", total=None)

        def tick(rate: float, s) -> None:
            verdict = "targets met" if s.all_targets_met else "a target missed"
            bar.update(task, advance=1, description=f"{rate:.4g} requests/s: {verdict}")

        return search_max_rate(spec, pricer, start, rel_tol, tick, base_dir)


def _write_pictures(out: Path, name: str, run, table, spec, found) -> None:
    from simulator.files import write_atomic
    from simulator.report.serving_plots import gantt_png, latency_cdf_png, rate_curve_png, timeseries_png
    from simulator.report.serving_trace import write_serving_trace

    write_atomic(out / "latency_cdf.png", latency_cdf_png(table, spec.targets, f"{name}: serving latency"))
    write_atomic(out / "timeseries.png", timeseries_png(run, f"{name}: serving over time"))
    write_atomic(out / "gantt.png", gantt_png(run, name))
    if found is not None:
        write_atomic(
            out / "rate_curve.png",
            rate_curve_png(
                found.curve,
                spec.targets,
                found.rate_per_s,
                f"{name}: p99 latency and throughput against the arrival rate",
            ),
        )
    write_serving_trace(out / "serving_trace.json", run, {"scenario": name})


def _print_max_rate(console: Console, found, spec) -> None:
    if found.rate_per_s is None:
        console.print(
            f"[red]max rate[/red]: no rate tried (down to {found.curve['rate_per_s'].min():.4g} "
            f"requests/s) meets every target"
        )
        return
    note = " (the highest rate tried; the true maximum may be higher)" if found.capped else ""
    row = found.curve[found.curve["rate_per_s"] == found.rate_per_s].iloc[0]
    console.print(
        f"[bold]max rate[/bold]: {found.rate_per_s:.4g} requests/s{note}, at "
        f"{row['output_tokens_per_s_per_gpu']:.4g} output tokens/s/GPU, TTFT p99 "
        f"{row['ttft_p99_s'] * 1e3:.4g} ms, TPOT p99 {row['tpot_p99_s'] * 1e3:.4g} ms; "
        f"{len(found.curve)} rates simulated (rate_curve.csv)"
    )
