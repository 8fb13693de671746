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
from simulator.config.engine import EngineProfile
from simulator.config.hardware import HardwareProfile
from simulator.serving.capacity import resolve_serving
from simulator.serving.dag_pricer import DagPricer
from simulator.serving.engine_pricing import EnginePricer
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
    hardware behind a CachedPricer; with `serving.engine`, the DAG pricers inside an EnginePricer (CUDA-graph
    padding, host time). Raises ScenarioError when there is no serving section."""
    if scenario.serving is None:
        raise ScenarioError(f"{scenario.name}: no serving section; {SERVING_HINT}")
    hw = resolve_hardware(scenario)
    spec = resolve_serving(scenario, hw)
    if spec.engine is None:
        return spec, CachedPricer(DagPricer(scenario, hw)), spec.num_gpus
    return spec, CachedPricer(engine_pricer(scenario, hw, spec)), spec.num_gpus


def with_engine_kernels(scenario: Scenario, profile: EngineProfile) -> Scenario:
    """The scenario running the engine's kernels: model.moe_impl and runtime.framework from the profile unless
    the scenario sets them, a ScenarioError (one line) when it sets them otherwise; runtime.moe_dispatch,
    ep_dispatch (where the profile names one), allreduce and custom_allreduce_max_bytes from the profile unless
    the scenario sets them (an engine's custom
    all-reduce can be turned off, e.g. vLLM's --disable-custom-all-reduce)."""
    k = profile.kernels
    model, runtime = scenario.model, scenario.runtime
    for section, field, mine, theirs in (
        ("model", "moe_impl", model.moe_impl, k.moe_impl),
        ("runtime", "framework", runtime.framework, k.framework),
    ):
        explicit = field in (model if section == "model" else runtime).model_fields_set
        if explicit and mine != theirs:
            raise ScenarioError(
                f"{scenario.name}: {section}.{field} = {mine} contradicts serving.engine {profile.name}, which runs "
                f"{field} {theirs} ({k.source}); remove {section}.{field} or serving.engine"
            )
    runtime_update: dict = {"framework": k.framework}
    if "moe_dispatch" not in runtime.model_fields_set:  # the scenario's own wins, as for the all-reduce
        runtime_update["moe_dispatch"] = k.moe_dispatch
    if k.ep_dispatch is not None and "ep_dispatch" not in runtime.model_fields_set:
        runtime_update["ep_dispatch"] = k.ep_dispatch
    ar = profile.allreduce
    if ar is not None:  # the scenario's own all-reduce wins (e.g. vLLM's --disable-custom-all-reduce)
        if "allreduce" not in runtime.model_fields_set:
            runtime_update["allreduce"] = ar.algorithm
        max_bytes = ar.max_bytes_for(scenario.hardware.profile, scenario.parallel.tp)  # a TP group's all-reduce
        if max_bytes is not None and "custom_allreduce_max_bytes" not in runtime.model_fields_set:
            runtime_update["custom_allreduce_max_bytes"] = max_bytes
    return scenario.model_copy(
        update={
            "model": model.model_copy(update={"moe_impl": k.moe_impl}),
            "runtime": runtime.model_copy(update=runtime_update),
        }
    )


def engine_pricer(scenario: Scenario, hw: HardwareProfile, spec: ServingSpec) -> EnginePricer:
    """The EnginePricer of a scenario served by spec.engine: decode batches within the captured sizes priced
    by a DAG pricer replaying CUDA graphs (padded), mixed batches within them by one replaying the piecewise
    graphs where the engine captures them (cuda_graph.mixed piecewise), the rest by one running eagerly;
    runtime.mode eager (vLLM's enforce_eager) turns the graphs off."""
    assert spec.engine is not None
    profile = spec.engine_profile()
    scenario = with_engine_kernels(scenario, profile)
    graphs = profile.cuda_graph is not None and scenario.runtime.mode == "cuda_graph"
    eager = scenario.model_copy(update={"runtime": scenario.runtime.model_copy(update={"mode": "eager"})})
    if not graphs:
        return EnginePricer(profile, None, lambda: DagPricer(eager, hw), ())
    assert profile.cuda_graph is not None
    sizes = profile.cuda_graph.capture_sizes(
        spec.scheduler.max_num_seqs, spec.scheduler.max_num_batched_tokens, hw.engine_memory_bytes, scenario.parallel.tp
    )
    piecewise = None
    if profile.cuda_graph.mixed == "piecewise":
        piecewise = lambda: DagPricer(scenario, hw, piecewise=True)  # noqa: E731
    replayed = DagPricer(scenario, hw, graph_outside_ops=frozenset(profile.cuda_graph.outside))
    return EnginePricer(profile, replayed, lambda: DagPricer(eager, hw), sizes, piecewise)


def pricer_name(pricer: IterationPricer) -> str:
    """How iterations are priced, for reports: the wrapped pricer of a cache."""
    inner = pricer.pricer if isinstance(pricer, CachedPricer) else pricer
    return repr(inner) if type(inner).__repr__ is not object.__repr__ else type(inner).__name__
