"""Config stage, serving: the typed, validated spec of one served deployment (request workload, scheduler,
paged KV cache, replicas, targets): a scenario's optional `serving:` section.

Everything is checked here, once; later stages trust the objects. `parse_serving_spec` turns a mapping into a
`ServingSpec` or raises `ServingError` with one line naming the field path and the fix. Fields left None here
(`scheduler.kv_cache.capacity_blocks`, `replicas.count`, `replicas.lockstep`) are derived from the scenario's
memory model and layout by `simulator.serving.capacity.resolve_serving`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from simulator.config.engine import (
    Admission,
    CudaGraphOverride,
    EngineProfile,
    HostOverride,
    Policy,
    Preempt,
    Router,
    SlidingWindowKV,
    load_engine_profile,
)
from simulator.config.errors import ScenarioError, StrictModel, one_line_error


class ServingError(ScenarioError):
    """A serving spec, trace or run that cannot be simulated; the message is one line naming field and fix."""


# ---------------------------------------------------------------- arrivals


class PoissonArrivals(StrictModel):
    """Open loop, exponential inter-arrival times (what `bench_serving --request-rate` sends)."""

    kind: Literal["poisson"] = "poisson"
    rate_per_s: float = Field(gt=0, description="mean arrival rate (requests per second)")


class GammaArrivals(StrictModel):
    """Open loop, gamma inter-arrival times: cv > 1 is burstier than Poisson (cv = 1), cv < 1 smoother."""

    kind: Literal["gamma"] = "gamma"
    rate_per_s: float = Field(gt=0, description="mean arrival rate (requests per second)")
    cv: float = Field(gt=0, description="coefficient of variation of the inter-arrival times")


class ConstantArrivals(StrictModel):
    """Open loop, one request every 1 / rate_per_s seconds, the first at 0."""

    kind: Literal["constant"] = "constant"
    rate_per_s: float = Field(gt=0, description="arrival rate (requests per second)")


class ClosedLoopArrivals(StrictModel):
    """Closed loop: `concurrency` requests start at 0; each finish sends the next (`--max-concurrency`)."""

    kind: Literal["closed_loop"] = "closed_loop"
    concurrency: int = Field(ge=1, description="requests in flight at any time")


class TraceArrivals(StrictModel):
    """Replay a CSV or JSON-lines file of (arrival_s, input_tokens, output_tokens); lengths come from it."""

    kind: Literal["trace"] = "trace"
    path: str = Field(min_length=1, description="CSV or JSON-lines file, relative to the scenario file")


Arrivals = Annotated[
    PoissonArrivals | GammaArrivals | ConstantArrivals | ClosedLoopArrivals | TraceArrivals,
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------- lengths


class FixedLength(StrictModel):
    """Every request has the same length."""

    kind: Literal["fixed"] = "fixed"
    tokens: int = Field(ge=1, description="the length")

    def max_tokens_bound(self) -> int | None:
        return self.tokens


class UniformLength(StrictModel):
    """Integers uniform on [min_tokens, max_tokens], both included."""

    kind: Literal["uniform"] = "uniform"
    min_tokens: int = Field(ge=1, description="shortest length")
    max_tokens: int = Field(ge=1, description="longest length")

    @model_validator(mode="after")
    def _ordered(self) -> UniformLength:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens = {self.min_tokens} > max_tokens = {self.max_tokens}; swap them")
        return self

    def max_tokens_bound(self) -> int | None:
        return self.max_tokens


class NormalLength(StrictModel):
    """Normal(mean_tokens, std_tokens), rounded and clipped to [min_tokens, max_tokens]."""

    kind: Literal["normal"] = "normal"
    mean_tokens: float = Field(gt=0, description="mean length")
    std_tokens: float = Field(ge=0, description="standard deviation of the length")
    min_tokens: int = Field(default=1, ge=1, description="lengths are clipped to at least this")
    max_tokens: int = Field(ge=1, description="lengths are clipped to at most this")

    @model_validator(mode="after")
    def _ordered(self) -> NormalLength:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens = {self.min_tokens} > max_tokens = {self.max_tokens}; swap them")
        return self

    def max_tokens_bound(self) -> int | None:
        return self.max_tokens


class LognormalLength(StrictModel):
    """Lognormal with this mean and std of the lengths themselves (not of their log), rounded and clipped."""

    kind: Literal["lognormal"] = "lognormal"
    mean_tokens: float = Field(gt=0, description="mean length")
    std_tokens: float = Field(ge=0, description="standard deviation of the length")
    min_tokens: int = Field(default=1, ge=1, description="lengths are clipped to at least this")
    max_tokens: int = Field(ge=1, description="lengths are clipped to at most this")

    @model_validator(mode="after")
    def _ordered(self) -> LognormalLength:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens = {self.min_tokens} > max_tokens = {self.max_tokens}; swap them")
        return self

    def max_tokens_bound(self) -> int | None:
        return self.max_tokens


class EmpiricalLength(StrictModel):
    """Draw (with replacement) from a file of lengths: one positive integer per line, `#` comments allowed."""

    kind: Literal["empirical"] = "empirical"
    path: str = Field(min_length=1, description="file of lengths, relative to the scenario file")

    def max_tokens_bound(self) -> int | None:
        return None  # known once the file is read; checked per request by the workload stage


Length = Annotated[
    FixedLength | UniformLength | NormalLength | LognormalLength | EmpiricalLength,
    Field(discriminator="kind"),
]


class SharedPrefixSpec(StrictModel):
    """Prompts that begin alike: each request's first `tokens` prompt tokens (all of a shorter prompt) are the
    prefix of its group, request i's group being i mod `groups` (a system prompt shared by every request:
    groups 1, as `vllm bench serve --random-prefix-len`; SGLang's generated-shared-prefix dataset: one group per
    system prompt). What an engine's prefix cache can skip (scheduler.prefix_caching)."""

    tokens: int = Field(ge=1, description="shared tokens at the start of every prompt")
    groups: int = Field(default=1, ge=1, description="distinct prefixes, taken in turn by the requests")


