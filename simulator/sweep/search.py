"""Sweep stage, the deployment search: candidates (sweep.candidates) pruned by cheap bounds (sweep.bounds), the
rest simulated on an executor best bound first, and ranked by an objective.

Objectives: 'targets' (highest output tokens/s per GPU among the candidates meeting every target; a serving
scenario: at the highest Poisson rate meeting its serving targets), 'max_rate' (the same for a serving
scenario), 'cost' (lowest cost per million output tokens at the targets: GPU-hours x price / output tokens),
'fewest_gpus' (fewest GPUs meeting the serving targets at a given request rate; ties: cost, else throughput).

Pruning rules, each counted (PRUNE_RULES): 'memory' (weights + KV cache cannot fit, closed form), 'tpot_bound'
(the roofline TPOT already misses the TPOT target), 'target_bound' (the roofline throughput misses a static
throughput target), 'more_gpus' (fewest_gpus: a smaller count already meets the targets), 'dominated_bound'
(the candidate's bound cannot beat the best result found so far), 'dominated_rate' (max_rate, targets and cost
on a serving scenario: a rate the candidate's max-rate search missed caps what it can report below the best
result found, serving.maxrate.throughput_cap; its search stops there). A pruned candidate cannot win: every
bound is one the simulation cannot beat (sweep.bounds); ties are never pruned.

A serving candidate's max-rate search stops a rate's run once the deployment has fallen behind by the last
measured arrival (serving.maxrate.evaluate_verdict: the verdict the full run would give), and each candidate
gets its own iteration pricer, so its figures do not depend on which other candidates ran or were pruned.
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace

from simulator.config import Scenario, ScenarioError, resolve_hardware
from simulator.config.serving import FixedLength
from simulator.memory import kv_bytes_kept, kv_cache_bytes_per_gpu, weight_bytes_per_gpu
from simulator.placement import Placement, evenly_routed
from simulator.sweep.bounds import output_tput_upper_bound, tpot_lower_bound_s
from simulator.sweep.candidates import Candidate, CandidateScenarios, paid_gpu_share
from simulator.sweep.executors import SerialExecutor
from simulator.sweep.run import DEFAULT_DECODE_SAMPLE, SweepInterrupted, estimated_cost, simulate_layout

SEARCH_OBJECTIVES = ("targets", "max_rate", "cost", "fewest_gpus")
PRUNE_RULES = ("memory", "tpot_bound", "target_bound", "more_gpus", "dominated_bound", "dominated_rate")
_HOUR_S = 3600.0


@dataclass(frozen=True)
class SearchSettings:
    """What decides each candidate's figures (picklable: it travels to the workers)."""

    objective: str = "targets"
    serving: bool = False
    decode_sample: int = DEFAULT_DECODE_SAMPLE
    rate_per_s: float | None = None  # fewest_gpus: the request rate to serve
    rel_tol: float = 0.02  # max-rate search tolerance
    base_dir: str | None = None  # where a serving section's relative files live
    # Output tokens/s per GPU a candidate of this task must exceed to beat the best result found when the task
    # was formed (at the task's price; NaN: none yet): a max-rate search gives up below it ('dominated_rate').
    floor_tokens_per_s_per_gpu: float = math.nan


@dataclass(frozen=True)
class SearchResult:
    """One candidate's row. status: 'ok' (simulated), 'pruned' (reason: its PRUNE_RULES entry and why) or
    'failed' (reason: the error). Figures: output tokens/s per GPU at the targets (serving: at the max rate,
    or at the given rate for fewest_gpus), TPOT and TTFT there (serving: p99), the rate, memory per GPU."""

    index: int
    candidate: Candidate
    status: str
    rule: str = ""
    reason: str = ""
    meets: bool = False
    output_tokens_per_s_per_gpu: float = math.nan
    tpot_s: float = math.nan
    ttft_s: float = math.nan
    rate_per_s: float = math.nan
    memory_bytes_per_gpu: float = math.nan
    bound_tokens_per_s_per_gpu: float = math.nan
    price_per_gpu_hour_usd: float = math.nan
    rank: int | None = None
    sim_s: float = field(default=0.0, compare=False)

    @property
    def num_gpus(self) -> int:
        return self.candidate.num_gpus

    @property
    def tokens_per_s_per_user(self) -> float:
        """The speed one user sees: 1 / TPOT."""
        return 1.0 / self.tpot_s if self.tpot_s > 0 else math.nan

    @property
    def cost_per_million_output_tokens_usd(self) -> float:
        """GPU-hours x price / output tokens, per million: price / (3600 x output tokens/s per GPU) x 1e6."""
        return _cost(self.price_per_gpu_hour_usd, self.output_tokens_per_s_per_gpu)


