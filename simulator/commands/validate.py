"""Command stage: `moesim validate`, predict the measured runs of a cases file and print moesim's error.

Two kinds of cases file: single passes (`cases:`, validation/dev_cases.yaml) and whole serving deployments
(`serving_cases:`, validation/serving_cases.yaml), which run the serving simulation per case.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table


def add_arguments(parser) -> None:
    parser.add_argument("cases", type=Path, help="cases YAML (validation/dev_cases.yaml or serving_cases.yaml)")
    parser.add_argument("--out", type=Path, help="write validation.csv and validation.png (serving: .csv, .md) here")
    parser.add_argument("--force", action="store_true", help="replace an output directory moesim did not make")


def _outcome_table(title: str, outcomes, figures: tuple[str, str]) -> Table:
    """One row per outcome: case, metric, its two figures in the order `figures` names them, the signed error in
    colour, where any case's engine has host time the share of its iterations the host set ("host-set"), and
    where any case is a lockstep group its ranks' balance ("rank balance": stats.group_balance_ratio)."""
    from rich.table import Table

    from simulator.report.validation_plot import host_share_text

    table = Table(title=title)
    host = any(getattr(o, "host_bound_share", None) is not None for o in outcomes)

    def balance(o) -> float:
        profile = getattr(o, "iterations", None)
        return math.nan if profile is None else profile.balance_ratio

    grouped = any(not math.isnan(balance(o)) for o in outcomes)
    extra = (*(("host-set",) if host else ()), *(("rank balance",) if grouped else ()))
    columns = ("case", "metric", *figures, "error", *extra)
    for col in columns:
        table.add_column(col, justify="left" if col in ("case", "metric") else "right")
    for o in outcomes:
        cells = {
            "case": o.case,
            "metric": o.metric,
            "predicted": f"{o.predicted:.4g}",
            "measured": f"{o.measured:.4g}",
            "error": f"[{_colour(o.error)}]{100 * o.error:+.1f}%[/]",
            "host-set": host_share_text(getattr(o, "host_bound_share", None)),
            "rank balance": "-" if math.isnan(balance(o)) else f"{balance(o):.2f}",
        }
        table.add_row(*(cells[c] for c in columns))
    return table


def _colour(error: float) -> str:
    return "green" if abs(error) <= 0.10 else "yellow" if abs(error) <= 0.25 else "red"


def command(args, console) -> int:
    from simulator.calibration.serving_validate import is_serving_cases_file

    if args.cases.is_file() and is_serving_cases_file(args.cases):
        return serving_command(args, console)
    from simulator.calibration.validate import load_cases, predict, summarize

    cases = load_cases(args.cases)
    if args.out:
        from simulator.files import check_output

        args.out = check_output(args.out, args.force)  # before predicting
    outcomes = [predict(c) for c in cases]
    console.print(_outcome_table(f"Validation: {args.cases}", outcomes, ("predicted", "measured")))
    s = summarize(outcomes)
    console.print(
        f"median |error| {100 * s['median_abs_error']:.1f}%, max |error| {100 * s['max_abs_error']:.1f}% "
        f"over {s['cases']} cases"
    )
    if args.out:
        from simulator.files import run_directory
        from simulator.report.validation_plot import write_validation

        with run_directory(args.out, args.force) as staging:
            write_validation(outcomes, staging)
        console.print(f"wrote {args.out}/validation.csv and validation.png")
    return 0


def serving_command(args, console) -> int:
    """Predict every serving case (skipped ones listed with their reason) and print the per-case table."""
    from simulator.calibration.serving_validate import (
        Skipped,
        load_serving_cases,
        predict_serving,
        profile_checks,
        summarize_serving,
    )

    cases = load_serving_cases(args.cases)
    if args.out:
        from simulator.files import check_output

        args.out = check_output(args.out, args.force)  # before predicting
    outcomes, skipped = [], []
    start = time.perf_counter()
    for case in cases:
        if case.skip is not None:
            skipped.append(Skipped(case.id, case.skip))
            continue
        outcomes += predict_serving(case, args.cases.parent)
    elapsed_s = time.perf_counter() - start
    title = f"Serving validation: {args.cases}"
    console.print(_outcome_table(title, outcomes, ("measured", "predicted")))
    s = summarize_serving(outcomes)
    if s["rows"]:
        console.print(
            f"median |error| {100 * s['median_abs_error']:.1f}%, max |error| {100 * s['max_abs_error']:.1f}% "
            f"over {int(s['rows'])} rows of {len(cases) - len(skipped)} cases, moesim faster than measured in "
            f"{int(s['faster_rows'])} ({elapsed_s:.1f} s)"
        )
    for check in profile_checks(cases, outcomes, args.cases):
        console.print(check.line(), markup=False)
    for sk in skipped:
        console.print(f"skipped {sk.case}: {sk.reason}", markup=False)
    if args.out:
        from simulator.files import run_directory
        from simulator.report.validation_plot import write_serving_validation

        with run_directory(args.out, args.force) as staging:
            write_serving_validation(outcomes, skipped, s, staging, title)
        console.print(f"wrote {args.out}/validation.csv and validation.md")
    return 0
