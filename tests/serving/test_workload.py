"""Request generation: determinism, common random numbers, distributions, trace and length files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulator.config.serving import ServingError
from simulator.serving.workload import generate_requests, read_trace
from tests.serving.conftest import make_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TRACE = ROOT / "scenarios" / "traces" / "example_requests.csv"
POISSON = {
    "arrivals": {"kind": "poisson", "rate_per_s": 2.0},
    "num_requests": 200,
    "input_len": {"kind": "uniform", "min_tokens": 1, "max_tokens": 100},
    "output_len": {"kind": "normal", "mean_tokens": 20, "std_tokens": 30, "min_tokens": 2, "max_tokens": 40},
}


def test_same_seed_gives_identical_requests():
    assert generate_requests(make_spec(workload=POISSON)) == generate_requests(make_spec(workload=POISSON))


def test_another_seed_gives_other_requests():
    assert generate_requests(make_spec(workload=POISSON)) != generate_requests(
        make_spec(workload={**POISSON, "seed": 1})
    )


def test_rates_share_their_random_numbers():
    slow = generate_requests(make_spec(workload=POISSON))
    fast = generate_requests(make_spec(workload={**POISSON, "arrivals": {"kind": "poisson", "rate_per_s": 8.0}}))
    assert [(r.input_tokens, r.output_tokens) for r in slow] == [(r.input_tokens, r.output_tokens) for r in fast]
    assert np.allclose([r.arrival_s / 4 for r in slow], [r.arrival_s for r in fast], rtol=1e-12)


def test_duration_gives_a_prefix_of_the_same_requests():
    counted = generate_requests(make_spec(workload=POISSON))
    timed = generate_requests(make_spec(workload={**POISSON, "num_requests": None, "duration_s": 30.0}))
    assert 0 < len(timed) < len(counted)
    assert timed == counted[: len(timed)]
    assert timed[-1].arrival_s < 30.0 <= counted[len(timed)].arrival_s


def test_lengths_stay_within_their_clip():
    requests = generate_requests(make_spec(workload=POISSON))
    assert min(r.output_tokens for r in requests) == 2 and max(r.output_tokens for r in requests) == 40
    assert 1 <= min(r.input_tokens for r in requests) and max(r.input_tokens for r in requests) <= 100


def test_constant_arrivals_are_evenly_spaced_from_zero():
    requests = generate_requests(
        make_spec(workload={"arrivals": {"kind": "constant", "rate_per_s": 4.0}, "num_requests": 4})
    )
    assert [r.arrival_s for r in requests] == [0.0, 0.25, 0.5, 0.75]


def test_gamma_arrivals_have_the_asked_mean_gap():
    requests = generate_requests(
        make_spec(
            workload={**POISSON, "num_requests": 20000, "arrivals": {"kind": "gamma", "rate_per_s": 5.0, "cv": 3.0}}
        )
    )
    gaps = np.diff([r.arrival_s for r in requests])
    assert gaps.mean() == pytest.approx(0.2, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)


def test_closed_loop_requests_arrive_when_served():
    assert all(np.isnan(r.arrival_s) for r in generate_requests(make_spec()))


def test_example_trace_is_read_in_arrival_order():
    spec = make_spec(
        workload={
            "arrivals": {"kind": "trace", "path": str(EXAMPLE_TRACE)},
            "num_requests": None,
            "input_len": None,
            "output_len": None,
        },
        scheduler={"max_num_batched_tokens": 4096, "kv_cache": {"capacity_blocks": 4096}},
    )
    requests = generate_requests(spec)
    assert len(requests) == 36
    assert requests[0].arrival_s == 0.0 and (requests[0].input_tokens, requests[0].output_tokens) == (103, 134)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("t.csv", "", "empty trace"),
        ("t.csv", "arrival_s,input_tokens,output_tokens\n", "empty trace"),
        ("t.csv", "arrival,input_tokens,output_tokens\n0,1,1\n", r"line 1: header lacks arrival_s"),
        (
            "t.csv",
            "arrival_s,input_tokens,output_tokens\n0,5,5\n1,x,5\n",
            r"line 3: input_tokens = 'x' is not an integer",
        ),
        ("t.csv", "arrival_s,input_tokens,output_tokens\n0,5,0\n", r"line 2: output_tokens = 0 must be >= 1"),
        ("t.csv", "arrival_s,input_tokens,output_tokens\n-1,5,5\n", r"line 2: arrival_s = '-1' must be"),
        ("t.csv", "arrival_s,input_tokens,output_tokens\n0,5\n", r"line 2: expected 3 comma-separated fields"),
        ("t.jsonl", '{"arrival_s": 0, "input_tokens": 5, "output_tokens": 5}\n{oops\n', r"line 2: not JSON"),
        ("t.jsonl", '{"arrival_s": 0, "input_tokens": 5}\n', r"line 1: missing output_tokens"),
    ],
)
def test_malformed_trace_names_the_line(tmp_path, name, text, message):
    with pytest.raises(ServingError, match=message):
        read_trace(write(tmp_path, name, text))


def test_missing_trace_file_is_a_clear_error(tmp_path):
    with pytest.raises(ServingError, match="no such trace file"):
        read_trace(tmp_path / "nope.csv")


def test_trace_request_that_never_fits_names_its_line(tmp_path):
    write(
        tmp_path,
        "t.jsonl",
        '{"arrival_s": 0, "input_tokens": 5, "output_tokens": 5}\n'
        '{"arrival_s": 1, "input_tokens": 5000, "output_tokens": 5}\n',
    )
    spec = make_spec(
        workload={
            "arrivals": {"kind": "trace", "path": "t.jsonl"},
            "num_requests": None,
            "input_len": None,
            "output_len": None,
        }
    )
    with pytest.raises(ServingError, match=r"trace t.jsonl line 2 .* can never be admitted"):
        generate_requests(spec, base_dir=tmp_path)


def test_unsorted_trace_is_sorted_stably(tmp_path):
    rows = read_trace(write(tmp_path, "t.csv", "arrival_s,input_tokens,output_tokens\n2,1,1\n1,2,2\n1,3,3\n"))
    assert [(line, a) for line, a, _, _ in rows] == [(3, 1.0), (4, 1.0), (2, 2.0)]


def test_empirical_lengths_come_from_the_file(tmp_path):
    write(tmp_path, "lens.txt", "# prompt lengths\n5\n\n7  # a comment\n")
    spec = make_spec(workload={"input_len": {"kind": "empirical", "path": "lens.txt"}, "num_requests": 50})
    assert {r.input_tokens for r in generate_requests(spec, base_dir=tmp_path)} == {5, 7}


def test_bad_lengths_file_names_the_line(tmp_path):
    write(tmp_path, "lens.txt", "5\nabc\n")
    spec = make_spec(workload={"input_len": {"kind": "empirical", "path": "lens.txt"}})
    with pytest.raises(ServingError, match=r"lens.txt line 2: length = 'abc' is not an integer"):
        generate_requests(spec, base_dir=tmp_path)
