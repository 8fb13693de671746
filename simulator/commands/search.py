"""Command stage: `moesim compare` as a deployment search (GPU counts, hardware, precisions, scheduler limits),
pruned, simulated, ranked; writes search.csv / .md, pareto_user.png, best.yaml and launch/ for the winner."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from simulator.config import ScenarioError, load_scenario
from simulator.config.hardware import ProfileError, available_profiles, load_profile
from simulator.sweep.candidates import (
    DTYPES,
    KINDS,
    POOL_OPTIONS,
    SearchSpace,
    enumerate_candidates,
    fits_cluster,
    node_size,
    own_dims,
)
from simulator.sweep.layouts import DEFAULT_MICROBATCHES, parse_microbatches
from simulator.sweep.search import SearchSettings, rank_search, run_search, winner

#: Most GPUs a search spans per count (as `moesim compare --gpus`).
MAX_GPUS = 10**5


def parse_gpu_counts(text: str | None, max_gpus: int | None, default: int, gpus_per_node: int) -> tuple[int, ...]:
    """--gpus N | A..B | A,B,C and --max-gpus N as GPU counts the cluster shape allows (part of one node, or
    whole nodes of gpus_per_node); a one-line ScenarioError when none fits."""
    if text is not None and max_gpus is not None:
        raise ScenarioError("--gpus and --max-gpus: give one of them")
    source = f"--max-gpus {max_gpus}" if max_gpus is not None else f"--gpus {text}"
    try:
        if max_gpus is not None:
            counts = list(range(1, max_gpus + 1)) if max_gpus >= 1 else []
        elif text is None:
            counts = [default]
        elif ".." in text:
            lo, _, hi = text.partition("..")
            counts = list(range(int(lo), int(hi) + 1))
        else:
            counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ScenarioError(f"{source}: expected a count, a range such as 1..64 or a list such as 1,2,4") from None
    if not counts or min(counts) < 1 or max(counts) > MAX_GPUS:
        raise ScenarioError(f"{source}: expected GPU counts from 1 to {MAX_GPUS}")
    fitting = tuple(sorted({n for n in counts if fits_cluster(n, gpus_per_node)}))
    if not fitting:
        raise ScenarioError(
            f"{source}: no count fits the cluster (gpus_per_node = {gpus_per_node}: 1..{gpus_per_node} or "
            f"multiples of {gpus_per_node}); change the counts or cluster.gpus_per_node"
        )
    return fitting


def _ints(text: str | None, flag: str) -> tuple[int | None, ...]:
    if text is None:
        return (None,)
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ScenarioError(f"{flag} {text}: expected positive integers separated by commas, e.g. 64,128")
    return values


def _dtypes(text: str | None, flag: str, own: str) -> tuple[str, ...]:
    if text is None:
        return (own,)
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in values if v not in DTYPES]
    if not values or bad:
        raise ScenarioError(
            f"{flag} {text}: unknown precision {bad[0] if bad else text!r}; choose from {', '.join(DTYPES)}"
        )
    return values


def _profiles(text: str | None, own: str) -> tuple[str, ...]:
    if text is None:
        return (own,)
    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    for name in names:
        try:
            load_profile(name)
        except ProfileError as exc:
            raise ScenarioError(f"--hardware {name}: {exc}") from None
    if not names:
        raise ScenarioError(f"--hardware {text}: expected profile names, e.g. {','.join(available_profiles()[:2])}")
    return names


def parse_prices(items: list[str], profiles: tuple[str, ...]) -> dict[str, float]:
    """--price PROFILE=USD, then each profile's price_per_gpu_hour_usd where the command line gives none."""
    prices: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            price = float(value)
        except ValueError:
            price = math.nan
        if not name or not (price > 0 and math.isfinite(price)):
            raise ScenarioError(f"--price {item}: expected PROFILE=USD per GPU-hour, e.g. h100-sxm-80gb=2.5")
        prices[Path(name).stem if name.endswith((".yaml", ".yml")) else name] = price
    for profile in profiles:
        key = Path(profile).stem if profile.endswith((".yaml", ".yml")) else profile
        if key not in prices:
            own = load_profile(profile).price_per_gpu_hour_usd
            if own is not None:
                prices[key] = own
    return prices


def _kinds(text: str | None) -> tuple[str, ...]:
    """--kinds: aggregated and/or disaggregated, comma-separated (default: aggregated)."""
    if text is None:
        return ("aggregated",)
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise ScenarioError(
            f"--kinds {text}: expected a comma-separated list of {', '.join(KINDS)}, e.g. aggregated,disaggregated"
        )
    return kinds


