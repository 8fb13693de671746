"""Reports stage, launch configs of a disaggregated deployment (serving.disaggregation: x prefill instances, y
decode instances): each engine's prefill/decode pair plus the router or proxy in front of them.

Pure text generation, like report.launch (whose per-instance flag mapping it reuses). Versions and sources:

- vLLM 0.11: every instance is a `vllm serve` with `--kv-transfer-config
  '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'` and its own VLLM_NIXL_SIDE_CHANNEL_PORT; requests
  enter through the proxy of vLLM's NIXL integration (tests/v1/kv_connector/nixl_integration/
  toy_proxy_server.py in the vLLM repository, `--prefiller-hosts/--prefiller-ports/--decoder-hosts/
  --decoder-ports`; not part of the pip package, hence $VLLM_PROXY). docs.vllm.ai features/nixl_connector_usage.
- SGLang 0.5: `launch_server --disaggregation-mode prefill|decode --disaggregation-transfer-backend nixl`
  (prefill instances each with `--disaggregation-bootstrap-port`), and `python -m sglang_router.launch_router
  --pd-disaggregation --prefill URL BOOTSTRAP_PORT --decode URL`. docs.sglang.io advanced_features/
  pd_disaggregation.
- TensorRT-LLM 1.0: one `trtllm-serve` per instance with an extra-options YAML holding
  `cache_transceiver_config` (context servers also `disable_overlap_scheduler: true`), then `trtllm-serve
  disaggregated -c` a config listing `context_servers` and `generation_servers` (num_instances, urls).
  nvidia.github.io/TensorRT-LLM features/disagg-serving.

Each instance gets its GPUs with CUDA_VISIBLE_DEVICES in the placement serving.disagg.place uses (prefill
instances first, decode after, packed or from the next node). A deployment whose instances span more than one
node, or an instance layout the engine's MoE parallelism cannot hold (report.launch.Deployment.mode), is written
as NOT EXPRESSIBLE with the reason: this writer addresses one host.
"""

from __future__ import annotations

import json
import shlex

from simulator.config import Scenario
from simulator.config.scenario import pool_layout
from simulator.config.serving import PoolSpec
from simulator.report.launch import (
    ENGINE_VERSIONS,
    Deployment,
    _command,
    _refuse,
    _sglang_limits,
    _vllm_limits,
    deployment_of,
)

NIXL_CONFIG = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"}, separators=(",", ":"))
TRTLLM_DISAGG_CONFIG = "trtllm_disagg_config.yaml"
TRTLLM_CTX_OPTIONS = "trtllm_ctx_extra_llm_api_options.yaml"
TRTLLM_GEN_OPTIONS = "trtllm_gen_extra_llm_api_options.yaml"
#: First HTTP port of the prefill instances, of the decode instances; the router / proxy listens on 8000.
PREFILL_PORT, DECODE_PORT, FRONT_PORT = 8100, 8200, 8000
#: Where each engine's disaggregated flags were checked (module docstring).
DISAGG_SOURCES = {
    "vllm": "docs.vllm.ai features/nixl_connector_usage (NixlConnector, toy_proxy_server.py)",
    "sglang": "docs.sglang.io advanced_features/pd_disaggregation (--disaggregation-mode, sglang_router)",
    "trtllm": "nvidia.github.io/TensorRT-LLM features/disagg-serving (trtllm-serve disaggregated -c)",
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
        return None

    def label(self) -> str:
        d = self.spec
        return (
            f"{d.prefill.instances} prefill x {d.prefill.parallel.gpus} GPUs + {d.decode.instances} decode x "
            f"{d.decode.parallel.gpus} GPUs, placement {d.placement}"
        )


def _header(engine: str, scenario: Scenario, pools: _Pools) -> list[str]:
    dep = pools.prefill
    return [
        "#!/usr/bin/env bash",
        f"# Disaggregated launch settings written by moesim for scenario {scenario.name!r}.",
        f"# Mapping written against {ENGINE_VERSIONS[engine]}.",
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
    lines = _header("vllm", scenario, pools)
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
            argv += _vllm_limits(dep)
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
    lines = _header("sglang", scenario, pools)
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
            argv += _sglang_limits(dep, "replicas", lines)
            lines += _background(f"CUDA_VISIBLE_DEVICES={_devices(first, dep.tp * dep.pp)}", argv)
            url = f"http://127.0.0.1:{port0 + k}"
            router += ["--prefill", f"{url} {BOOTSTRAP_PORT + k}"] if name == "prefill" else ["--decode", url]
    router += ["--host", "0.0.0.0", "--port", str(FRONT_PORT)]
    lines.append(f"# The router (port {FRONT_PORT}) pairs a prefill and a decode instance per request.")
    lines += _command(router)
    return "\n".join(lines) + "\n"


def trtllm_disagg_files(scenario: Scenario, pools: _Pools) -> dict[str, str]:
    lines = _header("trtllm", scenario, pools)
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
        extra.append(f"enable_chunked_prefill: {'true' if dep.policy == 'chunked_prefill' else 'false'}")
        extra.append("kv_cache_config:")
        extra.append(f"  dtype: {'fp8' if dep.kv_cache_dtype == 'fp8' else 'auto'}")
        extra += ["cache_transceiver_config:", "  backend: default"]
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
