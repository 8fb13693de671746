"""Request table and summary: exact figures for one-at-a-time serving, TPOT of one token, goodput."""

from __future__ import annotations

import math

import pytest

from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import describe, request_table, summarize, throughput_series, timeseries_table
from tests.serving.conftest import make_spec

REQUEST_S = 1.8984375  # prefill 0.75 + decodes 0.375 + 0.3828125 + 0.390625


def test_one_at_a_time_summary_is_exact(pricer):
    run = simulate_serving(make_spec(replicas={"gpus_per_replica": 2}), pricer)
    summary = summarize(run)
    assert summary.latency.loc["ttft_s"].tolist() == [0.75] * 5
    assert summary.latency.loc["tpot_s", "mean"] == 0.3828125
    assert summary.latency.loc["e2e_s", "max"] == REQUEST_S
    assert summary.latency.loc["queueing_s", "max"] == 0.0
    assert summary.latency.loc["itl_s", "p50"] == 0.3828125
    f = summary.figures
    assert f["duration_s"] == 3 * REQUEST_S
    assert f["output_tokens_per_s"] == 12 / (3 * REQUEST_S)
    assert f["output_tokens_per_s_per_gpu"] == 12 / (3 * REQUEST_S) / 2
    assert f["output_tokens_per_ms_per_gpu"] == 12 / (3 * REQUEST_S) / 2 / 1000
    assert f["total_tokens_per_s"] == 36 / (3 * REQUEST_S)
    assert f["requests_per_s"] == 3 / (3 * REQUEST_S)


def test_tpot_of_a_one_token_output_is_nan_and_left_out(pricer):
    run = simulate_serving(make_spec(workload={"output_len": {"kind": "fixed", "tokens": 1}}), pricer)
    table = request_table(run)
    assert table["tpot_s"].isna().all()
    summary = summarize(run, table)
    assert math.isnan(summary.latency.loc["tpot_s", "p99"])
    assert summary.figures["tpot_undefined_requests"] == 3


def test_goodput_counts_requests_meeting_every_target(pricer):
    spec = make_spec(targets={"ttft_p99_s": 1.0, "e2e_p99_s": 1.5, "min_goodput_fraction": 0.5})
    summary = summarize(simulate_serving(spec, pricer))
    assert summary.figures["goodput_fraction"] == 0.0
    assert summary.verdicts["ttft_p99_s"] == (0.75, 1.0, True)
    assert summary.verdicts["e2e_p99_s"] == (REQUEST_S, 1.5, False)
    assert summary.verdicts["min_goodput_fraction"] == (0.0, 0.5, False)
    assert not summary.all_targets_met


def test_warmup_requests_are_left_out(pricer):
    run = simulate_serving(make_spec(workload={"warmup_requests": 2}), pricer)
    summary = summarize(run)
    assert summary.figures["num_requests"] == 1
    assert summary.figures["duration_s"] == REQUEST_S
    assert request_table(run)["warmup"].tolist() == [True, True, False]


def test_describe_gives_numpy_percentiles():
    assert describe([1.0, 2.0, 3.0, 4.0, float("nan")]) == {
        "mean": 2.5,
        "p50": 2.5,
        "p90": pytest.approx(3.7),
        "p99": pytest.approx(3.97),
        "max": 4.0,
    }


def test_throughput_series_bins_tokens_by_iteration_end(pricer):
    run = simulate_serving(make_spec(workload={"num_requests": 1}), pricer)
    # Tokens at 0.75, 1.125, 1.5078125, 1.8984375: bins of 1 s hold 1 and 3.
    assert throughput_series(run, 1.0)["output_tokens_per_s"].tolist() == [1.0, 3.0]
    assert len(timeseries_table(run)) == 4


def test_the_iteration_profile_of_two_requests_is_exact(pricer):
    """Two requests of 8 + 3 tokens at once (LinearPricer(0.25, 1/16, 1/128)): one iteration prefills both
    (16 new tokens: 0.25 + 16/16 = 1.25 s), then two decode both (contexts 8 and 9: 0.25 + 2/16 + 16/128 = 0.5 s,
    0.25 + 2/16 + 18/128 = 0.515625 s)."""
    from simulator.serving.stats import iteration_profile

    spec = make_spec(
        workload={
            "arrivals": {"kind": "closed_loop", "concurrency": 2},
            "num_requests": 2,
            "output_len": {"kind": "fixed", "tokens": 3},
        }
    )
    p = iteration_profile(simulate_serving(spec, pricer))
    assert p is not None and p.iterations == 3
    assert p.mean_s == (1.25 + 0.5 + 0.515625) / 3
    assert p.decode_share == 2 / 3
    assert (p.decode_p50_s, p.decode_batch_p50) == ((0.5 + 0.515625) / 2, 2.0)
    assert (p.mixed_p50_s, p.mixed_new_tokens_p50) == (1.25, 16.0)
    assert iteration_profile(simulate_serving(spec, pricer), replica=1) is None  # no such replica ran


def test_an_iteration_profile_without_decode_only_iterations_has_no_decode_figures(pricer):
    from simulator.serving.stats import iteration_profile

    spec = make_spec(
        workload={"num_requests": 2, "output_len": {"kind": "fixed", "tokens": 1}}
    )  # one token each: the prefill gives it
    p = iteration_profile(simulate_serving(spec, pricer))
    assert p is not None and p.decode_share == 0.0
    assert math.isnan(p.decode_p50_s) and math.isnan(p.decode_batch_p50)
    assert p.mixed_new_tokens_p50 == 8.0