def _pool_options(text: str | None, kinds: tuple[str, ...]) -> tuple[str, ...]:
    """--disagg-pools: pp and/or separate_nodes, comma-separated (default: neither); needs --kinds disaggregated."""
    if text is None:
        return ()
    options = tuple(dict.fromkeys(o.strip() for o in text.split(",") if o.strip()))
    bad = [o for o in options if o not in POOL_OPTIONS]
    if not options or bad:
        raise ScenarioError(
            f"--disagg-pools {text}: expected a comma-separated list of {', '.join(POOL_OPTIONS)}, e.g. pp,separate_nodes"
        )
    if "disaggregated" not in kinds:
        raise ScenarioError(
            f"--disagg-pools {text}: widens disaggregated candidates; add --kinds aggregated,disaggregated"
        )
    return options


@dataclass(frozen=True)
class EnginePricing:
    """How `--engine` bears on the pricing: `profile`, the engine profile to price with (set where the scenario
    named none); `line`, what the search says about it (empty where there is nothing to say)."""

    profile: str | None
    line: str


def engine_pricing(scenario, engines) -> EnginePricing:
    """One engine named for a serving search prices the candidates as that engine's version runs them
    (PRICING_PROFILES, the version its launch files are written for) where the scenario names no engine
    profile; a scenario's own profile wins, and the search says when it belongs to another engine."""
    from simulator.report.launch import PRICING_PROFILES

    named = sorted(set(engines))
    if scenario.serving is None or len(named) != 1:
        return EnginePricing(None, "")
    engine, own = named[0], scenario.serving.engine
    profile = PRICING_PROFILES[engine]
    if own is None:
        return EnginePricing(profile, f"priced as {engine} runs it: serving.engine {profile} (--engine {engine})")
    if own.split("-", 1)[0] != engine:
        return EnginePricing(
            None,
            f"priced with the scenario's serving.engine {own}, not {engine}'s; "
            f"--set serving.engine={profile} prices the candidates as {engine} runs them",
        )
    return EnginePricing(None, "")


