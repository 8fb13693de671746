"""Calibration stage: fit a hardware profile's efficiency tables from GPU micro-benchmarks.

Input is the JSON of `hardware_profiles/measurements/h200_micro.json` (or what `moesim calibrate --device
cuda` measures with simulator/calibration/microbench.py). Only micro-benchmarks are used; the end-to-end
cases in the same file are left for `moesim validate`. The fit is a transformation, not a search:
every table entry is one measurement turned into a roofline fraction.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from simulator.calibration import e2e as e2e_mod
from simulator.calibration.host_calls import fit_host_call_s, source_note
from simulator.config.hardware import (
    CALIBRATION_TABLES,
    Calibration,
    HardwareProfile,
    attention_fixed_part_s,
    gemm_fraction,
    load_profile,
    series_interpolate,
)
from simulator.config.schema import SCHEMA_COMMENT, schema_comment

FP16_BYTES = 2.0
#: A call is launch-bound when its time is within this factor of its class's eager floor.
FLOOR_MARGIN = 1.25
#: Calls whose roofline time is below this are certainly launch-bound: they define the floor.
FLOOR_DEFINING_ROOFLINE_S = 1e-6
#: The host-bound rule (host_bound): a call is host-bound, i.e. its eager time is the host's dispatch
#: time and only an upper bound on its GPU time, when it sits at its class's eager floor (FLOOR_MARGIN),
#: or when it takes at most HOST_BOUND_FLOOR_MULTIPLE dispatch floors (one eager call may launch a few
#: kernels: SDPA's fallback paths launch 3-4) AND its roofline fraction is below HOST_BOUND_REGIME_RATIO
#: of the median fraction of its neighbours (the other calls of its series, else of its class).
HOST_BOUND_FLOOR_MULTIPLE = 4.0
HOST_BOUND_REGIME_RATIO = 0.1
#: The kernel of the sorted MoE's combine (`index_add_` with a sum) in a torch.profiler breakdown.
SCATTER_ADD_KERNEL = ("indexFuncLargeIndex", "ReduceAdd")
#: Latency-bound helper kernels whose device time per call the kernel_breakdown measures (name parts of
#: the kernel): the async memsets (CUB's radix sort zeroes its counters with cudaMemsetAsync), one
#: onesweep pass of CUB's radix sort (argsort), a full reduction to one value (bincount's min / max).
#: At the profiled sizes (32k-64k keys) their time does not grow with the size: a time per call.
HELPER_KERNEL_CLASSES = {
    "memset": ("Memset",),
    "radix_sort_pass": ("DeviceRadixSortOnesweepKernel",),
    "reduce_all": ("reduce_kernel<512, 1, at::native::ReduceOp<long",),
}
#: Bandwidth-bound helper kernels of the sorted MoE measured in the kernel_breakdown, per byte of their
#: output, with the output size per call in elements as a function of the case: (tokens, model) ->
#: elements. The gather of the routed copies (index_select), the cat of the expert outputs, the
#: broadcast scaling by the routing weights (a non-vectorised BinaryFunctor kernel; SwiGLU models run
#: their silu(gate) * up through the same kernel, so only non-gated cases fit it), the zeroed output.
HELPER_RATE_CLASSES = {
    "gather": (("vectorized_gather_kernel",), lambda t, m: t * m.top_k * m.hidden_size, False),
    "cat": (("CatArrayBatchedCopy",), lambda t, m: t * m.top_k * m.hidden_size, False),
    "broadcast_mul": (
        ("elementwise_kernel<128, 4", "BinaryFunctor<c10::Half"),
        lambda t, m: t * m.top_k * m.hidden_size,
        True,
    ),
    "fill": (("FillFunctor<c10::Half>",), lambda t, m: t * m.hidden_size, False),
}


@dataclass(frozen=True)
class Point:
    """One measured call: its class, shape key, roofline time at peak and measured time."""

    op_class: str
    key: tuple[float, ...]
    x: float
    roofline_s: float
    measured_s: float


def _roofline(flops: float, bytes_moved: float, peak: float, hbm: float) -> float:
    return max(flops / peak, bytes_moved / hbm)


def measured_points(data: dict, peak: float, hbm: float) -> dict[str, list[Point]]:
    """Every GEMM, batched GEMM and attention call of the file as a Point."""
    pts: dict[str, list[Point]] = {"gemm": [], "grouped_gemm": [], "attention_prefill": [], "attention_decode": []}
    for g in data.get("gemm", []):
        m, k, n = g["M"], g["K"], g["N"]
        rl = _roofline(2.0 * m * k * n, (m * k + k * n + m * n) * FP16_BYTES, peak, hbm)
        pts["gemm"].append(Point("gemm", (k, n), m, rl, g["s"]))
    for g in data.get("bmm", []):
        e, c, k, n = g["E"], g["C"], g["K"], g["N"]
        rl = _roofline(2.0 * e * c * k * n, e * (c * k + k * n + c * n) * FP16_BYTES, peak, hbm)
        pts["grouped_gemm"].append(Point("grouped_gemm", (e, k, n), c, rl, g["s"]))
    for a in data.get("sdpa_prefill", []):
        b, h, s, d = a["B"], a["H"], a["S"], a["D"]
        flops = 4.0 * b * h * s * s * d / 2.0  # as the file counts it (causal)
        pts["attention_prefill"].append(Point("attention", (d,), b * h * s * s, flops / peak, a["s"]))
    for a in data.get("sdpa_decode", []):
        b, h, kv_len, d = a["B"], a["H"], a["L"], a["D"]
        kv_bytes = 2.0 * b * h * kv_len * d * FP16_BYTES
        pts["attention_decode"].append(Point("attention_decode", (d,), kv_bytes, kv_bytes / hbm, a["s"]))
    return pts


def eager_floors(points: dict[str, list[Point]], data: dict) -> dict[str, float]:
    """Per op class, what one eager call costs at least (host launch plus the smallest GPU work):
    the median time of its calls whose roofline time is negligible (< 1 us), unless that is well
    above (FLOOR_MARGIN x) the fastest call of the class, which then sets it. A class with no such call takes the GEMM floor (batched GEMMs
    go through the same dispatch), else the plain launch floor."""
    floors = {}
    launch = [e["s"] for e in data.get("launch", [])]
    floors["elementwise"] = statistics.median(launch) if launch else 9e-6
    classes = {
        "gemm": points["gemm"],
        "grouped_gemm": points["grouped_gemm"],
        "attention": points["attention_prefill"] + points["attention_decode"],
    }
    for name, pts in classes.items():
        tiny = [p.measured_s for p in pts if p.roofline_s < FLOOR_DEFINING_ROOFLINE_S]
        floor = statistics.median(tiny) if tiny else floors.get("gemm", floors["elementwise"])
        fastest = min((p.measured_s for p in pts), default=floor)
        floors[name] = fastest if floor > FLOOR_MARGIN * fastest else floor
    return floors


#: gpu_calibration.sh's graph_kernels rows that time the 1-element add or plain copies: the point-wise
#: dispatch the `launch` section already measures; every other row is a PyTorch helper op (cumsum,
#: gather, index_copy_, where, softmax, top-k, zeros).
POINTWISE_GRAPH_KERNELS = ("add_", "copy_")


def helper_dispatch_s(data: dict) -> float | None:
    """The host's dispatch of one PyTorch helper op (index arithmetic, gathers, scatters, reductions: what
    the routing helper nodes launch), from gpu_calibration.sh's `graph_kernels`: the median eager time of
    its helper rows (tiny tensors, so each eager call is its dispatch); None without such rows."""
    rows = [
        r["s_eager"]
        for r in data.get("graph_kernels", [])
        if r.get("s_eager") and not r["op"].startswith(POINTWISE_GRAPH_KERNELS)
    ]
    return statistics.median(rows) if rows else None


def small_kernel_device_s(data: dict) -> float | None:
    """Device time of one small kernel, from gpu_calibration.sh's `graph_kernels`: the median time per
    kernel replayed inside a CUDA graph (no dispatch), over every row; None without such rows."""
    rows = [r["s_graph_per_kernel"] for r in data.get("graph_kernels", []) if r.get("s_graph_per_kernel")]
    return statistics.median(rows) if rows else None


def graph_launch_s(data: dict) -> float | None:
    """The host's cost of launching one captured graph, from gpu_calibration.sh's `graph_launch`: the wall
    time of a synchronised replay of a 1-kernel graph less a bare synchronisation and that kernel's device
    time (small_kernel_device_s); None without the section."""
    g = data.get("graph_launch")
    if not g:
        return None
    return max(0.0, g["s_replay_1_kernel_synced"] - g["s_sync_only"] - (small_kernel_device_s(data) or 0.0))


def dispatch_floor_s(points: dict[str, list[Point]], data: dict) -> float:
    """The host's per-call dispatch floor, from the data: the median eager time of the smallest calls
    of every table (roofline time < FLOOR_DEFINING_ROOFLINE_S, so their GPU work is negligible), else
    the measured 1-element launch, else 9 us."""
    tiny = [p.measured_s for pts in points.values() for p in pts if p.roofline_s < FLOOR_DEFINING_ROOFLINE_S]
    if tiny:
        return statistics.median(tiny)
    launch = [e["s"] for e in data.get("launch", [])]
    return statistics.median(launch) if launch else 9e-6


def host_bound(points: list[Point], floor_s: float, dispatch_s: float) -> list[bool]:
    """Per call of one table, whether it is host-bound (see HOST_BOUND_FLOOR_MULTIPLE for the rule):
    at its class's eager floor, or within a few dispatch floors at an effective rate (roofline
    fraction) far below its neighbours'."""
    fractions = [p.roofline_s / p.measured_s for p in points]
    flags = []
    for i, p in enumerate(points):
        if p.measured_s <= FLOOR_MARGIN * floor_s:
            flags.append(True)
            continue
        series = [f for j, (q, f) in enumerate(zip(points, fractions)) if j != i and q.key == p.key]
        regime = series or [f for j, f in enumerate(fractions) if j != i]
        flags.append(
            bool(regime)
            and p.measured_s <= HOST_BOUND_FLOOR_MULTIPLE * dispatch_s
            and fractions[i] < HOST_BOUND_REGIME_RATIO * statistics.median(regime)
        )
    return flags


