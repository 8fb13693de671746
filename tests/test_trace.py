"""trace.json: valid Chrome-trace JSON, the fields Perfetto needs, slice times equal to the simulation."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from conftest import TINY_MOE, make_scenario

from simulator.critical_path import analyse
from simulator.graph import NodeKind
from simulator.pipeline import run_scenario
from simulator.report.slices import slices_of_run
from simulator.report.trace import LINK_PID0, RUN_PID, gpu_pid, link_pid, trace_json, write_trace


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    run = run_scenario(make_scenario(TINY_MOE, parallel={"microbatches": 2}))
    _, paths = analyse(run.graph, run.sim.ops, run.scenario.num_gpus)
    path = tmp_path_factory.mktemp("trace") / "trace.json"
    write_trace(path, run.sim.ops, slices_of_run(run), paths["total"].rows, {"scenario": "tiny"})
    return run, json.loads(path.read_text()), paths["total"]


def _slices(doc, pid_filter):
    return [e for e in doc["traceEvents"] if e["ph"] == "X" and pid_filter(e["pid"])]


def test_is_a_chrome_trace_object_with_named_processes_and_threads(traced):
    run, doc, _ = traced
    assert doc["displayTimeUnit"] == "ms" and doc["otherData"] == {"scenario": "tiny"}
    meta = [e for e in doc["traceEvents"] if e["ph"] == "M"]
    names = {(e["pid"], e["tid"], e["name"]): e["args"].get("name") for e in meta}
    for g in range(run.scenario.num_gpus):
        assert names[(gpu_pid(g), 0, "process_name")] == f"GPU {g}"
        assert names[(gpu_pid(g), 0, "thread_name")] == "compute stream"
        assert names[(gpu_pid(g), 1, "thread_name")] == "comm stream"
        assert names[(link_pid(g), 0, "process_name")] == f"GPU {g} link port"
        assert {names[(link_pid(g), 0, "thread_name")], names[(link_pid(g), 1, "thread_name")]} == {"tx", "rx"}


def test_every_slice_has_the_required_fields(traced):
    _, doc, _ = traced
    gpu_events = _slices(doc, lambda pid: RUN_PID < pid < LINK_PID0)
    assert gpu_events
    for e in gpu_events:
        assert set(e) == {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"}
        assert {"node", "op", "layer", "step", "microbatch", "flops", "bytes_read", "bytes_written", "bound"} <= set(
            e["args"]
        )
        assert e["dur"] >= 0 and e["ts"] >= 0


def test_slice_times_match_the_simulation(traced):
    run, doc, _ = traced
    ops = run.sim.ops.set_index("node")
    for e in _slices(doc, lambda pid: RUN_PID < pid < LINK_PID0):
        row = ops.loc[e["args"]["node"]]
        assert e["ts"] == pytest.approx(row["start_s"] * 1e6, abs=1e-3)
        assert e["dur"] == pytest.approx(row["duration_s"] * 1e6, abs=1e-3)
        assert e["name"] == row["op"] and e["cat"] == row["category"]


def test_each_kernel_once_on_its_stream_and_collectives_on_every_member(traced):
    run, doc, _ = traced
    events = _slices(doc, lambda pid: RUN_PID < pid < LINK_PID0)
    seen: dict[str, list[tuple[int, int]]] = {}
    for e in events:
        seen.setdefault(e["args"]["node"], []).append((e["pid"], e["tid"]))
    for node, kind, gpu in zip(run.sim.ops["node"], run.sim.ops["kind"], run.sim.ops["gpu"]):
        if kind == NodeKind.MARKER:
            assert node not in seen
        elif kind == NodeKind.COMM:
            assert sorted(seen[node]) == sorted((gpu_pid(g), 1) for g in gpu)
        else:
            assert seen[node] == [(gpu_pid(gpu), 0)]
    links = _slices(doc, lambda pid: pid >= LINK_PID0)
    assert links and all(run.sim.ops.set_index("node").loc[e["args"]["node"], "kind"] == NodeKind.COMM for e in links)


def test_run_process_holds_phases_and_the_critical_path(traced):
    run, doc, path = traced
    run_events = _slices(doc, lambda pid: pid == RUN_PID)
    phases = [e["name"] for e in run_events if e["tid"] == 0]
    assert phases == ["prefill", "decode step 1", "decode step 2"]
    on_path = [e["args"]["node"] for e in run_events if e["tid"] == 1 and e["name"] != "host launch"]
    durations = run.sim.ops["duration_s"].to_numpy()[path.rows]
    assert on_path == [run.sim.ops["node"].iat[i] for i, d in zip(path.rows, durations) if d > 0]
    assert np.isclose(sum(e["dur"] for e in run_events if e["tid"] == 1), path.length_s * 1e6, atol=1e-2)


def test_the_bytes_are_orjsons_for_the_whole_document(traced):
    """trace_json puts the document together from pieces; they join into exactly what orjson writes
    for the parsed document (compact, same float text, same key order), with awkward names too."""
    run, doc, path = traced
    ops = run.sim.ops.copy()
    slices = slices_of_run(run)
    row = int(slices.row[slices.kind == 1][0])  # a collective: on streams and link ports
    ops.loc[row, "node"] = 'a "quoted", \\ back\nslash é name'
    data = trace_json(ops, slices, path.rows, {"scenario": "tiny", "layout": {"tp": 2}})
    assert data == orjson.dumps(json.loads(data))
    events = json.loads(data)["traceEvents"]
    assert len(events) == len(doc["traceEvents"])
    assert sum(e.get("args", {}).get("node") == ops["node"].iat[row] for e in events) > 2
