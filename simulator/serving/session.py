"""Serving inputs of a scenario: its serving spec, the pricer of its iterations and its GPU count.

The one place that connects a Scenario to the serving simulation. A scenario file carries an optional
`serving:` section (workload, scheduler, replicas, targets; see config/serving.py, or serving/spec.py before it moved). When the config stage
knows that section (`Scenario.serving`) and `serving.dag_pricer.DagPricer` exists, both are used;
until then the section is read beside the scenario and iterations are priced by a roofline
`LinearPricer` of the scenario's model, layout and hardware.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.config import Scenario, ScenarioError, apply_override, parse_scenario, resolve_hardware
from simulator.files import read_yaml
from simulator.serving.pricing import CachedPricer, IterationPricer, LinearPricer

try:  # the serving section's models belong to the config stage once Scenario.serving exists
    from simulator.config.serving import ServingSpec, parse_serving_spec
except ModuleNotFoundError as exc:
    if exc.name != "simulator.config.serving":
        raise
    from simulator.serving.spec import ServingSpec, parse_serving_spec

#: What to add when a scenario has no serving section; printed by the commands that need one.
SERVING_HINT = ("add a `serving:` section (workload: {arrivals, input_len, output_len, num_requests}, "
                "scheduler: {kv_cache: {capacity_blocks}}, targets: {ttft_p99_s, tpot_p99_s})")

#: Kernels of one transformer layer in a fused serving engine (norms, QKV, attention, output projection,
#: router, expert GEMMs, residual adds): the roofline pricer's launch count.
KERNELS_PER_LAYER = 10


@dataclass(frozen=True)
class ServingScenario:
    """A loaded scenario with its serving section (None when it has none) and the directory that
    relative trace and length files are read from."""

    scenario: Scenario
    spec: ServingSpec | None
    base_dir: Path


def scenario_knows_serving() -> bool:
    """True once the config stage parses the `serving:` section itself (Scenario.serving)."""
    return "serving" in Scenario.model_fields


def load_serving_scenario(path: str | Path, overrides: list[str] | None = None) -> ServingScenario:
    """Read a scenario file, apply `--set` overrides (serving.* ones included) and validate it."""
    from simulator.config import load_scenario

    path = Path(path)
    if scenario_knows_serving():
        scenario = load_scenario(path, overrides)
        return ServingScenario(scenario, getattr(scenario, "serving", None), path.parent)
    if not path.is_file():
        load_scenario(path, overrides)  # raises its one-line error (no such file, a directory)
    data = read_yaml(path, str(path), "scenario", ScenarioError)
    if not isinstance(data, dict):
        load_scenario(path, overrides)  # raises its one-line error (empty, not a mapping)
    section = data.pop("serving", None)
    for item in overrides or []:
        if item.strip().startswith("serving."):
            section = apply_override({"serving": section or {}}, item)["serving"]
        else:
            data = apply_override(data, item)
    scenario = parse_scenario(data, str(path))
    spec = parse_serving_spec(section, f"{path}: serving") if section is not None else None
    return ServingScenario(scenario, spec, path.parent)


def parse_serving_scenario(data: dict[str, Any], source: str = "scenario") -> ServingScenario:
    """Validate a scenario mapping that may hold a `serving:` section (tests, sweeps)."""
    if scenario_knows_serving():
        scenario = parse_scenario(data, source)
        return ServingScenario(scenario, getattr(scenario, "serving", None), Path("."))
    rest = {k: v for k, v in data.items() if k != "serving"}
    section = data.get("serving")
    spec = parse_serving_spec(section, f"{source}: serving") if section is not None else None
    return ServingScenario(parse_scenario(rest, source), spec, Path("."))


def require_spec(loaded: ServingScenario, what: str) -> ServingSpec:
    """The serving spec, or a one-line ScenarioError saying what to add."""
    spec = serving_spec(loaded.scenario, loaded.spec)
    if spec is None:
        raise ScenarioError(f"{loaded.scenario.name}: {what} needs a serving workload; {SERVING_HINT}")
    return spec


def serving_spec(scenario: Scenario, spec: ServingSpec | None = None) -> ServingSpec | None:
    """scenario.serving when the config stage has it, else the spec read beside the scenario."""
    return getattr(scenario, "serving", None) or spec


def serving_inputs(scenario: Scenario, spec: ServingSpec | None = None) -> tuple[ServingSpec, IterationPricer, int]:
    """(spec, pricer, num_gpus) of a scenario's serving simulation. Uses Scenario.serving, completed by
    the memory model and the layout (serving.capacity.resolve_serving: KV capacity, replicas = dp), and
    the DAG pricer when they exist; otherwise `spec` and a roofline pricer. Raises ScenarioError when
    there is no serving section."""
    spec = serving_spec(scenario, spec)
    if spec is None:
        raise ScenarioError(f"{scenario.name}: no serving section; {SERVING_HINT}")
    hw = resolve_hardware(scenario)
    capacity = _optional("simulator.serving.capacity")
    if capacity is not None and hasattr(capacity, "resolve_serving") and getattr(scenario, "serving", None):
        spec = capacity.resolve_serving(scenario, hw)
    dag_pricer = _optional("simulator.serving.dag_pricer")
    pricer: IterationPricer
    if dag_pricer is not None and hasattr(dag_pricer, "DagPricer"):
        pricer = CachedPricer(dag_pricer.DagPricer(scenario, hw))
    else:
        pricer = CachedPricer(roofline_pricer(scenario, hw))
    return spec, pricer, spec.num_gpus


def pricer_name(pricer: IterationPricer) -> str:
    """How iterations are priced, for reports: the wrapped pricer of a cache."""
    inner = pricer.pricer if isinstance(pricer, CachedPricer) else pricer
    return repr(inner) if type(inner).__repr__ is not object.__repr__ else type(inner).__name__


def roofline_pricer(scenario: Scenario, hw) -> LinearPricer:
    """A LinearPricer from first principles, for when no DAG pricer is available.

    Assumes one replica is the scenario's layout over num_gpus / dp GPUs; an iteration reads every
    weight of a pipeline stage once per stage (stages run one after another: no microbatching),
    every computed token costs 2 x active parameters FLOPs spread over the replica's GPUs, and every
    context token's K and V are read once per layer, and every layer's kernels pay the profile's
    fixed kernel overhead (KERNELS_PER_LAYER of them, as a fused serving engine launches).
    """
    from simulator.memory import parameter_counts, weight_bytes_per_gpu

    m, p = scenario.model, scenario.parallel
    gpus = max(1, scenario.num_gpus // p.dp)
    hbm_s = hw.hbm_bytes_per_s * hw.memory_efficiency
    flops_s = hw.peak_for(m.dtype) * hw.compute_efficiency
    stage_gpus = p.dp * p.tp  # GPUs of one stage, over every data-parallel rank
    weights_s = sum(weight_bytes_per_gpu(scenario, s * stage_gpus) for s in range(p.pp)) / hbm_s
    token_s = 2.0 * parameter_counts(scenario)["active"] / (gpus * flops_s)
    kv_bytes_per_token = 2.0 * m.num_layers * m.kv_heads * m.head_size * m.kv_bytes_per_element
    context_s = kv_bytes_per_token / (max(1, p.tp) * p.pp) / hbm_s
    launches_s = m.num_layers * KERNELS_PER_LAYER * hw.kernel_overhead_s
    return LinearPricer(max(weights_s + launches_s, 1e-6), token_s, context_s)


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise
