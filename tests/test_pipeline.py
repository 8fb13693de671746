"""Pipeline shortcuts that must give exactly the figures of the full simulation."""

from __future__ import annotations

import pytest
from conftest import TINY_MOE, make_scenario

from simulator.config import resolve_hardware
from simulator.pipeline import one_replica, run_scenario


@pytest.mark.parametrize(
    "parallel",
    [
        {"pp": 1, "tp": 1, "ep": 1, "dp": 4},
        {"pp": 2, "tp": 2, "ep": 2, "dp": 2, "microbatches": 2},
        {"pp": 1, "tp": 2, "ep": 1, "etp": 2, "dp": 2},
    ],
)
def test_one_replica_gives_the_same_figures(parallel):
    n = parallel["pp"] * parallel["tp"] * parallel["dp"]
    s = make_scenario(
        TINY_MOE, parallel=parallel, cluster={"num_gpus": n, "gpus_per_node": n}, workload={"batch_size": 8}
    )
    one = one_replica(s, resolve_hardware(s))
    assert one is not None and one.parallel.dp == 1 and one.num_gpus == n // parallel["dp"]
    full, part = run_scenario(s, verify=False).metrics, run_scenario(one, verify=False).metrics
    assert (part.ttft_s.p50, part.ttft_s.p99, part.ttft_s.max) == (full.ttft_s.p50, full.ttft_s.p99, full.ttft_s.max)
    assert part.ttft_s.mean == pytest.approx(full.ttft_s.mean, rel=1e-12)  # a mean over 4 or 8 equal values
    assert part.tpot_s == pytest.approx(full.tpot_s, rel=1e-12)
    assert part.throughput == pytest.approx(full.throughput, rel=1e-12)
    assert max(m.total_bytes for m in part.memory) == max(m.total_bytes for m in full.memory)


def test_one_replica_refuses_coupled_or_relinked_layouts():
    # experts spread over two dp ranks: the replicas exchange tokens
    coupled = make_scenario(TINY_MOE, parallel={"pp": 1, "tp": 1, "ep": 2, "dp": 2}, cluster={"num_gpus": 2})
    assert one_replica(coupled, resolve_hardware(coupled)) is None
    # a seeded routing draw depends on the batch
    sampled = make_scenario(
        TINY_MOE,
        parallel={"pp": 1, "tp": 1, "ep": 1, "dp": 2},
        cluster={"num_gpus": 2},
        workload={"routing": {"sampled": 3}},
    )
    assert one_replica(sampled, resolve_hardware(sampled)) is None
    # TP groups of 4 would straddle nodes of 2 in the reduced layout (they sit in one node of 8)
    relinked = make_scenario(
        TINY_MOE,
        parallel={"pp": 1, "tp": 4, "ep": 4, "dp": 4},
        cluster={"num_gpus": 16, "gpus_per_node": 8},
        workload={"batch_size": 8},
    )
    assert one_replica(relinked, resolve_hardware(relinked)) is None
    single = make_scenario(TINY_MOE)
    assert one_replica(single, resolve_hardware(single)) is None  # dp = 1 already


def _figures(run):
    m = run.metrics
    return (m.ttft_s, m.tpot_s, m.throughput, [g.total_bytes for g in m.memory], m.busy_s, m.bottleneck)


@pytest.mark.parametrize(
    "parallel, cluster",
    [
        ({"pp": 2, "tp": 2, "ep": 2, "dp": 1, "microbatches": 2}, {"num_gpus": 4, "gpus_per_node": 4}),
        ({"pp": 1, "tp": 2, "ep": 1, "etp": 2, "dp": 2}, {"num_gpus": 4, "gpus_per_node": 4}),
        ({"pp": 1, "tp": 1, "ep": 4, "dp": 4, "microbatches": 2}, {"num_gpus": 4, "gpus_per_node": 4}),
        # TP groups of 2 inside nodes of 2, pipeline stages on different nodes (NIC transfers)
        ({"pp": 2, "tp": 2, "ep": 2, "dp": 1}, {"num_gpus": 4, "gpus_per_node": 2}),
        # EP groups of 4 over two nodes of 2: a hierarchical all-to-all on every member
        ({"pp": 1, "tp": 2, "ep": 2, "etp": 2, "dp": 2}, {"num_gpus": 4, "gpus_per_node": 2}),
    ],
)
def test_folding_to_one_gpu_per_stage_gives_the_same_figures(parallel, cluster):
    s = make_scenario(TINY_MOE, parallel=parallel, cluster=cluster, workload={"batch_size": 8})
    full, folded = run_scenario(s, verify=False), run_scenario(s, verify=False, fold=True)
    assert folded.graph.graph["representatives"] == [
        st * (s.num_gpus // parallel["pp"]) for st in range(parallel["pp"])
    ]
    assert folded.graph.number_of_nodes() < full.graph.number_of_nodes()
    assert _figures(folded) == _figures(full)


def test_folding_refuses_layouts_whose_gpus_differ():
    from simulator.placement import symmetric_representatives

    skewed = make_scenario(TINY_MOE, workload={"routing": {"zipf": 1.0}})
    assert symmetric_representatives(skewed, 4) is None
    dropping = make_scenario(TINY_MOE, workload={"routing": {"capacity_factor": 0.5}})
    assert symmetric_representatives(dropping, 4) is None
    # nodes of 3: the first TP pair sits in node 0, the second straddles nodes 0 and 1
    straddle = make_scenario(
        TINY_MOE,
        parallel={"pp": 1, "tp": 2, "ep": 1, "dp": 3},
        cluster={"num_gpus": 6, "gpus_per_node": 3},
        workload={"batch_size": 6},
    )
    assert symmetric_representatives(straddle, 3) is None
    assert symmetric_representatives(make_scenario(TINY_MOE, parallel={"pp": 4, "tp": 1, "ep": 1, "dp": 1}), 4) is None
    run = run_scenario(skewed, verify=False, fold=True)
    assert run.graph.graph["representatives"] is None
