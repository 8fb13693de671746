"""Hardening 2 (issue 15): each defect found by a hostile tester, answered with one line and exit 2
(or handled as documented), never a hang, a memory blow-up, an "internal error" or a half-replaced
output directory. One test (or a few) per defect, named for the behaviour; each failed before its fix."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_MOE

from simulator import files
from simulator.cli import main
from simulator.config import ScenarioError, load_scenario, parse_scenario
from simulator.report import summary as summary_module

BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
)


def cli(capsys, *args) -> tuple[int, str]:
    """Run moesim in-process; (exit code, stderr)."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moesim: ") and "Traceback" not in err, err
    return lines[0]


def tiny(tmp_path: Path, name: str = "s.yaml", **sections) -> Path:
    data = copy.deepcopy(TINY_MOE)
    data.update(sections)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def profile_dict(name: str = "h200-sxm-141gb") -> dict:
    return yaml.safe_load((ROOT / "hardware_profiles" / f"{name}.yaml").read_text())


# ---------------------------------------------------------------------------------------------
# 1. YAML alias bombs; no long values in messages


@pytest.mark.parametrize("where", ["description", "hardware-extra-key", "recursive"])
def test_alias_bomb_is_refused_at_once(tmp_path, capsys, where):
    text = yaml.safe_dump({k: v for k, v in TINY_MOE.items() if k != "hardware"})
    if where == "description":
        text = "anchors:\n" + "".join("  " + line + "\n" for line in BOMB.splitlines()) + text + "description: *h\n"
        text += "hardware: h100-sxm-80gb\n"
    elif where == "hardware-extra-key":
        text = "anchors:\n" + "".join("  " + line + "\n" for line in BOMB.splitlines()) + text
        text += "hardware: {profile: h100-sxm-80gb, junk: *h}\n"
    else:
        text += "hardware: h100-sxm-80gb\ndescription: &r [*r]\n"
    path = tmp_path / "s.yaml"
    path.write_text(text)
    started = time.perf_counter()
    code, err = cli(capsys, "run", path, "--out", tmp_path / "out", "--no-dag")
    assert time.perf_counter() - started < 10
    assert code == 2
    line = one_line(err)
    assert "expands to more than" in line or "refers to a value that contains it" in line
    assert not (tmp_path / "out").exists()


def test_alias_bomb_in_a_set_override_is_refused(tmp_path, capsys):
    flow = (
        "[&a [x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a], &c [*b, *b, *b, *b, *b, *b, *b, *b], "
        "&d [*c, *c, *c, *c, *c, *c, *c, *c], &e [*d, *d, *d, *d, *d, *d, *d, *d], &f [*e, *e, *e, *e, *e, *e, *e, *e], *f]"
    )
    code, err = cli(
        capsys, "run", tiny(tmp_path), "--set", f"hardware.junk={flow}", "--out", tmp_path / "o", "--no-dag"
    )
    assert code == 2 and "expands to more than" in one_line(err)


def test_a_huge_value_is_quoted_as_a_short_excerpt(tmp_path):
    data = copy.deepcopy(TINY_MOE)
    data["model"]["num_layers"] = "many " * 100_000
    data["workload"]["routing"] = "z" * 100_000
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data, "s")
    assert len(str(info.value)) < 300


# ---------------------------------------------------------------------------------------------
# 2. Presets: the same limits as an inline model; syntax errors and duplicate keys


def _preset(tmp_path: Path, text: str) -> Path:
    (tmp_path / "m.yaml").write_text(text)
    return tiny(tmp_path, model={"preset": str(tmp_path / "m.yaml")})


def test_a_preset_gets_the_model_size_limits(tmp_path, capsys):
    model = {**TINY_MOE["model"], "num_experts": 10**9}
    code, err = cli(capsys, "run", _preset(tmp_path, yaml.safe_dump(model)), "--out", tmp_path / "o", "--no-dag")
    assert code == 2 and "num_experts = 1e+09 is out of range (at most 1e+05)" in one_line(err)


