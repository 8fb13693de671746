"""Command stage: `moesim run`, simulate a scenario (TTFT, TPOT, throughput, memory, target verdicts) and write its report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from simulator.commands import EXIT_OK, EXIT_TARGET_MISSED, add_scenario_arguments, phases

#: Decode steps simulated by default after the warm-up (the rest interpolated; the error is measured per run).
DEFAULT_DECODE_SAMPLE = 8  # = simulator.api.DEFAULT_DECODE_SAMPLE (the command's help must not import the API)


def add_arguments(parser) -> None:
    add_scenario_arguments(parser)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--full",
        action="store_true",
        help="simulate every decode step on every GPU (no sampling, no folding of alike GPUs)",
    )
    parser.add_argument(
        "--decode-sample",
        type=int,
        default=None,
        metavar="K",
        help=f"simulate K decode steps after the warm-up and interpolate the rest, stating the "
        f"measured error (default {DEFAULT_DECODE_SAMPLE}; 0: every step)",
    )
    parser.add_argument("--no-dag", action="store_true", help="do not draw the DAG")
    parser.add_argument(
        "--full-dag", action="store_true", help="also write dag.json, the complete node-link DAG (large: tens of MB)"
    )
    parser.add_argument(
        "--ops",
        action="store_true",
        help="also write ops.csv, one row per simulated operator (needed by `moesim plot`)",
    )
    parser.add_argument(
        "--artifacts",
        choices=("light", "all"),
        default="light",
        help="light (default): summaries, pictures, page, gzip-compressed trace; all: also dag.json and ops.csv",
    )


def simulation_options(args) -> tuple[int, bool]:
    """(decode_sample, full) of the run: sampled and folded unless --full or --decode-sample 0."""
    sample = DEFAULT_DECODE_SAMPLE if args.decode_sample is None else args.decode_sample
    if sample < 0 and not args.full:
        from simulator.config import ScenarioError

        raise ScenarioError(f"--decode-sample {sample}: expected 0 (every step) or more")
    return sample, args.full


def command(args, console: Console) -> int:
    from simulator import api
    from simulator.files import check_output
    from simulator.report.summary import print_run

    decode_sample, full = simulation_options(args)  # before loading: a bad option is one line at once
    scenario = api.load(args.scenario, args.set)
    out = check_output(args.out or Path("reports") / scenario.name, args.force, kind="run")  # before simulating
    if not args.no_dag:
        from simulator.report.dot import require_graphviz

        require_graphviz(", or pass --no-dag")
    full_dag = args.full_dag or args.artifacts == "all"
    with phases(console) as phase:
        result = api.run(scenario, decode_sample=decode_sample, full=full, phase=phase)
        result.write(
            out, dag=not args.no_dag, full_dag=full_dag, ops_csv=args.ops or args.artifacts == "all", force=args.force,
            phase=phase,
        )  # fmt: skip
    print_run(console, result.pipeline, result.summary)
    failed = [c for c in result.pipeline.checks if not c.ok]
    for c in failed:
        console.print(f"[red]DAG check failed[/red]: {escape(c.name)}: {escape(c.detail)}")
    console.print(f"simulated {len(result.pipeline.dag)} nodes in {result.elapsed_s:.2f} s; wrote {escape(str(out))}/")
    if not result.all_targets_met:
        console.print(
            f"a target is missed: `moesim whatif {escape(str(args.scenario))}` finds the smallest change of each "
            "knob (batch, lengths, GPUs, layout, hardware, precision) that meets it"
        )
    if args.check and not result.all_targets_met:
        return EXIT_TARGET_MISSED
    return EXIT_OK
