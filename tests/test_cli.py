"""The command line: outputs written whole, exit codes, one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_MOE

from simulator.cli import main


@pytest.fixture
def tiny_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_MOE))
    return path


def test_run_writes_summary_ops_and_dag(tiny_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(tiny_file), "--out", str(out), "--artifacts", "all"]) == 0
    for name in ("summary.json", "summary.md", "ops.csv", "dag.dot", "dag.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("ttft_s", "tpot_s", "prefill_s", "decode_s", "total_s", "throughput", "memory", "targets", "audit"):
        assert key in summary
    assert set(summary["ttft_s"]) == {"mean", "p50", "p99", "max"}
    assert "TTFT" in capsys.readouterr().out
    assert not list(tmp_path.glob(".run.staging-*"))


def test_check_exits_1_when_a_target_is_missed(tiny_file, tmp_path):
    # TINY_MOE asks for 1e6 output tokens per ms per GPU: missed
    assert main(["run", str(tiny_file), "--out", str(tmp_path / "r"), "--check", "--no-dag"]) == 1
    assert (
        main(
            [
                "run",
                str(tiny_file),
                "--out",
                str(tmp_path / "r"),
                "--no-dag",
                "--set",
                "targets={ttft_s: {max: 100}}",
                "--check",
            ]
        )
        == 0
    )


def test_set_override_changes_layout(tiny_file, tmp_path):
    out = tmp_path / "r"
    assert (
        main(
            [
                "run",
                str(tiny_file),
                "--out",
                str(out),
                "--no-dag",
                "--set",
                "parallel.pp=1",
                "--set",
                "parallel.tp=4",
                "--set",
                "parallel.ep=4",
            ]
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["layout"]["tp"] == 4


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path):
    bad = dict(TINY_MOE, parallel={"tpp": 2})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "parallel.tpp: unknown key; did you mean 'tp'?" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_debug_shows_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    proc = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "--debug", "run", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_refuses_to_replace_a_foreign_directory(tiny_file, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    assert main(["run", str(tiny_file), "--out", str(out), "--no-dag"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep"
    assert main(["run", str(tiny_file), "--out", str(out), "--no-dag", "--force"]) == 0
    assert not (out / "precious.txt").exists()
    # a directory moesim made is replaced without --force
    assert main(["run", str(tiny_file), "--out", str(out), "--no-dag"]) == 0


def test_unwritable_output_is_one_line(tiny_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", str(tiny_file), "--out", str(blocker / "sub"), "--no-dag"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesim: --out") and "\n" not in err


def test_dag_command_prints_checks_and_audit(tmp_path, capsys):
    out = tmp_path / "dag"
    code = main(
        [
            "dag",
            str(ROOT / "scenarios" / "seed_moe_4gpu.yaml"),
            "--out",
            str(out),
            "--set",
            "workload.output_len_tokens=3",
            "--full-dag",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "acyclic" in text and "total parameters" in text and "does not hold" in text
    assert (out / "dag.json").is_file() and (out / "dag.dot").is_file()


def test_profiles_lists_bundled_profiles(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1200")  # one line per row: the cells are checked whole
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in ("generic-64gb", "h100-sxm-80gb", "h200-sxm-141gb", "a100-sxm-80gb", "trtllm-1.0", "sglang-0.5"):
        assert name in out
    assert (
        "Engine profiles" in out and "18 dense figures: 7.8 % median, 24.4 % max, 14 faster" in out
    )  # the B200's check
    assert "29.37 us a sequence, overlapped" in out  # trtllm-1.0's host time
    assert "13 MoE (attention DP + EP) figures: 59.3 % median, 85.1 % max, 13 faster" in out  # by layout class
    assert "6 MoE (no attention DP + EP) figures: 24.1 % median, 40.5 % max, 6 faster" in out


def test_an_engines_host_time_text_states_it_and_whether_the_gpu_hides_it():
    from simulator.config.engine import HostTimeSpec

    assert HostTimeSpec(per_sequence_s=2.937e-05, overlapped=True, source="s").text == "29.37 us a sequence, overlapped"
    assert HostTimeSpec(per_iteration_s=0.003, per_sequence_s=1e-5, source="s").text == (
        "3 ms an iteration + 10 us a sequence, serial"
    )
    assert HostTimeSpec(source="s").text == "0, serial"


def test_a_checked_cell_lists_every_recorded_check():
    from simulator.commands.profiles import checked_cell
    from simulator.config.checked import CheckedSpec

    a = CheckedSpec(cases="a.yaml", rows=12, median_abs_error=0.3441, max_abs_error=0.8392, source="s")
    b = CheckedSpec(cases="b.yaml", rows=3, median_abs_error=0.05, max_abs_error=0.1, source="s")
    assert checked_cell((a, b)) == "12 figures: 34.4 % median, 83.9 % max; 3 figures: 5.0 % median, 10.0 % max"
    assert checked_cell(()) == "-"
