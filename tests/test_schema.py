"""Editor support: the JSON Schemas of scenario, profile and model files (config.schema), the shipped copies
(simulator/schemas/), the `# yaml-language-server` line of every shipped YAML file, and `moesim schema`."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT, TINY_MOE

from simulator.cli import main
from simulator.config import ScenarioError, parse_scenario
from simulator.config.schema import SCHEMA_COMMENT, SCHEMA_DIR, SCHEMA_FILES, SCHEMAS, schema_text


class Yaml12Loader(yaml.SafeLoader):
    """Reads numbers as YAML 1.2 (and so editors' language servers) does: `64.0e9` is a float, which
    PyYAML's YAML 1.1 rules read as a string (moesim's loader then converts it, as pydantic does)."""


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)

SHIPPED = {
    "scenario": sorted((ROOT / "scenarios").glob("*.yaml")),
    "profile": sorted((ROOT / "hardware_profiles").glob("*.yaml"))
    + sorted((ROOT / "hardware_profiles" / "datasheet").glob("*.yaml")),
    "model": sorted((ROOT / "scenarios" / "models").glob("*.yaml")),
}


def validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / SCHEMA_FILES[kind]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(kind: str, data) -> list[tuple[str, str]]:
    """(field path, message) of every schema error, deepest first."""
    found = []
    for error in validator(kind).iter_errors(data):
        best = jsonschema.exceptions.best_match([error])
        found.append((".".join(map(str, best.absolute_path)), best.message))
    return found


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_shipped_schema_equals_a_fresh_export(kind):
    assert (SCHEMA_DIR / SCHEMA_FILES[kind]).read_text() == schema_text(kind), (
        "regenerate with: python scripts/gen_docs.py"
    )


@pytest.mark.parametrize(
    "kind,path", [(k, p) for k, paths in SHIPPED.items() for p in paths], ids=lambda x: getattr(x, "name", x)
)
def test_every_shipped_file_validates_and_names_its_schema(kind, path):
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith(SCHEMA_COMMENT), f"{path} does not start with the schema comment"
    target = (path.parent / first[len(SCHEMA_COMMENT) :]).resolve()
    assert target == (SCHEMA_DIR / SCHEMA_FILES[kind]).resolve()
    assert problems(kind, yaml.load(text, Loader=Yaml12Loader)) == []


def test_the_yaml12_loader_reads_exponents_as_numbers():
    assert yaml.load("a: 64.0e9\nb: 1e3\nc: seed", Loader=Yaml12Loader) == {"a": 64.0e9, "b": 1000.0, "c": "seed"}


@pytest.mark.parametrize(
    "change,path,fragment",
    [
        (("parallel", "tpp", 2), "parallel", "'tpp' was unexpected"),
        (("model", "num_layer", 2), "model", "'num_layer' was unexpected"),
        (("workload", "batch_size", 0), "workload.batch_size", "less than or equal to the minimum of 0"),
        (("cluster", "num_gpus", "many"), "cluster.num_gpus", "is not of type 'integer'"),
        (("runtime", "mode", "graph"), "runtime.mode", "is not one of"),
        (("hardware", "hbm_bytes_per_sec", 1.0), "hardware", "'hbm_bytes_per_sec' was unexpected"),
    ],
)
def test_a_typo_or_bad_value_is_flagged_with_its_field_path(change, path, fragment):
    data = copy.deepcopy(TINY_MOE)
    data["hardware"] = {"profile": data["hardware"]} if isinstance(data["hardware"], str) else data["hardware"]
    section, key, value = change
    data.setdefault(section, {})[key] = value
    found = problems("scenario", data)
    assert found, "the schema accepted it"
    assert any(p == path and fragment in m for p, m in found), found
    with pytest.raises(ScenarioError):  # the loader refuses it as well
        parse_scenario(data)


def test_the_forms_the_loader_accepts_validate():
    """A profile name or a profile with overrides (nested sections partly), a preset with overrides,
    `routing: uniform` and `{zipf: s}`: what scenario files write, beyond the pydantic models' own shape."""
    data = copy.deepcopy(TINY_MOE)
    forms = [
        {"hardware": "h100-sxm-80gb"},
        {"hardware": {"profile": "h100-sxm-80gb", "memory_bytes": 64.0e9, "intra_node": {"bytes_per_s": 4.0e11}}},
        {"model": {"preset": "mixtral-8x7b", "num_layers": 2}},
        {"workload": {**data["workload"], "routing": "uniform"}},
        {"workload": {**data["workload"], "routing": {"zipf": 1.2}}},
        {"model": {**data["model"], "precision": "fp8-w8a8"}},
        {"model": {**data["model"], "precision": {"preset": "w4a16", "dense_gemm": "fp8", "kv_cache": "fp8"}}},
        {"model": {**data["model"], "precision": {"expert_gemm": {"storage": "int4", "compute": "fp16"}}}},
    ]
    for form in forms:
        variant = {**data, **form}
        assert problems("scenario", variant) == [], form
        if "preset" not in str(form):
            parse_scenario(variant)
    for precision in ("fp9-w9a9", {"dense_gemm": "fp9"}):
        bad_precision = {**data, "model": {**data["model"], "precision": precision}}
        assert problems("scenario", bad_precision), precision
        with pytest.raises(ScenarioError):
            parse_scenario(bad_precision)
    bad_preset = {**data, "model": {"preset": "mixtral-8x7b", "num_layerz": 2}}
    assert any("num_layerz" in m for _, m in problems("scenario", bad_preset))


def test_serving_section_typo_inside_a_tagged_union():
    scenario = yaml.load((ROOT / "scenarios" / "seed_moe_4gpu_serving.yaml").read_text(), Loader=Yaml12Loader)
    scenario["serving"]["workload"]["arrivals"]["rate_per_sec"] = 1.0
    found = problems("scenario", scenario)
    assert any(p.startswith("serving.workload.arrivals") and "rate_per_sec" in m for p, m in found), found


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_moesim_schema_prints_the_shipped_file(kind, capsys):
    assert main(["schema", kind]) == 0
    assert capsys.readouterr().out == (SCHEMA_DIR / SCHEMA_FILES[kind]).read_text()


def test_every_field_has_a_description():
    """The scenario reference (docs/reference/scenario.md) is generated from these descriptions."""
    missing = []

    def walk(node, where):
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                if name != "kind" and not prop.get("description"):
                    missing.append(f"{where}.{name}")
            for key, value in node.items():
                walk(value, f"{where}.{key}" if key != "properties" else where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    for kind in SCHEMAS:
        walk(json.loads(schema_text(kind)), kind)
    assert missing == []


def test_schema_files_are_package_data():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"schemas/*.json"' in pyproject
    assert Path(SCHEMA_DIR).parent.name == "simulator"


def test_import_hf_writes_a_preset_that_names_and_meets_the_model_schema(tmp_path):
    out = tmp_path / "models" / "mixtral.yaml"
    assert main(["import-hf", str(ROOT / "tests" / "fixtures" / "hf" / "mixtral-8x7b.json"), "--out", str(out)]) == 0
    text = out.read_text()
    first = text.splitlines()[0]
    assert first.startswith(SCHEMA_COMMENT)
    assert (out.parent / first[len(SCHEMA_COMMENT) :]).resolve() == (SCHEMA_DIR / "model.schema.json").resolve()
    assert problems("model", yaml.load(text, Loader=Yaml12Loader)) == []
