"""Python API: load a scenario, run it, compare its layouts, serve a request stream; typed results with pandas
tables and methods that write the files `moesim` writes. The command line is a thin layer over these functions.

Only the names in `__all__` are public; every other module of `simulator` may change without notice.

    import simulator
    s = simulator.load("scenarios/seed_moe_4gpu.yaml")
    r = simulator.run(s, workload__batch_size=64)      # overrides: section__field=value
    r.figures["ttft_max_s"], r.targets, r.ops, r.gpus  # floats, DataFrames
    r.write("reports/seed_b64")                        # what `moesim run --out reports/seed_b64` writes
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

import simulator
from simulator import critical_path
from simulator.config import Scenario, ScenarioError, apply_override, load_scenario, parse_scenario, resolve_hardware
from simulator.config.load import resolve_relative_paths
from simulator.forking import InChild
from simulator.pipeline import RunResult as PipelineRun
from simulator.pipeline import measure_sampling_error, run_scenario, sampling_check
from simulator.sweep import (
    DEFAULT_MICROBATCHES,
    OBJECTIVES,
    SERVING_OBJECTIVES,
    LayoutResult,
    enumerate_layouts,
    make_executor,
    parse_microbatches,
    rank_results,
    run_sweep,
)
from simulator.sweep.executors import check_jobs

#: The public names: one list, kept in the package root (simulator/__init__.py), which re-exports them lazily.
__all__ = list(simulator.__all__)

#: Decode steps simulated by default after the warm-up (the rest interpolated; the error is measured per run).
DEFAULT_DECODE_SAMPLE = 8
#: Most GPUs `compare(gpus=...)` lays out (as cluster.num_gpus): the layout enumeration loops over divisors.
MAX_GPUS = 10**5

#: A scenario: a loaded Scenario, a YAML file, or a mapping of the YAML's sections.
Source = Scenario | str | os.PathLike | Mapping[str, Any]
#: Overrides: `--set` strings (`"parallel.tp=4"`), or a mapping of dotted paths to values.
Overrides = Sequence[str] | Mapping[str, Any] | None
#: Called with the name of each phase as it starts (the command line shows it on a progress line). One with an
#: `aside(fn, *args)` method (commands.Phases) is asked to start the work done in a second process (InChild).
PhaseCallback = Callable[[str], None]


def _aside(phase: PhaseCallback | None) -> Callable[..., InChild]:
    """How to start `fn(*args)` in a forked second process: the phase callback's `aside` when it has one (it
    pauses the progress line's thread while forking), else InChild (which computes in this process instead
    where other threads run or there is no fork)."""
    return getattr(phase, "aside", None) or InChild


def _override_strings(overrides: Overrides, keywords: Mapping[str, Any] | None = None) -> list[str]:
    """`--set` strings for the overrides and keyword overrides (`section__field=value`: '__' is a dot).
    Values are written as JSON, which YAML reads back as the same value."""
    items: list[str] = []
    if isinstance(overrides, Mapping):
        items += [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    elif overrides:
        if isinstance(overrides, str):
            raise TypeError("overrides: give a list of 'key.path=value' strings or a mapping, not one string")
        items += list(overrides)
    items += [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in (keywords or {}).items()]
    return items


def _loaded(source: Source, overrides: list[str], base_dir: str | os.PathLike | None) -> tuple[Scenario, Path]:
    """(scenario, directory its relative files are read from)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return load_scenario(path, overrides), Path(base_dir) if base_dir is not None else path.parent
    base = Path(base_dir) if base_dir is not None else Path(".")
    if isinstance(source, Scenario):
        if not overrides:
            return source, base
        data: Any = source.model_dump(exclude_none=True)
        name = source.name
    elif isinstance(source, Mapping):
        data = resolve_relative_paths(dict(source), base)
        name = str(source.get("name", "scenario"))
    else:
        raise TypeError(f"expected a Scenario, a path or a mapping, not {type(source).__name__}")
    for item in overrides:
        data = apply_override(data, item)
    return parse_scenario(data, name), base


def load(source: Source, overrides: Overrides = None, **keyword_overrides: Any) -> Scenario:
    """A validated scenario from a YAML file, a mapping of its sections, or a Scenario (with overrides).

    Overrides work as `moesim run --set` does: `load(path, ["parallel.tp=4"])`, `load(path, {"parallel.tp": 4})`
    or `load(path, parallel__tp=4)`. Relative profile and preset paths of a mapping are read from the current
    directory. Raises ScenarioError with one line naming the field and the fix."""
    return _loaded(source, _override_strings(overrides, keyword_overrides), None)[0]