class ConversationSpec(StrictModel):
    """Multi-turn conversations (SGLang's bench_multiturn, vLLM's benchmarks/multi_turn): request i is turn
    i mod `turns` of conversation i // `turns`. A turn's prompt is the conversation so far (every earlier prompt
    and reply) followed by a new message of input_len tokens; its reply has output_len tokens. The next turn is
    sent `think_time_s` after a reply ends. The arrivals start the conversations: an open loop's rate is
    conversations per second, a closed loop's concurrency the conversations in flight. With prefix caching
    (scheduler.prefix_caching) a turn reads the conversation's earlier blocks from the cache where they are
    still resident on its replica."""

    turns: int = Field(ge=2, description="turns of each conversation (the last one may have fewer)")
    think_time_s: float = Field(default=0.0, ge=0, description="time between a reply's end and the next turn")


class WorkloadSpec(StrictModel):
    """Who sends what, when. Give num_requests or duration_s (a trace may give neither: all of its lines)."""

    arrivals: Arrivals = Field(description="when requests arrive: poisson, gamma, constant, closed_loop or trace")
    input_len: Length | None = Field(
        default=None, description="prompt lengths: fixed, uniform, normal, lognormal or empirical (not with a trace)"
    )
    output_len: Length | None = Field(default=None, description="output lengths (as input_len)")
    max_new_tokens: int | None = Field(
        default=None,
        ge=1,
        description="generation cap every request asks for (max_new_tokens / max_tokens): a longer output is cut "
        "to it; scheduler.admission reserve reserves the KV of prompt + cap; default: each request's own output",
    )
    num_requests: int | None = Field(default=None, ge=1, description="requests to send")
    duration_s: float | None = Field(default=None, gt=0, description="or: how long to send them (open loops)")
    warmup_requests: int = Field(default=0, ge=0, description="first requests left out of the statistics")
    seed: int = Field(default=0, ge=0, description="random seed: the same seed gives byte-identical results")
    shared_prefix: SharedPrefixSpec | None = Field(
        default=None, description="prompts beginning with a shared prefix (a system prompt); default: none"
    )
    conversation: ConversationSpec | None = Field(
        default=None,
        description="multi-turn conversations: each turn's prompt is the conversation so far plus a new message "
        "of input_len tokens; default: none (every request stands alone)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadSpec:
        is_trace = self.arrivals.kind == "trace"
        if is_trace and (self.input_len is not None or self.output_len is not None):
            raise ValueError("input_len/output_len: a trace carries its own lengths; remove them")
        if not is_trace and (self.input_len is None or self.output_len is None):
            missing = "input_len" if self.input_len is None else "output_len"
            raise ValueError(f"{missing}: missing; give a length distribution, e.g. {{kind: fixed, tokens: 128}}")
        if self.num_requests is not None and self.duration_s is not None:
            raise ValueError("num_requests and duration_s: give one of them, not both")
        if not is_trace and self.num_requests is None and self.duration_s is None:
            raise ValueError("num_requests or duration_s: give one (how many requests, or how long to send them)")
        if self.arrivals.kind == "closed_loop" and self.num_requests is None:
            raise ValueError("num_requests: a closed loop needs a request count (duration_s is for open loops)")
        if self.conversation is not None:
            if is_trace:
                raise ValueError("conversation: a trace carries its own prompts; remove workload.conversation")
            if self.num_requests is None:
                raise ValueError("conversation: give num_requests (the turns of all conversations), not duration_s")
            if self.shared_prefix is not None:
                raise ValueError("conversation and shared_prefix: give one of them, not both")
        if self.num_requests is not None and self.warmup_requests >= self.num_requests:
            raise ValueError(
                f"warmup_requests = {self.warmup_requests} must be < num_requests = "
                f"{self.num_requests}; lower it so some requests are measured"
            )
        return self

    @property
    def rate_unit(self) -> str:
        """What an open loop's rate counts: requests, or with conversations the conversations started."""
        return "requests/s" if self.conversation is None else "conversations/s"


# ---------------------------------------------------------------- scheduler


class SlidingKVSpec(StrictModel):
    """The layers of a model with sliding-window attention, for its KV blocks: a sliding layer keeps only the
    blocks its window still reaches (vLLM's hybrid KV cache manager, TensorRT-LLM's variable attention window,
    SGLang's SWA pool); a full layer keeps every block."""

    window_tokens: int = Field(ge=1, description="positions a sliding layer attends to (model.sliding_window)")
    full_layers: int = Field(ge=0, description="layers attending to the whole context")
    sliding_layers: int = Field(ge=1, description="sliding-window layers")

    def window_blocks(self, block_size_tokens: int) -> int:
        """Blocks a sliding layer holds at most: the window's last window_tokens - 1 cached positions and the
        new one straddle ceil((window - 1) / block) + 1 blocks (vLLM's SlidingWindowManager frees the blocks
        before the first position the window reaches)."""
        return -(-(self.window_tokens - 1) // block_size_tokens) + 1


def kv_layer_blocks(kv_tokens: int, block_size_tokens: int, sliding: SlidingKVSpec | None) -> int:
    """What a sequence of kv_tokens positions holds: blocks (each block every layer's), or for a model with
    sliding-window layers, layer blocks (one layer's block each): full_layers x blocks + sliding_layers x
    min(blocks, window_blocks)."""
    blocks = -(-kv_tokens // block_size_tokens)
    if sliding is None:
        return blocks
    return sliding.full_layers * blocks + sliding.sliding_layers * min(blocks, sliding.window_blocks(block_size_tokens))


def layers_per_block(sliding: SlidingKVSpec | None) -> int:
    """Layer blocks per block of every layer: 1 without sliding layers (the cache counts whole blocks)."""
    return 1 if sliding is None else sliding.full_layers + sliding.sliding_layers


class KVCacheSpec(StrictModel):
    """Paged KV cache of one replica. capacity_blocks None: from the scenario's memory model (what is left of
    capacity x gpu_memory_utilization, or of capacity less the reserve, after weights and activations)."""

    block_size_tokens: int = Field(default=16, ge=1, description="tokens per KV-cache block")
    capacity_blocks: int | None = Field(
        default=None, ge=1, description="blocks per replica; default: from the memory model"
    )
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="fraction of GPU memory the engine may use (as vLLM's flag)"
    )
    free_memory_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="fraction of the memory left after weights and activations that the KV cache takes "
        "(TensorRT-LLM's kv_cache_free_gpu_mem_fraction); default: all of it",
    )
    mem_fraction_static: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="fraction of GPU memory for the weights and the KV cache, the activations outside it "
        "(SGLang's --mem-fraction-static)",
    )
    sliding_window_kv: SlidingWindowKV = Field(
        default="freed",
        description="what the engine does with the blocks a sliding-window layer's window has left: freed (vLLM's "
        "hybrid KV cache manager, SGLang's SWA pool) or kept (every layer's cache sized for the whole sequence: "
        "TensorRT-LLM without kv_cache_config.max_attention_window); default: the engine profile's, else freed",
    )
    sliding: SlidingKVSpec | None = Field(
        default=None,
        description="the model's sliding-window layers, whose blocks beyond the window are freed; derived from "
        "the model (sliding_window, attention_pattern) when the scenario is resolved, None when kept",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> KVCacheSpec:
        given = [k for k in KV_RULES if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"{' and '.join(given)}: give one (vLLM's share of the whole GPU, TensorRT-LLM's share of the memory "
                "left after the weights, or SGLang's share for the weights and the KV cache), not several"
            )
        return self


#: The policies that cut prompts into chunks within a token budget (and so honour SchedulerSpec.split_prompts).
CHUNKED_POLICIES = ("chunked_prefill", "prefill_first_chunked")

#: The KV memory rules of KVCacheSpec, one at most.
KV_RULES = ("gpu_memory_utilization", "free_memory_fraction", "mem_fraction_static")


class SchedulerSpec(StrictModel):
    """Per-replica batching policy, as in vLLM (continuous, chunked_prefill) and FasterTransformer (static)."""

    policy: Policy = Field(
        default="chunked_prefill",
        description="static: one batch at a time; continuous: per-iteration batching, prefills first; "
        "chunked_prefill: a token budget per iteration, decodes first, prefills cut into chunks (vLLM, "
        "TensorRT-LLM); prefill_first_chunked: prefill-only iterations of chunks first, decode iterations when "
        "no prefill is pending (SGLang without --enable-mixed-chunk)",
    )
    max_num_seqs: int = Field(default=256, ge=1, description="sequences per iteration at most")
    max_num_batched_tokens: int = Field(default=8192, ge=1, description="tokens per iteration at most")
    chunk_size_tokens: int | None = Field(
        default=None, ge=1, description="longest prefill chunk of one sequence; default: max_num_batched_tokens"
    )
    split_prompts: bool = Field(
        default=True,
        description="chunked_prefill and prefill_first_chunked: whether a waiting prompt may be cut to fill what "
        "an iteration's token budget leaves (vLLM, SGLang, TensorRT-LLM with enable_chunked_prefill); false: it "
        "joins an iteration only whole, and the first that does not fit waits (TensorRT-LLM's default, its "
        "micro-batch scheduler without chunked context); max_num_batched_tokens must then hold the longest prompt",
    )
    kv_cache: KVCacheSpec = Field(default_factory=KVCacheSpec, description="the paged KV cache")
    preemption: Literal["recompute"] = Field(
        default="recompute", description="what happens to a preempted request: it is recomputed later"
    )
    preempt: Preempt = Field(
        default="newest",
        description="which running requests give their KV blocks back when they run out: newest (vLLM, "
        "TensorRT-LLM: the sequence that needs a block preempts the newest running one, which goes back to the "
        "front of the queue) or fewest_decoded (SGLang's retract_decode: before a decode iteration whose new "
        "tokens' blocks are not free, the decoding requests with the fewest output tokens, longest prompt on "
        "ties, are retracted, at least one, until the free KV holds 20 decode steps of those left; they go to "
        "the back of the queue)",
    )
    admission: Admission = Field(
        default="on_demand",
        description="KV blocks at admission: on_demand (vLLM: admitted when the next chunk's blocks fit, grows "
        "block by block, the newest preempted when blocks run out), reserve (TensorRT-LLM's "
        "GUARANTEED_NO_EVICT: admitted only when its whole request's blocks are free; never preempted) or "
        "estimate (SGLang: admitted when its prompt and output fit the free KV less the running requests' "
        "remaining outputs times a decaying new_token_ratio; grows on demand, preempted when blocks run out)",
    )
    schedule_conservativeness: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="admission estimate's scale on new_token_ratio (SGLang's --schedule-conservativeness: the "
        "ratio starts at min(0.7 x it, 1)); SGLang multiplies it by 0.3 under data-parallel attention",
    )
    engine_defaults: dict[Literal["max_num_seqs", "max_num_batched_tokens"], int] | None = Field(
        default=None,
        description="the batch limits serving.engine's profile set where the scenario gave none (its rule for "
        "this GPU, else its general defaults), written by moesim; a limit still at its recorded value is "
        "derived again for another GPU (a search over hardware, a changed hardware.profile)",
    )
    prefix_caching: bool | None = Field(
        default=None,
        description="reuse the KV blocks of a prompt prefix already computed (vLLM's automatic prefix caching, "
        "SGLang's radix cache, TensorRT-LLM's KV block reuse): a request whose workload.shared_prefix (or earlier "
        "turns of its workload.conversation) has been computed skips its whole blocks (not the prompt's last token); a cached prefix stays resident, its "
        "blocks counted as used. Default: the engine's (on for vllm-v1, sglang, trtllm-1.0), else off",
    )
    # Batches in flight per replica (vLLM's virtual engines, one per pipeline stage): each has its own
    # scheduler, max_num_seqs and capacity_blocks // pipeline_batches of the KV cache. None: 1, or pp in a scenario.
    pipeline_batches: int | None = Field(
        default=None, ge=1, description="batches in flight per replica (one per pipeline stage); default: pp"
    )

    @model_validator(mode="after")
    def _budget(self) -> SchedulerSpec:
        if self.policy in CHUNKED_POLICIES:
            if self.chunk_size_tokens is not None and self.chunk_size_tokens > self.max_num_batched_tokens:
                raise ValueError(
                    f"max_num_batched_tokens = {self.max_num_batched_tokens} is smaller than one chunk "
                    f"(chunk_size_tokens = {self.chunk_size_tokens}); raise it or lower the chunk"
                )
        if self.prefix_caching and self.policy == "static":
            raise ValueError(
                "prefix_caching: a static batch computes every prompt whole; use policy continuous or "
                "chunked_prefill, or turn prefix_caching off"
            )
        if self.policy == "chunked_prefill":  # decodes share the budget with the chunks
            if self.max_num_batched_tokens < self.max_num_seqs:
                raise ValueError(
                    f"max_num_batched_tokens = {self.max_num_batched_tokens} < max_num_seqs = "
                    f"{self.max_num_seqs}: the decodes alone could fill the budget; raise it"
                )
        return self

    @property
    def chunk_tokens(self) -> int:
        """Longest prefill chunk of one sequence in one iteration (default: the whole token budget)."""
        return self.chunk_size_tokens if self.chunk_size_tokens is not None else self.max_num_batched_tokens


