"""Placement stage: where every rank, layer and expert lives, and how routing loads the experts.

Layout semantics (docs/parallel.md): gpu = stage * (dp*tp) + dp_rank * tp + tp_rank;
experts are split over ep ranks (x etp shards) folded onto the dp*tp GPUs of each stage, replicated
over the quotient. No hardware figures here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from simulator import costs
from simulator.config import ParallelSpec, Scenario

if TYPE_CHECKING:
    import networkx as nx


V = TypeVar("V")  # a per-GPU figure


@dataclass(frozen=True)
class Placement:
    """Where every rank, layer and expert lives, given the layout's degrees (`config.ParallelSpec`)."""

    parallel: ParallelSpec
    num_experts: int
    stage_layers: tuple[tuple[int, ...], ...]
    # The degrees, read on every rank computation: copied from `parallel` once (plain attributes).
    tp: int = field(init=False)
    dp: int = field(init=False)
    pp: int = field(init=False)
    ep: int = field(init=False)
    etp: int = field(init=False)

    redundant: int = field(init=False)  # extra expert copies per EP group (parallel.redundant_experts)

    def __post_init__(self) -> None:
        for name in ("tp", "dp", "pp", "ep", "etp"):
            object.__setattr__(self, name, getattr(self.parallel, name))
        object.__setattr__(self, "redundant", self.parallel.redundant_experts)

    @classmethod
    def of(cls, scenario: Scenario) -> Placement:
        return cls(
            parallel=scenario.parallel,
            num_experts=scenario.model.num_experts,
            stage_layers=tuple(tuple(s) for s in scenario.stage_layers()),
        )

    @property
    def num_gpus(self) -> int:
        return self.pp * self.dp * self.tp

    def gpu(self, stage: int, dp_rank: int, tp_rank: int) -> int:
        return stage * self.dp * self.tp + dp_rank * self.tp + tp_rank

    def stage_of_gpu(self, gpu: int) -> int:
        return gpu // (self.dp * self.tp)

    def in_stage(self, gpu: int, stage: int) -> int:
        """The GPU of the same dp and tp rank as `gpu` in another pipeline stage."""
        return gpu + (stage - self.stage_of_gpu(gpu)) * self.dp * self.tp

    def stage_gpus(self, stage: int) -> list[int]:
        first = stage * self.dp * self.tp
        return list(range(first, first + self.dp * self.tp))

    def tp_group(self, stage: int, dp_rank: int) -> list[int]:
        return [self.gpu(stage, dp_rank, t) for t in range(self.tp)]

    def ep_groups(self, stage: int) -> list[list[int]]:
        """Expert replicas of a stage: consecutive blocks of ep*etp GPUs, each holding all experts."""
        gpus, size = self.stage_gpus(stage), self.ep * self.etp
        return [gpus[i : i + size] for i in range(0, len(gpus), size)]

    @cached_property
    def slots_per_rank(self) -> int:
        """Expert weight slots each EP rank holds: (num_experts + redundant copies) / ep."""
        return (self.num_experts + self.redundant) // self.ep if self.num_experts else 0

    def ep_rank_of(self, gpu: int) -> int:
        """The EP rank of `gpu` within its expert replica."""
        return gpu % (self.dp * self.tp) % (self.ep * self.etp) // self.etp

    def rank_slots(self, loads: tuple[float, ...]) -> tuple[tuple[tuple[int, float], ...], ...]:
        """Per EP rank, its (expert, share of that expert's token copies) pairs when routing sends expert e the
        fraction loads[e]: without redundant copies the contiguous blocks (rank r holds experts r*n .. r*n+n-1, each
        whole); with them, EPLB's placement of those loads (eplb_slots)."""
        if not self.redundant:
            return self._contiguous_slots
        return eplb_slots(loads, self.ep, self.redundant)

    @cached_property
    def _contiguous_slots(self) -> tuple[tuple[tuple[int, float], ...], ...]:
        n = self.slots_per_rank
        return tuple(tuple((e, 1.0) for e in range(r * n, (r + 1) * n)) for r in range(self.ep))

    def experts_of_gpu(self, gpu: int) -> list[int]:
        """Experts whose weights (or etp shard of them) this GPU holds; with redundant copies, as placed for
        even routing (each layer's own placement follows its loads: rank_slots)."""
        if not self.num_experts:
            return []
        uniform = (1.0 / self.num_experts,) * self.num_experts
        return [e for e, _ in self.rank_slots(uniform)[self.ep_rank_of(gpu)]]

    def layers_of_gpu(self, gpu: int) -> tuple[int, ...]:
        return self.stage_layers[self.stage_of_gpu(gpu)]