def test_a_preset_with_a_syntax_error_names_the_line(tmp_path, capsys):
    code, err = cli(
        capsys, "run", _preset(tmp_path, "name: x\nnum_layers: [1, 2\nhidden: 3\n"), "--out", tmp_path / "o"
    )
    assert code == 2 and "YAML syntax error at line 3" in one_line(err)


def test_a_preset_with_a_duplicate_key_is_refused(tmp_path, capsys):
    text = yaml.safe_dump(TINY_MOE["model"]) + "num_layers: 8\n"
    code, err = cli(capsys, "run", _preset(tmp_path, text), "--out", tmp_path / "o")
    assert code == 2 and "duplicate key 'num_layers'" in one_line(err)


def test_import_hf_applies_the_model_size_limits(tmp_path, capsys):
    cfg = {
        "model_type": "mixtral",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_local_experts": 10**9,
        "num_experts_per_tok": 2,
        "intermediate_size": 128,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code, err = cli(capsys, "import-hf", tmp_path / "config.json", "--out", tmp_path / "m.yaml")
    assert code == 2 and "num_experts = 1e+09 is out of range" in one_line(err)
    assert not (tmp_path / "m.yaml").exists()


# ---------------------------------------------------------------------------------------------
# 3. Calibration tables are validated


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: c["gemm"][0].__setitem__(3, -0.5), "fraction -0.5 must be in (0, 1.5]"),
        (lambda c: c.__setitem__("gemm", []), "calibration.gemm: empty table"),
        (lambda c: c["eager_floor_s"].__setitem__("gemm", 0.0), "calibration.eager_floor_s.gemm = 0.0"),
        (lambda c: c["elementwise_s_per_byte"].pop("copy"), "elementwise_s_per_byte: no entry for copy"),
        (lambda c: c["attention_decode"].append(list(c["attention_decode"][0])), "is given twice"),
    ],
)
def test_a_bad_calibration_table_is_one_line(tmp_path, capsys, change, expected):
    data = profile_dict()
    change(data["calibration"])
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(data))
    code, err = cli(capsys, "run", tiny(tmp_path, hardware=str(tmp_path / "gpu.yaml")), "--out", tmp_path / "o")
    assert code == 2 and expected in one_line(err)


def test_calibrate_from_empty_json_writes_nothing(tmp_path, capsys):
    (tmp_path / "m.json").write_text("{}")
    code, err = cli(capsys, "calibrate", "--from-json", tmp_path / "m.json", "--out", tmp_path / "p.yaml")
    assert code == 2 and "the fitted calibration is unusable" in one_line(err)
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.parametrize("junk", [{"gemm": [{"M": 1}]}, {"gemm": "x"}, [1, 2]])
def test_calibrate_from_malformed_json_is_one_line(tmp_path, capsys, junk):
    (tmp_path / "m.json").write_text(json.dumps(junk))
    code, err = cli(capsys, "calibrate", "--from-json", tmp_path / "m.json", "--out", tmp_path / "p.yaml")
    assert code == 2 and "--from-json" in one_line(err)


@pytest.mark.parametrize(
    "edit, expected",
    [
        ({"drop": "hbm_bytes_per_s"}, "hbm_bytes_per_s: required field is missing"),
        ({"add": "hbm_bytes_per_sec"}, "did you mean 'hbm_bytes_per_s'"),
    ],
)
def test_calibrate_with_a_broken_base_profile_is_one_line(tmp_path, capsys, edit, expected):
    data = profile_dict("a100-sxm-80gb")
    data.pop(edit.get("drop"), None)
    if "add" in edit:
        data[edit["add"]] = 1.0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    code, err = cli(
        capsys,
        "calibrate",
        "--from-json",
        ROOT / "hardware_profiles/measurements/h200_micro.json",
        "--base",
        tmp_path / "bad.yaml",
        "--out",
        tmp_path / "p.yaml",
    )
    assert code == 2 and expected in one_line(err)


# ---------------------------------------------------------------------------------------------
# 4. Relative paths are relative to the file that names them


