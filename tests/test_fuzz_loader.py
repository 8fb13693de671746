"""Fuzzing the scenario loader: whatever the input, it loads or raises ScenarioError (one line), nothing else.

Random YAML documents, random bytes, random `--set` overrides and random mutations of valid
scenarios (keys dropped, retyped, renamed with a typo; numbers negative, huge, NaN or infinite).
Example counts are bounded so the module runs in seconds; `derandomize` keeps CI reproducible.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MOE, seed_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.config import Scenario, ScenarioError, load_scenario, parse_scenario

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=12),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0, -1, 1, 2, 3, 7, 10**9, 10**12, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -0.0, 0.5]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
KEYS = sorted({k for section in TINY_MOE.values() if isinstance(section, dict) for k in section} | set(TINY_MOE))


def _check(load) -> Scenario | None:
    """Run a load; anything but success or a one-line ScenarioError fails the test."""
    try:
        return load()
    except ScenarioError as exc:
        assert "\n" not in str(exc) and str(exc)
        return None


def _paths(data, prefix=()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, prefix + (key,))
    return out


def _typo(key: str, draw) -> str:
    i = draw(st.integers(0, max(len(key) - 1, 0)))
    how = draw(st.sampled_from(["drop", "double", "swap", "upper"]))
    if how == "drop":
        return key[:i] + key[i + 1 :]
    if how == "double":
        return key[:i] + key[i : i + 1] * 2 + key[i + 1 :]
    if how == "swap" and len(key) > 1:
        j = min(i + 1, len(key) - 1)
        return key[:i] + key[j] + key[i] + key[j + 1 :]
    return key.upper()


@st.composite
def mutated_scenarios(draw) -> dict:
    data = copy.deepcopy(draw(st.sampled_from([TINY_MOE, seed_dict()])))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        op = draw(st.sampled_from(["drop", "retype", "number", "typo"]))
        if op == "drop":
            parent.pop(key, None)
        elif op == "typo":
            parent[_typo(str(key), draw)] = parent.pop(key)
        elif op == "number":
            parent[key] = draw(st.sampled_from([0, -1, -64, 10**30, 1e30, math.nan, math.inf, -math.inf, 2.5, 3]))
        else:
            parent[key] = draw(values)
    return data


@FUZZ
@given(mutated_scenarios())
def test_mutated_scenarios_load_or_raise_scenario_error(data):
    _check(lambda: parse_scenario(data, "fuzz"))


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=8))
def test_random_mappings_load_or_raise_scenario_error(data):
    _check(lambda: parse_scenario(data, "fuzz"))


@pytest.fixture
def scenario_file(tmp_path) -> Path:
    return tmp_path / "s.yaml"


@FUZZ
@given(values)
def test_random_yaml_documents_load_or_raise_scenario_error(scenario_file, document):
    scenario_file.write_text(yaml.safe_dump(document))
    _check(lambda: load_scenario(scenario_file))


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.sampled_from(
            [
                b"\xef\xbb\xbfname: x\n",
                b"a: &x [*x, *x]\n",
                b"!!python/object:os.system {}\n",
                b"a: 1\na: 2\n",
                b"<<: {a: 1}\n",
                b"? [1, 2]\n: 3\n",
                b"--- 1\n--- 2\n",
            ]
        ),
    )
)
def test_random_bytes_load_or_raise_scenario_error(scenario_file, raw):
    scenario_file.write_bytes(raw)
    _check(lambda: load_scenario(scenario_file))


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.text(max_size=30),
            st.builds(
                lambda k, v: f"{k}={v}",
                st.sampled_from(
                    [
                        "parallel.tp",
                        "model",
                        "hardware.hbm_bytes_per_s",
                        "workload",
                        "model.num_layers.x",
                        "targets.ttft_s.max",
                        "",
                        ".",
                    ]
                ),
                st.sampled_from(["4", "-1", ".nan", ".inf", "1e30", "[1", "{a: 1}", "", "null", "h999", "x: y: z"]),
            ),
        ),
        max_size=3,
    )
)
def test_random_overrides_load_or_raise_scenario_error(scenario_file, overrides):
    scenario_file.write_text(yaml.safe_dump(TINY_MOE))
    _check(lambda: load_scenario(scenario_file, overrides))
