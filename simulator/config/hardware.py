"""Config stage, hardware: typed GPU hardware profiles and the registry of `hardware_profiles/*.yaml`.

A profile holds datasheet figures (converted to SI units once, here) and the efficiency
constants the cost model applies to them. Nothing in this module knows about models or layouts.
"""

from __future__ import annotations

import bisect
import math
import os
from pathlib import Path
from typing import Annotated, Literal, cast

from pydantic import Field, ValidationError, model_validator

from simulator.config.checked import CheckedSpec, ResultClass, checks_for
from simulator.config.errors import ScenarioError, StrictModel, one_line_error
from simulator.config.precision import FORMATS, PEAK_FALLBACK
from simulator.files import read_yaml

DType = Literal["fp32", "fp16", "bf16", "fp8"]

#: Where the bundled profiles live (repository root / hardware_profiles).
#: `MOESIM_PROFILES_DIR` points elsewhere, e.g. for an installed (non-editable) package.
PROFILES_DIR = Path(
    os.environ.get("MOESIM_PROFILES_DIR", Path(__file__).resolve().parent.parent.parent / "hardware_profiles")
)


#: Bounds of a profile's figures (SI units) that keep every op time a finite float: a bandwidth of
#: 1e-300 bytes/s makes every time infinite, 1e300 FLOP/s makes them vanish. (A run that still
#: simulates absurdly long is refused by pipeline.MAX_SIMULATED_S.)
MIN_BYTES_PER_S, MAX_BYTES_PER_S = 1.0, 1e18
MIN_FLOPS_PER_S, MAX_FLOPS_PER_S = 1.0, 1e21
MIN_MEMORY_BYTES, MAX_MEMORY_BYTES = 1.0, 1e18
MAX_LATENCY_S = 1.0


class LinkSpec(StrictModel):
    """One class of link as seen by one GPU."""

    bytes_per_s: float = Field(ge=MIN_BYTES_PER_S, le=MAX_BYTES_PER_S, description="bandwidth per direction per GPU")
    latency_s: float = Field(ge=0.0, le=MAX_LATENCY_S, description="per-hop (per ring step) latency")
    efficiency: float = Field(gt=0.0, le=1.0, description="achieved / nominal bandwidth for large messages")


class PeakFlops(StrictModel):
    """Dense peak FLOP/s (int8: OP/s) per format on the matrix (tensor-core) units. A format the GPU
    has no units for is left out (None): fp8 before Hopper/Ada, fp4 (NVFP4, MXFP4) before Blackwell."""

    fp32: float = Field(ge=MIN_FLOPS_PER_S, le=MAX_FLOPS_PER_S, description="dense fp32 (TF32) peak")
    fp16: float = Field(ge=MIN_FLOPS_PER_S, le=MAX_FLOPS_PER_S, description="dense fp16 peak")
    bf16: float = Field(ge=MIN_FLOPS_PER_S, le=MAX_FLOPS_PER_S, description="dense bf16 peak")
    fp8: float | None = Field(
        default=None, ge=MIN_FLOPS_PER_S, le=MAX_FLOPS_PER_S, description="dense fp8 peak; absent: no fp8 units"
    )
    int8: float | None = Field(
        default=None, ge=MIN_FLOPS_PER_S, le=MAX_FLOPS_PER_S, description="dense int8 peak (OP/s); absent: none"
    )
    fp4: float | None = Field(
        default=None,
        ge=MIN_FLOPS_PER_S,
        le=MAX_FLOPS_PER_S,
        description="dense fp4 (NVFP4, MXFP4) peak; absent: no fp4 units (before Blackwell)",
    )


#: What op_time looks up in a calibration: eager floors per op class, seconds per byte per element-wise class.
EAGER_FLOOR_CLASSES = ("gemm", "grouped_gemm", "attention", "elementwise")
ELEMENTWISE_RATES = ("gelu", "silu_mul", "rmsnorm", "add", "copy")
CALIBRATION_TABLES = ("gemm", "grouped_gemm", "attention_prefill", "attention_decode")
#: A measured fraction of the roofline above this is a measurement error (slightly above 1 is timer noise).
MAX_FRACTION = 1.5
#: Kinds of no-kernel PyTorch calls a profile may time (calibration.host_calls; graph.PYTORCH_HOST_CALLS counts them).
HOST_CALL_KINDS = (
    "view",
    "transpose",
    "reshape",
    "unsqueeze",
    "squeeze",
    "slice",
    "slice_nd",
    "select",
    "chunk",
    "split",
    "split_per_part",
)
#: Kernel-launching PyTorch ops whose host dispatch beyond the 1-element add's a profile may time
#: (calibration.host_calls KERNEL_OP_FORMS; graph.PYTORCH_KERNEL_OPS counts them per node).
KERNEL_OP_KINDS = (
    "rms_norm",
    "softmax",
    "topk",
    "sum",
    "arange",
    "eq",
    "to",
    "cumsum",
    "sub_scalar",
    "gather",
    "lt_scalar",
    "mul_scalar",
    "mul_bool",
    "where",
    "repeat_interleave",
    "zeros",
    "zeros_like",
    "index",
    "index_select",
    "index_copy",
    "index_add",
    "cat",
    "argsort",
    "floordiv_scalar",
)


