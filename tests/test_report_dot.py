"""Report stage: node-link JSON of the full DAG, the folded view and its Graphviz drawing."""

import json
import re
import shutil
from pathlib import Path

import networkx as nx
import pytest

from simulator.config import load_scenario
from simulator.graph import build_dag
from simulator.report import dot as dotmod
from simulator.report.dot import render_dag, start_render_dag, to_dot
from simulator.report.folded import folded_view
from simulator.report.graph_json import write_graph_json

SEED = Path(__file__).resolve().parent.parent / "scenarios" / "seed_moe_4gpu.yaml"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' binary not installed")


def _graph(*overrides: str) -> nx.DiGraph:
    return build_dag(load_scenario(SEED, list(overrides)))


@pytest.fixture(scope="module")
def seed_small() -> nx.DiGraph:
    """The seed layout (TP 2, EP 2, PP 2) with four output tokens: prefill and three decode steps."""
    return _graph("workload.output_len_tokens=4")


@pytest.fixture(scope="module")
def folded(seed_small):
    return folded_view(seed_small)


@pytest.fixture(scope="module")
def dot_text(folded) -> str:
    view, notes = folded
    return to_dot(view, "seed", notes)


def _node_line(text: str, node: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(f'"{node}" [')]
    return line


def test_graph_json_round_trips(seed_small, tmp_path):
    path = write_graph_json(seed_small, tmp_path / "dag.json")
    raw = path.read_text()
    assert "\n" not in raw.strip()  # compact
    back = nx.node_link_graph(json.loads(raw), edges="edges")
    assert back.number_of_nodes() == seed_small.number_of_nodes()
    assert back.number_of_edges() == seed_small.number_of_edges()
    n = "p.mb0.L0.s0d0.tp_allreduce"
    for key in ("op", "kind", "flops", "message_bytes", "layer"):
        assert back.nodes[n][key] == seed_small.nodes[n][key]
    assert back.nodes[n]["gpu"] == [0, 1]  # tuples become lists
    assert back.nodes["p.mb0.L0.g0.attn_scores"]["in_shape"] == [[128, 8, 10240, 32], [128, 8, 10240, 32]]
    assert back.graph == seed_small.graph


def test_graph_json_matches_networkx_node_link(tmp_path):
    g = _graph("parallel.pp=1", "parallel.tp=1", "parallel.ep=1", "cluster.num_gpus=1", "workload.output_len_tokens=1")
    reference = json.loads(json.dumps(nx.node_link_data(g, edges="edges")))
    assert json.loads(write_graph_json(g, tmp_path / "g.json").read_text()) == reference


def test_graph_json_leaves_no_temporary_file(seed_small, tmp_path):
    write_graph_json(seed_small, tmp_path / "dag.json")
    assert [p.name for p in tmp_path.iterdir()] == ["dag.json"]


def test_folded_view_is_a_small_dag(seed_small, folded):
    view, _ = folded
    assert view.number_of_nodes() * 5 < seed_small.number_of_nodes()  # and does not grow with decode steps
    assert nx.is_directed_acyclic_graph(view)


def test_folded_view_keeps_first_layer_markers_and_stage_transfer(folded):
    view, _ = folded
    for n in (
        "p.mb0.L0.g0.q_proj",
        "p.mb0.L7.g1.o_proj",
        "p.mb0.L8.g2.q_proj",
        "p.mb0.L15.g3.expert_fc2",
        "p.mb0.g0-g2.pp_send",
        "p.mb0.g1-g3.pp_send",
        "p.mb0.token",
        "d1.mb0.L0.g0.q_proj",
        "d1.mb0.g2-g0.token_send",
        "d1.mb0.token",
        "prefill.start",
        "prefill.end",
        "decode.start",
        "decode.end",
    ):
        assert n in view, n
    assert "p.mb0.L3.g0.q_proj" not in view
    assert "d2.mb0.L0.g0.q_proj" not in view


def test_folded_layers_box_stands_between_the_layers_it_replaces(folded):
    view, _ = folded
    box = "fold.p.mb0.s0.layers"
    assert view.nodes[box]["label"].startswith("layers 1-6: same as layer 0")
    assert set(view.predecessors(box)) == {"p.mb0.L0.s0d0.tp_allgather"}
    assert set(view.successors(box)) == {"p.mb0.L7.g0.norm_attn", "p.mb0.L7.g1.norm_attn"}


def test_remaining_decode_steps_fold_into_one_box(folded):
    view, _ = folded
    box = "fold.decode.steps"
    assert view.nodes[box]["label"].startswith("decode steps 2-3: same as step 1")
    assert set(view.predecessors(box)) == {"d1.mb0.token"}
    assert set(view.successors(box)) == {"decode.end"}


def test_folded_view_keeps_reachability_of_kept_nodes(seed_small, folded):
    view, _ = folded
    assert nx.has_path(view, "prefill.start", "decode.end")
    assert nx.has_path(view, "p.mb0.L0.g0.topk", "p.mb0.L15.g2.router")


def test_fold_notes_name_the_folded_layers_and_steps(folded):
    _, notes = folded
    text = " ".join(notes)
    assert "layers 1-6 of stage 0" in text
    assert "layers 9-14 of stage 1" in text
    assert "Decode steps 2-3" in text


def test_other_microbatches_fold_into_one_box_per_phase():
    view, notes = folded_view(_graph("parallel.microbatches=2", "workload.output_len_tokens=3"))
    assert "p.mb1.L0.g0.q_proj" not in view
    assert {"fold.prefill.microbatches", "fold.decode.microbatches"} <= set(view)
    assert nx.is_directed_acyclic_graph(view)
    assert any(s.startswith("Microbatch 1:") for s in notes)


