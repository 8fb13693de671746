"""Command stage: `moesim serve`, simulate the scenario's serving workload request by request and write its
report (requests.csv, summary.json / .md, plots, serving_trace.json, index.html); `--max-rate` also finds the
highest Poisson arrival rate at which every target holds, and writes the rate curve."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from simulator.commands import EXIT_OK, EXIT_TARGET_MISSED, add_scenario_arguments


def add_arguments(parser) -> None:
    add_scenario_arguments(parser)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--max-rate",
        action="store_true",
        help="also find the highest Poisson arrival rate meeting every target (rate_curve.csv/.png)",
    )
    parser.add_argument(
        "--rel-tol", type=float, default=0.02, metavar="R", help="relative precision of --max-rate (default 0.02)"
    )


def command(args, console: Console) -> int:
    from rich.markup import escape

    from simulator import api
    from simulator.config import precision_line, resolve_hardware
    from simulator.report.serving_summary import print_serving

    with _rate_progress(console, args.max_rate) as tick:
        result = api.serve(
            args.scenario, max_rate=args.max_rate, rel_tol=args.rel_tol, overrides=args.set, on_rate=tick
        )
    out = args.out or Path("reports") / result.scenario.name / "serve"
    _, doc = result.write(out, force=args.force)
    print_serving(console, doc)
    console.print(escape(precision_line(result.scenario.model.formats, resolve_hardware(result.scenario))))
    if result.found is not None:
        _print_max_rate(console, result.found, result.spec)
    console.print(
        f"simulated {len(result.sim.records)} requests ({result.sim.num_iterations} iterations) in "
        f"{result.elapsed_s:.2f} s; wrote {out}/"
    )
    return EXIT_TARGET_MISSED if args.check and not result.all_targets_met else EXIT_OK


@contextmanager
def _rate_progress(console: Console, shown: bool) -> Iterator[Callable[[float, Any], None]]:
    """A progress line for the max-rate search (one tick per rate simulated), on a terminal."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("[bold]max rate[/bold]"),
        TimeElapsedColumn(),
        TextColumn("{task.completed} rates; {task.description}"),
    )
    with Progress(*columns, console=console, transient=True, disable=not (shown and console.is_terminal)) as bar:
        task = bar.add_task("", total=None)

        def tick(rate: float, s) -> None:
            verdict = "targets met" if s.all_targets_met else "a target missed"
            bar.update(task, advance=1, description=f"{rate:.4g}/s: {verdict}")

        yield tick


def _print_max_rate(console: Console, found, spec) -> None:
    if found.rate_per_s is None:
        console.print(
            f"[red]max rate[/red]: no rate tried (down to {found.curve['rate_per_s'].min():.4g} "
            f"{spec.workload.rate_unit}) meets every target"
        )
        return
    note = " (the highest rate tried; the true maximum may be higher)" if found.capped else ""
    row = found.curve[found.curve["rate_per_s"] == found.rate_per_s].iloc[0]
    console.print(
        f"[bold]max rate[/bold]: {found.rate_per_s:.4g} {spec.workload.rate_unit}{note}, at "
        f"{row['output_tokens_per_s_per_gpu']:.4g} output tokens/s/GPU, TTFT p99 "
        f"{row['ttft_p99_s'] * 1e3:.4g} ms, TPOT p99 {row['tpot_p99_s'] * 1e3:.4g} ms; "
        f"{len(found.curve)} rates simulated (rate_curve.csv)"
    )