def _cost(price: float, tokens_per_s_per_gpu: float) -> float:
    if not (tokens_per_s_per_gpu > 0) or math.isnan(price):
        return math.nan
    return price * 1e6 / (_HOUR_S * tokens_per_s_per_gpu)


# ---------------------------------------------------------------------------------------------
# Evaluation (runs in a worker)


def evaluate_candidate(index: int, candidate: Candidate, scenario: Scenario, settings: SearchSettings) -> SearchResult:
    """Simulate one candidate (its scenario already on its layout); an error becomes a 'failed' row.
    Kinds dispatch here: a disaggregated candidate runs its pools' serving simulation (serving.disagg)."""
    started = time.perf_counter()
    try:
        if candidate.kind == "disaggregated":
            if not settings.serving:
                raise ScenarioError("a disaggregated candidate needs a serving section")
            from simulator.serving.disagg import disaggregated_inputs

            figures = _serving_figures(scenario, settings, disaggregated_inputs(scenario).simulate)
            figures["output_tokens_per_s_per_gpu"] *= paid_gpu_share(candidate)  # idle GPUs of separate_nodes
        elif candidate.kind != "aggregated":
            raise ScenarioError(f"candidate kind {candidate.kind!r} has no evaluation in this build")
        elif settings.serving:
            figures = _serving_figures(scenario, settings)
        else:
            figures = _static_figures(index, scenario, settings)
    except _Dominated as exc:
        return SearchResult(index, candidate, "pruned", "dominated_rate", str(exc), sim_s=time.perf_counter() - started)
    except Exception as exc:  # recorded in the table; the search goes on
        message = str(exc).splitlines()[0] if str(exc) else ""
        return SearchResult(index, candidate, "failed", reason=f"{type(exc).__name__}: {message}".rstrip(": "))
    return SearchResult(index, candidate, "ok", sim_s=time.perf_counter() - started, **figures)


class _Dominated(Exception):
    """The candidate's max-rate search gave up: it cannot beat the best result found (the reason)."""


def _static_figures(index: int, scenario: Scenario, settings: SearchSettings) -> dict:
    r = simulate_layout(index, False, scenario, settings.decode_sample)
    if r.status != "ok":
        raise RuntimeError(r.error)
    return {
        "meets": r.all_met and r.fits,
        "output_tokens_per_s_per_gpu": r.output_tput * 1e3,
        "tpot_s": r.tpot_s,
        "ttft_s": r.ttft_max_s,
        "memory_bytes_per_gpu": r.memory_bytes_per_gpu,
    }


