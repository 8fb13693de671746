"""`moesim validate` on serving cases: the case file, the error formula, replica sampling, and the command's
table, median and skip reasons (run on a subset of validation/serving_cases.yaml: the two cheapest cases and
the skipped one)."""

from __future__ import annotations

import copy
import csv
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from simulator.calibration.serving_validate import (
    ServingCase,
    ServingOutcome,
    case_scenario,
    load_serving_cases,
    replica_zero,
    simulate_case,
    summarize_serving,
)
from simulator.config import ScenarioError
from simulator.pipeline import run_scenario
from simulator.serving.pricing import LinearPricer
from simulator.serving.simulate import simulate_serving
from simulator.serving.workload import generate_requests
from tests.conftest import TINY_MOE
from tests.serving.conftest import make_spec

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "validation" / "serving_cases.yaml"
PUBLIC_IDS = {
    "MLP40-L2-H100-OFF",
    "MLP41-MIX-H100-OFF",
    "MLP41-MIX-H100-SRV",
    "TRT17-MIX-H100-TP1-1000-1000",
    "TRT17-MIX-H200-TP2-2048-2048",
    "TRTON-L70-H100-TP4-QPS8",
    "DST-VLLM-C16",
    "SGLEP-DECODE-2K",
}


def test_error_is_predicted_over_measured_minus_one():
    assert ServingOutcome("c", "output_tokens_per_s", 200.0, 250.0).error == 0.25
    assert ServingOutcome("c", "tpot_mean_ms", 50.0, 45.0).error == pytest.approx(-0.10)


def test_median_and_largest_absolute_error_over_rows():
    rows = [
        ServingOutcome("a", "output_tokens_per_s", 200.0, 250.0),  # +25 %
        ServingOutcome("a", "ttft_mean_ms", 50.0, 45.0),  # -10 %
        ServingOutcome("b", "output_tokens_per_s", 100.0, 150.0),  # +50 %
    ]
    s = summarize_serving(rows)
    assert s["median_abs_error"] == 0.25 and s["max_abs_error"] == 0.5 and s["rows"] == 3
    assert s["faster_rows"] == 3  # more throughput twice, less latency once


def test_faster_means_more_throughput_or_less_latency():
    assert ServingOutcome("c", "output_tokens_per_s", 100.0, 101.0).faster
    assert not ServingOutcome("c", "requests_per_s", 100.0, 99.0).faster
    assert ServingOutcome("c", "ttft_p99_ms", 100.0, 99.0).faster
    assert not ServingOutcome("c", "tpot_mean_ms", 100.0, 101.0).faster
    assert not ServingOutcome("c", "itl_mean_ms", 100.0, 100.0).faster  # exact: neither


def test_every_public_point_is_a_case_and_every_unskipped_one_parses():
    cases = load_serving_cases(CASES)
    assert {c.id for c in cases} == PUBLIC_IDS
    for case in cases:
        if case.skip is None:
            scenario = case_scenario(case)
            assert (scenario.serving is None) == (case.phase == "decode"), case.id
    assert [c.id for c in cases if c.skip] == []  # SGLEP-DECODE-2K runs since redundant experts are modelled
    assert [c.id for c in cases if c.phase == "decode"] == ["SGLEP-DECODE-2K"]


#: Each case's formats as its source states them (public_serving_dev.yaml `precision`: weights / activations /
#: kv_cache), "?" resolved to the engine's documented default: (weights, GEMM compute, KV cache). Collectives,
#: the LM head and the router stay bf16 in every case (docs/precision.md, fp8-w8a8); attention math too, except in
#: the trtllm-bench runs (TRT17), whose FP8 build turns on fp8 context attention.
SOURCE_PRECISION = {
    "MLP40-L2-H100-OFF": ("fp8", "fp8", "fp8"),  # KV "?": TensorRT-LLM's FP8 default (KV set to FP8)
    "MLP41-MIX-H100-OFF": ("fp8", "fp8", "fp8"),  # idem
    "MLP41-MIX-H100-SRV": ("fp8", "fp8", "fp8"),  # idem
    "TRT17-MIX-H100-TP1-1000-1000": ("fp8", "fp8", "fp8"),
    "TRT17-MIX-H200-TP2-2048-2048": ("fp8", "fp8", "fp8"),
    "TRTON-L70-H100-TP4-QPS8": ("bf16", "bf16", "bf16"),  # KV "?": the model's dtype without KV quantisation
    "DST-VLLM-C16": ("fp8", "fp8", "bf16"),  # KV "auto (bf16)"
    "SGLEP-DECODE-2K": ("fp8", "fp8", "bf16"),  # KV "?": SGLang's "auto", the model's bf16
}


def test_every_case_runs_the_formats_its_source_states():
    cases = {c.id: c for c in load_serving_cases(CASES) if c.skip is None}
    assert set(cases) == set(SOURCE_PRECISION)
    for case_id, (weights, compute, kv) in SOURCE_PRECISION.items():
        model = case_scenario(cases[case_id]).model
        f = model.formats
        assert model.precision is not None and model.dtype == "bf16", case_id  # the precision model, not dtype: fp8
        for gemm in (f.dense_gemm, f.expert_gemm):
            assert (gemm.storage, gemm.compute) == (weights, compute), case_id
        assert f.kv_cache == kv, case_id
        assert f.communication == f.activations == "bf16", case_id  # engines all-reduce in 16 bits
        # trtllm-bench build --quantization FP8 sets use_fp8_context_fmha (tensorrt_llm/bench/build/build.py)
        assert f.attention == ("fp8" if case_id.startswith("TRT17-") else "bf16"), case_id
        assert f.lm_head.compute == f.router.compute == "bf16", case_id


def test_the_stated_formats_match_the_public_file_where_it_is_present():
    public = ROOT.parent / "shared" / "calibration" / "public_serving_dev.yaml"
    if not public.exists():
        pytest.skip("../shared/calibration/public_serving_dev.yaml is not present in this checkout")
    points = {p["id"]: p["precision"] for p in yaml.safe_load(public.read_text())["points"]}
    for case_id, (weights, compute, kv) in SOURCE_PRECISION.items():
        stated = points[case_id]
        formats = [re.findall(r"\b(fp8|bf16|fp16)\b", str(stated[k]))[0] for k in ("weights", "activations")]
        assert tuple(formats) == (weights, compute), case_id  # "fp8 [inferred]"
        if stated["kv_cache"] != "?":
            assert re.findall(r"\b(fp8|bf16|fp16)\b", str(stated["kv_cache"]))[0] == kv, case_id  # "auto (bf16)"


def test_a_case_needs_a_scenario_or_a_skip_reason(tmp_path):
    bad = tmp_path / "cases.yaml"
    bad.write_text("serving_cases:\n  - {id: X, source: s, measured: {output_tokens_per_s: 1.0}}\n")
    with pytest.raises(ScenarioError, match="give a scenario .*or skip"):
        load_serving_cases(bad)


# ---------------------------------------------------------------- replica sampling


@pytest.fixture
def pricer() -> LinearPricer:
    return LinearPricer(0.25, 1 / 16, 1 / 128)