def test_a_relative_profile_path_is_relative_to_the_scenario_file(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "gpu.yaml").write_text(yaml.safe_dump(profile_dict("a100-sxm-80gb")))
    (tmp_path / "cfg" / "m.yaml").write_text(yaml.safe_dump(TINY_MOE["model"]))
    path = tiny(tmp_path / "cfg", hardware={"profile": "gpu.yaml"}, model={"preset": "m.yaml"})
    (tmp_path / "elsewhere").mkdir()
    for cwd in (tmp_path, tmp_path / "elsewhere", tmp_path / "cfg"):
        monkeypatch.chdir(cwd)
        scenario = load_scenario(path)
        assert Path(scenario.hardware.profile) == tmp_path / "cfg" / "gpu.yaml"


def test_a_relative_profile_path_in_a_cases_file_is_relative_to_it(tmp_path, monkeypatch):
    from simulator.calibration.validate import load_cases

    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(profile_dict("a100-sxm-80gb")))
    scenario = {k: v for k, v in TINY_MOE.items() if k != "name"}
    (tmp_path / "cases.yaml").write_text(
        yaml.safe_dump(
            {
                "cases": [
                    {
                        "name": "c",
                        "metric": "total_s",
                        "measured": 1.0,
                        "scenario": {**scenario, "hardware": "gpu.yaml"},
                    }
                ]
            }
        )
    )
    monkeypatch.chdir(tmp_path.parent)
    assert load_cases(tmp_path / "cases.yaml")[0].scenario["hardware"] == str(tmp_path / "gpu.yaml")


