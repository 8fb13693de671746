"""Graph stage, passes: the prefill of every microbatch and the decode steps, assembled from layers,
with the input, the pipeline-stage transfers and the output token; `build` makes the whole DAG.

Token flow per layer: column-parallel Q/K/V, row-parallel output projection, TP all-reduce; each TP
rank then routes its own 1/tp slice of the tokens; all-to-all dispatch sends every token copy to the
rank holding its expert; experts run; all-to-all combine brings results back; TP all-gather restores
full activations for the next layer. No hardware figures here.
"""

from __future__ import annotations

import networkx as nx

from simulator import costs
from simulator.config import Scenario
from simulator.graph.blocks import as_list, dim
from simulator.graph.dag import COMPUTE, MARKER, ROUTING, Dag
from simulator.graph.layers import LayerBuilder


class PassBuilder(LayerBuilder):
    """Adds whole passes (build_pass): one prefill of a microbatch, or one decode step of it."""

    # -- one pass (prefill of a microbatch, or one decode step of it) -------------------------
    def build_pass(self, phase: str, step: int, mb: int, start_deps: list[str]) -> str:
        """Add every node of one pass; return its token marker (the pass's sink)."""
        scenario, pl = self.scenario, self.pl
        seqs = scenario.workload.batch_size / (pl.dp * scenario.parallel.microbatches)  # sequences per dp rank
        q_len = scenario.workload.input_len_tokens if phase == "prefill" else 1
        kv_len = scenario.workload.input_len_tokens + (0 if phase == "prefill" else step)
        return self.assemble_pass(phase, step, mb, start_deps, seqs, q_len, kv_len, seqs)

    def assemble_pass(
        self,
        phase: str,
        step: int,
        mb: int,
        start_deps: list[str],
        seqs: float,
        q_len: int,
        kv_len: float,
        sampled_seqs: float,
    ) -> str:
        """One pass of `seqs` x `q_len` tokens per dp rank attending to `kv_len` positions, of which
        `sampled_seqs` sequences get a token from the LM head; returns its token marker."""
        pl = self.pl
        tag = f"{'p' if phase == 'prefill' else 'd' + str(step)}.mb{mb}"
        base_ctx = {"phase": phase, "step": step, "microbatch": mb}
        tokens = seqs * q_len

        ready = self.entry(tag, base_ctx, phase, start_deps, tokens if phase == "prefill" else seqs)

        for stage, layers in enumerate(pl.stage_layers):
            if stage > 0:
                ready = self.stage_transfer(tag, base_ctx, stage - 1, stage, ready, tokens, layers[0] - 1)
            for layer in layers:
                last = layer == layers[-1]
                gather = not last or (stage == pl.pp - 1 and (self.model.vocab_size > 0 or pl.pp == 1))
                ready = self.layer_reused(
                    tag, {**base_ctx, "layer": layer, "stage": stage}, ready, seqs, q_len, kv_len, gather
                )

        # The last stage produces the token.
        last_stage = pl.pp - 1
        finals = []
        for g in self.stage_on[last_stage]:
            deps = as_list(ready[g])
            if self.model.vocab_size:
                ctx = {**base_ctx, "layer": -1, "stage": last_stage}
                lm_head, sample = self.head_attrs(ctx, g, sampled_seqs)
                head = self.add(f"{tag}.g{g}.lm_head", deps, **lm_head)
                deps = [self.add(f"{tag}.g{g}.sample", [head], **sample)]
            finals.extend(deps)
        return self.add(
            f"{tag}.token",
            finals,
            op="token",
            **NO_WORK_ATTRS,
            **base_ctx,
            layer=-1,
            stage=last_stage,
        )

    def head_attrs(self, ctx: dict, g: int, seqs: float) -> tuple[dict, dict]:
        """The LM head and sampling nodes' attributes: the last position of each of `seqs` sequences
        [seqs, hidden] x [hidden, vocab/tp], then sampling over [seqs, vocab/tp]."""
        hidden, bytes_per_element = self.hidden, self.bytes_per_element
        v_local = self.model.vocab_size / self.pl.tp
        fmt = self.formats.lm_head
        weight_b = fmt.weight_bytes
        lm_head = self.compute_attrs(
            "lm_head",
            "embed_head",
            ctx,
            g,
            costs.linear_cost(seqs, hidden, v_local, bytes_per_element, weight_b, 1, fmt.input_bytes),
            (dim(seqs), hidden),
            (dim(seqs), dim(v_local)),
            True,
            1,
            COMPUTE,
            hidden * v_local * weight_b,
            gemm=(seqs, hidden, v_local),
            **self.gemm_attrs("lm_head"),
        )
        cost = costs.elementwise_cost(seqs * v_local, seqs, 2.0, bytes_per_element)
        sample = self.compute_attrs(
            "sample", "embed_head", ctx, g, cost, (dim(seqs), dim(v_local)), (dim(seqs),), kind=ROUTING
        )
        return lm_head, sample

    def entry(self, tag: str, base_ctx: dict, phase: str, deps: list[str], tokens: float) -> dict[int, list[str]]:
        """What each first-stage GPU waits for before layer 0: the input (prefill) or the previous
        token (decode). With pp > 1 a decode token travels back from the last stage: as token ids
        when the model has a vocabulary, else as hidden-state slices (all-gathered at stage 0)."""
        pl, hidden, bytes_per_element = self.pl, self.hidden, self.bytes_per_element
        first = self.stage_on[0]
        if phase == "decode" and pl.pp > 1:
            if not self.model.vocab_size:
                ready = {g: deps for g in pl.stage_gpus(pl.pp - 1)}
                return self.stage_transfer(tag, base_ctx, pl.pp - 1, 0, ready, tokens, -1, op="token_send")
            sent = {}
            for _, _group, mine in self.tp_groups_on[0]:
                for dst in mine:
                    src = pl.in_stage(dst, pl.pp - 1)
                    nbytes = tokens * 4.0  # int32 token ids
                    ctx = {**base_ctx, "layer": -1, "stage": pl.pp - 1}
                    sent[dst] = [
                        self.collective(
                            f"{tag}.g{src}-g{dst}.token_send",
                            deps,
                            "token_send",
                            "pp_comm",
                            ctx,
                            (src, dst),
                            "send_recv",
                            (nbytes, 0.0),
                            (0.0, nbytes),
                            nbytes,
                            (dim(tokens),),
                            "pp",
                        )
                    ]
        else:
            sent = {g: deps for g in first}
        if not self.model.vocab_size:
            return sent
        ctx = {**base_ctx, "layer": -1, "stage": 0}
        cost = costs.elementwise_cost(
            tokens * hidden, tokens * hidden, 0.0, bytes_per_element
        )  # gather rows of the embedding table
        return {
            g: [
                self.compute(
                    f"{tag}.g{g}.embed",
                    sent[g],
                    "embed",
                    "embed_head",
                    ctx,
                    g,
                    cost,
                    (dim(tokens),),
                    (dim(tokens), hidden),
                )
            ]
            for g in first
        }

    def stage_transfer(self, tag, base_ctx, src_stage, dst_stage, ready, tokens, layer, op="pp_send"):
        """Each rank sends its 1/tp slice of the activations to the same rank of the next stage,
        which all-gathers them over its TP group (no token is sent twice)."""
        pl, hidden = self.pl, self.hidden
        out: dict[int, str] = {}
        slice_tokens = tokens / pl.tp
        nbytes = slice_tokens * hidden * self.payload_bytes_per_element
        for d, group, mine in self.tp_groups_on[dst_stage]:
            sent = []
            for dst in mine:
                src = pl.in_stage(dst, src_stage)
                ctx = {**base_ctx, "layer": layer, "stage": src_stage}
                sent.append(
                    self.collective(
                        f"{tag}.g{src}-g{dst}.{op}",
                        as_list(ready[src]),
                        op,
                        "pp_comm",
                        ctx,
                        (src, dst),
                        "send_recv",
                        (nbytes, 0.0),
                        (0.0, nbytes),
                        nbytes,
                        (dim(slice_tokens), hidden),
                        "pp",
                    )
                )
            if pl.tp > 1:
                ctx = {**base_ctx, "layer": layer, "stage": dst_stage}
                gathered = self.allgather(f"{tag}.s{dst_stage}d{d}.L{layer}.stage_allgather", sent, ctx, group, tokens)
                for g in mine:
                    out[g] = gathered
            else:
                out[group[0]] = sent[0]
        return out