def _serving_figures(scenario: Scenario, settings: SearchSettings, simulate=None) -> dict:
    """The serving objectives' figures; `simulate` (a disaggregated deployment's, serving.maxrate.Simulate)
    replaces the aggregated simulation and its pricer."""
    from simulator.serving.capacity import resolve_serving
    from simulator.serving.maxrate import evaluate, search_max_rate, throughput_cap

    if simulate is not None:
        assert scenario.serving is not None
        spec, pricer = scenario.serving, None
    else:
        spec, pricer = resolve_serving(scenario, resolve_hardware(scenario)), _pricer(scenario)
    if settings.objective == "fewest_gpus":
        assert settings.rate_per_s is not None
        row, _summary = evaluate(spec, pricer, settings.rate_per_s, settings.base_dir, simulate)
        met = bool(row["all_targets_met"])
    else:
        start = getattr(spec.workload.arrivals, "rate_per_s", None) or 1.0
        floor = settings.floor_tokens_per_s_per_gpu
        caps: dict[float, float] = {}

        def give_up(rate: float) -> bool:
            """Every rate found later is below `rate` and reports less than its cap: no better than the floor."""
            if not floor > 0:
                return False
            caps[rate] = throughput_cap(spec, rate, settings.base_dir)
            return caps[rate] <= floor

        found = search_max_rate(
            spec,
            pricer,
            start,
            settings.rel_tol,
            base_dir=settings.base_dir,
            simulate=simulate,
            give_up=give_up,
            verdict_only=True,
        )
        if found.given_up_at_per_s is not None:
            rate = found.given_up_at_per_s
            raise _Dominated(
                f"misses the targets at {rate:.4g} requests/s, so reports under {caps[rate]:.4g} output tokens/s/GPU "
                f"(the measured requests' output tokens over their arrival span), not above the best found {floor:.4g}"
            )
        curve = found.curve
        if found.rate_per_s is None:  # even the lowest rate tried misses: report that rate's figures
            row, met = curve.iloc[0].to_dict(), False
        else:
            row, met = curve[curve["rate_per_s"] == found.rate_per_s].iloc[0].to_dict(), True
    return {
        "meets": met,
        "output_tokens_per_s_per_gpu": float(row["output_tokens_per_s_per_gpu"]),
        "tpot_s": float(row["tpot_p99_s"]),
        "ttft_s": float(row["ttft_p99_s"]),
        "rate_per_s": float(row["rate_per_s"]),
    }


def evaluate_many(
    evaluate: Callable[..., SearchResult], items: Sequence[tuple[int, Candidate, Scenario]], settings: SearchSettings
) -> list[SearchResult]:
    """One task: evaluate candidates that differ in scheduler limits only, in order (picklable for the
    executors). Each candidate starts with no iteration pricer, so its figures depend on it alone, not on what
    the worker ran before or on which candidates were pruned (the pricer's adaptive grid interpolates within
    0.1 %: serving.dag_pricer). A candidate meeting the targets raises the task's floor for the next ones (they
    share its price). DAG pricers share their exact passes across the worker's tasks (_PASSES,
    serving.dag_pricer.share_exact_passes: pure functions of the scenario, so no price changes)."""
    from simulator.serving.dag_pricer import share_exact_passes

    if len(_PASSES) > _PASSES_MAX:
        _PASSES.clear()
    out = []
    with share_exact_passes(_PASSES):
        for i, c, scenario in items:
            _PRICERS.clear()
            try:
                result = evaluate(i, c, scenario, settings)
            finally:
                _PRICERS.clear()
            out.append(result)
            tput = result.output_tokens_per_s_per_gpu
            if result.status == "ok" and result.meets and not tput <= settings.floor_tokens_per_s_per_gpu:
                settings = replace(settings, floor_tokens_per_s_per_gpu=tput)
    return out


def pricer_key(c: Candidate) -> tuple:
    """What an iteration's price depends on: everything but the scheduler limits (sweep.search's tasks group by it)."""
    return (c.kind, c.hardware, c.weight_dtype, c.kv_cache_dtype, c.layout.sort_key(), c.detail)


#: The running candidate's iteration pricer by scenario without its serving section: its max-rate search's
#: rates share one pricer's cache (DagPricer reads no serving field). Cleared before and after each candidate
#: (evaluate_many), so a candidate's prices depend on its own batches alone.
_PRICERS: dict[str, object] = {}
_PRICERS_MAX = 4
#: The worker's exact DAG passes by scenario (serving.dag_pricer.share_exact_passes), cleared past _PASSES_MAX
#: scenarios (a few hundred small arrays each).
_PASSES: dict = {}
_PASSES_MAX = 512