class Calibration(StrictModel):
    """Measured efficiency tables (written by `moesim calibrate`), used instead of the constants.

    Every "fraction" is GPU-side achieved time over the roofline time: roofline / measured, with
    roofline = max(FLOPs / dense peak, bytes / HBM peak). Calls that sat on the eager launch floor
    are left out (their GPU time is hidden); the floors themselves are kept per op class.
    """

    source: str = Field(description="what was measured, on which device and software")
    gemm_format: Literal["fp16", "bf16"] = Field(
        default="fp16",
        description="number format of the measured GEMMs and batched GEMMs; a GEMM computing in another "
        "format (fp8, int8, fp4) is priced from them by costs.format_transfer_gemm_s",
    )
    eager_floor_s: dict[str, float] = Field(
        description="shortest eager call per op class: gemm, grouped_gemm, attention, elementwise; and helper (the "
        "dispatch of a PyTorch helper op: index arithmetic, gathers, scatters, reductions) when measured "
        "(benchmarks/gpu_calibration.sh graph_kernels), else those take the elementwise floor"
    )
    dispatch_floor_s: float | None = Field(
        default=None,
        gt=0.0,
        le=MAX_LATENCY_S,
        description="the host's dispatch floor per eager call: median time of the smallest calls (calibration.fit)",
    )
    gemm: list[tuple[float, float, float, float]] = Field(description="rows [M, K, N, fraction of roofline]")
    grouped_gemm: list[tuple[float, float, float, float, float]] = Field(
        description="rows [experts, rows per expert, K, N, fraction of roofline]"
    )
    attention_prefill: list[tuple[float, float, float]] = Field(
        description="rows [head_dim, batch * heads * seq^2, fraction of the tensor peak]"
    )
    attention_decode: list[tuple[float, float, float]] = Field(
        description="rows [head_dim, K + V bytes, fraction of the HBM peak]"
    )
    host_bound: dict[str, list[tuple[float, ...]]] = Field(
        default={},
        description="per table, the calls found host-bound (calibration.fit.host_bound): rows [*shape, x, "
        "measured_s], left out of the table; an upper bound on the GPU time of that shape",
    )
    elementwise_s_per_byte: dict[str, float] = Field(
        description="seconds per byte of output per op class: gelu, silu_mul, rmsnorm, add, copy (index_add: input)"
    )
    rate_sources: dict[str, str] = Field(
        default={},
        description="where a kernel-level figure (of elementwise_s_per_byte or helper_kernel_s) comes from, "
        "when not its micro-benchmark",
    )
    helper_kernel_s: dict[str, float] = Field(
        default={},
        description="measured device seconds per call of latency-bound helper kernel classes (memset, "
        "radix_sort_pass, reduce_all: calibration.fit.helper_kernel_s, from a kernel_breakdown); they replace "
        "kernel_overhead_s for those kernels, eagerly and inside a CUDA graph",
    )
    topk_s_per_row: float = Field(ge=0.0, description="seconds per row of a top-k")
    host_call_s: dict[str, float] = Field(
        default={},
        description="host seconds per PyTorch call beyond the eager floor of the kernels it launches: a call that "
        "launches none (views, transposes, splits, basic indexing: HOST_CALL_KINDS; split: a fixed part plus "
        "split_per_part per output tensor) costs its whole time; a kernel op (KERNEL_OP_KINDS: index, scan and "
        "reduction ops) its dispatch beyond the 1-element add's; from calibration.host_calls; eager runs of "
        "runtime.framework pytorch add them to the launch thread (graph.PYTORCH_HOST_CALLS and PYTORCH_KERNEL_OPS "
        "count them per node); empty: not measured, none added",
    )

    @model_validator(mode="after")
    def _usable(self) -> Calibration:
        """What the interpolation and the op-time model need: every floor and per-byte rate they
        look up, non-empty tables of positive shapes (their logarithms are taken) and fractions in
        (0, MAX_FRACTION], and at most one point per shape (a series needs distinct x)."""
        for table, needed in (("eager_floor_s", EAGER_FLOOR_CLASSES), ("elementwise_s_per_byte", ELEMENTWISE_RATES)):
            values = getattr(self, table)
            missing = [k for k in needed if k not in values]
            if missing:
                raise ValueError(f"calibration.{table}: no entry for {missing[0]} (needs {', '.join(needed)})")
            bad = next((k for k, v in values.items() if not v > 0.0), None)
            if bad is not None:
                raise ValueError(f"calibration.{table}.{bad} = {values[bad]!r}: must be a positive number of seconds")
        for kind, value in self.host_call_s.items():
            if kind not in HOST_CALL_KINDS and kind not in KERNEL_OP_KINDS:
                raise ValueError(
                    f"calibration.host_call_s.{kind}: unknown kind (one of {', '.join(HOST_CALL_KINDS + KERNEL_OP_KINDS)})"
                )
            if not 0.0 <= value <= MAX_LATENCY_S:
                raise ValueError(f"calibration.host_call_s.{kind} = {value!r}: must be seconds in [0, {MAX_LATENCY_S}]")
        for table in CALIBRATION_TABLES:
            rows = getattr(self, table)
            if not rows:
                raise ValueError(
                    f"calibration.{table}: empty table; refit with `moesim calibrate` or remove calibration:"
                )
            seen: set[tuple] = set()
            for i, row in enumerate(rows):
                *shape, fraction = row
                if not all(x > 0.0 for x in shape):
                    raise ValueError(f"calibration.{table}[{i}]: shape {list(shape)} must be positive")
                if not 0.0 < fraction <= MAX_FRACTION:
                    raise ValueError(
                        f"calibration.{table}[{i}]: fraction {fraction!r} must be in (0, {MAX_FRACTION}] "
                        "(achieved over roofline time)"
                    )
                if tuple(shape) in seen:
                    raise ValueError(f"calibration.{table}[{i}]: shape {list(shape)} is given twice")
                seen.add(tuple(shape))
        return self


