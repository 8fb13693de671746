"""Launch configs (report.launch): the scripts for the seed and Mixtral-8x7B against checked-in files, and the
deployments an engine cannot express answered as such. Regenerate the files on purpose with
`MOESIM_REGEN_LAUNCH=1 pytest tests/test_launch.py`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from simulator.config import load_scenario
from simulator.report.launch import launch_files, sglang_script, trtllm_files, vllm_script

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "launch"
CASES = {
    "seed_moe_4gpu": ("scenarios/seed_moe_4gpu.yaml", []),
    "seed_moe_4gpu_serving": ("scenarios/seed_moe_4gpu_serving.yaml", []),
    "mixtral_8x7b_8xh100_ep8": ("scenarios/mixtral_8x7b_8xh200_ep8.yaml", ["hardware=h100-sxm-80gb"]),
    "mixtral_8x7b_8xh100_tp8": ("scenarios/mixtral_8x7b_8xh200_tp8.yaml", ["hardware=h100-sxm-80gb"]),
    # Disaggregated pairs (report.launch, disaggregated_launch_files): Mixtral 1P (TP4) + 1D (TP4); the seed 2P (1 GPU) + 1D (TP2 EP2).
    "mixtral_8x7b_8xh100_disagg": ("scenarios/mixtral_8x7b_8xh100_disagg.yaml", []),
    "seed_moe_4gpu_serving_2p1d": (
        "scenarios/seed_moe_4gpu_serving.yaml",
        [
            "serving.disaggregation.prefill.instances=2",
            "serving.disaggregation.decode.parallel.tp=2",
            "serving.disaggregation.decode.parallel.ep=2",
        ],
    ),
    "mixtral_8x7b_8xh100_dp8_ep8_fp8": (
        "scenarios/mixtral_8x7b_8xh200_ep8.yaml",
        [
            "hardware=h100-sxm-80gb",
            "parallel.tp=1",
            "parallel.dp=8",
            "model.weight_dtype=fp8",
            "model.kv_cache_dtype=fp8",
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_launch_files_match_the_checked_in_files(case):
    path, overrides = CASES[case]
    files = launch_files(load_scenario(ROOT / path, overrides))
    directory = FIXTURES / case
    if os.environ.get("MOESIM_REGEN_LAUNCH"):
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (directory / name).write_text(text)
    assert sorted(files) == sorted(p.name for p in directory.iterdir())
    for name, text in files.items():
        assert text == (directory / name).read_text(), f"{case}/{name} changed"


def test_an_expert_group_between_tp_and_the_stage_is_refused_by_every_engine():
    s = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu.yaml", ["parallel.pp=1", "parallel.tp=1", "parallel.dp=4", "parallel.ep=2"]
    )
    files = launch_files(s)
    for name in ("vllm.sh", "sglang.sh", "trtllm.sh"):
        assert "# NOT EXPRESSIBLE: experts over ep x etp = 2 GPUs" in files[name]
        assert files[name].rstrip().endswith("exit 1")


def test_attention_tp_with_attention_dp_is_refused_by_trtllm_only():
    s = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu.yaml", ["parallel.pp=1", "parallel.tp=2", "parallel.dp=2", "parallel.ep=4"]
    )
    files = launch_files(s)
    assert "--data-parallel-size 2" in files["vllm.sh"] and "--enable-expert-parallel" in files["vllm.sh"]
    assert "--tp-size 4" in files["sglang.sh"] and "--enable-dp-attention" in files["sglang.sh"]
    assert "# NOT EXPRESSIBLE: attention TP 2 with DP 2" in files["trtllm.sh"]


def test_expert_tp_and_ep_together_are_refused_by_vllm():
    s = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu.yaml", ["parallel.pp=1", "parallel.tp=4", "parallel.ep=2", "parallel.etp=2"]
    )
    files = launch_files(s)
    assert "NOT EXPRESSIBLE: ep = 2 with etp = 2" in files["vllm.sh"]
    assert "--ep-size 2" in files["sglang.sh"]
    assert "--ep_size 2" in files["trtllm.sh"]


def test_launch_command_writes_the_files(tmp_path, capsys):
    from simulator.cli import main

    out = tmp_path / "launch"
    assert main(["launch", str(ROOT / "scenarios/seed_moe_4gpu.yaml"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "sglang.sh",
        "trtllm.sh",
        "trtllm_extra_llm_api_options.yaml",
        "vllm.sh",
    ]
    assert main(["launch", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_disaggregated_pair_across_nodes_is_refused_by_every_engine():
    """Mixtral 1P (TP4) + 1D (TP4) on nodes of 4 GPUs: the decode instance is on the second node, and the
    writer addresses one host."""
    s = load_scenario(ROOT / "scenarios/mixtral_8x7b_8xh100_disagg.yaml", ["cluster.gpus_per_node=4"])
    files = launch_files(s)
    for name in ("vllm.sh", "sglang.sh", "trtllm.sh"):
        assert "# NOT EXPRESSIBLE: the pools span GPUs 0..7 on nodes of 4 GPUs" in files[name]
        assert files[name].rstrip().endswith("exit 1")
    assert sorted(files) == ["sglang.sh", "trtllm.sh", "vllm.sh"]


def test_a_pool_expert_group_smaller_than_its_tp_is_refused_by_every_engine():
    s = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu_serving.yaml",
        [
            "serving.disaggregation.prefill.parallel.tp=2",
            "serving.disaggregation.decode.parallel.tp=2",
            "serving.disaggregation.decode.parallel.ep=1",
            "serving.disaggregation.decode.parallel.etp=1",
            "serving.disaggregation.prefill.parallel.ep=2",
            "serving.disaggregation.prefill.parallel.etp=1",
        ],
    )
    files = launch_files(s)
    # decode: experts over ep x etp = 1 GPU of its 2: no engine holds it
    for name in ("vllm.sh", "sglang.sh", "trtllm.sh"):
        assert "NOT EXPRESSIBLE: the decode instance's experts over ep x etp = 1 GPUs" in files[name]


def _serving(*overrides: str) -> dict[str, str]:
    return launch_files(load_scenario(ROOT / "scenarios/seed_moe_4gpu_serving.yaml", list(overrides)))


def test_the_kv_cache_as_simulated_reaches_each_engine_where_it_has_a_setting():
    # TensorRT-LLM's KV fraction and GUARANTEED_NO_EVICT: its own options; vLLM and SGLang have neither, and say so
    files = _serving("serving.scheduler.kv_cache.free_memory_fraction=0.85", "serving.scheduler.admission=reserve")
    options = files["trtllm_extra_llm_api_options.yaml"]
    assert "kv_cache_config:\n  free_gpu_memory_fraction: 0.85\n" in options
    assert "scheduler_config:\n  capacity_scheduler_policy: GUARANTEED_NO_EVICT\n" in options
    vllm = files["vllm.sh"]
    assert "  --gpu-memory-utilization" not in vllm and "free_memory_fraction = 0.85" in vllm
    assert "vLLM allocates blocks on demand" in vllm and "--block-size 16" in vllm
    assert "  --mem-fraction-static" not in files["sglang.sh"] and "--page-size 16" in files["sglang.sh"]
    # vLLM's share of the GPU: vLLM's flag, SGLang's static share; TensorRT-LLM has none, and says so
    files = _serving("serving.scheduler.kv_cache.gpu_memory_utilization=0.85")
    assert "--gpu-memory-utilization 0.85" in files["vllm.sh"]
    assert "--mem-fraction-static 0.85" in files["sglang.sh"]
    assert "free_gpu_memory_fraction" not in files["trtllm_extra_llm_api_options.yaml"]
    assert "gpu_memory_utilization = 0.85 (vLLM's share" in files["trtllm.sh"]
    assert "capacity_scheduler_policy: MAX_UTILIZATION" in files["trtllm_extra_llm_api_options.yaml"]


def test_a_block_an_engine_cannot_take_is_left_to_its_default_with_a_note():
    files = _serving("serving.scheduler.kv_cache.block_size_tokens=64")
    assert "--block-size" not in files["vllm.sh"] and "above the 32 vLLM takes on CUDA" in files["vllm.sh"]
    assert "--page-size 64" in files["sglang.sh"]  # 8192-token chunks: a multiple of 64
    files = _serving("serving.scheduler.kv_cache.block_size_tokens=64", "serving.scheduler.chunk_size_tokens=1000")
    assert "--page-size" not in files["sglang.sh"] and "do not divide --chunked-prefill-size 1000" in files["sglang.sh"]


def test_a_static_batch_writes_no_kv_settings():
    files = launch_files(load_scenario(ROOT / "scenarios/seed_moe_4gpu.yaml"))
    text = "".join(files.values())
    assert not any(k in text for k in ("--block-size", "--page-size", "capacity_scheduler_policy", "KV memory"))


def test_two_microbatches_on_one_expert_parallel_stage_are_named_two_batch_overlap():
    s = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu.yaml",
        ["parallel.pp=1", "parallel.tp=1", "parallel.dp=4", "parallel.ep=4", "parallel.microbatches=2"],
    )
    for text in (vllm_script(s), sglang_script(s)):
        assert "SGLang's --enable-two-batch-overlap, vLLM's --enable-dbo. Not written" in text
        assert "--enable-two-batch-overlap \\" not in text and "--enable-dbo \\" not in text
        assert "has no engine flag" not in text
    pp2 = load_scenario(ROOT / "scenarios/seed_moe_4gpu.yaml", ["parallel.microbatches=2"])
    assert "has no engine flag" in vllm_script(pp2)  # microbatches over pipeline stages


def test_redundant_experts_become_each_engines_eplb_settings():
    s = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu.yaml",
        ["parallel.pp=1", "parallel.tp=1", "parallel.dp=4", "parallel.ep=4", "parallel.redundant_experts=4"],
    )
    assert "--enable-eplb \\\n  --num-redundant-experts 4" in vllm_script(s)
    assert "--ep-num-redundant-experts 4 \\\n  --enable-eplb" in sglang_script(s)
    assert "moe_config.load_balancer.num_slots = 20 (MoeLoadBalancerConfig)" in trtllm_files(s)["trtllm.sh"]


def test_an_nccl_allreduce_turns_each_engines_custom_allreduce_off():
    tp4 = ["parallel.pp=1", "parallel.tp=4", "parallel.ep=4"]
    nccl = load_scenario(ROOT / "scenarios/seed_moe_4gpu.yaml", [*tp4, "runtime.allreduce=nccl"])
    assert "--disable-custom-all-reduce" in vllm_script(nccl)
    assert "--disable-custom-all-reduce" in sglang_script(nccl)
    assert "allreduce_strategy: NCCL" in trtllm_files(nccl)["trtllm_extra_llm_api_options.yaml"]
    # the default (custom, what the engines run) writes nothing; nor does a layout without tensor parallelism
    custom = load_scenario(ROOT / "scenarios/seed_moe_4gpu.yaml", tp4)
    dp4 = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu.yaml",
        ["parallel.pp=1", "parallel.tp=1", "parallel.dp=4", "parallel.ep=1", "runtime.allreduce=nccl"],
    )
    for s in (custom, dp4):
        assert "--disable-custom-all-reduce" not in vllm_script(s) + sglang_script(s)
        assert "allreduce_strategy" not in trtllm_files(s)["trtllm_extra_llm_api_options.yaml"]


def test_a_tp_groups_experts_priced_with_the_all_to_all_flow_say_so():
    note = "moesim priced this layout's MoE layers with its all-to-all flow"
    seed = load_scenario(ROOT / "scenarios/seed_moe_4gpu.yaml")  # TP2 x EP2 on the same pair, all_to_all
    assert note in vllm_script(seed) and note in sglang_script(seed) and note in trtllm_files(seed)["trtllm.sh"]
    engines = load_scenario(ROOT / "scenarios/seed_moe_4gpu.yaml", ["runtime.moe_dispatch=allreduce"])
    assert note not in vllm_script(engines)
    dp_attention = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu.yaml", ["parallel.pp=1", "parallel.tp=1", "parallel.dp=4", "parallel.ep=4"]
    )
    assert note not in vllm_script(dp_attention)  # experts over the DP ranks: priced as all-to-alls (DeepEP)
    # ... which the engines run with a DeepEP backend, not by default: the files say which setting does
    assert "VLLM_ALL2ALL_BACKEND=deepep_high_throughput" in vllm_script(dp_attention)
    assert "--moe-a2a-backend deepep" in sglang_script(dp_attention)
    assert "VLLM_ALL2ALL_BACKEND" not in vllm_script(seed) and "--moe-a2a-backend" not in sglang_script(seed)
    gathered = dp_attention.model_copy(
        update={"runtime": dp_attention.runtime.model_copy(update={"ep_dispatch": "allgather"})}
    )
    assert "exchange as an all-gather and a reduce-scatter: vLLM's default" in vllm_script(gathered)
    assert "deepep" not in vllm_script(gathered) + sglang_script(gathered)


def test_a_launch_file_says_whether_moesim_priced_it_as_the_engine_version_it_is_written_for():
    serving = ROOT / "scenarios/seed_moe_4gpu_serving.yaml"
    plain = vllm_script(load_scenario(serving))
    assert "moesim priced it without an engine profile" in plain and "--set serving.engine=vllm-v1" in plain
    v0 = vllm_script(load_scenario(serving, ["serving.engine=vllm"]))
    assert "moesim priced it with serving.engine vllm; `--set serving.engine=vllm-v1`" in v0
    v1 = vllm_script(load_scenario(serving, ["serving.engine=vllm-v1"]))
    assert "moesim priced it as this version runs it (serving.engine vllm-v1" in v1
    sglang = sglang_script(load_scenario(serving))
    assert "moesim priced it without an engine profile" in sglang and "--set serving.engine=sglang-0.5" in sglang
    old = sglang_script(load_scenario(serving, ["serving.engine=sglang"]))
    assert "moesim priced it with serving.engine sglang; `--set serving.engine=sglang-0.5`" in old
    new = sglang_script(load_scenario(serving, ["serving.engine=sglang-0.5"]))
    assert "moesim priced it as this version runs it (serving.engine sglang-0.5" in new
    trt = trtllm_files(load_scenario(serving, ["serving.scheduler.split_prompts=true", "serving.engine=trtllm"]))[
        "trtllm.sh"
    ]
    assert "moesim priced it with serving.engine trtllm; `--set serving.engine=trtllm-1.0`" in trt
    trt1 = trtllm_files(load_scenario(serving, ["serving.scheduler.split_prompts=true", "serving.engine=trtllm-1.0"]))[
        "trtllm.sh"
    ]
    assert "moesim priced it as this version runs it (serving.engine trtllm-1.0" in trt1
    # a static batch (no serving section) carries no such line
    seed = load_scenario(ROOT / "scenarios/seed_moe_4gpu.yaml")
    assert "moesim priced it" not in vllm_script(seed) + sglang_script(seed) + trtllm_files(seed)["trtllm.sh"]


def test_a_scenarios_own_host_time_is_noted_in_every_launch_file():

    scenario = load_scenario(
        "scenarios/seed_moe_4gpu_serving.yaml",
        ["serving.scheduler.split_prompts=true", "serving.engine=trtllm-1.0", "serving.host.per_iteration_s=0.002"],
    )
    note = (
        "# Note: moesim priced the host's work per iteration at the scenario's serving.host (2 ms an iteration + "
        "29.37 us a sequence, overlapped); no engine option sets it"
    )
    files = launch_files(scenario)
    for name in ("vllm.sh", "sglang.sh", "trtllm.sh"):
        assert note in files[name], name
    plain = launch_files(
        load_scenario(
            "scenarios/seed_moe_4gpu_serving.yaml",
            ["serving.scheduler.split_prompts=true", "serving.engine=trtllm-1.0"],
        )
    )
    assert "serving.host" not in plain["trtllm.sh"]


def test_sglangs_static_memory_share_is_written_as_its_flag_and_noted_elsewhere():
    scenario = load_scenario(
        ROOT / "scenarios/seed_moe_4gpu_serving.yaml",
        [
            "serving.scheduler.kv_cache.gpu_memory_utilization=null",
            "serving.scheduler.kv_cache.mem_fraction_static=0.8",
        ],
    )
    assert "--mem-fraction-static 0.8 " in sglang_script(scenario) + " "
    note = "the scenario's mem_fraction_static = 0.8 (SGLang's share of the GPU for the weights and the KV pool)"
    assert note in vllm_script(scenario) and note in trtllm_files(scenario)["trtllm.sh"]


def test_sglang_mixes_decodes_into_prefill_chunks_only_when_moesim_priced_it_so():
    serving = ROOT / "scenarios/seed_moe_4gpu_serving.yaml"  # policy chunked_prefill: decodes in the chunks' iterations
    mixed = load_scenario(serving)
    assert "--enable-mixed-chunk" in sglang_script(mixed)
    unmixed = load_scenario(serving, ["serving.scheduler.policy=prefill_first_chunked"])
    script = sglang_script(unmixed)
    assert "--enable-mixed-chunk" not in script and "--chunked-prefill-size 8192" in script
    # vLLM and TensorRT-LLM always mix: they run the chunks, and say that moesim priced them apart
    assert "--enable-chunked-prefill" in vllm_script(unmixed)
    assert "vLLM runs the decodes in the same iterations" in vllm_script(unmixed)
    trt = trtllm_files(unmixed)
    assert "enable_chunked_prefill: true" in trt["trtllm_extra_llm_api_options.yaml"]
    assert "TensorRT-LLM runs the decodes in the same iterations" in trt["trtllm.sh"]
    assert "runs the decodes in the same iterations" not in vllm_script(mixed) + trtllm_files(mixed)["trtllm.sh"]


def test_sglangs_estimate_admission_is_noted_where_an_engine_admits_otherwise():
    est = load_scenario(ROOT / "scenarios/seed_moe_4gpu_serving.yaml", ["serving.scheduler.admission=estimate"])
    assert (
        "SGLang's new_token_ratio" in vllm_script(est) and "SGLang's new_token_ratio" in trtllm_files(est)["trtllm.sh"]
    )
    assert "capacity_scheduler_policy: MAX_UTILIZATION" in trtllm_files(est)["trtllm_extra_llm_api_options.yaml"]
    assert "new_token_ratio" not in sglang_script(est)  # SGLang admits so itself


def test_sglangs_retraction_order_is_noted_where_an_engine_preempts_the_newest():
    path = ROOT / "scenarios/seed_moe_4gpu_serving.yaml"
    retract = load_scenario(path, ["serving.scheduler.preempt=fewest_decoded"])
    note = "# Preemption: the scenario retracts the requests with the fewest output tokens"
    assert note in vllm_script(retract) and note in trtllm_files(retract)["trtllm.sh"]
    assert "Preemption:" not in sglang_script(retract)  # SGLang retracts so itself
    reserve = load_scenario(path, ["serving.scheduler.preempt=fewest_decoded", "serving.scheduler.admission=reserve"])
    assert "Preemption:" not in trtllm_files(reserve)["trtllm.sh"]  # GUARANTEED_NO_EVICT takes nothing back
    newest = load_scenario(path)
    assert "Preemption:" not in vllm_script(newest) + trtllm_files(newest)["trtllm.sh"] + sglang_script(newest)


def test_a_scenarios_own_cuda_graph_capture_is_written_for_every_engine():
    # vLLM 0.11: --compilation-config cudagraph_capture_sizes (it always pads: a note where the scenario does not);
    # SGLang 0.5: --cuda-graph-bs and --disable-cuda-graph-padding; TensorRT-LLM 1.0: cuda_graph_config
    base = ["serving.scheduler.split_prompts=true", "serving.engine=trtllm-1.0"]
    plain = launch_files(load_scenario(ROOT / "scenarios/seed_moe_4gpu_serving.yaml", base))
    exact = launch_files(
        load_scenario(
            ROOT / "scenarios/seed_moe_4gpu_serving.yaml", [*base, "serving.cuda_graph={sizes: [8, 1], padding: false}"]
        )
    )
    padded = launch_files(
        load_scenario(ROOT / "scenarios/seed_moe_4gpu_serving.yaml", [*base, "serving.cuda_graph.padding=true"])
    )
    assert "  --compilation-config '{\"cudagraph_capture_sizes\": [1, 8]}' \\" in exact["vllm.sh"]
    assert "vLLM pads every batch up to the next captured size" in exact["vllm.sh"]
    assert "--cuda-graph-bs 1 8 \\" in exact["sglang.sh"] and "--disable-cuda-graph-padding" in exact["sglang.sh"]
    options = exact["trtllm_extra_llm_api_options.yaml"]
    assert "cuda_graph_config:\n  batch_sizes: [1, 8]\n  enable_padding: false\n" in options
    assert "cuda_graph_config:\n  enable_padding: true\n" in padded["trtllm_extra_llm_api_options.yaml"]
    assert "compilation-config" not in padded["vllm.sh"] and "pads every batch" not in padded["vllm.sh"]
    assert "cuda-graph" not in padded["sglang.sh"]
    for name, text in plain.items():  # the engine's own capture: nothing written
        assert "cuda_graph" not in text and "cuda-graph" not in text and "compilation-config" not in text, name


def test_the_attention_dp_balance_is_written_for_tensorrt_llm_and_noted_for_the_others():
    s = load_scenario(
        ROOT / "scenarios/qwen3_30b_a3b_fp8_1xh100_vllm.yaml",
        [
            "serving.engine=trtllm-1.0",
            "cluster.num_gpus=2",
            "parallel.dp=2",
            "parallel.ep=2",
            "serving.replicas.attention_dp_balance.timeout_iters=20",
        ],
    )
    files = launch_files(s)
    options = files["trtllm_extra_llm_api_options.yaml"]
    assert (
        "enable_attention_dp: true\nattention_dp_config:\n  enable_balance: true\n  timeout_iters: 20\n"
        "  batching_wait_iters: 10\n" in options
    )
    for name, engine in (("vllm.sh", "vLLM"), ("sglang.sh", "SGLang")):
        assert f"TensorRT-LLM's attention_dp_config (enable_balance); {engine} has no such setting" in files[name]
    plain = launch_files(load_scenario(ROOT / "scenarios/qwen3_30b_a3b_fp8_1xh100_vllm.yaml", ["parallel.dp=1"]))
    assert "attention_dp_config" not in plain["trtllm_extra_llm_api_options.yaml"]


def test_a_router_other_than_the_engines_own_is_noted_for_that_engine():
    dep = ["cluster.num_gpus=2", "parallel.dp=2", "parallel.ep=2"]
    path = ROOT / "scenarios/qwen3_30b_a3b_fp8_1xh100_vllm.yaml"
    note = "simulate with that router to compare like with like"
    # vLLM V1's profile routes a lockstep group by its DP load balancer: vLLM's script says nothing, the others do
    # where their rule differs (SGLang's default is round robin, TensorRT-LLM queues)
    files = launch_files(load_scenario(path, dep))
    assert note not in files["vllm.sh"]
    assert "serving.replicas.router = vllm_dp; SGLang routes by round robin" in files["sglang.sh"]
    assert "router = vllm_dp; TensorRT-LLM routes by one queue" in files["trtllm.sh"]
    files = launch_files(load_scenario(path, [*dep, "serving.replicas.router=round_robin"]))
    assert (
        "router = round_robin; vLLM routes by its DP load balancer: the lowest waiting x 4 + running"
        in files["vllm.sh"]
    )
    assert note not in files["sglang.sh"]
    files = launch_files(load_scenario(path, [*dep, "serving.engine=trtllm-1.0"]))
    assert note not in files["trtllm.sh"]  # its own attention-DP queue
    # independent replicas (experts inside each): no group, no note
    files = launch_files(load_scenario(path, ["cluster.num_gpus=2", "parallel.dp=2"]))
    assert all(note not in text for text in files.values())
    # a static batch (no serving section) is split evenly over the ranks: nothing routed, nothing to note
    static = load_scenario(ROOT / "scenarios/mixtral_8x7b_8xh200_ep8.yaml", ["parallel.tp=1", "parallel.dp=8"])
    assert static.serving is None
    assert all(note not in text for text in launch_files(static).values())


def test_a_shared_prefix_simulated_without_prefix_caching_turns_each_engines_cache_off():
    path = ROOT / "scenarios/seed_moe_4gpu_serving.yaml"
    prefix = "serving.workload.shared_prefix={tokens: 256}"
    off = launch_files(load_scenario(path, [prefix, "serving.scheduler.prefix_caching=false"]))
    assert "--no-enable-prefix-caching" in off["vllm.sh"]
    assert "--disable-radix-cache" in off["sglang.sh"]
    assert "enable_block_reuse: false" in off["trtllm_extra_llm_api_options.yaml"]
    # cached as the engines cache by default, or no shared prefix to cache: nothing written
    for overrides in ([prefix, "serving.scheduler.prefix_caching=true"], ["serving.scheduler.prefix_caching=false"]):
        files = launch_files(load_scenario(path, overrides))
        assert "prefix-caching" not in files["vllm.sh"] and "radix" not in files["sglang.sh"]
        assert "enable_block_reuse" not in files["trtllm_extra_llm_api_options.yaml"]
