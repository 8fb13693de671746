"""Command stage: `moesim dag`, build, verify and draw the operator DAG of a scenario; audit its declared figures."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from simulator.commands import EXIT_OK, EXIT_TARGET_MISSED, add_scenario_arguments, phases


def add_arguments(parser) -> None:
    add_scenario_arguments(parser, "/dag")
    parser.add_argument(
        "--full-dag", action="store_true", help="also write dag.json, the complete node-link DAG (large: tens of MB)"
    )


def command(args, console: Console) -> int:
    from simulator.config import load_scenario
    from simulator.files import check_output, run_directory
    from simulator.pipeline import dag_scenario
    from simulator.report.dot import render_dag, require_graphviz
    from simulator.report.summary import print_audit, print_checks, print_gpu_table

    scenario = load_scenario(args.scenario, args.set)
    out = check_output(args.out or Path("reports") / scenario.name / "dag", args.force, kind="dag")  # before building
    require_graphviz()
    with phases(console) as phase:
        phase("build and verify the DAG")
        result = dag_scenario(scenario)
        built = phase.elapsed_s
    console.print(
        f"[bold]{escape(scenario.name)}[/bold]: {result.graph.number_of_nodes()} nodes, "
        f"{result.graph.number_of_edges()} edges (built and verified in {built:.2f} s)"
    )
    print_checks(console, result.checks)
    print_gpu_table(console, result)
    print_audit(console, result.audit, scenario.declared.source if scenario.declared else "")
    with phases(console) as phase, run_directory(out, args.force, kind="dag") as staging:
        phase("draw the DAG")
        files = render_dag(result.graph, staging, scenario.name, full_json=args.full_dag)
    console.print(f"wrote {', '.join(sorted(Path(f).name for f in files.values()))} to {escape(str(out))}/")
    return EXIT_OK if all(c.ok for c in result.checks) else EXIT_TARGET_MISSED
