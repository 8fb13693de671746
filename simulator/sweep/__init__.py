"""Sweep stage: every valid parallel layout of a scenario on N GPUs, screened, simulated and ranked.

layouts (enumeration and validity), results (one row per layout), executors (serial, processes,
Dask), run (screening and simulation, in enumeration order), rank (objectives), resume (the
progress file kept across Ctrl-C for `--resume`). The sweep never imports the reports or commands.
"""

from simulator.sweep.executors import SerialExecutor, default_jobs, make_executor
from simulator.sweep.layouts import DEFAULT_MICROBATCHES, enumerate_layouts, parse_microbatches
from simulator.sweep.rank import OBJECTIVES, SERVING_OBJECTIVES, rank_results
from simulator.sweep.results import COST_CLASSES, OVERHEAD_CLASSES, LayoutResult, TargetVerdict, cost_shares
from simulator.sweep.run import (
    DEFAULT_DECODE_SAMPLE,
    SweepInterrupted,
    estimated_cost,
    run_sweep,
    screen_memory,
    simulate_layout,
)

__all__ = [
    "COST_CLASSES",
    "DEFAULT_DECODE_SAMPLE",
    "DEFAULT_MICROBATCHES",
    "OBJECTIVES",
    "OVERHEAD_CLASSES",
    "SERVING_OBJECTIVES",
    "LayoutResult",
    "SerialExecutor",
    "SweepInterrupted",
    "TargetVerdict",
    "cost_shares",
    "default_jobs",
    "enumerate_layouts",
    "parse_microbatches",
    "estimated_cost",
    "make_executor",
    "rank_results",
    "run_sweep",
    "screen_memory",
    "simulate_layout",
]
