"""Config stage: the typed, validated scenario (model, hardware, cluster, parallel layout, workload, targets).

Every constraint is checked here, once, when a scenario is loaded; later stages trust the objects.
Errors are `ScenarioError`s with one line that names the field path and the fix.

Modules: `errors` (ScenarioError, the strict base model, one-line messages), `hardware` (profiles),
`model` (ModelSpec, presets), `precision` (number formats, per-class formats, precision presets), `scenario` (the sections, Scenario, layout rules), `serving` (the serving section), `load` (reading,
`--set` overrides, validation), `import_hf` (Hugging Face configs). The names other stages use are
re-exported here.
"""

from simulator.config.errors import LayoutError, ScenarioError, StrictModel, divisors, one_line_error
from simulator.config.load import (
    apply_override,
    gpus_per_node,
    load_scenario,
    parse_scenario,
    precision_line,
    resolve_hardware,
    with_layout,
)
from simulator.config.model import DTYPE_BYTES, PRESETS_DIR, ModelSpec, available_presets, load_model_preset
from simulator.config.precision import FORMATS, PRESETS, Precision, PrecisionSpec
from simulator.config.scenario import (
    MAX_TOKENS,
    ClusterSpec,
    Declared,
    HardwareRef,
    ParallelSpec,
    RoutingSpec,
    RuntimeSpec,
    Scenario,
    Target,
    TargetMetric,
    WorkloadSpec,
    check_layout,
)
from simulator.config.serving import ServingError, ServingSpec, parse_serving_spec

__all__ = [
    "DTYPE_BYTES",
    "FORMATS",
    "PRESETS",
    "Precision",
    "PrecisionSpec",
    "MAX_TOKENS",
    "PRESETS_DIR",
    "ClusterSpec",
    "Declared",
    "HardwareRef",
    "LayoutError",
    "ModelSpec",
    "ParallelSpec",
    "RoutingSpec",
    "RuntimeSpec",
    "Scenario",
    "ScenarioError",
    "ServingError",
    "ServingSpec",
    "StrictModel",
    "Target",
    "TargetMetric",
    "WorkloadSpec",
    "apply_override",
    "available_presets",
    "check_layout",
    "divisors",
    "gpus_per_node",
    "load_model_preset",
    "load_scenario",
    "one_line_error",
    "parse_scenario",
    "parse_serving_spec",
    "precision_line",
    "resolve_hardware",
    "with_layout",
]