def _pricer(scenario: Scenario):
    import json

    from simulator.serving.dag_pricer import DagPricer
    from simulator.serving.pricing import CachedPricer

    key = json.dumps(scenario.model_dump(mode="json", exclude={"serving", "name", "description"}), sort_keys=True)
    hit = _PRICERS.get(key)
    if hit is None:
        if len(_PRICERS) >= _PRICERS_MAX:
            _PRICERS.clear()
        hit = _PRICERS[key] = CachedPricer(DagPricer(scenario, resolve_hardware(scenario)))
    return hit


# ---------------------------------------------------------------------------------------------
# Screening and bounds (this process)


@dataclass(frozen=True)
class Bound:
    """A candidate's cheap figures: output tokens/s per GPU it cannot exceed, TPOT it cannot beat."""

    tokens_per_s_per_gpu: float
    tpot_s: float


def _lengths(scenario: Scenario, serving: bool) -> tuple[int | None, int | None, int]:
    """(input, output) tokens when every request has them (else None), and the shortest prompt."""
    if not serving:
        w = scenario.workload
        return w.input_len_tokens, w.output_len_tokens, w.input_len_tokens
    assert scenario.serving is not None
    sw = scenario.serving.workload
    fixed_in = sw.input_len.tokens if isinstance(sw.input_len, FixedLength) else None
    fixed_out = sw.output_len.tokens if isinstance(sw.output_len, FixedLength) else None
    shortest = fixed_in or int(getattr(sw.input_len, "min_tokens", 1) or 1)
    return fixed_in, fixed_out, shortest


def candidate_bound(scenario: Scenario, serving: bool) -> Bound:
    hw = resolve_hardware(scenario)
    fixed_in, fixed_out, shortest = _lengths(scenario, serving)
    return Bound(output_tput_upper_bound(scenario, hw, fixed_in, fixed_out), tpot_lower_bound_s(scenario, hw, shortest))


def disaggregated_bound(scenario: Scenario, serving: bool) -> Bound:
    """A disaggregated candidate's bound: the throughput bound counts every request's GPU work whatever pool it
    runs in (sweep.bounds: layout-free), the TPOT bound is that of one decode instance's layout."""
    from simulator.config.scenario import pool_layout

    assert scenario.serving is not None and scenario.serving.disaggregation is not None
    decode = pool_layout(scenario, scenario.serving.disaggregation.decode.parallel, "serving.disaggregation.decode")
    return candidate_bound(decode, serving)


def screen_disaggregated(scenario: Scenario, bound: Bound) -> tuple[str, str] | None:
    """(rule, why) for a disaggregated candidate: 'memory' when a pool cannot hold the model and one request
    (the serving stage's own per-pool check, serving.disagg.disaggregated_inputs), 'tpot_bound' as screen."""
    from simulator.serving.disagg import disaggregated_inputs

    try:
        disaggregated_inputs(scenario)
    except ScenarioError as exc:
        return "memory", str(exc).splitlines()[0]
    assert scenario.serving is not None
    tpot_max = scenario.serving.targets.tpot_p99_s
    if tpot_max is not None and bound.tpot_s > tpot_max:
        return "tpot_bound", f"TPOT >= {bound.tpot_s * 1e3:.4g} ms (roofline) > target {tpot_max * 1e3:.4g} ms"
    return None


def screen(scenario: Scenario, bound: Bound, serving: bool) -> tuple[str, str] | None:
    """(rule, why) when the candidate cannot meet the targets whatever its simulation gives; None otherwise."""
    hw = resolve_hardware(scenario)
    need = _memory_need(scenario, serving)
    if need > hw.memory_bytes:
        return "memory", f"weights + KV cache need {need / 1e9:.1f} GB of {hw.memory_bytes / 1e9:.1f} GB"
    if serving:
        assert scenario.serving is not None
        tpot_max = scenario.serving.targets.tpot_p99_s
    else:
        target = scenario.targets.get("tpot_s")
        tpot_max = target.max if target is not None else None
        out = scenario.targets.get("output_tokens_per_ms_per_gpu")
        if out is not None and out.min is not None and bound.tokens_per_s_per_gpu / 1e3 < out.min:
            return "target_bound", (
                f"at most {bound.tokens_per_s_per_gpu / 1e3:.4g} output tokens/ms/GPU (roofline) < target {out.min:.4g}"
            )
    if tpot_max is not None and bound.tpot_s > tpot_max:
        return "tpot_bound", f"TPOT >= {bound.tpot_s * 1e3:.4g} ms (roofline) > target {tpot_max * 1e3:.4g} ms"
    return None


