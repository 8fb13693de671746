"""What finer CUDA-graph capture sizes do in moesim's serving simulation, against TensorRT-LLM's own experiment
(docs/source/blogs/tech_blog/blog20_Tuning_CUDA_Graph_Batch_Sizes_for_Higher_Output_Throughput.md): the default
"x2" sizes (dense to 128, then 256, 512, 1024, 2048) against "+64" (every 64 from 192 to 2048), padding on, so a
decode batch runs padded to the next captured size.

    python benchmarks/bench_graph_sizes.py [--layout tp4|dep4] [CONCURRENCY ...]

The blog serves ISL 500 / OSL 2000 at a sweep of concurrencies on GB200s with TensorRT-LLM 1.3.0rc8 and reports,
from plots, "up to 1.3x" output throughput for +64 over x2 in aggregated TP4 (four models) and, for DeepSeek-R1
disaggregated with EP on 4 decode GPUs, "up to 1.5x around concurrency 500-600 before stabilizing at 1.1x". It
publishes neither its batch limits, MTP use nor which model peaked where, so the deployment here is stated in
full and the comparison is of where and roughly how much, not a validation case: DeepSeek R1 as the NVFP4
checkpoint of TensorRT-LLM's B200 guide runs (fp8 KV) on 4 GB200s (uncalibrated profile), aggregated, TP4 (`tp4`,
experts split by tensor parallelism) or attention DP + EP4 (`dep4`, the decode layout of the blog's disaggregated
runs, here with the prefills in the same iterations), max_num_seqs 2,048 and 8,192 tokens an iteration a rank,
each request whole, a closed loop of the concurrency with twice as many requests. It prints, per concurrency, the
output tokens/s of both size sets and their ratio.
"""

from __future__ import annotations

import argparse
import time

from simulator.config import parse_scenario, resolve_hardware
from simulator.serving.capacity import resolve_serving
from simulator.serving.pricing import CachedPricer
from simulator.serving.session import engine_pricer
from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import summarize

X2 = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 256, 512, 1024, 2048)
PLUS64 = tuple(s for s in X2 if s <= 128) + tuple(range(192, 2049, 64))
LAYOUTS = {"tp4": {"tp": 4, "ep": 1, "etp": 4}, "dep4": {"tp": 1, "dp": 4, "ep": 4}}
CONCURRENCIES = (136, 200, 260, 320, 400, 520, 576, 640, 800, 1040, 1536, 2000)


def output_tokens_per_s(layout: str, concurrency: int, sizes: tuple[int, ...]) -> float:
    data = {
        "name": f"dsr1_gb200_{layout}_graph_sizes",
        "model": {
            "preset": "deepseek-v3",
            "name": "deepseek-r1",
            "precision": {"preset": "nvfp4", "dense_gemm": "bf16", "kv_cache": "fp8"},
        },
        "hardware": "gb200-nvl72-186gb",
        "cluster": {"num_gpus": 4, "gpus_per_node": 4},
        "parallel": LAYOUTS[layout],
        "workload": {"batch_size": 4, "input_len_tokens": 1, "output_len_tokens": 1},
        "serving": {
            "engine": "trtllm-1.0",
            "cuda_graph": {"sizes": list(sizes), "padding": True},
            "workload": {
                "arrivals": {"kind": "closed_loop", "concurrency": concurrency},
                "input_len": {"kind": "fixed", "tokens": 500},
                "output_len": {"kind": "fixed", "tokens": 2000},
                "num_requests": 2 * concurrency,
            },
            "scheduler": {"max_num_seqs": 2048, "max_num_batched_tokens": 8192},
        },
    }
    s = parse_scenario(data, "bench_graph_sizes")
    hw = resolve_hardware(s)
    spec = resolve_serving(s, hw)
    run = simulate_serving(spec, CachedPricer(engine_pricer(s, hw, spec)))
    return summarize(run).figures["output_tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="tp4")
    parser.add_argument("concurrency", type=int, nargs="*", default=list(CONCURRENCIES))
    args = parser.parse_args()
    for c in args.concurrency:
        started = time.perf_counter()
        x2, plus64 = (output_tokens_per_s(args.layout, c, sizes) for sizes in (X2, PLUS64))
        print(
            f"{args.layout} concurrency {c}: x2 {x2:,.0f}, +64 {plus64:,.0f} output tokens/s: "
            f"{plus64 / x2:.3f}x ({time.perf_counter() - started:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
