"""What-if stage, evaluation: simulated runs for the searches, each distinct variant once.

Every figure comes from a simulated run (sweep.simulate_layout: folded, decode sampled), cached by the
variant's canonical content so that runs shared by several knobs or targets are simulated once. The
searches of all knobs advance together, one round at a time; each round's new variants go to one
`concurrent.futures.Executor` (the sweep's executors), so the cores stay busy.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor
from typing import Any

from simulator.config import Scenario, resolve_hardware
from simulator.sweep import DEFAULT_DECODE_SAMPLE, LayoutResult, SerialExecutor, screen_memory, simulate_layout
from simulator.sweep.results import failed_result


def scenario_key(scenario: Scenario) -> str:
    """The canonical content of a scenario: what its simulation depends on (not its name or notes)."""
    return scenario.model_dump_json(exclude={"name", "description", "declared", "serving"})


class Evaluator:
    """Simulates scenarios on an executor, each distinct one once (cached by scenario_key)."""

    def __init__(self, executor: Executor | None = None, decode_sample: int = DEFAULT_DECODE_SAMPLE):
        self.executor = executor or SerialExecutor()
        self.decode_sample = decode_sample
        self.cache: dict[str, LayoutResult] = {}
        self.requested = 0  # variants asked for, cached or not

    def evaluate(self, scenarios: Sequence[Scenario]) -> list[LayoutResult]:
        keys = [scenario_key(s) for s in scenarios]
        self.requested += len(keys)
        todo: dict[str, Scenario] = {}
        for k, s in zip(keys, scenarios):
            if k not in self.cache:
                todo.setdefault(k, s)
        futures = {}
        for k, s in todo.items():
            capacity = resolve_hardware(s).memory_bytes
            need = screen_memory(s, capacity)
            if need is None:
                futures[k] = self.executor.submit(simulate_layout, 0, False, s, self.decode_sample)
            else:
                self.cache[k] = LayoutResult(
                    index=0,
                    layout=s.parallel.without_split(),
                    own=False,
                    status="screened",
                    error=f"weights + KV cache need {need / 1e9:.1f} GB of {capacity / 1e9:.1f} GB",
                    memory_bytes_per_gpu=need,
                    capacity_bytes=capacity,
                )
        for k, future in futures.items():
            try:
                self.cache[k] = future.result()
            except Exception as exc:  # a dead worker: the point counts as failed, the search goes on
                self.cache[k] = failed_result(0, todo[k].parallel.without_split(), False, exc)
        return [self.cache[k] for k in keys]

    @property
    def simulated(self) -> int:
        return sum(r.status != "screened" for r in self.cache.values())


Request = list[Scenario]
Search = Generator[Request, list[LayoutResult], Any]


def drive(
    searches: dict[Any, Search], evaluator: Evaluator, progress: Callable[[int, int], None] | None = None
) -> dict:
    """Run the searches together: each round, every search's next request is evaluated in one batch.
    Returns each search's return value by its key; `progress(round, simulated so far)` after each round."""
    requests: dict[Any, Request] = {}
    done: dict[Any, Any] = {}
    for key, search in searches.items():
        try:
            requests[key] = next(search)
        except StopIteration as stop:
            done[key] = stop.value
    round_ = 0
    while requests:
        flat = [s for request in requests.values() for s in request]
        results = evaluator.evaluate(flat)
        following: dict[Any, Request] = {}
        at = 0
        for key, request in requests.items():
            part, at = results[at : at + len(request)], at + len(request)
            try:
                following[key] = searches[key].send(part)
            except StopIteration as stop:
                done[key] = stop.value
        requests = following
        round_ += 1
        if progress:
            progress(round_, evaluator.simulated)
    return done
