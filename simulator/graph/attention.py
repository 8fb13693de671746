"""Graph stage, attention: the attention block of a layer on one GPU (MHA/GQA/MQA and MLA), its
flash-attention nodes and their attributes (the only nodes a decode step's KV length changes)."""

from __future__ import annotations

from simulator import costs
from simulator.graph.blocks import BlockBuilder, dim


class AttentionBuilder(BlockBuilder):
    """Adds a layer's attention on one GPU (mha or mla) and prices its attention kernels."""

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
        # No copy of the context back to [B, S, H*D]: PyTorch's flash SDPA kernels (cuDNN, FlashAttention,
        # memory-efficient) write their output in the query's memory layout, which here is the QKV GEMM's
        # [B, S, H, D] (cuDNN: alloc_with_matching_layout(q, o, ...)), so transpose(1, 2).reshape is a view.
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
            "dtype": self.formats.attention,  # the kernel's compute format (its peak)
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
                costs.attention_scores_cost(  # queries read in the attention's compute format
                    seqs, hl, kvl, q_len, kv_len, dk, self.formats.attention_input_bytes, self.kv_bytes_per_element
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
