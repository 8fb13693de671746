"""Shared fixtures: the seed scenario, a tiny MoE scenario and hardware profiles."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from simulator.config import Scenario, parse_scenario
from simulator.config.hardware import HardwareProfile, load_profile

ROOT = Path(__file__).resolve().parent.parent
SEED_PATH = ROOT / "scenarios" / "seed_moe_4gpu.yaml"

TINY_MOE = {
    "name": "tiny_moe",
    "model": {
        "name": "tiny",
        "num_layers": 4,
        "hidden_size": 64,
        "num_heads": 4,
        "num_kv_heads": 4,
        "head_dim": 16,
        "num_experts": 4,
        "top_k": 2,
        "expert_ffn_size": 128,
        "activation": "gelu",
        "dtype": "fp16",
    },
    "hardware": "h100-sxm-80gb",
    "cluster": {"num_gpus": 4, "gpus_per_node": 4},
    "parallel": {"tp": 2, "ep": 2, "pp": 2, "dp": 1, "microbatches": 1},
    "workload": {"batch_size": 4, "input_len_tokens": 16, "output_len_tokens": 3},
    # the origin's MoE flow, as the seed it mirrors declares it (the default with framework fused is allreduce)
    "runtime": {"moe_dispatch": "all_to_all"},
    "targets": {"ttft_s": {"max": 1.0}, "output_tokens_per_ms_per_gpu": {"min": 1e6}},
}


# A small request stream for TINY_MOE (its `serving:` section): 40 requests of 8-64 prompt and 2-16 output tokens
TINY_SERVING = {
    "workload": {
        "arrivals": {"kind": "poisson", "rate_per_s": 4.0},
        "input_len": {"kind": "uniform", "min_tokens": 8, "max_tokens": 64},
        "output_len": {"kind": "uniform", "min_tokens": 2, "max_tokens": 16},
        "num_requests": 40,
        "seed": 3,
    },
    "scheduler": {"max_num_seqs": 8, "max_num_batched_tokens": 128, "kv_cache": {"capacity_blocks": 64}},
    "targets": {"ttft_p99_s": 10.0},
}

# A DeepSeek-style variant: MLA, shared experts, a leading dense layer, a vocabulary
DEEPSEEK_TINY = {
    **TINY_MOE["model"],
    "activation": "swiglu",
    "num_shared_experts": 2,
    "shared_expert_ffn_size": 32,
    "first_k_dense_layers": 1,
    "ffn_size": 96,
    "kv_lora_rank": 24,
    "q_lora_rank": 40,
    "qk_rope_head_dim": 8,
    "v_head_dim": 12,
    "vocab_size": 100,
}


def seed_dict() -> dict:
    return yaml.safe_load(SEED_PATH.read_text())


def make_scenario(base: dict, **sections) -> Scenario:
    """A validated scenario from `base` with sections updated (shallow per section)."""
    data = copy.deepcopy(base)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_scenario(data, "test")


@pytest.fixture
def tiny_moe() -> Scenario:
    return make_scenario(TINY_MOE)


@pytest.fixture(scope="session")
def seed() -> Scenario:
    return parse_scenario(seed_dict(), "seed")


@pytest.fixture
def h100() -> HardwareProfile:
    return load_profile("h100-sxm-80gb")


def run_engine_search(tmp_path: Path, engine: str) -> Path:
    """`moesim compare` of the tiny MoE serving scenario on 4 GPUs, one microbatch, one job, priced as `engine`
    runs it (--engine); asserts exit 0 and returns the output directory."""
    from simulator.cli import main

    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(TINY_MOE | {"serving": TINY_SERVING}))
    out = tmp_path / "out"
    argv = ["compare", str(scenario), "--gpus", "4", "--microbatches", "1", "--jobs", "1", "--engine", engine]
    assert main([*argv, "--out", str(out)]) == 0
    return out