class AttentionDpBalanceSpec(StrictModel):
    """TensorRT-LLM's attention-DP balance (`attention_dp_config: {enable_balance: true, timeout_iters,
    batching_wait_iters}`, PyExecutor._balance_adp_requests): each iteration of a lockstep group the ranks'
    scheduled context and generation request counts are gathered, and the context requests of every rank are
    held back (they run a later iteration) until every rank has one, for at most timeout_iters iterations, then
    for batching_wait_iters more while every rank also generates. The defaults are TensorRT-LLM's."""

    timeout_iters: int = Field(
        default=50, ge=0, description="iterations to wait for every rank to have a context request"
    )
    batching_wait_iters: int = Field(
        default=10, ge=0, description="iterations to hold contexts once every rank has one, while all generate"
    )


class ReplicaSpec(StrictModel):
    """Data-parallel replicas of the deployment. lockstep: they form one expert-parallel group whose
    iteration ends when the slowest replica's ends; an idle replica joins with an empty (dummy) batch."""

    count: int | None = Field(default=None, ge=1, description="replicas; default: parallel.dp")
    router: Router = Field(
        default="round_robin",
        description="how requests are sent to the replicas: round_robin or least_loaded on arrival; session (every "
        "turn of a workload.conversation to one replica, conversation c to replica c mod replicas: a session-affinity "
        "front end; other requests round robin); vllm_dp "
        "(vLLM's data-parallel load balancer: on arrival, to the lowest waiting x 4 + running among counts "
        "published every 100 ms, plus those it sent since); or attention_dp (TensorRT-LLM's attention-DP request "
        "queue, a lockstep group only: requests wait in one queue and go, when ranks have room, to those with the "
        "fewest prompt tokens). Default: round_robin, or for a lockstep group the engine's own where its profile "
        "names one",
    )
    lockstep: bool | None = Field(
        default=None, description="replicas step together; default: whether the dp replicas share EP groups"
    )
    gpus_per_replica: int | None = Field(default=None, ge=1, description="default: pp * tp")
    attention_dp_balance: AttentionDpBalanceSpec | None = Field(
        default=None,
        description="a lockstep group's context requests held until every rank has one (TensorRT-LLM's "
        "attention_dp_config enable_balance); default: off, as in TensorRT-LLM",
    )

    @property
    def num_replicas(self) -> int:
        return self.count if self.count is not None else 1


