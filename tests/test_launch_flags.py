"""Launch configs against the engines' own flags (report.launch): every flag, environment variable, JSON field and
YAML key the writers emit over representative deployments (aggregated TP / EP / DP / PP, data-parallel attention,
the three scheduler policies, fp8, disaggregated pairs) is listed in tests/fixtures/launch/engine_flags.yaml with
the engine source it was checked in, its value is among the engine's choices where the flag takes a fixed set, and
every listed entry is emitted by one of the deployments (the list holds no flag the writers no longer write)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from simulator.config import load_scenario
from simulator.report.launch import launch_files

ROOT = Path(__file__).resolve().parent.parent
EVIDENCE = yaml.safe_load((ROOT / "tests/fixtures/launch/engine_flags.yaml").read_text())

#: (scenario, overrides): aggregated layouts, policies and precisions, then disaggregated pairs.
DEPLOYMENTS: dict[str, tuple[str, list[str]]] = {
    "static_pp2_tp2_ep2": ("scenarios/seed_moe_4gpu.yaml", []),
    "chunked_pp2_tp2_ep2": ("scenarios/seed_moe_4gpu_serving.yaml", []),
    "continuous_pp2_tp2_ep2": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        ["serving.scheduler.policy=continuous", "serving.scheduler.max_num_batched_tokens=16384"],
    ),
    "chunk_below_budget": ("scenarios/seed_moe_4gpu_serving.yaml", ["serving.scheduler.chunk_size_tokens=2048"]),
    "shared_prefix_without_prefix_caching": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        ["serving.workload.shared_prefix={tokens: 256}", "serving.scheduler.prefix_caching=false"],
    ),
    "trtllm_kv_rule_reserve": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        ["serving.scheduler.kv_cache.free_memory_fraction=0.9", "serving.scheduler.admission=reserve"],
    ),
    "tp8_expert_tp": ("scenarios/mixtral_8x7b_8xh200_tp8.yaml", ["hardware=h100-sxm-80gb"]),
    "tp8_ep8": ("scenarios/mixtral_8x7b_8xh200_ep8.yaml", ["hardware=h100-sxm-80gb"]),
    "dp8_ep8_fp8_dp_attention": (
        "scenarios/mixtral_8x7b_8xh200_ep8.yaml",
        [
            "hardware=h100-sxm-80gb",
            "parallel.tp=1",
            "parallel.dp=8",
            "model.weight_dtype=fp8",
            "model.kv_cache_dtype=fp8",
        ],
    ),
    "dp4_ep4_redundant_experts": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        ["parallel.pp=1", "parallel.tp=1", "parallel.dp=4", "parallel.ep=4", "parallel.redundant_experts=4"],
    ),
    "dp2_tp2_ep4_dp_attention_chunked": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        ["parallel.pp=1", "parallel.tp=2", "parallel.dp=2", "parallel.ep=4"],
    ),
    "dp2_tp2_ep4_dp_attention_estimate_conservative": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        [
            "parallel.pp=1",
            "parallel.tp=2",
            "parallel.dp=2",
            "parallel.ep=4",
            "serving.scheduler.admission=estimate",
            "serving.scheduler.schedule_conservativeness=2",
        ],
    ),
    "dp2_replicas_tp2_ep2": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        ["parallel.pp=1", "parallel.tp=2", "parallel.dp=2", "parallel.ep=2"],
    ),
    "tp4_nccl_allreduce": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        ["parallel.pp=1", "parallel.tp=4", "parallel.ep=4", "runtime.allreduce=nccl"],
    ),
    "own_cuda_graphs_exact_sizes": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        [
            "serving.scheduler.split_prompts=true",
            "serving.engine=trtllm-1.0",
            "serving.cuda_graph={sizes: [1, 2, 4, 8], padding: false}",
        ],
    ),
    "own_cuda_graphs_padded": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        ["serving.engine=sglang-0.5", "serving.cuda_graph={sizes: [1, 8, 16], padding: true}"],
    ),
    "disagg_1p1d_tp4": ("scenarios/mixtral_8x7b_8xh100_disagg.yaml", []),
    "disagg_2p1d_tp1_to_tp2": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        [
            "serving.disaggregation.prefill.instances=2",
            "serving.disaggregation.decode.parallel.tp=2",
            "serving.disaggregation.decode.parallel.ep=2",
        ],
    ),
    "disagg_prefill_pp2": (
        "scenarios/seed_moe_4gpu_disagg.yaml",
        [
            "serving.disaggregation.prefill.parallel.pp=2",
            "serving.disaggregation.prefill.parallel.tp=1",
            "serving.disaggregation.prefill.parallel.ep=1",
        ],
    ),
}

#: The commands the writers emit, per engine: as written in the script -> as named in engine_flags.yaml.
COMMANDS = {
    "vllm": {"vllm serve": "vllm serve", 'python "$VLLM_PROXY"': "python $VLLM_PROXY"},
    "sglang": {
        "python -m sglang.launch_server": "python -m sglang.launch_server",
        "python -m sglang_router.launch_router": "python -m sglang_router.launch_router",
    },
    "trtllm": {"trtllm-serve disaggregated": "trtllm-serve disaggregated", "trtllm-serve": "trtllm-serve"},
}
SCRIPTS = {"vllm": "vllm.sh", "sglang": "sglang.sh", "trtllm": "trtllm.sh"}
#: Shell lines of the scripts that launch nothing.
PLAIN_SHELL = re.compile(
    r"^(#!/usr/bin/env bash|set -euo pipefail|(MODEL|VLLM_PROXY)=\$\{\w+:-.*\}|for r in \$\(seq 0 \d+\); do|"
    r"first=\$\(\(r \* \d+\)\)|done|wait|echo \"moesim: .*\" >&2|exit 1)$"
)
FLAG = re.compile(r"^--?[A-Za-z]")


class Use(NamedTuple):
    """One emitted item: a flag of a command, an environment variable, a JSON field or a YAML key, with its values."""

    engine: str
    section: str  # a command, "json <flag>" or "yaml <file kind>"
    kind: str  # flags, env, json, yaml
    name: str
    values: tuple[Any, ...]


def logical_lines(script: str) -> Iterator[str]:
    """The script's lines with continuations joined and comments dropped."""
    pending = ""
    for raw in script.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield (pending + line).strip()
        pending = ""
    assert not pending, "a continued line runs off the end of the script"