def table_time_s(rows: list[tuple], p: Point, roofline: tuple[float, float, float]) -> float:
    """The fitted table's device time at p's shape, with the kernel's fixed part below a series' first
    point: a GEMM table's roofline over its fraction (hardware.gemm_fraction; roofline: the table format's
    peak, HBM rate and element bytes), an attention table's roofline over series_interpolate's fraction
    plus hardware.attention_fixed_part_s."""
    if p.op_class in ("gemm", "grouped_gemm"):
        return p.roofline_s / gemm_fraction(rows, p.key, p.x, *roofline)
    fixed_s = attention_fixed_part_s(rows, p.key, p.x, p.op_class == "attention_decode", roofline[0], roofline[1])
    return p.roofline_s / series_interpolate(rows, p.key, p.x) + fixed_s


def _bounded_rows(
    points: list[Point], floor_s: float, dispatch_s: float, roofline: tuple[float, float, float]
) -> list[tuple]:
    """The table of the GPU-bound calls, with the host-bound ones applied as upper bounds on GPU time:
    where the table's time at a host-bound call's shape (table_time_s) exceeds that call's measured
    time, the call joins the table at its own fraction (its GPU time is at most its eager time)."""
    flags = host_bound(points, floor_s, dispatch_s)
    rows = _fraction_rows([p for p, bound in zip(points, flags) if not bound])
    capped = sorted((p for p, bound in zip(points, flags) if bound), key=lambda p: (p.key, p.x))
    for _ in range(len(capped)):  # each pass adds at least one row, or none is needed
        added = [p for p in capped if rows and table_time_s(rows, p, roofline) > p.measured_s * (1 + 1e-9)]
        if not added:
            break
        rows = rows + _fraction_rows(added[:1])
    return rows


