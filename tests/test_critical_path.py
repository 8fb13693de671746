"""Critical path: exact chains on hand-built traces, invariants on a real run, the sentences."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from simulator import engine
from simulator.critical_path import analyse, path_table, walk_back
from simulator.pipeline import run_scenario
from simulator.simulate import Resources, node_resources

NUM_GPUS = 2


def _node(op, kind, category, gpu, duration_s, deps=(), phase="prefill", step=0, bound="memory", **extra):
    return {
        "op": op,
        "kind": kind,
        "category": category,
        "gpu": gpu,
        "duration_s": duration_s,
        "deps": deps,
        "phase": phase,
        "step": step,
        "bound": bound,
        **extra,
    }


def _traced(spec: dict[str, dict]) -> tuple[nx.DiGraph, pd.DataFrame]:
    """Graph from `spec` (insertion order = engine priority), scheduled by the real engine."""
    g = nx.DiGraph()
    for name, a in spec.items():
        g.add_node(name, **{k: v for k, v in a.items() if k not in ("deps", "duration_s")})
        for d in a["deps"]:
            g.add_edge(d, name)
    names = list(spec)
    res = Resources(NUM_GPUS)
    trace = engine.simulate(
        engine.EngineInput(
            [spec[n]["duration_s"] for n in names],
            [node_resources(g.nodes[n], res) for n in names],
            [[names.index(s) for s in g.successors(n)] for n in names],
            res.count,
        )
    )
    ops = pd.DataFrame(
        {
            "node": names,
            "op": [spec[n]["op"] for n in names],
            "kind": [spec[n]["kind"] for n in names],
            "category": [spec[n]["category"] for n in names],
            "phase": [spec[n]["phase"] for n in names],
            "step": [spec[n]["step"] for n in names],
            "microbatch": 0,
            "layer": 0,
            "gpu": [spec[n]["gpu"] for n in names],
            "start_s": trace.start_s,
            "end_s": trace.end_s,
            "duration_s": [spec[n]["duration_s"] for n in names],
            "bound": [spec[n]["bound"] for n in names],
        }
    )
    return g, ops


def _hand_built() -> dict[str, dict]:
    # GPU 0: a [0,1], c [1,3] (no dependency: waits for the stream a holds); GPU 1: b [0,2].
    # The all-reduce needs b and c: [3,4]; then d on GPU 1 [4,5]; the token marker at 5.
    return {
        "a": _node("q_proj", "compute", "attention", 0, 1.0),
        "b": _node("expert_fc1", "compute", "experts", 1, 2.0),
        "c": _node("attn_scores", "compute", "attention", 0, 2.0, bound="compute"),
        "ar": _node(
            "tp_allreduce", "communication", "tp_comm", (0, 1), 1.0, ("b", "c"), bound="nvlink", collective="all_reduce"
        ),
        "d": _node("expert_fc2", "compute", "experts", 1, 1.0, ("ar",)),
        "token": _node("token", "marker", "marker", None, 0.0, ("d",), bound="none"),
    }


def test_walk_back_follows_dependencies_and_stream_holders_exactly():
    g, ops = _traced(_hand_built())
    assert list(ops["start_s"]) == [0.0, 0.0, 1.0, 3.0, 4.0, 5.0]  # the engine agrees with the picture
    (path,) = walk_back(g, ops, [5], NUM_GPUS)
    assert [ops["node"][i] for i in path.rows] == ["a", "c", "ar", "d", "token"]
    assert path.via == ("resource", "dependency", "dependency", "dependency", "sink")
    assert path.length_s == 5.0


def test_path_is_gapless_from_zero_to_the_sink():
    g, ops = _traced(_hand_built())
    (path,) = walk_back(g, ops, [5], NUM_GPUS)
    table = path_table(ops, path)
    assert table["start_s"].iloc[0] == 0.0
    assert list(table["end_s"].iloc[:-1]) == list(table["start_s"].iloc[1:])
    assert table["duration_s"].sum() == path.length_s


def test_a_dependency_wins_over_a_stream_holder_ending_at_the_same_time():
    spec = _hand_built()
    # e depends on a and also needs GPU 0's stream, which a holds: both end at 1; the edge is the reason.
    spec = {
        **{k: v for k, v in spec.items() if k != "c"},
        "c": _node("attn_scores", "compute", "attention", 0, 2.0, ("a",), bound="compute"),
    }
    spec = {k: spec[k] for k in ("a", "b", "c", "ar", "d", "token")}
    g, ops = _traced(spec)
    (path,) = walk_back(g, ops, [5], NUM_GPUS)
    assert path.via[0] == "dependency"


def test_analyse_shares_sum_to_one_and_name_the_largest_category():
    g, ops = _traced(_hand_built())
    summary, paths = analyse(g, ops, NUM_GPUS)
    total = summary["total"]
    assert total["sink"] == "token" and total["length_s"] == 5.0
    assert total["seconds"] == {"attention": 3.0, "experts": 1.0, "tp_comm": 1.0}
    assert sum(total["shares"].values()) == pytest.approx(1.0)
    assert total["resource_waits"] == 1
    assert summary["sentences"]["ttft"].startswith("TTFT (5 s) is bound by attention on GPU 0: 60 %")
    assert "tpot" not in summary["sentences"]  # no decode phase


@pytest.fixture(scope="module")
def tiny_run():
    from conftest import TINY_MOE, make_scenario

    return run_scenario(make_scenario(TINY_MOE, workload={"output_len_tokens": 4}, parallel={"microbatches": 2}))


def test_real_run_paths_end_at_the_first_and_the_last_token(tiny_run):
    ops = tiny_run.sim.ops
    summary, paths = analyse(tiny_run.graph, ops, tiny_run.scenario.num_gpus)
    assert summary["total"]["length_s"] == pytest.approx(float(ops["end_s"].max()))
    first_tokens = ops.loc[(ops["op"] == "token") & (ops["phase"] == "prefill"), "end_s"]
    assert summary["ttft"]["length_s"] == pytest.approx(float(first_tokens.max()))
    for path in paths.values():
        start = ops["start_s"].to_numpy()[path.rows]
        end = ops["end_s"].to_numpy()[path.rows]
        assert start[0] == 0.0
        host = np.array([how == "host" for how in path.via[:-1]])
        # a hop joins an end to a start, but for the host's launch gaps (simulate.host_tasks)
        np.testing.assert_allclose(end[:-1][~host], start[1:][~host], rtol=0, atol=1e-15)
        assert (end[:-1][host] <= start[1:][host]).all() and host.any()
        # every hop is a graph edge or a shared resource
        for (u, v), how in zip(zip(path.rows[:-1], path.rows[1:]), path.via[:-1]):
            if how in ("dependency", "host"):
                assert tiny_run.graph.has_edge(ops["node"].iat[u], ops["node"].iat[v])
        # the gaps are the host's: the path's rows and host rows add up to its length
        assert summary["total" if path is paths["total"] else "ttft"]["seconds"].get("host", 0.0) == pytest.approx(
            float((start[1:][host] - end[:-1][host]).sum())
        )


def test_real_run_reports_decode_step_and_both_sentences(tiny_run):
    summary, _ = analyse(tiny_run.graph, tiny_run.sim.ops, tiny_run.scenario.num_gpus)
    step = summary["decode_step"]
    assert step["steps_on_path"] == 3
    assert sum(step["shares"].values()) == pytest.approx(1.0)
    assert summary["sentences"]["tpot"].startswith("TPOT is bound by ")
    assert summary["sentences"]["tpot"].endswith("on the path (mean of 3)")
    assert "% of each decode step's critical path" in summary["sentences"]["tpot"]
