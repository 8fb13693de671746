"""Graph stage: the operator DAG of prefill and decode, placed on GPUs and annotated with FLOPs and bytes.

Layout semantics (README, "Parallel semantics"): gpu = stage * (dp*tp) + dp_rank * tp + tp_rank;
experts are split over ep ranks (x etp shards) folded onto the dp*tp GPUs of each stage, replicated
over the quotient. Token flow per layer: column-parallel Q/K/V, row-parallel output projection,
TP all-reduce; each TP rank then routes its own 1/tp slice of the tokens; all-to-all dispatch sends
every token copy to the rank holding its expert; experts run; all-to-all combine brings results
back; TP all-gather restores full activations for the next layer. No hardware figures here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import networkx as nx

from simulator import costs
from simulator.config import Scenario

COMPUTE, COMM, ROUTING, MARKER = "compute", "communication", "routing", "marker"


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


def routing_loads(scenario: Scenario) -> list[float]:
    """Fraction of token copies sent to each expert. Uniform routing (expected values)."""
    n = scenario.model.num_experts
    return [1.0 / n] * n if n else []


def _dim(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(float(x), 2)


class _Builder:
    """Accumulates nodes and edges as plain lists, then makes one networkx graph."""

    def __init__(self, scenario: Scenario):
        self.s = scenario
        self.m = scenario.model
        self.pl = Placement.of(scenario)
        self.b = self.m.dtype_bytes
        self.loads = routing_loads(scenario)
        self.nodes: list[tuple[str, dict]] = []
        self.edges: list[tuple[str, str]] = []
        m, tp = self.m, self.pl.tp
        self.heads_local = m.num_heads // tp
        # KV heads split over tp, or replicated when there are fewer KV heads than TP ranks.
        self.kv_heads_local = max(1, m.kv_heads // tp)
        self.hd = m.head_size
        self.h = m.hidden_size

    # -- primitive adders ------------------------------------------------------------------
    def add(self, nid: str, deps, **attrs) -> str:
        self.nodes.append((nid, attrs))
        for d in deps:
            self.edges.append((d, nid))
        return nid

    def compute(self, nid, deps, op, category, ctx, gpu, cost: costs.OpCost, in_shape, out_shape,
                tensor_core=False, launches=1, kind=COMPUTE, resident_bytes=0.0, **extra) -> str:
        """A kernel on one GPU. `resident_bytes`: what it reads from weights or the KV cache, so
        that act_bytes (transient activations in + out) excludes them."""
        return self.add(
            nid, deps, op=op, kind=kind, category=category, gpu=gpu, flops=cost.flops,
            bytes_read=cost.bytes_read, bytes_written=cost.bytes_written,
            act_bytes=cost.bytes_read + cost.bytes_written - resident_bytes, in_shape=in_shape,
            out_shape=out_shape, tensor_core=tensor_core, launches=launches, dtype=self.m.dtype,
            **ctx, **extra,
        )

    def linear(self, nid, deps, op, category, ctx, gpu, tokens, k, n, in_shape, out_shape, kind=COMPUTE) -> str:
        """A GEMM against a [k, n] weight."""
        return self.compute(nid, deps, op, category, ctx, gpu, costs.linear_cost(tokens, k, n, self.b), in_shape,
                            out_shape, tensor_core=True, kind=kind, resident_bytes=k * n * self.b, gemm=(tokens, k, n))

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
                ready = self._layer(tag, {**base_ctx, "layer": layer, "stage": stage}, ready, seqs, q_len,
                                    kv_len, gather)

        # The last stage produces the token.
        last_stage = pl.pp - 1
        finals = []
        for g in pl.stage_gpus(last_stage):
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
        first = pl.stage_gpus(0)
        if phase == "decode" and pl.pp > 1:
            if not self.m.vocab_size:
                ready = {g: deps for g in pl.stage_gpus(pl.pp - 1)}
                return self._stage_transfer(tag, base_ctx, pl.pp - 1, 0, ready, tokens, -1, op="token_send")
            sent = {}
            for d in range(pl.dp):
                for t in range(pl.tp):
                    src, dst = pl.gpu(pl.pp - 1, d, t), pl.gpu(0, d, t)
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
        for d in range(pl.dp):
            sent = []
            for t in range(pl.tp):
                src, dst = pl.gpu(src_stage, d, t), pl.gpu(dst_stage, d, t)
                ctx = {**base_ctx, "layer": layer, "stage": src_stage}
                sent.append(self.collective(f"{tag}.g{src}-g{dst}.{op}", _as_list(ready[src]), op, "pp_comm", ctx,
                                            (src, dst), "send_recv", (nbytes, 0.0), (0.0, nbytes), nbytes,
                                            (_dim(slice_tokens), h), "pp"))
            group = pl.tp_group(dst_stage, d)
            if pl.tp > 1:
                ctx = {**base_ctx, "layer": layer, "stage": dst_stage}
                gathered = self._allgather(f"{tag}.s{dst_stage}d{d}.L{layer}.stage_allgather", sent, ctx, group, tokens)
                for g in group:
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

    def _layer(self, tag, ctx, ready, seqs, q_len, kv_len, gather) -> dict[int, str]:
        """One transformer layer on every GPU of its stage; returns each GPU's output node."""
        pl, m, h, b, hd = self.pl, self.m, self.h, self.b, self.hd
        stage, layer = ctx["stage"], ctx["layer"]
        hl, kvl = self.heads_local, self.kv_heads_local
        T = seqs * q_len
        Td = _dim(T)
        L = f"{tag}.L{layer}"
        out_proj: dict[int, str] = {}
        for g in pl.stage_gpus(stage):
            dep = _as_list(ready[g])
            p = f"{L}.g{g}"
            n = self.compute(f"{p}.norm_attn", dep, "norm_attn", "norm_residual", ctx, g,
                             costs.elementwise_cost(T * h, T * h, costs.NORM_FLOPS_PER_ELEMENT, b), (Td, h), (Td, h))
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
            qshape, kvshape = (_dim(seqs), hl, q_len, hd), (_dim(seqs), kvl, kv_len, hd)
            kv_bytes = seqs * kvl * kv_len * hd * b  # K (or V) of the cache: resident, not transient
            # One flash-attention kernel computes scores, softmax and context; these describe it.
            attn = {"fused": "flash_attention", "kv_len": kv_len, "q_len": q_len, "head_dim": hd,
                    "batch_heads": seqs * hl, "kv_bytes_total": 2 * kv_bytes}
            sc = self.compute(f"{p}.attn_scores", sorted({q, k}), "attn_scores", "attention", ctx, g,
                              costs.attention_scores_cost(seqs, hl, kvl, q_len, kv_len, hd, b),
                              (qshape, kvshape), (_dim(seqs), hl, q_len, kv_len), tensor_core=True,
                              resident_bytes=kv_bytes, **attn)
            sm = self.compute(f"{p}.attn_softmax", [sc], "attn_softmax", "attention", ctx, g,
                              costs.attention_softmax_cost(seqs, hl, q_len, kv_len),
                              (_dim(seqs), hl, q_len, kv_len), (_dim(seqs), hl, q_len, kv_len), launches=0,
                              **attn)
            cx = self.compute(f"{p}.attn_context", [sm, v] if v != q else [sm], "attn_context", "attention", ctx, g,
                              costs.attention_context_cost(seqs, hl, kvl, q_len, kv_len, hd, b),
                              ((_dim(seqs), hl, q_len, kv_len), kvshape), qshape, tensor_core=True, launches=0,
                              resident_bytes=kv_bytes, **attn)
            out_proj[g] = self.linear(f"{p}.o_proj", [cx], "o_proj", "attention", ctx, g, T, hl * hd, h,
                                      (Td, hl * hd), (Td, h))

        after_attn = self._tp_allreduce(f"{L}.s{stage}", "tp_allreduce", out_proj, ctx, T)

        if not m.is_moe:
            return self._dense_ffn(L, ctx, after_attn, T)

        # Each TP rank routes its own 1/tp slice of the tokens.
        Ts = T / pl.tp
        Tsd = _dim(Ts)
        E, k = m.num_experts, m.top_k
        routed: dict[int, str] = {}
        for g in pl.stage_gpus(stage):
            p = f"{L}.g{g}"
            r1 = self.compute(f"{p}.residual_attn", [after_attn[g]], "residual_add", "norm_residual", ctx, g,
                              costs.elementwise_cost(2 * Ts * h, Ts * h, 1.0, b), (Tsd, h), (Tsd, h))
            n2 = self.compute(f"{p}.norm_moe", [r1], "norm_moe", "norm_residual", ctx, g,
                              costs.elementwise_cost(Ts * h, Ts * h, costs.NORM_FLOPS_PER_ELEMENT, b), (Tsd, h), (Tsd, h))
            gate = self.linear(f"{p}.router", [n2], "router", "router", ctx, g, Ts, h, E, (Tsd, h), (Tsd, E),
                               kind=ROUTING)
            top = self.compute(f"{p}.topk", [gate], "topk", "router", ctx, g,
                               costs.elementwise_cost(Ts * E, Ts * k * 2, costs.SOFTMAX_FLOPS_PER_ELEMENT * E / (2 * k), b),
                               (Tsd, E), (Tsd, k), kind=ROUTING)
            # Gather every token copy into expert order (the send buffers of the dispatch).
            copies = Ts * k * pl.etp
            routed[g] = self.compute(f"{p}.moe_permute", [top], "moe_permute", "router", ctx, g,
                                     costs.elementwise_cost(Ts * h, copies * h, 0.0, b), (Tsd, h), (_dim(copies), h),
                                     kind=ROUTING)

        moe_out: dict[int, str] = {}
        for group in pl.ep_groups(stage):
            experts_at = {g: pl.experts_of_gpu(g) for g in group}
            share = {g: sum(self.loads[e] for e in experts_at[g]) for g in group}  # fraction of copies g receives
            copy_bytes = Ts * k * h * b  # every GPU in the group routes Ts tokens
            send = [copy_bytes * (sum(share.values()) - share[g]) for g in group]
            recv = [copy_bytes * share[g] * (len(group) - 1) for g in group]
            n_ranks = len(group)
            if n_ranks > 1:
                disp = self.collective(f"{L}.s{stage}r{group[0]}.a2a_dispatch", [routed[g] for g in group],
                                       "a2a_dispatch", "ep_comm", ctx, group, "all_to_all", send, recv,
                                       max(max(send), max(recv)), (Tsd * k if isinstance(Tsd, int) else Ts * k, h), "ep")
                deps_of = {g: [disp] for g in group}
            else:
                deps_of = {g: [routed[g]] for g in group}
            fc2s = {}
            for g in group:
                tokens_e = [Ts * n_ranks * k * self.loads[e] for e in experts_at[g]]
                fc2s[g] = self._experts(f"{L}.g{g}", ctx, g, deps_of[g], experts_at[g], tokens_e)
            if n_ranks > 1:
                comb = self.collective(f"{L}.s{stage}r{group[0]}.a2a_combine", [x for g in group for x in fc2s[g]],
                                       "a2a_combine", "ep_comm", ctx, group, "all_to_all", recv, send,
                                       max(max(send), max(recv)), (Tsd * k if isinstance(Tsd, int) else Ts * k, h), "ep")
                for g in group:
                    moe_out[g] = [comb]
            else:
                for g in group:
                    moe_out[g] = fc2s[g]

        out: dict[int, str] = {}
        for g in pl.stage_gpus(stage):
            p = f"{L}.g{g}"
            copies = Ts * k * pl.etp
            wc = self.compute(f"{p}.moe_combine", moe_out[g], "moe_combine", "experts", ctx, g,
                              costs.elementwise_cost(copies * h, Ts * h, 2.0 * copies / Ts if Ts else 0.0, b),
                              (_dim(copies), h), (Tsd, h))
            out[g] = self.compute(f"{p}.residual_moe", [wc], "residual_add", "norm_residual", ctx, g,
                                  costs.elementwise_cost(2 * Ts * h, Ts * h, 1.0, b), (Tsd, h), (Tsd, h))
        if gather and pl.tp > 1:
            for d in range(pl.dp):
                group = pl.tp_group(stage, d)
                ag = self._allgather(f"{L}.s{stage}d{d}.tp_allgather", [out[g] for g in group], ctx, group, T)
                for g in group:
                    out[g] = ag
        return out

    def _experts(self, prefix, ctx, g, deps, experts, tokens_e) -> list[str]:
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
            fc1, act, fc2 = costs.expert_ffn_costs(toks, h, ffn, m.gated, m.activation, b)
            rows = sum(toks)
            T = _dim(rows)
            active = sum(1 for t in toks if t > 0)
            per_expert = rows / active if active else 0.0
            extra = {"experts": tuple(ex), "expert_tokens": tuple(toks), "grouped": (active, per_expert)}
            a = self.compute(f"{p}.expert_fc1", deps, "expert_fc1", "experts", ctx, g, fc1, (T, h), (T, up),
                             tensor_core=True, resident_bytes=active * h * up * b, gemm=(rows, h, up), **extra)
            a = self.compute(f"{p}.expert_act", [a], "expert_act", "experts", ctx, g, act, (T, up), (T, ffn), **extra)
            ends.append(self.compute(f"{p}.expert_fc2", [a], "expert_fc2", "experts", ctx, g, fc2, (T, ffn), (T, h),
                                     tensor_core=True, resident_bytes=active * ffn * h * b, gemm=(rows, ffn, h),
                                     **extra))
        return ends

    def _dense_ffn(self, L, ctx, after_attn, T) -> dict[int, str]:
        """Dense FFN: column-parallel FC1, row-parallel FC2, TP all-reduce (Megatron-LM)."""
        pl, m, h, b = self.pl, self.m, self.h, self.b
        stage = ctx["stage"]
        ffn = (m.ffn_size or 0) // pl.tp
        up = 2 * ffn if m.gated else ffn
        Td = _dim(T)
        fc2: dict[int, str] = {}
        resid: dict[int, str] = {}
        for g in pl.stage_gpus(stage):
            p = f"{L}.g{g}"
            r1 = self.compute(f"{p}.residual_attn", [after_attn[g]], "residual_add", "norm_residual", ctx, g,
                              costs.elementwise_cost(2 * T * h, T * h, 1.0, b), (Td, h), (Td, h))
            n2 = self.compute(f"{p}.norm_ffn", [r1], "norm_ffn", "norm_residual", ctx, g,
                              costs.elementwise_cost(T * h, T * h, costs.NORM_FLOPS_PER_ELEMENT, b), (Td, h), (Td, h))
            f1 = self.linear(f"{p}.ffn_fc1", [n2], "ffn_fc1", "ffn", ctx, g, T, h, up, (Td, h), (Td, up))
            a = self.compute(f"{p}.ffn_act", [f1], "ffn_act", "ffn", ctx, g,
                             costs.elementwise_cost(T * up, T * ffn, costs.ACTIVATION_FLOPS_PER_ELEMENT[m.activation], b),
                             (Td, up), (Td, ffn))
            fc2[g] = self.linear(f"{p}.ffn_fc2", [a], "ffn_fc2", "ffn", ctx, g, T, ffn, h, (Td, ffn), (Td, h))
            resid[g] = r1
        reduced = self._tp_allreduce(f"{L}.s{stage}", "tp_allreduce_ffn", fc2, ctx, T)
        return {g: self.compute(f"{L}.g{g}.residual_ffn", [reduced[g]], "residual_add", "norm_residual", ctx, g,
                                costs.elementwise_cost(2 * T * h, T * h, 1.0, b), (Td, h), (Td, h))
                for g in pl.stage_gpus(stage)}

    def _tp_allreduce(self, prefix: str, name: str, partial: dict[int, str], ctx: dict, T: float) -> dict[int, str]:
        """Sum the row-parallel partial outputs [T, h] over each TP group (ring all-reduce); with
        tp = 1 each GPU's output passes through."""
        pl, h, b = self.pl, self.h, self.b
        if pl.tp == 1:
            return dict(partial)
        out: dict[int, str] = {}
        S, n = T * h * b, pl.tp
        vol = 2.0 * (n - 1) / n * S  # each rank sends (and receives) this much
        for d in range(pl.dp):
            group = pl.tp_group(ctx["stage"], d)
            node = self.collective(f"{prefix}d{d}.{name}", [partial[g] for g in group], "tp_allreduce", "tp_comm",
                                   ctx, group, "all_reduce", [vol] * n, [vol] * n, S, (_dim(T), h), "tp")
            out.update({g: node for g in group})
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


