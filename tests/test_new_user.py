"""Fast and light by default, and the rough edges a new user hits (issue 14): decode sampling with
its measured error, folding, light outputs, run/dag output directories, progress, the command
line's flags and width, units, paths, the trace's ordering, and import-hf's refusals."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml
from conftest import ROOT, TINY_MOE
from rich.console import Console

from simulator.cli import main
from simulator.config import load_scenario
from simulator.config.hardware import available_profiles, load_profile
from simulator.config.import_hf import import_file
from simulator.pipeline import SAMPLED_FIGURES, measure_sampling_error, run_scenario, sampled_figures
from simulator.report.memory_plot import panel_title
from simulator.verify import Check

SEED = ROOT / "scenarios" / "seed_moe_4gpu.yaml"
#: The seed with fewer decode steps: still sampled (8 + 3 warm-up of 31), quick.
SHORT = ["--set", "workload.output_len_tokens=32"]


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed") / "run"
    assert main(["run", str(SEED), "--out", str(out), *SHORT]) == 0
    return out


def test_run_by_default_folds_samples_and_states_the_measured_error(seed_run):
    summary = json.loads((seed_run / "summary.json").read_text())
    sampling = summary["sampling"]
    assert sampling["decode_steps"] == 31 and len(sampling["simulated_steps"]) < 31
    assert sampling["held_out_steps"] and not set(sampling["held_out_steps"]) & set(sampling["simulated_steps"])
    assert set(sampling["relative_error"]) == set(SAMPLED_FIGURES)
    assert summary["folded"]["representatives"] == {"0": [0, 1], "2": [2, 3]}
    md = (seed_run / "summary.md").read_text()
    assert md.count("(sampled: error") >= 4 and "held out" in md and "--full" in md


def test_the_stated_error_is_the_difference_from_a_denser_simulation():
    scenario = load_scenario(SEED, ["workload.output_len_tokens=32"])
    run = measure_sampling_error(run_scenario(scenario, decode_sample=4, fold=True), 4)
    check = run_scenario(scenario, decode_sample=7, fold=True)
    ours, theirs = sampled_figures(run.metrics), sampled_figures(check.metrics)
    for k in SAMPLED_FIGURES:
        assert run.sampling["relative_error"][k] == pytest.approx(abs(ours[k] - theirs[k]) / theirs[k], abs=1e-15)
    full = run_scenario(scenario)
    # the interpolation is close to every step simulated, and the TTFT (not sampled) is exact
    assert run.metrics.tpot_s == pytest.approx(full.metrics.tpot_s, rel=1e-3)
    assert run.metrics.ttft_s.max == full.metrics.ttft_s.max


def test_full_simulates_every_step_on_every_gpu(tmp_path):
    out = tmp_path / "full"
    assert main(["run", str(SEED), "--out", str(out), "--full", "--no-dag", *SHORT]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "sampling" not in summary and "folded" not in summary


def test_default_outputs_are_light_and_heavy_ones_opt_in(seed_run, tmp_path):
    names = {p.name for p in seed_run.iterdir()}
    assert "dag.json" not in names and "ops.csv" not in names and "trace.json" not in names
    assert {"trace.json.gz", "ops.csv.gz", "dag.svg", "index.html", "summary.json"} <= names
    assert sum(p.stat().st_size for p in seed_run.iterdir()) < 10e6
    trace = orjson.loads(gzip.decompress((seed_run / "trace.json.gz").read_bytes()))
    assert trace["traceEvents"]
    out = tmp_path / "heavy"
    assert main(["run", str(SEED), "--out", str(out), "--artifacts", "all", "--no-dag", *SHORT]) == 0
    assert (out / "dag.json").is_file() and (out / "ops.csv").is_file()
    out = tmp_path / "ops"
    assert main(["run", str(SEED), "--out", str(out), "--ops", "--full-dag", "--no-dag", *SHORT]) == 0
    assert (out / "dag.json").is_file() and (out / "ops.csv").is_file()


def test_folded_trace_shows_the_representatives_and_whom_they_stand_for(seed_run):
    trace = orjson.loads(gzip.decompress((seed_run / "trace.json.gz").read_bytes()))
    names = [e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "process_name"]
    assert "GPU 0 (stands for GPUs 0, 1)" in names and "GPU 2 (stands for GPUs 2, 3)" in names
    assert not any(n.startswith("GPU 1") or n.startswith("GPU 3") for n in names)


def test_trace_slices_on_a_track_never_overlap(seed_run):
    trace = orjson.loads(gzip.decompress((seed_run / "trace.json.gz").read_bytes()))
    tracks: dict = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X" and e["pid"] != 0:
            start = round(e["ts"] * 1000)
            assert start == e["ts"] * 1000 or abs(start - e["ts"] * 1000) < 1e-6  # whole nanoseconds
            tracks.setdefault((e["pid"], e["tid"]), []).append((start, start + round(e["dur"] * 1000)))
    assert tracks
    for slices in tracks.values():
        slices.sort()
        assert all(a[1] <= b[0] for a, b in zip(slices, slices[1:]))


def test_run_then_dag_keep_both_outputs(tmp_path):
    os.chdir(tmp_path)
    try:
        assert main(["run", str(SEED), "--no-dag", *SHORT]) == 0
        assert main(["dag", str(SEED), *SHORT]) == 0
        assert (tmp_path / "reports/seed_moe_4gpu/summary.json").is_file()
        assert (tmp_path / "reports/seed_moe_4gpu/dag/dag.svg").is_file()
        assert main(["run", str(SEED), "--no-dag", *SHORT]) == 0  # a new run keeps the DAG beneath it
        assert (tmp_path / "reports/seed_moe_4gpu/dag/dag.svg").is_file()
    finally:
        os.chdir(ROOT)


def test_dag_refuses_to_replace_a_run_directory(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", str(SEED), "--out", str(out), "--no-dag", *SHORT]) == 0
    assert main(["dag", str(SEED), "--out", str(out), *SHORT]) == 2
    assert "holds the output of `moesim run`" in capsys.readouterr().err
    assert (out / "summary.json").is_file()


def test_an_existing_empty_directory_is_fine_as_out(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["run", str(SEED), "--out", str(out), "--no-dag", *SHORT]) == 0
    assert (out / "summary.json").is_file()


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("moesim ")


def test_debug_is_accepted_after_the_subcommand(tmp_path):
    from simulator.config import ScenarioError

    missing = str(tmp_path / "nope.yaml")
    assert main(["run", missing]) == 2  # one line, no traceback
    with pytest.raises(ScenarioError):  # --debug after the subcommand shows the traceback
        main(["run", missing, "--debug"])
    with pytest.raises(ScenarioError):
        main(["--debug", "run", missing])


def test_narrow_terminal_tables_fit(tmp_path):
    env = {**os.environ, "COLUMNS": "100"}
    proc = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", str(SEED), "--out", str(tmp_path / "r"), "--no-dag", *SHORT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 100


def test_piped_output_is_quiet_and_wide(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", str(SEED), "--out", str(tmp_path / "r"), "--no-dag", *SHORT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0 and "build and simulate" not in proc.stdout + proc.stderr  # no progress line
    assert max(len(line) for line in proc.stdout.splitlines()) > 100  # 160 columns, not 80


def test_progress_names_the_phases_on_a_terminal():
    from simulator.commands import phases

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    with phases(console) as phase:
        phase("build and simulate")
        console.print("done")
    assert "done" in buffer.getvalue() and phase.elapsed_s >= 0


def test_text_with_square_brackets_is_printed_literally():
    from simulator.report.summary import print_checks

    console = Console(file=io.StringIO(), width=200, record=True)
    print_checks(console, [Check("shapes", True, "gate [hidden, 1] per layer")])
    assert "[hidden, 1]" in console.export_text()


def test_memory_picture_names_the_peak_over_time_and_the_summary_figure():
    title = panel_title(
        0,
        18.59e9,
        {
            "capacity_bytes": 64e9,
            "total_bytes": 18.72e9,
            "weight_bytes": 1e8,
            "reserve_bytes": 1e9,
            "activation_bytes": 6.71e9,
        },
        10.87e9,
        6.58e9,
    )
    assert "peak over time 18.59 GB" in title and "summary (closed form, as the target) 18.72 GB" in title


@pytest.mark.parametrize("name", available_profiles())
def test_profile_memory_is_the_figure_its_name_and_datasheet_give(name):
    figure = next((int(w[:-2]) for w in name.split("-") if w.endswith("gb") and w[:-2].isdigit()), None)
    if figure is not None:
        assert load_profile(name).memory_bytes == figure * 1e9


def test_profiles_table_shows_the_datasheet_gb(capsys):
    assert main(["profiles"]) == 0
    text = capsys.readouterr().out
    assert "80.0 GB" in text and "141.0 GB" in text and "85.5" not in text and "150.1" not in text


def test_no_development_tree_paths_reach_the_user(tmp_path, capsys):
    assert main(["dag", str(SEED), "--out", str(tmp_path / "d"), *SHORT]) == 0
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    assert "shared/" not in capsys.readouterr().out


def _write(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


_DENSE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 100,
    "torch_dtype": "bfloat16",
}


def test_import_hf_reads_text_config(tmp_path):
    cfg = {
        "architectures": ["Llama4ForConditionalGeneration"],
        "model_type": "llama4",
        "torch_dtype": "bfloat16",
        "text_config": _DENSE,
        "vision_config": {"hidden_size": 8},
    }
    _, model, _, _ = import_file(_write(tmp_path / "l4" / "config.json", cfg))
    assert model.num_layers == 2 and model.hidden_size == 64


def test_import_hf_takes_a_model_directory(tmp_path, capsys):
    _write(tmp_path / "m" / "config.json", _DENSE)
    assert main(["import-hf", str(tmp_path / "m")]) == 0
    assert main(["import-hf", str(tmp_path)]) == 2
    assert "directory without config.json" in capsys.readouterr().err


def test_import_hf_refuses_linear_attention_in_one_line(tmp_path, capsys):
    cfg = {**_DENSE, "model_type": "qwen3_next", "layer_types": ["linear_attention", "full_attention"]}
    assert main(["import-hf", str(_write(tmp_path / "c.json", cfg))]) == 2
    err = capsys.readouterr().err
    assert "linear-attention" in err and err.count("\n") == 1


def test_mxfp4_weights_are_the_mxfp4_precision_preset(tmp_path):
    cfg = {**_DENSE, "quantization_config": {"quant_method": "mxfp4"}}
    _, model, _, _ = import_file(_write(tmp_path / "g.json", cfg))
    assert model.precision is not None and model.precision.preset == "mxfp4"
    assert model.weight_memory_approximation is None


def test_unknown_quantisation_makes_the_memory_verdict_approximate(tmp_path):
    cfg = {**_DENSE, "quantization_config": {"quant_method": "hqq"}}
    text, model, notes, _ = import_file(_write(tmp_path / "g.json", cfg))
    assert model.weight_memory_approximation and any("approximate" in n for n in notes)
    scenario = yaml.safe_load(yaml.safe_dump(TINY_MOE))
    scenario["model"] = yaml.safe_load(text)
    scenario["targets"] = {"memory_bytes_per_gpu": {"max": 80e9}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    out = tmp_path / "r"
    assert main(["run", str(path), "--out", str(out), "--no-dag", "--set", "parallel.ep=1"]) in (0, 1)
    md = (out / "summary.md").read_text()
    assert "MET (approximate)" in md and "Memory is approximate" in md


def test_folded_dag_drawing_says_whom_the_simulated_gpus_stand_for(seed_run):
    assert "GPU 0, standing for GPUs 0, 1" in (seed_run / "dag.dot").read_text()


def test_the_sampling_check_made_aside_equals_the_one_made_after_the_run():
    from simulator.forking import InChild
    from simulator.pipeline import sampling_check

    scenario = load_scenario(SEED, ["workload.output_len_tokens=32"])
    run = run_scenario(scenario, decode_sample=4, fold=True)
    aside = measure_sampling_error(run, 4, InChild(sampling_check, scenario, 4, True, run.hardware).result())
    assert aside.sampling == measure_sampling_error(run, 4).sampling


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_second_process_is_forked_with_the_progress_line_paused():
    import threading

    from simulator.commands import phases

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with phases(console) as phase:
        assert threading.active_count() > 1  # the progress line's refresh thread
        assert phase.aside(os.getpid).result() != os.getpid()  # made in a child process
        assert threading.active_count() > 1  # and the line goes on
