"""Reports stage: the pictures of a run (timeline, memory, trace, page), drawn for `moesim run` and `moesim plot`.

`moesim run` calls write_run_plots after the summary files; `moesim plot RUN_DIR` redraws them from
what the run directory holds (ops.csv, slices.npz, critical_path.csv, summary.json), without
simulating again. On a `moesim compare` directory (comparison.csv / comparison.md, no
summary.json) it writes only index.html.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.files import OutputError, write_atomic
from simulator.report.html import write_index
from simulator.report.slices import SLICES_FILE, Slices, load_slices, save_slices, slices_of_run

PATH_FILE = "critical_path.csv"
TRACE_FILE = "trace.json.gz"


def folded_groups(summary: dict) -> dict[int, list[int]] | None:
    """Representative GPU -> the GPUs it stands for, of a folded run's summary; None when not folded."""
    folded = summary.get("folded")
    return {int(g): list(v) for g, v in folded["representatives"].items()} if folded else None


_OPS_DTYPES = {
    "node": str,
    "op": str,
    "kind": str,
    "category": str,
    "phase": str,
    "bound": str,
    "step": np.int64,
    "microbatch": np.int64,
    "layer": np.int64,
    "stage": np.int64,
    "flops": float,
    "bytes_read": float,
    "bytes_written": float,
    "start_s": float,
    "end_s": float,
    "duration_s": float,
}


def _path_rows(out_dir: Path, which: str = "total") -> np.ndarray | None:
    """ops rows of the critical path stored in critical_path.csv (None when absent)."""
    path = Path(out_dir) / PATH_FILE
    if not path.is_file():
        return None
    frame = pd.read_csv(path, usecols=["path", "row"])
    return frame.loc[frame["path"] == which, "row"].to_numpy(dtype=np.int64)


class _Here:
    """A value computed at once, with the interface of simulator.forking.InChild."""

    def __init__(self, fn, *args) -> None:
        self._value = fn(*args)

    def result(self):
        return self._value


def draw_all(
    out_dir: Path,
    ops: pd.DataFrame,
    slices: Slices,
    summary: dict,
    into: Path | None = None,
    index: bool = True,
    aside=_Here,
) -> dict[str, float]:
    """Write trace.json.gz, timeline.png, memory.png and index.html; returns seconds spent on each.
    With `into`, the first three go there; with `into` or not `index`, index.html is left to the caller.
    `aside(fn, *args)` starts drawing a picture and returns an object whose `result()` is its
    bytes: simulator.forking.InChild draws timeline.png and memory.png in two more processes while this one
    writes the trace; by default they are drawn first, here (their seconds then count the
    drawing, else the wait)."""
    from simulator.report.memory_plot import memory_png
    from simulator.report.timeline import timeline_png
    from simulator.report.trace import write_trace

    out_dir = Path(out_dir)
    path_rows = _path_rows(out_dir)
    seconds = {}
    started = time.perf_counter()
    timeline = aside(timeline_png, ops, slices, summary, path_rows)
    timeline_s = time.perf_counter() - started
    started = time.perf_counter()
    memory = aside(memory_png, ops, slices, summary)
    memory_s = time.perf_counter() - started
    started = time.perf_counter()
    target = Path(into) if into is not None else out_dir
    write_trace(
        target / TRACE_FILE,
        ops,
        slices,
        path_rows,
        {
            "scenario": summary.get("scenario"),
            "layout": dict(sorted(summary.get("layout", {}).items())),
            "made_by": "moesim",
        },
        folded_groups(summary),
    )
    seconds[TRACE_FILE] = time.perf_counter() - started
    started = time.perf_counter()
    write_atomic(target / "timeline.png", timeline.result())
    seconds["timeline.png"] = timeline_s + time.perf_counter() - started
    started = time.perf_counter()
    write_atomic(target / "memory.png", memory.result())
    seconds["memory.png"] = memory_s + time.perf_counter() - started
    started = time.perf_counter()
    if into is None and index:
        write_index(out_dir, summary)
        seconds["index.html"] = time.perf_counter() - started
    return seconds


def write_run_plots(result, out_dir: Path, summary: dict, index: bool = True, aside=_Here) -> dict[str, float]:
    """Called by `moesim run` once summary.json, ops.csv and critical_path.csv are written (and,
    unless `index`, before it writes index.html itself); `aside` as for draw_all."""
    slices = slices_of_run(result)
    save_slices(slices, Path(out_dir) / SLICES_FILE)
    return draw_all(out_dir, result.sim.ops, slices, summary, index=index, aside=aside)