# ---------------------------------------------------------------------------------------------
# 5. Output directories


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_replacement_that_fails_puts_the_old_run_back(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert cli(capsys, "run", tiny(tmp_path), "--out", out, "--no-dag")[0] == 0
    before = (out / "summary.json").read_bytes()
    real = os.replace

    def fail_on_new(src, dst):
        if Path(src).name.startswith(".out.staging-"):
            raise PermissionError(13, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", fail_on_new)
    code, err = cli(capsys, "run", tiny(tmp_path), "--out", out, "--no-dag")
    assert code == 2 and "cannot replace it (Permission denied)" in one_line(err)
    assert (out / "summary.json").read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_out_dot_is_refused_before_simulating(tmp_path, capsys, monkeypatch):
    path = tiny(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, err = cli(capsys, "run", path, "--out", ".", "--force", "--no-dag")
    assert code == 2 and "the current directory (or one above it) cannot be replaced" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_stale_staging_directories_of_killed_runs_are_removed(tmp_path, capsys):
    dead = tmp_path / ".out.staging-999999999-abc"
    old_style = tmp_path / ".out.staging-k3j4h5"
    for d in (dead, old_style):
        d.mkdir()
        (d / "summary.json").write_text("{}")
    live = tmp_path / f".out.staging-{os.getppid()}-xyz"
    live.mkdir()
    assert cli(capsys, "run", tiny(tmp_path), "--out", tmp_path / "out", "--no-dag")[0] == 0
    assert _leftovers(tmp_path) == [live.name]


def test_sigterm_is_handled_like_ctrl_c(tmp_path, capsys, monkeypatch):
    real = summary_module.write_atomic

    def write_then_terminate(path, data):
        real(path, data)
        if Path(path).name == "summary.json":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(summary_module, "write_atomic", write_then_terminate)
    code, err = cli(capsys, "run", tiny(tmp_path), "--out", tmp_path / "out", "--no-dag")
    assert code == 143 and "terminated; no output was written" in one_line(err)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is not None


def test_a_symlinked_out_is_followed(tmp_path, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert cli(capsys, "run", tiny(tmp_path), "--out", tmp_path / "link", "--no-dag")[0] == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "summary.json").is_file()
    assert cli(capsys, "run", tiny(tmp_path), "--out", tmp_path / "link", "--no-dag")[0] == 0  # replaced again
    assert (tmp_path / "link").is_symlink()


def test_a_dangling_symlink_out_is_refused(tmp_path, capsys):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    code, err = cli(capsys, "run", tiny(tmp_path), "--out", tmp_path / "link", "--no-dag")
    assert code == 2 and "symbolic link" in one_line(err)


def test_an_unwritable_out_is_refused_before_simulating(tmp_path, capsys, monkeypatch):
    import simulator.pipeline

    monkeypatch.setattr(simulator.pipeline, "run_scenario", lambda *a, **k: pytest.fail("simulated first"))
    (tmp_path / "blocker").write_text("x")
    code, err = cli(capsys, "run", tiny(tmp_path), "--out", tmp_path / "blocker" / "run", "--no-dag")
    assert code == 2 and "is a file, not a directory" in one_line(err)


# ---------------------------------------------------------------------------------------------
# 6. compare


def _compare(capsys, tmp_path, *extra):
    return cli(capsys, "compare", tiny(tmp_path), "--executor", "serial", "--microbatches", "1", *extra)


def test_compare_checks_out_before_the_sweep(tmp_path, capsys, monkeypatch):
    import simulator.api as api

    monkeypatch.setattr(api, "run_sweep", lambda *a, **k: pytest.fail("swept first"))
    (tmp_path / "blocker").write_text("x")
    code, err = _compare(capsys, tmp_path, "--out", tmp_path / "blocker" / "cmp")
    assert code == 2 and "is a file, not a directory" in one_line(err)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("keep")
    code, err = _compare(capsys, tmp_path, "--out", tmp_path / "foreign")
    assert code == 2 and "not made by moesim" in one_line(err)
    assert not list(tmp_path.glob("*.progress.jsonl"))


def test_compare_checks_the_executor_before_the_progress_file(tmp_path, capsys):
    code, err = cli(capsys, "compare", tiny(tmp_path), "--executor", "bogus", "--out", tmp_path / "cmp")
    assert code == 2 and "--executor bogus" in one_line(err)
    assert not list(tmp_path.glob("*.progress.jsonl"))


def test_compare_bounds_gpus(tmp_path, capsys):
    started = time.perf_counter()
    code, err = cli(capsys, "compare", tiny(tmp_path), "--gpus", 10**12, "--out", tmp_path / "cmp")
    assert code == 2 and "--gpus 1000000000000" in one_line(err) and time.perf_counter() - started < 10


def test_a_second_sweep_into_the_same_out_is_refused(tmp_path, capsys):
    from simulator.sweep.resume import progress_path

    out = tmp_path / "cmp"
    progress_path(out).write_text(json.dumps({"format": "moesim-sweep-progress/1", "pid": os.getppid()}) + "\n")
    code, err = _compare(capsys, tmp_path, "--out", out)
    assert code == 2 and f"another moesim compare (process {os.getppid()})" in one_line(err)


@pytest.mark.parametrize("header", ['{"format": "moesim-sweep-progress/1", "n": ' + "9" * 5000 + "}", "[" * 100_000])
def test_a_progress_header_json_cannot_hold_is_not_a_progress_file(tmp_path, capsys, header):
    """An integer past Python's digit limit (found by the long fuzz run) or nesting past the recursion limit:
    json.loads raises ValueError / RecursionError, a one-line answer, not an internal error."""
    from simulator.sweep.resume import progress_path

    out = tmp_path / "cmp"
    out.mkdir()
    progress_path(out).write_text(header + "\n")
    code, err = _compare(capsys, tmp_path, "--out", out, "--resume")
    assert code == 2 and "is not a moesim sweep progress file" in one_line(err)


def test_a_progress_line_of_wrong_types_is_reported_as_damaged(tmp_path, capsys, monkeypatch):
    import simulator.api as api
    from simulator.sweep import SweepInterrupted
    from simulator.sweep.resume import progress_path

    out = tmp_path / "cmp"
    real = api.run_sweep

    def stop_after_all(*args, **kwargs):
        real(*args, **kwargs)
        raise SweepInterrupted(1, 1)

    monkeypatch.setattr(api, "run_sweep", stop_after_all)
    assert _compare(capsys, tmp_path, "--out", out)[0] == 130
    lines = progress_path(out).read_text().splitlines()
    record = json.loads(lines[1])
    record["ttft_mean_s"] = "fast"
    record["targets"] = [["ttft_s", "max", 1.0, 0.5, "yes"]]
    progress_path(out).write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    monkeypatch.setattr(api, "run_sweep", real)
    code, err = _compare(capsys, tmp_path, "--out", out, "--resume")
    assert code == 2 and "line 2 is damaged" in one_line(err)
    # a simulated layout without the figures the ranking reads (found by the long fuzz run: an internal KeyError)
    record = json.loads(lines[1])
    assert record["status"] == "ok"
    record["throughput"] = {}
    progress_path(out).write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    code, err = _compare(capsys, tmp_path, "--out", out, "--resume")
    assert code == 2 and "line 2 is damaged" in one_line(err)


def test_progress_records_are_strict_json():
    from simulator.config import ParallelSpec
    from simulator.metrics import THROUGHPUTS
    from simulator.sweep.results import LayoutResult
    from simulator.sweep.resume import from_record, to_record

    figures = {**dict.fromkeys(THROUGHPUTS, 1.0), "x": math.nan}
    result = LayoutResult(0, ParallelSpec(), True, "ok", ttft_mean_s=math.inf, tpot_s=-math.inf, throughput=figures)
    text = json.dumps(to_record(result), allow_nan=False)  # raises on NaN or infinity
    back = from_record(json.loads(text))
    assert back.ttft_mean_s == math.inf and back.tpot_s == -math.inf and math.isnan(back.throughput["x"])


# ---------------------------------------------------------------------------------------------
# 7. plot


@pytest.mark.parametrize("bad", [[1, 2], {"scenario": "x"}, "SHAPE", "PAGE"])
def test_plot_refuses_a_summary_of_the_wrong_shape_and_touches_nothing(tmp_path, capsys, bad):
    out = tmp_path / "out"
    assert cli(capsys, "run", tiny(tmp_path), "--out", out, "--no-dag")[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    if bad == "SHAPE":  # the top-level fields right, a nested one wrong
        summary["memory"] = [{"gpu": "zero"}]
        bad = summary
    if bad == "PAGE":  # a nested field only the page's template reads (found by the long fuzz run)
        summary["workload"] = {}
        bad = summary
    (out / "summary.json").write_text(json.dumps(bad))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, err = cli(capsys, "plot", out)
    assert code == 2 and "summary.json" in one_line(err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert _leftovers(out) == [".moesim-run"]


# ---------------------------------------------------------------------------------------------
# 8. Extreme but finite numbers


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"hardware": {"profile": "h100-sxm-80gb", "hbm_bytes_per_s": 1e-300}}, "hbm_bytes_per_s = 1e-300"),
        ({"hardware": {"profile": "h100-sxm-80gb", "kernel_overhead_s": 1e300}}, "kernel_overhead_s"),
        ({"workload": {**TINY_MOE["workload"], "routing": {"zipf": 1e300}}}, "workload.routing.zipf"),
        (
            {"workload": {**TINY_MOE["workload"], "routing": {"loads": [1.7e308, 1.7e308, 1.0, 1.0]}}},
            "sum of the fractions overflows",
        ),
        ({"workload": {**TINY_MOE["workload"], "input_len_tokens": 10**4000}}, "= 1e+4000 tokens exceeds"),
        ({"model": {**TINY_MOE["model"], "num_layers": 10**4000}}, "model.num_layers = inf is out of range"),
    ],
)
def test_extreme_finite_numbers_are_one_line(tmp_path, section, expected):
    data = {**copy.deepcopy(TINY_MOE), **section}
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data, "s")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_10_to_the_4000_length_in_a_file_is_one_line(tmp_path, capsys):
    path = tiny(tmp_path)
    path.write_text(path.read_text().replace("input_len_tokens: 16", "input_len_tokens: 1" + "0" * 4000))
    code, err = cli(capsys, "run", path, "--out", tmp_path / "o", "--no-dag")
    assert code == 2 and "tokens exceeds" in one_line(err)


