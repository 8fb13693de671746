"""Reports stage, launch configs: a scenario's deployment as the launch settings of vLLM, SGLang and TensorRT-LLM.

Pure text generation. Each engine's flags were checked against its documentation for the version named in
ENGINE_VERSIONS. moesim's layout (pp, dp, tp, ep, etp; docs/deployment-search.md) maps onto an engine only
where the engine's MoE parallelism can hold it: the engines split a stage's experts over exactly the GPUs of
one replica's tensor-parallel group (ep x etp = tp) or, with data-parallel attention, over every GPU of the
stage (ep x etp = dp x tp); anything else is written as a script that says why and exits 1.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from simulator.config import Scenario

#: The engine version each mapping was written against, and where its flags were checked.
ENGINE_VERSIONS = {
    "vllm": "vLLM 0.11 (`vllm serve` engine arguments; docs.vllm.ai serving/data_parallel_deployment, "
    "serving/expert_parallel_deployment)",
    "sglang": "SGLang 0.5 (`python -m sglang.launch_server` server arguments; docs.sglang.io "
    "advanced_features/server_arguments, expert_parallelism, dp_dpa_router_guide)",
    "trtllm": "TensorRT-LLM 1.0 (`trtllm-serve` options and LLM API options; nvidia.github.io/TensorRT-LLM "
    "commands/trtllm-serve)",
}
_TORCH_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp8": "auto"}
TRTLLM_OPTIONS_FILE = "trtllm_extra_llm_api_options.yaml"


@dataclass(frozen=True)
class Deployment:
    """What the engines need from a scenario, per replica where it says so."""

    model: str
    pp: int
    dp: int
    tp: int
    ep: int
    etp: int
    moe: bool
    dtype: str
    weight_dtype: str
    kv_cache_dtype: str
    policy: str
    max_num_seqs: int | None  # per replica
    max_num_batched_tokens: int | None
    chunk_size_tokens: int | None
    microbatches: int
    uneven_split: bool

    @property
    def expert_group(self) -> int:
        return self.ep * self.etp

    @property
    def mode(self) -> str:
        """'replicas' (experts inside each replica's TP group, or a dense model: dp independent replicas),
        'dp_attention' (experts over every GPU of a stage: attention data-parallel, experts shared) or
        'unsupported' (an expert group between the two)."""
        if not self.moe or self.expert_group == self.tp:
            return "replicas"
        if self.dp > 1 and self.expert_group == self.dp * self.tp:
            return "dp_attention"
        return "unsupported"


def deployment_of(scenario: Scenario) -> Deployment:
    m, p = scenario.model, scenario.parallel
    if scenario.serving is not None:
        s = scenario.serving.scheduler
        policy, seqs, tokens, chunk = s.policy, s.max_num_seqs, s.max_num_batched_tokens, s.chunk_size_tokens
    else:
        w = scenario.workload
        policy, seqs, tokens, chunk = "static", w.batch_size // p.dp, None, None
    return Deployment(
        model=m.name,
        pp=p.pp,
        dp=p.dp,
        tp=p.tp,
        ep=p.ep,
        etp=p.etp,
        moe=m.is_moe,
        dtype=m.dtype,
        weight_dtype=m.weight_dtype or m.dtype,
        kv_cache_dtype=m.kv_cache_dtype or m.dtype,
        policy=policy,
        max_num_seqs=seqs,
        max_num_batched_tokens=tokens,
        chunk_size_tokens=chunk,
        microbatches=p.microbatches,
        uneven_split=p.layer_split is not None,
    )


def _header(engine: str, scenario: Scenario, d: Deployment) -> list[str]:
    lines = [
        "#!/usr/bin/env bash",
        f"# Launch settings written by moesim for scenario {scenario.name!r}.",
        f"# Mapping written against {ENGINE_VERSIONS[engine]}.",
        f"# moesim layout: PP {d.pp} x DP {d.dp} x TP {d.tp} = {d.pp * d.dp * d.tp} GPUs; experts EP {d.ep} x ETP {d.etp}"
        + ("" if d.moe else " (dense model)")
        + f"; weights {d.weight_dtype}, KV cache {d.kv_cache_dtype}, activations {d.dtype}.",
        "# MODEL: the checkpoint (Hugging Face id or path) of this model; moesim knows it as "
        f"{d.model!r}, which may not be a checkpoint name.",
        f"MODEL=${{MODEL:-{shlex.quote(d.model)}}}",
        "set -euo pipefail",
    ]
    if d.policy == "static":
        lines.append(
            "# Note: the scenario simulates one static batch; the engines batch continuously. The per-replica "
            "batch is written as the running-request limit."
        )
    if d.microbatches > 1:
        lines.append(
            f"# Note: moesim's microbatches = {d.microbatches} (static batch split) has no engine flag; the engines "
            "keep one batch in flight per pipeline stage."
        )
    if d.uneven_split:
        lines.append("# Note: the scenario's layer_split is not written; the engines split layers evenly by default.")
    return lines


def _refuse(lines: list[str], engine: str, why: str) -> str:
    lines += [
        f"# NOT EXPRESSIBLE: {why}",
        f'echo "moesim: {engine} cannot express this deployment: {why}" >&2',
        "exit 1",
    ]
    return "\n".join(lines) + "\n"


def _command(argv: list[str]) -> list[str]:
    """One command, one flag per line."""
    out, i = [argv[0]], 1
    while i < len(argv):
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append(f"{argv[i]} {argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return [out[0] + " \\"] + [f"  {part} \\" for part in out[1:-1]] + [f"  {out[-1]}"]


def _replicas(lines: list[str], d: Deployment, argv: list[str], port_flag: str) -> list[str]:
    """dp independent servers, each on its own GPUs and port, when the deployment is dp replicas."""
    per = d.pp * d.tp
    if d.dp == 1:
        return lines + _command(argv)
    lines += [
        f"# {d.dp} independent replicas of {per} GPU{'s' if per > 1 else ''} each, one server per replica on ports "
        "8000.. (put a load balancer in front).",
        f"for r in $(seq 0 {d.dp - 1}); do",
        f"  first=$((r * {per}))",
        f"  CUDA_VISIBLE_DEVICES=$(seq -s, $first $((first + {per - 1}))) \\",
    ]
    body = _command([*argv, port_flag, "$((8000 + r))"])
    lines += ["  " + body[0]] + ["  " + line for line in body[1:-1]] + ["  " + body[-1] + " &"]
    lines += ["done", "wait"]
    return lines


def vllm_script(scenario: Scenario) -> str:
    d = deployment_of(scenario)
    lines = _header("vllm", scenario, d)
    argv = ["vllm serve", '"$MODEL"', "--tensor-parallel-size", str(d.tp), "--pipeline-parallel-size", str(d.pp)]
    mode = d.mode
    if mode == "unsupported":
        return _refuse(
            lines,
            "vLLM",
            f"experts over ep x etp = {d.expert_group} GPUs; vLLM splits them over tp = {d.tp} or dp x tp = {d.dp * d.tp}",
        )
    group = d.tp if mode == "replicas" else d.dp * d.tp
    if d.moe and d.ep > 1 and d.etp > 1:
        return _refuse(
            lines,
            "vLLM",
            f"ep = {d.ep} with etp = {d.etp}: vLLM's MoE layers are either all expert-parallel or all tensor-parallel",
        )
    if mode == "dp_attention":
        argv += ["--data-parallel-size", str(d.dp)]
        lines.append(
            f"# Data-parallel attention: the {d.dp} DP ranks step together; their expert layers form one group of {group} GPUs."
        )
    if d.moe and d.ep == group and group > 1:
        argv.append("--enable-expert-parallel")
    elif d.moe and group > 1:
        lines.append(f"# Experts tensor-parallel over {group} GPUs (vLLM's default without --enable-expert-parallel).")
    argv += _vllm_limits(d)
    return "\n".join(_replicas(lines, d, argv, "--port") if mode == "replicas" else lines + _command(argv)) + "\n"


def _vllm_limits(d: Deployment) -> list[str]:
    argv = ["--dtype", _TORCH_DTYPE[d.dtype]]
    if d.weight_dtype == "fp8" and d.dtype != "fp8":
        argv += ["--quantization", "fp8"]
    argv += ["--kv-cache-dtype", "fp8" if d.kv_cache_dtype == "fp8" else "auto"]
    if d.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(d.max_num_seqs)]
    if d.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(d.max_num_batched_tokens)]
    if d.policy == "chunked_prefill":
        argv.append("--enable-chunked-prefill")
        if (
            d.chunk_size_tokens is not None
            and d.max_num_batched_tokens
            and d.chunk_size_tokens < d.max_num_batched_tokens
        ):
            argv += ["--long-prefill-token-threshold", str(d.chunk_size_tokens)]
    elif d.policy == "continuous":
        argv.append("--no-enable-chunked-prefill")
    return argv


def sglang_script(scenario: Scenario) -> str:
    d = deployment_of(scenario)
    lines = _header("sglang", scenario, d)
    mode = d.mode
    if mode == "unsupported":
        return _refuse(
            lines,
            "SGLang",
            f"experts over ep x etp = {d.expert_group} GPUs; SGLang splits them over --tp-size GPUs "
            f"(tp = {d.tp}, or dp x tp = {d.dp * d.tp} with --enable-dp-attention)",
        )
    argv = ["python -m sglang.launch_server", "--model-path", '"$MODEL"']
    if mode == "dp_attention":
        argv += ["--tp-size", str(d.dp * d.tp), "--dp-size", str(d.dp), "--enable-dp-attention"]
        lines.append(
            f"# --enable-dp-attention: attention TP = tp-size / dp-size = {d.tp}; MoE over all {d.dp * d.tp} GPUs."
        )
    else:
        argv += ["--tp-size", str(d.tp)]
        if d.dp > 1:
            argv += ["--dp-size", str(d.dp)]
            lines.append(
                f"# --dp-size without --enable-dp-attention: {d.dp} independent replicas behind SGLang's DP controller."
            )
    if d.pp > 1:
        argv += ["--pp-size", str(d.pp)]
    if d.moe and d.ep > 1:
        argv += ["--ep-size", str(d.ep)]
        lines.append(f"# MoE: expert parallel {d.ep}, tensor parallel tp-size / ep-size = {d.etp} inside each expert.")
    argv += _sglang_limits(d, mode, lines)
    return "\n".join(lines + _command(argv)) + "\n"


def _sglang_limits(d: Deployment, mode: str, lines: list[str]) -> list[str]:
    argv = ["--dtype", _TORCH_DTYPE[d.dtype]]
    if d.weight_dtype == "fp8" and d.dtype != "fp8":
        argv += ["--quantization", "fp8"]
    if d.kv_cache_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8_e4m3"]
    if d.max_num_seqs is not None:
        # With --enable-dp-attention the limit covers the dp ranks together (each rank takes its share).
        argv += ["--max-running-requests", str(d.max_num_seqs * (d.dp if mode == "dp_attention" else 1))]
    if d.max_num_batched_tokens is not None:
        argv += ["--max-prefill-tokens", str(d.max_num_batched_tokens)]
    if d.policy == "chunked_prefill":
        argv += ["--chunked-prefill-size", str(d.chunk_size_tokens or d.max_num_batched_tokens)]
    elif d.policy == "continuous":
        argv += ["--chunked-prefill-size", "-1"]
        note = "# --chunked-prefill-size -1: no chunking (moesim's continuous policy)."
        if note not in lines:
            lines.append(note)
    return argv


def trtllm_files(scenario: Scenario) -> dict[str, str]:
    """trtllm.sh and its extra LLM API options YAML."""
    d = deployment_of(scenario)
    lines = _header("trtllm", scenario, d)
    mode = d.mode
    if mode == "unsupported":
        return {
            "trtllm.sh": _refuse(
                lines,
                "TensorRT-LLM",
                f"experts over ep x etp = {d.expert_group} GPUs; TensorRT-LLM splits them over --tp_size GPUs",
            )
        }
    if mode == "dp_attention" and d.tp > 1:
        return {
            "trtllm.sh": _refuse(
                lines,
                "TensorRT-LLM",
                f"attention TP {d.tp} with DP {d.dp}: enable_attention_dp runs attention with TP 1 on every rank",
            )
        }
    options = ["# TensorRT-LLM LLM API options (trtllm-serve --extra_llm_api_options), written by moesim."]
    options.append(f"enable_attention_dp: {'true' if mode == 'dp_attention' else 'false'}")
    options.append(f"enable_chunked_prefill: {'true' if d.policy == 'chunked_prefill' else 'false'}")
    if d.kv_cache_dtype == "fp8":
        options += ["kv_cache_config:", "  dtype: fp8"]
    tp_size = d.dp * d.tp if mode == "dp_attention" else d.tp
    argv = ["trtllm-serve", '"$MODEL"', "--backend", "pytorch", "--tp_size", str(tp_size), "--pp_size", str(d.pp)]
    if d.moe:
        argv += ["--ep_size", str(d.ep)]
        lines.append(f"# MoE: expert parallel {d.ep}, expert tensor parallel tp_size / ep_size = {d.etp}.")
    if d.max_num_seqs is not None:
        argv += ["--max_batch_size", str(d.max_num_seqs)]  # per rank; with attention DP each rank batches its own
    if d.max_num_batched_tokens is not None:
        argv += ["--max_num_tokens", str(d.max_num_batched_tokens)]
    if d.chunk_size_tokens is not None and d.max_num_batched_tokens and d.chunk_size_tokens < d.max_num_batched_tokens:
        lines.append(
            f"# Note: chunk_size_tokens = {d.chunk_size_tokens} has no trtllm-serve option; chunks fill max_num_tokens."
        )
    if d.weight_dtype == "fp8" and d.dtype != "fp8":
        lines.append(
            "# Weights fp8: TensorRT-LLM loads a pre-quantized FP8 checkpoint (e.g. NVIDIA ModelOpt); point MODEL at one."
        )
    argv += ["--extra_llm_api_options", f'"$(dirname "$0")/{TRTLLM_OPTIONS_FILE}"']
    script = _replicas(lines, d, argv, "--port") if mode == "replicas" else lines + _command(argv)
    return {"trtllm.sh": "\n".join(script) + "\n", TRTLLM_OPTIONS_FILE: "\n".join(options) + "\n"}


ENGINE_SCRIPTS = {"vllm": "vllm.sh", "sglang": "sglang.sh", "trtllm": "trtllm.sh"}


def not_expressible(scenario: Scenario, engine: str) -> str | None:
    """Why `engine` (vllm, sglang, trtllm) cannot launch this scenario's deployment; None when it can."""
    script = launch_files(scenario)[ENGINE_SCRIPTS[engine]]
    marker = "# NOT EXPRESSIBLE: "
    return next((line[len(marker) :] for line in script.splitlines() if line.startswith(marker)), None)


def launch_files(scenario: Scenario) -> dict[str, str]:
    """Every launch file of a scenario: vllm.sh, sglang.sh, trtllm.sh (+ its options YAML when expressible);
    a disaggregated scenario's are the prefill/decode pairs (launch_disagg)."""
    if scenario.serving is not None and scenario.serving.disaggregation is not None:
        from simulator.report.launch_disagg import disaggregated_launch_files

        return disaggregated_launch_files(scenario)
    return {"vllm.sh": vllm_script(scenario), "sglang.sh": sglang_script(scenario), **trtllm_files(scenario)}
