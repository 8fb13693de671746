"""Op-time stage: one DAG node's seconds on a hardware profile, from the roofline or the profile's measured tables."""

from __future__ import annotations

from simulator import costs
from simulator.config import DTYPE_BYTES
from simulator.config.hardware import Calibration, HardwareProfile, attention_fixed_part_s, series_interpolate
from simulator.graph.dag import COMM, MARKER, ROUTING  # NodeKind members, bound once (hot loops)


def node_time_s(
    attrs: dict,
    hw: HardwareProfile,
    gpn: int,
    eager: bool,
    gated: bool = False,
    custom_allreduce_max_bytes: float | None = None,
) -> tuple[float, str]:
    """Duration of one node on the profile, and what bounds it. custom_allreduce_max_bytes: the engine's custom
    all-reduce buffer (runtime.allreduce custom), used by an all-reduce inside one node; None: NCCL's ring."""
    kind = attrs["kind"]
    if kind == MARKER:
        return 0.0, "none"
    if kind == COMM:
        gpus = attrs["gpu"]
        per_node: dict[int, int] = {}
        for g in gpus:
            per_node[g // gpn] = per_node.get(g // gpn, 0) + 1
        same_node = len(per_node) == 1
        link = hw.intra_node if same_node else hw.inter_node
        # collectives spanning nodes: hierarchical (NVLink inside each node, NICs between nodes)
        local, nodes = max(per_node.values()), len(per_node)
        intra, inter = hw.intra_node, hw.inter_node
        coll = attrs["collective"]
        if coll == "all_reduce":
            if same_node and custom_allreduce_max_bytes is not None:
                time_s = costs.custom_allreduce_s(attrs["message_bytes"], local, intra, custom_allreduce_max_bytes)
            else:
                time_s = costs.hierarchical_allreduce_s(attrs["message_bytes"], local, nodes, intra, inter)
        elif coll in ("all_gather", "reduce_scatter"):
            time_s = costs.hierarchical_allgather_s(attrs["message_bytes"], local, nodes, intra, inter)
        elif coll == "all_to_all":
            time_s = costs.hierarchical_alltoall_s(
                list(attrs["send_bytes"]), list(attrs["recv_bytes"]), local, nodes, intra, inter
            )
        elif coll == "send_recv":
            time_s = costs.sendrecv_s(attrs["message_bytes"], link)
        else:
            raise ValueError(f"unknown collective {coll!r}")
        return time_s, ("nvlink" if same_node else "network")
    if hw.calibration is not None:
        return calibrated_node_s(attrs, hw, hw.calibration, eager, gated)
    return costs.compute_op_s(
        attrs["flops"],
        attrs["bytes_read"] + attrs["bytes_written"],
        hw,
        attrs["dtype"],
        attrs["tensor_core"],
        attrs["launches"],
        eager,
        gemm="gemm" in attrs,
    )


def host_dispatch_s(attrs: dict, hw: HardwareProfile) -> float:
    """Host time to issue one node's kernels eagerly (the launch thread's cost per node): per kernel,
    its op class's eager floor when the profile is calibrated (calibration.fit: what one eager call
    of negligible GPU work costs, so the host's dispatch time), else host_launch_s; plus, on a calibrated
    profile, the node's no-kernel PyTorch calls (host_calls_s), which the host makes before its kernels. A
    collective is one launch per member's host; a marker or a fused sub-op (launches = 0) costs none."""
    kind = attrs["kind"]
    if kind == MARKER:
        return 0.0
    cal = hw.calibration
    if kind == COMM:
        return cal.eager_floor_s["elementwise"] if cal is not None else hw.host_launch_s
    launches = attrs["launches"]
    if cal is None or not launches:
        return launches * hw.host_launch_s
    calls_s = host_calls_s(attrs["host_calls"], cal.host_call_s) if "host_calls" in attrs else 0.0
    if "gemm" in attrs:
        op_class = "grouped_gemm" if "grouped" in attrs and attrs["grouped"][0] > 1 else "gemm"
    elif attrs.get("fused") == "flash_attention":
        op_class = "attention"
    elif kind == ROUTING and "helper" in cal.eager_floor_s:
        op_class = "helper"  # index arithmetic, gathers, scatters, reductions: measured apart when a file has them
    else:
        op_class = "elementwise"
    return launches * cal.eager_floor_s[op_class] + calls_s


def host_calls_s(calls, host_call_s: dict[str, float]) -> float:
    """Host seconds of a node's no-kernel PyTorch calls (views, splits, basic indexing: graph.PYTORCH_HOST_CALLS)
    as ((kind, count), ...) or, for a split, (kind, count, parts): count x the kind's measured time, plus
    count x parts x its per-part time (calibration.host_calls fits split as a line in the part count). A kind
    the profile has not timed costs nothing."""
    total_s = 0.0
    for kind, count, *parts in calls:
        total_s += count * host_call_s.get(kind, 0.0)
        if parts:
            total_s += count * parts[0] * host_call_s.get(f"{kind}_per_part", 0.0)
    return total_s


#: Helper kernel classes priced per byte written at a rate the kernel_breakdown measures
#: (calibration.fit.HELPER_RATE_CLASSES); any other class moves its bytes at the copy rate.
WRITE_RATE_CLASSES = frozenset(("gather", "cat", "broadcast_mul", "fill"))


def helper_kernels_s(kernels: tuple, cal: Calibration, kernel_overhead_s: float) -> tuple[float, str]:
    """Device time of a helper node's kernels ((class, bytes written, bytes read) each), summed, and what
    bounds it. Per kernel: its class's measured rate on the bytes it writes (WRITE_RATE_CLASSES), else the
    copy rate on (read + written) / 2; then at least its class's measured time per call
    (calibration.helper_kernel_s: memset, radix_sort_pass, reduce_all) where the profile has one, else at
    least kernel_overhead_s (the assumed GPU minimum per kernel). The same device time eagerly and inside
    a CUDA graph. Bound: "launch" when the per-call minimums make most of the time, else "memory"."""
    s_per_byte, per_call_s = cal.elementwise_s_per_byte, cal.helper_kernel_s
    copy = s_per_byte["copy"]
    total_s = per_call_part_s = 0.0
    for cls, written, read in kernels:
        rate = s_per_byte.get(cls) if cls in WRITE_RATE_CLASSES else None
        time_s = rate * written if rate is not None else copy * (read + written) / 2.0
        minimum_s = per_call_s.get(cls, kernel_overhead_s)
        if minimum_s > time_s:
            time_s = minimum_s
            per_call_part_s += minimum_s
        total_s += time_s
    return total_s, ("launch" if per_call_part_s > total_s / 2.0 else "memory")


#: Which measured element-wise class times each memory-bound op (per byte moved: calibrated_node_s).
ELEMENTWISE_CLASS = {"norm_attn": "rmsnorm", "norm_moe": "rmsnorm", "norm_ffn": "rmsnorm", "residual_add": "add"}


def activation_s(attrs: dict, s_per_byte: dict[str, float], gated: bool) -> float:
    """Seconds of an FFN activation node from the measured element-wise rates.

    The "silu_mul" class measured PyTorch's SwiGLU, F.silu(x[:, :f]) * x[:, f:] on x [rows, 2f]: two kernels
    (silu, then mul) that move 5 f bytes-per-row units for the 3 of one pass (2 read, 1 written). It times a node
    that launches those two kernels (runtime.framework pytorch: launches 2), per byte of input as measured. One
    kernel (GELU, or a serving engine's fused SwiGLU: vLLM's silu_and_mul, TensorRT-LLM's gated activation)
    reads its inputs and writes its output once: the "gelu" class's one-kernel activation rate (it read one
    tensor and wrote one of its size, so per byte moved it is half its per-input-byte figure) on the bytes
    it moves."""
    if gated and attrs["launches"] >= 2:
        return s_per_byte["silu_mul"] * attrs["bytes_read"]
    return s_per_byte["gelu"] * (attrs["bytes_read"] + attrs["bytes_written"]) / 2.0


def calibrated_node_s(
    attrs: dict, hw: HardwareProfile, cal: Calibration, eager: bool, gated: bool
) -> tuple[float, str]:
    """Time of a compute node from the profile's measured tables (see hardware.Calibration)."""
    op, dtype = attrs["op"], attrs["dtype"]
    element_bytes = DTYPE_BYTES[dtype]
    peak_flops_per_s, hbm_bytes_per_s = hw.peak_for(dtype), hw.hbm_bytes_per_s
    floors_s = cal.eager_floor_s
    if "gemm" in attrs:
        m, k, n = attrs["gemm"]
        grouped = "grouped" in attrs and attrs["grouped"][0] > 1
        experts, rows = attrs["grouped"] if grouped else (1, m)
        frac = hw.gemm_table_fraction(experts, rows, k, n)
        floor_s = floors_s["grouped_gemm" if grouped else "gemm"]
        table_b = DTYPE_BYTES[cal.gemm_format]
        if (
            peak_flops_per_s != hw.peak_for(cal.gemm_format)  # another compute format than the table's
            or element_bytes != table_b
            or attrs.get("weight_b", table_b) != table_b  # weight-only formats: the fixed part does not shrink
            or attrs.get("out_b", table_b) != table_b
        ):
            time_s, bound = transferred_gemm_s(
                hw, cal.gemm_format, dtype, experts, rows, k, n, frac, attrs.get("weight_b"), attrs.get("out_b")
            )
        else:
            time_s, bound = costs.calibrated_grouped_gemm_s(
                experts,
                rows,
                k,
                n,
                element_bytes,
                peak_flops_per_s,
                hbm_bytes_per_s,
                frac,
                attrs.get("weight_b"),
                attrs.get("out_b"),
            )
        gemm_table, key = (cal.grouped_gemm, (experts, k, n)) if grouped else (cal.gemm, (k, n))
        if frac < 0.5 * series_interpolate(gemm_table, key, rows):  # the kernel's fixed part is most of its time
            bound = "launch"
    elif attrs.get("fused") == "flash_attention":
        if op == "attn_softmax":
            return 0.0, "fused"  # inside the measured flash-attention rate
        d, q_len = attrs["head_dim"], attrs["q_len"]
        table = cal.attention_prefill if q_len > 1 else cal.attention_decode
        size = attrs["batch_heads"] * q_len * attrs["kv_len"] if q_len > 1 else attrs["kv_bytes_total"]
        frac = series_interpolate(table, (d,), size)
        compute_frac = (
            None
            if q_len > 1
            else series_interpolate(cal.attention_prefill, (d,), attrs["batch_heads"] * attrs["kv_len"])
        )
        time_s, bound = costs.calibrated_attention_s(
            attrs["flops"],
            attrs["bytes_read"] + attrs["bytes_written"],
            q_len,
            peak_flops_per_s,
            hbm_bytes_per_s,
            frac,
            compute_frac,
        )
        if attrs["launches"]:  # the kernel's fixed part, with the node that launches it (the scores)
            fixed_s = attention_fixed_part_s(
                table, (d,), size, q_len == 1, hw.peak_for(cal.gemm_format), hbm_bytes_per_s
            )
            time_s += fixed_s
            if fixed_s > time_s / 2.0:  # most of the kernel's time
                bound = "launch"
        floor_s = floors_s["attention"]
    elif "helper_kernels" in attrs:  # kernel by kernel: their floors are already in
        time_s, bound = helper_kernels_s(attrs["helper_kernels"], cal, hw.kernel_overhead_s)
        return costs.eager_time_s(time_s, bound, attrs["launches"], 0.0, floors_s["elementwise"], eager)
    else:
        s_per_byte = cal.elementwise_s_per_byte
        if op == "topk":
            rows = attrs["in_shape"][0]
            time_s = rows * cal.topk_s_per_row + s_per_byte.get("softmax", 0.0) * attrs["bytes_read"]
        elif op in ("expert_act", "ffn_act", "shared_act"):
            time_s = activation_s(attrs, s_per_byte, gated)
        elif attrs.get("scatter_add") and "index_add" in s_per_byte:  # measured atomics, per byte of input
            time_s = s_per_byte["index_add"] * attrs["bytes_read"]
        else:
            # Norms and residual adds at their measured class's rate (ELEMENTWISE_CLASS), gathers, scatters and
            # weighted sums at the copy rate, per byte moved: each class's micro-benchmark read one tensor and
            # wrote one of its size, so its time per output byte is twice its time per byte moved (the "add"
            # moved x and x + b: a second full operand would have needed 6.2 TB/s, above the H200's 4.8 TB/s; at
            # that rate per byte moved a residual add, x + y, reading two, takes the 24.4 us per call the seed's
            # kernel_breakdown shows)
            rate = s_per_byte[ELEMENTWISE_CLASS.get(op, "copy")]
            time_s = rate * (attrs["bytes_read"] + attrs["bytes_written"]) / 2.0
        bound, floor_s = "memory", floors_s["elementwise"]
    return costs.eager_time_s(time_s, bound, attrs["launches"], hw.kernel_overhead_s, floor_s, eager)


def transferred_gemm_s(
    hw: HardwareProfile,
    table_format: str,
    compute_format: str,
    experts: float,
    rows_per_expert: float,
    k: float,
    n: float,
    fraction: float,
    weight_b: float | None,
    out_b: float | None,
) -> tuple[float, str]:
    """A (grouped) GEMM computing in another format than the calibration table's: the table's time of
    the shape (every operand in the table's format) moved to the compute format by
    costs.format_transfer_gemm_s. Inputs in the compute format's bytes, weights in `weight_b`, the
    output in `out_b` (defaults: the compute format's bytes)."""
    e, c = experts, rows_per_expert
    tb, b = DTYPE_BYTES[table_format], DTYPE_BYTES[compute_format]
    wb = b if weight_b is None else weight_b
    ob = b if out_b is None else out_b
    table_peak, hbm = hw.peak_for(table_format), hw.hbm_bytes_per_s
    table_s, _ = costs.calibrated_grouped_gemm_s(e, c, k, n, tb, table_peak, hbm, fraction)
    g = costs.GemmTransfer(
        table_s=table_s,
        flops=2.0 * e * c * k * n,
        table_operand_bytes=e * (c * k + k * n) * tb,
        operand_bytes=e * (c * k * b + k * n * wb),
        table_out_bytes=e * c * n * tb,
        out_bytes=e * c * n * ob,
    )
    return costs.format_transfer_gemm_s(
        g, table_peak, hw.peak_for(compute_format), hbm * hw.memory_efficiency, hw.kernel_overhead_s
    )