def script_uses(engine: str, script: str) -> Iterator[Use]:
    commands = COMMANDS[engine]
    for line in logical_lines(script):
        found = [(line.find(text), -len(text), text) for text in commands if text in line]
        if not found:
            assert PLAIN_SHELL.match(line), f"{engine}: a line that is neither a known command nor plain shell: {line}"
            continue
        start, _, text = min(found)  # the first command on the line, the longest name where two start there
        command = commands[text]
        for env in re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", line[:start]):
            yield Use(engine, command, "env", env, ())
        tokens = shlex.split(line[start + len(text) :].removesuffix("&"))
        flag: str | None = None
        values: list[str] = []
        for token in [*tokens, "--END"]:
            if FLAG.match(token):
                if flag is not None:
                    yield Use(engine, command, "flags", flag, tuple(values))
                    if flag in ("--kv-transfer-config", "--compilation-config"):
                        for key, value in json.loads(values[0]).items():
                            yield Use(engine, f"json {flag}", "json", key, (value,))
                flag, values = token, []
            elif flag is not None:
                values.append(token)


def flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def file_uses(files: dict[str, str]) -> Iterator[Use]:
    for engine, script in SCRIPTS.items():
        yield from script_uses(engine, files[script])
    for name, text in files.items():
        if name.endswith(".yaml"):
            kind = "extra_llm_api_options" if name.endswith("extra_llm_api_options.yaml") else "disagg_config"
            assert name.startswith("trtllm_"), name
            for key, value in flatten(yaml.safe_load(text)):
                yield Use("trtllm", f"yaml {kind}", "yaml", key, (value,))


def evidence_entry(use: Use) -> dict[str, Any] | None:
    engine = EVIDENCE[use.engine]
    if use.kind == "yaml":
        return engine["yaml"][use.section.removeprefix("yaml ")].get(use.name)
    if use.kind == "json":
        return engine["commands"]["vllm serve"]["json"][use.section.removeprefix("json ")].get(use.name)
    return engine["commands"].get(use.section, {}).get(use.kind, {}).get(use.name)


def all_uses() -> list[tuple[str, Use]]:
    uses = []
    for case, (path, overrides) in DEPLOYMENTS.items():
        uses += [(case, use) for use in file_uses(launch_files(load_scenario(ROOT / path, overrides)))]
    return uses


@pytest.fixture(scope="module")
def uses() -> list[tuple[str, Use]]:
    return all_uses()


def test_every_emitted_flag_and_key_is_in_the_engine_evidence(uses):
    missing = {f"{use.engine} {use.section}: {use.name} ({case})" for case, use in uses if evidence_entry(use) is None}
    assert not missing, "emitted but not checked against the engine's source:\n" + "\n".join(sorted(missing))


def test_every_value_is_among_the_engine_choices(uses):
    wrong = []
    for case, use in uses:
        entry = evidence_entry(use)
        if entry is None or "choices" not in entry:
            continue
        wrong += [f"{use.engine} {use.name} = {v!r} ({case})" for v in use.values if v not in entry["choices"]]
    assert not wrong, "values the engine does not accept:\n" + "\n".join(wrong)


def test_every_evidence_entry_is_emitted_by_a_representative_deployment(uses):
    emitted = {(u.engine, u.section, u.kind, u.name) for _, u in uses}
    listed = set()
    for engine, spec in EVIDENCE.items():
        for command, parts in spec["commands"].items():
            for kind in ("flags", "env"):
                listed |= {(engine, command, kind, name) for name in parts.get(kind, {})}
            for flag, fields in parts.get("json", {}).items():
                listed |= {(engine, f"json {flag}", "json", name) for name in fields}
        for kind, keys in spec.get("yaml", {}).items():
            listed |= {(engine, f"yaml {kind}", "yaml", name) for name in keys}
    assert sorted(listed - emitted) == []


