"""Reports stage, launch configs: a scenario's deployment as the launch settings of vLLM, SGLang and TensorRT-LLM.

Pure text generation. Each engine's flags and config keys were checked against the engine's source for the version
named in ENGINE_VERSIONS (the file and commit of each: tests/fixtures/launch/engine_flags.yaml). moesim's layout
(pp, dp, tp, ep, etp; docs/deployment-search.md) maps onto an engine only where the engine's MoE parallelism can
hold it: the engines split a stage's experts over exactly the GPUs of one replica's tensor-parallel group
(ep x etp = tp) or, with data-parallel attention, over every GPU of the stage (ep x etp = dp x tp); anything else,
and any scheduler limit the engine refuses at start-up, is written as a script that says why (NOT EXPRESSIBLE) and
exits 1. A disaggregated scenario's files are the prefill/decode pairs with their router or proxy (section
"Disaggregated deployments" below).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from simulator.config import Scenario
from simulator.config.scenario import pool_layout
from simulator.config.serving import CHUNKED_POLICIES, PoolSpec
from simulator.serving.capacity import engine_rank_budget_tokens, resolved_router

#: The engine version each mapping was written against, and the engine source its flags were checked in (each flag
#: and key with its file and commit: tests/fixtures/launch/engine_flags.yaml; docs/deployment-search.md).
ENGINE_VERSIONS = {
    "vllm": "vLLM 0.11 (`vllm serve` engine arguments; checked in vllm/engine/arg_utils.py, vllm/config/*.py)",
    "sglang": "SGLang 0.5 (`python -m sglang.launch_server` server arguments; checked in "
    "python/sglang/srt/server_args.py)",
    "trtllm": "TensorRT-LLM 1.0 (`trtllm-serve` options and LLM API options; checked in "
    "tensorrt_llm/commands/serve.py, tensorrt_llm/llmapi/llm_args.py)",
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
    # the KV cache as simulated (serving scenarios; None for a static batch): its memory rule, block and admission
    gpu_memory_utilization: float | None = None
    free_memory_fraction: float | None = None
    mem_fraction_static: float | None = None
    block_size_tokens: int | None = None
    admission: str | None = None
    preempt: str | None = None
    schedule_conservativeness: float = 1.0
    dp_attention: bool = False  # Scenario.dp_attention: experts over every GPU of a stage
    redundant_experts: int = 0  # extra expert copies per expert group (EPLB)
    num_experts: int = 0
    nccl_allreduce: bool = False  # runtime.allreduce nccl with tensor-parallel all-reduces: the custom one turned off
    moe_all_to_all_in_tp: bool = False  # priced with the all-to-all flow where the engines all-reduce (moe_dispatch)
    ep_allgather: bool = False  # the expert group's exchange priced as all-gather + reduce-scatter (ep_dispatch)
    graph_sizes: tuple[int, ...] | None = None  # serving.cuda_graph.sizes: the deployment's own capture sizes
    graph_padding: bool | None = None  # serving.cuda_graph.padding
    sliding_window_kv: str | None = None  # freed / kept for a model with sliding-window layers (serving), else None
    split_prompts: bool = True  # serving.scheduler.split_prompts: prompts cut to fill the token budget
    # serving.replicas.attention_dp_balance: (timeout_iters, batching_wait_iters), None when off
    attention_dp_balance: tuple[int, int] | None = None
    router: str | None = None  # serving.replicas.router as the simulation resolves it; None for a static batch
    # workload.shared_prefix or .conversation simulated without prefix caching: the engines' own (on by default) off
    prefix_caching_off: bool = False

    @property
    def two_batch_overlap(self) -> bool:
        """Two microbatches on a single stage of an expert-parallel MoE: the engines' two-batch overlap."""
        return self.microbatches == 2 and self.pp == 1 and self.moe and self.ep > 1

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
        if self.dp_attention:
            return "dp_attention"
        return "unsupported"


def deployment_of(scenario: Scenario) -> Deployment:
    m, p = scenario.model, scenario.parallel
    kv: dict = {}
    if scenario.serving is not None:
        s = scenario.serving.scheduler
        policy, seqs, tokens, chunk = s.policy, s.max_num_seqs, s.max_num_batched_tokens, s.chunk_size_tokens
        rank_budget = engine_rank_budget_tokens(scenario)  # the engine's budget per DP-attention rank, as priced
        if rank_budget is not None:
            tokens, chunk = rank_budget, None if chunk is None else min(chunk, rank_budget)
        kv = {
            "gpu_memory_utilization": s.kv_cache.gpu_memory_utilization,
            "free_memory_fraction": s.kv_cache.free_memory_fraction,
            "mem_fraction_static": s.kv_cache.mem_fraction_static,
            "block_size_tokens": s.kv_cache.block_size_tokens,
            "admission": s.admission,
            "preempt": s.preempt,
            "schedule_conservativeness": s.schedule_conservativeness,
            "split_prompts": s.split_prompts,
        }
        kv["router"] = resolved_router(scenario)
        sw = scenario.serving.workload
        kv["prefix_caching_off"] = (
            sw.shared_prefix is not None or sw.conversation is not None
        ) and not s.prefix_caching
        adp = scenario.serving.replicas.attention_dp_balance
        if adp is not None:
            kv["attention_dp_balance"] = (adp.timeout_iters, adp.batching_wait_iters)
        if m.sliding_window is not None:
            kv["sliding_window_kv"] = s.kv_cache.sliding_window_kv
        if scenario.serving.cuda_graph is not None:
            kv |= {
                "graph_sizes": scenario.serving.cuda_graph.sizes,
                "graph_padding": scenario.serving.cuda_graph.padding,
            }
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
        dp_attention=scenario.dp_attention,
        dtype=m.dtype,
        weight_dtype=m.weight_dtype or m.dtype,
        kv_cache_dtype=m.kv_cache_dtype or m.dtype,
        policy=policy,
        max_num_seqs=seqs,
        max_num_batched_tokens=tokens,
        chunk_size_tokens=chunk,
        microbatches=p.microbatches,
        uneven_split=p.layer_split is not None,
        redundant_experts=p.redundant_experts,
        num_experts=m.num_experts,
        nccl_allreduce=scenario.runtime.allreduce == "nccl" and (p.tp > 1 or p.etp > 1),
        moe_all_to_all_in_tp=m.is_moe and p.tp > 1 and p.ep * p.etp == p.tp and not scenario.moe_allreduce,
        ep_allgather=scenario.runtime.ep_dispatch == "allgather",
        **kv,
    )