#: Every figure of a profile that the cost model reads (dotted paths), each of which a shipped profile
#: sources in `figure_sources` when it has it (the OPTIONAL_FIGURES may be absent: no such units).
PROFILE_FIGURES = (
    "memory_bytes",
    "device_memory_bytes",
    "peak_flops_per_s.fp32",
    "peak_flops_per_s.fp16",
    "peak_flops_per_s.bf16",
    "peak_flops_per_s.fp8",
    "peak_flops_per_s.int8",
    "peak_flops_per_s.fp4",
    "vector_flops_per_s",
    "hbm_bytes_per_s",
    "compute_efficiency",
    "gemm_efficiency.bf16",
    "gemm_efficiency.fp8",
    "gemm_efficiency.fp4",
    "memory_efficiency",
    "kernel_overhead_s",
    "host_launch_s",
    "graph_launch_s",
    "gpus_per_node",
    "intra_node.bytes_per_s",
    "intra_node.latency_s",
    "intra_node.efficiency",
    "inter_node.bytes_per_s",
    "inter_node.latency_s",
    "inter_node.efficiency",
)
#: Peaks of formats a GPU may have no tensor cores for (left out of the profile then), and the device total the
#: driver reports, where no source gives it (memory_bytes stands in: HardwareProfile.engine_memory_bytes).
OPTIONAL_FIGURES = (
    "peak_flops_per_s.fp8",
    "peak_flops_per_s.int8",
    "peak_flops_per_s.fp4",
    "device_memory_bytes",
    "gemm_efficiency.bf16",
    "gemm_efficiency.fp8",
    "gemm_efficiency.fp4",
)
#: The figures that make a profile calibrated when measured: the efficiencies and the host's dispatch.
EFFICIENCY_FIGURES = ("compute_efficiency", "memory_efficiency", "host_launch_s")

#: What a result on an uncalibrated profile (datasheet peaks x assumed efficiencies) should expect, derived
#: by simulator.calibration.status from the H200 measurements (tests/test_calibration_status.py recomputes
#: them): the H200's micro-benchmarks priced by its datasheet profile without the calibration tables
#: (113 GEMM, batched-GEMM and attention calls) and the dev cases (validation/dev_cases.yaml) run on it.
UNCALIBRATED_KERNEL_MEDIAN_ERROR = 0.085
UNCALIBRATED_KERNEL_P90_ERROR = 0.24
UNCALIBRATED_E2E_MEDIAN_ERROR = 0.13
UNCALIBRATED_E2E_MAX_ERROR = 0.46

FigureKind = Literal["measured", "transferred", "datasheet", "assumed", "unknown"]
CalibrationStatus = Literal["calibrated", "transferred", "uncalibrated"]


