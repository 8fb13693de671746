"""Calibration status: per-figure sources of every profile, the profile status, and the expected-error line
every output carries for a result on an uncalibrated profile."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml
from conftest import ROOT, TINY_MOE, make_scenario

from simulator.calibration.status import uncalibrated_e2e_errors, uncalibrated_error_summary
from simulator.config import hardware
from simulator.config.hardware import (
    PROFILE_FIGURES,
    FigureSource,
    available_profiles,
    calibration_note,
    load_profile,
)

DATASHEET_H200 = str(ROOT / "hardware_profiles" / "datasheet" / "h200-sxm-141gb.yaml")
SHIPPED = available_profiles()
STATUS = {
    "h200-sxm-141gb": "calibrated",
    "h100-sxm-80gb": "transferred",
    "generic-64gb": "transferred",
    "a100-sxm-80gb": "uncalibrated",
    "b200-sxm-180gb": "uncalibrated",
    "gb200-nvl72-186gb": "uncalibrated",
    "h20-96gb": "uncalibrated",
    "mi300x-192gb": "uncalibrated",
    "mi325x-256gb": "uncalibrated",
}


def test_the_profiles_users_asked_for_ship():
    assert set(STATUS) <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_figure_of_every_shipped_profile_has_a_source(name):
    p = load_profile(name)
    assert set(p.figure_sources) == set(p.figures()), set(p.figures()) ^ set(p.figure_sources)
    assert set(p.figures()) <= set(PROFILE_FIGURES)
    for figure, source in p.figure_sources.items():
        if source.kind == "datasheet":
            assert "http" in source.source or source.source.startswith("../shared/calibration"), (name, figure)
        elif source.kind in ("measured", "transferred"):  # the measurement file, or a public measurement's URL
            assert "h200_micro.json" in source.source or "https://" in source.source, (name, figure)
        else:
            assert source.note, (name, figure)


@pytest.mark.parametrize("name", sorted(STATUS))
def test_status_of_each_profile(name):
    p = load_profile(name)
    assert p.calibration_status == STATUS[name]
    note = calibration_note(p)
    assert (note is None) == (STATUS[name] == "calibrated")
    if STATUS[name] == "uncalibrated":
        assert "uncalibrated" in note and "24%" in note and "13%" in note


def test_the_a100_says_it_is_datasheet_times_assumed_efficiency():
    p = load_profile("a100-sxm-80gb")
    assert p.figure_sources["hbm_bytes_per_s"].kind == "datasheet"
    assert p.figure_sources["compute_efficiency"].kind == "assumed"
    assert p.figure_sources["peak_flops_per_s.fp16"].assumed_efficiency == p.compute_efficiency


def test_new_profiles_datasheet_figures():
    """The figures the issue names, as the cited sources give them (dense, per GPU, SI units)."""
    b200, gb200, h20 = (load_profile(n) for n in ("b200-sxm-180gb", "gb200-nvl72-186gb", "h20-96gb"))
    mi300x, mi325x = load_profile("mi300x-192gb"), load_profile("mi325x-256gb")
    # the B200: its bandwidth from the driver's bus width and memory clock (7.672 TB/s), not the datasheet's 8
    assert (b200.memory_bytes, b200.hbm_bytes_per_s, b200.gpus_per_node) == (180e9, 7.672e12, 8)
    assert (gb200.gpus_per_node, gb200.intra_node.bytes_per_s) == (72, 900e9)  # one NVLink domain of 72
    assert (h20.memory_bytes, h20.hbm_bytes_per_s, h20.peak_flops_per_s.fp16) == (96e9, 4.0e12, 148e12)
    assert (mi300x.memory_bytes, mi300x.hbm_bytes_per_s, mi300x.intra_node.bytes_per_s) == (192e9, 5.3e12, 448e9)
    assert (mi325x.memory_bytes, mi325x.hbm_bytes_per_s) == (256e9, 6.0e12)
    assert mi325x.peak_flops_per_s == mi300x.peak_flops_per_s  # the same CDNA 3 compute


def test_gb200_keeps_a_72_gpu_collective_on_nvlink():
    from simulator.graph.dag import COMM
    from simulator.op_time import node_time_s

    gb200 = load_profile("gb200-nvl72-186gb")
    node = {"kind": COMM, "gpu": tuple(range(72)), "collective": "all_reduce", "message_bytes": 1e8}
    assert node_time_s(node, gb200, gb200.gpus_per_node, eager=False)[1] == "nvlink"
    h200 = load_profile("h200-sxm-141gb")
    assert node_time_s(node, h200, h200.gpus_per_node, eager=False)[1] == "network"


def test_a_figure_source_says_where_it_comes_from():
    with pytest.raises(ValueError, match="needs its source"):
        FigureSource(kind="datasheet")
    with pytest.raises(ValueError, match="needs a note"):
        FigureSource(kind="assumed")
    raw = yaml.safe_load((ROOT / "hardware_profiles" / "a100-sxm-80gb.yaml").read_text())
    raw["figure_sources"]["hbm_bandwidth"] = {"kind": "assumed", "note": "x"}
    with pytest.raises(ValueError, match="not a figure of a profile"):
        hardware.HardwareProfile.model_validate(raw)


def test_expected_kernel_error_is_what_the_h200_data_gives():
    data = json.loads((ROOT / "hardware_profiles" / "measurements" / "h200_micro.json").read_text())
    summary = uncalibrated_error_summary(data, load_profile(DATASHEET_H200))
    assert summary["calls"] == 113
    assert round(summary["median_abs_error"], 3) == hardware.UNCALIBRATED_KERNEL_MEDIAN_ERROR
    assert round(summary["p90_abs_error"], 2) == hardware.UNCALIBRATED_KERNEL_P90_ERROR


def test_expected_end_to_end_error_is_what_the_dev_cases_give():
    errors = [abs(e) for e in uncalibrated_e2e_errors(ROOT / "validation" / "dev_cases.yaml", DATASHEET_H200)]
    assert round(statistics.median(errors), 2) == hardware.UNCALIBRATED_E2E_MEDIAN_ERROR
    assert round(max(errors), 2) == hardware.UNCALIBRATED_E2E_MAX_ERROR


def test_every_run_output_says_when_it_rests_on_an_uncalibrated_profile(tmp_path, capsys):
    from simulator.cli import main

    for name, expected in (("a100-sxm-80gb", True), ("h200-sxm-141gb", False)):
        scenario = {**TINY_MOE, "hardware": name}
        make_scenario(scenario)  # valid
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(scenario))
        out = tmp_path / f"out-{name}"
        main(["run", str(path), "--out", str(out)])
        terminal = capsys.readouterr().out
        summary = json.loads((out / "summary.json").read_text())
        assert summary["calibration"]["status"] == ("uncalibrated" if expected else "calibrated")
        for text in (terminal, (out / "summary.md").read_text(), (out / "index.html").read_text()):
            assert ("uncalibrated (datasheet peaks x assumed efficiencies)" in " ".join(text.split())) == expected


def test_profiles_command_lists_each_status(capsys):
    from simulator.cli import main

    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name, status in STATUS.items():
        line = next(line for line in out.splitlines() if f" {name} " in line)
        assert status in line
