"""Scenario loading and validation: every bad input gets one line naming the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SEED_PATH, TINY_MOE, make_scenario, seed_dict

from simulator.config import ScenarioError, apply_override, load_scenario, parse_scenario
from simulator.config.hardware import available_profiles, load_profile


@pytest.mark.parametrize(
    "path", sorted(p for p in (ROOT / "scenarios").rglob("*.yaml") if p.parent.name != "models"), ids=lambda p: p.name
)
def test_every_bundled_scenario_loads(path: Path):  # scenarios/models/ holds model presets (tests/test_presets.py)
    assert load_scenario(path).num_gpus >= 1


@pytest.mark.parametrize("name", available_profiles())
def test_every_bundled_profile_loads(name: str):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.memory_bytes > 1e9


def test_seed_matches_origin_document(seed):
    m, p, w = seed.model, seed.parallel, seed.workload
    assert (m.num_layers, m.hidden_size, m.num_heads, m.head_size, m.num_experts, m.expert_ffn_size) == (
        16,
        512,
        16,
        32,
        16,
        1024,
    )
    assert (p.tp, p.ep, p.pp, p.dp, seed.num_gpus) == (2, 2, 2, 1, 4)
    assert (w.batch_size, w.input_len_tokens, w.output_len_tokens) == (128, 10240, 128)
    assert seed.stage_layers() == [list(range(8)), list(range(8, 16))]


def _error(data: dict) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data, "s.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def _with(path: str, value) -> dict:
    return apply_override(
        seed_dict(), f"{path}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
    )


def test_unknown_key_suggests_nearest():
    assert "parallel.tpp: unknown key; did you mean 'tp'?" in _error(_with("parallel.tpp", 2))


def test_unknown_top_level_section_suggests_nearest():
    data = seed_dict()
    data["workloads"] = data.pop("workload")
    assert "did you mean 'workload'" in _error(data)


def test_wrong_type_names_field():
    assert "model.num_layers" in _error(_with("model.num_layers", "many"))


@pytest.mark.parametrize(
    "field", ["model.hidden_size", "workload.batch_size", "workload.input_len_tokens", "parallel.tp"]
)
def test_non_positive_sizes_rejected(field):
    assert f"{field} = 0: input should be greater than 0" in _error(_with(field, 0))


def test_tp_must_divide_heads():
    msg = _error(_with("parallel.tp", 3))
    assert "parallel.tp: tp = 3 must divide model.num_heads = 16 (try [1, 2, 4, 8, 16])" in msg


def test_ep_must_divide_experts():
    assert "parallel.ep: ep = 3 must divide model.num_experts = 16" in _error(_with("parallel.ep", 3))


def test_ep_must_fold_onto_stage_gpus():
    data = apply_override(seed_dict(), "parallel.ep=4")
    assert "ep * etp = 4 must divide dp * tp = 2" in _error(data)


def test_pp_greater_than_layers():
    data = apply_override(apply_override(seed_dict(), "parallel.pp=17"), "cluster.num_gpus=34")
    data["cluster"]["gpus_per_node"] = 34
    assert "parallel.pp: pp = 17 exceeds model.num_layers = 16" in _error(data)


def test_gpu_count_must_match_layout():
    msg = _error(_with("cluster.num_gpus", 8))
    assert "cluster.num_gpus: num_gpus = 8 must equal pp * dp * tp = 2 * 1 * 2 = 4" in msg


def test_missing_profile_lists_available():
    msg = _error(_with("hardware", "h999"))
    assert "hardware profile 'h999' not found; available: a100-sxm-80gb" in msg


def test_missing_required_field():
    data = seed_dict()
    del data["model"]["hidden_size"]
    assert "model.hidden_size: required field is missing" in _error(data)


def test_yaml_syntax_error_has_line_number(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  num_layers: [1, 2\n  hidden_size: 3\n")
    with pytest.raises(ScenarioError, match=r"YAML syntax error at line \d+, column \d+"):
        load_scenario(bad)


def test_batch_must_split_over_dp_and_microbatches():
    assert "workload.batch_size: batch_size = 128 must be a multiple of dp * microbatches = 3" in _error(
        _with("parallel.microbatches", 3)
    )


def test_absurd_workload_is_an_error_not_a_hang():
    assert "exceeds the supported" in _error(_with("workload.input_len_tokens", 10**12))


def test_hardware_override_of_single_field(seed):
    from simulator.config import resolve_hardware

    data = apply_override(seed_dict(), "hardware.memory_bytes=8.0e10")
    scenario = parse_scenario(data)
    assert resolve_hardware(scenario).memory_bytes == 8.0e10
    assert resolve_hardware(seed).memory_bytes == 64.0e9


def test_hardware_override_unknown_field_suggests():
    assert "hbm_bytes_per_s" in _error(_with("hardware.hbm_bytes_per_sec", 1e12))


def test_set_override_is_validated(tmp_path):
    with pytest.raises(ScenarioError, match="parallel.tp"):
        load_scenario(SEED_PATH, ["parallel.tp=5"])
    assert load_scenario(SEED_PATH, ["workload.batch_size=64"]).workload.batch_size == 64


def test_empty_file_and_directory(tmp_path):
    empty = tmp_path / "e.yaml"
    empty.write_text("")
    with pytest.raises(ScenarioError, match="empty file"):
        load_scenario(empty)
    with pytest.raises(ScenarioError, match="is a directory"):
        load_scenario(tmp_path)


def test_default_kv_heads_and_head_dim():
    s = make_scenario(TINY_MOE, model={"num_kv_heads": None, "head_dim": None})
    assert s.model.kv_heads == 4 and s.model.head_size == 16
