"""Model presets (scenarios/models/) against published parameter counts; Hugging Face config import."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT, TINY_MOE, make_scenario

from simulator.config import ModelSpec, ScenarioError, available_presets, load_model_preset
from simulator.config.import_hf import import_file
from simulator.memory import parameter_counts

FIXTURES = ROOT / "tests" / "fixtures" / "hf"

#: Published (total, active) parameters and the figure's rounding step. Tolerance: 1 %, or half the
#: rounding step of the published figure when that is coarser (OLMoE's "1.3B" cannot be checked to 1 %).
#: Llama 3.1 405B: published as "405B" (its model card) and "406B" (the Hub's safetensors count), checked to 1e9.
#: DeepSeek counts activated parameters without the input embedding (a gather, no FLOPs): moesim's
#: count with it is 37.55B, without it 36.63B; "37B" fits the latter. Qwen3-30B-A3B: "30.5B in total" (its model
#: card) and "3B" activated (the technical report's Table 2, the name's A3B); moesim counts 3.35B with the
#: embedding and LM head, 1.6 % above the card's "3.3B activated". gpt-oss (OpenAI's model card, 2025-08-05): 116.83B
#: total / 5.13B active (120b) and 20.91B / 3.61B (20b); the active figures leave out the input embedding as
#: DeepSeek's do (moesim: 5.131B and 3.607B without it); moesim's totals lack the attention, router and expert
#: biases and the attention sinks (0.04B and 0.01B).
#: Names whose published active count leaves out the input embedding (a gather, no FLOPs).
ACTIVE_WITHOUT_EMBEDDING = ("deepseek-v3", "gpt-oss-120b", "gpt-oss-20b")
PUBLISHED = {
    "mixtral-8x7b": ((46.7e9, 0.1e9), (12.9e9, 0.1e9)),
    "mixtral-8x22b": ((141e9, 1e9), (39e9, 1e9)),
    "deepseek-v3": ((671e9, 1e9), (37e9, 1e9)),
    "qwen3-235b-a22b": ((235e9, 1e9), (22e9, 1e9)),
    "qwen3-30b-a3b": ((30.5e9, 0.1e9), (3e9, 1e9)),
    "olmoe-1b-7b": ((6.9e9, 0.1e9), (1.3e9, 0.1e9)),
    "llama-3-70b": ((70.6e9, 0.1e9), (70.6e9, 0.1e9)),
    "llama-3-8b": ((8.03e9, 0.01e9), (8.03e9, 0.01e9)),
    "llama-3.1-405b": ((405.5e9, 1e9), (405.5e9, 1e9)),
    "gpt-oss-120b": ((116.83e9, 0.01e9), (5.13e9, 0.01e9)),
    "gpt-oss-20b": ((20.91e9, 0.01e9), (3.61e9, 0.01e9)),
}


def _close(actual: float, published: tuple[float, float]) -> bool:
    value, step = published
    return abs(actual - value) <= max(0.01 * value, step / 2)


def test_every_required_preset_is_shipped():
    assert set(PUBLISHED) <= set(available_presets())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts_match_published(name):
    model = ModelSpec.model_validate(load_model_preset(name))
    counts = parameter_counts(SimpleNamespace(model=model))
    total, active = PUBLISHED[name]
    assert _close(counts["total"], total), counts["total"]
    act = counts["active"] - (model.vocab_size * model.hidden_size if name in ACTIVE_WITHOUT_EMBEDDING else 0)
    assert _close(act, active), act


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios" / "models").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_preset_cites_its_sources(path: Path):
    """Every number carries a comment naming where it comes from."""
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and ":" in line and line.split(":")[0] != "name":
            assert "#" in line, line


def test_scenario_references_preset_with_overrides():
    data = copy.deepcopy(TINY_MOE)
    data["model"] = {"preset": "mixtral-8x7b", "num_layers": 4}
    s = make_scenario(data)
    assert (s.model.name, s.model.num_layers, s.model.expert_ffn_size) == ("mixtral-8x7b", 4, 14336)


def test_unknown_preset_is_one_line_with_suggestion():
    data = copy.deepcopy(TINY_MOE)
    data["model"] = {"preset": "mixtral-8x7"}
    with pytest.raises(ScenarioError, match="model preset 'mixtral-8x7' not found; did you mean 'mixtral-8x7b'"):
        make_scenario(data)


# ---------------------------------------------------------------------------------------------
# import-hf


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_every_fixture_imports_to_a_valid_spec(path):
    text, model, _, _ = import_file(path)
    assert ModelSpec.model_validate(yaml.safe_load(text)) == model


@pytest.mark.parametrize("name", ["mixtral-8x7b", "deepseek-v3", "qwen3-235b-a22b", "olmoe-1b-7b", "llama-3-8b"])
def test_import_matches_preset(name):
    _, model, _, _ = import_file(FIXTURES / f"{name}.json")
    preset = ModelSpec.model_validate(load_model_preset(name))
    assert parameter_counts(SimpleNamespace(model=model)) == parameter_counts(SimpleNamespace(model=preset))
    assert model.name == name


def test_import_deepseek_maps_mla_shared_dense_and_fp8():
    _, m, notes, unknown = import_file(FIXTURES / "deepseek-v3.json")
    assert (m.kv_lora_rank, m.q_lora_rank, m.qk_rope_head_dim, m.v_head_dim, m.head_size) == (512, 1536, 64, 128, 128)
    assert (m.num_shared_experts, m.first_k_dense_layers, m.ffn_size, m.weight_dtype) == (1, 3, 18432, "fp8")
    assert unknown == [] and any("multi-token-prediction" in n for n in notes)


def test_import_qwen2_shared_expert_and_gpt_oss_notes():
    _, q, notes, _ = import_file(FIXTURES / "qwen2-57b-a14b.json")
    assert (q.num_shared_experts, q.shared_expert_ffn_size, q.expert_ffn_size) == (1, 20480, 2560)
    _, g, notes, _ = import_file(FIXTURES / "gpt-oss-120b.json")
    assert (g.num_experts, g.top_k, g.head_dim, g.num_kv_heads, g.dtype) == (128, 4, 64, 8, "bf16")
    assert g.formats.expert_gemm.storage == "mxfp4" and g.formats.dense_gemm.storage == "bf16"
    assert g.weight_memory_approximation is None and (g.sliding_window, g.attention_pattern) == (
        128,
        ["sliding", "full"],
    )
    assert not any("sliding_window" in n for n in notes)  # simulated now, not an approximation


def test_unknown_field_is_reported_not_dropped(tmp_path):
    text, _, _, unknown = import_file(FIXTURES / "llama-3-8b.json")
    assert unknown == ["made_up_field"]
    assert "NOT UNDERSTOOD (not simulated): made_up_field" in text


def test_cli_import_writes_a_loadable_preset(tmp_path, capsys):
    from simulator.cli import main

    out = tmp_path / "models" / "mixtral.yaml"
    assert main(["import-hf", str(FIXTURES / "mixtral-8x7b.json"), "--out", str(out)]) == 0
    data = copy.deepcopy(TINY_MOE)
    data["model"] = {"preset": str(out), "num_layers": 2}
    assert make_scenario(data).model.num_experts == 8
    assert main(["import-hf", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


NEW_SCENARIOS = [
    "mixtral_8x7b_2xh100_tp2",
    "mixtral_8x7b_8xh200_tp8",
    "mixtral_8x7b_8xh200_ep8",
    "deepseek_v3_4x8xh100_ep32",
    "llama_3_70b_4xh100_tp4",
]


@pytest.mark.parametrize("name", NEW_SCENARIOS)
def test_shipped_real_model_scenario_runs(name):
    """The layout of each shipped scenario simulates (4 layers and a short workload keep it quick)."""
    from simulator.config import load_scenario
    from simulator.pipeline import run_scenario

    s = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
    small = load_scenario(
        ROOT / "scenarios" / f"{name}.yaml",
        [
            "model.num_layers=4",
            f"workload.batch_size={s.parallel.dp}",
            "workload.input_len_tokens=64",
            "workload.output_len_tokens=2",
        ],
    )
    run = run_scenario(small)
    assert all(c.ok for c in run.checks) and run.metrics.total_s > 0
