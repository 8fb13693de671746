"""Config stage, model: the typed transformer architecture (ModelSpec), dtype sizes and model presets."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from simulator.config.errors import StrictModel, divisors
from simulator.config.hardware import DType
from simulator.config.precision import FORMAT_BYTES, Precision, PrecisionSpec, resolve_precision
from simulator.files import read_yaml

#: Largest value accepted per model field that sizes the operator graph (others: MAX_MODEL_FIGURE):
#: beyond these a figure is a typo (or a unit slip), and building a graph from it would hang or overflow.
MAX_MODEL_FIGURE = 10**9
MAX_MODEL_COUNTS = {
    "num_layers": 10**4,
    "num_heads": 10**5,
    "num_kv_heads": 10**5,
    "num_experts": 10**5,
    "top_k": 10**5,
    "num_shared_experts": 10**4,
    "first_k_dense_layers": 10**4,
}


def magnitude_problem(fields: dict, prefix: str = "", limits: dict[str, int] = MAX_MODEL_COUNTS) -> str | None:
    """The first number of `fields` (a model, cluster or layout section) beyond its limit, as an
    error line, else None. Runs before validation, whose divisibility checks and messages loop
    over the numbers; a number too large for a float (10**400) is out of range too."""
    for key, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        except OverflowError:
            number = float("inf")
        path = f"{prefix}{key}"
        limit = limits.get(key, MAX_MODEL_FIGURE)
        if abs(number) > limit:  # NaN compares false: left to the finite-number check
            return f"{path} = {number:.3g} is out of range (at most {limit:.0e}); check the figure and its unit"
    return None


#: Bytes per element of each dtype and precision format (block scales included: config.precision).
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0}
DTYPE_BYTES.update({k: v for k, v in FORMAT_BYTES.items() if k not in DTYPE_BYTES})


class ModelSpec(StrictModel):
    """Transformer architecture. Dense models have num_experts = 0 and an ffn_size."""

    name: str = Field(default="model", description="a label for reports")
    num_layers: PositiveInt = Field(description="transformer layers (blocks)")
    hidden_size: PositiveInt = Field(description="width of the residual stream (d_model)")
    num_heads: PositiveInt = Field(description="query heads per layer")
    num_kv_heads: PositiveInt | None = Field(
        default=None,
        description="key/value heads (GQA, MQA); must divide num_heads; default: num_heads (multi-head attention)",
    )
    head_dim: PositiveInt | None = Field(
        default=None,
        description="width of one attention head (with MLA: the non-rotary part); default: hidden_size / num_heads",
    )
    num_experts: int = Field(default=0, ge=0, description="routed experts per MoE layer; 0: a dense model")
    top_k: PositiveInt = Field(default=1, description="experts each token is routed to (at most num_experts)")
    expert_ffn_size: PositiveInt | None = Field(
        default=None, description="inner width of one routed expert's FFN; required when num_experts > 0"
    )
    ffn_size: PositiveInt | None = Field(
        default=None,
        description="inner width of the dense FFN (dense models, and the first_k_dense_layers of a MoE model)",
    )
    activation: Literal["gelu", "relu", "swiglu", "geglu"] = Field(
        default="gelu", description="FFN activation: gated ones (swiglu, geglu) have three matrices, plain ones two"
    )
    dtype: DType = Field(default="fp16", description="activation dtype (and weights and KV cache unless set apart)")
    vocab_size: int = Field(
        default=0, ge=0, description="vocabulary; 0: no embedding, LM head or sampling in the simulated model"
    )
    fused_qkv: bool = Field(
        default=False, description="one Q/K/V GEMM (as most inference engines run it) instead of three"
    )
    moe_impl: Literal["grouped", "per_expert", "capacity"] = Field(
        default="grouped",
        description="expert execution: one grouped GEMM over the routed tokens, a GEMM pair per expert, or "
        "GShard capacity padding (every expert padded to capacity slots, all weights read)",
    )
    capacity_factor: float = Field(
        default=1.25, gt=0.0, description="moe_impl capacity: slots per expert = ceil(copies / E * factor)"
    )
    num_shared_experts: int = Field(
        default=0,
        ge=0,
        description="shared experts, run on every token beside the routed ones as one FFN replicated on every "
        "GPU of a stage (no communication; DeepSeek, Qwen2-MoE)",
    )
    shared_expert_ffn_size: PositiveInt | None = Field(
        default=None, description="inner width of one shared expert; default: expert_ffn_size"
    )
    first_k_dense_layers: int = Field(
        default=0, ge=0, description="DeepSeek style: layers 0..k-1 use a dense FFN of ffn_size instead of experts"
    )
    weight_dtype: DType | None = Field(
        default=None, description="weight dtype (e.g. fp8 weights with bf16 activations); default: dtype"
    )
    weight_memory_approximation: str | None = Field(
        default=None,
        description="why the weights' memory is only approximate (e.g. mxfp4 weights simulated at dtype); "
        "the memory verdicts then say so; written by import-hf",
    )
    kv_cache_dtype: DType | None = Field(default=None, description="KV-cache dtype; default: dtype")
    precision: PrecisionSpec | None = Field(
        default=None,
        description="storage and compute formats per class of operation: a preset name (fp8-w8a8, w4a16, "
        "nvfp4, ...), a preset plus overrides, or a mapping; default: the three dtype fields say it all",
    )
    # Multi-head latent attention when kv_lora_rank is set: head_dim is then the non-rotary part of a
    # query/key head (qk_nope_head_dim); the KV cache holds kv_lora_rank + qk_rope_head_dim values per
    # token and layer, shared by all heads.
    kv_lora_rank: PositiveInt | None = Field(
        default=None,
        description="multi-head latent attention (DeepSeek-V2/V3): rank of the compressed KV cache; "
        "set with qk_rope_head_dim and v_head_dim",
    )
    q_lora_rank: PositiveInt | None = Field(
        default=None,
        description="MLA query compression rank; unset: a plain [hidden, heads * (nope + rope)] projection",
    )
    qk_rope_head_dim: PositiveInt | None = Field(
        default=None, description="MLA: rotary part of a query/key head, cached beside kv_lora_rank"
    )
    v_head_dim: PositiveInt | None = Field(default=None, description="MLA: width of a value head")
    # Sliding-window (local) attention: a sliding layer's query attends to the last sliding_window positions
    # (itself included), so its attention work and the KV it must keep stop growing with the context.
    sliding_window: PositiveInt | None = Field(
        default=None,
        description="positions a sliding-window layer attends to (its own included; Mistral, Gemma 2/3, "
        "GPT-OSS); the layers attention_pattern marks sliding; unset: every layer attends to the whole context",
    )
    attention_pattern: list[Literal["full", "sliding"]] | None = Field(
        default=None,
        min_length=1,
        description="each layer's attention, a cycle repeated over the layers (layer i: entry i mod length), as "
        "Hugging Face's layer_types: [sliding, full] (GPT-OSS, Gemma 2), [sliding x 5, full] (Gemma 3); "
        "default with sliding_window: every layer slides",
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        """`{preset: NAME or path.yaml, field: override, ...}`: a model spec from scenarios/models/."""
        if not isinstance(value, dict):
            return value
        if "preset" in value:
            overrides = {k: v for k, v in value.items() if k != "preset"}
            value = {**load_model_preset(str(value["preset"])), **overrides}
        problem = magnitude_problem(value)  # one path for a model from a scenario, a preset or import-hf
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        kv = self.kv_heads
        if self.num_heads % kv:
            raise ValueError(
                f"num_kv_heads = {kv} must divide num_heads = {self.num_heads} (try {divisors(self.num_heads)})"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size = {self.hidden_size} is not a multiple of num_heads = {self.num_heads}: set head_dim explicitly"
            )
        if self.num_experts > 0:
            if self.expert_ffn_size is None:
                raise ValueError("expert_ffn_size is required when num_experts > 0")
            if self.top_k > self.num_experts:
                raise ValueError(f"top_k = {self.top_k} exceeds num_experts = {self.num_experts}")
        elif self.ffn_size is None:
            raise ValueError("a dense model (num_experts = 0) needs ffn_size")
        if (self.num_shared_experts or self.first_k_dense_layers) and not self.is_moe:
            raise ValueError("num_shared_experts and first_k_dense_layers apply to MoE models (num_experts > 0)")
        if self.first_k_dense_layers:
            if self.ffn_size is None:
                raise ValueError(
                    f"first_k_dense_layers = {self.first_k_dense_layers} needs ffn_size (the dense FFN width)"
                )
            if self.first_k_dense_layers > self.num_layers:
                raise ValueError(
                    f"first_k_dense_layers = {self.first_k_dense_layers} exceeds num_layers = {self.num_layers}"
                )
        if self.attention_pattern is not None:
            if "sliding" in self.attention_pattern and self.sliding_window is None:
                raise ValueError(
                    "attention_pattern has sliding layers but no sliding_window: set sliding_window (positions)"
                )
            if self.sliding_window is not None and "sliding" not in self.attention_pattern:
                raise ValueError(
                    f"sliding_window = {self.sliding_window} but attention_pattern has no sliding layer: "
                    "add one or drop sliding_window"
                )
        if self.sliding_window is not None and self.is_mla:
            raise ValueError("sliding_window with multi-head latent attention is not supported: drop one")
        mla = (self.kv_lora_rank, self.qk_rope_head_dim, self.v_head_dim)
        if any(x is not None for x in mla + (self.q_lora_rank,)) and any(x is None for x in mla):
            raise ValueError("multi-head latent attention needs kv_lora_rank, qk_rope_head_dim and v_head_dim together")
        return self

    def is_moe_layer(self, layer: int) -> bool:
        return self.is_moe and layer >= self.first_k_dense_layers

    def attention_window(self, layer: int) -> int | None:
        """Positions layer `layer` attends to when it slides (sliding_window), None when it sees the whole
        context (every layer without sliding_window; attention_pattern's full entries)."""
        window = self.sliding_window
        if window is None:
            return None
        pattern = self.attention_pattern
        if pattern is None or pattern[layer % len(pattern)] == "sliding":
            return window
        return None

    def sliding_layers(self, layers) -> int:
        """How many of `layers` (layer indices) slide."""
        if self.sliding_window is None:
            return 0
        return sum(1 for layer in layers if self.attention_window(layer) is not None)

    def kept_positions(self, layers, positions: int) -> int:
        """Layer positions of KV one sequence of `positions` positions keeps over `layers` (layer indices): every
        position in a full layer, the last sliding_window in a sliding one (engines free what the window left)."""
        sliding = self.sliding_layers(layers)
        return (len(layers) - sliding) * positions + sliding * min(positions, self.sliding_window or 0)

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def shared_ffn_size(self) -> int:
        """Width of the fused shared-expert FFN (0 without shared experts)."""
        return self.num_shared_experts * (self.shared_expert_ffn_size or self.expert_ffn_size or 0)

    @property
    def formats(self) -> Precision:
        """The storage and compute format of every class of operation (precision, else the dtype fields)."""
        return resolve_precision(self.dtype, self.weight_dtype, self.kv_cache_dtype, self.precision)

    @property
    def weight_bytes_per_element(self) -> float:
        """Bytes of one dense-GEMM weight, with its block scales (weight_dtype, default dtype)."""
        return self.formats.dense_gemm.weight_bytes

    @property
    def kv_bytes_per_element(self) -> float:
        """Bytes of one KV-cache value (kv_cache_dtype, default dtype)."""
        return self.formats.kv_bytes

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def dtype_bytes_per_element(self) -> float:
        """Bytes of one activation value (dtype, or precision.activations)."""
        return self.formats.activation_bytes

    @property
    def gated(self) -> bool:
        """Gated activations (SwiGLU, GeGLU) have two up-projections."""
        return self.activation in ("swiglu", "geglu")


#: Model presets: one model spec per YAML file (scenarios/models/NAME.yaml).
PRESETS_DIR = Path(__file__).resolve().parent.parent.parent / "scenarios" / "models"


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_model_preset(ref: str) -> dict:
    """The mapping of a model preset, by name (scenarios/models/NAME.yaml) or YAML path."""
    path = Path(ref)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESETS_DIR / f"{ref}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(ref, available_presets(), n=1, cutoff=0.4)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(
            f"model preset '{ref}' not found; {hint}available: {', '.join(available_presets())} "
            "(or give a path to a model YAML)"
        )
    data = read_yaml(path, f"model preset {path}", "model preset", ValueError)
    if not isinstance(data, dict):
        raise ValueError(f"model preset {path}: expected a mapping of model fields")
    return data