def test_more_decode_steps_can_be_shown(seed_small):
    view, _ = folded_view(seed_small, max_decode_steps=2)
    assert "d2.mb0.L0.g0.q_proj" in view
    assert view.nodes["fold.decode.steps"]["label"].startswith("decode step 3:")


def test_dot_shapes_follow_kind(dot_text):
    assert "shape=box," in _node_line(dot_text, "p.mb0.L0.g0.q_proj")
    assert "shape=ellipse" in _node_line(dot_text, "p.mb0.L0.s0d0.tp_allreduce")
    assert "shape=parallelogram" in _node_line(dot_text, "p.mb0.L0.g0.topk")
    assert "shape=parallelogram" in _node_line(dot_text, "p.mb0.L0.g0.router")
    assert "shape=box3d" in _node_line(dot_text, "fold.p.mb0.s0.layers")


def test_dot_routing_edges_are_dashed(dot_text):
    assert '"p.mb0.L0.g0.moe_permute" -> "p.mb0.L0.s0r0.a2a_dispatch" [style=dashed];' in dot_text
    assert '"p.mb0.L0.g0.router" -> "p.mb0.L0.g0.topk";' in dot_text
    assert '"p.mb0.L0.g0.q_proj" -> "p.mb0.L0.g0.attn_scores";' in dot_text


def test_dot_labels_name_op_gpu_and_shapes(dot_text):
    assert 'label="router\\nGPU 0\\n[655360, 512] -> [655360, 16]"' in _node_line(dot_text, "p.mb0.L0.g0.router")
    assert "GPU 0,1" in _node_line(dot_text, "p.mb0.L0.s0d0.tp_allreduce")
    assert "GPU 0 -> 2" in _node_line(dot_text, "p.mb0.g0-g2.pp_send")
    assert "[128, 8, 10240, 32]; [128, 8, 10240, 32] -> [128, 8, 10240, 10240]" in _node_line(
        dot_text, "p.mb0.L0.g0.attn_scores"
    )


def test_dot_colours_one_fill_per_gpu(dot_text):
    def fill(node):
        return re.search(r'fillcolor="([^"]+)"', _node_line(dot_text, node)).group(1)

    assert fill("p.mb0.L0.g0.q_proj") == fill("p.mb0.L0.g0.topk") != fill("p.mb0.L0.g1.q_proj")
    assert len(dotmod.GPU_PALETTE) >= 8
    assert dotmod.gpu_colour(len(dotmod.GPU_PALETTE)) == dotmod.gpu_colour(0)


def test_dot_has_clusters_legend_and_notes(dot_text):
    assert dot_text.startswith("digraph")
    assert "rankdir=TB" in dot_text
    for cluster in ("cluster_legend", "cluster_notes", "cluster_prefill", "cluster_decode"):
        assert f'subgraph "{cluster}' in dot_text
    assert 'label="Pipeline stage 1 (GPU 2,3, layers 8-15)"' in dot_text


def test_dot_escapes_quotes_and_backslashes():
    g = nx.DiGraph()
    g.add_node(
        'a"b\\c',
        op="x",
        kind="compute",
        gpu=0,
        in_shape=(1,),
        out_shape=(2,),
        phase="prefill",
        step=0,
        microbatch=0,
        stage=0,
        layer=0,
    )
    text = to_dot(g, 'title "quoted"', ['a note with "quotes"'])
    assert '"a\\"b\\\\c" [' in text
    assert 'label="title \\"quoted\\""' in text


def test_render_dag_without_dot_binary_raises(seed_small, tmp_path, monkeypatch):
    monkeypatch.setattr(dotmod.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Graphviz 'dot' not found: install it"):
        render_dag(seed_small, tmp_path / "out", "seed")


@needs_dot
def test_render_dag_writes_four_files(seed_small, tmp_path):
    paths = render_dag(seed_small, tmp_path / "out", "seed")
    assert set(paths) == {"dot", "svg", "png", "json"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dag.dot", "dag.json", "dag.png", "dag.svg"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths["svg"].read_text()[:2000]
    assert json.loads(paths["json"].read_text())["graph"]["scenario"] == "seed_moe_4gpu"


@needs_dot
def test_single_gpu_graph_renders(tmp_path):
    g = _graph("parallel.pp=1", "parallel.tp=1", "parallel.ep=1", "cluster.num_gpus=1", "workload.output_len_tokens=2")
    view, notes = folded_view(g)
    assert nx.is_directed_acyclic_graph(view)
    assert "p.mb0.L0.g0.topk" in view
    text = to_dot(view, "one GPU", notes)
    assert '"p.mb0.L0.g0.moe_permute" -> "p.mb0.L0.g0.expert_fc1" [style=dashed];' in text
    paths = render_dag(g, tmp_path, "one GPU")
    assert paths["png"].stat().st_size > 0


@needs_dot
def test_a_started_drawing_is_finished_by_waiting(seed_small, tmp_path):
    pending = start_render_dag(seed_small, tmp_path, "seed", full_json=False, formats=("svg",))
    paths = pending.wait()
    assert set(paths) == {"dot", "svg"}
    assert "<svg" in paths["svg"].read_text()[:2000]
    pending.cancel()  # after waiting: nothing happens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dag.dot", "dag.svg"]


@needs_dot
def test_a_cancelled_drawing_leaves_no_partial_file(seed_small, tmp_path):
    pending = start_render_dag(seed_small, tmp_path, "seed", full_json=False, formats=("svg", "png"))
    pending.cancel()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dag.dot"]
    with pytest.raises(RuntimeError, match="cancelled"):
        pending.wait()
