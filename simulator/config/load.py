"""Config stage, loading: read, override (`--set`) and validate a scenario into one-line errors; resolve its hardware."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from simulator.config.errors import LayoutError, ScenarioError, one_line_error
from simulator.config.hardware import HardwareProfile, ProfileError, ProfileInvalid, load_profile
from simulator.config.model import MAX_MODEL_COUNTS, magnitude_problem
from simulator.config.precision import FORMATS, Precision
from simulator.config.scenario import ClusterSpec, ParallelSpec, Scenario, check_layout
from simulator.files import YamlLimitError, load_yaml_text, read_yaml

#: Largest count accepted per field of the cluster and layout sections (the model's: MAX_MODEL_COUNTS).
_MAX_COUNTS = {
    "model": MAX_MODEL_COUNTS,
    "cluster": {"num_gpus": 10**5, "gpus_per_node": 10**5},
    "parallel": {k: 10**5 for k in ("tp", "pp", "dp", "ep", "etp", "microbatches")},
}


def _check_magnitudes(data: dict) -> None:
    """Reject absurd numbers before validation, whose divisibility checks and messages loop over them.
    The workload's token counts are checked (as a product) by the layout check, MAX_TOKENS."""
    for section in ("model", "cluster", "parallel", "workload"):
        fields = data.get(section)
        if not isinstance(fields, dict):
            continue
        for key, value in fields.items():
            if isinstance(value, bool):
                _check_not_bool(section, key, value)
        problem = magnitude_problem(fields, f"{section}.", _MAX_COUNTS[section]) if section != "workload" else None
        if problem:
            raise ScenarioError(problem)


def _check_not_bool(section: str, key: str, value: bool) -> None:
    """pydantic reads `tp: true` as tp = 1; a yes/no where a number belongs is a slip, not a 1."""
    field = getattr(Scenario.model_fields[section].annotation, "model_fields", {}).get(key)
    if field is not None and "bool" not in str(field.annotation):
        raise ScenarioError(f"{section}.{key} = {str(value).lower()}: expected a number, not true/false")


def _printable(message: str) -> str:
    """One line whatever the input held: control characters (a newline in a key) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _check_name(name: str) -> None:
    """The name becomes the default output directory reports/<name>: keep it one path component."""
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ScenarioError(f"name = {name!r}: give a plain name (no '/', not empty); it names the output directory")


def parse_scenario(data: Any, source: str = "scenario") -> Scenario:
    """Validate a scenario mapping; raise ScenarioError with one line."""
    if not isinstance(data, dict):
        raise ScenarioError(
            f"{source}: expected a YAML mapping with sections model, hardware, cluster, parallel, workload, targets"
        )
    try:
        _check_magnitudes(data)
        scenario = Scenario.model_validate(data)
        _check_name(scenario.name)
    except ValidationError as exc:
        raise ScenarioError(_printable(f"{source}: {one_line_error(exc, Scenario)}")) from None
    except ScenarioError as exc:
        raise ScenarioError(_printable(f"{source}: {exc}")) from None
    try:
        hw = resolve_hardware(scenario, source)  # fail now, not mid-run
    except ScenarioError as exc:
        raise ScenarioError(_printable(str(exc))) from None
    problem = precision_problem(scenario.model.formats, hw)
    if problem:
        raise ScenarioError(_printable(f"{source}: {problem}"))
    return scenario


def precision_problem(formats: Precision, hw: HardwareProfile) -> str | None:
    """A precision section's compute format the hardware has no tensor cores for, as an error line
    (None: all computable). The legacy dtype fields are not refused: they fall back (precision_fallbacks)."""
    if not formats.explicit:
        return None
    for path, fmt in formats.compute_formats().items():
        if not hw.has_peak(fmt):
            field = FORMATS[fmt].peak_field
            return (
                f"model.precision.{path} = {fmt}: {hw.name} has no {fmt} tensor cores (no peak_flops_per_s.{field}); "
                f"compute in bf16 (e.g. precision: {'w4a16' if fmt in ('nvfp4', 'mxfp4') else 'fp8-w8a16'}) "
                f"or use a profile with that peak"
            )
    return None


def precision_fallbacks(formats: Precision, hw: HardwareProfile) -> dict[str, str]:
    """Compute formats the hardware lacks, each with the peak it runs at instead (legacy dtype fields only)."""
    return {fmt: hw.peak_used(fmt) for fmt in sorted(set(formats.compute_formats().values())) if not hw.has_peak(fmt)}


def precision_line(formats: Precision, hw: HardwareProfile) -> str:
    """The one line saying the precision a run uses, with any peak it falls back to."""
    return formats.describe(precision_fallbacks(formats, hw))


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override (`key.path=value`) and validate a scenario file."""
    try:
        return _load_scenario(Path(path), overrides)
    except ScenarioError as exc:
        raise ScenarioError(_printable(str(exc))) from None