# ---------------------------------------------------------------------------------------------
# run


@dataclass(frozen=True, eq=False)
class RunResult:
    """One simulated scenario: `figures` (floats, SI units), `targets` and `gpus` and `ops` (DataFrames),
    `summary` (what summary.json holds), and `write` (the files `moesim run` writes)."""

    scenario: Scenario
    #: The pipeline's own result (DAG, trace, metrics): not public, may change without notice.
    pipeline: PipelineRun = field(repr=False)
    #: Seconds the simulation took (and the measurement of its sampling error).
    elapsed_s: float = 0.0

    @cached_property
    def _analysis(self) -> tuple:
        return critical_path.analyse(self.pipeline.dag, self.pipeline.sim.ops, self.scenario.num_gpus)

    @cached_property
    def _summary(self) -> dict:
        from simulator.report.summary import summary_dict

        return summary_dict(self.pipeline, self._analysis[0])

    @cached_property
    def summary(self) -> dict:
        """The run's summary, exactly as summary.json holds it (JSON types: lists, string keys)."""
        return json.loads(json.dumps(self._summary, sort_keys=True))

    @cached_property
    def figures(self) -> dict[str, float]:
        """The headline figures: TTFT statistics, TPOT, phase times, throughputs (tokens per ms per GPU),
        peak memory per GPU; seconds and bytes."""
        m = self.pipeline.metrics
        peak = max(m.memory, key=lambda g: g.total_bytes)
        return {
            "ttft_mean_s": m.ttft_s.mean,
            "ttft_p50_s": m.ttft_s.p50,
            "ttft_p99_s": m.ttft_s.p99,
            "ttft_max_s": m.ttft_s.max,
            "tpot_s": m.tpot_s,
            "prefill_s": m.prefill_s,
            "decode_s": m.decode_s,
            "total_s": m.total_s,
            **m.throughput,
            "memory_bytes_per_gpu": peak.total_bytes,
            "memory_utilization": peak.utilization,
        }

    @property
    def all_targets_met(self) -> bool:
        return all(t.met for t in self.pipeline.metrics.targets)

    @cached_property
    def targets(self) -> pd.DataFrame:
        """One row per target of the scenario: metric, bound (min or max), limit, actual, met."""
        rows = [
            {"metric": t.metric, "bound": t.bound, "limit": t.limit, "actual": t.actual, "met": t.met}
            for t in self.pipeline.metrics.targets
        ]
        return pd.DataFrame(rows, columns=["metric", "bound", "limit", "actual", "met"])

    @cached_property
    def gpus(self) -> pd.DataFrame:
        """One row per simulated GPU: memory (weights, KV cache, activations, reserve, total, utilization,
        fits) and busy seconds per category (`busy_<category>_s`, idle included)."""
        m = self.pipeline.metrics
        rows = []
        for g in m.memory:
            row: dict[str, Any] = {
                "gpu": g.gpu,
                "weight_bytes": g.weight_bytes,
                "kv_cache_bytes": g.kv_cache_bytes,
                "activation_bytes": g.activation_bytes,
                "reserve_bytes": g.reserve_bytes,
                "total_bytes": g.total_bytes,
                "capacity_bytes": g.capacity_bytes,
                "utilization": g.utilization,
                "fits": g.fits,
            }
            for category, seconds in m.busy_s.get(g.gpu, {}).items():
                row[f"busy_{category.replace(' ', '_').replace('/', '_')}_s"] = seconds
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def ops(self) -> pd.DataFrame:
        """The trace: one row per simulated operator (what ops.csv holds), with start_s, end_s, flops, bytes."""
        return self.pipeline.sim.ops

    def write(
        self,
        out: str | os.PathLike | None = None,
        *,
        dag: bool = True,
        full_dag: bool = False,
        ops_csv: bool = False,
        plots: bool = True,
        force: bool = False,
        phase: PhaseCallback | None = None,
    ) -> Path:
        """Write what `moesim run` writes into `out` (default reports/<name>): summary.json / .md,
        critical_path.csv, ops.csv.gz (ops.csv too with `ops_csv`), the DAG drawing (`dag`; Graphviz),
        dag.json (`full_dag`), timeline, memory plot, trace and page (`plots`). All or nothing: the files
        appear in one rename when complete. Returns the directory."""
        from simulator.files import check_output, run_directory
        from simulator.report.summary import write_run_files

        aside = _aside(phase)
        phase = phase or (lambda name: None)
        target = check_output(Path(out) if out is not None else Path("reports") / self.scenario.name, force, "run")
        if dag:
            from simulator.report.dot import require_graphviz

            require_graphviz(", or pass --no-dag")
        with run_directory(target, force, kind="run") as staging:
            phase("write summary files")
            write_run_files(self.pipeline, staging, ops=ops_csv, analysis=self._analysis)
            drawing = None
            if dag or full_dag:
                phase("draw the DAG")
                from simulator.report.dot import start_render_dag

                # Graphviz lays the drawing out in its own process while the plots are drawn here.
                drawing = start_render_dag(
                    self.pipeline.dag, staging, self.scenario.name, full_json=full_dag, draw=dag, formats=("svg",)
                )
            try:
                if plots:
                    phase("draw plots")
                    from simulator.report.html import write_index
                    from simulator.report.plots import write_run_plots

                    # timeline.png and memory.png are drawn by two more processes while this one writes the trace
                    write_run_plots(self.pipeline, staging, self._summary, index=False, aside=aside)
                if drawing is not None:
                    drawing.wait()
                if plots:
                    phase("write the page")
                    write_index(staging, self._summary)  # last: it links what was drawn
            finally:
                if drawing is not None:
                    drawing.cancel()
        return target


