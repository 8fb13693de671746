"""The public Python API (simulator.api, re-exported by simulator): load, run, compare, serve. A run, a
comparison and a serving simulation through the API give what the command line writes, field by field."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import ROOT, TINY_MOE, TINY_SERVING

import simulator
from simulator import api
from simulator.cli import main
from simulator.config import ScenarioError

SEED = ROOT / "scenarios" / "seed_moe_4gpu.yaml"
SHORT = {"workload.output_len_tokens": 32}


def test_public_names_are_listed_once_documented_and_resolve():
    documented = (ROOT / "docs" / "api.md").read_text()
    assert [name for name in api.__all__ if f"`{name}" not in documented] == []
    for name in api.__all__:
        assert getattr(simulator, name) is getattr(api, name)
    with pytest.raises(AttributeError):
        simulator.not_a_name  # noqa: B018


def test_importing_the_package_stays_light():
    """The CLI imports simulator.* modules; the package root must not pull the API (pandas, the sweep) in."""
    code = "import sys, simulator, simulator.config; print('simulator.api' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_load_takes_a_path_a_mapping_or_a_scenario_with_overrides():
    from_path = simulator.load(SEED, ["parallel.tp=1", "parallel.ep=1", "cluster.num_gpus=2"])
    from_dict = simulator.load(SEED, {"parallel.tp": 1, "parallel.ep": 1, "cluster.num_gpus": 2})
    from_kwargs = simulator.load(SEED, parallel__tp=1, parallel__ep=1, cluster__num_gpus=2)
    assert from_path == from_dict == from_kwargs
    assert from_path.parallel.tp == 1 and from_path.num_gpus == 2
    base = simulator.load(SEED)
    assert simulator.load(base) is base
    assert simulator.load(base, hardware="h100-sxm-80gb").hardware.profile == "h100-sxm-80gb"
    mapping = simulator.load(TINY_MOE, workload__batch_size=8)
    assert mapping.workload.batch_size == 8 and mapping.name == "tiny_moe"


def test_load_errors_are_the_command_lines_one_line_errors():
    with pytest.raises(ScenarioError, match=r"parallel\.tp: tp = 3 must divide model\.num_heads"):
        simulator.load(TINY_MOE, parallel__tp=3)
    with pytest.raises(ScenarioError, match="parallel.tpp: unknown key; did you mean 'tp'"):
        simulator.load(TINY_MOE, parallel__tpp=2)
    with pytest.raises(TypeError):
        simulator.load(42)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def seed_pair(tmp_path_factory):
    """The seed (32 output tokens) through the command line and through the API."""
    out = tmp_path_factory.mktemp("cli") / "run"
    sets = [f"--set={k}={v}" for k, v in SHORT.items()]
    assert main(["run", str(SEED), "--out", str(out), "--no-dag", *sets]) == 0
    return json.loads((out / "summary.json").read_text()), simulator.run(SEED, overrides=SHORT)


def test_a_run_through_the_api_equals_the_cli_summary_field_by_field(seed_pair):
    cli, result = seed_pair
    assert set(result.summary) == set(cli)
    for key in cli:
        assert result.summary[key] == cli[key], key


def test_run_figures_tables_and_verdicts_are_the_summary_s(seed_pair):
    cli, result = seed_pair
    f = result.figures
    assert f["ttft_max_s"] == cli["ttft_s"]["max"] and f["ttft_mean_s"] == cli["ttft_s"]["mean"]
    assert f["tpot_s"] == cli["tpot_s"] and f["total_s"] == cli["total_s"]
    for k, v in cli["throughput"].items():
        assert f[k] == v
    peak = max(cli["memory"], key=lambda m: m["total_bytes"])
    assert f["memory_bytes_per_gpu"] == peak["total_bytes"]
    assert result.all_targets_met == cli["all_targets_met"] is False
    targets = result.targets.set_index("metric")
    for t in cli["targets"]:
        assert targets.loc[t["metric"], "actual"] == t["actual"] and bool(targets.loc[t["metric"], "met"]) == t["met"]
    gpus = result.gpus.set_index("gpu")
    for m in cli["memory"]:
        assert gpus.loc[m["gpu"], "total_bytes"] == m["total_bytes"]
        assert gpus.loc[m["gpu"], "kv_cache_bytes"] == m["kv_cache_bytes"]
    assert gpus.loc[0, "busy_idle_s"] == cli["busy_s"]["0"]["idle"]
    assert isinstance(result.ops, pd.DataFrame) and {"op", "gpu", "start_s", "end_s"} <= set(result.ops.columns)
    assert 0 < result.ops["end_s"].max() <= cli["total_s"]  # sampled: the trace holds the simulated steps


def test_run_write_writes_what_the_cli_writes(seed_pair, tmp_path):
    cli, result = seed_pair
    out = result.write(tmp_path / "api", dag=False)
    assert json.loads((out / "summary.json").read_text()) == cli
    assert {"summary.md", "critical_path.csv", "ops.csv.gz", "timeline.png", "memory.png", "index.html"} <= {
        p.name for p in out.iterdir()
    }


class _Phases:
    """A phase callback with `aside` (as commands.Phases has): records the phases and what was set aside."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.aside_calls: list[str] = []

    def __call__(self, name: str) -> None:
        self.names.append(name)

    def aside(self, fn, *args):
        from simulator.forking import InChild

        self.aside_calls.append(fn.__name__)
        return InChild(fn, *args)


