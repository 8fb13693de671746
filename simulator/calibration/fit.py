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

import yaml

from simulator.config.hardware import Calibration, HardwareProfile, load_profile, series_interpolate

FP16_BYTES = 2.0
#: A call is launch-bound when its time is within this factor of its class's eager floor.
FLOOR_MARGIN = 1.25
#: Calls whose roofline time is below this are certainly launch-bound: they define the floor.
FLOOR_DEFINING_ROOFLINE_S = 1e-6


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
        pts["attention_decode"].append(Point("attention", (d,), kv_bytes, kv_bytes / hbm, a["s"]))
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


def _gpu_bound(points: list[Point], floor_s: float) -> list[Point]:
    return [p for p in points if p.measured_s > FLOOR_MARGIN * floor_s]


def _fraction_rows(points: list[Point]) -> list[tuple]:
    return [(*p.key, p.x, p.roofline_s / p.measured_s) for p in points]


def fit_calibration(data: dict, profile: HardwareProfile, source: str) -> Calibration:
    """The efficiency tables of `profile` from micro-benchmark data (fp16 measurements)."""
    peak, hbm = profile.peak_flops_per_s.fp16, profile.hbm_bytes_per_s
    pts = measured_points(data, peak, hbm)
    floors = eager_floors(pts, data)
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
    return Calibration(
        source=source,
        eager_floor_s=floors,
        gemm=_fraction_rows(_gpu_bound(pts["gemm"], floors["gemm"])),
        grouped_gemm=_fraction_rows(_gpu_bound(pts["grouped_gemm"], floors["grouped_gemm"])),
        attention_prefill=_fraction_rows(_gpu_bound(pts["attention_prefill"], floors["attention"])),
        attention_decode=_fraction_rows(_gpu_bound(pts["attention_decode"], floors["attention"])),
        elementwise_s_per_byte=ew,
        topk_s_per_row=topk[0]["s"] / topk[0]["shape"][0] if topk else 0.0,
    )


def predict_eager_s(point: Point, table: list[tuple], floor_s: float) -> float:
    """What the fitted model says one eager call of this shape takes."""
    fraction = series_interpolate(table, point.key, point.x)
    return max(floor_s, point.roofline_s / fraction)


def leave_one_out(data: dict, profile: HardwareProfile) -> list[dict]:
    """Predict every GEMM (and batched GEMM, attention) call from a table fitted without it."""
    peak, hbm = profile.peak_flops_per_s.fp16, profile.hbm_bytes_per_s
    pts = measured_points(data, peak, hbm)
    floors = eager_floors(pts, data)
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
            table = _fraction_rows(_gpu_bound(others, floor_s))
            if not table:
                continue
            predicted = predict_eager_s(p, table, floor_s)
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
    raw = load_profile(base).model_dump(exclude={"calibration"}, exclude_none=True)  # an unset price stays unset
    raw["name"] = name or out.stem
    large = [f for (*_, m, f) in calibration.gemm if m >= 4096]
    if large:
        raw["compute_efficiency"] = round(statistics.median(large), 4)
    if "copy" in calibration.elementwise_s_per_byte:
        copy_rw = 2.0 / calibration.elementwise_s_per_byte["copy"]  # read + write bytes per second
        raw["memory_efficiency"] = round(min(1.0, copy_rw / raw["hbm_bytes_per_s"]), 4)
    raw["host_launch_s"] = round(calibration.eager_floor_s["gemm"], 9)
    env = data.get("env", {})
    raw["calibration"] = json.loads(calibration.model_dump_json())
    profile = HardwareProfile.model_validate(raw)
    header = (
        f"# {raw['name']}: fitted by `moesim calibrate` from {calibration.source}\n"
        f"# (device: {env.get('name', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}).\n"
        "# Datasheet figures (and memory_bytes) come from the base profile; compute_efficiency,\n"
        "# memory_efficiency, host_launch_s and the calibration tables are measured: roofline\n"
        f"# fractions against the datasheet peaks of the measured GPU ({measured_on}), applied here\n"
        "# to this profile's own peaks. Refit with:\n"
        f"#   moesim calibrate --from-json {calibration.source} --measured-on {measured_on} --base {base} --out {out}\n"
    )
    base_path = Path(base)
    if base_path.is_file():  # carry the base profile's own notes (its assumptions and sources)
        leading = []
        for line in base_path.read_text().splitlines():
            if not line.startswith("#"):
                break
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
