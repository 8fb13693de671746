"""Serving cost stage, engine: one scheduler iteration as a serving engine runs it (config/engine.py's profile).

Around the GPU pass of the operator DAG an engine adds two things:

- CUDA-graph padding: a pure decode batch of n sequences replays the graph captured for the smallest size
  c >= n, so the GPU computes c rows; the c - n dummy rows are decode sequences with an empty KV cache (the
  engines point their slots at a dummy block: vLLM slot_mapping -1, SGLang seq_len fill value), priced here as
  SeqWork(1, 0). A batch larger than the largest captured size, a batch whose longest context exceeds the
  profile's max_context_tokens, and a batch with a prefill chunk run eagerly, unpadded; except that an engine
  capturing piecewise graphs (cuda_graph.mixed piecewise, vLLM V1) runs a batch with a prefill chunk of at most
  the largest captured size in tokens from them: its tokens padded up to the next captured size (the padding
  again as dummy rows SeqWork(1, 0)), attention, the LM head and sampling launched eagerly between the graphs.
  An engine that does not pad (cuda_graph.padding false: TensorRT-LLM's PyTorch backend by default) replays a
  decode batch only when its size is exactly a captured one, and runs the others eagerly.
- Host time per iteration: host_s = per_iteration_s + per_sequence_s x n. Serial engines wait for it between
  GPU passes (iteration = gpu_s + host_s); an overlapped scheduler prepares the next batch while the GPU runs
  (iteration = max(gpu_s, host_s)).

The GPU time comes from pricers of the same deployment: one whose decode passes replay CUDA graphs, one that
runs them eagerly (runtime.mode eager), both pricing prefill passes eagerly, and for a piecewise engine one
whose prefill passes replay all but attention, the LM head and sampling (DagPricer piecewise).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from simulator.config.engine import EngineProfile, HostTimeSpec
from simulator.serving.dag_pricer import IterationTiming
from simulator.serving.pricing import Batch, IterationPricer, SeqWork


class DecodePlan(NamedTuple):
    """How a batch runs: `graph` True when it replays a captured graph, with `padded_seqs` rows (n when eager)."""

    graph: bool
    padded_seqs: int


class Launch(NamedTuple):
    """How one iteration launches: kind 'graph' (a whole captured graph replayed; units: sequences), 'piecewise'
    (piecewise graphs with attention eager; units: new tokens) or 'eager' (units: new tokens), and the padding
    rows or tokens the GPU computes beyond the batch's own units."""

    kind: str
    units: int
    padding: int


def padded_size(sequences: int, capture_sizes: tuple[int, ...]) -> int | None:
    """The smallest captured size >= sequences, or None when the batch is larger than every captured size."""
    i = bisect.bisect_left(capture_sizes, sequences)
    return capture_sizes[i] if i < len(capture_sizes) else None


def decode_plan(
    batch: Batch, capture_sizes: tuple[int, ...], max_context_tokens: int | None, padding: bool = True
) -> DecodePlan:
    """Whether this batch replays a graph (a pure decode batch within the captured sizes and the context
    limit; without `padding`, only of exactly a captured size) and how many rows the GPU computes."""
    n = len(batch)
    if n == 0:  # the dummy pass of an idle replica in a lockstep group: a graph replay, nothing padded
        return DecodePlan(bool(capture_sizes), 0)
    top = max(batch)  # the most new tokens, then the longest context among those: one pass, no generator
    if top[0] != 1:
        return DecodePlan(False, n)
    return pure_decode_plan(n, top[1], capture_sizes, max_context_tokens, padding)


def pure_decode_plan(
    n: int, max_context: int, capture_sizes: tuple[int, ...], max_context_tokens: int | None, padding: bool = True
) -> DecodePlan:
    """decode_plan of a batch of n >= 1 decode sequences whose longest context is max_context."""
    if not capture_sizes:
        return DecodePlan(False, n)
    if max_context_tokens is not None and max_context + 1 > max_context_tokens:
        return DecodePlan(False, n)
    size = padded_size(n, capture_sizes)
    if size is None or (size != n and not padding):
        return DecodePlan(False, n)
    return DecodePlan(True, size)


def mixed_plan(batch: Batch, capture_sizes: tuple[int, ...]) -> int | None:
    """The tokens a batch with a prefill chunk is padded to when it replays piecewise graphs (the smallest
    captured size >= its new tokens), or None when it runs eagerly (no prefill chunk, or more tokens than the
    largest captured size)."""
    return mixed_padded_size(batch_tokens(batch), len(batch), capture_sizes)


