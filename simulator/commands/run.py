"""Command stage: `moesim run`, simulate a scenario (TTFT, TPOT, throughput, memory, target verdicts) and write its report."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from simulator.commands import EXIT_OK, EXIT_TARGET_MISSED, add_scenario_arguments, optional_module


def add_arguments(parser) -> None:
    add_scenario_arguments(parser)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--no-dag", action="store_true", help="do not render the DAG files")
    parser.add_argument("--decode-sample", type=int, default=0, metavar="K",
                        help="simulate K decode steps (after the warm-up) and interpolate the rest; 0 = every step")


def command(args, console: Console) -> int:
    from simulator.config import ScenarioError, load_scenario
    from simulator.files import check_output, run_directory
    from simulator.pipeline import run_scenario
    from simulator.report.summary import print_run, write_run_files

    if args.decode_sample < 0:
        raise ScenarioError(f"--decode-sample {args.decode_sample}: expected 0 (every step) or more")
    scenario = load_scenario(args.scenario, args.set)
    out = check_output(args.out or Path("reports") / scenario.name, args.force)  # before simulating
    if not args.no_dag:
        from simulator.report.dot import require_graphviz

        require_graphviz(", or pass --no-dag")
    started = time.perf_counter()
    result = run_scenario(scenario, decode_sample=args.decode_sample or None)
    elapsed = time.perf_counter() - started
    with run_directory(out, args.force) as staging:
        summary = write_run_files(result, staging)
        if not args.no_dag:
            from simulator.report.dot import render_dag

            render_dag(result.graph, staging, scenario.name)
        plots = optional_module("simulator.report.plots")
        if plots is not None:
            plots.write_run_plots(result, staging, summary)
    print_run(console, result, summary)
    failed = [c for c in result.checks if not c.ok]
    for c in failed:
        console.print(f"[red]DAG check failed[/red]: {c.name}: {c.detail}")
    console.print(f"simulated {result.graph.number_of_nodes()} nodes in {elapsed:.2f} s; wrote {out}/")
    if args.check and not summary["all_targets_met"]:
        return EXIT_TARGET_MISSED
    return EXIT_OK