@pytest.mark.parametrize(
    "arrivals",
    [{"kind": "closed_loop", "concurrency": 12}, {"kind": "poisson", "rate_per_s": 2.0}],
)
def test_replica_zero_alone_serves_exactly_as_replica_zero_of_the_whole(pricer, arrivals):
    spec = make_spec(
        workload={
            "arrivals": arrivals,
            "input_len": {"kind": "uniform", "min_tokens": 4, "max_tokens": 24},
            "num_requests": 12,
            "warmup_requests": 3,
        },
        replicas={"count": 3, "router": "round_robin"},
    )
    requests = generate_requests(spec)
    whole = simulate_serving(spec, pricer, requests)
    one_spec, mine = replica_zero(spec, requests)
    assert [r.input_tokens for r in mine] == [r.input_tokens for r in requests[0::3]]
    assert one_spec.workload.warmup_requests == 1  # requests 0, 3, 6, 9 of the stream: only 0 is a warm-up one
    alone = simulate_serving(one_spec, pricer, mine)
    ours = [rec for rec in whole.records if rec.replica == 0]
    assert len(ours) == len(alone.records) == 4
    for a, b in zip(ours, alone.records):
        np.testing.assert_array_equal(a.token_times_s, b.token_times_s)


def test_replica_zero_refuses_a_closed_loop_that_refills(pricer):
    spec = make_spec(replicas={"count": 2, "router": "round_robin"})  # concurrency 1 < 3 requests
    with pytest.raises(ValueError, match="closed_loop concurrency = num_requests"):
        replica_zero(spec, generate_requests(spec))


# ---------------------------------------------------------------- the command


def test_validate_prints_the_table_median_and_skip_reasons(tmp_path):
    data = yaml.safe_load(CASES.read_text())
    keep = {"TRTON-L70-H100-TP4-QPS8", "DST-VLLM-C16", "SGLEP-DECODE-2K"}
    subset = tmp_path / "subset.yaml"
    cases = [c for c in data["serving_cases"] if c["id"] in keep]
    skip = "needs what moesim does not model"  # every point of the file runs; a skipped case is made here
    cases.append({"id": "SKIPPED-X", "source": "test", "measured": {"output_tokens_per_s": 1.0}, "skip": skip})
    subset.write_text(yaml.safe_dump({"serving_cases": cases}, sort_keys=False))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "validate", str(subset), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for column in ("case", "metric", "measured", "predicted", "error"):
        assert column in text
    assert f"skipped SKIPPED-X: {skip}" in text
    with open(out / "validation.csv") as f:
        rows = list(csv.DictReader(f))
    measured_rows = [r for r in rows if not r["skipped"]]
    assert [(r["case"], r["metric"]) for r in measured_rows] == [
        ("TRTON-L70-H100-TP4-QPS8", "output_tokens_per_s"),
        ("TRTON-L70-H100-TP4-QPS8", "ttft_mean_ms"),
        ("TRTON-L70-H100-TP4-QPS8", "itl_mean_ms"),
        ("DST-VLLM-C16", "output_tokens_per_s"),
        ("DST-VLLM-C16", "ttft_mean_ms"),
        ("DST-VLLM-C16", "tpot_mean_ms"),
        ("SGLEP-DECODE-2K", "output_tokens_per_s"),
    ]
    assert [float(r["measured"]) for r in measured_rows] == [1860, 92, 32, 294.0662875, 3368.61, 49.601, 200538]
    errors = []
    for r in measured_rows:
        predicted, measured = float(r["predicted"]), float(r["measured"])
        assert predicted > 0
        assert float(r["error"]) == pytest.approx(predicted / measured - 1.0, rel=1e-12)
        assert f"{100 * float(r['error']):+.1f}%" in text
        errors.append(abs(float(r["error"])))
    assert f"median |error| {100 * statistics.median(errors):.1f}%" in text
    assert [r["case"] for r in rows if r["skipped"]] == ["SKIPPED-X"]
    md = (out / "validation.md").read_text()
    assert "| DST-VLLM-C16 | tpot_mean_ms | 49.6 |" in md and "- skipped SKIPPED-X:" in md
    # no engine here has host time: no host-set column, empty cells
    assert "host-set" not in md and "host-set" not in text
    assert all(r["host_bound_share"] == "" for r in rows)


def test_a_decode_phase_case_is_a_static_scenario_giving_output_tokens_per_s():
    base = {"id": "x", "source": "y", "measured": {"output_tokens_per_s": 1.0}, "phase": "decode"}
    with pytest.raises(ValueError, match="phase: decode: give a static scenario"):
        ServingCase.model_validate({**base, "scenario": {"serving": {}, "workload": {}}})
    with pytest.raises(ValueError, match="phase: decode: a decode phase alone gives output_tokens_per_s only"):
        ServingCase.model_validate({**base, "measured": {"tpot_mean_ms": 1.0}, "scenario": {"workload": {}}})


def test_a_decode_phase_is_the_batch_over_the_steady_decode_step():
    # one microbatch, one stage: the steady step is the mean time between tokens (the KV grows by one per step)
    data = {**copy.deepcopy(TINY_MOE), "workload": {"batch_size": 4, "input_len_tokens": 16, "output_len_tokens": 6}}
    data.pop("name")
    case = ServingCase.model_validate(
        {"id": "tiny", "source": "test", "measured": {"output_tokens_per_s": 1.0}, "phase": "decode", "scenario": data}
    )
    predicted = simulate_case(case).figures["output_tokens_per_s"]
    tpot_s = run_scenario(case_scenario(case), verify=False).metrics.tpot_s
    assert predicted == pytest.approx(4 / tpot_s, rel=2e-3)


TRT10 = ROOT / "validation" / "serving_cases_trtllm10.yaml"


def _trtllm_bench_limits(
    nvml_gib: float,
    gpus: int,
    params: float,
    layers: int,
    isl: int,
    osl: int,
    weight_bytes: float = 1.0,
    kv_heads: int = 8,
    head_size: int = 128,
    kv_bytes: float = 1.0,
) -> tuple:
    """trtllm-bench 1.0's heuristic as the case file's header states it (tuning.py calc_engine_setting and
    finetune_setting with fp8 (1 byte), NVFP4 (0.5) or unlisted (MXFP4: 2) weights and an fp8 (1 byte) or 16-bit (2)
    KV cache of max(tp, kv heads) heads x head size, 0.95; general.py get_settings). Every case's tp (--tp, attention
    DP included) is at most 8."""
    assert gpus <= 8
    gib_per_token = 2 * layers * max(gpus, kv_heads) * head_size * kv_bytes / 2**30
    requests = min((nvml_gib * gpus - params * weight_bytes / 2**30) * 0.95 / (gib_per_token * (isl + osl)), 4096)
    raw_token = min(requests * (1 + isl / osl), 32768)
    if requests < 256:
        bs = max(64, 32 * math.ceil(requests / 32))
    else:
        step = 128 if requests < 1024 else 256
        bs = step * math.ceil(requests / step)
    if raw_token < 4096:
        tokens = max(2048, 256 * math.ceil(raw_token / 256))
    else:
        step = 512 if raw_token < 8192 else 1024
        tokens = step * math.ceil(raw_token / step)
    return bs, max(tokens, isl + bs)  # chunked context off: a whole prompt beside a full batch


