"""Command stage: one module per `moesim` subcommand, each with add_arguments(parser) and
command(args, console) -> exit code; argument parsing and printing only, the work is the stages'."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

EXIT_OK, EXIT_TARGET_MISSED, EXIT_BAD_INPUT = 0, 1, 2


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a command that reads one scenario file and writes an output directory."""
    parser.add_argument("scenario", type=Path, help="scenario YAML file")
    parser.add_argument("--out", type=Path, help="output directory (default: reports/<scenario name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario field, e.g. --set parallel.tp=4 (repeatable)")
    parser.add_argument("--force", action="store_true", help="replace an output directory moesim did not make")


def optional_module(name: str):
    """The module `name`, or None when that module itself is not there."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise
