"""Calibration input, host part: the host's time per PyTorch call that launches no kernel, and the dispatch
time of kernel-launching ops beyond the 1-element add's.

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

Kernel ops (KERNEL_OP_FORMS, rows "call": "op:<name>"): an eager model prices every kernel launch at the
GPU's measured eager floor, the per-call time of a 1-element add (h200_micro.json launch.add_1elem_eager).
PyTorch's index, scan and reduction ops cost the host more than that add before their kernel is issued
(argument parsing, type promotion, output shape and allocation, index checks). Each is timed here on tiny
tensors (its compute negligible) in the form simulator/calibration/e2e.py calls it, with the add timed the
same way in the same repetitions (paired: a slow spell of a shared host moves both); the fit keeps the median
difference, at least 0, which the launch thread pays on top of the floor. Measured on CPU tensors it is the
dispatcher's share only (CPU and CUDA share the dispatcher and the op's shape logic; a CUDA op's launch is what
the floor already prices); on CUDA tensors (benchmarks/gpu_calibration.sh) the difference includes any CUDA-side
dispatch an op adds.

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
#: The kernel-launching ops whose host dispatch is timed against the 1-element add (config.hardware.KERNEL_OP_KINDS
#: names them; graph.PYTORCH_KERNEL_OPS counts them per node), each with the form timed: the reference code's call.
KERNEL_OP_FORMS = {
    "add": "a + b (1 element: the call the eager floor is measured with; the baseline)",
    "rms_norm": "F.rms_norm(x, (h,), w)",
    "softmax": "torch.softmax(s, -1, dtype=torch.float32)",
    "topk": "p.topk(2, dim=-1)",
    "sum": "w.sum(-1, keepdim=True)",
    "arange": "torch.arange(n, device=x.device)",
    "eq": "e.unsqueeze(1) == r (broadcast compare)",
    "to": "w.to(torch.float16) (fp32 in)",
    "cumsum": "m.cumsum(0)",
    "sub_scalar": "m - 1",
    "gather": "m.gather(1, i)",
    "lt_scalar": "pos < c",
    "mul_scalar": "e * c",
    "mul_bool": "w * kept (float by bool: type promotion)",
    "where": "torch.where(kept, slot, n) (a scalar other)",
    "repeat_interleave": "r.repeat_interleave(2)",
    "zeros": "torch.zeros(n, h, device=x.device, dtype=x.dtype)",
    "zeros_like": "torch.zeros_like(a)",
    "index": "a[idx] (advanced indexing by an int64 tensor)",
    "index_select": "a.index_select(0, idx)",
    "index_copy": "buf.index_copy_(0, idx, a)",
    "index_add": "z.index_add_(0, idx, a)",
    "cat": "torch.cat([y, z])",
    "argsort": "e.argsort()",
    "floordiv_scalar": "order // 2",
}
#: Timed on CUDA tensors only: on CPU, F.rms_norm is a composite of about 15 ATen calls (aten::_fused_rms_norm's
#: CPU fallback: casts, pow, mean, rsqrt, muls), where CUDA runs one fused kernel; its CPU time is not its dispatch.
CUDA_ONLY_OPS = frozenset(("rms_norm",))
SPLIT_PARTS = (2, 3, 4, 8, 16)
REPS, CALLS, WARMUP = 7, 20000, 2000
#: Kernel ops take 5-15 us a call on a GPU's host (each launches a kernel): fewer calls per repetition.
OP_CALLS, OP_WARMUP = 5000, 500
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


def _kernel_ops(torch, device: str) -> dict:
    """The timed kernel ops (KERNEL_OP_FORMS), by name, on tiny tensors of the reference code's dtypes."""
    import torch.nn.functional as F

    f16, i64 = torch.float16, torch.int64
    tokens, experts, hidden = 4, 16, 8
    one = torch.zeros(1, device=device, dtype=f16)
    a = torch.zeros(tokens, hidden, device=device, dtype=f16)
    norm_w = torch.ones(hidden, device=device, dtype=f16)
    scores = torch.zeros(tokens, experts, device=device, dtype=f16)
    probs = torch.softmax(scores, -1, dtype=torch.float32)
    top_w = torch.rand(tokens, 2, device=device)
    flat_e = torch.randint(0, experts, (2 * tokens,), device=device)
    ids = torch.arange(experts, device=device)
    onehot = (flat_e.unsqueeze(1) == ids).to(torch.int32)
    pos = torch.zeros(2 * tokens, dtype=i64, device=device)
    kept = pos < 1
    idx = torch.arange(tokens, device=device, dtype=i64)
    buf = torch.zeros(tokens + 1, hidden, device=device, dtype=f16)
    flat_w = top_w.view(-1)
    return {
        "add": lambda: one + one,
        "rms_norm": lambda: F.rms_norm(a, (hidden,), norm_w, 1e-6),
        "softmax": lambda: torch.softmax(scores, -1, dtype=torch.float32),
        "topk": lambda: probs.topk(2, dim=-1),
        "sum": lambda: top_w.sum(-1, keepdim=True),
        "arange": lambda: torch.arange(experts, device=device),
        "eq": lambda: flat_e.unsqueeze(1) == ids,
        "to": lambda: top_w.to(f16),
        "cumsum": lambda: onehot.cumsum(0),
        "sub_scalar": lambda: onehot - 1,
        "gather": lambda: onehot.gather(1, flat_e.unsqueeze(1)),
        "lt_scalar": lambda: pos < 1,
        "mul_scalar": lambda: flat_e * 2,
        "mul_bool": lambda: flat_w * kept,
        "where": lambda: torch.where(kept, flat_e, experts),
        "repeat_interleave": lambda: idx.repeat_interleave(2),
        "zeros": lambda: torch.zeros(tokens + 1, hidden, device=device, dtype=f16),
        "zeros_like": lambda: torch.zeros_like(a),
        "index": lambda: a[idx],
        "index_select": lambda: a.index_select(0, idx),
        "index_copy": lambda: buf.index_copy_(0, idx, a),
        "index_add": lambda: buf.index_add_(0, idx, a),
        "cat": lambda: torch.cat([a, buf]),
        "argsort": lambda: flat_e.argsort(),
        "floordiv_scalar": lambda: idx // 2,
    }


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


