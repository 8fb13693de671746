"""Graph stage, attention: the attention block of a layer on one GPU (MHA/GQA/MQA and MLA), its
flash-attention nodes and their attributes (the only nodes a decode step's KV length changes)."""

from __future__ import annotations

from simulator import costs
from simulator.graph.blocks import BlockBuilder, dim

#: The MLA nodes whose rows depend on a batch's split of prefill and decode (AttentionBuilder.mla_rows), in the
#: order mla_parts_attrs gives them: kv_b_proj and k_rope_concat over context rows, q_absorb and v_up over
#: absorbed rows.
MLA_SPLIT_OPS = ("kv_b_proj", "k_rope_concat", "q_absorb", "v_up")


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

    def mla_decompressed(self, q_len) -> bool:
        """Whether MLA attention over `q_len` new tokens per sequence runs decompressed (runtime.mla_prefill)."""
        return q_len > 1 and self.scenario.runtime.mla_prefill == "decompressed"

    def attention_attrs(self, op, ctx, g, seqs, q_len, kv_len) -> dict:
        """The attributes of an attention node: MHA/GQA/MQA over the KV cache; MLA's absorbed form, MQA over the
        cached latent; or MLA's decompressed prefill, MHA over the K and V kv_b_proj wrote (transient). A
        sliding-window layer (model.attention_window) attends over costs.windowed_kv_len's equivalent length."""
        model, bytes_per_element = self.model, self.bytes_per_element
        kv_len = costs.windowed_kv_len(q_len, kv_len, model.attention_window(ctx["layer"]))
        hl = self.heads_local
        kv_b = self.kv_bytes_per_element
        decompressed = model.is_mla and self.mla_decompressed(q_len)
        if decompressed:  # MHA: q/k head dim nope + rope, v head dim v_head_dim
            kvl, dk, dv, kv_b = (
                hl,
                self.head_dim + (model.qk_rope_head_dim or 0),
                model.v_head_dim or 0,
                bytes_per_element,
            )
            k_bytes = seqs * kvl * kv_len * dk * kv_b  # K and V: activations kv_b_proj wrote, not the cache
            kv_total, resident_k, resident_v = k_bytes + seqs * kvl * kv_len * dv * kv_b, 0.0, 0.0
        elif model.is_mla:  # MQA over the cached latent: kv_lora + rope dims for scores, kv_lora for values
            kvl, dk, dv = 1, (model.kv_lora_rank or 0) + (model.qk_rope_head_dim or 0), model.kv_lora_rank or 0
            resident_k = kv_total = seqs * kv_len * dk * kv_b  # the cached latent: resident, not transient
            resident_v = 0.0  # values are the latent itself, already on chip from the scores: no second read
        else:
            kvl, dk = self.kv_heads_local, self.head_dim
            dv = dk
            resident_k = resident_v = seqs * kvl * kv_len * dk * kv_b  # K (or V) of the cache: resident
            kv_total = 2 * resident_k
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
                    seqs, hl, kvl, q_len, kv_len, dk, self.formats.attention_input_bytes, kv_b
                ),
                (qshape, kvshape),
                probs,
                tensor_core=True,
                resident_bytes=resident_k,
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
        cost = costs.attention_context_cost(seqs, hl, kvl, q_len, kv_len, dv, bytes_per_element, kv_b)
        if model.is_mla and not decompressed:  # the latent is on chip already: no second read
            cost = costs.OpCost(cost.flops, 0.0, cost.bytes_written)
        return self.compute_attrs(
            op,
            "attention",
            ctx,
            g,
            cost,
            (probs, (dim(seqs), kvl, kv_len, dv) if decompressed else kvshape),
            (dim(seqs), hl, q_len, dv),
            tensor_core=True,
            launches=0,
            resident_bytes=resident_v,
            **attn,
        )

    def mla_rows(self, seqs, q_len, kv_len) -> tuple[float, float]:
        """(context rows kv_b_proj up-projects, query rows that run absorbed) of MLA attention over `seqs`
        sequences of `q_len` new tokens attending to `kv_len` positions: a decompressed prefill up-projects
        every position it attends to (vLLM's _forward_prefill: the new tokens' latent and the cached
        context's), an absorbed pass maps each new token's query into the latent and its context back."""
        if self.mla_decompressed(q_len):
            return seqs * kv_len, 0.0
        return 0.0, seqs * q_len

    def mla_part_attrs(self, op, ctx, g, rows) -> dict:
        """The attributes of one of the MLA nodes whose rows depend on the batch's split (mla_rows): kv_b_proj
        and k_rope_concat over context rows, q_absorb and v_up over absorbed rows."""
        model, b = self.model, self.bytes_per_element
        hl, nope, rope, vd = self.heads_local, self.head_dim, model.qk_rope_head_dim or 0, model.v_head_dim or 0
        lora, rows_dim = model.kv_lora_rank or 0, dim(rows)
        if op == "kv_b_proj":  # [rows, kv_lora] x [kv_lora, hl (nope + v)]: W_UK and W_UV of this rank's heads
            return self.linear_attrs(
                op, "attention", ctx, g, rows, lora, hl * (nope + vd), (rows_dim, lora), (rows_dim, hl, nope + vd)
            )
        if op == "k_rope_concat":  # torch.cat([k_nope, k_pe expanded over the heads], -1): one copy kernel
            return self.compute_attrs(
                op,
                "attention",
                ctx,
                g,
                costs.OpCost(0.0, rows * (hl * nope + rope) * b, rows * hl * (nope + rope) * b),
                (rows_dim, hl, nope),
                (rows_dim, hl, nope + rope),
            )
        if op == "q_absorb":  # [rows, hl, nope] x [hl, nope, kv_lora] -> [rows, hl, kv_lora]
            return self.linear_attrs(
                op, "attention", ctx, g, rows, nope, lora, (rows_dim, hl, nope), (rows_dim, hl, lora), groups=hl
            )
        assert op == "v_up"  # [rows, hl, kv_lora] x [hl, kv_lora, v] -> [rows, hl, v]
        return self.linear_attrs(
            op, "attention", ctx, g, rows, lora, vd, (rows_dim, hl, lora), (rows_dim, hl, vd), groups=hl
        )

    def mla_parts_attrs(self, ctx, g, seqs, q_len, kv_len) -> list[dict]:
        """The attributes of the MLA nodes mla_part_attrs describes that this batch runs (rows > 0)."""
        kv_rows, absorbed_rows = self.mla_rows(seqs, q_len, kv_len)
        rows_of = (kv_rows, kv_rows, absorbed_rows, absorbed_rows)
        return [self.mla_part_attrs(op, ctx, g, rows) for op, rows in zip(MLA_SPLIT_OPS, rows_of) if rows > 0]

    def mla(self, p, ctx, g, n, seqs, q_len, kv_len) -> tuple[str, int]:
        """Multi-head latent attention on one GPU, as vLLM's MLA backends run it (vllm/v1/attention/backends/mla/
        common.py): the query and latent down-projections are replicated over TP (vLLM's ReplicatedLinear), heads
        split over TP. Decode runs the weight-absorbed form (FlashMLA): each head's nope query is mapped into the
        latent space (W_UK absorbed, q_absorb), attention is MQA over the cached latent (kv_lora + rope dims for
        scores, kv_lora for values) and W_UV maps each head's context back to v_head_dim (v_up). A prefill runs
        decompressed (runtime.mla_prefill): kv_b_proj up-projects the latent of every position attended to into
        per-head k_nope and v, the shared rotary key is concatenated to k_nope, and flash attention runs as MHA
        (q/k head dim nope + rope, v head dim v_head_dim). A ragged batch runs both: its prefill chunks
        decompressed, its decode sequences absorbed (mla_rows)."""
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
        kv_rows, absorbed_rows = self.mla_rows(seqs, q_len, kv_len)
        if absorbed_rows:
            q = self.add(f"{p}.q_absorb", [q], **self.mla_part_attrs("q_absorb", ctx, g, absorbed_rows))
        if kv_rows:
            kv = self.add(f"{p}.kv_b_proj", [kv], **self.mla_part_attrs("kv_b_proj", ctx, g, kv_rows))
            kv = self.add(f"{p}.k_rope_concat", [kv], **self.mla_part_attrs("k_rope_concat", ctx, g, kv_rows))
        sc = self.attention_node(f"{p}.attn_scores", sorted({q, kv}), "attn_scores", ctx, g, seqs, q_len, kv_len)
        sm = self.attention_node(f"{p}.attn_softmax", [sc], "attn_softmax", ctx, g, seqs, q_len, kv_len)
        cx = self.attention_node(f"{p}.attn_context", [sm], "attn_context", ctx, g, seqs, q_len, kv_len)
        if absorbed_rows:
            cx = self.add(f"{p}.v_up", [cx], **self.mla_part_attrs("v_up", ctx, g, absorbed_rows))
        return cx, hl * vd
