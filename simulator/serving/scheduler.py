"""Serving scheduling stage: one replica's iteration-level scheduler (static, continuous, chunked prefill mixed
with decodes or in prefill-only iterations).

Each sequence tracks, as vLLM v1 does, `num_tokens` (prompt plus tokens generated so far) and
`num_computed` (tokens whose KV is in the cache). An iteration computes some new tokens of each scheduled
sequence; when a sequence's computed tokens reach its known tokens, it samples one output token. A prefill is
then simply many new tokens, a decode step one, and a preempted sequence (recompute: its blocks are freed and
num_computed reset to 0) re-prefills its prompt and its output so far, then goes on generating.

Policies:
    static           take up to max_num_seqs waiting requests whose whole KV (prompt + output) fits, prefill
                     them in one iteration, decode until all have finished, then take the next batch
                     (FasterTransformer-style; the token budget does not apply; never preempts).
    continuous       vLLM's original prefill-first scheduler: admit waiting requests (FIFO) while they fit
                     max_num_seqs, the token budget and the free KV blocks, and run a prefill-only iteration
                     for them; with none admitted, a decode iteration of every running sequence.
    chunked_prefill  Sarathi-Serve / vLLM's default: a token budget per iteration; decodes first (1 token
                     each), then prefill chunks (<= chunk_size_tokens each) of partially prefilled running
                     requests, then of waiting ones, while budget, max_num_seqs and KV blocks allow.
    prefill_first_chunked
                     SGLang's default (no --enable-mixed-chunk): prefill and decode never share an iteration.
                     While a prompt is partly prefilled or a waiting request can be admitted, the iteration is
                     prefill-only: the pending chunk first, then waiting requests, within the token budget,
                     each prompt cut into chunks of <= chunk_size_tokens; otherwise a decode iteration of every
                     running sequence.

With scheduler.split_prompts false (TensorRT-LLM without chunked context) chunked_prefill and
prefill_first_chunked take a waiting prompt only whole: the first that does not fit what the budget leaves
waits, and the ones behind it too (a recompute longer than the whole budget is still cut, or it could never run).

A running sequence that needs a block when none is free preempts the newest running sequence (possibly
itself); the victim goes back to the front of the waiting queue. With scheduler.preempt fewest_decoded
(SGLang's retract_decode) a decode iteration whose new tokens' blocks are not all free first retracts the
decoding sequences with the fewest output tokens (longest prompt on ties, the newest among equals), at least
one and while more than one is left, until the free KV tokens hold ESTIMATE_RETRACT_STEPS decode steps of
those left; they go to the back of the waiting queue, and a preemption that still happens takes its victim in
the same order. Waiting requests are admitted only when
their blocks fit, and not in an iteration that preempted. With scheduler.admission reserve a request is
admitted only when the blocks of its whole request fit, and then never needs another (no preemption). With
admission estimate (SGLang's PrefillAdder) a waiting request is admitted only while its remaining prompt plus
its remaining output (at most 4096) is below the free KV tokens less the running sequences' remaining outputs
times new_token_ratio and less what this iteration admitted before it (a chunk, or a whole prompt with its
output); the ratio decays with each iteration that decodes, is re-estimated after a preemption and resets when
the replica idles (config.serving's ESTIMATE_* constants, scaled by scheduler.schedule_conservativeness).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from simulator.config.serving import (
    ESTIMATE_CLIP_TOKENS,
    ESTIMATE_RETRACT_STEPS,
    SchedulerSpec,
    estimate_ratios,
    kv_output_tokens,
)
from simulator.serving.kvcache import PagedKVCache
from simulator.serving.pricing import Batch, SeqWork

WAITING, RUNNING, FINISHED = 0, 1, 2


class Sequence:
    """Mutable serving state of one request on one replica."""

    __slots__ = (
        "request_id",
        "arrival_s",
        "input_tokens",
        "output_tokens",
        "num_tokens",
        "num_computed",
        "generated",
        "state",
        "replica",
        "first_scheduled_s",
        "finish_s",
        "preemptions",
        "token_times_s",
        "kv_limit_tokens",
        "prefix_group",
        "cache_tokens",
        "cached_tokens",
    )

    def __init__(
        self, request_id: int, arrival_s: float, input_tokens: int, output_tokens: int, replica: int = 0
    ) -> None:
        self.request_id = request_id
        self.arrival_s = arrival_s
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.num_tokens = input_tokens
        self.num_computed = 0
        self.generated = 0
        self.state = WAITING
        self.replica = replica
        self.first_scheduled_s = math.nan
        self.finish_s = math.nan
        self.preemptions = 0
        self.token_times_s: list[float] = []
        self.kv_limit_tokens: float = 0  # tokens its KV blocks hold; growing past it needs a block (inf: never)
        self.prefix_group = -1  # its shared prefix's group (workload.shared_prefix) or conversation, -1: none
        self.cache_tokens = 0  # its first tokens whose blocks go to its group's cache once computed (its shared
        # prefix; a conversation's turn followed by another: all of it)
        self.cached_tokens = 0  # prompt tokens it read from the cache (over its admissions)


class Step:
    """One iteration as scheduled: its sequences and, in the same order, the batch to price."""

    __slots__ = ("seqs", "batch", "tokens_out", "decodes")

    def __init__(self, seqs: list[Sequence], batch: Batch, decodes: int = 0) -> None:
        self.seqs = seqs
        self.batch = batch
        self.tokens_out = 0  # output tokens sampled, set when the iteration is applied
        self.decodes = decodes  # sequences in it that generate (a token each after their prompt), the rest prefill


class DecodeRun:
    """Iterations that repeat one scheduler's pure decode step: iteration j (0 = the step scheduled) computes one
    token of each of `seqs` over `contexts[i] + j` cached tokens, for at most `iterations` iterations, unless a
    request arrives first. Made by `Scheduler.decode_run`, applied by `Scheduler.finish_run`; an idle scheduler
    of a lockstep group has an empty run of unbounded length."""

    __slots__ = (
        "seqs",
        "contexts",
        "iterations",
        "last",
        "waiting",
        "running",
        "blocks_used",
        "first_block",
        "_sorted",
    )

    def __init__(
        self,
        seqs: list[Sequence],
        first_batch: Batch,
        iterations: float,
        waiting: int,
        blocks_used: np.ndarray | int,
        first_block: np.ndarray | None,
    ) -> None:
        self.seqs = seqs
        self.last = (0, first_batch)  # the last batch made, by iteration
        self.contexts = [w[1] for w in first_batch]
        self.iterations = iterations
        self.waiting = waiting
        self.running = len(seqs)
        self.blocks_used = blocks_used  # KV blocks in use while iteration j runs: an array by j, or one figure
        self.first_block = first_block  # by sequence, the iteration it takes its next block (None: none does)
        self._sorted: np.ndarray | None = None

    @property
    def sorted_contexts(self) -> np.ndarray:
        """The contexts of iteration 0, sorted (int64): iteration j's are these + j, in the same order."""
        if self._sorted is None:
            self._sorted = np.sort(np.asarray(self.contexts, dtype=np.int64))
        return self._sorted

    @property
    def max_context(self) -> int:
        """The longest context of iteration 0 (-1 for an empty run): iteration j's is this + j."""
        ctx = self.sorted_contexts
        return int(ctx[-1]) if len(ctx) else -1

    def batch(self, j: int) -> Batch:
        """The batch iteration j prices (the same sequences, each j tokens further)."""
        made, batch = self.last
        if made != j:
            batch = tuple([_new(SeqWork, (1, c + j)) for c in self.contexts])
            self.last = (j, batch)
        return batch

    def used_blocks(self, j: int) -> int:
        used = self.blocks_used
        return used if isinstance(used, int) else int(used[j])