# ---------------------------------------------------------------------------------------------
# 9. File size


def test_a_huge_scenario_file_is_refused_at_once(tmp_path, capsys):
    path = tiny(tmp_path)
    path.write_text(path.read_text() + "".join(f"# padding line {i}\n" for i in range(200_000)))
    started = time.perf_counter()
    code, err = cli(capsys, "run", path, "--out", tmp_path / "o", "--no-dag")
    assert code == 2 and "is too large for a scenario" in one_line(err) and time.perf_counter() - started < 5


# ---------------------------------------------------------------------------------------------
# 10. Smaller ones


def test_run_refuses_a_negative_decode_sample(tmp_path, capsys):
    code, err = cli(capsys, "run", tiny(tmp_path), "--decode-sample", "-3", "--out", tmp_path / "o")
    assert code == 2 and "--decode-sample -3" in one_line(err)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("cases: []\n", "the list is empty"),
        (b"\x00\x01\x02", "binary file"),
        (b"cases: \xff\xfe\n", "not UTF-8"),
        ("cases: []\ncases: []\n", "duplicate key 'cases'"),
    ],
)
def test_validate_answers_bad_cases_files_with_one_line(tmp_path, capsys, content, expected):
    path = tmp_path / "cases.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, err = cli(capsys, "validate", path)
    assert code == 2 and expected in one_line(err)