def test_the_trtllm_1_0_cases_take_trtllm_bench_limits_and_graphs():
    cases = {c.id: case_scenario(c) for c in load_serving_cases(TRT10)}
    h100, h200 = 81559 / 1024, 143771 / 1024  # nvml totals, GiB
    setups = {  # the page's columns: GPU count and parallelism per model and GPU
        "L8-H100-TP1": (h100, 1, 8.03e9, 32),
        "L8-H200-TP1": (h200, 1, 8.03e9, 32),
        "L70-H100-TP2": (h100, 2, 70.6e9, 80),
        "L70-H200-TP1": (h200, 1, 70.6e9, 80),
        "L405-H100-TP8": (h100, 8, 405.85e9, 126),
        "L405-H200-TP8": (h200, 8, 405.85e9, 126),
    }
    lengths = {  # the page's request count for each length
        (128, 2048): 3000,
        (128, 4096): 1500,
        (500, 2000): 3000,
        (1000, 1000): 3000,
        (1000, 2000): 1500,
        (2048, 128): 3000,
        (2048, 2048): 1500,
        (5000, 500): 1500,
        (20000, 2000): 1000,
    }
    assert set(cases) == {f"TRT10-{k}-{i}-{o}" for k in setups for i, o in lengths}
    for case_id, s in cases.items():
        setup, isl, osl = case_id[len("TRT10-") :].rsplit("-", 2)
        gib, gpus, params, layers = setups[setup]
        spec = s.serving
        assert (spec.workload.input_len.tokens, spec.workload.output_len.tokens) == (int(isl), int(osl)), case_id
        assert spec.workload.num_requests == lengths[int(isl), int(osl)], case_id
        assert (spec.scheduler.max_num_seqs, spec.scheduler.max_num_batched_tokens) == _trtllm_bench_limits(
            gib, gpus, params, layers, int(isl), int(osl)
        ), case_id
        assert s.num_gpus == gpus and s.model.num_layers == layers and spec.engine == "trtllm-1.0"
        graphs = spec.engine_profile().cuda_graph
        assert graphs.padding and graphs.capture_sizes(spec.scheduler.max_num_seqs)[-1] <= spec.scheduler.max_num_seqs
        f = s.model.formats
        assert (f.dense_gemm.storage, f.dense_gemm.compute, f.kv_cache) == ("fp8", "fp8", "fp8"), case_id
        assert f.attention == f.lm_head.compute == "bf16", case_id
    # by hand: 1,034.4 requests -> 256 x 5; 2,068.8 tokens -> 256 x 9 = 2,304 (above 1,000 + 1,280)
    assert _trtllm_bench_limits(h200, 1, 8.03e9, 32, 1000, 1000) == (1280, 2304)


# ---------------------------------------------------------------- engine profiles' recorded checks


def _rows_by_check(paths, profile_of, checks_of) -> dict[tuple[str, str, str, str], int]:
    """Measured figures per check (case file from the repository root, profile, its models, its layouts) of the
    cases of `paths` whose scenario `profile_of` names a profile for (None: it names none), each row counted for
    the checks `checks_of(profile)` records for its file and class (CheckedSpec.covers); asserts that every such
    row has exactly one check (or, where the profile records none on the file, none), so that a check's rows
    are the rows its profile prices and no row counts twice."""
    rows: dict[tuple[str, str, str, str], int] = {}
    for path in paths:
        file = str(path.relative_to(ROOT))
        for case in load_serving_cases(path):
            scenario = case_scenario(case)
            name = profile_of(scenario)
            if name is None:
                continue
            on_file = [c for c in checks_of(name) if c.cases == file]
            mine = [c for c in on_file if c.covers(scenario.result_class)]
            assert len(mine) == (1 if on_file else 0), (case.id, name, mine)
            # a check of MoE deployments names its layout class: moesim's errors with and without attention DP + EP
            # differ by far, so a check of one says nothing of the other
            assert not (mine and scenario.model.is_moe and mine[0].layouts == "all"), (case.id, name)
            key = (file, name, mine[0].models, mine[0].layouts) if mine else (file, name, "unrecorded", "")
            rows[key] = rows.get(key, 0) + len(case.measured)
    return rows


def test_every_recorded_check_counts_the_rows_its_case_file_gives_the_profile():
    """EngineProfile.checked.rows = the measured figures of the cases that price with the profile, of the model
    class the check names (no simulation); a profile that records none has no case naming it, except the SGLang
    ones (SGLEP runs as a static decode)."""
    from simulator.config.engine import available_engines, load_engine_profile

    moe = (
        "serving_cases_trtllm_moe.yaml",
        "serving_cases_trtllm_moe_b200.yaml",
        "serving_cases_trtllm_gptoss.yaml",
        "serving_cases_trtllm_dsr1_b200.yaml",
    )
    named = _rows_by_check(
        (CASES, TRT10, *(ROOT / "validation" / name for name in moe)),
        lambda s: s.serving.engine if s.serving is not None else None,
        lambda name: load_engine_profile(name).checked,
    )
    recorded = {
        (c.cases, name, c.models, c.layouts): c.rows
        for name in available_engines()
        for c in load_engine_profile(name).checked
    }
    dep = "experts_across_dp"
    assert (
        recorded
        == named
        == {
            ("validation/serving_cases.yaml", "trtllm", "moe", "other"): 8,
            ("validation/serving_cases.yaml", "trtllm", "dense", "all"): 4,
            ("validation/serving_cases.yaml", "vllm", "moe", "other"): 3,
            ("validation/serving_cases_trtllm10.yaml", "trtllm-1.0", "dense", "all"): 54,
            ("validation/serving_cases_trtllm_gptoss.yaml", "trtllm-1.0", "moe", dep): 11,  # H100 DEP4, B200 DEP2
            ("validation/serving_cases_trtllm_gptoss.yaml", "trtllm-1.0", "moe", "other"): 21,
            ("validation/serving_cases_trtllm_dsr1_b200.yaml", "trtllm-1.0", "moe", dep): 2,
            ("validation/serving_cases_trtllm_moe.yaml", "trtllm-1.0", "moe", dep): 13,
            ("validation/serving_cases_trtllm_moe.yaml", "trtllm-1.0", "dense", "all"): 7,
            ("validation/serving_cases_trtllm_moe_b200.yaml", "trtllm-1.0", "moe", dep): 6,  # Qwen3 235B DEP4
            ("validation/serving_cases_trtllm_moe_b200.yaml", "trtllm-1.0", "moe", "other"): 6,  # Qwen3 30B, 1 GPU
            ("validation/serving_cases_trtllm_moe_b200.yaml", "trtllm-1.0", "dense", "all"): 5,
        }
    )


def test_the_engine_check_line_compares_a_run_with_what_the_profile_records():
    from simulator.calibration.serving_validate import ProfileCheck

    recorded = {"rows": 3.0, "median_abs_error": 0.6422, "max_abs_error": 1.7764, "faster_rows": 2}
    run = {"rows": 3.0, "median_abs_error": 0.64224, "max_abs_error": 1.77638, "faster_rows": 2.0}
    same = ProfileCheck("engine", "vllm", run, recorded)
    assert same.matches
    assert same.line() == (
        "engine profile vllm: 3 rows, median |error| 64.2 %, largest 177.6 %, moesim faster than measured in 2, "
        "as engine_profiles/vllm.yaml records"
    )
    moved = ProfileCheck("engine", "vllm", {**run, "median_abs_error": 0.60}, recorded)
    assert not moved.matches
    assert moved.line().endswith("records 3 rows, 64.2 / 177.6 %, faster than measured in 2: update its `checked`")
    fewer = ProfileCheck("engine", "vllm", {**run, "rows": 2.0}, recorded)
    assert not fewer.matches
    turned = ProfileCheck("engine", "vllm", {**run, "faster_rows": 3.0}, recorded)  # same errors, other signs
    assert not turned.matches
    unrecorded = ProfileCheck("engine", "vllm", {**run, "faster_rows": 3.0}, {**recorded, "faster_rows": None})
    assert unrecorded.matches  # a record without the count checks the errors alone
    none = ProfileCheck("engine", "sglang", {**run, "rows": 1.0}, None)
    assert none.line().endswith("engine_profiles/sglang.yaml records no check on this file")
    classed = ProfileCheck("engine", "trtllm-1.0", run, recorded, "moe", "experts_across_dp")
    assert classed.line().startswith("engine profile trtllm-1.0 (MoE models, with attention DP + EP): 3 rows")


def test_engine_checks_group_the_rows_by_the_profile_each_case_names(tmp_path):
    from simulator.calibration.serving_validate import profile_checks

    cases = [c for c in load_serving_cases(CASES) if c.id in ("TRT17-MIX-H100-TP1-1000-1000", "DST-VLLM-C16")]
    outcomes = [
        ServingOutcome("TRT17-MIX-H100-TP1-1000-1000", "output_tokens_per_s", 100.0, 110.0),
        ServingOutcome("DST-VLLM-C16", "output_tokens_per_s", 100.0, 50.0),
        ServingOutcome("DST-VLLM-C16", "ttft_mean_ms", 100.0, 120.0),
    ]
    checks = {c.name: c for c in profile_checks(cases, outcomes, CASES)}
    assert set(checks) == {"trtllm", "vllm"}
    assert checks["trtllm"].models == "moe"  # Mixtral's rows; the dense check has none in this run: left out
    assert checks["trtllm"].measured == {
        "median_abs_error": pytest.approx(0.1),
        "max_abs_error": pytest.approx(0.1),
        "rows": 1.0,
        "faster_rows": 1.0,  # 110 predicted against 100 measured
    }
    assert checks["vllm"].measured["median_abs_error"] == pytest.approx(0.35)  # median of 0.5 and 0.2
    assert checks["vllm"].measured["faster_rows"] == 0.0  # half the throughput, a longer TTFT
    assert checks["vllm"].recorded is not None and not checks["vllm"].matches  # the file records 3 rows
    elsewhere = profile_checks(cases, outcomes, tmp_path / "serving_cases.yaml")  # another file: nothing recorded
    assert all(c.recorded is None for c in elsewhere)


def test_a_profiles_check_note_states_its_figures_or_that_there_are_none():
    from simulator.config.checked import ResultClass
    from simulator.config.engine import CheckedSpec, load_engine_profile

    trt = load_engine_profile("trtllm-1.0")
    assert trt.check_note(ResultClass(moe=False)) == (
        "profile trtllm-1.0 checked against 54 published figures of dense models (validation/serving_cases_trtllm10.yaml): "
        "median |error| 4.3 %, largest 15.8 %, moesim faster than measured in 34; 7 published figures of dense models "
        "(validation/serving_cases_trtllm_moe.yaml): median |error| 5.5 %, largest 12.3 %, moesim faster than measured in 5; 5 "
        "published figures of dense models (validation/serving_cases_trtllm_moe_b200.yaml): median |error| 5.7 %, "
        "largest 29.3 %, moesim faster than measured in 5"
    )
    assert trt.check_note(ResultClass(moe=True, experts_across_dp=True)) == (
        "profile trtllm-1.0 checked against 13 published figures of MoE models with attention DP + EP "
        "(validation/serving_cases_trtllm_moe.yaml): median |error| 59.3 %, largest 85.1 %, moesim faster than measured in 13; 6 "
        "published figures of MoE models with attention DP + EP (validation/serving_cases_trtllm_moe_b200.yaml): "
        "median |error| 55.5 %, largest 88.7 %, moesim faster than measured in 6; 11 published figures of MoE models with attention "
        "DP + EP (validation/serving_cases_trtllm_gptoss.yaml): median |error| 50.8 %, largest 166.1 %, moesim faster than measured "
        "in 11; 2 published figures of MoE models with attention DP + EP "
        "(validation/serving_cases_trtllm_dsr1_b200.yaml): median |error| 77.2 %, largest 86.9 %, moesim faster than measured in 2"
    )
    assert trt.check_note(ResultClass(moe=True)) == (
        "profile trtllm-1.0 checked against 6 published figures of MoE models without attention DP + EP "
        "(validation/serving_cases_trtllm_moe_b200.yaml): median |error| 24.1 %, largest 40.5 %, moesim faster than measured in 6; "
        "21 published figures of MoE models without attention DP + EP (validation/serving_cases_trtllm_gptoss.yaml): "
        "median |error| 21.5 %, largest 105.9 %, moesim faster than measured in 15"
    )
    assert trt.check_note().count("published figures") == 9  # no class given: every check
    vllm = load_engine_profile("vllm")  # checked on DeepSeek-R1 only
    assert vllm.check_note(ResultClass(moe=False)).startswith(
        "profile vllm has not been checked against a published run of a dense model on its engine"
    )
    assert vllm.check_note(ResultClass(moe=True, experts_across_dp=True)).startswith(
        "profile vllm has not been checked against a published run of an MoE model with attention DP + EP on its "
        "engine: its end-to-end error on this deployment is unknown"
    )
    assert (
        load_engine_profile("vllm-v1")
        .check_note()
        .startswith("profile vllm-v1 has not been checked against a published run of its engine")
    )
    with pytest.raises(ValueError, match="max_abs_error must be at least median_abs_error"):
        CheckedSpec(cases="x.yaml", rows=1, median_abs_error=0.2, max_abs_error=0.1, source="s")
    with pytest.raises(ValueError, match="faster_rows = 3 is more than rows = 2"):
        CheckedSpec(cases="x.yaml", rows=2, median_abs_error=0.1, max_abs_error=0.2, faster_rows=3, source="s")


def _nvfp4_safetensors_count(parameters: float, unquantized: float) -> float:
    """The Hub's safetensors element count of a ModelOpt NVFP4 checkpoint of `parameters` weights, `unquantized` of
    them (embeddings, LM head) in 16 bits: each quantised weight is half a uint8 element, plus an fp8 scale per 16."""
    return (parameters - unquantized) * 9 / 16 + unquantized


def test_the_b200_cases_take_trtllm_bench_limits_for_nvfp4_weights():
    cases = {
        c.id: case_scenario(c) for c in load_serving_cases(ROOT / "validation" / "serving_cases_trtllm10_b200.yaml")
    }
    # trtllm-bench's parameter count of an NVFP4 checkpoint: its safetensors elements, 9/16 of the quantised linear
    # weights (uint8 pairs and one fp8 scale per 16) + the unquantised embeddings and LM head (vocab 128,256)
    assert _nvfp4_safetensors_count(70.6e9, 2 * 128256 * 8192) == pytest.approx(40.632e9, rel=1e-4)
    setups = {
        "L70-B200-TP1": (1, _nvfp4_safetensors_count(70.6e9, 2 * 128256 * 8192), 80),
        "L405-B200-TP4": (4, _nvfp4_safetensors_count(405.85e9, 2 * 128256 * 16384), 126),
    }
    lengths = [(128, 2048), (128, 4096), (500, 2000), (1000, 1000), (1000, 2000), (2048, 128), (2048, 2048)]
    lengths += [(5000, 500), (20000, 2000)]
    assert set(cases) == {f"TRT10-{k}-{i}-{o}" for k in setups for i, o in lengths}
    for case_id, s in cases.items():
        setup, isl, osl = case_id[len("TRT10-") :].rsplit("-", 2)
        gpus, params, layers = setups[setup]
        limits = _trtllm_bench_limits(179.0, gpus, params, layers, int(isl), int(osl), weight_bytes=0.5)
        assert (s.serving.scheduler.max_num_seqs, s.serving.scheduler.max_num_batched_tokens) == limits, case_id
        f = s.model.formats
        assert (f.dense_gemm.storage, f.dense_gemm.compute, f.kv_cache) == ("nvfp4", "nvfp4", "fp8"), case_id
        assert s.hardware.profile == "b200-sxm-180gb" and s.num_gpus == gpus and s.serving.engine == "trtllm-1.0"
    # by hand: (4 x 179 - 230.13e9 x 0.5 / 2^30 GiB) x 0.95 / (2 x 126 x 8 x 128 B x 2,000 / 2^30) = 1,203.4 requests
    # -> 256 x 5 = 1,280; 2,406.8 tokens -> 256 x 10 = 2,560
    assert _trtllm_bench_limits(179.0, 4, 230.13e9, 126, 1000, 1000, weight_bytes=0.5) == (1280, 2560)


def test_the_moe_cases_take_trtllm_bench_limits_per_rank_and_the_dep_layout():
    """validation/serving_cases_trtllm_moe.yaml: the page's DEP columns are attention DP over every GPU with the
    experts split over them and reached by all-gather / reduce-scatter (the all-gather in fp8 where the checkpoint
    quantises per tensor, in bf16 for DeepSeek's block scales); its Llama 3.3 70B columns TP2. Each rank takes
    trtllm-bench's limits computed over all the GPUs."""

    moe = ROOT / "validation" / "serving_cases_trtllm_moe.yaml"
    cases = {c.id: case_scenario(c) for c in load_serving_cases(moe)}
    h100, h200 = 81559 / 1024, 143771 / 1024
    setups = {  # GPU total GiB, GPUs, parameters, layers, KV heads (the HF config's), head size, lengths
        "Q235-H200-DEP4": (h200, 4, 235.09e9, 94, 4, 128, "1000-1000 1024-1024 1024-8192 8192-1024 32768-1024"),
        "Q235-H100-DEP8": (h100, 8, 235.09e9, 94, 4, 128, "1000-1000 1024-1024 1024-8192"),
        "DSR1-H200-DEP8": (h200, 8, 684.53e9, 61, 128, 56, "1000-1000 1024-1024 1024-8192 1024-32768"),
        "L70-H200-TP2": (h200, 2, 70.6e9, 80, 8, 128, "1000-1000 1024-1024 1024-8192 8192-1024 32768-1024"),
        "L70-H100-TP2": (h100, 2, 70.6e9, 80, 8, 128, "1000-1000 8192-1024"),
    }
    count = {"1000-1000": 3000, "1024-1024": 3000, "1024-8192": 1500, "8192-1024": 1500, "32768-1024": 1000}
    count["1024-32768"] = 1000
    expected = {f"TRTMOE-{k}-{length}" for k, v in setups.items() for length in v[-1].split()}
    assert set(cases) == expected | {"TRTMOE-BLOG-DSR1-H200-DEP8-1024-2048"}
    for case_id in sorted(expected):
        s = cases[case_id]
        setup, isl, osl = case_id[len("TRTMOE-") :].rsplit("-", 2)
        gib, gpus, params, layers, kv_heads, head, _ = setups[setup]
        spec, p = s.serving, s.parallel
        assert (spec.workload.input_len.tokens, spec.workload.output_len.tokens) == (int(isl), int(osl)), case_id
        assert spec.workload.num_requests == count[f"{isl}-{osl}"], case_id
        limits = _trtllm_bench_limits(gib, gpus, params, layers, int(isl), int(osl), 1.0, kv_heads, head)
        assert (spec.scheduler.max_num_seqs, spec.scheduler.max_num_batched_tokens) == limits, case_id
        assert s.num_gpus == gpus and s.model.num_layers == layers and spec.engine == "trtllm-1.0", case_id
        f = s.model.formats
        assert f.dense_gemm.compute == f.expert_gemm.compute == f.kv_cache == "fp8" and f.attention == "bf16"
        if "DEP" in setup:
            assert (p.tp, p.dp, p.ep) == (1, gpus, gpus) and s.runtime.ep_dispatch == "allgather", case_id
            assert (f.dispatch or f.communication) == ("bf16" if setup.startswith("DSR1") else "fp8"), case_id
            assert s.experts_across_dp, case_id  # the ranks step together
        else:
            assert (p.tp, p.dp, p.ep) == (gpus, 1, 1), case_id
        # the page's DeepSeek R1 llm_options hold prompts for balance (attention_dp_config); Qwen3's do not
        adp = spec.replicas.attention_dp_balance
        if setup.startswith("DSR1"):
            assert adp is not None and (adp.timeout_iters, adp.batching_wait_iters) == (60, 0), case_id
        else:
            assert adp is None, case_id
    # by hand: DeepSeek R1 at 1000/1000 on 8 H200s: (1,123.2 - 637.5 GiB) x 0.95 / (2 x 61 x 128 x 56 B x 2,000)
    # = 283.3 requests -> 128 x 3 = 384 a rank; 566.6 tokens -> 2,048
    assert _trtllm_bench_limits(h200, 8, 684.53e9, 61, 1000, 1000, 1.0, 128, 56) == (384, 2048)


def test_the_b200_moe_cases_take_the_packed_nvfp4_counts_and_the_dep_layout():
    """validation/serving_cases_trtllm_moe_b200.yaml: Qwen3 30B A3B alone on one B200 (no DP, no EP), Qwen3 235B DEP4
    with an NVFP4 all-gather, the dense 70B TP1; limits from the NVFP4 checkpoints' safetensors counts."""

    path = ROOT / "validation" / "serving_cases_trtllm_moe_b200.yaml"
    cases = {c.id: case_scenario(c) for c in load_serving_cases(path)}
    qwen_lengths = "1000-1000 1024-1024 1024-8192 1024-32768 8192-1024 32768-1024"
    setups = {  # GPUs, safetensors count, layers, KV heads, lengths
        "Q30-B200-TP1": (1, _nvfp4_safetensors_count(30.532e9, 0.6223e9 + 0.0126e9), 48, 4, qwen_lengths),
        "Q235-B200-DEP4": (4, _nvfp4_safetensors_count(235.09e9, 1.2447e9 + 0.0493e9), 94, 4, qwen_lengths),
        "L70-B200-TP1": (
            1,
            _nvfp4_safetensors_count(70.6e9, 2 * 128256 * 8192),
            80,
            8,
            "1000-1000 1024-1024 1024-8192 8192-1024 32768-1024",
        ),
    }
    assert set(cases) == {f"TRTMOE-{k}-{length}" for k, v in setups.items() for length in v[-1].split()}
    for case_id, s in cases.items():
        setup, isl, osl = case_id[len("TRTMOE-") :].rsplit("-", 2)
        gpus, count, layers, kv_heads, _ = setups[setup]
        limits = _trtllm_bench_limits(179.0, gpus, count, layers, int(isl), int(osl), 0.5, kv_heads, 128)
        assert (s.serving.scheduler.max_num_seqs, s.serving.scheduler.max_num_batched_tokens) == limits, case_id
        f = s.model.formats
        assert (f.dense_gemm.compute, f.expert_gemm.compute, f.kv_cache) == ("nvfp4", "nvfp4", "fp8"), case_id
        assert s.hardware.profile == "b200-sxm-180gb" and s.num_gpus == gpus and s.model.num_layers == layers
        if setup.startswith("Q235"):
            assert (s.parallel.dp, s.parallel.ep, s.runtime.ep_dispatch, f.dispatch) == (4, 4, "allgather", "nvfp4")
            assert s.experts_across_dp
        else:
            assert s.parallel.dp == s.parallel.ep == s.parallel.tp == 1, case_id
    # by hand: Qwen3 30B A3B at 1000/1000: 29.897e9 x 9/16 + 0.6349e9 = 17.45e9; (179 - 8.126 GiB) x 0.95 /
    # (2 x 48 x 4 x 128 B x 2,000 / 2^30) = 1,773 requests -> 256 x 7 = 1,792; 3,546 tokens -> 256 x 14 = 3,584
    assert _trtllm_bench_limits(179.0, 1, 17.452e9, 48, 1000, 1000, 0.5, 4, 128) == (1792, 3584)


def test_the_deepseek_guide_b200_cases_take_their_command_lines_and_the_dep_layout():
    """validation/serving_cases_trtllm_dsr1_b200.yaml: the DeepSeek-R1 guide's two B200 DEP8 max-throughput runs take
    their command lines' limits (per rank), requests, CUDA graphs and KV fractions, bf16 attention projections and
    NVFP4 experts and all-gather."""

    path = ROOT / "validation" / "serving_cases_trtllm_dsr1_b200.yaml"
    cases = {c.id: case_scenario(c) for c in load_serving_cases(path)}
    # the lengths: 1,024 / 2,048 (the R1 run's dataset), 1,042 / 2,048 (the R1-0528 run's figures: 65,100.6376 /
    # 21.0675 total tokens a request less 43,146.2042 / 21.0675 out)
    powers = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    guide = {  # max_batch_size, max_num_tokens, KV fraction, concurrency, requests, graph sizes, KV / attention
        "TRTMOE-BLOG-DSR1-0528-B200-DEP8-1042-2048": (896, 2048, 0.93, 7168, 114688, [*powers, 896], "fp8"),
        "TRTMOE-BLOG-DSR1-B200-DEP8-1024-2048": (384, 1536, 0.85, 3072, 49152, [*powers[:-1], 384], "bf16"),
    }
    assert round(65100.6376 / 21.0675 - 43146.2042 / 21.0675) == 1042 and round(43146.2042 / 21.0675) == 2048
    assert set(cases) == set(guide)
    for case_id, (seqs, tokens, fraction, concurrency, requests, graphs, kv) in guide.items():
        s = cases.pop(case_id)
        spec, p, f = s.serving, s.parallel, s.model.formats
        isl, osl = case_id.rsplit("-", 2)[1:]
        assert (spec.workload.input_len.tokens, spec.workload.output_len.tokens) == (int(isl), int(osl)), case_id
        assert (spec.workload.arrivals.concurrency, spec.workload.num_requests) == (concurrency, requests), case_id
        assert (spec.scheduler.max_num_seqs, spec.scheduler.max_num_batched_tokens) == (seqs, tokens), case_id
        assert spec.scheduler.kv_cache.free_memory_fraction == fraction and spec.engine == "trtllm-1.0", case_id
        assert spec.cuda_graph.padding and sorted(spec.cuda_graph.sizes) == graphs, case_id
        assert s.hardware.profile == "b200-sxm-180gb" and s.num_gpus == 8 and s.model.num_layers == 61, case_id
        assert (p.tp, p.dp, p.ep) == (1, 8, 8) and s.runtime.ep_dispatch == "allgather" and s.experts_across_dp
        # experts NVFP4 W4A4, the attention projections bf16 (the checkpoint excludes self_attn), FP4 all-gather
        assert (f.expert_gemm.storage, f.expert_gemm.compute, f.dispatch) == ("nvfp4", "nvfp4", "nvfp4"), case_id
        assert (f.dense_gemm.storage, f.dense_gemm.compute, f.lm_head.compute) == ("bf16", "bf16", "bf16"), case_id
        assert (f.kv_cache, f.attention) == (kv, kv), case_id


def _mxfp4_safetensors_count(layers: int, experts: int, hidden: int = 2880, inter: int = 2880) -> int:
    """The safetensors element count of OpenAI's gpt-oss checkpoints (what trtllm-bench's get_param_count sums): each
    expert matrix as uint8 blocks [E, out, in / 32, 16] and uint8 scales [E, out, in / 32], 17/32 of an element a
    weight; everything else bf16 at one element a weight (64 heads and 8 KV heads of 64, biases, sinks, untied
    embeddings of 201,088)."""
    heads, kv, head, vocab = 64, 8, 64, 201088
    attention = 2 * hidden * heads * head + 2 * hidden * kv * head + heads * head + 2 * kv * head + hidden + heads
    router = hidden * experts + experts
    expert_weights = experts * 3 * hidden * inter  # gate_up [2 I, H] and down [H, I]
    expert_biases = experts * (2 * inter + hidden)
    per_layer = attention + 2 * hidden + router + expert_weights * 17 // 32 + expert_biases
    return layers * per_layer + 2 * vocab * hidden + hidden


