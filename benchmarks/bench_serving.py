"""Benchmark of the serving simulation: requests simulated per second of wall time, 10,000 requests.

    python benchmarks/bench_serving.py [--requests N] [--policy chunked_prefill|prefill_first_chunked|continuous|static]
    python benchmarks/bench_serving.py --scenario scenarios/seed_moe_4gpu_serving.yaml [--requests N] [--rate R]
    python benchmarks/bench_serving.py --scenario scenarios/mixtral_8x7b_64gpu.yaml
    python benchmarks/bench_serving.py --scenario scenarios/seed_moe_4gpu_disagg.yaml [--requests N] [--rate R]
    python benchmarks/bench_serving.py --case validation/serving_cases_trtllm_dsr1_b200.yaml:ID [--requests N] [--step-by-step]

With --case a validation case runs as `moesim validate` runs it (its engine profile and pricer), its own requests
or the first N; --step-by-step runs it again scheduling and completing every sequence every iteration
(simulate_serving(fast_forward=False)) and says whether both runs agree in every row and token time.

A disaggregated scenario (serving.disaggregation) runs both pools and the KV transfers (serving.disagg); it
prints the wall time, iterations of both pools, transfers and link flows, and each pool's exact DAG passes.

With --scenario the iterations are priced by the operator DAG (serving.dag_pricer.DagPricer) on the scenario's
GPUs; a scenario without a serving section borrows the one of scenarios/mixtral_8x7b_8xh200_chunked.yaml. It
prints the requests, iterations, wall seconds, exact DAG passes simulated, iterations priced from the grid of
exact passes, and the largest relative error of the fast price against the exact DAG pass on 40 batches drawn
from the run.

The workload is ShareGPT-like in size (prompts uniform on 50..1000 tokens, outputs on 1..400: ~2 M output
tokens), Poisson at 20 requests/s onto one replica of 128 sequences; the pricer is LinearPricer behind a
CachedPricer and, for reference, LinearPricer alone. Ragged decode batches of random lengths almost never
repeat, so the cache's hits are ~0 here: the figure shows its overhead (sorting and hashing each batch).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import yaml

from simulator.config import load_scenario, parse_scenario, resolve_hardware
from simulator.config.serving import parse_serving_spec
from simulator.serving.capacity import resolve_serving
from simulator.serving.dag_pricer import DagPricer, price_error
from simulator.serving.disagg import disaggregated_inputs
from simulator.serving.pricing import CachedPricer, LinearPricer
from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import summarize

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, help="requests to simulate (10,000; with --case: the case's own)")
    parser.add_argument(
        "--policy",
        default="chunked_prefill",
        choices=["static", "continuous", "chunked_prefill", "prefill_first_chunked"],
    )
    parser.add_argument("--scenario", help="price iterations with DagPricer on this scenario")
    parser.add_argument("--rate", type=float, help="Poisson rate (requests/s) instead of the scenario's")
    parser.add_argument("--case", help="FILE:ID, a serving validation case")
    parser.add_argument("--step-by-step", action="store_true", help="with --case: also without decode runs")
    args = parser.parse_args()
    if args.case:
        return bench_case(args)
    args.requests = args.requests or 10_000
    if args.scenario:
        return bench_scenario(args)
    spec = parse_serving_spec(
        {
            "workload": {
                "arrivals": {"kind": "poisson", "rate_per_s": 20.0},
                "num_requests": args.requests,
                "seed": 1,
                "input_len": {"kind": "uniform", "min_tokens": 50, "max_tokens": 1000},
                "output_len": {"kind": "uniform", "min_tokens": 1, "max_tokens": 400},
            },
            "scheduler": {
                "policy": args.policy,
                "max_num_seqs": 128,
                "max_num_batched_tokens": 4096,
                "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 4000},
            },
        }
    )
    linear = LinearPricer(0.01, 1e-5, 1e-7)
    for name, pricer in (("cached (exact keys)", CachedPricer(linear)), ("uncached", linear)):
        start = time.perf_counter()
        run = simulate_serving(spec, pricer)
        wall_s = time.perf_counter() - start
        tokens = sum(r.output_tokens for r in run.records)
        hits = f", cache hits {pricer.hits}/{pricer.hits + pricer.misses}" if isinstance(pricer, CachedPricer) else ""
        print(
            f"{args.policy}, {name}: {args.requests} requests ({tokens} output tokens, {run.num_iterations} "
            f"iterations) in {wall_s:.2f} s = {args.requests / wall_s:,.0f} requests/s simulated{hits}"
        )
    summary = summarize(run)
    print(
        f"simulated: {summary.figures['output_tokens_per_s']:.0f} output tokens/s, "
        f"TTFT p99 {summary.latency.loc['ttft_s', 'p99']:.3f} s, TPOT p99 {summary.latency.loc['tpot_s', 'p99']:.4f} s"
    )


class Sampling:
    """The pricer, keeping a uniform sample (reservoir) of the batches it priced."""

    def __init__(self, pricer: DagPricer, size: int = 40) -> None:
        self.pricer, self.size, self.seen, self.sample = pricer, size, 0, []
        self.rng = random.Random(0)

    def timing(self, batch):
        self.seen += 1
        if len(self.sample) < self.size:
            self.sample.append(batch)
        elif (j := self.rng.randrange(self.seen)) < self.size:
            self.sample[j] = batch
        return self.pricer.timing(batch)

    def __call__(self, batch):
        return self.timing(batch).latency_s


def bench_disaggregated(args, scenario) -> None:
    start = time.perf_counter()
    deployment = disaggregated_inputs(scenario)
    setup_s = time.perf_counter() - start
    spec = scenario.serving
    workload = {"num_requests": args.requests, "duration_s": None}
    if args.rate:
        workload["arrivals"] = spec.workload.arrivals.model_copy(update={"rate_per_s": args.rate})
    spec = spec.model_copy(update={"workload": spec.workload.model_copy(update=workload)})
    start = time.perf_counter()
    run = deployment.simulate(spec, ROOT / "scenarios")
    wall_s = time.perf_counter() - start
    summary = summarize(run)
    f = summary.figures
    flows = len(deployment.fabric.routes[(0, 0)])
    passes = [pool.pricer.pricer.exact_passes for pool in (deployment.prefill, deployment.decode)]
    print(
        f"{scenario.name} ({deployment.describe()}, {deployment.num_gpus} GPUs): {len(run.records)} requests, "
        f"{run.num_iterations} iterations of both pools, {len(run.disaggregation.transfers['request_id'])} KV "
        f"transfers ({flows} flows each) in {wall_s:.2f} s (+{setup_s:.2f} s resolving both pools); exact DAG "
        f"passes: prefill {passes[0]}, decode {passes[1]}"
    )
    print(
        f"simulated: {f['output_tokens_per_s']:.0f} output tokens/s, TTFT p99 {summary.latency.loc['ttft_s', 'p99']:.3f} s, "
        f"TPOT p99 {summary.latency.loc['tpot_s', 'p99']:.4f} s, transfer p99 {f['transfer_p99_s'] * 1e3:.3f} ms, "
        f"busiest port {f['link_utilisation_max']:.1%} utilised"
    )


def bench_scenario(args) -> None:
    scenario = load_scenario(args.scenario)
    if scenario.serving is not None and scenario.serving.disaggregation is not None:
        return bench_disaggregated(args, scenario)
    if scenario.serving is None:
        borrowed = yaml.safe_load((ROOT / "scenarios" / "mixtral_8x7b_8xh200_chunked.yaml").read_text())["serving"]
        scenario = parse_scenario({**scenario.model_dump(exclude_none=True), "serving": borrowed}, args.scenario)
    hw = resolve_hardware(scenario)
    start = time.perf_counter()
    spec = resolve_serving(scenario, hw)
    workload = {"num_requests": args.requests, "duration_s": None}
    if args.rate:
        workload["arrivals"] = spec.workload.arrivals.model_copy(update={"rate_per_s": args.rate})
    spec = spec.model_copy(update={"workload": spec.workload.model_copy(update=workload)})
    pricer = DagPricer(scenario, hw)
    setup_s = time.perf_counter() - start
    sampling = Sampling(pricer)
    start = time.perf_counter()
    run = simulate_serving(spec, sampling, base_dir=ROOT / "scenarios")
    wall_s = time.perf_counter() - start
    error = price_error(pricer, sampling.sample)
    summary = summarize(run)
    print(
        f"{scenario.name} ({scenario.num_gpus} GPUs, {spec.replicas.count} replica(s) x {spec.scheduler.pipeline_batches} "
        f"pipeline batch(es), {spec.scheduler.kv_cache.capacity_blocks} KV blocks): {len(run.records)} requests, "
        f"{run.num_iterations} iterations in {wall_s:.2f} s (+{setup_s:.2f} s resolving the spec), "
        f"{pricer.exact_passes} exact DAG passes, {pricer.grid_hits} iterations priced from the grid; "
        f"max error of the fast price vs the exact DAG pass on {len(sampling.sample)} of its batches: {error:.3%}"
    )
    print(
        f"simulated: {summary.figures['output_tokens_per_s']:.0f} output tokens/s, "
        f"TTFT p99 {summary.latency.loc['ttft_s', 'p99']:.3f} s, TPOT p99 {summary.latency.loc['tpot_s', 'p99']:.4f} s"
    )


def bench_case(args) -> None:
    import numpy as np

    from simulator.calibration.serving_validate import case_scenario, load_serving_cases
    from simulator.serving.session import serving_inputs
    from simulator.serving.workload import generate_requests

    path, _, case_id = args.case.rpartition(":")
    case = next((c for c in load_serving_cases(Path(path)) if c.id == case_id), None)
    if case is None:
        raise SystemExit(f"--case: no case {case_id!r} in {path}")
    spec, pricer, _ = serving_inputs(case_scenario(case))
    requests = generate_requests(spec)
    if args.requests and args.requests < len(requests):
        requests = requests[: args.requests]
        spec = spec.model_copy(update={"workload": spec.workload.model_copy(update={"num_requests": len(requests)})})
    runs = []
    for fast in (True, False) if args.step_by_step else (True,):
        start = time.perf_counter()
        run = simulate_serving(spec, pricer, requests, fast_forward=fast)
        wall_s = time.perf_counter() - start
        steps = int(run.timeseries["batch_seqs"].sum())
        how = "decode runs at once" if fast else "step by step"
        print(
            f"{case_id}, {how}: {len(requests)} requests, {run.num_iterations} replica iterations, "
            f"{steps:,} sequence-steps in {wall_s:.2f} s "
            f"({summarize(run).figures['output_tokens_per_s']:.1f} output tokens/s simulated)"
        )
        runs.append(run)
    if len(runs) == 2:
        a, b = runs
        same = a.end_s == b.end_s and all(np.array_equal(a.timeseries[k], b.timeseries[k]) for k in a.timeseries)
        same = same and all(np.array_equal(x.token_times_s, y.token_times_s) for x, y in zip(a.records, b.records))
        print(f"the two runs agree in every row and token time: {same}")


if __name__ == "__main__":
    main()