def _load_scenario(path: Path, overrides: list[str] | None) -> Scenario:
    if path.is_dir():
        raise ScenarioError(f"{path}: is a directory; give a scenario YAML file")
    if not path.is_file():
        raise ScenarioError(f"{path}: no such file")
    data = read_yaml(path, str(path), "scenario", ScenarioError)
    if data is None:
        raise ScenarioError(f"{path}: empty file; a scenario needs model, hardware, cluster, parallel, workload")
    data = resolve_relative_paths(data, path.parent)
    for item in overrides or []:
        data = apply_override(data, item)
    return parse_scenario(data, str(path))


def _is_path(ref: Any) -> bool:
    return isinstance(ref, str) and Path(ref).suffix in (".yaml", ".yml") and not Path(ref).is_absolute()


def resolve_relative_paths(data: Any, base: Path) -> Any:
    """The scenario mapping with a relative hardware-profile or model-preset path made absolute,
    relative to `base`: the directory of the file that names it (not the current directory), so
    a scenario means the same wherever it is run from, and on every worker of a sweep."""
    if not isinstance(data, dict):
        return data
    base = Path(base).absolute()
    data = dict(data)
    hardware, model = data.get("hardware"), data.get("model")
    if _is_path(hardware):
        data["hardware"] = str(base / hardware)
    elif isinstance(hardware, dict) and _is_path(hardware.get("profile")):
        data["hardware"] = {**hardware, "profile": str(base / hardware["profile"])}
    if isinstance(model, dict) and _is_path(model.get("preset")):
        data["model"] = {**model, "preset": str(base / model["preset"])}
    return data


def apply_override(data: Any, item: str) -> dict:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a scenario mapping."""
    if "=" not in item:
        raise ScenarioError(f"--set {item}: expected key.path=value, e.g. parallel.tp=4")
    key, _, text = item.partition("=")
    try:
        value = load_yaml_text(text)
    except YamlLimitError as exc:
        raise ScenarioError(f"--set {key}: {exc}") from None
    except (yaml.YAMLError, ValueError, RecursionError):
        value = text
    if not isinstance(data, dict):
        raise ScenarioError("--set: the scenario is not a mapping")
    result = dict(data)
    node = result
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
        elif isinstance(child, str) and part == "hardware":
            child = {"profile": child}
        elif not isinstance(child, dict):
            raise ScenarioError(f"--set {key}: '{part}' is not a section")
        node[part] = dict(child)
        node = node[part]
    node[parts[-1]] = value
    return result


def resolve_hardware(scenario: Scenario, source: str = "scenario") -> HardwareProfile:
    """The scenario's hardware profile with its overrides applied."""
    overrides = dict(scenario.hardware.model_extra or {})
    try:
        return load_profile(scenario.hardware.profile, overrides)
    except ProfileInvalid as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    except ProfileError as exc:
        raise ScenarioError(f"{source}: hardware.profile: {exc}") from None


def gpus_per_node(scenario: Scenario, hw: HardwareProfile) -> int:
    return scenario.cluster.gpus_per_node or min(hw.gpus_per_node, scenario.num_gpus)


def with_layout(scenario: Scenario, parallel: ParallelSpec) -> Scenario:
    """The scenario on another parallel layout, checked by the same rules as a loaded scenario.

    The one way to move a scenario to other degrees (sweeps do it for thousands of candidates, so it
    copies the validated scenario instead of parsing it again). The cluster gets `parallel.num_gpus`
    GPUs. The scenario's own degrees return the scenario itself, with its layer_split; other degrees
    take `parallel`'s split (the even split when it has none). Raises ScenarioError naming the rule a
    layout breaks.
    """
    if parallel.degrees() == scenario.parallel.degrees():
        return scenario
    gpn = scenario.cluster.gpus_per_node
    try:
        cluster = ClusterSpec(num_gpus=parallel.num_gpus, gpus_per_node=gpn)
    except ValueError:
        raise ScenarioError(
            f"cluster.num_gpus = {parallel.num_gpus} is not a whole number of nodes of gpus_per_node = {gpn}"
        ) from None
    candidate = scenario.model_copy(update={"parallel": parallel, "cluster": cluster})
    try:
        check_layout(candidate)
    except LayoutError as exc:
        raise ScenarioError(f"{exc.path}: {exc}") from None
    return candidate
