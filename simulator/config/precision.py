"""Config stage, precision: number formats (bytes per element with their block scales), the storage and
compute format of each class of operation, and the presets of what serving engines run.

Every figure is sourced below and in docs/precision.md. Nothing here knows about layouts or hardware
beyond the name of the peak FLOP/s field a compute format runs at.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, NamedTuple

from pydantic import Field, model_validator

from simulator.config.errors import StrictModel

#: Formats a precision section may name.
Format = Literal["fp32", "fp16", "bf16", "fp8", "int8", "int4", "mxfp4", "nvfp4"]


class NumberFormat(NamedTuple):
    """One number format: the bits of an element, the scales shared by a block of elements, and the
    tensor-core peak (a `peak_flops_per_s` field of the hardware profile) that computes in it."""

    element_bits: int
    block_size: int  # elements sharing one scale (0: a per-tensor or per-channel scale, left out)
    scale_bytes: float  # bytes of scale (and zero point) per block
    peak_field: str | None  # the profile's peak for GEMMs in this format; None: a storage-only format
    source: str

    @property
    def bytes_per_element(self) -> float:
        """Bytes of one element with its share of the block's scale: bits / 8 + scale / block."""
        return self.element_bits / 8 + (self.scale_bytes / self.block_size if self.block_size else 0.0)


#: The formats. Per-tensor and per-channel scales (fp8, int8: one fp32 per tensor or output column)
#: are left out: at most 4 bytes per column of K >= 1024 elements, under 0.4 % of the weights.
FORMATS: dict[str, NumberFormat] = {
    "fp32": NumberFormat(32, 0, 0.0, "fp32", "IEEE 754 binary32"),
    "fp16": NumberFormat(16, 0, 0.0, "fp16", "IEEE 754 binary16"),
    "bf16": NumberFormat(16, 0, 0.0, "bf16", "bfloat16: 8-bit exponent, 7-bit mantissa"),
    "fp8": NumberFormat(
        8,
        0,
        0.0,
        "fp8",
        "FP8 E4M3 (Micikevicius et al. 2022, 'FP8 Formats for Deep Learning'); per-tensor scale as vLLM's "
        "fp8 W8A8 (docs.vllm.ai, features/quantization/fp8), left out",
    ),
    "int8": NumberFormat(8, 0, 0.0, "int8", "INT8 with per-channel scales (SmoothQuant, Xiao et al. 2023), left out"),
    "int4": NumberFormat(
        4,
        128,
        2.5,
        None,
        "INT4 group-quantised, group 128, one fp16 scale + one 4-bit zero point per group (AWQ, Lin et al. "
        "2024; GPTQ/AutoAWQ packing: qzeros packed 8 per int32)",
    ),
    "mxfp4": NumberFormat(
        4,
        32,
        1.0,
        "fp4",
        "OCP Microscaling Formats (MX) v1.0, sec. 5: FP4 E2M1 elements, blocks of 32, one 8-bit E8M0 scale",
    ),
    "nvfp4": NumberFormat(
        4,
        16,
        1.0,
        "fp4",
        "NVIDIA NVFP4 (Blackwell): FP4 E2M1 elements, blocks of 16, one FP8 E4M3 scale per block, plus one "
        "fp32 scale per tensor (left out)",
    ),
}

#: Bytes per element of every format (with its block scales), for the cost model.
FORMAT_BYTES: dict[str, float] = {name: f.bytes_per_element for name, f in FORMATS.items()}

#: Where a profile lacks the peak of a format, the legacy dtype fields (never a precision section,
#: which is refused instead) run at the next format it has: fp8 at the 16-bit rate, as vLLM runs fp8
#: weights on Ampere (weight-only, FP8 Marlin; docs.vllm.ai features/quantization/fp8).
PEAK_FALLBACK: dict[str, str] = {"fp4": "fp8", "fp8": "fp16", "int8": "fp16"}

#: Engines keep 16-bit the tensors whose quantisation hurts accuracy for little gain: vLLM's fp8 keeps the
#: lm_head (docs.vllm.ai features/quantization/fp8: "all Linear modules (except for the final lm_head)"),
#: MoE routers are built unquantised (vLLM's Mixtral gate: ReplicatedLinear(..., quant_config=None)).
_SIXTEEN = "16"  # a preset's 16-bit slot: the model's dtype when it is fp16 or bf16, else bf16

