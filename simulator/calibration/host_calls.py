"""Calibration input, host part: the host's time per PyTorch call that launches no kernel.

An eager PyTorch forward pass makes calls that only build a new tensor header over the same storage: views,
transposes, unsqueezes, splits, basic (slice and integer) indexing. They launch nothing, so no GPU timing sees
them, but each costs the launch thread its Python and dispatcher time before the next kernel can be issued.
Their cost does not depend on the device: PyTorch's own operator micro-benchmarks time `split` at 3.33 us on
CUDA tensors and 3.34 us on CPU tensors (pytorch/pytorch PR #32194, its benchmark tables), so it can be
measured on any host, and measuring it on the GPU machine's host (benchmarks/gpu_calibration.sh) removes the
host-speed difference.

Each figure is the median of REPS repetitions of N back-to-back calls timed with time.perf_counter, after
warm-up, under torch.inference_mode (as simulator/calibration/e2e.py runs the measured passes). `split` is
timed for several part counts; the fit makes it a fixed part plus a part per output tensor.

    python -m simulator.calibration.host_calls --device cpu --out host_calls.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

#: The call kinds the graph counts (graph.blocks.PYTORCH_HOST_CALLS), each with the exact form timed
#: (config.hardware.HOST_CALL_KINDS names them, with split's two fitted parts).
TIMED_FORMS = {
    "view": "x.view(b, h)",
    "transpose": "q.transpose(1, 2)",
    "reshape": "o.reshape(b, 1, -1) (a view: the layout allows it)",
    "unsqueeze": "e.unsqueeze(1)",
    "squeeze": "p.squeeze(1)",
    "slice": "buf[:-1] (one dimension)",
    "slice_nd": "cache[:, :, -1:] (three dimensions)",
    "select": "w[e] (integer index)",
    "chunk": "x.chunk(2, dim=-1)",
}
SPLIT_PARTS = (2, 3, 4, 8, 16)
REPS, CALLS, WARMUP = 7, 20000, 2000
QUICK_REPS, QUICK_CALLS, QUICK_WARMUP = 3, 500, 100


def _calls(torch, device: str) -> dict:
    """The timed calls (tiny tensors: only the header work counts), by kind; split by part count."""
    f16 = torch.float16
    x = torch.zeros(32, 1, 512, device=device, dtype=f16)
    q = torch.zeros(32, 1, 16, 32, device=device, dtype=f16)
    o = torch.zeros(32, 1, 16, 32, device=device, dtype=f16)
    e = torch.zeros(64, dtype=torch.int64, device=device)
    p = torch.zeros(64, 1, dtype=torch.int64, device=device)
    buf = torch.zeros(65, 512, device=device, dtype=f16)
    cache = torch.zeros(32, 16, 64, 32, device=device, dtype=f16)
    w = torch.zeros(16, 8, 8, device=device, dtype=f16)
    rows = torch.zeros(48, 8, device=device, dtype=f16)  # 48: divisible by every SPLIT_PARTS
    calls = {
        "view": lambda: x.view(32, 512),
        "transpose": lambda: q.transpose(1, 2),
        "reshape": lambda: o.reshape(32, 1, -1),
        "unsqueeze": lambda: e.unsqueeze(1),
        "squeeze": lambda: p.squeeze(1),
        "slice": lambda: buf[:-1],
        "slice_nd": lambda: cache[:, :, -1:],
        "select": lambda: w[3],
        "chunk": lambda: rows.chunk(2, dim=-1),
    }
    for parts in SPLIT_PARTS:
        calls[f"split{parts}"] = functools.partial(rows.split, [48 // parts] * parts)
    return calls


def per_call_s(fn, reps: int, calls: int, warmup: int) -> float:
    """Median over reps of the wall time per call of `calls` back-to-back calls, after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def bench_host_calls(torch, device: str = "cpu", quick: bool = False) -> list[dict]:
    """Rows {"call": kind, "s": seconds per call} (split rows also carry "parts")."""
    reps, calls, warmup = (QUICK_REPS, QUICK_CALLS, QUICK_WARMUP) if quick else (REPS, CALLS, WARMUP)
    rows = []
    with torch.inference_mode():
        for name, fn in _calls(torch, device).items():
            row: dict = {"call": name, "s": per_call_s(fn, reps, calls, warmup)}
            if name.startswith("split"):
                row = {"call": "split", "parts": int(name[len("split") :]), "s": row["s"]}
            rows.append(row)
    return rows


def source_note(data: dict, path: str) -> str:
    """Where a host_calls section was measured, for calibration.rate_sources."""
    env = data.get("env", {})
    return (
        f"{path}: no-kernel PyTorch calls timed on {env.get('device', '?')} tensors "
        f"({env.get('cpu_model', '?')}, torch {env.get('torch', '?')}); host time assumed independent of the device"
    )


def fit_host_call_s(rows: list[dict]) -> dict[str, float]:
    """Seconds per call by kind, from bench_host_calls rows; `split` becomes a least-squares line over its
    part counts: "split" (the fixed part) and "split_per_part" (each output tensor's share), both >= 0."""
    out = {r["call"]: float(r["s"]) for r in rows if r["call"] != "split"}
    split = [(float(r["parts"]), float(r["s"])) for r in rows if r["call"] == "split"]
    if len(split) >= 2:
        mx = statistics.fmean(n for n, _ in split)
        my = statistics.fmean(s for _, s in split)
        sxx = sum((n - mx) ** 2 for n, _ in split)
        slope = sum((n - mx) * (s - my) for n, s in split) / sxx if sxx > 0 else 0.0
        slope = max(0.0, slope)
        out["split"] = max(0.0, my - slope * mx)
        out["split_per_part"] = slope
    elif split:
        out["split"], out["split_per_part"] = split[0][1], 0.0
    return out


def _env(torch, device: str) -> dict:
    return {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.calibration.host_calls", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write ({env, host_calls})")
    parser.add_argument("--device", default="cpu", help="tensors on this device: cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke test)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("host_calls: PyTorch is not installed (pip install torch)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    rows = bench_host_calls(torch, args.device, args.quick)
    data = {"env": _env(torch, args.device), "host_calls": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    fitted = fit_host_call_s(rows)
    print(", ".join(f"{k} {v * 1e6:.2f} us" for k, v in fitted.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
