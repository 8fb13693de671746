"""The pipeline in one call: scenario -> DAG -> costs + engine -> metrics -> audit."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from typing import NamedTuple

import networkx as nx

from simulator.audit import AuditLine, audit
from simulator.config import Scenario, ScenarioError, gpus_per_node, parse_scenario, resolve_hardware
from simulator.config.hardware import HardwareProfile
from simulator.graph import Dag, build, build_dag, sampled_decode_steps
from simulator.memory import memory_per_gpu
from simulator.metrics import Metrics, compute_metrics
from simulator.placement import symmetric_representatives
from simulator.simulate import SimResult, simulate_dag
from simulator.verify import Check, verify_dag

#: Runs between full collections under `no_gc` (see there): bounds the cyclic garbage that
#: promotion keeps (one SimPy environment, ~16 objects, per run) at a cost of ~10 ms per 16 runs.
_RUNS_PER_FULL_COLLECTION = 16
_promoted_runs = 0


#: A run simulated longer than this (about 30 years) is a unit slip, not a deployment; past it the
#: microsecond figures of the reports overflow.
MAX_SIMULATED_S = 1e9


@contextmanager
def no_gc():
    """Building and simulating allocate ~10^5 long-lived dicts; the cyclic collector would
    rescan them repeatedly for nothing (none of them form cycles).

    On the way out the survivors are promoted to the oldest generation (freeze + unfreeze moves
    the lists, O(1)): left in the youngest, the first allocation after `gc.enable` would traverse
    all ~10^6 of them (0.1-0.3 s a layout). Objects freed by reference counting still go at once;
    the few in cycles wait for a full collection, which Python runs rarely, so one runs here every
    `_RUNS_PER_FULL_COLLECTION` runs, before the build, when the previous graph is usually gone.
    (A caller's own `gc.freeze` is undone by this.)"""
    global _promoted_runs
    enabled = gc.isenabled()
    if enabled and _promoted_runs >= _RUNS_PER_FULL_COLLECTION:
        gc.collect()
        _promoted_runs = 0
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.unfreeze()
            _promoted_runs += 1
            gc.enable()


@dataclass(frozen=True)
class DagResult:
    scenario: Scenario
    hardware: HardwareProfile
    graph: nx.DiGraph
    checks: list[Check]
    audit: list[AuditLine]


@dataclass(frozen=True, eq=False)
class RunResult:
    scenario: Scenario
    hardware: HardwareProfile
    dag: Dag
    checks: list[Check]
    sim: SimResult
    metrics: Metrics
    audit: list[AuditLine]
    #: How far the interpolated figures of a sampled run are from a denser sample's
    #: (measure_sampling_error); None when every decode step was simulated.
    sampling: dict | None = None

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The DAG as a networkx graph (made on first use: a sweep never needs it)."""
        return self.dag.to_networkx()


def dag_scenario(scenario: Scenario, verify: bool = True, hw: HardwareProfile | None = None) -> DagResult:
    """Build (and verify) the scenario's DAG; `hw` is its resolved profile, resolved here when not given."""
    hw = hw or resolve_hardware(scenario)
    with no_gc():
        graph = build_dag(scenario)
    checks = verify_dag(graph, scenario) if verify else []
    memory = memory_per_gpu(graph, scenario, hw.memory_bytes)
    return DagResult(scenario, hw, graph, checks, audit(scenario, memory))


def run_scenario(
    scenario: Scenario,
    verify: bool = True,
    decode_sample: int | None = None,
    fold: bool = False,
    explain: bool = True,
    hw: HardwareProfile | None = None,
) -> RunResult:
    """Simulate the scenario. `decode_sample=K` simulates only K decode steps (evenly spaced,
    first and last included) and interpolates the others; None or 0 simulates every step.
    `fold=True` simulates one GPU per pipeline stage when the stage's GPUs are exactly alike
    (graph.symmetric_representatives): the same figures, a fraction of the work; the trace then
    holds those GPUs' rows only (the pictures of `moesim run`, which folds by default, show those
    GPUs and name the GPUs each stands for).
    `explain=False` skips the bottleneck sentences (metrics.compute_metrics). `hw` is the
    scenario's resolved profile (resolved here when not given): every stage below receives it."""
    hw = hw or resolve_hardware(scenario)
    keep = symmetric_representatives(scenario, gpus_per_node(scenario, hw)) if fold else None
    total_steps = scenario.workload.output_len_tokens - 1
    warmup_steps = scenario.parallel.pp + 1  # until the decode pipeline is in its steady state
    steps = sampled_decode_steps(total_steps, decode_sample, warmup_steps) if decode_sample else None
    with no_gc():
        dag = build(scenario, steps, keep)
        dag.graph["warmup_steps"] = warmup_steps
        sim = simulate_dag(dag, scenario, hw)
        metrics = compute_metrics(sim, scenario, hw, explain)
    if not metrics.total_s < MAX_SIMULATED_S:  # also NaN
        raise ScenarioError(
            f"{scenario.name}: the simulated time ({metrics.total_s:.3g} s) is beyond any deployment's; "
            "check the hardware figures and the workload for a unit slip"
        )
    run = RunResult(scenario, hw, dag, [], sim, metrics, audit(scenario, metrics.memory, metrics))
    if verify:
        run.checks.extend(verify_dag(run.dag, scenario))
    return run


#: Figures that decode sampling interpolates (the others, TTFT, prefill and memory, are exact).
SAMPLED_FIGURES = ("tpot_s", "decode_s", "total_s", "output_tokens_per_ms_per_gpu", "total_tokens_per_ms_per_gpu")


def sampled_figures(metrics: Metrics) -> dict[str, float]:
    """The values of SAMPLED_FIGURES in `metrics`."""
    return {
        name: metrics.throughput[name] if name in metrics.throughput else float(getattr(metrics, name))
        for name in SAMPLED_FIGURES
    }


class SamplingCheck(NamedTuple):
    """The denser simulation measure_sampling_error compares a sampled run with."""

    decode_steps: list[int]  # the decode steps it simulated
    figures: dict[str, float]  # its SAMPLED_FIGURES


def sampling_check(scenario: Scenario, decode_sample: int, fold: bool, hw: HardwareProfile) -> SamplingCheck:
    """Simulate `scenario` with about twice the samples of a run sampled with `decode_sample`
    (2 K - 1: the old samples and one halfway between each two) and the same folding. Depends on
    the scenario alone, so it can run before, after or beside that run (`moesim run` does it in a
    second process while the run simulates)."""
    check = run_scenario(scenario, verify=False, decode_sample=2 * decode_sample - 1, fold=fold, explain=False, hw=hw)
    return SamplingCheck(list(check.dag.graph.get("decode_steps", [])), sampled_figures(check.metrics))


def measure_sampling_error(run: RunResult, decode_sample: int, check: SamplingCheck | None = None) -> RunResult:
    """`run` (simulated with `decode_sample`) with its sampling error measured: the run is simulated
    again with about twice the samples, the new ones halfway between the old (steps the first run
    only interpolated), and each interpolated figure's relative difference from that run's is
    recorded in `run.sampling`. When the denser sample holds every decode step, the comparison is
    with the full simulation. A run that simulated every step is returned unchanged. `check`:
    that denser simulation (sampling_check with the run's scenario, sample, folding and profile)
    when already made."""
    simulated = list(run.dag.graph.get("decode_steps", []))
    total_steps = run.scenario.workload.output_len_tokens - 1
    if len(simulated) >= total_steps:
        return run
    if check is None:
        folded = run.dag.graph.get("representatives") is not None
        check = sampling_check(run.scenario, decode_sample, folded, run.hardware)
    ours, theirs = sampled_figures(run.metrics), check.figures
    error = {k: abs(ours[k] - theirs[k]) / abs(theirs[k]) if theirs[k] else 0.0 for k in SAMPLED_FIGURES}
    sampling = {
        "decode_steps": total_steps,
        "simulated_steps": simulated,
        "check_steps": len(check.decode_steps),
        "held_out_steps": sorted(set(check.decode_steps) - set(simulated)),
        "relative_error": error,
        "max_relative_error": max(error.values()),
    }
    return replace(run, sampling=sampling)


def one_replica(scenario: Scenario, hw: HardwareProfile) -> Scenario | None:
    """The same deployment reduced to one of its dp replicas (dp = 1, batch / dp, GPUs / dp), when
    the replicas are independent and identical, so that simulating one gives every figure of the
    whole: TTFT, TPOT, throughput per GPU and memory per GPU are equal by symmetry. That holds when
    no expert group spans two dp ranks (ep * etp divides tp), routing does not depend on the batch
    (a sampled draw does), and replica 0's GPUs keep every same-node relation (so each transfer
    uses the same link class; `hw` is the scenario's profile, which the replica keeps). Returns None
    when any condition fails: simulate the whole then."""
    p = scenario.parallel
    if p.dp == 1 or scenario.workload.routing.sampled is not None:
        return None
    if scenario.model.is_moe and p.tp % (p.ep * p.etp):
        return None
    gpn = gpus_per_node(scenario, hw)
    if gpn % p.dp:
        return None
    gpn_one = gpn // p.dp
    full = [s * p.dp * p.tp + t for s in range(p.pp) for t in range(p.tp)]  # replica 0, rank order
    reduced = [s * p.tp + t for s in range(p.pp) for t in range(p.tp)]
    for a in range(len(full)):
        for b in range(a + 1, len(full)):
            if (full[a] // gpn == full[b] // gpn) != (reduced[a] // gpn_one == reduced[b] // gpn_one):
                return None
    data = scenario.model_dump(exclude_none=True)
    data["parallel"]["dp"] = 1
    data["workload"]["batch_size"] = scenario.workload.batch_size // p.dp
    data["cluster"] = {"num_gpus": scenario.num_gpus // p.dp, "gpus_per_node": gpn_one}
    return parse_scenario(data, scenario.name)
