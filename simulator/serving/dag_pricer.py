"""Serving cost stage, operator level: the time of one scheduler iteration from moesim's operator DAG, costs
and SimPy engine, on the scenario's GPUs and links (the same as `moesim run`'s passes).

`DagPricer.exact(batch)` builds ONE forward pass of one replica for the ragged batch (graph.ragged.build_forward:
GEMMs, MoE and collectives over the iteration's new tokens, attention per sequence), folds it onto one GPU per
stage when the stage's GPUs are alike (as sweeps do) and simulates it with simulate.simulate_dag.

`DagPricer.timing(batch)` gives the same figures without building a pass per iteration. Every path of a pass
runs through each layer's attention on its GPU (the layer's only entry is its norm, its only exit the
collectives after the output projection; every GPU of a stage has the same heads), and through the LM head at
its end, so a pass's time is exactly

    trunk(phase, new_tokens) + layers x attention_per_layer(batch) + head(sequences)

where attention and head are the DAG nodes' own times (graph.ragged builds their attributes; op_time prices
them), and trunk, what the rest of the pass takes, depends on the phase and the new tokens alone. The trunk is
taken from exact passes (a reference batch of that many tokens, less its attention and head) at a few token
counts and interpolated linearly between them; a cell between two exact points is used only after the
interpolation at its midpoint matched an exact pass within `tolerance` (else the cell is split), so exact
points gather where the trunk bends (eager floors, roofline corners). Per pipeline stage the same holds with
the stage's layers; the period of a replica (one batch in flight per stage) is its slowest stage's time, the
latency (when the batch's tokens exist) the whole pass's.

A batch with a prefill chunk runs eagerly (as vLLM V0 runs mixed batches), or with `piecewise` from piecewise
CUDA graphs (vLLM V1: only attention, the LM head and sampling launched eagerly, graph.ragged.PIECEWISE_EAGER_OPS,
which are the nodes node_parts prices apart, so the decomposition holds); a pure decode batch follows
runtime.mode (CUDA graphs by default), with the head nodes in `graph_outside_ops` launched eagerly after the
graph (the LM head and sampling, priced apart too). Each dp rank of a lockstep EP group is priced as if it ran the same
batch (the serving loop takes the slowest replica's price); an empty batch is the dummy pass of an idle one.
The passes are simulated without the hosts' launch threads (simulate_dag(host_thread=False): an eager kernel
takes at least its eager floor), which keeps a pass's time the sum above; `moesim run` models the launch thread.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

import numpy as np

from simulator import costs
from simulator.config import Scenario, gpus_per_node, resolve_hardware
from simulator.config.hardware import HardwareProfile, attention_fixed_part_s, series_interpolate
from simulator.graph import NodeKind
from simulator.graph.ragged import (
    ATTENTION_OPS,
    RaggedPassBuilder,
    RaggedShape,
    attention_nodes_attrs,
    build_forward,
    decode_shape,
    ragged_shape,
)
from simulator.placement import symmetric_representatives
from simulator.serving.pricing import Batch
from simulator.simulate import node_time_s, simulate_dag


class IterationTiming(NamedTuple):
    """period_s: how long the iteration holds the replica's slowest pipeline stage (the next batch may enter
    then); latency_s: from its start until its tokens exist. Equal without pipeline parallelism."""

    period_s: float
    latency_s: float


#: Exact trunk passes by (scenario without its serving section, profile) and then (phase, tokens), shared by
#: the DagPricers made inside share_exact_passes (None outside).
_SHARED: ContextVar[dict[str, dict[tuple[str, int], tuple[float, list[float]]]] | None] = ContextVar(
    "dag_pricer_shared_passes", default=None
)


@contextmanager
def share_exact_passes(store: dict | None = None) -> Iterator[None]:
    """Inside, DagPricers of the same scenario (its serving section aside: a pricer reads none of it) and
    profile reuse each other's exact trunk passes. A pass is a pure function of the scenario, the profile, the
    phase and the token count, so this changes no price; each pricer still builds its own grid of points
    (which points it checks depends on the batches it has seen: _Trunk), only the simulations are shared.
    For a deployment search, whose candidates differing in scheduler limits or in an xPyD split share pools.
    `store` keeps the passes beyond the block (a worker's, across its tasks); a fresh one by default."""
    token = _SHARED.set({} if store is None else store)
    try:
        yield
    finally:
        _SHARED.reset(token)


class DagPricer:
    """IterationPricer from the operator DAG of `scenario` on `hw` (module docstring); piecewise: batches with a
    prefill chunk replay piecewise CUDA graphs.

    Calls return the latency; `timing` both figures. `exact_passes` counts the DAG passes simulated,
    `grid_hits` the iterations whose trunk came from points already simulated."""

    def __init__(
        self,
        scenario: Scenario,
        hw: HardwareProfile | None = None,
        tolerance: float = 1e-3,
        piecewise: bool = False,
        graph_outside_ops: frozenset[str] = frozenset(),
    ) -> None:
        self.scenario = scenario
        self.piecewise = piecewise
        self.graph_outside_ops = frozenset(graph_outside_ops)
        self.hw = hw if hw is not None else resolve_hardware(scenario)
        self.gpn = gpus_per_node(scenario, self.hw)
        self.keep = symmetric_representatives(scenario, self.gpn)
        self.tolerance = tolerance
        self.gated = scenario.model.gated
        self.decode_eager = scenario.runtime.mode == "eager"
        model = scenario.model
        self.stage_layers = [len(layers) for layers in scenario.stage_layers()]
        self.total_layers = sum(self.stage_layers)
        self.stage_sliding = [model.sliding_layers(layers) for layers in scenario.stage_layers()]
        self.total_sliding = sum(self.stage_sliding)
        self.window = model.sliding_window
        # a full-attention layer and a sliding-window one (None where the model has none), whose attention
        # stands for every layer of its kind
        every = range(model.num_layers)
        self.kind_layers = (
            next((i for i in every if model.attention_window(i) is None), None),
            next((i for i in every if model.attention_window(i) is not None), None),
        )
        self.pp = len(self.stage_layers)
        self.builder = RaggedPassBuilder(scenario, ragged_shape((), self.window), self.keep)
        self.gpu = self.builder.stage_on[0][0]  # attention is alike on every GPU of every stage
        self.last_gpu = self.builder.stage_on[-1][0]
        self.trunks = {"prefill": _Trunk(self, "prefill"), "decode": _Trunk(self, "decode")}
        # A calibrated profile times the softmax node at 0 (inside the measured flash-attention rate: op_time),
        # so its attributes need not be built for a price.
        self.attention_ops = ATTENTION_OPS if self.hw.calibration is None else ("attn_scores", "attn_context")
        self.fast = _CalibratedAttention.of(self.builder, self.hw)
        shared = _SHARED.get()
        self.passes: dict[tuple[str, int], tuple[float, list[float]]] | None = None
        if shared is not None:
            data = scenario.model_dump(mode="json", exclude={"serving", "name", "description"})
            m = scenario.model  # precisions left unset mean the model's dtype: one key for both spellings
            data["model"].update(weight_dtype=m.weight_dtype or m.dtype, kv_cache_dtype=m.kv_cache_dtype or m.dtype)
            key = json.dumps(
                [data, self.hw.model_dump(mode="json"), piecewise, sorted(self.graph_outside_ops)], sort_keys=True
            )
            self.passes = shared.setdefault(key, {})
        self.exact_passes = 0
        self.grid_hits = 0
        # The LM head's and sampling's seconds by (phase, sequences): they price the last position of each
        # sequence, whatever its context, so a run of decode steps of n sequences computes them once.
        self.heads: dict[tuple[str, int], float] = {}

    # ---------------------------------------------------------------- exact: one DAG pass

    def exact(self, batch: Batch) -> IterationTiming:
        """Build and simulate the forward pass of this batch: the reference every other figure is tested against."""
        return self.exact_shape(ragged_shape(batch, self.window))

    def exact_shape(self, shape: RaggedShape) -> IterationTiming:
        latency_s, spans = self.simulate(shape)
        return IterationTiming(max(spans), latency_s)

    def simulate(self, shape: RaggedShape) -> tuple[float, list[float]]:
        """(makespan, per-stage busy span) of the pass; a stage's span runs from its first node's start to its
        last node's end (its outgoing transfer included; the token sent back to stage 0 belongs to no stage)."""
        self.exact_passes += 1
        dag = build_forward(self.scenario, shape, self.keep)
        # additive passes (module docstring)
        sim = simulate_dag(
            dag,
            self.scenario,
            self.hw,
            host_thread=False,
            piecewise=self.piecewise,
            graph_outside_ops=self.graph_outside_ops,
        )
        stage = np.full(len(dag), -1, dtype=np.int64)
        for i, a in dag.distinct():
            if a["kind"] != NodeKind.MARKER and a["op"] != "token_send":
                stage[i] = a["stage"]
        stage = stage[dag.original_array]
        start, end = np.asarray(sim.start_s), np.asarray(sim.end_s)
        spans = []
        for s in range(self.pp):
            mine = stage == s
            spans.append(float(end[mine].max() - start[mine].min()))
        return sim.makespan_s, spans

    # ---------------------------------------------------------------- fast: trunk + attention + head

    def node_parts(self, shape: RaggedShape) -> tuple[float, float, float]:
        """(one full-attention layer's attention seconds on one GPU, one sliding-window layer's (0 when the model
        has none), the LM head's and sampling's seconds) of this shape."""
        phase = shape.phase
        eager = True if phase == "prefill" else self.decode_eager
        bld = self.builder
        bld.shape = shape
        hw, gpn, gated = self.hw, self.gpn, self.gated
        base = {"phase": phase, "step": 0 if phase == "prefill" else 1, "microbatch": 0}
        layer_s = [0.0, 0.0]
        for i, layer in enumerate(self.kind_layers):
            if layer is None:
                continue
            ctx = {**base, "layer": layer, "stage": 0}
            attention_s = 0.0
            if self.fast is not None:
                for t in self.fast.times(bld, eager, self.scenario.model.attention_window(layer)):
                    attention_s += t
            else:
                for a in attention_nodes_attrs(bld, ctx, self.gpu, self.attention_ops):
                    attention_s += node_time_s(a, hw, gpn, eager, gated)[0]
            layer_s[i] = attention_s
        return layer_s[0], layer_s[1], self.head_s(shape, base, eager)

    def head_s(self, shape: RaggedShape, base: dict, eager: bool) -> float:
        """The LM head's and sampling's seconds of this shape (0 without a vocabulary; base and eager: node_parts'
        context and launch mode, which follow from the phase), computed once per (phase, sequences): their nodes
        read nothing else of the shape."""
        key = (shape.phase, shape.sequences)
        head_s = self.heads.get(key)
        if head_s is None:
            head_s = 0.0
            if self.scenario.model.vocab_size:
                ctx = {**base, "layer": -1, "stage": self.pp - 1}
                outside = self.graph_outside_ops
                for a in self.builder.head_attrs(ctx, self.last_gpu, float(shape.sequences)):
                    head_s += node_time_s(a, self.hw, self.gpn, eager or a["op"] in outside, self.gated)[0]
            self.heads[key] = head_s
        return head_s

    def parts_list(self, shape: RaggedShape) -> list[float]:
        """What attention and head add to [latency, stage 0, .., stage pp-1]."""
        full_s, sliding_s, head_s = self.node_parts(shape)
        vec = [(self.total_layers - self.total_sliding) * full_s + self.total_sliding * sliding_s] + [
            (n - k) * full_s + k * sliding_s for n, k in zip(self.stage_layers, self.stage_sliding)
        ]
        vec[0] += head_s
        vec[-1] += head_s
        return vec

    def parts_vector(self, shape: RaggedShape) -> np.ndarray:
        return np.array(self.parts_list(shape))

    def timing(self, batch: Batch) -> IterationTiming:
        return self.shape_timing(ragged_shape(batch, self.window))

    def decode_timing(self, contexts: np.ndarray, pad_rows: int = 0) -> IterationTiming:
        """timing() of a pure decode batch given as its contexts (int64), plus pad_rows dummy rows (1, 0)."""
        return self.shape_timing(decode_shape(contexts, self.window, pad_rows))

    def decode_latency(self, contexts: np.ndarray) -> float:
        """__call__ of a pure decode batch given as its contexts (CachedPricer.price_run)."""
        return self.decode_timing(contexts).latency_s

    def shape_timing(self, shape: RaggedShape) -> IterationTiming:
        trunk = self.trunks[shape.phase].at(shape.new_tokens).tolist()
        parts = self.parts_list(shape)
        # trunk + parts element by element, as floats (the same sums as numpy's, without its per-call cost)
        period_s = max(t + p for t, p in zip(trunk[1:], parts[1:]))
        return IterationTiming(period_s, trunk[0] + parts[0])

    def __call__(self, batch: Batch) -> float:
        return self.timing(batch).latency_s

    def __repr__(self) -> str:
        outside = (
            f", {' and '.join(sorted(self.graph_outside_ops))} outside the graph" if self.graph_outside_ops else ""
        )
        return f"DagPricer({self.scenario.name}{', piecewise' if self.piecewise else ''}{outside})"


#: One attention node's (flops, bytes moved, q_len, calibration size, batch heads x KV length), the arguments of
#: _CalibratedAttention.seconds.
_AttentionKernel = tuple[float, float, int, float, float]


class _CalibratedAttention:
    """The attention nodes' seconds node_parts sums, for a calibrated profile and a model without MLA, computed
    from the same cost functions and the same steps as op_time.calibrated_node_s's flash-attention branch, in
    the same order, without building the nodes' attributes (graph.ragged.attention_nodes_attrs): the same
    floats (tests compare them with the attributes' path), several times faster. The softmax node is left out
    (its calibrated time is 0: inside the measured flash-attention rate)."""

    def __init__(self, builder: RaggedPassBuilder, hw: HardwareProfile) -> None:
        assert hw.calibration is not None
        f = builder.formats
        self.hl, self.kvl, self.dk = builder.heads_local, builder.kv_heads_local, builder.head_dim
        self.b_in, self.b, self.kv_b = f.attention_input_bytes, builder.bytes_per_element, builder.kv_bytes_per_element
        self.peak, self.hbm = hw.peak_for(f.attention), hw.hbm_bytes_per_s
        self.prefill_table, self.decode_table = hw.calibration.attention_prefill, hw.calibration.attention_decode
        self.floor_s, self.overhead_s = hw.calibration.eager_floor_s["attention"], hw.kernel_overhead_s
        self.table_peak = hw.peak_for(hw.calibration.gemm_format)

    @classmethod
    def of(cls, builder: RaggedPassBuilder, hw: HardwareProfile) -> _CalibratedAttention | None:
        if hw.calibration is None or builder.model.is_mla:
            return None
        return cls(builder, hw)

    def times(self, bld: RaggedPassBuilder, eager: bool, window: int | None = None) -> list[float]:
        """Node seconds in attention_nodes_attrs' order: scores (prefill part, decode part), then context, of a
        layer that attends to the last `window` positions (None: a full-attention layer)."""
        uniform = bld.uniform()
        if uniform is not None:
            scores, context = self.kernel(*uniform, window)
            return [self.seconds(*scores, 1, eager), self.seconds(*context, 0, eager)]
        s = bld.shape
        parts = []
        if s.prefill:
            parts.append(self.packed(s.prefill, window))
        if s.decode_seqs:
            kv_tokens = s.decode_kv_tokens if window is None else s.decode_window_kv_tokens
            parts.append(self.kernel(float(s.decode_seqs), 1, kv_tokens / s.decode_seqs, window))
        return [self.seconds(*part[0], 1, eager) for part in parts] + [
            self.seconds(*part[1], 0, eager) for part in parts
        ]

    def kernel(
        self, seqs: float, q_len: int, kv_len: float, window: int | None = None
    ) -> tuple[_AttentionKernel, _AttentionKernel]:
        """(flops, bytes moved, q_len, calibration size) of the scores and of the context node
        (graph.attention.attention_attrs, non-MLA; a sliding layer at costs.windowed_kv_len)."""
        hl, kvl, dk = self.hl, self.kvl, self.dk
        kv_len = costs.windowed_kv_len(q_len, kv_len, window)
        kv_bytes = seqs * kvl * kv_len * dk * self.kv_b
        size = seqs * hl * q_len * kv_len if q_len > 1 else 2 * kv_bytes
        work = seqs * hl * kv_len
        sc = costs.attention_scores_cost(seqs, hl, kvl, q_len, kv_len, dk, self.b_in, self.kv_b)
        cx = costs.attention_context_cost(seqs, hl, kvl, q_len, kv_len, dk, self.b, self.kv_b)
        return (
            (sc.flops, sc.bytes_read + sc.bytes_written, q_len, size, work),
            (cx.flops, cx.bytes_read + cx.bytes_written, q_len, size, work),
        )

    def packed(
        self, chunks: tuple[tuple[int, int], ...], window: int | None = None
    ) -> tuple[_AttentionKernel, _AttentionKernel]:
        """graph.ragged.packed_prefill_attrs: each chunk's FLOPs and bytes summed in order; the calibration size
        is the chunks' total work."""
        hl, kvl, dk = self.hl, self.kvl, self.dk
        work = 0.0
        totals: list[list[float]] = []
        for i, (q_len, full_kv_len) in enumerate(chunks):
            kv_len = costs.windowed_kv_len(q_len, full_kv_len, window)
            work += 1.0 * hl * q_len * kv_len
            sc = costs.attention_scores_cost(1.0, hl, kvl, q_len, kv_len, dk, self.b_in, self.kv_b)
            cx = costs.attention_context_cost(1.0, hl, kvl, q_len, kv_len, dk, self.b, self.kv_b)
            if i == 0:
                totals = [[c.flops, c.bytes_read, c.bytes_written] for c in (sc, cx)]
                continue
            for total, c in zip(totals, (sc, cx)):
                total[0] += c.flops
                total[1] += c.bytes_read
                total[2] += c.bytes_written
        q_total = sum(q for q, _ in chunks)
        size = float(hl) * q_total * (work / (hl * q_total))
        return (
            (totals[0][0], totals[0][1] + totals[0][2], q_total, size, work),
            (totals[1][0], totals[1][1] + totals[1][2], q_total, size, work),
        )

    def seconds(
        self, flops: float, bytes_moved: float, q_len: int, size: float, work: float, launches: int, eager: bool
    ) -> float:
        """op_time.calibrated_node_s's flash-attention branch (`work`: batch heads x KV length, a decode kernel's
        size in the prefill table)."""
        table = self.prefill_table if q_len > 1 else self.decode_table
        frac = series_interpolate(table, (self.dk,), size)
        compute_frac = None if q_len > 1 else series_interpolate(self.prefill_table, (self.dk,), work)
        time_s, bound = costs.calibrated_attention_s(flops, bytes_moved, q_len, self.peak, self.hbm, frac, compute_frac)
        if launches:
            time_s += attention_fixed_part_s(table, (self.dk,), size, q_len == 1, self.table_peak, self.hbm)
        return costs.eager_time_s(time_s, bound, launches, self.overhead_s, self.floor_s, eager)[0]


def reference_shape(phase: str, tokens: int, window: int | None = None) -> RaggedShape:
    """The batch whose exact pass gives the trunk at `tokens`: one prompt of that many tokens (prefill), or
    that many decode sequences at KV length 1 (decode); `window`: the model's sliding window."""
    if phase == "prefill":
        return ragged_shape(((tokens, 0),), window)
    return ragged_shape(((1, 0),) * tokens, window)


class _Trunk:
    """The trunk vector [latency, stage 0, ..] of one phase against new tokens: exact points, and cells between
    consecutive points whose linear interpolation was checked at the midpoint (DagPricer docstring)."""

    def __init__(self, pricer: DagPricer, phase: str) -> None:
        self.pricer = pricer
        self.phase = phase
        self.low = 2 if phase == "prefill" else 0
        self.points: list[int] = []
        self.values: dict[int, np.ndarray] = {}
        self.checked: set[int] = set()  # left ends of the cells whose interpolation was checked

    def exact(self, tokens: int) -> np.ndarray:
        value = self.values.get(tokens)
        if value is None:
            shape = reference_shape(self.phase, tokens, self.pricer.window)
            passes = self.pricer.passes
            found = passes.get((self.phase, tokens)) if passes is not None else None
            if found is None:
                found = self.pricer.simulate(shape)
                if passes is not None:
                    passes[(self.phase, tokens)] = found
            latency_s, spans = found
            value = self.values[tokens] = np.array([latency_s, *spans]) - self.pricer.parts_vector(shape)
            bisect.insort(self.points, tokens)
        return value

    def at(self, tokens: int) -> np.ndarray:
        value = self.values.get(tokens)
        if value is not None:
            self.pricer.grid_hits += 1
            return value
        if not self.points:
            self.exact(self.low)
        points = self.points
        i = bisect.bisect_left(points, tokens)
        if i == 0 or i == len(points):  # outside the points: grow them geometrically towards it
            edge = points[0] if i == 0 else points[-1]
            far = max(self.low, edge // 2) if i == 0 else max(2 * edge, edge + 1)
            step = far if (tokens < far if i == 0 else tokens > far) else tokens
            self.exact(step)
            return self.at(tokens)
        lo, hi = points[i - 1], points[i]
        if lo in self.checked:
            self.pricer.grid_hits += 1
            return self.interpolate(lo, hi, tokens)
        mid = (lo + hi) // 2
        if mid == lo:
            return self.exact(tokens)
        guess = self.interpolate(lo, hi, mid)
        truth = self.exact(mid)
        if np.all(np.abs(guess - truth) <= self.pricer.tolerance * np.abs(truth)):
            self.checked.update((lo, mid))
        return self.at(tokens)

    def interpolate(self, lo: int, hi: int, tokens: int) -> np.ndarray:
        w = (tokens - lo) / (hi - lo)
        return self.values[lo] * (1.0 - w) + self.values[hi] * w


def price_error(pricer: DagPricer, batches: Sequence[Batch]) -> float:
    """Largest relative difference of the fast price (period and latency) from the exact DAG pass's."""
    worst = 0.0
    for batch in batches:
        fast, exact = pricer.timing(batch), pricer.exact(batch)
        for f, e in zip(fast, exact):
            worst = max(worst, abs(f - e) / e)
    return worst
