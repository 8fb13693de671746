"""Config stage: the typed, validated scenario (model, hardware, cluster, parallel layout, workload, targets).

Every constraint is checked here, once, when a scenario is loaded; later stages trust the objects.
Errors are `ScenarioError`s with one line that names the field path and the fix.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from simulator.hardware import DType, HardwareProfile, ProfileError, load_profile
from simulator.files import read_yaml

#: Bytes per element of each dtype.
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0}

#: Guard against absurd magnitudes that would make the simulation hang or overflow.
MAX_TOKENS = 10**9


class ScenarioError(ValueError):
    """A scenario that cannot be simulated; the message is one line naming field and fix."""


class _Strict(BaseModel):
    # allow_inf_nan=False: a NaN or infinite figure would flow silently into every time and byte.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _divisors(n: int) -> list[int]:
    """Divisors of n, for error messages; O(sqrt n), and only the small ones of an absurd n."""
    small = [d for d in range(1, min(math.isqrt(n), 10**6) + 1) if n % d == 0]
    if n > 10**12:
        return small
    return sorted(set(small) | {n // d for d in small})


class ModelSpec(_Strict):
    """Transformer architecture. Dense models have num_experts = 0 and an ffn_size."""

    name: str = "model"
    num_layers: PositiveInt
    hidden_size: PositiveInt
    num_heads: PositiveInt
    num_kv_heads: PositiveInt | None = None  # default: num_heads (multi-head attention)
    head_dim: PositiveInt | None = None  # default: hidden_size / num_heads
    num_experts: int = Field(default=0, ge=0)
    top_k: PositiveInt = 1
    expert_ffn_size: PositiveInt | None = None
    ffn_size: PositiveInt | None = None  # dense FFN width (dense models)
    activation: Literal["gelu", "relu", "swiglu", "geglu"] = "gelu"
    dtype: DType = "fp16"
    vocab_size: int = Field(default=0, ge=0)  # 0: no embedding / LM head in the simulated model
    fused_qkv: bool = False  # one Q/K/V GEMM (as most inference engines run it) instead of three
    moe_impl: Literal["grouped", "per_expert", "capacity"] = "grouped"
    capacity_factor: float = Field(default=1.25, gt=0.0)  # moe_impl capacity: slots per expert = ceil(copies / E * factor)
    # Shared experts (DeepSeek, Qwen2-MoE): run on every token beside the routed ones, as one FFN of
    # width num_shared_experts * shared_expert_ffn_size, replicated on every GPU of a stage (each
    # GPU runs it on the tokens it routes, so it needs no communication).
    num_shared_experts: int = Field(default=0, ge=0)
    shared_expert_ffn_size: PositiveInt | None = None  # per shared expert; default expert_ffn_size
    first_k_dense_layers: int = Field(default=0, ge=0)  # DeepSeek: layers 0..k-1 use a dense FFN of ffn_size
    weight_dtype: DType | None = None  # default: dtype (e.g. fp8 weights with bf16 activations)
    kv_cache_dtype: DType | None = None  # default: dtype
    # Multi-head latent attention (DeepSeek-V2/V3) when kv_lora_rank is set: head_dim is then the
    # non-rotary part of a query/key head (qk_nope_head_dim); the KV cache holds kv_lora_rank +
    # qk_rope_head_dim values per token and layer, shared by all heads.
    kv_lora_rank: PositiveInt | None = None
    q_lora_rank: PositiveInt | None = None  # None: a plain [hidden, heads * (nope + rope)] query projection
    qk_rope_head_dim: PositiveInt | None = None
    v_head_dim: PositiveInt | None = None

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        """`{preset: NAME or path.yaml, field: override, ...}`: a model spec from scenarios/models/."""
        if not isinstance(value, dict) or "preset" not in value:
            return value
        overrides = {k: v for k, v in value.items() if k != "preset"}
        return {**load_model_preset(str(value["preset"])), **overrides}

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        kv = self.kv_heads
        if self.num_heads % kv:
            raise ValueError(
                f"num_kv_heads = {kv} must divide num_heads = {self.num_heads} (try {_divisors(self.num_heads)})"
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
                raise ValueError(f"first_k_dense_layers = {self.first_k_dense_layers} needs ffn_size (the dense FFN width)")
            if self.first_k_dense_layers > self.num_layers:
                raise ValueError(f"first_k_dense_layers = {self.first_k_dense_layers} exceeds num_layers = {self.num_layers}")
        mla = (self.kv_lora_rank, self.qk_rope_head_dim, self.v_head_dim)
        if any(x is not None for x in mla + (self.q_lora_rank,)) and any(x is None for x in mla):
            raise ValueError("multi-head latent attention needs kv_lora_rank, qk_rope_head_dim and v_head_dim together")
        return self

    def is_moe_layer(self, layer: int) -> bool:
        return self.is_moe and layer >= self.first_k_dense_layers

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def shared_ffn_size(self) -> int:
        """Width of the fused shared-expert FFN (0 without shared experts)."""
        return self.num_shared_experts * (self.shared_expert_ffn_size or self.expert_ffn_size or 0)

    @property
    def weight_bytes(self) -> float:
        return DTYPE_BYTES[self.weight_dtype or self.dtype]

    @property
    def kv_bytes(self) -> float:
        return DTYPE_BYTES[self.kv_cache_dtype or self.dtype]

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
    def dtype_bytes(self) -> float:
        return DTYPE_BYTES[self.dtype]

    @property
    def gated(self) -> bool:
        """Gated activations (SwiGLU, GeGLU) have two up-projections."""
        return self.activation in ("swiglu", "geglu")


#: Model presets: one model spec per YAML file (scenarios/models/NAME.yaml).
PRESETS_DIR = Path(__file__).resolve().parent.parent / "scenarios" / "models"


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
        raise ValueError(f"model preset '{ref}' not found; {hint}available: {', '.join(available_presets())} "
                         "(or give a path to a model YAML)")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"model preset {path}: expected a mapping of model fields")
    return data


class HardwareRef(_Strict):
    """A profile name (or YAML path) plus single-field overrides."""

    model_config = ConfigDict(extra="allow", frozen=True)
    profile: str


class ClusterSpec(_Strict):
    num_gpus: PositiveInt
    gpus_per_node: PositiveInt | None = None  # default: the hardware profile's

    @model_validator(mode="after")
    def _check(self) -> "ClusterSpec":
        if self.gpus_per_node and self.num_gpus > self.gpus_per_node and self.num_gpus % self.gpus_per_node:
            raise ValueError(
                f"num_gpus = {self.num_gpus} is not a whole number of nodes of gpus_per_node = {self.gpus_per_node}"
            )
        return self


class ParallelSpec(_Strict):
    """GPUs = pp * dp * tp; experts split over ep (x etp) folded onto each stage's dp*tp GPUs."""

    tp: PositiveInt = 1
    pp: PositiveInt = 1
    dp: PositiveInt = 1
    ep: PositiveInt = 1
    etp: PositiveInt = 1
    microbatches: PositiveInt = 1
    layer_split: tuple[PositiveInt, ...] | None = None  # layers per stage; default even

    @property
    def num_gpus(self) -> int:
        return self.pp * self.dp * self.tp


