"""Sweep stage: every valid parallel layout of a scenario on N GPUs, simulated and ranked.

A layout is (pp, dp, tp, ep, etp, microbatches) with pp * dp * tp = N; the validity rules are the
config stage's own (`config._check_layout`), applied to each candidate. Layouts whose weights and
KV cache alone exceed a GPU's memory are screened out in closed form; the rest are simulated on any
`concurrent.futures.Executor` (local processes by default, Dask distributed as an option) and
come back in enumeration order, so a sweep gives the same table serial or parallel. Ctrl-C stops
a sweep with its finished layouts handed on (`simulator.resume` keeps them for `--resume`).
"""

from __future__ import annotations

import math
import os
import queue
import sys
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from simulator.config import (
    ClusterSpec,
    ParallelSpec,
    Scenario,
    ScenarioError,
    _check_layout,
    _LayoutError,
    load_scenario,
    resolve_hardware,
)
from simulator.graph import COMM, MARKER, evenly_routed
from simulator.memory import kv_cache_bytes_per_gpu, weight_bytes_per_gpu


DEFAULT_MICROBATCHES = (1, 2, 4, 8)
DEFAULT_DECODE_SAMPLE = 8
OBJECTIVES = ("targets", "throughput", "ttft", "tpot", "memory")

#: Classes of GPU time a layout spends, in the order ties are broken.
COST_CLASSES = ("compute", "memory-bound", "kernel launches", "TP comm", "EP all-to-all", "pipeline bubbles")
#: The classes that are overhead rather than kernel work: what separates layouts of the same model.
OVERHEAD_CLASSES = ("kernel launches", "TP comm", "EP all-to-all", "pipeline bubbles")
_BOUND_CLASS = {"compute": "compute", "fused": "compute", "memory": "memory-bound", "launch": "kernel launches"}
_COMM_CLASS = {"tp_comm": "TP comm", "ep_comm": "EP all-to-all", "pp_comm": "pipeline bubbles"}


# ---------------------------------------------------------------------------------------------
# Layouts


@dataclass(frozen=True, order=True)
class Layout:
    pp: int
    dp: int
    tp: int
    ep: int = 1
    etp: int = 1
    microbatches: int = 1

    @classmethod
    def of(cls, scenario: Scenario) -> "Layout":
        p = scenario.parallel
        return cls(p.pp, p.dp, p.tp, p.ep, p.etp, p.microbatches)

    @property
    def num_gpus(self) -> int:
        return self.pp * self.dp * self.tp

    def degrees(self) -> dict[str, int]:
        return {"pp": self.pp, "dp": self.dp, "tp": self.tp, "ep": self.ep, "etp": self.etp,
                "microbatches": self.microbatches}

    @property
    def label(self) -> str:
        """Compact name: the degrees above 1, e.g. 'PP2 TP2 EP2 mb4'; 'single' when all are 1."""
        parts = [f"{k.upper()}{v}" for k, v in (("pp", self.pp), ("dp", self.dp), ("tp", self.tp),
                                                 ("ep", self.ep), ("etp", self.etp)) if v > 1]
        if self.microbatches > 1:
            parts.append(f"mb{self.microbatches}")
        return " ".join(parts) or "single"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layout_scenario(scenario: Scenario, layout: Layout) -> Scenario:
    """The scenario on another layout, checked by the config stage's layout rules.

    Raises ScenarioError naming the rule a layout breaks. The scenario's own layout keeps its
    layer_split; any other gets the even split. (`config.with_layout` would re-read the hardware
    profile for each of thousands of candidates; the rules are the same `_check_layout`.)
    """
    if layout == Layout.of(scenario):
        return scenario
    gpn = scenario.cluster.gpus_per_node
    try:
        cluster = ClusterSpec(num_gpus=layout.num_gpus, gpus_per_node=gpn)
    except ValueError:
        raise ScenarioError(f"cluster.num_gpus = {layout.num_gpus} is not a whole number of nodes of "
                            f"gpus_per_node = {gpn}") from None
    candidate = scenario.model_copy(update={"parallel": ParallelSpec(**layout.degrees()), "cluster": cluster})
    try:
        _check_layout(candidate)
    except _LayoutError as exc:
        raise ScenarioError(f"{exc.path}: {exc}") from None
    return candidate


