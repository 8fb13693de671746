"""Serving spec validation: bad inputs give one clear line naming the field and the fix."""

from __future__ import annotations

import pytest

from simulator.config import ScenarioError
from simulator.config.serving import ServingError, kv_blocks_needed
from tests.serving.conftest import make_spec


def test_base_spec_is_valid():
    spec = make_spec()
    assert spec.scheduler.chunk_tokens == 64
    assert spec.num_gpus == 1


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"workload": {"arrivals": {"kind": "poisson", "rate_per_s": 0}}},
            r"serving: workload\.arrivals\.rate_per_s = 0: input should be greater than 0",
        ),
        ({"workload": {"arrivals": {"kind": "poisson", "rate_per_s": -1}}}, "rate_per_s"),
        ({"workload": {"arrivals": {"kind": "poison", "rate_per_s": 1}}}, "workload.arrivals"),
        ({"workload": {"num_request": 3}}, r"workload\.num_request: unknown key; did you mean 'num_requests'\?"),
        ({"scheduler": {"max_num_seq": 3}}, "did you mean 'max_num_seqs'"),
        (
            {"workload": {"arrivals": {"kind": "closed_loop", "concurrency": 1, "rate_per_s": 2}}},
            r"workload\.arrivals\.rate_per_s: unknown key",
        ),
        (
            {"workload": {"input_len": {"kind": "fixed", "tokens": 2000}}},
            r"\(input 2000 \+ output 4 tokens = 126 blocks of 16\) can never be admitted: "
            r"scheduler\.kv_cache\.capacity_blocks = 64; raise it to >= 126",
        ),
        (
            {"scheduler": {"chunk_size_tokens": 128}},
            r"max_num_batched_tokens = 64 is smaller than one chunk \(chunk_size_tokens = 128\)",
        ),
        ({"scheduler": {"max_num_seqs": 100}}, r"max_num_batched_tokens = 64 < max_num_seqs = 100"),
        (
            {"scheduler": {"policy": "continuous"}, "workload": {"input_len": {"kind": "fixed", "tokens": 100}}},
            r"can never be prefilled in one iteration: scheduler\.max_num_batched_tokens = 64",
        ),
        (
            {"workload": {"input_len": {"kind": "uniform", "min_tokens": 9, "max_tokens": 3}}},
            r"min_tokens = 9 > max_tokens = 3; swap them",
        ),
        (
            {"workload": {"arrivals": {"kind": "poisson", "rate_per_s": 1}, "num_requests": None}},
            r"num_requests or duration_s: give one",
        ),
        ({"workload": {"duration_s": 10}}, r"give one of them, not both"),
        ({"workload": {"arrivals": {"kind": "trace", "path": "x.csv"}}}, r"a trace carries its own lengths"),
        ({"workload": {"warmup_requests": 3}}, r"warmup_requests = 3 must be < num_requests = 3"),
        ({"targets": {"min_goodput_fraction": 1.5}}, r"targets\.min_goodput_fraction"),
        ({"replicas": {"router": "random"}}, r"replicas\.router"),
    ],
)
def test_bad_spec_gives_one_clear_line(sections, message):
    with pytest.raises(ServingError, match=message) as info:
        make_spec(**sections)
    assert "\n" not in str(info.value)


def test_serving_error_is_a_scenario_error():
    assert issubclass(ServingError, ScenarioError)


def test_kv_blocks_needed_leaves_out_the_last_output_token():
    assert kv_blocks_needed(8, 9, 16) == 1
    assert kv_blocks_needed(8, 10, 16) == 2