def run(
    scenario: Source,
    *,
    decode_sample: int = DEFAULT_DECODE_SAMPLE,
    full: bool = False,
    overrides: Overrides = None,
    phase: PhaseCallback | None = None,
    **keyword_overrides: Any,
) -> RunResult:
    """Simulate a scenario (a Scenario, a YAML path or a mapping) as `moesim run` does.

    By default GPUs that are exactly alike are folded and `decode_sample` decode steps after the warm-up are
    simulated, the rest interpolated, with the error measured against a denser sample (summary["sampling"]);
    `full=True` (or decode_sample=0) simulates every step on every GPU. Keyword overrides name a field with
    '__' for the dot: `run(s, parallel__tp=4, hardware="h200-sxm-141gb")`."""
    if full:
        sample, fold = None, False
    else:
        if decode_sample < 0:
            raise ScenarioError(f"--decode-sample {decode_sample}: expected 0 (every step) or more")
        sample, fold = decode_sample or None, True
    loaded = _loaded(scenario, _override_strings(overrides, keyword_overrides), None)[0]
    aside = _aside(phase)
    phase = phase or (lambda name: None)
    started = time.perf_counter()
    hw = resolve_hardware(loaded)
    # The denser simulation that measures the sampling error needs only the scenario: a second process
    # makes it while this one simulates the run (computed here, later, where a fork is unavailable).
    check = aside(sampling_check, loaded, sample, fold, hw) if sample else None
    try:
        phase("build and simulate")
        result = run_scenario(loaded, decode_sample=sample, fold=fold, hw=hw)
        if check is not None:
            assert sample is not None  # the check exists only when decode steps are sampled
            phase("measure the sampling error")
            result = measure_sampling_error(result, sample, check.result())
    finally:
        if check is not None:
            check.cancel()
    return RunResult(loaded, result, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# compare


@dataclass(frozen=True, eq=False)
class CompareResult:
    """Every valid layout of a scenario, simulated and ranked: `ranking` (a DataFrame, comparison.csv's
    columns, best first), `results` (one record per layout), `best`, and `write`."""

    scenario: Scenario
    objective: str
    num_gpus: int
    results: list[LayoutResult] = field(repr=False)
    elapsed_s: float = 0.0
    #: The progress file kept while sweeping (removed once the outputs are written), if any.
    checkpoint: Path | None = None

    @cached_property
    def ranking(self) -> pd.DataFrame:
        """One row per layout, ranked (screened and failed layouts last, without a rank)."""
        from simulator.report.compare import comparison_rows

        return pd.DataFrame(comparison_rows(self.results, list(self.scenario.targets)))

    @property
    def best(self) -> LayoutResult | None:
        """The winning layout that fits (None when none does)."""
        from simulator.report.compare import winner

        return winner(self.results)

    def best_scenario(self) -> Scenario | None:
        """The scenario on its best layout (what best.yaml holds), or None."""
        from simulator.config import with_layout

        best = self.best
        return None if best is None else with_layout(self.scenario, best.layout)

    @property
    def counts(self) -> dict[str, int]:
        """Layouts simulated (ok), screened out (do not fit) and failed."""
        return {s: sum(r.status == s for r in self.results) for s in ("ok", "screened", "failed")}

    def write(self, out: str | os.PathLike | None = None, *, force: bool = False) -> list[Path]:
        """comparison.csv / .md, pareto.png, best.yaml and index.html into `out` (default
        reports/<name>/compare), as `moesim compare` writes them; returns the files written."""
        from simulator.files import run_directory
        from simulator.report.compare import write_comparison
        from simulator.report.html import write_index

        target = Path(out) if out is not None else Path("reports") / self.scenario.name / "compare"
        with run_directory(target, force, kind="compare") as staging:
            files = write_comparison(self.scenario, self.results, staging, self.objective)
            files.append(write_index(staging, None))
        if self.checkpoint is not None:
            self.checkpoint.unlink(missing_ok=True)
        return [target / Path(f).name for f in files]


def compare(
    scenario: Source,
    *,
    gpus: int | None = None,
    microbatches: Sequence[int] | str = DEFAULT_MICROBATCHES,
    objective: str = "targets",
    decode_sample: int = DEFAULT_DECODE_SAMPLE,
    jobs: int | None = None,
    executor: str | None = None,
    overrides: Overrides = None,
    base_dir: str | os.PathLike | None = None,
    on_layouts: Callable[[int], None] | None = None,
    on_result: Callable[[LayoutResult], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    **keyword_overrides: Any,
) -> CompareResult:
    """Sweep every valid layout of the scenario on `gpus` GPUs (default: its own) as `moesim compare` does:
    screen those that cannot hold their weights and KV cache, simulate the rest (`jobs` processes, or
    `executor`: process, serial, dask-local, dask://HOST:PORT), rank them by `objective` (targets, throughput,
    ttft, tpot, memory; with a serving section goodput_per_gpu or max_rate; trace files read relative to
    `base_dir`, as in `serve`). `on_layouts` gets the number of layouts before the sweep starts, `on_result`
    each layout's result as it finishes. `checkpoint`: a progress file that keeps finished layouts across an interruption
    (SweepInterrupted), read back with `resume=True`."""
    if objective not in OBJECTIVES:
        raise ScenarioError(f"objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    serving = objective in SERVING_OBJECTIVES
    items = _override_strings(overrides, keyword_overrides)
    loaded, base = _loaded(scenario, items, base_dir)
    simulate = None
    if serving:
        from functools import partial

        from simulator.serving.session import require_serving
        from simulator.sweep.serving import simulate_serving_layout

        require_serving(loaded, f"--objective {objective}")
        simulate = partial(simulate_serving_layout, objective=objective, base_dir=str(base))
    if gpus is not None and not 1 <= gpus <= MAX_GPUS:
        raise ScenarioError(f"--gpus {gpus}: expected a number of GPUs from 1 to {MAX_GPUS}")
    check_jobs(jobs)
    if decode_sample < 0:
        raise ScenarioError(f"--decode-sample {decode_sample}: expected 0 (every step) or more")
    counts = parse_microbatches(microbatches)
    num_gpus = gpus or loaded.num_gpus
    layouts = enumerate_layouts(loaded, num_gpus, counts)
    if not layouts:
        where = scenario if isinstance(scenario, (str, os.PathLike)) else loaded.name
        raise ScenarioError(f"{where}: no valid layout on {num_gpus} GPUs with microbatches {microbatches}")
    if on_layouts is not None:
        on_layouts(len(layouts))
    return _sweep(
        loaded, layouts, num_gpus, counts, objective, decode_sample, jobs, executor, simulate, on_result,
        Path(checkpoint) if checkpoint is not None else None, resume,
    )  # fmt: skip


def _sweep(
    scenario: Scenario,
    layouts: list,
    num_gpus: int,
    microbatches: tuple[int, ...],
    objective: str,
    decode_sample: int,
    jobs: int | None,
    executor: str | None,
    simulate: Callable[..., LayoutResult] | None,
    on_result: Callable[[LayoutResult], None] | None,
    checkpoint: Path | None,
    resume: bool,
) -> CompareResult:
    from simulator.sweep.resume import Progress, sweep_inputs

    started = time.perf_counter()
    serving = objective in SERVING_OBJECTIVES
    inputs = sweep_inputs(scenario, num_gpus, microbatches, decode_sample, objective if serving else None)
    journal = None
    try:
        with make_executor(executor, jobs) as pool:  # a bad executor: before the progress file
            if checkpoint is not None:
                journal = Progress(checkpoint, inputs, resume, layouts)
            results = run_sweep(
                scenario,
                layouts,
                pool,
                decode_sample,
                on_result,
                simulate=simulate,
                done=journal.done if journal is not None else None,
                journal=journal.append if journal is not None else None,
            )
    finally:
        if journal is not None:
            journal.close()
    failed = [r for r in results if r.status == "failed"]
    if results and len(failed) == len(results):  # nothing to compare: no table of failures
        if journal is not None:
            journal.remove()
        raise RuntimeError(f"every layout failed, nothing written (e.g. {failed[0].label}: {failed[0].error})")
    ranked = rank_results(results, objective)
    return CompareResult(scenario, objective, num_gpus, ranked, time.perf_counter() - started, checkpoint)


# ---------------------------------------------------------------------------------------------
# serve


@dataclass(frozen=True, eq=False)
class ServeResult:
    """A simulated request stream: `requests` (one row per request, requests.csv's columns), `latency`
    (statistics per latency metric), `figures` and `stats` (summary.json), `rate_curve` with `max_rate`,
    and `write`."""

    scenario: Scenario
    #: The serving simulation's own objects (spec, pricer, run, summary, max-rate search): not public.
    spec: Any = field(repr=False)
    pricer: Any = field(repr=False)
    #: What priced the iterations (the pricer's name, or the pools of a disaggregated deployment).
    priced_by: str = field(repr=False)
    sim: Any = field(repr=False)
    table: pd.DataFrame = field(repr=False)
    summary: Any = field(repr=False)
    found: Any = field(repr=False, default=None)
    rel_tol: float = 0.02
    base_dir: Path = Path(".")
    elapsed_s: float = 0.0

    @cached_property
    def requests(self) -> pd.DataFrame:
        """One row per request (arrival, queueing, TTFT, TPOT, inter-token latencies, end to end, preemptions);
        warm-up requests included and flagged."""
        from simulator.report.serving_summary import requests_frame

        return requests_frame(self.sim, self.table)

    @property
    def latency(self) -> pd.DataFrame:
        """Mean, p50, p90, p99 and max of each latency metric (seconds), warm-up requests left out."""
        return self.summary.latency

    @property
    def figures(self) -> dict[str, float]:
        """Throughput (tokens/s, tokens/ms per GPU), requests/s, goodput and the other serving figures."""
        return dict(self.summary.figures)

    @property
    def all_targets_met(self) -> bool:
        return bool(self.summary.all_targets_met) and (self.found is None or self.found.rate_per_s is not None)

    @property
    def max_rate(self) -> dict | None:
        """The max-rate search's answer (rate_per_s, capped, rel_tol, rates_tried), when one was asked for."""
        if self.found is None:
            return None
        return {
            "rate_per_s": self.found.rate_per_s,
            "capped": self.found.capped,
            "rel_tol": self.rel_tol,
            "rates_tried": len(self.found.curve),
            "unit": self.spec.workload.rate_unit,
        }

    @property
    def rate_curve(self) -> pd.DataFrame | None:
        """Every rate the max-rate search simulated, with its figures (None without a search)."""
        return None if self.found is None else self.found.curve

    @cached_property
    def _calibration(self) -> dict:
        from simulator.config import resolve_hardware
        from simulator.report.summary import calibration_dict

        return calibration_dict(resolve_hardware(self.scenario), self.scenario.result_class)

    @cached_property
    def stats(self) -> dict:
        """What summary.json holds (JSON types)."""
        from simulator.report.serving_summary import serving_summary_dict

        doc = serving_summary_dict(
            self.scenario.name, self.sim, self.summary, self.priced_by, self.scenario.result_class
        )
        doc["calibration"] = self._calibration
        if self.max_rate is not None:
            doc["max_rate"] = self.max_rate
        return json.loads(json.dumps(doc, sort_keys=True))

    def write(self, out: str | os.PathLike | None = None, *, force: bool = False) -> tuple[Path, dict]:
        """requests.csv, summary.json / .md, latency CDFs, time series, Gantt chart, serving_trace.json,
        index.html (and rate_curve.csv / .png after a max-rate search) into `out` (default
        reports/<name>/serve); returns the directory and the summary document."""
        from simulator.files import run_directory
        from simulator.report.serving_html import write_serving_index
        from simulator.report.serving_summary import write_rate_curve, write_serving_files

        target = Path(out) if out is not None else Path("reports") / self.scenario.name / "serve"
        with run_directory(target, force) as staging:
            doc = write_serving_files(
                self.scenario.name,
                self.sim,
                self.summary,
                self.priced_by,
                staging,
                self.table,
                self.max_rate,
                self._calibration,
                self.scenario.result_class,
            )
            if self.found is not None:
                write_rate_curve(self.found.curve, staging)
            self._write_pictures(staging)
            write_serving_index(staging, doc)
        return target, doc

    def _write_pictures(self, out: Path) -> None:
        from simulator.files import write_atomic
        from simulator.report.serving_plots import gantt_png, latency_cdf_png, rate_curve_png, timeseries_png
        from simulator.report.serving_trace import write_serving_trace

        name, found = self.scenario.name, self.found
        write_atomic(
            out / "latency_cdf.png", latency_cdf_png(self.table, self.spec.targets, f"{name}: serving latency")
        )
        write_atomic(out / "timeseries.png", timeseries_png(self.sim, f"{name}: serving over time"))
        write_atomic(out / "gantt.png", gantt_png(self.sim, name))
        if found is not None:
            write_atomic(
                out / "rate_curve.png",
                rate_curve_png(
                    found.curve,
                    self.spec.targets,
                    found.rate_per_s,
                    f"{name}: p99 latency and throughput against the arrival rate",
                    self.spec.workload.rate_unit,
                ),
            )
        write_serving_trace(out / "serving_trace.json", self.sim, {"scenario": name})


def serve(
    scenario: Source,
    *,
    max_rate: bool = False,
    rel_tol: float = 0.02,
    base_dir: str | os.PathLike | None = None,
    overrides: Overrides = None,
    on_rate: Callable[[float, Any], None] | None = None,
    **keyword_overrides: Any,
) -> ServeResult:
    """Simulate the scenario's `serving:` request stream as `moesim serve` does; `max_rate=True` also finds
    the highest Poisson rate meeting every target (within `rel_tol`; `on_rate(rate, summary)` after each rate
    tried). Trace and length files are read relative to `base_dir` (default: the scenario file's directory,
    or the current directory for a mapping or a Scenario)."""
    from simulator.serving.session import require_serving, serving_inputs
    from simulator.serving.simulate import simulate_serving
    from simulator.serving.stats import request_table, summarize

    if not rel_tol > 0:
        raise ScenarioError(f"--rel-tol {rel_tol}: expected a positive fraction, e.g. 0.02")
    loaded, base = _loaded(scenario, _override_strings(overrides, keyword_overrides), base_dir)
    require_serving(loaded, "--max-rate" if max_rate else "moesim serve")
    assert loaded.serving is not None
    from simulator.serving.session import pricer_name

    simulate = None
    if loaded.serving.disaggregation is not None:
        from simulator.serving.disagg import disaggregated_inputs

        deployment = disaggregated_inputs(loaded)
        spec, pricer, simulate = loaded.serving, None, deployment.simulate
        priced_by = f"{pricer_name(deployment.decode.pricer)} per pool ({deployment.describe()})"
    else:
        spec, pricer, _ = serving_inputs(loaded)
        priced_by = pricer_name(pricer)
    t = spec.targets
    if max_rate and all(v is None for v in (t.ttft_p99_s, t.tpot_p99_s, t.e2e_p99_s, t.min_goodput_fraction)):
        where = scenario if isinstance(scenario, (str, os.PathLike)) else loaded.name
        raise ScenarioError(
            f"{where}: --max-rate needs a target; set serving.targets.ttft_p99_s, "
            f"tpot_p99_s, e2e_p99_s or min_goodput_fraction"
        )
    started = time.perf_counter()
    if simulate is not None:
        sim = simulate(spec, base)
    else:
        assert pricer is not None
        sim = simulate_serving(spec, pricer, base_dir=base)
    table = request_table(sim)
    summary = summarize(sim, table)
    elapsed = time.perf_counter() - started
    found = None
    if max_rate:
        from simulator.serving.maxrate import search_max_rate

        found = search_max_rate(
            spec, pricer, summary.figures["requests_per_s"], rel_tol, on_rate, base, simulate=simulate
        )
    return ServeResult(loaded, spec, pricer, priced_by, sim, table, summary, found, rel_tol, base, elapsed)
