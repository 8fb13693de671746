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


def _json_texts(values: list) -> np.ndarray:
    """Each value's JSON text as orjson writes it, as an object array of bytes. Numbers are written
    in one call and split at the commas (a number has none); strings one by one, each once."""
    if not values:
        return np.empty(0, dtype=object)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        texts = orjson.dumps(values)[1:-1].split(b",")
    else:
        memo: dict = {}
        texts = [memo[v] if v in memo else memo.setdefault(v, orjson.dumps(v)) for v in values]
    out = np.empty(len(texts), dtype=object)
    out[:] = texts
    return out


def trace_json(
    ops: pd.DataFrame,
    slices: Slices,
    path_rows: np.ndarray | None = None,
    metadata: dict | None = None,
    folded: dict[int, list[int]] | None = None,
) -> bytes:
    """The trace as compact JSON (object format: traceEvents, displayTimeUnit, otherData): metadata
    events, then one "X" event per slice, the phases and the path.

    `folded`: representative GPU -> the GPUs it stands for (summary.json's "folded"), or None.
    The bytes are those orjson writes for the document as a whole (tests check it), put together
    column by column: each field of each operator is written once, and a slice's event is its
    operator's text with the slice's pid and tid in between, so that the hundreds of thousands of
    slices of a large run cost array operations, not a dict each."""
    n = slices.num_gpus
    meta = _meta(RUN_PID, "run", -1, {_PHASE_TID: "phases", _PATH_TID: "critical path"})
    for g in sorted(folded) if folded else range(n):
        name = f"GPU {g}" + (f" (stands for GPUs {_ranges(folded[g])})" if folded else "")
        meta += _meta(gpu_pid(g), name, 2 * g, {0: "compute stream", 1: "comm stream"})
        meta += _meta(link_pid(g), f"{name} link port", 2 * g + 1, {0: "tx", 1: "rx"})
    events = [orjson.dumps(e) for e in meta]

    # Whole nanoseconds: plenty, a third shorter than full doubles; each end rounded once.
    start_ns = np.round(ops["start_s"].to_numpy(dtype=float) * 1e9).astype(np.int64)
    end_ns = np.maximum(np.round(ops["end_s"].to_numpy(dtype=float) * 1e9).astype(np.int64), start_ns)
    op = _json_texts(ops["op"].tolist())
    node = _json_texts(ops["node"].tolist())
    # per row: '{"name":..,"cat":..,"ph":"X","ts":..,"dur":..,"pid":', then the track, then the args
    head = (
        b'{"name":'
        + op
        + b',"cat":'
        + _json_texts(ops["category"].tolist())
        + b',"ph":"X","ts":'
        + _json_texts((start_ns / 1e3).tolist())
        + b',"dur":'
        + _json_texts(((end_ns - start_ns) / 1e3).tolist())
        + b',"pid":'
    )
    stream_args = b',"args":{"node":' + node + b',"op":' + op
    for key, values in (
        ("phase", ops["phase"].tolist()),
        ("layer", _as_int(ops["layer"].tolist())),
        ("step", _as_int(ops["step"].tolist())),
        ("microbatch", _as_int(ops["microbatch"].tolist())),
        ("flops", ops["flops"].tolist()),
        ("bytes_read", ops["bytes_read"].tolist()),
        ("bytes_written", ops["bytes_written"].tolist()),
        ("bound", ops["bound"].tolist()),
    ):
        stream_args = stream_args + f',"{key}":'.encode() + _json_texts(values)
    # a link port repeats its collective's stream slice: name the node only
    args = np.concatenate([stream_args + b"}}", b',"args":{"node":' + node + b"}}"])
    # per engine resource, the pid and tid of its track: streams on the GPU's process, ports on the link's
    tracks = [b'%d,"tid":%d' % (gpu_pid(r % n), r // n) for r in range(2 * n)]
    tracks += [b'%d,"tid":%d' % (link_pid(r % n), r // n - 2) for r in range(2 * n, 4 * n)]
    track = np.empty(len(tracks), dtype=object)
    track[:] = tracks
    on_link = slices.resource >= 2 * n
    events += (head[slices.row] + track[slices.resource] + args[slices.row + len(ops) * on_link]).tolist()

    phase = ops["phase"].to_numpy()
    step = ops["step"].to_numpy()
    work = (ops["kind"] != NodeKind.MARKER).to_numpy()
    for name, mask in [("prefill", (phase == "prefill") & work)] + [
        (f"decode step {k}", (phase == "decode") & (step == k) & work)
        for k in sorted(set(step[(phase == "decode") & work].tolist()))
    ]:
        if mask.any():
            t0, t1 = int(start_ns[mask].min()), int(end_ns[mask].max())
            event = {
                "name": name,
                "cat": "phase",
                "ph": "X",
                "ts": t0 / 1e3,
                "dur": (t1 - t0) / 1e3,
                "pid": RUN_PID,
                "tid": _PHASE_TID,
                "args": {},
            }
            events.append(orjson.dumps(event))
    if path_rows is not None:
        rows = path_rows[ops["duration_s"].to_numpy(dtype=float)[path_rows] > 0]
        path_track = b'%d,"tid":%d' % (RUN_PID, _PATH_TID)
        events += (head[rows] + path_track + args[rows + len(ops)]).tolist()
    tail = {"displayTimeUnit": "ms", "otherData": metadata or {}}
    return b'{"traceEvents":[' + b",".join(events) + b"]," + orjson.dumps(tail)[1:]


def write_trace(
    path: Path,
    ops: pd.DataFrame,
    slices: Slices,
    path_rows: np.ndarray | None = None,
    metadata: dict | None = None,
    folded: dict[int, list[int]] | None = None,
) -> None:
    """Write the trace (trace_json), gzip-compressed when `path` ends in .gz (Perfetto opens it as it is)."""
    data = trace_json(ops, slices, path_rows, metadata, folded)
    write_atomic(path, gzip.compress(data, compresslevel=1, mtime=0) if str(path).endswith(".gz") else data)
