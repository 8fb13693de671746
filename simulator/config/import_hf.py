"""Config stage, import: turn a Hugging Face `config.json` into a moesim model spec (YAML), offline.

Families: Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3, OLMoE, GPT-OSS and Llama-style dense
models (anything with the Llama field names). Every key of the file is accounted for: mapped to a
model field, known to have no effect on the simulated cost (listed as ignored), understood but only
approximated (a note says how), or not understood (reported, never silently dropped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from simulator.config.errors import ScenarioError, one_line_error
from simulator.config.model import ModelSpec
from simulator.files import read_bounded

#: HF key -> ModelSpec field, for keys whose meaning is the same in every family.
COMMON = {
    "num_hidden_layers": "num_layers",
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "vocab_size": "vocab_size",
}

#: Keys that do not change FLOPs, bytes or communication (numerics, training, tokenizer, bookkeeping).
IGNORED = {
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "hidden_act",
    "rms_norm_eps",
    "layer_norm_eps",
    "rope_theta",
    "rope_scaling",
    "max_position_embeddings",
    "initializer_range",
    "attention_dropout",
    "hidden_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
    "output_router_logits",
    "router_aux_loss_coef",
    "router_z_loss_coef",
    "norm_topk_prob",
    "router_jitter_noise",
    "aux_loss_alpha",
    "seq_aux",
    "scoring_func",
    "topk_method",
    "routed_scaling_factor",
    "n_group",
    "topk_group",
    "attention_bias",
    "mlp_bias",
    "pretraining_tp",
    "auto_map",
    "ep_size",
    "tie_word_embeddings",
    "qkv_bias",
    "clip_qkv",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "layer_types",
    "_name_or_path",
    "num_experts_per_tok",
    "experts_per_token",
    "num_local_experts",
    "num_experts",
    "n_routed_experts",
    "n_shared_experts",
    "moe_intermediate_size",
    "intermediate_size",
    "shared_expert_intermediate_size",
    "first_k_dense_replace",
    "moe_layer_freq",
    "decoder_sparse_step",
    "mlp_only_layers",
    "kv_lora_rank",
    "q_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
    "quantization_config",
    "num_nextn_predict_layers",
    "swiglu_limit",
    "rope_interleave",
    "initial_context_length",
    "tie_word_embedding",
    "model_name",
    "qk_layernorm",
    "use_qk_norm",
    "rope_parameters",
    "partial_rotary_factor",
    "embedding_multiplier",
}

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8_e4m3fn": "fp8"}


def _family(cfg: dict) -> str:
    mt = str(cfg.get("model_type", "")).lower()
    for family in ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "olmoe", "gpt_oss"):
        if mt == family:
            return family
    if any(k in cfg for k in ("n_routed_experts", "num_local_experts", "num_experts")) and (
        cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts")
    ):
        return "moe"
    return "dense"


def convert(cfg: dict, name: str) -> tuple[dict, dict[str, str], list[str], list[str]]:
    """(model spec mapping, source of each field, notes on approximations, keys not understood)."""
    spec: dict[str, Any] = {"name": name}
    src: dict[str, str] = {}
    notes: list[str] = []

    def put(field: str, value: Any, key: str) -> None:
        spec[field] = value
        src[field] = f"{key} = {json.dumps(cfg[key]) if key in cfg else value}"

    for key, field in COMMON.items():
        if cfg.get(key) is not None:
            put(field, cfg[key], key)
    family = _family(cfg)
    act = str(cfg.get("hidden_act", cfg.get("activation", "silu"))).lower()
    # every supported family runs a gated MLP (gate * act(up)); silu -> SwiGLU, gelu -> GeGLU
    known = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_pytorch_tanh": "geglu", "relu": "relu"}
    spec["activation"] = known.get(act, "swiglu")
    src["activation"] = f"hidden_act = {json.dumps(act)[:40]} (gated MLP)"
    if act not in known and family != "gpt_oss":
        notes.append(
            f"hidden_act = {json.dumps(act)[:40]} is not one moesim knows: simulated as SwiGLU "
            "(the cost of any gated MLP)"
        )
    if family == "gpt_oss":
        src["activation"] = "GPT-OSS experts: clamped SwiGLU"
    dtype = cfg.get("torch_dtype", cfg.get("dtype"))
    if dtype is not None and not isinstance(dtype, str):
        raise ScenarioError(f'torch_dtype = {json.dumps(dtype)[:40]}: expected a string such as "bfloat16"')
    if dtype in _DTYPES:
        put("dtype", _DTYPES[dtype], "torch_dtype" if "torch_dtype" in cfg else "dtype")
    elif family == "gpt_oss":
        spec["dtype"] = "bf16"
        src["dtype"] = "GPT-OSS model card: bf16 outside the mxfp4 expert weights (no torch_dtype key)"
    q = cfg.get("quantization_config") or {}
    if not isinstance(q, dict):
        raise ScenarioError(f"quantization_config = {json.dumps(q)[:40]}: expected an object")
    method = str(q.get("quant_method", "")).lower()
    if method == "fp8" or "e4m3" in str(q.get("fmt", "")):
        spec["weight_dtype"] = "fp8"
        src["weight_dtype"] = f"quantization_config.quant_method = {json.dumps(method)}"
    elif method == "mxfp4":  # gpt-oss: the experts in MXFP4, attention (modules_to_not_convert) and the rest bf16
        spec["precision"] = "mxfp4"
        src["precision"] = 'quantization_config.quant_method = "mxfp4" (MoE expert weights; docs/precision.md)'
    elif q:
        why = (
            f"quantization_config ({method or 'unknown method'}): weights simulated at "
            f"{spec.get('dtype', 'fp16')}; moesim has no such format"
        )
        notes.append(why + ", so memory figures and verdicts are approximate")
        spec["weight_memory_approximation"] = why
        src["weight_memory_approximation"] = f"quantization_config.quant_method = {json.dumps(method)}"

    experts = cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    if experts:
        key = next(k for k in ("n_routed_experts", "num_local_experts", "num_experts") if cfg.get(k))
        put("num_experts", experts, key)
        k_key = "num_experts_per_tok" if "num_experts_per_tok" in cfg else "experts_per_token"
        if k_key in cfg:
            put("top_k", cfg[k_key], k_key)
        ffn_key = "moe_intermediate_size" if cfg.get("moe_intermediate_size") else "intermediate_size"
        put("expert_ffn_size", cfg[ffn_key], ffn_key)
        if cfg.get("n_shared_experts"):
            put("num_shared_experts", cfg["n_shared_experts"], "n_shared_experts")
        if cfg.get("shared_expert_intermediate_size"):
            spec["num_shared_experts"] = 1
            put("shared_expert_ffn_size", cfg["shared_expert_intermediate_size"], "shared_expert_intermediate_size")
            src["num_shared_experts"] = "one shared expert (Qwen2-MoE)"
            notes.append("Qwen2-MoE's sigmoid shared-expert gate ([hidden, 1] per layer) is not modelled")
        if cfg.get("first_k_dense_replace"):
            put("first_k_dense_layers", cfg["first_k_dense_replace"], "first_k_dense_replace")
            put("ffn_size", cfg["intermediate_size"], "intermediate_size")
        if cfg.get("moe_layer_freq", 1) != 1 or cfg.get("decoder_sparse_step", 1) != 1 or cfg.get("mlp_only_layers"):
            notes.append(
                "interleaved dense/MoE layers (moe_layer_freq, decoder_sparse_step, mlp_only_layers): "
                "simulated as MoE in every layer after first_k_dense_layers"
            )
    else:
        put("ffn_size", cfg["intermediate_size"], "intermediate_size")

    if cfg.get("kv_lora_rank"):
        for key, field in (
            ("kv_lora_rank", "kv_lora_rank"),
            ("q_lora_rank", "q_lora_rank"),
            ("qk_rope_head_dim", "qk_rope_head_dim"),
            ("v_head_dim", "v_head_dim"),
            ("qk_nope_head_dim", "head_dim"),
        ):
            if cfg.get(key) is not None:
                put(field, cfg[key], key)
        spec.pop("num_kv_heads", None)
        src.pop("num_kv_heads", None)
    if cfg.get("num_nextn_predict_layers"):
        notes.append(
            f"num_nextn_predict_layers = {cfg['num_nextn_predict_layers']}: the multi-token-prediction "
            "module (speculative decoding) is not simulated"
        )
    if cfg.get("tie_word_embeddings"):
        notes.append(
            "tie_word_embeddings = true: moesim counts the LM head as a separate matrix (memory and "
            "parameter counts overstate by vocab_size x hidden_size)"
        )
    window = cfg.get("sliding_window")
    if window and (cfg.get("use_sliding_window", True) or family == "gpt_oss"):
        if isinstance(window, float) and window.is_integer():
            window = int(window)
        if isinstance(window, bool) or not isinstance(window, int):
            raise ScenarioError(f"sliding_window = {json.dumps(window)[:40]}: expected a whole number of positions")
        put("sliding_window", window, "sliding_window")
        pattern, how = attention_pattern(cfg)
        if pattern is not None and "sliding" not in pattern:  # no layer slides after all
            del spec["sliding_window"], src["sliding_window"]
        elif pattern is not None:
            spec["attention_pattern"] = pattern
            src["attention_pattern"] = how
    if family == "gpt_oss":
        notes.append("GPT-OSS attention sinks and biases are not modelled")

    unknown = sorted(k for k in cfg if k not in COMMON and k not in IGNORED)
    return spec, src, notes, unknown


def to_yaml(spec: dict, src: dict[str, str], source_path: str, notes: list[str], unknown: list[str]) -> str:
    """The model spec with each value's source in a comment."""
    lines = [
        f"# Model spec imported by `moesim import-hf {source_path}`.",
        "# Each value's source is the Hugging Face config.json key named beside it.",
    ]
    lines += [f"# NOTE: {n}" for n in notes]
    if unknown:
        lines.append(f"# NOT UNDERSTOOD (not simulated): {', '.join(unknown)}")
    for field, value in spec.items():
        text = yaml.safe_dump({field: value}, default_flow_style=True, width=1000).strip()[1:-1]
        comment = f"  # {src[field]}" if field in src else ""
        lines.append(f"{text}{comment}")
    return "\n".join(lines) + "\n"


