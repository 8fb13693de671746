"""Calibration stage, serving validation: predict published serving measurements (whole deployments under a
request stream) with the serving simulation and measure moesim's error (`moesim validate
validation/serving_cases.yaml`).

A serving cases file holds `serving_cases:`, each a published point (its id and source), the measured figures
(metric -> value, in the unit the metric's name carries), and either a scenario with a `serving:` section or
`skip: <reason>` when the point needs something moesim does not model. Nothing here is fitted: a case states
the deployment as its source describes it, and the prediction is what the simulation gives.

Replica sampling (`simulate_replicas: 1`): a deployment of dp independent replicas (no lockstep) behind a
round-robin router is simulated as its replica 0 alone, given exactly the requests the router would send it
(every dp-th request of the whole stream; exact for open loops and for an offline batch, where every request
is queued at t=0). Its latencies are a sample of the whole deployment's; system throughput is dp times
replica 0's (the replicas differ only by the lengths their requests draw).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from simulator.calibration.validate import read_case_list
from simulator.config import ScenarioError, ServingSpec, parse_scenario
from simulator.config.checked import LAYOUT_CLASS, LAYOUT_CLASS_NAME, MODEL_CLASS, MODEL_CLASS_NAME
from simulator.config.load import resolve_relative_paths
from simulator.files import read_yaml
from simulator.pipeline import RunResult, run_scenario
from simulator.serving.session import serving_inputs
from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import (
    IterationProfile,
    inter_token_latencies_s,
    iteration_profile,
    request_table,
    summarize,
)
from simulator.serving.workload import Request, generate_requests

#: What a serving case can compare, in the unit its name carries (system-wide unless the name says otherwise).
ServingMetric = Literal[
    "output_tokens_per_s",
    "input_tokens_per_s",
    "total_tokens_per_s",
    "requests_per_s",
    "ttft_mean_ms",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tpot_mean_ms",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "itl_mean_ms",
    "itl_p50_ms",
]

#: Throughput metrics scale with the replicas when only one is simulated; latencies do not.
THROUGHPUT_METRICS = frozenset({"output_tokens_per_s", "input_tokens_per_s", "total_tokens_per_s", "requests_per_s"})


class ServingCase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    measured: dict[ServingMetric, PositiveFloat] = Field(min_length=1)
    scenario: dict[str, Any] | None = None
    simulate_replicas: Literal[1] | None = None  # 1: replica sampling (module docstring); None: every replica
    #: "decode": a decode phase measured alone at a fixed batch and KV length (a disaggregated decode pool fed
    #: by a synthetic prefill): a static scenario whose steady decode step gives output_tokens_per_s.
    phase: Literal["decode"] | None = None
    skip: str | None = Field(default=None, min_length=1)
    notes: str = ""

    @model_validator(mode="after")
    def _scenario_or_skip(self) -> ServingCase:
        if self.skip is None and self.scenario is None:
            raise ValueError("give a scenario (with a serving section), or skip: <why moesim cannot model it>")
        if self.phase == "decode":
            if self.scenario is not None and ("serving" in self.scenario or "workload" not in self.scenario):
                raise ValueError("phase: decode: give a static scenario (a workload: section, no serving: section)")
            if set(self.measured) != {"output_tokens_per_s"}:
                raise ValueError("phase: decode: a decode phase alone gives output_tokens_per_s only")
        elif self.scenario is not None and "serving" not in self.scenario:
            raise ValueError("scenario.serving: missing; a serving case simulates a request stream")
        return self


class ServingCasesFile(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # extra keys hold YAML anchors (shared models)
    serving_cases: list[ServingCase]


@dataclass(frozen=True)
class ServingOutcome:
    """One row of the table: a case's metric, measured and predicted (in the metric's unit)."""

    case: str
    metric: str
    measured: float
    predicted: float
    host_bound_share: float | None = None  # of the case's iterations, those its engine's host work set (or None)
    iterations: IterationProfile | None = None  # the case's iterations on replica 0 (None: a static decode phase)

    @property
    def error(self) -> float:
        """Signed relative error of the prediction: predicted / measured - 1."""
        return self.predicted / self.measured - 1.0

    @property
    def faster(self) -> bool:
        """Whether moesim was faster than measured: more throughput, or less latency."""
        if self.metric in THROUGHPUT_METRICS:
            return self.predicted > self.measured
        return self.predicted < self.measured


@dataclass(frozen=True)
class Skipped:
    case: str
    reason: str


@dataclass(frozen=True)
class CasePrediction:
    """What one simulated case gives: the figures of every ServingMetric, and how it was simulated."""

    figures: dict[str, float]
    simulated_requests: int
    replicas_simulated: int
    replicas: int
    host_bound_share: float | None = None  # where the engine has host time: the share of iterations it set
    iterations: IterationProfile | None = None  # replica 0's iterations (stats.iteration_profile)


def is_serving_cases_file(path: Path) -> bool:
    """Whether a cases file holds serving cases (a top-level `serving_cases:` list)."""
    data = read_yaml(Path(path), str(path), "cases", ScenarioError)
    return isinstance(data, dict) and "serving_cases" in data


def load_serving_cases(path: Path) -> list[ServingCase]:
    """The serving cases of a file (read as every YAML input is), relative paths taken from its directory."""
    path = Path(path)
    cases: list[ServingCase] = read_case_list(path, ServingCasesFile, "serving_cases", "at least one published point")
    return [
        case.model_copy(update={"scenario": resolve_relative_paths(case.scenario, path.parent)})
        if case.scenario is not None
        else case
        for case in cases
    ]


def case_scenario(case: ServingCase):
    """The case's Scenario. A serving case needs no static `workload:`; when it gives none, a placeholder
    (batch dp, 1 + 1 tokens) fills the required section: the serving simulation never reads it."""
    assert case.scenario is not None
    data = {"name": case.id.replace(" ", "_"), **case.scenario}
    if "workload" not in data:
        dp = int((data.get("parallel") or {}).get("dp", 1))
        data["workload"] = {"batch_size": dp, "input_len_tokens": 1, "output_len_tokens": 1}
    return parse_scenario(data, f"case '{case.id}'")


def steady_decode_step_s(run: RunResult) -> float:
    """Seconds between consecutive tokens of microbatch 0 once every prefill is done: the median gap between its
    decode steps' token nodes from the second decode step on (the first also waits for the other microbatches'
    prefills). ScenarioError when the run has fewer than three decode steps."""
    ends = {}
    for attrs, end in zip(run.dag.attrs, run.sim.end_s):
        if attrs["op"] == "token" and attrs["phase"] == "decode" and attrs["microbatch"] == 0:
            ends[attrs["step"]] = end
    steps = sorted(ends)
    if len(steps) < 3:
        raise ScenarioError(
            f"{run.scenario.name}: phase: decode needs at least 3 decode steps (workload.output_len_tokens >= 4)"
        )
    return statistics.median(ends[b] - ends[a] for a, b in zip(steps[1:], steps[2:]))


def simulate_decode_phase(case: ServingCase) -> CasePrediction:
    """A decode phase alone (phase: decode): the static scenario's batch over its steady decode step, every decode
    step and every GPU simulated."""
    scenario = case_scenario(case)
    run = run_scenario(scenario, verify=False, explain=False)
    figures = {"output_tokens_per_s": scenario.workload.batch_size / steady_decode_step_s(run)}
    return CasePrediction(figures, scenario.workload.batch_size, 1, 1)


def simulate_case(case: ServingCase, base_dir: Path | None = None) -> CasePrediction:
    """Run the serving simulation of one case and read every metric off its summary."""
    if case.phase == "decode":
        return simulate_decode_phase(case)
    scenario = case_scenario(case)
    spec, pricer, _ = serving_inputs(scenario)
    requests = generate_requests(spec, base_dir)
    replicas = spec.replicas.num_replicas
    simulated = replicas
    if case.simulate_replicas == 1 and replicas > 1:
        try:
            spec, requests = replica_zero(spec, requests)
        except ValueError as exc:
            raise ScenarioError(f"case '{case.id}': simulate_replicas: 1: {exc}; remove it") from None
        simulated = 1
    run = simulate_serving(spec, pricer, requests, base_dir)
    table = request_table(run)
    summary = summarize(run, table)
    scale = replicas / simulated
    lat = summary.latency
    figures = {
        "output_tokens_per_s": summary.figures["output_tokens_per_s"] * scale,
        "input_tokens_per_s": summary.figures["input_tokens_per_s"] * scale,
        "total_tokens_per_s": summary.figures["total_tokens_per_s"] * scale,
        "requests_per_s": summary.figures["requests_per_s"] * scale,
        "ttft_mean_ms": float(lat.loc["ttft_s", "mean"]) * 1e3,
        "ttft_p50_ms": float(lat.loc["ttft_s", "p50"]) * 1e3,
        "ttft_p99_ms": float(lat.loc["ttft_s", "p99"]) * 1e3,
        "tpot_mean_ms": float(lat.loc["tpot_s", "mean"]) * 1e3,
        "tpot_p50_ms": float(lat.loc["tpot_s", "p50"]) * 1e3,
        "tpot_p99_ms": float(lat.loc["tpot_s", "p99"]) * 1e3,
        "itl_mean_ms": float(inter_token_latencies_s(run).mean()) * 1e3,
        "itl_p50_ms": float(lat.loc["itl_s", "p50"]) * 1e3,
    }
    host = run.host
    share = host.host_bound / host.iterations if host is not None and host.seconds > 0.0 and host.iterations else None
    return CasePrediction(figures, len(requests), simulated, replicas, share, iteration_profile(run))


def replica_zero(spec: ServingSpec, requests: tuple[Request, ...]) -> tuple[ServingSpec, tuple[Request, ...]]:
    """Replica 0 of spec's independent round-robin replicas alone: one replica, every `replicas`-th request
    (renumbered), the warm-up the requests of replica 0 among the first warmup_requests. ValueError when that is not what the router would send it:
    lockstep replicas, another router, or a closed loop that refills as requests finish."""
    n = spec.replicas.num_replicas
    w = spec.workload
    if spec.replicas.lockstep or spec.replicas.router != "round_robin":
        raise ValueError(
            f"needs independent replicas behind a round_robin router (lockstep = {spec.replicas.lockstep}, "
            f"router = {spec.replicas.router})"
        )
    arrivals = w.arrivals
    if arrivals.kind == "closed_loop" and arrivals.concurrency < len(requests):
        raise ValueError("exact only for open loops and offline batches (closed_loop concurrency = num_requests)")
    mine = tuple(dataclasses.replace(r, request_id=i) for i, r in enumerate(requests[0::n]))
    if arrivals.kind == "closed_loop":
        arrivals = arrivals.model_copy(update={"concurrency": len(mine)})
    workload = w.model_copy(
        update={"num_requests": len(mine), "warmup_requests": -(-w.warmup_requests // n), "arrivals": arrivals}
    )
    one = spec.replicas.model_copy(update={"count": 1, "lockstep": False})
    return spec.model_copy(update={"workload": workload, "replicas": one}), mine


def predict_serving(case: ServingCase, base_dir: Path | None = None) -> list[ServingOutcome]:
    """One row per measured metric of a (not skipped) case."""
    prediction = simulate_case(case, base_dir)
    return [
        ServingOutcome(case.id, m, v, prediction.figures[m], prediction.host_bound_share, prediction.iterations)
        for m, v in case.measured.items()
    ]


@dataclass(frozen=True)
class ProfileCheck:
    """One profile's rows in a validation run (an engine profile, or a hardware profile that records checks)
    against what the profile records for this case file (its `checked`); recorded is None where it records none."""

    kind: Literal["engine", "hardware"]
    name: str
    measured: dict[str, float]  # summarize_serving of the profile's rows in this run
    recorded: dict[str, float] | None
    models: Literal["all", "dense", "moe"] = "all"  # the rows: all, or those of one model class (CheckedSpec.models)
    layouts: Literal["all", "experts_across_dp", "other"] = "all"  # and of one layout class (CheckedSpec.layouts)

    @property
    def matches(self) -> bool:
        """The same rows and the same errors to the 0.05 % the profile states them to, and the same count of
        rows where moesim was faster where the profile records one."""
        r, m = self.recorded, self.measured
        return (
            r is not None
            and r["rows"] == m["rows"]
            and all(abs(r[k] - m[k]) <= 5e-4 for k in ("median_abs_error", "max_abs_error"))
            and (r.get("faster_rows") is None or r["faster_rows"] == m["faster_rows"])
        )

    def line(self) -> str:
        m = self.measured
        run = (
            f"{int(m['rows'])} rows, median |error| {100 * m['median_abs_error']:.1f} %, largest "
            f"{100 * m['max_abs_error']:.1f} %, moesim faster than measured in {int(m['faster_rows'])}"
        )
        where = f"{self.kind}_profiles/{self.name}.yaml"
        classes = [MODEL_CLASS_NAME[self.models] + " models"] if self.models != "all" else []
        classes += [LAYOUT_CLASS_NAME[self.layouts]] if self.layouts != "all" else []
        of = f" ({', '.join(classes)})" if classes else ""
        head = f"{self.kind} profile {self.name}{of}"
        if self.recorded is None:
            return f"{head}: {run}; {where} records no check on this file"
        if self.matches:
            return f"{head}: {run}, as {where} records"
        r = self.recorded
        faster = f", faster than measured in {r['faster_rows']}" if r.get("faster_rows") is not None else ""
        return (
            f"{head}: {run}; {where} records {int(r['rows'])} rows, "
            f"{100 * r['median_abs_error']:.1f} / {100 * r['max_abs_error']:.1f} %{faster}: update its `checked`"
        )


def profile_checks(cases: list[ServingCase], outcomes: list[ServingOutcome], cases_path: Path) -> list[ProfileCheck]:
    """Per engine profile the cases price with (serving.engine), and per hardware profile that records checks,
    its rows' errors in this run against each check the profile records for `cases_path` (on the rows of the
    model and layout class the check names, CheckedSpec.models and .layouts; a class none of this run's rows is
    of is left out), or all its rows where it records none."""
    from simulator.config.engine import ENGINE_PROFILES_DIR, load_engine_profile
    from simulator.config.hardware import load_profile

    root = ENGINE_PROFILES_DIR.parent
    engine_of, hardware_of, class_of, layout_of = {}, {}, {}, {}
    for case in cases:
        if case.skip is None and case.scenario is not None:
            scenario = case_scenario(case)
            class_of[case.id] = MODEL_CLASS[scenario.model.is_moe]
            layout_of[case.id] = LAYOUT_CLASS[scenario.experts_across_dp]
            hardware_of[case.id] = scenario.hardware.profile
            if scenario.serving is not None and scenario.serving.engine is not None:
                engine_of[case.id] = scenario.serving.engine
    checks = []
    kinds: tuple[tuple[Literal["engine", "hardware"], dict[str, str], Any], ...] = (
        ("engine", engine_of, load_engine_profile),
        ("hardware", hardware_of, load_profile),
    )
    for kind, of, load in kinds:
        for name in sorted(set(of.values())):
            rows = [o for o in outcomes if of.get(o.case) == name]
            recorded_checks = load(name).checked
            if not rows or (kind == "hardware" and not recorded_checks):
                continue
            here = [c for c in recorded_checks if (root / c.cases).resolve() == Path(cases_path).resolve()]
            if not here:
                checks.append(ProfileCheck(kind, name, summarize_serving(rows), None))
            for c in here:
                mine = [
                    o
                    for o in rows
                    if c.models in ("all", class_of.get(o.case)) and c.layouts in ("all", layout_of.get(o.case))
                ]
                if not mine:  # a run of part of the file, none of this class: it says nothing of the check
                    continue
                checks.append(ProfileCheck(kind, name, summarize_serving(mine), c.model_dump(), c.models, c.layouts))
    return checks


def summarize_serving(outcomes: list[ServingOutcome]) -> dict[str, float]:
    """Median and largest |error| over the rows (NaN with no rows), the row count and the rows where moesim was
    faster than measured (ServingOutcome.faster)."""
    errors = [abs(o.error) for o in outcomes]
    faster = float(sum(o.faster for o in outcomes))
    if not errors:
        return {"median_abs_error": math.nan, "max_abs_error": math.nan, "rows": 0.0, "faster_rows": 0.0}
    return {
        "median_abs_error": statistics.median(errors),
        "max_abs_error": max(errors),
        "rows": float(len(errors)),
        "faster_rows": faster,
    }
