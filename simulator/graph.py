"""Graph stage: the operator DAG of prefill and decode, placed on GPUs and annotated with FLOPs and bytes.

Layout semantics (README, "Parallel semantics"): gpu = stage * (dp*tp) + dp_rank * tp + tp_rank;
experts are split over ep ranks (x etp shards) folded onto the dp*tp GPUs of each stage, replicated
over the quotient. Token flow per layer: column-parallel Q/K/V, row-parallel output projection,
TP all-reduce; each TP rank then routes its own 1/tp slice of the tokens; all-to-all dispatch sends
every token copy to the rank holding its expert; experts run; all-to-all combine brings results
back; TP all-gather restores full activations for the next layer. No hardware figures here.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np

from simulator import costs
from simulator.config import Scenario

COMPUTE, COMM, ROUTING, MARKER = "compute", "communication", "routing", "marker"

#: Kernels a plain PyTorch implementation launches beyond the DAG's one-kernel operators
#: (runtime.framework: pytorch), counted call by call in simulator/microbench_e2e.py, the reference
#: implementation of the measured end-to-end cases. Views, splits and host arithmetic launch none.
PYTORCH_HELPER_KERNELS = {
    # softmax(fp32) 1, topk 2 (select + sort of the k winners), sum 1, divide 1: the router's top-k node
    "topk": 5,
    # prefill, GQA: K and V repeat_interleave'd to every query head before the flash kernel
    "attn_gqa_expand": 2,
    # prefill: the [B, H, S, D] context transposed back to [B, S, H*D] (a copy)
    "attn_out_copy": 1,
    # decode: the new K and V written into the cache's slot (two copies)
    "kv_append": 2,
    # sorted MoE: argsort of the expert ids (radix sort: histogram + 8 one-byte passes over int64
    # keys + index init = 10), order // k 1, bincount 2, its copy to the host for the split sizes 1
    "moe_sort": 14,
    # capacity MoE: one-hot (arange, eq, cast) 3, slot positions (cumsum, sub, gather) 3, keep mask 1,
    # slot index (mul, add, where) 3, token index (arange, repeat_interleave) 2, zeroed buffer,
    # token gather, index_copy into it 3
    "moe_dispatch_index": 15,
    # sorted MoE: cat of the expert outputs, routing weights reordered and cast 2, scaled 1,
    # zeroed output 1 (then the index_add is the combine node)
    "moe_unsort": 5,
    # capacity MoE: zero trash row 1, cat 1, gather by slot 1, weights masked 1, cast 1, scaled 1
    # (then the sum over the k copies is the combine node)
    "moe_undispatch": 6,
}


@dataclass(frozen=True)
class Placement:
    """Where every rank, layer and expert lives."""

    tp: int
    dp: int
    pp: int
    ep: int
    etp: int
    num_experts: int
    stage_layers: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, scenario: Scenario) -> "Placement":
        p = scenario.parallel
        return cls(
            tp=p.tp,
            dp=p.dp,
            pp=p.pp,
            ep=p.ep,
            etp=p.etp,
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
    def _experts_per_rank(self) -> int:
        return self.num_experts // self.ep if self.num_experts else 0

    def experts_of_gpu(self, gpu: int) -> list[int]:
        """Experts whose weights (or etp shard of them) this GPU holds."""
        if not self.num_experts:
            return []
        local = gpu % (self.dp * self.tp) % (self.ep * self.etp)
        ep_rank = local // self.etp
        n = self._experts_per_rank
        return list(range(ep_rank * n, (ep_rank + 1) * n))

    def layers_of_gpu(self, gpu: int) -> tuple[int, ...]:
        return self.stage_layers[self.stage_of_gpu(gpu)]


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
    return not scenario.model.is_moe or (r.zipf is None and r.sampled is None
                                         and (r.loads is None or max(r.loads) == min(r.loads))
                                         and (r.capacity_factor is None or r.capacity_factor >= 1.0))


def symmetric_representatives(scenario: Scenario, gpus_per_node: int) -> frozenset[int] | None:
    """One GPU per pipeline stage that stands for all of its stage, when they are exactly alike.

    Every GPU of a stage then runs the same kernels at the same times: the stage is split evenly
    (heads, KV heads, experts and expert shards divide), routing sends every expert the same share
    with no capacity drops, and every GPU's TP group, EP group and pipeline peers span nodes the
    same way (so each collective has the same link classes, member counts and duration on every
    member). Simulating the representatives alone then gives every figure of the whole; the
    others' per-GPU figures are copies (see expand_per_gpu). None when any condition fails."""
    pl = Placement.of(scenario)
    if pl.dp * pl.tp == 1 or not evenly_routed(scenario):
        return None  # nothing to fold, or GPUs whose experts get different loads

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