class TargetsSpec(StrictModel):
    """Service-level targets; a request is 'good' when it meets every latency bound given."""

    ttft_p99_s: float | None = Field(default=None, gt=0, description="99th percentile of the time to first token")
    tpot_p99_s: float | None = Field(default=None, gt=0, description="99th percentile of the time per output token")
    e2e_p99_s: float | None = Field(default=None, gt=0, description="99th percentile of the end-to-end latency")
    min_goodput_fraction: float | None = Field(
        default=None, gt=0, le=1, description="fraction of requests that must meet every latency bound"
    )


# ---------------------------------------------------------------- disaggregation


class PoolParallelSpec(StrictModel):
    """Layout of ONE instance of a pool: tp * pp GPUs; experts (ep x etp) folded onto its tp GPUs. Data
    parallelism is the pool's `instances` (independent replicas), so there is no dp here."""

    tp: int = Field(default=1, ge=1, description="tensor-parallel GPUs of one instance")
    pp: int = Field(default=1, ge=1, description="pipeline stages of one instance")
    ep: int = Field(default=1, ge=1, description="expert-parallel degree (folded onto the tp GPUs)")
    etp: int = Field(default=1, ge=1, description="expert tensor-parallel degree (folded onto the tp GPUs)")
    layer_split: tuple[int, ...] | None = Field(
        default=None, description="layers per pipeline stage (sums to num_layers); default: even"
    )

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


