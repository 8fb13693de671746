"""Serving engine stage: the SimPy process model of one deployment serving a stream of requests.

Processes: the arrivals (open loop: one timeout per request; closed loop: each finish sends the next), a
router onto the data-parallel replicas, and one scheduler loop per replica, or one loop for a lockstep
expert-parallel group of replicas. Each loop asks its scheduler for an iteration, prices it with the
`IterationPricer`, waits that long, and applies it. Events are O(iterations + requests), never O(tokens).

Pipeline parallelism (scheduler.pipeline_batches = B > 1, vLLM's virtual engines): each replica runs B
schedulers, each with its own requests, max_num_seqs and 1/B of the KV blocks; a request goes to the replica's
scheduler with the fewest requests. An iteration enters the replica's first stage when the previous one has
left its slowest stage (`period_s`) and its tokens exist `latency_s` after it entered; its scheduler plans the
next iteration only then. A pricer with a `timing(batch)` method (DagPricer) gives both; for any other the
period is the latency (no overlap).
"""

from __future__ import annotations

import gc
import heapq
import math
from collections import deque
from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import NamedTuple

import numpy as np
import simpy

from simulator.config.engine import HostTimeSpec
from simulator.config.serving import Arrivals, ConversationSpec, ServingError, ServingSpec
from simulator.serving.adp_balance import AttentionDpBalance, check_attention_dp_options
from simulator.serving.dp_router import VllmDpRouter
from simulator.serving.engine_pricing import batch_tokens, host_set_iteration
from simulator.serving.pricing import CachedPricer, IterationPricer
from simulator.serving.scheduler import DecodeRun, Scheduler, Sequence, Step
from simulator.serving.workload import Request, generate_requests

#: Columns of ServingRun.timeseries, one row per replica per iteration.
TIMESERIES_COLUMNS = (
    "start_s",
    "iteration_s",
    "replica",
    "waiting",
    "running",
    "batch_seqs",
    "new_tokens",
    "kv_blocks_used",
    "tokens_out",
)


@dataclass(frozen=True)
class RequestRecord:
    """Timestamps of one served request. token_times_s[k] is when output token k+1 was sampled."""

    request_id: int
    replica: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    first_scheduled_s: float
    finish_s: float
    preemptions: int
    warmup: bool
    token_times_s: np.ndarray
    cached_tokens: int = 0  # prompt tokens read from the prefix cache instead of computed (over its admissions)
    conversation: int = -1  # its workload.conversation (-1: none) and its turn there
    turn: int = 0

    @property
    def first_token_s(self) -> float:
        return float(self.token_times_s[0])


#: Columns of DisaggregatedRun.transfers, one row per KV transfer (a one-token request has none):
#: ready_s when its prefill ended, start_s when its decode instance had reserved the blocks, end_s when the
#: last byte arrived.
TRANSFER_COLUMNS = ("request_id", "prefill_instance", "decode_instance", "ready_s", "start_s", "end_s", "num_bytes")
#: Columns of DisaggregatedRun.links, one row per GPU port that carried KV (e.g. "nic out gpu 3").
LINK_COLUMNS = ("link", "bytes_per_s", "carried_bytes", "busy_s")


@dataclass(frozen=True)
class DisaggregatedRun:
    """What a disaggregated run adds: its pools (replicas 0 .. prefill_instances - 1 of the run are the
    prefill instances, the next decode_instances the decode ones), the KV transfers and the links they used."""

    prefill_instances: int
    decode_instances: int
    prefill_kv_capacity_blocks: int
    transfers: dict[str, np.ndarray]  # TRANSFER_COLUMNS
    links: dict[str, np.ndarray]  # LINK_COLUMNS
    # each pool's launch tally (ServingRun.launches; the run's own sums both), None without an engine
    prefill_launches: dict[str, tuple[int, int, int]] | None = None
    decode_launches: dict[str, tuple[int, int, int]] | None = None


class HostTally(NamedTuple):
    """An engine's host work over a run: the iterations counted (every replica's), those whose host work set
    them (overlapped: it outlasted the GPU pass) or lengthened them (serial), the host seconds in all, and the
    profile's rate (engine HostTimeSpec)."""

    iterations: int
    host_bound: int
    seconds: float
    per_iteration_s: float
    per_sequence_s: float
    overlapped: bool
    source: str  # where the rate comes from (HostTimeSpec.source)


@dataclass(frozen=True)
class ServingRun:
    """What one serving simulation returns; stats.py turns it into tables and a summary."""

    spec: ServingSpec
    records: tuple[RequestRecord, ...]  # by request_id
    timeseries: dict[str, np.ndarray]  # TIMESERIES_COLUMNS
    end_s: float  # when the last request finished
    num_iterations: int  # iterations of all replicas (a lockstep group counts once per replica)
    preemptions: int
    peak_kv_blocks: tuple[int, ...]  # per replica
    mean_in_system: float  # time average over [0, end_s] of requests arrived and not finished
    # Disaggregated runs only (serving.disagg_simulate); spec.scheduler is then the decode pool's.
    disaggregation: DisaggregatedRun | None = None
    # With an engine profile (a pricer with launch(): serving.engine_pricing.EnginePricer): per launch kind
    # (graph, piecewise, eager) the iterations, their units (sequences for graph, else new tokens) and padding.
    launches: dict[str, tuple[int, int, int]] | None = None
    # With an engine profile: its host work over the run's iterations (HostTally).
    host: HostTally | None = None
    # With serving.replicas.attention_dp_balance: the group's iterations whose context requests it held.
    balance_held: int | None = None
    # With prefix caching of a shared prefix: (prompt tokens read from the cache, prompt tokens admitted), every
    # admission counted (a recompute after a preemption too).
    prefix_cache: tuple[int, int] | None = None


def simulate_serving(
    spec: ServingSpec,
    pricer: IterationPricer,
    requests: Seq[Request] | None = None,
    base_dir: str | Path | None = None,
    *,
    fast_forward: bool = True,
) -> ServingRun:
    """Serve spec's workload (or the given requests) on spec's replicas; iteration times come from pricer.

    Requests are routed on arrival and served FIFO per replica by the scheduler policy. In a closed loop
    (requests' arrival_s NaN) the first `concurrency` requests arrive at 0 and each finish sends the next
    at once (no client think time). fast_forward False schedules and completes every sequence every
    iteration instead of applying runs of pure decode steps at once (the same result, slower; for tests).
    """
    if spec.scheduler.kv_cache.capacity_blocks is None:
        raise ServingError(
            "scheduler.kv_cache.capacity_blocks: not set; give it, or take it from a scenario's "
            "memory model with simulator.serving.capacity.resolve_serving"
        )
    if requests is None:
        requests = generate_requests(spec, base_dir)
    if not requests:
        raise ServingError("requests: none to serve; give workload.num_requests >= 1")
    _check_requests(spec, requests)
    return ServingModel(spec, pricer, requests, fast_forward=fast_forward).run()


#: stop_when's check: (arrival_s, finish_s) of the measured requests -> True to stop the run.
StopCheck = Callable[[np.ndarray, np.ndarray], bool]
_STOP_CHECK: ContextVar[StopCheck | None] = ContextVar("serving_stop_check", default=None)


class StoppedEarly(Exception):
    """A run stop_when's check stopped at its last measured arrival: the measured requests' arrival and finish
    times then (inf: not finished yet)."""

    def __init__(self, arrival_s: np.ndarray, finish_s: np.ndarray) -> None:
        super().__init__("stopped at the last measured arrival")
        self.arrival_s, self.finish_s = arrival_s, finish_s


@contextmanager
def stop_when(check: StopCheck) -> Iterator[None]:
    """Inside: every open-loop serving run (co-located or disaggregated) pauses once its last measured request
    has arrived and calls check(arrival_s, finish_s) with the measured requests' arrival times and their finish
    times so far (inf: not finished); True raises StoppedEarly, False runs it to the end, unchanged. For a
    caller that needs only a verdict the rest of the run cannot change (maxrate.evaluate_verdict)."""
    token = _STOP_CHECK.set(check)
    try:
        yield
    finally:
        _STOP_CHECK.reset(token)


#: Container objects allocated (net of those freed) between the garbage collector's youngest-generation passes
#: while a serving run goes on.
GC_ALLOCATIONS_PER_PASS = 50_000


