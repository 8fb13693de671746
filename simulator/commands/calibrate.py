"""Command stage: `moesim calibrate`, fit a hardware profile from GPU micro-benchmarks and print the fit's error."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from simulator.calibration.fit import fit_calibration, leave_one_out, write_profile
from simulator.config.hardware import KERNEL_OP_KINDS, load_profile
from simulator.files import read_bounded


def add_arguments(parser) -> None:
    parser.add_argument(
        "--from-json",
        type=Path,
        help="micro-benchmark JSON (the format `moesim calibrate --device cuda` writes; an example ships as hardware_profiles/measurements/h200_micro.json in the moesim repository)",
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], help="measure on this device with PyTorch instead")
    parser.add_argument(
        "--base",
        default="hardware_profiles/datasheet/h200-sxm-141gb.yaml",
        help="profile (name or YAML path) whose datasheet figures are kept",
    )
    parser.add_argument("--out", type=Path, required=True, help="profile YAML to write")
    parser.add_argument("--name", help="profile name (default: the output file's stem)")
    parser.add_argument(
        "--measured-on",
        help="datasheet profile of the GPU that was measured (default: --base); "
        "fractions are taken against its peaks and applied to --base's",
    )
    parser.add_argument("--raw-out", type=Path, help="with --device: also keep the raw measurements here")
    parser.add_argument(
        "--extra",
        type=Path,
        help="benchmarks/gpu_calibration.sh's raw_extra.json: small kernels' eager dispatch and device time in a "
        "CUDA graph, one graph launch, the scatter-add in a graph (read: graph_kernels, graph_launch, scatter_add)",
    )
    parser.add_argument(
        "--host-calls",
        type=Path,
        help="host times of no-kernel PyTorch calls (the JSON `python -m simulator.calibration.host_calls` writes; "
        "hardware_profiles/measurements/host_calls.json in the moesim repository); with --device they are measured there",
    )


def fit_checked(data, device, source: str, label: str):
    """fit_calibration, with data that is not micro-benchmark output (or gives no usable table)
    answered by one ScenarioError line instead of whatever the fit tripped over."""
    from pydantic import ValidationError

    from simulator.config import ScenarioError, one_line_error
    from simulator.config.hardware import Calibration

    if not isinstance(data, dict):
        raise ScenarioError(f"{label}: expected a JSON object of micro-benchmark lists (gemm, bmm, sdpa_prefill, ...)")
    try:
        return fit_calibration(data, device, source)
    except ValidationError as exc:
        raise ScenarioError(
            f"{label}: the fitted calibration is unusable: {one_line_error(exc, Calibration)}"
        ) from None
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError, AttributeError) as exc:
        raise ScenarioError(
            f"{label}: not micro-benchmark data of the expected format ({type(exc).__name__}: {str(exc)[:60]})"
        ) from None


def _read_json(path: Path, label: str, kind: str):
    """The parsed JSON of a measurement file given by option `label`; one ScenarioError line when it is
    missing, too large or not JSON."""
    from simulator.config import ScenarioError

    if not path.is_file():
        raise ScenarioError(f"{label}: no such file")
    try:
        return json.loads(read_bounded(path, label, kind, ScenarioError).decode("utf-8"))
    except (ValueError, RecursionError):
        raise ScenarioError(f"{label}: not JSON") from None


def read_host_calls(path: Path) -> dict:
    """The host_calls section of a host-calls JSON file and a note of where it was measured; one
    ScenarioError line when the file is missing or not of that format."""
    from simulator.calibration.host_calls import source_note
    from simulator.config import ScenarioError

    label = f"--host-calls {path}"
    data = _read_json(path, label, "host-calls JSON")
    rows = data.get("host_calls") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "call" in r and "s" in r for r in rows):
        raise ScenarioError(f'{label}: expected {{"host_calls": [{{"call": ..., "s": ...}}, ...]}}')
    return {"host_calls": rows, "host_calls_source": source_note(data, str(path)), "host_calls_path": str(path)}


#: The sections of gpu_calibration.sh's raw_extra.json that the fit reads, with the fields each row needs.
EXTRA_SECTIONS = {
    "graph_kernels": ("op", "s_eager", "s_graph_per_kernel"),
    "scatter_add": ("s_per_byte",),
}


def read_extra(path: Path) -> dict:
    """The sections of a raw_extra.json the fit reads (EXTRA_SECTIONS, graph_launch) and its path; one
    ScenarioError line when the file is missing, not JSON, or a section is not of its format."""
    from simulator.config import ScenarioError

    label = f"--extra {path}"
    data = _read_json(path, label, "raw_extra JSON")
    if not isinstance(data, dict):
        raise ScenarioError(f"{label}: expected the JSON object benchmarks/gpu_calibration.sh writes")
    out: dict = {"extra_path": str(path)}
    for section, fields in EXTRA_SECTIONS.items():
        rows = data.get(section)
        if rows is None:
            continue
        if not isinstance(rows, list) or not all(isinstance(r, dict) and all(f in r for f in fields) for r in rows):
            raise ScenarioError(f"{label}: {section}: expected a list of rows with {', '.join(fields)}")
        out[section] = rows
    launch = data.get("graph_launch")
    if launch is not None:
        keys = ("s_replay_1_kernel_synced", "s_sync_only")
        if not isinstance(launch, dict) or not all(isinstance(launch.get(k), (int, float)) for k in keys):
            raise ScenarioError(f"{label}: graph_launch: expected {{{', '.join(keys)}}} in seconds")
        out["graph_launch"] = launch
    return out


def command(args, console) -> int:
    from simulator.config import ScenarioError

    if bool(args.from_json) == bool(args.device):
        raise ScenarioError("calibrate: give exactly one of --from-json FILE or --device cuda")
    if args.device:
        from simulator.calibration import microbench

        data = microbench.run_microbenchmarks(device=args.device)
        if args.host_calls is None:
            from simulator.calibration.host_calls import bench_host_calls

            data["host_calls"] = bench_host_calls(microbench._import_torch(), args.device)
        source = str(args.raw_out or args.out.with_suffix(".raw.json"))
        from simulator.files import write_atomic

        write_atomic(Path(source), json.dumps(data, indent=1))
    else:
        if not args.from_json.is_file():
            raise ScenarioError(f"--from-json {args.from_json}: no such file")
        raw = read_bounded(
            args.from_json,
            f"--from-json {args.from_json}",
            "micro-benchmark JSON",
            ScenarioError,
            limit=64 * 1024 * 1024,
        )
        try:
            data = json.loads(raw.decode("utf-8"))
        except json.JSONDecodeError as exc:
            raise ScenarioError(f"--from-json {args.from_json}: not JSON ({exc.msg} at line {exc.lineno})") from None
        except (ValueError, RecursionError):  # not UTF-8, or a number of more digits than Python converts
            raise ScenarioError(f"--from-json {args.from_json}: not a JSON text file") from None
        source = str(args.from_json)
    if args.host_calls is not None:
        data = {**data, **read_host_calls(args.host_calls)}
    if args.extra is not None:
        data = {**data, **read_extra(args.extra)}
    measured_on = args.measured_on or args.base
    device = load_profile(measured_on)
    calibration = fit_checked(data, device, source, f"--from-json {args.from_json}" if args.from_json else "--device")
    profile = write_profile(args.base, calibration, args.out, args.name, data, measured_on)
    loo = leave_one_out(data, device)
    gemm = sorted(abs(r["error"]) for r in loo if r["table"] == "gemm")
    console.print(
        f"wrote {args.out} ({profile.name}): {len(calibration.gemm)} GEMM, {len(calibration.grouped_gemm)} "
        f"batched-GEMM, {len(calibration.attention_prefill) + len(calibration.attention_decode)} attention "
        f"points; eager floors {', '.join(f'{k} {v * 1e6:.1f} us' for k, v in calibration.eager_floor_s.items())}"
    )
    if args.extra is not None:
        console.print(
            f"from {args.extra}: device time per small kernel in a CUDA graph {profile.kernel_overhead_s * 1e6:.2f} us, "
            f"one graph launch {profile.graph_launch_s * 1e6:.2f} us"
        )
    bounds = sum(len(rows) for rows in calibration.host_bound.values())
    console.print(
        f"host-bound calls (eager time = host dispatch, kept as upper bounds on GPU time): {bounds}; "
        f"dispatch floor {(calibration.dispatch_floor_s or 0.0) * 1e6:.1f} us per call"
    )
    for rate, source in calibration.rate_sources.items():
        if rate == "host_calls":
            times = calibration.host_call_s
            calls = ", ".join(f"{k} {v * 1e6:.2f} us" for k, v in times.items() if k not in KERNEL_OP_KINDS)
            ops = ", ".join(f"{k} +{v * 1e6:.2f} us" for k, v in times.items() if k in KERNEL_OP_KINDS)
            console.print(f"no-kernel host calls: {calls}; kernel ops beyond the 1-element add: {ops} ({source})")
            continue
        if rate in calibration.helper_kernel_s:
            console.print(f"{rate}: {calibration.helper_kernel_s[rate] * 1e6:.2f} us per call ({source})")
            continue
        per_byte = calibration.elementwise_s_per_byte[rate]
        side = "input" if rate == "index_add" else "output"
        console.print(f"{rate}: {1 / per_byte / 1e9:.0f} GB/s of {side} ({source})")
    if gemm:
        console.print(
            f"leave-one-out GEMM error: median {100 * statistics.median(gemm):.1f}%, max {100 * max(gemm):.1f}% "
            f"over {len(gemm)} shapes"
        )
    return 0
