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
from itertools import repeat
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


def _numbers(values: list) -> list[bytes]:
    """Each number's JSON text as orjson writes it: the list in one call, split at the commas (a
    number's text has none)."""
    return orjson.dumps(values)[1:-1].split(b",") if values else []


def _strings(values: list) -> list[bytes]:
    """Each value's JSON text as orjson writes it. Strings: the list in one call, split between
    its items (inside a JSON string every quote is escaped, so '","' only ever separates two
    items); anything else value by value, each distinct value once."""
    if not values:
        return []
    try:
        "".join(values)  # all strings?
    except TypeError:
        memo: dict = {}
        return [memo[v] if v in memo else memo.setdefault(v, orjson.dumps(v)) for v in values]
    return [b'"' + text + b'"' for text in orjson.dumps(values)[2:-2].split(b'","')]


def _rows(*columns) -> list[bytes]:
    """Per row, its pieces joined: each column is a list (one piece per row) or one bytes for all."""
    return [b"".join(parts) for parts in zip(*(repeat(c) if isinstance(c, bytes) else c for c in columns))]


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
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
    from pieces: each field of each operator is written once, a slice's event is its operator's
    text with the slice's pid and tid in between, and the hundreds of thousands of events of a
    large run are gathered by array indexing and joined once."""
    n = slices.num_gpus
    meta = _meta(RUN_PID, "run", -1, {_PHASE_TID: "phases", _PATH_TID: "critical path"})
    for g in sorted(folded) if folded else range(n):
        name = f"GPU {g}" + (f" (stands for GPUs {_ranges(folded[g])})" if folded else "")
        meta += _meta(gpu_pid(g), name, 2 * g, {0: "compute stream", 1: "comm stream"})
        meta += _meta(link_pid(g), f"{name} link port", 2 * g + 1, {0: "tx", 1: "rx"})
    pieces = [piece for e in meta for piece in (orjson.dumps(e), b",")]

    # Whole nanoseconds: plenty, a third shorter than full doubles; each end rounded once.
    start_ns = np.round(ops["start_s"].to_numpy(dtype=float) * 1e9).astype(np.int64)
    end_ns = np.maximum(np.round(ops["end_s"].to_numpy(dtype=float) * 1e9).astype(np.int64), start_ns)
    op = _strings(ops["op"].tolist())
    node = _strings(ops["node"].tolist())
    # per row: '{"name":..,"cat":..,"ph":"X","ts":..,"dur":..,"pid":', then the track, then the args
    head = _rows(
        b'{"name":',
        op,
        b',"cat":',
        _strings(ops["category"].tolist()),
        b',"ph":"X","ts":',
        _numbers((start_ns / 1e3).tolist()),
        b',"dur":',
        _numbers(((end_ns - start_ns) / 1e3).tolist()),
        b',"pid":',
    )
    stream_args = _rows(
        b',"args":{"node":',
        node,
        b',"op":',
        op,
        b',"phase":',
        _strings(ops["phase"].tolist()),
        b',"layer":',
        _numbers(_as_int(ops["layer"].tolist())),
        b',"step":',
        _numbers(_as_int(ops["step"].tolist())),
        b',"microbatch":',
        _numbers(_as_int(ops["microbatch"].tolist())),
        b',"flops":',
        _numbers(ops["flops"].tolist()),
        b',"bytes_read":',
        _numbers(ops["bytes_read"].tolist()),
        b',"bytes_written":',
        _numbers(ops["bytes_written"].tolist()),
        b',"bound":',
        _strings(ops["bound"].tolist()),
        b"}},",
    )
    # a link port repeats its collective's stream slice: name the node only
    link_args = _rows(b',"args":{"node":', node, b"}},")
    heads, args = _objects(head), _objects(stream_args + link_args)
    # per engine resource, the pid and tid of its track: streams on the GPU's process, ports on the link's
    tracks = [b'%d,"tid":%d' % (gpu_pid(r % n), r // n) for r in range(2 * n)]
    tracks += [b'%d,"tid":%d' % (link_pid(r % n), r // n - 2) for r in range(2 * n, 4 * n)]
    events = np.empty((len(slices.row), 3), dtype=object)
    events[:, 0] = heads[slices.row]
    events[:, 1] = _objects(tracks)[slices.resource]
    events[:, 2] = args[slices.row + len(ops) * (slices.resource >= 2 * n)]
    pieces += events.ravel().tolist()

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
            pieces += [orjson.dumps(event), b","]
    if path_rows is not None:
        positive = ops["duration_s"].to_numpy(dtype=float) > 0
        path_track = b'%d,"tid":%d' % (RUN_PID, _PATH_TID)
        previous = None
        for row in path_rows.tolist():
            if previous is not None and start_ns[row] > end_ns[previous]:  # the GPU waited for the host's launch
                event = {
                    "name": "host launch",
                    "cat": "host",
                    "ph": "X",
                    "ts": int(end_ns[previous]) / 1e3,
                    "dur": int(start_ns[row] - end_ns[previous]) / 1e3,
                    "pid": RUN_PID,
                    "tid": _PATH_TID,
                    "args": {"before": ops["node"].iat[row]},
                }
                pieces += [orjson.dumps(event), b","]
            previous = row
            if positive[row]:
                pieces += [heads[row], path_track, args[row + len(ops)]]
    body = b"".join(pieces)[:-1]  # every event ends with a comma; the last one's goes
    tail = {"displayTimeUnit": "ms", "otherData": metadata or {}}
    return b'{"traceEvents":[' + body + b"]," + orjson.dumps(tail)[1:]


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