class RoutingSpec(_Strict):
    """How the router spreads token copies over the experts (the same in every pass).

    YAML: `uniform` (default), `{zipf: s}` (expert i, counted from 0, gets a share proportional to
    1/(i+1)^s: the hottest experts sit on the first EP rank, the worst case), `{loads: [..]}`
    (per-expert fractions, normalised), or `{sampled: seed}` (a multinomial draw, per layer, of the
    prefill's token copies over uniform probabilities; deterministic for a seed). Any of them may
    add `capacity_factor: c`: an expert keeps at most ceil(c * copies / num_experts) copies per
    pass and its EP group; the rest are dropped (they skip the experts) and counted.
    """

    zipf: PositiveFloat | None = None
    loads: tuple[float, ...] | None = None
    sampled: int | None = Field(default=None, ge=0)
    capacity_factor: PositiveFloat | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_word(cls, value: Any) -> Any:
        if value == "uniform" or value is None:
            return {}
        if isinstance(value, str):
            raise ValueError(f"routing: unknown routing '{value}'; use uniform, {{zipf: s}}, {{loads: [...]}} or {{sampled: seed}}")
        return value

    @model_validator(mode="after")
    def _check(self) -> "RoutingSpec":
        given = [k for k in ("zipf", "loads", "sampled") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"routing: give one of zipf, loads, sampled (got {', '.join(given)})")
        if self.loads is not None and (any(x < 0 for x in self.loads) or sum(self.loads) <= 0):
            raise ValueError("routing.loads: fractions must be >= 0 with a positive sum")
        return self

    @property
    def kind(self) -> str:
        return next((k for k in ("zipf", "loads", "sampled") if getattr(self, k) is not None), "uniform")


