"""Command stage: `moesim launch`, write a scenario's launch settings for vLLM, SGLang and TensorRT-LLM."""

from __future__ import annotations

from pathlib import Path

from simulator.config import load_scenario


def add_arguments(parser) -> None:
    parser.add_argument("scenario", type=Path, help="scenario YAML file (e.g. best.yaml of moesim compare)")
    parser.add_argument("--out", type=Path, help="output directory (default: reports/<scenario name>/launch)")
    parser.add_argument("--force", action="store_true", help="replace an output directory moesim did not make")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field, e.g. --set parallel.tp=4 (repeatable)",
    )


def command(args, console) -> int:
    from rich.markup import escape

    from simulator.files import run_directory, write_atomic
    from simulator.report.launch import ENGINE_VERSIONS, launch_files

    scenario = load_scenario(args.scenario, args.set)
    out = args.out or Path("reports") / scenario.name / "launch"
    files = launch_files(scenario)
    with run_directory(out, args.force, kind="launch") as staging:
        for name, text in files.items():
            write_atomic(staging / name, text)
    refused = [name for name, text in files.items() if "# NOT EXPRESSIBLE:" in text]
    for name in refused:
        reason = next(line for line in files[name].splitlines() if line.startswith("# NOT EXPRESSIBLE:"))
        console.print(f"{name}: {escape(reason[2:])}")
    console.print(
        f"wrote {', '.join(sorted(files))} to {escape(str(out))}/ (engines: "
        + "; ".join(v.split(" (")[0] for v in ENGINE_VERSIONS.values())
        + ")"
    )
    return 0