#: The engine profile (engine_profiles/) that prices a deployment as the version of ENGINE_VERSIONS runs it.
PRICING_PROFILES = {"vllm": "vllm-v1", "sglang": "sglang-0.5", "trtllm": "trtllm-1.0"}


def _pricing_note(engine: str, scenario: Scenario) -> list[str]:
    """For a serving scenario, whether moesim priced it as the engine version the file is written for."""
    profile = PRICING_PROFILES.get(engine)
    if scenario.serving is None or profile is None:
        return []
    priced = scenario.serving.engine
    if priced == profile:
        return [
            f"# moesim priced it as this version runs it (serving.engine {profile}: engine_profiles/{profile}.yaml)."
        ]
    how = f"with serving.engine {priced}" if priced else "without an engine profile (the operator DAG alone)"
    return [f"# moesim priced it {how}; `--set serving.engine={profile}` prices it as this version runs it."]


def _header(engine: str, scenario: Scenario, d: Deployment) -> list[str]:
    lines = [
        "#!/usr/bin/env bash",
        f"# Launch settings written by moesim for scenario {scenario.name!r}.",
        f"# Mapping written against {ENGINE_VERSIONS[engine]}.",
        *_pricing_note(engine, scenario),
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
    if d.two_batch_overlap:
        lines.append(
            "# Note: moesim's 2 microbatches on one stage with expert parallelism overlap one half-batch's all-to-all "
            "with the other's compute: SGLang's --enable-two-batch-overlap, vLLM's --enable-dbo. Not written: both "
            "need a DeepEP-class all-to-all backend (SGLang --moe-a2a-backend deepep, vLLM --all2all-backend), "
            "whose setup this writer does not check."
        )
    elif d.microbatches > 1:
        lines.append(
            f"# Note: moesim's microbatches = {d.microbatches} (static batch split) has no engine flag; the engines "
            "keep one batch in flight per pipeline stage."
        )
    if d.uneven_split:
        lines.append("# Note: the scenario's layer_split is not written; the engines split layers evenly by default.")
    if scenario.serving is not None and scenario.serving.host is not None and scenario.serving.engine is not None:
        host = scenario.serving.engine_profile().host
        lines.append(
            f"# Note: moesim priced the host's work per iteration at the scenario's serving.host ({host.text}); no "
            "engine option sets it: it is what the host measures (TensorRT-LLM logs it per iteration as "
            "host_step_time with print_iter_log: true)."
        )
    if d.moe_all_to_all_in_tp:
        lines.append(
            "# Note: moesim priced this layout's MoE layers with its all-to-all flow (runtime.moe_dispatch all_to_all: "
            "each TP rank routes 1/tp of the tokens, all-to-all, all-gather); the engines run a TP group's experts on "
            "all tokens with one all-reduce, which runtime.moe_dispatch: allreduce prices."
        )
    return lines


def _refuse(lines: list[str], engine: str, why: str) -> str:
    lines += [
        f"# NOT EXPRESSIBLE: {why}",
        f'echo "moesim: {engine} cannot express this deployment: {why}" >&2',
        "exit 1",
    ]
    return "\n".join(lines) + "\n"


def _command(argv: list[str]) -> list[str]:
    """One command, one flag per line, with all its values (a list flag takes several)."""
    out, i = [argv[0]], 1
    while i < len(argv):
        part, i = [argv[i]], i + 1
        if part[0].startswith("-"):
            while i < len(argv) and not argv[i].startswith("--"):
                part.append(argv[i])
                i += 1
        out.append(" ".join(part))
    return [out[0] + " \\"] + [f"  {part} \\" for part in out[1:-1]] + [f"  {out[-1]}"]


def _replicas(lines: list[str], d: Deployment, argv: list[str], port_flag: str) -> list[str]:
    """dp independent servers, each on its own GPUs and port, when the deployment is dp replicas."""
    per = d.pp * d.tp
    if d.dp == 1:
        return lines + _command(argv)
    lines += [
        f"# {d.dp} independent replicas of {per} GPU{'s' if per > 1 else ''} each, one server per replica on ports "
        "8000.. (put a load balancer in front).",
        *(
            [
                "# moesim sent every turn of a conversation to one replica (serving.replicas.router = session): the "
                "load balancer must route by session too (vLLM production-stack's --routing-logic session; SGLang's "
                "router --policy cache_aware routes by prefix match)."
            ]
            if d.router == "session"
            else []
        ),
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
        _balance_note(d, lines, "vLLM")
        _router_note(d, lines, "vLLM")
        if d.ep_allgather:
            lines.append(
                "# moesim priced the expert group's exchange as an all-gather and a reduce-scatter: vLLM's default "
                "backend, VLLM_ALL2ALL_BACKEND=allgather_reducescatter (vllm/envs.py)."
            )
        else:
            lines.append(
                "# Note: moesim priced the expert group's dispatch and combine as all-to-alls of each token's routed "
                "copies (DeepEP-class kernels). vLLM's default backend, VLLM_ALL2ALL_BACKEND=allgather_reducescatter "
                "(vllm/envs.py), gathers every token to every rank of the group and reduce-scatters after, which moves "
                "more bytes when top_k is below the group's size (runtime.ep_dispatch: allgather prices it); "
                "VLLM_ALL2ALL_BACKEND=deepep_high_throughput (deepep_low_latency for decode), with DeepEP installed, "
                "runs what moesim priced."
            )
    if d.moe and d.ep == group and group > 1:
        argv.append("--enable-expert-parallel")
        if d.redundant_experts:
            argv += ["--enable-eplb", "--num-redundant-experts", str(d.redundant_experts)]
            lines.append(
                f"# EPLB with {d.redundant_experts} redundant expert copies (vLLM 0.11 marks --num-redundant-experts "
                "deprecated for --eplb-config; both set EPLBConfig.num_redundant_experts)."
            )
    elif d.moe and group > 1:
        lines.append(f"# Experts tensor-parallel over {group} GPUs (vLLM's default without --enable-expert-parallel).")
    why = _vllm_limits_why_not(d)
    if why:
        return _refuse(lines, "vLLM", why)
    argv += _vllm_limits(d, lines)
    return "\n".join(_replicas(lines, d, argv, "--port") if mode == "replicas" else lines + _command(argv)) + "\n"


def _vllm_limits_why_not(d: Deployment) -> str | None:
    """Scheduler limits vLLM refuses at start-up (vllm/config/scheduler.py, SchedulerConfig.verify_max_model_len)."""
    if (
        d.max_num_seqs is not None
        and d.max_num_batched_tokens is not None
        and d.max_num_batched_tokens < d.max_num_seqs
    ):
        return (
            f"max_num_batched_tokens = {d.max_num_batched_tokens} < max_num_seqs = {d.max_num_seqs}: vLLM refuses a "
            "token budget below its sequence limit (SchedulerConfig.verify_max_model_len)"
        )
    return None


_NCCL_NOTE = (
    "# All-reduces through NCCL (the scenario's runtime.allreduce nccl): the engine's custom all-reduce turned off."
)


def _vllm_limits(d: Deployment, lines: list[str]) -> list[str]:
    argv = ["--dtype", _TORCH_DTYPE[d.dtype]]
    if d.nccl_allreduce:
        argv.append("--disable-custom-all-reduce")
        _note(lines, _NCCL_NOTE)
    if d.weight_dtype == "fp8" and d.dtype != "fp8":
        argv += ["--quantization", "fp8"]
    argv += ["--kv-cache-dtype", "fp8" if d.kv_cache_dtype == "fp8" else "auto"]
    if d.prefix_caching_off:  # V1 turns automatic prefix caching on by default
        argv.append("--no-enable-prefix-caching")
    if d.graph_sizes is not None:
        argv += ["--compilation-config", shlex.quote(json.dumps({"cudagraph_capture_sizes": list(d.graph_sizes)}))]
    if d.graph_padding is False:
        _note(
            lines,
            "# Note: the scenario replays CUDA graphs only for batches of exactly a captured size; vLLM pads every "
            "batch up to the next captured size (no option turns that off).",
        )
    if d.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(d.max_num_seqs)]
    if d.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(d.max_num_batched_tokens)]
    if d.policy in _CHUNKED:
        argv.append("--enable-chunked-prefill")
        _chunked(d, "vLLM", lines)
        if d.policy == "prefill_first_chunked":
            _note(lines, _MIXED_NOTE.format(engine="vLLM"))
        if (
            d.chunk_size_tokens is not None
            and d.max_num_batched_tokens
            and d.chunk_size_tokens < d.max_num_batched_tokens
        ):
            argv += ["--long-prefill-token-threshold", str(d.chunk_size_tokens)]
    elif d.policy == "continuous":
        argv.append("--no-enable-chunked-prefill")
        if d.max_num_batched_tokens is not None:
            # Without chunked prefill vLLM refuses max_num_batched_tokens < max_model_len; moesim's continuous policy
            # already holds every request to input + output - 1 <= max_num_batched_tokens (config.serving).
            argv += ["--max-model-len", str(d.max_num_batched_tokens)]
            note = (
                "# --max-model-len = max-num-batched-tokens: vLLM without chunked prefill refuses a longer context "
                "(SchedulerConfig.verify_max_model_len); every request must fit one iteration's token budget."
            )
            if note not in lines:
                lines.append(note)
    return argv + _vllm_kv(d, lines)