@functools.lru_cache(maxsize=256)
def eplb_slots(loads: tuple[float, ...], ep: int, redundant: int) -> tuple[tuple[tuple[int, float], ...], ...]:
    """Expert placement with `redundant` extra copies over `ep` ranks of (len(loads) + redundant) / ep slots each,
    as DeepSeek's EPLB places them (its global policy, written here from its description): each extra copy
    goes to the expert with the most load per copy, a copy takes an equal share of its expert's tokens, and
    copies are packed heaviest first onto the least-loaded rank that has a free slot (and, where one can,
    does not hold that expert already; ties to the lowest index). Per rank: (expert, share of its copies)
    pairs, a rank's copies of one expert merged.

    Even routing over 256 experts with 32 copies on 72 ranks of 4 slots: experts 0-31 get two copies;
    8 ranks hold 4 whole experts (4/256 of the copies), 64 hold 3 and half of one (3.5/256)."""
    n = len(loads)
    per_rank = (n + redundant) // ep
    copies = [1] * n
    for _ in range(redundant):
        busiest = max(range(n), key=lambda e: (loads[e] / copies[e], -e))
        copies[busiest] += 1
    replicas = sorted(
        ((loads[e] / copies[e], e) for e in range(n) for _ in range(copies[e])), key=lambda x: (-x[0], x[1])
    )
    rank_load = [0.0] * ep
    held: list[list[int]] = [[] for _ in range(ep)]
    for load, e in replicas:
        free = [r for r in range(ep) if len(held[r]) < per_rank]
        apart = [r for r in free if e not in held[r]] or free
        r = min(apart, key=lambda r: (rank_load[r], r))
        held[r].append(e)
        rank_load[r] += load
    return tuple(tuple((e, held[r].count(e) / copies[e]) for e in sorted(set(held[r]))) for r in range(ep))


def routing_loads(scenario: Scenario, layer: int = 0) -> list[float]:
    """Fraction of token copies sent to each expert in `layer`, from workload.routing
    (config.RoutingSpec): uniform (expected values), Zipf, a given vector, or a seeded draw."""
    n = scenario.model.num_experts
    if not n:
        return []
    r = scenario.workload.routing
    if r.zipf is not None:
        weights = [1.0 / (i + 1) ** r.zipf for i in range(n)]
    elif r.loads is not None:
        weights = list(r.loads)
    elif r.sampled is not None:
        w = scenario.workload
        copies = w.batch_size * w.input_len_tokens * scenario.model.top_k
        rng = np.random.default_rng([r.sampled, layer])
        weights = [float(x) for x in rng.multinomial(copies, [1.0 / n] * n)]
    else:
        return [1.0 / n] * n
    total = sum(weights)
    return [x / total for x in weights]


def evenly_routed(scenario: Scenario) -> bool:
    """Every expert gets the same share of token copies and none is dropped (or the model is dense)."""
    r = scenario.workload.routing
    return not scenario.model.is_moe or (
        r.zipf is None
        and r.sampled is None
        and (r.loads is None or max(r.loads) == min(r.loads))
        and (r.capacity_factor is None or r.capacity_factor >= 1.0)
    )