class PoolSchedulerSpec(StrictModel):
    """A pool's scheduler: each field given replaces serving.scheduler's (the rest are inherited)."""

    policy: Policy | None = Field(
        default=None, description="the pool's batching policy; default: serving.scheduler.policy"
    )
    max_num_seqs: int | None = Field(default=None, ge=1, description="default: serving.scheduler's")
    max_num_batched_tokens: int | None = Field(default=None, ge=1, description="default: serving.scheduler's")
    chunk_size_tokens: int | None = Field(default=None, ge=1, description="default: serving.scheduler's")
    kv_cache: KVCacheSpec | None = Field(default=None, description="default: serving.scheduler.kv_cache")
    pipeline_batches: int | None = Field(default=None, ge=1, description="default: serving.scheduler's")


class PoolSpec(StrictModel):
    """One pool of a disaggregated deployment: `instances` identical instances of `parallel`'s layout."""

    instances: int = Field(default=1, ge=1, description="identical instances in the pool (x or y of xPyD)")
    parallel: PoolParallelSpec = Field(default=PoolParallelSpec(), description="the layout of one instance")
    scheduler: PoolSchedulerSpec = Field(
        default=PoolSchedulerSpec(), description="scheduler fields replacing serving.scheduler's for this pool"
    )
    router: Literal["round_robin", "least_loaded"] | None = Field(
        default=None, description="how requests are spread over the instances; default: serving.replicas.router"
    )

    @property
    def num_gpus(self) -> int:
        return self.instances * self.parallel.gpus