class WorkloadSpec(_Strict):
    batch_size: PositiveInt
    input_len_tokens: PositiveInt
    output_len_tokens: PositiveInt
    routing: RoutingSpec = RoutingSpec()


class RuntimeSpec(_Strict):
    """How kernels are issued. cuda_graph: decode steps replay a captured graph; prefill runs eagerly.

    framework: `fused` (serving engines: each operator of the DAG is one kernel) or `pytorch`
    (plain PyTorch ops, as the reference implementation of simulator/microbench_e2e.py: operators
    also launch the helper kernels such code issues, e.g. KV-cache writes, layout copies, routing
    index arithmetic, dispatch buffers; see graph.PYTORCH_HELPER_KERNELS)."""

    mode: Literal["eager", "cuda_graph"] = "cuda_graph"
    framework: Literal["fused", "pytorch"] = "fused"
    memory_reserve_bytes: float = Field(default=1.0e9, ge=0.0)  # CUDA context, NCCL buffers, allocator slack


TargetMetric = Literal[
    "output_tokens_per_ms_per_gpu",
    "prefill_tokens_per_ms_per_gpu",
    "total_tokens_per_ms_per_gpu",
    "ttft_s",
    "tpot_s",
    "total_s",
    "memory_bytes_per_gpu",
]


class Target(_Strict):
    min: float | None = None
    max: float | None = None
    stat: Literal["mean", "p50", "p99", "max"] = "max"  # for ttft_s: which statistic is checked

    @model_validator(mode="after")
    def _check(self) -> "Target":
        if (self.min is None) == (self.max is None):
            raise ValueError("give exactly one of min or max")
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError("bound must be a finite number")
        return self


class Declared(_Strict):
    """Figures a deployment claims (e.g. the origin document); audited against what moesim computes."""

    source: str = ""
    total_params: PositiveFloat | None = None
    num_gpus: PositiveInt | None = None
    parallel_degrees: dict[Literal["tp", "ep", "pp", "dp", "etp"], PositiveInt] | None = None
    output_tokens_per_ms_per_gpu: PositiveFloat | None = None  # claimed "at least"
    ttft_s: PositiveFloat | None = None  # claimed "at most"
    memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)  # claimed fraction of capacity
    experts_per_gpu: PositiveInt | None = None
    layers_per_gpu: PositiveInt | None = None