def enumerate_layouts(scenario: Scenario, num_gpus: int | None = None,
                      microbatches: Sequence[int] = DEFAULT_MICROBATCHES) -> list[Layout]:
    """Every valid layout on `num_gpus` (default: the scenario's), in a fixed order; the scenario's
    own layout is always included when it has that many GPUs (with its microbatch count)."""
    n = num_gpus or scenario.num_gpus
    own = Layout.of(scenario)
    options = sorted(set(microbatches) | ({own.microbatches} if own.num_gpus == n else set()))
    experts = scenario.model.num_experts
    layouts = []
    for pp in _divisors(n):
        for tp in _divisors(n // pp):
            dp = n // (pp * tp)
            for ep in _divisors(experts) if experts else [1]:
                for etp in _divisors(dp * tp) if experts else [1]:
                    for mb in options:
                        layout = Layout(pp, dp, tp, ep, etp, mb)
                        try:
                            layout_scenario(scenario, layout)
                        except ScenarioError:
                            continue
                        layouts.append(layout)
    if own.num_gpus == n and own not in layouts:  # e.g. a layer_split the even split would not give
        layouts.append(own)
    return layouts


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class LayoutResult:
    """One row of the comparison. status: 'ok' (simulated), 'screened' (cannot fit, not
    simulated; memory is the closed-form weights + KV cache + reserve) or 'failed' (error)."""

    index: int
    layout: Layout
    own: bool
    status: str
    error: str = ""
    ttft_mean_s: float = math.nan
    ttft_max_s: float = math.nan
    tpot_s: float = math.nan
    throughput: dict[str, float] = field(default_factory=dict)
    memory_bytes_per_gpu: float = math.nan
    capacity_bytes: float = math.nan
    targets: tuple[tuple[str, str, float, float, bool], ...] = ()  # metric, bound, limit, actual, met
    cost_shares: dict[str, float] = field(default_factory=dict)
    rank: int | None = None
    sim_s: float = field(default=0.0, compare=False)  # wall time of the simulation, not a result

    @property
    def label(self) -> str:
        return self.layout.label

    @property
    def fits(self) -> bool:
        return self.memory_bytes_per_gpu <= self.capacity_bytes

    @property
    def all_met(self) -> bool:
        return self.status == "ok" and all(t[4] for t in self.targets)

    @property
    def output_tput(self) -> float:
        return self.throughput.get("output_tokens_per_ms_per_gpu", math.nan)

    @property
    def dominant(self) -> str:
        if not self.cost_shares:
            return ""
        return max(COST_CLASSES, key=lambda c: (self.cost_shares.get(c, 0.0), -COST_CLASSES.index(c)))

    @property
    def overhead(self) -> str:
        """The largest overhead class with its share, e.g. 'pipeline bubbles 50%'; '' if none."""
        if not self.cost_shares:
            return ""
        cls = max(OVERHEAD_CLASSES, key=lambda c: (self.cost_shares.get(c, 0.0), -OVERHEAD_CLASSES.index(c)))
        share = self.cost_shares.get(cls, 0.0)
        return f"{cls} {100 * share:.0f}%" if share >= 0.005 else "none"


def cost_shares(run) -> dict[str, float]:
    """Share of all GPU time (makespan x GPUs) each cost class takes.

    Compute-stream busy time splits by what bounds each kernel (compute, memory, launch). Idle
    compute-stream time is first put down to communication the GPU was part of (exposed at most
    for as long as it lasted), by category; what is left waits on other pipeline stages: bubbles.
    Decode steps are weighted as the metrics weight them when decode steps are sampled.
    """
    from simulator.metrics import ExactSums, decode_step_weights

    busy, dag = run.metrics.busy_s, run.dag
    weights = decode_step_weights(dag.graph["decode_steps"], run.scenario.workload.output_len_tokens - 1,
                                  dag.graph.get("warmup_steps", 0))
    nodes = run.sim.weighted_nodes(weights)
    comm_cats = {a["category"] for _, a, _, _, _, _ in nodes if a["kind"] == COMM}
    sums = ExactSums()
    bound = run.sim.bound
    for i, a, count, _, w, _ in nodes:
        if a["kind"] != COMM and a["kind"] != MARKER:
            sums.add(bound[i], w, count)
    by_bound = sums.totals()
    bound_total = math.fsum(by_bound.values()) or 1.0

    shares = dict.fromkeys(COST_CLASSES, 0.0)
    compute_stream_s = 0.0
    for per_cat in busy.values():
        idle = per_cat.get("idle", 0.0)
        compute_stream_s += sum(v for c, v in per_cat.items() if c not in comm_cats and c != "idle")
        comm = {c: per_cat.get(c, 0.0) for c in sorted(comm_cats)}  # a set's order varies by process: sum in one
        comm_s = sum(comm.values())
        exposed = min(idle, comm_s)
        for c, v in comm.items():
            cls = _COMM_CLASS.get(c, "pipeline bubbles")
            shares[cls] += exposed * v / comm_s if comm_s else 0.0
        shares["pipeline bubbles"] += idle - exposed
    for b, s in sorted(by_bound.items()):
        shares[_BOUND_CLASS.get(b, "compute")] += compute_stream_s * s / bound_total
    whole = sum(shares.values()) or 1.0
    return {c: v / whole for c, v in shares.items()}


def simulate_layout(index: int, own: bool, scenario: Scenario, decode_sample: int) -> LayoutResult:
    """Simulate one layout (runs in a worker); an error becomes a 'failed' row, not an exception.
    Layouts made of independent, identical dp replicas simulate one of them (pipeline.one_replica:
    the same figures, dp times less work), and stages whose GPUs are exactly alike simulate one
    GPU each (run_scenario's fold: graph.symmetric_representatives)."""
    from simulator.pipeline import no_gc, one_replica, run_scenario

    layout = Layout.of(scenario)
    started = time.perf_counter()
    try:
        with no_gc():
            run = run_scenario(one_replica(scenario, resolve_hardware(scenario)) or scenario, verify=False,
                               decode_sample=decode_sample or None, fold=True, explain=False)
            shares = cost_shares(run)
        m = run.metrics
        return LayoutResult(
            index=index, layout=layout, own=own, status="ok", ttft_mean_s=m.ttft_s.mean, ttft_max_s=m.ttft_s.max,
            tpot_s=m.tpot_s, throughput=dict(m.throughput),
            memory_bytes_per_gpu=max(g.total_bytes for g in m.memory), capacity_bytes=run.hardware.memory_bytes,
            targets=tuple((t.metric, t.bound, t.limit, t.actual, t.met) for t in m.targets),
            cost_shares=shares, sim_s=time.perf_counter() - started)
    except Exception as exc:  # recorded in the table; the sweep goes on
        return _failed(index, layout, own, exc)


def _failed(index: int, layout: Layout, own: bool, exc: BaseException) -> LayoutResult:
    message = str(exc).splitlines()[0] if str(exc) else ""
    return LayoutResult(index=index, layout=layout, own=own, status="failed",
                        error=f"{type(exc).__name__}: {message}".rstrip(": "))


def screen_memory(scenario: Scenario, capacity_bytes: float) -> float | None:
    """Weights + peak KV cache + runtime reserve of the fullest GPU when that alone exceeds the
    capacity (the layout cannot run, whatever its activations); None when it may fit."""
    reserve = scenario.runtime.memory_reserve_bytes
    # The GPUs of a stage hold alike (its layers; num_experts / ep experts each): one per stage.
    per_stage = scenario.parallel.dp * scenario.parallel.tp
    need = max(weight_bytes_per_gpu(scenario, g) + kv_cache_bytes_per_gpu(scenario, g)
               for g in range(0, scenario.num_gpus, per_stage)) + reserve
    return need if need > capacity_bytes else None


# ---------------------------------------------------------------------------------------------
# Running a sweep


class SerialExecutor(Executor):
    """Runs each task when it is submitted, in this process (--jobs 1)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def default_jobs() -> int:
    """The cores this process may use (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def make_executor(spec: str | None = None, jobs: int | None = None) -> Iterator[Executor]:
    """An executor for `--executor`: None/'process' (local processes, `jobs` of them, default all
    cores; serial when jobs == 1), 'serial', 'dask-local' (a local Dask cluster) or
    'dask://HOST:PORT' (a running Dask scheduler)."""
    jobs = jobs or default_jobs()
    spec = spec or "process"
    if spec == "serial" or (spec == "process" and jobs == 1):
        yield SerialExecutor()
    elif spec == "process":
        pool = ProcessPoolExecutor(max_workers=jobs)
        try:
            yield pool
        except KeyboardInterrupt:
            # Tasks already handed to a worker cannot be cancelled and would run to the end (a
            # minute, for a large layout) before shutdown returned: stop the workers instead.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    elif spec == "dask-local" or spec.startswith("dask://"):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ScenarioError(f"--executor {spec}: Dask is not installed; pip install 'moesim[dask]'") from None
        if spec == "dask-local":
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
        else:
            cluster = None
            try:
                client = Client("tcp://" + spec[len("dask://"):], timeout=10)
            except OSError as exc:
                raise ScenarioError(f"--executor {spec}: cannot reach the Dask scheduler ({exc})") from None
        try:
            yield client.get_executor(pure=False)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    else:
        raise ScenarioError(f"--executor {spec}: expected process, serial, dask-local or dask://HOST:PORT")


def estimated_cost(layout: Layout, decode_sample: int, decode_steps: int, folded: bool = True) -> float:
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


def run_sweep(scenario: Scenario, layouts: Sequence[Layout], executor: Executor | None = None,
              decode_sample: int = DEFAULT_DECODE_SAMPLE, progress: Callable[[LayoutResult], None] | None = None,
              simulate: Callable[..., LayoutResult] | None = None,
              done: Mapping[Layout, LayoutResult] | None = None,
              journal: Callable[[LayoutResult], None] | None = None) -> list[LayoutResult]:
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
    own = Layout.of(scenario)
    done = done or {}
    results: list[LayoutResult | None] = [None] * len(layouts)
    pending: list[tuple[int, Scenario]] = []
    for i, layout in enumerate(layouts):
        if layout in done:
            results[i] = replace(done[layout], index=i, own=layout == own)
            if progress:
                progress(results[i])
            continue
        variant = layout_scenario(scenario, layout)
        need = screen_memory(variant, capacity)
        if need is None:
            pending.append((i, variant))
        else:
            results[i] = LayoutResult(index=i, layout=layout, own=layout == own, status="screened",
                                      error=f"weights + KV cache need {need / 1e9:.1f} GB of {capacity / 1e9:.1f} GB",
                                      memory_bytes_per_gpu=need, capacity_bytes=capacity)
            if progress:
                progress(results[i])
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
            result = _failed(i, layouts[i], layouts[i] == own, exc)
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


# ---------------------------------------------------------------------------------------------
# Ranking


def rank_results(results: Sequence[LayoutResult], objective: str = "targets") -> list[LayoutResult]:
    """Sorted best first, with ranks on the simulated rows.

    Simulated layouts that fit come first, then simulated ones that do not fit, then screened
    and failed ones. Objectives: 'targets' (meets every target, then highest output tokens/ms/GPU),
    'throughput' (highest output tokens/ms/GPU), 'ttft' (lowest worst TTFT), 'tpot' (lowest TPOT),
    'memory' (lowest peak memory per GPU). Ties: higher output throughput, then enumeration order.
    """
    if objective not in OBJECTIVES:
        raise ScenarioError(f"--objective {objective}: choose one of {', '.join(OBJECTIVES)}")

    def key(r: LayoutResult) -> tuple:
        group = {"ok": 0, "screened": 2, "failed": 3}[r.status] + (1 if r.status == "ok" and not r.fits else 0)
        tput = -_finite(r.output_tput, -math.inf)
        primary = {
            "targets": (0 if r.all_met else 1, tput),
            "throughput": (tput,),
            "ttft": (_finite(r.ttft_max_s, math.inf), tput),
            "tpot": (_finite(r.tpot_s, math.inf), tput),
            "memory": (_finite(r.memory_bytes_per_gpu, math.inf), tput),
        }[objective]
        return (group, *primary, r.index)

    ordered = sorted(results, key=key)
    ranked, n = [], 0
    for r in ordered:
        if r.status == "ok":
            n += 1
            ranked.append(replace(r, rank=n))
        else:
            ranked.append(replace(r, rank=None))
    return ranked


def _finite(x: float, default: float) -> float:
    return x if math.isfinite(x) else default


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser) -> None:
    parser.add_argument("scenario", type=Path, help="scenario YAML file")
    parser.add_argument("--gpus", type=int, help="number of GPUs to lay out (default: the scenario's)")
    parser.add_argument("--microbatches", default=",".join(map(str, DEFAULT_MICROBATCHES)),
                        help="microbatch counts to try, comma-separated (default: 1,2,4,8)")
    parser.add_argument("--objective", default="targets", choices=OBJECTIVES,
                        help="ranking: targets (meets every target, then output throughput; default), "
                             "throughput, ttft, tpot or memory")
    parser.add_argument("--jobs", type=int, help="local worker processes (default: all cores; 1: serial)")
    parser.add_argument("--executor", help="process (default), serial, dask-local, or dask://HOST:PORT")
    parser.add_argument("--decode-sample", type=int, default=DEFAULT_DECODE_SAMPLE, metavar="K",
                        help=f"simulate K decode steps per layout and interpolate the rest "
                             f"(default {DEFAULT_DECODE_SAMPLE}; 0: every step)")
    parser.add_argument("--out", type=Path, help="output directory (default: reports/<scenario name>/compare)")
    parser.add_argument("--force", action="store_true", help="replace an output directory moesim did not make")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted sweep from <out>.progress.jsonl (same scenario and options)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario field, e.g. --set workload.batch_size=64 (repeatable)")


def parse_microbatches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ScenarioError(f"--microbatches {text}: expected positive integers separated by commas, e.g. 1,2,4,8")
    return values


def command(args, console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from simulator.report.compare import print_table, write_comparison
    from simulator.report.output import run_directory
    from simulator.resume import Progress as SweepProgress
    from simulator.resume import progress_path, sweep_inputs

    scenario = load_scenario(args.scenario, args.set)
    if args.gpus is not None and args.gpus < 1:
        raise ScenarioError(f"--gpus {args.gpus}: expected a positive number of GPUs")
    if args.jobs is not None and args.jobs < 1:
        raise ScenarioError(f"--jobs {args.jobs}: expected at least 1")
    if args.decode_sample < 0:
        raise ScenarioError(f"--decode-sample {args.decode_sample}: expected 0 (every step) or more")
    microbatches = parse_microbatches(args.microbatches)
    num_gpus = args.gpus or scenario.num_gpus
    layouts = enumerate_layouts(scenario, num_gpus, microbatches)
    if not layouts:
        raise ScenarioError(f"{args.scenario}: no valid layout on {num_gpus} GPUs with microbatches {args.microbatches}")
    out = args.out or Path("reports") / scenario.name / "compare"
    inputs = sweep_inputs(scenario, num_gpus, microbatches, args.decode_sample)
    journal = SweepProgress(progress_path(out), inputs, args.resume, layouts)

    started = time.perf_counter()
    columns = (TextColumn("[bold]sweep[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("", total=len(layouts))

            def tick(result: LayoutResult) -> None:
                bar.update(task, advance=1, description=f"{result.label}: {result.status}")

            with make_executor(args.executor, args.jobs) as executor:
                results = run_sweep(scenario, layouts, executor, args.decode_sample, tick,
                                    done=journal.done, journal=journal.append)
    except SweepInterrupted as exc:  # the progress file keeps the finished layouts
        print(f"moesim: {exc}; rerun with --resume to continue", file=sys.stderr)
        return 130
    finally:
        journal.close()
    elapsed = time.perf_counter() - started
    ranked = rank_results(results, args.objective)

    with run_directory(out, args.force) as staging:
        files = write_comparison(scenario, ranked, staging, args.objective)
    journal.remove()
    print_table(console, scenario, ranked, args.objective)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "screened", "failed")}
    console.print(f"{len(layouts)} layouts on {num_gpus} GPUs: {counts['ok']} simulated, {counts['screened']} "
                  f"screened out (do not fit), {counts['failed']} failed, in {elapsed:.1f} s; "
                  f"wrote {', '.join(sorted(Path(f).name for f in files))} to {out}/")
    return 0 if counts["ok"] else 1
