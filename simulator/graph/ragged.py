"""Graph stage, ragged batches: ONE forward pass of one replica over a serving iteration's ragged batch
(prefill chunks with their cached context, decode sequences with their own KV lengths).

Every GEMM, norm, the router, the MoE and every collective are built by the same layer code as `build`'s
passes, over the iteration's total new tokens per dp rank (each dp rank of the replica's EP group is given
the same batch). Attention is the only part that sees the sequences one by one: a layer runs at most two
flash-attention kernels per GPU (as varlen serving kernels do), each described by the usual three nodes
(scores, softmax, context):

    prefill part  the sequences with new_tokens > 1, packed into one varlen kernel: FLOPs and bytes are the
                  sums of each sequence's own (causal over its q_len new tokens, attending to context +
                  q_len positions); its calibration size is their total work
    decode part   the sequences with one new token: one kernel whose FLOPs and bytes are linear in the
                  sum of their KV lengths, so (count, 1, mean KV length) gives them exactly; in a
                  sliding-window layer the sum of each one's min(KV length, window) (the shape's window sum)

A batch of identical sequences (a static batch) builds exactly the nodes `build` makes for that pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from simulator.config import Scenario
from simulator.graph.attention import MLA_SPLIT_OPS
from simulator.graph.blocks import dim
from simulator.graph.dag import Dag
from simulator.graph.passes import PHASE_MARKER_ATTRS, PassBuilder


class RaggedShape(NamedTuple):
    """What one iteration's batch means to the graph (per dp rank of the replica).

    new_tokens: tokens computed (GEMM rows); sequences: sequences in it (rows of the LM head);
    prefill: ((q_len, kv_len), ...) of the sequences with q_len > 1, sorted; decode_seqs and
    decode_kv_tokens: the count of one-token sequences and the sum of their KV lengths; window: the model's
    sliding window the shape was made for (None: none) and decode_window_kv_tokens the sum of the one-token
    sequences' min(KV length, window), what a sliding-window layer's decode kernel reads."""

    new_tokens: int
    sequences: int
    prefill: tuple[tuple[int, int], ...]
    decode_seqs: int
    decode_kv_tokens: int
    window: int | None = None
    decode_window_kv_tokens: int = 0

    @property
    def phase(self) -> str:
        """prefill when any sequence computes more than one token (runs eagerly), else decode."""
        return "prefill" if self.prefill else "decode"


def ragged_shape(batch: Iterable[tuple[int, int]], window: int | None = None) -> RaggedShape:
    """The shape of a batch of (new_tokens, context_tokens) pairs: each sequence computes new_tokens
    tokens attending to context_tokens cached ones plus its new ones (causally). `window`: the model's
    sliding window (ModelSpec.sliding_window), whose decode sum the shape then carries."""
    prefill = []
    new_tokens = sequences = decode_seqs = decode_kv = decode_window_kv = 0
    for new, context in batch:
        new_tokens += new
        sequences += 1
        if new == 1:
            decode_seqs += 1
            decode_kv += context + 1
            if window is not None:
                decode_window_kv += min(context + 1, window)
        else:
            prefill.append((new, context + new))
    if window is None:
        decode_window_kv = decode_kv
    return RaggedShape(new_tokens, sequences, tuple(sorted(prefill)), decode_seqs, decode_kv, window, decode_window_kv)


def decode_shape(contexts: np.ndarray, window: int | None = None, pad_rows: int = 0) -> RaggedShape:
    """ragged_shape of a pure decode batch given as its contexts (an int64 array), plus `pad_rows` dummy rows
    (1, 0): a CUDA graph's padding. The same shape, from array sums instead of a loop over the sequences."""
    rows = len(contexts) + pad_rows
    decode_kv = int(contexts.sum()) + rows  # each row attends to its context plus its new token
    window_kv = decode_kv
    if window is not None:
        window_kv = int(np.minimum(contexts + 1, window).sum()) + pad_rows * min(1, window)
    return RaggedShape(rows, rows, (), rows, decode_kv, window, window_kv)


class RaggedPassBuilder(PassBuilder):
    """A PassBuilder whose attention nodes follow a RaggedShape (see the module docstring)."""

    def __init__(self, scenario: Scenario, shape: RaggedShape, keep: frozenset[int] | None = None):
        super().__init__(scenario, keep)
        self.shape = shape

    @property
    def shape(self) -> RaggedShape:
        return self._shape

    @shape.setter
    def shape(self, shape: RaggedShape) -> None:
        window = self.model.sliding_window
        if shape.decode_seqs and shape.window != window:  # its window sum would be another window's
            raise ValueError(
                f"a ragged shape made for sliding window {shape.window} given to a model whose window is {window}: "
                "make it with ragged_shape(batch, model.sliding_window)"
            )
        self._shape = shape

    def uniform(self) -> tuple[float, int, float] | None:
        """(seqs, q_len, kv_len) when every sequence is alike (build's passes), else None. A decode batch whose
        KV lengths sum to a multiple of its count counts as alike when the mean gives every layer's kernel
        exactly: full layers are linear in the sum, and sliding ones need the window sum to be count x
        min(mean, window)."""
        s = self.shape
        if s.prefill and not s.decode_seqs and s.prefill[0] == s.prefill[-1]:
            return float(len(s.prefill)), s.prefill[0][0], s.prefill[0][1]
        n = max(s.decode_seqs, 1)
        if not s.prefill and s.decode_kv_tokens % n == 0:
            # (an empty batch: the dummy iteration of an idle replica in a lockstep EP group, zero rows)
            mean = s.decode_kv_tokens // n
            if s.window is None or s.decode_window_kv_tokens == s.decode_seqs * min(mean, s.window):
                return float(s.decode_seqs), 1, mean
        return None

    def pass_dims(self) -> tuple[float, int, float]:
        """(seqs, q_len, kv_len) the layers are built with: the uniform batch's own, else the packed prefill's
        one row of all new tokens (as varlen kernels see them) or the decode sequences (attention and the MLA
        split follow the shape itself)."""
        uniform = self.uniform()
        if uniform is not None:
            return uniform
        if self.shape.phase == "prefill":
            return 1.0, self.shape.new_tokens, 0
        return float(self.shape.decode_seqs), 1, 0

    def mla_rows(self, seqs, q_len, kv_len) -> tuple[float, float]:
        """A ragged batch's MLA split: its prefill chunks up-project every position they attend to (when
        decompressed), its decode sequences (and absorbed prefill chunks) run absorbed."""
        if self.uniform() is not None:
            return super().mla_rows(seqs, q_len, kv_len)
        s = self.shape
        decompressed = self.scenario.runtime.mla_prefill == "decompressed"
        prefill_rows = float(sum(kv for _, kv in s.prefill) if decompressed else sum(q for q, _ in s.prefill))
        return (prefill_rows, float(s.decode_seqs)) if decompressed else (0.0, prefill_rows + s.decode_seqs)

    def attention_node(self, nid, deps, op, ctx, g, seqs, q_len, kv_len) -> str:
        if self.uniform() is not None:
            return super().attention_node(nid, deps, op, ctx, g, seqs, q_len, kv_len)
        parts = self.attention_part_attrs(op, ctx, g)
        for i, attrs in enumerate(parts):
            nid = self.add(nid if i == 0 else f"{nid}.decode", deps, **attrs)
            deps = [nid]
        return nid

    def attention_part_attrs(self, op: str, ctx: dict, g: int) -> list[dict]:
        """The attributes of one attention op's nodes: the prefill part's, then the decode part's."""
        s = self.shape
        out = []
        if s.prefill:
            out.append(self.packed_prefill_attrs(op, ctx, g, s.prefill))
        if s.decode_seqs:
            # a sliding layer's mean of min(KV, window), which attention_attrs' own min leaves as it is
            kv_tokens = (
                s.decode_kv_tokens if self.model.attention_window(ctx["layer"]) is None else s.decode_window_kv_tokens
            )
            out.append(self.attention_attrs(op, ctx, g, float(s.decode_seqs), 1, kv_tokens / s.decode_seqs))
        return out

    def packed_prefill_attrs(self, op: str, ctx: dict, g: int, parts: tuple[tuple[int, int], ...]) -> dict:
        """One varlen kernel over several prefill chunks: each chunk's attributes summed (FLOPs, bytes,
        KV bytes); shown as one packed sequence of all their queries (batch_heads = local heads) whose
        kv_len makes batch_heads * q_len * kv_len the chunks' total work (the calibration's size)."""
        summed: dict | None = None
        work = 0.0
        for q_len, kv_len in parts:
            a = self.attention_attrs(op, ctx, g, 1.0, q_len, kv_len)
            work += a["batch_heads"] * q_len * a["kv_len"]  # a sliding layer's equivalent length
            if summed is None:
                summed = dict(a)
                continue
            for key in ("flops", "bytes_read", "bytes_written", "act_bytes", "kv_bytes_total"):
                summed[key] += a[key]
        assert summed is not None
        q_total = sum(q for q, _ in parts)
        hl = self.heads_local
        kv_mean = work / (hl * q_total)
        summed.update(q_len=q_total, kv_len=kv_mean, batch_heads=float(hl))
        summed["in_shape"] = summed["out_shape"] = (1, hl, q_total, dim(kv_mean))
        return summed


def build_forward(scenario: Scenario, shape: RaggedShape, keep: frozenset[int] | None = None) -> Dag:
    """One forward pass of one replica (every dp rank given the same batch) over a ragged batch.

    GEMMs, norms, the MoE and the collectives see `shape.new_tokens` tokens per dp rank; the LM head one
    row per sequence; a decode pass (no prefill part) starts from the previous token, which with pp > 1
    travels back from the last stage. A uniform batch gives `build`'s pass for it, node for node.
    `keep` folds the graph onto symmetric representatives, as in `build`.
    """
    bld = RaggedPassBuilder(scenario, shape, keep)
    phase = shape.phase
    seqs, q_len, kv_len = bld.pass_dims()
    step = 0 if phase == "prefill" else 1
    marker = PHASE_MARKER_ATTRS
    bld.add(f"{phase}.start", [], op="phase_start", phase=phase, step=step, **marker)
    token = bld.assemble_pass(phase, step, 0, [f"{phase}.start"], seqs, q_len, kv_len, float(shape.sequences))
    bld.add(f"{phase}.end", [token], op="phase_end", phase=phase, step=step, **marker)
    info = dict(
        scenario=scenario.name,
        num_gpus=bld.pl.num_gpus,
        decode_steps=[step] if step else [],
        total_decode_steps=step,
        representatives=sorted(keep) if keep else None,
    )
    return Dag(bld.names, bld.attrs, bld.twins, bld.copies, bld.src, bld.dst, info, bld.node_step)


#: The nodes one flash-attention kernel is described by.
ATTENTION_OPS = ("attn_scores", "attn_softmax", "attn_context")

#: The nodes a piecewise CUDA-graph pass launches eagerly (vLLM V1's PIECEWISE mode): what runs inside the
#: engine's attention op, which torch.compile splits the graphs at (vLLM's unified_attention: the attention
#: kernel and, with MLA, the up-projections inside MLACommonImpl.forward), and the LM head and sampling, which
#: the model runner calls outside the captured forward. Exactly the nodes DagPricer.node_parts prices apart.
PIECEWISE_EAGER_OPS = frozenset(ATTENTION_OPS + MLA_SPLIT_OPS + ("lm_head", "sample"))


def attention_nodes_attrs(
    builder: RaggedPassBuilder, ctx: dict, g: int, ops: tuple[str, ...] = ATTENTION_OPS
) -> list[dict]:
    """Every attention node one layer on GPU g holds for the builder's shape (scores, softmax, context of each
    part; `ops`: only those), and with MLA the nodes whose rows depend on the batch's split of prefill and decode
    (kv_b_proj, k_rope_concat, q_absorb, v_up), with the attributes `build_forward` gives them: what a pricer times
    without building the pass."""
    uniform = builder.uniform()
    out = []
    for op in ops:
        if uniform is not None:
            out.append(builder.attention_attrs(op, ctx, g, *uniform))
        else:
            out.extend(builder.attention_part_attrs(op, ctx, g))
    if builder.model.is_mla:
        out.extend(builder.mla_parts_attrs(ctx, g, *builder.pass_dims()))
    return out


__all__ = [
    "ATTENTION_OPS",
    "PIECEWISE_EAGER_OPS",
    "RaggedPassBuilder",
    "RaggedShape",
    "attention_nodes_attrs",
    "build_forward",
    "ragged_shape",
]
