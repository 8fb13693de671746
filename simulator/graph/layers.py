"""Graph stage, transformer layers: attention (MHA/GQA/MQA, MLA), the MoE block (routing, all-to-all,
experts, shared experts), the dense FFN, residuals and norms, and the TP collectives, per GPU.
"""

from __future__ import annotations

import math

from simulator import costs
from simulator.graph.blocks import PYTORCH_HELPER_KERNELS, BlockBuilder, as_list, dim
from simulator.graph.dag import ROUTING
from simulator.placement import routing_loads


class LayerBuilder(BlockBuilder):
    """Adds one transformer layer (build_layer) and its parts on every GPU of its stage."""

    def allgather(self, nid, deps, ctx, group, tokens):
        total = tokens * self.hidden * self.bytes_per_element
        per_rank = total / len(group)
        n = len(group)
        return self.collective(
            nid,
            deps,
            "tp_allgather",
            "tp_comm",
            ctx,
            group,
            "all_gather",
            [per_rank * (n - 1)] * n,
            [per_rank * (n - 1)] * n,
            total,
            (dim(tokens), self.hidden),
            "tp",
        )

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

        # Each TP rank routes its own 1/tp slice of the tokens.
        slice_tokens = tokens / pl.tp
        slice_tokens_dim = dim(slice_tokens)
        E, k = model.num_experts, model.top_k
        routed: dict[int, str] = {}
        shared: dict[int, str] = {}
        for g in self.stage_on[stage]:
            p = f"{L}.g{g}"
            r1, n2 = self.residual_and_norm(p, after_attn[g], "norm_moe", ctx, g, slice_tokens)
            gate = self.linear(
                f"{p}.router",
                [n2],
                "router",
                "router",
                ctx,
                g,
                slice_tokens,
                hidden,
                E,
                (slice_tokens_dim, hidden),
                (slice_tokens_dim, E),
                kind=ROUTING,
            )
            top = self.compute(
                f"{p}.topk",
                [gate],
                "topk",
                "router",
                ctx,
                g,
                costs.elementwise_cost(
                    slice_tokens * E,
                    slice_tokens * k * 2,
                    costs.SOFTMAX_FLOPS_PER_ELEMENT * E / (2 * k),
                    bytes_per_element,
                ),
                (slice_tokens_dim, E),
                (slice_tokens_dim, k),
                kind=ROUTING,
                launches=PYTORCH_HELPER_KERNELS["topk"] if self.pytorch else 1,
            )
            if model.num_shared_experts:
                shared[g] = self.shared_experts(p, ctx, g, n2, slice_tokens)
            # Gather every token copy into expert order (the send buffers of the dispatch).
            copies = slice_tokens * k * pl.etp
            before = [top]
            if self.pytorch_moe == "per_expert":  # 16 B per key and index, read + written per pass
                before = [
                    self.helper(
                        f"{p}.moe_sort",
                        [top],
                        "moe_sort",
                        "router",
                        ctx,
                        g,
                        8 * copies * 16,
                        8 * copies * 16,
                        (dim(copies),),
                    )
                ]
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
            )

        moe_out: dict[int, list[str]] = {}
        for group, mine, experts_at in self.ep_groups_on[stage]:
            routed_copies = slice_tokens * len(group) * k
            loads, dropped = self.kept_loads(layer, routed_copies)
            share = {g: sum(loads[e] for e in experts_at[g]) for g in group}  # fraction of copies g receives
            copy_bytes = (
                slice_tokens * k * hidden * bytes_per_element
            )  # every GPU in the group routes slice_tokens tokens
            send = [copy_bytes * (sum(share.values()) - share[g]) for g in group]
            recv = [copy_bytes * share[g] * (len(group) - 1) for g in group]
            n_ranks = len(group)
            if n_ranks > 1:
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
                    (slice_tokens_dim * k if isinstance(slice_tokens_dim, int) else slice_tokens * k, hidden),
                    "ep",
                )
                deps_of = {g: [disp] for g in group}
            else:
                deps_of = {g: [routed[g]] for g in group}
            fc2s: dict[int, list[str]] = {}
            for g in mine:
                tokens_e = [routed_copies * loads[e] for e in experts_at[g]]
                fc2s[g] = self.expert_ffns(
                    f"{L}.g{g}", ctx, g, deps_of[g], experts_at[g], tokens_e, dropped if g == group[0] else 0.0
                )
            if n_ranks > 1:
                comb = self.collective(
                    f"{L}.s{stage}r{group[0]}.a2a_combine",
                    [x for g in mine for x in fc2s[g]],
                    "a2a_combine",
                    "ep_comm",
                    ctx,
                    group,
                    "all_to_all",
                    recv,
                    send,
                    max(max(send), max(recv)),
                    (slice_tokens_dim * k if isinstance(slice_tokens_dim, int) else slice_tokens * k, hidden),
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
            extra_in = slice_tokens if g in shared else 0.0  # the shared experts' output is added here too
            partial = moe_out[g]
            if self.pytorch_moe == "per_expert":  # cat, then scale by the routing weights; zeroed output
                partial = [
                    self.helper(
                        f"{p}.moe_unsort",
                        partial,
                        "moe_unsort",
                        "experts",
                        ctx,
                        g,
                        2 * copies * hidden * bytes_per_element,
                        (2 * copies + slice_tokens) * hidden * bytes_per_element,
                        (dim(copies), hidden),
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
            wc = self.compute(
                f"{p}.moe_combine",
                partial + ([shared[g]] if g in shared else []),
                "moe_combine",
                "experts",
                ctx,
                g,
                costs.elementwise_cost(
                    (copies + extra_in) * hidden,
                    slice_tokens * hidden,
                    2.0 * copies / slice_tokens + (1.0 if extra_in else 0.0) if slice_tokens else 0.0,
                    bytes_per_element,
                ),
                (dim(copies), hidden),
                (slice_tokens_dim, hidden),
                **({"scatter_add": True} if self.pytorch_moe == "per_expert" else {}),
            )
            out[g] = self.compute(
                f"{p}.residual_moe",
                [wc],
                "residual_add",
                "norm_residual",
                ctx,
                g,
                costs.elementwise_cost(2 * slice_tokens * hidden, slice_tokens * hidden, 1.0, bytes_per_element),
                (slice_tokens_dim, hidden),
                (slice_tokens_dim, hidden),
            )
        if gather and pl.tp > 1:
            for d, group, mine in self.tp_groups_on[stage]:
                ag = self.allgather(f"{L}.s{stage}d{d}.tp_allgather", [out[g] for g in mine], ctx, group, tokens)
                for g in mine:
                    out[g] = ag
        return out

    def mha(self, p, ctx, g, n, seqs, q_len, kv_len) -> tuple[str, int]:
        """Q/K/V projections and flash attention (MHA, GQA or MQA) on one GPU; returns the context
        node and the output projection's input width."""
        model, hidden, bytes_per_element, head_dim = self.model, self.hidden, self.bytes_per_element, self.head_dim
        hl, kvl = self.heads_local, self.kv_heads_local
        tokens = seqs * q_len
        tokens_dim = dim(tokens)
        if model.fused_qkv:  # one GEMM against the concatenated [hidden, (hl + 2 kvl) head_dim] weight
            q = k = v = self.linear(
                f"{p}.qkv_proj",
                [n],
                "qkv_proj",
                "attention",
                ctx,
                g,
                tokens,
                hidden,
                (hl + 2 * kvl) * head_dim,
                (tokens_dim, hidden),
                (tokens_dim, (hl + 2 * kvl) * head_dim),
            )
        else:
            q = self.linear(
                f"{p}.q_proj",
                [n],
                "q_proj",
                "attention",
                ctx,
                g,
                tokens,
                hidden,
                hl * head_dim,
                (tokens_dim, hidden),
                (dim(seqs), hl, q_len, head_dim),
            )
            k = self.linear(
                f"{p}.k_proj",
                [n],
                "k_proj",
                "attention",
                ctx,
                g,
                tokens,
                hidden,
                kvl * head_dim,
                (tokens_dim, hidden),
                (dim(seqs), kvl, q_len, head_dim),
            )
            v = self.linear(
                f"{p}.v_proj",
                [n],
                "v_proj",
                "attention",
                ctx,
                g,
                tokens,
                hidden,
                kvl * head_dim,
                (tokens_dim, hidden),
                (dim(seqs), kvl, q_len, head_dim),
            )
        if self.pytorch:
            new_kv = 2 * tokens * kvl * head_dim  # elements of this pass's K and V
            if q_len == 1:
                k = v = self.helper(
                    f"{p}.kv_append",
                    sorted({k, v}),
                    "kv_append",
                    "attention",
                    ctx,
                    g,
                    new_kv * bytes_per_element,
                    new_kv * self.kv_bytes_per_element,
                    (dim(seqs), 2 * kvl, q_len, head_dim),
                    resident_bytes=new_kv * self.kv_bytes_per_element,
                )
            elif kvl < hl:
                k = v = self.helper(
                    f"{p}.attn_gqa_expand",
                    sorted({k, v}),
                    "attn_gqa_expand",
                    "attention",
                    ctx,
                    g,
                    new_kv * bytes_per_element,
                    2 * tokens * hl * head_dim * bytes_per_element,
                    (dim(seqs), 2 * hl, q_len, head_dim),
                )
        sc = self.attention_node(f"{p}.attn_scores", sorted({q, k}), "attn_scores", ctx, g, seqs, q_len, kv_len)
        sm = self.attention_node(f"{p}.attn_softmax", [sc], "attn_softmax", ctx, g, seqs, q_len, kv_len)
        cx = self.attention_node(
            f"{p}.attn_context", [sm, v] if v != q else [sm], "attn_context", ctx, g, seqs, q_len, kv_len
        )
        if self.pytorch and q_len > 1:
            cx = self.helper(
                f"{p}.attn_out_copy",
                [cx],
                "attn_out_copy",
                "attention",
                ctx,
                g,
                tokens * hl * head_dim * bytes_per_element,
                tokens * hl * head_dim * bytes_per_element,
                (tokens_dim, hl * head_dim),
            )
        return cx, hl * head_dim

    def attention_node(self, nid, deps, op, ctx, g, seqs, q_len, kv_len) -> str:
        """One of the attention nodes (attn_scores, attn_softmax, attn_context: one flash-attention
        kernel, described in three). A decode one is listed in `_kv_nodes`: its attributes are the
        only ones of a layer that change with the KV length (see layer_reused)."""
        nid = self.add(nid, deps, **self.attention_attrs(op, ctx, g, seqs, q_len, kv_len))
        if q_len == 1:
            self.kv_nodes.append(self.index[nid])
        return nid

    def attention_attrs(self, op, ctx, g, seqs, q_len, kv_len) -> dict:
        """The attributes of an attention node (MHA/GQA/MQA, or MLA's absorbed form over the latent)."""
        model, bytes_per_element = self.model, self.bytes_per_element
        hl = self.heads_local
        if model.is_mla:  # MQA over the cached latent: kv_lora + rope dims for scores, kv_lora for values
            kvl, dk, dv = 1, (model.kv_lora_rank or 0) + (model.qk_rope_head_dim or 0), model.kv_lora_rank or 0
            kv_bytes = seqs * kv_len * dk * self.kv_bytes_per_element  # the cached latent: resident, not transient
            kv_total = kv_bytes
        else:
            kvl, dk = self.kv_heads_local, self.head_dim
            dv = dk
            kv_bytes = (
                seqs * kvl * kv_len * dk * self.kv_bytes_per_element
            )  # K (or V) of the cache: resident, not transient
            kv_total = 2 * kv_bytes
        qshape, kvshape = (dim(seqs), hl, q_len, dk), (dim(seqs), kvl, kv_len, dk)
        probs = (dim(seqs), hl, q_len, kv_len)
        # One flash-attention kernel computes scores, softmax and context; these describe it.
        attn = {
            "fused": "flash_attention",
            "kv_len": kv_len,
            "q_len": q_len,
            "head_dim": dk,
            "batch_heads": seqs * hl,
            "kv_bytes_total": kv_total,
        }
        if op == "attn_scores":
            return self.compute_attrs(
                op,
                "attention",
                ctx,
                g,
                costs.attention_scores_cost(
                    seqs, hl, kvl, q_len, kv_len, dk, bytes_per_element, self.kv_bytes_per_element
                ),
                (qshape, kvshape),
                probs,
                tensor_core=True,
                resident_bytes=kv_bytes,
                **attn,
            )
        if op == "attn_softmax":
            return self.compute_attrs(
                op,
                "attention",
                ctx,
                g,
                costs.attention_softmax_cost(seqs, hl, q_len, kv_len),
                probs,
                probs,
                launches=0,
                **attn,
            )
        cost = costs.attention_context_cost(
            seqs, hl, kvl, q_len, kv_len, dv, bytes_per_element, self.kv_bytes_per_element
        )
        if model.is_mla:  # values are the latent itself, already on chip from the scores: no second read
            return self.compute_attrs(
                op,
                "attention",
                ctx,
                g,
                costs.OpCost(cost.flops, 0.0, cost.bytes_written),
                (probs, kvshape),
                (dim(seqs), hl, q_len, dv),
                tensor_core=True,
                launches=0,
                **attn,
            )
        return self.compute_attrs(
            op,
            "attention",
            ctx,
            g,
            cost,
            (probs, kvshape),
            qshape,
            tensor_core=True,
            launches=0,
            resident_bytes=kv_bytes,
            **attn,
        )

    def mla(self, p, ctx, g, n, seqs, q_len, kv_len) -> tuple[str, int]:
        """Multi-head latent attention on one GPU, in its weight-absorbed form (as FlashMLA and
        vLLM run decode; used for prefill too, so prefill FLOPs are an upper bound): the query and
        latent down-projections are replicated over TP (vLLM's ReplicatedLinear), heads split over
        TP; each head's nope query is mapped into the latent space (W_UK absorbed), attention is
        MQA over the cached latent (kv_lora + rope dims for scores, kv_lora for values), and W_UV
        maps each head's context back to v_head_dim."""
        model, hidden = self.model, self.hidden
        hl = self.heads_local
        nope, rope, vd = self.head_dim, model.qk_rope_head_dim or 0, model.v_head_dim or 0
        lora = model.kv_lora_rank or 0
        tokens = seqs * q_len
        tokens_dim = dim(tokens)
        qd = nope + rope
        if model.q_lora_rank:
            qa = self.linear(
                f"{p}.q_a_proj",
                [n],
                "q_a_proj",
                "attention",
                ctx,
                g,
                tokens,
                hidden,
                model.q_lora_rank,
                (tokens_dim, hidden),
                (tokens_dim, model.q_lora_rank),
            )
            q = self.linear(
                f"{p}.q_b_proj",
                [qa],
                "q_b_proj",
                "attention",
                ctx,
                g,
                tokens,
                model.q_lora_rank,
                hl * qd,
                (tokens_dim, model.q_lora_rank),
                (dim(seqs), hl, q_len, qd),
            )
        else:
            q = self.linear(
                f"{p}.q_proj",
                [n],
                "q_proj",
                "attention",
                ctx,
                g,
                tokens,
                hidden,
                hl * qd,
                (tokens_dim, hidden),
                (dim(seqs), hl, q_len, qd),
            )
        # [tokens, kv_lora + rope]: the latent and the shared rotary key, appended to the cache
        kv = self.linear(
            f"{p}.kv_a_proj",
            [n],
            "kv_a_proj",
            "attention",
            ctx,
            g,
            tokens,
            hidden,
            lora + rope,
            (tokens_dim, hidden),
            (tokens_dim, lora + rope),
        )
        # [tokens, hl, nope] x [hl, nope, kv_lora] -> [tokens, hl, kv_lora]
        qa = self.linear(
            f"{p}.q_absorb",
            [q],
            "q_absorb",
            "attention",
            ctx,
            g,
            tokens,
            nope,
            lora,
            (tokens_dim, hl, nope),
            (tokens_dim, hl, lora),
            groups=hl,
        )
        sc = self.attention_node(f"{p}.attn_scores", sorted({qa, kv}), "attn_scores", ctx, g, seqs, q_len, kv_len)
        sm = self.attention_node(f"{p}.attn_softmax", [sc], "attn_softmax", ctx, g, seqs, q_len, kv_len)
        cx = self.attention_node(f"{p}.attn_context", [sm], "attn_context", ctx, g, seqs, q_len, kv_len)
        # [tokens, hl, kv_lora] x [hl, kv_lora, v] -> [tokens, hl, v]
        vu = self.linear(
            f"{p}.v_up",
            [cx],
            "v_up",
            "attention",
            ctx,
            g,
            tokens,
            lora,
            vd,
            (tokens_dim, hl, lora),
            (tokens_dim, hl, vd),
            groups=hl,
        )
        return vu, hl * vd

    def kept_loads(self, layer: int, copies: float) -> tuple[list[float], float]:
        """Per-expert fractions of `copies` that the experts process (after capacity drops) and
        the copies dropped."""
        key = (layer, copies)
        if key not in self.loads_cache:
            if layer not in self.layer_loads:
                self.layer_loads[layer] = routing_loads(self.scenario, layer)
            kept, dropped = costs.kept_copies(
                copies, self.layer_loads[layer], self.scenario.workload.routing.capacity_factor
            )
            self.loads_cache[key] = ([x / copies if copies else 0.0 for x in kept], dropped)
        return self.loads_cache[key]

    def expert_ffns(self, prefix, ctx, g, deps, experts, tokens_e, dropped=0.0) -> list[str]:
        """FC1, activation, FC2 of this GPU's experts, as the model's moe_impl runs them:
        grouped (one grouped GEMM over exactly the routed tokens), per_expert (a GEMM pair per
        expert), or capacity (GShard: every expert padded to C slots, one batched GEMM over all)."""
        model, hidden, bytes_per_element = self.model, self.hidden, self.bytes_per_element
        ffn = (model.expert_ffn_size or 0) // self.pl.etp
        up = 2 * ffn if model.gated else ffn
        if model.moe_impl == "per_expert":
            batches = [(f"{prefix}.e{e}", [e], [t]) for e, t in zip(experts, tokens_e) if t > 0]
        elif model.moe_impl == "capacity":
            routed_total = sum(tokens_e) * model.num_experts / max(len(experts), 1)  # copies reaching this replica
            slots = math.ceil(routed_total / model.num_experts * model.capacity_factor)
            batches = [(prefix, experts, [float(slots)] * len(experts))]
        else:
            batches = [(prefix, experts, tokens_e)]
        ends = []
        for p, ex, toks in batches:
            fc1, act, fc2 = costs.expert_ffn_costs(
                toks, hidden, ffn, model.gated, model.activation, bytes_per_element, self.weight_bytes_per_element
            )
            rows = sum(toks)
            rows_dim = dim(rows)
            active = sum(1 for t in toks if t > 0)
            per_expert = rows / active if active else 0.0
            extra = {"experts": tuple(ex), "expert_tokens": tuple(toks), "grouped": (active, per_expert)}
            drops = {"dropped_copies": dropped} if dropped and p == batches[0][0] else {}  # counted once, on FC1
            a = self.compute(
                f"{p}.expert_fc1",
                deps,
                "expert_fc1",
                "experts",
                ctx,
                g,
                fc1,
                (rows_dim, hidden),
                (rows_dim, up),
                tensor_core=True,
                resident_bytes=active * hidden * up * self.weight_bytes_per_element,
                gemm=(rows, hidden, up),
                weight_b=self.weight_bytes_per_element,
                **extra,
                **drops,
            )
            a = self.compute(
                f"{p}.expert_act",
                [a],
                "expert_act",
                "experts",
                ctx,
                g,
                act,
                (rows_dim, up),
                (rows_dim, ffn),
                launches=2 if self.pytorch and model.gated else 1,
                **extra,
            )  # PyTorch: silu, then mul
            ends.append(
                self.compute(
                    f"{p}.expert_fc2",
                    [a],
                    "expert_fc2",
                    "experts",
                    ctx,
                    g,
                    fc2,
                    (rows_dim, ffn),
                    (rows_dim, hidden),
                    tensor_core=True,
                    resident_bytes=active * ffn * hidden * self.weight_bytes_per_element,
                    gemm=(rows, ffn, hidden),
                    weight_b=self.weight_bytes_per_element,
                    **extra,
                )
            )
        return ends

    def shared_experts(self, p, ctx, g, dep, tokens) -> str:
        """The shared experts on this GPU's routed slice: one FFN of width num_shared * shared_ffn,
        weights replicated on every GPU of the stage (no communication)."""
        model, hidden, bytes_per_element = self.model, self.hidden, self.bytes_per_element
        ffn = model.shared_ffn_size
        up = 2 * ffn if model.gated else ffn
        tokens_dim = dim(tokens)
        f1 = self.linear(
            f"{p}.shared_fc1",
            [dep],
            "shared_fc1",
            "experts",
            ctx,
            g,
            tokens,
            hidden,
            up,
            (tokens_dim, hidden),
            (tokens_dim, up),
        )
        a = self.compute(
            f"{p}.shared_act",
            [f1],
            "shared_act",
            "experts",
            ctx,
            g,
            costs.elementwise_cost(
                tokens * up, tokens * ffn, costs.ACTIVATION_FLOPS_PER_ELEMENT[model.activation], bytes_per_element
            ),
            (tokens_dim, up),
            (tokens_dim, ffn),
        )
        return self.linear(
            f"{p}.shared_fc2",
            [a],
            "shared_fc2",
            "experts",
            ctx,
            g,
            tokens,
            ffn,
            hidden,
            (tokens_dim, ffn),
            (tokens_dim, hidden),
        )

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
        return {
            g: self.compute(
                f"{L}.g{g}.residual_ffn",
                [reduced[g]],
                "residual_add",
                "norm_residual",
                ctx,
                g,
                costs.elementwise_cost(2 * tokens * hidden, tokens * hidden, 1.0, bytes_per_element),
                (tokens_dim, hidden),
                (tokens_dim, hidden),
            )
            for g in self.stage_on[stage]
        }

    def residual_and_norm(self, p: str, dep: str, norm_op: str, ctx: dict, g: int, tokens: float) -> tuple[str, str]:
        """Add the attention output to the residual stream, then normalise it for the FFN/MoE."""
        hidden, bytes_per_element, td = self.hidden, self.bytes_per_element, dim(tokens)
        r = self.compute(
            f"{p}.residual_attn",
            [dep],
            "residual_add",
            "norm_residual",
            ctx,
            g,
            costs.elementwise_cost(2 * tokens * hidden, tokens * hidden, 1.0, bytes_per_element),
            (td, hidden),
            (td, hidden),
        )
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
        pl, hidden, bytes_per_element = self.pl, self.hidden, self.bytes_per_element
        if pl.tp == 1:
            return dict(partial)
        out: dict[int, str] = {}
        S, n = tokens * hidden * bytes_per_element, pl.tp
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