def mixed_padded_size(tokens: int, sequences: int, capture_sizes: tuple[int, ...]) -> int | None:
    """mixed_plan of a batch of `sequences` sequences computing `tokens` tokens (each computes at least one, so
    tokens > sequences exactly when one is a prefill chunk)."""
    return padded_size(tokens, capture_sizes) if tokens > sequences else None


def batch_tokens(batch: Batch) -> int:
    """The tokens a batch computes (its sequences' new_tokens summed, at C speed: the hot loop)."""
    return sum(map(_NEW_TOKENS, batch))


def iteration_s(gpu_s: float, host: HostTimeSpec, sequences: int) -> float:
    """Wall time of one iteration: GPU pass plus host work, or the larger of the two when overlapped."""
    host_s = host.host_s(sequences)
    return max(gpu_s, host_s) if host.overlapped else gpu_s + host_s


def host_set_iteration(host: HostTimeSpec, sequences: int, iteration_s: float) -> bool:
    """Whether the host's work set (overlapped: it outlasted the GPU pass, so the iteration took it) or
    lengthened (serial: any host work) an iteration of `sequences` sequences that took `iteration_s`."""
    host_s = host.host_s(sequences)
    return host_s > 0.0 and (not host.overlapped or host_s >= iteration_s)


def _pass_timing(pricer: IterationPricer, batch: Batch) -> IterationTiming:
    """(period, latency) of one pass of `batch` by `pricer`: its timing() where it has one, else its one figure."""
    timing = getattr(pricer, "timing", None)
    if timing is not None:
        period_s, latency_s = timing(batch)
        return IterationTiming(float(period_s), float(latency_s))
    t = float(pricer(batch))
    return IterationTiming(t, t)


_PAD = SeqWork(1, 0)  # a dummy decode row: one token, nothing cached
_NEW_TOKENS = itemgetter(0)  # SeqWork.new_tokens


