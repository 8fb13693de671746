"""Sweep progress file: result records, appending and resuming, damaged lines and the inputs that guard a resume."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import pytest
import yaml
from conftest import ROOT, TINY_MOE, make_scenario

from simulator.config import ParallelSpec, ScenarioError
from simulator.sweep.results import LayoutResult, TargetVerdict
from simulator.sweep.resume import FORMAT, Progress, from_record, progress_path, sweep_inputs, to_record

LAYOUT_A = ParallelSpec.of_degrees(pp=2, dp=1, tp=2, ep=2, etp=1, microbatches=1)
LAYOUT_B = ParallelSpec.of_degrees(pp=1, dp=1, tp=4, ep=4, etp=1, microbatches=2)
LAYOUT_C = ParallelSpec.of_degrees(pp=4, dp=1, tp=1)

OK = LayoutResult(
    index=0,
    layout=LAYOUT_A,
    own=True,
    status="ok",
    ttft_mean_s=0.25,
    ttft_max_s=0.5,
    tpot_s=0.0125,
    throughput={
        "output_tokens_per_ms_per_gpu": 3.5,
        "prefill_tokens_per_ms_per_gpu": 17.5,
        "total_tokens_per_ms_per_gpu": 21.0,
    },
    memory_bytes_per_gpu=2.0e9,
    capacity_bytes=80.0e9,
    targets=(
        TargetVerdict("ttft_s", "max", 1.0, 0.5, True),
        TargetVerdict("output_tokens_per_ms_per_gpu", "min", 5.0, 3.5, False),
    ),
    cost_shares={"compute": 0.75, "TP comm": 0.25},
    rank=1,
    sim_s=0.125,
)
FAILED = LayoutResult(index=1, layout=LAYOUT_B, own=False, status="failed", error="ValueError: boom")
SCREENED = LayoutResult(
    index=2,
    layout=LAYOUT_C,
    own=False,
    status="screened",
    memory_bytes_per_gpu=90.0e9,
    capacity_bytes=80.0e9,
    throughput={"output_tokens_per_ms_per_gpu": math.nan},
)

INPUTS = {"scenario": "abc123", "gpus": 4, "microbatches": [1, 2], "decode_sample": 8}
LAYOUTS = [LAYOUT_A, LAYOUT_B, LAYOUT_C]


def _same(a: LayoutResult, b: LayoutResult) -> bool:
    """Equal field by field, NaN equal to NaN."""
    return repr(a) == repr(b)


# ---------------------------------------------------------------------------------------------
# Records


def test_record_is_keyed_by_the_layout_degrees_and_drops_the_rank():
    record = to_record(OK)
    assert record["layout"] == {"pp": 2, "dp": 1, "tp": 2, "ep": 2, "etp": 1, "microbatches": 1}
    assert "rank" not in record


def test_record_writes_targets_as_plain_lists():
    assert to_record(OK)["targets"] == [
        ["ttft_s", "max", 1.0, 0.5, True],
        ["output_tokens_per_ms_per_gpu", "min", 5.0, 3.5, False],
    ]


def test_record_writes_nan_as_null_and_is_strict_json():
    record = to_record(FAILED)
    assert (record["ttft_mean_s"], record["tpot_s"], record["memory_bytes_per_gpu"]) == (None, None, None)
    assert to_record(SCREENED)["throughput"] == {"output_tokens_per_ms_per_gpu": None}
    json.dumps(record, allow_nan=False)  # raises on NaN


@pytest.mark.parametrize("result", [OK, FAILED, SCREENED], ids=["ok", "failed", "screened"])
def test_record_round_trips_through_json_without_the_rank(result):
    back = from_record(json.loads(json.dumps(to_record(result))))
    assert _same(back, replace(result, rank=None))
    assert back.layout == result.layout and isinstance(back.layout, ParallelSpec)


def test_null_comes_back_as_nan():
    back = from_record(json.loads(json.dumps(to_record(FAILED))))
    assert math.isnan(back.ttft_max_s) and math.isnan(back.capacity_bytes)
    assert math.isnan(from_record(to_record(SCREENED)).throughput["output_tokens_per_ms_per_gpu"])


def test_sim_time_survives_the_round_trip():
    assert from_record(json.loads(json.dumps(to_record(OK)))).sim_s == 0.125


def test_infinity_survives_the_round_trip_through_python_json():
    result = replace(OK, ttft_max_s=math.inf, throughput={**OK.throughput, "output_tokens_per_ms_per_gpu": -math.inf})
    back = from_record(json.loads(json.dumps(to_record(result))))
    assert back.ttft_max_s == math.inf
    assert back.throughput["output_tokens_per_ms_per_gpu"] == -math.inf


def test_targets_come_back_as_target_verdicts():
    back = from_record(to_record(OK))
    assert back.targets == OK.targets
    assert all(isinstance(t, TargetVerdict) for t in back.targets)


# ---------------------------------------------------------------------------------------------
# The progress file


def test_progress_path_sits_beside_the_output_directory(tmp_path):
    assert progress_path(tmp_path / "runs" / "cmp") == tmp_path / "runs" / "cmp.progress.jsonl"


def test_a_fresh_file_holds_the_header_only(tmp_path):
    path = tmp_path / "p.jsonl"
    progress = Progress(path, INPUTS, resume=False, layouts=LAYOUTS)
    progress.close()
    # the header names the sweeping process: a second compare into the same --out is refused meanwhile
    assert path.read_text().splitlines() == [json.dumps({"format": FORMAT, **INPUTS, "pid": os.getpid()})]
    assert progress.done == {}


def test_appended_results_are_whole_lines_on_disk_before_close(tmp_path):
    path = tmp_path / "p.jsonl"
    progress = Progress(path, INPUTS, resume=False, layouts=LAYOUTS)
    progress.append(OK)
    lines = path.read_text().splitlines()  # flushed: readable while the file is still open
    progress.close()
    assert len(lines) == 2 and json.loads(lines[1]) == json.loads(json.dumps(to_record(OK)))


def test_appended_results_are_read_back_on_resume(tmp_path):
    path = tmp_path / "p.jsonl"
    progress = Progress(path, INPUTS, resume=False, layouts=LAYOUTS)
    for r in (OK, FAILED, SCREENED):
        progress.append(r)
    progress.close()
    resumed = Progress(path, INPUTS, resume=True, layouts=LAYOUTS)
    resumed.close()
    assert list(resumed.done) == [LAYOUT_A, LAYOUT_B, LAYOUT_C]
    for r in (OK, FAILED, SCREENED):
        assert _same(resumed.done[r.layout], replace(r, rank=None))


def test_a_resumed_file_keeps_its_lines_and_takes_more(tmp_path):
    path = tmp_path / "p.jsonl"
    progress = Progress(path, INPUTS, resume=False, layouts=LAYOUTS)
    progress.append(OK)
    progress.close()
    resumed = Progress(path, INPUTS, resume=True, layouts=LAYOUTS)
    resumed.append(FAILED)
    resumed.close()
    again = Progress(path, INPUTS, resume=True, layouts=LAYOUTS)
    again.close()
    assert list(again.done) == [LAYOUT_A, LAYOUT_B]
    assert len(path.read_text().splitlines()) == 3


def test_resume_keeps_only_the_layouts_still_asked_for(tmp_path):
    path = tmp_path / "p.jsonl"
    progress = Progress(path, INPUTS, resume=False, layouts=LAYOUTS)
    progress.append(OK)
    progress.append(FAILED)
    progress.close()
    resumed = Progress(path, INPUTS, resume=True, layouts=[LAYOUT_B])
    resumed.close()
    assert list(resumed.done) == [LAYOUT_B]
    assert len(path.read_text().splitlines()) == 2  # header + the kept line


def test_without_resume_an_existing_file_is_started_afresh(tmp_path):
    path = tmp_path / "p.jsonl"
    progress = Progress(path, INPUTS, resume=False, layouts=LAYOUTS)
    progress.append(OK)
    progress.close()
    fresh = Progress(path, INPUTS, resume=False, layouts=LAYOUTS)
    fresh.close()
    assert fresh.done == {} and len(path.read_text().splitlines()) == 1


def test_remove_deletes_the_file(tmp_path):
    path = tmp_path / "p.jsonl"
    Progress(path, INPUTS, resume=False, layouts=LAYOUTS).remove()
    assert not path.exists()


def _written(tmp_path, results) -> str:
    path = tmp_path / "p.jsonl"
    progress = Progress(path, INPUTS, resume=False, layouts=LAYOUTS)
    for r in results:
        progress.append(r)
    progress.close()
    return path.read_text()


def test_a_truncated_last_line_is_dropped_and_its_layout_runs_again(tmp_path):
    path = tmp_path / "p.jsonl"
    text = _written(tmp_path, [OK, FAILED])
    path.write_text(text[:-25])  # the second result cut mid-write, no newline
    resumed = Progress(path, INPUTS, resume=True, layouts=LAYOUTS)
    resumed.close()
    assert list(resumed.done) == [LAYOUT_A]
    assert len(path.read_text().splitlines()) == 2  # the cut line is gone from the rewritten file


def test_a_damaged_line_before_the_last_is_reported_with_its_number(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = _written(tmp_path, [OK, FAILED, SCREENED]).splitlines()
    lines[2] = lines[2][:30]  # line 3 of the file (the FAILED result)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ScenarioError, match=r"line 3 is damaged; rerun without --resume"):
        Progress(path, INPUTS, resume=True, layouts=LAYOUTS)


def test_a_file_that_is_not_a_progress_file_is_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"format": "something-else"}\n')
    with pytest.raises(ScenarioError, match="is not a moesim sweep progress file"):
        Progress(path, INPUTS, resume=True, layouts=LAYOUTS)


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("")
    with pytest.raises(ScenarioError, match="is not a moesim sweep progress file"):
        Progress(path, INPUTS, resume=True, layouts=LAYOUTS)


def test_resume_without_a_file_is_refused(tmp_path):
    with pytest.raises(ScenarioError, match="no progress file"):
        Progress(tmp_path / "p.jsonl", INPUTS, resume=True, layouts=LAYOUTS)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"scenario": "def456"}, "a different scenario"),
        ({"gpus": 8}, "--gpus 4, not 8"),
        ({"microbatches": [1, 2, 4]}, "--microbatches 1,2, not 1,2,4"),
        ({"decode_sample": 2}, "--decode-sample 8, not 2"),
    ],
)
def test_resume_with_other_inputs_is_refused_naming_the_one_that_differs(tmp_path, change, message):
    path = tmp_path / "p.jsonl"
    _written(tmp_path, [OK])
    with pytest.raises(ScenarioError, match=message):
        Progress(path, {**INPUTS, **change}, resume=True, layouts=LAYOUTS)
    assert len(path.read_text().splitlines()) == 2  # a refused resume leaves the file alone


# ---------------------------------------------------------------------------------------------
# sweep_inputs


def test_sweep_inputs_hold_the_options_and_a_scenario_hash(tiny_moe):
    inputs = sweep_inputs(tiny_moe, 4, (1, 2), 8)
    assert set(inputs) == {"scenario", "gpus", "microbatches", "decode_sample"}
    assert (inputs["gpus"], inputs["microbatches"], inputs["decode_sample"]) == (4, [1, 2], 8)
    assert len(inputs["scenario"]) == 64 and int(inputs["scenario"], 16) >= 0  # sha256 hex


def test_sweep_inputs_are_equal_for_equal_inputs(tiny_moe):
    assert sweep_inputs(tiny_moe, 4, [1, 2], 8) == sweep_inputs(make_scenario(TINY_MOE), 4, (1, 2), 8)


@pytest.mark.parametrize(
    "sections",
    [
        {"workload": {"batch_size": 8}},
        {"model": {"activation": "swiglu"}},
        {"hardware": {"profile": "h100-sxm-80gb", "hbm_bytes_per_s": 2.0e12}},
        {"hardware": "h200-sxm-141gb"},
    ],
    ids=["workload", "model", "hardware override", "hardware profile"],
)
def test_sweep_inputs_change_when_the_scenario_or_its_hardware_changes(tiny_moe, sections):
    assert (
        sweep_inputs(make_scenario(TINY_MOE, **sections), 4, [1], 0)["scenario"]
        != sweep_inputs(tiny_moe, 4, [1], 0)["scenario"]
    )


def test_a_changed_scenario_makes_resume_refuse_the_file(tmp_path, tiny_moe):
    path = tmp_path / "p.jsonl"
    Progress(path, sweep_inputs(tiny_moe, 4, [1], 0), resume=False, layouts=LAYOUTS).close()
    other = make_scenario(TINY_MOE, workload={"batch_size": 8})
    with pytest.raises(ScenarioError, match="a different scenario"):
        Progress(path, sweep_inputs(other, 4, [1], 0), resume=True, layouts=LAYOUTS)


def test_sweep_inputs_change_when_the_profile_file_is_edited(tmp_path):
    path = tmp_path / "gpu.yaml"
    data = yaml.safe_load((ROOT / "hardware_profiles" / "datasheet" / "h100-sxm-80gb.yaml").read_text())
    path.write_text(yaml.safe_dump(data))
    scenario = make_scenario(TINY_MOE, hardware=str(path))
    before = sweep_inputs(scenario, 4, [1], 0)
    path.write_text(yaml.safe_dump({**data, "hbm_bytes_per_s": 2.0e12}))  # the scenario itself is unchanged
    assert sweep_inputs(scenario, 4, [1], 0)["scenario"] != before["scenario"]