def test_the_gptoss_cases_take_trtllm_bench_limits_for_mxfp4_and_the_dep_layout():
    """validation/serving_cases_trtllm_gptoss.yaml: GPT-OSS 120B and 20B, Hopper with bf16-activation MXFP4 experts
    and a bf16 KV cache, B200 with MXFP8 activations (the fp8 peak) and an fp8 KV cache; the DEP columns attention DP
    with an all-gather (fp8 on B200). trtllm-bench counts MXFP4 weights at 2 bytes (no BYTES_PER_ELEM entry) over
    the checkpoint's safetensors elements, and every layer's KV at full length."""

    path = ROOT / "validation" / "serving_cases_trtllm_gptoss.yaml"
    cases = {c.id: case_scenario(c) for c in load_serving_cases(path)}
    # the gpt-oss-20b index's total_size checks the shapes: bf16 elements twice, uint8 once
    p120, p20 = _mxfp4_safetensors_count(36, 128), _mxfp4_safetensors_count(24, 32)
    assert (p120, p20) == (63_081_444_672, 11_956_805_184)
    assert 2 * p20 - (24 * 32 * 3 * 2880 * 2880 * 17 // 32) == 13_761_264_768
    h100, h200 = 81559 / 1024, 143771 / 1024
    short = "1000-1000 1024-1024 8192-1024 32768-1024"
    setups = {  # nvml GiB, GPUs, safetensors count, layers, KV bytes, lengths
        "G120-H200-TP1": (h200, 1, p120, 36, 2.0, short + " 1024-8192"),
        "G120-H100-DEP4": (h100, 4, p120, 36, 2.0, short + " 1024-32768"),
        "G120-B200-DEP2": (179.0, 2, p120, 36, 1.0, short + " 1024-8192 1024-32768"),
        "G20-H200-TP1": (h200, 1, p20, 24, 2.0, short + " 1024-8192"),
        "G20-H100-TP1": (h100, 1, p20, 24, 2.0, short + " 1024-8192"),
        "G20-B200-TP1": (179.0, 1, p20, 24, 1.0, short + " 1024-8192 1024-32768"),
    }
    count = {"1000-1000": 3000, "1024-1024": 3000, "1024-8192": 1500, "8192-1024": 1500, "32768-1024": 1000}
    count["1024-32768"] = 1000
    assert set(cases) == {f"TRTOSS-{k}-{length}" for k, v in setups.items() for length in v[-1].split()}
    for case_id, s in cases.items():
        setup, isl, osl = case_id[len("TRTOSS-") :].rsplit("-", 2)
        gib, gpus, params, layers, kv_bytes, _ = setups[setup]
        spec, p, f = s.serving, s.parallel, s.model.formats
        assert (spec.workload.input_len.tokens, spec.workload.output_len.tokens) == (int(isl), int(osl)), case_id
        assert spec.workload.num_requests == count[f"{isl}-{osl}"] and spec.engine == "trtllm-1.0", case_id
        limits = _trtllm_bench_limits(gib, gpus, params, layers, int(isl), int(osl), 2.0, 8, 64, kv_bytes)
        assert (spec.scheduler.max_num_seqs, spec.scheduler.max_num_batched_tokens) == limits, case_id
        assert s.num_gpus == gpus and s.model.num_layers == layers, case_id
        assert (s.model.sliding_window, s.model.attention_pattern) == (128, ["sliding", "full"]), case_id
        gpu = setup.split("-")[1]
        blackwell = gpu == "B200"
        assert s.hardware.profile == {"H100": "h100-sxm-80gb", "H200": "h200-sxm-141gb", "B200": "b200-sxm-180gb"}[gpu]
        assert f.expert_gemm.storage == "mxfp4" and f.dense_gemm.storage == f.dense_gemm.compute == "bf16", case_id
        assert (f.expert_gemm.compute, f.kv_cache) == (("fp8", "fp8") if blackwell else ("bf16", "bf16")), case_id
        assert f.attention == f.lm_head.compute == "bf16", case_id
        if "DEP" in setup:
            assert (p.tp, p.dp, p.ep) == (1, gpus, gpus) and s.runtime.ep_dispatch == "allgather", case_id
            assert (f.dispatch or f.communication) == ("fp8" if blackwell else "bf16"), case_id
            assert s.experts_across_dp, case_id
        else:
            assert p.tp == p.dp == p.ep == 1, case_id
    # by hand: 120B at 1000/1000 on one H200: (140.40 - 63.08e9 x 2 / 2^30 = 117.50 GiB) x 0.95 /
    # (2 x 36 x 8 x 64 x 2 B x 2,000 / 2^30) = 158.4 requests -> 32 x 5 = 160; 316.8 tokens -> 2,048
    assert _trtllm_bench_limits(h200, 1, p120, 36, 1000, 1000, 2.0, 8, 64, 2.0) == (160, 2048)


def test_a_hardware_profiles_recorded_check_counts_its_rows_and_reaches_its_note():
    """HardwareProfile.checked as for engines, by model class, on the uncalibrated profile (the calibrated ones
    record none: their figures are measured): the B200's dense NVFP4 cases (18 rows), the MoE file's MoE (12) and
    dense (5) rows, the GPT-OSS file's B200 rows (12) and the DeepSeek guide's (2); every output's calibration note on the profile states
    those of its model's class (config.hardware.calibration_note)."""
    from simulator.config.hardware import available_profiles, calibration_note, load_profile

    files = (
        "serving_cases_trtllm10_b200.yaml",
        "serving_cases_trtllm_moe_b200.yaml",
        "serving_cases_trtllm_gptoss.yaml",
        "serving_cases_trtllm_dsr1_b200.yaml",
    )
    rows = _rows_by_check(
        (ROOT / "validation" / name for name in files),
        lambda s: s.hardware.profile,
        lambda name: load_profile(name).checked,
    )
    rows = {key: n for key, n in rows.items() if load_profile(key[1]).calibration is None}
    recorded = {
        (c.cases, name, c.models, c.layouts): c.rows
        for name in available_profiles()
        for c in load_profile(name).checked
    }
    dep, b200 = "experts_across_dp", "b200-sxm-180gb"
    assert (
        recorded
        == rows
        == {
            ("validation/serving_cases_trtllm10_b200.yaml", b200, "dense", "all"): 18,
            ("validation/serving_cases_trtllm_moe_b200.yaml", b200, "moe", dep): 6,
            ("validation/serving_cases_trtllm_moe_b200.yaml", b200, "moe", "other"): 6,
            ("validation/serving_cases_trtllm_moe_b200.yaml", b200, "dense", "all"): 5,
            ("validation/serving_cases_trtllm_gptoss.yaml", b200, "moe", dep): 6,
            ("validation/serving_cases_trtllm_gptoss.yaml", b200, "moe", "other"): 6,
            ("validation/serving_cases_trtllm_dsr1_b200.yaml", b200, "moe", dep): 2,
        }
    )
    from simulator.config.checked import ResultClass

    profile = load_profile(b200)
    dense, one, dep = (
        calibration_note(profile, ResultClass(False)),
        calibration_note(profile, ResultClass(True)),
        calibration_note(profile, ResultClass(True, experts_across_dp=True)),
    )
    assert dense is not None and dense.endswith(
        "; checked on it end to end against 18 published figures of dense models "
        "(validation/serving_cases_trtllm10_b200.yaml): median |error| 7.8 %, largest 24.4 %, moesim faster than measured in 14; 5 "
        "published figures of dense models (validation/serving_cases_trtllm_moe_b200.yaml): median |error| 5.7 %, "
        "largest 29.3 %, moesim faster than measured in 5"
    )
    assert one is not None and one.endswith(
        "; checked on it end to end against 6 published figures of MoE models without attention DP + EP "
        "(validation/serving_cases_trtllm_moe_b200.yaml): median |error| 24.1 %, largest 40.5 %, moesim faster than measured in 6; "
        "6 published figures of MoE models without attention DP + EP (validation/serving_cases_trtllm_gptoss.yaml): "
        "median |error| 29.5 %, largest 38.0 %, moesim faster than measured in 3"
    )
    assert dep is not None and dep.endswith(
        "; checked on it end to end against 6 published figures of MoE models with attention DP + EP "
        "(validation/serving_cases_trtllm_moe_b200.yaml): median |error| 55.5 %, largest 88.7 %, moesim faster than measured in 6; "
        "6 published figures of MoE models with attention DP + EP (validation/serving_cases_trtllm_gptoss.yaml): "
        "median |error| 39.5 %, largest 60.8 %, moesim faster than measured in 6; 2 published figures of MoE models with attention "
        "DP + EP (validation/serving_cases_trtllm_dsr1_b200.yaml): median |error| 77.2 %, largest 86.9 %, moesim "
        "faster than measured in 2"
    )
    assert calibration_note(profile).count("published figures") == 7  # no class given: every check
    assert "checked on it" not in (calibration_note(load_profile("h100-sxm-80gb")) or "")


def _seed_case_outcome(tmp_path, case_id: str, serving: dict, layout: dict | None = None):
    """The one outcome of a serving case of the seed model (its layout, or `layout`) served by trtllm-1.0 with
    `serving` added: 4 requests of 64 + 4 tokens at once, written to a cases file and predicted."""
    from simulator.calibration.serving_validate import load_serving_cases, predict_serving

    seed = yaml.safe_load((ROOT / "scenarios/seed_moe_4gpu_serving.yaml").read_text())
    scenario = {k: seed[k] for k in ("model", "hardware", "cluster", "parallel", "runtime")} | (layout or {})
    scenario["serving"] = {
        "engine": "trtllm-1.0",
        **serving,
        "workload": {
            "arrivals": {"kind": "closed_loop", "concurrency": 4},
            "num_requests": 4,
            "input_len": {"kind": "fixed", "tokens": 64},
            "output_len": {"kind": "fixed", "tokens": 4},
        },
    }
    path = tmp_path / "cases.yaml"
    case = {"id": case_id, "source": "test", "measured": {"output_tokens_per_s": 1.0}, "scenario": scenario}
    path.write_text(yaml.safe_dump({"serving_cases": [case]}))
    (outcome,) = predict_serving(load_serving_cases(path)[0], tmp_path)
    return outcome


def test_a_cases_host_set_share_reaches_the_table_the_markdown_and_the_csv(tmp_path):
    # a seed-model case served by trtllm-1.0 with the scenario's host time at 1 s an iteration, overlapped: every
    # iteration is the host's (100 %); a case without host time shows '-' and an empty CSV cell
    from simulator.calibration.serving_validate import ServingOutcome, Skipped
    from simulator.report.validation_plot import host_share_text, serving_validation_markdown, write_serving_validation

    outcome = _seed_case_outcome(tmp_path, "HOST", {"host": {"per_iteration_s": 1.0, "overlapped": True}})
    assert outcome.host_bound_share == 1.0 and host_share_text(outcome.host_bound_share) == "100 %"
    plain = ServingOutcome("PLAIN", "output_tokens_per_s", 2.0, 3.0)
    summary = summarize_serving([outcome, plain])
    md = serving_validation_markdown([outcome, plain], [], summary, "t")
    assert "| error | host-set iterations |" in md
    assert f"rows; moesim faster than measured in {int(summary['faster_rows'])}." in md
    assert md.splitlines()[4].endswith(" 100 % |") and md.splitlines()[5].endswith(" - |")
    assert "host-set" not in serving_validation_markdown([plain], [], summary, "t")
    write_serving_validation([outcome, plain], [Skipped("S", "why")], summary, tmp_path, "t")
    with open(tmp_path / "validation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["host_bound_share"] for r in rows] == ["1.0", "", ""]
    # the case's iterations on replica 0 reach the CSV (empty for a row without them) and the Markdown
    p = outcome.iterations
    assert p is not None and p.iterations > 0
    assert [r["iterations"] for r in rows] == [str(p.iterations), "", ""]
    assert float(rows[0]["iteration_ms_mean"]) == pytest.approx(1e3 * p.mean_s)
    assert f"| HOST | {p.iterations} | {1e3 * p.mean_s:.2f} ms |" in md
    assert "## Iterations" not in serving_validation_markdown([plain], [], summary, "t")


@pytest.mark.parametrize(
    "model, parallel, across",
    [
        ("qwen3-30b-a3b", {}, False),  # one GPU
        ("qwen3-30b-a3b", {"dp": 2}, False),  # two replicas, each with every expert
        ("qwen3-30b-a3b", {"tp": 2, "ep": 2, "dp": 2}, False),  # experts within each TP group
        ("qwen3-30b-a3b", {"tp": 1, "ep": 2, "dp": 2}, True),  # attention DP + EP (DEP2)
        ("qwen3-30b-a3b", {"tp": 2, "ep": 4, "dp": 2}, True),  # an EP group over two TP pairs
        ("llama-3-8b", {"dp": 2}, False),  # dense
    ],
)
def test_a_scenarios_result_class_says_whether_its_experts_span_dp_ranks(model, parallel, across):
    from simulator.config import parse_scenario
    from simulator.config.checked import ResultClass

    p = {"tp": 1, "dp": 1, "ep": 1, **parallel}
    s = parse_scenario(
        {
            "name": "c",
            "model": {"preset": model},
            "hardware": "h200-sxm-141gb",
            "cluster": {"num_gpus": p["tp"] * p["dp"]},
            "parallel": p,
            "workload": {"batch_size": p["dp"], "input_len_tokens": 8, "output_len_tokens": 2},
        }
    )
    assert s.result_class == ResultClass(model != "llama-3-8b", across)


def test_a_serving_output_states_the_checks_of_its_deployments_class():
    """The DEP case of the MoE file prints trtllm-1.0's checks with attention DP + EP only; the same model on
    one replica (no expert parallelism) prints those without; a dense model those of dense models."""
    from simulator.config.engine import load_engine_profile

    cases = {c.id: case_scenario(c) for c in load_serving_cases(ROOT / "validation" / "serving_cases_trtllm_moe.yaml")}
    trt = load_engine_profile("trtllm-1.0")
    dep = trt.check_note(cases["TRTMOE-Q235-H200-DEP4-1000-1000"].result_class)
    assert dep.count("with attention DP + EP") == 4 and "without" not in dep and "dense" not in dep
    alone = cases["TRTMOE-Q235-H200-DEP4-1000-1000"].model_copy(
        update={"parallel": cases["TRTMOE-Q235-H200-DEP4-1000-1000"].parallel.model_copy(update={"dp": 1, "ep": 1})}
    )
    single = trt.check_note(alone.result_class)
    assert single.count("without attention DP + EP") == 2 and "with attention" not in single
    dense = [s for s in cases.values() if not s.model.is_moe][0]
    assert trt.check_note(dense.result_class).count("of dense models") == 3


def test_a_lockstep_cases_rank_balance_reaches_the_table_the_markdown_and_the_csv(tmp_path):
    # the seed model as DEP2 (attention DP 2, experts over both) under trtllm-1.0: one lockstep group, 4 equal
    # requests, 2 a rank, every iteration the same on both: rank balance 1
    from rich.console import Console

    from simulator.calibration.serving_validate import ServingOutcome
    from simulator.commands.validate import _outcome_table
    from simulator.report.validation_plot import serving_validation_markdown, write_serving_validation

    layout = {"cluster": {"num_gpus": 2, "gpus_per_node": 8}, "parallel": {"tp": 1, "dp": 2, "ep": 2, "pp": 1}}
    outcome = _seed_case_outcome(tmp_path, "DEP2", {}, layout)
    assert outcome.iterations is not None and outcome.iterations.balance_ratio == 1.0
    plain = ServingOutcome("PLAIN", "output_tokens_per_s", 2.0, 3.0)
    console = Console(width=200, record=True)
    console.print(_outcome_table("t", [outcome, plain], ("measured", "predicted")))
    lines = console.export_text().splitlines()
    assert "rank balance" in lines[2] and [line.split()[-2] for line in lines[4:6]] == ["1.00", "-"]
    summary = summarize_serving([outcome, plain])
    md = serving_validation_markdown([outcome, plain], [], summary, "t")
    assert "| its median new tokens | rank balance |" in md and " | 1.00 |" in md
    assert "Rank balance: a lockstep group's mean" in md
    write_serving_validation([outcome, plain], [], summary, tmp_path, "t")
    with open(tmp_path / "validation.csv") as f:
        assert [r["balance_ratio"] for r in csv.DictReader(f)] == ["1.0", ""]
