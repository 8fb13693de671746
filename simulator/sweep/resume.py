"""Sweep stage, progress file: each finished layout's result, kept across Ctrl-C for `moesim compare --resume`.

The file is JSON lines beside the output directory (`<out>.progress.jsonl`; the output directory
itself is only made when the sweep is complete). Line 1 is a header holding the sweep's inputs;
every further line is one layout's result, written whole and flushed as the layout finishes, so an
interruption loses at most a half-written last line, which a resume drops (that layout is simulated
again).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from simulator.config import ParallelSpec, Scenario, ScenarioError, resolve_hardware
from simulator.files import OutputError, write_atomic
from simulator.sweep.results import LayoutResult, TargetVerdict

FORMAT = "moesim-sweep-progress/1"


def progress_path(out: Path) -> Path:
    """Where the progress file of a sweep writing to `out` lives: beside it."""
    out = Path(out)
    return out.with_name(out.name + ".progress.jsonl")


def sweep_inputs(scenario: Scenario, num_gpus: int, microbatches: Sequence[int], decode_sample: int) -> dict:
    """What decides a sweep's results (not the objective, which only ranks them, nor the executor).

    The scenario and its resolved hardware profile are hashed: a profile file edited between the
    runs changes the results as surely as the scenario does.
    """
    text = json.dumps({"scenario": scenario.model_dump(mode="json"),
                       "hardware": resolve_hardware(scenario).model_dump(mode="json")}, sort_keys=True)
    return {"scenario": hashlib.sha256(text.encode()).hexdigest(), "gpus": num_gpus,
            "microbatches": list(microbatches), "decode_sample": decode_sample}


_OPTION_TEXT = {"gpus": "--gpus", "microbatches": "--microbatches", "decode_sample": "--decode-sample"}


def _show(key: str, value) -> str:
    return ",".join(map(str, value)) if key == "microbatches" else str(value)


def to_record(result: LayoutResult) -> dict:
    """A result as one JSON-serialisable record, keyed by its layout (NaN is written as null)."""
    record = asdict(result)
    record.pop("rank")
    record["layout"] = result.layout.degrees()
    record["targets"] = [[t.metric, t.bound, float(t.limit), float(t.actual), bool(t.met)] for t in result.targets]
    return _nan_to_null(record)


def from_record(record: dict) -> LayoutResult:
    fields = dict(record)
    fields["layout"] = ParallelSpec(**fields["layout"])
    fields["targets"] = tuple(TargetVerdict(m, b, _float(lim), _float(act), met)
                             for m, b, lim, act, met in fields["targets"])
    for key in ("ttft_mean_s", "ttft_max_s", "tpot_s", "memory_bytes_per_gpu", "capacity_bytes", "sim_s"):
        fields[key] = _float(fields[key])
    for key in ("throughput", "cost_shares"):
        fields[key] = {k: _float(v) for k, v in fields[key].items()}
    return LayoutResult(**fields)


def _float(x) -> float:
    return math.nan if x is None else float(x)


def _nan_to_null(x):
    if isinstance(x, float):
        return None if math.isnan(x) else float(x)
    if isinstance(x, dict):
        return {k: _nan_to_null(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_null(v) for v in x]
    return x


class Progress:
    """The progress file of one sweep: open it (fresh or resumed), append results, remove it."""

    def __init__(self, path: Path, inputs: dict, resume: bool, layouts: Sequence[ParallelSpec]):
        """Start a fresh file (replacing any), or with `resume` read the finished layouts of the
        existing one; its inputs must equal `inputs` (ScenarioError naming the one that differs)."""
        self.path = Path(path)
        self.done: dict[Layout, LayoutResult] = {}
        header = {"format": FORMAT, **inputs}
        lines: list[str] = []
        if resume:
            self.done, lines = self._read(header, set(layouts))
        try:
            write_atomic(self.path, "".join(line + "\n" for line in [json.dumps(header), *lines]))
            self._handle = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"--out: cannot write the progress file {self.path} ({exc.strerror}); "
                              f"choose a writable directory") from None

    def _read(self, header: dict, layouts: set[Layout]) -> tuple[dict[Layout, LayoutResult], list[str]]:
        if not self.path.is_file():
            raise ScenarioError(f"--resume: no progress file {self.path}; run without --resume to start the sweep")
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        try:
            theirs = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            theirs = None
        if not isinstance(theirs, dict) or theirs.get("format") != FORMAT:
            raise ScenarioError(f"--resume: {self.path} is not a moesim sweep progress file; "
                                f"rerun without --resume to start afresh")
        for key, value in header.items():
            if theirs.get(key) != value:
                what = ("a different scenario (the file, a --set or the hardware profile changed)"
                        if key == "scenario" else
                        f"{_OPTION_TEXT[key]} {_show(key, theirs.get(key))}, not {_show(key, value)}")
                raise ScenarioError(f"--resume: {self.path} was made with {what}; "
                                    f"rerun without --resume to start afresh")
        done, kept = {}, []
        for number, line in enumerate(lines[1:], start=2):
            try:
                result = from_record(json.loads(line))
            except (ValueError, TypeError, KeyError):
                if number == len(lines):  # cut short by the interruption: that layout runs again
                    break
                raise ScenarioError(f"--resume: {self.path} line {number} is damaged; "
                                    f"rerun without --resume to start afresh") from None
            if result.layout in layouts:
                done[result.layout] = result
                kept.append(line)
        return done, kept

    def append(self, result: LayoutResult) -> None:
        """Record one finished layout: a whole line, flushed, before the next one is reported."""
        self._handle.write(json.dumps(to_record(result)) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def remove(self) -> None:
        """The sweep's outputs are written: the progress file has served its purpose."""
        self._handle.close()
        self.path.unlink(missing_ok=True)
