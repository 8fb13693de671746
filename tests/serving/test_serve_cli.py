"""`moesim serve`: every file written, requests.csv and summary.json agree with the stats stage, --check and
--max-rate, one-line errors, valid pictures."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_MOE, TINY_SERVING

from simulator.cli import main
from simulator.config import resolve_hardware
from simulator.serving import session
from simulator.serving.capacity import resolve_serving
from simulator.serving.pricing import LinearPricer
from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import LATENCY_METRICS, STATISTICS, summarize

# the tiny request stream, 120 requests with 5 warming up, and a TPOT target beside the TTFT one
SERVING = {
    **TINY_SERVING,
    "workload": {**TINY_SERVING["workload"], "num_requests": 120, "warmup_requests": 5},
    "targets": {**TINY_SERVING["targets"], "tpot_p99_s": 1.0},
}
FILES = (
    "requests.csv",
    "summary.json",
    "summary.md",
    "latency_cdf.png",
    "timeseries.png",
    "gantt.png",
    "serving_trace.json",
    "index.html",
)
#: Dyadic figures: an iteration of n new tokens and c context tokens takes 1/64 + n/1024 + c/8192 s.
TEST_PRICER = LinearPricer(1 / 64, 1 / 1024, 1 / 8192)


def write_scenario(tmp_path, serving: dict | None = SERVING, name: str = "serve.yaml"):
    data = dict(TINY_MOE)
    if serving is not None:
        data["serving"] = serving
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def serve_file(tmp_path):
    return write_scenario(tmp_path)


@pytest.fixture
def linear_pricer(monkeypatch):
    """Price iterations with TEST_PRICER whatever pricer the scenario would get."""

    def inputs(scenario):
        spec = resolve_serving(scenario, resolve_hardware(scenario))
        return spec, TEST_PRICER, spec.num_gpus

    monkeypatch.setattr(session, "serving_inputs", inputs)


def test_serve_writes_every_file(serve_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["serve", str(serve_file), "--out", str(out)]) == 0
    for name in FILES:
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "Serving latency" in printed and "Targets" in printed and "MET" in printed
    html = (out / "index.html").read_text()
    assert all(f'src="{n}"' in html for n in ("latency_cdf.png", "timeseries.png", "gantt.png"))
    assert not (out / "rate_curve.csv").exists()


def test_requests_csv_has_one_row_per_request(serve_file, tmp_path):
    out = tmp_path / "out"
    assert main(["serve", str(serve_file), "--out", str(out)]) == 0
    table = pd.read_csv(out / "requests.csv")
    assert table["request_id"].tolist() == list(range(120))
    assert table["warmup"].sum() == 5
    for column in (
        "replica",
        "arrival_s",
        "queueing_s",
        "ttft_s",
        "tpot_s",
        "e2e_s",
        "input_tokens",
        "output_tokens",
        "preemptions",
        "itl_mean_s",
        "itl_max_s",
    ):
        assert column in table
    assert (table["e2e_s"] >= table["ttft_s"]).all() and (table["ttft_s"] >= table["queueing_s"]).all()
    assert set(table["replica"]) == {0}  # parallel.dp = 1: one replica


def test_summary_json_figures_are_the_stats_stage_figures(serve_file, tmp_path):
    out = tmp_path / "out"
    assert main(["serve", str(serve_file), "--out", str(out)]) == 0
    doc = json.loads((out / "summary.json").read_text())
    loaded = session.load_serving_scenario(serve_file, None, "moesim serve")
    spec, pricer, _ = session.serving_inputs(loaded.scenario)
    summary = summarize(simulate_serving(spec, pricer, base_dir=loaded.base_dir))
    for key, value in summary.figures.items():
        assert doc["figures"][key] == value, key
    for metric in LATENCY_METRICS:
        for stat in STATISTICS:
            expected = float(summary.latency.loc[metric, stat])
            assert doc["latency"][metric][stat] == (None if math.isnan(expected) else expected)
    assert {t["target"] for t in doc["targets"]} == {"ttft_p99_s", "tpot_p99_s"}
    assert doc["all_targets_met"] == summary.all_targets_met
    assert 0 < doc["figures"]["kv_peak_blocks"] <= 64 and doc["figures"]["kv_capacity_blocks"] == 64


def test_check_exits_1_when_a_target_is_missed(tmp_path, linear_pricer):
    missed = {**SERVING, "targets": {"ttft_p99_s": 0.001}}
    path = write_scenario(tmp_path, missed)
    assert main(["serve", str(path), "--out", str(tmp_path / "a"), "--check"]) == 1
    assert main(["serve", str(path), "--out", str(tmp_path / "b")]) == 0
    assert main(["serve", str(write_scenario(tmp_path, name="met.yaml")), "--out", str(tmp_path / "c"), "--check"]) == 0


def test_max_rate_writes_the_curve_and_the_rate_just_above_misses(tmp_path, linear_pricer):
    serving = {**SERVING, "targets": {"ttft_p99_s": 0.25}}
    path = write_scenario(tmp_path, serving)
    out = tmp_path / "out"
    assert main(["serve", str(path), "--out", str(out), "--max-rate", "--rel-tol", "0.02"]) == 0
    curve = pd.read_csv(out / "rate_curve.csv")
    assert np.all(np.diff(curve["rate_per_s"]) > 0)
    doc = json.loads((out / "summary.json").read_text())
    best = doc["max_rate"]["rate_per_s"]
    assert best is not None and not doc["max_rate"]["capped"]
    met = curve[curve["all_targets_met"]]["rate_per_s"]
    missed = curve[~curve["all_targets_met"]]["rate_per_s"]
    assert met.max() == best < missed.min() <= best * 1.02
    for name in ("rate_curve.png", "index.html"):
        assert (out / name).is_file()
    assert "Max rate" in (out / "index.html").read_text()
    assert "Max rate" in (out / "summary.md").read_text()


def test_max_rate_without_a_serving_section_says_what_to_add(tmp_path, capsys):
    path = write_scenario(tmp_path, None)
    assert main(["serve", str(path), "--out", str(tmp_path / "x"), "--max-rate"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max-rate" in err and "serving:" in err
    assert not (tmp_path / "x").exists()


def test_max_rate_without_a_target_is_one_line(tmp_path, capsys):
    path = write_scenario(tmp_path, {k: v for k, v in SERVING.items() if k != "targets"})
    assert main(["serve", str(path), "--out", str(tmp_path / "x"), "--max-rate"]) == 2
    assert "needs a target" in capsys.readouterr().err


def test_bad_serving_section_names_the_field(tmp_path, capsys):
    bad = {**SERVING, "scheduler": {**SERVING["scheduler"], "max_num_seq": 4}}
    assert main(["serve", str(write_scenario(tmp_path, bad)), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "max_num_seqs" in err


def test_set_overrides_the_serving_section(serve_file, tmp_path):
    out = tmp_path / "out"
    assert main(["serve", str(serve_file), "--out", str(out), "--set", "serving.workload.num_requests=30"]) == 0
    assert len(pd.read_csv(out / "requests.csv")) == 30


def test_pictures_are_valid_pngs(tmp_path, linear_pricer):
    from PIL import Image

    out = tmp_path / "out"
    assert (
        main(
            [
                "serve",
                str(write_scenario(tmp_path, {**SERVING, "targets": {"ttft_p99_s": 0.25}})),
                "--out",
                str(out),
                "--max-rate",
            ]
        )
        == 0
    )
    for name in ("latency_cdf.png", "timeseries.png", "gantt.png", "rate_curve.png"):
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 500


def test_trace_has_a_track_per_request_and_the_iterations(serve_file, tmp_path):
    out = tmp_path / "out"
    assert main(["serve", str(serve_file), "--out", str(out)]) == 0
    events = json.loads((out / "serving_trace.json").read_text())["traceEvents"]
    request_tracks = {e["tid"] for e in events if e.get("ph") == "X" and e["pid"] == 1}
    assert request_tracks == set(range(100))
    iterations = [e for e in events if e.get("ph") == "X" and e["pid"] == 2]
    assert iterations and all(e["dur"] > 0 for e in iterations)


@pytest.mark.parametrize(
    "argv, what",
    [
        (["serve"], "moesim serve"),
        (["serve", "--max-rate"], "--max-rate"),
        (["compare", "--objective", "max_rate"], "--objective max_rate"),
    ],
)
def test_a_scenario_without_serving_section_is_a_one_line_error(tmp_path, capsys, argv, what):
    path = write_scenario(tmp_path, serving=None)
    assert main([argv[0], str(path), *argv[1:], "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{what} needs a serving workload" in err and "serving:" in err
    assert not (tmp_path / "out").exists()


def test_trace_keeps_the_first_iterations_in_time_and_says_so(serve_file, tmp_path):
    """serving_trace.json is capped (a long run stays a few MB): the first N iterations in time, named as such."""
    from simulator.api import load, serve
    from simulator.report.serving_trace import serving_trace_events

    run = serve(load(serve_file)).sim
    total = len(run.timeseries)
    events = serving_trace_events(run, num_requests=3, num_iterations=5)
    spans = [e for e in events if e.get("ph") == "X" and e["pid"] == 2]
    counters = [e for e in events if e.get("ph") == "C"]
    assert len(spans) == len(counters) == 5
    first_five_us = sorted(run.timeseries["start_s"].tolist())[:5]
    assert [e["ts"] for e in spans] == [round(t * 1e6, 3) for t in first_five_us]
    names = [e["args"]["name"] for e in events if e.get("name") == "process_name"]
    assert f"iterations (first 5 of {total})" in names and "requests (first 3 of" in names[0]


def test_the_summary_says_the_scheduler_as_simulated_and_where_its_defaults_came_from(tmp_path, linear_pricer, capsys):
    own = write_scenario(tmp_path, name="own.yaml")
    assert main(["serve", str(own), "--out", str(tmp_path / "own")]) == 0
    line = (
        "scheduler: at most 8 sequences and 128 tokens an iteration, admission on_demand; KV 64 blocks of 16 tokens "
        "(the memory model: the GPU's memory less the reserve, weights and activations, or capacity_blocks); fields "
        "the scenario leaves out: moesim's defaults."
    )
    assert line in (tmp_path / "own" / "summary.md").read_text()
    assert "admission on_demand; KV 64 blocks of 16 tokens" in capsys.readouterr().out
    # with an engine and no scheduler section: the engine's defaults, named as such
    serving = {k: v for k, v in SERVING.items() if k != "scheduler"} | {"engine": "trtllm"}
    trt = write_scenario(tmp_path, serving, name="trt.yaml")
    assert main(["serve", str(trt), "--out", str(tmp_path / "trt")]) == 0
    text = (tmp_path / "trt" / "summary.md").read_text()
    assert (
        "at most 2048 sequences and 8192 tokens an iteration, admission reserve, prompts whole (split_prompts false); KV "
        in text
    )
    assert "blocks of 32 tokens (free_memory_fraction 0.9 of what the weights leave)" in text
    assert "fields the scenario leaves out: engine trtllm's defaults, else moesim's." in text
    # SGLang 0.5 derives its static share (the test's tiny model on the scenario's GPU and layout)
    sg = write_scenario(
        tmp_path, {k: v for k, v in SERVING.items() if k != "scheduler"} | {"engine": "sglang-0.5"}, name="sg.yaml"
    )
    assert main(["serve", str(sg), "--out", str(tmp_path / "sg")]) == 0
    text = (tmp_path / "sg" / "summary.md").read_text()
    assert "at most 2048 sequences and" in text and "of the GPU for the weights and the KV cache)" in text
    assert "(mem_fraction_static 0." in text
