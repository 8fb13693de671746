"""Sweep stage, deployment candidates: the search space beyond the parallel layout (GPU count, hardware profile,
weight and KV precision, scheduler limits, candidate kind) and one validated scenario per candidate.

A candidate's scenario is the base scenario with its non-layout dimensions changed in a validated copy
(`config.parse_scenario`: every rule of a loaded scenario), then moved to its layout with `config.with_layout`
(the one way to change a layout). Candidate kinds: "aggregated" (one pool of GPUs runs prefill and decode).
"disaggregated" (xPyD: x prefill instances of one layout, y decode instances of another, x g_p + y g_d = N GPUs;
a serving scenario only): its candidates carry their pools in `Candidate.detail` (part of the key), their
`layout` is a placeholder of N GPUs (DP N, or where the static workload's batch does not split N ways the
first layout enumerate_layouts finds; the pools' layouts are in detail), and sweep.search dispatches screening,
bounds and evaluation by kind. An instance layout is tp = g GPUs (g a divisor of N below N), pp 1, and its
experts either all expert-parallel (ep = g) or all tensor-parallel (etp = g) over those GPUs, where the model's
expert count and FFN size allow (config.scenario.pool_layout's rules); the pools are placed packed. Two options
widen the disaggregated space (SearchSpace.pool_options, `--disagg-pools`; off by default, each multiplies the
candidates): "pp" adds instances of tp x pp = g GPUs with pp > 1 (experts folded onto the tp GPUs as above),
"separate_nodes" adds the splits that start the decode pool on a fresh node (serving.disaggregation.placement)
where the cluster has more than one node: x g_p GPUs of prefill rounded up to whole nodes, then y g_d of decode,
N GPUs in all, the rest of the prefill pool's last node idle (and paid: the candidate's figures per GPU count
all N; paid_gpu_share).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from simulator.config import ParallelSpec, Scenario, ScenarioError, parse_scenario, resolve_hardware
from simulator.config.hardware import HardwareProfile, load_profile
from simulator.sweep.layouts import enumerate_layouts

#: Candidate kinds the search can enumerate and evaluate (module docstring).
KINDS = ("aggregated", "disaggregated")
#: Precisions the model config can take for weights and the KV cache (config.hardware.DType).
DTYPES = ("fp32", "fp16", "bf16", "fp8")
#: Options that widen the disaggregated candidates (module docstring): pipeline-parallel pool instances, and the
#: separate_nodes placement.
POOL_OPTIONS = ("pp", "separate_nodes")


@dataclass(frozen=True)
class SearchSpace:
    """Every dimension the search spans; a dimension left at one value is not searched. Scheduler limits
    are None for a scenario without a serving section (and for "the scenario's own")."""

    gpu_counts: tuple[int, ...]
    hardware: tuple[str, ...]
    weight_dtypes: tuple[str, ...]
    kv_cache_dtypes: tuple[str, ...]
    max_num_seqs: tuple[int | None, ...] = (None,)
    max_num_batched_tokens: tuple[int | None, ...] = (None,)
    chunk_size_tokens: tuple[int | None, ...] = (None,)
    microbatches: tuple[int, ...] = (1,)
    kinds: tuple[str, ...] = ("aggregated",)
    pool_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """One deployment: its kind, hardware profile, precisions, scheduler limits (None: the scenario's) and
    layout. `detail` holds kind-specific dimensions as sorted (name, value) pairs (e.g. a disaggregated
    candidate's prefill and decode pools); it is part of the key."""

    kind: str
    hardware: str
    weight_dtype: str
    kv_cache_dtype: str
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    chunk_size_tokens: int | None
    layout: ParallelSpec
    detail: tuple[tuple[str, str | int], ...] = field(default=())

    @property
    def num_gpus(self) -> int:
        return self.layout.num_gpus

    @property
    def hardware_name(self) -> str:
        """The profile's registry name (a path's file stem)."""
        return Path(self.hardware).stem if self.hardware.endswith((".yaml", ".yml")) else self.hardware

    def dims(self) -> dict:
        """Every dimension as plain JSON values (the progress file's record of the candidate)."""
        return {
            "kind": self.kind,
            "hardware": self.hardware,
            "weight_dtype": self.weight_dtype,
            "kv_cache_dtype": self.kv_cache_dtype,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "chunk_size_tokens": self.chunk_size_tokens,
            "layout": self.layout.degrees(),
            "detail": [list(pair) for pair in self.detail],
        }

    @classmethod
    def from_dims(cls, dims: dict) -> Candidate:
        """The candidate `dims()` wrote; ValueError when a field is missing or of the wrong type."""
        if not isinstance(dims, dict):
            raise ValueError("candidate: expected an object")
        layout = dims["layout"]
        if not isinstance(layout, dict) or not all(isinstance(v, int) and v >= 1 for v in layout.values()):
            raise ValueError("candidate.layout: expected positive integer degrees")
        for key in ("kind", "hardware", "weight_dtype", "kv_cache_dtype"):
            if not isinstance(dims[key], str):
                raise ValueError(f"candidate.{key}: expected a string")
        for key in ("max_num_seqs", "max_num_batched_tokens", "chunk_size_tokens"):
            if dims[key] is not None and not isinstance(dims[key], int):
                raise ValueError(f"candidate.{key}: expected an integer or null")
        detail = tuple((str(k), v) for k, v in dims.get("detail", []))
        return cls(
            kind=dims["kind"],
            hardware=dims["hardware"],
            weight_dtype=dims["weight_dtype"],
            kv_cache_dtype=dims["kv_cache_dtype"],
            max_num_seqs=dims["max_num_seqs"],
            max_num_batched_tokens=dims["max_num_batched_tokens"],
            chunk_size_tokens=dims["chunk_size_tokens"],
            layout=ParallelSpec(**layout),
            detail=detail,
        )

    def key(self) -> str:
        """The candidate's identity across runs (the progress file's key): every dimension."""
        return json.dumps(self.dims(), sort_keys=True)

    @property
    def pools(self) -> dict[str, dict[str, int]]:
        """A disaggregated candidate's pools: {'prefill': {instances, tp, pp, ep, etp}, 'decode': {...}} (pp 1
        when the detail has none)."""
        out: dict[str, dict[str, int]] = {"prefill": {"pp": 1}, "decode": {"pp": 1}}
        for name, value in self.detail:
            pool, _, key = name.partition("_")
            if pool in out:
                out[pool][key] = int(value)
        return out

    @property
    def placement(self) -> str:
        """A disaggregated candidate's serving.disaggregation.placement (packed unless its detail says)."""
        return str(dict(self.detail).get("placement", "packed"))

    @property
    def layout_label(self) -> str:
        """The layout: aggregated 'DP4 TP2'; disaggregated '2P (TP1) + 1D (TP2 EP2)'."""
        if self.kind != "disaggregated":
            return self.layout.label
        pools = self.pools
        label = " + ".join(
            f"{pools[n]['instances']}{n[0].upper()} ({pool_label(pools[n])})" for n in ("prefill", "decode")
        )
        return label + (", separate nodes" if self.placement == "separate_nodes" else "")

    @property
    def label(self) -> str:
        """e.g. 'h100-sxm-80gb 8 GPUs DP4 TP2 | w fp8 kv fp16 | seqs 128 tokens 8192 chunk 8192'."""
        parts = [f"{self.hardware_name} {self.num_gpus} GPU{'s' if self.num_gpus > 1 else ''} {self.layout_label}"]
        parts.append(f"w {self.weight_dtype} kv {self.kv_cache_dtype}")
        limits = [
            f"{name} {value}"
            for name, value in (
                ("seqs", self.max_num_seqs),
                ("tokens", self.max_num_batched_tokens),
                ("chunk", self.chunk_size_tokens),
            )
            if value is not None
        ]
        if limits:
            parts.append(" ".join(limits))
        if self.kind not in ("aggregated", "disaggregated") or (self.kind == "aggregated" and self.detail):
            parts.append(self.kind + "".join(f" {k} {v}" for k, v in self.detail))
        return " | ".join(parts)


def pool_label(pool: dict[str, int]) -> str:
    """e.g. 'TP2 EP2' for {tp 2, ep 2, etp 1}; 'TP2 PP2' for {tp 2, pp 2}; '1 GPU' for tp 1."""
    parts = [f"{k.upper()}{pool[k]}" for k in ("tp", "pp", "ep", "etp") if pool.get(k, 1) > 1]
    return " ".join(parts) or "1 GPU"


def pool_detail(
    prefill: tuple[int, ...], decode: tuple[int, ...], placement: str = "packed"
) -> tuple[tuple[str, str | int], ...]:
    """Candidate.detail of a disaggregated candidate from (instances, tp, ep, etp[, pp]) of each pool, sorted. pp
    and the placement appear only when they are not the default (pp 1, packed), so the keys of the default space
    stay those of earlier runs (resume)."""
    pairs: list[tuple[str, str | int]] = []
    for name, pool in (("prefill", prefill), ("decode", decode)):
        pairs += [(f"{name}_{k}", v) for k, v in zip(("instances", "tp", "ep", "etp"), pool)]
        if len(pool) > 4 and pool[4] > 1:
            pairs.append((f"{name}_pp", pool[4]))
    if placement != "packed":
        pairs.append(("placement", placement))
    return tuple(sorted(pairs))


def paid_gpu_share(c: Candidate) -> float:
    """GPUs the candidate's pools run on / GPUs it pays for (num_gpus): 1, except a separate_nodes split whose
    prefill pool leaves part of its last node idle. sweep.search scales a disaggregated candidate's output tokens
    per GPU by it, so the idle GPUs count (the serving stage's figures are per pool GPU)."""
    if c.kind != "disaggregated":
        return 1.0
    used = sum(p["instances"] * p["tp"] * p["pp"] for p in c.pools.values())
    return used / c.num_gpus


def supports_fp8(hw: HardwareProfile) -> bool:
    """The profile has FP8 tensor cores (A100's has no fp8 peak: no fp8 candidates on it)."""
    return hw.has_peak("fp8")


def own_dims(scenario: Scenario) -> dict:
    """The scenario's own value of every non-layout dimension."""
    m = scenario.model
    s = scenario.serving.scheduler if scenario.serving is not None else None
    return {
        "hardware": scenario.hardware.profile,
        "weight_dtype": m.weight_dtype or m.dtype,
        "kv_cache_dtype": m.kv_cache_dtype or m.dtype,
        "max_num_seqs": s.max_num_seqs if s else None,
        "max_num_batched_tokens": s.max_num_batched_tokens if s else None,
        "chunk_size_tokens": s.chunk_size_tokens if s else None,
    }


class CandidateScenarios:
    """Validated copies of a base scenario, one per combination of non-layout dimensions (cached: many layouts
    share one), moved to each candidate's layout with with_layout."""

    def __init__(self, base: Scenario):
        self.base = base
        self.own = own_dims(base)
        self._variants: dict[tuple, Scenario] = {}

    def variant(self, c: Candidate) -> Scenario:
        """The base scenario with the candidate's hardware, precisions and scheduler limits (its own layout)."""
        dims = (
            c.hardware,
            c.weight_dtype,
            c.kv_cache_dtype,
            c.max_num_seqs,
            c.max_num_batched_tokens,
            c.chunk_size_tokens,
        )
        hit = self._variants.get(dims)
        if hit is not None:
            return hit
        own = self.own
        if dims == tuple(own[k] for k in own):
            scenario = self.base
        else:
            data = self.base.model_dump(mode="python", exclude_none=True)
            if c.hardware != own["hardware"]:
                # the base's hardware overrides apply to its own profile; its engine limits are derived anew
                data["hardware"] = {"profile": c.hardware}
            model = data["model"]
            model["weight_dtype"], model["kv_cache_dtype"] = c.weight_dtype, c.kv_cache_dtype
            if self.base.serving is not None:
                scheduler = data["serving"]["scheduler"]
                for key in ("max_num_seqs", "max_num_batched_tokens", "chunk_size_tokens"):
                    value = getattr(c, key)
                    if value is not None:
                        scheduler[key] = value
            scenario = parse_scenario(data, f"candidate {c.label}")
        self._variants[dims] = scenario
        return scenario

    def scenario(self, c: Candidate) -> Scenario:
        """The candidate's scenario: its variant on its layout (config.with_layout); a disaggregated candidate's
        carries serving.disaggregation with its pools (packed placement; the transfer links the profile's),
        checked by the config stage's rules (config.scenario.check_disaggregation); an aggregated one has none."""
        from simulator.config import with_layout

        scenario = with_layout(self.variant(c), c.layout)
        if scenario.serving is None:
            return scenario
        if c.kind != "disaggregated":
            if scenario.serving.disaggregation is None:
                return scenario
            return scenario.model_copy(update={"serving": scenario.serving.model_copy(update={"disaggregation": None})})
        return with_pools(scenario, c.pools, c.placement)


@dataclass(frozen=True)
class Enumeration:
    """The candidates of a search space, and the combinations left out before any layout: fp8 on a profile
    without FP8 units, scheduler limits the serving section's rules reject (with one reason each)."""

    candidates: list[Candidate]
    unsupported: int
    invalid: int
    invalid_example: str


def with_pools(scenario: Scenario, pools: dict[str, dict[str, int]], placement: str = "packed") -> Scenario:
    """The serving scenario with serving.disaggregation holding these pools and placement, validated by the
    config stage's rules; ScenarioError (one line) when a pool's layout or the split breaks one."""
    from simulator.config.errors import LayoutError
    from simulator.config.scenario import check_disaggregation
    from simulator.config.serving import DisaggregationSpec, PoolParallelSpec, PoolSpec

    assert scenario.serving is not None
    specs = {}
    for name in ("prefill", "decode"):
        p = pools[name]
        parallel = PoolParallelSpec(tp=p["tp"], pp=p.get("pp", 1), ep=p["ep"], etp=p["etp"])
        specs[name] = PoolSpec(instances=p["instances"], parallel=parallel)
    d = DisaggregationSpec(prefill=specs["prefill"], decode=specs["decode"], placement=placement)  # type: ignore[arg-type]
    out = scenario.model_copy(update={"serving": scenario.serving.model_copy(update={"disaggregation": d})})
    try:
        check_disaggregation(out)
    except LayoutError as exc:
        raise ScenarioError(f"{exc.path}: {exc}") from None
    return out


class InstanceLayout(NamedTuple):
    """One pool instance's layout: tp x pp GPUs, experts ep x etp folded onto the tp GPUs."""

    tp: int
    ep: int
    etp: int
    pp: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


def instance_layouts(scenario: Scenario, num_gpus: int, pipeline: bool = False) -> list[InstanceLayout]:
    """Every pool instance layout on g GPUs, g a divisor of num_gpus below it (module docstring): tp = g and pp 1,
    or with `pipeline` also every tp x pp = g with pp > 1; experts all expert-parallel (ep = tp) or all
    tensor-parallel (etp = tp) over the tp GPUs; only those config.scenario.pool_layout accepts for the model.
    In order of g, then pp."""
    from simulator.config import divisors
    from simulator.config.errors import LayoutError
    from simulator.config.scenario import pool_layout
    from simulator.config.serving import PoolParallelSpec

    out: list[InstanceLayout] = []
    for g in divisors(num_gpus):
        if g >= num_gpus:
            continue
        for pp in divisors(g) if pipeline else [1]:
            tp = g // pp
            options = [(tp, 1), (1, tp)] if scenario.model.num_experts and tp > 1 else [(1, 1)]
            for ep, etp in options:
                try:
                    pool_layout(scenario, PoolParallelSpec(tp=tp, pp=pp, ep=ep, etp=etp), "pool")
                except LayoutError:
                    continue
                out.append(InstanceLayout(tp, ep, etp, pp))
    return out


def _gpus(layout: Sequence[int]) -> int:
    """GPUs of one instance of (tp, ep, etp[, pp])."""
    return layout[0] * (layout[3] if len(layout) > 3 else 1)


def xpyd_splits(num_gpus: int, layouts: Sequence[Sequence[int]]) -> list[tuple[tuple, tuple]]:
    """Every (prefill, decode) pair of (instances, tp, ep, etp[, pp]) with x, y >= 1 and x g_p + y g_d = num_gpus,
    in order of the prefill layout, the decode layout, then x."""
    out = []
    for p in layouts:
        for d in layouts:
            gp, gd = _gpus(p), _gpus(d)
            for x in range(1, num_gpus // gp + 1):
                rest = num_gpus - x * gp
                if rest >= gd and rest % gd == 0:
                    out.append(((x, *p), (rest // gd, *d)))
    return out


def separate_node_splits(
    num_gpus: int, layouts: Sequence[Sequence[int]], gpus_per_node: int
) -> list[tuple[tuple, tuple]]:
    """The separate_nodes placement's splits (module docstring): the prefill pool's x g_p GPUs rounded up to whole
    nodes, then y g_d decode GPUs, num_gpus in all; only where x g_p ends inside a node (else the placement is
    the packed one). Same order as xpyd_splits."""
    out = []
    for p in layouts:
        for d in layouts:
            gp, gd = _gpus(p), _gpus(d)
            for x in range(1, num_gpus // gp + 1):
                used = x * gp
                if used % gpus_per_node == 0:
                    continue
                rest = num_gpus - -(-used // gpus_per_node) * gpus_per_node
                if rest >= gd and rest % gd == 0:
                    out.append(((x, *p), (rest // gd, *d)))
    return out


def packs(prefill: tuple, decode: tuple, gpus_per_node: int, placement: str = "packed") -> bool:
    """The placement (serving.disagg.place) puts no instance across a node boundary: instance k of g GPUs starts
    at GPU k g in its pool, the decode pool right after the prefill one (packed) or on the next node boundary
    (separate_nodes). prefill and decode: (instances, tp, ep, etp[, pp])."""
    gp, gd = _gpus(prefill[1:]), _gpus(decode[1:])
    firsts = [(i * gp, gp) for i in range(prefill[0])]
    start = prefill[0] * gp
    if placement == "separate_nodes":
        start = -(-start // gpus_per_node) * gpus_per_node
    firsts += [(start + j * gd, gd) for j in range(decode[0])]
    for first, g in firsts:
        if g > gpus_per_node and first % gpus_per_node:
            return False
        if g <= gpus_per_node and first // gpus_per_node != (first + g - 1) // gpus_per_node:
            return False
    return True


def enumerate_candidates(base: Scenario, space: SearchSpace) -> Enumeration:
    """Every candidate of the space, in a fixed order (kind, hardware, precisions, limits, GPU count, layout);
    layouts are those enumerate_layouts finds valid on each count (the config stage's rules, the cluster's
    gpus_per_node included)."""
    scenarios = CandidateScenarios(base)
    candidates: list[Candidate] = []
    unsupported = invalid = 0
    example = ""
    for kind in space.kinds:
        if kind not in KINDS:
            raise ScenarioError(f"--kinds {kind}: the search knows {', '.join(KINDS)}")
        if kind == "disaggregated" and base.serving is None:
            raise ScenarioError("--kinds disaggregated: needs a serving section (a request stream) in the scenario")
        bad = [o for o in space.pool_options if o not in POOL_OPTIONS]
        if bad:
            raise ScenarioError(f"--disagg-pools {bad[0]}: the search knows {', '.join(POOL_OPTIONS)}")
        for hardware, wdt, kvdt, seqs, tokens, chunk in _product(base, space):
            probe = Candidate(kind, hardware, wdt, kvdt, seqs, tokens, chunk, base.parallel.without_split())
            if "fp8" in (wdt, kvdt) and not supports_fp8(load_profile(hardware)):
                unsupported += 1
                continue
            try:
                variant = scenarios.variant(probe)
            except ScenarioError as exc:
                invalid += 1
                example = example or str(exc)
                continue
            for n in space.gpu_counts:
                if kind == "disaggregated":
                    placeholder = disaggregated_placeholder(variant, n)
                    if placeholder is None:
                        continue
                    for prefill, decode, placement in disaggregated_splits(
                        variant, n, node_size(base, [hardware]), space
                    ):
                        detail = pool_detail(prefill, decode, placement)
                        candidates.append(
                            Candidate(kind, hardware, wdt, kvdt, seqs, tokens, chunk, placeholder, detail)
                        )
                    continue
                for layout in enumerate_layouts(variant, n, space.microbatches):
                    candidates.append(Candidate(kind, hardware, wdt, kvdt, seqs, tokens, chunk, layout))
    return Enumeration(candidates, unsupported, invalid, example)


def disaggregated_splits(
    variant: Scenario, num_gpus: int, gpus_per_node: int, space: SearchSpace
) -> list[tuple[tuple, tuple, str]]:
    """(prefill, decode, placement) of every disaggregated candidate on num_gpus GPUs (module docstring): the
    packed splits whose instances sit inside nodes, then, with the "separate_nodes" option and more than one node,
    the separate_nodes ones; instances with pp > 1 with the "pp" option."""
    layouts = instance_layouts(variant, num_gpus, pipeline="pp" in space.pool_options)
    out = [(p, d, "packed") for p, d in xpyd_splits(num_gpus, layouts) if packs(p, d, gpus_per_node)]
    if "separate_nodes" in space.pool_options and num_gpus > gpus_per_node:
        out += [
            (p, d, "separate_nodes")
            for p, d in separate_node_splits(num_gpus, layouts, gpus_per_node)
            if packs(p, d, gpus_per_node, "separate_nodes")
        ]
    return out


def disaggregated_placeholder(variant: Scenario, num_gpus: int) -> ParallelSpec | None:
    """The layout a disaggregated candidate's scenario carries on num_gpus GPUs (its pools are in its detail):
    DP N, or where the config rules reject it for this scenario (e.g. a static batch of 128 on DP 3) the first
    layout enumerate_layouts finds; None when no layout of N GPUs is valid."""
    from simulator.config import with_layout

    dp = ParallelSpec.of_degrees(1, num_gpus, 1, 1, 1, 1)
    try:
        with_layout(variant, dp)
    except ScenarioError:
        return next(iter(enumerate_layouts(variant, num_gpus, (1,))), None)
    return dp


def on_hardware(base: Scenario, hardware: str) -> Scenario:
    """The base scenario on another hardware profile (the base's hardware overrides apply to its own profile
    only), parsed again: the engine profile's batch limits the base took for its GPU are derived for this one
    (SchedulerSpec.engine_defaults). The base itself on its own profile, or where the other one rejects it (a
    candidate's own parse then says why)."""
    if hardware == base.hardware.profile:
        return base
    data = base.model_dump(mode="python", exclude_none=True)
    data["hardware"] = {"profile": hardware}
    try:
        return parse_scenario(data, f"{base.name} on {hardware}")
    except ScenarioError:
        return base


def _product(base: Scenario, space: SearchSpace) -> Iterator[tuple]:
    for hardware in space.hardware:
        own = own_dims(on_hardware(base, hardware))  # the scheduler limits the engine sets on this GPU
        for wdt in space.weight_dtypes:
            for kvdt in space.kv_cache_dtypes:
                for seqs in space.max_num_seqs:
                    for tokens in space.max_num_batched_tokens:
                        budget = own["max_num_batched_tokens"] if tokens is None else tokens
                        for chunk in space.chunk_size_tokens:
                            if chunk is None:  # the scenario's chunk, capped at a searched budget it exceeds
                                chunk = own["chunk_size_tokens"]
                                if chunk is not None and budget is not None and chunk > budget:
                                    chunk = budget
                            yield (
                                hardware,
                                wdt,
                                kvdt,
                                own["max_num_seqs"] if seqs is None else seqs,
                                budget,
                                chunk,
                            )


def fits_cluster(n: int, gpus_per_node: int) -> bool:
    """A GPU count the cluster shape allows: part of one node, or whole nodes."""
    return n <= gpus_per_node or n % gpus_per_node == 0


def node_size(base: Scenario, hardware: Sequence[str]) -> int:
    """GPUs per node for the GPU counts: the scenario's cluster.gpus_per_node, else the smallest of the
    profiles' (a count must fit every profile searched)."""
    if base.cluster.gpus_per_node:
        return base.cluster.gpus_per_node
    sizes = [
        resolve_hardware(base).gpus_per_node if h == base.hardware.profile else load_profile(h).gpus_per_node
        for h in hardware
    ]
    return min(sizes)