def test_a_phase_callback_s_aside_makes_the_sampling_check_and_the_pictures(seed_pair, tmp_path):
    cli, _ = seed_pair
    phases = _Phases()
    result = simulator.run(SEED, overrides=SHORT, phase=phases)
    assert phases.aside_calls == ["sampling_check"]
    assert phases.names == ["build and simulate", "measure the sampling error"]
    assert result.summary == cli  # the check made in a second process gives the same sampling error
    out = result.write(tmp_path / "aside", dag=False, phase=phases)
    assert phases.aside_calls == ["sampling_check", "timeline_png", "memory_png"]
    assert phases.names[2:] == ["write summary files", "draw plots", "write the page"]
    assert json.loads((out / "summary.json").read_text()) == cli
    plain = seed_pair[1].write(tmp_path / "plain", dag=False)  # pictures drawn in process: the same bytes
    for name in ("timeline.png", "memory.png", "index.html"):
        assert (out / name).read_bytes() == (plain / name).read_bytes(), name


def test_run_options_and_their_errors():
    full = simulator.run(TINY_MOE, full=True)
    sampled = simulator.run(TINY_MOE)
    assert "sampling" not in full.summary and "folded" not in full.summary
    assert full.figures["ttft_max_s"] == sampled.figures["ttft_max_s"]
    with pytest.raises(ScenarioError, match="--decode-sample -1"):
        simulator.run(TINY_MOE, decode_sample=-1)


def test_compare_through_the_api_equals_the_cli_ranking(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_MOE))
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--executor", "serial", "--microbatches", "1,2", "--out", str(out)]) == 0
    cli = pd.read_csv(out / "comparison.csv", keep_default_na=False)
    result = simulator.compare(path, executor="serial", microbatches=[1, 2])
    ranking = result.ranking
    assert list(ranking["layout"]) == list(cli["layout"])
    assert [str(r) for r in ranking["rank"]] == [str(r) for r in cli["rank"]]
    for column in ("ttft_max_s", "tpot_s", "output_tokens_per_ms_per_gpu", "memory_bytes_per_gpu"):
        assert [float(x) for x in cli[column]] == [float(x) for x in ranking[column]], column
    assert result.best is not None and result.best.label == cli.loc[0, "layout"]
    assert result.best_scenario().parallel.degrees() == result.best.layout.degrees()
    assert result.counts == {"ok": len(cli), "screened": 0, "failed": 0}
    files = result.write(tmp_path / "api")
    assert (tmp_path / "api" / "comparison.csv").read_text() == (out / "comparison.csv").read_text()
    assert {f.name for f in files} >= {"comparison.csv", "comparison.md", "pareto.png", "best.yaml", "index.html"}


def test_compare_refuses_an_unknown_objective():
    with pytest.raises(ScenarioError, match="objective 'fastest'"):
        simulator.compare(TINY_MOE, objective="fastest")


def test_serve_through_the_api_equals_the_cli_summary(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({**TINY_MOE, "serving": TINY_SERVING}))
    out = tmp_path / "out"
    assert main(["serve", str(path), "--out", str(out)]) == 0
    cli = json.loads((out / "summary.json").read_text())
    result = simulator.serve(path)
    assert result.stats == cli
    requests = pd.read_csv(out / "requests.csv")
    assert list(result.requests.columns) == list(requests.columns) and len(result.requests) == 40
    assert result.requests["ttft_s"].tolist() == pytest.approx(requests["ttft_s"].tolist(), rel=1e-15)
    assert result.latency.loc["ttft_s", "p99"] == cli["latency"]["ttft_s"]["p99"]
    assert result.figures["requests_per_s"] == cli["figures"]["requests_per_s"]
    assert result.max_rate is None and result.rate_curve is None
    assert result.all_targets_met == cli["all_targets_met"]


def test_serve_needs_a_serving_section():
    with pytest.raises(ScenarioError, match="moesim serve needs a serving workload"):
        simulator.serve(TINY_MOE)


def test_the_api_module_documents_every_public_name():
    for name in api.__all__:
        obj = getattr(api, name)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), name
    assert math.isfinite(api.DEFAULT_DECODE_SAMPLE)
