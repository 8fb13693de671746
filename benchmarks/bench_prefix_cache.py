"""What prefix caching of a shared system prompt does in moesim's serving simulation: one deployment served with
the cache off and on, at a few request rates, for a few shared-prefix lengths.

    python benchmarks/bench_prefix_cache.py [--requests N] [--rates R,R,..] [--prefixes P,P,..] [--groups G]

The deployment (stated in full, not a published run): Qwen3-30B-A3B fp8 on one H100 with vLLM 0.11
(scenarios/qwen3_30b_a3b_fp8_1xh100_vllm.yaml, its engine's limits), Poisson arrivals, prompts of 2,048 tokens
whose first P are one of G shared prefixes (`vllm bench serve --random-prefix-len P` when G = 1), outputs of 256.
Per setting it prints the prompt tokens read from the cache, TTFT p50 / p99, TPOT p50, output tokens/s, the KV
cache's peak, and the wall time. What the cache saves is what the engines skip: the cached blocks' prefill work;
the attention of the rest still reads their KV.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import simulator

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "qwen3_30b_a3b_fp8_1xh100_vllm.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests a run (default 2,000)")
    parser.add_argument("--rates", default="4,8,12", help="Poisson rates, requests/s, comma-separated")
    parser.add_argument("--prefixes", default="512,1536", help="shared prefix lengths, tokens, comma-separated")
    parser.add_argument("--groups", type=int, default=1, help="distinct shared prefixes (default 1)")
    args = parser.parse_args()
    for prefix in (int(p) for p in args.prefixes.split(",")):
        for rate in (float(r) for r in args.rates.split(",")):
            for caching in (False, True):
                scenario = simulator.load(
                    SCENARIO,
                    [
                        f"serving.workload.arrivals={{kind: poisson, rate_per_s: {rate}}}",
                        "serving.workload.input_len={kind: fixed, tokens: 2048}",
                        "serving.workload.output_len={kind: fixed, tokens: 256}",
                        f"serving.workload.num_requests={args.requests}",
                        f"serving.workload.shared_prefix={{tokens: {prefix}, groups: {args.groups}}}",
                        f"serving.scheduler.prefix_caching={str(caching).lower()}",
                    ],
                )
                label = f"prefix {prefix} x{args.groups}, rate {rate:g}/s, cache {'on ' if caching else 'off'}"
                print(f"{label}: {served_figures(scenario)}", flush=True)


def served_figures(scenario) -> str:
    """Serve `scenario` and tell what the prefix cache read, TTFT p50 / p99, TPOT p50, output tokens/s, the KV
    cache's peak and the wall time (shared with bench_conversation.py)."""
    started = time.perf_counter()
    served = simulator.serve(scenario)
    wall_s = time.perf_counter() - started
    lat, fig, stats = served.latency, served.figures, served.stats
    cached = stats.get("prefix_cache", {}).get("hit_fraction", 0.0)
    return (
        f"{100 * cached:4.1f} % of prompt tokens from the cache; TTFT p50 {lat.loc['ttft_s', 'p50'] * 1e3:7.1f} ms, "
        f"p99 {lat.loc['ttft_s', 'p99'] * 1e3:7.1f} ms; TPOT p50 {lat.loc['tpot_s', 'p50'] * 1e3:5.2f} ms; "
        f"{fig['output_tokens_per_s']:,.0f} output tokens/s; KV peak {stats['figures']['kv_peak_blocks']:,.0f} "
        f"blocks; {wall_s:.1f} s"
    )


if __name__ == "__main__":
    main()