HF = {
    "model_type": "mixtral",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "intermediate_size": 128,
}


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"torch_dtype": ["bf16"]}, "torch_dtype"),
        ({"quantization_config": [1]}, "quantization_config"),
        ({"num_hidden_layers": [2]}, "num_layers"),
    ],
)
def test_import_hf_answers_wrong_types_with_one_line(tmp_path, capsys, change, expected):
    (tmp_path / "config.json").write_text(json.dumps({**HF, **change}))
    code, err = cli(capsys, "import-hf", tmp_path / "config.json")
    assert code == 2 and expected in one_line(err)


def test_import_hf_with_an_unwritable_out_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(HF))
    (tmp_path / "blocker").write_text("x")
    code, err = cli(capsys, "import-hf", tmp_path / "config.json", "--out", tmp_path / "blocker" / "m.yaml")
    assert code == 2 and "blocker" in one_line(err)


def test_import_hf_unknown_activation_note_is_in_the_spec(tmp_path):
    from simulator.config.import_hf import import_file

    (tmp_path / "config.json").write_text(json.dumps({**HF, "hidden_act": "squared_relu"}))
    text, _, notes, _ = import_file(tmp_path / "config.json")
    assert any("squared_relu" in n and "SwiGLU" in n for n in notes) and "# NOTE: hidden_act" in text