class Unreferenced:
    """The cached prefixes' units no sequence refers to (Scheduler._unreferenced_units): per group the most units
    its sharers refer to (in_use) and those past them (free, groups with some), the groups with some from the least
    recently used (order), and their sum (total)."""

    __slots__ = ("in_use", "free", "order", "total")

    def __init__(self, in_use: dict[int, int], free: dict[int, int], order: list[int], total: int) -> None:
        self.in_use = in_use
        self.free = free
        self.order = order
        self.total = total


class Scheduler:
    """Waiting queue, running batch and paged KV cache of one replica."""

    #: Recount the unreferenced units at every use and assert the kept state equals them (tests)
    CHECK_UNREFERENCED = False

    def __init__(
        self, spec: SchedulerSpec, replica: int = 0, max_new_tokens: int | None = None, shared_prefixes: bool = False
    ) -> None:
        self.spec = spec
        self.max_new_tokens = max_new_tokens  # the requests' generation cap (workload.max_new_tokens)
        self.replica = replica
        capacity = spec.kv_cache.capacity_blocks
        assert capacity is not None, "kv_cache.capacity_blocks unresolved (serving.capacity.resolve_serving sets it)"
        self.kv = PagedKVCache(capacity, spec.kv_cache.block_size_tokens, spec.kv_cache.sliding)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0
        self.reserve = spec.admission == "reserve"
        self.estimate = spec.admission == "estimate"
        self.retract = spec.preempt == "fewest_decoded"
        self.init_ratio, self.min_ratio, self.ratio_decay = estimate_ratios(spec.schedule_conservativeness)
        self.new_token_ratio = self.init_ratio
        self.now_s = 0.0
        self.arrived = 0  # requests added so far (a decode run ends when one arrives)
        self.active_prompt_tokens = 0  # prompt tokens of its requests not finished (TensorRT-LLM's attention DP)
        # Prefix caching: per group, the prompt tokens of its prefix whose blocks are cached (whole blocks), and
        # over the run the prompt tokens admitted and those read from the cache instead of computed.
        self.prefix = bool(spec.prefix_caching) and shared_prefixes  # nothing to cache without shared prefixes
        self.cached: dict[int, int] = {}
        self.sharing: dict[int, int] = {}  # request id -> the group whose cached blocks it refers to
        self.last_used: dict[int, float] = {}  # per group, when a sequence last took or left its blocks
        self._unreferenced: Unreferenced | None = None  # _unreferenced_units, while it holds
        self.prompt_tokens_admitted = 0
        self.prefix_hit_tokens = 0
        self._decoding = 0  # decodes the schedule being made took (_decodes)
        self._admitted: list[tuple[Sequence, bool]] = []  # (admitted, first time) by the schedule being made
        self._peak_before = 0  # the KV cache's peak before the schedule being made
        self._schedule = {
            "static": self._schedule_static,
            "continuous": self._schedule_continuous,
            "chunked_prefill": self._schedule_chunked,
            "prefill_first_chunked": self._schedule_prefill_first,
        }[spec.policy]

    @property
    def load(self) -> int:
        """Requests on this replica (waiting + running), for the least-loaded router."""
        return len(self.waiting) + len(self.running)

    def add(self, seq: Sequence) -> None:
        """Enqueue an arrived request."""
        seq.replica = self.replica
        self.waiting.append(seq)
        self.arrived += 1
        self.active_prompt_tokens += seq.input_tokens

    def schedule(self, now_s: float) -> Step:
        """Pick the next iteration's work (possibly none) at time now_s."""
        self.now_s = now_s
        self._decoding = 0
        self._admitted = []
        self._peak_before = self.kv.peak_used_units
        seqs, batch = self._schedule()
        if not seqs:  # idle: SGLang resets its estimate (event loop, no batch to run)
            self.new_token_ratio = self.init_ratio
        return Step(seqs, tuple(batch), self._decoding)

    def hold_contexts(self, step: Step) -> Step:
        """The step just scheduled without its context work (prefill chunks, admissions), as TensorRT-LLM's
        attention-DP balance holds a rank's context requests for an iteration: the requests it admitted go
        back to the front of the queue in order, their blocks freed (the KV peak as before), so that the next
        schedule takes them as it would have. Needs policy chunked_prefill (decodes first) and admission
        reserve (a chunk of a running request takes no block, nothing is preempted:
        serving.adp_balance.check_attention_dp_options)."""
        kv, running = self.kv, self.running
        for seq, first in reversed(self._admitted):
            assert running[-1] is seq, "admitted sequences run last"
            running.pop()
            if self.prefix:  # admitted again later, and counted then
                self.prompt_tokens_admitted -= seq.num_tokens
                self.prefix_hit_tokens -= seq.num_computed
            kv.free(seq.request_id)
            if self.prefix:
                self._unshare(seq)
            seq.kv_limit_tokens = 0
            seq.state = WAITING
            if first:
                seq.first_scheduled_s = math.nan
            self.waiting.appendleft(seq)
        kv.peak_used_units = max(self._peak_before, kv.used_units)
        self._admitted = []
        n = step.decodes
        return Step(step.seqs[:n], step.batch[:n], n)

    def complete(self, step: Step, now_s: float) -> list[Sequence]:
        """Apply a finished iteration at time now_s: advance KV, emit tokens, free finished sequences."""
        finished = []
        tokens_out = 0
        for seq, work in zip(step.seqs, step.batch):
            computed = seq.num_computed = seq.num_computed + work[0]
            if computed == seq.num_tokens:
                tokens_out += 1
                seq.num_tokens = computed + 1
                seq.token_times_s.append(now_s)
                seq.generated += 1
                if seq.generated == seq.output_tokens:
                    seq.state = FINISHED
                    seq.finish_s = now_s
                    seq.kv_limit_tokens = 0
                    self.kv.free(seq.request_id)
                    if self.prefix:
                        self._unshare(seq)
                    self.active_prompt_tokens -= seq.input_tokens
                    finished.append(seq)
        step.tokens_out = tokens_out
        if self.prefix:
            self._cache_prefixes(step.seqs)
        if finished:
            self.running = [s for s in self.running if s.state == RUNNING]
        return finished

    def _cache_prefixes(self, seqs: list[Sequence]) -> None:
        """Prefix caching: the whole blocks of its cache_tokens (a shared prefix; a conversation's turn followed by
        another: all of it) a sequence has just computed, beyond what its group has cached, go to the cache (its
        own blocks, handed over: PagedKVCache.pin)."""
        size = self.kv.block_size_tokens
        for seq in seqs:
            group = seq.prefix_group
            if group < 0:
                continue
            full = min(seq.num_computed, seq.cache_tokens) // size * size
            cached = self.cached.get(group, 0)
            if full > cached:
                if seq.state != FINISHED:
                    self.kv.pin(seq.request_id, (full - cached) // size)
                    self._share(seq)
                else:  # its blocks were freed as it finished, this iteration: the cache keeps them
                    self.kv.keep((full - cached) // size)
                    self.last_used[group] = self.now_s
                self.cached[group] = full
                self._unreferenced = None

    # ---------------------------------------------------------------- runs of pure decode steps

    def decode_run(self, step: Step, preemptions_before: int, waiting_before: int) -> DecodeRun | None:
        """The run of iterations that would schedule `step` again, each one token further, until one of its
        sequences finishes, or None when the next schedule may differ otherwise (nothing to gain below 2).

        The step (just scheduled; preemptions_before and waiting_before: the counts before it was) qualifies
        when it preempted and admitted nothing and computes the last token of every running sequence. With no
        arrival, each later schedule then takes the same sequences: their decodes come first in every policy,
        and a waiting request refused now is refused later, since the token budget and max_num_seqs do not
        change and the free KV blocks only shrink (admission estimate, whose room grows as its ratio decays,
        qualifies only with nobody waiting). The run ends before the first iteration whose new blocks would
        not all be free (the scheduler would preempt or retract there). Iteration j's KV blocks in use are
        counted from the blocks each sequence takes. With prefix caching and a request waiting, a step that caches
        more of a prefix when done starts no run (the waiting request may then start from it)."""
        seqs = step.seqs
        if self.preemptions != preemptions_before or len(self.waiting) != waiting_before:
            return None
        if not seqs:  # an idle replica of a lockstep group: idle again until a request arrives
            return None if self.waiting or self.running else DecodeRun([], (), math.inf, 0, self.kv.used_blocks, None)
        batch = step.batch
        if len(seqs) != len(self.running) or (self.waiting and self.estimate) or max(batch)[0] != 1:
            return None
        iterations = min([s.output_tokens - s.generated for s in seqs])
        if iterations < 2:
            return None
        for s in seqs:
            if s.num_tokens - s.num_computed != 1:  # a prefill chunk of one token samples nothing
                return None
        if self.prefix and self.waiting and self._caches_more(seqs):  # a waiting request may start from it
            return None
        kv = self.kv
        run = DecodeRun(seqs, batch, iterations, waiting_before, kv.used_blocks, None)
        limits = np.array([s.kv_limit_tokens for s in seqs], dtype=float)
        first = limits - np.array(run.contexts)  # iterations until each needs its next block
        if float(first.min()) >= iterations:
            return run
        # Sequence i takes blocks at iterations first[i], first[i] + block_size_tokens, ... (kv_limit_tokens is
        # its whole blocks); each takes a unit per layer that still grows (with sliding-window layers, those
        # whose window its blocks do not yet fill). The run ends before the first iteration whose units are
        # not all free, or, retracting (preempt fewest_decoded), whose growing sequences outnumber the free
        # whole blocks (_retract would take some).
        size, sliding = kv.block_size_tokens, kv.sliding
        grows = first < iterations
        k = np.arange(-(-iterations // size))  # the k-th block each takes
        at = first[grows].astype(np.int64)[:, None] + size * k  # when
        keep = at < iterations
        count = np.bincount(at[keep], minlength=iterations)
        units = count
        if sliding is not None:
            new_blocks = (limits[grows].astype(np.int64) // size)[:, None] + k + 1  # blocks held after it
            per = sliding.full_layers + sliding.sliding_layers * (new_blocks <= sliding.window_blocks(size))
            keep &= per > 0  # every layer slides and the window is full: it never takes another
            count = np.bincount(at[keep], minlength=iterations)
            units = np.bincount(at[keep], weights=per[keep], minlength=iterations).astype(np.int64)
        taken = np.cumsum(units)
        free = kv.capacity_units - kv.used_units
        short = taken > free
        if self.retract:
            short |= (free - (taken - units)) // kv.per_block < count
        stop = np.flatnonzero(short)
        if stop.size:
            iterations = int(stop[0])
            if iterations < 2:
                return None
            taken = taken[:iterations]
        run.iterations = iterations
        run.blocks_used = -(-(kv.used_units + taken) // kv.per_block)
        run.first_block = first
        return run

    def finish_run(self, run: DecodeRun, ends_s: list[float]) -> Step:
        """Apply the first len(ends_s) - 1 iterations of `run` (they ended at ends_s) as `complete` would have
        one by one, and schedule the last as `schedule` would have (its blocks taken); returns the last step,
        for `complete`."""
        m = len(ends_s)
        seqs = run.seqs
        if m > 1 and seqs:
            k = m - 1
            head = ends_s[:-1]
            for seq in seqs:
                seq.num_computed += k
                seq.num_tokens += k
                seq.generated += k
                seq.token_times_s.extend(head)
            if run.first_block is not None:  # the blocks through iteration m - 1: context + m tokens each
                kv, contexts = self.kv, run.contexts
                for i in np.flatnonzero(run.first_block < m).tolist():
                    seq = seqs[i]
                    grown = kv.grow(seq.request_id, contexts[i] + m)
                    assert grown, "a decode run took a block that was not free"
                    seq.kv_limit_tokens = kv.tokens_held(seq.request_id)
            if self.estimate and self.spec.policy != "static":  # _decodes' decay, once per iteration
                for _ in range(k):
                    self.new_token_ratio = max(self.new_token_ratio - self.ratio_decay, self.min_ratio)
        if not seqs:
            self.new_token_ratio = self.init_ratio  # schedule() found nothing to run
        return Step(seqs, run.batch(m - 1), len(seqs))

    # ---------------------------------------------------------------- building blocks

    def _share(self, seq: Sequence) -> None:
        """seq refers to its group's cached blocks (its first PagedKVCache.shared units of them)."""
        self.sharing[seq.request_id] = seq.prefix_group
        self.last_used[seq.prefix_group] = self.now_s
        self._unreferenced = None

    def _unshare(self, seq: Sequence) -> None:
        """seq's blocks were freed: it no longer refers to its group's cached blocks."""
        group = self.sharing.pop(seq.request_id, None)
        if group is not None:
            self.last_used[group] = self.now_s
            self._unreferenced = None

    def _unreferenced_units(self) -> Unreferenced:
        """Per group, the units of its cached prefix no sequence refers to (vLLM's free cached blocks, SGLang's
        evictable radix nodes): those past the most any sequence sharing them refers to; kept between the changes
        of who shares what and what is cached (_share, _unshare, _cache_prefixes drop it) and updated in place by
        _evict, so that a schedule's many block allocations with a full cache do not recount every group."""
        state = self._unreferenced
        if state is None or self.CHECK_UNREFERENCED:
            kv, size = self.kv, self.kv.block_size_tokens
            in_use: dict[int, int] = {}
            for request_id, group in self.sharing.items():
                in_use[group] = max(in_use.get(group, 0), kv.shared(request_id))
            free = {}
            for group, tokens in self.cached.items():
                units = tokens // size - in_use.get(group, 0)
                if units > 0:
                    free[group] = units
            order = sorted(free, key=lambda g: (self.last_used[g], g))
            fresh = Unreferenced(in_use, free, order, sum(free.values()))
            if state is not None:  # CHECK_UNREFERENCED: the kept state must be what counting again gives
                assert (state.in_use, state.free, state.order, state.total) == (in_use, free, order, fresh.total)
            state = self._unreferenced = fresh
        return state

    def _own_units(self, state: Unreferenced, growing: Sequence) -> int:
        """The unreferenced units of growing's (cached) group with growing counted among its sharers."""
        group = growing.prefix_group
        used = max(state.in_use.get(group, 0), self.kv.shared(growing.request_id))
        return self.cached[group] // self.kv.block_size_tokens - used

    def _evict(self, units: int, growing: Sequence) -> bool:
        """Evict cached blocks no sequence refers to, the least recently used group's first and each group's from
        its end, until `units` more units are free for `growing`; False (and nothing evicted) when evicting all of
        them would not do."""
        kv = self.kv
        need = units - (kv.capacity_units - kv.used_units)
        if need <= 0:
            return False
        state = self._unreferenced_units()
        own = growing.prefix_group
        own_units = None  # growing's group's units with growing among its sharers, where that differs
        if own >= 0 and own in self.cached:
            units_left = max(self._own_units(state, growing), 0)
            if units_left != state.free.get(own, 0):
                own_units = units_left
        total = state.total if own_units is None else state.total - state.free.get(own, 0) + own_units
        if total < need:
            return False
        size, free, order = kv.block_size_tokens, state.free, state.order
        i = 0
        while need > 0:
            group = order[i]
            available = free[group] if own_units is None or group != own else own_units
            if available <= 0:
                i += 1
                continue
            taken = min(available, need)
            kv.unpin(taken)
            left = self.cached[group] - taken * size
            if left:
                self.cached[group] = left
            else:
                del self.cached[group]
            need -= taken
            state.total -= taken
            free[group] -= taken
            if free[group]:
                i += 1
            else:
                del free[group]
                order.pop(i)
        return True

    def _caches_more(self, seqs: list[Sequence]) -> bool:
        """Whether the step just scheduled (one token each of `seqs`) will cache more of a prefix that a waiting
        request shares (it may then start from it) when done."""
        size = self.kv.block_size_tokens
        waiting = {s.prefix_group for s in self.waiting}
        return any(
            s.prefix_group in waiting
            and min(s.num_computed + 1, s.cache_tokens) // size * size > self.cached.get(s.prefix_group, 0)
            for s in seqs
        )

    def _cached_start(self, seq: Sequence) -> int:
        """Prefix caching: a waiting sequence starts at its group's cached prefix (whole blocks, short of its last
        prompt token, which is computed to sample), referring to those blocks. Returns the tokens it computes
        first: its whole prompt (or recompute) without them."""
        if self.prefix and seq.prefix_group >= 0:
            size = self.kv.block_size_tokens
            hit = min(self.cached.get(seq.prefix_group, 0), (seq.num_tokens - 1) // size * size)
            seq.num_computed = hit
            self.kv.share(seq.request_id, hit // size)
        return seq.num_tokens - seq.num_computed

    def _admit(self, seq: Sequence) -> None:
        self.waiting.popleft()
        if self.prefix:
            self.prompt_tokens_admitted += seq.num_tokens
            self.prefix_hit_tokens += seq.num_computed
            seq.cached_tokens += seq.num_computed
            if seq.num_computed:
                self._share(seq)
        seq.state = RUNNING
        first = seq.first_scheduled_s != seq.first_scheduled_s  # NaN: scheduled for the first time
        if first:
            seq.first_scheduled_s = self.now_s
        self.running.append(seq)
        self._admitted.append((seq, first))

    def admission_kv_tokens(self, seq: Sequence, n: int) -> int:
        """KV tokens a waiting request must get to be admitted with n new tokens: n, or with admission reserve
        its whole request (prompt + output - 1, the output being the generation cap when the requests carry
        one: the engine cannot know where an output ends), so it never needs a block again."""
        if not self.reserve:
            return n
        return seq.input_tokens + kv_output_tokens(seq.output_tokens, self.max_new_tokens, "reserve") - 1

    def _grow(self, seq: Sequence, kv_tokens: int) -> bool:
        kv = self.kv
        if not kv.grow(seq.request_id, kv_tokens):
            if not (self.prefix and self._evict(kv.extra_blocks(seq.request_id, kv_tokens), seq)):
                return False
            grown = kv.grow(seq.request_id, kv_tokens)
            assert grown, "eviction freed too little"
        seq.kv_limit_tokens = kv.tokens_held(seq.request_id)
        return True

    def _max_new(self, seq: Sequence) -> int:
        """The output the engine knows a request may generate: its cap (workload.max_new_tokens), else its own
        length (the benchmark clients ask for exactly the tokens they expect)."""
        return kv_output_tokens(seq.output_tokens, self.max_new_tokens, "reserve")

    def _remaining_out(self, seq: Sequence) -> int:
        return min(max(self._max_new(seq) - seq.generated, 0), ESTIMATE_CLIP_TOKENS)

    def _estimate_room(self) -> float:
        """SGLang's rem_total_tokens when a prefill batch starts: the free KV tokens less the running sequences'
        remaining outputs times new_token_ratio."""
        kv = self.kv
        offset = sum(self._remaining_out(s) for s in self.running) * self.new_token_ratio
        return self._free_blocks() * kv.block_size_tokens - offset

    def _free_blocks(self) -> int:
        """Whole blocks free, with those of cached prefixes no sequence refers to (they are evicted on demand)."""
        kv = self.kv
        if not self.prefix:
            return kv.free_blocks
        return (kv.capacity_units - kv.used_units + self._unreferenced_units().total) // kv.per_block

    def _reestimate(self) -> None:
        """After a preemption (SGLang's retract_decode): (decoded + 20 x running) / their max new tokens, <= 1."""
        running = self.running
        decoded = sum(s.generated for s in running)
        max_new = sum(self._max_new(s) for s in running)
        self.new_token_ratio = min(1.0, (decoded + ESTIMATE_RETRACT_STEPS * len(running)) / (max_new + 1))

    def _preempt(self, victim: Sequence) -> None:
        """Free a running sequence's blocks and queue it again to be recomputed: at the front (vLLM), or at
        the back when retracted (SGLang's _extend_requests_to_queue)."""
        running = self.running
        if running[-1] is victim:
            running.pop()
        else:
            running.remove(victim)
        self.kv.free(victim.request_id)
        if self.prefix:
            self._unshare(victim)
        victim.kv_limit_tokens = 0
        victim.num_computed = 0
        victim.state = WAITING
        victim.preemptions += 1
        self.preemptions += 1
        if self.retract:
            self.waiting.append(victim)
        else:
            self.waiting.appendleft(victim)

    def _victim(self, among: list[Sequence]) -> Sequence:
        """The sequence to preempt: the newest, or with preempt fewest_decoded the one retract_decode pops: the
        fewest output tokens, then the longest prompt, then the newest (its sort is stable)."""
        if not self.retract:
            return among[-1]
        best, best_key = among[0], (among[0].generated, -among[0].input_tokens)
        for seq in among:  # <=: among equal keys the newest (last) is the victim
            key = (seq.generated, -seq.input_tokens)
            if key <= best_key:
                best, best_key = seq, key
        return best

    def _retract(self) -> None:
        """SGLang's update_running_batch before a decode iteration (preempt fewest_decoded): when the blocks
        of the decoding sequences' next tokens are not all free (check_decode_mem), retract sequences (at least
        one, while more than one is left) until the free KV tokens hold ESTIMATE_RETRACT_STEPS decode steps of
        those left."""
        kv = self.kv
        decoding = [s for s in self.running if s.num_tokens - s.num_computed == 1]
        need = sum(1 for s in decoding if s.num_computed >= s.kv_limit_tokens)
        if len(decoding) <= 1 or self._free_blocks() >= need:
            return
        while len(decoding) > 1:
            victim = self._victim(decoding)
            decoding.remove(victim)
            self._preempt(victim)
            if self._free_blocks() * kv.block_size_tokens >= ESTIMATE_RETRACT_STEPS * len(decoding):
                break
        if self.estimate:
            self._reestimate()

    def _grow_or_preempt(self, seq: Sequence, kv_tokens: int, seqs: list[Sequence], batch: list[SeqWork]) -> bool:
        """Grow seq's KV to kv_tokens, preempting running sequences (_victim's order) while blocks are short.
        Returns False when seq itself was preempted. A victim already scheduled is taken out of the step."""
        preempted, grown = False, True
        while not self._grow(seq, kv_tokens):
            victim = self._victim(self.running)
            self._preempt(victim)
            preempted = True
            if victim in seqs:  # scheduled already: rare (only a prefill chunk preempts a decode)
                i = seqs.index(victim)
                self._budget += batch[i][0]
                del seqs[i], batch[i]
            if victim is seq:
                grown = False
                break
        if preempted and self.estimate:
            self._reestimate()
        return grown

    def _decodes(self, seqs: list[Sequence], batch: list[SeqWork], partial: list[Sequence]) -> None:
        """Schedule one token of each running sequence in decode phase, in order; the others (partially
        prefilled) go to `partial`. Preempts (_victim's order) when blocks run out; with preempt fewest_decoded
        retracts first (_retract)."""
        append_seq, append_work = seqs.append, batch.append
        preempted_before = self.preemptions
        if self.retract:
            self._retract()
        # Newest first, iterating while _grow_or_preempt pops from the end is safe: the loop just ends sooner.
        # Retraction order may take any sequence: iterate a copy and skip the ones it took.
        for seq in list(self.running) if self.retract else self.running:
            computed = seq.num_computed
            if seq.state != RUNNING:
                continue
            if seq.num_tokens - computed != 1:
                partial.append(seq)
            elif computed < seq.kv_limit_tokens or self._grow_or_preempt(seq, computed + 1, seqs, batch):
                append_seq(seq)
                append_work(_new(SeqWork, (1, computed)))
        self._decoding = len(seqs)
        self._budget -= len(seqs)
        # SGLang's update_running_batch decays the estimate with each decode step that retracted nothing (a
        # retraction sets it anew).
        if self.estimate and seqs and self.preemptions == preempted_before:
            self.new_token_ratio = max(self.new_token_ratio - self.ratio_decay, self.min_ratio)

    # ---------------------------------------------------------------- policies

    def _schedule_static(self) -> tuple[list[Sequence], list[SeqWork]]:
        running = self.running
        if running:
            self._decoding = len(running)
            return list(running), [_new(SeqWork, (1, s.num_computed)) for s in running]
        waiting, limit = self.waiting, self.spec.max_num_seqs
        while waiting and len(running) < limit:
            seq = waiting[0]
            # Reserve the whole request's KV up front, so the batch never preempts.
            if not self._grow(seq, seq.input_tokens + seq.output_tokens - 1):
                break
            self._admit(seq)
        return list(running), [_new(SeqWork, (s.num_tokens, 0)) for s in running]

    def _schedule_continuous(self) -> tuple[list[Sequence], list[SeqWork]]:
        spec, waiting, running = self.spec, self.waiting, self.running
        budget = spec.max_num_batched_tokens
        seqs: list[Sequence] = []
        batch: list[SeqWork] = []
        room = self._estimate_room() if self.estimate else math.inf
        while waiting and len(running) < spec.max_num_seqs:
            seq = waiting[0]
            n = self._cached_start(seq)
            computed = seq.num_computed
            if self.estimate:
                out = self._remaining_out(seq)
                if n + out >= room:
                    break
                room -= n + out
            if n > budget or not self._grow(seq, self.admission_kv_tokens(seq, computed + n)):
                break
            self._admit(seq)
            seqs.append(seq)
            batch.append(_new(SeqWork, (n, computed)))
            budget -= n
        if not seqs:
            self._budget = budget
            self._decodes(seqs, batch, [])
        return seqs, batch

    def _schedule_chunked(self) -> tuple[list[Sequence], list[SeqWork]]:
        chunk = self.spec.chunk_tokens
        self._budget = self.spec.max_num_batched_tokens
        seqs: list[Sequence] = []
        batch: list[SeqWork] = []
        partial: list[Sequence] = []
        preempted_before = self.preemptions
        self._decodes(seqs, batch, partial)
        for seq in partial:
            if seq.state != RUNNING or self._budget <= 0:
                continue
            computed = seq.num_computed
            n = min(seq.num_tokens - computed, chunk, self._budget)
            if self._grow_or_preempt(seq, computed + n, seqs, batch):
                seqs.append(seq)
                batch.append(_new(SeqWork, (n, computed)))
                self._budget -= n
        if self.preemptions == preempted_before:
            self._admit_chunks(seqs, batch)
        return seqs, batch

    def _admit_chunks(self, seqs: list[Sequence], batch: list[SeqWork]) -> None:
        """Admit waiting requests (FIFO) with their first chunk while the budget, max_num_seqs and KV allow."""
        spec = self.spec
        waiting, chunk, limit = self.waiting, spec.chunk_tokens, spec.max_num_seqs
        room = self._estimate_room() if self.estimate else math.inf
        while waiting and self._budget > 0 and len(self.running) < limit:
            seq = waiting[0]
            todo = self._cached_start(seq)  # the prompt (or recompute) less a cached prefix
            computed = seq.num_computed
            if not spec.split_prompts and todo <= spec.max_num_batched_tokens:
                if todo > self._budget:  # whole or not at all; FIFO: the rest wait behind it
                    break
                n = todo
            else:  # a recompute longer than the whole budget is still cut, or it could never run
                n = min(todo, chunk, self._budget)
            if self.estimate:
                out = self._remaining_out(seq)
                if todo + out >= room:  # PrefillAdder.add_one_req: AddReqResult.NO_TOKEN
                    break
                room -= n + (out if n == todo else 0)  # a cut prompt adds only its chunk
            if not self._grow(seq, self.admission_kv_tokens(seq, computed + n)):
                break
            self._admit(seq)
            seqs.append(seq)
            batch.append(_new(SeqWork, (n, computed)))
            self._budget -= n

    def _schedule_prefill_first(self) -> tuple[list[Sequence], list[SeqWork]]:
        chunk = self.spec.chunk_tokens
        self._budget = self.spec.max_num_batched_tokens
        seqs: list[Sequence] = []
        batch: list[SeqWork] = []
        preempted_before = self.preemptions
        for seq in list(self.running):  # a copy: growing a chunk may preempt (pop) from the end
            computed = seq.num_computed
            if seq.state != RUNNING or seq.num_tokens - computed == 1 or self._budget <= 0:
                continue  # decode phase (one token to compute), preempted meanwhile, or no budget left
            n = min(seq.num_tokens - computed, chunk, self._budget)
            if self._grow_or_preempt(seq, computed + n, seqs, batch):
                seqs.append(seq)
                batch.append(_new(SeqWork, (n, computed)))
                self._budget -= n
        if self.preemptions == preempted_before:
            self._admit_chunks(seqs, batch)
        if not seqs:
            self._decodes(seqs, batch, [])
        return seqs, batch


_new = tuple.__new__  # SeqWork without NamedTuple's Python-level __new__: this is the hot loop