#: Block sizes vLLM takes on CUDA (vllm/config/cache.py CacheConfig.block_size: "On CUDA devices, only block
#: sizes up to 32 are supported", of BlockSize 1, 8, 16, 32, ...).
VLLM_CUDA_BLOCK_SIZES = (1, 8, 16, 32)


_CHUNKED = CHUNKED_POLICIES
_SGLANG_MIXED_NOTE = (
    "# Note: moesim's chunked_prefill runs the decodes in the same iterations as the prefill chunks; SGLang does so "
    "only with --enable-mixed-chunk (server_args.py, off by default: prefill-only batches first, moesim's "
    "prefill_first_chunked)."
)
_MIXED_NOTE = (
    "# Note: moesim priced prefill_first_chunked (SGLang's default: prefill-only iterations, decodes held meanwhile); "
    "{engine} runs the decodes in the same iterations as the prefill chunks (moesim's chunked_prefill)."
)
_WHOLE_NOTE = (
    "# Note: moesim priced whole prompts (scheduler.split_prompts false, TensorRT-LLM's default); {engine} cuts a "
    "prompt to fill what an iteration's token budget leaves."
)


def _chunked(d: Deployment, engine: str, lines: list[str]) -> bool:
    """Whether the engine is to cut prompts into chunks (TensorRT-LLM's enable_chunked_prefill), noting where moesim
    priced whole prompts for an engine that always cuts them."""
    if d.policy in _CHUNKED and not d.split_prompts and engine != "TensorRT-LLM":
        _note(lines, _WHOLE_NOTE.format(engine=engine))
    return d.policy in _CHUNKED and d.split_prompts


def _note(lines: list[str], note: str) -> None:
    if note not in lines:
        lines.append(note)


def _balance_note(d: Deployment, lines: list[str], engine: str) -> None:
    """Where the scenario holds context requests for balance (TensorRT-LLM's attention_dp_config), a note that
    `engine` has no such setting, so its figures will differ from the simulated run."""
    if d.attention_dp_balance is not None:
        _note(
            lines,
            f"# serving.replicas.attention_dp_balance is TensorRT-LLM's attention_dp_config (enable_balance); {engine} "
            "has no such setting and schedules each rank's prompts at once: not written, so its figures differ.",
        )


#: Each engine's own way of sending requests to its attention-DP ranks (serving.replicas.router) and what it is.
ENGINE_ROUTERS = {
    "vLLM": ("vllm_dp", "its DP load balancer: the lowest waiting x 4 + running, from counts published every 100 ms"),
    "SGLang": ("round_robin", "round robin (--load-balance-method round_robin, its default)"),
    "TensorRT-LLM": ("attention_dp", "one queue, each request bound to a rank when the ranks have room"),
}


def _router_note(d: Deployment, lines: list[str], engine: str) -> None:
    """Where the scenario routes requests to the attention-DP ranks otherwise than `engine` does, a note saying
    so (the engine's rule is not a setting moesim writes)."""
    own, text = ENGINE_ROUTERS[engine]
    if d.router is not None and d.router != own:
        _note(
            lines,
            f"# moesim sent requests to the DP ranks by serving.replicas.router = {d.router}; {engine} routes by "
            f"{text}, moesim's router {own}: simulate with that router to compare like with like.",
        )


#: What each KV memory rule of a scenario means; the engine whose own setting it is takes it, the others a note.
KV_RULES = {
    "gpu_memory_utilization": "vLLM's share of the whole GPU",
    "free_memory_fraction": "TensorRT-LLM's share of the memory the weights leave",
    "mem_fraction_static": "SGLang's share of the GPU for the weights and the KV pool",
}


