"""Claim audit: the figures a deployment declares against what moesim computes from its own configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from simulator.config import Scenario
from simulator.memory import GpuMemory, parameter_counts
from simulator.placement import Placement

#: Relative tolerance for claims stated as a single figure ("10B", "23.4%").
REL_TOLERANCE = 0.10


@dataclass(frozen=True)
class AuditLine:
    claim: str
    declared: str
    computed: str
    verdict: str  # "holds", "holds only with EP folded", "does not hold", "pending" (needs a simulation)
    explanation: str

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt_params(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.4g}M"


def audit(scenario: Scenario, memory: list[GpuMemory] | None = None, metrics=None) -> list[AuditLine]:
    """One line per declared figure. Timing claims need `metrics` (from a run), else 'pending'."""
    d = scenario.declared
    if d is None:
        return []
    lines: list[AuditLine] = []
    m, p = scenario.model, scenario.parallel
    pl = Placement.of(scenario)

    if d.total_params is not None:
        counts = parameter_counts(scenario)
        total = counts["total"]
        ok = abs(total - d.total_params) <= REL_TOLERANCE * d.total_params
        lines.append(
            AuditLine(
                "total parameters",
                _fmt_params(d.total_params),
                _fmt_params(total),
                "holds" if ok else "does not hold",
                f"{m.num_layers} layers x (attention {_fmt_params(counts['attention'] / m.num_layers)} + "
                f"{'experts' if m.is_moe else 'FFN'} {_fmt_params(counts['ffn_or_experts'] / m.num_layers)} + router/norms) "
                f"= {_fmt_params(total)} ({_fmt_params(counts['active'])} active per token)"
                + ("" if ok else f": {d.total_params / total:.0f}x fewer than declared"),
            )
        )

    if d.num_gpus is not None or d.parallel_degrees is not None:
        degrees = d.parallel_degrees or {}
        product = 1
        for v in degrees.values():
            product *= v
        declared = (
            " x ".join(f"{k.upper()}={v}" for k, v in degrees.items())
            + (f" on {d.num_gpus} GPUs" if d.num_gpus else "")
        ).strip()
        gpus = p.num_gpus
        matches = all(getattr(p, k) == v for k, v in degrees.items()) and (d.num_gpus in (None, gpus))
        # Expert degrees (ep, etp) live inside a stage's dp x tp GPUs: declared with the others, they multiply nothing.
        folded_names = [k.upper() for k in ("ep", "etp") if m.is_moe and getattr(p, k) > 1 and k in degrees]
        product_differs = bool(degrees) and product != gpus
        if matches and product_differs and folded_names:
            group = p.ep * p.etp
            if group != p.tp:
                where = f"each EP group spans {group} of them"
            else:
                where = "the EP pair is the TP pair" if group == 2 else "the EP group is the TP group"
            names = " x ".join(f"{k}={getattr(p, k.lower())}" for k in folded_names)
            expl = (
                f"the product {product} is not the GPU count: GPUs = pp x dp x tp = {p.pp} x {p.dp} x {p.tp} = {gpus}; "
                f"{names} is folded onto the {p.dp * p.tp} GPUs of each stage ({where}), "
                "so it multiplies nothing"
            )
        elif matches:
            expl = f"GPUs = pp x dp x tp = {p.pp} x {p.dp} x {p.tp} = {gpus}"
        else:
            expl = f"the scenario's layout is tp={p.tp} ep={p.ep} pp={p.pp} dp={p.dp} on {gpus} GPUs"
        lines.append(
            AuditLine(
                "parallel layout",
                declared,
                f"TP={p.tp} x EP={p.ep} x PP={p.pp} x DP={p.dp} on {gpus} GPUs",
                (
                    f"holds only with {' and '.join(folded_names)} folded"
                    if product_differs and folded_names
                    else "holds"
                )
                if matches
                else "does not hold",
                expl,
            )
        )

    if d.experts_per_gpu is not None and m.is_moe:
        expert_counts = {pl.slots_per_rank}  # weight slots per GPU and layer (redundant copies included)
        ok = expert_counts == {d.experts_per_gpu}
        lines.append(
            AuditLine(
                "experts per GPU",
                str(d.experts_per_gpu),
                "/".join(str(c) for c in sorted(expert_counts)) + " per layer",
                "holds" if ok else "does not hold",
                f"{m.num_experts} experts / ep={p.ep} per layer, replicated {p.dp * p.tp // (p.ep * p.etp)}x per stage; "
                + _expert_ffns_text(sorted({pl.slots_per_rank * len(layers) for layers in pl.stage_layers})),
            )
        )
    if d.layers_per_gpu is not None:
        layer_counts = {len(pl.layers_of_gpu(g)) for g in range(pl.num_gpus)}
        ok = layer_counts == {d.layers_per_gpu}
        lines.append(
            AuditLine(
                "layers per GPU",
                str(d.layers_per_gpu),
                "/".join(str(c) for c in sorted(layer_counts)),
                "holds" if ok else "does not hold",
                f"{m.num_layers} layers over pp={p.pp} stages",
            )
        )

    if d.memory_utilization is not None and memory:
        util = max(x.utilization for x in memory)
        worst = max(memory, key=lambda x: x.utilization)
        ok = abs(util - d.memory_utilization) <= REL_TOLERANCE * d.memory_utilization
        lines.append(
            AuditLine(
                "memory utilisation per GPU",
                f"{100 * d.memory_utilization:.1f}%",
                f"{100 * util:.1f}% (GPU {worst.gpu})",
                "holds" if ok else "does not hold",
                f"weights {worst.weight_bytes / 1e9:.2f} GB + KV cache {worst.kv_cache_bytes / 1e9:.2f} GB + activations "
                f"{worst.activation_bytes / 1e9:.2f} GB + reserve {worst.reserve_bytes / 1e9:.2f} GB of {worst.capacity_bytes / 1e9:.0f} GB",
            )
        )

    if d.output_tokens_per_ms_per_gpu is not None:
        if metrics is None:
            lines.append(
                AuditLine(
                    "output throughput (tokens/ms/GPU)",
                    f">= {d.output_tokens_per_ms_per_gpu:g}",
                    "-",
                    "pending",
                    "needs a simulation: moesim run",
                )
            )
        else:
            tp = metrics.throughput
            out = tp["output_tokens_per_ms_per_gpu"]
            ok = out >= d.output_tokens_per_ms_per_gpu
            lines.append(
                AuditLine(
                    "output throughput (tokens/ms/GPU)",
                    f">= {d.output_tokens_per_ms_per_gpu:g}",
                    f"{out:.3g}",
                    "holds" if ok else "does not hold",
                    f"{scenario.workload.batch_size} x {scenario.workload.output_len_tokens} output tokens in "
                    f"{metrics.total_s:.3g} s on {p.num_gpus} GPUs; counting input tokens too gives "
                    f"{tp['total_tokens_per_ms_per_gpu']:.3g}, prefill alone {tp['prefill_tokens_per_ms_per_gpu']:.3g}",
                )
            )
    if d.ttft_s is not None:
        if metrics is None:
            lines.append(AuditLine("TTFT (s)", f"< {d.ttft_s:g}", "-", "pending", "needs a simulation: moesim run"))
        else:
            worst = metrics.ttft_s.max
            ok = worst < d.ttft_s  # the claim reads "< X s"
            lines.append(
                AuditLine(
                    "TTFT (s)",
                    f"< {d.ttft_s:g}",
                    f"{worst:.3g} (max), {metrics.ttft_s.mean:.3g} (mean)",
                    "holds" if ok else "does not hold",
                    f"prefill of {scenario.workload.batch_size} x {scenario.workload.input_len_tokens} tokens; "
                    + metrics.bottleneck.get("prefill", ""),
                )
            )
    return lines


def _expert_ffns_text(per_stage: list[int]) -> str:
    """How many expert FFNs each GPU holds in all: one figure, or the range over uneven pipeline stages."""
    if len(per_stage) == 1:
        return f"{per_stage[0]} expert FFNs in all on each GPU"
    return f"{per_stage[0]} to {per_stage[-1]} expert FFNs in all per GPU, by pipeline stage"