#: Presets: what serving engines run. Keys as in PrecisionSpec; "16" is the model's 16-bit dtype.
PRESETS: dict[str, dict[str, Any]] = {
    "bf16": {"all": "bf16"},
    "fp16": {"all": "fp16"},
    # fp8 W8A8 with fp8 KV: vLLM / SGLang / TensorRT-LLM fp8 checkpoints on Hopper (fp8 tensor cores,
    # dynamic per-token activation scales), kv_cache_dtype fp8; attention computes in 16 bits (the fp8
    # K/V converted on load, as FlashInfer and FlashAttention-2 do; `attention: fp8` for FA3's fp8 path).
    "fp8-w8a8": {"gemm": ("fp8", "fp8"), "kv_cache": "fp8"},
    # fp8 weights, 16-bit compute: vLLM's FP8 Marlin on GPUs without fp8 tensor cores (Ampere).
    "fp8-w8a16": {"gemm": ("fp8", _SIXTEEN)},
    # int8 W8A8 (SmoothQuant), int8 tensor cores.
    "int8-w8a8": {"gemm": ("int8", "int8")},
    # int4 weights, 16-bit compute (AWQ / GPTQ on Marlin or Machete kernels): dequantised in the GEMM.
    "w4a16": {"gemm": ("int4", _SIXTEEN)},
    # gpt-oss: the MoE experts in MXFP4, everything else bf16 (OpenAI gpt-oss model card); on Hopper the
    # experts compute in 16 bits (weights converted in the kernel).
    "mxfp4": {"expert_gemm": ("mxfp4", _SIXTEEN)},
    # NVFP4 W4A4 on Blackwell fp4 tensor cores (TensorRT-LLM / ModelOpt NVFP4 checkpoints): weights and
    # activations in NVFP4; KV cache 16-bit unless overridden.
    "nvfp4": {"gemm": ("nvfp4", "nvfp4")},
}


class GemmFormats(StrictModel):
    """A class of GEMMs: the weights' storage format and the format the tensor cores compute in
    (the GEMM's activation input is converted to it)."""

    storage: Format | None = Field(
        default=None, description="format of the stored weights (block scales counted); default: the preset's"
    )
    compute: Format | None = Field(
        default=None, description="format the tensor cores compute in (sets the peak); default: the preset's"
    )

    @model_validator(mode="before")
    @classmethod
    def _word(cls, value: Any) -> Any:
        return {"storage": value, "compute": value} if isinstance(value, str) else value


class AttentionFormats(StrictModel):
    """Attention's score / softmax / output compute (its storage is the KV cache's)."""

    compute: Format | None = Field(
        default=None, description="format of the score / softmax / output math; default: the preset's"
    )

    @model_validator(mode="before")
    @classmethod
    def _word(cls, value: Any) -> Any:
        return {"compute": value} if isinstance(value, str) else value


class KvCacheFormats(StrictModel):
    """The KV cache's storage format (read and written at its size)."""

    storage: Format | None = Field(default=None, description="format of cached keys and values")

    @model_validator(mode="before")
    @classmethod
    def _word(cls, value: Any) -> Any:
        return {"storage": value} if isinstance(value, str) else value


class CommunicationFormats(StrictModel):
    """The payload of collectives (TP all-reduce / all-gather, EP all-to-all, pipeline sends)."""

    payload: Format | None = Field(default=None, description="format of the bytes collectives move")
    dispatch: Format | None = Field(
        default=None,
        description="the EP all-to-all dispatch's payload, where it differs from `payload` (DeepEP's low-latency "
        "mode sends fp8 and combines in bf16); default: `payload`",
    )

    @model_validator(mode="before")
    @classmethod
    def _word(cls, value: Any) -> Any:
        return {"payload": value} if isinstance(value, str) else value