class TransferLinkSpec(StrictModel):
    """Replaces the hardware profile's link figures for KV transfers (both fields optional). bytes_per_s is
    per GPU port and direction, already achieved (no efficiency factor applied to it)."""

    bytes_per_s: float | None = Field(
        default=None, gt=0, description="achieved bytes/s per GPU port and direction; default: the profile's"
    )
    latency_s: float | None = Field(default=None, ge=0, description="per transfer; default: the profile's")


class DisaggregationSpec(StrictModel):
    """Prefill/decode disaggregation (xPyD): x prefill instances, y decode instances, each request's KV cache
    moved from its prefill instance to its decode instance. placement: `packed` puts the prefill instances on
    GPUs 0.., the decode ones right after; `separate_nodes` starts the decode pool on a fresh node, so every
    transfer crosses the NIC. The transfer links default to the hardware profile's intra_node (NVLink) and
    inter_node (NIC) figures; `intra_node` / `inter_node` replace them (an infinite link: a huge bytes_per_s
    and latency 0)."""

    prefill: PoolSpec = Field(description="the pool that runs prefills")
    decode: PoolSpec = Field(description="the pool that runs decodes")
    placement: Literal["packed", "separate_nodes"] = Field(
        default="packed",
        description="packed: decode GPUs right after the prefill ones; separate_nodes: decode on a fresh node",
    )
    intra_node: TransferLinkSpec | None = Field(
        default=None, description="replaces the profile's NVLink figures for KV transfers"
    )
    inter_node: TransferLinkSpec | None = Field(
        default=None, description="replaces the profile's NIC figures for KV transfers"
    )

    @property
    def num_gpus(self) -> int:
        return self.prefill.num_gpus + self.decode.num_gpus


