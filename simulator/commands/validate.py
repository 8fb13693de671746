"""Command stage: `moesim validate`, predict the measured runs of a cases file and print moesim's error."""

from __future__ import annotations

from pathlib import Path

from simulator.calibration.validate import load_cases, predict, summarize


def add_arguments(parser) -> None:
    parser.add_argument("cases", type=Path, help="cases YAML (see validation/dev_cases.yaml)")
    parser.add_argument("--out", type=Path, help="write validation.csv and validation.png here")
    parser.add_argument("--force", action="store_true", help="replace an output directory moesim did not make")


def command(args, console) -> int:
    from rich.table import Table

    cases = load_cases(args.cases)
    if args.out:
        from simulator.files import check_output

        args.out = check_output(args.out, args.force)  # before predicting
    outcomes = [predict(c) for c in cases]
    table = Table(title=f"Validation: {args.cases}")
    for col in ("case", "metric", "predicted", "measured", "error"):
        table.add_column(col, justify="left" if col in ("case", "metric") else "right")
    for o in outcomes:
        colour = "green" if abs(o.error) <= 0.10 else "yellow" if abs(o.error) <= 0.25 else "red"
        table.add_row(
            o.case, o.metric, f"{o.predicted:.4g}", f"{o.measured:.4g}", f"[{colour}]{100 * o.error:+.1f}%[/]"
        )
    console.print(table)
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
