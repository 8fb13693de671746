"""The pipeline in one call: scenario -> DAG -> costs + engine -> metrics -> audit."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass

import networkx as nx

from simulator.audit import AuditLine, audit
from simulator.config import Scenario, resolve_hardware
from simulator.graph import build_dag, sampled_decode_steps
from simulator.hardware import HardwareProfile
from simulator.memory import memory_per_gpu
from simulator.metrics import Metrics, compute_metrics
from simulator.simulate import SimResult, simulate_dag
from simulator.verify import Check, verify_dag


@contextmanager
def _no_gc():
    """Building and simulating allocate ~10^5 long-lived dicts; the cyclic collector would
    rescan them repeatedly for nothing (none of them form cycles)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class DagResult:
    scenario: Scenario
    hardware: HardwareProfile
    graph: nx.DiGraph
    checks: list[Check]
    audit: list[AuditLine]


@dataclass(frozen=True)
class RunResult:
    scenario: Scenario
    hardware: HardwareProfile
    graph: nx.DiGraph
    checks: list[Check]
    sim: SimResult
    metrics: Metrics
    audit: list[AuditLine]


def dag_scenario(scenario: Scenario, verify: bool = True) -> DagResult:
    hw = resolve_hardware(scenario)
    with _no_gc():
        graph = build_dag(scenario)
    checks = verify_dag(graph, scenario) if verify else []
    memory = memory_per_gpu(graph, scenario, hw.memory_bytes)
    return DagResult(scenario, hw, graph, checks, audit(scenario, memory))


def run_scenario(scenario: Scenario, verify: bool = True, decode_sample: int | None = None) -> RunResult:
    """Simulate the scenario. `decode_sample=K` simulates only K decode steps (evenly spaced,
    first and last included) and interpolates the others; None or 0 simulates every step."""
    hw = resolve_hardware(scenario)
    total_steps = scenario.workload.output_len_tokens - 1
    warmup = scenario.parallel.pp + 1  # steps until the decode pipeline is in its steady state
    steps = sampled_decode_steps(total_steps, decode_sample, warmup) if decode_sample else None
    with _no_gc():
        graph = build_dag(scenario, steps)
        graph.graph["warmup_steps"] = warmup
        sim = simulate_dag(graph, scenario, hw)
    checks = verify_dag(graph, scenario) if verify else []
    metrics = compute_metrics(graph, scenario, sim, hw.memory_bytes)
    return RunResult(scenario, hw, graph, checks, sim, metrics, audit(scenario, metrics.memory, metrics))
