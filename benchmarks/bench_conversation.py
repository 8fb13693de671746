"""What multi-turn conversations do in moesim's serving simulation: the same turns served with the prefix cache off
and on, at a few conversation rates, on one replica and on two (where the router decides whether a turn finds its
conversation's blocks).

    python benchmarks/bench_conversation.py [--conversations N] [--turns T] [--rates R,R,..] [--think S]

The deployment (stated in full, not a published run): Qwen3-30B-A3B fp8 on H100s with vLLM 0.11
(scenarios/qwen3_30b_a3b_fp8_1xh100_vllm.yaml, its engine's limits), conversations starting as a Poisson process,
each of T turns: a new message of 512 tokens, a reply of 256, the next turn sent S seconds after a reply ends (SGLang's
bench_multiturn, vLLM's benchmarks/multi_turn). Turn t's prompt is the conversation so far, t x 768 - 256 tokens.
Per setting it prints the prompt tokens read from the cache, TTFT p50 / p99, TPOT p50, output tokens/s, the KV
cache's peak and the wall time. On two data-parallel replicas (two H100s, independent engines), round robin sends
a conversation's turns to either replica, so a turn finds its blocks only where the turn before it ran; the
least-loaded router does no better, since neither routes by conversation; the session router (every turn of a
conversation to one replica) finds them all, as one GPU does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_prefix_cache import served_figures

import simulator

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "qwen3_30b_a3b_fp8_1xh100_vllm.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=200, help="conversations a run (default 200)")
    parser.add_argument("--turns", type=int, default=4, help="turns a conversation (default 4)")
    parser.add_argument("--rates", default="2,6,10", help="conversations started a second, comma-separated")
    parser.add_argument("--think", type=float, default=2.0, help="seconds between a reply and the next turn")
    args = parser.parse_args()
    layouts = [
        ("1 GPU", [], 1),
        ("DP2 round robin", ["cluster.num_gpus=2", "parallel.dp=2", "serving.replicas.router=round_robin"], 2),
        ("DP2 least loaded", ["cluster.num_gpus=2", "parallel.dp=2", "serving.replicas.router=least_loaded"], 2),
        ("DP2 session", ["cluster.num_gpus=2", "parallel.dp=2", "serving.replicas.router=session"], 2),
    ]
    for name, layout, gpus in layouts:
        for rate in (float(r) for r in args.rates.split(",")):
            for caching in (False, True):
                scenario = simulator.load(
                    SCENARIO,
                    [
                        *layout,
                        f"serving.workload.arrivals={{kind: poisson, rate_per_s: {rate * gpus}}}",
                        "serving.workload.input_len={kind: fixed, tokens: 512}",
                        "serving.workload.output_len={kind: fixed, tokens: 256}",
                        f"serving.workload.num_requests={args.conversations * args.turns * gpus}",
                        f"serving.workload.conversation={{turns: {args.turns}, think_time_s: {args.think}}}",
                        f"serving.scheduler.prefix_caching={str(caching).lower()}",
                    ],
                )
                label = f"{name}, {rate * gpus:g} conversations/s, cache {'on ' if caching else 'off'}"
                print(f"{label}: {served_figures(scenario)}", flush=True)


if __name__ == "__main__":
    main()
