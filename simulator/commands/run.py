"""Command stage: `moesim run`, simulate a scenario (TTFT, TPOT, throughput, memory, target verdicts) and write its report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from simulator.commands import EXIT_OK, EXIT_TARGET_MISSED, InChild, add_scenario_arguments, optional_module, phases

#: Decode steps simulated by default after the warm-up (the rest interpolated; the error is measured per run).
DEFAULT_DECODE_SAMPLE = 8


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


def simulation_options(args) -> tuple[int | None, bool]:
    """(decode_sample, fold) of the run: sampled and folded unless --full or --decode-sample 0."""
    if args.full:
        return None, False
    sample = DEFAULT_DECODE_SAMPLE if args.decode_sample is None else args.decode_sample
    if sample < 0:
        from simulator.config import ScenarioError

        raise ScenarioError(f"--decode-sample {sample}: expected 0 (every step) or more")
    return sample or None, True


def _draw(args, result, staging: Path, summary: dict, full_dag: bool, phase) -> None:
    """The DAG drawing (and dag.json), the plots, the trace and the page, into `staging`."""
    drawing = None
    if not args.no_dag or full_dag:
        phase("draw the DAG")
        from simulator.report.dot import start_render_dag

        # Graphviz lays the drawing out in its own process while the plots are drawn here.
        drawing = start_render_dag(
            result.dag, staging, result.scenario.name, full_json=full_dag, draw=not args.no_dag, formats=("svg",)
        )
    try:
        plots = optional_module("simulator.report.plots")
        if plots is not None:
            phase("draw plots")
            # timeline.png and memory.png are drawn by two more processes while this one writes the trace
            plots.write_run_plots(result, staging, summary, index=False, aside=phase.aside)
        if drawing is not None:
            drawing.wait()
        if plots is not None:
            phase("write the page")
            plots.write_index(staging, summary)  # last: it links what was drawn
    finally:
        if drawing is not None:
            drawing.cancel()


def command(args, console: Console) -> int:
    from simulator.config import load_scenario, resolve_hardware
    from simulator.files import check_output, run_directory
    from simulator.pipeline import measure_sampling_error, run_scenario, sampling_check
    from simulator.report.summary import print_run, write_run_files

    decode_sample, fold = simulation_options(args)  # before loading: a bad option is one line at once
    scenario = load_scenario(args.scenario, args.set)
    out = check_output(args.out or Path("reports") / scenario.name, args.force, kind="run")  # before simulating
    if not args.no_dag:
        from simulator.report.dot import require_graphviz

        require_graphviz(", or pass --no-dag")
    full_dag = args.full_dag or args.artifacts == "all"
    ops = args.ops or args.artifacts == "all"
    hw = resolve_hardware(scenario)
    # The denser simulation that measures the sampling error needs only the scenario: a second
    # process makes it while this one simulates the run (before any progress display starts a thread).
    check = InChild(sampling_check, scenario, decode_sample, fold, hw) if decode_sample else None
    try:
        with phases(console) as phase:
            phase("build and simulate")
            result = run_scenario(scenario, decode_sample=decode_sample, fold=fold, hw=hw)
            if check is not None:
                phase("measure the sampling error")
                result = measure_sampling_error(result, decode_sample, check.result())
            elapsed = phase.elapsed_s
            with run_directory(out, args.force, kind="run") as staging:
                phase("write summary files")
                summary = write_run_files(result, staging, ops=ops)
                _draw(args, result, staging, summary, full_dag, phase)
    finally:
        if check is not None:
            check.cancel()
    print_run(console, result, summary)
    failed = [c for c in result.checks if not c.ok]
    for c in failed:
        console.print(f"[red]DAG check failed[/red]: {escape(c.name)}: {escape(c.detail)}")
    console.print(f"simulated {len(result.dag)} nodes in {elapsed:.2f} s; wrote {escape(str(out))}/")
    if args.check and not summary["all_targets_met"]:
        return EXIT_TARGET_MISSED
    return EXIT_OK