def _kv_share(d: Deployment, lines: list[str], engine: str, native: str, default: str) -> float | None:
    """The scenario's KV memory share when its rule is this engine's own (`native`); else None, with a note saying
    that the engine's `default` share applies (the scenario's rule being another engine's, or none)."""
    if d.block_size_tokens is None:  # a static batch: no KV pool simulated
        return None
    given = [(rule, getattr(d, rule)) for rule in KV_RULES if getattr(d, rule) is not None]
    if not given:
        _note(
            lines,
            "# KV memory: the scenario gives no gpu_memory_utilization, free_memory_fraction or mem_fraction_static "
            "(moesim sized its KV pool as its engine profile derives it, else as the GPU's memory less "
            f"runtime.memory_reserve_bytes, or from capacity_blocks); {default} applies here.",
        )
        return None
    rule, value = given[0]
    if rule == native:
        return value
    _note(
        lines,
        f"# KV memory: the scenario's {rule} = {value:g} ({KV_RULES[rule]}) has no {engine} setting; {default} applies.",
    )
    return None


def _reserve_note(d: Deployment, lines: list[str], how_engine_admits: str, estimates: bool = False) -> None:
    """A note when the scenario admits requests as the engine does not: reserving each request's whole KV, or (for
    an engine that does not estimate, `estimates` False) by SGLang's estimate of the decode tokens to come."""
    if d.admission == "reserve":
        _note(
            lines,
            "# Admission: the scenario reserves each request's whole KV at admission (TensorRT-LLM's "
            f"GUARANTEED_NO_EVICT); {how_engine_admits}",
        )
    elif d.admission == "estimate" and not estimates:
        _note(
            lines,
            "# Admission: the scenario admits a request only while its prompt and output fit the free KV less the "
            f"running requests' estimated outputs (SGLang's new_token_ratio); {how_engine_admits}",
        )


PREEMPT_ORDERS = {
    "newest": "preempts the newest running request when blocks run out, first in the queue again",
    "fewest_decoded": "retracts the requests with the fewest output tokens before a decode step whose blocks are "
    "not free (SGLang's retract_decode), last in the queue",
}


def _preempt_note(d: Deployment, lines: list[str], engine: str, engine_order: str) -> None:
    """A note when the scenario takes KV back from running requests in SGLang's order on an engine that does not
    (the default order, newest, is noted nowhere, as the default admission is not)."""
    if d.preempt == "fewest_decoded" and engine_order != "fewest_decoded":
        _note(
            lines,
            f"# Preemption: the scenario {PREEMPT_ORDERS[d.preempt]}; {engine} {PREEMPT_ORDERS[engine_order]}.",
        )


def _vllm_kv(d: Deployment, lines: list[str]) -> list[str]:
    """The KV cache as simulated: vLLM's share of the GPU and its block size, or a note where vLLM has no flag."""
    argv = []
    share = _kv_share(
        d, lines, "vLLM", "gpu_memory_utilization", "vLLM's default --gpu-memory-utilization (0.9 of the GPU)"
    )
    if share is not None:
        argv += ["--gpu-memory-utilization", f"{share:g}"]
    if d.block_size_tokens in VLLM_CUDA_BLOCK_SIZES:
        argv += ["--block-size", str(d.block_size_tokens)]
    elif d.block_size_tokens is not None:
        _note(
            lines,
            f"# KV blocks: the scenario's {d.block_size_tokens}-token blocks are above the 32 vLLM takes on CUDA; "
            "vLLM's default block size applies.",
        )
    if d.sliding_window_kv == "kept":  # the hybrid KV cache manager frees them by default
        argv.append("--disable-hybrid-kv-cache-manager")
    _reserve_note(d, lines, "vLLM allocates blocks on demand and preempts the newest request instead.")
    _preempt_note(d, lines, "vLLM", "newest")
    return argv


def _sglang_kv(d: Deployment, lines: list[str], chunk: int) -> list[str]:
    """The KV cache as simulated: SGLang's static memory share and page size, or a note where it has no flag.
    `chunk`: the --chunked-prefill-size written (-1: none), which SGLang requires to be a multiple of the page size
    (server_args.py check_server_args)."""
    argv = []
    native = "mem_fraction_static" if d.mem_fraction_static is not None else "gpu_memory_utilization"
    share = _kv_share(d, lines, "SGLang", native, "SGLang's own --mem-fraction-static")
    if share is not None and native == "mem_fraction_static":
        argv += ["--mem-fraction-static", f"{share:g}"]
    elif share is not None:
        argv += ["--mem-fraction-static", f"{share:g}"]
        _note(
            lines,
            "# --mem-fraction-static = the scenario's gpu_memory_utilization: SGLang's share holds the weights and the KV "
            "pool, with the activations outside it (moesim's, as vLLM's, holds the activations too).",
        )
    if d.block_size_tokens is not None:
        if chunk > 0 and chunk % d.block_size_tokens:
            _note(
                lines,
                f"# KV pages: the scenario's {d.block_size_tokens}-token blocks do not divide --chunked-prefill-size "
                f"{chunk}, which SGLang requires (check_server_args); SGLang's default page size applies.",
            )
        else:
            argv += ["--page-size", str(d.block_size_tokens)]
    _reserve_note(
        d,
        lines,
        "SGLang admits against its own estimate of the decode tokens to come and retracts requests when the pool "
        "runs out.",
        estimates=True,
    )
    if d.schedule_conservativeness != 1.0:  # SGLang multiplies it by 0.3 under DP attention, as moesim priced it
        argv += ["--schedule-conservativeness", f"{d.schedule_conservativeness:g}"]
    if d.sliding_window_kv == "kept":
        argv.append("--disable-hybrid-swa-memory")
    elif d.sliding_window_kv == "freed":
        _note(
            lines,
            "# Sliding-window KV: SGLang keeps the sliding layers in a pool of their own, --swa-full-tokens-ratio (0.8) "
            "of the full layers' tokens; moesim priced one pool whose sliding layers free the blocks their window left.",
        )
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
        _balance_note(d, lines, "SGLang")
        _router_note(d, lines, "SGLang")
        if d.ep_allgather:
            lines.append(
                "# moesim priced the expert group's exchange as an all-gather and a reduce-scatter. SGLang's DP "
                "attention with --moe-a2a-backend none (its default) gathers the DP ranks' tokens into one buffer of "
                "the group's tokens (python/sglang/srt/layers/dp_attention.py; 0.4.x fills it by an all-reduce) and "
                "all-reduces the experts' outputs over the group: at least those bytes, up to twice."
            )
        else:
            lines.append(
                "# Note: moesim priced the expert group's dispatch and combine as all-to-alls of each token's routed "
                "copies (DeepEP-class kernels). With --moe-a2a-backend none (SGLang's default, server_args.py) the DP "
                "ranks' tokens are gathered for the MoE layers and the outputs reduced over the group, which moves "
                "more bytes when top_k is below the group's size (runtime.ep_dispatch: allgather prices the least of "
                "it); --moe-a2a-backend deepep, with DeepEP installed, runs what moesim priced."
            )
    else:
        argv += ["--tp-size", str(d.tp)]
        if d.dp > 1:
            argv += ["--dp-size", str(d.dp)]
            lines.append(
                f"# --dp-size without --enable-dp-attention: {d.dp} independent replicas behind SGLang's DP controller."
            )
            if d.router == "session":
                _note(
                    lines,
                    "# moesim sent every turn of a conversation to one replica (serving.replicas.router = session); "
                    "SGLang's DP controller sends round robin unless a request names its data_parallel_rank: pin each "
                    "conversation to a rank that way, or run one server per replica behind sgl-router "
                    "(--policy cache_aware routes by prefix match).",
                )
    if d.pp > 1:
        argv += ["--pp-size", str(d.pp)]
    if d.moe and d.ep > 1:
        argv += ["--ep-size", str(d.ep)]
        lines.append(f"# MoE: expert parallel {d.ep}, tensor parallel tp-size / ep-size = {d.etp} inside each expert.")
    if d.redundant_experts:
        argv += ["--ep-num-redundant-experts", str(d.redundant_experts), "--enable-eplb"]
        lines.append(
            f"# {d.redundant_experts} redundant expert copies placed by EPLB (without --enable-eplb or "
            "--init-expert-location SGLang places them trivially: physical expert i holds logical i mod num_experts)."
        )
    argv += _sglang_limits(d, mode, lines)
    return "\n".join(lines + _command(argv)) + "\n"


