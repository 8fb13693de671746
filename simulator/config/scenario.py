"""Config stage, scenario: the sections of a scenario (hardware, cluster, layout, workload, runtime,
targets, declared figures, the optional serving section), the Scenario itself, and the layout rules checked when it is built."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from simulator.config.checked import ResultClass
from simulator.config.engine import device_limits, forget_engine_limits, load_engine_profile
from simulator.config.errors import LayoutError, ScenarioError, StrictModel, divisors
from simulator.config.hardware import ProfileError, ProfileInvalid, load_profile
from simulator.config.model import ModelSpec
from simulator.config.serving import PoolParallelSpec, ServingSpec

#: Guard against absurd magnitudes that would make the simulation hang or overflow.
MAX_TOKENS = 10**9
#: Beyond this exponent every token already goes to expert 0 (2**-100 is below any float share
#: that matters), and 1/(i+1)**s underflows.
MAX_ZIPF = 100.0


def big_number(n: int | float) -> str:
    """`n` as 3 significant digits, also for an integer too large for a float (10**4000)."""
    try:
        return f"{n:.3g}"
    except OverflowError:
        return f"1e+{int(math.log10(n))}"


class HardwareRef(StrictModel):
    """A profile name (or YAML path) plus single-field overrides."""

    model_config = ConfigDict(extra="allow", frozen=True)
    profile: str = Field(description="a profile name (`moesim profiles`) or the path of a profile YAML file")


class ClusterSpec(StrictModel):
    """The GPUs of the deployment."""

    num_gpus: PositiveInt = Field(description="GPUs in the deployment; must equal pp * dp * tp")
    gpus_per_node: PositiveInt | None = Field(
        default=None,
        description="GPUs per node (NVLink inside a node, the NIC across nodes); default: the hardware profile's",
    )

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        if self.gpus_per_node and self.num_gpus > self.gpus_per_node and self.num_gpus % self.gpus_per_node:
            raise ValueError(
                f"num_gpus = {self.num_gpus} is not a whole number of nodes of gpus_per_node = {self.gpus_per_node}"
            )
        return self


class ParallelSpec(StrictModel):
    """GPUs = pp * dp * tp; experts split over ep (x etp) folded onto each stage's dp*tp GPUs."""

    tp: PositiveInt = Field(default=1, description="tensor-parallel degree: attention heads split over tp GPUs")
    pp: PositiveInt = Field(default=1, description="pipeline-parallel degree: layers split over pp stages")
    dp: PositiveInt = Field(default=1, description="data-parallel degree: the batch split over dp replicas")
    ep: PositiveInt = Field(
        default=1, description="expert-parallel degree: experts split over ep ranks, folded onto a stage's dp * tp GPUs"
    )
    etp: PositiveInt = Field(default=1, description="expert tensor parallelism: each expert sharded over etp ranks")
    redundant_experts: NonNegativeInt = Field(
        default=0,
        description="extra expert copies per EP group, placed as EPLB places them (the busiest experts copied, "
        "copies packed onto the least-loaded ranks); num_experts + redundant_experts must divide by ep",
    )
    microbatches: PositiveInt = Field(
        default=1, description="microbatches each dp rank's batch is split into (both phases)"
    )
    layer_split: tuple[PositiveInt, ...] | None = Field(
        default=None, description="layers per pipeline stage (pp entries summing to num_layers); default: even"
    )

    @classmethod
    def of_degrees(cls, pp: int, dp: int, tp: int, ep: int = 1, etp: int = 1, microbatches: int = 1) -> ParallelSpec:
        """A layout from its degrees in (pp, dp, tp, ep, etp, microbatches) order, with the even layer split."""
        return cls(pp=pp, dp=dp, tp=tp, ep=ep, etp=etp, microbatches=microbatches)

    @property
    def num_gpus(self) -> int:
        return self.pp * self.dp * self.tp

    @property
    def experts_span_dp(self) -> bool:
        """Whether an expert-parallel group (ep x etp GPUs) spans several of the dp replicas of tp GPUs."""
        return self.dp > 1 and self.tp % (self.ep * self.etp) != 0

    def degrees(self) -> dict[str, int]:
        """The degrees alone, in (pp, dp, tp, ep, etp, microbatches) order (the layer split aside), then
        redundant_experts when there are any: what tells two layouts apart and rebuilds one (ParallelSpec(**d))."""
        out = {
            "pp": self.pp,
            "dp": self.dp,
            "tp": self.tp,
            "ep": self.ep,
            "etp": self.etp,
            "microbatches": self.microbatches,
        }
        if self.redundant_experts:
            out["redundant_experts"] = self.redundant_experts
        return out

    def sort_key(self) -> tuple[int, ...]:
        return (self.pp, self.dp, self.tp, self.ep, self.etp, self.microbatches, self.redundant_experts)

    def __lt__(self, other: ParallelSpec) -> bool:  # layouts sort by their degrees, pp first
        return self.sort_key() < other.sort_key()

    def without_split(self) -> ParallelSpec:
        """The same degrees with the even layer split: how a sweep names a layout."""
        return self if self.layer_split is None else self.model_copy(update={"layer_split": None})

    @property
    def label(self) -> str:
        """Compact name: the degrees above 1, e.g. 'PP2 TP2 EP2 mb4'; 'single' when all are 1."""
        parts = [
            f"{k.upper()}{v}"
            for k, v in (("pp", self.pp), ("dp", self.dp), ("tp", self.tp), ("ep", self.ep), ("etp", self.etp))
            if v > 1
        ]
        if self.redundant_experts:
            parts = [f"{x}+{self.redundant_experts}" if x.startswith("EP") else x for x in parts]
        if self.microbatches > 1:
            parts.append(f"mb{self.microbatches}")
        return " ".join(parts) or "single"


