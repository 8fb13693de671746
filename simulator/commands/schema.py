"""Command stage: `moesim schema scenario|profile|model`, print the JSON Schema of a scenario, hardware profile or
model spec file (what editors use to complete and check fields; shipped as simulator/schemas/*.schema.json)."""

from __future__ import annotations

import sys

from simulator.commands import EXIT_OK
from simulator.config.schema import SCHEMA_FILES


def add_arguments(parser) -> None:
    parser.add_argument(
        "kind", choices=tuple(SCHEMA_FILES), help="which file's schema: scenario, profile (hardware) or model (preset)"
    )


def command(args, console) -> int:
    from simulator.config.schema import schema_text

    sys.stdout.write(schema_text(args.kind))
    return EXIT_OK
