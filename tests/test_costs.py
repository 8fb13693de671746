"""Pure cost formulas against hand-computed values."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator import costs
from simulator.calibration import allreduce as ar_check
from simulator.calibration.alltoall import load_points, predicted_s
from simulator.config.hardware import LinkSpec
from tests.conftest import ROOT

LINK = LinkSpec(bytes_per_s=100e9, latency_s=2e-6, efficiency=0.5)  # 50 GB/s effective


def test_linear_cost():
    c = costs.linear_cost(tokens=4, in_features=8, out_features=16, b=2)
    assert c.flops == 2 * 4 * 8 * 16 == 1024
    assert c.bytes_read == (4 * 8 + 8 * 16) * 2 == 320
    assert c.bytes_written == 4 * 16 * 2 == 128


def test_attention_pairs_causal_prefill_and_decode():
    assert costs.attention_pairs(4, 4) == 10  # 1 + 2 + 3 + 4
    assert costs.attention_pairs(1, 100) == 100  # a decode query sees every cached key
    assert costs.attention_pairs(2, 5) == 4 + 5
    assert costs.attention_pairs(3, 3, causal=False) == 9


def test_attention_scores_and_context():
    s = costs.attention_scores_cost(batch=2, heads=4, kv_heads=2, q_len=1, kv_len=10, head_dim=8, b=2)
    assert s.flops == 2 * 2 * 4 * 10 * 8
    assert s.bytes_read == (2 * 4 * 1 * 8 + 2 * 2 * 10 * 8) * 2
    assert s.bytes_written == 0
    c = costs.attention_context_cost(batch=2, heads=4, kv_heads=2, q_len=1, kv_len=10, head_dim=8, b=2)
    assert c.flops == s.flops
    assert c.bytes_read == 2 * 2 * 10 * 8 * 2
    assert c.bytes_written == 2 * 4 * 1 * 8 * 2
    sm = costs.attention_softmax_cost(batch=2, heads=4, q_len=1, kv_len=10)
    assert sm == (5 * 2 * 4 * 10, 0.0, 0.0)


def test_expert_ffn_costs_gelu_and_swiglu():
    fc1, act, fc2 = costs.expert_ffn_costs([3.0, 0.0, 1.0], hidden=8, ffn=16, gated=False, activation="gelu", b=2)
    assert fc1.flops == 2 * 4 * 8 * 16
    assert fc1.bytes_read == (4 * 8 + 2 * 8 * 16) * 2  # two experts have tokens: two weight reads
    assert act.flops == 8 * 4 * 16
    assert fc2.bytes_written == 4 * 8 * 2
    g1, gact, _ = costs.expert_ffn_costs([4.0], hidden=8, ffn=16, gated=True, activation="swiglu", b=2)
    assert g1.flops == 2 * 4 * 8 * 32
    assert gact.bytes_read == 4 * 32 * 2 and gact.bytes_written == 4 * 16 * 2


def test_expected_touched_experts_is_the_occupancy_expectation():
    """T tokens routed independently, expert e expecting t_e copies: P(e idle) = (1 - t_e / T)^T."""
    # DeepSeek-V3 decode, 16 tokens top-8 over 256 experts: 0.5 copies each, 101.96 experts touched, not 256
    assert costs.expected_touched_experts([0.5] * 256, 16) == pytest.approx(256 * (1 - (31 / 32) ** 16))
    assert costs.expected_touched_experts([0.5] * 256, 16) == pytest.approx(101.96, abs=0.01)
    # one token, top-2 of 4: exactly the 2 experts it picks
    assert costs.expected_touched_experts([0.5] * 4, 1) == 2.0
    # a large batch touches them all; an expert with no copies is never touched
    assert costs.expected_touched_experts([193.5] * 8 + [0.0], 774) == pytest.approx(8.0)
    assert costs.expected_touched_experts([2.0, 0.0], 2) == 1.0


def test_expert_weights_read_for_the_touched_experts():
    fc1, _, fc2 = costs.expert_ffn_costs(
        [0.5] * 4, hidden=8, ffn=16, gated=False, activation="gelu", b=2, active_experts=2.0
    )
    assert fc1.bytes_read == (2 * 8 + 2.0 * 8 * 16) * 2  # 2 copies' activations, 2 experts' weights
    assert fc2.bytes_read == (2 * 16 + 2.0 * 16 * 8) * 2


def test_params_and_kv_bytes():
    assert costs.attention_params(512, 16, 16, 32) == 4 * 512 * 512
    assert costs.attention_params(4096, 32, 8, 128) == 4096 * 4096 * 2 + 2 * 4096 * 1024
    assert costs.ffn_params(512, 1024, gated=False) == 2 * 512 * 1024
    assert costs.ffn_params(4096, 14336, gated=True) == 3 * 4096 * 14336
    assert (
        costs.kv_cache_bytes(sequences=2, tokens=10, layers=3, kv_heads=4, head_dim=8, b=2)
        == 2 * 2 * 10 * 3 * 4 * 8 * 2
    )


def test_ring_allreduce():
    # 2(n-1)/n * S / bw + 2(n-1) * latency with n=4, S=1e9, bw=50e9
    assert costs.ring_allreduce_s(1e9, 4, LINK) == pytest.approx(1.5 * 1e9 / 50e9 + 6 * 2e-6)
    assert costs.ring_allreduce_s(1e9, 1, LINK) == 0.0


def test_allgather():
    assert costs.allgather_s(1e9, 4, LINK) == pytest.approx(0.75 * 1e9 / 50e9 + 3 * 2e-6)


def test_alltoall_uses_busiest_rank():
    t = costs.alltoall_s([1e9, 3e9], [2e9, 2e9], LINK)
    assert t == pytest.approx(3e9 / 50e9 + 1 * 2e-6)


def test_sendrecv():
    assert costs.sendrecv_s(5e9, LINK) == pytest.approx(0.1 + 2e-6)


def test_roofline_picks_the_bound():
    assert costs.roofline_s(1e12, 1e9, 1e15, 1e12) == (pytest.approx(1e-3), "compute")
    assert costs.roofline_s(1e9, 1e10, 1e15, 1e12) == (pytest.approx(1e-2), "memory")


def test_compute_op_eager_floor_and_overhead(h100):
    eff_peak = h100.peak_flops_per_s.fp16 * h100.compute_efficiency
    big, bound = costs.compute_op_s(1e15, 0.0, h100, "fp16", True, 1, eager=True)
    assert bound == "compute"
    assert big == pytest.approx(1e15 / eff_peak + h100.kernel_overhead_s)
    tiny, bound = costs.compute_op_s(1.0, 1.0, h100, "fp16", True, 1, eager=True)
    assert (tiny, bound) == (h100.host_launch_s, "launch")
    graph, bound = costs.compute_op_s(1.0, 1.0, h100, "fp16", True, 1, eager=False)
    assert graph == pytest.approx(h100.kernel_overhead_s, rel=1e-3)
    fused, bound = costs.compute_op_s(0.0, 0.0, h100, "fp16", False, 0, eager=True)
    assert (fused, bound) == (0.0, "fused")


def test_a_gemm_runs_at_its_formats_gemm_efficiency_where_the_profile_has_one():
    """B200 (uncalibrated): 1 PFLOP of NVFP4 GEMM at 0.4125 x 9 PFLOP/s; bf16 at 0.6056 x 2.25 (fp16 takes bf16's);
    attention (not a GEMM) keeps compute_efficiency 0.72; a profile without gemm_efficiency, compute_efficiency."""
    from simulator.config.hardware import load_profile

    b200 = load_profile("b200-sxm-180gb")
    fp4, _ = costs.compute_op_s(1e15, 0.0, b200, "nvfp4", True, 1, eager=False, gemm=True)
    assert fp4 == pytest.approx(1e15 / (9.0e15 * 0.4125) + 2e-6)
    for fmt in ("bf16", "fp16"):
        t, _ = costs.compute_op_s(1e15, 0.0, b200, fmt, True, 1, eager=False, gemm=True)
        assert t == pytest.approx(1e15 / (2.25e15 * 0.6056) + 2e-6)
    attention, _ = costs.compute_op_s(1e15, 0.0, b200, "bf16", True, 1, eager=False)
    assert attention == pytest.approx(1e15 / (2.25e15 * 0.72) + 2e-6)
    a100 = load_profile("a100-sxm-80gb")
    assert a100.gemm_efficiency == {} and a100.gemm_efficiency_for("bf16") == a100.compute_efficiency


def test_the_b200_gemm_efficiencies_are_the_public_micro_benchmarks_medians():
    """gemm_efficiency = median achieved / dense peak over public_b200_gemm.yaml's points of >= 2,048 rows."""
    import yaml

    from simulator.config.hardware import load_profile

    data = yaml.safe_load((ROOT / "hardware_profiles/measurements/public_b200_gemm.yaml").read_text())
    b200 = load_profile("b200-sxm-180gb")
    peak = {"bf16": 2.25e15, "fp8": 4.5e15, "fp4": 9.0e15}
    field = {"bf16": "bf16", "fp8": "fp8", "nvfp4": "fp4"}
    for fmt, key in field.items():
        tflops = [p["tflops"] for p in data["points"] if p["format"] == fmt and p["m"] >= 2048]
        assert tflops and all(data["sources"][p["source"]] for p in data["points"])
        assert b200.gemm_efficiency[key] == pytest.approx(statistics.median(tflops) * 1e12 / peak[key], abs=5e-5)
        assert getattr(b200.peak_flops_per_s, key) == peak[key]


# ---------------------------------------------------------------------------------------------
# Multi-node (hierarchical) collectives

NVL = LinkSpec(bytes_per_s=100.0, latency_s=0.0, efficiency=1.0)
NIC = LinkSpec(bytes_per_s=10.0, latency_s=0.0, efficiency=1.0)


def test_hierarchical_allreduce_by_hand():
    # 2 nodes x 4 ranks, S = 1200: reduce-scatter and all-gather in the node (3/4 * 1200 / 100 = 9 each),
    # ring all-reduce of the 300-byte shard across 2 nodes (2 * 1/2 * 300 / 10 = 30)
    assert costs.hierarchical_allreduce_s(1200.0, 4, 2, NVL, NIC) == pytest.approx(48.0)
    assert costs.hierarchical_allreduce_s(1200.0, 4, 1, NVL, NIC) == costs.ring_allreduce_s(1200.0, 4, NVL)
    assert costs.hierarchical_allreduce_s(1200.0, 1, 8, NVL, NIC) == costs.ring_allreduce_s(1200.0, 8, NIC)


def test_hierarchical_allgather_by_hand():
    # across nodes: 1/2 * 300 / 10 = 15; inside: 3/4 * 1200 / 100 = 9
    assert costs.hierarchical_allgather_s(1200.0, 4, 2, NVL, NIC) == pytest.approx(24.0)


def test_cross_node_alltoall_is_bound_by_the_nic():
    # 8 ranks, 4 per node: 4 of each rank's 7 peers are off the node; 800 * 4/7 bytes over the NIC
    t = costs.hierarchical_alltoall_s([800.0] * 8, [800.0] * 8, 4, 2, NVL, NIC)
    assert t == pytest.approx(800 * 4 / 7 / 10)
    assert costs.hierarchical_alltoall_s([800.0] * 8, [800.0] * 8, 8, 1, NVL, NIC) == costs.alltoall_s(
        [800.0] * 8, [800.0] * 8, NVL
    )


def test_cross_node_alltoall_pays_one_nic_latency_not_one_per_peer():
    # 16 ranks, 8 per node: 8 of each rank's 15 peers off the node; 1500 * 8/15 = 800 bytes over a 10 B/s NIC
    nic = LinkSpec(bytes_per_s=10.0, latency_s=3e-3, efficiency=1.0)
    assert costs.hierarchical_alltoall_s([1500.0] * 16, [1500.0] * 16, 8, 2, NVL, nic) == pytest.approx(80.0 + 3e-3)


def test_cross_node_alltoall_against_deepep_low_latency_kernels(h100):
    # DeepEP V1's published dispatch (fp8) and combine (bf16) of 128 tokens x top-8 on EP16-256, one 400 Gb/s NIC
    # per GPU (hardware_profiles/measurements/public_alltoall.yaml) on the H100 profile's links: within 21 % each
    # (EP16's dispatch, -20.3 %), 8.7 % in the median; one latency per off-node peer would err +9 % to +628 %
    errors = [predicted_s(p, h100) / p.measured_s - 1 for p in load_points()]
    assert len(errors) == 10
    assert max(abs(e) for e in errors) < 0.21
    assert statistics.median(abs(e) for e in errors) < 0.10


def test_node_time_uses_hierarchy_for_collectives_spanning_nodes(h100):
    from simulator.op_time import node_time_s

    ar = {
        "kind": "communication",
        "gpu": tuple(range(16)),
        "collective": "all_reduce",
        "message_bytes": 1e8,
        "send_bytes": (0.0,) * 16,
        "recv_bytes": (0.0,) * 16,
    }
    t, bound = node_time_s(ar, h100, 8, eager=False)
    assert bound == "network"
    assert t == pytest.approx(costs.hierarchical_allreduce_s(1e8, 8, 2, h100.intra_node, h100.inter_node))
    assert t < costs.ring_allreduce_s(1e8, 16, h100.inter_node)  # the flat ring over NICs it replaces


# ---------------------------------------------------------------------------------------------
# A GEMM in another compute format than its calibration table (costs.format_transfer_gemm_s)

# table at 1e15 FLOP/s (fp16), fp8 at 2e15, fp4 at 4e15; 1e12 B/s sustained HBM; 2 us fixed per kernel
P16, P8, P4, HBM, FIXED = 1e15, 2e15, 4e15, 1e12, 2e-6


def _square(table_s: float, in_b: float, w_b: float) -> costs.GemmTransfer:
    """M = K = N = 4096 with a bf16 output: 2 * 4096^3 FLOPs, operands (M K + K N), output M N."""
    return costs.GemmTransfer(
        table_s=table_s,
        flops=2.0 * 4096**3,
        table_operand_bytes=2 * 4096 * 4096 * 2.0,
        operand_bytes=4096 * 4096 * (in_b + w_b),
        table_out_bytes=4096 * 4096 * 2.0,
        out_bytes=4096 * 4096 * 2.0,
    )


def test_a_compute_bound_fp8_gemm_halves_its_streaming_part_only():
    # fixed = 2 us + 33554432 B / 1e12 = 35.554432 us; stream = 200 - 35.554432 = 164.445568 us;
    # S16 = 137.438953472 us (compute), S8 = 68.719476736 us: x 1/2 -> 35.554432 + 82.222784 us
    t, bound = costs.format_transfer_gemm_s(_square(200e-6, 1.0, 1.0), P16, P8, HBM, FIXED)
    assert t == pytest.approx(117.777216e-6, rel=1e-12) and bound == "compute"
    # nvfp4 W4A4 (0.5625 B per element with its scales): S4 = 34.359738368 us (compute) -> x 1/4
    t4, bound4 = costs.format_transfer_gemm_s(_square(200e-6, 0.5625, 0.5625), P16, P4, HBM, FIXED)
    assert t4 == pytest.approx(35.554432e-6 + 164.445568e-6 / 4, rel=1e-12) and bound4 == "compute"


def test_a_memory_bound_fp8_gemm_is_governed_by_its_bytes():
    # M = 1, K = N = 4096: operands 33562624 B in fp16, 16781312 B in fp8 (S8 / S16 = 1/2); output 8192 B
    g = costs.GemmTransfer(
        table_s=50e-6,
        flops=2.0 * 4096 * 4096,
        table_operand_bytes=(4096 + 4096 * 4096) * 2.0,
        operand_bytes=(4096 + 4096 * 4096) * 1.0,
        table_out_bytes=4096 * 2.0,
        out_bytes=4096 * 2.0,
    )
    t, bound = costs.format_transfer_gemm_s(g, P16, P8, HBM, FIXED)
    # fixed = 2.008192 us, stream = 47.991808 us -> 2.008192 + 23.995904 us
    assert t == pytest.approx(26.004096e-6, rel=1e-12) and bound == "memory"


def test_a_gemm_shorter_than_its_fixed_part_keeps_its_time():
    t, _ = costs.format_transfer_gemm_s(_square(1e-6, 1.0, 1.0), P16, P8, HBM, FIXED)
    assert t == 1e-6  # all of it is fixed: a faster format saves nothing


@given(st.lists(st.integers(min_value=1, max_value=100_000), min_size=1, max_size=32))
def test_a_decode_batch_costs_the_same_priced_at_its_mean_kv_length(kv_lens):
    """A ragged decode batch (graph.ragged, serving.dag_pricer) is priced as len(kv_lens) sequences at the
    mean KV length, a float: the attention costs are linear in kv_len, so that equals the per-sequence sum."""
    seqs, mean = len(kv_lens), sum(kv_lens) / len(kv_lens)
    args = (8, 2)  # heads, kv_heads
    for cost in (costs.attention_scores_cost, costs.attention_context_cost):
        batched = cost(float(seqs), *args, 1, mean, 128, 2.0, 1.0)
        one_by_one = [cost(1.0, *args, 1, kv, 128, 2.0, 1.0) for kv in kv_lens]
        for field in ("flops", "bytes_read", "bytes_written"):
            assert getattr(batched, field) == pytest.approx(sum(getattr(c, field) for c in one_by_one), rel=1e-12)


def test_oneshot_and_twoshot_allreduce_by_hand():
    # LINK: 50 GB/s effective, 2 us per synchronisation; S = 1 MB on 4 ranks
    # one-shot: each rank reads 3 peers' whole 1 MB: 3e6 / 50e9 = 60 us, plus 2 barriers (4 us)
    assert costs.oneshot_allreduce_s(1e6, 4, LINK) == pytest.approx(64e-6)
    # two-shot: 2 x 3/4 MB = 1.5 MB read: 30 us, plus 3 barriers (6 us)
    assert costs.twoshot_allreduce_s(1e6, 4, LINK) == pytest.approx(36e-6)
    # NCCL's ring: the same 1.5 MB, 6 steps of 2 us
    assert costs.ring_allreduce_s(1e6, 4, LINK) == pytest.approx(42e-6)
    assert costs.oneshot_allreduce_s(1e6, 1, LINK) == costs.twoshot_allreduce_s(1e6, 1, LINK) == 0.0


def test_custom_allreduce_takes_the_fastest_kernel_within_its_buffer():
    # 10 kB on 8 ranks: one-shot 7 x 10 kB / 50 GB/s = 1.4 us + 4 us; two-shot 0.35 us + 6 us; ring 0.35 + 28 us
    assert costs.custom_allreduce_s(1e4, 8, LINK, 8e6) == pytest.approx(5.4e-6)
    # 4 MB: one-shot 560 + 4 us, two-shot 140 + 6 us, ring 140 + 28 us -> two-shot
    assert costs.custom_allreduce_s(4e6, 8, LINK, 8e6) == pytest.approx(146e-6)
    # at the buffer's size and above, NCCL's ring (the engines test S < max_size)
    assert costs.custom_allreduce_s(8e6, 8, LINK, 8e6) == pytest.approx(costs.ring_allreduce_s(8e6, 8, LINK))
    # two ranks: one-shot and the ring move the same bytes with 2 latencies each
    assert costs.custom_allreduce_s(1e6, 2, LINK, 8e6) == pytest.approx(costs.ring_allreduce_s(1e6, 2, LINK))


@given(
    size=st.floats(min_value=1.0, max_value=1e9),
    n=st.integers(min_value=2, max_value=16),
    cap=st.floats(min_value=1.0, max_value=1e10),
)
def test_custom_allreduce_is_never_slower_than_the_ring(size, n, cap):
    assert costs.custom_allreduce_s(size, n, LINK, cap) <= costs.ring_allreduce_s(size, n, LINK)


def test_allreduce_models_against_public_microbenchmarks(h100):
    # hardware_profiles/measurements/public_allreduce.yaml on the H100 profile's NVLink (450 GB/s x 0.82, 3 us), as
    # benchmarks/bench_allreduce.py prints them
    points = ar_check.load_points()
    by_kernel: dict[str, list[float]] = {}
    for p in points + ar_check.best_points(points):
        by_kernel.setdefault(p.kernel, []).append(ar_check.predicted_s(p, h100) / p.measured_s - 1)
    # vLLM's one-stage kernel in a CUDA graph (TP2-6, 0.5-4 MiB): within 11 % each, 5.3 % in the median
    one_shot = by_kernel["one_shot"]
    assert len(one_shot) == 13 and max(abs(e) for e in one_shot) < 0.11
    assert statistics.median(abs(e) for e in one_shot) < 0.06
    # NCCL: 9.5 % in the median; the ring's 2(n-1) latencies overprice small messages on 6 GPUs (+41 % at 0.5 MiB)
    assert statistics.median(abs(e) for e in by_kernel["nccl"]) < 0.10
    # two-shot at the link rate is faster than vLLM's two-stage kernel (-19 to -43 %) ...
    assert all(-0.44 < e < -0.19 for e in by_kernel["two_shot"])
    # ... and than SGLang's (TensorRT-LLM's) kernels from 1 MiB on by 5-17 %: the model is optimistic there
    engine = [
        ar_check.predicted_s(p, h100) / p.measured_s - 1
        for p in points
        if p.kernel == "engine" and p.message_bytes >= 2**20
    ]
    assert len(engine) == 9 and all(-0.17 < e < 0.12 for e in engine)
    # PyTorch's multimem all-reduce (vLLM 0.11 on 6 and 8 Hopper GPUs), priced as the custom all-reduce: 7-14 % fast
    assert len(by_kernel["multimem"]) == 6 and all(-0.15 < e < -0.07 for e in by_kernel["multimem"])


def test_node_time_prices_an_engines_custom_allreduce_inside_a_node_only(h100):
    from simulator.op_time import node_time_s

    def allreduce(gpus: int, size: float) -> dict:
        zero = (0.0,) * gpus
        return {
            "kind": "communication",
            "gpu": tuple(range(gpus)),
            "collective": "all_reduce",
            "message_bytes": size,
            "send_bytes": zero,
            "recv_bytes": zero,
        }

    nvl = h100.intra_node
    # 8 GPUs of one node, 200 kB: one-shot (2 x 3 us + 7 x 200 kB / 369 GB/s = 9.79 us), not the ring's 14 steps
    t, bound = node_time_s(allreduce(8, 2e5), h100, 8, eager=False, custom_allreduce_max_bytes=8e6)
    assert bound == "nvlink" and t == pytest.approx(6e-6 + 7 * 2e5 / (450e9 * 0.82))
    assert node_time_s(allreduce(8, 2e5), h100, 8, eager=False)[0] == pytest.approx(costs.ring_allreduce_s(2e5, 8, nvl))
    # a group spanning nodes: NCCL's hierarchy, custom or not (the engines' custom all-reduce is single-node)
    cross = node_time_s(allreduce(16, 2e5), h100, 8, eager=False, custom_allreduce_max_bytes=8e6)[0]
    assert cross == pytest.approx(costs.hierarchical_allreduce_s(2e5, 8, 2, nvl, h100.inter_node))


def test_runtime_custom_allreduce_reaches_the_simulated_tp_allreduces():
    from simulator.config import load_scenario, resolve_hardware
    from simulator.graph import build
    from simulator.simulate import simulate_dag

    sets = ["parallel.tp=4", "parallel.pp=1", "parallel.ep=4", "workload.batch_size=8", "workload.output_len_tokens=2"]
    for algorithm in ("nccl", "custom"):
        s = load_scenario("scenarios/seed_moe_4gpu.yaml", [*sets, f"runtime.allreduce={algorithm}"])
        hw = resolve_hardware(s)
        dag = build(s)
        sim = simulate_dag(dag, s, hw)
        rows = [i for i, a in enumerate(dag.attrs) if a["op"] == "tp_allreduce"]
        assert rows
        for i in rows:
            size, duration = dag.attrs[i]["message_bytes"], sim.duration_s[i]
            if algorithm == "nccl":
                expected = costs.ring_allreduce_s(size, 4, hw.intra_node)
            else:  # the prefill's 80 MiB goes to NCCL's ring; each decode step's 8 x 512 x 2 bytes to one-shot
                expected = costs.custom_allreduce_s(size, 4, hw.intra_node, 8 * 2**20)
                if size < 8 * 2**20:
                    assert expected == pytest.approx(costs.oneshot_allreduce_s(size, 4, hw.intra_node))
                    assert expected < costs.ring_allreduce_s(size, 4, hw.intra_node) / 2
            assert duration == pytest.approx(expected)
        assert {a["phase"] for a in dag.attrs if a["op"] == "tp_allreduce"} == {"prefill", "decode"}


def test_decode_attention_takes_the_longer_of_its_bytes_and_its_flops():
    """One query per sequence: the bytes at the decode fraction of HBM, or the FLOPs at the compute fraction of
    the tensor peak when that is longer. 4.8 GB at 0.9 of 4.8 TB/s = 1.1111 ms; 500 GFLOP at 0.5 of 1 PFLOP/s
    = 1.0 ms (memory), 600 GFLOP = 1.2 ms (compute). Without a compute fraction, the bytes alone; a prefill
    (q_len > 1) is its FLOPs at its own fraction."""
    f = costs.calibrated_attention_s
    assert f(5e11, 4.8e9, 1, 1e15, 4.8e12, 0.9, 0.5) == (pytest.approx(1.1111111e-3), "memory")
    assert f(6e11, 4.8e9, 1, 1e15, 4.8e12, 0.9, 0.5) == (pytest.approx(1.2e-3), "compute")
    assert f(6e11, 4.8e9, 1, 1e15, 4.8e12, 0.9) == (pytest.approx(1.1111111e-3), "memory")
    assert f(6e11, 4.8e9, 8, 1e15, 4.8e12, 0.6, 0.5) == (pytest.approx(1e-3), "compute")


def test_moe_layer_against_published_b200_kernel_times():
    # hardware_profiles/measurements/public_moe_kernels.yaml (TensorRT-LLM's fused MoE as FlashInfer benchmarks it:
    # DeepSeek-V3, one rank of EP8 on a B200), as benchmarks/bench_moe_kernel.py prints them; the profile is
    # uncalibrated and nothing is fitted to these points
    from simulator.calibration.moe_kernels import load_points, predicted_s

    errors = {(p.format, p.tokens): predicted_s(p) / p.measured_s - 1 for p in load_points()}
    assert len(errors) == 14
    # bf16 from 16 tokens on: the experts' weights streamed at the profile's 0.85 of HBM, within -5 .. +11 %
    bf16 = [e for (fmt, tokens), e in errors.items() if fmt == "bf16" and tokens >= 16]
    assert all(-0.05 < e < 0.11 for e in bf16)
    # NVFP4 is 7-20 % faster in moesim than the kernel: 4-bit weights streamed at the same 0.85, which the kernel
    # does not reach (~0.63 at 512 tokens)
    nvfp4 = [e for (fmt, tokens), e in errors.items() if fmt == "nvfp4" and tokens >= 16]
    assert all(-0.20 < e < -0.07 for e in nvfp4)
    # at 8 tokens (a few of the 32 experts touched) both are 30-40 % fast: the kernels' fixed part is larger than the
    # profile's 2 us a kernel
    assert errors[("bf16", 8)] < -0.3 and errors[("nvfp4", 8)] < -0.35