class EnginePricer:
    """IterationPricer of a deployment served by an engine profile (module docstring).

    graph_pricer prices decode batches replayed from CUDA graphs, the pricer make_eager() builds (on first use:
    a deployment whose decode batches all fit the graphs never needs it) everything else; both price prefill
    eagerly, and either may offer `timing(batch)` (period, latency) as DagPricer does. capture_sizes: the sorted
    sizes captured for the scheduler (empty: the engine replays no graphs). make_piecewise (a piecewise engine
    only) builds, on first use, the pricer of batches with a prefill chunk within the captured sizes."""

    def __init__(
        self,
        profile: EngineProfile,
        graph_pricer: IterationPricer | None,
        make_eager: Callable[[], IterationPricer],
        capture_sizes: tuple[int, ...],
        make_piecewise: Callable[[], IterationPricer] | None = None,
    ) -> None:
        if capture_sizes and graph_pricer is None:
            raise ValueError("capture_sizes given but no graph_pricer to price the replayed graphs")
        self.profile = profile
        self.graph_pricer = graph_pricer
        self.make_eager = make_eager
        self._eager: IterationPricer | None = None
        self.make_piecewise = make_piecewise
        self._piecewise: IterationPricer | None = None
        self.capture_sizes = tuple(sorted(capture_sizes))
        self.max_context_tokens = profile.cuda_graph.max_context_tokens if profile.cuda_graph else None
        self.padding = profile.cuda_graph.padding if profile.cuda_graph else True
        self._decode_launches: dict[tuple[int, bool], Launch] = {}  # launch_decode's, by (size, beyond the limit)

    @property
    def eager_pricer(self) -> IterationPricer:
        if self._eager is None:
            self._eager = self.make_eager()
        return self._eager

    def plan(self, batch: Batch) -> DecodePlan:
        return decode_plan(batch, self.capture_sizes, self.max_context_tokens, self.padding)

    @property
    def piecewise_pricer(self) -> IterationPricer:
        assert self.make_piecewise is not None
        if self._piecewise is None:
            self._piecewise = self.make_piecewise()
        return self._piecewise

    def launch_decode(self, n: int, max_context: int) -> Launch:
        """launch() of a batch of n decode sequences (n = 0: an idle replica's dummy pass) whose longest context
        is max_context, without the batch: a decode run's iteration (no prefill chunk: never piecewise)."""
        limit = self.max_context_tokens
        key = (n, limit is not None and max_context + 1 > limit)  # all the plan reads of the contexts
        launch = self._decode_launches.get(key)
        if launch is None:
            if n == 0:
                launch = Launch("graph", 0, 0) if self.capture_sizes else Launch("eager", 0, 0)
            else:
                plan = pure_decode_plan(n, max_context, self.capture_sizes, limit, self.padding)
                launch = Launch("graph", n, plan.padded_seqs - n) if plan.graph else Launch("eager", n, 0)
            self._decode_launches[key] = launch
        return launch

    def launch(self, batch: Batch) -> Launch:
        """How the engine launches this batch (decode_plan, then mixed_plan for a piecewise engine)."""
        plan = self.plan(batch)
        if plan.graph:
            return Launch("graph", len(batch), plan.padded_seqs - len(batch))
        tokens = batch_tokens(batch)
        if self.make_piecewise is not None and (
            (padded := mixed_padded_size(tokens, len(batch), self.capture_sizes)) is not None
        ):
            return Launch("piecewise", tokens, padded - tokens)
        return Launch("eager", tokens, 0)

    def gpu_timing(self, batch: Batch) -> IterationTiming:
        """The GPU pass alone: padded and replayed (whole, or piecewise), or eager."""
        kind, _, pad = self.launch(batch)
        if kind == "graph":
            pricer, priced = self.graph_pricer, batch + (_PAD,) * pad
        elif kind == "piecewise":
            pricer, priced = self.piecewise_pricer, batch + (_PAD,) * pad
        else:
            pricer, priced = self.eager_pricer, batch
        assert pricer is not None
        return _pass_timing(pricer, priced)

    def decode_timing(self, contexts: np.ndarray) -> IterationTiming:
        """timing() of a pure decode batch given as its contexts (int64; empty: an idle replica's dummy pass),
        without building it where the pricers take contexts (DagPricer.decode_timing)."""
        n = len(contexts)
        kind, _, pad = self.launch_decode(n, int(contexts.max()) if n else -1)
        pricer = self.graph_pricer if kind == "graph" else self.eager_pricer
        assert pricer is not None
        decode = getattr(pricer, "decode_timing", None)
        if decode is not None:
            gpu = decode(contexts, pad)
        else:
            gpu = _pass_timing(pricer, tuple(SeqWork(1, c) for c in contexts.tolist()) + (_PAD,) * pad)
        return self.with_host(gpu, n)

    def decode_latency(self, contexts: np.ndarray) -> float:
        """__call__ of a pure decode batch given as its contexts (CachedPricer.price_run)."""
        return self.decode_timing(contexts).latency_s

    def timing(self, batch: Batch) -> IterationTiming:
        return self.with_host(self.gpu_timing(batch), len(batch))

    def with_host(self, gpu: IterationTiming, sequences: int) -> IterationTiming:
        """An iteration of `sequences` sequences whose GPU pass takes `gpu`, with the engine's host work."""
        host = self.profile.host
        return IterationTiming(iteration_s(gpu.period_s, host, sequences), iteration_s(gpu.latency_s, host, sequences))

    def __call__(self, batch: Batch) -> float:
        return self.timing(batch).latency_s

    @property
    def host_spec(self) -> HostTimeSpec:
        """The engine's host time per iteration (its profile's)."""
        return self.profile.host

    def launches_text(self) -> str:
        """How iterations are launched, for reports: 'decode batches replayed from CUDA graphs at 51 sizes (1 to
        512), batches with a prefill chunk of up to 512 tokens from piecewise graphs, the rest eager'."""
        sizes = self.capture_sizes
        if not sizes:
            return "every iteration launched eagerly"
        text = f"decode batches replayed from CUDA graphs at {len(sizes)} sizes ({sizes[0]} to {sizes[-1]})"
        if not self.padding:
            text += " when of exactly such a size (no padding)"
        if self.max_context_tokens is not None:
            text += f" up to {self.max_context_tokens} tokens of context"
        if self.make_piecewise is not None:
            text += f", batches with a prefill chunk of up to {sizes[-1]} tokens from piecewise graphs"
        return text + ", the rest eager"

    def __repr__(self) -> str:
        inner = self.graph_pricer if self.graph_pricer is not None else self.eager_pricer
        return f"EnginePricer({self.profile.name} {self.profile.version}: {self.launches_text()}; {inner!r})"
