"""Benchmark of the per-layout cost of `moesim compare`, and its regression check.

    python benchmarks/bench_layout.py                   # wall and CPU seconds per layout (best of --repeat), total
    python benchmarks/bench_layout.py --dump FILE       # also write every result field (sim_s aside) as JSON
    python benchmarks/bench_layout.py --deep --dump F   # and the whole Metrics plus a digest of each trace
    python benchmarks/bench_layout.py --compare F       # differences from a dump (floats within --rel)
    options: --scenario seed|mixtral (the layout set), --only LABELS, --repeat K

Runs `sweep.simulate_layout` serially on a fixed set of seed-sweep layouts (every parallel form, 1 to 8
microbatches, pp = 1, 2, 4), as a sweep worker does. An optimisation that must not change any figure
dumps before and after and diffs the files: floats are written with repr, so equal files mean
bit-identical results. CPU seconds are the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

from simulator.config import ParallelSpec, load_scenario, with_layout
from simulator.sweep import (
    DEFAULT_DECODE_SAMPLE,
    DEFAULT_MICROBATCHES,
    enumerate_layouts,
    simulate_layout,
)

ROOT = Path(__file__).resolve().parent.parent

#: Per scenario, labels picked from its sweep. Seed: dp-replicated (simulated as one replica), tp, ep,
#: etp, pp. Mixtral on 64 GPUs: TP and EP groups inside and across nodes, pp up to 32, 1 to 8 microbatches.
SCENARIOS = {
    "seed": (
        ROOT / "scenarios" / "seed_moe_4gpu.yaml",
        (
            "DP4",
            "DP4 mb8",
            "DP4 EP2 mb2",
            "DP2 TP2 mb4",
            "DP2 TP2 EP2 mb8",
            "TP4",
            "TP4 ETP4 mb8",
            "TP4 EP2 ETP2 mb4",
            "PP2 DP2 mb2",
            "PP2 TP2 mb8",
            "PP2 TP2 EP2 mb4",
            "PP4 mb8",
        ),
    ),
    "mixtral": (
        ROOT / "scenarios" / "mixtral_8x7b_64gpu.yaml",
        (
            "DP64 ETP2",
            "DP4 TP16 EP8 ETP4",
            "PP2 DP2 TP16 EP2 ETP8",
            "PP2 DP8 TP4 EP4 mb8",
            "PP8 DP2 TP4 EP8 mb4",
            "DP16 TP4 EP8 ETP2 mb8",
            "PP4 DP16 EP8 mb2",
            "PP8 TP8 EP8 mb4",
            "PP32 DP2 mb2",
            "DP8 TP8 EP8 mb8",
        ),
    ),
}


def _jsonable(value):
    """Plain JSON types; floats stay floats (json writes them with repr: exact)."""
    if isinstance(value, ParallelSpec):  # a layout: its degrees, as the dumps have always written them
        return value.degrees()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value


def result_record(result) -> dict:
    record = _jsonable(result)
    record.pop("sim_s")
    if not record.get("serving"):  # serving figures exist only under a serving objective
        record.pop("serving", None)
    return record


def deep_record(scenario) -> dict:
    """Every Metrics field and a digest of the trace table of one run (the figures behind the row)."""
    from simulator.config import resolve_hardware
    from simulator.pipeline import one_replica, run_scenario

    run = run_scenario(
        one_replica(scenario, resolve_hardware(scenario)) or scenario, verify=False, decode_sample=DEFAULT_DECODE_SAMPLE
    )
    ops = run.sim.ops
    trace = hashlib.sha256(ops.to_csv(float_format="%r").encode()).hexdigest()
    return {
        "metrics": _jsonable(run.metrics.to_dict()),
        "trace_sha256": trace,
        "makespan_s": run.sim.makespan_s,
        "num_events": run.sim.num_events,
        "columns": list(ops.columns),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump", type=Path, help="write every result field (sim_s aside) as JSON")
    parser.add_argument("--deep", action="store_true", help="dump the whole Metrics and a trace digest too")
    parser.add_argument("--repeat", type=int, default=1, help="runs per layout; the best is reported")
    parser.add_argument("--only", help="comma-separated labels (default: the fixed set)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="seed")
    parser.add_argument("--compare", type=Path, help="a dump to compare with: floats within --rel, the rest equal")
    parser.add_argument("--rel", type=float, default=1e-9, help="relative tolerance of --compare (0: bit-identical)")
    parser.add_argument(
        "--abs",
        type=float,
        default=1e-12,
        help="absolute tolerance of --compare: idle times are differences of sums, near 0 mere noise",
    )
    args = parser.parse_args()

    path, fixed = SCENARIOS[args.scenario]
    base = load_scenario(path)
    layouts = {lay.label: lay for lay in enumerate_layouts(base, microbatches=DEFAULT_MICROBATCHES)}
    labels = args.only.split(",") if args.only else fixed
    dump, total_s, total_cpu_s = {}, 0.0, 0.0
    for label in labels:
        scenario = with_layout(base, layouts[label])
        best_s = best_cpu_s = float("inf")
        for _ in range(args.repeat):
            started, started_cpu = time.perf_counter(), time.process_time()
            result = simulate_layout(0, False, scenario, DEFAULT_DECODE_SAMPLE)
            best_s = min(best_s, time.perf_counter() - started)
            best_cpu_s = min(best_cpu_s, time.process_time() - started_cpu)
        assert result.status == "ok", (label, result.error)
        total_s += best_s
        total_cpu_s += best_cpu_s
        print(f"{label:20s} {best_s:7.3f} s  cpu {best_cpu_s:7.3f} s", flush=True)
        dump[label] = result_record(result)
        if args.deep:
            dump[label]["deep"] = deep_record(scenario)
    print(f"{'total':20s} {total_s:7.3f} s  cpu {total_cpu_s:7.3f} s")
    if args.dump:
        args.dump.write_text(json.dumps(dump, indent=1, sort_keys=True) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        now = json.loads(json.dumps(dump))
        diffs = [d for label in labels for d in differences(before.get(label), now[label], label, args.rel, args.abs)]
        for d in diffs[:20]:
            print("DIFFERS", d)
        print(f"compared with {args.compare}: {len(diffs)} difference(s) beyond rel {args.rel:g} and abs {args.abs:g}")
        if diffs:
            sys.exit(1)


def differences(a, b, where: str, rel: float, tol: float = 0.0) -> list[str]:
    """Paths where two dumps differ: floats by more than `rel` (relative) and `tol` (absolute),
    anything else at all."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a.keys() ^ b.keys())}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}", rel, tol)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]", rel, tol)]
    if isinstance(a, float) and isinstance(b, float):
        same = a == b or (a != a and b != b) or abs(a - b) <= max(rel * max(abs(a), abs(b)), tol)
        return [] if same else [f"{where}: {a!r} != {b!r}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


if __name__ == "__main__":
    main()
