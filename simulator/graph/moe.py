"""Graph stage, experts: the routed experts of one GPU (grouped, per-expert or capacity MoE as
`model.moe_impl` runs them), the shared experts, and the expert loads kept at capacity."""

from __future__ import annotations

import math

from simulator import costs
from simulator.graph.blocks import BlockBuilder, dim
from simulator.placement import routing_loads


class ExpertBuilder(BlockBuilder):
    """Adds a GPU's expert FFNs (routed and shared) for the token copies routing sends it."""

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

    def slots_of(self, layer: int, g: int) -> tuple[tuple[int, float], ...]:
        """GPU g's (expert, share of its copies) pairs in `layer` (placement.Placement.rank_slots: the contiguous
        blocks, or EPLB's placement of this layer's routing loads when there are redundant copies)."""
        if layer not in self.slots_cache:
            if layer not in self.layer_loads:
                self.layer_loads[layer] = routing_loads(self.scenario, layer)
            self.slots_cache[layer] = self.pl.rank_slots(tuple(self.layer_loads[layer]))
        return self.slots_cache[layer][self.pl.ep_rank_of(g)]

    def expert_ffns(self, prefix, ctx, g, deps, experts, tokens_e, dropped=0.0, routed_tokens=None) -> list[str]:
        """FC1, activation, FC2 of this GPU's experts, as the model's moe_impl runs them:
        grouped (one grouped GEMM over exactly the routed tokens), per_expert (a GEMM pair per
        expert), or capacity (GShard: every expert padded to C slots, one batched GEMM over all).

        tokens_e are expected copies; given the tokens routed in the layer (`routed_tokens`), a grouped
        GEMM reads the weights of the experts expected to get at least one (costs.expected_touched_experts)
        and gives each of them the rows of all, so a sparse decode batch reads what it touches."""
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
            fmt = self.formats.expert_gemm
            weight_b = fmt.weight_bytes
            present = sum(1 for t in toks if t > 0)
            touched = model.moe_impl == "grouped" and routed_tokens is not None
            active = costs.expected_touched_experts(toks, routed_tokens) if touched else present
            fc1, act, fc2 = costs.expert_ffn_costs(
                toks, hidden, ffn, model.gated, model.activation, bytes_per_element, weight_b, fmt.input_bytes, active
            )
            rows = sum(toks)
            rows_dim = dim(rows)
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
                resident_bytes=active * hidden * up * weight_b,
                gemm=(rows, hidden, up),
                **self.gemm_attrs("expert_gemm"),
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
                    resident_bytes=active * ffn * hidden * weight_b,
                    gemm=(rows, ffn, hidden),
                    **self.gemm_attrs("expert_gemm"),
                    **extra,
                )
            )
        return ends

    def shared_experts(self, p, ctx, g, dep, tokens, shards: int = 1) -> str:
        """The shared experts on this GPU's routed slice: one FFN of width num_shared * shared_ffn,
        weights replicated on every GPU of the stage (no communication); or, with `shards` > 1 (the engines' TP
        MoE, runtime.moe_dispatch allreduce), this GPU's 1/shards of its width on all the tokens, summed by
        the TP all-reduce after the MoE."""
        model, hidden, bytes_per_element = self.model, self.hidden, self.bytes_per_element
        size = model.shared_ffn_size
        ffn = size // shards if size % shards == 0 else size / shards
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
            gemm_class="expert_gemm",
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
            launches=2 if self.pytorch and model.gated else 1,  # PyTorch: silu, then mul
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
            gemm_class="expert_gemm",
        )
