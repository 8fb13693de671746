"""Output safety: an interrupted `moesim run` leaves neither a truncated summary.json nor a staging
directory, a previous run stays whole, and no directory moesim did not make is replaced without --force.
(The refusal for `run` and an unwritable parent are in test_cli.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MOE

from simulator import files
from simulator.cli import main
from simulator.report import summary


@pytest.fixture
def tiny_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_MOE))
    return path


def _interrupt_after(monkeypatch, name: str) -> None:
    """Ctrl-C right after the report writes `name` (inside the staging block)."""
    real = summary.write_atomic

    def write_then_interrupt(path, data):
        real(path, data)
        if Path(path).name == name:
            raise KeyboardInterrupt

    monkeypatch.setattr(summary, "write_atomic", write_then_interrupt)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_interrupted_run_leaves_nothing(tiny_file, tmp_path, monkeypatch, capsys):
    _interrupt_after(monkeypatch, "summary.json")
    out = tmp_path / "run"
    assert main(["run", str(tiny_file), "--out", str(out), "--no-dag"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_interrupted_rerun_keeps_the_previous_run_whole(tiny_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["run", str(tiny_file), "--out", str(out), "--no-dag"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _interrupt_after(monkeypatch, "ops.csv.gz")
    assert main(["run", str(tiny_file), "--out", str(out), "--no-dag", "--set", "workload.output_len_tokens=5"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_write_atomic_interrupted_mid_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text('{"old": true}\n')
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(target, '{"new": "a long enough document"}\n')
    assert target.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_dag_refuses_a_foreign_directory_without_force(tmp_path, capsys):
    from conftest import ROOT

    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    scenario = str(ROOT / "scenarios" / "seed_moe_4gpu.yaml")
    assert main(["dag", scenario, "--out", str(out), "--set", "workload.output_len_tokens=2"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep"


def test_output_path_that_is_a_file_is_refused(tiny_file, tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("not a directory")
    assert main(["run", str(tiny_file), "--out", str(out), "--no-dag", "--force"]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert out.read_text() == "not a directory"