class Scenario(_Strict):
    name: str
    description: str = ""
    model: ModelSpec
    hardware: HardwareRef
    cluster: ClusterSpec
    parallel: ParallelSpec = ParallelSpec()
    workload: WorkloadSpec
    runtime: RuntimeSpec = RuntimeSpec()
    targets: dict[TargetMetric, Target] = {}
    declared: Declared | None = None

    @field_validator("hardware", mode="before")
    @classmethod
    def _hardware_name(cls, value: Any) -> Any:
        return {"profile": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _layout(self) -> "Scenario":
        _check_layout(self)
        return self

    @property
    def num_gpus(self) -> int:
        return self.cluster.num_gpus

    def stage_layers(self) -> list[list[int]]:
        """Layer indices owned by each pipeline stage."""
        split = self.parallel.layer_split or _even_split(self.model.num_layers, self.parallel.pp)
        layers, start = [], 0
        for count in split:
            layers.append(list(range(start, start + count)))
            start += count
        return layers


def _even_split(num_layers: int, pp: int) -> tuple[int, ...]:
    base, extra = divmod(num_layers, pp)
    return tuple(base + (1 if s < extra else 0) for s in range(pp))


class _LayoutError(ValueError):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


def _check_layout(s: Scenario) -> None:
    m, p, w = s.model, s.parallel, s.workload
    if m.num_heads % p.tp:
        raise _LayoutError("parallel.tp", f"tp = {p.tp} must divide model.num_heads = {m.num_heads} (try {_divisors(m.num_heads)})")
    if m.kv_heads > p.tp and m.kv_heads % p.tp:
        raise _LayoutError(
            "parallel.tp", f"tp = {p.tp} must divide model.num_kv_heads = {m.kv_heads} (try {_divisors(m.kv_heads)})"
        )
    if p.pp > m.num_layers:
        raise _LayoutError("parallel.pp", f"pp = {p.pp} exceeds model.num_layers = {m.num_layers}")
    if p.layer_split is not None:
        if len(p.layer_split) != p.pp or sum(p.layer_split) != m.num_layers:
            raise _LayoutError(
                "parallel.layer_split",
                f"layer_split needs {p.pp} entries (one per stage) summing to num_layers = {m.num_layers}",
            )
    if m.is_moe:
        if m.num_experts % p.ep:
            raise _LayoutError(
                "parallel.ep", f"ep = {p.ep} must divide model.num_experts = {m.num_experts} (try {_divisors(m.num_experts)})"
            )
        ffn = m.expert_ffn_size or 0
        if ffn % p.etp:
            raise _LayoutError("parallel.etp", f"etp = {p.etp} must divide model.expert_ffn_size = {ffn} (try {_divisors(ffn)[:8]})")
        stage_gpus = p.dp * p.tp
        if stage_gpus % (p.ep * p.etp):
            valid = [d for d in _divisors(stage_gpus) if m.num_experts % d == 0]
            raise _LayoutError(
                "parallel.ep",
                f"ep * etp = {p.ep * p.etp} must divide dp * tp = {stage_gpus}, the GPUs of a stage it folds onto (valid ep with etp=1: {valid})",
            )
    elif p.ep != 1 or p.etp != 1:
        raise _LayoutError("parallel.ep", "ep and etp must be 1 for a dense model (num_experts = 0)")
    if p.num_gpus != s.cluster.num_gpus:
        raise _LayoutError(
            "cluster.num_gpus",
            f"num_gpus = {s.cluster.num_gpus} must equal pp * dp * tp = {p.pp} * {p.dp} * {p.tp} = {p.num_gpus}",
        )
    if w.batch_size % (p.dp * p.microbatches):
        raise _LayoutError(
            "workload.batch_size",
            f"batch_size = {w.batch_size} must be a multiple of dp * microbatches = {p.dp * p.microbatches}",
        )
    total_tokens = w.batch_size * (w.input_len_tokens + w.output_len_tokens)
    if total_tokens > MAX_TOKENS:
        raise _LayoutError(
            "workload", f"batch_size * (input + output) = {total_tokens:.3g} tokens exceeds the supported {MAX_TOKENS:.0e}"
        )
    loads = w.routing.loads
    if loads is not None and len(loads) != m.num_experts:
        raise _LayoutError("workload.routing.loads",
                           f"routing.loads has {len(loads)} entries; it needs one per expert (model.num_experts = {m.num_experts})")
    if m.is_moe is False and p.ep > 1:
        raise _LayoutError("parallel.ep", "ep must be 1 for a dense model")


# ---------------------------------------------------------------------------------------------
# Loading


def _format_loc(loc: tuple) -> str:
    return ".".join(str(part) if str(part).isprintable() else repr(part) for part in loc)


def _valid_keys(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at the parent of `loc` (walks nested pydantic models)."""
    cls: Any = model_cls
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(cls, "model_fields", {})
        if part not in fields:
            return []
        annotation = fields[part].annotation
        cls = next((a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")), annotation)
    return list(getattr(cls, "model_fields", {}))


def _one_line(exc: ValidationError, model_cls: type[BaseModel] = Scenario) -> str:
    errors = exc.errors()
    # A misspelt key shows up both as unknown and as a missing required field: name the typo.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc, msg, kind = err["loc"], err["msg"], err["type"]
    path = _format_loc(loc)
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, _LayoutError):
        return f"{cause.path}: {cause}"
    if kind == "extra_forbidden":
        options = _valid_keys(model_cls, loc)
        close = difflib.get_close_matches(str(loc[-1]), options, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(options)}"
        return f"{path}: unknown key; {hint}"
    if kind == "missing":
        return f"{path}: required field is missing; add it"
    if kind == "literal_error" and loc and loc[-1] == "[key]":  # a mapping key outside a fixed set
        options = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        close = difflib.get_close_matches(str(err.get("input")), options, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(options)}"
        return f"{_format_loc(loc[:-1])}: unknown key; {hint}"
    if kind in ("greater_than", "greater_than_equal") and "input" in err:
        return f"{path} = {err['input']!r}: {msg.lower()}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) and kind != "value_error" else ""
    prefix = f"{path}: " if path else ""
    return f"{prefix}{msg}{got}"


#: Largest count accepted per field of the sections that size the operator graph: beyond these a
#: figure is a typo (or a unit slip), and building a graph from it would hang or overflow.
_MAX_COUNT = 10**9
_MAX_COUNTS = {
    "model.num_layers": 10**4,
    "model.num_heads": 10**5,
    "model.num_kv_heads": 10**5,
    "model.num_experts": 10**5,
    "model.top_k": 10**5,
    "model.num_shared_experts": 10**4,
    "model.first_k_dense_layers": 10**4,
    "cluster.num_gpus": 10**5,
    "cluster.gpus_per_node": 10**5,
    **{f"parallel.{k}": 10**5 for k in ("tp", "pp", "dp", "ep", "etp", "microbatches")},
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
                continue
            if section == "workload" or not isinstance(value, (int, float, str)):
                continue
            try:
                number = float(value)
            except (ValueError, OverflowError):
                continue
            path = f"{section}.{key}"
            limit = _MAX_COUNTS.get(path, _MAX_COUNT)
            if abs(number) > limit:  # NaN compares false: left to the finite-number check
                raise ScenarioError(f"{path} = {number:.3g} is out of range (at most {limit:.0e}); check the figure and its unit")


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
        raise ScenarioError(f"{source}: expected a YAML mapping with sections model, hardware, cluster, parallel, workload, targets")
    try:
        _check_magnitudes(data)
        scenario = Scenario.model_validate(data)
        _check_name(scenario.name)
    except ValidationError as exc:
        raise ScenarioError(_printable(f"{source}: {_one_line(exc)}")) from None
    except ScenarioError as exc:
        raise ScenarioError(_printable(f"{source}: {exc}")) from None
    try:
        resolve_hardware(scenario, source)  # fail now, not mid-run
    except ScenarioError as exc:
        raise ScenarioError(_printable(str(exc))) from None
    return scenario


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
    for item in overrides or []:
        data = apply_override(data, item)
    return parse_scenario(data, str(path))


def apply_override(data: Any, item: str) -> dict:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a scenario mapping."""
    if "=" not in item:
        raise ScenarioError(f"--set {item}: expected key.path=value, e.g. parallel.tp=4")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
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
    except ProfileError as exc:
        raise ScenarioError(f"{source}: hardware.profile: {exc}") from None
    except ValidationError as exc:
        line = _one_line(exc, HardwareProfile)
        raise ScenarioError(f"{source}: hardware ({scenario.hardware.profile}): {line}") from None


def gpus_per_node(scenario: Scenario, hw: HardwareProfile) -> int:
    return scenario.cluster.gpus_per_node or min(hw.gpus_per_node, scenario.num_gpus)


def with_layout(scenario: Scenario, **parallel: int) -> Scenario:
    """A copy of the scenario with other parallel degrees (validated)."""
    data = scenario.model_dump(exclude_none=True)
    data["parallel"] = {**data["parallel"], **parallel}
    data["cluster"]["num_gpus"] = data["parallel"].get("pp", 1) * data["parallel"].get("dp", 1) * data["parallel"].get("tp", 1)
    return parse_scenario(data, scenario.name)
