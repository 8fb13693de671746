"""Command stage: `moesim compare`, sweep every valid parallel layout, rank them, write and print the comparison."""

from __future__ import annotations

import sys
from pathlib import Path

from simulator.config import ScenarioError
from simulator.sweep import (
    DEFAULT_DECODE_SAMPLE,
    DEFAULT_MICROBATCHES,
    OBJECTIVES,
    SERVING_OBJECTIVES,
    LayoutResult,
    SweepInterrupted,
)
from simulator.sweep.search import SEARCH_OBJECTIVES


def add_arguments(parser) -> None:
    parser.add_argument("scenario", type=Path, help="scenario YAML file")
    parser.add_argument(
        "--gpus",
        help="GPUs to lay out: a count (default: the scenario's), or for the deployment search a range "
        "1..64 or a list 1,2,4,8 (counts that are not whole nodes are skipped)",
    )
    parser.add_argument(
        "--microbatches",
        default=",".join(map(str, DEFAULT_MICROBATCHES)),
        help="microbatch counts to try, comma-separated (default: 1,2,4,8)",
    )
    parser.add_argument(
        "--objective",
        default="targets",
        choices=sorted(set(OBJECTIVES) | set(SEARCH_OBJECTIVES), key=[*OBJECTIVES, *SEARCH_OBJECTIVES].index),
        help="ranking: targets (meets every target, then output throughput; default), "
        "throughput, ttft, tpot or memory; by the scenario's serving section: "
        "goodput_per_gpu or max_rate; deployment search: cost ($ per million output tokens at the "
        "targets) or fewest_gpus (meeting the serving targets at --rate)",
    )
    search = parser.add_argument_group("deployment search (any of these searches beyond the layout)")
    search.add_argument("--max-gpus", type=int, metavar="N", help="search every GPU count from 1 to N")
    search.add_argument("--hardware", metavar="P1,P2", help="hardware profiles to search, comma-separated")
    search.add_argument(
        "--weight-dtype", metavar="D1,D2", help="weight precisions: fp16, bf16, fp8 (fp8 only on FP8 hardware)"
    )
    search.add_argument("--kv-dtype", metavar="D1,D2", help="KV cache precisions: fp16, bf16, fp8")
    search.add_argument("--max-num-seqs", metavar="N1,N2", help="serving scheduler: running-request limits")
    search.add_argument("--max-num-batched-tokens", metavar="N1,N2", help="serving scheduler: token budgets")
    search.add_argument("--chunk-size", metavar="N1,N2", help="serving scheduler: prefill chunk sizes")
    search.add_argument(
        "--price", action="append", default=[], metavar="PROFILE=USD", help="price per GPU-hour (repeatable)"
    )
    search.add_argument(
        "--kinds",
        metavar="K1,K2",
        help="deployment kinds: aggregated (default), disaggregated (prefill and decode pools, every xPyD split "
        "of the GPU count; a serving scenario), or both: aggregated,disaggregated",
    )
    search.add_argument(
        "--disagg-pools",
        metavar="O1,O2",
        help="widen the disaggregated candidates: pp (pool instances with pipeline parallelism), separate_nodes "
        "(the decode pool on a fresh node, where the cluster has more than one); off by default: each multiplies "
        "the candidates",
    )
    search.add_argument("--rate", type=float, metavar="R", help="fewest_gpus: the Poisson request rate to serve")
    search.add_argument("--rel-tol", type=float, default=0.02, help="max-rate search tolerance (default 0.02)")
    search.add_argument("--no-prune", action="store_true", help="simulate every candidate that fits in memory")
    search.add_argument("--no-launch", action="store_true", help="do not write launch/ configs for the winner")
    search.add_argument(
        "--engine",
        choices=("vllm", "sglang", "trtllm"),
        action="append",
        help="search only deployments this engine can launch (repeatable: every engine named); one engine named prices a serving search with its engine profile where the scenario names none",
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


SEARCH_FLAGS = (
    "max_gpus",
    "hardware",
    "weight_dtype",
    "kv_dtype",
    "max_num_seqs",
    "max_num_batched_tokens",
    "chunk_size",
    "rate",
    "kinds",
    "disagg_pools",
)


def wants_search(args) -> bool:
    """The deployment search runs when a search dimension, a search objective or a GPU range is given."""
    return (
        any(getattr(args, f) is not None for f in SEARCH_FLAGS)
        or bool(args.price)
        or bool(args.engine)
        or args.objective in ("cost", "fewest_gpus")
        or (args.gpus is not None and (".." in args.gpus or "," in args.gpus))
    )


def command(args, console) -> int:
    if wants_search(args):
        from simulator.commands.search import search_command

        return search_command(args, console)
    if args.gpus is not None:
        try:
            args.gpus = int(args.gpus)
        except ValueError:
            raise ScenarioError(
                f"--gpus {args.gpus}: expected a number of GPUs, a range such as 1..64 or a list such as 1,2,4"
            ) from None
    return layout_command(args, console)


def layout_command(args, console) -> int:
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
    from simulator.report.compare import compare_check_lines

    for line in compare_check_lines(result.scenario, result.results):
        console.print(f"[yellow]{escape(line)}[/yellow]")
    counts = result.counts
    console.print(
        f"{len(result.results)} layouts on {result.num_gpus} GPUs: {counts['ok']} simulated, {counts['screened']} "
        f"screened out (do not fit), {counts['failed']} failed, in {result.elapsed_s:.1f} s; "
        f"wrote {', '.join(sorted(Path(f).name for f in files))} to {escape(str(out))}/"
    )
    return 0 if counts["ok"] else 1