class FigureSource(StrictModel):
    """Where one figure of a profile comes from.

    measured: on this GPU (source: the measurement file and what in it); transferred: measured on a
    GPU of the same silicon (source names it); datasheet: a vendor figure (source: URL and document
    name), used at `assumed_efficiency` of it where the model applies one; assumed: no source, the
    reason in `note`; unknown: not published, the value is a stated stand-in (`note` says which)."""

    kind: FigureKind = Field(description="measured, transferred, datasheet, assumed or unknown")
    source: str = Field(default="", description="the measurement file, or the datasheet's URL and document")
    assumed_efficiency: float | None = Field(
        default=None, gt=0.0, le=1.0, description="the fraction of a datasheet figure the model assumes reached"
    )
    note: str = Field(default="", description="what the figure is, or why it is assumed")

    @model_validator(mode="after")
    def _sourced(self) -> FigureSource:
        if self.kind in ("measured", "transferred", "datasheet") and not self.source.strip():
            raise ValueError(f"a {self.kind} figure needs its source (file and measurement, or URL and document)")
        if self.kind in ("assumed", "unknown") and not self.note.strip():
            raise ValueError(f"an {self.kind} figure needs a note saying what is assumed and why")
        return self


class HardwareProfile(StrictModel):
    """A GPU and its links. Figures are SI: bytes, seconds, FLOP/s, bytes/s."""

    name: str = Field(description="the name scenarios use (the file's stem)")
    description: str = Field(default="", description="the GPU and its links, in words")
    memory_bytes: float = Field(
        ge=MIN_MEMORY_BYTES, le=MAX_MEMORY_BYTES, description="memory per GPU (decimal bytes, as the datasheet)"
    )
    device_memory_bytes: float | None = Field(
        default=None,
        ge=MIN_MEMORY_BYTES,
        le=MAX_MEMORY_BYTES,
        description="the device's total as the CUDA driver reports it (cudaMemGetInfo, torch.cuda.mem_get_info()[1]), "
        "which serving engines take their memory shares of (vLLM gpu_memory_utilization, SGLang mem_fraction_static, "
        "TensorRT-LLM's KV fraction of free memory): the serving KV pool is sized from it; absent: memory_bytes. "
        "A scenario that overrides memory_bytes alone drops it",
    )
    peak_flops_per_s: PeakFlops = Field(description="dense tensor-core peak per dtype")
    vector_flops_per_s: float = Field(
        ge=MIN_FLOPS_PER_S, le=MAX_FLOPS_PER_S, description="non-tensor-core fp32 FLOP/s (element-wise ops)"
    )
    hbm_bytes_per_s: float = Field(ge=MIN_BYTES_PER_S, le=MAX_BYTES_PER_S, description="peak memory bandwidth")
    compute_efficiency: float = Field(
        gt=0.0, le=1.0, description="achieved / peak FLOP/s of the roofline (without calibration tables)"
    )
    gemm_efficiency: dict[Literal["bf16", "fp8", "fp4"], Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default={},
        description="achieved / peak FLOP/s of compute-bound GEMMs computing in a format, from public GEMM "
        "micro-benchmarks of this GPU (without calibration tables; fp16 GEMMs take bf16's); a format not given: "
        "compute_efficiency",
    )
    memory_efficiency: float = Field(
        gt=0.0, le=1.0, description="achieved / peak memory bandwidth of the roofline (without calibration tables)"
    )
    kernel_overhead_s: float = Field(
        ge=0.0, le=MAX_LATENCY_S, description="GPU-side fixed cost per kernel (ramp-up, tail)"
    )
    host_launch_s: float = Field(ge=0.0, le=MAX_LATENCY_S, description="host cost to launch one kernel eagerly")
    graph_launch_s: float = Field(ge=0.0, le=MAX_LATENCY_S, description="host cost to launch one captured CUDA graph")
    gpus_per_node: int = Field(ge=1, le=10**5, description="GPUs sharing the intra-node fabric (NVLink)")
    intra_node: LinkSpec = Field(description="the link between GPUs of a node (NVLink / NVSwitch)")
    inter_node: LinkSpec = Field(description="the link across nodes (each GPU's NIC)")
    calibration: Calibration | None = Field(
        default=None, description="measured efficiency tables (`moesim calibrate`), used instead of the constants"
    )
    figure_sources: dict[str, FigureSource] = Field(
        default={},
        description="per figure of the profile, where it comes from (measured, transferred, datasheet with its "
        "URL and assumed efficiency, assumed, unknown); shipped profiles source every figure",
    )
    checked: tuple[CheckedSpec, ...] = Field(
        default=(),
        description="published runs the profile was checked on end to end (`moesim validate`); empty: none",
    )
    price_per_gpu_hour_usd: float | None = Field(
        default=None,
        gt=0.0,
        le=1e6,
        description="on-demand US dollars per GPU-hour for the search's cost objective (moesim compare --objective "
        "cost); a profile that sets it names the source and date; default: give it with --price",
    )

    @model_validator(mode="after")
    def _consistent(self) -> HardwareProfile:
        unknown = next((k for k in self.figure_sources if k not in PROFILE_FIGURES), None)
        if unknown is not None:
            raise ValueError(
                f"figure_sources.{unknown}: not a figure of a profile (one of {', '.join(PROFILE_FIGURES)})"
            )
        device = self.device_memory_bytes
        if device is not None and not self.memory_bytes * 0.9 <= device <= self.memory_bytes * 1.2:
            raise ValueError(
                f"device_memory_bytes = {device:.4g} is not within -10 % / +20 % of memory_bytes = "
                f"{self.memory_bytes:.4g}: give the driver's total for this GPU in bytes, or remove it"
            )
        fp8 = self.peak_flops_per_s.fp8
        if fp8 is not None and fp8 < self.peak_flops_per_s.fp16:
            raise ValueError("peak_flops_per_s.fp8 is below fp16: the figures look swapped")
        if self.inter_node.bytes_per_s > self.intra_node.bytes_per_s * 4:
            raise ValueError(
                "inter_node.bytes_per_s is far above intra_node.bytes_per_s: check the units (bytes/s per direction)"
            )
        if self.vector_flops_per_s > self.peak_flops_per_s.fp16:
            raise ValueError(
                "vector_flops_per_s is above peak_flops_per_s.fp16: the vector units cannot outrun the tensor cores"
            )
        return self

    def peak_for(self, fmt: str) -> float:
        """Dense tensor-core peak of GEMMs computing in `fmt` (a dtype or precision format); where the
        profile has no units for it, the peak of the next format it runs (peak_used)."""
        return float(getattr(self.peak_flops_per_s, self.peak_used(fmt)))

    def gemm_table_fraction(self, experts: float, rows: float, k: float, n: float) -> float:
        """The calibrated roofline fraction of a GEMM (`experts` > 1: a grouped GEMM of that many
        matrices) of `rows` rows per matrix, from the profile's measured tables (gemm_fraction)."""
        cal = self.calibration
        assert cal is not None, "gemm_table_fraction needs a calibrated profile"
        roofline = (self.peak_for(cal.gemm_format), self.hbm_bytes_per_s, FORMATS[cal.gemm_format].bytes_per_element)
        if experts > 1:
            return gemm_fraction(cal.grouped_gemm, (experts, k, n), rows, *roofline)
        return gemm_fraction(cal.gemm, (k, n), rows, *roofline)

    def gemm_efficiency_for(self, fmt: str) -> float:
        """The roofline fraction a GEMM computing in `fmt` reaches without calibration tables: the profile's
        gemm_efficiency for the peak it runs at (fp16 takes bf16's), else compute_efficiency."""
        field = self.peak_used(fmt)
        by_field = cast(dict[str, float], self.gemm_efficiency)  # keyed by peak field
        return by_field.get("bf16" if field == "fp16" else field, self.compute_efficiency)

    def has_peak(self, fmt: str) -> bool:
        """Whether the profile has tensor cores that compute in `fmt`."""
        field = FORMATS[fmt].peak_field
        return field is not None and getattr(self.peak_flops_per_s, field) is not None

    def peak_used(self, fmt: str) -> str:
        """The peak field GEMMs in `fmt` run at: the format's own, else the next one down the
        fallback chain (fp4 -> fp8 -> fp16, int8 -> fp16) that the profile has."""
        field = FORMATS[fmt].peak_field or "fp16"
        while getattr(self.peak_flops_per_s, field) is None:
            field = PEAK_FALLBACK[field]
        return field

    @property
    def calibration_status(self) -> CalibrationStatus:
        """calibrated: measured tables and efficiencies of this GPU; transferred: measured on a GPU of
        the same silicon; uncalibrated: datasheet figures times assumed efficiencies."""
        if self.calibration is None:
            return "uncalibrated"
        kinds = {self.figure_sources[f].kind for f in EFFICIENCY_FIGURES if f in self.figure_sources}
        return "transferred" if "transferred" in kinds else "calibrated"

    @property
    def engine_memory_bytes(self) -> float:
        """The memory a serving engine sizes its KV pool from: the driver's total (device_memory_bytes) where the
        profile has it, else memory_bytes."""
        return self.device_memory_bytes if self.device_memory_bytes is not None else self.memory_bytes

    def figures(self) -> tuple[str, ...]:
        """The figures of PROFILE_FIGURES this profile has (an optional one it lacks is left out)."""
        return tuple(f for f in PROFILE_FIGURES if f not in OPTIONAL_FIGURES or self._has_figure(f))

    def _has_figure(self, figure: str) -> bool:
        if figure == "device_memory_bytes":
            return self.device_memory_bytes is not None
        if figure.startswith("gemm_efficiency."):
            return figure.split(".", 1)[1] in self.gemm_efficiency
        return getattr(self.peak_flops_per_s, figure.rsplit(".", 1)[1]) is not None

    def figures_by_kind(self) -> dict[str, list[str]]:
        """The sourced figures grouped by kind (measured, transferred, datasheet, assumed, unknown)."""
        grouped: dict[str, list[str]] = {}
        for figure in self.figures():
            source = self.figure_sources.get(figure)
            grouped.setdefault(source.kind if source else "unsourced", []).append(figure)
        return grouped


