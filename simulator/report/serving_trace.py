"""Reports stage, serving trace: serving_trace.json in Chrome trace / Perfetto format (open it in ui.perfetto.dev).

Process "requests": one thread per request (the first TRACE_REQUESTS), with its queued, prefill and
decode spans. Process "iterations": one thread per replica, one span per scheduler iteration (its batch
in the args; the first TRACE_ITERATIONS in time, so a long run's file stays a few MB), and counters of
waiting and running requests and KV blocks used. Timestamps in microseconds. Both process names say how
many of how many are shown; requests.csv and the time series keep every request and iteration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from simulator.files import write_atomic
from simulator.serving.simulate import ServingRun

TRACE_REQUESTS = 100
TRACE_ITERATIONS = 10_000
REQUESTS_PID, ITERATIONS_PID = 1, 2


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def _meta(pid: int, name: str, threads: dict[int, str]) -> list[dict]:
    events = [
        {"ph": "M", "pid": pid, "tid": 0, "name": "process_name", "args": {"name": name}},
        {"ph": "M", "pid": pid, "tid": 0, "name": "process_sort_index", "args": {"sort_index": pid}},
    ]
    for tid, tname in threads.items():
        events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": tname}})
        events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}})
    return events


def serving_trace_events(
    run: ServingRun, num_requests: int = TRACE_REQUESTS, num_iterations: int = TRACE_ITERATIONS
) -> list[dict]:
    records = run.records[:num_requests]
    events = _meta(
        REQUESTS_PID,
        f"requests (first {len(records)} of {len(run.records)})",
        {rec.request_id: f"request {rec.request_id}" for rec in records},
    )
    ts = run.timeseries
    replicas = sorted(set(ts["replica"].tolist()))
    shown = np.argsort(ts["start_s"], kind="stable")[:num_iterations].tolist()
    events += _meta(
        ITERATIONS_PID, f"iterations (first {len(shown)} of {len(ts)})", {r: f"replica {r}" for r in replicas}
    )
    for rec in records:
        args = {
            "replica": rec.replica,
            "input_tokens": rec.input_tokens,
            "output_tokens": rec.output_tokens,
            "preemptions": rec.preemptions,
            "warmup": rec.warmup,
        }
        first = rec.first_token_s
        for name, start, end in (
            ("queued", rec.arrival_s, rec.first_scheduled_s),
            ("prefill", rec.first_scheduled_s, first),
            ("decode", first, rec.finish_s),
        ):
            if end > start:
                events.append(
                    {
                        "name": name,
                        "cat": name,
                        "ph": "X",
                        "ts": _us(start),
                        "dur": _us(end - start),
                        "pid": REQUESTS_PID,
                        "tid": rec.request_id,
                        "args": args,
                    }
                )
    columns = {name: ts[name].tolist() for name in ts}
    for i in shown:
        r, start = columns["replica"][i], columns["start_s"][i]
        events.append(
            {
                "name": f"{columns['batch_seqs'][i]} seqs, {columns['new_tokens'][i]} tokens",
                "cat": "iteration",
                "ph": "X",
                "ts": _us(start),
                "dur": _us(columns["iteration_s"][i]),
                "pid": ITERATIONS_PID,
                "tid": r,
                "args": {
                    "batch_seqs": columns["batch_seqs"][i],
                    "new_tokens": columns["new_tokens"][i],
                    "tokens_out": columns["tokens_out"][i],
                },
            }
        )
        events.append(
            {
                "name": f"replica {r}",
                "ph": "C",
                "ts": _us(start),
                "pid": ITERATIONS_PID,
                "tid": r,
                "args": {
                    "waiting": columns["waiting"][i],
                    "running": columns["running"][i],
                    "kv_blocks_used": columns["kv_blocks_used"][i],
                },
            }
        )
    return events


def write_serving_trace(path: Path, run: ServingRun, metadata: dict | None = None) -> None:
    """Write serving_trace.json (JSON object format: traceEvents, displayTimeUnit, otherData)."""
    doc = {"traceEvents": serving_trace_events(run), "displayTimeUnit": "ms", "otherData": metadata or {}}
    write_atomic(path, orjson.dumps(doc))