@contextmanager
def _few_collections() -> Iterator[None]:
    """Run with the cyclic garbage collector's youngest generation collected every GC_ALLOCATIONS_PER_PASS
    allocations instead of Python's 700: a serving run allocates a batch of tuples every iteration, and at the
    default the collector's passes took most of a long run's time (DeepSeek R1 on 8 B200s, 6,144 requests step
    by step: 22.6 -> 8.3 s; all 49,152: 502 -> 66.5 s; peak memory unchanged)."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], GC_ALLOCATIONS_PER_PASS), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


class RequestSource:
    """The arrivals side of a serving model, shared by the co-located `ServingModel` and the disaggregated one
    (serving.disagg_simulate): the open loop (one timeout per request) or the closed loop (each finish sends the
    next), a conversation's later turns (each sent think_time_s after the turn before ends), the time-average
    count of requests in the system, and the run to the end. A subclass sets `env`, `requests`, `arrivals`,
    `warmup_requests` (and `conversation` where it has one), calls `init_source`, and defines `accept` (where an
    arrived request goes)."""

    env: simpy.Environment
    requests: Seq[Request]
    arrivals: Arrivals
    warmup_requests: int
    conversation: ConversationSpec | None = None

    def init_source(self) -> None:
        self.num_finished = 0
        self.next_closed = 0  # next request (or conversation) a closed loop sends
        self.in_system = 0
        self.area = 0.0
        self.last_change_s = 0.0
        self.finish_s = np.full(len(self.requests), math.inf)
        self.next_arrival_s = math.inf  # an open loop's next arrival (a closed loop's come with finishes)
        # what the arrival process sends: every request, or each conversation's first turn
        self.starts = self.requests if self.conversation is None else [r for r in self.requests if r.turn == 0]

    def accept(self, request: Request, arrival_s: float) -> None:
        raise NotImplementedError

    def start_arrivals(self) -> None:
        if self.arrivals.kind == "closed_loop":
            self.next_closed = min(self.arrivals.concurrency, len(self.starts))
            for request in self.starts[: self.next_closed]:
                self.accept(request, 0.0)
        else:
            self.env.process(self.open_loop())

    def open_loop(self):
        env = self.env
        for request in self.starts:
            self.next_arrival_s = request.arrival_s
            delay = request.arrival_s - env.now
            if delay > 0:
                yield env.timeout(delay)
            self.accept(request, request.arrival_s)
        self.next_arrival_s = math.inf

    def count(self, delta: int) -> None:
        now = self.env.now
        self.area += self.in_system * (now - self.last_change_s)
        self.last_change_s = now
        self.in_system += delta

    def left(self, request_id: int) -> None:
        """Request request_id left the system: count it; send its conversation's next turn, or in a closed loop
        the next request (conversation)."""
        self.finish_s[request_id] = self.env.now
        self.num_finished += 1
        self.count(-1)
        following = self.next_turn(request_id)
        if following is not None:
            assert self.conversation is not None
            think_s = self.conversation.think_time_s
            if think_s > 0:
                self.env.process(self._send_later(following, think_s))
            else:
                self.accept(following, self.env.now)
            return
        if self.next_closed < len(self.starts) and self.arrivals.kind == "closed_loop":
            self.accept(self.starts[self.next_closed], self.env.now)
            self.next_closed += 1

    def next_turn(self, request_id: int) -> Request | None:
        """The turn of request_id's conversation that follows it (None: the last turn, or no conversation)."""
        following = request_id + 1
        if self.conversation is None or following == len(self.requests) or not self.requests[following].turn:
            return None
        return self.requests[following]

    def _send_later(self, request: Request, delay_s: float):
        yield self.env.timeout(delay_s)
        self.accept(request, self.env.now)

    def run_to_end(self, what: str) -> None:
        """Run the environment until no event is left; every request must have finished by then. Inside
        stop_when, an open loop pauses after its last measured arrival for the check (StoppedEarly)."""
        with _few_collections():
            self._run_to_end(what)

    def _run_to_end(self, what: str) -> None:
        check = _STOP_CHECK.get()
        warmup = self.warmup_requests
        if (
            check is not None
            and self.arrivals.kind != "closed_loop"
            and self.conversation is None  # later turns' arrivals are not known beforehand
            and len(self.requests) > warmup
        ):
            arrival_s = np.array([r.arrival_s for r in self.requests[warmup:]])
            # just past the last arrival: every event at that time (a finish at it) has run
            self.env.run(until=math.nextafter(float(arrival_s.max()), math.inf))
            finish_s = self.finish_s[warmup:].copy()
            if check(arrival_s, finish_s):
                raise StoppedEarly(arrival_s, finish_s)
        self.env.run()
        if self.num_finished != len(self.requests):
            raise RuntimeError(
                f"{what} stopped with {len(self.requests) - self.num_finished} requests unfinished (a scheduler bug)"
            )