def attention_pattern(cfg: dict) -> tuple[list[str] | None, str]:
    """A config's sliding and full layers as ModelSpec.attention_pattern (the shortest cycle that repeats
    over the layers) and its source; (None, "") when every layer slides (Mistral: no layer_types)."""
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        kinds = ["sliding" if str(t) == "sliding_attention" else "full" for t in types]
        period = next(p for p in range(1, len(kinds) + 1) if all(k == kinds[i % p] for i, k in enumerate(kinds)))
        cycle = kinds[:period]
        if cycle == ["sliding"]:
            return None, ""
        runs: list[list] = []  # the cycle run-length encoded: 5 x sliding_attention, full_attention
        for t in types[:period]:
            if runs and runs[-1][1] == t:
                runs[-1][0] += 1
            else:
                runs.append([1, t])
        text = ", ".join(f"{n} x {t}" if n > 1 else str(t) for n, t in runs)
        return cycle, f"layer_types ({len(types)} entries) = [{text}], repeated"
    every = cfg.get("sliding_window_pattern")
    if isinstance(every, int) and every > 1:  # Gemma 3: every n-th layer is global
        return ["sliding"] * (every - 1) + ["full"], f"sliding_window_pattern = {every}: every {every}th layer global"
    if str(cfg.get("model_type", "")).lower() == "gemma2":  # Gemma 2 alternates, local first
        return ["sliding", "full"], "Gemma 2 alternates local (sliding) and global layers"
    full, layers = cfg.get("max_window_layers"), cfg.get("num_hidden_layers")
    if cfg.get("use_sliding_window") and isinstance(full, int) and isinstance(layers, int) and full > 0:
        # Qwen2: the first max_window_layers layers attend fully, the rest slide
        kinds = ["full"] * min(full, layers) + ["sliding"] * max(layers - full, 0)
        return kinds, f"max_window_layers = {full}: the first {min(full, layers)} layers full, the rest sliding"
    return None, ""


