"""Serving engine stage, disaggregated: a prefill pool and a decode pool on one SimPy environment, and the KV
transfers between them as flows over the GPUs' link ports, sharing bandwidth (max-min fair).

A request arrives (the same workload generators), is routed to a prefill instance and prefilled there by that
instance's scheduler (continuous batching, chunked prefill as configured; serving.simulate.ServingModel with
one output token per request: the prefill samples the first token). Its decode instance is chosen then
(round robin or least loaded); once that instance has a sequence slot (max_num_seqs counts running, waiting
and arriving sequences) and the free KV blocks for the prompt, the transfer starts: after the links' latency,
one flow per (prefill GPU, decode GPU) pair (serving.kv_transfer) over the ports it crosses (the source GPU's
out port and the destination GPU's in port, NVLink inside a node, the NIC across nodes). The prefill
instance holds the request's KV blocks until the last byte has left. At the end of the transfer the first
token reaches the user (TTFT includes the transfer) and the sequence joins the decode instance's running
batch; the decode pool's scheduler then computes one token per iteration as in an aggregated replica
(a preempted sequence is recomputed there, prompt included).

Flows share a port's bandwidth max-min fairly (progressive filling, recomputed when a flow starts or ends), so
two transfers on one port each take twice as long as one alone. Events are O(requests + iterations + flows).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np
import simpy

from simulator.config.serving import ESTIMATE_RESERVED_DECODE_TOKENS, ServingSpec
from simulator.serving.link_network import Fabric, LinkNetwork
from simulator.serving.pricing import IterationPricer
from simulator.serving.scheduler import RUNNING, Scheduler, Sequence
from simulator.serving.simulate import (
    TIMESERIES_COLUMNS,
    TRANSFER_COLUMNS,
    DisaggregatedRun,
    HostTally,
    RequestRecord,
    RequestSource,
    ServingModel,
    ServingRun,
    token_time_arrays,
)
from simulator.serving.workload import Request

# ---------------------------------------------------------------- the pools


class PrefillPool(ServingModel):
    """The prefill instances: requests of one output token; a finished prefill is handed to `on_prefilled`.
    With `hold_kv`, its KV blocks stay allocated until `release` (the end of its transfer)."""

    def __init__(
        self,
        spec: ServingSpec,
        pricer: IterationPricer,
        requests: Seq[Request],
        env: simpy.Environment,
        on_prefilled: Callable[[Sequence], None],
        hold_kv: bool,
    ) -> None:
        super().__init__(
            spec,
            pricer,
            [Request(r.request_id, r.arrival_s, r.input_tokens, 1) for r in requests],
            env,
            fast_forward=False,
        )
        for scheduler in self.schedulers:  # a prefill instance's request generates one token: nothing to reserve
            scheduler.max_new_tokens = None
        self.on_prefilled = on_prefilled
        self.hold_kv = hold_kv
        self.held = [0] * len(self.schedulers)  # KV of finished prefills still being sent, per scheduler

    def check_stall(self, scheduler: Scheduler) -> None:
        if not self.held[self.schedulers.index(scheduler)]:  # else blocks come free when a transfer ends
            super().check_stall(scheduler)

    def finished(self, done: list[Sequence]) -> None:
        self.num_finished += len(done)
        for seq in done:
            if self.hold_kv:
                index = self.scheduler_of[seq.request_id]
                self.schedulers[index].kv.grow(seq.request_id, seq.input_tokens)
                self.held[index] += 1
            self.on_prefilled(seq)

    def release(self, request_id: int) -> None:
        """Free a held prefill KV (its transfer ended) and wake its scheduler's loop."""
        index = self.scheduler_of[request_id]
        self.schedulers[index].kv.free(request_id)
        self.held[index] -= 1
        self.wake_loop(index)

    def wake_loop(self, index: int) -> None:
        wake = self.wake[index]
        if wake is not None:
            self.wake[index] = None
            wake.succeed()


