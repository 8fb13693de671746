"""Pipeline shortcuts that must give exactly the figures of the full simulation."""

from __future__ import annotations

import pytest

from conftest import TINY_MOE, make_scenario
from simulator.pipeline import one_replica, run_scenario


@pytest.mark.parametrize("parallel", [
    {"pp": 1, "tp": 1, "ep": 1, "dp": 4},
    {"pp": 2, "tp": 2, "ep": 2, "dp": 2, "microbatches": 2},
    {"pp": 1, "tp": 2, "ep": 1, "etp": 2, "dp": 2},
])
def test_one_replica_gives_the_same_figures(parallel):
    n = parallel["pp"] * parallel["tp"] * parallel["dp"]
    s = make_scenario(TINY_MOE, parallel=parallel, cluster={"num_gpus": n, "gpus_per_node": n},
                      workload={"batch_size": 8})
    one = one_replica(s)
    assert one is not None and one.parallel.dp == 1 and one.num_gpus == n // parallel["dp"]
    full, part = run_scenario(s, verify=False).metrics, run_scenario(one, verify=False).metrics
    assert part.ttft_s == full.ttft_s
    assert part.tpot_s == pytest.approx(full.tpot_s, rel=1e-12)
    assert part.throughput == pytest.approx(full.throughput, rel=1e-12)
    assert max(m.total_bytes for m in part.memory) == max(m.total_bytes for m in full.memory)


def test_one_replica_refuses_coupled_or_relinked_layouts():
    # experts spread over two dp ranks: the replicas exchange tokens
    coupled = make_scenario(TINY_MOE, parallel={"pp": 1, "tp": 1, "ep": 2, "dp": 2}, cluster={"num_gpus": 2})
    assert one_replica(coupled) is None
    # a seeded routing draw depends on the batch
    sampled = make_scenario(TINY_MOE, parallel={"pp": 1, "tp": 1, "ep": 1, "dp": 2}, cluster={"num_gpus": 2},
                            workload={"routing": {"sampled": 3}})
    assert one_replica(sampled) is None
    # TP groups of 4 would straddle nodes of 2 in the reduced layout (they sit in one node of 8)
    relinked = make_scenario(TINY_MOE, parallel={"pp": 1, "tp": 4, "ep": 4, "dp": 4}, cluster={"num_gpus": 16,
                             "gpus_per_node": 8}, workload={"batch_size": 8})
    assert one_replica(relinked) is None
    assert one_replica(make_scenario(TINY_MOE)) is None  # dp = 1 already
