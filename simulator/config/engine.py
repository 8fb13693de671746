"""Config stage, engine: what a serving engine does beyond the kernels (CUDA-graph capture sizes, host time per
scheduler iteration, the MoE and attention kernels it runs), as typed profiles read from `engine_profiles/*.yaml`.

A serving scenario names one with `serving.engine: vllm` (optional; without it serving is priced as before).
Every figure of a profile carries its source (the engine's code or documentation, with its version); nothing in
a profile is fitted to a measured case.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from simulator.config.checked import CheckedSpec, ResultClass, checks_for
from simulator.config.errors import ScenarioError, StrictModel, one_line_error
from simulator.files import read_yaml

#: Where the bundled engine profiles live (repository root / engine_profiles).
ENGINE_PROFILES_DIR = Path(
    os.environ.get("MOESIM_ENGINE_PROFILES_DIR", Path(__file__).resolve().parent.parent.parent / "engine_profiles")
)

#: A replica's batching policy (serving.scheduler.policy; the scheduler stage describes each): here so that an
#: engine profile's defaults and the serving section name the same ones.
Policy = Literal["static", "continuous", "chunked_prefill", "prefill_first_chunked"]
#: How a replica admits requests against its KV cache (serving.scheduler.admission), likewise shared.
Admission = Literal["on_demand", "reserve", "estimate"]
#: Which running requests give their KV back when blocks run out (serving.scheduler.preempt), likewise shared.
Preempt = Literal["newest", "fewest_decoded"]

#: Largest batch size a capture list may name (guards a typo such as 10**9 from building a huge list).
MAX_CAPTURE_SIZE = 65536


class SizeRange(StrictModel):
    """Sizes from `from_` to `to` (both included when on the step), every `step`: `{from: 8, to: 512, step: 8}`."""

    from_: int = Field(alias="from", ge=1, le=MAX_CAPTURE_SIZE)
    to: int = Field(ge=1, le=MAX_CAPTURE_SIZE)
    step: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> SizeRange:
        if self.from_ > self.to:
            raise ValueError(f"from = {self.from_} > to = {self.to}; swap them")
        return self

    def sizes(self) -> list[int]:
        return list(range(self.from_, self.to + 1, self.step))


#: How the captured sizes are cut for a scheduler's max_num_seqs:
#:   first_at_or_above_max_num_seqs  keep sizes up to the smallest one >= max_num_seqs (vLLM V0)
#:   max_num_seqs_included           keep sizes <= max_num_seqs, adding max_num_seqs itself when a listed size
#:                                   exceeds it (SGLang's req_to_token_pool.size rule)
#:   max_num_seqs                    keep sizes <= max_num_seqs
#:   twice_max_num_seqs              keep sizes <= min(2 x max_num_seqs, max_num_batched_tokens) (vLLM V1's
#:                                   max_cudagraph_capture_size; the listed sizes carry its cap of 512)
CaptureLimit = Literal["first_at_or_above_max_num_seqs", "max_num_seqs_included", "max_num_seqs", "twice_max_num_seqs"]


class GraphMaxRule(StrictModel):
    """The largest CUDA-graph batch an engine sets by GPU and TP size (SGLang's cuda_graph_max_bs): on a device
    below `below_device_memory_bytes` (None: any) with tp >= min_tp. A list of them: the first that applies."""

    below_device_memory_bytes: float | None = Field(default=None, gt=0)
    min_tp: int = Field(default=1, ge=1)
    max_size: int = Field(ge=1)

    def applies(self, device_memory_bytes: float, tp: int) -> bool:
        below = self.below_device_memory_bytes
        return (below is None or device_memory_bytes < below) and tp >= self.min_tp


class CudaGraphSpec(StrictModel):
    """Decode batches replayed from CUDA graphs captured at fixed batch sizes: a decode batch of n sequences runs
    the graph of the smallest captured size >= n, padded with dummy sequences; a larger batch, or one whose
    longest context exceeds max_context_tokens, runs eagerly.

    mixed: how a batch with a prefill chunk runs. `eager` (vLLM V0, SGLang, TensorRT-LLM's default): every
    kernel launched by the host. `piecewise` (vLLM V1's FULL_AND_PIECEWISE): a batch of at most the largest
    captured size in tokens is padded up to the next captured size and replays the graphs captured between
    the attention layers; attention (the engine's attention op, which the graphs are split at), the LM head
    and sampling run eagerly. A larger batch runs eagerly. outside: the LM head and / or sampling, launched
    eagerly after a replayed decode graph (the model runner calls them outside the captured forward)."""

    sizes: tuple[int | SizeRange, ...] = Field(min_length=1)
    limit: CaptureLimit = "max_num_seqs"
    max_context_tokens: int | None = Field(default=None, ge=1)
    mixed: Literal["eager", "piecewise"] = "eager"
    # The pass's final nodes the engine calls after the replayed decode graph, each kernel launched by the host:
    # vLLM's compute_logits and sampler (both), SGLang's sampling (its graph holds the logits processor).
    outside: tuple[Literal["lm_head", "sample"], ...] = ()
    # False: a decode batch replays a graph only when it has exactly a captured size (TensorRT-LLM's PyTorch
    # backend, cuda_graph_config.enable_padding False by default); else it runs eagerly.
    padding: bool = True
    # The largest batch captured, by GPU and TP size (SGLang 0.5's cuda_graph_max_bs): sizes above it are dropped
    # before `limit` applies; empty: none but the listed sizes.
    max_size: tuple[GraphMaxRule, ...] = ()
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _positive(self) -> CudaGraphSpec:
        for item in self.sizes:
            if isinstance(item, int) and not 1 <= item <= MAX_CAPTURE_SIZE:
                raise ValueError(f"sizes: {item} must be in [1, {MAX_CAPTURE_SIZE}]")
        return self

    def graph_max(self, device_memory_bytes: float | None = None, tp: int = 1) -> int:
        """The largest batch the engine captures on this device and TP size before the scheduler's limit: the
        first max_size rule that applies, else the largest listed size."""
        listed = max(item if isinstance(item, int) else max(item.sizes()) for item in self.sizes)
        if device_memory_bytes is None:
            return listed
        rule = next((r for r in self.max_size if r.applies(device_memory_bytes, tp)), None)
        return listed if rule is None else min(rule.max_size, listed)

    def capture_sizes(
        self,
        max_num_seqs: int,
        max_num_batched_tokens: int | None = None,
        device_memory_bytes: float | None = None,
        tp: int = 1,
    ) -> tuple[int, ...]:
        """The sorted batch sizes captured for a scheduler of this max_num_seqs (`limit` above; the token budget
        matters to twice_max_num_seqs alone), on a device of this memory and TP size (max_size rules)."""
        sizes: set[int] = set()
        for item in self.sizes:
            sizes.update([item] if isinstance(item, int) else item.sizes())
        top = self.graph_max(device_memory_bytes, tp)
        ordered = sorted(s for s in sizes if s <= top)
        if self.limit == "twice_max_num_seqs":
            top = 2 * max_num_seqs
            if max_num_batched_tokens is not None:
                top = min(top, max_num_batched_tokens)
            return tuple(s for s in ordered if s <= top)
        if self.limit == "first_at_or_above_max_num_seqs":
            above = [s for s in ordered if s >= max_num_seqs]
            top = above[0] if above else ordered[-1]
            return tuple(s for s in ordered if s <= top)
        kept = [s for s in ordered if s <= max_num_seqs]
        if self.limit == "max_num_seqs_included" and ordered[-1] > max_num_seqs and max_num_seqs not in kept:
            kept.append(max_num_seqs)
        return tuple(kept)


class HostTimeSpec(StrictModel):
    """Host (CPU) time of one scheduler iteration: scheduling, input preparation, sampling bookkeeping.

    host_s = per_iteration_s + per_sequence_s x sequences in the iteration. overlapped: the engine prepares the
    next iteration while the GPU runs this one (SGLang's overlap scheduler), so an iteration takes
    max(gpu_s, host_s); otherwise the host work sits between GPU passes and it takes gpu_s + host_s.
    """

    per_iteration_s: float = Field(default=0.0, ge=0.0, le=1.0)
    per_sequence_s: float = Field(default=0.0, ge=0.0, le=1.0)
    overlapped: bool = False
    source: str = Field(min_length=1)

    def host_s(self, sequences: int) -> float:
        return self.per_iteration_s + self.per_sequence_s * sequences

    @property
    def rate_text(self) -> str:
        """'29.37 us a sequence', '3 ms an iteration + 10 us a sequence'; '0' without host time."""
        return host_rate_text(self.per_iteration_s, self.per_sequence_s)

    @property
    def text(self) -> str:
        """'29.37 us a sequence, overlapped'; '0, serial'."""
        return f"{self.rate_text}, {'overlapped' if self.overlapped else 'serial'}"


def host_rate_text(per_iteration_s: float, per_sequence_s: float) -> str:
    """A host time per iteration as reports write it (HostTimeSpec.rate_text)."""
    parts = (
        f"{1e3 * per_iteration_s:.3g} ms an iteration" if per_iteration_s else "",
        f"{1e6 * per_sequence_s:.4g} us a sequence" if per_sequence_s else "",
    )
    return " + ".join(p for p in parts if p) or "0"


class KernelsSpec(StrictModel):
    """The engine's kernels, mapped onto moesim's options: `moe_impl` (model.moe_impl), `attention` (moesim
    prices every attention as a fused flash-attention kernel), `framework` (runtime.framework) and
    `moe_dispatch` (runtime.moe_dispatch: how a TP group reaches the experts that live in it)."""

    moe_impl: Literal["grouped", "per_expert", "capacity"]
    attention: Literal["flash_attention"] = "flash_attention"
    framework: Literal["fused", "pytorch"] = "fused"
    moe_dispatch: Literal["all_to_all", "allreduce"] = "all_to_all"  # runtime.moe_dispatch
    ep_dispatch: Literal["all_to_all", "allgather"] | None = None  # runtime.ep_dispatch; None: the scenario's
    source: str = Field(min_length=1)


class AllReduceSizeRule(StrictModel):
    """The largest message an engine's own all-reduce kernels take on some GPUs and group sizes: on a device whose
    profile name contains one of `names` (case-blind), in a group of `gpus` ranks."""

    names: tuple[str, ...] = Field(min_length=1)
    gpus: int = Field(ge=2)
    max_bytes: float = Field(ge=1.0, le=1e12)


class AllReduceSpec(StrictModel):
    """The engine's tensor-parallel all-reduce (runtime.allreduce): `custom` runs its own one-shot / two-shot
    kernels over peer memory inside one NVLink node for messages up to `max_bytes` (its buffer), NCCL beyond.
    `by_device`: other limits on some GPUs and group sizes (the first rule that applies)."""

    algorithm: Literal["nccl", "custom"]
    max_bytes: float | None = Field(default=None, ge=1.0, le=1e12)
    by_device: tuple[AllReduceSizeRule, ...] = ()
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _sized(self) -> AllReduceSpec:
        if self.algorithm == "custom" and self.max_bytes is None:
            raise ValueError("max_bytes: a custom all-reduce needs its buffer size (the largest message it takes)")
        return self

    def max_bytes_for(self, device_name: str, gpus: int) -> float | None:
        """The largest message the engine's own kernels take on this device in a group of this many ranks."""
        name = device_name.lower()
        for rule in self.by_device:
            if rule.gpus == gpus and any(n.lower() in name for n in rule.names):
                return rule.max_bytes
        return self.max_bytes


class DeviceDefaultsSpec(StrictModel):
    """Batch limits an engine picks by GPU (vLLM V1's EngineArgs._set_default_args, SGLang's chunked_prefill_size):
    on a device whose memory (the profile's device_memory_bytes, what the driver reports) is at least
    `min_device_memory_bytes` and below `below_device_memory_bytes`, and whose profile name contains none of
    `exclude_names`, these replace the engine's general defaults."""

    min_device_memory_bytes: float = Field(default=0.0, ge=0)
    below_device_memory_bytes: float | None = Field(default=None, gt=0)
    exclude_names: tuple[str, ...] = ()
    max_num_seqs: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    source: str = Field(min_length=1)

    def applies(self, device_name: str, device_memory_bytes: float) -> bool:
        name = device_name.lower()
        below = self.below_device_memory_bytes
        return (
            device_memory_bytes >= self.min_device_memory_bytes
            and (below is None or device_memory_bytes < below)
            and not any(x.lower() in name for x in self.exclude_names)
        )


DEVICE_LIMIT_KEYS = ("max_num_seqs", "max_num_batched_tokens")


def forget_engine_limits(scheduler: dict) -> dict:
    """`scheduler` (a raw serving.scheduler mapping) without the batch limits an engine profile filled for the
    GPU it was written for (its by-device rule, else its general defaults): its `engine_defaults` record and each
    limit still at its recorded value (a limit edited since is the scenario's own). `scheduler` itself when
    there is no record."""
    recorded = scheduler.get("engine_defaults")
    if recorded is None or not (isinstance(recorded, dict) and set(recorded) <= set(DEVICE_LIMIT_KEYS)):
        return scheduler  # nothing recorded, or not a record: the field's own validation says why
    out = {k: v for k, v in scheduler.items() if k != "engine_defaults"}
    for key, value in recorded.items():
        if key in out and out[key] == value:
            del out[key]
    return out


def device_limits(
    rules: DeviceDefaultsSpec | tuple[DeviceDefaultsSpec, ...], scheduler: dict, device: tuple[str, float]
) -> dict:
    """`scheduler` (a raw serving.scheduler mapping) with the batch limits of the first of `rules` that applies
    to `device` (profile name, device memory in bytes) where it is silent, recorded in its `engine_defaults` so
    that another GPU re-derives them (forget_engine_limits); `scheduler` itself when nothing changes."""
    rule = next((r for r in (rules if isinstance(rules, tuple) else (rules,)) if r.applies(*device)), None)
    if rule is None:
        return scheduler
    add = {
        key: getattr(rule, key) for key in DEVICE_LIMIT_KEYS if getattr(rule, key) is not None and key not in scheduler
    }
    return {**scheduler, **add, "engine_defaults": add} if add else scheduler


class StaticMemorySpec(StrictModel):
    """SGLang's mem_fraction_static where the server is given none (ServerArgs._handle_gpu_memory_settings): the
    share of the device's memory (MiB) for the weights and the KV pool, the rest reserved for activations and CUDA
    graphs:

        reserved = base + per_chunk_token x max(chunk, min_chunk_tokens) + per_graph_seq x graph_max
                   + per_tp_pp_gpu x tp x pp
                   [+ dp_attention_per_graph_seq x graph_max x dp
                    + dp_attention_large_per_graph_seq x graph_max x dp when graph_max > dp_attention_large_above]
        reserved = max(reserved, floor) on a device of more than floor_above
        mem_fraction_static = round((device - reserved) / device, 3)

    in MiB (graph_max: the largest CUDA-graph batch the engine sets, cuda_graph.max_size)."""

    base_mib: float = Field(ge=0)
    per_chunk_token_mib: float = Field(ge=0)
    min_chunk_tokens: int = Field(ge=0)
    per_graph_seq_mib: float = Field(ge=0)
    per_tp_pp_gpu_mib: float = Field(ge=0)
    dp_attention_per_graph_seq_mib: float = Field(default=0.0, ge=0)
    dp_attention_large_above: int = Field(default=0, ge=0)
    dp_attention_large_per_graph_seq_mib: float = Field(default=0.0, ge=0)
    floor_mib: float = Field(default=0.0, ge=0)
    floor_above_mib: float = Field(default=0.0, ge=0)
    source: str = Field(min_length=1)

    def reserved_mib(
        self, device_mib: float, chunk_tokens: int, graph_max: int, tp: int, pp: int, dp_attention: int = 0
    ) -> float:
        """The memory kept outside the static share (class docstring); dp_attention: the dp size when the
        deployment runs SGLang's data-parallel attention, else 0."""
        reserved = (
            self.base_mib
            + self.per_chunk_token_mib * max(chunk_tokens, self.min_chunk_tokens)
            + self.per_graph_seq_mib * graph_max
            + self.per_tp_pp_gpu_mib * tp * pp
        )
        if dp_attention:
            reserved += self.dp_attention_per_graph_seq_mib * graph_max * dp_attention
            if graph_max > self.dp_attention_large_above:
                reserved += self.dp_attention_large_per_graph_seq_mib * graph_max * dp_attention
        if device_mib > self.floor_above_mib:
            reserved = max(reserved, self.floor_mib)
        return reserved

    def fraction(
        self, device_mib: float, chunk_tokens: int, graph_max: int, tp: int, pp: int, dp_attention: int = 0
    ) -> float:
        reserved = self.reserved_mib(device_mib, chunk_tokens, graph_max, tp, pp, dp_attention)
        return round((device_mib - reserved) / device_mib, 3)


class DpAttentionRuleSpec(StrictModel):
    """What the engine changes under data-parallel attention (SGLang's ServerArgs._handle_data_parallelism),
    applied by serving.capacity: `budget_per_rank` divides the engine's own token budget by dp (each rank's
    chunked_prefill_size); `conservativeness_factor` multiplies scheduler.schedule_conservativeness."""

    budget_per_rank: bool = False
    conservativeness_factor: float = Field(default=1.0, gt=0, le=100)
    source: str = Field(min_length=1)


#: What an engine does with the KV blocks a sliding-window layer's window has left (KVCacheSpec.sliding_window_kv).
SlidingWindowKV = Literal["freed", "kept"]


#: How requests are sent to data-parallel replicas (config.serving.ReplicaSpec.router).
Router = Literal["round_robin", "least_loaded", "session", "vllm_dp", "attention_dp"]


class SchedulerDefaultsSpec(StrictModel):
    """What the engine does where a scenario's `serving.scheduler` is silent: its own defaults for the batching
    policy, the batch limits, the capacity policy and the KV cache. A field the scenario gives wins; the KV
    memory rule (gpu_memory_utilization or free_memory_fraction) applies only when the scenario gives neither
    rule nor capacity_blocks. `by_device`: other batch limits on some GPUs (DeviceDefaultsSpec; a list: the first
    that applies). `static_memory`: the KV rule the engine derives from the deployment (SGLang's
    mem_fraction_static), applied where the scenario gives no KV rule (serving.capacity)."""

    policy: Policy | None = None
    max_num_seqs: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    admission: Admission | None = None
    preempt: Preempt | None = None
    split_prompts: bool | None = None
    prefix_caching: bool | None = None
    block_size_tokens: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    free_memory_fraction: float | None = Field(default=None, gt=0, le=1)
    sliding_window_kv: SlidingWindowKV | None = None
    by_device: DeviceDefaultsSpec | tuple[DeviceDefaultsSpec, ...] | None = None
    static_memory: StaticMemorySpec | None = None
    dp_attention: DpAttentionRuleSpec | None = None
    # The router of a lockstep group (attention DP with the experts across the ranks) where the scenario names
    # none (serving.replicas.router): TensorRT-LLM's one request queue for its attention-DP ranks (attention_dp),
    # vLLM's data-parallel load balancer (vllm_dp).
    lockstep_router: Router | None = None
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _one_rule(self) -> SchedulerDefaultsSpec:
        if self.gpu_memory_utilization is not None and self.free_memory_fraction is not None:
            raise ValueError("gpu_memory_utilization and free_memory_fraction: an engine has one KV memory rule")
        return self

    def fill(self, scheduler: dict) -> dict:
        """`scheduler` (a scenario's raw serving.scheduler mapping) with this engine's general defaults where it
        is silent (see the class docstring; device_limits fills the device's first)."""
        out = dict(scheduler)
        given = out.get("engine_defaults")
        recorded = dict(given) if isinstance(given, dict) else {}
        for key in (
            "policy",
            "max_num_seqs",
            "max_num_batched_tokens",
            "admission",
            "preempt",
            "split_prompts",
            "prefix_caching",
        ):
            value = getattr(self, key)
            if key == "prefix_caching" and out.get("policy") == "static":  # a static batch caches nothing
                continue
            if value is not None and key not in out:
                out[key] = value
                if key in DEVICE_LIMIT_KEYS:  # recorded: another GPU's by-device rule may set it otherwise
                    recorded[key] = value
        if recorded and (given is None or isinstance(given, dict)):  # a malformed record stays, to be refused
            out["engine_defaults"] = recorded
        kv = out.get("kv_cache")
        kv = dict(kv) if isinstance(kv, dict) else {} if kv is None else kv
        if not isinstance(kv, dict):  # not a mapping: the scenario's own validation says so
            return out
        if self.block_size_tokens is not None and "block_size_tokens" not in kv:
            kv["block_size_tokens"] = self.block_size_tokens
        if self.sliding_window_kv is not None and "sliding_window_kv" not in kv:
            kv["sliding_window_kv"] = self.sliding_window_kv
        if not any(
            k in kv
            for k in ("gpu_memory_utilization", "free_memory_fraction", "mem_fraction_static", "capacity_blocks")
        ):
            for key in ("gpu_memory_utilization", "free_memory_fraction"):
                if getattr(self, key) is not None:
                    kv[key] = getattr(self, key)
        out["kv_cache"] = kv
        return out


class EngineProfile(StrictModel):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str = ""
    cuda_graph: CudaGraphSpec | None = None  # None: the engine replays no graphs (every iteration eager)
    host: HostTimeSpec
    kernels: KernelsSpec
    allreduce: AllReduceSpec | None = None  # None: NCCL (runtime.allreduce nccl)
    scheduler_defaults: SchedulerDefaultsSpec | None = None  # None: moesim's own scheduler defaults
    checked: tuple[CheckedSpec, ...] = ()  # published runs it was checked on; empty: none

    def check_note(self, result: ResultClass | None = None) -> str:
        """One sentence for every serving output priced with this profile: how close it came to published runs
        of the engine on deployments of the result's class (the scenario's result_class: its model's class and
        whether it runs attention DP + EP; None: every check), or that it was never checked against one."""
        if not self.checked:
            return (
                f"profile {self.name} has not been checked against a published run of its engine: its "
                "end-to-end error is unknown (docs/serving-validation.md has the profiles that were)"
            )
        checks = checks_for(self.checked, result)
        if not checks:
            assert result is not None
            kind = "an MoE" if result.moe else "a dense"
            layout = " with attention DP + EP" if result.experts_across_dp else ""
            return (
                f"profile {self.name} has not been checked against a published run of {kind} model{layout} on its "
                "engine: its end-to-end error on this deployment is unknown (docs/serving-validation.md has the "
                "checks it has)"
            )
        return f"profile {self.name} checked against {'; '.join(c.text() for c in checks)}"


class CudaGraphOverride(StrictModel):
    """A scenario's own CUDA-graph capture settings for serving.engine (serving.cuda_graph), as a deployment sets
    them: vLLM's compilation_config cudagraph_capture_sizes, SGLang's --cuda-graph-bs, TensorRT-LLM's cuda_graph_config (batch_sizes,
    enable_padding). Each field given replaces the profile's; the profile's capture limit (the scheduler's batch
    limit) and the nodes it runs outside the graph stay."""

    sizes: tuple[Annotated[int, Field(ge=1, le=MAX_CAPTURE_SIZE)], ...] | None = Field(
        default=None, min_length=1, description="the batch sizes captured (sequences; tokens for vLLM V1)"
    )
    padding: bool | None = Field(
        default=None,
        description="true: a decode batch between captured sizes is padded up to the next one; false: only a batch "
        "of exactly a captured size replays a graph",
    )

    @field_validator("sizes")
    @classmethod
    def _sorted(cls, sizes: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return None if sizes is None else tuple(sorted(set(sizes)))

    def apply(self, profile: EngineProfile) -> EngineProfile:
        """The profile with these capture settings; a profile without graphs gains none (refused at parse time)."""
        graph = profile.cuda_graph
        if graph is None:
            return profile
        update: dict = {}
        if self.sizes is not None:
            update |= {"sizes": self.sizes, "max_size": ()}
        if self.padding is not None:
            update["padding"] = self.padding
        return profile.model_copy(update={"cuda_graph": graph.model_copy(update=update)})


#: HostTimeSpec.source of a host time the scenario sets (serving.host) in place of its engine profile's.
SCENARIO_HOST_SOURCE = "the scenario's serving.host"


class HostOverride(StrictModel):
    """A scenario's own host time per iteration for serving.engine (serving.host), e.g. what the deployment's own
    iteration log shows (TensorRT-LLM's print_iter_log host_step_time, vLLM's and SGLang's scheduler timings).
    Each field given replaces the profile's (HostTimeSpec); the others stay."""

    per_iteration_s: float | None = Field(default=None, ge=0.0, le=1.0, description="host seconds per iteration")
    per_sequence_s: float | None = Field(
        default=None, ge=0.0, le=1.0, description="host seconds per sequence in the iteration"
    )
    overlapped: bool | None = Field(
        default=None,
        description="true: the host prepares the next iteration while the GPU runs this one (an iteration takes "
        "the longer of the two); false: the host's work sits between GPU passes",
    )

    def apply(self, profile: EngineProfile) -> EngineProfile:
        """The profile with this host time (its source: the scenario's)."""
        update = {k: v for k, v in self.model_dump().items() if v is not None}
        host = profile.host.model_copy(update={**update, "source": SCENARIO_HOST_SOURCE})
        return profile.model_copy(update={"host": host})


def available_engines() -> list[str]:
    return sorted(p.stem for p in ENGINE_PROFILES_DIR.glob("*.yaml"))


#: Loaded engine profiles by file version (path, mtime, size): a scenario's validation reads its engine's profile
#: several times, a search thousands of times. Profiles are frozen models, safe to share.
_LOADED: dict[tuple[str, int, int], EngineProfile] = {}


def load_engine_profile(name: str) -> EngineProfile:
    """The engine profile `engine_profiles/NAME.yaml`; ScenarioError (one line) when missing or invalid. Cached
    per file version; errors are not cached."""
    path = ENGINE_PROFILES_DIR / f"{name}.yaml"
    if "/" in name or not path.is_file():
        close = difflib.get_close_matches(name, available_engines(), n=1, cutoff=0.4)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ScenarioError(f"engine '{name}' not found; {hint}available: {', '.join(available_engines())}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    cached = _LOADED.get(key)
    if cached is not None:
        return cached
    data = read_yaml(path, f"engine profile {path.name}", "engine profile", ScenarioError)
    if not isinstance(data, dict):
        raise ScenarioError(
            f"engine profile {path.name}: expected a mapping (name, version, cuda_graph, host, kernels)"
        )
    try:
        profile = EngineProfile.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"engine profile {path.name}: {one_line_error(exc, EngineProfile)}") from None
    if profile.name != name:
        raise ScenarioError(f"engine profile {path.name}: name = '{profile.name}' must match the file name '{name}'")
    _LOADED[key] = profile
    return profile
