"""The hosts' launch threads (simulate.host_tasks): eager issue, synchronisations, one launch per CUDA graph."""

from __future__ import annotations

import pytest
from conftest import TINY_MOE, make_scenario
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import engine
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


def test_after_each_sorted_moe_sync_the_gpu_waits_for_the_host():
    """bincount reads min and max back, .tolist() the counts: three syncs; after each, the next node
    starts one dispatch of its first kernel after the synchronising node ends."""
    dag, hw, sim = _run({"runtime": {"mode": "eager", "framework": "pytorch"}, "model": {"moe_impl": "per_expert"}})
    attrs = dag.attrs
    sort = next(i for i, a in enumerate(attrs) if a["op"] == "moe_sort" and a["phase"] == "prefill")
    assert not attrs[sort].get("host_sync")
    syncs = [sort + 1, sort + 2, sort + 3]
    assert [attrs[i]["op"] for i in syncs] == ["moe_count_min", "moe_count_max", "moe_count"]
    assert all(attrs[i]["host_sync"] for i in syncs)
    for i in syncs:
        after = i + 1
        first_dispatch_s = host_dispatch_s(attrs[after], hw) / attrs[after]["launches"]
        # the host had also to finish issuing node i's own kernels: the later of the two
        rest_s = host_dispatch_s(attrs[i], hw) * (1 - 1 / attrs[i]["launches"])
        host_free = max(sim.end_s[i], sim.start_s[i] + rest_s)
        assert sim.start_s[after] == pytest.approx(host_free + first_dispatch_s)
    assert attrs[sort + 4]["op"] == "moe_permute"


def _schedule(attrs: list[dict], edges: list[tuple[int, int]], device_s: list[float], dispatch_s: list[float]):
    """The engine run simulate_dag makes, on a hand-made one-GPU DAG: every node on compute stream 0."""
    dag = _dag(attrs, edges)
    host = host_tasks(dag, dispatch_s, eager_decode=True, graph_launch_s=0.0)
    successors = dag.successors()
    for node, task in host.sync_edges:
        successors[node].append(task)
    resources = [(0,)] * len(attrs) + [()] * len(host.duration_s)
    trace = engine.simulate(engine.EngineInput(device_s + host.duration_s, resources, successors + host.successors, 1))
    return host, trace.start_s[: len(attrs)], trace.end_s[: len(attrs)]


def test_a_host_bound_stretch_after_a_sync_leaves_the_gpu_idle_by_the_dispatch_surplus():
    """A sync node s (GPU 10 us), then 4 one-kernel nodes of 1 us GPU and 3 us dispatch each: the host issues
    s at 0-3, s runs 3-13; the host waits for it, then issues one node every 3 us: they run at 16, 19, 22,
    25, each for 1 us. GPU idle after the sync: 4 x 3 - 3 x 1 = 9 us (between 13 and 25, 3 us busy)."""
    attrs = [_node("s", 0, host_sync=True, launches=1)] + [_node(f"k{j}", 0, launches=1) for j in range(4)]
    edges = [(0, 1), (1, 2), (2, 3), (3, 4)]
    _, start, end = _schedule(attrs, edges, [10.0, 1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0, 3.0])
    assert list(start) == [3.0, 16.0, 19.0, 22.0, 25.0]
    assert end[-1] == 26.0
    busy = sum(e - b for b, e in zip(start, end))
    assert end[-1] - start[0] - busy == 9.0 + 0.0  # idle: 13 -> 16, 17 -> 19, 20 -> 22, 23 -> 25


def test_a_node_of_several_kernels_starts_at_its_first_kernels_dispatch():
    """Node m has 4 kernels (dispatch 4 x 2 us, GPU 20 us): it starts after 2 us, not 8; the host issues
    its 3 other kernels (6 us) while it runs, then node n (2 us): n is issued at 10, runs after m (22-27)."""
    attrs = [_node("m", 0, launches=4), _node("n", 0, launches=1)]
    host, start, end = _schedule(attrs, [(0, 1)], [20.0, 5.0], [8.0, 2.0])
    assert host.duration_s == [2.0, 6.0, 2.0]
    assert host.successors == [[0, 3], [4], [1]]  # m waits for its first kernel only; n's task follows the rest
    assert list(start) == [2.0, 22.0]
    assert list(end) == [22.0, 27.0]


def test_a_multi_kernel_sync_node_releases_the_host_after_its_last_launch():
    """A sync node of 3 kernels (3 x 4 us dispatch, GPU 1 us) ends at 5, before its last kernel is issued
    (12): the host's next task waits for both, so the next node is issued at 12 + 4 and starts at 16."""
    attrs = [_node("s", 0, host_sync=True, launches=3), _node("n", 0, launches=1)]
    host, start, end = _schedule(attrs, [(0, 1)], [1.0, 1.0], [12.0, 4.0])
    assert host.sync_edges == [(0, 4)]
    assert list(start) == [4.0, 16.0]
    assert list(end) == [5.0, 17.0]


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


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 5),  # launches
            st.floats(0.0, 20.0),  # device time
            st.floats(0.5, 10.0),  # dispatch per kernel
            st.booleans(),  # host_sync
        ),
        min_size=1,
        max_size=8,
    )
)
def test_starting_at_the_first_kernels_dispatch_never_delays_a_node(chain):
    """A chain of nodes on one GPU: with the first-kernel rule every node starts no later than when it
    waited for its whole dispatch, no earlier than the host issued its first kernel, and the host's
    busy time is the same (the dispatch is split, not dropped)."""
    attrs = [_node(f"n{i}", 0, launches=n, host_sync=sync) for i, (n, _, _, sync) in enumerate(chain)]
    edges = [(i, i + 1) for i in range(len(chain) - 1)]
    device = [g for _, g, _, _ in chain]
    dispatch = [n * d for n, _, d, _ in chain]
    host, start, _ = _schedule(attrs, edges, device, dispatch)
    whole = [dict(a, launches=1) for a in attrs]  # one task per node: it waits for all its dispatch
    host_whole, start_whole, _ = _schedule(whole, edges, device, dispatch)
    assert sum(host.duration_s) == pytest.approx(sum(host_whole.duration_s))
    first_issued = 0.0
    for i, (n, _, d, _) in enumerate(chain):
        assert start[i] <= start_whole[i] + 1e-9
        first_issued += d  # at least every earlier kernel and this one's first were issued before
        assert start[i] >= first_issued - 1e-9
        first_issued += (n - 1) * d