def calibration_note(profile: HardwareProfile, result: ResultClass | None = None) -> str | None:
    """One line for every output of a result on `profile`: None when it is calibrated, else what it
    rests on and what error to expect (see UNCALIBRATED_KERNEL_MEDIAN_ERROR for how that is derived), with the
    profile's end-to-end checks on deployments of the result's class (the scenario's result_class; None: all)."""
    status = profile.calibration_status
    if status == "calibrated":
        return None
    checks = checks_for(profile.checked, result)
    checked = f"; checked on it end to end against {'; '.join(c.text() for c in checks)}" if checks else ""
    if status == "transferred":
        return (
            f"hardware {profile.name} is calibrated by transfer: its tables were measured on another GPU of the "
            "same silicon (figure_sources says which), not on it; expect the calibrated error plus what differs "
            f"between the two (memory, clocks), which no measurement here bounds{checked}"
        )
    return (
        f"hardware {profile.name} is uncalibrated (datasheet peaks x assumed efficiencies): expect errors of "
        f"about {100 * UNCALIBRATED_KERNEL_P90_ERROR:.0f}% per kernel (90th percentile; median "
        f"{100 * UNCALIBRATED_KERNEL_MEDIAN_ERROR:.1f}%) and {100 * UNCALIBRATED_E2E_MEDIAN_ERROR:.0f}% end to end "
        f"(median; up to {100 * UNCALIBRATED_E2E_MAX_ERROR:.0f}%), as this model shows on the measured H200, "
        f"more where the assumed efficiencies do not hold (docs/calibration-status.md){checked}"
    )


