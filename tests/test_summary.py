"""Run summary report: unit formatting, summary_dict of the tiny run, its markdown and the files a run writes."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict

import pytest
from conftest import TINY_MOE, make_scenario

from simulator.pipeline import run_scenario
from simulator.report.summary import fmt_bytes, fmt_s, summary_dict, summary_markdown, target_rows, write_run_files


@pytest.fixture(scope="module")
def tiny_run():
    return run_scenario(make_scenario(TINY_MOE))


@pytest.fixture(scope="module")
def tiny_summary(tiny_run):
    return summary_dict(tiny_run)


# ---------------------------------------------------------------------------------------------
# fmt_s and fmt_bytes


@pytest.mark.parametrize(
    "seconds, text",
    [
        (12.3456, "12.346 s"),
        (1.0, "1.000 s"),  # the s / ms boundary belongs to seconds
        (0.999, "999.000 ms"),
        (0.0125, "12.500 ms"),
        (1e-3, "1.000 ms"),  # the ms / us boundary belongs to milliseconds
        (0.000999, "999.00 us"),
        (2.5e-6, "2.50 us"),
        (0.0, "0.00 us"),
    ],
)
def test_fmt_s_picks_the_unit_at_its_boundaries(seconds, text):
    assert fmt_s(seconds) == text


@pytest.mark.parametrize("seconds, text", [(math.inf, "inf"), (-math.inf, "-inf"), (math.nan, "nan")])
def test_fmt_s_writes_non_finite_values_as_python_does(seconds, text):
    assert fmt_s(seconds) == text


@pytest.mark.parametrize(
    "n, text",
    [
        (64e9, "64.00 GB"),
        (1.5e9, "1.50 GB"),
        (1e8, "0.10 GB"),  # from 0.1 GB up, gigabytes
        (99_990_000, "99.99 MB"),
        (165376, "0.17 MB"),
        (0, "0.00 MB"),
    ],
)
def test_fmt_bytes_switches_to_gigabytes_at_a_tenth_of_one(n, text):
    assert fmt_bytes(n) == text


# ---------------------------------------------------------------------------------------------
# summary_dict

SUMMARY_KEYS = {
    "scenario",
    "model",
    "layout",
    "workload",
    "ttft_s",
    "tpot_s",
    "prefill_s",
    "decode_s",
    "total_s",
    "throughput",
    "memory",
    "calibration",
    "busy_s",
    "bottleneck",
    "routing",
    "placement",
    "critical_path",
    "targets",
    "all_targets_met",
    "audit",
    "verification",
    "dag",
}


def test_summary_has_the_expected_keys(tiny_summary):
    assert set(tiny_summary) == SUMMARY_KEYS


def test_summary_ttft_and_tpot_are_the_metrics_ones(tiny_run, tiny_summary):
    m = tiny_run.metrics
    assert tiny_summary["ttft_s"] == asdict(m.ttft_s)
    assert set(tiny_summary["ttft_s"]) == {"mean", "p50", "p99", "max"}
    assert tiny_summary["tpot_s"] == m.tpot_s
    assert (tiny_summary["prefill_s"], tiny_summary["decode_s"], tiny_summary["total_s"]) == (
        m.prefill_s,
        m.decode_s,
        m.total_s,
    )
    assert tiny_summary["throughput"] == m.throughput


def test_summary_names_the_scenario_layout_and_workload(tiny_summary):
    assert (tiny_summary["scenario"], tiny_summary["model"]) == ("tiny_moe", "tiny")
    assert tiny_summary["layout"] == {
        "tp": 2,
        "pp": 2,
        "dp": 1,
        "ep": 2,
        "etp": 1,
        "redundant_experts": 0,
        "microbatches": 1,
        "num_gpus": 4,
        "hardware": "h100-sxm-80gb",
        "mode": "cuda_graph",
        "allreduce": "custom",
        "custom_allreduce_max_bytes": 8 * 2**20,
        "moe_over_tp_allreduce": False,
    }
    assert (
        tiny_summary["workload"]["batch_size"],
        tiny_summary["workload"]["input_len_tokens"],
        tiny_summary["workload"]["output_len_tokens"],
    ) == (4, 16, 3)


def test_summary_memory_rows_carry_the_closed_form_figures(tiny_summary):
    # tests/test_memory.py: 165376 weight bytes and 18432 KV bytes per GPU
    assert [(r["gpu"], r["weight_bytes"], r["kv_cache_bytes"]) for r in tiny_summary["memory"]] == [
        (g, 165376, 18432) for g in range(4)
    ]
    assert all(r["fits"] for r in tiny_summary["memory"])


def test_summary_targets_and_the_all_met_flag(tiny_summary):
    # TINY_MOE: TTFT <= 1 s (met), output >= 1e6 tokens/ms/GPU (missed)
    assert [(t["metric"], t["bound"], t["limit"], t["met"]) for t in tiny_summary["targets"]] == [
        ("ttft_s", "max", 1.0, True),
        ("output_tokens_per_ms_per_gpu", "min", 1e6, False),
    ]
    assert tiny_summary["all_targets_met"] is False


def test_summary_without_declared_figures_has_no_audit(tiny_summary):
    assert tiny_summary["audit"] == []


def test_summary_dag_counts_are_the_graphs(tiny_run, tiny_summary):
    assert tiny_summary["dag"] == {
        "nodes": tiny_run.graph.number_of_nodes(),
        "edges": tiny_run.graph.number_of_edges(),
        "engine_events": tiny_run.sim.num_events,
    }


def test_summary_is_deterministic(tiny_run, tiny_summary):
    assert json.dumps(summary_dict(tiny_run), sort_keys=True) == json.dumps(tiny_summary, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Target rows and markdown


def test_target_rows_format_each_metric_in_its_unit():
    summary = {
        "targets": [
            {"metric": "ttft_s", "bound": "max", "limit": 2.0, "actual": 0.0125, "met": True},
            {"metric": "memory_bytes_per_gpu", "bound": "max", "limit": 64e9, "actual": 70.5e9, "met": False},
            {"metric": "output_tokens_per_ms_per_gpu", "bound": "min", "limit": 850, "actual": 12.34567, "met": False},
        ]
    }
    assert target_rows(summary) == [
        ("ttft_s", "<= 2.000 s", "12.500 ms", "MET"),
        ("memory_bytes_per_gpu", "<= 64.00 GB", "70.50 GB", "MISSED"),
        ("output_tokens_per_ms_per_gpu", ">= 850", "12.35", "MISSED"),
    ]


def test_markdown_has_the_target_table_rows(tiny_run, tiny_summary):
    md = summary_markdown(tiny_summary)
    ttft = tiny_run.metrics.ttft_s.max
    output = tiny_run.metrics.throughput["output_tokens_per_ms_per_gpu"]
    assert "| target | limit | actual | verdict |" in md
    assert f"| ttft_s | <= 1.000 s | {fmt_s(ttft)} | MET |" in md.splitlines()
    assert f"| output_tokens_per_ms_per_gpu | >= 1e+06 | {output:.4g} | MISSED |" in md.splitlines()


def test_markdown_heading_and_layout_line(tiny_summary):
    lines = summary_markdown(tiny_summary).splitlines()
    assert lines[0] == "# moesim run: tiny_moe"
    assert lines[2] == (
        "Model `tiny` on 4 x `h100-sxm-80gb`, TP=2 EP=2 ETP=1 PP=2 DP=1, 1 microbatch(es), "
        "cuda_graph decode, custom all-reduce below 8.39 MB. Workload: batch 4, input 16, output 3 tokens."
    )


def test_layout_line_names_how_the_tp_collectives_were_priced():
    from simulator.report.summary import _collectives

    base = {"tp": 4, "etp": 1, "allreduce": "custom", "custom_allreduce_max_bytes": 8e6, "moe_over_tp_allreduce": True}
    assert _collectives(base) == ", custom all-reduce below 8.00 MB, MoE over TP by one all-reduce"
    assert _collectives({**base, "allreduce": "nccl", "moe_over_tp_allreduce": False}) == ", NCCL ring all-reduce"
    assert _collectives({**base, "tp": 1}) == ""  # no TP collective to price
    # an MLA model also says how its prefill ran (runtime.mla_prefill); the key is there only with MLA
    assert _collectives({**base, "tp": 1, "mla_prefill": "decompressed"}) == ", MLA prefill decompressed"
    assert _collectives({**base, "mla_prefill": "absorbed"}).endswith("one all-reduce, MLA prefill absorbed")
    # an expert group exchanging by all-gather (runtime.ep_dispatch allgather); the default all-to-all is not named
    gathered = {**base, "tp": 1, "ep_dispatch": "allgather"}
    assert _collectives(gathered) == ", experts reached by all-gather and reduce-scatter"


def test_summary_names_the_mla_prefill_only_for_mla_models(tiny_summary):
    from tests.conftest import DEEPSEEK_TINY

    assert "mla_prefill" not in tiny_summary["layout"]
    s = make_scenario(TINY_MOE, model=DEEPSEEK_TINY, runtime={"mla_prefill": "absorbed"})
    assert summary_dict(run_scenario(s, verify=False))["layout"]["mla_prefill"] == "absorbed"


def test_markdown_memory_row_per_gpu(tiny_summary):
    md = summary_markdown(tiny_summary)
    rows = [line for line in md.splitlines() if line.startswith("| 0 | 0.17 MB | 0.02 MB |")]
    assert len(rows) == 1 and rows[0].endswith("| yes |")


def test_markdown_has_a_claim_audit_section_only_with_audit_lines(tiny_summary):
    assert "## Claim audit" not in summary_markdown(tiny_summary)
    audited = {
        **tiny_summary,
        "audit": [{"claim": "c", "declared": "d", "computed": "e", "verdict": "holds", "explanation": "x"}],
    }
    assert "| c | d | e | holds | x |" in summary_markdown(audited).splitlines()


# ---------------------------------------------------------------------------------------------
# Run files


@pytest.fixture(scope="module")
def written(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, write_run_files(tiny_run, out)


def test_run_files_are_written(written):
    out, _ = written
    assert sorted(p.name for p in out.iterdir()) == ["critical_path.csv", "ops.csv", "summary.json", "summary.md"]


def test_summary_json_round_trips_to_the_returned_summary(written, tiny_summary):
    out, summary = written
    loaded = json.loads((out / "summary.json").read_text())
    assert loaded == summary
    assert loaded["tpot_s"] == tiny_summary["tpot_s"]
    assert json.dumps(loaded, sort_keys=True) == json.dumps(tiny_summary, sort_keys=True)


def test_summary_md_is_the_markdown_of_the_summary(written):
    out, summary = written
    assert (out / "summary.md").read_text() == summary_markdown(summary)


def test_ops_csv_has_one_row_per_op_and_gpus_as_text(written, tiny_run):
    out, _ = written
    rows = list(csv.DictReader(io.StringIO((out / "ops.csv").read_text())))
    assert len(rows) == len(tiny_run.sim.ops)
    assert list(rows[0]) == list(tiny_run.sim.ops.columns)
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], set()).add(r["gpu"])
    assert by_kind["communication"] >= {"0,1", "2,3"}  # a collective's GPUs joined with commas
    assert all(re.fullmatch(r"\d(,\d)+", g) for g in by_kind["communication"])
    assert by_kind["marker"] == {""}  # markers have no GPU
    assert by_kind["compute"] == {"0", "1", "2", "3"}


def test_critical_path_csv_lists_both_paths_with_their_ops_rows(written, tiny_run):
    out, _ = written
    rows = list(csv.DictReader(io.StringIO((out / "critical_path.csv").read_text())))
    assert list(rows[0])[:2] == ["path", "row"]
    assert {"ttft", "total"} <= {r["path"] for r in rows}
    ops = tiny_run.sim.ops
    for r in rows[:5]:
        assert 0 <= int(r["row"]) < len(ops)