def _host_bound_rows(points: list[Point], floor_s: float, dispatch_s: float) -> list[tuple]:
    return [(*p.key, p.x, p.measured_s) for p, bound in zip(points, host_bound(points, floor_s, dispatch_s)) if bound]


def scatter_add_s_per_byte(data: dict) -> tuple[float, str] | None:
    """Seconds per input byte of the fp16 scatter-add (`index_add_`) of the sorted MoE's combine, and
    where it comes from: a direct micro-benchmark (`elementwise` op index_add) when the file has one,
    else the kernel-level times of the profiled prefill passes (`kernel_breakdown`): the index_add
    kernel's total time over the bytes it read (every routed token copy, top_k x tokens rows of hidden
    fp16 values), summed over the cases whose model simulator/calibration/e2e.py defines."""
    graph_rates = [e["s_per_byte"] for e in data.get("scatter_add", []) if e.get("s_per_byte")]
    if graph_rates:  # gpu_calibration.sh: index_add_ replayed in a CUDA graph, i.e. its device time
        return statistics.median(graph_rates), f"scatter_add micro-benchmark in a CUDA graph ({len(graph_rates)} sizes)"
    for e in data.get("elementwise", []):
        if e.get("op") == "index_add":
            return e["s"] / e["bytes_in"], "elementwise index_add micro-benchmark"
    models = {m.name: m for m, _, _ in e2e_mod.E2E_PREFILL}
    total_s = total_bytes = 0.0
    used = []
    for case in data.get("kernel_breakdown", []):
        m = models.get(case.get("case"))
        if m is None:
            continue
        for name, calls, seconds in case.get("top_kernels", []):
            if all(part in name for part in SCATTER_ADD_KERNEL):
                tokens = case["batch"] * case["seq"]
                total_s += seconds
                total_bytes += calls * tokens * m.top_k * m.hidden_size * FP16_BYTES
                used.append(f"{case['case']} ({calls} calls, {seconds * 1e3:.2f} ms)")
    if not total_bytes:
        return None
    return total_s / total_bytes, "kernel_breakdown index_add kernel: " + ", ".join(used)