class ServingSpec(StrictModel):
    """A scenario's `serving:` section: the request stream `moesim serve` simulates."""

    workload: WorkloadSpec = Field(description="who sends what, when")
    scheduler: SchedulerSpec = Field(
        default_factory=SchedulerSpec,
        description="the per-replica batching policy and KV cache; default: the engine's defaults (engine profile "
        "scheduler_defaults), else moesim's",
    )
    replicas: ReplicaSpec = Field(default=ReplicaSpec(), description="data-parallel replicas and the router")
    targets: TargetsSpec = Field(default=TargetsSpec(), description="service-level targets")
    engine: str | None = Field(
        default=None,
        min_length=1,
        description="a serving engine profile (engine_profiles/NAME.yaml: CUDA-graph capture sizes, host time "
        "per iteration, kernels); default: iterations priced as the DAG alone",
    )
    cuda_graph: CudaGraphOverride | None = Field(
        default=None,
        description="the deployment's own CUDA-graph capture sizes and padding for serving.engine (vLLM "
        "cudagraph_capture_sizes, SGLang --cuda-graph-bs, TensorRT-LLM cuda_graph_config); default: the engine's",
    )

    host: HostOverride | None = Field(
        default=None,
        description="the deployment's own host time per iteration for serving.engine (per_iteration_s, "
        "per_sequence_s, overlapped), e.g. from its iteration log; default: the engine's",
    )

    disaggregation: DisaggregationSpec | None = Field(
        default=None,
        description="prefill and decode on separate pools of GPUs (xPyD), each request's KV cache moved between "
        "them; default: aggregated replicas",
    )

    @model_validator(mode="before")
    @classmethod
    def _engine_defaults(cls, data):
        """The named engine's scheduler defaults where serving.scheduler is silent (EngineProfile
        scheduler_defaults); an unknown engine is left to the field's own check."""
        if not isinstance(data, dict) or not isinstance(data.get("engine"), str):
            return data
        scheduler = data.get("scheduler", {})  # an engine's defaults can stand for a whole scheduler section
        if isinstance(scheduler, SchedulerSpec):
            scheduler = scheduler.model_dump(exclude_unset=True)
        if not isinstance(scheduler, dict):
            return data
        try:
            defaults = load_engine_profile(data["engine"]).scheduler_defaults
        except ScenarioError:
            return data
        return data if defaults is None else {**data, "scheduler": defaults.fill(scheduler)}

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, name: str | None) -> str | None:
        if name is not None:
            try:
                load_engine_profile(name)
            except ScenarioError as exc:
                raise ValueError(str(exc)) from None
        return name

    @model_validator(mode="after")
    def _admissible(self) -> ServingSpec:
        check_longest_admissible(self.workload, self.scheduler, "the longest request of workload.input_len/output_len")
        return self

    @model_validator(mode="after")
    def _graphs_of_an_engine(self) -> ServingSpec:
        if self.cuda_graph is None:
            return self
        if self.engine is None:
            raise ValueError("cuda_graph: sets an engine's CUDA-graph capture; name the engine in serving.engine")
        if load_engine_profile(self.engine).cuda_graph is None:
            raise ValueError(
                f"cuda_graph: engine profile {self.engine} captures no CUDA graphs; remove serving.cuda_graph"
            )
        return self

    @model_validator(mode="after")
    def _host_of_an_engine(self) -> ServingSpec:
        if self.host is not None and self.engine is None:
            raise ValueError("host: sets an engine's host time per iteration; name the engine in serving.engine")
        return self

    def engine_profile(self) -> EngineProfile:
        """serving.engine's profile with the scenario's own CUDA-graph settings (serving.cuda_graph) and host time
        (serving.host) applied."""
        assert self.engine is not None
        profile = load_engine_profile(self.engine)
        if self.cuda_graph is not None:
            profile = self.cuda_graph.apply(profile)
        return profile if self.host is None else self.host.apply(profile)

    @property
    def num_gpus(self) -> int:
        """GPUs of the deployment: both pools' when disaggregated, else replicas x GPUs per replica."""
        if self.disaggregation is not None:
            return self.disaggregation.num_gpus
        return self.replicas.num_replicas * (self.replicas.gpus_per_replica or 1)


#: SGLang's admission estimate (python/sglang/srt/managers/schedule_policy.py, PrefillAdder; the constants of
#: global_config.py / environ.py): a request's output counts at most this many tokens
#: (CLIP_MAX_NEW_TOKENS_ESTIMATION), the running requests' remaining outputs times new_token_ratio, which starts
#: at SGLANG_INIT_NEW_TOKEN_RATIO 0.7, decays to 0.7 x SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR 0.14 over
#: SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS 600 decode steps, and after a retraction is re-estimated as (decoded +
#: SGLANG_RETRACT_DECODE_STEPS 20 x requests) / their max_new_tokens, at most 1.
ESTIMATE_CLIP_TOKENS = 4096
ESTIMATE_INIT_RATIO = 0.7
ESTIMATE_MIN_RATIO_FACTOR = 0.14
ESTIMATE_DECAY_STEPS = 600


def estimate_ratios(conservativeness: float = 1.0) -> tuple[float, float, float]:
    """SGLang's (init, min, decay per decode step) of new_token_ratio for a schedule_conservativeness
    (Scheduler.__init__): init = min(0.7 x conservativeness, 1), min = min(init x 0.14, 1),
    decay = (init - min) / 600."""
    init = min(ESTIMATE_INIT_RATIO * conservativeness, 1.0)
    low = min(init * ESTIMATE_MIN_RATIO_FACTOR, 1.0)
    return init, low, (init - low) / ESTIMATE_DECAY_STEPS


ESTIMATE_RETRACT_STEPS = 20
#: SGLang's disaggregated decode instance (python/sglang/srt/disaggregation/decode.py, DecodePreallocQueue
#: pop_preallocated / _allocatable_tokens): a transferred request's KV is allocated only while its prompt plus
#: this many tokens fits the free KV less this many for every request running, waiting or being transferred
#: (SGLANG_NUM_RESERVED_DECODE_TOKENS, default 512).
ESTIMATE_RESERVED_DECODE_TOKENS = 512


def kv_output_tokens(output_tokens: int, max_new_tokens: int | None, admission: str) -> int:
    """Output tokens whose KV a request holds at most: its output (cut to the cap), or under admission reserve
    the whole cap, which the engine reserves before it knows where the output ends (TensorRT-LLM
    GUARANTEED_NO_EVICT: KVCacheManager::getRemainingBlocksToCompletion counts promptLen + maxNewTokens)."""
    if max_new_tokens is None:
        return output_tokens
    return max_new_tokens if admission == "reserve" else min(output_tokens, max_new_tokens)


