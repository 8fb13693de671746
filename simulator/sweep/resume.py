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
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TypeGuard

from simulator.config import ParallelSpec, Scenario, ScenarioError, resolve_hardware
from simulator.files import OutputError, pid_alive, write_atomic
from simulator.metrics import THROUGHPUTS
from simulator.sweep.results import LayoutResult, TargetVerdict

FORMAT = "moesim-sweep-progress/1"


def progress_path(out: Path) -> Path:
    """Where the progress file of a sweep writing to `out` lives: beside it."""
    out = Path(out)
    return out.with_name(out.name + ".progress.jsonl")


def sweep_inputs(
    scenario: Scenario,
    num_gpus: int,
    microbatches: Sequence[int],
    decode_sample: int,
    serving_objective: str | None = None,
) -> dict:
    """What decides a sweep's results (not the objective, which only ranks them, nor the executor;
    but a serving objective, whose figures each layout's row holds, is one of them).

    The scenario and its resolved hardware profile are hashed: a profile file edited between the
    runs changes the results as surely as the scenario does.
    """
    # A scenario without a serving section hashes as before that section existed (old progress files resume).
    unset = {"serving"} if scenario.serving is None else None
    text = json.dumps(
        {
            "scenario": scenario.model_dump(mode="json", exclude=unset),
            "hardware": resolve_hardware(scenario).model_dump(mode="json"),
        },
        sort_keys=True,
    )
    inputs = {
        "scenario": hashlib.sha256(text.encode()).hexdigest(),
        "gpus": num_gpus,
        "microbatches": list(microbatches),
        "decode_sample": decode_sample,
    }
    if serving_objective is not None:
        inputs["serving_objective"] = serving_objective
    return inputs


_OPTION_TEXT = {
    "gpus": "--gpus",
    "microbatches": "--microbatches",
    "decode_sample": "--decode-sample",
    "serving_objective": "--objective",
    "search_settings": "search settings (--objective, --rate, --rel-tol, --decode-sample)",
    "profiles": "hardware profiles",
}


def _show(key: str, value) -> str:
    if key in ("search_settings", "profiles"):
        return "other values"
    return ",".join(map(str, value)) if key == "microbatches" else str(value)


def to_record(result: LayoutResult) -> dict:
    """A result as one strict-JSON record, keyed by its layout (NaN is written as null, the
    infinities as "inf" and "-inf")."""
    record = asdict(result)
    record.pop("rank")
    if not record["serving"]:  # a sweep without a serving objective writes the lines it always wrote
        record.pop("serving")
    record["layout"] = result.layout.degrees()
    record["targets"] = [[t.metric, t.bound, float(t.limit), float(t.actual), bool(t.met)] for t in result.targets]
    return _nan_to_null(record)


