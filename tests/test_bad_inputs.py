"""Every bad input of the table in docs/bad-input.md, through the real command line: one line on stderr naming
the field and the fix, exit code 2, no traceback, and nothing left in the output directory's place.

The rows run as subprocesses (`python -m simulator.cli`), all started at once by a module fixture so
that the table costs a few seconds of wall time, not one interpreter start-up after another.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_MOE


def _scenario(**changes) -> dict:
    """TINY_MOE with `section.key` (or top-level `section`) replaced; a value of ... deletes it."""
    data = copy.deepcopy(TINY_MOE)
    for dotted, value in changes.items():
        node, *rest = dotted.split("__")
        target, key = (data[node], rest[0]) if rest else (data, node)
        if value is ...:
            del target[key]
        else:
            target[key] = value
    return data


def _profile(**changes) -> dict:
    data = yaml.safe_load((ROOT / "hardware_profiles" / "a100-sxm-80gb.yaml").read_text())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


@dataclass(frozen=True)
class Row:
    """One row of the table: the input, the answer's fragment, and its wording for docs/bad-input.md."""

    id: str
    bad_input: str
    expected: str
    make: Callable[[Path], list[str]]  # writes the input under a directory; returns the CLI arguments


def _file(text: str | bytes | dict, name: str = "s.yaml") -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        path = d / name
        if isinstance(text, dict):
            path.write_text(yaml.safe_dump(text))
        elif isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return ["run", str(path)]

    return make


def _with_profile(profile: dict) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        (d / "gpu.yaml").write_text(yaml.safe_dump(profile))
        return _file(_scenario(hardware=str(d / "gpu.yaml")))(d)

    return make


def _directory(d: Path) -> list[str]:
    (d / "scenarios.yaml").mkdir()
    return ["run", str(d / "scenarios.yaml")]


def _unwritable_out(d: Path) -> list[str]:
    (d / "blocker").write_text("a file where a directory is needed")
    return _file(TINY_MOE)(d) + ["--out", str(d / "blocker" / "run")]


def _foreign_out(d: Path) -> list[str]:
    (d / "out").mkdir()
    (d / "out" / "precious.txt").write_text("keep")
    return _file(TINY_MOE)(d)


