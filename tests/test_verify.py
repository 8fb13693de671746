"""DAG verification catches what it must, and passes the layouts moesim builds."""

from __future__ import annotations

import networkx as nx
import pytest
from conftest import TINY_MOE, make_scenario

from simulator.graph import build_dag
from simulator.pipeline import run_scenario
from simulator.verify import per_gpu_table, verify_dag


def _failed(graph, scenario) -> dict[str, str]:
    return {c.name: c.detail for c in verify_dag(graph, scenario) if not c.ok}


@pytest.mark.parametrize(
    "layout",
    [
        dict(tp=2, ep=2, pp=2, dp=1, microbatches=2),
        dict(tp=1, ep=2, pp=2, dp=2, microbatches=1),
        dict(tp=4, ep=2, etp=2, pp=1, dp=1, microbatches=1),
    ],
)
def test_built_graphs_pass_every_check(layout):
    n = layout["tp"] * layout["pp"] * layout["dp"]
    s = make_scenario(TINY_MOE, parallel=layout, cluster={"num_gpus": n})
    assert _failed(build_dag(s), s) == {}


def test_planted_cycle_is_caught(tiny_moe):
    g = build_dag(tiny_moe)
    g.add_edge("p.mb0.L1.g0.o_proj", "p.mb0.L0.g0.q_proj")
    assert "acyclic" in _failed(g, tiny_moe)


def test_misplaced_node_is_caught(tiny_moe):
    g = build_dag(tiny_moe)
    g.nodes["p.mb0.L0.g0.q_proj"]["gpu"] = 3  # layer 0 lives on stage 0 (GPUs 0, 1)
    failed = _failed(g, tiny_moe)
    assert "every compute node on a GPU of its layer's stage" in failed
    assert "layer 0 is not on GPU 3's stage 1" in failed["every compute node on a GPU of its layer's stage"]


def test_expert_on_wrong_rank_is_caught(tiny_moe):
    g = build_dag(tiny_moe)
    g.nodes["p.mb0.L0.g0.expert_fc1"]["experts"] = (0, 3)
    assert "each expert on exactly one EP rank per replica" in _failed(g, tiny_moe)


def test_collective_outside_group_is_caught(tiny_moe):
    g = build_dag(tiny_moe)
    g.nodes["p.mb0.L0.s0d0.tp_allreduce"]["gpu"] = (0, 2)
    assert "collectives only within their group" in _failed(g, tiny_moe)


def test_disconnected_and_extra_source_are_caught(tiny_moe):
    g = build_dag(tiny_moe)
    g.add_node("stray", op="x", kind="compute", phase="prefill", layer=-1, gpu=0, step=0, microbatch=0)
    failed = _failed(g, tiny_moe)
    assert "connected" in failed and "one source and one sink per phase" in failed


def test_decode_order_break_is_caught(tiny_moe):
    g = build_dag(tiny_moe)
    # cut every path from token 1 to token 2: drop the step-2 token sends' dependency on token 1
    for succ in list(g.successors("d1.mb0.token")):
        g.remove_edge("d1.mb0.token", succ)
        g.add_edge("decode.start", succ)
    assert "decode steps ordered" in _failed(g, tiny_moe)


def test_per_gpu_table(seed):
    small = make_scenario(seed.model_dump(exclude_none=True), workload={"output_len_tokens": 2})
    table = per_gpu_table(build_dag(small), small)
    assert list(table["layers"]) == ["0-7", "0-7", "8-15", "8-15"]
    assert list(table["experts"]) == ["0-7", "8-15", "0-7", "8-15"]
    # 8 layers x (attention shard 4*512*256 + 8 experts x 2*512*1024 + router 512*16 + norms 2*512) x 2 bytes
    assert table["weight_bytes"][0] == 8 * (4 * 512 * 256 + 8 * 2 * 512 * 1024 + 512 * 16 + 2 * 512) * 2


def _verdicts(graph, scenario) -> list[tuple[str, bool, str]]:
    return [(c.name, c.ok, c.detail) for c in verify_dag(graph, scenario)]


def test_the_dag_and_its_networkx_graph_get_the_same_verdicts(tiny_moe):
    run = run_scenario(tiny_moe, decode_sample=3, fold=True, verify=False)
    assert _verdicts(run.dag, tiny_moe) == _verdicts(run.dag.to_networkx(), tiny_moe)
    assert all(ok for _, ok, _ in _verdicts(run.dag, tiny_moe))


def _reversed(g: nx.DiGraph) -> nx.DiGraph:
    """The same graph with its nodes in reverse order: every edge points to an earlier node."""
    out = nx.DiGraph(**g.graph)
    out.add_nodes_from(reversed(list(g.nodes(data=True))))
    out.add_edges_from(g.edges)
    return out


def test_verdicts_do_not_depend_on_the_node_order(tiny_moe):
    g = build_dag(tiny_moe)
    assert _verdicts(_reversed(g), tiny_moe) == _verdicts(g, tiny_moe)
    for succ in list(g.successors("d1.mb0.token")):  # as in test_decode_order_break_is_caught
        g.remove_edge("d1.mb0.token", succ)
        g.add_edge("decode.start", succ)
    assert "decode steps ordered" in _failed(_reversed(g), tiny_moe)


@pytest.mark.parametrize(
    "layout",
    [
        dict(tp=4, ep=1, etp=4, pp=1, dp=2, microbatches=1),  # the shipped Mixtral serving layout, folded
        dict(tp=4, ep=2, etp=2, pp=1, dp=1, microbatches=1),
        dict(tp=2, ep=2, etp=1, pp=2, dp=2, microbatches=1),
    ],
)
def test_folded_graphs_pass_every_check(layout):
    """A DAG folded onto its representative GPUs (moesim run's default) holds only their expert shards: the
    ownership check expects the simulated shards of each replica, not all etp of them."""
    from simulator.graph.passes import build
    from simulator.placement import symmetric_representatives

    n = layout["tp"] * layout["pp"] * layout["dp"]
    s = make_scenario(TINY_MOE, parallel=layout, cluster={"num_gpus": n})
    keep = symmetric_representatives(s, n)
    dag = build(s, None, keep)
    assert dag.graph["representatives"] is not None and len(dag.graph["representatives"]) < n
    assert _failed(dag, s) == {}


def test_missing_expert_shard_is_caught():
    """etp 2: each expert runs on both GPUs of its shard pair; a node that drops one shard is caught."""
    s = make_scenario(TINY_MOE, parallel=dict(tp=2, ep=1, etp=2, pp=1, dp=1, microbatches=1), cluster={"num_gpus": 2})
    g = build_dag(s)
    fc1 = [n for n, a in g.nodes(data=True) if a["op"] == "expert_fc1" and a["gpu"] == 1 and a["layer"] == 0]
    g.nodes[fc1[0]]["experts"] = ()
    failed = _failed(g, s)
    assert "expected its 2 shard(s) [0, 1]" in failed["each expert on exactly one EP rank per replica"]


@pytest.mark.parametrize("fold", [True, False])
def test_every_shipped_scenario_passes_every_check(fold):
    """What a user runs first: no shipped scenario may print a failed DAG check, folded (moesim run's
    default) or not (--full)."""
    from pathlib import Path

    from simulator.config import load_scenario

    failed = {}
    for path in sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.yaml")):
        s = load_scenario(path)
        run = run_scenario(s, verify=True, decode_sample=3, fold=fold, explain=False)
        bad = [f"{c.name}: {c.detail}" for c in run.checks if not c.ok]
        if bad:
            failed[path.name] = bad
    assert failed == {}