# ---------------------------------------------------------------------------------------------
# Efficiency model: interpolation of the measured tables


def series_interpolate(points: list[tuple], key: tuple[float, ...], x: float) -> float:
    """Interpolate y at (key, x) from points (*key, x, y).

    Points are grouped into series by key. Within a series, y is interpolated linearly in log x
    and held constant beyond its ends (no extrapolated trends). Across series, the values are
    blended by inverse squared distance in log-key space; an exact key match is used alone.
    """
    return _interpolator(points)(tuple(key), x)


def gemm_roofline_s(
    key: tuple[float, ...], rows: float, peak_flops_per_s: float, hbm_bytes_per_s: float, element_bytes: float
) -> float:
    """Roofline time of one calibration-table GEMM: key (K, N) or (E, K, N), `rows` rows per matrix,
    every operand and the output at `element_bytes` (the table's format)."""
    e, k, n = key if len(key) == 3 else (1.0, *key)
    flops = 2.0 * e * rows * k * n
    bytes_moved = e * (rows * k + k * n + rows * n) * element_bytes
    return max(flops / peak_flops_per_s, bytes_moved / hbm_bytes_per_s)


def gemm_fraction(
    points: list[tuple],
    key: tuple[float, ...],
    rows: float,
    peak_flops_per_s: float,
    hbm_bytes_per_s: float,
    element_bytes: float,
) -> float:
    """Roofline fraction of a GEMM table (`gemm` or `grouped_gemm` rows) at (key, rows): as
    series_interpolate, except below a series' smallest measured row count. There a GEMM kernel does
    not get faster in proportion to its work: it keeps a fixed part (device launch, prologue, the
    last wave, the epilogue), so its time follows the line through the series' two smallest
    measurements, t(x) = t0 + (x - x0) (t1 - t0) / (x1 - x0), times from the table's fractions and
    the table format's roofline (gemm_roofline_s); never faster than the series' fraction at x0 (the
    rule without a fixed part). A series of one point, or whose time does not grow from its first
    point to its second, keeps its fraction. Example (H200, K 512,
    N 1024): 31.2 us at 16,384 rows and 112.6 us at 65,536 give 4.09 us + 1.66 ns per row, 10.9 us
    at 4,096 rows where a constant fraction gives 7.8 us."""
    roofline = (peak_flops_per_s, hbm_bytes_per_s, element_bytes)
    return _interpolator(points).lookup(tuple(key), rows, roofline)


