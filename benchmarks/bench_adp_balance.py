"""What TensorRT-LLM's attention-DP balance does in moesim's serving simulation: one DEP8 deployment served
three ways, as TensorRT-LLM's ADP balance blog (docs/source/blogs/tech_blog/blog10_ADP_Balance_Strategy.md)
serves DeepSeek V3 on 8 GB200s: balance off, "context wait" (timeout_iters 50, batching_wait_iters 0) and the
full strategy (timeout_iters 50, batching_wait_iters 10).

    python benchmarks/bench_adp_balance.py [--requests N] [--input-std T] [--output-std T] [--router R]

The blog publishes its means only (16,000 requests, 803 tokens in and 3,653 out on average, long-tailed; no
batch limits, precision or engine version), so the deployment here is an assumption stated in full: DeepSeek R1
as the NVFP4 checkpoint of TensorRT-LLM's B200 guide runs (validation/serving_cases_trtllm_dsr1_b200.yaml) on
the uncalibrated gb200-nvl72-186gb profile, 384 sequences a rank, lognormal lengths with those means (standard
deviations as given; prompts up to 4,096 tokens, outputs up to 32,768), 4,096 + 384 tokens an iteration (whole
prompts, as TensorRT-LLM runs them without chunked context: the longest beside a full batch's decodes, as
trtllm-bench sizes it), every request queued at once. What compares with the
blog is the direction and the rough size of the gains and of the balance ratio, not the tokens per second. It
prints, per setting: output tokens/s, the rank balance (the blog's "balance ratio"), the iterations whose
prompts were held, and the wall time.
"""

from __future__ import annotations

import argparse
import time

from simulator.config import parse_scenario, resolve_hardware
from simulator.serving.capacity import resolve_serving
from simulator.serving.pricing import CachedPricer
from simulator.serving.session import engine_pricer
from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import group_balance_ratio, summarize

SETTINGS = (
    ("off (TensorRT-LLM's default)", None),
    ("context wait (timeout 50)", {"timeout_iters": 50, "batching_wait_iters": 0}),
    ("full (timeout 50, batching wait 10)", {"timeout_iters": 50, "batching_wait_iters": 10}),
)
BLOG = {  # the blog's table: output tokens/s, mean balance ratio
    "off (TensorRT-LLM's default)": (25_664, 0.5411),
    "context wait (timeout 50)": (33_499, 0.8433),
    "full (timeout 50, batching wait 10)": (34_140, 0.8770),
}


def scenario(
    requests: int, input_std: float, output_std: float, balance: dict | None, router: str | None = None
) -> dict:
    replicas = {} if balance is None else {"attention_dp_balance": balance}
    if router is not None:
        replicas["router"] = router
    return {
        "name": "dsr1_gb200_dep8_adp_balance",
        "model": {
            "preset": "deepseek-v3",
            "name": "deepseek-r1",
            "precision": {
                "preset": "nvfp4",
                "dense_gemm": "bf16",
                "kv_cache": "fp8",
                "communication": {"dispatch": "nvfp4"},
            },
        },
        "hardware": "gb200-nvl72-186gb",
        "cluster": {"num_gpus": 8, "gpus_per_node": 4},
        "parallel": {"tp": 1, "dp": 8, "ep": 8},
        "runtime": {"ep_dispatch": "allgather"},
        "workload": {"batch_size": 8, "input_len_tokens": 1, "output_len_tokens": 1},
        "serving": {
            "engine": "trtllm-1.0",
            "replicas": replicas,
            "workload": {
                "arrivals": {"kind": "closed_loop", "concurrency": requests},
                "input_len": {"kind": "lognormal", "mean_tokens": 803, "std_tokens": input_std, "max_tokens": 4096},
                "output_len": {"kind": "lognormal", "mean_tokens": 3653, "std_tokens": output_std, "max_tokens": 32768},
                "num_requests": requests,
                "seed": 0,
            },
            "scheduler": {
                "policy": "chunked_prefill",
                "max_num_seqs": 384,
                "max_num_batched_tokens": 4096 + 384,  # the longest prompt beside a full batch's decodes
                "admission": "reserve",
                "kv_cache": {"block_size_tokens": 32, "free_memory_fraction": 0.85},
            },
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16_000, help="requests (the blog's 16,000)")
    parser.add_argument("--input-std", type=float, default=400.0, help="std of the prompt lengths (assumed)")
    parser.add_argument("--output-std", type=float, default=3000.0, help="std of the output lengths (assumed)")
    parser.add_argument(
        "--router",
        choices=["round_robin", "least_loaded", "attention_dp"],
        help="the group's router (default: the engine's, TensorRT-LLM's attention-DP queue)",
    )
    args = parser.parse_args()
    base_s = None
    for label, balance in SETTINGS:
        data = scenario(args.requests, args.input_std, args.output_std, balance, args.router)
        s = parse_scenario(data, "bench_adp_balance")
        hw = resolve_hardware(s)
        spec = resolve_serving(s, hw)
        started = time.perf_counter()
        run = simulate_serving(spec, CachedPricer(engine_pricer(s, hw, spec)))
        wall_s = time.perf_counter() - started
        tokens_s = summarize(run).figures["output_tokens_per_s"]
        base_s = base_s or tokens_s
        blog_tokens, blog_ratio = BLOG[label]
        print(
            f"{label}: {tokens_s:,.0f} output tokens/s ({tokens_s / base_s:.2f}x; blog {blog_tokens:,}, "
            f"{blog_tokens / BLOG[SETTINGS[0][0]][0]:.2f}x), rank balance {group_balance_ratio(run):.3f} (blog "
            f"{blog_ratio:.3f}), prompts held in {run.balance_held or 0:,} iterations, {wall_s:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
