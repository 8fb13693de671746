"""Sweep stage, layouts: every valid parallel layout of a scenario on N GPUs, checked by the config stage's rules.

A layout is (pp, dp, tp, ep, etp, microbatches) with pp * dp * tp = N; the validity rules are the
config stage's own (`config.check_layout`), applied to each candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from simulator.config import ClusterSpec, LayoutError, ParallelSpec, Scenario, ScenarioError, check_layout, divisors

DEFAULT_MICROBATCHES = (1, 2, 4, 8)


@dataclass(frozen=True, order=True)
class Layout:
    """One parallel layout: the degree of each parallelism and the microbatch count."""

    pp: int
    dp: int
    tp: int
    ep: int = 1
    etp: int = 1
    microbatches: int = 1

    @classmethod
    def of(cls, scenario: Scenario) -> "Layout":
        p = scenario.parallel
        return cls(p.pp, p.dp, p.tp, p.ep, p.etp, p.microbatches)

    @property
    def num_gpus(self) -> int:
        return self.pp * self.dp * self.tp

    def degrees(self) -> dict[str, int]:
        return {"pp": self.pp, "dp": self.dp, "tp": self.tp, "ep": self.ep, "etp": self.etp,
                "microbatches": self.microbatches}

    @property
    def label(self) -> str:
        """Compact name: the degrees above 1, e.g. 'PP2 TP2 EP2 mb4'; 'single' when all are 1."""
        parts = [f"{k.upper()}{v}" for k, v in (("pp", self.pp), ("dp", self.dp), ("tp", self.tp),
                                                 ("ep", self.ep), ("etp", self.etp)) if v > 1]
        if self.microbatches > 1:
            parts.append(f"mb{self.microbatches}")
        return " ".join(parts) or "single"


def layout_scenario(scenario: Scenario, layout: Layout) -> Scenario:
    """The scenario on another layout, checked by the config stage's layout rules.

    Raises ScenarioError naming the rule a layout breaks. The scenario's own layout keeps its
    layer_split; any other gets the even split. (`config.with_layout` would re-read the hardware
    profile for each of thousands of candidates; the rules are the same `check_layout`.)
    """
    if layout == Layout.of(scenario):
        return scenario
    gpn = scenario.cluster.gpus_per_node
    try:
        cluster = ClusterSpec(num_gpus=layout.num_gpus, gpus_per_node=gpn)
    except ValueError:
        raise ScenarioError(f"cluster.num_gpus = {layout.num_gpus} is not a whole number of nodes of "
                            f"gpus_per_node = {gpn}") from None
    candidate = scenario.model_copy(update={"parallel": ParallelSpec(**layout.degrees()), "cluster": cluster})
    try:
        check_layout(candidate)
    except LayoutError as exc:
        raise ScenarioError(f"{exc.path}: {exc}") from None
    return candidate


def enumerate_layouts(scenario: Scenario, num_gpus: int | None = None,
                      microbatches: Sequence[int] = DEFAULT_MICROBATCHES) -> list[Layout]:
    """Every valid layout on `num_gpus` (default: the scenario's), in a fixed order; the scenario's
    own layout is always included when it has that many GPUs (with its microbatch count)."""
    n = num_gpus or scenario.num_gpus
    own = Layout.of(scenario)
    options = sorted(set(microbatches) | ({own.microbatches} if own.num_gpus == n else set()))
    experts = scenario.model.num_experts
    layouts = []
    for pp in divisors(n):
        for tp in divisors(n // pp):
            dp = n // (pp * tp)
            for ep in divisors(experts) if experts else [1]:
                for etp in divisors(dp * tp) if experts else [1]:
                    for mb in options:
                        layout = Layout(pp, dp, tp, ep, etp, mb)
                        try:
                            layout_scenario(scenario, layout)
                        except ScenarioError:
                            continue
                        layouts.append(layout)
    if own.num_gpus == n and own not in layouts:  # e.g. a layer_split the even split would not give
        layouts.append(own)
    return layouts