def attention_fixed_part_s(
    points: list[tuple],
    key: tuple[float, ...],
    size: float,
    decode: bool,
    peak_flops_per_s: float,
    hbm_bytes_per_s: float,
) -> float:
    """Seconds a flash-attention kernel of table size `size` (prefill: score elements, b h q kv; decode: the
    K and V bytes read) takes beyond its constant-fraction time (size / measured fraction, at the table's
    nearest measured size): below a series' smallest measured size x0 the kernel keeps a fixed part, as
    gemm_fraction's GEMMs do. Its time follows the line through the series' two smallest measurements,
    t(x) = a + (t0 - a) x / x0 with a the line's value at 0, which is the constant-fraction time t0 x / x0
    plus a (1 - x / x0): that second term is returned (0 at and above x0, for a series of one point, or
    when the line has no positive fixed part). Series times are the table format's rooflines over their
    fractions: decode x / HBM rate, prefill 2 d x FLOPs (d the series' head_dim) over the peak. Across
    series, the terms blend as series_interpolate blends values. Example (H200, decode, head_dim 128):
    537 MB read at 0.887 of the HBM peak (126.1 us) and 2.15 GB at 0.931 (480.6 us) give a = 7.91 us;
    16.8 MB (32 sequences of 1,024 tokens, one fp16 KV head) take 3.94 us + 7.91 x (1 - 16.8 / 537) us =
    11.6 us."""
    return _interpolator(points).fixed_part_s(tuple(key), size, decode, peak_flops_per_s, hbm_bytes_per_s)


def _first_line(pts: list[tuple[float, float]], roofline_s) -> tuple[float, float, float] | None:
    """The fixed-part rule's line for one series (pts sorted by x, at least two): through its two smallest
    measurements, their times the roofline (roofline_s(x)) over their fractions, as (x0, t0, slope); None
    when the time does not grow from the first point to the second (no fixed part to read off)."""
    (x0, f0), (x1, f1) = pts[0], pts[1]
    t0, t1 = roofline_s(x0) / f0, roofline_s(x1) / f1
    return (x0, t0, (t1 - t0) / (x1 - x0)) if t1 > t0 else None


def _fixed_part_fraction(
    key: tuple, x: float, pts: list[tuple[float, float]], roofline: tuple[float, float, float]
) -> float:
    """gemm_fraction's value for one series at x below its first point x0 (pts sorted by x)."""

    def roofline_s(rows: float) -> float:
        return gemm_roofline_s(key, rows, *roofline)

    f0, line = pts[0][1], _first_line(pts, roofline_s)
    if line is None:
        return f0
    x0, t0, slope = line
    line_s = t0 + (x - x0) * slope
    return f0 if line_s <= 0.0 else min(f0, roofline_s(x) / line_s)


class _SeriesInterpolator:
    """series_interpolate over one table, with the series grouped and logged once and every
    answer memoised (a DAG asks for the same few shapes tens of thousands of times)."""

    def __init__(self, points: list[tuple]):
        grouped: dict[tuple, list[tuple[float, float]]] = {}
        for *k, px, py in points:
            grouped.setdefault(tuple(k), []).append((px, py))
        if not grouped:
            raise ValueError("no calibration points")
        self.series = []
        for key, pts in grouped.items():
            pts.sort()
            self.series.append(
                (key, [math.log(k_i) for k_i in key], [math.log(p[0]) for p in pts], [p[1] for p in pts], pts)
            )
        self.memo: dict[tuple, float] = {}

    def __call__(self, key: tuple, x: float) -> float:
        return self.lookup(key, x, None)

    def fixed_part_s(self, key: tuple, x: float, decode: bool, peak: float, hbm: float) -> float:
        """attention_fixed_part_s over this table."""

        def series_value(series: tuple) -> float:
            skey, _logk, _xs, _ys, pts = series
            if x >= pts[0][0] or len(pts) < 2:
                return 0.0
            unit_s = 1.0 / hbm if decode else 2.0 * skey[0] / peak  # roofline seconds per unit of size
            line = _first_line(pts, lambda size: size * unit_s)
            if line is None:
                return 0.0
            x0, t0, slope = line
            fixed_s = t0 - x0 * slope  # the line's value at size 0
            return fixed_s * (1.0 - x / x0) if fixed_s > 0.0 else 0.0

        return self._blend(key, (key, x, ("fixed_part", decode, peak, hbm)), series_value)

    def lookup(self, key: tuple, x: float, roofline: tuple[float, float, float] | None) -> float:
        """The interpolated value; with a roofline (gemm_fraction), the fixed part below each series'
        first point."""
        hit = self.memo.get((key, x, roofline))  # the hot path: a DAG asks for the same shapes again and again
        if hit is not None:
            return hit
        lx = math.log(max(x, 1e-30))

        def series_value(series: tuple) -> float:
            skey, _logk, xs, ys, pts = series
            if roofline is not None and x < pts[0][0] and len(pts) >= 2:
                return _fixed_part_fraction(skey, x, pts, roofline)
            return _interp(lx, xs, ys)

        return self._blend(key, (key, x, roofline), series_value)

    def _blend(self, key: tuple, memo_key: tuple, series_value) -> float:
        """series_value of the series whose key is `key`, else the values of all series blended by inverse
        squared distance in log-key space; memoised under memo_key."""
        hit = self.memo.get(memo_key)
        if hit is not None:
            return hit
        lkey = [math.log(k) for k in key]
        weights, values, value = [], [], None
        for series in self.series:
            distance = sum((a - b) ** 2 for a, b in zip(series[1], lkey))
            if distance < 1e-18:
                value = series_value(series)
                break
            weights.append(1.0 / distance)
            values.append(series_value(series))
        if value is None:
            value = sum(w * v for w, v in zip(weights, values)) / sum(weights)
        self.memo[memo_key] = value
        return value


