"""Config stage, schema: JSON Schema of the YAML files users write (scenarios, hardware profiles, model presets).

Generated from the pydantic models, then adjusted where the loader accepts a form the model does not
describe directly, so that the schema describes the YAML as written:

- `hardware:` a profile name, or `{profile: NAME, field: override, ...}` with any profile field (nested
  sections merged field by field, so no override field is required);
- `model:` a full model spec, or `{preset: NAME or path.yaml, field: override, ...}`;
- `workload.routing:` `uniform`, or one of `{zipf: s}`, `{loads: [...]}`, `{sampled: seed}`;
- `model.precision:` a preset name, or a mapping whose class entries may each be one format word
  (`dense_gemm: fp8` sets storage and compute).

Editors read the shipped files (`simulator/schemas/*.schema.json`) through the first line of a YAML file,
`# yaml-language-server: $schema=<path>`; `moesim schema scenario|profile|model` prints them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

from simulator.config.hardware import HardwareProfile
from simulator.config.model import ModelSpec
from simulator.config.precision import PRESETS, Format
from simulator.config.scenario import Scenario

#: Where the package ships the exported schemas.
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: Kinds of file that have a schema, and the file each is shipped as.
SCHEMA_FILES = {
    "scenario": "scenario.schema.json",
    "profile": "profile.schema.json",
    "model": "model.schema.json",
}
#: pydantic names two classes called WorkloadSpec by their modules; the schema names them by their section.
_RENAMES = {
    "simulator__config__scenario__WorkloadSpec": "WorkloadSpec",
    "simulator__config__serving__WorkloadSpec": "ServingWorkloadSpec",
}


_FORMAT_WORD = {"type": "string", "enum": list(get_args(Format)), "description": "one format for the whole class"}
#: Sections the loader also accepts as one word, and the word's schema.
_WORD_FORMS = {
    "PrecisionSpec": {"type": "string", "enum": list(PRESETS), "description": "a preset name"},
    "GemmFormats": _FORMAT_WORD,
    "AttentionFormats": _FORMAT_WORD,
    "KvCacheFormats": _FORMAT_WORD,
    "CommunicationFormats": _FORMAT_WORD,
}


def _with_word_forms(node: Any) -> Any:
    """`node` with every reference to a section of _WORD_FORMS also accepting its one-word form."""
    if isinstance(node, list):
        return [_with_word_forms(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _with_word_forms(value) for key, value in node.items()}
    name = out.get("$ref", "").rsplit("/", 1)[-1]
    if name in _WORD_FORMS:
        ref = out.pop("$ref")
        out["anyOf"] = [{"$ref": ref}, _WORD_FORMS[name]]
    return out


def _renamed(schema: dict) -> dict:
    text = json.dumps(schema)
    for old, new in _RENAMES.items():
        text = text.replace(old, new)
    return json.loads(text)


def _partial(schema: dict, defs: dict) -> dict:
    """`schema` with its references inlined and no field required at any depth (an override of some fields)."""
    if "$ref" in schema:
        return _partial(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    out = {k: v for k, v in schema.items() if k != "required"}
    if "properties" in out:
        out["properties"] = {k: _partial(v, defs) for k, v in out["properties"].items()}
    for key in ("anyOf", "oneOf", "allOf"):
        if key in out:
            out[key] = [_partial(s, defs) for s in out[key]]
    for key in ("additionalProperties", "items"):
        if isinstance(out.get(key), dict):
            out[key] = _partial(out[key], defs)
    return out


def _model_form(defs: dict) -> dict:
    """A model given inline, or as a preset with overrides (`preset` required, every other field optional)."""
    spec = defs["ModelSpec"]
    preset = {
        "type": "object",
        "description": "a model preset (scenarios/models/NAME.yaml, or a path) with fields overridden",
        "properties": {
            "preset": {
                "type": "string",
                "description": "a preset name (scenarios/models/NAME.yaml) or the path of a model YAML file",
            },
            **spec["properties"],
        },
        "required": ["preset"],
        "additionalProperties": False,
    }
    return {
        "description": spec.get("description", ""),
        "if": {"type": "object", "required": ["preset"]},
        "then": preset,
        "else": {"$ref": "#/$defs/ModelSpec"},
    }


def model_schema() -> dict:
    """JSON Schema of a model spec file (a preset in scenarios/models/, or what `moesim import-hf` writes)."""
    schema = _with_word_forms(ModelSpec.model_json_schema())
    return {"$schema": DRAFT, "title": "moesim model spec", **schema}


def profile_schema() -> dict:
    """JSON Schema of a hardware profile file (hardware_profiles/*.yaml)."""
    schema = HardwareProfile.model_json_schema()
    return {"$schema": DRAFT, "title": "moesim hardware profile", **schema}


def scenario_schema() -> dict:
    """JSON Schema of a scenario file as users write it (see the module docstring for the forms added)."""
    schema = _with_word_forms(_renamed(Scenario.model_json_schema()))
    defs = schema["$defs"]
    profile = HardwareProfile.model_json_schema()
    profile_defs = profile.pop("$defs", {})
    overrides = {k: _partial(v, profile_defs) for k, v in profile["properties"].items()}
    ref = defs["HardwareRef"]
    ref["properties"] = {**ref["properties"], **overrides}
    ref["additionalProperties"] = False
    ref["description"] = "a profile with single fields overridden (nested sections merged field by field)"
    hardware = schema["properties"]["hardware"]
    schema["properties"]["hardware"] = {
        "description": hardware.get("description", ""),
        "anyOf": [
            {"type": "string", "description": "a profile name (`moesim profiles`) or the path of a profile YAML file"},
            {"$ref": "#/$defs/HardwareRef"},
        ],
    }
    model = schema["properties"]["model"]
    defs["ModelForm"] = _model_form(defs)
    schema["properties"]["model"] = {"description": model.get("description", ""), "$ref": "#/$defs/ModelForm"}
    routing = defs["WorkloadSpec"]["properties"]["routing"]
    defs["WorkloadSpec"]["properties"]["routing"] = {
        "description": routing.get("description", ""),
        "default": "uniform",
        "anyOf": [{"const": "uniform"}, {"type": "null"}, {"$ref": "#/$defs/RoutingSpec"}],
    }
    return {"$schema": DRAFT, "title": "moesim scenario", **schema}


SCHEMAS = {"scenario": scenario_schema, "profile": profile_schema, "model": model_schema}


def schema_text(kind: str) -> str:
    """The schema of `kind` (scenario, profile or model) as the shipped file holds it."""
    return json.dumps(SCHEMAS[kind](), indent=2, sort_keys=True) + "\n"


#: The comment YAML language servers read on a file's first line to find its schema.
SCHEMA_COMMENT = "# yaml-language-server: $schema="


def schema_comment(yaml_path: Path, kind: str) -> str:
    """The first line for a YAML file of `kind` written at `yaml_path`: the schema comment with the shipped
    schema's path relative to the file's directory."""
    import os

    target = SCHEMA_DIR / SCHEMA_FILES[kind]
    relative = os.path.relpath(target, Path(yaml_path).absolute().parent)
    return f"{SCHEMA_COMMENT}{Path(relative).as_posix()}\n"
