"""What-if stage: for every missed target, the smallest change of each knob that meets it.

knobs (what may change, over which physical range), evaluate (simulated runs, cached, on an
executor), search (bisection on monotone ordered knobs, enumeration otherwise), explain (what then bounds the
deployment; why a knob cannot reach a target), run (the missed targets, all knobs together).
Pure: no command line, no plotting.
"""

from simulator.whatif.evaluate import Evaluator, drive, scenario_key
from simulator.whatif.knobs import KNOBS, RESOURCE_KNOBS, parse_knobs
from simulator.whatif.run import WhatIf, fmt_figure, goals_of, run_whatif, verdict_text
from simulator.whatif.search import Answer, Goal, Point

__all__ = [
    "KNOBS",
    "RESOURCE_KNOBS",
    "Answer",
    "Evaluator",
    "drive",
    "Goal",
    "Point",
    "WhatIf",
    "fmt_figure",
    "goals_of",
    "parse_knobs",
    "run_whatif",
    "scenario_key",
    "verdict_text",
]
