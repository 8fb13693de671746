"""Serving inputs, disaggregated: a scenario's `serving.disaggregation` made concrete (each pool's layout,
memory model, KV capacity, scheduler and iteration pricer, the engine's with `serving.engine`; where its instances sit; the link ports KV transfers
cross), and the entry points that simulate it.

`simulate_disaggregated(scenario)` returns the same ServingRun an aggregated `simulate_serving` returns, so
serving.stats, serving.maxrate and the reports take both; `disaggregated_inputs(scenario, hw)` is the
resolved deployment, whose `simulate(spec)` the max-rate search calls at each rate.

Placement. Instance i of the prefill pool takes GPUs [i g_p, (i+1) g_p) (g_p = tp x pp of its layout); the
decode pool follows right after (`packed`) or from the next node boundary (`separate_nodes`). An instance
larger than a node must start on a node boundary and one smaller than a node must not straddle two (its
collectives are priced as its own 0-based layout would run them).

Links. GPU g has an NVLink out and in port (hardware profile intra_node: bytes_per_s x efficiency) and a NIC
out and in port (inter_node: bytes_per_s x efficiency); the NVSwitch inside a node is non-blocking. A flow
from GPU a to GPU b crosses a's out port and b's in port: NVLink when both are on one node, else the NIC;
a transfer waits the link's latency_s once before its flows start. `serving.disaggregation.intra_node` /
`inter_node` replace these figures (bytes_per_s as achieved, no efficiency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from simulator.config import Scenario, ServingError, ServingSpec, gpus_per_node, resolve_hardware
from simulator.config.errors import LayoutError, one_line_error
from simulator.config.hardware import HardwareProfile
from simulator.config.scenario import pool_layout
from simulator.config.serving import (
    ESTIMATE_RESERVED_DECODE_TOKENS,
    DisaggregationSpec,
    FixedLength,
    PoolSpec,
    SchedulerSpec,
    TransferLinkSpec,
    WorkloadSpec,
)
from simulator.serving.capacity import resolve_serving
from simulator.serving.dag_pricer import DagPricer
from simulator.serving.disagg_simulate import DisaggregatedInputs, simulate_disaggregated_requests
from simulator.serving.kv_transfer import PoolLayout, kv_transfer_rates
from simulator.serving.link_network import Fabric, TransferRoute
from simulator.serving.pricing import CachedPricer, IterationPricer
from simulator.serving.session import engine_pricer
from simulator.serving.simulate import ServingRun
from simulator.serving.workload import Request, generate_requests

POOLS = ("prefill", "decode")


@dataclass(frozen=True)
class PoolPlan:
    """One resolved pool: its per-instance scenario and serving spec, pricer, and first GPU of each instance."""

    name: str
    pool: PoolSpec
    scenario: Scenario
    spec: ServingSpec
    pricer: IterationPricer
    first_gpus: tuple[int, ...]

    @property
    def layout(self) -> PoolLayout:
        p = self.pool.parallel
        return PoolLayout(p.tp, p.pp, p.layer_split)


@dataclass(frozen=True)
class DisaggregatedDeployment:
    """A resolved disaggregated deployment. `simulate(spec)` serves spec's workload (spec: the scenario's
    serving spec, possibly at another rate) and returns a ServingRun."""

    scenario: Scenario
    hw: HardwareProfile
    prefill: PoolPlan
    decode: PoolPlan
    fabric: Fabric

    @property
    def num_gpus(self) -> int:
        return self.prefill.pool.num_gpus + self.decode.pool.num_gpus

    def run_spec(self, spec: ServingSpec) -> ServingSpec:
        """spec with the decode pool's resolved scheduler (the one the reports' KV figures refer to)."""
        return spec.model_copy(update={"scheduler": self.decode.spec.scheduler})

    def inputs(self, spec: ServingSpec) -> DisaggregatedInputs:
        w = spec.workload
        return DisaggregatedInputs(
            spec=self.run_spec(spec),
            prefill_spec=self.prefill.spec.model_copy(update={"workload": w}),
            decode_spec=self.decode.spec.model_copy(update={"workload": w}),
            prefill_pricer=self.prefill.pricer,
            decode_pricer=self.decode.pricer,
            fabric=self.fabric,
        )

    def simulate(
        self, spec: ServingSpec, base_dir: str | Path | None = None, requests: list[Request] | None = None
    ) -> ServingRun:
        if requests is None:
            requests = list(
                generate_requests(self.decode.spec.model_copy(update={"workload": spec.workload}), base_dir)
            )
            for r in requests:  # the prefill pool must hold each prompt too
                _check_prefill_fits(r, self.prefill.spec)
        if not requests:
            raise ServingError("requests: none to serve; give workload.num_requests >= 1")
        return simulate_disaggregated_requests(self.inputs(spec), requests)

    def describe(self) -> str:
        """e.g. '1P (TP4) + 1D (TP4), packed' for reports."""
        d = self.scenario.serving.disaggregation  # type: ignore[union-attr]
        assert d is not None
        return (
            f"{d.prefill.instances}P ({_label(d.prefill)}) + {d.decode.instances}D ({_label(d.decode)}), {d.placement}"
        )


def _label(pool: PoolSpec) -> str:
    p = pool.parallel
    parts = [f"{k.upper()}{v}" for k, v in (("tp", p.tp), ("pp", p.pp), ("ep", p.ep), ("etp", p.etp)) if v > 1]
    return " ".join(parts) or "1 GPU"


def _check_prefill_fits(request: Request, spec: ServingSpec) -> None:
    kv = spec.scheduler.kv_cache
    assert kv.capacity_blocks is not None
    blocks = math.ceil(request.input_tokens / kv.block_size_tokens)
    share = kv.capacity_blocks // (spec.scheduler.pipeline_batches or 1)
    if blocks > share:
        raise ServingError(
            f"request {request.request_id} (input {request.input_tokens} tokens = {blocks} blocks) can never be "
            f"prefilled: the prefill pool holds {share} blocks per scheduler; give "
            f"serving.disaggregation.prefill more GPUs or shorten the prompts"
        )


def _check_decode_prealloc(scheduler: SchedulerSpec, workload: WorkloadSpec, path: str) -> None:
    """ServingError (one line) when a decode instance admitting by estimate (SGLang's DecodePreallocQueue) can
    never take the longest prompt: it needs the prompt plus ESTIMATE_RESERVED_DECODE_TOKENS free."""
    kv = scheduler.kv_cache
    longest = workload.input_len.max_tokens_bound() if workload.input_len is not None else None
    if scheduler.admission != "estimate" or kv.capacity_blocks is None or longest is None:
        return
    room = kv.capacity_blocks // (scheduler.pipeline_batches or 1) * kv.block_size_tokens
    if longest + ESTIMATE_RESERVED_DECODE_TOKENS > room:
        raise ServingError(
            f"{path}: the longest prompt ({longest} tokens) + {ESTIMATE_RESERVED_DECODE_TOKENS} reserved decode "
            f"tokens never fit a decode instance's {room} KV tokens under admission estimate (SGLang's "
            f"DecodePreallocQueue); give {path}.parallel more GPUs or shorten the prompts"
        )


def pool_scheduler(spec: ServingSpec, pool: PoolSpec, name: str) -> SchedulerSpec:
    """serving.scheduler with the pool's fields replacing it; ServingError (one line) when they clash."""
    data = spec.scheduler.model_dump()
    data.update(pool.scheduler.model_dump(exclude_none=True))
    try:
        return SchedulerSpec.model_validate(data)
    except ValidationError as exc:
        raise ServingError(f"serving.disaggregation.{name}.scheduler: {one_line_error(exc, SchedulerSpec)}") from None


def _pool_plan(
    scenario: Scenario, hw: HardwareProfile, name: str, pool: PoolSpec, first_gpus: tuple[int, ...]
) -> PoolPlan:
    assert scenario.serving is not None
    path = f"serving.disaggregation.{name}"
    try:
        base = pool_layout(scenario, pool.parallel, f"{path}.parallel")
    except LayoutError as exc:
        raise ServingError(f"{exc.path}: {exc}") from None
    spec = scenario.serving
    scheduler = pool_scheduler(spec, pool, name)
    if name == "decode" and scheduler.policy == "static":
        raise ServingError(
            f"{path}.scheduler.policy = static: a static batch cannot take sequences arriving from the prefill "
            f"pool; use continuous or chunked_prefill"
        )
    workload = spec.workload
    if workload.conversation is not None:
        raise ServingError(
            "serving.workload.conversation: not modelled for disaggregated deployments (a turn's history and its "
            "transfers); remove it or serve the deployment aggregated"
        )
    if workload.shared_prefix is not None and scheduler.prefix_caching:
        raise ServingError(
            f"{path}.scheduler.prefix_caching: not modelled for disaggregated pools (the transfers of cached "
            f"blocks); set serving.scheduler.prefix_caching: false or remove serving.workload.shared_prefix"
        )
    if name == "prefill" and workload.output_len is not None:  # a prefill instance samples one token
        workload = workload.model_copy(update={"output_len": FixedLength(tokens=1)})
    replicas = spec.replicas.model_copy(
        update={"count": 1, "gpus_per_replica": None, "lockstep": None, "router": pool.router or spec.replicas.router}
    )
    # the whole serving section but the pool's own parts (its engine, CUDA graphs and targets are the deployment's)
    pool_spec = spec.model_copy(
        update={"workload": workload, "scheduler": scheduler, "replicas": replicas, "disaggregation": None}
    )
    pool_scenario = base.model_copy(update={"serving": pool_spec})
    try:
        resolved = resolve_serving(pool_scenario, hw)
    except ServingError as exc:
        message = str(exc).replace("serving.scheduler", f"{path}.scheduler").removeprefix("serving: ")
        message = message.replace("or use more GPUs", f"or give {path}.parallel more GPUs (tp or pp)")
        raise ServingError(f"{path}: {message}" if not message.startswith(path) else message) from None
    if name == "decode":
        _check_decode_prealloc(resolved.scheduler, spec.workload, path)
    resolved = resolved.model_copy(
        update={"replicas": resolved.replicas.model_copy(update={"count": pool.instances}), "workload": spec.workload}
    )
    # each instance runs the engine as an aggregated replica does: its kernels, CUDA graphs and host time
    pricer = engine_pricer(pool_scenario, hw, resolved) if spec.engine else DagPricer(pool_scenario, hw)
    return PoolPlan(
        name, pool, pool_scenario.model_copy(update={"serving": resolved}), resolved, CachedPricer(pricer), first_gpus
    )


def place(d: DisaggregationSpec, num_gpus: int, gpn: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """First GPU of each prefill and each decode instance (module docstring); ServingError when they do not
    fit the cluster or an instance would straddle nodes."""
    gp, gd = d.prefill.parallel.gpus, d.decode.parallel.gpus
    prefill = tuple(i * gp for i in range(d.prefill.instances))
    start = d.prefill.num_gpus
    if d.placement == "separate_nodes":
        start = -(-start // gpn) * gpn
    decode = tuple(start + j * gd for j in range(d.decode.instances))
    end = start + d.decode.num_gpus
    if end > num_gpus:
        raise ServingError(
            f"serving.disaggregation.placement = {d.placement}: the decode pool would end at GPU {end - 1} of "
            f"cluster.num_gpus = {num_gpus} ({gpn} per node); use placement packed, fewer instances or more GPUs"
        )
    for name, firsts, g in (("prefill", prefill, gp), ("decode", decode, gd)):
        for first in firsts:
            straddles = first // gpn != (first + g - 1) // gpn
            if (g > gpn and first % gpn) or (g <= gpn and straddles):
                raise ServingError(
                    f"serving.disaggregation.{name}: an instance of {g} GPUs at GPUs {first}..{first + g - 1} "
                    f"straddles nodes of {gpn} GPUs; use instance sizes that divide gpus_per_node or "
                    f"placement separate_nodes"
                )
    return prefill, decode


def build_fabric(scenario: Scenario, hw: HardwareProfile, prefill: PoolPlan, decode: PoolPlan, gpn: int) -> Fabric:
    """The link ports and, per instance pair, the flows of one transfer (module docstring)."""
    d = scenario.serving.disaggregation  # type: ignore[union-attr]
    assert d is not None

    def figures(link, override: TransferLinkSpec | None) -> tuple[float, float]:
        bw = link.bytes_per_s * link.efficiency
        lat = link.latency_s
        if override is not None:
            bw = override.bytes_per_s if override.bytes_per_s is not None else bw
            lat = override.latency_s if override.latency_s is not None else lat
        return bw, lat

    nvl = figures(hw.intra_node, d.intra_node)
    nic = figures(hw.inter_node, d.inter_node)
    names: list[str] = []
    speeds: list[float] = []
    index: dict[tuple[str, str, int], int] = {}

    def port(kind: str, direction: str, gpu: int, bw: float) -> int:
        key = (kind, direction, gpu)
        if key not in index:
            index[key] = len(names)
            names.append(f"{kind} {direction} gpu {gpu}")
            speeds.append(bw)
        return index[key]

    model = scenario.model
    routes, latency = {}, {}
    for i, p_first in enumerate(prefill.first_gpus):
        for j, d_first in enumerate(decode.first_gpus):
            flows, lat = [], 0.0
            for f in kv_transfer_rates(model, prefill.layout, decode.layout):
                a, b = p_first + f.src_gpu, d_first + f.dst_gpu
                kind, (bw, link_lat) = ("nvlink", nvl) if a // gpn == b // gpn else ("nic", nic)
                links = (port(kind, "out", a, bw), port(kind, "in", b, bw))
                window = model.sliding_window or 0
                flows.append(TransferRoute(f.full_bytes_per_token, links, f.window_bytes_per_token, window))
                lat = max(lat, link_lat)
            routes[(i, j)] = tuple(flows)
            latency[(i, j)] = lat
    return Fabric(tuple(names), tuple(speeds), routes, latency)


def disaggregated_inputs(scenario: Scenario, hw: HardwareProfile | None = None) -> DisaggregatedDeployment:
    """Resolve a scenario whose serving section has `disaggregation`: both pools' layouts, memory models (KV
    blocks; ServingError naming the pool when one cannot hold the model), placement and transfer fabric."""
    if scenario.serving is None or scenario.serving.disaggregation is None:
        raise ServingError("serving.disaggregation: missing; add prefill and decode pools (see docs/disaggregation.md)")
    if scenario.serving.replicas.attention_dp_balance is not None:
        raise ServingError(
            "serving.replicas.attention_dp_balance: balances a co-located lockstep group; a disaggregated pool's "
            "instances are independent; remove it"
        )
    hw = hw if hw is not None else resolve_hardware(scenario)
    d = scenario.serving.disaggregation
    gpn = gpus_per_node(scenario, hw)
    p_first, d_first = place(d, scenario.num_gpus, gpn)
    prefill = _pool_plan(scenario, hw, "prefill", d.prefill, p_first)
    decode = _pool_plan(scenario, hw, "decode", d.decode, d_first)
    fabric = build_fabric(scenario, hw, prefill, decode, gpn)
    return DisaggregatedDeployment(scenario, hw, prefill, decode, fabric)


def simulate_disaggregated(
    scenario: Scenario,
    hw: HardwareProfile | None = None,
    requests: list[Request] | None = None,
    base_dir: str | Path | None = None,
) -> ServingRun:
    """Serve a disaggregated scenario's workload: the entry point for commands and searches. The run's
    metrics (serving.stats) are the aggregated ones', plus run.disaggregation (transfers, links)."""
    deployment = disaggregated_inputs(scenario, hw)
    assert scenario.serving is not None
    return deployment.simulate(scenario.serving, base_dir, requests)
