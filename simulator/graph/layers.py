"""Graph stage, transformer layers: one layer per GPU of its stage (attention from attention.py, the MoE block
with its routing and all-to-all around the experts of moe.py), the dense FFN, residuals and norms, and the TP
collectives.
"""

from __future__ import annotations

from simulator import costs
from simulator.graph.attention import AttentionBuilder
from simulator.graph.blocks import PYTORCH_HELPER_KERNELS, SORT_MEMSETS, as_list, dim
from simulator.graph.dag import ROUTING
from simulator.graph.moe import ExpertBuilder

#: Bytes of one expert id or sorted index in the engines' routing kernels (int32).
INDEX_BYTES = 4


class LayerBuilder(AttentionBuilder, ExpertBuilder):
    """Adds one transformer layer (build_layer) and its parts on every GPU of its stage."""

    def allgather(self, nid, deps, ctx, group, tokens):
        total = tokens * self.hidden * self.payload_bytes_per_element
        return self.ring_collective(
            nid, deps, "tp_allgather", "tp_comm", ctx, group, "all_gather", total, (dim(tokens), self.hidden), "tp"
        )

    def ring_collective(self, nid, deps, op, category, ctx, group, collective, total, shape, kind):
        """An all-gather or reduce-scatter of `total` bytes over `group`: each rank sends and receives the
        other ranks' shares, (n - 1) / n of it."""
        n = len(group)
        per_rank = total / n
        moved = [per_rank * (n - 1)] * n
        return self.collective(nid, deps, op, category, ctx, group, collective, moved, moved, total, shape, kind)

    def build_layer(self, tag, ctx, ready, seqs, q_len, kv_len, gather) -> dict[int, str]:
        """One transformer layer on every GPU of its stage; returns each GPU's output node."""
        pl, model, hidden, bytes_per_element = self.pl, self.model, self.hidden, self.bytes_per_element
        stage, layer = ctx["stage"], ctx["layer"]
        tokens = seqs * q_len
        tokens_dim = dim(tokens)
        L = f"{tag}.L{layer}"
        out_proj: dict[int, str] = {}
        for g in self.stage_on[stage]:
            dep = as_list(ready[g])
            p = f"{L}.g{g}"
            n = self.compute(
                f"{p}.norm_attn",
                dep,
                "norm_attn",
                "norm_residual",
                ctx,
                g,
                costs.elementwise_cost(
                    tokens * hidden, tokens * hidden, costs.NORM_FLOPS_PER_ELEMENT, bytes_per_element
                ),
                (tokens_dim, hidden),
                (tokens_dim, hidden),
            )
            if model.is_mla:
                cx, o_in = self.mla(p, ctx, g, n, seqs, q_len, kv_len)
            else:
                cx, o_in = self.mha(p, ctx, g, n, seqs, q_len, kv_len)
            out_proj[g] = self.linear(
                f"{p}.o_proj",
                [cx],
                "o_proj",
                "attention",
                ctx,
                g,
                tokens,
                o_in,
                hidden,
                (tokens_dim, o_in),
                (tokens_dim, hidden),
            )

        after_attn = self.tp_allreduce(f"{L}.s{stage}", "tp_allreduce", out_proj, ctx, tokens)

        if not model.is_moe_layer(layer):
            return self.dense_ffn(L, ctx, after_attn, tokens)
        if self.moe_allreduce:
            return self.moe_over_tp(L, ctx, after_attn, tokens)

        # Each TP rank routes its own 1/tp slice of the tokens.
        slice_tokens = tokens / pl.tp
        slice_tokens_dim = dim(slice_tokens)
        E, k = model.num_experts, model.top_k
        routed: dict[int, str] = {}
        shared: dict[int, str] = {}
        for g in self.stage_on[stage]:
            p = f"{L}.g{g}"
            r1, n2 = self.residual_and_norm(p, after_attn[g], "norm_moe", ctx, g, slice_tokens)
            top = self.route(p, n2, ctx, g, slice_tokens)
            if model.num_shared_experts:
                shared[g] = self.shared_experts(p, ctx, g, n2, slice_tokens)
            # Gather every token copy into expert order (the send buffers of the dispatch).
            copies = slice_tokens * k * pl.etp
            before = [top]
            if self.pytorch_moe == "per_expert":  # argsort, then bincount(...).tolist(): three host syncs
                before = [self.sorted_moe_routing(p, top, ctx, g, copies)]
            elif self.pytorch_moe == "capacity":  # int32 one-hot and positions, the zeroed buffer
                before = [
                    self.helper(
                        f"{p}.moe_dispatch_index",
                        [top],
                        "moe_dispatch_index",
                        "router",
                        ctx,
                        g,
                        3 * copies * E * 4,
                        3 * copies * E * 4 + copies * model.capacity_factor * hidden * bytes_per_element,
                        (dim(copies), E),
                    )
                ]
            index_select = {}  # (`gather` names build_layer's argument)
            if self.pytorch_moe == "per_expert":  # index_select of every routed copy: a gather kernel
                index_select = {"helper_kernels": (("gather", copies * hidden * bytes_per_element, 0.0),)}
            routed[g] = self.compute(
                f"{p}.moe_permute",
                before,
                "moe_permute",
                "router",
                ctx,
                g,
                costs.elementwise_cost(slice_tokens * hidden, copies * hidden, 0.0, bytes_per_element),
                (slice_tokens_dim, hidden),
                (dim(copies), hidden),
                kind=ROUTING,
                **index_select,
            )

        moe_out: dict[int, list[str]] = {}
        for group, mine in self.ep_groups_on[stage]:
            routed_copies = slice_tokens * len(group) * k
            loads, dropped = self.kept_loads(layer, routed_copies)
            # (expert, share of its copies) per member: whole experts, or EPLB's copies of this layer's loads
            slots_at = {g: self.slots_of(layer, g) for g in group}
            share = {g: sum(loads[e] * f for e, f in slots_at[g]) for g in group}  # of all copies
            # every GPU in the group routes slice_tokens tokens; the dispatch may move another format than the combine
            copy_bytes = slice_tokens * k * hidden * self.dispatch_bytes_per_element
            send = [copy_bytes * (sum(share.values()) - share[g]) for g in group]
            recv = [copy_bytes * share[g] * (len(group) - 1) for g in group]
            copy_bytes = slice_tokens * k * hidden * self.payload_bytes_per_element  # the combine returns them
            back_send = [copy_bytes * share[g] * (len(group) - 1) for g in group]
            back_recv = [copy_bytes * (sum(share.values()) - share[g]) for g in group]
            n_ranks = len(group)
            copies_shape = (slice_tokens_dim * k if isinstance(slice_tokens_dim, int) else slice_tokens * k, hidden)
            # runtime.ep_dispatch allgather (vLLM's allgather_reducescatter backend): every rank gathers the group's
            # tokens (hidden states in the dispatch format, top-k ids int32 and weights fp32), a reduce-scatter
            # (payload format) returns each rank its own; the permute and the weighted sum stay where they are
            gathered_shape = (dim(slice_tokens * n_ranks), hidden)
            if n_ranks > 1 and self.ep_allgather:
                per_token = hidden * self.dispatch_bytes_per_element + k * (INDEX_BYTES + 4)
                disp = self.ring_collective(
                    f"{L}.s{stage}r{group[0]}.ep_allgather",
                    [routed[g] for g in mine],
                    "ep_allgather",
                    "ep_comm",
                    ctx,
                    group,
                    "all_gather",
                    slice_tokens * per_token * n_ranks,
                    gathered_shape,
                    "ep",
                )
                deps_of = {g: [disp] for g in group}
            elif n_ranks > 1:
                disp = self.collective(
                    f"{L}.s{stage}r{group[0]}.a2a_dispatch",
                    [routed[g] for g in mine],
                    "a2a_dispatch",
                    "ep_comm",
                    ctx,
                    group,
                    "all_to_all",
                    send,
                    recv,
                    max(max(send), max(recv)),
                    copies_shape,
                    "ep",
                )
                deps_of = {g: [disp] for g in group}
            else:
                deps_of = {g: [routed[g]] for g in group}
            fc2s: dict[int, list[str]] = {}
            for g in mine:
                tokens_e = [routed_copies * loads[e] * f for e, f in slots_at[g]]
                fc2s[g] = self.expert_ffns(
                    f"{L}.g{g}",
                    ctx,
                    g,
                    deps_of[g],
                    [e for e, _ in slots_at[g]],
                    tokens_e,
                    dropped if g == group[0] else 0.0,
                    routed_copies / k,
                )
            if n_ranks > 1 and self.ep_allgather:
                comb = self.ring_collective(
                    f"{L}.s{stage}r{group[0]}.ep_reducescatter",
                    [x for g in mine for x in fc2s[g]],
                    "ep_reducescatter",
                    "ep_comm",
                    ctx,
                    group,
                    "reduce_scatter",
                    slice_tokens * hidden * self.payload_bytes_per_element * n_ranks,
                    gathered_shape,
                    "ep",
                )
                for g in mine:
                    moe_out[g] = [comb]
            elif n_ranks > 1:
                comb = self.collective(
                    f"{L}.s{stage}r{group[0]}.a2a_combine",
                    [x for g in mine for x in fc2s[g]],
                    "a2a_combine",
                    "ep_comm",
                    ctx,
                    group,
                    "all_to_all",
                    back_send,
                    back_recv,
                    max(max(back_send), max(back_recv)),
                    copies_shape,
                    "ep",
                )
                for g in mine:
                    moe_out[g] = [comb]
            else:
                for g in mine:
                    moe_out[g] = fc2s[g]

        out: dict[int, str] = {}
        for g in self.stage_on[stage]:
            p = f"{L}.g{g}"
            copies = slice_tokens * k * pl.etp
            partial = moe_out[g]
            if self.pytorch_moe == "per_expert":  # cat, then scale by the routing weights; zeroed output
                act = copies * hidden * bytes_per_element  # [copies, hidden]
                kernels = (
                    ("cat", act, act),
                    ("copy", 4 * copies, 12 * copies),  # top_w.view(-1)[order]: fp32 by int64 index
                    ("copy", 2 * copies, 4 * copies),  # .to(fp16)
                    ("broadcast_mul", act, act + 2 * copies),  # [copies, hidden] * [copies, 1]
                    ("fill", slice_tokens * hidden * bytes_per_element, 0.0),  # zeros_like(a)
                )
                partial = [
                    self.kernel_helper(
                        f"{p}.moe_unsort", partial, "moe_unsort", "experts", ctx, g, kernels, (dim(copies), hidden)
                    )
                ]
            elif self.pytorch_moe == "capacity":  # cat, gather by slot, scale by the routing weights
                moved = (copies * model.capacity_factor + 2 * copies) * hidden * bytes_per_element
                partial = [
                    self.helper(
                        f"{p}.moe_undispatch",
                        partial,
                        "moe_undispatch",
                        "experts",
                        ctx,
                        g,
                        moved,
                        moved,
                        (dim(copies), hidden),
                    )
                ]
            wc = self.moe_combine(
                p,
                partial + ([shared[g]] if g in shared else []),
                ctx,
                g,
                copies,
                slice_tokens,
                g in shared,
                **({"scatter_add": True} if self.pytorch_moe == "per_expert" else {}),
            )
            out[g] = self.residual_add(f"{p}.residual_moe", wc, ctx, g, slice_tokens)
        if gather and pl.tp > 1:
            for d, group, mine in self.tp_groups_on[stage]:
                ag = self.allgather(f"{L}.s{stage}d{d}.tp_allgather", [out[g] for g in mine], ctx, group, tokens)
                for g in mine:
                    out[g] = ag
        return out

    def moe_over_tp(self, L, ctx, after_attn, tokens) -> dict[int, str]:
        """A MoE layer whose experts live in the TP group, as the serving engines run it (runtime.moe_dispatch
        allreduce; vLLM's, SGLang's and TensorRT-LLM's TP / EP MoE): every TP rank holds all `tokens` after the
        attention all-reduce and routes them all, gathers the copies routed to its own expert slots, runs those
        experts (its 1/etp shard of each), adds its 1/tp shard of the shared experts, and one TP all-reduce sums
        the ranks' partial outputs. No all-to-all and no all-gather: the output is whole on every rank."""
        model = self.model
        stage, layer = ctx["stage"], ctx["layer"]
        k = model.top_k
        loads, dropped = self.kept_loads(layer, tokens * k)
        first_of_group = {group[0] for _, group, _ in self.tp_groups_on[stage]}
        partial: dict[int, str] = {}
        for g in self.stage_on[stage]:
            p = f"{L}.g{g}"
            _, n2 = self.residual_and_norm(p, after_attn[g], "norm_moe", ctx, g, tokens)
            top = self.route(p, n2, ctx, g, tokens)
            slots = self.slots_of(layer, g)
            tokens_e = [tokens * k * loads[e] * f for e, f in slots]
            mine = sum(tokens_e)  # the copies routed to this rank's slots
            # The engines' fused MoE sorts the copies' int32 expert ids into per-expert blocks (vLLM's
            # moe_align_block_size) and its grouped GEMM gathers the token rows itself: no permuted copy of them.
            copies_dim = dim(tokens * k)
            routed = self.compute(
                f"{p}.moe_align",
                [top],
                "moe_align",
                "router",
                ctx,
                g,
                costs.elementwise_cost(tokens * k, tokens * k, 0.0, INDEX_BYTES),
                (copies_dim,),
                (copies_dim,),
                kind=ROUTING,
            )
            ends = self.expert_ffns(
                p,
                ctx,
                g,
                [routed],
                [e for e, _ in slots],
                tokens_e,
                dropped if g in first_of_group else 0.0,
                tokens,
            )
            shared = [self.shared_experts(p, ctx, g, n2, tokens, self.pl.tp)] if model.num_shared_experts else []
            partial[g] = self.moe_combine(p, ends + shared, ctx, g, mine, tokens, bool(shared))
        reduced = self.tp_allreduce(f"{L}.s{stage}", "tp_allreduce_moe", partial, ctx, tokens)
        return self.residual_out(L, "residual_moe", reduced, ctx, tokens)

    def moe_combine(self, p, deps, ctx, g, copies: float, tokens: float, with_shared: bool, **extra) -> str:
        """GPU g's weighted sum of its `copies` expert outputs (plus the shared experts' output when `with_shared`)
        into [tokens, hidden]."""
        hidden, bytes_per_element = self.hidden, self.bytes_per_element
        extra_in = tokens if with_shared else 0.0
        return self.compute(
            f"{p}.moe_combine",
            deps,
            "moe_combine",
            "experts",
            ctx,
            g,
            costs.elementwise_cost(
                (copies + extra_in) * hidden,
                tokens * hidden,
                2.0 * copies / tokens + (1.0 if with_shared else 0.0) if tokens else 0.0,
                bytes_per_element,
            ),
            (dim(copies), hidden),
            (dim(tokens), hidden),
            **extra,
        )

    def route(self, p: str, normed: str, ctx: dict, g: int, tokens: float) -> str:
        """The router GEMM and the top-k over `tokens` on GPU g (after the norm `normed`); the top-k node."""
        model, hidden, bytes_per_element = self.model, self.hidden, self.bytes_per_element
        E, k, td = model.num_experts, model.top_k, dim(tokens)
        gate = self.linear(
            f"{p}.router",
            [normed],
            "router",
            "router",
            ctx,
            g,
            tokens,
            hidden,
            E,
            (td, hidden),
            (td, E),
            kind=ROUTING,
            gemm_class="router",
        )
        return self.compute(
            f"{p}.topk",
            [gate],
            "topk",
            "router",
            ctx,
            g,
            costs.elementwise_cost(
                tokens * E, tokens * k * 2, costs.SOFTMAX_FLOPS_PER_ELEMENT * E / (2 * k), bytes_per_element
            ),
            (td, E),
            (td, k),
            kind=ROUTING,
            launches=PYTORCH_HELPER_KERNELS["topk"] if self.pytorch else 1,
        )

    def residual_out(self, L: str, name: str, reduced: dict[int, str], ctx: dict, tokens: float) -> dict[int, str]:
        """Each GPU of the stage adds the all-reduced [tokens, hidden] output to the residual stream."""
        return {
            g: self.residual_add(f"{L}.g{g}.{name}", reduced[g], ctx, g, tokens) for g in self.stage_on[ctx["stage"]]
        }

    def residual_add(self, nid: str, dep: str, ctx: dict, g: int, tokens: float) -> str:
        """A [tokens, hidden] output added to the residual stream on GPU g (reads both, writes one)."""
        hidden, td = self.hidden, dim(tokens)
        return self.compute(
            nid,
            [dep],
            "residual_add",
            "norm_residual",
            ctx,
            g,
            costs.elementwise_cost(2 * tokens * hidden, tokens * hidden, 1.0, self.bytes_per_element),
            (td, hidden),
            (td, hidden),
        )

    def kernel_helper(self, nid, deps, op, category, ctx, g, kernels, shape, **extra) -> str:
        """A helper node priced kernel by kernel (`kernels`: (class, bytes written, bytes read) each; see
        op_time.helper_kernels_s); its bytes are their sums."""
        read, written = sum(k[2] for k in kernels), sum(k[1] for k in kernels)
        return self.helper(nid, deps, op, category, ctx, g, read, written, shape, helper_kernels=kernels, **extra)

    def sorted_moe_routing(self, p: str, top: str, ctx: dict, g: int, copies: float) -> str:
        """What the sorted MoE (simulator/calibration/e2e.py prefill_block) runs between the top-k and the
        gather of the routed copies: `order = top_e.view(-1).argsort(); token = order // k` (moe_sort),
        then `torch.bincount(top_e.view(-1), minlength=E).tolist()`, which on CUDA reads min and max back
        to the host before counting (ATen SummaryOps.cu) and then copies the counts: three nodes, each
        ending in a copy to the host that the host waits for (host_sync)."""
        keys = 8 * copies  # int64 expert ids (and int64 indices)
        bins = 8 * self.model.num_experts
        sort = (
            ("copy", keys, 0.0),  # indices 0..n-1
            ("copy", 0.0, keys),  # histogram of the key digits (8 passes x 256 counters)
            ("copy", 0.0, 0.0),  # exclusive sum of the histograms
            *[("radix_sort_pass", 2 * keys, 2 * keys)] * 8,  # keys and indices, one byte per pass
            *[("memset", 0.0, 0.0)] * SORT_MEMSETS,
            ("copy", keys, keys),  # order // k
        )
        to_host = ("to_host", 8.0, 8.0)  # a few bytes device -> host, then the host waits
        shape = (dim(copies),)
        node = self.kernel_helper(f"{p}.moe_sort", [top], "moe_sort", "router", ctx, g, sort, shape)
        for op, kernels in (
            ("moe_count_min", (("reduce_all", 8.0, keys), to_host)),
            ("moe_count_max", (("reduce_all", 8.0, keys), to_host)),
            ("moe_count", (("copy", bins, 0.0), ("copy", bins, keys), ("to_host", bins, bins))),
        ):
            node = self.kernel_helper(f"{p}.{op}", [node], op, "router", ctx, g, kernels, shape, host_sync=True)
        return node

    def dense_ffn(self, L, ctx, after_attn, tokens) -> dict[int, str]:
        """Dense FFN: column-parallel FC1, row-parallel FC2, TP all-reduce (Megatron-LM)."""
        pl, model, hidden, bytes_per_element = self.pl, self.model, self.hidden, self.bytes_per_element
        stage = ctx["stage"]
        ffn = (model.ffn_size or 0) // pl.tp
        up = 2 * ffn if model.gated else ffn
        tokens_dim = dim(tokens)
        fc2: dict[int, str] = {}
        resid: dict[int, str] = {}
        for g in self.stage_on[stage]:
            p = f"{L}.g{g}"
            r1, n2 = self.residual_and_norm(p, after_attn[g], "norm_ffn", ctx, g, tokens)
            f1 = self.linear(
                f"{p}.ffn_fc1",
                [n2],
                "ffn_fc1",
                "ffn",
                ctx,
                g,
                tokens,
                hidden,
                up,
                (tokens_dim, hidden),
                (tokens_dim, up),
            )
            a = self.compute(
                f"{p}.ffn_act",
                [f1],
                "ffn_act",
                "ffn",
                ctx,
                g,
                costs.elementwise_cost(
                    tokens * up, tokens * ffn, costs.ACTIVATION_FLOPS_PER_ELEMENT[model.activation], bytes_per_element
                ),
                (tokens_dim, up),
                (tokens_dim, ffn),
                launches=2 if self.pytorch and model.gated else 1,  # PyTorch: silu, then mul
            )
            fc2[g] = self.linear(
                f"{p}.ffn_fc2",
                [a],
                "ffn_fc2",
                "ffn",
                ctx,
                g,
                tokens,
                ffn,
                hidden,
                (tokens_dim, ffn),
                (tokens_dim, hidden),
            )
            resid[g] = r1
        reduced = self.tp_allreduce(f"{L}.s{stage}", "tp_allreduce_ffn", fc2, ctx, tokens)
        return self.residual_out(L, "residual_ffn", reduced, ctx, tokens)

    def residual_and_norm(self, p: str, dep: str, norm_op: str, ctx: dict, g: int, tokens: float) -> tuple[str, str]:
        """Add the attention output to the residual stream, then normalise it for the FFN/MoE."""
        hidden, bytes_per_element, td = self.hidden, self.bytes_per_element, dim(tokens)
        r = self.residual_add(f"{p}.residual_attn", dep, ctx, g, tokens)
        n = self.compute(
            f"{p}.{norm_op}",
            [r],
            norm_op,
            "norm_residual",
            ctx,
            g,
            costs.elementwise_cost(tokens * hidden, tokens * hidden, costs.NORM_FLOPS_PER_ELEMENT, bytes_per_element),
            (td, hidden),
            (td, hidden),
        )
        return r, n

    def tp_allreduce(self, prefix: str, name: str, partial: dict[int, str], ctx: dict, tokens: float) -> dict[int, str]:
        """Sum the row-parallel partial outputs [tokens, hidden] over each TP group (ring all-reduce); with
        tp = 1 each GPU's output passes through."""
        pl, hidden, payload_bytes = self.pl, self.hidden, self.payload_bytes_per_element
        if pl.tp == 1:
            return dict(partial)
        out: dict[int, str] = {}
        S, n = tokens * hidden * payload_bytes, pl.tp
        vol = 2.0 * (n - 1) / n * S  # each rank sends (and receives) this much
        for d, group, mine in self.tp_groups_on[ctx["stage"]]:
            node = self.collective(
                f"{prefix}d{d}.{name}",
                [partial[g] for g in mine],
                "tp_allreduce",
                "tp_comm",
                ctx,
                group,
                "all_reduce",
                [vol] * n,
                [vol] * n,
                S,
                (dim(tokens), hidden),
                "tp",
            )
            out.update({g: node for g in mine})
        return out