def _memory_need(scenario: Scenario, serving: bool) -> float:
    """Static: weights + the batch's peak KV cache + reserve (run.screen_memory). Serving: weights + one
    longest request's KV cache + reserve on the fullest GPU (a replica must hold at least one request)."""
    if not serving:
        return _static_need(scenario)
    assert scenario.serving is not None
    w = scenario.serving.workload
    longest = 0
    if w.input_len is not None and w.output_len is not None:
        longest = (w.input_len.max_tokens_bound() or 0) + (w.output_len.max_tokens_bound() or 0)
    p = scenario.parallel
    placement = Placement.of(scenario)
    need = max(
        weight_bytes_per_gpu(scenario, placement.stage_gpus(stage)[0])
        + kv_bytes_kept(scenario, placement.stage_gpus(stage)[0], longest)
        for stage in range(p.pp)
    )
    return need + scenario.runtime.memory_reserve_bytes


def _static_need(scenario: Scenario) -> float:
    """run.screen_memory's closed form: the fullest stage's weights + peak KV cache, plus the reserve."""
    per_stage = scenario.parallel.dp * scenario.parallel.tp
    return (
        max(
            weight_bytes_per_gpu(scenario, g) + kv_cache_bytes_per_gpu(scenario, g)
            for g in range(0, scenario.num_gpus, per_stage)
        )
        + scenario.runtime.memory_reserve_bytes
    )


# ---------------------------------------------------------------------------------------------
# Objective keys: lower is better; a bound key is the best key a candidate could reach


def result_key(r: SearchResult, objective: str) -> tuple:
    if objective == "cost":
        return (_nan_high(r.cost_per_million_output_tokens_usd),)
    if objective == "fewest_gpus":
        cost = r.cost_per_million_output_tokens_usd
        return (r.num_gpus, _nan_high(cost), -_nan_low(r.output_tokens_per_s_per_gpu))
    return (-_nan_low(r.output_tokens_per_s_per_gpu),)


def bound_key(c: Candidate, b: Bound, price: float, objective: str) -> tuple:
    if objective == "cost":
        return (_nan_high(_cost(price, b.tokens_per_s_per_gpu)),)
    if objective == "fewest_gpus":
        return (c.num_gpus, _nan_high(_cost(price, b.tokens_per_s_per_gpu)), -_nan_low(b.tokens_per_s_per_gpu))
    return (-_nan_low(b.tokens_per_s_per_gpu),)


def _floor(best: tuple | None, price: float, objective: str) -> float:
    """Output tokens/s per GPU a candidate at `price` must exceed to beat the best key (NaN: no floor). max_rate
    and targets rank by -tokens/s/GPU; cost by price / tokens (higher tokens: lower cost at one price)."""
    if best is None:
        return math.nan
    if objective in ("max_rate", "targets"):
        return -best[0]
    if objective == "cost" and best[0] > 0 and math.isfinite(best[0]):
        return price * 1e6 / (_HOUR_S * best[0])
    return math.nan


def _nan_high(x: float) -> float:
    return math.inf if math.isnan(x) else x


