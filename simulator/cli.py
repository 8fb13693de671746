"""Command line: parse, call the pipeline stages, print. `moesim --help` lists the subcommands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

EXIT_OK, EXIT_TARGET_MISSED, EXIT_BAD_INPUT = 0, 1, 2

#: Subcommands that live beside their stage: each module defines add_arguments(parser) and
#: command(args, console) -> exit code. Only the module of the command being run is imported
#: (they pull in pandas, matplotlib, Dask...), so the one-line help for the listing lives here.
SUBCOMMAND_MODULES = {
    "compare": ("simulator.sweep", "sweep every valid parallel layout, rank them, draw the Pareto front"),
    "plot": ("simulator.report.plots", "redraw the timeline, memory plot, trace and report page of a run directory"),
    "validate": ("simulator.validate", "predict the measured runs of a cases file and report the error"),
    "calibrate": ("simulator.calibrate", "fit a hardware profile from GPU micro-benchmarks (--from-json, or --device cuda)"),
    "import-hf": ("simulator.config.import_hf", "write a model spec from a Hugging Face config.json (no network)"),
}


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moesim", description="Analytical performance simulator for MoE serving.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("profiles", help="list the hardware profiles")

    def scenario_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("scenario", type=Path, help="scenario YAML file")
        p.add_argument("--out", type=Path, help="output directory (default: reports/<scenario name>)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a scenario field, e.g. --set parallel.tp=4 (repeatable)")
        p.add_argument("--force", action="store_true", help="replace an output directory moesim did not make")
        return p

    scenario_command("dag", "build, verify and draw the operator DAG; audit the declared figures")
    run = scenario_command("run", "simulate the scenario: TTFT, TPOT, throughput, memory, target verdicts")
    run.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    run.add_argument("--no-dag", action="store_true", help="do not render the DAG files")
    run.add_argument("--decode-sample", type=int, default=0, metavar="K",
                     help="simulate K decode steps (after the warm-up) and interpolate the rest; 0 = every step")

    for name, (module_name, help_text) in SUBCOMMAND_MODULES.items():
        module = _optional_module(module_name) if name == command else None
        sub_parser = sub.add_parser(name, help=help_text)
        if module is not None:
            module.add_arguments(sub_parser)
    return parser


def _optional_module(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(_command_of(argv)).parse_args(argv)
    console = Console(width=160)
    try:
        return _dispatch(args, console)
    except KeyboardInterrupt:
        print("moesim: interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line unless --debug
        if args.debug:
            raise
        from simulator.config import ScenarioError
        from simulator.files import OutputError

        known = isinstance(exc, (ScenarioError, OutputError, RuntimeError))
        message = str(exc) if known else f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)"
        print(f"moesim: {message.splitlines()[0] if message else type(exc).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT if known else 3


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "profiles":
        return _profiles(console)
    if args.command in SUBCOMMAND_MODULES:
        return _optional_module(SUBCOMMAND_MODULES[args.command][0]).command(args, console)
    from simulator.config import load_scenario

    scenario = load_scenario(args.scenario, args.set)
    out = args.out or Path("reports") / scenario.name
    if args.command == "dag":
        return _dag(scenario, out, args.force, console)
    return _run(scenario, out, args, console)


def _profiles(console: Console) -> int:
    from rich.table import Table

    from simulator.config.hardware import available_profiles, load_profile

    table = Table(title="Hardware profiles (hardware_profiles/*.yaml)")
    for col in ("name", "memory", "fp16 peak", "HBM", "NVLink/dir", "NIC/dir", "description"):
        table.add_column(col)
    for name in available_profiles():
        p = load_profile(name)
        table.add_row(name, f"{p.memory_bytes / 1e9:.1f} GB", f"{p.peak_flops_per_s.fp16 / 1e12:.0f} TFLOP/s",
                      f"{p.hbm_bytes_per_s / 1e12:.2f} TB/s", f"{p.intra_node.bytes_per_s / 1e9:.0f} GB/s",
                      f"{p.inter_node.bytes_per_s / 1e9:.0f} GB/s", p.description)
    console.print(table)
    return EXIT_OK


def _dag(scenario, out: Path, force: bool, console: Console) -> int:
    from simulator.pipeline import dag_scenario
    from simulator.report.dot import render_dag
    from simulator.files import run_directory
    from simulator.report.summary import print_audit, print_checks, print_gpu_table

    started = time.perf_counter()
    result = dag_scenario(scenario)
    built = time.perf_counter() - started
    console.print(f"[bold]{scenario.name}[/bold]: {result.graph.number_of_nodes()} nodes, "
                  f"{result.graph.number_of_edges()} edges (built and verified in {built:.2f} s)")
    print_checks(console, result.checks)
    print_gpu_table(console, result)
    print_audit(console, result.audit, scenario.declared.source if scenario.declared else "")
    with run_directory(out, force) as staging:
        files = render_dag(result.graph, staging, scenario.name)
    console.print(f"wrote {', '.join(sorted(Path(f).name for f in files.values()))} to {out}/")
    return EXIT_OK if all(c.ok for c in result.checks) else EXIT_TARGET_MISSED


def _run(scenario, out: Path, args, console: Console) -> int:
    from simulator.pipeline import run_scenario
    from simulator.files import run_directory
    from simulator.report.summary import print_run, write_run_files

    started = time.perf_counter()
    result = run_scenario(scenario, decode_sample=args.decode_sample or None)
    elapsed = time.perf_counter() - started
    with run_directory(out, args.force) as staging:
        summary = write_run_files(result, staging)
        if not args.no_dag:
            from simulator.report.dot import render_dag

            render_dag(result.graph, staging, scenario.name)
        plots = _optional_module("simulator.report.plots")
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


if __name__ == "__main__":
    sys.exit(main())