def _breakdown_cases(data: dict):
    """(case, model, tokens) of each kernel_breakdown entry whose model simulator/calibration/e2e.py defines."""
    models = {m.name: m for m, _, _ in e2e_mod.E2E_PREFILL}
    for case in data.get("kernel_breakdown", []):
        m = models.get(case.get("case"))
        if m is not None:
            yield case, m, case["batch"] * case["seq"]


def helper_kernel_s(data: dict) -> tuple[dict[str, float], dict[str, str]]:
    """Device time per call of the latency-bound helper kernel classes (HELPER_KERNEL_CLASSES), measured
    in the kernel_breakdown: total time over total calls, over every case that lists the kernel; and
    per class where it comes from."""
    times: dict[str, float] = {}
    sources: dict[str, str] = {}
    for cls, parts in HELPER_KERNEL_CLASSES.items():
        total_s, calls_n, used = 0.0, 0, []
        for case, _, _ in _breakdown_cases(data):
            for name, calls, seconds in case.get("top_kernels", []):
                if all(part in name for part in parts):
                    total_s += seconds
                    calls_n += calls
                    used.append(f"{case['case']} ({calls} calls, {seconds * 1e3:.3f} ms)")
        if calls_n:
            times[cls] = total_s / calls_n
            sources[cls] = f"kernel_breakdown {parts[0]}: " + ", ".join(used)
    return times, sources