def _sglang_limits(d: Deployment, mode: str, lines: list[str], disaggregated: bool = False) -> list[str]:
    """Precision, batch limits, chunking and KV flags of one SGLang server; a disaggregated instance runs one
    phase, so whether decodes join the prefill chunks (--enable-mixed-chunk) does not arise."""
    argv = ["--dtype", _TORCH_DTYPE[d.dtype]]
    if d.nccl_allreduce:
        argv.append("--disable-custom-all-reduce")
        _note(lines, _NCCL_NOTE)
    if d.weight_dtype == "fp8" and d.dtype != "fp8":
        argv += ["--quantization", "fp8"]
    if d.kv_cache_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8_e4m3"]
    if d.prefix_caching_off:  # the radix cache is on by default
        argv.append("--disable-radix-cache")
    if d.graph_sizes is not None:
        argv += ["--cuda-graph-bs", *map(str, d.graph_sizes)]
    if d.graph_padding is False:
        argv.append("--disable-cuda-graph-padding")
    if d.max_num_seqs is not None:
        # With --enable-dp-attention the limit covers the dp ranks together (each rank takes its share).
        argv += ["--max-running-requests", str(d.max_num_seqs * (d.dp if mode == "dp_attention" else 1))]
    if d.max_num_batched_tokens is not None:
        argv += ["--max-prefill-tokens", str(d.max_num_batched_tokens)]
    if d.policy == "chunked_prefill" and not disaggregated:
        # moesim's chunked_prefill puts the decodes in the chunks' iterations; SGLang does so only with this flag
        argv.append("--enable-mixed-chunk")
        _note(lines, _SGLANG_MIXED_NOTE)
    if d.policy in _CHUNKED and (d.chunk_size_tokens or d.max_num_batched_tokens):
        _chunked(d, "SGLang", lines)
        chunk = d.chunk_size_tokens or d.max_num_batched_tokens or 0
        if mode == "dp_attention":
            # server_args._handle_data_parallelism divides --chunked-prefill-size by dp-size under DP attention.
            lines.append(
                f"# --chunked-prefill-size {chunk * d.dp} = {chunk} x dp-size {d.dp}: with --enable-dp-attention "
                "SGLang divides it by dp-size (each DP rank's chunk)."
            )
            chunk *= d.dp
        argv += ["--chunked-prefill-size", str(chunk)]
    elif d.policy == "continuous":
        argv += ["--chunked-prefill-size", "-1"]
        note = "# --chunked-prefill-size -1: no chunking (moesim's continuous policy)."
        if note not in lines:
            lines.append(note)
    chunk = int(argv[argv.index("--chunked-prefill-size") + 1]) if "--chunked-prefill-size" in argv else -1
    return argv + _sglang_kv(d, lines, chunk)


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
    if mode == "dp_attention":
        _router_note(d, lines, "TensorRT-LLM")
    if d.attention_dp_balance is not None and mode == "dp_attention":
        timeout, wait = d.attention_dp_balance
        options += [
            "attention_dp_config:",
            "  enable_balance: true",
            f"  timeout_iters: {timeout}",
            f"  batching_wait_iters: {wait}",
        ]
    options.append(f"enable_chunked_prefill: {'true' if _chunked(d, 'TensorRT-LLM', lines) else 'false'}")
    if d.policy == "prefill_first_chunked":
        _note(lines, _MIXED_NOTE.format(engine="TensorRT-LLM"))
    if d.nccl_allreduce:
        options.append("allreduce_strategy: NCCL")
        _note(lines, _NCCL_NOTE)
    kv_options = ["  dtype: fp8"] if d.kv_cache_dtype == "fp8" else []
    default = "kv_cache_config.free_gpu_memory_fraction's default (0.9 of the memory the weights leave)"
    share = _kv_share(d, lines, "TensorRT-LLM", "free_memory_fraction", default)
    if share is not None:
        kv_options.append(f"  free_gpu_memory_fraction: {share:g}")
    if d.prefix_caching_off:  # KV block reuse is on by default
        kv_options.append("  enable_block_reuse: false")
    if kv_options:
        options += ["kv_cache_config:", *kv_options]
    graph_options = [f"  batch_sizes: [{', '.join(map(str, d.graph_sizes))}]"] if d.graph_sizes is not None else []
    if d.graph_padding is not None:
        graph_options.append(f"  enable_padding: {'true' if d.graph_padding else 'false'}")
    if graph_options:
        options += ["cuda_graph_config:", *graph_options]
    if d.admission is not None:
        policy = "GUARANTEED_NO_EVICT" if d.admission == "reserve" else "MAX_UTILIZATION"
        options += ["scheduler_config:", f"  capacity_scheduler_policy: {policy}"]
        if d.admission == "estimate":
            _reserve_note(
                d,
                lines,
                "TensorRT-LLM's MAX_UTILIZATION admits while blocks are free and pauses requests when they run out.",
            )
        if d.admission != "reserve":  # GUARANTEED_NO_EVICT never takes KV back
            _preempt_note(d, lines, "TensorRT-LLM's MAX_UTILIZATION", "newest")
    if d.block_size_tokens is not None:
        _note(
            lines,
            f"# KV blocks: the scenario simulates {d.block_size_tokens}-token blocks; the LLM API options read have no "
            "block-size key for trtllm-serve, so TensorRT-LLM's own applies.",
        )
    if d.sliding_window_kv == "freed":
        _note(
            lines,
            "# Sliding-window KV: the scenario frees the blocks a sliding layer's window left; TensorRT-LLM 1.0 sizes "
            "every layer's cache for the whole sequence (kv_cache_config.max_attention_window sets each layer's "
            "window, the memory still the largest's), so it holds fewer sequences than moesim priced.",
        )
    tp_size = d.dp * d.tp if mode == "dp_attention" else d.tp
    argv = ["trtllm-serve", '"$MODEL"', "--backend", "pytorch", "--tp_size", str(tp_size), "--pp_size", str(d.pp)]
    if d.moe:
        argv += ["--ep_size", str(d.ep)]
        lines.append(f"# MoE: expert parallel {d.ep}, expert tensor parallel tp_size / ep_size = {d.etp}.")
        if d.redundant_experts:
            lines.append(
                f"# {d.redundant_experts} redundant expert copies: TensorRT-LLM's MoE load balancer takes them as "
                f"moe_config.load_balancer.num_slots = {d.num_experts + d.redundant_experts} (MoeLoadBalancerConfig); "
                "not written: which MoE backends accept it was not checked here."
            )
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
    a disaggregated scenario's are the prefill/decode pairs (disaggregated_launch_files)."""
    if scenario.serving is not None and scenario.serving.disaggregation is not None:
        return disaggregated_launch_files(scenario)
    return {"vllm.sh": vllm_script(scenario), "sglang.sh": sglang_script(scenario), **trtllm_files(scenario)}


