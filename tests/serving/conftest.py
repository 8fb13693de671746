"""Serving fixtures: a spec builder and a pricer with dyadic figures, so simulated times are exact."""

from __future__ import annotations

import copy

import pytest

from simulator.config.serving import ServingSpec, parse_serving_spec
from simulator.serving.pricing import LinearPricer
from simulator.serving.scheduler import Scheduler

BASE = {
    "workload": {
        "arrivals": {"kind": "closed_loop", "concurrency": 1},
        "input_len": {"kind": "fixed", "tokens": 8},
        "output_len": {"kind": "fixed", "tokens": 4},
        "num_requests": 3,
        "seed": 0,
    },
    "scheduler": {
        "policy": "chunked_prefill",
        "max_num_seqs": 4,
        "max_num_batched_tokens": 64,
        "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 64},
    },
}


def merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "kind" not in value:
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_spec(**sections) -> ServingSpec:
    """BASE with sections merged in, e.g. make_spec(scheduler={"policy": "static"})."""
    return parse_serving_spec(merge(BASE, sections))


class RecordingPricer:
    """LinearPricer(0.25, 1/16, 1/128) that keeps every batch it prices, in order."""

    def __init__(self, base_s: float = 0.25) -> None:
        self.linear = LinearPricer(base_s, 1 / 16, 1 / 128)
        self.batches: list[tuple] = []

    def __call__(self, batch):
        self.batches.append(batch)
        return self.linear(batch)


@pytest.fixture
def pricer() -> LinearPricer:
    return LinearPricer(0.25, 1 / 16, 1 / 128)


@pytest.fixture(scope="module")
def recount_unreferenced():
    """Scheduler.CHECK_UNREFERENCED for a module: every use of the kept count of unreferenced cached units is
    checked against a recount (the prefix-cache and conversation tests)."""
    Scheduler.CHECK_UNREFERENCED = True
    yield
    Scheduler.CHECK_UNREFERENCED = False
