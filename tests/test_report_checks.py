"""report.checks: the calibration and end-to-end check lines of results that span deployment classes (a layout
comparison, a deployment search), one per profile and class present, each quoting only its class's checks."""

from __future__ import annotations

from simulator.config.checked import ResultClass
from simulator.config.engine import load_engine_profile
from simulator.config.hardware import calibration_note, load_profile
from simulator.report.checks import check_lines, class_name
from simulator.report.compare import comparison_md
from simulator.sweep.results import LayoutResult
from tests.conftest import TINY_MOE, TINY_SERVING, make_scenario, run_engine_search

DEP, ALONE, DENSE = ResultClass(True, True), ResultClass(True, False), ResultClass(False, False)


def test_class_names():
    assert [class_name(c) for c in (DEP, ALONE, DENSE)] == [
        "MoE with attention DP + EP",
        "MoE without attention DP + EP",
        "dense models",
    ]


def test_a_calibrated_profile_adds_no_line_and_each_class_gets_its_engine_checks():
    h200, trt = load_profile("h200-sxm-141gb"), load_engine_profile("trtllm-1.0")
    assert check_lines([(h200, DEP), (h200, ALONE), (h200, DEP)], trt) == [
        f"Engine (MoE without attention DP + EP): {trt.check_note(ALONE)}.",
        f"Engine (MoE with attention DP + EP): {trt.check_note(DEP)}.",
    ]
    assert "with attention DP + EP" not in trt.check_note(ALONE) and "without" not in trt.check_note(DEP)
    assert check_lines([(h200, DENSE)], trt) == [f"Engine: {trt.check_note(DENSE)}."]  # one class: no head
    assert check_lines([(h200, DEP)], None) == []  # calibrated, no engine: nothing to say


def test_an_uncalibrated_profile_states_each_classes_checks_once_and_a_transferred_one_once():
    b200, h100 = load_profile("b200-sxm-180gb"), load_profile("h100-sxm-80gb")
    assert check_lines([(b200, DEP), (b200, ALONE)], None) == [
        f"Calibration (MoE without attention DP + EP): {calibration_note(b200, ALONE)}.",
        f"Calibration (MoE with attention DP + EP): {calibration_note(b200, DEP)}.",
    ]
    # the H100 records no checks, so its sentence reads the same for both classes: said once, with no head
    assert check_lines([(h100, DEP), (h100, ALONE)], None) == [f"Calibration: {calibration_note(h100, ALONE)}."]
    # several profiles: each line names its profile
    lines = check_lines([(h100, ALONE), (b200, ALONE)], None)
    assert lines == [
        f"Calibration (b200-sxm-180gb): {calibration_note(b200, ALONE)}.",
        f"Calibration (h100-sxm-80gb): {calibration_note(h100, ALONE)}.",
    ]


def _ok(layout, serving=True) -> LayoutResult:
    from simulator.metrics import THROUGHPUTS

    return LayoutResult(
        0,
        layout,
        False,
        "ok",
        ttft_mean_s=1.0,
        ttft_max_s=1.0,
        tpot_s=0.01,
        throughput=dict.fromkeys(THROUGHPUTS, 1.0),
        serving={"rate": 1.0} if serving else {},
    )


def test_a_comparison_of_dep_and_tp_layouts_quotes_the_engines_checks_of_both():
    from simulator.config import ParallelSpec

    scenario = make_scenario(TINY_MOE | {"serving": {**TINY_SERVING, "engine": "trtllm-1.0"}})
    trt = load_engine_profile("trtllm-1.0")
    dep, tp = ParallelSpec(dp=2, ep=2), ParallelSpec(tp=2, ep=2)
    assert dep.experts_span_dp and not tp.experts_span_dp
    md = comparison_md(scenario, [_ok(dep), _ok(tp)], "max_rate")
    assert f"Engine (MoE with attention DP + EP): {trt.check_note(DEP)}." in md
    assert f"Engine (MoE without attention DP + EP): {trt.check_note(ALONE)}." in md
    # a static comparison (no serving figures) was not priced by the engine: no engine line
    assert "Engine" not in comparison_md(scenario, [_ok(dep, serving=False)], "throughput")


def test_a_search_names_the_engine_checks_of_its_simulated_candidates(tmp_path, capsys):
    out = run_engine_search(tmp_path, "trtllm")
    note = load_engine_profile("trtllm-1.0").check_note(ALONE)
    assert f"Engine: {note}." in (out / "search.md").read_text()  # every simulated candidate: no DEP
    assert "Engine: profile trtllm-1.0 checked against 6 published figures of MoE models without attention DP" in (
        " ".join(capsys.readouterr().out.split())
    )