class RoutingSpec(StrictModel):
    """How the router spreads token copies over the experts (the same in every pass).

    YAML: `uniform` (default), `{zipf: s}` (expert i, counted from 0, gets a share proportional to
    1/(i+1)^s: the hottest experts sit on the first EP rank, the worst case), `{loads: [..]}`
    (per-expert fractions, normalised), or `{sampled: seed}` (a multinomial draw, per layer, of the
    prefill's token copies over uniform probabilities; deterministic for a seed). Any of them may
    add `capacity_factor: c`: an expert keeps at most ceil(c * copies / num_experts) copies per
    pass and its EP group; the rest are dropped (they skip the experts) and counted.
    """

    zipf: PositiveFloat | None = Field(
        default=None, le=MAX_ZIPF, description="Zipf exponent s: expert i gets a share proportional to 1/(i+1)^s"
    )
    loads: tuple[float, ...] | None = Field(
        default=None, description="per-expert fractions of the token copies, one per expert (normalised)"
    )
    sampled: int | None = Field(
        default=None, ge=0, description="seed of a multinomial draw of the prefill's token copies, per layer"
    )
    capacity_factor: PositiveFloat | None = Field(
        default=None,
        description="an expert keeps at most ceil(c * copies / num_experts) copies per pass and EP group; "
        "the rest are dropped and counted",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_word(cls, value: Any) -> Any:
        if value == "uniform" or value is None:
            return {}
        if isinstance(value, str):
            raise ValueError(
                f"routing: unknown routing '{value[:40]}'; use uniform, {{zipf: s}}, {{loads: [...]}} or {{sampled: seed}}"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> RoutingSpec:
        given = [k for k in ("zipf", "loads", "sampled") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"routing: give one of zipf, loads, sampled (got {', '.join(given)})")
        if self.loads is not None and (any(x < 0 for x in self.loads) or sum(self.loads) <= 0):
            raise ValueError("routing.loads: fractions must be >= 0 with a positive sum")
        if self.loads is not None and not math.isfinite(sum(self.loads)):
            raise ValueError(
                "routing.loads: the sum of the fractions overflows; give shares of a total (they are normalised)"
            )
        return self

    @property
    def kind(self) -> str:
        return next((k for k in ("zipf", "loads", "sampled") if getattr(self, k) is not None), "uniform")


class WorkloadSpec(StrictModel):
    """One static batch, every sequence arriving at t = 0 (what `moesim run` simulates)."""

    batch_size: PositiveInt = Field(description="sequences in the batch; a multiple of dp * microbatches")
    input_len_tokens: PositiveInt = Field(description="prompt length of every sequence")
    output_len_tokens: PositiveInt = Field(
        description="tokens generated per sequence (1 from prefill, the rest decode)"
    )
    routing: RoutingSpec = Field(
        default=RoutingSpec(),
        description="how the router spreads token copies over the experts: uniform, {zipf: s}, {loads: [...]} "
        "or {sampled: seed}",
    )


class RuntimeSpec(StrictModel):
    """How kernels are issued. cuda_graph: decode steps replay a captured graph; prefill runs eagerly.

    framework: `fused` (serving engines: each operator of the DAG is one kernel) or `pytorch`
    (plain PyTorch ops, as the reference implementation of simulator/calibration/e2e.py: operators
    also launch the helper kernels such code issues, e.g. KV-cache writes, layout copies, routing
    index arithmetic, dispatch buffers; see graph.PYTORCH_HELPER_KERNELS)."""

    mode: Literal["eager", "cuda_graph"] = Field(
        default="cuda_graph",
        description="eager: every kernel launched from the host; cuda_graph: decode steps replay a captured graph",
    )
    framework: Literal["fused", "pytorch"] = Field(
        default="fused",
        description="fused: one kernel per DAG operator (serving engines); pytorch: plain PyTorch ops with "
        "their helper kernels",
    )
    allreduce: Literal["nccl", "custom"] = Field(
        default="custom",
        description="custom (the default with framework fused): the serving engines' custom all-reduce inside one "
        "NVLink node (vLLM, SGLang, TensorRT-LLM: the fastest of one-shot, two-shot and NCCL's ring for a message "
        "below custom_allreduce_max_bytes, the ring above); nccl (the default with framework pytorch, as "
        "torch.distributed): every all-reduce as NCCL's ring",
    )
    moe_dispatch: Literal["all_to_all", "allreduce"] = Field(
        default="allreduce",
        description="how a TP group reaches experts that live inside it (ep x etp = tp): allreduce (the default "
        "with framework fused: every TP rank holds all tokens after the attention all-reduce, runs its own experts "
        "on the copies routed to them, shared experts TP-sharded, one TP all-reduce after: vLLM, SGLang and "
        "TensorRT-LLM's TP / EP MoE) or all_to_all (the default with framework pytorch: each TP rank routes its "
        "1/tp slice of the tokens, all-to-alls the copies to the experts, all-gathers after; the origin's DAG); "
        "experts spanning dp ranks always all-to-all",
    )
    ep_dispatch: Literal["all_to_all", "allgather"] = Field(
        default="all_to_all",
        description="how the all-to-all flow's expert group exchanges tokens (experts over several TP or DP ranks, "
        "moe_dispatch all_to_all or experts spanning dp ranks): all_to_all (each token's routed copies to the ranks "
        "holding their experts and back: DeepEP-class kernels, the origin's DAG) or allgather (every rank gathers all "
        "the group's tokens, runs its experts on the copies routed to them, and a reduce-scatter returns each rank's "
        "tokens: vLLM's default VLLM_ALL2ALL_BACKEND allgather_reducescatter; the least that SGLang's DP attention "
        "without --moe-a2a-backend deepep moves)",
    )
    mla_prefill: Literal["decompressed", "absorbed"] = Field(
        default="decompressed",
        description="how MLA attention runs a prefill (sequences computing more than one token): decompressed (vLLM, "
        "SGLang, TensorRT-LLM and Hugging Face: kv_b_proj up-projects the cached latent of every context token into "
        "per-head K and V, then flash attention over q/k head dim nope + rope and v head dim v_head_dim) or absorbed "
        "(as decode: W_UK and W_UV absorbed into the query and the output, MQA over the latent; ~3x the attention "
        "FLOPs of decompressed). Decode is always absorbed",
    )
    custom_allreduce_max_bytes: float = Field(
        default=8 * 1024 * 1024,
        ge=1.0,
        le=1e12,
        description="the custom all-reduce's buffer: messages of this size or more go to NCCL (vLLM's max_size, 8 MiB)",
    )
    memory_reserve_bytes: float = Field(
        default=1.0e9,
        ge=0.0,
        le=1e15,
        description="memory per GPU held back: CUDA context, NCCL buffers, allocator slack",
    )

    @model_validator(mode="after")
    def _dispatch_of_the_framework(self) -> RuntimeSpec:
        if self.moe_dispatch == "allreduce" and self.framework == "pytorch":
            raise ValueError(
                "moe_dispatch: allreduce is how the serving engines run a TP group's experts (framework fused); "
                "plain PyTorch (framework pytorch) is modelled with all_to_all"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _defaults_of_the_framework(cls, data):
        """Plain PyTorch all-reduces through NCCL (torch.distributed) and reaches a TP group's experts by
        all-to-all, unless the scenario says otherwise."""
        if isinstance(data, dict) and data.get("framework") == "pytorch":
            return {"allreduce": "nccl", "moe_dispatch": "all_to_all", **data}
        return data


TargetMetric = Literal[
    "output_tokens_per_ms_per_gpu",
    "prefill_tokens_per_ms_per_gpu",
    "total_tokens_per_ms_per_gpu",
    "ttft_s",
    "tpot_s",
    "total_s",
    "memory_bytes_per_gpu",
]


class Target(StrictModel):
    """A bound on one metric: exactly one of min or max."""

    min: float | None = Field(default=None, description="the metric must be at least this (in the metric's unit)")
    max: float | None = Field(default=None, description="the metric must be at most this (in the metric's unit)")
    stat: Literal["mean", "p50", "p99", "max"] = Field(
        default="max", description="for ttft_s: which statistic over the sequences is checked"
    )

    @model_validator(mode="after")
    def _check(self) -> Target:
        if (self.min is None) == (self.max is None):
            raise ValueError("give exactly one of min or max")
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError("bound must be a finite number")
        return self


class Declared(StrictModel):
    """Figures a deployment claims (e.g. the origin document); audited against what moesim computes."""

    source: str = Field(default="", description="where the claims come from")
    total_params: PositiveFloat | None = Field(default=None, description="claimed parameter count")
    num_gpus: PositiveInt | None = Field(default=None, description="claimed GPU count")
    parallel_degrees: dict[Literal["tp", "ep", "pp", "dp", "etp"], PositiveInt] | None = Field(
        default=None, description="claimed degrees, e.g. {tp: 2, ep: 2, pp: 2}"
    )
    output_tokens_per_ms_per_gpu: PositiveFloat | None = Field(
        default=None, description='claimed output throughput ("at least")'
    )
    ttft_s: PositiveFloat | None = Field(default=None, description='claimed time to first token ("at most")')
    memory_utilization: float | None = Field(
        default=None, gt=0.0, le=1.0, description="claimed fraction of each GPU's memory in use"
    )
    experts_per_gpu: PositiveInt | None = Field(default=None, description="claimed experts per GPU and layer")
    layers_per_gpu: PositiveInt | None = Field(default=None, description="claimed layers per GPU")


def layout_result_class(moe: bool, parallel: ParallelSpec) -> ResultClass:
    """The class of a deployment of a dense (moe False) or MoE model on `parallel` (Scenario.result_class)."""
    return ResultClass(moe, moe and parallel.experts_span_dp)


class Scenario(StrictModel):
    """One deployment to simulate: a model on a cluster of GPUs with a parallel layout, a workload and targets."""

    name: str = Field(description="names the output directory reports/<name> (a plain name, no '/')")
    description: str = Field(default="", description="free text shown in the reports")
    model: ModelSpec = Field(description="the transformer, inline or {preset: NAME, field: override, ...}")
    hardware: HardwareRef = Field(
        description="a profile name, or {profile: NAME, field: override, ...} to override profile fields"
    )
    cluster: ClusterSpec = Field(description="the GPUs")
    parallel: ParallelSpec = Field(default=ParallelSpec(), description="the parallel layout")
    workload: WorkloadSpec = Field(description="the static batch `moesim run` simulates")
    runtime: RuntimeSpec = Field(default=RuntimeSpec(), description="how kernels are issued")
    targets: dict[TargetMetric, Target] = Field(
        default={}, description="bounds checked against the results, e.g. ttft_s: {max: 10}"
    )
    declared: Declared | None = Field(default=None, description="figures the deployment claims; audited line by line")
    # `moesim run` simulates `workload` alone and ignores it.
    serving: ServingSpec | None = Field(
        default=None,
        description="request-level serving (arrivals, lengths, scheduler, KV cache, replicas, SLOs) for `moesim serve`",
    )

    @field_validator("hardware", mode="before")
    @classmethod
    def _hardware_name(cls, value: Any) -> Any:
        return {"profile": value} if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _engine_engine_defaults(cls, data: Any) -> Any:
        """The named engine's batch limits for this GPU where serving.scheduler is silent (engine profile
        scheduler_defaults.by_device; the general defaults follow in ServingSpec). Left alone when the engine
        or the hardware profile does not load: their own fields say why."""
        if not isinstance(data, dict) or not isinstance(data.get("serving"), dict):
            return data
        serving = data["serving"]
        scheduler = serving.get("scheduler", {})
        if not isinstance(scheduler, dict):
            return data
        own = forget_engine_limits(scheduler)  # limits filled for the GPU a dumped scenario was written for
        if own is scheduler and "engine_defaults" in scheduler:
            return data  # a malformed record: serving.scheduler.engine_defaults's validation says why
        filled = own
        hardware = data.get("hardware")
        ref = {"profile": hardware} if isinstance(hardware, str) else hardware
        if isinstance(serving.get("engine"), str) and isinstance(ref, dict) and isinstance(ref.get("profile"), str):
            try:
                defaults = load_engine_profile(serving["engine"]).scheduler_defaults
                rule = defaults.by_device if defaults is not None else None
                if rule is not None:
                    hw = load_profile(ref["profile"], {k: v for k, v in ref.items() if k != "profile"})
                    filled = device_limits(rule, own, (hw.name, hw.device_memory_bytes or hw.memory_bytes))
            except (ScenarioError, ProfileError, ProfileInvalid):
                pass
        return data if filled is scheduler else {**data, "serving": {**serving, "scheduler": filled}}

    @model_validator(mode="after")
    def _layout(self) -> Scenario:
        check_layout(self)
        if self.serving is not None and self.serving.disaggregation is not None:
            check_disaggregation(self)
        return self

    @property
    def num_gpus(self) -> int:
        return self.cluster.num_gpus

    @property
    def moe_allreduce(self) -> bool:
        """The MoE layers run as the engines run a TP group's experts (runtime.moe_dispatch allreduce, the expert
        group being the TP group): every TP rank holds all tokens and one TP all-reduce sums the experts."""
        p = self.parallel
        return self.runtime.moe_dispatch == "allreduce" and self.model.is_moe and p.tp > 1 and p.ep * p.etp == p.tp

    @property
    def dp_attention(self) -> bool:
        """The layout the engines run with data-parallel attention (SGLang's --enable-dp-attention, vLLM's and
        TensorRT-LLM's attention DP): a MoE whose experts span every GPU of a stage, ep x etp = dp x tp, dp > 1."""
        p = self.parallel
        return self.model.is_moe and p.dp > 1 and p.ep * p.etp == p.dp * p.tp

    @property
    def experts_across_dp(self) -> bool:
        """Whether an expert-parallel group spans several data-parallel ranks (attention DP + EP, dp_attention
        included), so that the dp replicas must step together."""
        return self.model.is_moe and self.parallel.experts_span_dp

    @property
    def result_class(self) -> ResultClass:
        """What a profile's end-to-end checks are matched on (config.checked.checks_for)."""
        return layout_result_class(self.model.is_moe, self.parallel)

    def stage_layers(self) -> list[list[int]]:
        """Layer indices owned by each pipeline stage."""
        split = self.parallel.layer_split or even_split(self.model.num_layers, self.parallel.pp)
        layers, start = [], 0
        for count in split:
            layers.append(list(range(start, start + count)))
            start += count
        return layers


def even_split(num_layers: int, pp: int) -> tuple[int, ...]:
    """Layers per pipeline stage, as even as they go (the first stages take one more)."""
    base, extra = divmod(num_layers, pp)
    return tuple(base + (1 if s < extra else 0) for s in range(pp))


def check_layout(s: Scenario) -> None:
    """Raise LayoutError (naming its field) if the parallel layout does not fit the model, cluster and workload."""
    m, p, w = s.model, s.parallel, s.workload
    if m.num_heads % p.tp:
        raise LayoutError(
            "parallel.tp", f"tp = {p.tp} must divide model.num_heads = {m.num_heads} (try {divisors(m.num_heads)})"
        )
    if m.kv_heads > p.tp and m.kv_heads % p.tp:
        raise LayoutError(
            "parallel.tp", f"tp = {p.tp} must divide model.num_kv_heads = {m.kv_heads} (try {divisors(m.kv_heads)})"
        )
    if p.pp > m.num_layers:
        raise LayoutError("parallel.pp", f"pp = {p.pp} exceeds model.num_layers = {m.num_layers}")
    if p.layer_split is not None:
        if len(p.layer_split) != p.pp or sum(p.layer_split) != m.num_layers:
            raise LayoutError(
                "parallel.layer_split",
                f"layer_split needs {p.pp} entries (one per stage) summing to num_layers = {m.num_layers}",
            )
    if m.is_moe:
        slots = m.num_experts + p.redundant_experts
        if slots % p.ep:
            given = f" + parallel.redundant_experts = {p.redundant_experts}" if p.redundant_experts else ""
            fill = -m.num_experts % p.ep  # the fewest copies that make ep divide the slots
            copies = (
                f", or parallel.redundant_experts = {fill} plus any multiple of {p.ep}: copies of the busiest experts, "
                "as EPLB places them"
            )
            raise LayoutError(
                "parallel.ep",
                f"ep = {p.ep} must divide model.num_experts = {m.num_experts}{given} "
                f"(try ep in {divisors(m.num_experts)}{copies})",
            )
        if p.redundant_experts and m.moe_impl == "capacity":
            raise LayoutError(
                "parallel.redundant_experts",
                "redundant expert copies need a routed MoE (model.moe_impl: grouped or per_expert); the capacity "
                "MoE pads every expert to the same slots",
            )
        ffn = m.expert_ffn_size or 0
        if ffn % p.etp:
            raise LayoutError(
                "parallel.etp", f"etp = {p.etp} must divide model.expert_ffn_size = {ffn} (try {divisors(ffn)[:8]})"
            )
        stage_gpus = p.dp * p.tp
        if stage_gpus % (p.ep * p.etp):
            valid = [d for d in divisors(stage_gpus) if m.num_experts % d == 0]
            raise LayoutError(
                "parallel.ep",
                f"ep * etp = {p.ep * p.etp} must divide dp * tp = {stage_gpus}, the GPUs of a stage it folds onto (valid ep with etp=1: {valid})",
            )
    elif p.ep != 1 or p.etp != 1 or p.redundant_experts:
        raise LayoutError(
            "parallel.ep", "ep and etp must be 1 and redundant_experts 0 for a dense model (num_experts = 0)"
        )
    if p.num_gpus != s.cluster.num_gpus:
        raise LayoutError(
            "cluster.num_gpus",
            f"num_gpus = {s.cluster.num_gpus} must equal pp * dp * tp = {p.pp} * {p.dp} * {p.tp} = {p.num_gpus}",
        )
    if w.batch_size % (p.dp * p.microbatches):
        raise LayoutError(
            "workload.batch_size",
            f"batch_size = {w.batch_size} must be a multiple of dp * microbatches = {p.dp * p.microbatches}",
        )
    total_tokens = w.batch_size * (w.input_len_tokens + w.output_len_tokens)
    if total_tokens > MAX_TOKENS:
        raise LayoutError(
            "workload",
            f"batch_size * (input + output) = {big_number(total_tokens)} tokens exceeds the supported {MAX_TOKENS:.0e}",
        )
    loads = w.routing.loads
    if loads is not None and len(loads) != m.num_experts:
        raise LayoutError(
            "workload.routing.loads",
            f"routing.loads has {len(loads)} entries; it needs one per expert (model.num_experts = {m.num_experts})",
        )
    if m.is_moe is False and p.ep > 1:
        raise LayoutError("parallel.ep", "ep must be 1 for a dense model")


def pool_layout(s: Scenario, parallel: PoolParallelSpec, path: str) -> Scenario:
    """The scenario on one instance of a disaggregated pool: `parallel`'s layout (dp 1) on its tp * pp GPUs, the
    cluster's gpus_per_node kept. Raises LayoutError naming `path` + the field when the layout breaks a rule."""
    try:
        layout = ParallelSpec.model_validate({**parallel.model_dump(exclude_none=True), "dp": 1, "microbatches": 1})
        cluster = ClusterSpec(num_gpus=parallel.gpus, gpus_per_node=s.cluster.gpus_per_node)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "parallel"
        raise LayoutError(f"{path}.{field}", first["msg"].removeprefix("Value error, ")) from None
    candidate = s.model_copy(update={"parallel": layout, "cluster": cluster})
    try:
        check_layout(candidate)
    except LayoutError as exc:
        field = exc.path.removeprefix("parallel.")
        raise LayoutError(f"{path}.{field}" if exc.path.startswith("parallel") else f"{path}", str(exc)) from None
    return candidate


def check_disaggregation(s: Scenario) -> None:
    """Each pool's layout fits the model (the rules of check_layout), and both pools fit the cluster."""
    assert s.serving is not None and s.serving.disaggregation is not None
    d = s.serving.disaggregation
    for name, pool in (("prefill", d.prefill), ("decode", d.decode)):
        pool_layout(s, pool.parallel, f"serving.disaggregation.{name}.parallel")
    if d.num_gpus > s.cluster.num_gpus:
        p, q = d.prefill, d.decode
        raise LayoutError(
            "serving.disaggregation",
            f"{p.instances} prefill x {p.parallel.gpus} GPUs + {q.instances} decode x {q.parallel.gpus} GPUs = "
            f"{d.num_gpus} GPUs do not fit cluster.num_gpus = {s.cluster.num_gpus}; lower the instances or "
            f"the pools' tp/pp, or raise cluster.num_gpus",
        )
