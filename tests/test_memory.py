"""Memory stage: parameter counts, per-GPU weight and KV-cache bytes of the tiny MoE by hand, and GpuMemory's totals."""

from __future__ import annotations

import pytest
from conftest import TINY_MOE, make_scenario

from simulator.graph import build_dag
from simulator.memory import GpuMemory, kv_cache_bytes_per_gpu, memory_per_gpu, parameter_counts, weight_bytes_per_gpu

# TINY_MOE: 4 layers, hidden 64, 4 heads x 16 (4 KV heads), 4 experts of FFN width 128, top-2, gelu, fp16,
# no vocabulary; tp=2 ep=2 pp=2 on 4 GPUs; batch 4, input 16, output 3 tokens.
H = 64
ATTN_LAYER = H * 64 + 2 * H * 64 + 64 * H  # q, k, v [64, 4*16] and o [4*16, 64]: 16384
EXPERT_GELU = 2 * H * 128  # fc1 [64, 128], fc2 [128, 64]: 16384
EXPERT_SWIGLU = 3 * H * 128  # gate, up, down: 24576
ROUTER_LAYER = H * 4  # [64, 4 experts]: 256
NORMS_LAYER = 2 * H  # two norms per layer: 128


def _tiny(**model):
    return make_scenario(TINY_MOE, model=model) if model else make_scenario(TINY_MOE)


# ---------------------------------------------------------------------------------------------
# parameter_counts


def test_attention_parameters_are_q_k_v_and_o():
    assert ATTN_LAYER == 16384
    assert parameter_counts(_tiny())["attention"] == 4 * 16384


def test_gelu_experts_have_two_matrices():
    assert parameter_counts(_tiny())["ffn_or_experts"] == 4 * 4 * 16384  # layers x experts x 2*64*128


def test_swiglu_experts_have_three_matrices():
    assert parameter_counts(_tiny(activation="swiglu"))["ffn_or_experts"] == 4 * 4 * 24576


def test_router_is_hidden_by_experts_per_layer():
    assert parameter_counts(_tiny())["router"] == 4 * 256


def test_norms_are_two_per_layer_without_a_final_norm_when_there_is_no_vocabulary():
    assert parameter_counts(_tiny())["norms"] == 4 * 128


def test_total_and_active_by_hand():
    counts = parameter_counts(_tiny())
    assert counts["embedding_and_head"] == 0
    assert counts["total"] == 65536 + 262144 + 1024 + 512 == 329216
    # active: 2 of the 4 experts per layer
    assert counts["active"] == 65536 + 4 * 2 * 16384 + 1024 + 512 == 198144


def test_swiglu_total_by_hand():
    assert parameter_counts(_tiny(activation="swiglu"))["total"] == 65536 + 393216 + 1024 + 512


def test_grouped_query_attention_shrinks_k_and_v():
    # 2 KV heads: q 4096 + k, v 2 * 64 * 32 + o 4096 = 12288 per layer
    assert parameter_counts(_tiny(num_kv_heads=2))["attention"] == 4 * 12288


def test_vocabulary_adds_embedding_untied_head_and_final_norm():
    counts = parameter_counts(_tiny(vocab_size=1000))
    assert counts["embedding_and_head"] == 2 * 1000 * 64
    assert counts["norms"] == 4 * 128 + 64
    assert counts["total"] == 329216 + 128000 + 64


def test_shared_expert_counts_in_total_and_active():
    counts = parameter_counts(_tiny(num_shared_experts=1))
    assert counts["ffn_or_experts"] == 4 * (4 + 1) * 16384
    assert counts["active"] == 198144 + 4 * 16384


def test_first_dense_layer_has_a_dense_ffn_and_no_router():
    counts = parameter_counts(_tiny(first_k_dense_layers=1, ffn_size=256))
    assert counts["ffn_or_experts"] == 2 * 64 * 256 + 3 * 4 * 16384
    assert counts["router"] == 3 * 256


# ---------------------------------------------------------------------------------------------
# weight_bytes_per_gpu

# tp=2 ep=2 pp=2: 2 layers per GPU; attention 1/2 (2 heads, 2 KV heads) = 8192; 2 of 4 experts = 32768;
# router 256 (replicated); norms 128: 41344 parameters per layer, fp16.
TINY_WEIGHT_BYTES = 2 * (8192 + 2 * 16384 + 256 + 128) * 2


@pytest.mark.parametrize("gpu", range(4))
def test_weight_bytes_tp2_ep2_pp2_by_hand(gpu):
    assert TINY_WEIGHT_BYTES == 165376
    assert weight_bytes_per_gpu(_tiny(), gpu) == 165376


def test_weight_bytes_without_model_parallelism_in_a_stage():
    s = make_scenario(TINY_MOE, parallel={"tp": 1, "ep": 1, "pp": 4})
    # one layer per GPU, whole: 16384 + 4 * 16384 + 256 + 128
    assert weight_bytes_per_gpu(s, 3) == (16384 + 65536 + 256 + 128) * 2 == 164608


def test_weight_bytes_tp4_ep4_by_hand():
    s = make_scenario(TINY_MOE, parallel={"tp": 4, "ep": 4, "pp": 1})
    # four layers; 1 head and 1 KV head: 64*16 + 2*64*16 + 16*64 = 4096; one expert 16384
    assert weight_bytes_per_gpu(s, 1) == 4 * (4096 + 16384 + 256 + 128) * 2 == 166912