_INTERPOLATORS: dict[int, tuple[list, _SeriesInterpolator]] = {}


def _interpolator(points: list[tuple]) -> _SeriesInterpolator:
    cached = _INTERPOLATORS.get(id(points))
    if cached is None or cached[0] is not points:  # ids are reused once a table is freed
        cached = (points, _SeriesInterpolator(points))
        _INTERPOLATORS[id(points)] = cached
    return cached[1]


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x) - 1
    lam = (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] + lam * (ys[i + 1] - ys[i])


class ProfileError(ScenarioError):
    """A hardware profile could not be found, read or validated (one line)."""


class ProfileInvalid(ProfileError):
    """A profile that was read but breaks a rule; the message is `hardware (NAME): field: what is wrong`,
    and `errors` holds pydantic's list of every error found."""

    def __init__(self, message: str, errors: list | None = None):
        super().__init__(message)
        self.errors = errors or []


def available_profiles(directory: Path | None = None) -> list[str]:
    """Names of the bundled profiles (file stems), sorted."""
    directory = directory or PROFILES_DIR
    return sorted(p.stem for p in directory.glob("*.yaml"))


def profile_path(name_or_path: str, directory: Path | None = None) -> Path:
    """The YAML file of a profile, by registry name or by path to a YAML file."""
    directory = directory or PROFILES_DIR
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        names = ", ".join(available_profiles(directory)) or "(none found)"
        raise ProfileError(f"hardware profile '{name_or_path}' not found; available: {names}")
    return path


def load_profile_dict(name_or_path: str, directory: Path | None = None) -> dict:
    """The raw mapping of a profile, by registry name or by path to a YAML file."""
    return _read_profile_dict(profile_path(name_or_path, directory))


def _read_profile_dict(path: Path) -> dict:
    data = read_yaml(path, f"hardware profile {path}", "profile", ProfileError)
    if not isinstance(data, dict):
        raise ProfileError(f"hardware profile {path}: expected a mapping of fields")
    return data


#: Validated profiles by (resolved file, mtime, size, overrides). A sweep resolves the same profile
#: a few times per layout; parsing the YAML (the calibration tables are long) cost more than some
#: layouts' simulation. Sharing one object is safe: profiles are frozen and nothing mutates their
#: tables; it also lets `series_interpolate` keep its memo across layouts.
_PROFILES: dict[tuple, HardwareProfile] = {}
_PROFILES_MAX = 64


def load_profile(name_or_path: str, overrides: dict | None = None, directory: Path | None = None) -> HardwareProfile:
    """Load and validate a profile, applying single-field overrides (nested keys as dicts).
    Cached per file version (path, mtime, size) and overrides; errors are not cached."""
    path = profile_path(name_or_path, directory)
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, _frozen(overrides or {}))
        hash(key)
    except (OSError, TypeError):  # unreadable (read_yaml says why) or an unhashable override: no cache
        key = None
    cached = _PROFILES.get(key) if key is not None else None
    if cached is not None:
        return cached
    data = _read_profile_dict(path)
    if overrides:
        data = _deep_merge(data, overrides)
        if "memory_bytes" in overrides and "device_memory_bytes" not in overrides:
            # another memory size is another device: the base GPU's driver total no longer applies
            data.pop("device_memory_bytes", None)
            if isinstance(data.get("figure_sources"), dict):
                data["figure_sources"] = {k: v for k, v in data["figure_sources"].items() if k != "device_memory_bytes"}
    try:
        profile = HardwareProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileInvalid(
            f"hardware ({name_or_path}): {one_line_error(exc, HardwareProfile)}", exc.errors()
        ) from None
    if key is not None:
        if len(_PROFILES) >= _PROFILES_MAX:
            _PROFILES.clear()
        _PROFILES[key] = profile
    return profile


def _frozen(value) -> tuple:
    """A hashable image of an override value that tells 1, 1.0 and True apart (they hash equal)."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), type(k).__name__, _frozen(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_frozen(v) for v in value))
    return (type(value).__name__, value)


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