def build_dag(scenario: Scenario, decode_steps: list[int] | None = None) -> nx.DiGraph:
    """The operator DAG: prefill of every microbatch, then the decode steps.

    Prefill produces the first output token; decode steps t = 1 .. output_len-1 produce the rest,
    attending to input_len + t cached positions. Zero-cost marker nodes open and close each phase.
    `decode_steps` builds only those steps (chained in order; see sampled_decode_steps), for
    sweeps where the step time is interpolated between them; the graph records which steps it holds.
    """
    bld = _Builder(scenario)
    m_count = scenario.parallel.microbatches
    marker = dict(kind=MARKER, category="marker", gpu=None, flops=0.0, bytes_read=0.0, bytes_written=0.0,
                  in_shape=(), out_shape=(), layer=-1, stage=-1, microbatch=-1)
    bld.add("prefill.start", [], op="phase_start", phase="prefill", step=0, **marker)
    tokens = [bld.build_pass("prefill", 0, mb, ["prefill.start"]) for mb in range(m_count)]
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
                tokens[mb] = bld.build_pass("decode", step, mb, deps)
        bld.add("decode.end", tokens, op="phase_end", phase="decode", step=steps[-1], **marker)
    return _digraph(bld.nodes, bld.edges, scenario=scenario.name, num_gpus=bld.pl.num_gpus,
                    decode_steps=list(steps), total_decode_steps=total_steps)


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