class DecodePool(ServingModel):
    """The decode instances: sequences arrive prefilled (their prompt's KV and first token) from transfers.
    `assign` picks the instance and queues the sequence until its blocks and slot are free; then
    `start_transfer(seq, scheduler index)` is called, and `arrive` ends the transfer."""

    def __init__(
        self,
        spec: ServingSpec,
        pricer: IterationPricer,
        requests: Seq[Request],
        env: simpy.Environment,
        on_finished: Callable[[list[Sequence]], None],
    ) -> None:
        super().__init__(spec, pricer, requests, env, fast_forward=False)  # transfers add sequences and take blocks
        self.on_finished = on_finished
        self.start_transfer: Callable[[Sequence, int], None] = lambda seq, index: None
        self.pending: list[deque[Sequence]] = [deque() for _ in self.schedulers]
        self.arriving = [0] * len(self.schedulers)

    def check_stall(self, scheduler: Scheduler) -> None:
        if not self.arriving[self.schedulers.index(scheduler)]:  # else a transfer brings work
            super().check_stall(scheduler)

    def load(self, index: int) -> int:
        return self.schedulers[index].load + len(self.pending[index]) + self.arriving[index]

    def assign(self, prefilled: Sequence) -> None:
        """Route a prefilled request to a decode instance (the pool's router), then to the instance's pipeline
        batch with the fewest requests; start its transfer when it fits, else queue it there."""
        b, n = self.batches, self.num_replicas
        if self.spec.replicas.router == "round_robin":
            r = self.rr % n
            self.rr += 1
        else:
            r = min(range(n), key=lambda i: sum(self.load(k) for k in range(i * b, (i + 1) * b)))
        index = min(range(r * b, (r + 1) * b), key=self.load)
        seq = Sequence(prefilled.request_id, prefilled.arrival_s, prefilled.input_tokens, 0, r)
        seq.output_tokens = self.requests[prefilled.request_id].output_tokens
        seq.num_computed = prefilled.input_tokens
        seq.num_tokens = prefilled.input_tokens + 1
        seq.generated = 1
        seq.first_scheduled_s = prefilled.first_scheduled_s
        seq.preemptions = prefilled.preemptions
        self.seqs[seq.request_id] = seq
        self.scheduler_of[seq.request_id] = index
        self.pending[index].append(seq)
        self.admit(index)

    def admit(self, index: int) -> None:
        """Start the transfers of the queued sequences that now fit, in order (after any preempted ones). What
        fits follows the pool's admission: on_demand the prompt's blocks; reserve the blocks of the whole request
        (prompt and output, TensorRT-LLM's GUARANTEED_NO_EVICT), which then never needs another; estimate
        (SGLang's decode instance, DecodePreallocQueue) the prompt's blocks, only while the prompt plus
        ESTIMATE_RESERVED_DECODE_TOKENS fits the free KV tokens less as many for every request running, waiting
        or arriving there."""
        scheduler, queue = self.schedulers[index], self.pending[index]
        limit = scheduler.spec.max_num_seqs
        kv = scheduler.kv
        estimate = scheduler.spec.admission == "estimate"
        reserved = ESTIMATE_RESERVED_DECODE_TOKENS
        while queue and not scheduler.waiting:
            seq = queue[0]
            if len(scheduler.running) + self.arriving[index] >= limit:
                return
            if estimate:
                held = len(scheduler.running) + len(scheduler.waiting) + self.arriving[index]
                if seq.num_computed + reserved > kv.free_blocks * kv.block_size_tokens - reserved * held:
                    return
            if not kv.grow(seq.request_id, scheduler.admission_kv_tokens(seq, seq.num_computed)):
                return
            queue.popleft()
            self.arriving[index] += 1
            self.start_transfer(seq, index)

    def arrive(self, seq: Sequence, first_token_s: float) -> None:
        """The transfer ended: the first token reaches the user, the sequence joins the running batch."""
        index = self.scheduler_of[seq.request_id]
        scheduler: Scheduler = self.schedulers[index]
        self.arriving[index] -= 1
        seq.token_times_s.append(first_token_s)
        seq.state = RUNNING
        seq.kv_limit_tokens = scheduler.kv.tokens_held(seq.request_id)
        scheduler.running.append(seq)
        wake = self.wake[index]
        if wake is not None:
            self.wake[index] = None
            wake.succeed()

    def finished(self, done: list[Sequence]) -> None:
        self.num_finished += len(done)
        if done:
            self.on_finished(done)
        for index, queue in enumerate(self.pending):
            if queue:
                self.admit(index)


# ---------------------------------------------------------------- the deployment