class PrecisionSpec(StrictModel):
    """`model.precision`: a preset name, or a mapping of a preset plus per-class overrides. Without a
    preset the entries override the legacy fields (dtype, weight_dtype, kv_cache_dtype)."""

    preset: str | None = Field(default=None, description="a preset: " + ", ".join(PRESETS))
    activations: Format | None = Field(
        default=None, description="the residual stream, norms, element-wise ops and GEMM outputs"
    )
    dense_gemm: GemmFormats = Field(
        default=GemmFormats(), description="attention projections, dense FFN (and MLA's absorbed GEMMs)"
    )
    expert_gemm: GemmFormats = Field(default=GemmFormats(), description="routed and shared experts")
    lm_head: GemmFormats = Field(default=GemmFormats(), description="the LM head (and the embedding's storage)")
    router: GemmFormats = Field(default=GemmFormats(), description="the MoE router (and the norms' weights)")
    attention: AttentionFormats = Field(default=AttentionFormats(), description="attention's compute format")
    kv_cache: KvCacheFormats = Field(default=KvCacheFormats(), description="the KV cache's storage format")
    communication: CommunicationFormats = Field(
        default=CommunicationFormats(), description="collective payloads (16-bit under fp8 GEMMs by default)"
    )

    @model_validator(mode="before")
    @classmethod
    def _word(cls, value: Any) -> Any:
        return {"preset": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> PrecisionSpec:
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"precision preset '{self.preset[:40]}' is unknown; presets: {', '.join(PRESETS)}")
        for cls_name in ("dense_gemm", "expert_gemm", "lm_head", "router"):
            compute = getattr(self, cls_name).compute
            if compute is not None and FORMATS[compute].peak_field is None:
                raise ValueError(
                    f"{cls_name}.compute = {compute}: {compute} is a storage format (no tensor core computes "
                    f"in it); set {cls_name}.compute to bf16 or fp16 (W4A16)"
                )
        if self.attention.compute is not None and FORMATS[self.attention.compute].peak_field is None:
            raise ValueError(f"attention.compute = {self.attention.compute} is a storage format; use bf16, fp16 or fp8")
        return self


@dataclass(frozen=True)
class GemmPrecision:
    storage: str
    compute: str

    @property
    def weight_bytes(self) -> float:
        return FORMAT_BYTES[self.storage]

    @property
    def input_bytes(self) -> float:
        """Bytes per element of the GEMM's activation input, in its compute format (with scales)."""
        return FORMAT_BYTES[self.compute]


#: The classes of a resolved precision, in the order the summary names them.
GEMM_CLASSES = ("dense_gemm", "expert_gemm", "lm_head", "router")


@dataclass(frozen=True)
class Precision:
    """The resolved formats of every class of operation (see PrecisionSpec for what each covers).

    `name`: the preset, "custom" (a section without preset), or "model dtypes" (the legacy fields alone);
    `explicit`: from a precision section, whose compute formats the hardware must have (checked
    when the scenario is loaded); the legacy fields fall back instead (PEAK_FALLBACK)."""

    name: str
    explicit: bool
    activations: str
    dense_gemm: GemmPrecision
    expert_gemm: GemmPrecision
    lm_head: GemmPrecision
    router: GemmPrecision
    attention: str
    kv_cache: str
    communication: str
    dispatch: str = ""  # the EP dispatch's payload; "" = communication's

    @property
    def activation_bytes(self) -> float:
        return FORMAT_BYTES[self.activations]

    @property
    def kv_bytes(self) -> float:
        return FORMAT_BYTES[self.kv_cache]

    @property
    def payload_bytes(self) -> float:
        return FORMAT_BYTES[self.communication]

    @property
    def dispatch_bytes(self) -> float:
        """Bytes per element the EP all-to-all dispatch moves (the combine moves payload_bytes)."""
        return FORMAT_BYTES[self.dispatch or self.communication]

    @property
    def attention_input_bytes(self) -> float:
        """Bytes per element of the queries the attention kernel reads (its compute format)."""
        return FORMAT_BYTES[self.attention]

    def compute_formats(self) -> dict[str, str]:
        """The compute format of every class that runs on the tensor cores, by field path."""
        out = {f"{c}.compute": getattr(self, c).compute for c in GEMM_CLASSES}
        out["attention.compute"] = self.attention
        return out

    @property
    def uniform(self) -> bool:
        """Every class in the one format (a plain `dtype` model): the summary then needs no line."""
        formats = {self.activations, self.attention, self.kv_cache, self.communication}
        for c in GEMM_CLASSES:
            formats |= {getattr(self, c).storage, getattr(self, c).compute}
        return len(formats) == 1

    def describe(self, fallbacks: dict[str, str] | None = None) -> str:
        """One line: 'precision: fp8-w8a8 (weights fp8, GEMMs fp8, LM head bf16, attention bf16, KV fp8,
        collectives bf16)'; a class is named when it differs from the dense GEMMs (LM head, router).

        `fallbacks`: compute format -> the format whose peak it runs at (hardware without its units)."""
        d, e = self.dense_gemm, self.expert_gemm
        if d == e:
            parts = [f"weights {d.storage}", f"GEMMs {d.compute}"]
        else:
            parts = [f"dense weights {d.storage}", f"dense GEMMs {d.compute}"]
            parts += [f"expert weights {e.storage}", f"expert GEMMs {e.compute}"]
        for label, g in (("LM head", self.lm_head), ("router", self.router)):
            if g != d and (label == "LM head" or g != self.lm_head):
                parts.append(f"{label} {g.storage}" + ("" if g.storage == g.compute else f"/{g.compute}"))
        parts += [f"attention {self.attention}", f"KV {self.kv_cache}", f"collectives {self.communication}"]
        if self.dispatch and self.dispatch != self.communication:
            parts.append(f"EP dispatch {self.dispatch}")
        if self.activations != self.communication:
            parts.append(f"activations {self.activations}")
        line = f"precision: {self.name} ({', '.join(parts)})"
        for fmt, used in sorted((fallbacks or {}).items()):
            line += f"; {fmt} GEMMs run at the {used} peak (the hardware has no {fmt} tensor cores)"
        return line


