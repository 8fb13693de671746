"""What-if stage, knobs: what one search may change in a scenario, over which physical range, and how.

A knob has a space of values (ordered: searched by bisection when the figure moves monotonically,
else by enumeration; discrete: enumerated) and makes, for a value, the scenario variants to
simulate: one for most knobs, every candidate layout for `num_gpus` (the best of them counts).
Every variant is a validated scenario (config.parse_scenario, or config.with_layout for a layout);
nothing here simulates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from simulator.config import (
    DTYPE_BYTES,
    MAX_TOKENS,
    ParallelSpec,
    Scenario,
    ScenarioError,
    divisors,
    parse_scenario,
    resolve_hardware,
    with_layout,
)
from simulator.config.hardware import available_profiles
from simulator.sweep import enumerate_layouts, screen_memory

#: Physical ranges (docs/whatif.md): a batch of at most 4096 sequences, prompts of at most 2^20 tokens,
#: outputs of at most 2^14, a hardware figure at most 100x its profile's; at most 64 GPUs, because each
#: count is a sweep of its layouts (16 to 100 on the seed: 64 GPUs cost ~10 s on 2 cores, 1024 about 50 s).
MAX_BATCH = 4096
MAX_INPUT_TOKENS = 2**20
MAX_OUTPUT_TOKENS = 2**14
MAX_GPUS = 64
MAX_SCALE = 100.0
#: Microbatches beyond this cost as many passes each and only add per-pass overheads on the seed's scale.
MAX_MICROBATCHES = 16
#: Scale factors are searched on a geometric grid of this ratio: the tolerance is 1 %.
SCALE_STEP = 1.01
DTYPES = ("fp32", "fp16", "bf16", "fp8")


@dataclass(frozen=True)
class Space:
    """The values a knob takes for one scenario. `values` is sorted for an ordered knob and holds
    `current`; `tolerance` says how close a bisection lands (one grid step)."""

    values: Sequence[Any]
    current: Any
    ordered: bool
    range_text: str
    tolerance: str


@dataclass(frozen=True)
class Knob:
    """One knob: its name (for --knobs), what it is in words, its space and its variants."""

    name: str
    words: str
    space: Callable[[Scenario], Space]
    variants: Callable[[Scenario, Any], list[Scenario]]
    fmt: Callable[[Any], str]
    explicit_only: bool = False  # searched only when --knobs names it (top_k: it changes the model)


# ---------------------------------------------------------------------------------------------
# Variants


def rebuilt(scenario: Scenario, change: Callable[[dict], None]) -> Scenario:
    """The scenario with `change` applied to its mapping, validated as a loaded scenario is (the
    serving section and the declared figures left out: a run's figures do not read them)."""
    data = scenario.model_dump(exclude_none=True)
    data.pop("serving", None)
    data.pop("declared", None)
    change(data)
    return parse_scenario(data, scenario.name)


def _set(section: str, key: str, value: Any) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data[section][key] = value

    return change


def _fits(scenario: Scenario) -> bool:
    """Weights + KV cache + reserve fit the GPU (sweep.screen_memory's closed form)."""
    return screen_memory(scenario, resolve_hardware(scenario).memory_bytes) is None


def _largest_fitting(scenario: Scenario, grid: Sequence[int], make: Callable[[int], Scenario]) -> int:
    """The largest grid value whose variant fits memory (memory grows with it), at least the current."""
    lo, hi = 0, len(grid) - 1
    if _fits(make(grid[hi])):
        return grid[hi]
    while hi - lo > 1:  # grid[lo] fits (or is the first), grid[hi] does not
        mid = (lo + hi) // 2
        if _fits(make(grid[mid])):
            lo = mid
        else:
            hi = mid
    return grid[lo]


def _int_space(scenario: Scenario, current: int, step: int, top: int, make) -> Space:
    grid = range(step, max(top, step) + 1, step)
    limit = _largest_fitting(scenario, grid, make)
    why = f"weights + KV cache fit {resolve_hardware(scenario).memory_bytes / 1e9:.4g} GB"
    note = f" ({why} up to {limit})" if limit < grid[-1] else ""
    values = range(step, max(limit, current) + 1, step)
    tolerance = "exact" if step == 1 else f"exact (multiples of {step})"
    return Space(values, current, True, f"{step}..{values[-1]}{note}", tolerance)


def _batch_space(s: Scenario) -> Space:
    w, p = s.workload, s.parallel
    top = min(MAX_BATCH, MAX_TOKENS // (w.input_len_tokens + w.output_len_tokens))
    return _int_space(s, w.batch_size, p.dp * p.microbatches, top, lambda v: _workload_int("batch_size", s, v)[0])


def _length_space(key: str, other: str, cap: int, s: Scenario) -> Space:
    """Workload length `key` (input or output tokens) from 1 up to `cap`, and up to what MAX_TOKENS leaves
    the batch once the `other` length is taken."""
    w = s.workload
    top = min(cap, MAX_TOKENS // w.batch_size - getattr(w, other))
    return _int_space(s, getattr(w, key), 1, top, lambda v: _workload_int(key, s, v)[0])


def _workload_int(key: str, s: Scenario, value: int) -> list[Scenario]:
    return [rebuilt(s, _set("workload", key, int(value)))]


def _microbatch_space(s: Scenario) -> Space:
    p = s.parallel
    per_rank = s.workload.batch_size // p.dp
    values = [
        m
        for m in divisors(per_rank)
        if (m <= MAX_MICROBATCHES or m == p.microbatches) and _layout_ok(s, p.model_copy(update={"microbatches": m}))
    ]
    return Space(values, p.microbatches, True, f"divisors of batch / dp = {per_rank} up to {MAX_MICROBATCHES}", "exact")


def _layout_ok(s: Scenario, layout: ParallelSpec) -> bool:
    try:
        with_layout(s, layout)
    except ScenarioError:
        return False
    return True


def _microbatches(s: Scenario, value: int) -> list[Scenario]:
    return [with_layout(s, s.parallel.model_copy(update={"microbatches": int(value)}))]


def gpu_count_layouts(s: Scenario, n: int) -> list[ParallelSpec]:
    """The layouts `num_gpus` tries on n GPUs: the compare enumeration (sweep.enumerate_layouts) with
    microbatches 1 and the scenario's own, and without expert tensor parallelism (etp = 1), which keeps
    a count's sweep to tens of layouts; the scenario's own layout on its own count."""
    own = s.parallel.without_split()
    layouts = [
        layout for layout in enumerate_layouts(s, n, sorted({1, own.microbatches})) if layout.etp == 1 or layout == own
    ]
    return layouts


def _gpu_space(s: Scenario) -> Space:
    gpn = s.cluster.gpus_per_node
    counts = {2**k for k in range(int(math.log2(MAX_GPUS)) + 1)} | {s.num_gpus}
    values = sorted(
        n for n in counts if (not gpn or n <= gpn or n % gpn == 0) and (n == s.num_gpus or gpu_count_layouts(s, n))
    )
    return Space(
        values,
        s.num_gpus,
        True,
        f"powers of two up to {MAX_GPUS}" + (f" that fill nodes of {gpn}" if gpn else ""),
        "the next smaller power of two does not",
    )


def _gpus(s: Scenario, value: int) -> list[Scenario]:
    return [with_layout(s, layout) for layout in gpu_count_layouts(s, int(value))]


def _layout_space(s: Scenario) -> Space:
    layouts = enumerate_layouts(s)
    return Space(
        layouts, s.parallel.without_split(), False, f"{len(layouts)} layouts of {s.num_gpus} GPUs", "every one"
    )


def _layout(s: Scenario, value: ParallelSpec) -> list[Scenario]:
    return [with_layout(s, value)]


def _profile_space(s: Scenario) -> Space:
    names = available_profiles()
    return Space(names, s.hardware.profile, False, f"{len(names)} shipped profiles", "every one")


def _profile(s: Scenario, value: str) -> list[Scenario]:
    def change(data: dict) -> None:
        data["hardware"] = {"profile": value}  # a profile is a GPU: the scenario's field overrides go too

    return [rebuilt(s, change)]


def _scale_space(s: Scenario) -> Space:
    steps = math.ceil(math.log(MAX_SCALE) / math.log(SCALE_STEP))
    values = [SCALE_STEP**k for k in range(steps + 1)]
    return Space(values, 1.0, True, f"x1..x{MAX_SCALE:g}", "1 % (factors are powers of 1.01)")


def _scaled(overrides: Callable[[Any, float], dict]) -> Callable[[Scenario, float], list[Scenario]]:
    def variants(s: Scenario, factor: float) -> list[Scenario]:
        if factor == 1.0:
            return [s]
        hw = resolve_hardware(s)

        def change(data: dict) -> None:
            data["hardware"] = {**data["hardware"], **overrides(hw, factor)}

        return [rebuilt(s, change)]

    return variants


def _hbm(hw, f: float) -> dict:
    return {"hbm_bytes_per_s": hw.hbm_bytes_per_s * f}


def _flops(hw, f: float) -> dict:
    peaks = hw.peak_flops_per_s
    return {
        "peak_flops_per_s": {d: getattr(peaks, d) * f for d in DTYPES},
        "vector_flops_per_s": hw.vector_flops_per_s * f,
    }


def _links(hw, f: float) -> dict:
    return {
        "intra_node": {**hw.intra_node.model_dump(), "bytes_per_s": hw.intra_node.bytes_per_s * f},
        "inter_node": {**hw.inter_node.model_dump(), "bytes_per_s": hw.inter_node.bytes_per_s * f},
    }


def _dtype_space(field: str) -> Callable[[Scenario], Space]:
    def space(s: Scenario) -> Space:
        current = getattr(s.model, field) or s.model.dtype
        return Space(DTYPES, current, False, ", ".join(DTYPES), "every one")

    return space


def _dtype(field: str) -> Callable[[Scenario, str], list[Scenario]]:
    def variants(s: Scenario, value: str) -> list[Scenario]:
        return [rebuilt(s, _set("model", field, value))]

    return variants


def _topk_space(s: Scenario) -> Space:
    if not s.model.is_moe:
        raise ScenarioError("--knobs top_k: the model has no experts (num_experts = 0)")
    values = range(1, s.model.num_experts + 1)
    return Space(values, s.model.top_k, True, f"1..num_experts = {s.model.num_experts}", "exact")


def _topk(s: Scenario, value: int) -> list[Scenario]:
    return [rebuilt(s, _set("model", "top_k", int(value)))]


def _int_fmt(v: Any) -> str:
    return f"{int(v)}"


def scale_fmt(v: Any) -> str:
    return f"x{float(v):.3g}"


KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob("batch_size", "batch size (sequences)", _batch_space, partial(_workload_int, "batch_size"), _int_fmt),
        Knob(
            "input_len",
            "input length (tokens)",
            partial(_length_space, "input_len_tokens", "output_len_tokens", MAX_INPUT_TOKENS),
            partial(_workload_int, "input_len_tokens"),
            _int_fmt,
        ),
        Knob(
            "output_len",
            "output length (tokens)",
            partial(_length_space, "output_len_tokens", "input_len_tokens", MAX_OUTPUT_TOKENS),
            partial(_workload_int, "output_len_tokens"),
            _int_fmt,
        ),
        Knob("num_gpus", "number of GPUs (best layout for the count)", _gpu_space, _gpus, _int_fmt),
        Knob("layout", "parallel layout (same GPU count)", _layout_space, _layout, lambda v: v.label),
        Knob("microbatches", "microbatches (same layout)", _microbatch_space, _microbatches, _int_fmt),
        Knob("hardware", "hardware profile", _profile_space, _profile, str),
        Knob("hbm_bandwidth", "HBM bandwidth (scale)", _scale_space, _scaled(_hbm), scale_fmt),
        Knob("peak_flops", "peak FLOP/s (scale)", _scale_space, _scaled(_flops), scale_fmt),
        Knob("link_bandwidth", "link bandwidth, NVLink and network (scale)", _scale_space, _scaled(_links), scale_fmt),
        Knob("weight_dtype", "weight precision", _dtype_space("weight_dtype"), _dtype("weight_dtype"), str),
        Knob("kv_cache_dtype", "KV-cache precision", _dtype_space("kv_cache_dtype"), _dtype("kv_cache_dtype"), str),
        Knob("top_k", "experts per token (top_k)", _topk_space, _topk, _int_fmt, explicit_only=True),
    )
}

#: The hardware-figure knobs: when one cannot reach a target, the others' answers say which resource would.
RESOURCE_KNOBS = ("hbm_bandwidth", "peak_flops", "link_bandwidth")


def parse_knobs(items: Sequence[str] | None) -> list[str]:
    """The knobs `--knobs` names (comma- or space-separated), in KNOBS order; default every knob but
    the explicit-only ones. An unknown name is a ScenarioError listing the valid ones."""
    if not items:
        return [name for name, k in KNOBS.items() if not k.explicit_only]
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in KNOBS]
    if unknown or not names:
        raise ScenarioError(f"--knobs {','.join(unknown) or '(none)'}: unknown knob; valid: {', '.join(KNOBS)}")
    return [name for name in KNOBS if name in names]


def dtype_bytes(value: str) -> float:
    return DTYPE_BYTES[value]
