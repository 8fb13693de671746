"""What-if stage: for every missed target, the smallest change of each knob that meets it.

knobs (what may change, over which physical range), search (bisection on monotone ordered knobs,
enumeration otherwise, every figure a simulated run, cached), explain (what then bounds the
deployment; why a knob cannot reach a target), run (the missed targets, all knobs together).
Pure: no command line, no plotting.
"""

from simulator.whatif.knobs import KNOBS, RESOURCE_KNOBS, parse_knobs
from simulator.whatif.run import WhatIf, fmt_figure, goals_of, run_whatif, verdict_text
from simulator.whatif.search import Answer, Evaluator, Goal, Point, scenario_key

__all__ = [
    "KNOBS",
    "RESOURCE_KNOBS",
    "Answer",
    "Evaluator",
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