def _sixteen(dtype: str) -> str:
    return dtype if dtype in ("fp16", "bf16") else "bf16"


def _preset_values(preset: str, dtype: str) -> dict[str, Any]:
    """A preset as flat values: activations, the four GEMM classes, attention, kv_cache, communication."""
    sixteen = _sixteen(dtype)
    raw = PRESETS[preset]
    base = raw.get("all", sixteen)

    def fmt(x: str) -> str:
        return sixteen if x == _SIXTEEN else x

    out: dict[str, Any] = {
        "activations": base,
        "attention": base,
        "kv_cache": fmt(raw.get("kv_cache", base)),
        "communication": base,
    }
    for c in GEMM_CLASSES:
        out[c] = (base, base)
    if "gemm" in raw:
        out["dense_gemm"] = out["expert_gemm"] = tuple(fmt(x) for x in raw["gemm"])
    if "expert_gemm" in raw:
        out["expert_gemm"] = tuple(fmt(x) for x in raw["expert_gemm"])
    return out


@lru_cache(maxsize=256)
def resolve_precision(
    dtype: str, weight_dtype: str | None, kv_cache_dtype: str | None, spec: PrecisionSpec | None
) -> Precision:
    """The formats of every class: the legacy fields (dtype for activations, compute and
    collectives, weight_dtype for every weight, kv_cache_dtype for the KV cache), replaced entirely
    by a named preset, then by the section's entries one by one."""
    weights = weight_dtype or dtype
    values: dict[str, Any] = {
        "activations": dtype,
        "attention": dtype,
        "kv_cache": kv_cache_dtype or dtype,
        "communication": dtype,
        **{c: (weights, dtype) for c in GEMM_CLASSES},
    }
    name = "model dtypes"
    if spec is not None:
        name = "custom"
        if spec.preset is not None:
            values = _preset_values(spec.preset, dtype)
            name = spec.preset
        overridden = spec.activations is not None
        if spec.activations is not None:
            values["activations"] = spec.activations
        for c in GEMM_CLASSES:
            g: GemmFormats = getattr(spec, c)
            storage, compute = values[c]
            if g.storage is not None or g.compute is not None:
                values[c], overridden = (g.storage or storage, g.compute or compute), True
        for key, given in (
            ("attention", spec.attention.compute),
            ("kv_cache", spec.kv_cache.storage),
            ("communication", spec.communication.payload),
        ):
            if given is not None:
                values[key], overridden = given, True
        overridden = overridden or spec.communication.dispatch is not None
        if spec.preset is not None and overridden:
            name = f"{spec.preset} + overrides"
    return Precision(
        name=name,
        explicit=spec is not None,
        activations=values["activations"],
        attention=values["attention"],
        kv_cache=values["kv_cache"],
        communication=values["communication"],
        dispatch=(spec.communication.dispatch or "") if spec is not None else "",
        **{c: GemmPrecision(*values[c]) for c in GEMM_CLASSES},
    )