def helper_rates_s_per_byte(data: dict) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds per output byte of the bandwidth-bound helper kernels of the sorted MoE
    (HELPER_RATE_CLASSES), from the kernel_breakdown: total time over total bytes written (fp16),
    over the cases that list the kernel; and per class where it comes from."""
    rates: dict[str, float] = {}
    sources: dict[str, str] = {}
    for cls, (parts, elements, ungated_only) in HELPER_RATE_CLASSES.items():
        total_s = total_bytes = 0.0
        used = []
        for case, m, tokens in _breakdown_cases(data):
            if ungated_only and m.activation == "swiglu":
                continue
            for name, calls, seconds in case.get("top_kernels", []):
                if all(part in name for part in parts):
                    total_s += seconds
                    total_bytes += calls * elements(tokens, m) * FP16_BYTES
                    used.append(f"{case['case']} ({calls} calls, {seconds * 1e3:.3f} ms)")
        if total_bytes:
            rates[cls] = total_s / total_bytes
            sources[cls] = f"kernel_breakdown {parts[0]}: " + ", ".join(used)
    return rates, sources


def _fraction_rows(points: list[Point]) -> list[tuple]:
    return [(*p.key, p.x, p.roofline_s / p.measured_s) for p in points]


def measured_gemm_format(data: dict) -> Literal["fp16", "bf16"]:
    """The number format the file's GEMMs and batched GEMMs were measured in (their `dtype`, fp16 when
    unstated); the fit reads every one at 2 bytes per element, so a 16-bit format is required."""
    formats = {g.get("dtype", "fp16") for g in data.get("gemm", []) + data.get("bmm", [])} or {"fp16"}
    if len(formats) > 1 or not formats <= {"fp16", "bf16"}:
        raise ValueError(f"GEMM dtypes {'/'.join(sorted(formats))}: need one of fp16, bf16")
    return "bf16" if formats == {"bf16"} else "fp16"


def fit_calibration(data: dict, profile: HardwareProfile, source: str) -> Calibration:
    """The efficiency tables of `profile` from micro-benchmark data (fp16 measurements)."""
    peak, hbm = profile.peak_flops_per_s.fp16, profile.hbm_bytes_per_s
    roofline = (peak, hbm, FP16_BYTES)
    pts = measured_points(data, peak, hbm)
    floors = eager_floors(pts, data)
    helper_s = helper_dispatch_s(data)
    if helper_s is not None:
        floors["helper"] = helper_s
    dispatch_s = dispatch_floor_s(pts, data)
    ew = {}
    for e in data.get("elementwise", []):
        numel = 1
        for dim in e["shape"]:
            numel *= dim
        if e["op"] == "topk2_of16":
            continue
        ew[{"softmax16": "softmax", "silu_mul": "silu_mul"}.get(e["op"], e["op"])] = e["s"] / (numel * FP16_BYTES)
    for c in data.get("copy", []):
        ew["copy"] = c["s"] / c["bytes"]  # per byte copied (read once, written once)
    topk = [e for e in data.get("elementwise", []) if e["op"] == "topk2_of16"]
    sources = {}
    scatter = scatter_add_s_per_byte(data)
    if scatter is not None:
        ew["index_add"], sources["index_add"] = scatter
    rates, rate_sources = helper_rates_s_per_byte(data)
    ew.update(rates)
    sources.update(rate_sources)
    per_call_s, per_call_sources = helper_kernel_s(data)
    sources.update(per_call_sources)
    if data.get("host_calls"):
        sources["host_calls"] = data.get("host_calls_source") or source_note(data, source)
    table_floor = {"gemm": "gemm", "grouped_gemm": "grouped_gemm"}
    host_rows = {
        table: _host_bound_rows(pts[table], floors[table_floor.get(table, "attention")], dispatch_s)
        for table in CALIBRATION_TABLES
    }
    return Calibration(
        source=source,
        gemm_format=measured_gemm_format(data),
        eager_floor_s=floors,
        dispatch_floor_s=dispatch_s,
        gemm=_bounded_rows(pts["gemm"], floors["gemm"], dispatch_s, roofline),
        grouped_gemm=_bounded_rows(pts["grouped_gemm"], floors["grouped_gemm"], dispatch_s, roofline),
        attention_prefill=_bounded_rows(pts["attention_prefill"], floors["attention"], dispatch_s, roofline),
        attention_decode=_bounded_rows(pts["attention_decode"], floors["attention"], dispatch_s, roofline),
        host_bound={table: rows for table, rows in host_rows.items() if rows},
        elementwise_s_per_byte=ew,
        rate_sources=sources,
        helper_kernel_s=per_call_s,
        topk_s_per_row=topk[0]["s"] / topk[0]["shape"][0] if topk else 0.0,
        host_call_s=fit_host_call_s(data.get("host_calls", [])),
    )


def predict_eager_s(point: Point, table: list[tuple], floor_s: float, roofline: tuple[float, float, float]) -> float:
    """What the fitted model says one eager call of this shape takes."""
    return max(floor_s, table_time_s(table, point, roofline))


def leave_one_out(data: dict, profile: HardwareProfile) -> list[dict]:
    """Predict every GEMM (and batched GEMM, attention) call from a table fitted without it."""
    peak, hbm = profile.peak_flops_per_s.fp16, profile.hbm_bytes_per_s
    roofline = (peak, hbm, FP16_BYTES)
    pts = measured_points(data, peak, hbm)
    floors = eager_floors(pts, data)
    dispatch_s = dispatch_floor_s(pts, data)
    rows = []
    for table_name, floor_name in (
        ("gemm", "gemm"),
        ("grouped_gemm", "grouped_gemm"),
        ("attention_prefill", "attention"),
        ("attention_decode", "attention"),
    ):
        floor_s = floors[floor_name]
        for i, p in enumerate(pts[table_name]):
            others = [q for j, q in enumerate(pts[table_name]) if j != i]
            table = _bounded_rows(others, floor_s, dispatch_s, roofline)
            if not table:
                continue
            predicted = predict_eager_s(p, table, floor_s, roofline)
            rows.append(
                {
                    "table": table_name,
                    "shape": "x".join(f"{v:g}" for v in (*p.key, p.x)),
                    "measured_s": p.measured_s,
                    "predicted_s": predicted,
                    "error": predicted / p.measured_s - 1.0,
                }
            )
    return rows


def write_profile(
    base: str, calibration: Calibration, out: Path, name: str | None, data: dict, measured_on: str
) -> HardwareProfile:
    """The base profile with the calibration tables and measured constants, written as YAML."""
    base_profile = load_profile(base)
    raw = base_profile.model_dump(
        # a refit's checks are its own: the base's end-to-end checks (`checked`) do not carry over
        # nor do its GEMM efficiencies from public micro-benchmarks (the fitted tables price GEMMs)
        exclude={"calibration", "figure_sources", "checked", "gemm_efficiency"},
        exclude_none=True,
    )  # absent peaks and an unset price stay absent
    raw["name"] = name or out.stem
    same_gpu = Path(base).resolve() == Path(measured_on).resolve() or base == measured_on
    kind = "measured" if same_gpu else "transferred"
    where = "" if same_gpu else f", measured on the GPU of {measured_on} (same silicon assumed)"
    sources = {k: v.model_dump(exclude_defaults=True) for k, v in base_profile.figure_sources.items()}
    measured = {
        "compute_efficiency": "median roofline fraction of the GEMMs with M >= 4096",
        "memory_efficiency": "device-to-device copy rate over the HBM peak",
        "host_launch_s": "eager floor of the GEMM calls (the host's dispatch per call)",
    }
    for figure, what in measured.items():
        sources[figure] = {"kind": kind, "source": f"{calibration.source}: {what}{where}"}
    if sources:
        raw["figure_sources"] = sources
    capped = {tuple(row[:-1]) for row in calibration.host_bound.get("gemm", [])}  # upper bounds, not rates
    large = [f for (*key, m, f) in calibration.gemm if m >= 4096 and (*key, m) not in capped]
    if large:
        raw["compute_efficiency"] = round(statistics.median(large), 4)
    # Bandwidth-bound figures were measured as rates of the measured GPU's HBM: a transfer keeps them as
    # fractions of its peak (memory_efficiency; the per-byte times scaled by the two peaks' ratio), as the
    # tables keep roofline fractions. Per-call latencies (helper_kernel_s) and host times carry over as they are.
    measured_hbm = load_profile(measured_on).hbm_bytes_per_s
    hbm_ratio = measured_hbm / raw["hbm_bytes_per_s"]  # > 1: the target streams bytes slower
    if "copy" in calibration.elementwise_s_per_byte:
        copy_rw = 2.0 / calibration.elementwise_s_per_byte["copy"]  # read + write bytes per second
        raw["memory_efficiency"] = round(min(1.0, copy_rw / measured_hbm), 4)
    if not same_gpu:
        rates = {k: v * hbm_ratio for k, v in calibration.elementwise_s_per_byte.items()}
        calibration = calibration.model_copy(update={"elementwise_s_per_byte": rates})
    raw["host_launch_s"] = round(calibration.eager_floor_s["gemm"], 9)
    extra = data.get("extra_path", "the micro-benchmark file")
    device_s, launch_s = small_kernel_device_s(data), graph_launch_s(data)
    if device_s is not None:
        raw["kernel_overhead_s"] = round(device_s, 9)
        sources["kernel_overhead_s"] = {
            "kind": kind,
            "source": f"{extra}: median device time per small kernel replayed in a CUDA graph{where}",
        }
    if launch_s is not None:
        raw["graph_launch_s"] = round(launch_s, 9)
        sources["graph_launch_s"] = {
            "kind": kind,
            "source": f"{extra}: synchronised replay of a 1-kernel graph less a bare sync and the kernel{where}",
        }  # sources is raw["figure_sources"] (set above)
    env = data.get("env", {})
    raw["calibration"] = json.loads(calibration.model_dump_json())
    profile = HardwareProfile.model_validate(raw)
    header = (
        schema_comment(out, "profile") + f"# {raw['name']}: fitted by `moesim calibrate` from {calibration.source}\n"
        f"# (device: {env.get('name', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}).\n"
        "# Datasheet figures (and memory_bytes) come from the base profile; compute_efficiency,\n"
        "# memory_efficiency, host_launch_s and the calibration tables are measured: roofline\n"
        f"# fractions against the datasheet peaks of the measured GPU ({measured_on}), applied here\n"
        "# to this profile's own peaks. Refit with:\n"
        f"#   moesim calibrate --from-json {calibration.source} --measured-on {measured_on} --base {base}"
        + (f" --host-calls {data['host_calls_path']}" if data.get("host_calls_path") else "")
        + f" --out {out}\n"
    )
    base_path = Path(base)
    if base_path.is_file():  # carry the base profile's own notes (its assumptions and sources)
        leading = []
        for line in base_path.read_text().splitlines():
            if not line.startswith("#"):
                break
            if not line.startswith(SCHEMA_COMMENT):  # the header above has its own
                leading.append(line)
        if leading:
            header += (
                f"# --- notes of the base profile ({base}); per-figure sources are there ---\n"
                + "\n".join(leading)
                + "\n"
            )
    from simulator.files import write_atomic

    write_atomic(out, header + yaml.safe_dump(raw, sort_keys=False, width=120))
    return profile
