"""Command line: parse the arguments and dispatch to the subcommand's module. `moesim --help` lists them."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from rich.console import Console

from simulator.commands import EXIT_BAD_INPUT

#: Each subcommand's module (simulator/commands/) defines add_arguments(parser) and command(args,
#: console) -> exit code. Only the module of the command being run is imported (they pull in
#: pandas, matplotlib, Dask...), so the one-line help for the listing lives here.
SUBCOMMANDS = {
    "profiles": ("simulator.commands.profiles", "list the hardware profiles"),
    "dag": ("simulator.commands.dag", "build, verify and draw the operator DAG; audit the declared figures"),
    "run": ("simulator.commands.run", "simulate the scenario: TTFT, TPOT, throughput, memory, target verdicts"),
    "serve": (
        "simulator.commands.serve",
        "simulate serving a request stream: TTFT/TPOT percentiles, goodput, max rate",
    ),
    "compare": (
        "simulator.commands.compare",
        "sweep every valid parallel layout, rank them, draw the Pareto front; with a search flag, search "
        "deployments (GPU counts, hardware, precision, scheduler limits, aggregated or disaggregated)",
    ),
    "whatif": (
        "simulator.commands.whatif",
        "for every missed target, the smallest change of each knob (batch, lengths, GPUs, layout, hardware, precision) that meets it",
    ),
    "launch": (
        "simulator.commands.launch",
        "write a scenario's launch settings for vLLM, SGLang and TensorRT-LLM",
    ),
    "plot": ("simulator.commands.plot", "redraw the timeline, memory plot, trace and report page of a run directory"),
    "validate": ("simulator.commands.validate", "predict the measured runs of a cases file and report the error"),
    "calibrate": (
        "simulator.commands.calibrate",
        "fit a hardware profile from GPU micro-benchmarks (--from-json, or --device cuda)",
    ),
    "import-hf": ("simulator.commands.import_hf", "write a model spec from a Hugging Face config.json (no network)"),
    "schema": ("simulator.commands.schema", "print the JSON Schema of scenario, profile or model files (for editors)"),
}


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def version() -> str:
    """The installed distribution's version (pyproject.toml's), or 'unknown' outside an install."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("moesim")
    except PackageNotFoundError:
        return "unknown"


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moesim", description="Analytical performance simulator for MoE serving.")
    parser.add_argument("--version", action="version", version=f"moesim {version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        # Also after the subcommand; SUPPRESS keeps a --debug given before it.
        sub_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        if name == command:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand with all its arguments (what `moesim NAME --help` shows); the command
    reference (docs/reference/cli.md) is generated from it."""
    parser = _parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `kill`): handled as Ctrl-C is, so staging directories are removed."""


_MAIN_PID = os.getpid()


def _terminate(signum, frame) -> None:
    if os.getpid() != _MAIN_PID:  # a forked sweep worker: die as SIGTERM means, quietly
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


#: Longest error line printed: a message quotes only excerpts of values, this is the backstop.
MAX_ERROR_CHARS = 1000


def make_console() -> Console:
    """Rich console for stdout: a terminal's own width; 160 columns (or $COLUMNS) when piped, so
    that saved output is not wrapped at 80."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)
    return console


def main(argv: list[str] | None = None) -> int:
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(_command_of(argv)).parse_args(argv)
    console = make_console()
    previous = (
        signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        return importlib.import_module(SUBCOMMANDS[args.command][0]).command(args, console)
    except Terminated:
        print("moesim: terminated; no output was written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("moesim: interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line unless --debug
        if args.debug:
            raise
        code, message = _classify(exc)
        line = message.splitlines()[0] if message else type(exc).__name__
        print(f"moesim: {line[:MAX_ERROR_CHARS]}", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _classify(exc: Exception) -> tuple[int, str]:
    """(exit code, message): 2 for what the input or the environment caused (a validation error,
    an unusable output path, a file that cannot be read or written), 3 for a bug in moesim."""
    from simulator.config import ScenarioError
    from simulator.files import OutputError

    if isinstance(exc, (ScenarioError, OutputError, RuntimeError)):
        return EXIT_BAD_INPUT, str(exc)
    if isinstance(exc, OSError):  # the environment: a full disk, a read-only or vanished path
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_BAD_INPUT, f"{where}{exc.strerror or exc}; check the path and free space"
    if isinstance(exc, MemoryError):
        return EXIT_BAD_INPUT, "out of memory; simulate a smaller scenario (fewer layers, GPUs or decode steps)"
    return 3, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)"


if __name__ == "__main__":
    sys.exit(main())