def _nan_low(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def _dominated(key: tuple, best: tuple) -> bool:
    """The bound key cannot reach the best key: strictly worse (a tie might still win on its index)."""
    return key > best


# ---------------------------------------------------------------------------------------------
# Running


def run_search(
    base: Scenario,
    candidates: Sequence[Candidate],
    settings: SearchSettings,
    prices: Mapping[str, float] | None = None,
    executor: Executor | None = None,
    wave: int = 1,
    prune: bool = True,
    progress: Callable[[SearchResult], None] | None = None,
    done: Mapping[str, SearchResult] | None = None,
    journal: Callable[[SearchResult], None] | None = None,
    evaluate: Callable[..., SearchResult] | None = None,
) -> list[SearchResult]:
    """Screen every candidate, then simulate the rest best bound first, keeping `wave` tasks in flight on the
    executor (a task: the candidates sharing one pricer), skipping those a result already found dominates when
    their task is formed. Results in `candidates` order; which candidates a dominance rule prunes depends on
    the order results arrive in (a parallel executor's), never whether the winner is found.

    prune=False simulates every candidate the memory screen lets through (the reference the tests compare
    with). `done` (candidate key -> result of an interrupted search) is taken as it is; `journal` gets each
    simulated result as it finishes; `progress` gets every row. fewest_gpus: waves never mix GPU counts, so
    a count that meets stops the larger ones. `evaluate(index, candidate, scenario, settings)` (default:
    evaluate_candidate) must be picklable for process and Dask executors. Ctrl-C raises SweepInterrupted.
    """
    executor = executor or SerialExecutor()
    evaluate = evaluate or evaluate_candidate
    prices = prices or {}
    done = done or {}
    scenarios = CandidateScenarios(base)
    results: list[SearchResult | None] = [None] * len(candidates)
    pending: list[tuple[tuple, int]] = []
    variants: dict[int, Scenario] = {}
    bounds: dict[int, Bound] = {}

    def finish(i: int, result: SearchResult) -> None:
        results[i] = result
        if progress:
            progress(result)

    for i, c in enumerate(candidates):
        price = prices.get(c.hardware_name, math.nan)
        scenario = scenarios.scenario(c)
        if c.kind == "disaggregated":
            bound = disaggregated_bound(scenario, settings.serving)
            verdict = screen_disaggregated(scenario, bound)
        else:
            bound = candidate_bound(scenario, settings.serving)
            verdict = screen(scenario, bound, settings.serving)
        if verdict is not None and (prune or verdict[0] == "memory"):
            finish(
                i,
                SearchResult(
                    i,
                    c,
                    "pruned",
                    verdict[0],
                    verdict[1],
                    bound_tokens_per_s_per_gpu=bound.tokens_per_s_per_gpu,
                    price_per_gpu_hour_usd=price,
                ),
            )
            continue
        variants[i], bounds[i] = scenario, bound
        pending.append((bound_key(c, bound, price, settings.objective), i))

    # Best bound first; among equal bounds the costliest simulations first (static scenarios, run.estimated_cost:
    # the last tasks are short ones, so workers finish together); candidates that share an iteration pricer
    # (they differ in scheduler limits only) next to each other, one task for them all (pricer_key).
    def order(item: tuple[tuple, int]) -> tuple:
        c = candidates[item[1]]
        cost = 0.0 if settings.serving else -estimated_cost(c.layout, settings.decode_sample, steps, folded)
        return (item[0], cost, pricer_key(c), item[1])

    steps = base.workload.output_len_tokens - 1
    folded = evenly_routed(base)
    pending.sort(key=order)
    best: tuple | None = None

    def stage(i: int) -> int:
        return candidates[i].num_gpus if settings.objective == "fewest_gpus" else 0

    def extra(i: int) -> dict:
        price = prices.get(candidates[i].hardware_name, math.nan)
        return {"bound_tokens_per_s_per_gpu": bounds[i].tokens_per_s_per_gpu, "price_per_gpu_hour_usd": price}

    finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
    futures: dict[Future, list[int]] = {}
    position, current = 0, None
    try:
        while position < len(pending) or futures:
            # Keep `wave` tasks in flight, each the candidates of one pricer; a candidate is checked against the
            # best result when its task is formed. fewest_gpus: a GPU count starts when the smaller one is done.
            while len(futures) < wave and position < len(pending):
                first = pending[position][1]
                if futures and stage(first) != current:
                    break
                current, task, members = stage(first), pricer_key(candidates[first]), []
                while position < len(pending):
                    key, i = pending[position]
                    c = candidates[i]
                    if pricer_key(c) != task or stage(i) != current:
                        break
                    position += 1
                    if prune and best is not None and _dominated(key, best):
                        more = settings.objective == "fewest_gpus" and c.num_gpus > best[0]
                        why = (
                            f"{best[0]} GPUs already meet the targets"
                            if more
                            else "its roofline bound cannot beat the best result found"
                        )
                        rule = "more_gpus" if more else "dominated_bound"
                        finish(i, SearchResult(i, c, "pruned", rule, why, **extra(i)))
                    elif c.key() in done and (prune or done[c.key()].rule != "dominated_rate"):
                        # a resumed search: counts towards the best as in the first run
                        result = replace(done[c.key()], index=i, rank=None, **extra(i))
                        finish(i, result)
                        if result.status == "ok" and result.meets:
                            key = result_key(result, settings.objective)
                            best = key if best is None or key < best else best
                    else:
                        members.append(i)
                if members:
                    items = [(i, candidates[i], variants[i]) for i in members]
                    floor = _floor(best, prices.get(candidates[first].hardware_name, math.nan), settings.objective)
                    task_settings = replace(settings, floor_tokens_per_s_per_gpu=floor) if prune else settings
                    future = executor.submit(evaluate_many, evaluate, items, task_settings)
                    futures[future] = members
                    future.add_done_callback(finished.put)
            if not futures:
                continue
            future = finished.get()
            members = futures.pop(future)
            try:
                returned = future.result()
            except Exception as exc:  # the worker died, or the task could not be shipped
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                returned = [SearchResult(i, candidates[i], "failed", reason=reason) for i in members]
                record = False
            else:
                record = True
            for i, result in zip(members, returned):
                result = replace(result, index=i, **extra(i))
                if journal and record:
                    journal(result)
                finish(i, result)
                if result.status == "ok" and result.meets:
                    key = result_key(result, settings.objective)
                    best = key if best is None or key < best else best
    except KeyboardInterrupt:
        for future in futures:
            future.cancel()
        raise SweepInterrupted(sum(r is not None for r in results), len(candidates)) from None
    # Candidates left unsimulated after an interruption cannot be here: every index was finished above.
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------
# Ranking


def rank_search(results: Sequence[SearchResult], objective: str) -> list[SearchResult]:
    """Best first: simulated candidates meeting the targets by the objective, then simulated ones missing a
    target (by the same key), then failed, then pruned (by rule); ties by enumeration order. Ranks number the
    simulated rows."""
    if objective not in SEARCH_OBJECTIVES:
        raise ScenarioError(f"--objective {objective}: the deployment search ranks by {', '.join(SEARCH_OBJECTIVES)}")

    def key(r: SearchResult) -> tuple:
        if r.status == "ok":
            return (0 if r.meets else 1, *result_key(r, objective), r.index)
        if r.status == "failed":
            return (2, r.index)
        return (3, PRUNE_RULES.index(r.rule) if r.rule in PRUNE_RULES else len(PRUNE_RULES), r.index)

    ranked, n = [], 0
    for r in sorted(results, key=key):
        if r.status == "ok":
            n += 1
            ranked.append(replace(r, rank=n))
        else:
            ranked.append(replace(r, rank=None))
    return ranked


def winner(results: Sequence[SearchResult]) -> SearchResult | None:
    """The first ranked candidate that meets every target."""
    return next((r for r in results if r.rank is not None and r.meets), None)


def prune_counts(results: Sequence[SearchResult]) -> dict[str, int]:
    """How many candidates each pruning rule removed, in PRUNE_RULES order."""
    return {rule: sum(r.status == "pruned" and r.rule == rule for r in results) for rule in PRUNE_RULES}