# ---------------------------------------------------------------------------------------------
# Disaggregated deployments
#
# Reports stage, launch configs of a disaggregated deployment (serving.disaggregation: x prefill instances, y
# decode instances): each engine's prefill/decode pair plus the router or proxy in front of them.
#
# Pure text generation, like report.launch (whose per-instance flag mapping it reuses). Versions and sources:
#
# - vLLM 0.11: every instance is a `vllm serve` with `--kv-transfer-config
#   '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'` and its own VLLM_NIXL_SIDE_CHANNEL_PORT; requests
#   enter through the proxy of vLLM's NIXL integration (tests/v1/kv_connector/nixl_integration/
#   toy_proxy_server.py in the vLLM repository, `--prefiller-hosts/--prefiller-ports/--decoder-hosts/
#   --decoder-ports`; not part of the pip package, hence $VLLM_PROXY). The NixlConnector needs the decode TP to be
#   a multiple of the prefill TP.
# - SGLang 0.5: `launch_server --disaggregation-mode prefill|decode --disaggregation-transfer-backend nixl`
#   (prefill instances each with `--disaggregation-bootstrap-port`, and `--disaggregation-decode-tp` when the
#   decode TP differs; decode instances `--disaggregation-prefill-pp` when the prefill PP is above 1), and
#   `python -m sglang_router.launch_router --pd-disaggregation --prefill URL BOOTSTRAP_PORT --decode URL`.
# - TensorRT-LLM 1.0: one `trtllm-serve` per instance with an extra-options YAML holding
#   `cache_transceiver_config: {backend: DEFAULT}` (context servers also `disable_overlap_scheduler: true`), then
#   `trtllm-serve disaggregated -c` a config listing `context_servers` and `generation_servers` (num_instances,
#   urls).
#
# The file and commit each flag and key was checked in: tests/fixtures/launch/engine_flags.yaml.
#
# Each instance gets its GPUs with CUDA_VISIBLE_DEVICES in the placement serving.disagg.place uses (prefill
# instances first, decode after, packed or from the next node). A deployment whose instances span more than one
# node, or an instance layout the engine's MoE parallelism cannot hold (report.launch.Deployment.mode), is written
# as NOT EXPRESSIBLE with the reason: this writer addresses one host.

NIXL_CONFIG = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"}, separators=(",", ":"))
TRTLLM_DISAGG_CONFIG = "trtllm_disagg_config.yaml"
TRTLLM_CTX_OPTIONS = "trtllm_ctx_extra_llm_api_options.yaml"
TRTLLM_GEN_OPTIONS = "trtllm_gen_extra_llm_api_options.yaml"
#: First HTTP port of the prefill instances, of the decode instances; the router / proxy listens on 8000.
PREFILL_PORT, DECODE_PORT, FRONT_PORT = 8100, 8200, 8000
#: Where each engine's disaggregated flags were checked (module docstring; engine_flags.yaml).
DISAGG_SOURCES = {
    "vllm": "vLLM's NixlConnector (vllm/config/kv_transfer.py, tests/v1/kv_connector/nixl_integration/toy_proxy_server.py)",
    "sglang": "SGLang PD disaggregation (--disaggregation-mode in server_args.py; sgl-router router_args.py)",
    "trtllm": "trtllm-serve disaggregated -c (tensorrt_llm/llmapi/disagg_utils.py, CacheTransceiverConfig in llm_args.py)",
}
BOOTSTRAP_PORT, NIXL_SIDE_PORT = 8998, 5600


def _pool_scenario(scenario: Scenario, name: str, pool: PoolSpec) -> Scenario:
    """One instance of the pool as a scenario (its layout, dp 1) with the pool's scheduler fields applied."""
    assert scenario.serving is not None
    one = pool_layout(scenario, pool.parallel, f"serving.disaggregation.{name}.parallel")
    fields = pool.scheduler.model_dump(exclude_none=True)
    scheduler = scenario.serving.scheduler.model_copy(update=fields)
    serving = scenario.serving.model_copy(update={"scheduler": scheduler, "disaggregation": None})
    return one.model_copy(update={"serving": serving})


