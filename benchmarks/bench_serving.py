"""Benchmark of the serving simulation: requests simulated per second of wall time, 10,000 requests.

    python benchmarks/bench_serving.py [--requests N] [--policy chunked_prefill|continuous|static]

The workload is ShareGPT-like in size (prompts uniform on 50..1000 tokens, outputs on 1..400: ~2 M output
tokens), Poisson at 20 requests/s onto one replica of 128 sequences; the pricer is LinearPricer behind a
CachedPricer and, for reference, LinearPricer alone. Ragged decode batches of random lengths almost never
repeat, so the cache's hits are ~0 here: the figure shows its overhead (sorting and hashing each batch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.serving.pricing import CachedPricer, LinearPricer  # noqa: E402
from simulator.serving.simulate import simulate_serving  # noqa: E402
from simulator.config.serving import parse_serving_spec  # noqa: E402
from simulator.serving.stats import summarize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--policy", default="chunked_prefill", choices=["static", "continuous", "chunked_prefill"])
    args = parser.parse_args()
    spec = parse_serving_spec({
        "workload": {"arrivals": {"kind": "poisson", "rate_per_s": 20.0}, "num_requests": args.requests, "seed": 1,
                     "input_len": {"kind": "uniform", "min_tokens": 50, "max_tokens": 1000},
                     "output_len": {"kind": "uniform", "min_tokens": 1, "max_tokens": 400}},
        "scheduler": {"policy": args.policy, "max_num_seqs": 128, "max_num_batched_tokens": 4096,
                      "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 4000}},
    })
    linear = LinearPricer(0.01, 1e-5, 1e-7)
    for name, pricer in (("cached (exact keys)", CachedPricer(linear)),
                         ("uncached", linear)):
        start = time.perf_counter()
        run = simulate_serving(spec, pricer)
        wall_s = time.perf_counter() - start
        tokens = sum(r.output_tokens for r in run.records)
        hits = f", cache hits {pricer.hits}/{pricer.hits + pricer.misses}" if isinstance(pricer, CachedPricer) else ""
        print(f"{args.policy}, {name}: {args.requests} requests ({tokens} output tokens, {run.num_iterations} "
              f"iterations) in {wall_s:.2f} s = {args.requests / wall_s:,.0f} requests/s simulated{hits}")
    summary = summarize(run)
    print(f"simulated: {summary.figures['output_tokens_per_s']:.0f} output tokens/s, "
          f"TTFT p99 {summary.latency.loc['ttft_s', 'p99']:.3f} s, TPOT p99 {summary.latency.loc['tpot_s', 'p99']:.4f} s")


if __name__ == "__main__":
    main()