def test_every_evidence_entry_names_a_source_that_was_read():
    for engine, spec in EVIDENCE.items():
        sources = spec["sources"]
        for source in sources.values():
            assert source["repo"] and source["path"] and ("commit" in source or "index_id" in source), source
        entries = [
            e for parts in spec["commands"].values() for kind in ("flags", "env") for e in parts.get(kind, {}).values()
        ]
        entries += [
            e for parts in spec["commands"].values() for f in parts.get("json", {}).values() for e in f.values()
        ]
        entries += [e for keys in spec.get("yaml", {}).values() for e in keys.values()]
        for entry in entries:
            assert entry["source"] in sources or entry["source"] == "none", (engine, entry)


def test_a_lowercase_transceiver_backend_would_be_caught():
    """The check fails on what the writer used to emit (`backend: default`, refused by TensorRT-LLM 1.0)."""
    use = Use("trtllm", "yaml extra_llm_api_options", "yaml", "cache_transceiver_config.backend", ("default",))
    entry = evidence_entry(use)
    assert entry is not None and "default" not in entry["choices"] and "DEFAULT" in entry["choices"]


def test_script_parsing_on_a_known_line():
    script = (
        "set -euo pipefail\nCUDA_VISIBLE_DEVICES=0,1 VLLM_NIXL_SIDE_CHANNEL_PORT=5600 \\\n  vllm serve \\\n"
        '    "$MODEL" \\\n    --port 8100 \\\n    --enable-chunked-prefill \\\n'
        '    --kv-transfer-config \'{"kv_connector":"NixlConnector","kv_role":"kv_both"}\' &\n'
    )
    assert list(script_uses("vllm", script)) == [
        Use("vllm", "vllm serve", "env", "CUDA_VISIBLE_DEVICES", ()),
        Use("vllm", "vllm serve", "env", "VLLM_NIXL_SIDE_CHANNEL_PORT", ()),
        Use("vllm", "vllm serve", "flags", "--port", ("8100",)),
        Use("vllm", "vllm serve", "flags", "--enable-chunked-prefill", ()),
        Use(
            "vllm",
            "vllm serve",
            "flags",
            "--kv-transfer-config",
            ('{"kv_connector":"NixlConnector","kv_role":"kv_both"}',),
        ),
        Use("vllm", "json --kv-transfer-config", "json", "kv_connector", ("NixlConnector",)),
        Use("vllm", "json --kv-transfer-config", "json", "kv_role", ("kv_both",)),
    ]


def test_the_sglang_chunk_is_multiplied_by_dp_under_dp_attention():
    """SGLang divides --chunked-prefill-size by dp-size with --enable-dp-attention (server_args
    _handle_data_parallelism): a per-rank chunk of 8192 over dp 2 is written as 16384."""
    path, overrides = DEPLOYMENTS["dp2_tp2_ep4_dp_attention_chunked"]
    files = launch_files(load_scenario(ROOT / path, overrides))
    assert "--chunked-prefill-size 16384" in files["sglang.sh"]
    assert "--max-running-requests 256" in files["sglang.sh"]  # 128 per rank x dp 2 (tp_worker divides it)
    assert "--enable-dp-attention" in files["sglang.sh"]


def test_vllm_refuses_a_token_budget_below_the_sequence_limit():
    s = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu_serving.yaml",
        [
            "serving.scheduler.policy=continuous",
            "serving.scheduler.max_num_batched_tokens=16384",
            "serving.scheduler.max_num_seqs=20000",
        ],
    )
    files = launch_files(s)
    assert "# NOT EXPRESSIBLE: max_num_batched_tokens = 16384 < max_num_seqs = 20000" in files["vllm.sh"]
    assert "--max-running-requests 20000" in files["sglang.sh"]


def test_vllm_continuous_caps_the_context_at_the_token_budget():
    path, overrides = DEPLOYMENTS["continuous_pp2_tp2_ep2"]
    vllm = launch_files(load_scenario(ROOT / path, overrides))["vllm.sh"]
    assert "--no-enable-chunked-prefill" in vllm and "--max-model-len 16384" in vllm


def test_vllm_disaggregation_needs_decode_tp_a_multiple_of_prefill_tp():
    s = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu_disagg.yaml",
        ["serving.disaggregation.decode.parallel.tp=1", "serving.disaggregation.decode.parallel.ep=1"],
    )
    files = launch_files(s)
    assert "# NOT EXPRESSIBLE: decode tp = 1 is not a multiple of prefill tp = 2" in files["vllm.sh"]
    assert "NOT EXPRESSIBLE" not in files["sglang.sh"] and "--disaggregation-decode-tp 1" in files["sglang.sh"]


def test_sglang_decode_instances_are_told_the_prefill_pp():
    path, overrides = DEPLOYMENTS["disagg_prefill_pp2"]
    sglang = launch_files(load_scenario(ROOT / path, overrides))["sglang.sh"]
    decode = sglang[sglang.index("--disaggregation-mode decode") :]
    assert "--disaggregation-prefill-pp 2" in decode
    assert "--disaggregation-decode-tp 2" in sglang[: sglang.index("--disaggregation-mode decode")]
