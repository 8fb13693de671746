"""Command stage: `moesim compare`, sweep every valid parallel layout, rank them, write and print the comparison."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from simulator.commands.search import parse_microbatches
from simulator.config import ScenarioError, load_scenario
from simulator.sweep import (
    DEFAULT_DECODE_SAMPLE,
    DEFAULT_MICROBATCHES,
    OBJECTIVES,
    SERVING_OBJECTIVES,
    LayoutResult,
    SweepInterrupted,
    enumerate_layouts,
    make_executor,
    rank_results,
    run_sweep,
)
from simulator.sweep.search import SEARCH_OBJECTIVES

#: Most GPUs `--gpus` lays out (as cluster.num_gpus): the layout enumeration loops over divisors.
MAX_GPUS = 10**5


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
    search.add_argument("--rate", type=float, metavar="R", help="fewest_gpus: the Poisson request rate to serve")
    search.add_argument("--rel-tol", type=float, default=0.02, help="max-rate search tolerance (default 0.02)")
    search.add_argument("--no-prune", action="store_true", help="simulate every candidate that fits in memory")
    search.add_argument("--no-launch", action="store_true", help="do not write launch/ configs for the winner")
    search.add_argument(
        "--engine",
        choices=("vllm", "sglang", "trtllm"),
        action="append",
        help="search only deployments this engine can launch (repeatable: every engine named)",
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

    from simulator.files import check_output, run_directory
    from simulator.report.compare import print_table, write_comparison
    from simulator.report.html import write_index
    from simulator.sweep.resume import Progress as SweepProgress
    from simulator.sweep.resume import progress_path, sweep_inputs

    serving = args.objective in SERVING_OBJECTIVES
    simulate = None
    if serving:
        from functools import partial

        from simulator.serving.session import load_serving_scenario
        from simulator.sweep.serving import simulate_serving_layout

        loaded = load_serving_scenario(args.scenario, args.set, f"--objective {args.objective}")
        scenario = loaded.scenario
        simulate = partial(simulate_serving_layout, objective=args.objective, base_dir=str(loaded.base_dir))
    else:
        scenario = load_scenario(args.scenario, args.set)
    if args.gpus is not None and not 1 <= args.gpus <= MAX_GPUS:
        raise ScenarioError(f"--gpus {args.gpus}: expected a number of GPUs from 1 to {MAX_GPUS}")
    if args.jobs is not None and args.jobs < 1:
        raise ScenarioError(f"--jobs {args.jobs}: expected at least 1")
    if args.decode_sample < 0:
        raise ScenarioError(f"--decode-sample {args.decode_sample}: expected 0 (every step) or more")
    microbatches = parse_microbatches(args.microbatches)
    num_gpus = args.gpus or scenario.num_gpus
    layouts = enumerate_layouts(scenario, num_gpus, microbatches)
    if not layouts:
        raise ScenarioError(
            f"{args.scenario}: no valid layout on {num_gpus} GPUs with microbatches {args.microbatches}"
        )
    out = check_output(
        args.out or Path("reports") / scenario.name / "compare", args.force, kind="compare"
    )  # before the sweep
    inputs = sweep_inputs(scenario, num_gpus, microbatches, args.decode_sample, args.objective if serving else None)

    started = time.perf_counter()
    columns = (
        TextColumn("[bold]sweep[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    journal = None
    try:
        with make_executor(args.executor, args.jobs) as executor:  # a bad --executor: before the progress file
            journal = SweepProgress(progress_path(out), inputs, args.resume, layouts)
            with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
                task = bar.add_task("", total=len(layouts))

                def tick(result: LayoutResult) -> None:
                    bar.update(task, advance=1, description=escape(f"{result.label}: {result.status}"))

                results = run_sweep(
                    scenario,
                    layouts,
                    executor,
                    args.decode_sample,
                    tick,
                    simulate=simulate,
                    done=journal.done,
                    journal=journal.append,
                )
    except SweepInterrupted as exc:  # the progress file keeps the finished layouts
        print(f"moesim: {exc}; rerun with --resume to continue", file=sys.stderr)
        return 130
    finally:
        if journal is not None:
            journal.close()
    elapsed = time.perf_counter() - started
    failed = [r for r in results if r.status == "failed"]
    if results and len(failed) == len(results):  # nothing to compare: no table of failures
        journal.remove()
        raise RuntimeError(f"every layout failed, nothing written (e.g. {failed[0].label}: {failed[0].error})")
    ranked = rank_results(results, args.objective)

    with run_directory(out, args.force, kind="compare") as staging:
        files = write_comparison(scenario, ranked, staging, args.objective)
        files.append(write_index(staging, None))
    journal.remove()
    print_table(console, scenario, ranked, args.objective)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "screened", "failed")}
    console.print(
        f"{len(layouts)} layouts on {num_gpus} GPUs: {counts['ok']} simulated, {counts['screened']} "
        f"screened out (do not fit), {counts['failed']} failed, in {elapsed:.1f} s; "
        f"wrote {', '.join(sorted(Path(f).name for f in files))} to {escape(str(out))}/"
    )
    return 0 if counts["ok"] else 1
