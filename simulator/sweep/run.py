"""Sweep stage, running: screen the layouts that cannot fit, simulate the rest on an executor, in enumeration order.

Layouts whose weights and KV cache alone exceed a GPU's memory are screened out in closed form; the
rest are simulated on any `concurrent.futures.Executor` and come back in enumeration order, so a
sweep gives the same table serial or parallel. Ctrl-C stops a sweep with its finished layouts
handed on (`simulator.sweep.resume` keeps them for `--resume`).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import replace

from simulator.config import ParallelSpec, Scenario, resolve_hardware, with_layout
from simulator.memory import kv_cache_bytes_per_gpu, weight_bytes_per_gpu
from simulator.placement import evenly_routed
from simulator.sweep.executors import SerialExecutor
from simulator.sweep.results import LayoutResult, TargetVerdict, cost_shares, failed_result

DEFAULT_DECODE_SAMPLE = 8


def run_folded(scenario: Scenario, decode_sample: int):
    """The sweep's simulation of one scenario (call it inside pipeline.no_gc): no verification, no
    critical-path explanation, `decode_sample` decode steps (0: all), one of its independent identical dp
    replicas when it has them (pipeline.one_replica), and one GPU of each set of identical ones (fold)."""
    from simulator.pipeline import one_replica, run_scenario

    hw = resolve_hardware(scenario)
    return run_scenario(
        one_replica(scenario, hw) or scenario,
        verify=False,
        decode_sample=decode_sample or None,
        fold=True,
        explain=False,
        hw=hw,
    )


def simulate_layout(index: int, own: bool, scenario: Scenario, decode_sample: int) -> LayoutResult:
    """Simulate one layout (runs in a worker); an error becomes a 'failed' row, not an exception.
    Layouts made of independent, identical dp replicas simulate one of them (pipeline.one_replica:
    the same figures, dp times less work), and stages whose GPUs are exactly alike simulate one
    GPU each (run_scenario's fold: graph.symmetric_representatives)."""
    from simulator.pipeline import no_gc

    layout = scenario.parallel.without_split()
    started = time.perf_counter()
    try:
        with no_gc():
            run = run_folded(scenario, decode_sample)
            shares = cost_shares(run)
        m = run.metrics
        return LayoutResult(
            index=index,
            layout=layout,
            own=own,
            status="ok",
            ttft_mean_s=m.ttft_s.mean,
            ttft_max_s=m.ttft_s.max,
            tpot_s=m.tpot_s,
            throughput=dict(m.throughput),
            memory_bytes_per_gpu=max(g.total_bytes for g in m.memory),
            capacity_bytes=run.hardware.memory_bytes,
            targets=tuple(TargetVerdict.of(t) for t in m.targets),
            cost_shares=shares,
            sim_s=time.perf_counter() - started,
        )
    except Exception as exc:  # recorded in the table; the sweep goes on
        return failed_result(index, layout, own, exc)


def screen_memory(scenario: Scenario, capacity_bytes: float) -> float | None:
    """Weights + peak KV cache + runtime reserve of the fullest GPU when that alone exceeds the
    capacity (the layout cannot run, whatever its activations); None when it may fit."""
    reserve = scenario.runtime.memory_reserve_bytes
    # The GPUs of a stage hold alike (its layers; num_experts / ep experts each): one per stage.
    per_stage = scenario.parallel.dp * scenario.parallel.tp
    need = (
        max(
            weight_bytes_per_gpu(scenario, g) + kv_cache_bytes_per_gpu(scenario, g)
            for g in range(0, scenario.num_gpus, per_stage)
        )
        + reserve
    )
    return need if need > capacity_bytes else None


def estimated_cost(layout: ParallelSpec, decode_sample: int, decode_steps: int, folded: bool = True) -> float:
    """Relative simulation cost, ~ DAG nodes: microbatches x passes (prefill, then every decode
    step, or pp + 1 warm-up steps and the sampled ones), x GPUs per stage unless the stage folds
    to one GPU (run_scenario's fold, which even routing allows on almost every layout)."""
    steps = min(decode_steps, decode_sample + layout.pp + 1) if decode_sample else decode_steps
    per_stage = 1 if folded else layout.num_gpus / layout.pp
    return layout.microbatches * per_stage * (1 + steps)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: `finished` of `total` layouts had results when it stopped."""

    def __init__(self, finished: int, total: int):
        super().__init__(f"interrupted after {finished} of {total} layouts")
        self.finished, self.total = finished, total


def run_sweep(
    scenario: Scenario,
    layouts: Sequence[ParallelSpec],
    executor: Executor | None = None,
    decode_sample: int = DEFAULT_DECODE_SAMPLE,
    progress: Callable[[LayoutResult], None] | None = None,
    simulate: Callable[..., LayoutResult] | None = None,
    done: Mapping[ParallelSpec, LayoutResult] | None = None,
    journal: Callable[[LayoutResult], None] | None = None,
) -> list[LayoutResult]:
    """Screen, then simulate every layout; results in `layouts` order whatever the executor.

    `simulate(index, own, scenario, decode_sample)` (default: simulate_layout) must be picklable
    for process and Dask executors. A task that raises (or whose worker dies) is recorded as
    'failed'. Layouts in `done` (results of an interrupted sweep) are taken as they are. `journal` gets each simulated
    layout's result as it finishes (not screened ones, not a dead worker's), to keep it across an
    interruption; `progress` gets every result. Ctrl-C cancels the tasks not yet started and
    raises SweepInterrupted.
    """
    executor = executor or SerialExecutor()
    simulate = simulate or simulate_layout
    capacity = resolve_hardware(scenario).memory_bytes
    own = scenario.parallel.without_split()
    done = done or {}
    results: list[LayoutResult | None] = [None] * len(layouts)
    pending: list[tuple[int, Scenario]] = []
    for i, layout in enumerate(layouts):
        if layout in done:
            kept = replace(done[layout], index=i, own=layout == own)
            results[i] = kept
            if progress:
                progress(kept)
            continue
        variant = with_layout(scenario, layout)
        need = screen_memory(variant, capacity)
        if need is None:
            pending.append((i, variant))
        else:
            screened = LayoutResult(
                index=i,
                layout=layout,
                own=layout == own,
                status="screened",
                error=f"weights + KV cache need {need / 1e9:.1f} GB of {capacity / 1e9:.1f} GB",
                memory_bytes_per_gpu=need,
                capacity_bytes=capacity,
            )
            results[i] = screened
            if progress:
                progress(screened)
    # Longest first: the pool's last tasks are short ones, so workers finish together.
    steps = scenario.workload.output_len_tokens - 1
    folded = evenly_routed(scenario)
    pending.sort(key=lambda item: (-estimated_cost(layouts[item[0]], decode_sample, steps, folded), item[0]))
    # Finished futures queue up here as they complete (at once, for the serial executor), so each
    # result is recorded before the next task is even submitted when tasks run in this process.
    finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
    futures: dict[Future, int] = {}

    def collect(future: Future) -> None:
        i = futures.pop(future)
        try:
            result = replace(future.result(), index=i)
        except Exception as exc:  # the worker died, or the task could not be shipped
            result = failed_result(i, layouts[i], layouts[i] == own, exc)
        else:
            if journal:
                journal(result)
        results[i] = result
        if progress:
            progress(result)

    try:
        for i, variant in pending:
            future = executor.submit(simulate, i, layouts[i] == own, variant, decode_sample)
            futures[future] = i
            future.add_done_callback(finished.put)
            while not finished.empty():
                collect(finished.get())
        while futures:  # every task is submitted; take the rest as they finish
            collect(finished.get())
    except KeyboardInterrupt:
        for future in futures:  # those not yet started; running ones cannot be stopped
            future.cancel()
        raise SweepInterrupted(sum(r is not None for r in results), len(layouts)) from None
    return [r for r in results if r is not None]
