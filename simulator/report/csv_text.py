"""Reports stage: a table as CSV text, the same characters as pandas' `to_csv(index=False)`, written
column by column (ops.csv and critical_path.csv of a large run: about a third of pandas' time).

pandas writes a float64 column with numpy's shortest round-trip text (`astype(str)`), which is
Python's `repr` of the same double (both print the shortest digits that read back to it, in
positional notation from 1e-4 to 1e16, else `1e-05` / `1e+16`); integers and booleans with `str`;
a missing value as an empty field; and quotes a field as the csv module does (QUOTE_MINIMAL: a
field holding the delimiter, a quote or a line break is quoted, quotes doubled). A column of
another dtype goes through pandas.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pandas as pd

_SPECIAL = (",", '"', "\n", "\r")


def _quote(value: str) -> str:
    """One field as the csv module writes it (QUOTE_MINIMAL)."""
    if '"' in value or "\n" in value or "\r" in value:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow([value])
        return out.getvalue()[:-1]
    return f'"{value}"' if "," in value else value


def _quoted(values: list[str], joined: str | None = None) -> list[str]:
    """The fields as the csv module writes them: only those that need quotes change. `joined`:
    the fields joined, when already made."""
    joined = "".join(values) if joined is None else joined
    if not any(c in joined for c in _SPECIAL):
        return values
    memo: dict[str, str] = {}
    return [memo[v] if v in memo else memo.setdefault(v, _quote(v)) for v in values]


def _object_texts(values: list) -> list[str]:
    out = []
    for v in values:
        if isinstance(v, str):
            out.append(v)
        elif v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
            out.append("")
        else:
            out.append(str(v))
    return out


def _column_texts(column: pd.Series) -> list[str] | None:
    """The column's fields, or None for a dtype left to pandas."""
    kind = column.dtype.kind if isinstance(column.dtype, np.dtype) else ""
    if kind == "f" and column.dtype == np.float64:
        values = column.to_numpy()
        texts = list(map(repr, values.tolist()))
        if np.isnan(values).any():
            texts = ["" if t == "nan" else t for t in texts]
        return texts
    if kind in "iub" and kind:
        return list(map(str, column.tolist()))
    if kind == "O" or isinstance(column.dtype, pd.StringDtype):
        values = column.tolist()
        try:  # all text (the usual case): nothing to convert
            return _quoted(values, "".join(values))
        except TypeError:
            return _quoted(_object_texts(values))
    return None


def csv_text(frame: pd.DataFrame) -> str:
    """`frame.to_csv(index=False)`, faster (see the module docstring)."""
    if not frame.columns.is_unique or len(frame.columns) < 2:  # one column: csv quotes an empty field
        return frame.to_csv(index=False)
    columns = []
    for name in frame.columns:
        texts = _column_texts(frame[name])
        if texts is None:
            return frame.to_csv(index=False)
        columns.append(texts)
    header = ",".join(_quoted(_object_texts(list(frame.columns))))
    if not len(frame):
        return header + "\n"
    return header + "\n" + "\n".join(map(",".join, zip(*columns))) + "\n"
