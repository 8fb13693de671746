"""Command stage: `moesim dag`, build, verify and draw the operator DAG of a scenario; audit its declared figures."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from simulator.commands import EXIT_OK, EXIT_TARGET_MISSED, add_scenario_arguments


def add_arguments(parser) -> None:
    add_scenario_arguments(parser)


def command(args, console: Console) -> int:
    from simulator.config import load_scenario
    from simulator.pipeline import dag_scenario
    from simulator.files import check_output, run_directory
    from simulator.report.dot import render_dag, require_graphviz
    from simulator.report.summary import print_audit, print_checks, print_gpu_table

    scenario = load_scenario(args.scenario, args.set)
    out = check_output(args.out or Path("reports") / scenario.name, args.force)  # before building
    require_graphviz()
    started = time.perf_counter()
    result = dag_scenario(scenario)
    built = time.perf_counter() - started
    console.print(f"[bold]{scenario.name}[/bold]: {result.graph.number_of_nodes()} nodes, "
                  f"{result.graph.number_of_edges()} edges (built and verified in {built:.2f} s)")
    print_checks(console, result.checks)
    print_gpu_table(console, result)
    print_audit(console, result.audit, scenario.declared.source if scenario.declared else "")
    with run_directory(out, args.force) as staging:
        files = render_dag(result.graph, staging, scenario.name)
    console.print(f"wrote {', '.join(sorted(Path(f).name for f in files.values()))} to {out}/")
    return EXIT_OK if all(c.ok for c in result.checks) else EXIT_TARGET_MISSED
