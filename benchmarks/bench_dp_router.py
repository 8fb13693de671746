"""How vLLM's data-parallel load balancer routes an open request stream in moesim, against the two textbook
rules: one MoE deployment with attention DP + EP on vLLM V1, served three ways at a few request rates.

    python benchmarks/bench_dp_router.py [--requests N] [--rates R,R,..] [--gpus G]

The deployment (an assumption stated in full, not a published run): Qwen3-30B-A3B fp8 as
scenarios/qwen3_30b_a3b_fp8_1xh100_vllm.yaml has it, on G H100s (default 4) with dp = ep = G, vLLM 0.11's limits
(1,024 sequences, 8,192 tokens a rank), Poisson arrivals, lognormal lengths (prompts mean 2,000, std 1,500, up to
8,000 tokens; outputs mean 400, std 400, up to 2,000). Routers:

- vllm_dp: vLLM's (serving.dp_router): lowest waiting x 4 + running, from counts published every 100 ms, plus the
  requests it sent since (the `vllm-v1` profile's default for such a group);
- least_loaded: the fewest requests (waiting + running) at the arrival's instant, an ideal front end;
- round_robin: what vLLM does for a dense model's independent DP ranks.

Per rate and router it prints TTFT p50 / p99, TPOT p99, the rank balance (the ranks' mean new tokens an iteration
over the largest, averaged), output tokens/s and the wall time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import simulator

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "qwen3_30b_a3b_fp8_1xh100_vllm.yaml"
ROUTERS = ("vllm_dp", "least_loaded", "round_robin")


def overrides(gpus: int, rate: float, requests: int, router: str) -> list[str]:
    return [
        f"cluster.num_gpus={gpus}",
        f"parallel.dp={gpus}",
        f"parallel.ep={gpus}",
        f"workload.batch_size={gpus}",
        f"serving.workload.arrivals={{kind: poisson, rate_per_s: {rate}}}",
        "serving.workload.input_len={kind: lognormal, mean_tokens: 2000, std_tokens: 1500, max_tokens: 8000}",
        "serving.workload.output_len={kind: lognormal, mean_tokens: 400, std_tokens: 400, max_tokens: 2000}",
        f"serving.workload.num_requests={requests}",
        f"serving.replicas.router={router}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests a run (default 4,000)")
    parser.add_argument("--rates", default="10,20,30", help="Poisson rates, requests/s, comma-separated")
    parser.add_argument("--gpus", type=int, default=4, help="GPUs = dp = ep (default 4)")
    args = parser.parse_args()
    for rate in (float(r) for r in args.rates.split(",")):
        for router in ROUTERS:
            scenario = simulator.load(SCENARIO, overrides(args.gpus, rate, args.requests, router))
            started = time.perf_counter()
            served = simulator.serve(scenario)
            wall_s = time.perf_counter() - started
            lat, fig = served.latency, served.figures
            print(
                f"rate {rate:g}/s {router:12s}: TTFT p50 {lat.loc['ttft_s', 'p50'] * 1e3:8.1f} ms, p99 "
                f"{lat.loc['ttft_s', 'p99'] * 1e3:8.1f} ms; TPOT p99 {lat.loc['tpot_s', 'p99'] * 1e3:6.2f} ms; "
                f"rank balance {served.stats['lockstep']['balance_ratio']:.3f}; {fig['output_tokens_per_s']:,.0f} "
                f"output tokens/s; {wall_s:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