@dataclass(frozen=True)
class DisaggregatedInputs:
    """Everything the simulation needs: the run's spec (workload, targets; scheduler: the decode pool's), each
    pool's resolved spec (replicas = instances, KV blocks) and pricer, and the transfer fabric."""

    spec: ServingSpec
    prefill_spec: ServingSpec
    decode_spec: ServingSpec
    prefill_pricer: IterationPricer
    decode_pricer: IterationPricer
    fabric: Fabric


def simulate_disaggregated_requests(inputs: DisaggregatedInputs, requests: Seq[Request]) -> ServingRun:
    """Serve `requests` (in arrival order; NaN arrivals in a closed loop) on the two pools (module docstring)."""
    return _Disaggregated(inputs, requests).run()


class _Disaggregated(RequestSource):
    def __init__(self, inputs: DisaggregatedInputs, requests: Seq[Request]) -> None:
        self.inputs = inputs
        self.requests = requests
        self.env = env = simpy.Environment()
        self.fabric = inputs.fabric
        self.instant = inputs.fabric.instant
        self.network = LinkNetwork(env, inputs.fabric.link_bytes_per_s)
        self.prefill = PrefillPool(
            inputs.prefill_spec, inputs.prefill_pricer, requests, env, self.prefilled, hold_kv=not self.instant
        )
        self.decode = DecodePool(inputs.decode_spec, inputs.decode_pricer, requests, env, self.decoded)
        self.decode.start_transfer = self.start_transfer
        self.done: list[Sequence | None] = [None] * len(requests)
        self.transfers: list[tuple] = []
        self.arrivals = inputs.spec.workload.arrivals
        self.warmup_requests = inputs.spec.workload.warmup_requests
        self.init_source()
        self.ready_s = [math.nan] * len(requests)

    def run(self) -> ServingRun:
        self.start_arrivals()
        for pool in (self.prefill, self.decode):
            pool.start_loops()  # pools run independent instances
        self.run_to_end("disaggregated serving")
        return self.result()

    # ---------------------------------------------------------------- arrivals, hand-over, finish

    def accept(self, request: Request, arrival_s: float) -> None:
        self.count(+1)
        self.prefill.route(Request(request.request_id, arrival_s, request.input_tokens, 1), arrival_s)

    def prefilled(self, seq: Sequence) -> None:
        self.ready_s[seq.request_id] = self.env.now
        if self.requests[seq.request_id].output_tokens == 1:  # done at its prefill: nothing to move
            seq.output_tokens = 1
            if self.prefill.hold_kv:
                self.prefill.release(seq.request_id)
            self.finish([seq])
            return
        self.decode.assign(seq)

    def decoded(self, done: list[Sequence]) -> None:
        self.finish(done)

    def finish(self, done: list[Sequence]) -> None:
        for seq in done:
            self.done[seq.request_id] = seq
            self.left(seq.request_id)

    # ---------------------------------------------------------------- transfers

    def start_transfer(self, seq: Sequence, decode_index: int) -> None:
        p_instance = self.prefill.seqs[seq.request_id].replica  # type: ignore[union-attr]
        d_instance = decode_index // self.decode.batches
        if self.instant:
            self.transferred(seq, p_instance, d_instance, self.env.now, 0.0)
            return
        self.env.process(self.transfer(seq, p_instance, d_instance))

    def transfer(self, seq: Sequence, p_instance: int, d_instance: int):
        env, key = self.env, (p_instance, d_instance)
        start_s = env.now
        latency_s = self.fabric.latency_s[key]
        if latency_s > 0:
            yield env.timeout(latency_s)
        tokens = seq.num_computed
        routes = self.fabric.routes[key]
        sizes = [r.num_bytes(tokens) for r in routes]
        events = [self.network.send(size, r.links) for size, r in zip(sizes, routes)]
        yield env.all_of(events)
        self.prefill.release(seq.request_id)
        self.transferred(seq, p_instance, d_instance, start_s, sum(sizes))

    def transferred(self, seq: Sequence, p_instance: int, d_instance: int, start_s: float, num_bytes: float) -> None:
        rid = seq.request_id
        self.transfers.append((rid, p_instance, d_instance, self.ready_s[rid], start_s, self.env.now, num_bytes))
        self.decode.arrive(seq, self.env.now)

    # ---------------------------------------------------------------- result

    def result(self) -> ServingRun:
        inputs, x = self.inputs, self.prefill.num_replicas
        warmup = inputs.spec.workload.warmup_requests
        records = []
        done = [seq for seq in self.done if seq is not None]
        assert len(done) == len(self.done)
        for seq, times_s in zip(done, token_time_arrays([seq.token_times_s for seq in done])):
            prefilled = self.prefill.seqs[seq.request_id]
            assert prefilled is not None
            on_decode = seq is not prefilled
            records.append(
                RequestRecord(
                    seq.request_id,
                    x + seq.replica if on_decode else prefilled.replica,
                    prefilled.arrival_s,
                    prefilled.input_tokens,
                    self.requests[seq.request_id].output_tokens,
                    prefilled.first_scheduled_s,
                    seq.finish_s,
                    seq.preemptions,  # a decode sequence starts with its prefill's count
                    seq.request_id < warmup,
                    times_s,
                )
            )
        rows = list(self.prefill.rows)
        rows += [(row[0], row[1], x + row[2], *row[3:]) for row in self.decode.rows]
        rows.sort(key=lambda row: row[0])
        columns = list(zip(*rows)) if rows else [()] * len(TIMESERIES_COLUMNS)
        timeseries = {
            name: np.array(col, dtype=float if name.endswith("_s") else np.int64)
            for name, col in zip(TIMESERIES_COLUMNS, columns)
        }
        transfers = sorted(self.transfers)
        tcols = list(zip(*transfers)) if transfers else [()] * len(TRANSFER_COLUMNS)
        transfer_table = {
            name: np.array(
                col, dtype=np.int64 if name in ("request_id", "prefill_instance", "decode_instance") else float
            )
            for name, col in zip(TRANSFER_COLUMNS, tcols)
        }
        end_s = max(r.finish_s for r in records)
        self.count(0)

        def peaks(pool: ServingModel) -> tuple[int, ...]:
            b = pool.batches
            return tuple(
                sum(s.kv.peak_used_blocks for s in pool.schedulers[r * b : (r + 1) * b])
                for r in range(pool.num_replicas)
            )

        p_cap = inputs.prefill_spec.scheduler.kv_cache.capacity_blocks
        assert p_cap is not None
        return ServingRun(
            spec=inputs.spec,
            records=tuple(records),
            timeseries=timeseries,
            end_s=end_s,
            num_iterations=len(rows),
            preemptions=sum(s.preemptions for pool in (self.prefill, self.decode) for s in pool.schedulers),
            peak_kv_blocks=peaks(self.prefill) + peaks(self.decode),
            mean_in_system=self.area / end_s if end_s > 0 else math.nan,
            disaggregation=DisaggregatedRun(
                prefill_instances=x,
                decode_instances=self.decode.num_replicas,
                prefill_kv_capacity_blocks=p_cap,
                transfers=transfer_table,
                links=self.network.link_table(self.fabric.link_names),
                prefill_launches=self.prefill.launch_tally(),
                decode_launches=self.decode.launch_tally(),
            ),
            launches=_merged(self.prefill.launch_tally(), self.decode.launch_tally()),
            host=_summed(self.prefill.host_tally(), self.decode.host_tally()),
        )


def _summed(*tallies: HostTally | None) -> HostTally | None:
    """Both pools' host tallies (ServingRun.host) summed, with the decode pool's rate (the pools share the
    engine); None when neither pool has an engine's host rule."""
    given = [t for t in tallies if t is not None]
    if not given:
        return None
    last = given[-1]
    return last._replace(
        iterations=sum(t.iterations for t in given),
        host_bound=sum(t.host_bound for t in given),
        seconds=sum(t.seconds for t in given),
    )


def _merged(*tallies: dict[str, tuple[int, int, int]] | None) -> dict[str, tuple[int, int, int]] | None:
    """Both pools' launch tallies summed kind by kind; None when neither pool has an engine's launch rule."""
    given = [t for t in tallies if t is not None]
    if not given:
        return None
    out: dict[str, tuple[int, int, int]] = {}
    for tally in given:
        for kind, counts in tally.items():
            old = out.get(kind, (0, 0, 0))
            out[kind] = (old[0] + counts[0], old[1] + counts[1], old[2] + counts[2])
    return dict(sorted(out.items()))