def symmetric_representatives(scenario: Scenario, gpus_per_node: int) -> frozenset[int] | None:
    """One GPU per pipeline stage that stands for all of its stage, when they are exactly alike.

    Every GPU of a stage then runs the same kernels at the same times: the stage is split evenly
    (heads, KV heads, experts and expert shards divide), routing sends every expert the same share
    with no capacity drops, and every GPU's TP group, EP group and pipeline peers span nodes the
    same way (so each collective has the same link classes, member counts and duration on every
    member). Simulating the representatives alone then gives every figure of the whole; the
    others' per-GPU figures are copies (see expand_per_gpu). None when any condition fails."""
    pl = Placement.of(scenario)
    if pl.dp * pl.tp == 1 or not evenly_routed(scenario) or pl.redundant:
        return None  # nothing to fold, or GPUs whose experts get different loads (redundant copies: shares)

    def span(gpus) -> tuple[int, int]:  # (most GPUs on one node, nodes): what the collective costs read
        per_node: dict[int, int] = {}
        for g in gpus:
            per_node[g // gpus_per_node] = per_node.get(g // gpus_per_node, 0) + 1
        return max(per_node.values()), len(per_node)

    def signature(stage: int, d: int, t: int) -> tuple:
        g = pl.gpu(stage, d, t)
        ep = next(grp for grp in pl.ep_groups(stage) if g in grp)
        peers = tuple(pl.gpu(s, d, t) // gpus_per_node == g // gpus_per_node for s in range(pl.pp))
        return span(pl.tp_group(stage, d)), span(ep), peers

    for stage in range(pl.pp):
        first = signature(stage, 0, 0)
        if any(signature(stage, d, t) != first for d in range(pl.dp) for t in range(pl.tp)):
            return None
    return frozenset(pl.gpu(stage, 0, 0) for stage in range(pl.pp))


def represented_gpus(representatives: list[int] | frozenset[int], num_gpus: int) -> dict[int, list[int]]:
    """Each representative GPU of a folded graph (symmetric_representatives) and the GPUs it stands
    for: its pipeline stage's, the representative first (the rule expand_per_gpu applies)."""
    reps = sorted(representatives)
    per_stage = num_gpus // len(reps)
    return {r: list(range(r, r + per_stage)) for r in reps}


def expand_per_gpu(values: dict[int, V], graph: nx.DiGraph) -> dict[int, V]:
    """Per-GPU figures of a folded graph (built for symmetric_representatives) for every GPU:
    each GPU takes its stage representative's figure. An unfolded graph's figures pass through."""
    keep = graph.graph.get("representatives")
    if not keep:
        return values
    per_stage = graph.graph["num_gpus"] // len(keep)
    return {g: values[g - g % per_stage] for g in sorted(values)}


def routing_summary(scenario: Scenario) -> dict:
    """Routing imbalance of the MoE layers: tokens per EP rank (max / mean over ranks, the worst
    layer and the mean over layers) and the token copies dropped at capacity per prefill."""
    m, p, w = scenario.model, scenario.parallel, scenario.workload
    out = {
        "routing": w.routing.kind,
        "max_over_mean_tokens_per_ep_rank": 1.0,
        "mean_max_over_mean_tokens_per_ep_rank": 1.0,
        "dropped_copies_prefill": 0.0,
        "dropped_fraction": 0.0,
    }
    moe_layers = [layer for layer in range(m.num_layers) if m.is_moe_layer(layer)]
    if not moe_layers:
        return out
    pl = Placement.of(scenario)
    groups = (p.dp * p.tp) // (p.ep * p.etp)  # EP groups per stage
    # copies one EP group routes in one prefill pass of a microbatch (as graph.layers.LayerBuilder.layer counts them)
    copies = w.batch_size / (p.dp * p.microbatches) * w.input_len_tokens / p.tp * p.ep * p.etp * m.top_k
    ratios, dropped = [], 0.0
    for layer in moe_layers:
        loads = routing_loads(scenario, layer)
        kept, lost = costs.kept_copies(copies, loads, w.routing.capacity_factor)
        ranks = [sum(kept[e] * share for e, share in slots) for slots in pl.rank_slots(tuple(loads))]
        mean = sum(ranks) / p.ep
        ratios.append(max(ranks) / mean if mean else 1.0)
        dropped += lost * groups * p.microbatches
    total = w.batch_size * w.input_len_tokens * m.top_k * len(moe_layers)
    out.update(
        max_over_mean_tokens_per_ep_rank=max(ratios),
        mean_max_over_mean_tokens_per_ep_rank=sum(ratios) / len(ratios),
        dropped_copies_prefill=dropped,
        dropped_fraction=dropped / total,
    )
    return out


def placement_summary(scenario: Scenario, gpus_per_node: int) -> dict:
    """Where the TP groups, EP groups and pipeline stages landed on the nodes (node = gpu // gpus_per_node).

    The rank order (gpu = stage * dp * tp + dp_rank * tp + tp_rank) puts a TP group on consecutive
    GPUs, so it stays inside one node whenever tp <= gpus_per_node and gpus_per_node % tp == 0."""
    pl = Placement.of(scenario)
    gpn = gpus_per_node

    def nodes(gpus) -> list[int]:
        return sorted({g // gpn for g in gpus})

    tp_groups = [pl.tp_group(st, d) for st in range(pl.pp) for d in range(pl.dp)]
    tp_split = [grp for grp in tp_groups if len(nodes(grp)) > 1]
    ep_groups = [grp for st in range(pl.pp) for grp in pl.ep_groups(st)] if scenario.model.is_moe else []
    ep_spread = max((len(nodes(grp)) for grp in ep_groups), default=1)
    stage_nodes = [nodes(pl.stage_gpus(st)) for st in range(pl.pp)]
    notes = []
    if pl.tp > 1:
        notes.append(
            f"{len(tp_groups)} TP group(s) of {pl.tp} GPUs: "
            + (
                "each inside one node (consecutive ranks)"
                if not tp_split
                else f"{len(tp_split)} span nodes (tp = {pl.tp} > gpus_per_node = {gpn} or not aligned): "
                "their all-reduces cross the NICs"
            )
        )
    if ep_groups and pl.ep * pl.etp > 1:
        notes.append(
            f"{len(ep_groups)} EP group(s) of {pl.ep * pl.etp} GPUs, each over {ep_spread} node(s)"
            + (": all-to-all crosses the NICs (bound by the NIC)" if ep_spread > 1 else ": all-to-all on NVLink")
        )
    if pl.pp > 1:
        notes.append(
            "pipeline stages on nodes "
            + "; ".join(f"stage {st}: {','.join(map(str, n))}" for st, n in enumerate(stage_nodes))
        )
    return {
        "gpus_per_node": gpn,
        "nodes": -(-pl.num_gpus // gpn),
        "tp_groups_within_node": not tp_split,
        "max_nodes_per_ep_group": ep_spread,
        "notes": notes,
    }


def gpu_ranges(values: list[int]) -> str:
    """'0-3, 8, 12-13' for a sorted list of GPU numbers."""
    parts, run = [], [values[0]]
    for v in values[1:]:
        if v == run[-1] + 1:
            run.append(v)
        else:
            parts.append(run)
            run = [v]
    parts.append(run)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in parts)
