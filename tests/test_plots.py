"""`moesim plot`: redraws a run directory from its files; refuses what it cannot use in one line."""

from __future__ import annotations

import pytest
import yaml
from conftest import TINY_MOE

from simulator.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("plots")
    scenario = base / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(TINY_MOE))
    out = base / "run"
    assert main(["run", str(scenario), "--out", str(out), "--no-dag"]) == 0
    return out


def test_plot_redraws_pictures_from_the_directory(run_dir, capsys):
    before = (run_dir / "trace.json.gz").read_bytes()
    for name in ("timeline.png", "memory.png", "trace.json.gz", "index.html"):
        (run_dir / name).unlink()
    assert main(["plot", str(run_dir)]) == 0
    for name in ("timeline.png", "memory.png", "trace.json.gz", "index.html"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "trace.json.gz").read_bytes() == before  # same trace from ops.csv.gz as from the run
    assert "wrote trace.json.gz" in capsys.readouterr().out


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "no such directory"),
        (lambda d: d.mkdir(), "no summary.json"),
    ],
)
def test_plot_refuses_a_directory_that_is_not_a_run(tmp_path, capsys, setup, message):
    d = tmp_path / "x"
    setup(d)
    assert main(["plot", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_plot_refuses_a_run_without_slices(run_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "old"
    shutil.copytree(run_dir, d)
    (d / "slices.npz").unlink()
    assert main(["plot", str(d)]) == 2
    assert "rerun `moesim run`" in capsys.readouterr().err
