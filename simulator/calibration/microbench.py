"""Calibration input: PyTorch micro-benchmarks of one GPU, in the format of hardware_profiles/measurements/h200_micro.json.

Every figure is seconds per call: the median of REPS repetitions of N back-to-back eager calls, timed
with CUDA events after warm-up (N grows until a repetition lasts about TARGET_REP_S, so small calls
show the host launch floor, as in the shared file). fp16 throughout. torch is optional: it is imported
inside the functions, and `device="cpu"` runs the same code (perf_counter timing, no flash flags, no
CUDA graphs) so it can be smoke-tested without a GPU.

    python -m simulator.calibration.microbench --out raw_micro.json [--quick] [--no-e2e] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from simulator.calibration import e2e as e2e_mod
from simulator.calibration.timing import Timer, flash_attention_only, rand_fp16, rms_norm

FP16_BYTES = 2

_M = (1, 16, 64, 256, 1024, 4096, 16384, 65536)
#: The shared file's shape grids, section by section (each benchmark reads its own section's shapes).
GRIDS: dict[str, tuple[Any, ...]] = {
    "gemm": tuple(
        (m, k, n)
        for k, n in (
            (512, 512),
            (512, 1536),
            (512, 1024),
            (1024, 512),
            (512, 16),
            (4096, 4096),
            (4096, 6144),
            (4096, 14336),
            (14336, 4096),
            (8192, 8192),
        )
        for m in _M
    ),  # M,K,N
    "bmm": (
        (16, 512, 1024, (1, 16, 128, 1024, 8192, 32768)),
        (16, 1024, 512, (1, 16, 128, 1024, 8192, 32768)),
        (8, 4096, 14336, (1, 16, 128, 1024, 8192)),
        (8, 14336, 4096, (1, 16, 128, 1024, 8192)),
    ),  # E,K,N,(C...)
    "sdpa_prefill": (
        (1, 16, 2048, 32),
        (8, 16, 4096, 32),
        (32, 16, 10240, 32),
        (1, 32, 4096, 128),
        (4, 32, 8192, 128),
        (1, 16, 4096, 192),  # MLA's decompressed prefill: q/k head dim nope + rope (DeepSeek-V3 on TP8: 16 heads)
        (4, 16, 8192, 192),
    ),  # B,H,S,D
    "sdpa_decode": (
        (128, 16, 10240, 32),
        (32, 16, 4096, 32),
        (1, 16, 1024, 32),
        (64, 32, 2048, 128),
        (64, 8, 2048, 128),
        (1, 32, 4096, 128),
    ),  # B,H,L,D
    "elementwise": (
        ("gelu", (1048576, 1024)),
        ("silu_mul", (1048576, 1024)),
        ("rmsnorm", (1048576, 512)),
        ("softmax16", (1048576, 16)),
        ("topk2_of16", (1048576, 16)),
        ("add", (1048576, 512)),
        ("index_add", (1048576, 512)),
    ),
    "copy": (512 * 2**20,),  # bytes
    "launch": ("add_1elem_eager",),
}
#: --quick: a couple of small points per grid, enough to exercise every code path.
QUICK_GRIDS: dict[str, tuple[Any, ...]] = {
    "gemm": tuple((m, k, n) for k, n in ((512, 512), (512, 1024)) for m in (1, 16)),
    "bmm": ((16, 512, 1024, (1, 4)),),
    "sdpa_prefill": ((1, 4, 256, 32),),
    "sdpa_decode": ((2, 4, 256, 32),),
    "elementwise": tuple((op, (1024, cols)) for op, (_, cols) in GRIDS["elementwise"]),
    "copy": (4 * 2**20,),
    "launch": ("add_1elem_eager",),
}


def _import_torch():
    try:
        import torch
    except ImportError:
        raise RuntimeError("PyTorch is not installed: pip install 'moesim[torch]' (needs a CUDA GPU)") from None
    return torch


def _env(torch, device: str) -> dict:
    env = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update(
            name=props.name,
            sm_count=props.multi_processor_count,
            mem_bytes=props.total_memory,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
        env.update(name=platform.processor() or platform.machine(), sm_count=None, mem_bytes=mem, cuda=None, cudnn=None)
    return env


def bench_gemm(torch, t: Timer, device: str, points) -> list[dict]:
    """x[M,K] @ w[K,N]: tflops = 2MKN/s, gbps counts A, B and C once."""
    out = []
    for m, k, n in points:
        x, w = rand_fp16(torch, (m, k), device), rand_fp16(torch, (k, n), device)
        s = t.per_call_s(lambda: x @ w)
        out.append(
            {
                "M": m,
                "K": k,
                "N": n,
                "dtype": "fp16",
                "s": s,
                "tflops": 2 * m * k * n / s / 1e12,
                "gbps": (m * k + k * n + m * n) * FP16_BYTES / s / 1e9,
            }
        )
    return out


def bench_bmm(torch, t: Timer, device: str, grid) -> list[dict]:
    """torch.bmm over E experts, [E,C,K] x [E,K,N]: tflops = 2ECKN/s."""
    out = []
    for e, k, n, capacities in grid:
        w = rand_fp16(torch, (e, k, n), device)
        for c in capacities:
            x = rand_fp16(torch, (e, c, k), device)
            s = t.per_call_s(lambda: torch.bmm(x, w))
            out.append({"E": e, "C": c, "K": k, "N": n, "s": s, "tflops": 2 * e * c * k * n / s / 1e12})
    return out


def bench_sdpa_prefill(torch, t: Timer, device: str, grid) -> list[dict]:
    """Causal flash SDPA on q, k, v [B,H,S,D]: tflops counts 4*B*H*S*S*D/2 (half the square is skipped)."""
    import torch.nn.functional as F

    out = []
    for b, h, s_len, d in grid:
        q, k, v = (rand_fp16(torch, (b, h, s_len, d), device) for _ in range(3))
        with flash_attention_only(torch, device):
            s = t.per_call_s(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        out.append(
            {
                "B": b,
                "H": h,
                "S": s_len,
                "D": d,
                "causal": True,
                "s": s,
                "tflops": 4 * b * h * s_len * s_len * d / 2 / s / 1e12,
            }
        )
    return out


def bench_sdpa_decode(torch, t: Timer, device: str, grid) -> list[dict]:
    """One query per sequence against L cached keys/values, [B,H,1,D] vs [B,H,L,D]: gbps counts K+V read."""
    import torch.nn.functional as F

    out = []
    for b, h, kv_len, d in grid:
        q = rand_fp16(torch, (b, h, 1, d), device)
        k, v = (rand_fp16(torch, (b, h, kv_len, d), device) for _ in range(2))
        s = t.per_call_s(lambda: F.scaled_dot_product_attention(q, k, v))
        out.append({"B": b, "H": h, "L": kv_len, "D": d, "s": s, "gbps": 2 * b * h * kv_len * d * FP16_BYTES / s / 1e9})
    return out


def bench_elementwise(torch, t: Timer, device: str, grid) -> list[dict]:
    """Memory-bound ops on x [rows, cols] fp16; bytes_in is the size of x. silu_mul is SwiGLU's
    silu(x[:, :cols/2]) * x[:, cols/2:]; softmax16 returns fp32, as the router's; add is x + y;
    index_add is the sorted MoE's combine: the rows of x summed in pairs into rows/2 rows (fp16 atomics)."""
    import torch.nn.functional as F

    out = []
    for op, shape in grid:
        x = rand_fp16(torch, shape, device)
        w = torch.ones(shape[-1], device=device, dtype=torch.float16)
        y = rand_fp16(torch, shape, device) if op == "add" else None
        if op == "index_add":  # top-2: two rows per token, in random order
            pairs = torch.randperm(shape[0], device=device) // 2
            sums = torch.zeros(shape[0] // 2, shape[1], device=device, dtype=torch.float16)
        fn = {
            "gelu": lambda: F.gelu(x),
            "silu_mul": lambda: F.silu(x[:, : shape[1] // 2]) * x[:, shape[1] // 2 :],
            "rmsnorm": lambda: rms_norm(torch, x, w),
            "softmax16": lambda: torch.softmax(x, -1, dtype=torch.float32),
            "topk2_of16": lambda: torch.topk(x, 2, dim=-1),
            "add": lambda: x + y,
            "index_add": lambda: sums.index_add_(0, pairs, x),
        }[op]
        out.append({"op": op, "shape": list(shape), "s": t.per_call_s(fn), "bytes_in": x.numel() * FP16_BYTES})
    return out


def bench_copy(torch, t: Timer, device: str, grid) -> list[dict]:
    """Device-to-device copy of `bytes`: gbps_rw counts bytes read plus bytes written."""
    out = []
    for nbytes in grid:
        src = torch.empty(nbytes, device=device, dtype=torch.uint8)
        dst = torch.empty_like(src)
        s = t.per_call_s(lambda: dst.copy_(src))
        out.append({"bytes": nbytes, "s": s, "gbps_rw": 2 * nbytes / s / 1e9})
    return out


def bench_launch(torch, t: Timer, device: str, grid) -> list[dict]:
    """add_1elem_eager: an eager add on a 1-element tensor, the host-side cost of one kernel launch."""
    x = torch.zeros(1, device=device, dtype=torch.float16)
    return [{"op": op, "s": t.per_call_s(lambda: x + 1)} for op in grid]


def iter_sections(device: str = "cuda", quick: bool = False, include_e2e: bool = True, progress=None):
    """Yield (key, value) for each top-level key of the shared file's format, measuring as it goes."""
    torch = _import_torch()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            "no CUDA GPU visible: moesim calibrate --device cuda must run on a machine with an NVIDIA GPU"
        )
    progress = progress or (lambda message: None)
    t = Timer(torch, device, quick)
    grids = QUICK_GRIDS if quick else GRIDS
    sections = (
        ("gemm", bench_gemm),
        ("bmm", bench_bmm),
        ("sdpa_prefill", bench_sdpa_prefill),
        ("sdpa_decode", bench_sdpa_decode),
        ("elementwise", bench_elementwise),
        ("copy", bench_copy),
        ("launch", bench_launch),
    )
    yield "env", _env(torch, device)
    for key, bench in sections:
        start = time.perf_counter()
        with torch.inference_mode():
            value = bench(torch, t, device, grids[key])
        progress(f"{key}: {len(value)} points in {time.perf_counter() - start:.1f} s")
        yield key, value
        if device.startswith("cuda"):
            torch.cuda.empty_cache()  # the next grid's tensors differ in size: start unfragmented
    e2e: list[dict] = []
    breakdown: list[dict] = []
    if include_e2e:
        prefill = e2e_mod.QUICK_E2E_PREFILL if quick else e2e_mod.E2E_PREFILL
        decode = e2e_mod.QUICK_E2E_DECODE if quick else e2e_mod.E2E_DECODE
        with torch.inference_mode():
            e2e, breakdown = e2e_mod.bench_e2e(torch, t, device, prefill, decode, progress)
    yield "e2e_dev", e2e
    yield "kernel_breakdown", breakdown


def run_microbenchmarks(device: str = "cuda", quick: bool = False, include_e2e: bool = True, progress=None) -> dict:
    """Measure every micro-benchmark (and optionally the e2e cases) on `device`; the shared file's format.

    Raises RuntimeError (one line) when torch is missing or no CUDA GPU is visible for a cuda device.
    """
    return dict(iter_sections(device, quick, include_e2e, progress))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.calibration.microbench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (rewritten after each section)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="a couple of small points per grid (smoke test)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end forward passes")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    data: dict = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for key, value in iter_sections(args.device, args.quick, not args.no_e2e, progress):
            data[key] = value
            tmp = args.out.with_name(args.out.name + ".tmp")  # partial results survive a time limit
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, args.out)
    except RuntimeError as exc:  # also CUDA errors and out-of-memory: what was measured is kept
        kept = f" (kept {', '.join(data)} in {args.out})" if data else ""
        print(f"microbench: {str(exc).splitlines()[0]}{kept}", file=sys.stderr)
        return 2
    progress(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
