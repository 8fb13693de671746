"""Reports stage: trace.json.gz, the run in Chrome trace / Perfetto format (open it in ui.perfetto.dev).

Processes are GPUs (threads: compute and comm streams) and link ports (threads: tx and rx), plus
one "run" process whose threads hold the phases and the critical path. Every busy interval of
the engine (slices.Slices) is a complete ("X") event, timestamps in microseconds; its args carry
the node, op, layer, step, microbatch, FLOPs, bytes and what bounds it. Times are whole nanoseconds,
start and end each rounded once (the duration is their difference), so slices that follow each
other on a track never overlap. A folded run shows its representative GPUs, each named with the
GPUs it stands for.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from simulator.files import write_atomic
from simulator.graph import NodeKind
from simulator.report.slices import Slices

#: pid of the run-wide process; GPU g is pid g + 1 and its link port pid LINK_PID0 + g.
RUN_PID = 0
LINK_PID0 = 100_000
_STREAM_TID = {"compute": 0, "comm": 1, "tx": 0, "rx": 1}
_PHASE_TID, _PATH_TID = 0, 1


def gpu_pid(gpu: int) -> int:
    return gpu + 1


def link_pid(gpu: int) -> int:
    return LINK_PID0 + gpu


def _meta(pid: int, name: str, sort_index: int, threads: dict[int, str]) -> list[dict]:
    events = [
        {"ph": "M", "pid": pid, "tid": 0, "name": "process_name", "args": {"name": name}},
        {"ph": "M", "pid": pid, "tid": 0, "name": "process_sort_index", "args": {"sort_index": sort_index}},
    ]
    for tid, tname in threads.items():
        events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": tname}})
        events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}})
    return events


def _as_int(values) -> list:
    return [int(v) if v == v else -1 for v in values]


def _ranges(values: list[int]) -> str:
    return f"{values[0]}-{values[-1]}" if len(values) > 2 else ", ".join(map(str, values))


def trace_events(
    ops: pd.DataFrame, slices: Slices, path_rows: np.ndarray | None = None, folded: dict[int, list[int]] | None = None
) -> list[dict]:
    """The events of the trace: metadata, then one "X" event per slice, the phases and the path.

    `folded`: representative GPU -> the GPUs it stands for (summary.json's "folded"), or None."""
    n = slices.num_gpus
    events = _meta(RUN_PID, "run", -1, {_PHASE_TID: "phases", _PATH_TID: "critical path"})
    for g in sorted(folded) if folded else range(n):
        name = f"GPU {g}" + (f" (stands for GPUs {_ranges(folded[g])})" if folded else "")
        events += _meta(gpu_pid(g), name, 2 * g, {0: "compute stream", 1: "comm stream"})
        events += _meta(link_pid(g), f"{name} link port", 2 * g + 1, {0: "tx", 1: "rx"})

    # Whole nanoseconds: plenty, a third shorter than full doubles; each end rounded once.
    start_ns = np.round(ops["start_s"].to_numpy(dtype=float) * 1e9).astype(np.int64)
    end_ns = np.maximum(np.round(ops["end_s"].to_numpy(dtype=float) * 1e9).astype(np.int64), start_ns)
    start_us = (start_ns / 1e3).tolist()
    dur_us = ((end_ns - start_ns) / 1e3).tolist()
    names = ops["op"].tolist()
    cats = ops["category"].tolist()
    args = [
        {
            "node": node,
            "op": op,
            "phase": phase,
            "layer": layer,
            "step": step,
            "microbatch": mb,
            "flops": flops,
            "bytes_read": br,
            "bytes_written": bw,
            "bound": bound,
        }
        for node, op, phase, layer, step, mb, flops, br, bw, bound in zip(
            ops["node"].tolist(),
            names,
            ops["phase"].tolist(),
            _as_int(ops["layer"].tolist()),
            _as_int(ops["step"].tolist()),
            _as_int(ops["microbatch"].tolist()),
            ops["flops"].tolist(),
            ops["bytes_read"].tolist(),
            ops["bytes_written"].tolist(),
            ops["bound"].tolist(),
        )
    ]
    nodes = ops["node"].tolist()
    for row, kind, gpu in zip(slices.row.tolist(), slices.kind.tolist(), slices.gpu.tolist()):
        if kind < 2:
            events.append(
                {
                    "name": names[row],
                    "cat": cats[row],
                    "ph": "X",
                    "ts": start_us[row],
                    "dur": dur_us[row],
                    "pid": gpu_pid(gpu),
                    "tid": kind,
                    "args": args[row],
                }
            )
        else:  # a link port repeats its collective's stream slice: name the node only
            events.append(
                {
                    "name": names[row],
                    "cat": cats[row],
                    "ph": "X",
                    "ts": start_us[row],
                    "dur": dur_us[row],
                    "pid": link_pid(gpu),
                    "tid": kind - 2,
                    "args": {"node": nodes[row]},
                }
            )

    phase = ops["phase"].to_numpy()
    step = ops["step"].to_numpy()
    start_arr, end_arr = start_ns, end_ns
    work = (ops["kind"] != NodeKind.MARKER).to_numpy()
    for name, mask in [("prefill", (phase == "prefill") & work)] + [
        (f"decode step {k}", (phase == "decode") & (step == k) & work)
        for k in sorted(set(step[(phase == "decode") & work].tolist()))
    ]:
        if mask.any():
            t0, t1 = int(start_arr[mask].min()), int(end_arr[mask].max())
            events.append(
                {
                    "name": name,
                    "cat": "phase",
                    "ph": "X",
                    "ts": t0 / 1e3,
                    "dur": (t1 - t0) / 1e3,
                    "pid": RUN_PID,
                    "tid": _PHASE_TID,
                    "args": {},
                }
            )
    if path_rows is not None:
        positive = ops["duration_s"].to_numpy(dtype=float) > 0
        previous = None
        for row in path_rows.tolist():
            if previous is not None and start_ns[row] > end_ns[previous]:  # the GPU waited for the host's launch
                events.append(
                    {
                        "name": "host launch",
                        "cat": "host",
                        "ph": "X",
                        "ts": int(end_ns[previous]) / 1e3,
                        "dur": int(start_ns[row] - end_ns[previous]) / 1e3,
                        "pid": RUN_PID,
                        "tid": _PATH_TID,
                        "args": {"before": nodes[row]},
                    }
                )
            previous = row
            if positive[row]:
                events.append(
                    {
                        "name": names[row],
                        "cat": cats[row],
                        "ph": "X",
                        "ts": start_us[row],
                        "dur": dur_us[row],
                        "pid": RUN_PID,
                        "tid": _PATH_TID,
                        "args": {"node": nodes[row]},
                    }
                )
    return events


def write_trace(
    path: Path,
    ops: pd.DataFrame,
    slices: Slices,
    path_rows: np.ndarray | None = None,
    metadata: dict | None = None,
    folded: dict[int, list[int]] | None = None,
) -> None:
    """Write the trace (JSON object format: traceEvents, displayTimeUnit, otherData), gzip-compressed
    when `path` ends in .gz (Perfetto opens it as it is)."""
    doc = {
        "traceEvents": trace_events(ops, slices, path_rows, folded),
        "displayTimeUnit": "ms",
        "otherData": metadata or {},
    }
    data = orjson.dumps(doc)
    write_atomic(path, gzip.compress(data, compresslevel=1, mtime=0) if str(path).endswith(".gz") else data)
