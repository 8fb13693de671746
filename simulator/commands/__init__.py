"""Command stage: one module per `moesim` subcommand, each with add_arguments(parser) and
command(args, console) -> exit code; argument parsing and printing only, the work is the stages'."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simulator.forking import InChild

EXIT_OK, EXIT_TARGET_MISSED, EXIT_BAD_INPUT = 0, 1, 2


def add_scenario_arguments(parser: argparse.ArgumentParser, default_subdir: str = "") -> None:
    """The arguments of a command that reads one scenario file and writes an output directory."""
    parser.add_argument("scenario", type=Path, help="scenario YAML file")
    parser.add_argument("--out", type=Path, help=f"output directory (default: reports/<scenario name>{default_subdir})")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field, e.g. --set parallel.tp=4 (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="replace an output directory moesim did not make")


class Phases:
    """Names the phase a command is in on a transient progress line (spinner, phase, elapsed time).

    Call it with the next phase's name; `elapsed_s` is the time since the command's work began."""

    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task
        self._started = time.perf_counter()

    def __call__(self, name: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=name)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._started

    def aside(self, fn, *args) -> InChild:
        """InChild(fn, *args), the progress line's refresh thread stopped while the process forks
        (a fork copies only the calling thread: none other may be running)."""
        if self._progress is None:
            return InChild(fn, *args)
        self._progress.stop()  # tells the refresh thread to end; it ends within moments
        try:
            for thread in threading.enumerate():
                if thread is not threading.current_thread():
                    thread.join(timeout=0.5)  # one that does not end: InChild then computes here
            return InChild(fn, *args)
        finally:
            self._progress.start()


@contextmanager
def phases(console) -> Iterator[Phases]:
    """A Phases shown on `console` while the block runs, when the console is a terminal; silent otherwise."""
    if not console.is_terminal:
        yield Phases(None, None)
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        yield Phases(progress, progress.add_task("starting", total=None))
