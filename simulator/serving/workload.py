"""Serving workload stage: the deterministic list of requests (arrival time, input and output lengths) of a spec.

Random draws come from numpy Generators seeded by (seed, stream): stream 0 arrivals, 1 input lengths,
2 output lengths. The same seed gives identical requests, and arrivals are unit-rate draws divided by the
rate, so runs at different rates share their random numbers (common random numbers): request i has the
same lengths at every rate and arrives at (the same number) / rate.

A trace file replays real traffic. CSV (a header naming the columns) or JSON lines (one object a line):

    arrival_s,input_tokens,output_tokens
    0.000,512,128
    0.137,1830,64

To make one from a public dataset of conversations (e.g. ShareGPT), tokenize each conversation's first
prompt and its reply with the served model's tokenizer, keep the pairs with both counts >= 1 (vLLM's
`benchmark_serving.py --dataset-name sharegpt` also drops prompts < 4 or > 1024 tokens and pairs longer
than 2048), and give them arrival times: either the logged ones, or cumulative sums of exponential gaps of
mean 1 / rate (Poisson), e.g. `np.cumsum(rng.exponential(1 / rate_per_s, n))`. Then write the three
columns with `pandas.DataFrame.to_csv(index=False)`. `scenarios/traces/example_requests.csv` is one.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.config.serving import (
    ServingError,
    ServingSpec,
    WorkloadSpec,
    check_admissible,
    kv_output_tokens,
)
from simulator.files import read_bounded

TRACE_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")
#: The latest arrival a trace may give: 2**33 s (272 years; Unix times, ~1.7e9 s, pass), where a double still
#: resolves 2**-19 s (1.9 us). Later, an iteration's end could round to its start.
MAX_ARRIVAL_S = float(2**33)
_PAST_CLOCK = f"past {MAX_ARRIVAL_S:.3g} s (272 years), where the simulation's clock cannot tell a microsecond apart"
_CHUNK = 4096  # arrivals drawn per round when sending for duration_s


@dataclass(frozen=True, slots=True)
class Request:
    """One request. arrival_s is NaN in a closed loop (it arrives when an earlier request finishes) and for a
    conversation's later turns (sent think_time_s after the turn before ends). conversation: its conversation
    (workload.conversation; -1: none), turn: its turn there, history_tokens: the prompt tokens of the
    conversation's earlier turns (prompts and replies) at the start of its prompt."""

    request_id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    conversation: int = -1
    turn: int = 0
    history_tokens: int = 0


def generate_requests(spec: ServingSpec, base_dir: str | Path | None = None) -> tuple[Request, ...]:
    """The requests of spec.workload, in arrival order; relative file paths are read from base_dir.

    Raises ServingError when a file is missing or malformed or a request can never be admitted.
    """
    base = Path(base_dir) if base_dir is not None else Path(".")
    w = spec.workload
    if w.arrivals.kind == "trace":
        rows = read_trace(base / w.arrivals.path)
        if w.num_requests is not None:
            rows = rows[: w.num_requests]
        elif w.duration_s is not None:
            rows = [r for r in rows if r[1] < w.duration_s]
        if len(rows) <= w.warmup_requests:
            raise ServingError(
                f"workload.warmup_requests = {w.warmup_requests} leaves no measured request of "
                f"{len(rows)} in the trace; lower it"
            )
        cap = w.max_new_tokens
        if cap is not None:  # the engine stops a request at its cap
            rows = [(line_no, a, n_in, min(n_out, cap)) for line_no, a, n_in, n_out in rows]
        for line_no, _, n_in, n_out in rows:
            _check(n_in, n_out, spec, f"trace {w.arrivals.path} line {line_no}")
        return tuple(Request(i, a, n_in, n_out) for i, (_, a, n_in, n_out) in enumerate(rows))
    if w.conversation is not None:
        return _conversations(spec, base)
    arrivals_s = arrival_times_s(w)
    n = len(arrivals_s)
    last_s = float(np.nanmax(arrivals_s)) if n and not np.isnan(arrivals_s).all() else 0.0
    if last_s > MAX_ARRIVAL_S:
        raise ServingError(
            f"workload.arrivals: the requests arrive until {last_s:.3g} s, {_PAST_CLOCK}; raise the rate or send "
            "fewer requests"
        )
    if n <= w.warmup_requests:
        raise ServingError(
            f"workload.duration_s = {w.duration_s} gives {n} requests, not more than "
            f"warmup_requests = {w.warmup_requests}; lengthen it or lower the warmup"
        )
    assert w.input_len is not None and w.output_len is not None
    inputs = draw_lengths(w.input_len, n, np.random.default_rng([w.seed, 1]), base)
    outputs = draw_lengths(w.output_len, n, np.random.default_rng([w.seed, 2]), base)
    if w.max_new_tokens is not None:  # the engine stops a request at its cap
        outputs = np.minimum(outputs, w.max_new_tokens)
    requests = tuple(Request(i, float(arrivals_s[i]), int(inputs[i]), int(outputs[i])) for i in range(n))
    if w.input_len.kind == "empirical" or w.output_len.kind == "empirical":
        cap, admission = w.max_new_tokens, spec.scheduler.admission
        longest = max(requests, key=lambda r: r.input_tokens + kv_output_tokens(r.output_tokens, cap, admission))
        _check(longest.input_tokens, longest.output_tokens, spec, f"request {longest.request_id}")
    return requests