def kv_blocks_needed(
    input_tokens: int, output_tokens: int, block_size_tokens: int, sliding: SlidingKVSpec | None = None
) -> int:
    """Blocks a request holds at its end: KV of the prompt and of every output token but the last
    (the last token is sampled, never fed back); with sliding-window layers the whole blocks its layer
    blocks (kv_layer_blocks) fill, rounded up."""
    units = kv_layer_blocks(input_tokens + output_tokens - 1, block_size_tokens, sliding)
    return -(-units // layers_per_block(sliding))


def check_admissible(
    input_tokens: int, output_tokens: int, scheduler: SchedulerSpec, what: str, max_new_tokens: int | None = None
) -> None:
    """Raise ValueError when a request of these lengths (its output cut to max_new_tokens, which admission reserve
    reserves whole) can never run to its end on one replica."""
    kv = scheduler.kv_cache
    if max_new_tokens is not None:  # the engine stops a request at its cap
        output_tokens = min(output_tokens, max_new_tokens)
    held = kv_output_tokens(output_tokens, max_new_tokens, scheduler.admission)
    blocks = kv_blocks_needed(input_tokens, held, kv.block_size_tokens, kv.sliding)
    batches = scheduler.pipeline_batches or 1
    if kv.capacity_blocks is not None and blocks > kv.capacity_blocks // batches:
        share = f" // pipeline_batches {batches} = {kv.capacity_blocks // batches}" if batches > 1 else ""
        tokens = f"output {held}" if held == output_tokens else f"workload.max_new_tokens {held} reserved"
        raise ValueError(
            f"{what} (input {input_tokens} + {tokens} tokens = {blocks} blocks of "
            f"{kv.block_size_tokens}) can never be admitted: scheduler.kv_cache.capacity_blocks = "
            f"{kv.capacity_blocks}{share}; raise it to >= {blocks * batches} or shorten the requests"
        )
    if scheduler.admission == "estimate" and kv.capacity_blocks is not None:
        # SGLang admits a request only while prompt + min(max_new_tokens, 4096) < the free KV tokens
        need = input_tokens + min(kv_output_tokens(output_tokens, max_new_tokens, "reserve"), ESTIMATE_CLIP_TOKENS)
        room = kv.capacity_blocks // batches * kv.block_size_tokens
        if need >= room:
            raise ValueError(
                f"{what} (input {input_tokens} + output {need - input_tokens} tokens) can never be admitted under "
                f"admission estimate: it needs fewer tokens than the {room} the KV cache holds "
                f"(scheduler.kv_cache.capacity_blocks x block_size_tokens); raise it or shorten the requests"
            )
    if (
        not scheduler.split_prompts
        and scheduler.policy in CHUNKED_POLICIES
        and input_tokens > scheduler.max_num_batched_tokens
    ):
        raise ValueError(
            f"{what} (input {input_tokens} tokens) can never join an iteration whole: "
            f"scheduler.max_num_batched_tokens = {scheduler.max_num_batched_tokens} with split_prompts false; "
            f"raise it to >= {input_tokens} or set scheduler.split_prompts: true (TensorRT-LLM's enable_chunked_prefill)"
        )
    if scheduler.policy == "continuous" and input_tokens + output_tokens - 1 > scheduler.max_num_batched_tokens:
        # A recomputed (preempted) request re-prefills its prompt and all but its last output token at once.
        raise ValueError(
            f"{what} (input {input_tokens} + output {output_tokens} tokens) can never be prefilled "
            f"in one iteration: scheduler.max_num_batched_tokens = {scheduler.max_num_batched_tokens}; "
            f"raise it to >= {input_tokens + output_tokens - 1} or use policy chunked_prefill"
        )


def check_longest_admissible(w: WorkloadSpec, scheduler: SchedulerSpec, what: str) -> None:
    """check_admissible for the longest request the workload's length distributions allow (outputs bounded by
    max_new_tokens when unbounded); nothing when a trace or an unbounded distribution leaves it unknown."""
    if w.input_len is None or w.output_len is None:
        return
    max_in, max_out = w.input_len.max_tokens_bound(), w.output_len.max_tokens_bound()
    if max_out is None:  # unbounded lengths: the cap bounds them
        max_out = w.max_new_tokens
    if max_in is not None and max_out is not None:
        check_admissible(max_in, max_out, scheduler, what, w.max_new_tokens)


def parse_serving_spec(data: Any, source: str = "serving") -> ServingSpec:
    """Validate a mapping (e.g. a YAML section); raise ServingError with one line naming field and fix."""
    if not isinstance(data, dict):
        raise ServingError(f"{source}: expected a mapping with workload, scheduler, replicas, targets")
    try:
        return ServingSpec.model_validate(data)
    except ValidationError as exc:
        raise ServingError(f"{source}: {one_line_error(exc, ServingSpec)}") from None