def test_weight_bytes_expert_tensor_parallel_splits_each_expert():
    s = make_scenario(TINY_MOE, parallel={"tp": 2, "ep": 1, "etp": 2, "pp": 2})
    # all 4 experts, each at FFN width 128 / 2: 4 * 2 * 64 * 64 = 32768 per layer
    assert weight_bytes_per_gpu(s, 0) == 2 * (8192 + 32768 + 256 + 128) * 2


def test_weight_bytes_embedding_on_the_first_stage_head_and_final_norm_on_the_last():
    s = _tiny(vocab_size=1000)
    # embedding / head split over tp = 2: 32000 parameters; the last stage adds the final norm (64)
    assert weight_bytes_per_gpu(s, 0) == (82688 + 32000) * 2 == 229376
    assert weight_bytes_per_gpu(s, 2) == (82688 + 32000 + 64) * 2 == 229504


def test_weight_bytes_follow_an_uneven_layer_split():
    s = make_scenario(TINY_MOE, parallel={"layer_split": [1, 3]})
    assert weight_bytes_per_gpu(s, 0) == 1 * 41344 * 2
    assert weight_bytes_per_gpu(s, 3) == 3 * 41344 * 2


def test_weight_bytes_use_the_weight_dtype():
    assert weight_bytes_per_gpu(_tiny(weight_dtype="fp8"), 0) == 165376 / 2


# ---------------------------------------------------------------------------------------------
# kv_cache_bytes_per_gpu

# K and V x 2 layers x 4 sequences x (16 + 3 - 1) positions x 4/2 KV heads x 16 x 2 bytes
TINY_KV_BYTES = 2 * 2 * 4 * 18 * 2 * 16 * 2


@pytest.mark.parametrize("gpu", range(4))
def test_kv_cache_bytes_tp2_pp2_by_hand(gpu):
    assert TINY_KV_BYTES == 18432
    assert kv_cache_bytes_per_gpu(_tiny(), gpu) == 18432


def test_kv_cache_holds_input_plus_output_minus_one_positions():
    s = make_scenario(TINY_MOE, workload={"output_len_tokens": 1})
    # 16 positions, not 17: the last generated token is never fed back
    assert kv_cache_bytes_per_gpu(s, 0) == 2 * 2 * 4 * 16 * 2 * 16 * 2 == 16384


def test_kv_cache_with_fewer_kv_heads_than_tp_keeps_one_head_per_rank():
    # 4 heads, 1 KV head, tp = 2: the KV head is replicated (max(1, 1 // 2) = 1)
    assert kv_cache_bytes_per_gpu(_tiny(num_kv_heads=1), 0) == 2 * 2 * 4 * 18 * 1 * 16 * 2 == 9216


def test_kv_cache_splits_the_batch_over_dp():
    s = make_scenario(TINY_MOE, parallel={"tp": 1, "dp": 2, "ep": 2, "pp": 2})
    # 2 sequences per dp rank, all 4 KV heads, 2 layers
    assert kv_cache_bytes_per_gpu(s, 1) == 2 * 2 * 2 * 18 * 4 * 16 * 2 == 18432
    s4 = make_scenario(TINY_MOE, parallel={"tp": 1, "dp": 4, "ep": 4, "pp": 1})
    # 1 sequence per dp rank, 4 KV heads, 4 layers
    assert kv_cache_bytes_per_gpu(s4, 1) == 2 * 4 * 1 * 18 * 4 * 16 * 2 == 18432


def test_kv_cache_uses_the_kv_cache_dtype():
    assert kv_cache_bytes_per_gpu(_tiny(kv_cache_dtype="fp8"), 0) == 18432 / 2


def test_kv_cache_follows_an_uneven_layer_split():
    s = make_scenario(TINY_MOE, parallel={"layer_split": [1, 3]})
    assert kv_cache_bytes_per_gpu(s, 0) == 18432 / 2
    assert kv_cache_bytes_per_gpu(s, 2) == 3 * 18432 / 2


# ---------------------------------------------------------------------------------------------
# GpuMemory


def test_gpu_memory_total_is_the_sum_of_its_parts():
    assert GpuMemory(0, 10.0, 20.0, 30.0, 40.0, 200.0).total_bytes == 100.0


def test_gpu_memory_utilization_is_total_over_capacity():
    assert GpuMemory(0, 10.0, 20.0, 30.0, 40.0, 400.0).utilization == 0.25


def test_gpu_memory_fits_up_to_exactly_its_capacity():
    assert GpuMemory(0, 10.0, 20.0, 30.0, 40.0, 100.0).fits
    assert not GpuMemory(0, 10.0, 20.0, 30.0, 40.0, 99.5).fits


def test_memory_per_gpu_puts_the_closed_forms_reserve_and_capacity_in_each_row():
    s = make_scenario(TINY_MOE, runtime={"memory_reserve_bytes": 5e8})
    rows = memory_per_gpu(build_dag(s), s, 80e9)
    assert [r.gpu for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert (r.weight_bytes, r.kv_cache_bytes, r.reserve_bytes, r.capacity_bytes) == (165376, 18432, 5e8, 80e9)
        assert r.activation_bytes > 0