class ServingModel(RequestSource):
    """The processes of one deployment's replicas on a SimPy environment (its own, or a shared one when a
    disaggregated deployment runs a prefill and a decode pool side by side: serving.disagg_simulate)."""

    def __init__(
        self,
        spec: ServingSpec,
        pricer: IterationPricer,
        requests: Seq[Request],
        env: simpy.Environment | None = None,
        fast_forward: bool = True,
    ) -> None:
        self.spec = spec
        self.pricer = pricer
        self.requests = requests
        self.env = env if env is not None else simpy.Environment()
        self.batches = spec.scheduler.pipeline_batches or 1
        self.num_replicas = spec.replicas.num_replicas
        per_batch = spec.scheduler
        if self.batches > 1:
            kv = per_batch.kv_cache
            assert kv.capacity_blocks is not None  # simulate_serving refuses None; disaggregated pools are resolved
            per_batch = per_batch.model_copy(
                update={"kv_cache": kv.model_copy(update={"capacity_blocks": kv.capacity_blocks // self.batches})}
            )
        # scheduler index = replica * batches + pipeline batch
        cap = spec.workload.max_new_tokens
        self.conversation = spec.workload.conversation
        shared = spec.workload.shared_prefix is not None or self.conversation is not None
        self.schedulers = [
            Scheduler(per_batch, r, cap, shared) for r in range(self.num_replicas) for _ in range(self.batches)
        ]
        self.timing = getattr(pricer, "timing", None)
        # Runs of pure decode steps applied at once (ServingModel.decode_runs); off where something outside the
        # scheduler changes its sequences or blocks between iterations (a disaggregated pool's transfers).
        self.fast_forward = fast_forward
        inner = pricer.pricer if isinstance(pricer, CachedPricer) else pricer
        self.launch = getattr(inner, "launch", None)  # how an engine launches each iteration (EnginePricer)
        # The same for a decode run's iteration, from its size and longest context (EnginePricer.launch_decode).
        self.launch_decode = getattr(inner, "launch_decode", None)
        self.launches: dict[str, list[int]] = {}
        # TensorRT-LLM's attention-DP request queue and balance of a lockstep group
        check_attention_dp_options(spec.replicas.model_copy(update={"count": self.num_replicas}), per_batch)
        adp = spec.replicas.attention_dp_balance
        self.balance = None if adp is None else AttentionDpBalance(adp, spec.scheduler.max_num_seqs)
        self.group_queue: deque[Sequence] | None = deque() if spec.replicas.router == "attention_dp" else None
        self.group_arrived = 0  # requests that entered the group queue (a decode run ends when one does)
        # Prefix caching of a shared prompt prefix or of a conversation's earlier turns (workload.shared_prefix,
        # workload.conversation, scheduler.prefix_caching)
        self.shared_prefix = spec.workload.shared_prefix if per_batch.prefix_caching else None
        self.cache_prefixes = bool(per_batch.prefix_caching) and shared
        if self.cache_prefixes and per_batch.kv_cache.sliding is not None:
            what = "workload.shared_prefix" if self.shared_prefix is not None else "workload.conversation"
            raise ServingError(
                "serving.scheduler.prefix_caching: not modelled for a model with sliding-window layers (their "
                f"blocks leave the window); turn it off or remove {what}"
            )
        # vLLM's data-parallel load balancer: counts reported after each step, seen by the router at its ticks
        self.dp_router = VllmDpRouter(self.num_replicas) if spec.replicas.router == "vllm_dp" else None
        self.host: HostTimeSpec | None = getattr(inner, "host_spec", None)  # the engine's host time (EnginePricer)
        self.host_counts = [0, 0, 0.0]  # ServingRun.host
        self.wake: list[simpy.Event | None] = [None] * len(self.schedulers)
        self.seqs: list[Sequence | None] = [None] * len(requests)
        self.scheduler_of = [0] * len(requests)  # request_id -> index of the scheduler it was routed to
        self.rows: list[tuple] = []
        self.rr = 0
        self.arrivals = spec.workload.arrivals
        self.warmup_requests = spec.workload.warmup_requests
        self.init_source()

    def run(self) -> ServingRun:
        env, spec = self.env, self.spec
        self.start_arrivals()
        lockstep = bool(spec.replicas.lockstep) and self.num_replicas > 1
        if not lockstep:
            self.start_loops()
        elif self.batches == 1:
            env.process(self.lockstep_loop())
        else:  # pipeline batch v of every replica steps together; one first stage for the group
            b = self.batches
            entry = simpy.Resource(env, 1)
            for v in range(b):
                env.process(self.pipelined_loop(list(range(v, len(self.schedulers), b)), v, entry))
        self.run_to_end("serving simulation")
        return self.result()

    def start_loops(self) -> None:
        """The loops of independent replicas: one per scheduler, or with pipeline batches one per batch,
        those of a replica sharing its first stage."""
        env, b = self.env, self.batches
        if b == 1:
            for scheduler in self.schedulers:
                env.process(self.replica_loop(scheduler))
            return
        for r in range(self.num_replicas):
            entry = simpy.Resource(env, 1)
            for v in range(b):
                env.process(self.pipelined_loop([r * b + v], r * b + v, entry))

    # ---------------------------------------------------------------- arrivals and routing

    def accept(self, request: Request, arrival_s: float) -> None:
        self.route(request, arrival_s)

    def route(self, request: Request, arrival_s: float) -> None:
        schedulers, b = self.schedulers, self.batches
        seq = Sequence(request.request_id, arrival_s, request.input_tokens, request.output_tokens)
        prefix = self.shared_prefix
        if prefix is not None:
            seq.prefix_group = request.request_id % prefix.groups
            seq.cache_tokens = min(prefix.tokens, request.input_tokens)
        elif self.cache_prefixes:  # a conversation: its earlier turns, and for the next turn all of this one
            seq.prefix_group = request.conversation
            last = self.next_turn(request.request_id) is None
            seq.cache_tokens = request.history_tokens if last else request.input_tokens + request.output_tokens
        self.seqs[request.request_id] = seq
        self.count(+1)
        if self.group_queue is not None:  # TensorRT-LLM's attention-DP queue: a rank is chosen when one has room
            self.group_queue.append(seq)
            self.group_arrived += 1
            key = 0
        else:
            if self.spec.replicas.router == "round_robin":
                r = self.rr % self.num_replicas
                self.rr += 1
            elif self.spec.replicas.router == "session":  # a conversation's turns to one replica
                r = (request.conversation if request.conversation >= 0 else request.request_id) % self.num_replicas
            elif self.dp_router is not None:
                r = self.dp_router.choose(arrival_s)
            else:
                r = min(range(self.num_replicas), key=lambda i: sum(s.load for s in schedulers[i * b : (i + 1) * b]))
            if b > 1:  # the replica's pipeline batch with the fewest requests (vLLM's virtual engines)
                r = min(range(r * b, (r + 1) * b), key=lambda i: schedulers[i].load)
            self.scheduler_of[request.request_id] = r
            schedulers[r].add(seq)
            lockstep = self.spec.replicas.lockstep and self.num_replicas > 1
            key = (r % b if b > 1 else 0) if lockstep else r
        wake = self.wake[key]
        if wake is not None:
            self.wake[key] = None
            wake.succeed()

    def finished(self, done: list[Sequence]) -> None:
        for seq in done:
            self.left(seq.request_id)

    def check_stall(self, scheduler: Scheduler) -> None:
        """Raise when a scheduler has requests but scheduled nothing (a pool waiting on transfers overrides it)."""
        _check_stall(scheduler)

    def idle(self, key: int) -> simpy.Event:
        wake = self.wake[key] = self.env.event()
        return wake

    # ---------------------------------------------------------------- scheduler loops

    def worth_a_run(self, now_s: float, last_s: float) -> bool:
        """Whether to look for a decode run now: fast_forward on, and the next open-loop arrival (which would end
        it) at least 3 iterations as long as the last away (a guess: a shorter run costs more than it saves; the
        results are the same either way)."""
        return self.fast_forward and self.next_arrival_s - now_s > 3.0 * last_s

    def replica_loop(self, scheduler: Scheduler):
        env, pricer, rows, r = self.env, self.pricer, self.rows, scheduler.replica
        dt = 0.0
        while True:
            now = env.now
            marks = scheduler.preemptions, len(scheduler.waiting)
            step = scheduler.schedule(now)
            if not step.seqs:
                self.check_stall(scheduler)
                if self.num_finished == len(self.requests):
                    return
                yield self.idle(r)
                continue
            run = scheduler.decode_run(step, *marks) if self.worth_a_run(now, dt) else None
            if run is not None:
                dt = yield from self.decode_runs([scheduler], [run])
                continue
            dt = pricer(step.batch)
            if self.launch is not None:
                self.count_launch(step.batch, dt)
            before = _before(scheduler, step)
            yield env.timeout(dt)
            done = scheduler.complete(step, env.now)
            rows.append((now, dt, r, *before, step.tokens_out))
            self.finished(done)
            if self.dp_router is not None:
                self.report_counts([scheduler])

    def report_counts(self, schedulers: list[Scheduler]) -> None:
        """The counts each replica of these schedulers reports after a step (router vllm_dp: serving.dp_router):
        its requests waiting and running, over its pipeline batches."""
        assert self.dp_router is not None
        b, now = self.batches, self.env.now
        for r in sorted({s.replica for s in schedulers}):
            mine = self.schedulers[r * b : (r + 1) * b]
            self.dp_router.publish(r, now, sum(len(s.waiting) for s in mine), sum(len(s.running) for s in mine))

    def assign_group_queue(self) -> None:
        """TensorRT-LLM's attention-DP request queue (executor_request_queue.py, _fetch_new_requests_attention_dp):
        take from the group's queue what the ranks have room for (max_num_seqs active requests, waiting or
        running, a rank), then give each, longest prompt first, to the rank with the fewest active prompt tokens
        (then requests, then index) among those below the even share, max(ceil(active and new / ranks), the
        most any rank has)."""
        queue, schedulers = self.group_queue, self.schedulers
        if not queue:
            return
        active = [s.load for s in schedulers]
        n, limit = len(schedulers), self.spec.scheduler.max_num_seqs
        take = min(len(queue), n * limit - sum(active))
        if take <= 0:
            return
        new = sorted((queue.popleft() for _ in range(take)), key=lambda seq: seq.input_tokens, reverse=True)
        share = max(-(-(sum(active) + take) // n), max(active))
        ranks = [(s.active_prompt_tokens, a, r) for r, (s, a) in enumerate(zip(schedulers, active)) if a < share]
        heapq.heapify(ranks)
        for seq in new:
            tokens, a, r = heapq.heappop(ranks)
            self.scheduler_of[seq.request_id] = r
            schedulers[r].add(seq)
            if a + 1 < share:
                heapq.heappush(ranks, (tokens + seq.input_tokens, a + 1, r))

    def lockstep_loop(self):
        env, pricer, rows, schedulers = self.env, self.pricer, self.rows, self.schedulers
        dt = 0.0
        while True:
            now = env.now
            if self.group_queue is not None:
                self.assign_group_queue()
            marks = [(s.preemptions, len(s.waiting)) for s in schedulers]
            steps = [s.schedule(now) for s in schedulers]
            if not any(step.seqs for step in steps):
                for s in schedulers:
                    self.check_stall(s)
                if self.num_finished == len(self.requests):
                    return
                yield self.idle(0)
                continue
            held = self.balance is not None and self.balance_steps(steps)
            if not held and self.worth_a_run(now, dt):
                runs = []
                for s, step, mark in zip(schedulers, steps, marks):
                    run = s.decode_run(step, *mark)
                    if run is None:
                        break
                    runs.append(run)
                else:
                    dt = yield from self.decode_runs(schedulers, runs)
                    continue
            # The group's iteration ends with its slowest replica's; an idle one prices an empty (dummy) batch.
            own = [pricer(step.batch) for step in steps]
            dt = max(own)
            if self.launch is not None:
                for step, own_s in zip(steps, own):
                    self.count_launch(step.batch, own_s)
            before = [_before(s, step) for s, step in zip(schedulers, steps)]
            yield env.timeout(dt)
            for s, step, pre in zip(schedulers, steps, before):
                done = s.complete(step, env.now)
                rows.append((now, dt, s.replica, *pre, step.tokens_out))
                self.finished(done)
            if self.dp_router is not None:
                self.report_counts(schedulers)

    def balance_steps(self, steps: list[Step]) -> bool:
        """Apply the attention-DP balance (serving.adp_balance) to a lockstep group's steps just scheduled: when
        it holds the contexts, each rank's step loses its context work (Scheduler.hold_contexts, in place).
        Returns whether they were held (a held step starts no decode run: its requests are admitted later)."""
        schedulers, balance = self.schedulers, self.balance
        assert balance is not None
        contexts = [len(step.seqs) - step.decodes for step in steps]
        generations = [
            step.decodes if (s.running or s.waiting) else 1  # a rank without requests runs a dummy generation
            for s, step in zip(schedulers, steps)
        ]
        if not balance.hold(contexts, generations):
            return False
        for i, (s, n) in enumerate(zip(schedulers, contexts)):
            if n:
                steps[i] = s.hold_contexts(steps[i])
        return True

    def decode_runs(self, schedulers: list[Scheduler], runs: list[DecodeRun]):
        """Run the decode runs just scheduled (one per scheduler of the loop: `replica_loop`'s one, or every one
        of a lockstep group), iteration by iteration as the loops would (the same batches priced in the same
        order, the same timeouts, rows and launch counts), without scheduling or completing each sequence every
        iteration: the runs end after the iteration during which a request arrived at one of the schedulers, or
        at the shortest run's last, and `Scheduler.finish_run` then applies them at once. Exact: tests compare
        every record and row with fast_forward off."""
        env, pricer, rows, launch = self.env, self.pricer, self.rows, self.launch
        length = min(run.iterations for run in runs)
        arrived = [s.arrived for s in schedulers]
        group_arrived = self.group_arrived  # a request entering the attention-DP queue ends the run too
        ends_s: list[float] = []
        # A cached pricer prices iteration j from the run's sorted contexts + j, building the batch only for a
        # price not seen before; the launch count needs only the batch's size and longest context.
        price_run = pricer.price_run if isinstance(pricer, CachedPricer) else None
        count_run = launch is not None and self.launch_decode is not None
        j = 0
        while True:
            now = env.now
            if price_run is not None:
                own = [price_run(run.sorted_contexts, j, run.batch) for run in runs]
            else:
                own = [pricer(run.batch(j)) for run in runs]
            dt = max(own)
            if count_run:
                for run, own_s in zip(runs, own):
                    self.count_launch_decode(run.running, run.max_context + j, own_s)
            elif launch is not None:
                for run, own_s in zip(runs, own):
                    self.count_launch(run.batch(j), own_s)
            yield env.timeout(dt)
            ends_s.append(env.now)
            j += 1
            last = (
                j == length
                or any(s.arrived != a for s, a in zip(schedulers, arrived))
                or self.group_arrived != group_arrived
            )
            if last:
                break
            for s, run in zip(schedulers, runs):
                n = run.running
                rows.append((now, dt, s.replica, run.waiting, n, n, n, run.used_blocks(j - 1), n))
        if self.balance is not None:  # the run's later iterations, each with no context request anywhere
            self.balance.pass_decodes(len(ends_s) - 1)
        for s, run in zip(schedulers, runs):
            step = s.finish_run(run, ends_s)
            done = s.complete(step, env.now)
            n = run.running
            rows.append((now, dt, s.replica, run.waiting, n, n, n, run.used_blocks(j - 1), step.tokens_out))
            self.finished(done)
        if self.dp_router is not None:
            self.report_counts(schedulers)
        return dt

    def pipelined_loop(self, group: list[int], key: int, entry: simpy.Resource):
        """Pipeline batch loop: the schedulers in `group` (one, or one per replica of a lockstep group) plan an
        iteration, wait for the first stage, hold it for the period, and apply the iteration at the latency."""
        env, pricer, rows, timing = self.env, self.pricer, self.rows, self.timing
        schedulers = [self.schedulers[i] for i in group]
        while True:
            now = env.now
            steps = [s.schedule(now) for s in schedulers]
            if not any(step.seqs for step in steps):
                for s in schedulers:
                    self.check_stall(s)
                if self.num_finished == len(self.requests):
                    return
                yield self.idle(key)
                continue
            period_s = latency_s = 0.0
            for step in steps:
                if timing is not None:
                    p, lat = timing(step.batch)
                else:
                    p = lat = pricer(step.batch)
                period_s, latency_s = max(period_s, p), max(latency_s, lat)
                if self.launch is not None:
                    self.count_launch(step.batch, p)
            before = [_before(s, step) for s, step in zip(schedulers, steps)]
            with entry.request() as slot:
                yield slot
                start = env.now
                yield env.timeout(period_s)
            if latency_s > period_s:
                yield env.timeout(start + latency_s - env.now)
            for s, step, pre in zip(schedulers, steps, before):
                done = s.complete(step, env.now)
                rows.append((start, latency_s, s.replica, *pre, step.tokens_out))
                self.finished(done)
            if self.dp_router is not None:
                self.report_counts(schedulers)

    def count_launch(self, batch, iteration_s: float) -> None:
        """Count one iteration (one replica's batch, `iteration_s` its own time) by how the engine launches it and
        whether the engine's host work set it."""
        assert self.launch is not None
        self.tally_launch(self.launch(batch), len(batch), iteration_s)

    def count_launch_decode(self, n: int, max_context: int, iteration_s: float) -> None:
        """count_launch of a decode run's iteration: n decode sequences, the longest over max_context tokens."""
        assert self.launch_decode is not None
        self.tally_launch(self.launch_decode(n, max_context), n, iteration_s)

    def tally_launch(self, launch: tuple[str, int, int], sequences: int, iteration_s: float) -> None:
        kind, units, padding = launch
        tally = self.launches.get(kind)
        if tally is None:
            tally = self.launches[kind] = [0, 0, 0]
        tally[0] += 1
        tally[1] += units
        tally[2] += padding
        if self.host is not None:
            counts = self.host_counts
            counts[0] += 1
            counts[1] += int(host_set_iteration(self.host, sequences, iteration_s))
            counts[2] += self.host.host_s(sequences)

    def host_tally(self) -> HostTally | None:
        """ServingRun.host: None without an engine's host rule."""
        if self.host is None:
            return None
        n, bound, seconds = self.host_counts
        h = self.host
        return HostTally(
            int(n), int(bound), float(seconds), h.per_iteration_s, h.per_sequence_s, h.overlapped, h.source
        )

    def launch_tally(self) -> dict[str, tuple[int, int, int]] | None:
        """ServingRun.launches: None without an engine's launch rule."""
        return None if self.launch is None else {k: (v[0], v[1], v[2]) for k, v in sorted(self.launches.items())}

    # ---------------------------------------------------------------- result

    def result(self) -> ServingRun:
        warmup = self.spec.workload.warmup_requests
        records = []
        seqs = [seq for seq in self.seqs if seq is not None]
        assert len(seqs) == len(self.seqs)
        for seq, times_s in zip(seqs, token_time_arrays([seq.token_times_s for seq in seqs])):
            records.append(
                RequestRecord(
                    seq.request_id,
                    seq.replica,
                    seq.arrival_s,
                    seq.input_tokens,
                    seq.output_tokens,
                    seq.first_scheduled_s,
                    seq.finish_s,
                    seq.preemptions,
                    seq.request_id < warmup,
                    times_s,
                    seq.cached_tokens,
                    self.requests[seq.request_id].conversation,
                    self.requests[seq.request_id].turn,
                )
            )
        columns = list(zip(*self.rows)) if self.rows else [()] * len(TIMESERIES_COLUMNS)
        timeseries = {
            name: np.array(col, dtype=float if name.endswith("_s") else np.int64)
            for name, col in zip(TIMESERIES_COLUMNS, columns)
        }
        end_s = max(r.finish_s for r in records)
        self.count(0)
        return ServingRun(
            spec=self.spec,
            records=tuple(records),
            timeseries=timeseries,
            end_s=end_s,
            num_iterations=len(self.rows),
            preemptions=sum(s.preemptions for s in self.schedulers),
            peak_kv_blocks=tuple(
                sum(s.kv.peak_used_blocks for s in self.schedulers[r * self.batches : (r + 1) * self.batches])
                for r in range(self.num_replicas)
            ),
            mean_in_system=self.area / end_s if end_s > 0 else math.nan,
            launches=self.launch_tally(),
            host=self.host_tally(),
            balance_held=None if self.balance is None else self.balance.held,
            prefix_cache=None
            if not self.cache_prefixes
            else (
                sum(s.prefix_hit_tokens for s in self.schedulers),
                sum(s.prompt_tokens_admitted for s in self.schedulers),
            ),
        )


def token_time_arrays(times: list[list[float]]) -> list[np.ndarray]:
    """Each request's token times as an array: views of one array converted at once (a conversion per request
    costs several times more on a long run)."""
    lengths = np.fromiter(map(len, times), np.int64, len(times))
    flat = np.fromiter(chain.from_iterable(times), float, int(lengths.sum()))
    return np.split(flat, np.cumsum(lengths)[:-1]) if times else []


def _before(scheduler: Scheduler, step: Step) -> tuple[int, int, int, int, int]:
    """State while an iteration runs: waiting, running, sequences and new tokens in it, KV blocks used."""
    return (
        len(scheduler.waiting),
        len(scheduler.running),
        len(step.seqs),
        batch_tokens(step.batch),
        scheduler.kv.used_blocks,
    )


def _check_stall(scheduler: Scheduler) -> None:
    if scheduler.waiting or scheduler.running:
        raise RuntimeError(
            f"replica {scheduler.replica}: {len(scheduler.waiting)} waiting and "
            f"{len(scheduler.running)} running requests but nothing schedulable (a scheduler bug)"
        )


def _check_requests(spec: ServingSpec, requests: Seq[Request]) -> None:
    closed = spec.workload.arrivals.kind == "closed_loop"
    last_s = 0.0
    for i, r in enumerate(requests):
        if r.request_id != i:
            raise ServingError(f"requests[{i}].request_id = {r.request_id}: number requests 0, 1, 2, ... in order")
        if not closed and not r.turn:  # a conversation's later turns are sent when the turn before ends
            if not r.arrival_s >= last_s:
                raise ServingError(
                    f"requests[{i}].arrival_s = {r.arrival_s} is before the previous request's "
                    f"{last_s}; sort requests by arrival"
                )
            last_s = r.arrival_s
