"""What-if stage, running: the scenario's missed targets, every knob's search for each, explained."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from simulator.config import Scenario, ScenarioError
from simulator.sweep import DEFAULT_DECODE_SAMPLE, LayoutResult, TargetVerdict
from simulator.whatif.evaluate import Evaluator, drive, scenario_key
from simulator.whatif.explain import METRIC_WORDS, bound_sentence, with_explanations
from simulator.whatif.knobs import KNOBS
from simulator.whatif.search import Answer, Goal, search


@dataclass(frozen=True)
class WhatIf:
    """The answers for every (target, knob), the scenario's own run, and what the search cost."""

    scenario: Scenario
    baseline: LayoutResult
    goals: tuple[Goal, ...]
    knobs: tuple[str, ...]
    answers: tuple[Answer, ...]
    simulated: int  # distinct variants simulated (screened ones not counted)
    requested: int  # variants the searches asked for, cached ones included
    elapsed_s: float


def fmt_figure(metric: str, value: float) -> str:
    """A figure in the unit people read it in: tokens/ms/GPU, seconds, GB."""
    if math.isnan(value):
        return "-"
    if metric == "memory_bytes_per_gpu":
        return f"{value / 1e9:.4g} GB"
    if metric.endswith("_s"):
        return f"{value * 1e3:.4g} ms" if value < 1 else f"{value:.4g} s"
    return f"{value:.4g}"


def verdict_text(v: TargetVerdict) -> str:
    sign = ">=" if v.bound == "min" else "<="
    return f"{v.metric} {fmt_figure(v.metric, v.actual)} (target {sign} {fmt_figure(v.metric, v.limit)})"


def goals_of(scenario: Scenario, baseline: LayoutResult, target: str | None = None) -> list[Goal]:
    """The targets to search: the one named (it must exist and be missed), else every missed one.
    Bad input is a ScenarioError of one line."""
    if not scenario.targets:
        raise ScenarioError(f"{scenario.name}: the scenario sets no targets; add a targets: section to search for")
    if baseline.status != "ok":
        raise ScenarioError(f"{scenario.name}: the scenario itself does not simulate ({baseline.error})")
    verdicts = {v.metric: v for v in baseline.targets}
    if target is not None:
        if target not in verdicts:
            raise ScenarioError(f"--target {target}: unknown target; the scenario's targets are {', '.join(verdicts)}")
        chosen = [verdicts[target]]
        if chosen[0].met:
            raise ScenarioError(f"--target {target}: already met, {verdict_text(chosen[0])}; nothing to search for")
    else:
        chosen = [v for v in baseline.targets if not v.met]
        if not chosen:
            met = "; ".join(verdict_text(v) for v in baseline.targets)
            raise ScenarioError(f"{scenario.name}: every target is already met ({met}); nothing to search for")
    return [Goal(v.metric, v.bound, v.limit, v.actual) for v in chosen]


def _others(goal: Goal, answer: Answer, baseline: LayoutResult) -> str:
    """Targets the scenario meets that the answer's value would miss (what the change breaks)."""
    if answer.best is None or answer.best.result.status != "ok":
        return ""
    met_now = {v.metric for v in baseline.targets if v.met}
    return "; ".join(
        f"breaks {METRIC_WORDS.get(v.metric, v.metric)} ({fmt_figure(v.metric, v.actual)})"
        for v in answer.best.result.targets
        if v.metric != goal.metric and v.metric in met_now and not v.met
    )


def run_whatif(
    scenario: Scenario,
    knobs: Sequence[str],
    target: str | None = None,
    executor: Executor | None = None,
    decode_sample: int = DEFAULT_DECODE_SAMPLE,
    progress: Callable[[int, int], None] | None = None,
) -> WhatIf:
    """Search every knob for every missed target (or `target`), everything else held fixed."""
    started = time.perf_counter()
    evaluator = Evaluator(executor, decode_sample)
    (baseline,) = evaluator.evaluate([scenario])
    goals = goals_of(scenario, baseline, target)
    for name in knobs:  # an inapplicable knob named explicitly (top_k of a dense model) is bad input, at once
        if KNOBS[name].explicit_only:
            KNOBS[name].space(scenario)
    searches = {(g.metric, k): search(k, scenario, g) for g in goals for k in knobs}
    found = drive(searches, evaluator, progress)
    answers = [found[(g.metric, k)] for g in goals for k in knobs]
    answers = [replace(a, others=_others(g, a, baseline)) for g in goals for a in answers if a.metric == g.metric]
    # What bounds the deployment at each answer: one more run per distinct variant, on the executor.
    wanted: dict[tuple[str, str], Scenario] = {}
    for a in answers:
        if a.best is not None:
            wanted.setdefault((scenario_key(a.best.scenario), a.metric), a.best.scenario)
    futures = {k: evaluator.executor.submit(bound_sentence, s, k[1], decode_sample) for k, s in wanted.items()}
    bounds = {}
    for (key, metric), future in futures.items():
        try:
            bounds[(key, metric)] = future.result()
        except Exception as exc:  # the answer stands without its sentence
            bounds[(key, metric)] = f"(not explained: {type(exc).__name__})"
    explained = []
    for g in goals:
        mine = [a for a in answers if a.metric == g.metric]
        per_key = {k: b for (k, m), b in bounds.items() if m == g.metric}
        explained += with_explanations(mine, per_key, scenario_key)
    return WhatIf(
        scenario,
        baseline,
        tuple(goals),
        tuple(knobs),
        tuple(explained),
        evaluator.simulated,
        evaluator.requested,
        time.perf_counter() - started,
    )