def from_record(record: dict) -> LayoutResult:
    """The result a record holds; ValueError when any field is missing or of the wrong type (a
    damaged line must be reported as such, not break the ranking after the sweep)."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    fields = dict(record)
    layout = fields["layout"]
    if not isinstance(layout, dict) or not all(_is_int(v) and v >= 1 for v in layout.values()):
        raise ValueError("layout: expected positive integer degrees")
    fields["layout"] = ParallelSpec(**layout)
    if not _is_int(fields["index"]) or not isinstance(fields["own"], bool):
        raise ValueError("index, own: wrong type")
    if fields["status"] not in ("ok", "screened", "failed") or not isinstance(fields.get("error", ""), str):
        raise ValueError("status, error: wrong value")
    targets = fields["targets"]
    if not isinstance(targets, list) or not all(isinstance(t, list) and len(t) == 5 for t in targets):
        raise ValueError("targets: expected [metric, bound, limit, actual, met] lists")
    fields["targets"] = tuple(
        TargetVerdict(_str(m), _str(b), _float(lim), _float(act), _bool(met)) for m, b, lim, act, met in targets
    )
    for key in ("ttft_mean_s", "ttft_max_s", "tpot_s", "memory_bytes_per_gpu", "capacity_bytes", "sim_s"):
        fields[key] = _float(fields[key])
    fields["serving"] = fields.get("serving") or {}
    for key in ("throughput", "cost_shares", "serving"):
        if not isinstance(fields[key], dict):
            raise ValueError(f"{key}: expected an object")
        fields[key] = {_str(k): _float(v) for k, v in fields[key].items()}
    missing = [k for k in THROUGHPUTS if k not in fields["throughput"]]
    if fields["status"] == "ok" and missing:  # a simulated layout has every figure the ranking reads
        raise ValueError(f"throughput: no {missing[0]}")
    return LayoutResult(**fields)


def _is_int(x) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _str(x) -> str:
    if not isinstance(x, str):
        raise ValueError("expected a string")
    return x


def _bool(x) -> bool:
    if not isinstance(x, bool):
        raise ValueError("expected true or false")
    return x


def _float(x) -> float:
    """null is NaN; the strings "inf" and "-inf" are the infinities (strict JSON has neither)."""
    if x is None:
        return math.nan
    if x in ("inf", "-inf"):
        return float(x)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError("expected a number")
    return float(x)


def _nan_to_null(x):
    """Strict JSON: NaN as null, the infinities as the strings "inf" and "-inf"."""
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return float(x)
    if isinstance(x, dict):
        return {k: _nan_to_null(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_null(v) for v in x]
    return x


class Progress:
    """The progress file of one sweep: open it (fresh or resumed), append results, remove it."""

    def __init__(
        self,
        path: Path,
        inputs: dict,
        resume: bool,
        layouts: Sequence[Hashable],
        key: Callable = lambda result: result.layout,
        encode: Callable[..., dict] = to_record,
        decode: Callable[[dict], object] = from_record,
    ):
        """Start a fresh file (replacing any), or with `resume` read the finished layouts of the
        existing one; its inputs must equal `inputs` (ScenarioError naming the one that differs).
        `layouts` are the keys of what this run may reuse; key/encode/decode make the file hold other
        results (the deployment search: keyed by candidate, sweep.search)."""
        self.path = Path(path)
        self._key, self._encode, self._decode = key, encode, decode
        self.done: dict = {}
        header = {"format": FORMAT, **inputs}
        lines: list[str] = []
        self._refuse_if_in_use()
        if resume:
            self.done, lines = self._read(header, set(layouts))
        try:
            write_atomic(
                self.path, "".join(line + "\n" for line in [json.dumps({**header, "pid": os.getpid()}), *lines])
            )
            self._handle = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise OutputError(
                f"--out: cannot write the progress file {self.path} ({exc.strerror}); choose a writable directory"
            ) from None

    def _refuse_if_in_use(self) -> None:
        """Two sweeps into one --out would share this file (one's end deletes the other's progress):
        refuse while the process named in its header is still running."""
        try:
            with self.path.open("rb") as handle:
                first = json.loads(handle.readline(4096) or b"null")
        except (OSError, ValueError, RecursionError):
            return
        pid = first.get("pid") if isinstance(first, dict) else None
        if _is_int(pid) and pid != os.getpid() and pid > 0 and pid_alive(pid):
            raise OutputError(
                f"--out: another moesim compare (process {pid}) is sweeping into {self.path.name[:-15]}; "
                "wait for it to finish or choose another --out"
            )

    def _read(self, header: dict, layouts: set) -> tuple[dict, list[str]]:
        if not self.path.is_file():
            raise ScenarioError(f"--resume: no progress file {self.path}; run without --resume to start the sweep")
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        try:
            theirs = json.loads(lines[0]) if lines else None
        except (ValueError, RecursionError):  # not JSON, an integer past Python's digit limit, nesting too deep
            theirs = None
        if not isinstance(theirs, dict) or theirs.get("format") != FORMAT:
            raise ScenarioError(
                f"--resume: {self.path} is not a moesim sweep progress file; rerun without --resume to start afresh"
            )
        for key, value in header.items():
            if theirs.get(key) != value:
                what = (
                    "a different scenario (the file, a --set or the hardware profile changed)"
                    if key == "scenario"
                    else f"{_OPTION_TEXT[key]} {_show(key, theirs.get(key))}, not {_show(key, value)}"
                )
                raise ScenarioError(
                    f"--resume: {self.path} was made with {what}; rerun without --resume to start afresh"
                )
        done, kept = {}, []
        for number, line in enumerate(lines[1:], start=2):
            try:
                result = self._decode(json.loads(line))
            except (ValueError, TypeError, KeyError, RecursionError):
                if number == len(lines):  # cut short by the interruption: that layout runs again
                    break
                raise ScenarioError(
                    f"--resume: {self.path} line {number} is damaged; rerun without --resume to start afresh"
                ) from None
            if self._key(result) in layouts:
                done[self._key(result)] = result
                kept.append(line)
        return done, kept

    def append(self, result) -> None:
        """Record one finished layout: a whole line, flushed, before the next one is reported."""
        self._handle.write(json.dumps(self._encode(result)) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def remove(self) -> None:
        """The sweep's outputs are written: the progress file has served its purpose."""
        self._handle.close()
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The deployment search's progress file (sweep.search): the same file, keyed by candidate