ROWS = [
    Row(
        "yaml-syntax",
        "YAML syntax error",
        "YAML syntax error at line 3, column 9: expected ',' or ']'",
        _file("name: x\nmodel: [1, 2\nworkload: 3\n"),
    ),
    Row(
        "duplicate-key",
        "a key given twice",
        "YAML syntax error at line 2, column 1: duplicate key 'name'",
        _file("name: x\nname: y\n"),
    ),
    Row(
        "unknown-key",
        "unknown key (typo)",
        "parallel.tpp: unknown key; did you mean 'tp'?",
        _file(_scenario(parallel__tpp=2)),
    ),
    Row(
        "unknown-target",
        "unknown target metric",
        "targets.ttft: unknown key; did you mean 'ttft_s'?",
        _file(_scenario(targets={"ttft": {"max": 1}})),
    ),
    Row(
        "wrong-type",
        "wrong type",
        "model.num_layers: Input should be a valid integer",
        _file(_scenario(model__num_layers="many")),
    ),
    Row(
        "missing-field",
        "missing required field",
        "model.hidden_size: required field is missing; add it",
        _file(_scenario(model__hidden_size=...)),
    ),
    Row(
        "zero-size",
        "zero size",
        "workload.batch_size = 0: input should be greater than 0",
        _file(_scenario(workload__batch_size=0)),
    ),
    Row(
        "negative-size",
        "negative size",
        "model.hidden_size = -64: input should be greater than 0",
        _file(_scenario(model__hidden_size=-64)),
    ),
    Row(
        "nan",
        "NaN",
        "model.capacity_factor: Input should be a finite number",
        _file(_scenario(model__capacity_factor=float("nan"))),
    ),
    Row(
        "inf",
        "infinity (scenario or hardware override)",
        "hardware (h100-sxm-80gb): hbm_bytes_per_s: Input should be a finite number",
        _file(_scenario(hardware={"profile": "h100-sxm-80gb", "hbm_bytes_per_s": float("inf")})),
    ),
    Row(
        "huge-workload",
        "10^30-token workload",
        "workload: batch_size * (input + output) = 4e+30 tokens exceeds the supported 1e+09",
        _file(_scenario(workload__input_len_tokens=10**30)),
    ),
    Row(
        "huge-model",
        "absurd model size (10^9 experts)",
        "model.num_experts = 1e+09 is out of range (at most 1e+05)",
        _file(_scenario(model__num_experts=10**9)),
    ),
    Row(
        "non-dividing-tp",
        "non-dividing parallel degree",
        "parallel.tp: tp = 3 must divide model.num_heads = 4 (try [1, 2, 4])",
        _file(_scenario(parallel__tp=3)),
    ),
    Row(
        "non-dividing-ep",
        "expert parallelism not dividing experts",
        "parallel.ep: ep = 3 must divide model.num_experts = 4 (try ep in [1, 2, 4], or parallel.redundant_experts = 2 "
        "plus any multiple of 3: copies of the busiest experts, as EPLB places them)",
        _file(_scenario(parallel__ep=3)),
    ),
    Row(
        "gpu-count",
        "GPU count mismatch",
        "cluster.num_gpus: num_gpus = 8 must equal pp * dp * tp = 2 * 1 * 2 = 4",
        _file(_scenario(cluster={"num_gpus": 8, "gpus_per_node": 8})),
    ),
    Row(
        "missing-profile",
        "missing hardware profile",
        "hardware profile 'h999' not found; available: a100-sxm-80gb, b200-sxm-180gb, gb200-nvl72-186gb, generic-64gb, h100-sxm-80gb, h20-96gb, h200-sxm-141gb, mi300x-192gb, mi325x-256gb",
        _file(_scenario(hardware="h999")),
    ),
    Row(
        "profile-missing-field",
        "profile with a missing field",
        "hbm_bytes_per_s: required field is missing; add it",
        _with_profile(_profile(hbm_bytes_per_s=...)),
    ),
    Row(
        "profile-contradictory",
        "profile with contradictory fields",
        "peak_flops_per_s.fp8 is below fp16: the figures look swapped",
        _with_profile(_profile(peak_flops_per_s={"fp32": 19.5e12, "fp16": 312e12, "bf16": 312e12, "fp8": 1e12})),
    ),
    Row(
        "profile-binary",
        "binary profile file",
        "binary file; give a profile YAML file",
        lambda d: (d / "gpu.yaml").write_bytes(b"\x00\x01\xff") and _file(_scenario(hardware=str(d / "gpu.yaml")))(d),
    ),
    Row("not-a-mapping", "a YAML list or scalar", "expected a YAML mapping with sections", _file("- 1\n- 2\n")),
    Row("empty-file", "empty file", "empty file; a scenario needs model, hardware", _file("")),
    Row("binary-file", "binary file", "binary file; give a scenario YAML file", _file(b"\x00\x01\x02\xff")),
    Row("not-utf8", "not UTF-8 text", "not UTF-8 text (bad byte at offset 6)", _file(b"name: \xff\xfe\n")),
    Row(
        "deep-nesting",
        "YAML nested thousands deep",
        "YAML nested too deeply",
        _file("a: " + "[" * 5000 + "]" * 5000 + "\n"),
    ),
    Row("directory", "a directory instead of a file", "is a directory; give a scenario YAML file", _directory),
    Row(
        "no-file",
        "a file that does not exist",
        "no-such.yaml: no such file",
        lambda d: ["run", str(d / "no-such.yaml")],
    ),
    Row(
        "bad-name", "a name that is a path", "name = '../escape': give a plain name", _file(_scenario(name="../escape"))
    ),
    Row(
        "bad-set",
        "a malformed --set",
        "--set parallel.tp: expected key.path=value",
        lambda d: _file(TINY_MOE)(d) + ["--set", "parallel.tp"],
    ),
    Row(
        "bool-size",
        "true/false where a number belongs",
        "parallel.tp = true: expected a number, not true/false",
        _file(_scenario(parallel__tp=True)),
    ),
    Row(
        "unwritable-out",
        "an unwritable output directory",
        "blocker is a file, not a directory); choose a writable directory",
        _unwritable_out,
    ),
    Row(
        "foreign-out",
        "an output directory moesim did not make",
        "was not made by moesim; pass --force to replace it",
        _foreign_out,
    ),
]


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Run every row's command (each in its own directory, --out <dir>/out unless it sets one)."""

    # pytest's temporary-directory factory is not thread-safe: make every directory here first.
    dirs = {row.id: tmp_path_factory.mktemp(row.id) for row in ROWS}

    def run(row: Row) -> tuple[Path, subprocess.CompletedProcess]:
        d = dirs[row.id]
        args = row.make(d)
        if "--out" not in args:
            args += ["--out", str(d / "out")]
        args.append("--no-dag")
        proc = subprocess.run(
            [sys.executable, "-m", "simulator.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
        )
        return d, proc

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip((r.id for r in ROWS), pool.map(run, ROWS)))


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_bad_input_gets_one_line_exit_2_and_no_output(row: Row, answers):
    directory, proc = answers[row.id]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("moesim: "), proc.stderr
    assert row.expected in lines[0]
    left = sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.name == "out")
    if row.id == "foreign-out":
        assert left == ["out"] and (directory / "out" / "precious.txt").read_text() == "keep"
    else:
        assert left == [], left  # no output directory, no staging directory, no temporary file
    assert not (ROOT / "escape").exists()


def table_markdown() -> str:
    """The table of docs/bad-input.md, generated from the rows (so the table and the tests cannot drift)."""
    lines = ["| Bad input | moesim's answer (one line on stderr, exit code 2) |", "|---|---|"]
    lines += [f"| {r.bad_input} | `moesim: ...{r.expected}` |" for r in ROWS]
    return "\n".join(lines)
