"""What-if stage, search: for one missed target and one knob, the smallest change that meets it.

Each search is a generator that `evaluate.drive` feeds with simulated runs (whatif.evaluate).

Ordered knobs: the two ends of the range and a midpoint are simulated first, with the current value.
When the figure moves monotonically through them (non-strictly, in either direction), the target is
met at most on one side of a threshold and the search bisects the grid between the current value and
the end that meets (every new point is checked against the order too); when neither end meets, no
value in the range does. A non-monotone knob is enumerated on a coarse geometric subgrid instead, and
the crossing nearest the current value is then bisected. Either way the reported value meets the
target and its grid neighbour towards the current value does not. Discrete knobs are enumerated.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from simulator.config import Scenario
from simulator.sweep import LayoutResult, TargetVerdict, rank_results
from simulator.whatif.evaluate import Request, Search
from simulator.whatif.knobs import KNOBS, Knob, Space, dtype_bytes

#: Points of the coarse subgrid a non-monotone ordered knob is enumerated on (plus the ends and the current value).
ENUMERATION_POINTS = 24
#: Two figures closer than this (relative) count as equal when the order is checked.
MONOTONE_RTOL = 1e-9


# ---------------------------------------------------------------------------------------------
# One target


@dataclass(frozen=True)
class Goal:
    """A target: the metric, its bound ('min' or 'max') and limit, and the scenario's current figure."""

    metric: str
    bound: str
    limit: float
    actual: float

    def verdict(self, result: LayoutResult) -> TargetVerdict | None:
        return next((t for t in result.targets if t.metric == self.metric), None) if result.status == "ok" else None

    def figure(self, result: LayoutResult) -> float:
        verdict = self.verdict(result)
        return verdict.actual if verdict is not None else math.nan

    def met(self, result: LayoutResult) -> bool:
        verdict = self.verdict(result)
        return bool(verdict and verdict.met and result.fits)

    def reached(self, result: LayoutResult) -> bool:
        """The figure meets the target, whether or not the layout fits memory."""
        verdict = self.verdict(result)
        return bool(verdict and verdict.met)

    def better(self, a: float, b: float) -> bool:
        """a is a better figure than b (NaN is never better)."""
        if math.isnan(a):
            return False
        return math.isnan(b) or (a > b if self.bound == "min" else a < b)


@dataclass(frozen=True)
class Point:
    """One simulated value of a knob: its figure for the goal, whether it meets it, and the variant
    that gave it (for num_gpus, the best layout of the count)."""

    value: Any
    label: str
    figure: float
    met: bool  # the figure meets the target and the layout fits memory
    result: LayoutResult
    scenario: Scenario
    reached: bool = False  # the figure meets the target (memory aside): what a monotone search bisects on


@dataclass(frozen=True)
class Answer:
    """What one knob can do for one target. status: 'found' (`best` is the smallest change that
    meets it), 'none' (no value in the range does; `best` is the closest figure) or 'n/a' (the
    knob does not apply; `reason` says why)."""

    metric: str
    knob: str
    status: str
    method: str
    current: str
    range_text: str
    tolerance: str
    best: Point | None = None
    below: Point | None = None  # found by bisection: the grid neighbour towards the current value (not met)
    points: tuple[Point, ...] = ()
    reason: str = ""
    bound: str = ""  # what bounds the deployment at `best` (explain.bound_sentence)
    others: str = ""  # targets the scenario meets that `best` would miss
    monotone: bool | None = None
    extra: dict = field(default_factory=dict)
    ordered: bool = True  # the knob's values are ordered (else enumerated options: layouts, profiles, dtypes)


def _probe(knob: Knob, scenario: Scenario, goal: Goal, values: Sequence[Any]) -> Generator[Request, list, list[Point]]:
    """Simulate `values` of the knob (each value's variants in one request); a value with several
    variants (num_gpus) takes the best ranked of them."""
    groups = [knob.variants(scenario, v) for v in values]
    results = yield [s for g in groups for s in g]
    points, at = [], 0
    for v, g in zip(values, groups):
        part, at = results[at : at + len(g)], at + len(g)
        # rank order (fitting layouts first), then the best figure for this goal; `index` = position in g
        ranked = rank_results([replace(r, index=i) for i, r in enumerate(part)], "targets")
        best = ranked[0]
        for r in ranked[1:]:
            if r.status == "ok" and r.fits and goal.better(goal.figure(r), goal.figure(best)):
                best = r
        points.append(
            Point(
                v, knob.fmt(v), goal.figure(best), goal.met(best), part[best.index], g[best.index], goal.reached(best)
            )
        )
    return points


