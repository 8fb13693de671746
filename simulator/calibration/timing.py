"""Calibration stage, shared helpers: the per-call timer and the fp16 tensors, flash-attention
restriction and RMSNorm that the micro-benchmarks and the end-to-end passes both use.

torch is never imported at module level: callers pass the module in, so the simulator runs without it.
"""

from __future__ import annotations

import contextlib
import statistics
import time

REPS, QUICK_REPS = 5, 3
TARGET_REP_S, QUICK_TARGET_REP_S = 0.02, 0.002
MAX_CALLS, QUICK_MAX_CALLS = 200, 10


class Timer:
    """Seconds per call of fn: median over reps of `calls` back-to-back calls, after warm-up."""

    def __init__(self, torch, device: str, quick: bool):
        self.torch, self.cuda = torch, device.startswith("cuda")
        self.reps = QUICK_REPS if quick else REPS
        self.target_s = QUICK_TARGET_REP_S if quick else TARGET_REP_S
        self.max_calls = QUICK_MAX_CALLS if quick else MAX_CALLS

    def sync(self) -> None:
        (self.torch.cuda if self.cuda else self.torch.cpu).synchronize()

    def _run(self, fn, calls: int) -> float:
        if self.cuda:
            start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
        else:
            self.sync()
            t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if self.cuda:
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        self.sync()
        return time.perf_counter() - t0

    def per_call_s(self, fn) -> float:
        fn()
        probe_s = self._run(fn, 1)
        calls = max(1, min(self.max_calls, round(self.target_s / max(probe_s, 1e-7))))
        return statistics.median(self._run(fn, calls) / calls for _ in range(self.reps))


def flash_attention_only(torch, device: str):
    """Restrict SDPA to the flash-style kernels (cuDNN, FlashAttention) on CUDA; nothing on CPU."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION])


def rand_fp16(torch, shape, device, scale: float = 1.0):
    return torch.randn(shape, device=device, dtype=torch.float16) * scale


def rms_norm(torch, x, weight, eps: float = 1e-6):
    import torch.nn.functional as F

    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight
