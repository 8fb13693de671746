"""Sweep stage, cheap bounds: roofline limits a deployment candidate cannot beat, computed without simulating it.

The search (sweep.search) prunes with them before it simulates. Each bound holds for every figure the
simulation can produce, because every op the engine times takes at least its roofline time at the
profile's peaks (costs.compute_op_s divides by efficiencies <= 1; a calibrated profile divides by measured
fractions of the roofline, so the peaks are scaled by the largest fraction its tables hold, `peak_fraction`):

- GPU time of one request >= GEMM FLOPs / peak + decode KV reads / HBM bandwidth. The two sums come from
  disjoint ops (GEMMs read weights, attention reads the KV cache), so their times add. GEMM FLOPs:
  2 x (the active parameters outside the embedding and the norms) per token through the model (every
  prompt token, every output token but the last); experts count only without capacity-factor routing
  (dropped copies skip them). KV reads: each of the output - 1 decode steps reads the K and V of at least
  the prompt, in every layer (contexts are never priced shorter: the pricer's cache rounds them up).
- Output tokens/s per GPU <= output tokens / (GPU time of one request): the measured window's GPU time is
  at least the work of the requests it measures (static batch: total time x GPUs >= batch x that bound).
- TPOT >= the sum over pipeline stages of one GPU's attention weight reads and one sequence's KV reads
  (a token passes every stage; each decode iteration reads them at least once).
"""

from __future__ import annotations

from simulator import costs
from simulator.config import Scenario
from simulator.config.hardware import CALIBRATION_TABLES, HardwareProfile
from simulator.memory import kv_bytes_kept, parameter_counts
from simulator.placement import Placement


def peak_fraction(hw: HardwareProfile) -> float:
    """The largest fraction of the datasheet peaks any op of this profile reaches: 1 for the roofline
    constants (efficiencies <= 1), else the largest measured fraction of its calibration tables (their
    interpolation blends table values, never exceeds them)."""
    if hw.calibration is None:
        return 1.0
    fractions = [row[-1] for table in CALIBRATION_TABLES for row in getattr(hw.calibration, table)]
    return max([1.0, *fractions])


def gemm_flops_per_token(scenario: Scenario) -> float:
    """FLOPs of the GEMMs one token passes through: 2 per multiply-add of every active weight outside the
    embedding, LM head and norms (experts only when no capacity factor can drop their copies)."""
    counts = parameter_counts(scenario)
    if scenario.workload.routing.capacity_factor is not None or scenario.model.moe_impl == "capacity":
        params = counts["attention"] + counts["router"]
    else:
        params = counts["active"] - counts["embedding_and_head"] - counts["norms"]
    return 2.0 * params


def kv_read_bytes(scenario: Scenario, context_tokens: int) -> float:
    """K and V (or MLA's latent) of one sequence of `context_tokens`, all layers and KV heads, at the KV
    cache dtype: what one decode step of that sequence reads at the least (costs.kv_cache_bytes; a
    sliding-window layer its window's last positions)."""
    m = scenario.model
    if m.is_mla:
        return costs.mla_kv_cache_bytes(
            1, context_tokens, m.num_layers, m.kv_lora_rank or 0, m.qk_rope_head_dim or 0, m.kv_bytes_per_element
        )
    kept = m.kept_positions(range(m.num_layers), context_tokens)
    return costs.kv_cache_bytes(1, kept, 1, m.kv_heads, m.head_size, m.kv_bytes_per_element)


def _peaks(scenario: Scenario, hw: HardwareProfile) -> tuple[float, float]:
    """(FLOP/s, bytes/s) no op of this scenario exceeds: the tensor peak of its fastest compute format (every
    class of model.formats), HBM, x peak_fraction."""
    f = scenario.model.formats
    frac = peak_fraction(hw)
    computes = {f.attention, *(g.compute for g in (f.dense_gemm, f.expert_gemm, f.lm_head, f.router))}
    return max(hw.peak_for(c) for c in computes) * frac, hw.hbm_bytes_per_s * frac


def request_gpu_s_lower_bound(scenario: Scenario, hw: HardwareProfile, input_tokens: int, output_tokens: int) -> float:
    """GPU-seconds (summed over GPUs) one request of these lengths needs at the least (module docstring)."""
    peak, hbm = _peaks(scenario, hw)
    flops = gemm_flops_per_token(scenario) * (input_tokens + output_tokens - 1)
    kv_bytes = max(0, output_tokens - 1) * kv_read_bytes(scenario, input_tokens)
    return flops / peak + kv_bytes / hbm


def output_tput_upper_bound(
    scenario: Scenario, hw: HardwareProfile, input_tokens: int | None, output_tokens: int | None
) -> float:
    """Output tokens/s per GPU no simulation of this candidate exceeds. Fixed lengths: output tokens over
    one request's GPU-time bound; lengths that vary (None): one GEMM pass per output token at the least."""
    if input_tokens is None or output_tokens is None:
        peak, _ = _peaks(scenario, hw)
        return peak / gemm_flops_per_token(scenario)
    return output_tokens / request_gpu_s_lower_bound(scenario, hw, input_tokens, output_tokens)


def tpot_lower_bound_s(scenario: Scenario, hw: HardwareProfile, context_tokens: int) -> float:
    """Seconds per output token no decode step of this layout beats: per pipeline stage, one GPU's attention
    weights and one sequence's KV cache of `context_tokens` read once (module docstring)."""
    m, p = scenario.model, scenario.parallel
    _, hbm = _peaks(scenario, hw)
    placement = Placement.of(scenario)
    if m.is_mla:
        attention = 0.0  # MLA's weights per TP rank are not split evenly; leave them out (a weaker bound)
    else:
        attention = costs.attention_params(m.hidden_size, m.num_heads // p.tp, max(1, m.kv_heads // p.tp), m.head_size)
    total = 0.0
    for stage in range(p.pp):
        gpu = placement.stage_gpus(stage)[0]
        layers = len(placement.layers_of_gpu(gpu))
        total += layers * attention * m.weight_bytes_per_element + kv_bytes_kept(scenario, gpu, context_tokens)
    return total / hbm