def paired_beyond_s(fn, base, reps: int, calls: int, warmup: int, sync=lambda: None) -> tuple[float, float, float]:
    """(fn's median time per call, base's, the median of their paired differences): each repetition times
    `calls` calls of base, then of fn, so that a slow spell of a shared host moves both of a pair. `sync` waits
    for the device (CUDA: the launched kernels) before each clock reading."""
    for _ in range(warmup):
        base()
        fn()
    pairs = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            base()
        sync()
        t1 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        t2 = time.perf_counter()
        pairs.append(((t2 - t1) / calls, (t1 - t0) / calls))
    return (
        statistics.median(p[0] for p in pairs),
        statistics.median(p[1] for p in pairs),
        statistics.median(p[0] - p[1] for p in pairs),
    )


def bench_host_calls(torch, device: str = "cpu", quick: bool = False) -> list[dict]:
    """Rows {"call": kind, "s": seconds per call} (split rows also carry "parts"; kernel-op rows, "call":
    "op:<name>", also "s_add", the 1-element add's time in the same repetitions, and "beyond_add_s", the median
    of the paired differences)."""
    reps, calls, warmup = (QUICK_REPS, QUICK_CALLS, QUICK_WARMUP) if quick else (REPS, CALLS, WARMUP)
    rows = []
    with torch.inference_mode():
        for name, fn in _calls(torch, device).items():
            row: dict = {"call": name, "s": per_call_s(fn, reps, calls, warmup)}
            if name.startswith("split"):
                row = {"call": "split", "parts": int(name[len("split") :]), "s": row["s"]}
            rows.append(row)
        ops = _kernel_ops(torch, device)
        add = ops.pop("add")
        cuda = device.startswith("cuda")
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        op_calls, op_warmup = (calls, warmup) if quick else (OP_CALLS, OP_WARMUP)
        for name, fn in ops.items():
            if name in CUDA_ONLY_OPS and not cuda:
                continue
            op_s, add_s, beyond_s = paired_beyond_s(fn, add, reps, op_calls, op_warmup, sync)
            rows.append({"call": f"op:{name}", "s": op_s, "s_add": add_s, "beyond_add_s": beyond_s})
    return rows


def source_note(data: dict, path: str) -> str:
    """Where a host_calls section was measured, for calibration.rate_sources."""
    env = data.get("env", {})
    return (
        f"{path}: PyTorch host calls (no-kernel calls whole, kernel ops beyond the 1-element add) timed on "
        f"{env.get('device', '?')} tensors "
        f"({env.get('cpu_model', '?')}, torch {env.get('torch', '?')}); host time assumed independent of the device"
    )


def fit_host_call_s(rows: list[dict]) -> dict[str, float]:
    """Seconds per call by kind, from bench_host_calls rows; `split` becomes a least-squares line over its
    part counts: "split" (the fixed part) and "split_per_part" (each output tensor's share), both >= 0. A
    kernel op ("op:<name>") becomes its time beyond the 1-element add's timed beside it ("beyond_add_s"), at
    least 0, under its name."""
    out = {r["call"]: float(r["s"]) for r in rows if r["call"] != "split" and not r["call"].startswith("op:")}
    for r in rows:
        if r["call"].startswith("op:"):
            beyond = r.get("beyond_add_s")
            if beyond is None and "s_add" in r:  # a file with the two times only
                beyond = float(r["s"]) - float(r["s_add"])
            if beyond is not None:
                out[r["call"][3:]] = max(0.0, float(beyond))
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
