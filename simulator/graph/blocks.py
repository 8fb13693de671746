"""Graph stage, builder primitives: nodes (kernels, PyTorch helper kernels, collectives) added to
plain lists, and repeated blocks (layers, passes) copied instead of built again.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, NamedTuple

from simulator import costs
from simulator.config import Scenario
from simulator.graph.dag import COMM, COMPUTE, ROUTING, CopiedBlock
from simulator.placement import Placement

#: Kernels a plain PyTorch implementation launches beyond the DAG's one-kernel operators
#: (runtime.framework: pytorch), counted call by call in simulator/calibration/e2e.py, the reference
#: implementation of the measured end-to-end cases. Views, splits and host arithmetic launch none.
#: (CUB's cudaMemsetAsync calls are not kernel launches: see SORT_MEMSETS.)
PYTORCH_HELPER_KERNELS = {
    # softmax(fp32) 1, topk 2 (select + sort of the k winners), sum 1, divide 1: the router's top-k node
    "topk": 5,
    # prefill, GQA: K and V repeat_interleave'd to every query head before the flash kernel
    "attn_gqa_expand": 2,
    # decode: the new K and V written into the cache's slot (two copies)
    "kv_append": 2,
    # sorted MoE: argsort of the expert ids (the int64 indices initialised 1, then CUB's onesweep radix
    # sort, cub/device/dispatch/dispatch_radix_sort.cuh InvokeOnesweep: histogram 1, exclusive sum 1, one
    # pass per byte of the int64 keys 8), order // k 1
    "moe_sort": 12,
    # sorted MoE, torch.bincount on CUDA (ATen SummaryOps.cu _bincount_cuda_template): self.min() then
    # .cpu() (a host sync), self.max() then .item() (a host sync), zeros + histogram kernel; then
    # .tolist() copies the counts to the host (a host sync). Three nodes, each ending in a copy to the host.
    "moe_count_min": 2,
    "moe_count_max": 2,
    "moe_count": 3,
    # capacity MoE: one-hot (arange, eq, cast) 3, slot positions (cumsum, sub, gather) 3, keep mask 1,
    # slot index (mul, add, where) 3, token index (arange, repeat_interleave) 2, zeroed buffer and the
    # index_copy into it 2 (the token gather a[token] between them is the moe_permute node)
    "moe_dispatch_index": 14,
    # sorted MoE: cat of the expert outputs, routing weights reordered and cast 2, scaled 1,
    # zeroed output 1 (then the index_add is the combine node)
    "moe_unsort": 5,
    # capacity MoE: zero trash row 1, cat 1, gather by slot 1, weights masked 1, cast 1, scaled 1
    # (then the sum over the k copies is the combine node)
    "moe_undispatch": 6,
}
#: Calls a plain PyTorch implementation makes that launch no kernel (views, transposes, splits, slice and
#: integer indexing) but cost the launch thread host time (calibration.host_calls times each kind), counted
#: call by call in simulator/calibration/e2e.py and charged to the node whose kernels they precede, as
#: (kind, count) or, for a split, (kind, count, parts). By node name (BlockBuilder.pytorch_host_calls);
#: "qkv_views" goes to the first node that reads q, k and v (kv_append in decode, attn_gqa_expand or
#: attn_scores in prefill); the sorted MoE's split of the gathered rows by expert (one part per local
#: expert) goes to moe_permute.
PYTORCH_HOST_CALLS = {
    # the fused QKV output split in three, then q, k and v each viewed as heads and transposed
    "qkv_views": (("split", 1, 3), ("view", 3), ("transpose", 3)),
    "qkv_views_unfused": (("view", 3), ("transpose", 3)),
    "kv_append": (("slice_nd", 2),),  # cache[0][:, :, -1:] = k (and v): basic indexing, then the copy
    "o_proj": (("transpose", 1), ("reshape", 1)),  # o.transpose(1, 2).reshape(b, s, -1)
    "router": (("view", 1),),  # rms_norm(x).view(-1, h)
    "residual_moe": (("view", 1),),  # the MoE output viewed back as [b, s, h]
    "gated_act": (("chunk", 1),),  # SwiGLU: x.chunk(2, dim=-1)
    # sorted MoE (moe_impl per_expert)
    "moe_sort": (("view", 1),),  # top_e.view(-1).argsort()
    "moe_count_min": (("view", 1),),  # bincount(top_e.view(-1))
    "expert_fc1": (("select", 1),),  # w1[e]
    "expert_fc2": (("select", 1),),  # w2[e]
    "moe_unsort": (("view", 1), ("unsqueeze", 1)),  # top_w.view(-1)[order].unsqueeze(1)
    # capacity MoE (moe_impl capacity)
    "moe_dispatch_index": (("view", 1), ("unsqueeze", 2), ("squeeze", 1)),
    "capacity_fc1": (("slice", 1), ("view", 1)),  # buf[:-1].view(e, c, h)
    "moe_undispatch": (
        ("view", 2),
        ("slice", 1),
        ("unsqueeze", 1),
    ),  # .view(e*c, h), buf[-1:], top_w.view(-1).unsqueeze(1)
    "moe_combine": (("view", 1),),  # y.view(b, k, h) before the sum
}
#: Kernel-launching calls of the same reference implementation whose host dispatch costs more than the
#: 1-element add each kernel launch is priced at (calibration.host_calls times each kind against that add),
#: counted call by call in simulator/calibration/e2e.py and charged to the node whose kernels they launch, as
#: (kind, count). Calls that cost the host no more than the add (same-dtype tensor add, mul, div; GELU) and
#: calls whose host time the eager floors measured whole (matmul, bmm, scaled_dot_product_attention) are
#: not listed; nor is bincount, whose three host syncs are nodes of their own.
PYTORCH_KERNEL_OPS = {
    "norm": (("rms_norm", 1),),  # F.rms_norm (norm_attn, norm_moe, norm_ffn)
    "attn_gqa_expand": (("repeat_interleave", 2),),  # prefill, GQA: K and V expanded to every query head
    "topk": (("softmax", 1), ("topk", 1), ("sum", 1)),  # softmax(fp32), topk, sum(-1, keepdim); the divide: none
    # sorted MoE: argsort of the expert ids, order // k
    "moe_sort": (("argsort", 1), ("floordiv_scalar", 1)),
    "moe_permute_sorted": (("index_select", 1),),  # a.index_select(0, token)
    # cat of the expert outputs, top_w.view(-1)[order], .to(fp16), zeros_like(a) (the scale by weights: a mul)
    "moe_unsort": (("cat", 1), ("index", 1), ("to", 1), ("zeros_like", 1)),
    "moe_combine_sorted": (("index_add", 1),),  # zeros_like(a).index_add_(0, token, ys)
    # capacity MoE: arange, == (one-hot), .to(int32), cumsum, - 1, gather, < cap, flat_e * cap (+ pos: an add),
    # where(kept, slot, E*C), arange, repeat_interleave, zeros, index_copy_
    "moe_dispatch_index": (
        ("arange", 2),
        ("eq", 1),
        ("to", 1),
        ("cumsum", 1),
        ("sub_scalar", 1),
        ("gather", 1),
        ("lt_scalar", 1),
        ("mul_scalar", 1),
        ("where", 1),
        ("repeat_interleave", 1),
        ("zeros", 1),
        ("index_copy", 1),
    ),
    "moe_permute_capacity": (("index", 1),),  # a[token]
    # buf[-1:] * 0, cat, [slot], top_w.view(-1) * kept, .to(fp16) (then y * ...: a mul)
    "moe_undispatch": (("mul_scalar", 1), ("cat", 1), ("index", 1), ("mul_bool", 1), ("to", 1)),
    "moe_combine_capacity": (("sum", 1),),  # y.view(b, k, h).sum(1)
}
SORTED_MOE_CALLS = frozenset(("moe_sort", "moe_count_min", "expert_fc1", "expert_fc2", "moe_unsort"))
CAPACITY_MOE_CALLS = frozenset(("moe_dispatch_index", "moe_undispatch", "moe_combine"))
#: CUB's onesweep radix sort of 8-byte keys (InvokeOnesweep) zeroes its pass counters and its
#: histograms once and its look-back buffer before each of its 8 passes: 10 cudaMemsetAsync calls
#: (device work, no kernel launch of their own).
SORT_MEMSETS = 10


class Template(NamedTuple):
    """A block of built (or copied) nodes that a later identical block copies (BlockBuilder.reused)."""

    cut: int  # length of the block's name prefix
    inputs: list[int]  # the nodes outside the block that feed it, by position
    first: int  # the block's nodes: first .. end - 1
    end: int
    edge_first: int  # the block's edges: edge_first .. edge_end - 1 of the edge lists
    edge_end: int
    outputs: object  # what the block's maker returned (node names, in a str, list or dict)


class StepTemplate(NamedTuple):
    """A decode layer that layers of other steps copy, but for their attention nodes."""

    template: Template
    kv_positions: list[int]  # its attention nodes, as offsets from template.first


def dim(x: float) -> int | float:
    """A shape dimension as shown: an int when whole, else rounded to 2 decimals."""
    return int(x) if float(x).is_integer() else round(float(x), 2)


class BlockBuilder:
    """Accumulates nodes (attribute dicts, or copies of earlier blocks) and edges as plain lists, for a Dag.

    The primitives (add, compute, linear, helper, collective) and the copying of repeated blocks;
    layers.LayerBuilder adds the transformer layers, passes.PassBuilder whole passes."""

    def __init__(self, scenario: Scenario, keep: frozenset[int] | None = None):
        self.scenario = scenario
        self.keep = keep  # GPUs whose nodes are built (None: all); see symmetric_representatives
        self.pytorch = scenario.runtime.framework == "pytorch"
        self.moe_allreduce = scenario.moe_allreduce  # MoE layers as the engines run a TP group's experts
        self.ep_allgather = (
            scenario.runtime.ep_dispatch == "allgather"
        )  # the expert group gathers, then reduce-scatters
        # the MoE algorithm whose PyTorch helper kernels the graph shows (None: fused, or grouped)
        self.pytorch_moe = scenario.model.moe_impl if self.pytorch else None
        self.templates: dict[tuple, Template] = {}  # see layer_reused
        # Per node, in creation order: name, attributes, the index of the node it copies (or -1).
        # A copied layer's nodes have neither name nor attributes here (Dag makes them on request):
        # `copies` says where each copied block comes from; `index` names the nodes deps refer to.
        self.names: list[str | None] = []
        self.attrs: list[dict | None] = []
        self.twins: list[int] = []
        self.copies: list[CopiedBlock] = []
        self.index: dict[str, int] = {}
        self.src: list[int] = []  # edges, as node indices
        self.dst: list[int] = []
        self.node_step: list[int] = []  # per node, its step (a copy's may differ from its original's)
        self.kv_nodes: list[int] = []  # decode attention nodes, whose attributes depend on the KV length
        self.across_steps: dict[tuple, StepTemplate] = {}  # see layer_reused
        self.model = scenario.model
        self.pl = Placement.of(scenario)
        # Formats per class of operation (config.precision): activations between kernels, GEMM
        # weights and compute per class, attention compute, KV cache, collective payloads.
        self.formats = self.model.formats
        self.bytes_per_element = self.formats.activation_bytes  # of activations
        self.weight_bytes_per_element = self.formats.dense_gemm.weight_bytes
        self.kv_bytes_per_element = self.formats.kv_bytes
        self.payload_bytes_per_element = self.formats.payload_bytes  # of collectives
        self.dispatch_bytes_per_element = self.formats.dispatch_bytes  # of the EP dispatch (the combine: payload)
        self.layer_loads: dict[int, list[float]] = {}
        self.slots_cache: dict[int, tuple[tuple[tuple[int, float], ...], ...]] = {}  # per layer, per EP rank
        self.loads_cache: dict[tuple[int, float], tuple[list[float], float]] = {}
        model, tp = self.model, self.pl.tp
        self.heads_local = model.num_heads // tp
        # KV heads split over tp, or replicated when there are fewer KV heads than TP ranks.
        self.kv_heads_local = max(1, model.kv_heads // tp)
        self.head_dim = model.head_size
        self.hidden = model.hidden_size

    def pytorch_host_calls(self, nid: str, attrs: dict) -> tuple | None:
        """What a plain PyTorch implementation's calls for this node cost the host beyond one eager floor per
        kernel: its no-kernel calls (PYTORCH_HOST_CALLS) and its costlier kernel ops (PYTORCH_KERNEL_OPS), as
        ((kind, count[, parts]), ...); None when there are none."""
        calls = (self._no_kernel_calls(nid, attrs) or ()) + self._kernel_ops(nid, attrs)
        return calls or None

    def _kernel_ops(self, nid: str, attrs: dict) -> tuple:
        """The node's PYTORCH_KERNEL_OPS entries (MLA attention and grouped MoE have no plain implementation)."""
        name, op, moe = nid.rsplit(".", 1)[-1], attrs["op"], self.pytorch_moe
        if op in ("norm_attn", "norm_moe", "norm_ffn"):
            return PYTORCH_KERNEL_OPS["norm"]
        if name in ("attn_gqa_expand", "topk"):
            return PYTORCH_KERNEL_OPS[name]
        own = {"per_expert": ("moe_sort", "moe_unsort"), "capacity": ("moe_dispatch_index", "moe_undispatch")}
        if moe in own and name in own[moe]:
            return PYTORCH_KERNEL_OPS[name]
        if moe in own and name in ("moe_permute", "moe_combine"):
            return PYTORCH_KERNEL_OPS[f"{name}_{'sorted' if moe == 'per_expert' else 'capacity'}"]
        return ()

    def _no_kernel_calls(self, nid: str, attrs: dict) -> tuple | None:
        """The no-kernel calls (PYTORCH_HOST_CALLS) a plain PyTorch implementation makes before this node's
        kernels; None when it makes none. MLA attention and grouped MoE have no such implementation here."""
        name = nid.rsplit(".", 1)[-1]
        model, moe = self.model, self.pytorch_moe
        qkv = "qkv_views" if model.fused_qkv else "qkv_views_unfused"
        if name == "kv_append":
            return PYTORCH_HOST_CALLS[qkv] + PYTORCH_HOST_CALLS["kv_append"]
        if name == "attn_gqa_expand" or (name == "attn_scores" and attrs["phase"] == "prefill"):
            if model.is_mla or (name == "attn_scores" and self.kv_heads_local < self.heads_local):
                return None  # MLA: no plain implementation; GQA: the views went to attn_gqa_expand
            return PYTORCH_HOST_CALLS[qkv]
        if name in ("o_proj", "router", "residual_moe"):
            return PYTORCH_HOST_CALLS[name]
        if attrs["op"] in ("expert_act", "ffn_act", "shared_act"):
            return PYTORCH_HOST_CALLS["gated_act"] if model.gated and attrs["launches"] >= 2 else None
        if moe == "per_expert":
            if name == "moe_permute":
                return (("split", 1, len(self.pl.experts_of_gpu(attrs["gpu"]))),)
            return PYTORCH_HOST_CALLS[name] if name in SORTED_MOE_CALLS else None
        if moe == "capacity":
            if name == "expert_fc1":
                return PYTORCH_HOST_CALLS["capacity_fc1"]
            return PYTORCH_HOST_CALLS[name] if name in CAPACITY_MOE_CALLS else None
        return None

    def on_gpus(self, gpus) -> list[int]:
        """The GPUs of `gpus` whose nodes this builder materialises."""
        return list(gpus) if self.keep is None else [g for g in gpus if g in self.keep]

    @cached_property
    def stage_on(self) -> list[list[int]]:
        """Per stage, its materialised GPUs."""
        return [self.on_gpus(self.pl.stage_gpus(st)) for st in range(self.pl.pp)]

    @cached_property
    def tp_groups_on(self) -> list[list[tuple[int, list[int], list[int]]]]:
        """Per stage, (dp rank, TP group, its materialised GPUs) for the groups with any."""
        pl = self.pl
        return [
            [(d, grp, mine) for d in range(pl.dp) if (mine := self.on_gpus(grp := pl.tp_group(st, d)))]
            for st in range(pl.pp)
        ]

    @cached_property
    def ep_groups_on(self) -> list[list[tuple[list[int], list[int]]]]:
        """Per stage, (EP group, its materialised GPUs) for the groups with any."""
        pl = self.pl
        return [[(grp, mine) for grp in pl.ep_groups(st) if (mine := self.on_gpus(grp))] for st in range(pl.pp)]

    # -- primitive adders ------------------------------------------------------------------
    def add(self, nid: str, deps, **attrs) -> str:
        if self.pytorch and attrs.get("launches"):
            calls = self.pytorch_host_calls(nid, attrs)
            if calls:
                attrs["host_calls"] = calls
        i = len(self.attrs)
        index = self.index
        if nid in index:
            raise ValueError(f"node {nid} is added twice")
        for d in deps:
            if d not in index:
                raise KeyError(f"edge {d} -> {nid} names an unknown node")
            self.src.append(index[d])
            self.dst.append(i)
        self.names.append(nid)
        self.attrs.append(attrs)
        self.twins.append(-1)
        self.node_step.append(attrs["step"])
        index[nid] = i
        return nid

    def compute(
        self,
        nid,
        deps,
        op,
        category,
        ctx,
        gpu,
        cost: costs.OpCost,
        in_shape,
        out_shape,
        tensor_core=False,
        launches=1,
        kind=COMPUTE,
        resident_bytes=0.0,
        **extra,
    ) -> str:
        """A kernel on one GPU. `resident_bytes`: what it reads from weights or the KV cache, so
        that act_bytes (transient activations in + out) excludes them."""
        return self.add(
            nid,
            deps,
            **self.compute_attrs(
                op, category, ctx, gpu, cost, in_shape, out_shape, tensor_core, launches, kind, resident_bytes, **extra
            ),
        )

    def compute_attrs(
        self,
        op,
        category,
        ctx,
        gpu,
        cost: costs.OpCost,
        in_shape,
        out_shape,
        tensor_core=False,
        launches=1,
        kind=COMPUTE,
        resident_bytes=0.0,
        **extra,
    ) -> dict:
        return dict(
            op=op,
            kind=kind,
            category=category,
            gpu=gpu,
            flops=cost.flops,
            bytes_read=cost.bytes_read,
            bytes_written=cost.bytes_written,
            act_bytes=cost.bytes_read + cost.bytes_written - resident_bytes,
            in_shape=in_shape,
            out_shape=out_shape,
            tensor_core=tensor_core,
            launches=launches,
            dtype=extra.pop("dtype", self.formats.activations),  # a tensor-core op: its compute format
            **ctx,
            **extra,
        )

    def gemm_attrs(self, gemm_class: str) -> dict:
        """The attributes a GEMM of a precision class carries: its compute format (`dtype`, whose peak it
        runs at), bytes per stored weight (`weight_b`) and, when its input is in another format than
        its output (W8A8, W4A4), the output's bytes per element (`out_b`)."""
        fmt = getattr(self.formats, gemm_class)
        attrs = {"dtype": fmt.compute, "weight_b": fmt.weight_bytes}
        if fmt.input_bytes != self.bytes_per_element:
            attrs["out_b"] = self.bytes_per_element
        return attrs

    def linear(self, nid, deps, *args, **kwargs) -> str:
        """A GEMM against a [k, n] weight (or a batch of `groups` of them over the same rows), in the
        formats of its precision class (dense_gemm, expert_gemm, lm_head, router): linear_attrs's node."""
        return self.add(nid, deps, **self.linear_attrs(*args, **kwargs))

    def linear_attrs(
        self,
        op,
        category,
        ctx,
        gpu,
        tokens,
        k,
        n,
        in_shape,
        out_shape,
        kind=COMPUTE,
        groups: int = 1,
        gemm_class: str = "dense_gemm",
    ) -> dict:
        """The attributes of a GEMM node (`linear`)."""
        extra = {"grouped": (groups, tokens)} if groups > 1 else {}
        fmt = getattr(self.formats, gemm_class)
        return self.compute_attrs(
            op,
            category,
            ctx,
            gpu,
            costs.linear_cost(tokens, k, n, self.bytes_per_element, fmt.weight_bytes, groups, fmt.input_bytes),
            in_shape,
            out_shape,
            tensor_core=True,
            kind=kind,
            resident_bytes=groups * k * n * fmt.weight_bytes,
            gemm=(groups * tokens, k, n),
            **self.gemm_attrs(gemm_class),
            **extra,
        )

    def helper(
        self, nid, deps, op, category, ctx, gpu, bytes_read, bytes_written, shape, resident_bytes=0.0, **extra
    ) -> str:
        """Memory-bound helper kernels of a plain PyTorch implementation (PYTORCH_HELPER_KERNELS[op] of
        them): copies, index arithmetic, buffer fills, timed by the bytes they move, or kernel by kernel
        when `helper_kernels` lists them ((class, bytes written) per kernel: op_time.helper_kernels_s)."""
        return self.compute(
            nid,
            deps,
            op,
            category,
            ctx,
            gpu,
            costs.OpCost(0.0, bytes_read, bytes_written),
            shape,
            shape,
            launches=PYTORCH_HELPER_KERNELS[op],
            kind=ROUTING,
            resident_bytes=resident_bytes,
            **extra,
        )

    def collective(
        self, nid, deps, op, category, ctx, gpus, collective, send_bytes, recv_bytes, message_bytes, shape, group
    ) -> str:
        return self.add(
            nid,
            deps,
            op=op,
            kind=COMM,
            category=category,
            gpu=tuple(gpus),
            collective=collective,
            group=group,
            send_bytes=tuple(send_bytes),
            recv_bytes=tuple(recv_bytes),
            message_bytes=message_bytes,
            flops=0.0,
            bytes_read=float(sum(send_bytes)),
            bytes_written=float(sum(recv_bytes)),
            in_shape=shape,
            out_shape=shape,
            launches=1,
            dtype=self.formats.communication,
            **ctx,
        )

    def layer_reused(self, tag, ctx, ready, seqs, q_len, kv_len, gather) -> dict:
        """build_layer, or a copy of an identical layer built earlier: the same phase, stage, layer kind,
        shapes, routing loads and inputs (wired alike) give the same nodes and edges but for the
        names' prefix and the step, microbatch and layer fields (see reused)."""
        layer = ctx["layer"]
        inputs: dict[str, int] = {}  # this layer's input nodes, numbered in order of first use
        wiring = tuple((g, tuple(inputs.setdefault(d, len(inputs)) for d in as_list(v))) for g, v in ready.items())
        per_layer = layer if self.scenario.workload.routing.sampled is not None else None  # a draw per layer
        key = (
            "layer",
            ctx["phase"],
            ctx["stage"],
            self.model.is_moe_layer(layer),
            seqs,
            q_len,
            kv_len,
            gather,
            per_layer,
            wiring,
            self.model.attention_window(layer),  # sliding-window layers have attention nodes of their own
        )
        fields = {"step": ctx["step"], "microbatch": ctx["microbatch"], "layer": layer}
        prefix = f"{tag}.L{layer}"
        across = key[:6] + key[7:]  # the same but for the KV length
        if q_len == 1 and key not in self.templates:
            source = self.across_steps.get(across)
            if source is not None:  # a decode layer of another step: a copy with attention nodes of its own
                template, kv_positions = source
                out, copy = self.copy_block(template, prefix, list(inputs), fields)
                for pos in kv_positions:
                    j = copy.first + pos
                    a = self.attrs[template.first + pos]
                    assert a is not None  # attention nodes are built, never lazy copies
                    self.attrs[j] = self.attention_attrs(a["op"], ctx, a["gpu"], seqs, q_len, kv_len)
                    self.twins[j] = -1
                    self.kv_nodes.append(j)
                self.templates[key] = copy  # the template of this step's other layers and microbatches
                return out
        n0, k0 = len(self.attrs), len(self.kv_nodes)
        out = self.reused(
            key, prefix, list(inputs), fields, lambda: self.build_layer(tag, ctx, ready, seqs, q_len, kv_len, gather)
        )
        made = self.templates.get(key)
        if q_len == 1 and made is not None and made.first == n0 and across not in self.across_steps:
            self.across_steps[across] = StepTemplate(made, [i - n0 for i in self.kv_nodes[k0:]])
        return out

    def pass_reused(self, phase: str, step: int, mb: int, start_deps: list[str]) -> str:
        """build_pass, or a copy of the same pass of an earlier microbatch: every microbatch's pass
        of one step has the same nodes and edges but for the names' prefix, the microbatch field
        and the node it waits for (the microbatch's previous token)."""
        tag = f"{'p' if phase == 'prefill' else 'd' + str(step)}.mb{mb}"
        return self.reused(
            ("pass", phase, step, len(start_deps)),
            tag,
            list(start_deps),
            {"microbatch": mb},
            lambda: self.build_pass(phase, step, mb, start_deps),
        )

    def reused(self, key: tuple, prefix: str, inputs: list[str], fields: dict, make):
        """make(), or a copy of the block of nodes that make() added under the same key before.

        A block is copyable when every node it added is named `prefix.` something and every edge
        into it comes from its `inputs` (or from inside). A copy gets the template's nodes and
        edges, shifted, with the inputs swapped by position; its nodes are named and given their
        attributes (the template's, with `fields` changed) only when the Dag is asked for them.
        Copying is several times cheaper than building, and `twins` tells the simulation that a
        copy costs what its original costs. Returns make()'s outputs (node names, in a str, list
        or dict) or the copy's.
        """
        template = self.templates.get(key)
        if template is None:
            n0, e0 = len(self.attrs), len(self.src)
            out = make()
            own = prefix + "."
            in_idx = [self.index[x] for x in inputs]
            # a None name is a layer copied inside this block (a pass), named under its prefix
            if all(n is None or n.startswith(own) for n in self.names[n0:]) and all(
                u >= n0 or u in in_idx for u in self.src[e0:]
            ):
                self.templates[key] = Template(len(prefix), in_idx, n0, len(self.attrs), e0, len(self.src), out)
            return out
        return self.copy_block(template, prefix, inputs, fields)[0]

    def copy_block(self, template: Template, prefix: str, inputs: list[str], fields: dict) -> tuple[Any, Template]:
        """A copy of a template block (see reused) under `prefix`, fed by `inputs`: returns its
        outputs and the copy itself as a template."""
        cut, old_inputs, n0, n1, e0, e1, out = template
        first, e_first = len(self.attrs), len(self.src)
        shift = first - n0
        new_inputs = [self.index[x] for x in inputs]
        renamed = dict(zip(old_inputs, new_inputs))  # template inputs -> this block's
        input_name = dict(zip(old_inputs, inputs))
        twins = self.twins
        self.names.extend([None] * (n1 - n0))
        self.attrs.extend([None] * (n1 - n0))
        twins.extend([t if t >= 0 else n for n, t in enumerate(twins[n0:n1], n0)])  # always an original
        self.node_step.extend([fields["step"]] * (n1 - n0) if "step" in fields else self.node_step[n0:n1])
        self.copies.append(CopiedBlock(first, n0, n1, prefix, cut, fields))
        self.src.extend([u + shift if u >= n0 else renamed[u] for u in self.src[e0:e1]])
        self.dst.extend([v + shift for v in self.dst[e0:e1]])
        index = self.index

        def output(x):  # the copy's node(s) for the template's output(s) x, named so that deps can use them
            if isinstance(x, list):
                return [output(v) for v in x]
            if isinstance(x, dict):
                return {g: output(v) for g, v in x.items()}
            i = index[x]
            if i < n0:  # an input passed through
                return input_name[i]
            name = prefix + x[cut:]
            index[name] = i + shift
            return name

        copied = output(out)
        return copied, Template(len(prefix), new_inputs, first, len(self.attrs), e_first, len(self.src), copied)

    # -- hooks of the subclasses -----------------------------------------------------------
    def build_layer(self, tag, ctx, ready, seqs, q_len, kv_len, gather) -> dict[int, str]:
        raise NotImplementedError  # layers.LayerBuilder

    def attention_attrs(self, op, ctx, g, seqs, q_len, kv_len) -> dict:
        raise NotImplementedError  # layers.LayerBuilder

    def build_pass(self, phase: str, step: int, mb: int, start_deps: list[str]) -> str:
        raise NotImplementedError  # passes.PassBuilder


def as_list(dep) -> list[str]:
    """A dependency (None, a node name or a list of them) as a list of names."""
    if dep is None:
        return []
    return list(dep) if isinstance(dep, list) else [dep]
