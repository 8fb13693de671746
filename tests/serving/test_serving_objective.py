"""`moesim compare --objective goodput_per_gpu | max_rate`: layouts ranked by their serving simulation."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml
from conftest import TINY_MOE

from simulator.cli import main
from simulator.config import ParallelSpec
from simulator.sweep import LayoutResult, rank_results
from tests.serving.test_serve_cli import SERVING


def _row(index: int, tput: float, serving: dict, status: str = "ok") -> LayoutResult:
    return LayoutResult(
        index=index,
        layout=ParallelSpec.of_degrees(1, 1, 4, 1, 1, index + 1),
        own=False,
        status=status,
        throughput={"output_tokens_per_ms_per_gpu": tput},
        memory_bytes_per_gpu=1.0,
        capacity_bytes=2.0,
        serving=serving,
    )


ROWS = [
    _row(0, 9.0, {"goodput_requests_per_s_per_gpu": 1.0, "max_rate_per_s_per_gpu": 3.0}),
    _row(1, 1.0, {"goodput_requests_per_s_per_gpu": 2.0, "max_rate_per_s_per_gpu": 1.0}),
    _row(2, 5.0, {"goodput_requests_per_s_per_gpu": 2.0, "max_rate_per_s_per_gpu": math.nan}),
    _row(3, 9.0, {}, status="screened"),
]


@pytest.mark.parametrize(
    "objective, order",
    [
        ("goodput_per_gpu", [2, 1, 0, 3]),  # the goodput tie goes to the higher throughput
        ("max_rate", [0, 1, 2, 3]),  # no rate meeting the targets (NaN) ranks last
    ],
)
def test_serving_objectives_rank_by_their_figure(objective, order):
    ranked = rank_results(ROWS, objective)
    assert [r.index for r in ranked] == order
    assert [r.rank for r in ranked] == [1, 2, 3, None]


def test_existing_objectives_ignore_serving_figures():
    plain = [_row(r.index, r.output_tput, {}, r.status) for r in ROWS]
    assert [r.index for r in rank_results(ROWS, "throughput")] == [r.index for r in rank_results(plain, "throughput")]


@pytest.fixture
def small_serving_file(tmp_path):
    data = {
        **TINY_MOE,
        "model": {**TINY_MOE["model"], "num_layers": 2, "num_experts": 2, "expert_ffn_size": 63},
        "serving": {**SERVING, "workload": {**SERVING["workload"], "num_requests": 40}},
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_compare_ranks_layouts_by_serving_goodput(small_serving_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                str(small_serving_file),
                "--out",
                str(out),
                "--jobs",
                "1",
                "--microbatches",
                "1",
                "--objective",
                "goodput_per_gpu",
            ]
        )
        == 0
    )
    table = pd.read_csv(out / "comparison.csv")
    ranked = table[table["rank"].notna()]
    assert len(ranked) > 1
    goodput = ranked["serving_goodput_requests_per_s_per_gpu"].tolist()
    assert goodput == sorted(goodput, reverse=True)
    printed = capsys.readouterr().out
    assert "serving simulation per layout" in printed
    assert "Serving simulation per layout" in (out / "comparison.md").read_text()


def test_compare_serving_objective_needs_a_serving_section(tmp_path, capsys):
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(TINY_MOE))
    assert main(["compare", str(path), "--out", str(tmp_path / "x"), "--objective", "max_rate"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "serving:" in err and "--objective max_rate" in err


def test_a_layouts_serving_figures_give_the_share_of_iterations_its_engines_host_set(small_serving_file):
    # an overlapped host of 1 s an iteration outlasts every GPU pass of the tiny model: every iteration is the host's;
    # without an engine (no host time) the figure is absent
    from simulator.config import load_scenario
    from simulator.sweep.serving import serving_figures

    slow = load_scenario(
        small_serving_file, ["serving.engine=trtllm-1.0", "serving.host={per_iteration_s: 1.0, overlapped: true}"]
    )
    assert serving_figures(slow, "goodput_per_gpu")["host_bound_share"] == 1.0
    assert "host_bound_share" not in serving_figures(load_scenario(small_serving_file), "goodput_per_gpu")