class _Pools:
    """Both pools of a disaggregated scenario: per-instance deployments and each instance's first GPU."""

    def __init__(self, scenario: Scenario):
        assert scenario.serving is not None and scenario.serving.disaggregation is not None
        d = scenario.serving.disaggregation
        self.spec = d
        self.prefill = deployment_of(_pool_scenario(scenario, "prefill", d.prefill))
        self.decode = deployment_of(_pool_scenario(scenario, "decode", d.decode))
        gp, gd = d.prefill.parallel.gpus, d.decode.parallel.gpus
        gpn = scenario.cluster.gpus_per_node or scenario.num_gpus
        self.gpus_per_node = gpn
        start = d.prefill.num_gpus
        if d.placement == "separate_nodes":
            start = -(-start // gpn) * gpn
        self.prefill_firsts = [i * gp for i in range(d.prefill.instances)]
        self.decode_firsts = [start + j * gd for j in range(d.decode.instances)]
        self.end = start + d.decode.num_gpus

    def why_not(self, engine: str) -> str | None:
        if self.end > self.gpus_per_node:
            return (
                f"the pools span GPUs 0..{self.end - 1} on nodes of {self.gpus_per_node} GPUs; this writer "
                "launches one host (give each node its instances and host names by hand)"
            )
        for name, dep in (("prefill", self.prefill), ("decode", self.decode)):
            if dep.mode != "replicas":
                return (
                    f"the {name} instance's experts over ep x etp = {dep.expert_group} GPUs; {engine} splits them "
                    f"over the instance's tp = {dep.tp} GPUs"
                )
            if engine == "vLLM" and dep.moe and dep.ep > 1 and dep.etp > 1:
                return (
                    f"the {name} instance's ep = {dep.ep} with etp = {dep.etp}: vLLM's MoE layers are all EP or all TP"
                )
            if engine == "vLLM":
                why = _vllm_limits_why_not(dep)
                if why:
                    return f"the {name} instance's {why}"
        if engine == "vLLM" and self.decode.tp % self.prefill.tp:
            return (
                f"decode tp = {self.decode.tp} is not a multiple of prefill tp = {self.prefill.tp}: vLLM's "
                "NixlConnector reads a prefill worker's KV from decode tp / prefill tp workers and refuses any other "
                "ratio (nixl_connector.py, 'Decode TP cannot be smaller than prefill TP')"
            )
        return None

    def label(self) -> str:
        d = self.spec
        return (
            f"{d.prefill.instances} prefill x {d.prefill.parallel.gpus} GPUs + {d.decode.instances} decode x "
            f"{d.decode.parallel.gpus} GPUs, placement {d.placement}"
        )


def _disagg_header(engine: str, scenario: Scenario, pools: _Pools) -> list[str]:
    dep = pools.prefill
    return [
        "#!/usr/bin/env bash",
        f"# Disaggregated launch settings written by moesim for scenario {scenario.name!r}.",
        f"# Mapping written against {ENGINE_VERSIONS[engine]}.",
        *_pricing_note(engine, scenario),
        f"# Disaggregated serving as in {DISAGG_SOURCES[engine]}.",
        f"# moesim deployment: {pools.label()}; weights {dep.weight_dtype}, KV cache {dep.kv_cache_dtype}, "
        f"activations {dep.dtype}.",
        "# MODEL: the checkpoint (Hugging Face id or path) of this model; moesim knows it as "
        f"{dep.model!r}, which may not be a checkpoint name.",
        f"MODEL=${{MODEL:-{shlex.quote(dep.model)}}}",
        "set -euo pipefail",
    ]


def _devices(first: int, n: int) -> str:
    return ",".join(str(g) for g in range(first, first + n))


def _background(env: str, argv: list[str]) -> list[str]:
    body = _command(argv)
    return [f"{env} \\", *["  " + line for line in body[:-1]], "  " + body[-1] + " &"]


def _layout_note(lines: list[str], name: str, dep: Deployment) -> None:
    experts = f", experts EP {dep.ep} x ETP {dep.etp}" if dep.moe else ""
    lines.append(f"# {name} instance: TP {dep.tp} x PP {dep.pp}{experts}.")


def vllm_disagg_script(scenario: Scenario, pools: _Pools) -> str:
    lines = _disagg_header("vllm", scenario, pools)
    why = pools.why_not("vLLM")
    if why:
        return _refuse(lines, "vLLM", why)
    lines.append(
        "# VLLM_PROXY: toy_proxy_server.py of vLLM's NIXL integration (tests/v1/kv_connector/nixl_integration)."
    )
    lines.append("VLLM_PROXY=${VLLM_PROXY:-toy_proxy_server.py}")
    hosts: dict[str, list[str]] = {"prefill": [], "decode": []}
    for name, dep, firsts, port0 in (
        ("prefill", pools.prefill, pools.prefill_firsts, PREFILL_PORT),
        ("decode", pools.decode, pools.decode_firsts, DECODE_PORT),
    ):
        _layout_note(lines, name, dep)
        for k, first in enumerate(firsts):
            argv = ["vllm serve", '"$MODEL"', "--port", str(port0 + k)]
            argv += ["--tensor-parallel-size", str(dep.tp), "--pipeline-parallel-size", str(dep.pp)]
            if dep.moe and dep.ep == dep.tp and dep.tp > 1:
                argv.append("--enable-expert-parallel")
            argv += _vllm_limits(dep, lines)
            argv += ["--kv-transfer-config", shlex.quote(NIXL_CONFIG)]
            env = (
                f"CUDA_VISIBLE_DEVICES={_devices(first, dep.tp * dep.pp)} "
                f"VLLM_NIXL_SIDE_CHANNEL_PORT={NIXL_SIDE_PORT + first}"
            )
            lines += _background(env, argv)
            hosts[name].append(str(port0 + k))
    proxy = ["python", '"$VLLM_PROXY"', "--port", str(FRONT_PORT)]
    proxy += ["--prefiller-hosts", *(["localhost"] * len(hosts["prefill"])), "--prefiller-ports", *hosts["prefill"]]
    proxy += ["--decoder-hosts", *(["localhost"] * len(hosts["decode"])), "--decoder-ports", *hosts["decode"]]
    lines.append(f"# The proxy (port {FRONT_PORT}) sends each request to a prefill instance, then to a decode one.")
    lines.append(" ".join(proxy) + " &")
    lines.append("wait")
    return "\n".join(lines) + "\n"


def sglang_disagg_script(scenario: Scenario, pools: _Pools) -> str:
    lines = _disagg_header("sglang", scenario, pools)
    why = pools.why_not("SGLang")
    if why:
        return _refuse(lines, "SGLang", why)
    router = ["python -m sglang_router.launch_router", "--pd-disaggregation"]
    for name, dep, firsts, port0 in (
        ("prefill", pools.prefill, pools.prefill_firsts, PREFILL_PORT),
        ("decode", pools.decode, pools.decode_firsts, DECODE_PORT),
    ):
        _layout_note(lines, name, dep)
        for k, first in enumerate(firsts):
            argv = ["python -m sglang.launch_server", "--model-path", '"$MODEL"', "--port", str(port0 + k)]
            argv += ["--disaggregation-mode", name, "--disaggregation-transfer-backend", "nixl"]
            if name == "prefill":
                argv += ["--disaggregation-bootstrap-port", str(BOOTSTRAP_PORT + k)]
            argv += ["--tp-size", str(dep.tp)]
            if dep.pp > 1:
                argv += ["--pp-size", str(dep.pp)]
            if dep.moe and dep.ep > 1:
                argv += ["--ep-size", str(dep.ep)]
            # The prefill server assumes the decode server's TP equals its own, the decode server a prefill PP of 1,
            # unless told (server_args: --disaggregation-decode-tp, --disaggregation-prefill-pp).
            if name == "prefill" and pools.decode.tp != dep.tp:
                argv += ["--disaggregation-decode-tp", str(pools.decode.tp)]
            if name == "decode" and pools.prefill.pp > 1:
                argv += ["--disaggregation-prefill-pp", str(pools.prefill.pp)]
            argv += _sglang_limits(dep, "replicas", lines, disaggregated=True)
            lines += _background(f"CUDA_VISIBLE_DEVICES={_devices(first, dep.tp * dep.pp)}", argv)
            url = f"http://127.0.0.1:{port0 + k}"
            router += ["--prefill", f"{url} {BOOTSTRAP_PORT + k}"] if name == "prefill" else ["--decode", url]
    router += ["--host", "0.0.0.0", "--port", str(FRONT_PORT)]
    lines.append(f"# The router (port {FRONT_PORT}) pairs a prefill and a decode instance per request.")
    lines += _command(router)
    return "\n".join(lines) + "\n"


def trtllm_disagg_files(scenario: Scenario, pools: _Pools) -> dict[str, str]:
    lines = _disagg_header("trtllm", scenario, pools)
    why = pools.why_not("TensorRT-LLM")
    if why:
        return {"trtllm.sh": _refuse(lines, "TensorRT-LLM", why)}
    files: dict[str, str] = {}
    config = [
        "# trtllm-serve disaggregated -c: the front server and the context / generation servers, written by moesim.",
        "hostname: localhost",
        f"port: {FRONT_PORT}",
        "backend: pytorch",
    ]
    for name, dep, firsts, port0, section, options in (
        ("prefill", pools.prefill, pools.prefill_firsts, PREFILL_PORT, "context_servers", TRTLLM_CTX_OPTIONS),
        ("decode", pools.decode, pools.decode_firsts, DECODE_PORT, "generation_servers", TRTLLM_GEN_OPTIONS),
    ):
        _layout_note(lines, name, dep)
        extra = [f"# TensorRT-LLM LLM API options of the {name} instances, written by moesim."]
        if name == "prefill":
            extra.append("disable_overlap_scheduler: true")
        extra.append(f"enable_chunked_prefill: {'true' if _chunked(dep, 'TensorRT-LLM', lines) else 'false'}")
        if dep.policy == "prefill_first_chunked":
            _note(lines, _MIXED_NOTE.format(engine="TensorRT-LLM"))
        if dep.nccl_allreduce:
            extra.append("allreduce_strategy: NCCL")
            _note(lines, _NCCL_NOTE)
        extra.append("kv_cache_config:")
        extra.append(f"  dtype: {'fp8' if dep.kv_cache_dtype == 'fp8' else 'auto'}")
        extra += ["cache_transceiver_config:", "  backend: DEFAULT"]
        files[options] = "\n".join(extra) + "\n"
        urls = []
        for k, first in enumerate(firsts):
            argv = ["trtllm-serve", '"$MODEL"', "--host", "localhost", "--port", str(port0 + k), "--backend", "pytorch"]
            argv += ["--tp_size", str(dep.tp), "--pp_size", str(dep.pp)]
            if dep.moe:
                argv += ["--ep_size", str(dep.ep)]
            if dep.max_num_seqs is not None:
                argv += ["--max_batch_size", str(dep.max_num_seqs)]
            if dep.max_num_batched_tokens is not None:
                argv += ["--max_num_tokens", str(dep.max_num_batched_tokens)]
            argv += ["--extra_llm_api_options", f'"$(dirname "$0")/{options}"']
            lines += _background(f"CUDA_VISIBLE_DEVICES={_devices(first, dep.tp * dep.pp)}", argv)
            urls.append(f"localhost:{port0 + k}")
        config += [f"{section}:", f"  num_instances: {len(firsts)}", "  urls:", *(f'    - "{u}"' for u in urls)]
    if pools.prefill.weight_dtype == "fp8" and pools.prefill.dtype != "fp8":
        lines.append("# Weights fp8: TensorRT-LLM loads a pre-quantized FP8 checkpoint; point MODEL at one.")
    lines.append(f"# The disaggregated front server (port {FRONT_PORT}) routes context then generation requests.")
    lines += _command(["trtllm-serve disaggregated", "-c", f'"$(dirname "$0")/{TRTLLM_DISAGG_CONFIG}"'])
    files[TRTLLM_DISAGG_CONFIG] = "\n".join(config) + "\n"
    return {"trtllm.sh": "\n".join(lines) + "\n", **files}


def disaggregated_launch_files(scenario: Scenario) -> dict[str, str]:
    """vllm.sh, sglang.sh, trtllm.sh (+ the TensorRT-LLM YAML files when expressible) of a disaggregated scenario."""
    pools = _Pools(scenario)
    return {
        "vllm.sh": vllm_disagg_script(scenario, pools),
        "sglang.sh": sglang_disagg_script(scenario, pools),
        **trtllm_disagg_files(scenario, pools),
    }
