"""Serving memory stage: a scenario's serving section made concrete from its memory model and layout (KV
blocks per replica, replica count, lockstep, pipeline batches), and the KV capacity formula.

KV blocks of one replica (vLLM's profile run: what is left after the weights and the largest iteration's
activations, in blocks; Kwon et al. 2023, sec. 4.3):

    blocks = min over the replica's GPUs of floor(share x (usable_bytes - weight_bytes - activation_bytes)
                                                   / (block_size_tokens x kv_bytes_per_token on that GPU))
    usable_bytes = capacity_bytes x gpu_memory_utilization, or capacity_bytes - runtime.memory_reserve_bytes,
            or capacity_bytes x mem_fraction_static (SGLang: the activations outside it, activation_bytes 0)
    capacity_bytes = the device's total as the driver reports it (profile device_memory_bytes: what vLLM's
            total_gpu_memory, SGLang's and TensorRT-LLM's free-memory queries see), else memory_bytes
    share = kv_cache.free_memory_fraction (TensorRT-LLM's kv_cache_free_gpu_mem_fraction: its KV pool is that
            fraction of the memory free once the engine's weights and runtime buffers are allocated), else 1

A GPU holds the K and V (or MLA's compressed latent) of its stage's layers and its KV heads (kv heads / tp,
replicated when fewer than tp), so every GPU of the replica holds the same blocks: the tightest GPU decides.
"""

from __future__ import annotations

import math

from simulator import costs
from simulator.config import Scenario, ServingError, ServingSpec, gpus_per_node
from simulator.config.engine import DpAttentionRuleSpec, load_engine_profile
from simulator.config.hardware import HardwareProfile
from simulator.config.serving import KV_RULES, SlidingKVSpec, check_longest_admissible
from simulator.graph import build
from simulator.memory import activation_bytes_per_gpu, weight_bytes_per_gpu
from simulator.placement import Placement, symmetric_representatives
from simulator.serving.adp_balance import check_attention_dp_options


def kv_bytes_per_token(scenario: Scenario, gpu: int) -> float:
    """KV cache bytes one token occupies on this GPU: its stage's layers, its KV heads, K and V (MLA: the
    latent and the rotary key, whole on every TP rank), at the KV cache dtype."""
    m, p = scenario.model, scenario.parallel
    layers = len(Placement.of(scenario).layers_of_gpu(gpu))
    if m.is_mla:
        return costs.mla_kv_cache_bytes(
            1, 1, layers, m.kv_lora_rank or 0, m.qk_rope_head_dim or 0, m.kv_bytes_per_element
        )
    return costs.kv_cache_bytes(1, 1, layers, max(1, m.kv_heads // p.tp), m.head_size, m.kv_bytes_per_element)


def sliding_kv(scenario: Scenario) -> SlidingKVSpec | None:
    """The model's sliding-window layers for the paged KV cache (kvcache.PagedKVCache), None without, or when the
    engine keeps their blocks (serving.scheduler.kv_cache.sliding_window_kv kept: every layer holds every block)."""
    m = scenario.model
    serving = scenario.serving
    if m.sliding_window is None or (serving is not None and serving.scheduler.kv_cache.sliding_window_kv == "kept"):
        return None
    sliding = m.sliding_layers(range(m.num_layers))
    return SlidingKVSpec(window_tokens=m.sliding_window, full_layers=m.num_layers - sliding, sliding_layers=sliding)


def largest_iteration_tokens(spec: ServingSpec) -> int:
    """New tokens of the largest iteration one replica can schedule (per pipeline batch): the token budget,
    or for the static policy max_num_seqs prompts of the longest input (the budget when lengths are unbounded)."""
    s = spec.scheduler
    if s.policy == "static":
        longest = spec.workload.input_len.max_tokens_bound() if spec.workload.input_len is not None else None
        return s.max_num_seqs * longest if longest is not None else s.max_num_batched_tokens
    return s.max_num_batched_tokens


def activation_bytes(scenario: Scenario, hw: HardwareProfile, tokens: int) -> dict[int, float]:
    """Peak transient activations per GPU of a prefill pass of `tokens` tokens per dp rank (memory.py's rule:
    the residual stream plus the largest op's activations), from that pass's DAG."""
    data = scenario.model_dump(exclude_none=True, exclude={"serving"})
    p = scenario.parallel
    data["parallel"] = {**data["parallel"], "microbatches": 1}
    data["workload"] = {**data["workload"], "batch_size": p.dp, "input_len_tokens": tokens, "output_len_tokens": 1}
    probe = Scenario.model_validate(data)
    keep = symmetric_representatives(probe, gpus_per_node(probe, hw))
    return activation_bytes_per_gpu(build(probe, [], keep), probe)


def serving_kv_capacity_blocks(scenario: Scenario, hw: HardwareProfile) -> int:
    """KV blocks one replica holds (module docstring); raises ServingError naming the GPU when none fit."""
    spec = scenario.serving
    if spec is None:
        raise ServingError("serving: the scenario has no serving section; add one (see scenarios/*_serving.yaml)")
    kv = spec.scheduler.kv_cache
    capacity = hw.engine_memory_bytes  # what the driver reports, which the engines take their shares of
    of = f"{capacity / 1e9:.2f} GB" + (" as the driver reports it" if hw.device_memory_bytes is not None else "")
    static = kv.mem_fraction_static is not None
    if kv.gpu_memory_utilization is not None:
        usable, how = (
            capacity * kv.gpu_memory_utilization,
            f"gpu_memory_utilization = {kv.gpu_memory_utilization} of {of}",
        )
    elif kv.mem_fraction_static is not None:
        usable, how = (
            capacity * kv.mem_fraction_static,
            f"mem_fraction_static = {kv.mem_fraction_static} of {of}, the activations outside it",
        )
    else:
        usable, how = capacity - scenario.runtime.memory_reserve_bytes, f"{of} less runtime.memory_reserve_bytes"
    tokens = largest_iteration_tokens(spec)
    acts = activation_bytes(scenario, hw, tokens) if not static else None
    p = scenario.parallel
    share = kv.free_memory_fraction if kv.free_memory_fraction is not None else 1.0
    best: tuple[int, int] | None = None
    for stage in range(p.pp):
        for gpu in Placement.of(scenario).stage_gpus(stage)[: p.tp]:  # the GPUs of replica 0 (all alike over dp)
            act = acts[gpu] if acts is not None else 0.0
            free = usable - weight_bytes_per_gpu(scenario, gpu) - act
            per_block = kv.block_size_tokens * kv_bytes_per_token(scenario, gpu)
            blocks = math.floor(share * free / per_block) if free > 0 else 0
            if best is None or blocks < best[0]:
                best = (blocks, gpu)
            if blocks < 1:
                raise ServingError(
                    f"serving.scheduler.kv_cache: no room for a KV block on GPU {gpu}: weights "
                    f"{weight_bytes_per_gpu(scenario, gpu) / 1e9:.2f} GB + activations of a {tokens}-token iteration "
                    f"{act / 1e9:.2f} GB leave {max(free, 0.0) / 1e9:.2f} GB of {usable / 1e9:.2f} GB ({how})"
                    f"{f', of which free_memory_fraction = {share} goes to the KV cache' if share < 1 else ''}; "
                    f"lower max_num_batched_tokens, raise gpu_memory_utilization or use more GPUs"
                )
    assert best is not None
    return best[0]


def engine_static_fraction(scenario: Scenario, hw: HardwareProfile) -> float | None:
    """The KV share serving.engine derives for this deployment (its profile's scheduler_defaults.static_memory:
    SGLang's mem_fraction_static from the device's memory in MiB, the chunk, the largest CUDA graph, tp, pp and
    data-parallel attention), or None when the engine has no such rule."""
    spec = scenario.serving
    if spec is None or spec.engine is None:
        return None
    profile = spec.engine_profile()
    rule = profile.scheduler_defaults.static_memory if profile.scheduler_defaults is not None else None
    if rule is None:
        return None
    p = scenario.parallel
    device = hw.engine_memory_bytes
    graph_max = profile.cuda_graph.graph_max(device, p.tp) if profile.cuda_graph is not None else 0
    dp_attention = p.dp if scenario.dp_attention else 0
    return rule.fraction(device / 2**20, spec.scheduler.chunk_tokens, graph_max, p.tp, p.pp, dp_attention)


def _dp_attention_rule(scenario: Scenario) -> DpAttentionRuleSpec | None:
    """serving.engine's rule for data-parallel attention, when the scenario's layout runs it."""
    spec = scenario.serving
    if spec is None or spec.engine is None or not scenario.dp_attention:
        return None
    defaults = load_engine_profile(spec.engine).scheduler_defaults
    return defaults.dp_attention if defaults is not None else None


def engine_rank_budget_tokens(scenario: Scenario) -> int | None:
    """Each replica's token budget where serving.engine divides its default one by dp under data-parallel
    attention (scheduler_defaults.dp_attention.budget_per_rank: SGLang's chunked_prefill_size // dp_size): the
    engine's budget // dp, at least 1; None where the rule does not apply (no such engine, no DP attention, or a
    budget the scenario gave itself)."""
    rule = _dp_attention_rule(scenario)
    if rule is None or not rule.budget_per_rank:
        return None
    assert scenario.serving is not None
    s = scenario.serving.scheduler
    if (s.engine_defaults or {}).get("max_num_batched_tokens") != s.max_num_batched_tokens:
        return None
    return max(1, s.max_num_batched_tokens // scenario.parallel.dp)


def resolved_router(scenario: Scenario, lockstep: bool | None = None) -> str:
    """serving.replicas.router as the simulation runs it: the scenario's own, or for a lockstep group of dp ranks
    (`lockstep`, default: whether the experts span the dp ranks) the engine's where its profile names one
    (scheduler_defaults.lockstep_router)."""
    spec, p = scenario.serving, scenario.parallel
    assert spec is not None
    r = spec.replicas
    if lockstep is None:
        lockstep = scenario.experts_across_dp if r.lockstep is None else r.lockstep
    if lockstep and p.dp > 1 and "router" not in r.model_fields_set and spec.engine is not None:
        defaults = load_engine_profile(spec.engine).scheduler_defaults
        if defaults is not None and defaults.lockstep_router is not None:  # the engine's own group router
            return defaults.lockstep_router
    return r.router


def resolve_serving(scenario: Scenario, hw: HardwareProfile) -> ServingSpec:
    """The scenario's serving section with what it left open filled in: KV blocks from the memory model,
    replicas = parallel.dp of pp * tp GPUs each, lockstep when EP groups span dp ranks, one pipeline batch per
    stage. Raises ServingError (one line) when the section contradicts the layout or a request cannot fit."""
    spec = scenario.serving
    if spec is None:
        raise ServingError("serving: the scenario has no serving section; add one (see scenarios/*_serving.yaml)")
    p = scenario.parallel
    r, s = spec.replicas, spec.scheduler
    if r.count is not None and r.count != p.dp:
        raise ServingError(
            f"serving.replicas.count = {r.count} must equal parallel.dp = {p.dp} (each data-parallel "
            f"rank is one replica); remove it or change parallel.dp"
        )
    if r.gpus_per_replica is not None and r.gpus_per_replica != p.pp * p.tp:
        raise ServingError(
            f"serving.replicas.gpus_per_replica = {r.gpus_per_replica} must equal pp * tp = {p.pp * p.tp}; remove it"
        )
    lockstep = scenario.experts_across_dp  # an expert-parallel group spans dp ranks: they step together
    if r.lockstep is False and lockstep:
        raise ServingError(
            f"serving.replicas.lockstep = false, but ep * etp = {p.ep * p.etp} > tp = {p.tp}: an "
            f"expert-parallel group spans dp replicas, which must step together; remove it"
        )
    replicas = r.model_copy(
        update={
            "count": p.dp,
            "gpus_per_replica": p.pp * p.tp,
            "lockstep": lockstep if r.lockstep is None else r.lockstep,
        }
    )
    replicas = replicas.model_copy(update={"router": resolved_router(scenario, bool(replicas.lockstep))})

    def with_scheduler(sch):  # the scenario as the engine's rules below leave its scheduler
        return scenario.model_copy(update={"serving": spec.model_copy(update={"scheduler": sch})})

    kv = s.kv_cache
    if kv.capacity_blocks is None and not any(getattr(kv, k) is not None for k in KV_RULES):
        fraction = engine_static_fraction(scenario, hw)
        if fraction is not None:  # the engine derives its KV share from the deployment (SGLang)
            kv = kv.model_copy(update={"mem_fraction_static": fraction})
            s = s.model_copy(update={"kv_cache": kv})
            scenario = with_scheduler(s)
    dpa = _dp_attention_rule(scenario)
    if dpa is not None and dpa.conservativeness_factor != 1.0:  # SGLang: the user's value too
        s = s.model_copy(
            update={"schedule_conservativeness": s.schedule_conservativeness * dpa.conservativeness_factor}
        )
        scenario = with_scheduler(s)
    budget = engine_rank_budget_tokens(scenario)  # SGLang's chunk per DP-attention rank (after its KV share)
    if budget is not None:
        chunk = s.chunk_size_tokens
        s = s.model_copy(
            update={
                "max_num_batched_tokens": budget,
                "chunk_size_tokens": None if chunk is None else min(chunk, budget),
            }
        )
        scenario = with_scheduler(s)
    if kv.capacity_blocks is None:
        kv = kv.model_copy(update={"capacity_blocks": serving_kv_capacity_blocks(scenario, hw)})
    if kv.sliding is None:
        kv = kv.model_copy(update={"sliding": sliding_kv(scenario)})
    batches = s.pipeline_batches if s.pipeline_batches is not None else p.pp
    scheduler = s.model_copy(update={"kv_cache": kv, "pipeline_batches": batches})
    check_attention_dp_options(replicas, scheduler)
    # The aggregated deployment of the scenario's layout: a disaggregation section (serving.disagg) is not its.
    resolved = spec.model_copy(update={"replicas": replicas, "scheduler": scheduler, "disaggregation": None})
    try:
        check_longest_admissible(spec.workload, scheduler, "the longest request of serving.workload")
    except ValueError as exc:
        derived = "" if s.kv_cache.capacity_blocks is not None else " (from the memory model)"
        raise ServingError(f"serving: {exc}{derived}") from None
    return resolved


__all__ = [
    "activation_bytes",
    "kv_bytes_per_token",
    "largest_iteration_tokens",
    "resolve_serving",
    "serving_kv_capacity_blocks",
    "sliding_kv",
    "engine_static_fraction",
    "engine_rank_budget_tokens",
]