def search_command(args, console) -> int:
    from rich.markup import escape

    from simulator.files import check_output, run_directory, write_atomic
    from simulator.report.launch import launch_files
    from simulator.report.search import print_search_table, search_check_lines, summary_line, write_search
    from simulator.sweep.executors import check_jobs, default_jobs, make_executor
    from simulator.sweep.resume import (
        Progress,
        progress_path,
        search_from_record,
        search_inputs,
        search_key,
        search_to_record,
    )
    from simulator.sweep.run import SweepInterrupted

    if args.objective not in ("targets", "max_rate", "cost", "fewest_gpus"):
        raise ScenarioError(
            f"--objective {args.objective}: the deployment search ranks by targets, max_rate, cost or fewest_gpus"
        )
    scenario = load_scenario(args.scenario, args.set)
    serving = scenario.serving is not None
    pricing = engine_pricing(scenario, args.engine or [])
    if pricing.profile is not None:
        scenario = load_scenario(args.scenario, [*args.set, f"serving.engine={pricing.profile}"])
    if args.objective in ("max_rate", "fewest_gpus") and not serving:
        raise ScenarioError(
            f"--objective {args.objective}: needs a serving section in {args.scenario} (a request stream)"
        )
    if args.objective == "fewest_gpus" and not (args.rate is not None and args.rate > 0 and math.isfinite(args.rate)):
        raise ScenarioError("--objective fewest_gpus: give --rate R, the Poisson request rate (requests/s) to serve")
    if args.rate is not None and args.objective != "fewest_gpus":
        raise ScenarioError(
            "--rate: only --objective fewest_gpus serves a given rate; remove it or change the objective"
        )
    if not serving and any(v is not None for v in (args.max_num_seqs, args.max_num_batched_tokens, args.chunk_size)):
        raise ScenarioError(
            "--max-num-seqs/--max-num-batched-tokens/--chunk-size: scheduler limits need a serving section"
        )
    check_jobs(args.jobs)
    if args.decode_sample < 0:
        raise ScenarioError(f"--decode-sample {args.decode_sample}: expected 0 (every step) or more")
    if not (args.rel_tol > 0):
        raise ScenarioError(f"--rel-tol {args.rel_tol}: expected a positive tolerance, e.g. 0.02")
    own = own_dims(scenario)
    hardware = _profiles(args.hardware, own["hardware"])
    prices = parse_prices(args.price, hardware)
    if args.objective == "cost":
        missing = [h for h in hardware if (Path(h).stem if h.endswith((".yaml", ".yml")) else h) not in prices]
        if missing:
            raise ScenarioError(
                f"--objective cost: no price for {missing[0]}; give --price {missing[0]}=USD (per GPU-hour) "
                "or set price_per_gpu_hour_usd in its profile"
            )
    counts = parse_gpu_counts(args.gpus, args.max_gpus, scenario.num_gpus, node_size(scenario, hardware))
    default_mb = "1" if serving else ",".join(map(str, DEFAULT_MICROBATCHES))
    microbatches = parse_microbatches(
        args.microbatches if args.microbatches != ",".join(map(str, DEFAULT_MICROBATCHES)) else default_mb
    )
    space = SearchSpace(
        gpu_counts=counts,
        hardware=hardware,
        weight_dtypes=_dtypes(args.weight_dtype, "--weight-dtype", own["weight_dtype"]),
        kv_cache_dtypes=_dtypes(args.kv_dtype, "--kv-dtype", own["kv_cache_dtype"]),
        max_num_seqs=_ints(args.max_num_seqs, "--max-num-seqs"),
        max_num_batched_tokens=_ints(args.max_num_batched_tokens, "--max-num-batched-tokens"),
        chunk_size_tokens=_ints(args.chunk_size, "--chunk-size"),
        microbatches=microbatches,
        kinds=_kinds(args.kinds),
        pool_options=_pool_options(args.disagg_pools, _kinds(args.kinds)),
    )
    found = enumerate_candidates(scenario, space)
    not_launchable = 0
    if args.engine:
        from dataclasses import replace

        from simulator.report.launch import not_expressible
        from simulator.sweep.candidates import CandidateScenarios

        scenarios = CandidateScenarios(scenario)
        kept = [
            c
            for c in found.candidates
            if all(not_expressible(scenarios.scenario(c), engine) is None for engine in args.engine)
        ]
        not_launchable = len(found.candidates) - len(kept)
        found = replace(found, candidates=kept)
    if not found.candidates:
        why = f" (e.g. {found.invalid_example})" if found.invalid_example else ""
        if not_launchable:
            why = f" that {' and '.join(args.engine)} can launch ({not_launchable} candidates cannot be)"
        raise ScenarioError(f"{args.scenario}: no valid candidate in the search space{why}")
    settings = SearchSettings(
        objective=args.objective,
        serving=serving,
        decode_sample=args.decode_sample,
        rate_per_s=args.rate,
        rel_tol=args.rel_tol,
        base_dir=str(Path(args.scenario).parent),
    )
    out = check_output(args.out or Path("reports") / scenario.name / "compare", args.force, kind="compare")
    inputs = search_inputs(scenario, settings, hardware)
    keys = [c.key() for c in found.candidates]
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    started = time.perf_counter()
    journal = None
    columns = (
        TextColumn("[bold]search[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    try:
        with (
            make_executor(args.executor, args.jobs) as executor,
            Bar(*columns, console=console, transient=True, disable=not console.is_terminal) as bar,
        ):
            task = bar.add_task("", total=len(found.candidates))

            def tick(result) -> None:
                bar.update(task, advance=1, description=escape(f"{result.candidate.label}: {result.status}"))

            journal = Progress(
                progress_path(out),
                inputs,
                args.resume,
                keys,
                key=search_key,
                encode=search_to_record,
                decode=search_from_record,
            )
            results = run_search(
                scenario,
                found.candidates,
                settings,
                prices,
                executor,
                wave=args.jobs or default_jobs(),
                prune=not args.no_prune,
                progress=tick,
                done=journal.done,
                journal=journal.append,
            )
    except SweepInterrupted as exc:
        print(f"moesim: {exc}; rerun with --resume to continue", file=sys.stderr)
        return 130
    finally:
        if journal is not None:
            journal.close()
    elapsed = time.perf_counter() - started
    if all(r.status == "failed" for r in results):
        journal.remove()
        raise RuntimeError(
            f"every candidate failed, nothing written (e.g. {results[0].candidate.label}: {results[0].reason})"
        )
    ranked = rank_search(results, args.objective)
    best = winner(ranked)
    with run_directory(out, args.force, kind="compare") as staging:
        files = write_search(scenario, ranked, staging, args.objective, elapsed)
        if best is not None and not args.no_launch:
            from simulator.sweep.candidates import CandidateScenarios

            chosen = CandidateScenarios(scenario).scenario(best.candidate)
            for name, text in launch_files(chosen).items():
                files.append(staging / "launch" / name)
                write_atomic(files[-1], text)
    journal.remove()
    print_search_table(console, scenario, ranked, args.objective)
    for line in search_check_lines(scenario, ranked):
        console.print(f"[yellow]{escape(line)}[/yellow]")
    skipped = []
    if found.unsupported:
        skipped.append(f"{found.unsupported} fp8 combinations on hardware without FP8 units")
    if found.invalid:
        skipped.append(f"{found.invalid} scheduler-limit combinations the serving rules reject")
    if not_launchable:
        skipped.append(f"{not_launchable} candidates {' / '.join(args.engine)} cannot launch")
    if pricing.line:
        console.print(pricing.line)
    console.print(
        f"{summary_line(ranked)}, in {elapsed:.1f} s"
        + (f"; skipped {', '.join(skipped)}" if skipped else "")
        + f"; wrote {', '.join(sorted({Path(f).name if f.parent.name != 'launch' else 'launch/' for f in files}))} to {escape(str(out))}/"
    )
    return 0 if best is not None else 1