def _conversations(spec: ServingSpec, base: Path) -> tuple[Request, ...]:
    """workload.conversation's requests: num_requests turns, request i turn i mod T of conversation i // T. Turn
    t's prompt is turn t - 1's prompt and reply followed by a new message (input_len); its reply is output_len
    (both drawn per request from the streams of independent requests: the same seed gives the same messages and
    replies with or without conversations). The conversations start at the arrival process's times (NaN in a
    closed loop); a later turn's arrival is NaN (sent when the turn before has ended)."""
    w = spec.workload
    assert w.conversation is not None and w.num_requests is not None
    assert w.input_len is not None and w.output_len is not None
    n, turns = w.num_requests, w.conversation.turns
    starts_s = arrival_times_s(w.model_copy(update={"num_requests": -(-n // turns)}))
    messages = draw_lengths(w.input_len, n, np.random.default_rng([w.seed, 1]), base)
    outputs = draw_lengths(w.output_len, n, np.random.default_rng([w.seed, 2]), base)
    if w.max_new_tokens is not None:  # the engine stops a request at its cap
        outputs = np.minimum(outputs, w.max_new_tokens)
    requests = []
    history = 0
    for i in range(n):
        c, t = divmod(i, turns)
        if t == 0:
            history = 0
        prompt = history + int(messages[i])
        arrival_s = float(starts_s[c]) if t == 0 else math.nan
        requests.append(Request(i, arrival_s, prompt, int(outputs[i]), c, t, history))
        history = prompt + int(outputs[i])
    cap, admission = w.max_new_tokens, spec.scheduler.admission
    longest = max(requests, key=lambda r: r.input_tokens + kv_output_tokens(r.output_tokens, cap, admission))
    _check(longest.input_tokens, longest.output_tokens, spec, f"request {longest.request_id} (turn {longest.turn + 1})")
    return tuple(requests)


def _check(input_tokens: int, output_tokens: int, spec: ServingSpec, what: str) -> None:
    try:
        check_admissible(input_tokens, output_tokens, spec.scheduler, what, spec.workload.max_new_tokens)
    except ValueError as exc:
        raise ServingError(str(exc)) from None


def arrival_times_s(w: WorkloadSpec) -> np.ndarray:
    """Arrival times of an open loop (NaN for each request of a closed loop), non-decreasing."""
    a = w.arrivals
    if a.kind == "closed_loop":
        assert w.num_requests is not None
        return np.full(w.num_requests, math.nan)
    assert a.kind != "trace", "a trace's arrival times are read from its file (generate_requests)"
    rng = np.random.default_rng([w.seed, 0])
    if w.num_requests is not None:
        return _unit_gaps(w, rng, 0, w.num_requests).cumsum() / a.rate_per_s
    assert w.duration_s is not None
    unit_end = w.duration_s * a.rate_per_s  # arrivals before duration_s, in unit-rate time
    times = np.empty(0)
    offset = 0.0
    while True:
        chunk = offset + _unit_gaps(w, rng, len(times), _CHUNK).cumsum()
        times = np.concatenate([times, chunk])
        offset = times[-1]
        if offset >= unit_end:
            return times[times < unit_end] / a.rate_per_s


def _unit_gaps(w: WorkloadSpec, rng: np.random.Generator, start: int, n: int) -> np.ndarray:
    """Inter-arrival gaps at rate 1 of requests start .. start+n-1 (the first request's gap from time 0)."""
    a = w.arrivals
    if a.kind == "poisson":
        return rng.standard_exponential(n)
    if a.kind == "gamma":
        shape = 1.0 / (a.cv * a.cv)  # mean shape * scale = 1, cv = 1 / sqrt(shape)
        return rng.standard_gamma(shape, n) / shape
    gaps = np.ones(n)  # constant: the first request at 0, then one every 1 / rate
    if start == 0:
        gaps[0] = 0.0
    return gaps


def draw_lengths(dist, n: int, rng: np.random.Generator, base_dir: Path = Path(".")) -> np.ndarray:
    """n lengths (int64, >= 1) from a length distribution of the spec."""
    kind = dist.kind
    if kind == "fixed":
        return np.full(n, dist.tokens, dtype=np.int64)
    if kind == "uniform":
        return rng.integers(dist.min_tokens, dist.max_tokens + 1, size=n, dtype=np.int64)
    if kind == "empirical":
        values = read_lengths(base_dir / dist.path)
        return values[rng.integers(0, len(values), size=n)]
    z = rng.standard_normal(n)
    if kind == "normal":
        x = dist.mean_tokens + dist.std_tokens * z
    else:  # lognormal with the given mean and std of the lengths
        sigma2 = math.log1p((dist.std_tokens / dist.mean_tokens) ** 2)
        x = np.exp(math.log(dist.mean_tokens) - sigma2 / 2 + math.sqrt(sigma2) * z)
    return np.clip(np.rint(x), dist.min_tokens, dist.max_tokens).astype(np.int64)


def read_lengths(path: Path) -> np.ndarray:
    """Lengths file: one positive integer per line; blank lines and `#` comments are skipped."""
    text = _read_text(path, "lengths file")
    values = []
    for line_no, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if item:
            values.append(_positive_int(item, path, line_no, "length"))
    if not values:
        raise ServingError(f"{path}: no lengths; write one positive integer per line")
    return np.array(values, dtype=np.int64)


def read_trace(path: Path) -> list[tuple[int, float, int, int]]:
    """Rows (line number, arrival_s, input_tokens, output_tokens) of a CSV or JSON-lines trace, sorted by
    arrival (stably, so equal times keep file order). Raises ServingError naming the bad line."""
    text = _read_text(path, "trace")
    if not text.strip():
        raise ServingError(f"{path}: empty trace; add lines of {','.join(TRACE_COLUMNS)}")
    rows: list[tuple[int, float, int, int]] = []
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ServingError(
                    f"{path} line {line_no}: not JSON ({exc.msg}); write one object a line "
                    f"with keys {', '.join(TRACE_COLUMNS)}"
                ) from None
            if not isinstance(obj, dict):
                raise ServingError(f"{path} line {line_no}: expected an object with keys {', '.join(TRACE_COLUMNS)}")
            rows.append(_trace_row(obj, path, line_no))
    else:
        lines = text.splitlines()
        reader = csv.DictReader(lines)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in TRACE_COLUMNS if c not in header]
        if missing:
            raise ServingError(
                f"{path} line 1: header lacks {', '.join(missing)}; the first line must name "
                f"the columns {','.join(TRACE_COLUMNS)}"
            )
        reader.fieldnames = header
        for row in reader:
            line_no = reader.line_num
            if None in row or any(row[c] is None for c in TRACE_COLUMNS):
                raise ServingError(f"{path} line {line_no}: expected {len(header)} comma-separated fields")
            rows.append(_trace_row(row, path, line_no))
    if not rows:
        raise ServingError(f"{path}: empty trace; add lines of {','.join(TRACE_COLUMNS)}")
    rows.sort(key=lambda r: r[1])
    return rows


def _trace_row(row: dict, path: Path, line_no: int) -> tuple[int, float, int, int]:
    for column in TRACE_COLUMNS:
        if column not in row:
            raise ServingError(f"{path} line {line_no}: missing {column}")
    raw = row["arrival_s"]
    try:
        arrival_s = float(raw)
    except (TypeError, ValueError):
        raise ServingError(f"{path} line {line_no}: arrival_s = {raw!r} is not a number") from None
    if not (math.isfinite(arrival_s) and arrival_s >= 0):
        raise ServingError(f"{path} line {line_no}: arrival_s = {raw!r} must be a finite number >= 0")
    if arrival_s > MAX_ARRIVAL_S:
        raise ServingError(
            f"{path} line {line_no}: arrival_s = {raw!r} is {_PAST_CLOCK}; give times from the trace's start "
            "(subtract the first)"
        )
    n_in = _positive_int(row["input_tokens"], path, line_no, "input_tokens")
    n_out = _positive_int(row["output_tokens"], path, line_no, "output_tokens")
    return line_no, arrival_s, n_in, n_out


def _positive_int(raw, path: Path, line_no: int, name: str) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ServingError(f"{path} line {line_no}: {name} = {raw!r} is not an integer") from None
    if value < 1:
        raise ServingError(f"{path} line {line_no}: {name} = {value} must be >= 1")
    return value


#: Largest trace or lengths file read (a million requests of three numbers fit in ~32 MB).
MAX_TRACE_BYTES = 64 * 1024 * 1024


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise ServingError(f"{path}: no such {what} file; check the path (relative paths are read from base_dir)")
    raw = read_bounded(path, str(path), what, ServingError, MAX_TRACE_BYTES)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ServingError(
            f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save the {what} as UTF-8"
        ) from None
