"""Fuzzing every entry point through the real command line (in-process `moesim` main): presets,
profiles with calibration tables, validation case files, HF configs, summary.json for `plot`,
progress files for `compare --resume`, and random command lines of each subcommand.

The property, for any input: the exit code is 0, 1 or 2 (never 3, "internal error"); for 2, stderr
is one line; no traceback; bounded time; and the output directory is either a complete new result
or exactly what was there before (no staging directory, no half-written file).

Examples per test: MOESIM_FUZZ_EXAMPLES (default 25, a short budget for CI); the tests marked `slow`
simulate per example and take MOESIM_FUZZ_SLOW_EXAMPLES (default 8); `benchmarks/fuzz_long.py` runs everything with a larger budget.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import shutil
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_MOE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.cli import main

EXAMPLES = int(os.environ.get("MOESIM_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
#: The `slow` tests simulate once per example: a smaller budget (MOESIM_FUZZ_SLOW_EXAMPLES, default 8).
SLOW_FUZZ = settings(FUZZ, max_examples=int(os.environ.get("MOESIM_FUZZ_SLOW_EXAMPLES", "8")))
#: Seconds one command may take on fuzzed input (a tiny scenario simulates in well under a second).
TIME_LIMIT_S = 30
#: Peak memory of the whole test process, every fuzzed command included (an unbounded input would pass it).
MEMORY_LIMIT_BYTES = 3 * 1024**3

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=10),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0, -1, 1, 2, 7, 10**9, 10**4000, 1e-300, 1e300, 1.7e308]),
    st.floats(allow_nan=True, allow_infinity=True),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)
RAW = st.one_of(
    st.binary(max_size=120),
    st.sampled_from(
        [
            b"a: &a [1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"
            b"d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e]\n",
            b"a: &r [*r]\n",
            b"a: 1\na: 2\n",
            b"\xff\xfe",
            b"\x00",
            b"[" * 3000,
            b"{}",
            b"[]",
            b"null",
            b"1" * 5000,
        ]
    ),
)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return (
        {
            str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(directory.rglob("*"))
        }
        if directory.exists()
        else {}
    )


def check_command(capsys, args: list, watch: Path | None = None, complete: tuple[str, ...] = ()) -> int:
    """Run moesim; assert the property. `watch` is the output directory: afterwards it holds the
    complete new result (every name in `complete`) or exactly what it held before."""
    before = _snapshot(watch) if watch else None
    started = time.perf_counter()
    code = main([str(a) for a in args])
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert code in (0, 1, 2), f"exit {code}: {err}"
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("moesim: "), err
    assert elapsed < TIME_LIMIT_S
    # Bounded memory: the test process's peak resident size (Linux: KiB) never passes MEMORY_LIMIT_BYTES.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < MEMORY_LIMIT_BYTES
    if watch is not None:
        parent = watch.parent
        assert not [p.name for p in parent.iterdir() if ".staging-" in p.name or ".old-" in p.name]
        after = _snapshot(watch)
        if code == 2 or after == before:
            assert after == before
        else:
            assert all(name in after for name in complete), sorted(after)
    return code


@pytest.fixture
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _fresh(workdir: Path) -> Path:
    """An empty directory per example (hypothesis reuses the fixture)."""
    d = workdir / f"ex{len(list(workdir.iterdir()))}"
    d.mkdir()
    return d


def _scenario_file(d: Path, **sections) -> Path:
    data = {**copy.deepcopy(TINY_MOE), **sections}
    path = d / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------------------------
# Presets


@FUZZ
@given(
    st.one_of(
        RAW,
        values.map(lambda v: yaml.safe_dump(v).encode()),
        st.dictionaries(st.sampled_from(sorted(TINY_MOE["model"])), scalars, max_size=4).map(
            lambda d: yaml.safe_dump({**TINY_MOE["model"], **d}).encode()
        ),
    )
)
def test_fuzzed_presets(workdir, capsys, raw):
    d = _fresh(workdir)
    (d / "m.yaml").write_bytes(raw)
    check_command(capsys, ["dag", _scenario_file(d, model={"preset": "m.yaml"}), "--out", d / "out"], d / "out")


# ---------------------------------------------------------------------------------------------
# Profiles with calibration tables


PROFILE = yaml.safe_load((ROOT / "hardware_profiles" / "h200-sxm-141gb.yaml").read_text())
CAL_PATHS = [
    ("calibration", t)
    for t in (
        "gemm",
        "grouped_gemm",
        "attention_prefill",
        "attention_decode",
        "eager_floor_s",
        "elementwise_s_per_byte",
        "topk_s_per_row",
        "source",
    )
]
PROFILE_PATHS = [(k,) for k in PROFILE if k != "calibration"] + CAL_PATHS


@st.composite
def mutated_profiles(draw) -> dict:
    data = copy.deepcopy(PROFILE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PROFILE_PATHS))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["drop", "value", "row", "empty"]))
        if op == "drop":
            parent.pop(path[-1], None)
        elif (
            op == "row"
            and isinstance(parent.get(path[-1]), list)
            and parent[path[-1]]
            and isinstance(parent[path[-1]][0], list)
            and parent[path[-1]][0]
        ):
            row = list(parent[path[-1]][0])
            row[draw(st.integers(0, len(row) - 1))] = draw(scalars)
            parent[path[-1]].append(row)
        elif op == "empty":
            parent[path[-1]] = type(parent.get(path[-1], []))() if isinstance(parent.get(path[-1]), (list, dict)) else 0
        else:
            parent[path[-1]] = draw(values)
    return data


@FUZZ
@given(st.one_of(mutated_profiles().map(lambda d: yaml.safe_dump(d).encode()), RAW))
def test_fuzzed_profiles(workdir, capsys, raw):
    d = _fresh(workdir)
    (d / "gpu.yaml").write_bytes(raw)
    check_command(capsys, ["dag", _scenario_file(d, hardware="gpu.yaml"), "--out", d / "out"], d / "out")
    check_command(
        capsys,
        [
            "calibrate",
            "--from-json",
            ROOT / "hardware_profiles/measurements/h200_micro.json",
            "--base",
            d / "gpu.yaml",
            "--out",
            d / "p.yaml",
        ],
    )


@pytest.mark.slow
@SLOW_FUZZ
@given(mutated_profiles())
def test_fuzzed_calibrated_profiles_simulate(workdir, capsys, profile):
    d = _fresh(workdir)
    (d / "gpu.yaml").write_text(yaml.safe_dump(profile))
    check_command(
        capsys,
        ["run", _scenario_file(d, hardware="gpu.yaml"), "--out", d / "out", "--no-dag"],
        d / "out",
        ("summary.json", "ops.csv.gz"),
    )


@FUZZ
@given(
    st.one_of(
        RAW,
        values.map(lambda v: json.dumps(v, default=str).encode()),
        st.dictionaries(
            st.sampled_from(["gemm", "bmm", "sdpa_prefill", "sdpa_decode", "launch", "elementwise", "copy"]),
            values,
            max_size=4,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzzed_calibration_measurements(workdir, capsys, raw):
    d = _fresh(workdir)
    (d / "m.json").write_bytes(raw)
    code = check_command(capsys, ["calibrate", "--from-json", d / "m.json", "--out", d / "p.yaml"])
    assert (code == 0) == (d / "p.yaml").exists()


# ---------------------------------------------------------------------------------------------
# Validation case files


CASE = {
    "name": "c",
    "metric": "total_s",
    "measured": 1.0,
    "scenario": {k: v for k, v in TINY_MOE.items() if k != "name"},
}


@FUZZ
@given(
    st.one_of(
        RAW,
        values.map(lambda v: yaml.safe_dump({"cases": v}).encode()),
        st.dictionaries(st.sampled_from(sorted(CASE)), values, max_size=3).map(
            lambda d: yaml.safe_dump({"cases": [{**CASE, **d}]}).encode()
        ),
    )
)
def test_fuzzed_case_files(workdir, capsys, raw):
    d = _fresh(workdir)
    (d / "cases.yaml").write_bytes(raw)
    check_command(capsys, ["validate", d / "cases.yaml", "--out", d / "out"], d / "out", ("validation.csv",))


# ---------------------------------------------------------------------------------------------
# Hugging Face configs


HF = {
    "model_type": "mixtral",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "intermediate_size": 128,
    "torch_dtype": "bfloat16",
    "hidden_act": "silu",
}
HF_KEYS = sorted(HF) + [
    "quantization_config",
    "kv_lora_rank",
    "n_routed_experts",
    "first_k_dense_replace",
    "moe_intermediate_size",
    "sliding_window",
    "n_shared_experts",
    "head_dim",
]


@FUZZ
@given(
    st.one_of(
        RAW,
        st.dictionaries(st.sampled_from(HF_KEYS), values, max_size=4).map(
            lambda d: json.dumps({**HF, **d}, default=str).encode()
        ),
    )
)
def test_fuzzed_hf_configs(workdir, capsys, raw):
    d = _fresh(workdir)
    (d / "config.json").write_bytes(raw)
    code = check_command(capsys, ["import-hf", d / "config.json", "--out", d / "m.yaml"])
    assert (code == 0) == (d / "m.yaml").exists()


# ---------------------------------------------------------------------------------------------
# summary.json for plot, progress files for --resume


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    path = d / "s.yaml"
    path.write_text(yaml.safe_dump(TINY_MOE))
    assert main(["run", str(path), "--out", str(d / "out"), "--no-dag"]) == 0
    return d / "out"


@st.composite
def mutated_summaries(draw) -> bytes:
    summary = json.loads((ROOT / "tests" / "golden" / "golden_tiny_pp.summary.json").read_text())
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(summary)))
        summary[key] = draw(values)
    return json.dumps(summary, default=str).encode()


@pytest.mark.slow
@SLOW_FUZZ
@given(st.one_of(RAW, mutated_summaries()))
def test_fuzzed_summaries_for_plot(workdir, capsys, finished_run, raw):
    d = _fresh(workdir)
    out = d / "out"
    shutil.copytree(finished_run, out)
    (out / "summary.json").write_bytes(raw)
    before = _snapshot(out)
    code = check_command(capsys, ["plot", out])
    if code == 2:
        assert _snapshot(out) == before


@pytest.fixture(scope="module")
def progress_lines(tmp_path_factory) -> list[str]:
    """The progress file of an interrupted sweep of the tiny scenario (every layout finished)."""
    import simulator.api as api
    from simulator.sweep import SweepInterrupted
    from simulator.sweep.resume import progress_path

    d = tmp_path_factory.mktemp("sweep")
    path = d / "s.yaml"
    path.write_text(yaml.safe_dump(TINY_MOE))
    real = api.run_sweep

    def then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise SweepInterrupted(1, 1)

    api.run_sweep = then_interrupt
    try:
        main(["compare", str(path), "--executor", "serial", "--microbatches", "1", "--out", str(d / "cmp")])
    finally:
        api.run_sweep = real
    return progress_path(d / "cmp").read_text().splitlines()


@st.composite
def mutated_progress(draw, lines: list[str]) -> bytes:
    lines = list(lines)
    i = draw(st.integers(1, len(lines) - 1))
    record = json.loads(lines[i])
    key = draw(st.sampled_from(sorted(record)))
    record[key] = draw(values)
    lines[i] = json.dumps(record, default=str)
    if draw(st.booleans()):
        lines.insert(draw(st.integers(1, len(lines))), draw(st.text(max_size=20)))
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.slow
@SLOW_FUZZ
@given(st.data())
def test_fuzzed_progress_files_for_resume(workdir, capsys, progress_lines, data):
    from simulator.sweep.resume import progress_path

    d = _fresh(workdir)
    raw = data.draw(st.one_of(RAW, mutated_progress(progress_lines)))
    progress_path(d / "cmp").write_bytes(raw)
    check_command(
        capsys,
        ["compare", _scenario_file(d), "--executor", "serial", "--microbatches", "1", "--out", d / "cmp", "--resume"],
        d / "cmp",
        ("comparison.csv",),
    )


# ---------------------------------------------------------------------------------------------
# Command lines of each subcommand


WORDS = st.sampled_from(
    [
        "-1",
        "0",
        "1",
        "3",
        "1000000000000",
        "x",
        "",
        ".",
        "..",
        "-3",
        "1,2",
        "0,1",
        "nan",
        "dask://nowhere:1",
        "serial",
        "bogus",
        "throughput",
        "/dev/null",
        "s.yaml",
    ]
)
OPTIONS = {
    "run": ["--out", "--set", "--decode-sample", "--check", "--no-dag", "--force"],
    "dag": ["--out", "--set", "--force"],
    "compare": [
        "--gpus",
        "--microbatches",
        "--objective",
        "--jobs",
        "--executor",
        "--decode-sample",
        "--out",
        "--force",
        "--resume",
        "--set",
    ],
    "plot": [],
    "whatif": ["--target", "--knobs", "--jobs", "--out", "--set", "--force"],
    "validate": ["--out", "--force"],
    "import-hf": ["--out", "--name"],
    "calibrate": ["--from-json", "--device", "--base", "--out", "--name", "--measured-on"],
    "profiles": [],
}
FLAGS = {"--check", "--no-dag", "--force", "--resume"}


@st.composite
def command_lines(draw, command: str) -> list[str]:
    args = [command]
    for _ in range(draw(st.integers(0, 3))):
        option = draw(st.sampled_from(OPTIONS[command] or ["--help-not"]))
        args.append(option)
        if option not in FLAGS:
            args.append(draw(WORDS))
    return args


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(OPTIONS))
@SLOW_FUZZ
@given(data=st.data())
def test_fuzzed_command_lines(workdir, capsys, monkeypatch, command, data):
    d = _fresh(workdir)
    _scenario_file(d, workload={**TINY_MOE["workload"], "output_len_tokens": 2})
    monkeypatch.chdir(d)
    args = data.draw(command_lines(command))
    positional = {
        "run": "s.yaml",
        "dag": "s.yaml",
        "compare": "s.yaml",
        "whatif": "s.yaml",
        "plot": ".",
        "validate": "s.yaml",
        "import-hf": "s.yaml",
    }.get(command)
    if positional:
        args.insert(1, positional)
    if command == "compare" and "--executor" not in args:
        args += ["--executor", "serial", "--microbatches", "1"]
    if command == "whatif" and "--knobs" not in args:  # one cheap knob: the property is about the input
        args += ["--knobs", "kv_cache_dtype"]
    if command == "whatif" and "--jobs" not in args:
        args += ["--jobs", "1"]
    if command == "calibrate" and "--device" in args:
        return  # measures with PyTorch: not a property of the input
    try:
        check_command(capsys, args)
    except SystemExit as exc:  # argparse: usage error (exit 2) or --help (0)
        assert exc.code in (0, 2)
        capsys.readouterr()
    assert not [p for p in d.parent.rglob("*") if ".staging-" in p.name]


# ---------------------------------------------------------------------------------------------
# Serving request traces (`serving.workload.arrivals: {kind: trace, path: ...}`)

TRACE_SERVING = {
    "workload": {"arrivals": {"kind": "trace", "path": "requests.csv"}, "num_requests": 20},
    "scheduler": {"max_num_seqs": 8, "max_num_batched_tokens": 128, "kv_cache": {"capacity_blocks": 64}},
    "targets": {"ttft_p99_s": 10.0, "tpot_p99_s": 1.0},
}
trace_cells = st.one_of(
    st.integers(min_value=-5, max_value=200).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "x", "1e400", "10" * 300, "0.5", "-0.0", "nan"]),
)
trace_rows = st.lists(st.lists(trace_cells, min_size=0, max_size=4).map(",".join), max_size=12)


@FUZZ
@given(
    st.one_of(
        trace_rows.map(lambda rows: "\n".join(["arrival_s,input_tokens,output_tokens", *rows]).encode()),
        trace_rows.map(lambda rows: "\n".join(rows).encode()),
        RAW,
    )
)
def test_fuzzed_serving_traces(workdir, capsys, raw):
    d = _fresh(workdir)
    (d / "requests.csv").write_bytes(raw)
    scenario = _scenario_file(d, serving=TRACE_SERVING)
    check_command(capsys, ["serve", scenario, "--out", d / "out"], d / "out", ("summary.json", "requests.csv"))