def is_monotone(points: Sequence[Point]) -> bool:
    """The figures, in the order of the knob's values, never go up and down (NaN breaks it)."""
    figures = [p.figure for p in points]
    if any(math.isnan(f) for f in figures):
        return False
    ups = downs = False
    for a, b in zip(figures, figures[1:]):
        tol = MONOTONE_RTOL * max(abs(a), abs(b))
        ups |= b > a + tol
        downs |= b < a - tol
    return not (ups and downs)


def _geometric_index(values: Sequence[Any], lo: int, hi: int, count: int) -> list[int]:
    """About `count` indices between lo and hi, evenly spaced in log(value) (values > 0)."""
    a, b = float(values[lo]), float(values[hi])
    out = set()
    for j in range(count + 1):
        target = a * (b / a) ** (j / count)
        out.add(_nearest(values, lo, hi, target))
    return sorted(out)


def _nearest(values: Sequence[Any], lo: int, hi: int, target: float) -> int:
    """The index in [lo, hi] of the sorted values nearest `target` by ratio (binary search)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if float(values[mid]) < target:
            lo = mid
        else:
            hi = mid
    return lo if abs(math.log(float(values[lo]) / target)) <= abs(math.log(float(values[hi]) / target)) else hi


def search_ordered(knob: Knob, scenario: Scenario, goal: Goal, space: Space) -> Search:
    values = space.values
    n = len(values)
    c = values.index(space.current)
    known: dict[int, Point] = {}

    def sample(indices):
        new = [i for i in dict.fromkeys(indices) if i not in known]
        points = yield from _probe(knob, scenario, goal, [values[i] for i in new])
        known.update(zip(new, points))

    def ordered_points() -> list[Point]:
        return [known[i] for i in sorted(known)]

    def answer(status, method, best=None, below=None, reason="", monotone=None):
        return Answer(
            goal.metric,
            knob.name,
            status,
            method,
            knob.fmt(space.current),
            space.range_text,
            space.tolerance,
            best,
            below,
            tuple(ordered_points()),
            reason,
            monotone=monotone,
        )

    def bisect(lo: int, hi: int):
        """lo does not meet, hi does (either side of each other); narrow to neighbours. Returns
        (lo, hi), or None when a new point breaks the monotone order."""
        step = 1 if hi > lo else -1
        while abs(hi - lo) > 1:
            mid = (lo + hi) // 2
            yield from sample([mid])
            if not is_monotone(ordered_points()):
                return None
            if known[mid].reached:
                hi = mid
            else:
                lo = mid
        assert hi - lo == step
        return lo, hi

    if n < 2:
        return answer("n/a", "", reason=f"{knob.words} has one valid value here ({space.range_text})")
    mid = _geometric_index(values, 0, n - 1, 2)[1] if float(values[0]) > 0 else n // 2
    yield from sample([c, 0, mid, n - 1])
    if known[c].met:  # num_gpus: another layout of the same count already meets it
        return answer("found", "the current value, another layout", best=known[c])
    if is_monotone(ordered_points()):
        # the figure alone decides the side (memory grows along some knobs: checked at the answer)
        ends = [i for i in (0, n - 1) if i != c and known[i].reached]
        if not ends:
            best = _best(goal, ordered_points())
            return answer(
                "none",
                "monotone: ends checked",
                best=best,
                monotone=True,
                reason=f"the figure moves monotonically over {space.range_text} and neither end meets the target",
            )
        end = ends[0]
        # start from the known points closest to the crossing
        lo = max(
            (i for i in known if not known[i].reached and (c <= i < end or end < i <= c)), key=lambda i: abs(i - c)
        )
        hi = min((i for i in known if known[i].reached and (lo < i <= end or end <= i < lo)), key=lambda i: abs(i - lo))
        pair = yield from bisect(lo, hi)
        if pair is not None:
            best, below = known[pair[1]], known[pair[0]]
            if best.met:
                return answer("found", "bisection", best=best, below=below, monotone=True)
            memory = best.result.memory_bytes_per_gpu / 1e9
            return answer(
                "none",
                "bisection",
                best=best,
                below=below,
                monotone=True,
                reason=f"the figure meets the target from {best.label} on, but there a GPU would need {memory:.4g} GB "
                f"of its {best.result.capacity_bytes / 1e9:.4g} GB",
            )
    # Not monotone: enumerate a coarse subgrid, then bisect the crossing nearest the current value.
    coarse = (
        set(_geometric_index(values, 0, n - 1, ENUMERATION_POINTS))
        if float(values[0]) > 0
        else set(range(0, n, max(1, n // ENUMERATION_POINTS)))
    )
    yield from sample(sorted(coarse | {0, c, n - 1}))
    met = [i for i in known if known[i].met]
    if not met:
        best = _best(goal, ordered_points())
        return answer(
            "none",
            f"enumeration ({len(known)} values)",
            best=best,
            monotone=False,
            reason=f"none of the {len(known)} values simulated over {space.range_text} meets the target "
            "(the figure is not monotone in this knob)",
        )
    distance = (
        (lambda i: abs(math.log(float(values[i]) / float(values[c]))))
        if float(values[0]) > 0
        else (lambda i: abs(i - c))
    )
    hi = min(met, key=lambda i: (distance(i), i))
    lo = max((i for i in known if (c <= i < hi or hi < i <= c)), key=lambda i: -abs(i - hi))  # nearest known towards c
    while abs(hi - lo) > 1:
        mid = (lo + hi) // 2
        yield from sample([mid])
        if known[mid].met:
            hi = mid
        else:
            lo = mid
    return answer(
        "found", f"enumeration ({len(coarse)} values) + bisection", best=known[hi], below=known[lo], monotone=False
    )


def _best(goal: Goal, points: Sequence[Point]) -> Point | None:
    """The point with the best figure, among those whose layout fits memory when any does."""
    best = None
    fitting = [p for p in points if p.result.fits]
    for p in fitting or points:
        if best is None or goal.better(p.figure, best.figure):
            best = p
    return best


def search_discrete(knob: Knob, scenario: Scenario, goal: Goal, space: Space) -> Search:
    options = [v for v in space.values if v != space.current]
    if not options:
        return Answer(
            goal.metric,
            knob.name,
            "n/a",
            "",
            knob.fmt(space.current),
            space.range_text,
            space.tolerance,
            reason=f"no other {knob.words} to try",
            ordered=False,
        )
    points = yield from _probe(knob, scenario, goal, options)
    met = [p for p in points if p.met]
    method = f"enumeration ({len(points)} values)"
    if not met:
        return Answer(
            goal.metric,
            knob.name,
            "none",
            method,
            knob.fmt(space.current),
            space.range_text,
            space.tolerance,
            best=_best(goal, points),
            points=tuple(points),
            reason=f"none of the {len(points)} alternatives ({space.range_text}) meets the target",
            ordered=False,
        )
    if knob.name in ("weight_dtype", "kv_cache_dtype"):  # the smallest change: the nearest size, then the best figure
        here = dtype_bytes(space.current)
        sign = -1.0 if goal.bound == "min" else 1.0
        met.sort(key=lambda p: (abs(math.log(dtype_bytes(p.value) / here)), sign * p.figure))
    best = met[0] if knob.name in ("weight_dtype", "kv_cache_dtype") else _best(goal, met)
    return Answer(
        goal.metric,
        knob.name,
        "found",
        method,
        knob.fmt(space.current),
        space.range_text,
        space.tolerance,
        best=best,
        points=tuple(points),
        extra={"meeting": len(met)},
        ordered=False,
    )


def search(knob_name: str, scenario: Scenario, goal: Goal) -> Search:
    """The search of one knob for one goal (a generator for `drive`); returns an Answer."""
    knob = KNOBS[knob_name]
    space = knob.space(scenario)
    if space.ordered:
        return (yield from search_ordered(knob, scenario, goal, space))
    return (yield from search_discrete(knob, scenario, goal, space))