def read_ops(path: Path) -> pd.DataFrame:
    """ops.csv back as the trace table (the gpu column stays text: the slices carry placement)."""
    try:
        header = pd.read_csv(path, nrows=0).columns
        missing = [c for c in _OPS_DTYPES if c not in header]
        if missing:
            raise OutputError(f"{path}: not a moesim ops table (no column {missing[0]!r})")
        return pd.read_csv(path, usecols=list(_OPS_DTYPES), dtype=_OPS_DTYPES, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise OutputError(f"{path}: cannot read it ({exc})") from None


def plot_directory(run_dir: Path) -> tuple[list[str], dict[str, float]]:
    """Redraw everything the directory allows; returns the files written and seconds per file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise OutputError(f"{run_dir}: no such directory; pass a directory written by `moesim run`")
    if not (run_dir / "summary.json").is_file():
        if (run_dir / "comparison.csv").is_file() or (run_dir / "comparison.md").is_file():
            started = time.perf_counter()
            write_index(run_dir, None)
            return ["index.html"], {"index.html": time.perf_counter() - started}
        raise OutputError(f"{run_dir}: no summary.json; pass a directory written by `moesim run` or `moesim compare`")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise OutputError(f"{run_dir / 'summary.json'}: cannot read it ({exc}); rerun `moesim run`") from None
    ops_path = next((run_dir / n for n in ("ops.csv", "ops.csv.gz") if (run_dir / n).is_file()), None)
    if ops_path is None:
        raise OutputError(f"{run_dir}: no ops.csv or ops.csv.gz; rerun `moesim run` to write it")
    if not (run_dir / SLICES_FILE).is_file():
        raise OutputError(
            f"{run_dir}: no {SLICES_FILE} (written by `moesim run` since plots exist); rerun `moesim run`"
        )
    ops = read_ops(ops_path)
    slices = load_slices(run_dir / SLICES_FILE)
    if len(slices.row) and int(slices.row.max()) >= len(ops) or len(slices.residual_bytes) != len(ops):
        raise OutputError(f"{run_dir}: {SLICES_FILE} does not belong to {ops_path.name}; rerun `moesim run`")
    check_summary(summary, run_dir / "summary.json")
    return redraw(run_dir, ops, slices, summary)


#: The top-level fields of summary.json the pictures and the page read, and their JSON types.
SUMMARY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "scenario": str,
    "model": str,
    "layout": dict,
    "workload": dict,
    "ttft_s": dict,
    "tpot_s": (int, float),
    "prefill_s": (int, float),
    "decode_s": (int, float),
    "total_s": (int, float),
    "throughput": dict,
    "memory": list,
    "targets": list,
    "audit": list,
    "verification": list,
}


def check_summary(summary, path: Path) -> None:
    """Refuse a summary.json that is JSON but not of the shape `moesim run` writes (OutputError)."""
    if not isinstance(summary, dict):
        raise OutputError(f"{path}: not a moesim run summary (expected a JSON object); rerun `moesim run`")
    for key, kind in SUMMARY_FIELDS.items():
        if not isinstance(summary.get(key), kind) or isinstance(summary.get(key), bool):
            raise OutputError(
                f"{path}: not a moesim run summary ({key} is missing or of the wrong type); rerun `moesim run`"
            )
    if not all(isinstance(m, dict) for m in summary["memory"]):
        raise OutputError(f"{path}: not a moesim run summary (memory holds a non-object); rerun `moesim run`")


def redraw(run_dir: Path, ops: pd.DataFrame, slices: Slices, summary: dict) -> tuple[list[str], dict[str, float]]:
    """draw_all, all or nothing: the files are drawn into a staging directory inside `run_dir` and
    moved over the old ones only when every one was drawn (a summary of the wrong shape that the
    check let through ends in OutputError with the run directory as it was)."""
    import shutil
    import tempfile

    from jinja2 import TemplateError  # the page's template meeting a field of the wrong shape (UndefinedError)

    from simulator.report.html import index_html

    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=".plot-staging-"))
    try:
        try:
            seconds = draw_all(run_dir, ops, slices, summary, into=staging)
            index_html(run_dir, summary)  # the page is written last, for real, below: fail now if it would
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, TemplateError) as exc:
            raise OutputError(
                f"{run_dir / 'summary.json'}: does not match the shape moesim writes "
                f"({type(exc).__name__}: {str(exc)[:80]}); rerun `moesim run`"
            ) from None
        for name in seconds:
            if name != "index.html":
                os.replace(staging / name, run_dir / name)
        started = time.perf_counter()
        write_index(run_dir, summary)
        seconds["index.html"] = time.perf_counter() - started
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return list(seconds), seconds
