"""Command stage: `moesim compare`, sweep every valid parallel layout, rank them, write and print the comparison."""

from __future__ import annotations

import sys
from pathlib import Path

from simulator.sweep import (
    DEFAULT_DECODE_SAMPLE,
    DEFAULT_MICROBATCHES,
    OBJECTIVES,
    SERVING_OBJECTIVES,
    LayoutResult,
    SweepInterrupted,
)


def add_arguments(parser) -> None:
    parser.add_argument("scenario", type=Path, help="scenario YAML file")
    parser.add_argument("--gpus", type=int, help="number of GPUs to lay out (default: the scenario's)")
    parser.add_argument(
        "--microbatches",
        default=",".join(map(str, DEFAULT_MICROBATCHES)),
        help="microbatch counts to try, comma-separated (default: 1,2,4,8)",
    )
    parser.add_argument(
        "--objective",
        default="targets",
        choices=OBJECTIVES,
        help="ranking: targets (meets every target, then output throughput; default), "
        "throughput, ttft, tpot or memory; by the scenario's serving section: "
        "goodput_per_gpu or max_rate",
    )
    parser.add_argument("--jobs", type=int, help="local worker processes (default: all cores; 1: serial)")
    parser.add_argument("--executor", help="process (default), serial, dask-local, or dask://HOST:PORT")
    parser.add_argument(
        "--decode-sample",
        type=int,
        default=DEFAULT_DECODE_SAMPLE,
        metavar="K",
        help=f"simulate K decode steps per layout and interpolate the rest "
        f"(default {DEFAULT_DECODE_SAMPLE}; 0: every step)",
    )
    parser.add_argument("--out", type=Path, help="output directory (default: reports/<scenario name>/compare)")
    parser.add_argument("--force", action="store_true", help="replace an output directory moesim did not make")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep from <out>.progress.jsonl (same scenario and options)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field, e.g. --set workload.batch_size=64 (repeatable)",
    )


def command(args, console) -> int:
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from simulator import api
    from simulator.files import check_output
    from simulator.report.compare import print_table
    from simulator.sweep.resume import progress_path

    serving = args.objective in SERVING_OBJECTIVES
    scenario = api.load(args.scenario, args.set)
    if serving:
        from simulator.serving.session import require_serving

        require_serving(scenario, f"--objective {args.objective}")
    out = check_output(
        args.out or Path("reports") / scenario.name / "compare", args.force, kind="compare"
    )  # before the sweep
    columns = (
        TextColumn("[bold]sweep[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    try:
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("", total=None)

            def tick(result: LayoutResult) -> None:
                bar.update(task, advance=1, description=escape(f"{result.label}: {result.status}"))

            result = api.compare(
                scenario,
                base_dir=args.scenario.parent,
                gpus=args.gpus,
                microbatches=args.microbatches,
                objective=args.objective,
                decode_sample=args.decode_sample,
                jobs=args.jobs,
                executor=args.executor,
                on_result=tick,
                checkpoint=progress_path(out),
                resume=args.resume,
                on_layouts=lambda count: bar.update(task, total=count),
            )
    except SweepInterrupted as exc:  # the progress file keeps the finished layouts
        print(f"moesim: {exc}; rerun with --resume to continue", file=sys.stderr)
        return 130
    files = result.write(out, force=args.force)
    print_table(console, result.scenario, result.results, args.objective)
    from simulator.config import resolve_hardware
    from simulator.config.hardware import calibration_note

    note = calibration_note(resolve_hardware(result.scenario))
    if note:
        console.print(f"[yellow]Calibration: {escape(note)}.[/yellow]")
    counts = result.counts
    console.print(
        f"{len(result.results)} layouts on {result.num_gpus} GPUs: {counts['ok']} simulated, {counts['screened']} "
        f"screened out (do not fit), {counts['failed']} failed, in {result.elapsed_s:.1f} s; "
        f"wrote {', '.join(sorted(Path(f).name for f in files))} to {escape(str(out))}/"
    )
    return 0 if counts["ok"] else 1
