"""Serving inputs of a scenario: its serving spec completed by the layout and memory model, the pricer of
its iterations and its GPU count.

The one place that connects a Scenario to the serving simulation. A scenario's optional `serving:` section
(workload, scheduler, replicas, targets; config/serving.py) is `Scenario.serving`; serving.capacity fills in
what it leaves open (KV blocks from the memory model, replicas = parallel.dp), and every iteration is priced
by the operator DAG (serving.dag_pricer.DagPricer) behind a cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simulator.config import Scenario, ScenarioError, ServingSpec, load_scenario, resolve_hardware
from simulator.serving.capacity import resolve_serving
from simulator.serving.dag_pricer import DagPricer
from simulator.serving.pricing import CachedPricer, IterationPricer

#: What to add when a scenario has no serving section; printed by the commands that need one.
SERVING_HINT = (
    "add a `serving:` section (workload: {arrivals, input_len, output_len, num_requests}, "
    "scheduler: {policy, max_num_seqs}, targets: {ttft_p99_s, tpot_p99_s}); see docs/serving.md"
)


@dataclass(frozen=True)
class ServingScenario:
    """A loaded scenario that has a serving section, and the directory that relative trace and length
    files are read from."""

    scenario: Scenario
    base_dir: Path


def load_serving_scenario(path: str | Path, overrides: list[str] | None, what: str) -> ServingScenario:
    """Read a scenario file, apply `--set` overrides (serving.* ones included) and validate it; a one-line
    ScenarioError saying what to add when it has no serving section (`what` needs one)."""
    scenario = load_scenario(path, overrides)
    require_serving(scenario, what)
    return ServingScenario(scenario, Path(path).parent)


def require_serving(scenario: Scenario, what: str) -> None:
    """A one-line ScenarioError saying what to add when the scenario has no serving section (`what` needs one)."""
    if scenario.serving is None:
        raise ScenarioError(f"{scenario.name}: {what} needs a serving workload; {SERVING_HINT}")


def serving_inputs(scenario: Scenario) -> tuple[ServingSpec, IterationPricer, int]:
    """(spec, pricer, num_gpus) of a scenario's serving simulation: Scenario.serving completed by the memory
    model and the layout (capacity.resolve_serving), and the DAG pricer of the scenario's model, layout and
    hardware behind a CachedPricer. Raises ScenarioError when there is no serving section."""
    if scenario.serving is None:
        raise ScenarioError(f"{scenario.name}: no serving section; {SERVING_HINT}")
    hw = resolve_hardware(scenario)
    spec = resolve_serving(scenario, hw)
    return spec, CachedPricer(DagPricer(scenario, hw)), spec.num_gpus


def pricer_name(pricer: IterationPricer) -> str:
    """How iterations are priced, for reports: the wrapped pricer of a cache."""
    inner = pricer.pricer if isinstance(pricer, CachedPricer) else pricer
    return repr(inner) if type(inner).__repr__ is not object.__repr__ else type(inner).__name__
