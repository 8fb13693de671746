"""Serving engine stage: TensorRT-LLM's attention-DP balance, the rule that holds a lockstep group's context
requests back until every rank has one (config.serving.AttentionDpBalanceSpec).

Under attention DP each rank schedules its own requests, and the group's iteration lasts as long as its
slowest rank's: a rank that takes a prompt while the others only decode makes them all wait for it. With
`attention_dp_config: {enable_balance: true}` TensorRT-LLM's PyExecutor (`_balance_adp_requests`) gathers every
rank's scheduled context and generation request counts each iteration and decides, the same on every rank:

- every rank has a context request and a free generation slot (generations < max_batch_size): the wait for
  contexts ends (its counter to 0); if every rank also generates, the contexts are held for up to
  batching_wait_iters iterations more (a second counter, back to 0 when it runs out and they go);
- otherwise the contexts are held and the wait counter counts up; they go when it reaches timeout_iters
  (back to 0) or when some rank has no generation request (nothing to keep busy while waiting).

A rank with no request at all runs a dummy generation request (`_pad_attention_dp_dummy_request`), so it
counts as generating. Written here from TensorRT-LLM's code; the figures a user may compare with are the
balance ratio of its ADP balance blog (tech blog 10: mean over iterations of the ranks' mean / largest tokens)
that serving.stats.group_balance_ratio reports. TensorRT-LLM's attention-DP request queue (router attention_dp)
is ServingModel.assign_group_queue; check_attention_dp_options says where either applies.
"""

from __future__ import annotations

from collections.abc import Sequence

from simulator.config.serving import AttentionDpBalanceSpec, ReplicaSpec, SchedulerSpec, ServingError


class AttentionDpBalance:
    """The balance's two counters and its decision, one per lockstep group."""

    def __init__(self, spec: AttentionDpBalanceSpec, max_batch_size: int) -> None:
        self.timeout_iters = spec.timeout_iters
        self.batching_wait_iters = spec.batching_wait_iters
        self.max_batch_size = max_batch_size
        self.waiting_iters = 0  # iterations waited for every rank to have a context request
        self.batching_iters = 0  # iterations held once every rank had one
        self.held = 0  # iterations whose context requests were held (for the run's summary)

    def hold(self, contexts: Sequence[int], generations: Sequence[int]) -> bool:
        """Whether this iteration's context requests wait, from each rank's scheduled context and generation
        request counts (a rank without requests counts one generation: its dummy); advances the counters."""
        all_free = all(g < self.max_batch_size for g in generations)
        all_contexts = all(c > 0 for c in contexts)
        all_generate = all(g > 0 for g in generations)
        hold = False
        if all_free and all_contexts:
            self.waiting_iters = 0
            if all_generate:
                if self.batching_iters < self.batching_wait_iters:
                    self.batching_iters += 1
                    hold = True
                else:
                    self.batching_iters = 0
        else:
            self.waiting_iters += 1
            hold = True
            if self.waiting_iters >= self.timeout_iters or not all_generate:
                self.waiting_iters = 0
                hold = False
        if hold and any(contexts):
            self.held += 1
        return hold

    def pass_decodes(self, iterations: int) -> None:
        """Advance the counters over `iterations` iterations in which no rank has a context request and every
        rank generates (a decode run: each is `hold` with no contexts, so the wait counter counts up and
        wraps to 0 at timeout_iters)."""
        if iterations <= 0:
            return
        t = self.timeout_iters
        self.waiting_iters = (self.waiting_iters + iterations) % t if t > 0 else 0


def check_attention_dp_options(replicas: ReplicaSpec, scheduler: SchedulerSpec) -> None:
    """Raise ServingError (one line) unless TensorRT-LLM's attention-DP options of serving.replicas can apply:
    router attention_dp and attention_dp_balance need a lockstep group of more than one replica, one batch in
    flight each; the balance also TensorRT-LLM's scheduler (chunked_prefill: decodes first) with its
    GUARANTEED_NO_EVICT admission (admission reserve: a held context request takes no block and preempts
    nothing, so holding it changes nothing else)."""
    for field, given in (
        ("serving.replicas.router = attention_dp", replicas.router == "attention_dp"),
        ("serving.replicas.attention_dp_balance", replicas.attention_dp_balance is not None),
    ):
        if not given:
            continue
        if not replicas.lockstep or replicas.num_replicas < 2:
            raise ServingError(
                f"{field}: needs a lockstep group of dp ranks (attention DP with the experts across the ranks: "
                f"parallel.dp > 1 and ep * etp > tp); remove it or change the layout"
            )
        if (scheduler.pipeline_batches or 1) != 1:
            raise ServingError(f"{field}: needs one batch in flight per rank (pipeline_batches 1); remove it")
    if replicas.attention_dp_balance is not None and (
        scheduler.policy != "chunked_prefill" or scheduler.admission != "reserve"
    ):
        raise ServingError(
            "serving.replicas.attention_dp_balance: needs TensorRT-LLM's scheduler (scheduler.policy chunked_prefill, "
            f"admission reserve; got {scheduler.policy}, {scheduler.admission}); set them or remove it"
        )