def expand_per_gpu(values: dict[int, object], graph: nx.DiGraph) -> dict[int, object]:
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
    out = {"routing": w.routing.kind, "max_over_mean_tokens_per_ep_rank": 1.0,
           "mean_max_over_mean_tokens_per_ep_rank": 1.0, "dropped_copies_prefill": 0.0, "dropped_fraction": 0.0}
    moe_layers = [layer for layer in range(m.num_layers) if m.is_moe_layer(layer)]
    if not moe_layers:
        return out
    per_rank = m.num_experts // p.ep
    groups = (p.dp * p.tp) // (p.ep * p.etp)  # EP groups per stage
    # copies one EP group routes in one prefill pass of a microbatch (as _Builder._layer counts them)
    copies = w.batch_size / (p.dp * p.microbatches) * w.input_len_tokens / p.tp * p.ep * p.etp * m.top_k
    ratios, dropped = [], 0.0
    for layer in moe_layers:
        kept, lost = costs.kept_copies(copies, routing_loads(scenario, layer), w.routing.capacity_factor)
        ranks = [sum(kept[r * per_rank:(r + 1) * per_rank]) for r in range(p.ep)]
        mean = sum(ranks) / p.ep
        ratios.append(max(ranks) / mean if mean else 1.0)
        dropped += lost * groups * p.microbatches
    total = w.batch_size * w.input_len_tokens * m.top_k * len(moe_layers)
    out.update(max_over_mean_tokens_per_ep_rank=max(ratios), mean_max_over_mean_tokens_per_ep_rank=sum(ratios) / len(ratios),
               dropped_copies_prefill=dropped, dropped_fraction=dropped / total)
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
        notes.append(f"{len(tp_groups)} TP group(s) of {pl.tp} GPUs: "
                     + ("each inside one node (consecutive ranks)" if not tp_split else
                        f"{len(tp_split)} span nodes (tp = {pl.tp} > gpus_per_node = {gpn} or not aligned): "
                        "their all-reduces cross the NICs"))
    if ep_groups and pl.ep * pl.etp > 1:
        notes.append(f"{len(ep_groups)} EP group(s) of {pl.ep * pl.etp} GPUs, each over {ep_spread} node(s)"
                     + (": all-to-all crosses the NICs (bound by the NIC)" if ep_spread > 1 else ": all-to-all on NVLink"))
    if pl.pp > 1:
        notes.append("pipeline stages on nodes " + "; ".join(f"stage {st}: {','.join(map(str, n))}"
                                                            for st, n in enumerate(stage_nodes)))
    return {"gpus_per_node": gpn, "nodes": -(-pl.num_gpus // gpn), "tp_groups_within_node": not tp_split,
            "max_nodes_per_ep_group": ep_spread, "notes": notes}


def _dim(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(float(x), 2)


class _Builder:
    """Accumulates nodes (attribute dicts, or copies of earlier blocks) and edges as plain lists, for a Dag."""

    def __init__(self, scenario: Scenario, keep: frozenset[int] | None = None):
        self.s = scenario
        self.keep = keep  # GPUs whose nodes are built (None: all); see symmetric_representatives
        self.pytorch = scenario.runtime.framework == "pytorch"
        # the MoE algorithm whose PyTorch helper kernels the graph shows (None: fused, or grouped)
        self.pytorch_moe = scenario.model.moe_impl if self.pytorch else None
        self._templates: dict[tuple, tuple] = {}  # see _layer_reused
        # Per node, in creation order: name, attributes, the index of the node it copies (or -1).
        # A copied layer's nodes have neither name nor attributes here (Dag makes them on request):
        # `copies` says where each copied block comes from; `index` names the nodes deps refer to.
        self.names: list[str | None] = []
        self.attrs: list[dict | None] = []
        self.twins: list[int] = []
        self.copies: list[tuple[int, int, int, str, int, dict]] = []  # (first, n0, n1, prefix, cut, fields)
        self.index: dict[str, int] = {}
        self.src: list[int] = []  # edges, as node indices
        self.dst: list[int] = []
        self.node_step: list[int] = []  # per node, its step (a copy's may differ from its original's)
        self._kv_nodes: list[int] = []  # decode attention nodes, whose attributes depend on the KV length
        self._across_steps: dict[tuple, tuple] = {}  # see _layer_reused
        self.m = scenario.model
        self.pl = Placement.of(scenario)
        self.b = self.m.dtype_bytes_per_element
        self.wb = self.m.weight_bytes_per_element
        self.kvb = self.m.kv_bytes_per_element
        self._layer_loads: dict[int, list[float]] = {}
        self._loads_cache: dict[tuple[int, float], tuple[list[float], float]] = {}
        m, tp = self.m, self.pl.tp
        self.heads_local = m.num_heads // tp
        # KV heads split over tp, or replicated when there are fewer KV heads than TP ranks.
        self.kv_heads_local = max(1, m.kv_heads // tp)
        self.hd = m.head_size
        self.h = m.hidden_size

    def _on(self, gpus) -> list[int]:
        """The GPUs of `gpus` whose nodes this builder materialises."""
        return list(gpus) if self.keep is None else [g for g in gpus if g in self.keep]

    @cached_property
    def _stage_on(self) -> list[list[int]]:
        """Per stage, its materialised GPUs."""
        return [self._on(self.pl.stage_gpus(st)) for st in range(self.pl.pp)]

    @cached_property
    def _tp_groups_on(self) -> list[list[tuple[int, list[int], list[int]]]]:
        """Per stage, (dp rank, TP group, its materialised GPUs) for the groups with any."""
        pl = self.pl
        return [[(d, grp, mine) for d in range(pl.dp) if (mine := self._on(grp := pl.tp_group(st, d)))]
                for st in range(pl.pp)]

    @cached_property
    def _ep_groups_on(self) -> list[list[tuple[list[int], list[int], dict[int, list[int]]]]]:
        """Per stage, (EP group, its materialised GPUs, each member's experts) for the groups with any."""
        pl = self.pl
        return [[(grp, mine, {g: pl.experts_of_gpu(g) for g in grp})
                 for grp in pl.ep_groups(st) if (mine := self._on(grp))] for st in range(pl.pp)]

    # -- primitive adders ------------------------------------------------------------------
    def add(self, nid: str, deps, **attrs) -> str:
        i = len(self.attrs)
        index = self.index
        if nid in index:
            raise ValueError(f"node {nid} is added twice")
        for d in deps:
            if d not in index:
                raise KeyError(f"edge {d} -> {nid} names an unknown node")
            self.src.append(index[d])
            self.dst.append(i)
        self.names.append(nid)
        self.attrs.append(attrs)
        self.twins.append(-1)
        self.node_step.append(attrs["step"])
        index[nid] = i
        return nid

    def compute(self, nid, deps, op, category, ctx, gpu, cost: costs.OpCost, in_shape, out_shape,
                tensor_core=False, launches=1, kind=COMPUTE, resident_bytes=0.0, **extra) -> str:
        """A kernel on one GPU. `resident_bytes`: what it reads from weights or the KV cache, so
        that act_bytes (transient activations in + out) excludes them."""
        return self.add(nid, deps, **self._compute_attrs(op, category, ctx, gpu, cost, in_shape, out_shape,
                                                         tensor_core, launches, kind, resident_bytes, **extra))

    def _compute_attrs(self, op, category, ctx, gpu, cost: costs.OpCost, in_shape, out_shape,
                       tensor_core=False, launches=1, kind=COMPUTE, resident_bytes=0.0, **extra) -> dict:
        return dict(
            op=op, kind=kind, category=category, gpu=gpu, flops=cost.flops,
            bytes_read=cost.bytes_read, bytes_written=cost.bytes_written,
            act_bytes=cost.bytes_read + cost.bytes_written - resident_bytes, in_shape=in_shape,
            out_shape=out_shape, tensor_core=tensor_core, launches=launches, dtype=self.m.dtype,
            **ctx, **extra,
        )

    def linear(self, nid, deps, op, category, ctx, gpu, tokens, k, n, in_shape, out_shape, kind=COMPUTE,
               groups: int = 1) -> str:
        """A GEMM against a [k, n] weight (or a batch of `groups` of them over the same rows)."""
        extra = {"grouped": (groups, tokens)} if groups > 1 else {}
        return self.compute(nid, deps, op, category, ctx, gpu, costs.linear_cost(tokens, k, n, self.b, self.wb, groups),
                            in_shape, out_shape, tensor_core=True, kind=kind, resident_bytes=groups * k * n * self.wb,
                            gemm=(groups * tokens, k, n), weight_b=self.wb, **extra)

    def helper(self, nid, deps, op, category, ctx, gpu, bytes_read, bytes_written, shape,
               resident_bytes=0.0) -> str:
        """Memory-bound helper kernels of a plain PyTorch implementation (PYTORCH_HELPER_KERNELS[op] of
        them): copies, index arithmetic, buffer fills, timed by the bytes they move."""
        return self.compute(nid, deps, op, category, ctx, gpu, costs.OpCost(0.0, bytes_read, bytes_written), shape,
                            shape, launches=PYTORCH_HELPER_KERNELS[op], kind=ROUTING, resident_bytes=resident_bytes)

    def collective(self, nid, deps, op, category, ctx, gpus, collective, send_bytes, recv_bytes,
                   message_bytes, shape, group) -> str:
        return self.add(
            nid, deps, op=op, kind=COMM, category=category, gpu=tuple(gpus), collective=collective,
            group=group, send_bytes=tuple(send_bytes), recv_bytes=tuple(recv_bytes),
            message_bytes=message_bytes, flops=0.0, bytes_read=float(sum(send_bytes)),
            bytes_written=float(sum(recv_bytes)), in_shape=shape, out_shape=shape, launches=1,
            dtype=self.m.dtype, **ctx,
        )

    # -- one pass (prefill of a microbatch, or one decode step of it) -------------------------
    def build_pass(self, phase: str, step: int, mb: int, start_deps: list[str]) -> str:
        """Add every node of one pass; return its token marker (the pass's sink)."""
        s, pl = self.s, self.pl
        seqs = s.workload.batch_size / (pl.dp * s.parallel.microbatches)  # sequences per dp rank
        q_len = s.workload.input_len_tokens if phase == "prefill" else 1
        kv_len = s.workload.input_len_tokens + (0 if phase == "prefill" else step)
        tag = f"{'p' if phase == 'prefill' else 'd' + str(step)}.mb{mb}"
        base_ctx = {"phase": phase, "step": step, "microbatch": mb}
        h, b = self.h, self.b
        tokens = seqs * q_len

        ready = self._entry(tag, base_ctx, phase, start_deps, tokens if phase == "prefill" else seqs)

        for stage, layers in enumerate(pl.stage_layers):
            if stage > 0:
                ready = self._stage_transfer(tag, base_ctx, stage - 1, stage, ready, tokens, layers[0] - 1)
            for layer in layers:
                last = layer == layers[-1]
                gather = not last or (stage == pl.pp - 1 and (self.m.vocab_size > 0 or pl.pp == 1))
                ready = self._layer_reused(tag, {**base_ctx, "layer": layer, "stage": stage}, ready, seqs, q_len,
                                           kv_len, gather)

        # The last stage produces the token.
        last_stage = pl.pp - 1
        finals = []
        for g in self._stage_on[last_stage]:
            dep = ready[g]
            if self.m.vocab_size:
                ctx = {**base_ctx, "layer": -1, "stage": last_stage}
                v_local = self.m.vocab_size / pl.tp
                # last position of each sequence only
                head = self.linear(f"{tag}.g{g}.lm_head", _as_list(dep), "lm_head", "embed_head", ctx, g, seqs, h,
                                   v_local, (_dim(seqs), h), (_dim(seqs), _dim(v_local)))
                cost = costs.elementwise_cost(seqs * v_local, seqs, 2.0, b)
                dep = self.compute(f"{tag}.g{g}.sample", [head], "sample", "embed_head", ctx, g, cost,
                                   (_dim(seqs), _dim(v_local)), (_dim(seqs),), kind=ROUTING)
            finals.extend(_as_list(dep))
        return self.add(f"{tag}.token", finals, op="token", kind=MARKER, category="marker", gpu=None,
                        flops=0.0, bytes_read=0.0, bytes_written=0.0, in_shape=(), out_shape=(),
                        **base_ctx, layer=-1, stage=last_stage)

    def _entry(self, tag: str, base_ctx: dict, phase: str, deps: list[str], tokens: float) -> dict[int, list[str]]:
        """What each first-stage GPU waits for before layer 0: the input (prefill) or the previous
        token (decode). With pp > 1 a decode token travels back from the last stage: as token ids
        when the model has a vocabulary, else as hidden-state slices (all-gathered at stage 0)."""
        pl, h, b = self.pl, self.h, self.b
        first = self._stage_on[0]
        if phase == "decode" and pl.pp > 1:
            if not self.m.vocab_size:
                ready = {g: deps for g in pl.stage_gpus(pl.pp - 1)}
                return self._stage_transfer(tag, base_ctx, pl.pp - 1, 0, ready, tokens, -1, op="token_send")
            sent = {}
            for _, group, mine in self._tp_groups_on[0]:
                for dst in mine:
                    src = pl.in_stage(dst, pl.pp - 1)
                    nbytes = tokens * 4.0  # int32 token ids
                    ctx = {**base_ctx, "layer": -1, "stage": pl.pp - 1}
                    sent[dst] = [self.collective(f"{tag}.g{src}-g{dst}.token_send", deps, "token_send", "pp_comm",
                                                 ctx, (src, dst), "send_recv", (nbytes, 0.0), (0.0, nbytes), nbytes,
                                                 (_dim(tokens),), "pp")]
        else:
            sent = {g: deps for g in first}
        if not self.m.vocab_size:
            return sent
        ctx = {**base_ctx, "layer": -1, "stage": 0}
        cost = costs.elementwise_cost(tokens * h, tokens * h, 0.0, b)  # gather rows of the embedding table
        return {g: [self.compute(f"{tag}.g{g}.embed", sent[g], "embed", "embed_head", ctx, g, cost,
                                 (_dim(tokens),), (_dim(tokens), h))] for g in first}

    def _stage_transfer(self, tag, base_ctx, src_stage, dst_stage, ready, tokens, layer, op="pp_send"):
        """Each rank sends its 1/tp slice of the activations to the same rank of the next stage,
        which all-gathers them over its TP group (no token is sent twice)."""
        pl, h, b = self.pl, self.h, self.b
        out: dict[int, str] = {}
        slice_tokens = tokens / pl.tp
        nbytes = slice_tokens * h * b
        for d, group, mine in self._tp_groups_on[dst_stage]:
            sent = []
            for dst in mine:
                src = pl.in_stage(dst, src_stage)
                ctx = {**base_ctx, "layer": layer, "stage": src_stage}
                sent.append(self.collective(f"{tag}.g{src}-g{dst}.{op}", _as_list(ready[src]), op, "pp_comm", ctx,
                                            (src, dst), "send_recv", (nbytes, 0.0), (0.0, nbytes), nbytes,
                                            (_dim(slice_tokens), h), "pp"))
            if pl.tp > 1:
                ctx = {**base_ctx, "layer": layer, "stage": dst_stage}
                gathered = self._allgather(f"{tag}.s{dst_stage}d{d}.L{layer}.stage_allgather", sent, ctx, group, tokens)
                for g in mine:
                    out[g] = gathered
            else:
                out[group[0]] = sent[0]
        return out

    def _allgather(self, nid, deps, ctx, group, tokens):
        total = tokens * self.h * self.b
        per_rank = total / len(group)
        n = len(group)
        return self.collective(nid, deps, "tp_allgather", "tp_comm", ctx, group, "all_gather",
                               [per_rank * (n - 1)] * n, [per_rank * (n - 1)] * n, total,
                               (_dim(tokens), self.h), "tp")

    def _layer_reused(self, tag, ctx, ready, seqs, q_len, kv_len, gather) -> dict:
        """_layer, or a copy of an identical layer built earlier: the same phase, stage, layer kind,
        shapes, routing loads and inputs (wired alike) give the same nodes and edges but for the
        names' prefix and the step, microbatch and layer fields (see _reused)."""
        layer = ctx["layer"]
        inputs: dict[str, int] = {}  # this layer's input nodes, numbered in order of first use
        wiring = tuple((g, tuple(inputs.setdefault(d, len(inputs)) for d in _as_list(v))) for g, v in ready.items())
        per_layer = layer if self.s.workload.routing.sampled is not None else None  # a draw per layer
        key = ("layer", ctx["phase"], ctx["stage"], self.m.is_moe_layer(layer), seqs, q_len, kv_len, gather,
               per_layer, wiring)
        fields = {"step": ctx["step"], "microbatch": ctx["microbatch"], "layer": layer}
        prefix = f"{tag}.L{layer}"
        across = key[:6] + key[7:]  # the same but for the KV length
        if q_len == 1 and key not in self._templates:
            source = self._across_steps.get(across)
            if source is not None:  # a decode layer of another step: a copy with attention nodes of its own
                template, kv_positions = source
                out, copy = self._copy(template, prefix, list(inputs), fields)
                for pos in kv_positions:
                    j = copy[2] + pos
                    a = self.attrs[template[2] + pos]
                    self.attrs[j] = self._attention_attrs(a["op"], ctx, a["gpu"], seqs, q_len, kv_len)
                    self.twins[j] = -1
                    self._kv_nodes.append(j)
                self._templates[key] = copy  # the template of this step's other layers and microbatches
                return out
        n0, k0 = len(self.attrs), len(self._kv_nodes)
        out = self._reused(key, prefix, list(inputs), fields,
                           lambda: self._layer(tag, ctx, ready, seqs, q_len, kv_len, gather))
        template = self._templates.get(key)
        if q_len == 1 and template is not None and template[2] == n0 and across not in self._across_steps:
            self._across_steps[across] = (template, [i - n0 for i in self._kv_nodes[k0:]])
        return out

    def pass_reused(self, phase: str, step: int, mb: int, start_deps: list[str]) -> str:
        """build_pass, or a copy of the same pass of an earlier microbatch: every microbatch's pass
        of one step has the same nodes and edges but for the names' prefix, the microbatch field
        and the node it waits for (the microbatch's previous token)."""
        tag = f"{'p' if phase == 'prefill' else 'd' + str(step)}.mb{mb}"
        return self._reused(("pass", phase, step, len(start_deps)), tag, list(start_deps), {"microbatch": mb},
                            lambda: self.build_pass(phase, step, mb, start_deps))

    def _reused(self, key: tuple, prefix: str, inputs: list[str], fields: dict, make):
        """make(), or a copy of the block of nodes that make() added under the same key before.

        A block is copyable when every node it added is named `prefix.` something and every edge
        into it comes from its `inputs` (or from inside). A copy gets the template's nodes and
        edges, shifted, with the inputs swapped by position; its nodes are named and given their
        attributes (the template's, with `fields` changed) only when the Dag is asked for them.
        Copying is several times cheaper than building, and `twins` tells the simulation that a
        copy costs what its original costs. Returns make()'s outputs (node names, in a str, list
        or dict) or the copy's.
        """
        template = self._templates.get(key)
        if template is None:
            n0, e0 = len(self.attrs), len(self.src)
            out = make()
            own = prefix + "."
            in_idx = [self.index[x] for x in inputs]
            # a None name is a layer copied inside this block (a pass), named under its prefix
            if all(n is None or n.startswith(own) for n in self.names[n0:]) and all(
                    u >= n0 or u in in_idx for u in self.src[e0:]):
                self._templates[key] = (len(prefix), in_idx, n0, len(self.attrs), e0, len(self.src), out)
            return out
        return self._copy(template, prefix, inputs, fields)[0]

    def _copy(self, template: tuple, prefix: str, inputs: list[str], fields: dict) -> tuple[object, tuple]:
        """A copy of a template block (see _reused) under `prefix`, fed by `inputs`: returns its
        outputs and the copy itself as a template."""
        cut, old_inputs, n0, n1, e0, e1, out = template
        first, e_first = len(self.attrs), len(self.src)
        shift = first - n0
        new_inputs = [self.index[x] for x in inputs]
        renamed = dict(zip(old_inputs, new_inputs))  # template inputs -> this block's
        input_name = dict(zip(old_inputs, inputs))
        twins = self.twins
        self.names.extend([None] * (n1 - n0))
        self.attrs.extend([None] * (n1 - n0))
        twins.extend([t if t >= 0 else n for n, t in enumerate(twins[n0:n1], n0)])  # always an original
        self.node_step.extend([fields["step"]] * (n1 - n0) if "step" in fields else self.node_step[n0:n1])
        self.copies.append((first, n0, n1, prefix, cut, fields))
        self.src.extend([u + shift if u >= n0 else renamed[u] for u in self.src[e0:e1]])
        self.dst.extend([v + shift for v in self.dst[e0:e1]])
        index = self.index

        def output(x):  # the copy's node(s) for the template's output(s) x, named so that deps can use them
            if isinstance(x, list):
                return [output(v) for v in x]
            if isinstance(x, dict):
                return {g: output(v) for g, v in x.items()}
            i = index[x]
            if i < n0:  # an input passed through
                return input_name[i]
            name = prefix + x[cut:]
            index[name] = i + shift
            return name
        copied = output(out)
        return copied, (len(prefix), new_inputs, first, len(self.attrs), e_first, len(self.src), copied)

    def _layer(self, tag, ctx, ready, seqs, q_len, kv_len, gather) -> dict[int, str]:
        """One transformer layer on every GPU of its stage; returns each GPU's output node."""
        pl, m, h, b = self.pl, self.m, self.h, self.b
        stage, layer = ctx["stage"], ctx["layer"]
        T = seqs * q_len
        Td = _dim(T)
        L = f"{tag}.L{layer}"
        out_proj: dict[int, str] = {}
        for g in self._stage_on[stage]:
            dep = _as_list(ready[g])
            p = f"{L}.g{g}"
            n = self.compute(f"{p}.norm_attn", dep, "norm_attn", "norm_residual", ctx, g,
                             costs.elementwise_cost(T * h, T * h, costs.NORM_FLOPS_PER_ELEMENT, b), (Td, h), (Td, h))
            if m.is_mla:
                cx, o_in = self._mla(p, ctx, g, n, seqs, q_len, kv_len)
            else:
                cx, o_in = self._mha(p, ctx, g, n, seqs, q_len, kv_len)
            out_proj[g] = self.linear(f"{p}.o_proj", [cx], "o_proj", "attention", ctx, g, T, o_in, h,
                                      (Td, o_in), (Td, h))

        after_attn = self._tp_allreduce(f"{L}.s{stage}", "tp_allreduce", out_proj, ctx, T)

        if not m.is_moe_layer(layer):
            return self._dense_ffn(L, ctx, after_attn, T)

        # Each TP rank routes its own 1/tp slice of the tokens.
        Ts = T / pl.tp
        Tsd = _dim(Ts)
        E, k = m.num_experts, m.top_k
        routed: dict[int, str] = {}
        shared: dict[int, str] = {}
        for g in self._stage_on[stage]:
            p = f"{L}.g{g}"
            r1, n2 = self._residual_and_norm(p, after_attn[g], "norm_moe", ctx, g, Ts)
            gate = self.linear(f"{p}.router", [n2], "router", "router", ctx, g, Ts, h, E, (Tsd, h), (Tsd, E),
                               kind=ROUTING)
            top = self.compute(f"{p}.topk", [gate], "topk", "router", ctx, g,
                               costs.elementwise_cost(Ts * E, Ts * k * 2, costs.SOFTMAX_FLOPS_PER_ELEMENT * E / (2 * k), b),
                               (Tsd, E), (Tsd, k), kind=ROUTING,
                               launches=PYTORCH_HELPER_KERNELS["topk"] if self.pytorch else 1)
            if m.num_shared_experts:
                shared[g] = self._shared_experts(p, ctx, g, n2, Ts)
            # Gather every token copy into expert order (the send buffers of the dispatch).
            copies = Ts * k * pl.etp
            before = [top]
            if self.pytorch_moe == "per_expert":  # 16 B per key and index, read + written per pass
                before = [self.helper(f"{p}.moe_sort", [top], "moe_sort", "router", ctx, g, 8 * copies * 16,
                                      8 * copies * 16, (_dim(copies),))]
            elif self.pytorch_moe == "capacity":  # int32 one-hot and positions, the zeroed buffer
                before = [self.helper(f"{p}.moe_dispatch_index", [top], "moe_dispatch_index", "router", ctx, g,
                                      3 * copies * E * 4, 3 * copies * E * 4 + copies * m.capacity_factor * h * b,
                                      (_dim(copies), E))]
            routed[g] = self.compute(f"{p}.moe_permute", before, "moe_permute", "router", ctx, g,
                                     costs.elementwise_cost(Ts * h, copies * h, 0.0, b), (Tsd, h), (_dim(copies), h),
                                     kind=ROUTING)

        moe_out: dict[int, str] = {}
        for group, mine, experts_at in self._ep_groups_on[stage]:
            routed_copies = Ts * len(group) * k
            loads, dropped = self._kept_loads(layer, routed_copies)
            share = {g: sum(loads[e] for e in experts_at[g]) for g in group}  # fraction of copies g receives
            copy_bytes = Ts * k * h * b  # every GPU in the group routes Ts tokens
            send = [copy_bytes * (sum(share.values()) - share[g]) for g in group]
            recv = [copy_bytes * share[g] * (len(group) - 1) for g in group]
            n_ranks = len(group)
            if n_ranks > 1:
                disp = self.collective(f"{L}.s{stage}r{group[0]}.a2a_dispatch", [routed[g] for g in mine],
                                       "a2a_dispatch", "ep_comm", ctx, group, "all_to_all", send, recv,
                                       max(max(send), max(recv)), (Tsd * k if isinstance(Tsd, int) else Ts * k, h), "ep")
                deps_of = {g: [disp] for g in group}
            else:
                deps_of = {g: [routed[g]] for g in group}
            fc2s = {}
            for g in mine:
                tokens_e = [routed_copies * loads[e] for e in experts_at[g]]
                fc2s[g] = self._experts(f"{L}.g{g}", ctx, g, deps_of[g], experts_at[g], tokens_e,
                                        dropped if g == group[0] else 0.0)
            if n_ranks > 1:
                comb = self.collective(f"{L}.s{stage}r{group[0]}.a2a_combine", [x for g in mine for x in fc2s[g]],
                                       "a2a_combine", "ep_comm", ctx, group, "all_to_all", recv, send,
                                       max(max(send), max(recv)), (Tsd * k if isinstance(Tsd, int) else Ts * k, h), "ep")
                for g in mine:
                    moe_out[g] = [comb]
            else:
                for g in mine:
                    moe_out[g] = fc2s[g]

        out: dict[int, str] = {}
        for g in self._stage_on[stage]:
            p = f"{L}.g{g}"
            copies = Ts * k * pl.etp
            extra_in = Ts if g in shared else 0.0  # the shared experts' output is added here too
            partial = moe_out[g]
            if self.pytorch_moe == "per_expert":  # cat, then scale by the routing weights; zeroed output
                partial = [self.helper(f"{p}.moe_unsort", partial, "moe_unsort", "experts", ctx, g, 2 * copies * h * b,
                                       (2 * copies + Ts) * h * b, (_dim(copies), h))]
            elif self.pytorch_moe == "capacity":  # cat, gather by slot, scale by the routing weights
                moved = (copies * m.capacity_factor + 2 * copies) * h * b
                partial = [self.helper(f"{p}.moe_undispatch", partial, "moe_undispatch", "experts", ctx, g, moved,
                                       moved, (_dim(copies), h))]
            wc = self.compute(f"{p}.moe_combine", partial + ([shared[g]] if g in shared else []), "moe_combine",
                              "experts", ctx, g,
                              costs.elementwise_cost((copies + extra_in) * h, Ts * h,
                                                     2.0 * copies / Ts + (1.0 if extra_in else 0.0) if Ts else 0.0, b),
                              (_dim(copies), h), (Tsd, h),
                              **({"scatter_add": True} if self.pytorch_moe == "per_expert" else {}))
            out[g] = self.compute(f"{p}.residual_moe", [wc], "residual_add", "norm_residual", ctx, g,
                                  costs.elementwise_cost(2 * Ts * h, Ts * h, 1.0, b), (Tsd, h), (Tsd, h))
        if gather and pl.tp > 1:
            for d, group, mine in self._tp_groups_on[stage]:
                ag = self._allgather(f"{L}.s{stage}d{d}.tp_allgather", [out[g] for g in mine], ctx, group, T)
                for g in mine:
                    out[g] = ag
        return out

    def _mha(self, p, ctx, g, n, seqs, q_len, kv_len) -> tuple[str, int]:
        """Q/K/V projections and flash attention (MHA, GQA or MQA) on one GPU; returns the context
        node and the output projection's input width."""
        m, h, b, hd = self.m, self.h, self.b, self.hd
        hl, kvl = self.heads_local, self.kv_heads_local
        T = seqs * q_len
        Td = _dim(T)
        if m.fused_qkv:  # one GEMM against the concatenated [h, (hl + 2 kvl) hd] weight
            q = k = v = self.linear(f"{p}.qkv_proj", [n], "qkv_proj", "attention", ctx, g, T, h,
                                    (hl + 2 * kvl) * hd, (Td, h), (Td, (hl + 2 * kvl) * hd))
        else:
            q = self.linear(f"{p}.q_proj", [n], "q_proj", "attention", ctx, g, T, h, hl * hd,
                            (Td, h), (_dim(seqs), hl, q_len, hd))
            k = self.linear(f"{p}.k_proj", [n], "k_proj", "attention", ctx, g, T, h, kvl * hd,
                            (Td, h), (_dim(seqs), kvl, q_len, hd))
            v = self.linear(f"{p}.v_proj", [n], "v_proj", "attention", ctx, g, T, h, kvl * hd,
                            (Td, h), (_dim(seqs), kvl, q_len, hd))
        if self.pytorch:
            new_kv = 2 * T * kvl * hd  # elements of this pass's K and V
            if q_len == 1:
                k = v = self.helper(f"{p}.kv_append", sorted({k, v}), "kv_append", "attention", ctx, g, new_kv * b,
                                    new_kv * self.kvb, (_dim(seqs), 2 * kvl, q_len, hd), resident_bytes=new_kv * self.kvb)
            elif kvl < hl:
                k = v = self.helper(f"{p}.attn_gqa_expand", sorted({k, v}), "attn_gqa_expand", "attention", ctx, g,
                                    new_kv * b, 2 * T * hl * hd * b, (_dim(seqs), 2 * hl, q_len, hd))
        sc = self._attention(f"{p}.attn_scores", sorted({q, k}), "attn_scores", ctx, g, seqs, q_len, kv_len)
        sm = self._attention(f"{p}.attn_softmax", [sc], "attn_softmax", ctx, g, seqs, q_len, kv_len)
        cx = self._attention(f"{p}.attn_context", [sm, v] if v != q else [sm], "attn_context", ctx, g, seqs, q_len,
                             kv_len)
        if self.pytorch and q_len > 1:
            cx = self.helper(f"{p}.attn_out_copy", [cx], "attn_out_copy", "attention", ctx, g, T * hl * hd * b,
                             T * hl * hd * b, (Td, hl * hd))
        return cx, hl * hd

    def _attention(self, nid, deps, op, ctx, g, seqs, q_len, kv_len) -> str:
        """One of the attention nodes (attn_scores, attn_softmax, attn_context: one flash-attention
        kernel, described in three). A decode one is listed in `_kv_nodes`: its attributes are the
        only ones of a layer that change with the KV length (see _layer_reused)."""
        nid = self.add(nid, deps, **self._attention_attrs(op, ctx, g, seqs, q_len, kv_len))
        if q_len == 1:
            self._kv_nodes.append(self.index[nid])
        return nid

    def _attention_attrs(self, op, ctx, g, seqs, q_len, kv_len) -> dict:
        """The attributes of an attention node (MHA/GQA/MQA, or MLA's absorbed form over the latent)."""
        m, b = self.m, self.b
        hl = self.heads_local
        if m.is_mla:  # MQA over the cached latent: kv_lora + rope dims for scores, kv_lora for values
            kvl, dk, dv = 1, (m.kv_lora_rank or 0) + (m.qk_rope_head_dim or 0), m.kv_lora_rank or 0
            kv_bytes = seqs * kv_len * dk * self.kvb  # the cached latent: resident, not transient
            kv_total = kv_bytes
        else:
            kvl, dk = self.kv_heads_local, self.hd
            dv = dk
            kv_bytes = seqs * kvl * kv_len * dk * self.kvb  # K (or V) of the cache: resident, not transient
            kv_total = 2 * kv_bytes
        qshape, kvshape = (_dim(seqs), hl, q_len, dk), (_dim(seqs), kvl, kv_len, dk)
        probs = (_dim(seqs), hl, q_len, kv_len)
        # One flash-attention kernel computes scores, softmax and context; these describe it.
        attn = {"fused": "flash_attention", "kv_len": kv_len, "q_len": q_len, "head_dim": dk,
                "batch_heads": seqs * hl, "kv_bytes_total": kv_total}
        if op == "attn_scores":
            return self._compute_attrs(op, "attention", ctx, g,
                                       costs.attention_scores_cost(seqs, hl, kvl, q_len, kv_len, dk, b, self.kvb),
                                       (qshape, kvshape), probs, tensor_core=True, resident_bytes=kv_bytes, **attn)
        if op == "attn_softmax":
            return self._compute_attrs(op, "attention", ctx, g, costs.attention_softmax_cost(seqs, hl, q_len, kv_len),
                                       probs, probs, launches=0, **attn)
        cost = costs.attention_context_cost(seqs, hl, kvl, q_len, kv_len, dv, b, self.kvb)
        if m.is_mla:  # values are the latent itself, already on chip from the scores: no second read
            return self._compute_attrs(op, "attention", ctx, g, costs.OpCost(cost.flops, 0.0, cost.bytes_written),
                                       (probs, kvshape), (_dim(seqs), hl, q_len, dv), tensor_core=True, launches=0,
                                       **attn)
        return self._compute_attrs(op, "attention", ctx, g, cost, (probs, kvshape), qshape, tensor_core=True,
                                   launches=0, resident_bytes=kv_bytes, **attn)

    def _mla(self, p, ctx, g, n, seqs, q_len, kv_len) -> tuple[str, int]:
        """Multi-head latent attention on one GPU, in its weight-absorbed form (as FlashMLA and
        vLLM run decode; used for prefill too, so prefill FLOPs are an upper bound): the query and
        latent down-projections are replicated over TP (vLLM's ReplicatedLinear), heads split over
        TP; each head's nope query is mapped into the latent space (W_UK absorbed), attention is
        MQA over the cached latent (kv_lora + rope dims for scores, kv_lora for values), and W_UV
        maps each head's context back to v_head_dim."""
        m, h, b = self.m, self.h, self.b
        hl = self.heads_local
        nope, rope, vd = self.hd, m.qk_rope_head_dim or 0, m.v_head_dim or 0
        lora = m.kv_lora_rank or 0
        T = seqs * q_len
        Td = _dim(T)
        qd = nope + rope
        if m.q_lora_rank:
            qa = self.linear(f"{p}.q_a_proj", [n], "q_a_proj", "attention", ctx, g, T, h, m.q_lora_rank,
                             (Td, h), (Td, m.q_lora_rank))
            q = self.linear(f"{p}.q_b_proj", [qa], "q_b_proj", "attention", ctx, g, T, m.q_lora_rank, hl * qd,
                            (Td, m.q_lora_rank), (_dim(seqs), hl, q_len, qd))
        else:
            q = self.linear(f"{p}.q_proj", [n], "q_proj", "attention", ctx, g, T, h, hl * qd, (Td, h),
                            (_dim(seqs), hl, q_len, qd))
        # [T, kv_lora + rope]: the latent and the shared rotary key, appended to the cache
        kv = self.linear(f"{p}.kv_a_proj", [n], "kv_a_proj", "attention", ctx, g, T, h, lora + rope, (Td, h),
                         (Td, lora + rope))
        # [T, hl, nope] x [hl, nope, kv_lora] -> [T, hl, kv_lora]
        qa = self.linear(f"{p}.q_absorb", [q], "q_absorb", "attention", ctx, g, T, nope, lora,
                         (Td, hl, nope), (Td, hl, lora), groups=hl)
        sc = self._attention(f"{p}.attn_scores", sorted({qa, kv}), "attn_scores", ctx, g, seqs, q_len, kv_len)
        sm = self._attention(f"{p}.attn_softmax", [sc], "attn_softmax", ctx, g, seqs, q_len, kv_len)
        cx = self._attention(f"{p}.attn_context", [sm], "attn_context", ctx, g, seqs, q_len, kv_len)
        # [T, hl, kv_lora] x [hl, kv_lora, v] -> [T, hl, v]
        vu = self.linear(f"{p}.v_up", [cx], "v_up", "attention", ctx, g, T, lora, vd, (Td, hl, lora), (Td, hl, vd),
                         groups=hl)
        return vu, hl * vd

    def _kept_loads(self, layer: int, copies: float) -> tuple[list[float], float]:
        """Per-expert fractions of `copies` that the experts process (after capacity drops) and
        the copies dropped."""
        key = (layer, copies)
        if key not in self._loads_cache:
            if layer not in self._layer_loads:
                self._layer_loads[layer] = routing_loads(self.s, layer)
            kept, dropped = costs.kept_copies(copies, self._layer_loads[layer], self.s.workload.routing.capacity_factor)
            self._loads_cache[key] = ([x / copies if copies else 0.0 for x in kept], dropped)
        return self._loads_cache[key]

    def _experts(self, prefix, ctx, g, deps, experts, tokens_e, dropped=0.0) -> list[str]:
        """FC1, activation, FC2 of this GPU's experts, as the model's moe_impl runs them:
        grouped (one grouped GEMM over exactly the routed tokens), per_expert (a GEMM pair per
        expert), or capacity (GShard: every expert padded to C slots, one batched GEMM over all)."""
        m, h, b = self.m, self.h, self.b
        ffn = (m.expert_ffn_size or 0) // self.pl.etp
        up = 2 * ffn if m.gated else ffn
        if m.moe_impl == "per_expert":
            batches = [(f"{prefix}.e{e}", [e], [t]) for e, t in zip(experts, tokens_e) if t > 0]
        elif m.moe_impl == "capacity":
            routed_total = sum(tokens_e) * m.num_experts / max(len(experts), 1)  # copies reaching this replica
            slots = math.ceil(routed_total / m.num_experts * m.capacity_factor)
            batches = [(prefix, experts, [float(slots)] * len(experts))]
        else:
            batches = [(prefix, experts, tokens_e)]
        ends = []
        for p, ex, toks in batches:
            fc1, act, fc2 = costs.expert_ffn_costs(toks, h, ffn, m.gated, m.activation, b, self.wb)
            rows = sum(toks)
            T = _dim(rows)
            active = sum(1 for t in toks if t > 0)
            per_expert = rows / active if active else 0.0
            extra = {"experts": tuple(ex), "expert_tokens": tuple(toks), "grouped": (active, per_expert)}
            drops = {"dropped_copies": dropped} if dropped and p == batches[0][0] else {}  # counted once, on FC1
            a = self.compute(f"{p}.expert_fc1", deps, "expert_fc1", "experts", ctx, g, fc1, (T, h), (T, up),
                             tensor_core=True, resident_bytes=active * h * up * self.wb, gemm=(rows, h, up),
                             weight_b=self.wb, **extra, **drops)
            a = self.compute(f"{p}.expert_act", [a], "expert_act", "experts", ctx, g, act, (T, up), (T, ffn),
                             launches=2 if self.pytorch and m.gated else 1, **extra)  # PyTorch: silu, then mul
            ends.append(self.compute(f"{p}.expert_fc2", [a], "expert_fc2", "experts", ctx, g, fc2, (T, ffn), (T, h),
                                     tensor_core=True, resident_bytes=active * ffn * h * self.wb, gemm=(rows, ffn, h), weight_b=self.wb,
                                     **extra))
        return ends

    def _shared_experts(self, p, ctx, g, dep, tokens) -> str:
        """The shared experts on this GPU's routed slice: one FFN of width num_shared * shared_ffn,
        weights replicated on every GPU of the stage (no communication)."""
        m, h, b = self.m, self.h, self.b
        ffn = m.shared_ffn_size
        up = 2 * ffn if m.gated else ffn
        Td = _dim(tokens)
        f1 = self.linear(f"{p}.shared_fc1", [dep], "shared_fc1", "experts", ctx, g, tokens, h, up, (Td, h), (Td, up))
        a = self.compute(f"{p}.shared_act", [f1], "shared_act", "experts", ctx, g,
                         costs.elementwise_cost(tokens * up, tokens * ffn, costs.ACTIVATION_FLOPS_PER_ELEMENT[m.activation], b),
                         (Td, up), (Td, ffn))
        return self.linear(f"{p}.shared_fc2", [a], "shared_fc2", "experts", ctx, g, tokens, ffn, h, (Td, ffn), (Td, h))

    def _dense_ffn(self, L, ctx, after_attn, T) -> dict[int, str]:
        """Dense FFN: column-parallel FC1, row-parallel FC2, TP all-reduce (Megatron-LM)."""
        pl, m, h, b = self.pl, self.m, self.h, self.b
        stage = ctx["stage"]
        ffn = (m.ffn_size or 0) // pl.tp
        up = 2 * ffn if m.gated else ffn
        Td = _dim(T)
        fc2: dict[int, str] = {}
        resid: dict[int, str] = {}
        for g in self._stage_on[stage]:
            p = f"{L}.g{g}"
            r1, n2 = self._residual_and_norm(p, after_attn[g], "norm_ffn", ctx, g, T)
            f1 = self.linear(f"{p}.ffn_fc1", [n2], "ffn_fc1", "ffn", ctx, g, T, h, up, (Td, h), (Td, up))
            a = self.compute(f"{p}.ffn_act", [f1], "ffn_act", "ffn", ctx, g,
                             costs.elementwise_cost(T * up, T * ffn, costs.ACTIVATION_FLOPS_PER_ELEMENT[m.activation], b),
                             (Td, up), (Td, ffn))
            fc2[g] = self.linear(f"{p}.ffn_fc2", [a], "ffn_fc2", "ffn", ctx, g, T, ffn, h, (Td, ffn), (Td, h))
            resid[g] = r1
        reduced = self._tp_allreduce(f"{L}.s{stage}", "tp_allreduce_ffn", fc2, ctx, T)
        return {g: self.compute(f"{L}.g{g}.residual_ffn", [reduced[g]], "residual_add", "norm_residual", ctx, g,
                                costs.elementwise_cost(2 * T * h, T * h, 1.0, b), (Td, h), (Td, h))
                for g in self._stage_on[stage]}

    def _residual_and_norm(self, p: str, dep: str, norm_op: str, ctx: dict, g: int, tokens: float) -> tuple[str, str]:
        """Add the attention output to the residual stream, then normalise it for the FFN/MoE."""
        h, b, td = self.h, self.b, _dim(tokens)
        r = self.compute(f"{p}.residual_attn", [dep], "residual_add", "norm_residual", ctx, g,
                         costs.elementwise_cost(2 * tokens * h, tokens * h, 1.0, b), (td, h), (td, h))
        n = self.compute(f"{p}.{norm_op}", [r], norm_op, "norm_residual", ctx, g,
                         costs.elementwise_cost(tokens * h, tokens * h, costs.NORM_FLOPS_PER_ELEMENT, b), (td, h), (td, h))
        return r, n

    def _tp_allreduce(self, prefix: str, name: str, partial: dict[int, str], ctx: dict, T: float) -> dict[int, str]:
        """Sum the row-parallel partial outputs [T, h] over each TP group (ring all-reduce); with
        tp = 1 each GPU's output passes through."""
        pl, h, b = self.pl, self.h, self.b
        if pl.tp == 1:
            return dict(partial)
        out: dict[int, str] = {}
        S, n = T * h * b, pl.tp
        vol = 2.0 * (n - 1) / n * S  # each rank sends (and receives) this much
        for d, group, mine in self._tp_groups_on[ctx["stage"]]:
            node = self.collective(f"{prefix}d{d}.{name}", [partial[g] for g in mine], "tp_allreduce", "tp_comm",
                                   ctx, group, "all_reduce", [vol] * n, [vol] * n, S, (_dim(T), h), "tp")
            out.update({g: node for g in mine})
        return out


def _as_list(dep) -> list[str]:
    if dep is None:
        return []
    return list(dep) if isinstance(dep, list) else [dep]


def sampled_decode_steps(total_steps: int, samples: int, warmup_steps: int = 2) -> list[int]:
    """The first `warmup_steps` decode steps, then about `samples` more evenly spread, the last included.

    The first steps are transients (they wait for the prefill of other microbatches and the
    pipeline refills); from then on a step's time changes smoothly with its KV length, so the
    steps between samples can be interpolated (metrics.decode_step_weights)."""
    if samples <= 0 or samples + warmup_steps >= total_steps:
        return list(range(1, total_steps + 1))
    first = warmup_steps + 1
    spread = max(samples, 2)
    return sorted(set(range(1, first)) | {round(first + i * (total_steps - first) / (spread - 1)) for i in range(spread)})


def build(scenario: Scenario, decode_steps: list[int] | None = None,
          keep: frozenset[int] | None = None) -> "Dag":
    """The operator DAG: prefill of every microbatch, then the decode steps.

    Prefill produces the first output token; decode steps t = 1 .. output_len-1 produce the rest,
    attending to input_len + t cached positions. Zero-cost marker nodes open and close each phase.
    `decode_steps` builds only those steps (chained in order; see sampled_decode_steps), for
    sweeps where the step time is interpolated between them; the graph records which steps it holds.
    `keep` (symmetric_representatives) builds only those GPUs' nodes; collectives keep their
    whole groups, so their costs are unchanged. `build_dag` gives the same as a networkx graph.
    """
    bld = _Builder(scenario, keep)
    m_count = scenario.parallel.microbatches
    marker = dict(kind=MARKER, category="marker", gpu=None, flops=0.0, bytes_read=0.0, bytes_written=0.0,
                  in_shape=(), out_shape=(), layer=-1, stage=-1, microbatch=-1)
    bld.add("prefill.start", [], op="phase_start", phase="prefill", step=0, **marker)
    tokens = [bld.pass_reused("prefill", 0, mb, ["prefill.start"]) for mb in range(m_count)]
    bld.add("prefill.end", tokens, op="phase_end", phase="prefill", step=0, **marker)
    total_steps = scenario.workload.output_len_tokens - 1
    steps = list(range(1, total_steps + 1)) if decode_steps is None else sorted(set(decode_steps))
    if steps and not (1 <= steps[0] and steps[-1] <= total_steps):
        raise ValueError(f"decode steps must lie in 1..{total_steps}")
    if steps:
        bld.add("decode.start", [], op="phase_start", phase="decode", step=steps[0], **marker)
        for i, step in enumerate(steps):
            for mb in range(m_count):
                deps = [tokens[mb], "decode.start"] if i == 0 else [tokens[mb]]
                tokens[mb] = bld.pass_reused("decode", step, mb, deps)
        bld.add("decode.end", tokens, op="phase_end", phase="decode", step=steps[-1], **marker)
    info = dict(scenario=scenario.name, num_gpus=bld.pl.num_gpus, decode_steps=list(steps),
                total_decode_steps=total_steps, representatives=sorted(keep) if keep else None)
    return Dag(bld.names, bld.attrs, bld.twins, bld.copies, bld.src, bld.dst, info, bld.node_step)


def build_dag(scenario: Scenario, decode_steps: list[int] | None = None,
              keep: frozenset[int] | None = None) -> nx.DiGraph:
    """`build` as a networkx DiGraph (node ids are the names, attributes the node dicts)."""
    return build(scenario, decode_steps, keep).to_networkx()


#: Attribute of a built networkx graph (not of the DAG, so not in graph.graph or any export): per
#: node, the index of the node it copies (see _Builder._reused), or -1. A copy of the graph drops it.
TWINS = "moesim_twins"


class Dag:
    """The operator DAG in creation order, which is the engine's priority order.

    Node i has a name, an attribute dict and successors (node indices). `twins[i]` is the index of
    the node it copies (_Builder._reused: same attributes but step, microbatch and layer, same
    cost) or -1; a copy's name and attributes are only made when asked for (`names`, `attrs`,
    `to_networkx`), so that simulating and measuring a sweep's layout never makes them: the
    simulation prices a copy as its original, and aggregates over nodes (metrics) count each
    original once per copy and step (`counted`: a decode layer may copy one of another step).
    `graph` holds the DAG's attributes, as networkx's does.
    """

    def __init__(self, names: list, attrs: list, twins: list[int], copies: list[tuple], src: list[int],
                 dst: list[int], info: dict, steps: list[int] | None = None):
        self._names, self._attrs, self.twins, self._copies = names, attrs, twins, copies
        self.src, self.dst = src, dst
        self.graph = info
        # per node, its decode step (a layer copied from another step has its own); None: the originals'
        self._steps = steps
        self._distinct: list[tuple[int, dict]] | None = None
        self._counted: list[tuple[int, dict, int, int]] | None = None
        self._copy_starts = [c[0] for c in copies]

    @classmethod
    def from_networkx(cls, graph: nx.DiGraph) -> "Dag":
        """A networkx graph (build_dag's, or any with its node attributes), in node order."""
        names = list(graph.nodes)
        index = {n: i for i, n in enumerate(names)}
        src, dst = [], []
        for n, succ in graph._succ.items():
            i = index[n]
            for v in succ:
                src.append(i)
                dst.append(index[v])
        twins = getattr(graph, TWINS, None)
        if twins is None or len(twins) != len(names):
            twins = [-1] * len(names)
        return cls(names, [graph._node[n] for n in names], list(twins), [], src, dst, graph.graph)

    def __len__(self) -> int:
        return len(self.twins)

    def _materialise(self) -> None:
        names, attrs = self._names, self._attrs
        for first, n0, n1, prefix, cut, fields in self._copies:
            names[first:first + n1 - n0] = [prefix + nid[cut:] for nid in names[n0:n1]]
            # a copied decode layer's attention nodes have their own attributes already
            attrs[first:first + n1 - n0] = [{**a, **fields} if mine is None else mine
                                           for a, mine in zip(attrs[n0:n1], attrs[first:first + n1 - n0])]
        self._copies, self._copy_starts = [], []

    @property
    def names(self) -> list[str]:
        """Every node's name (copies named on first use)."""
        self._materialise()
        return self._names

    @property
    def attrs(self) -> list[dict]:
        """Every node's attribute dict (copies made on first use)."""
        self._materialise()
        return self._attrs

    def distinct(self) -> list[tuple[int, dict]]:
        """(index, attributes) of every node that copies no other: maxima of what copies share
        with their original (kind, GPU, category, phase, duration, bytes) go over these alone;
        sums go over `counted`."""
        if self._distinct is None:
            attrs = self._attrs
            self._distinct = [(i, attrs[i]) for i, t in enumerate(self.twins) if t < 0]
        return self._distinct

    def counted(self) -> list[tuple[int, dict, int, int]]:
        """(index, attributes, count, step) per distinct node and decode step: a distinct node stands
        for `count` nodes of that step (itself and its copies there). A decode layer copied from
        another step shares all but its attention nodes with that step's, so its nodes count
        under their own step: sums weighted by step (metrics) go over these rows."""
        if self._counted is None:
            original = self.original_array
            steps = None if self._steps is None else np.fromiter(self._steps, np.int64, len(original))
            if steps is None or (steps == steps[original]).all():  # every copy in its original's step
                counts = np.bincount(original, minlength=len(original))
                self._counted = [(i, a, int(counts[i]), a["step"]) for i, a in self.distinct()]
            else:
                span = int(steps.max()) + 1
                keys, counts = np.unique(original * span + steps, return_counts=True)
                attrs = self._attrs
                self._counted = [(int(k) // span, attrs[int(k) // span], int(c), int(k) % span)
                                 for k, c in zip(keys, counts)]
        return self._counted

    @cached_property
    def original(self) -> list[int]:
        """Per node, the index of the distinct node it is (itself) or copies (its twin)."""
        return [i if t < 0 else t for i, t in enumerate(self.twins)]

    @cached_property
    def original_array(self) -> np.ndarray:
        """`original` as a numpy array."""
        return np.fromiter(self.original, np.int64, len(self.twins))

    def instances(self, distinct: list[int]) -> list[int]:
        """Every node that is, or copies, one of the given distinct nodes, in node order."""
        return np.flatnonzero(np.isin(self.original_array, distinct)).tolist()

    def node_attrs(self, i: int) -> dict:
        """Node i's attributes, made for this node alone if it is a copy not made yet."""
        a = self._attrs[i]
        if a is not None:
            return a
        r = bisect.bisect_right(self._copy_starts, i) - 1
        first, n0, _, _, _, fields = self._copies[r]
        return {**self.node_attrs(n0 + i - first), **fields}

    def successors(self) -> list[list[int]]:
        """Per node, the indices of its successors, in the order the edges were added."""
        succ: list[list[int]] = [[] for _ in self.twins]
        for u, v in zip(self.src, self.dst):
            succ[u].append(v)
        return succ

    def to_networkx(self) -> nx.DiGraph:
        names = self.names
        graph = _digraph(list(zip(names, self.attrs)), [(names[u], names[v]) for u, v in zip(self.src, self.dst)],
                         **self.graph)
        setattr(graph, TWINS, self.twins)
        return graph


def node_dicts(graph: "Dag | nx.DiGraph") -> list[dict]:
    """The attribute dicts of a graph's nodes; of a Dag, the distinct ones (a copy's equal its
    original's but for step, microbatch and layer): enough for maxima over nodes."""
    if isinstance(graph, Dag):
        return [a for _, a in graph.distinct()]
    return list(graph._node.values())


def _digraph(nodes: list[tuple[str, dict]], edges: list[tuple[str, str]], **graph_attrs) -> nx.DiGraph:
    """A networkx DiGraph filled through its adjacency dicts.

    Same structure as add_nodes_from/add_edges_from (tests check it) at a fifth of the cost: those
    copy every attribute dict and re-check every node, which dominated building the seed DAG.
    """
    g = nx.DiGraph(**graph_attrs)
    node, succ, pred = g._node, g._succ, g._pred
    for nid, attrs in nodes:
        node[nid] = attrs
        succ[nid] = {}
        pred[nid] = {}
    for u, v in edges:
        if u not in node or v not in node:
            raise KeyError(f"edge {u} -> {v} names an unknown node")
        data: dict = {}
        succ[u][v] = data
        pred[v][u] = data
    return g
