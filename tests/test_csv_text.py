"""csv_text: the same characters as pandas' to_csv(index=False), on the run's tables and awkward values."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import TINY_MOE, make_scenario
from hypothesis import given
from hypothesis import strategies as st

from simulator.pipeline import run_scenario
from simulator.report.csv_text import csv_text


def test_the_ops_table_of_a_run_is_written_as_pandas_writes_it():
    run = run_scenario(make_scenario(TINY_MOE, parallel={"microbatches": 2}), decode_sample=3, fold=True)
    table = run.sim.ops.copy()
    table["gpu"] = [
        ",".join(map(str, g)) if isinstance(g, tuple) else ("" if g is None else str(g)) for g in table["gpu"]
    ]
    assert csv_text(table) == table.to_csv(index=False)


def test_awkward_values_are_quoted_and_missing_ones_empty():
    frame = pd.DataFrame(
        {
            "name": ["plain", "with,comma", 'with "quote"', "line\nbreak", "cr\rhere", None, ""],
            "object": [1, 2.5, None, np.nan, (0, 1), True, "x"],
            "float": [0.1, 1e-5, 1e16, -0.0, np.nan, np.inf, 123456789.125],
            "int": [0, -1, 2**40, 3, 4, 5, 6],
            "flag": [True, False, True, False, True, False, True],
        }
    )
    frame["text"] = pd.array(["a", None, "b,c", "d", "e", "f", "g"], dtype="string")
    assert csv_text(frame) == frame.to_csv(index=False)


def test_empty_and_single_column_tables():
    assert csv_text(pd.DataFrame({"a": [], "b": []})) == pd.DataFrame({"a": [], "b": []}).to_csv(index=False)
    one = pd.DataFrame({"a": ["", "x"]})
    assert csv_text(one) == one.to_csv(index=False)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=50))
def test_any_float_column_reads_as_pandas_writes_it(values):
    frame = pd.DataFrame({"x": values, "y": list(range(len(values)))})
    assert csv_text(frame) == frame.to_csv(index=False)