def test_profiles_lists_the_good_ones_and_names_the_broken(tmp_path, capsys, monkeypatch):
    import simulator.config.hardware as hardware

    (tmp_path / "good.yaml").write_text(yaml.safe_dump(profile_dict("a100-sxm-80gb")))
    (tmp_path / "broken.yaml").write_text("name: [\n")
    monkeypatch.setattr(hardware, "PROFILES_DIR", tmp_path)
    code = main(["profiles"])
    out, err = capsys.readouterr()
    assert code == 2 and "good" in out
    assert "broken" in one_line(err)


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    def full(fd, mode):
        os.close(fd)
        raise OSError(27, "File too large")

    monkeypatch.setattr(files.os, "fdopen", full)
    with pytest.raises(files.OutputError, match=r"summary.json: cannot write it \(File too large\)"):
        files.write_atomic(tmp_path / "summary.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_an_oserror_is_exit_2_naming_the_file(tmp_path, capsys, monkeypatch):
    import simulator.commands.profiles as profiles

    def boom(args, console):
        raise OSError(28, "No space left on device", "/x/summary.json")

    monkeypatch.setattr(profiles, "command", boom)
    code, err = cli(capsys, "profiles")
    assert code == 2 and "/x/summary.json: No space left on device" in one_line(err)


def test_without_graphviz_run_says_so_before_simulating(tmp_path, capsys, monkeypatch):
    import simulator.pipeline
    import simulator.report.dot as dot

    monkeypatch.setattr(dot.shutil, "which", lambda name: None)
    monkeypatch.setattr(simulator.pipeline, "run_scenario", lambda *a, **k: pytest.fail("simulated first"))
    code, err = cli(capsys, "run", tiny(tmp_path), "--out", tmp_path / "o")
    assert code == 2 and "install it (apt-get install graphviz), or pass --no-dag" in one_line(err)


def test_tpot_of_a_single_output_token_is_undefined(tmp_path, capsys):
    path = tiny(tmp_path, workload={**TINY_MOE["workload"], "output_len_tokens": 1})
    assert cli(capsys, "run", path, "--out", tmp_path / "o", "--no-dag")[0] == 0
    assert "undefined (one output token)" in (tmp_path / "o" / "summary.md").read_text()


# ---------------------------------------------------------------------------------------------
# Found by the long fuzz run at 1,500 examples (benchmarks/fuzz_long.py)


@pytest.mark.parametrize("command", ["compare", "whatif"])
@pytest.mark.parametrize("jobs", ["0", "1025", "1000000000000"])
def test_jobs_past_what_a_process_pool_takes_is_one_line(tmp_path, capsys, command, jobs):
    # 10**12 workers ended in an internal OverflowError (the pool's semaphore takes a C int)
    code, err = cli(capsys, command, tiny(tmp_path), "--jobs", jobs, "--out", tmp_path / "o")
    assert code == 2 and f"--jobs {jobs}: expected 1 to 1024 worker processes" in one_line(err)
    assert not (tmp_path / "o").exists()


TRACE = {
    "workload": {"arrivals": {"kind": "trace", "path": "requests.csv"}, "num_requests": 20},
    "scheduler": {"max_num_seqs": 8, "max_num_batched_tokens": 128, "kv_cache": {"capacity_blocks": 64}},
}


def test_a_trace_arriving_past_the_clocks_resolution_is_refused(tmp_path, capsys):
    # at 2**42 s a one-token request finished at its arrival (the iteration rounded away): a division by zero
    (tmp_path / "requests.csv").write_text("arrival_s,input_tokens,output_tokens\n4398046511104.0,1,1\n")
    code, err = cli(capsys, "serve", tiny(tmp_path, serving=TRACE), "--out", tmp_path / "o")
    assert code == 2
    assert "requests.csv line 2: arrival_s = '4398046511104.0' is past 8.59e+09 s" in one_line(err)
    (tmp_path / "requests.csv").write_text("arrival_s,input_tokens,output_tokens\n1764806400.0,1,1\n")  # a Unix time
    assert cli(capsys, "serve", tiny(tmp_path, serving=TRACE), "--out", tmp_path / "o")[0] in (0, 1)


def test_a_rate_so_low_the_arrivals_pass_the_clocks_resolution_is_refused(tmp_path, capsys):
    # rate 1e-12 / s: arrivals at ~1e12 s, where TTFTs rounded to 0 and 15.6 ms (printed as if measured)
    serving = {
        "workload": {
            "arrivals": {"kind": "poisson", "rate_per_s": 1e-12},
            "num_requests": 20,
            "input_len": {"kind": "fixed", "tokens": 8},
            "output_len": {"kind": "fixed", "tokens": 4},
        },
        "scheduler": {"max_num_seqs": 8, "max_num_batched_tokens": 128, "kv_cache": {"capacity_blocks": 64}},
    }
    code, err = cli(capsys, "serve", tiny(tmp_path, serving=serving), "--out", tmp_path / "o")
    assert code == 2 and "workload.arrivals: the requests arrive until" in one_line(err)
    assert "raise the rate or send fewer requests" in err