#: Attributes of the marker nodes: no GPU, no work (pass tokens, phase starts and ends).
NO_WORK_ATTRS = dict(
    kind=MARKER,
    category="marker",
    gpu=None,
    flops=0.0,
    bytes_read=0.0,
    bytes_written=0.0,
    in_shape=(),
    out_shape=(),
)
#: A phase start/end marker's; each adds op, phase and step.
PHASE_MARKER_ATTRS = dict(NO_WORK_ATTRS, layer=-1, stage=-1, microbatch=-1)


def sampled_decode_steps(total_steps: int, samples: int, warmup_steps: int = 2) -> list[int]:
    """The first `warmup_steps` decode steps, then about `samples` more evenly spread, the last included.

    The first steps are transients (they wait for the prefill of other microbatches and the
    pipeline refills); from then on a step's time changes smoothly with its KV length, so the
    steps between samples can be interpolated (metrics.decode_step_weights)."""
    if samples <= 0 or samples + warmup_steps >= total_steps:
        return list(range(1, total_steps + 1))
    first = warmup_steps + 1
    spread = max(samples, 2)
    return sorted(
        set(range(1, first)) | {round(first + i * (total_steps - first) / (spread - 1)) for i in range(spread)}
    )


def build(scenario: Scenario, decode_steps: list[int] | None = None, keep: frozenset[int] | None = None) -> Dag:
    """The operator DAG: prefill of every microbatch, then the decode steps.

    Prefill produces the first output token; decode steps t = 1 .. output_len-1 produce the rest,
    attending to input_len + t cached positions. Zero-cost marker nodes open and close each phase.
    `decode_steps` builds only those steps (chained in order; see sampled_decode_steps), for
    sweeps where the step time is interpolated between them; the graph records which steps it holds.
    `keep` (symmetric_representatives) builds only those GPUs' nodes; collectives keep their
    whole groups, so their costs are unchanged. `build_dag` gives the same as a networkx graph.
    """
    bld = PassBuilder(scenario, keep)
    m_count = scenario.parallel.microbatches
    marker = PHASE_MARKER_ATTRS
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
    info = dict(
        scenario=scenario.name,
        num_gpus=bld.pl.num_gpus,
        decode_steps=list(steps),
        total_decode_steps=total_steps,
        representatives=sorted(keep) if keep else None,
    )
    return Dag(bld.names, bld.attrs, bld.twins, bld.copies, bld.src, bld.dst, info, bld.node_step)


def build_dag(
    scenario: Scenario, decode_steps: list[int] | None = None, keep: frozenset[int] | None = None
) -> nx.DiGraph:
    """`build` as a networkx DiGraph (node ids are the names, attributes the node dicts)."""
    return build(scenario, decode_steps, keep).to_networkx()
