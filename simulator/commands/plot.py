"""Command stage: `moesim plot`, redraw the timeline, memory plot, trace and report page of a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from simulator.report.plots import plot_directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="directory written by `moesim run` (or `moesim compare`)")


def command(args: argparse.Namespace, console) -> int:
    files, seconds = plot_directory(args.run_dir)
    timing = ", ".join(f"{name} {seconds[name]:.1f} s" for name in files)
    console.print(f"wrote {timing} to {args.run_dir}/")
    return 0
