"""Sweep stage, layouts: every valid parallel layout of a scenario on N GPUs, checked by the config stage's rules.

A layout is a `config.ParallelSpec` (pp, dp, tp, ep, etp, microbatches) with pp * dp * tp = N; the
validity rules are the config stage's own (`config.with_layout`), applied to each candidate.
"""

from __future__ import annotations

from collections.abc import Sequence

from simulator.config import ParallelSpec, Scenario, ScenarioError, divisors, with_layout

DEFAULT_MICROBATCHES = (1, 2, 4, 8)


def enumerate_layouts(
    scenario: Scenario, num_gpus: int | None = None, microbatches: Sequence[int] = DEFAULT_MICROBATCHES
) -> list[ParallelSpec]:
    """Every valid layout on `num_gpus` (default: the scenario's), in a fixed order; the scenario's
    own layout is always included when it has that many GPUs (with its microbatch count).

    Expert parallelism takes the divisors of the experts. A scenario that uses redundant expert copies
    (parallel.redundant_experts > 0) opts into EPLB: its sweep also takes every ep that divides a stage's GPUs,
    each with the fewest copies that fill its ranks ((-num_experts) mod ep; none where ep divides the experts)."""
    n = num_gpus or scenario.num_gpus
    own = scenario.parallel.without_split()
    options = sorted(set(microbatches) | ({own.microbatches} if own.num_gpus == n else set()))
    experts = scenario.model.num_experts
    eplb = bool(experts and own.redundant_experts)
    layouts = []
    for pp in divisors(n):
        for tp in divisors(n // pp):
            dp = n // (pp * tp)
            if not experts:
                eps = [1]
            else:
                eps = sorted(set(divisors(experts)) | set(divisors(dp * tp))) if eplb else divisors(experts)
            for ep in eps:
                copies = -experts % ep if eplb else 0
                for etp in divisors(dp * tp) if experts else [1]:
                    for mb in options:
                        layout = ParallelSpec(
                            pp=pp, dp=dp, tp=tp, ep=ep, etp=etp, microbatches=mb, redundant_experts=copies
                        )
                        try:
                            with_layout(scenario, layout)
                        except ScenarioError:
                            continue
                        layouts.append(layout)
    if own.num_gpus == n and own not in layouts:  # e.g. a layer_split the even split would not give
        layouts.append(own)
    return layouts


def parse_microbatches(value: Sequence[int] | str) -> tuple[int, ...]:
    """Microbatch counts from `--microbatches 1,2,4` (or a sequence of ints): sorted, distinct, positive;
    otherwise a one-line ScenarioError."""
    text = value if isinstance(value, str) else ",".join(map(str, value))
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ScenarioError(f"--microbatches {text}: expected positive integers separated by commas, e.g. 1,2,4,8")
    return values