def search_inputs(scenario: Scenario, settings, profiles: Sequence[str]) -> dict:
    """What decides a search's per-candidate figures: the scenario, every hardware profile searched (hashed:
    an edited profile changes results) and the settings. Not the search space: a candidate keeps its result
    whatever else the space holds (its key names every dimension), so a resumed search may widen the space."""
    from simulator.config.hardware import load_profile

    base = sweep_inputs(scenario, scenario.num_gpus, (), settings.decode_sample)
    text = json.dumps({p: load_profile(p).model_dump(mode="json") for p in sorted(set(profiles))}, sort_keys=True)
    return {
        "scenario": base["scenario"],
        "profiles": hashlib.sha256(text.encode()).hexdigest(),
        "search_settings": {
            "objective": settings.objective,
            "serving": settings.serving,
            "decode_sample": settings.decode_sample,
            "rate_per_s": settings.rate_per_s,
            "rel_tol": settings.rel_tol,
        },
    }


def search_to_record(result) -> dict:
    """A search result as one strict-JSON record, keyed by its candidate's dimensions."""
    return _nan_to_null(
        {
            "candidate": result.candidate.dims(),
            "status": result.status,
            "rule": result.rule,
            "reason": result.reason,
            "meets": result.meets,
            "figures": {
                k: float(getattr(result, k))
                for k in (
                    "output_tokens_per_s_per_gpu",
                    "tpot_s",
                    "ttft_s",
                    "rate_per_s",
                    "memory_bytes_per_gpu",
                    "sim_s",
                )
            },
        }
    )


def search_from_record(record: dict):
    """The search result a record holds; ValueError when a field is missing or of the wrong type."""
    from simulator.sweep.candidates import Candidate
    from simulator.sweep.search import SearchResult

    if not isinstance(record, dict) or not isinstance(record.get("figures"), dict):
        raise ValueError("not a search record")
    if record["status"] not in ("ok", "failed") or not isinstance(record["meets"], bool):
        raise ValueError("status, meets: wrong value")
    f = record["figures"]
    return SearchResult(
        index=0,
        candidate=Candidate.from_dims(record["candidate"]),
        status=record["status"],
        rule=_str(record["rule"]),
        reason=_str(record["reason"]),
        meets=record["meets"],
        output_tokens_per_s_per_gpu=_float(f["output_tokens_per_s_per_gpu"]),
        tpot_s=_float(f["tpot_s"]),
        ttft_s=_float(f["ttft_s"]),
        rate_per_s=_float(f["rate_per_s"]),
        memory_bytes_per_gpu=_float(f["memory_bytes_per_gpu"]),
        sim_s=_float(f["sim_s"]),
    )


def search_key(result) -> str:
    return result.candidate.key()
