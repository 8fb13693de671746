"""Command stage: `moesim whatif`, for every missed target the smallest change of each knob that meets it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from simulator.commands import EXIT_OK, add_scenario_arguments, phases


def add_arguments(parser) -> None:
    from simulator.whatif import KNOBS

    add_scenario_arguments(parser, "/whatif")
    parser.add_argument("--target", metavar="NAME", help="search this target only (default: every missed one)")
    parser.add_argument(
        "--knobs",
        nargs="+",
        metavar="KNOB",
        help=f"knobs to move, comma- or space-separated (default: all but top_k); one of {', '.join(KNOBS)}",
    )
    parser.add_argument("--jobs", type=int, help="local worker processes (default: all cores; 1: serial)")


def command(args, console: Console) -> int:
    from simulator.config import ScenarioError, load_scenario
    from simulator.files import check_output, marker_kind, run_directory
    from simulator.report.whatif import print_whatif, write_whatif
    from simulator.sweep.executors import check_jobs, make_executor
    from simulator.whatif import parse_knobs, run_whatif

    knobs = parse_knobs(args.knobs)  # bad input first: one line, nothing simulated
    check_jobs(args.jobs)
    scenario = load_scenario(args.scenario, args.set)
    if args.target is not None and args.target not in scenario.targets:
        known = ", ".join(scenario.targets) or "none (add a targets: section)"
        raise ScenarioError(f"--target {args.target}: unknown target; the scenario's targets are {known}")
    out = check_output(args.out or Path("reports") / scenario.name / "whatif", args.force, kind="whatif")
    if scenario.serving is not None:
        console.print(
            "serving: the knobs move the static batch of `moesim run`; concurrency and request rate are not "
            "searched (`moesim serve --max-rate` finds the highest rate meeting the serving targets)"
        )
    with phases(console) as phase, make_executor(None, args.jobs) as executor:
        phase("simulate the scenario and search the knobs")

        def tick(round_: int, simulated: int) -> None:
            phase(f"search round {round_}: {simulated} runs simulated")

        result = run_whatif(scenario, knobs, args.target, executor, progress=tick)
        phase("write whatif.csv, whatif.md and the plots")
        with run_directory(out, args.force, kind="whatif") as staging:
            files = write_whatif(result, staging)
    print_whatif(console, result)
    run_dir = out.parent
    if marker_kind(run_dir) == "run" and (run_dir / "summary.json").is_file():  # the run page links the answers
        from simulator.report.html import write_index

        try:
            write_index(run_dir)
        except (OSError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a damaged run
            console.print(f"the run page {escape(str(run_dir))}/index.html was left as it was ({type(exc).__name__})")
    console.print(
        f"{len(knobs)} knobs x {len(result.goals)} target(s): {result.simulated} distinct runs simulated for "
        f"{result.requested} variants asked for (the rest from the cache) in {result.elapsed_s:.1f} s; "
        f"wrote {', '.join(sorted(f.name for f in files))} to {escape(str(out))}/"
    )
    return EXIT_OK