def unsupported_reason(cfg: dict) -> str | None:
    """Why moesim cannot simulate this architecture faithfully enough to import it, or None."""
    kinds = {str(k) for k in cfg.get("layer_types") or [] if k != "full_attention"}
    if cfg.get("linear_conv_kernel_dim") or cfg.get("linear_num_value_heads") or kinds & {"linear_attention"}:
        return (
            "linear-attention layers (Qwen3-Next's Gated DeltaNet) are not modelled; simulating them as full "
            "attention would be wrong, so this model cannot be imported"
        )
    return None


def text_config(cfg: dict) -> dict:
    """The language model's fields: a multimodal config (Llama-4, Gemma-3, ...) keeps them under
    `text_config`; the top level's name and dtype fill in what it lacks."""
    inner = cfg.get("text_config")
    if not isinstance(inner, dict):
        return cfg
    return {
        **{k: cfg[k] for k in ("_name_or_path", "torch_dtype", "dtype", "quantization_config") if k in cfg},
        **inner,
    }


def import_file(path: Path, name: str | None = None) -> tuple[str, ModelSpec, list[str], list[str]]:
    """Read and convert one config.json (or a model directory holding one); validate the result as a ModelSpec."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ScenarioError(
                f"{path}: a directory without config.json; give a Hugging Face config.json "
                f"or the model directory that holds it"
            )
        path = path / "config.json"
    if not path.exists():
        raise ScenarioError(f"{path}: no such file")
    raw = read_bounded(path, str(path), "Hugging Face config.json", ScenarioError)
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # not JSON, not UTF-8, or a number of more digits than Python converts
        raise ScenarioError(f"{path}: not a JSON file ({str(exc)[:100]})") from None
    except RecursionError:
        raise ScenarioError(f"{path}: JSON nested too deeply to be a config.json") from None
    if not isinstance(cfg, dict):
        raise ScenarioError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    cfg = text_config(cfg)
    reason = unsupported_reason(cfg)
    if reason:
        raise ScenarioError(f"{path}: {reason}")
    default = path.parent.name if path.stem == "config" else path.stem  # models/<name>/config.json or <name>.json
    model_name = name or str(cfg.get("_name_or_path") or default or "model").split("/")[-1].lower()
    try:
        spec, src, notes, unknown = convert(cfg, model_name)
    except KeyError as exc:
        raise ScenarioError(f"{path}: required key {exc} is missing") from None
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    except TypeError as exc:  # a value of the wrong JSON type where a number or object belongs
        raise ScenarioError(f"{path}: a value has the wrong type ({str(exc)[:80]})") from None
    try:
        model = ModelSpec.model_validate(spec)
    except ValidationError as exc:
        raise ScenarioError(f"{path}: the imported model is invalid: {one_line_error(exc, ModelSpec)}") from None
    return to_yaml(spec, src, str(path), notes, unknown), model, notes, unknown
