"""The hosts' launch threads (simulate.host_tasks): eager issue, synchronisations, one launch per CUDA graph."""

from __future__ import annotations

import pytest
from conftest import TINY_MOE, make_scenario

from simulator.config import resolve_hardware
from simulator.graph import build
from simulator.graph.dag import MARKER, Dag
from simulator.op_time import host_dispatch_s
from simulator.simulate import host_tasks, simulate_dag

ONE_GPU = {"cluster": {"num_gpus": 1, "gpus_per_node": 1}, "parallel": {"tp": 1, "ep": 1, "pp": 1, "dp": 1}}


def _node(op, gpu, phase="prefill", step=0, mb=0, kind="compute", **extra) -> dict:
    return {"op": op, "kind": kind, "gpu": gpu, "phase": phase, "step": step, "microbatch": mb, **extra}


def _dag(attrs: list[dict], edges: list[tuple[int, int]]) -> Dag:
    return Dag(
        [f"n{i}" for i in range(len(attrs))],
        attrs,
        [-1] * len(attrs),
        [],
        [u for u, _ in edges],
        [v for _, v in edges],
        {},
    )


def test_eager_kernels_are_chained_on_the_host_and_a_sync_waits_for_its_node():
    attrs = [_node("a", 0), _node("b", 0, host_sync=True), _node("c", 0)]
    host = host_tasks(_dag(attrs, [(0, 1), (1, 2)]), [2.0, 3.0, 5.0], eager_decode=True, graph_launch_s=7.0)
    assert host.duration_s == [2.0, 3.0, 5.0]
    # task 3 issues node 0, then 4 (node 1), then 5 (node 2): a chain
    assert host.successors == [[0, 4], [1, 5], [2]]
    assert host.sync_edges == [(1, 5)]  # the host issues c only once b has ended


def test_cuda_graph_decode_is_one_launch_per_step_after_its_token():
    attrs = [
        _node("a", 0),
        _node("token", None, kind=MARKER, step=0),
        _node("b", 0, phase="decode", step=1),
        _node("c", 0, phase="decode", step=1),
        _node("token", None, kind=MARKER, phase="decode", step=1),
    ]
    host = host_tasks(_dag(attrs, [(0, 1), (1, 2), (2, 3), (3, 4)]), [2.0, 0.0, 3.0, 3.0, 0.0], False, 7.0)
    assert host.duration_s == [2.0, 7.0]  # node a eagerly; one graph launch for step 1
    assert host.successors == [[0, 6], [2, 3]]
    assert host.sync_edges == [(1, 6)]  # the graph is launched once the prefill's token is on the host


def _run(scenario_sections: dict):
    scenario = make_scenario(TINY_MOE, **ONE_GPU, **scenario_sections)
    hw = resolve_hardware(scenario)
    dag = build(scenario)
    return dag, hw, simulate_dag(dag, scenario, hw)


def test_after_the_sorted_moe_sync_the_gpu_waits_for_the_host():
    """moe_sort copies the split sizes to the host: the next kernel starts one dispatch after it ends."""
    dag, hw, sim = _run({"runtime": {"mode": "eager", "framework": "pytorch"}, "model": {"moe_impl": "per_expert"}})
    attrs = dag.attrs
    sort = next(i for i, a in enumerate(attrs) if a["op"] == "moe_sort" and a["phase"] == "prefill")
    assert attrs[sort]["host_sync"]
    after = sort + 1
    assert attrs[after]["op"] == "moe_permute"
    assert sim.start_s[after] == pytest.approx(sim.end_s[sort] + host_dispatch_s(attrs[after], hw))


def test_cuda_graph_step_starts_a_graph_launch_after_the_previous_token():
    dag, hw, sim = _run({"runtime": {"mode": "cuda_graph"}})
    attrs = dag.attrs
    token = next(i for i, a in enumerate(attrs) if a["op"] == "token" and a["phase"] == "prefill")
    first = next(i for i, a in enumerate(attrs) if a["phase"] == "decode" and a["kind"] != "marker")
    assert sim.start_s[first] == pytest.approx(sim.end_s[token] + hw.graph_launch_s)


def test_eager_kernel_durations_are_device_time_and_the_host_only_delays_them():
    """Eager and graph decode give the same node durations; eager steps take at least the host's issue time."""
    _, hw, eager = _run({"runtime": {"mode": "eager"}})
    _, _, graph = _run({"runtime": {"mode": "cuda_graph"}})
    assert eager.duration_s == graph.duration_s
    assert eager.makespan_s >= graph.makespan_s
