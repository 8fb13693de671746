"""Hardware profiles: registry, loading with overrides, the cache, bad files and efficiency-table interpolation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_MOE, make_scenario

from simulator.config import ScenarioError
from simulator.config.hardware import (
    PROFILES_DIR,
    HardwareProfile,
    ProfileError,
    ProfileInvalid,
    available_profiles,
    load_profile,
    load_profile_dict,
    profile_path,
    series_interpolate,
)

# every profile (the datasheet bases included); measurements/ holds data, not profiles
PROFILE_FILES = sorted(p for p in (ROOT / "hardware_profiles").rglob("*.yaml") if "measurements" not in p.parts)


def _datasheet_dict() -> dict:
    """The h100 datasheet profile as a mapping: a valid profile without calibration tables."""
    return yaml.safe_load((ROOT / "hardware_profiles" / "datasheet" / "h100-sxm-80gb.yaml").read_text())


def _write(directory: Path, name: str, data) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------------------------
# Every bundled profile


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: str(p.relative_to(ROOT / "hardware_profiles")))
def test_every_profile_file_loads_in_si_units_under_its_file_name(path: Path):
    profile = load_profile(str(path))
    assert isinstance(profile, HardwareProfile)
    assert profile.name == path.stem
    # SI units: bytes and FLOP/s, not GB and TFLOP/s
    assert profile.memory_bytes > 1e10
    assert profile.peak_flops_per_s.fp16 > 1e14
    assert profile.hbm_bytes_per_s > 1e11


def test_profile_files_were_found():
    assert len(PROFILE_FILES) >= len(available_profiles()) == 9


# ---------------------------------------------------------------------------------------------
# Registry: available_profiles and profile_path


def test_available_profiles_are_the_sorted_yaml_stems_of_the_bundled_directory():
    assert available_profiles() == [
        "a100-sxm-80gb",
        "b200-sxm-180gb",
        "gb200-nvl72-186gb",
        "generic-64gb",
        "h100-sxm-80gb",
        "h20-96gb",
        "h200-sxm-141gb",
        "mi300x-192gb",
        "mi325x-256gb",
    ]


def test_available_profiles_of_another_directory_ignores_non_yaml_files(tmp_path):
    for name in ("zeta.yaml", "alpha.yaml", "notes.txt", "beta.yml"):
        (tmp_path / name).write_text("x: 1\n")
    assert available_profiles(tmp_path) == ["alpha", "zeta"]


def test_profile_path_by_name_is_in_the_profiles_directory():
    assert profile_path("h100-sxm-80gb") == PROFILES_DIR / "h100-sxm-80gb.yaml"


def test_profile_path_by_existing_yaml_path_is_that_path(tmp_path):
    path = _write(tmp_path, "mine", {"name": "mine"})
    assert profile_path(str(path)) == path


def test_profile_path_by_name_in_another_directory(tmp_path):
    path = _write(tmp_path, "mine", {"name": "mine"})
    assert profile_path("mine", tmp_path) == path


def test_unknown_profile_name_raises_profile_error_listing_the_available_ones(tmp_path):
    _write(tmp_path, "one", {})
    _write(tmp_path, "two", {})
    with pytest.raises(ProfileError, match=r"^hardware profile 'three' not found; available: one, two$"):
        profile_path("three", tmp_path)


def test_missing_yaml_path_raises_profile_error():
    with pytest.raises(ProfileError, match="not found"):
        profile_path("/nonexistent/dir/gpu.yaml")


def test_empty_directory_says_none_found(tmp_path):
    with pytest.raises(ProfileError, match=r"available: \(none found\)"):
        profile_path("gpu", tmp_path)


# ---------------------------------------------------------------------------------------------
# Overrides


def test_overrides_deep_merge_nested_fields_and_keep_their_siblings():
    profile = load_profile("h100-sxm-80gb", {"intra_node": {"efficiency": 0.5}, "hbm_bytes_per_s": 2.0e12})
    assert profile.intra_node.efficiency == 0.5
    assert profile.intra_node.bytes_per_s == 450e9  # sibling kept from the file
    assert profile.intra_node.latency_s == 3e-6
    assert profile.hbm_bytes_per_s == 2.0e12
    assert profile.memory_bytes == 80.0e9  # untouched field
    assert profile.inter_node.efficiency == 0.85  # the other link untouched


def test_overrides_two_levels_deep_keep_the_rest_of_the_calibration():
    base = load_profile("h100-sxm-80gb")
    profile = load_profile("h100-sxm-80gb", {"calibration": {"eager_floor_s": {"gemm": 1e-5}}})
    assert profile.calibration.eager_floor_s == {**base.calibration.eager_floor_s, "gemm": 1e-5}
    assert profile.calibration.gemm == base.calibration.gemm


def test_overrides_do_not_leak_into_the_plain_profile():
    load_profile("h100-sxm-80gb", {"intra_node": {"efficiency": 0.5}})
    assert load_profile("h100-sxm-80gb").intra_node.efficiency == 0.82


def test_load_profile_dict_is_the_raw_file_mapping():
    data = load_profile_dict("h100-sxm-80gb")
    assert data["memory_bytes"] == 80000000000.0
    assert data["intra_node"] == {"bytes_per_s": 450000000000.0, "latency_s": 3.0e-06, "efficiency": 0.82}


def test_override_that_breaks_a_bound_is_a_validation_error():
    with pytest.raises(ProfileInvalid, match="compute_efficiency"):
        load_profile("h100-sxm-80gb", {"compute_efficiency": 1.5})


# ---------------------------------------------------------------------------------------------
# Bad profile files


def test_missing_field_names_the_field(tmp_path):
    data = _datasheet_dict()
    del data["hbm_bytes_per_s"]
    path = _write(tmp_path, "gpu", data)
    with pytest.raises(ProfileInvalid) as info:
        load_profile(str(path))
    assert [e["loc"] for e in info.value.errors] == [("hbm_bytes_per_s",)]
    assert info.value.errors[0]["type"] == "missing"
    assert str(info.value).endswith("hbm_bytes_per_s: required field is missing; add it")
    assert "\n" not in str(info.value)


def test_unknown_key_names_the_key(tmp_path):
    data = {**_datasheet_dict(), "hbm_bytes_per_sec": 1.0}
    path = _write(tmp_path, "gpu", data)
    with pytest.raises(ProfileInvalid) as info:
        load_profile(str(path))
    assert [(e["loc"], e["type"]) for e in info.value.errors] == [(("hbm_bytes_per_sec",), "extra_forbidden")]
    assert str(info.value).endswith("hbm_bytes_per_sec: unknown key; did you mean 'hbm_bytes_per_s'?")


def test_a_scenario_on_a_profile_missing_a_field_gets_one_line_naming_it(tmp_path):
    data = _datasheet_dict()
    del data["hbm_bytes_per_s"]
    path = _write(tmp_path, "gpu", data)
    with pytest.raises(ScenarioError) as info:
        make_scenario(TINY_MOE, hardware=str(path))
    assert str(info.value).endswith("hbm_bytes_per_s: required field is missing; add it")
    assert "\n" not in str(info.value)


def test_a_scenario_on_a_profile_with_a_misspelt_key_gets_the_suggestion(tmp_path):
    path = _write(tmp_path, "gpu", {**_datasheet_dict(), "hbm_bytes_per_sec": 1.0})
    with pytest.raises(ScenarioError, match=r"hbm_bytes_per_sec: unknown key; did you mean 'hbm_bytes_per_s'\?$"):
        make_scenario(TINY_MOE, hardware=str(path))


def test_a_profile_that_is_not_a_mapping_raises_profile_error(tmp_path):
    path = _write(tmp_path, "gpu", [1, 2, 3])
    with pytest.raises(ProfileError, match="expected a mapping of fields"):
        load_profile(str(path))


def test_a_profile_with_a_yaml_syntax_error_raises_profile_error_with_the_line(tmp_path):
    path = tmp_path / "gpu.yaml"
    path.write_text("name: x\nmemory_bytes: [1, 2\n")
    with pytest.raises(ProfileError, match=r"YAML syntax error at line \d+"):
        load_profile(str(path))


def test_swapped_fp8_and_fp16_peaks_are_refused(tmp_path):
    data = _datasheet_dict()
    data["peak_flops_per_s"] = {**data["peak_flops_per_s"], "fp8": 1e14}
    with pytest.raises(ProfileInvalid, match="fp8 is below fp16"):
        load_profile(str(_write(tmp_path, "gpu", data)))


# ---------------------------------------------------------------------------------------------
# Cache


def test_equal_inputs_give_the_same_object():
    assert load_profile("h100-sxm-80gb") is load_profile("h100-sxm-80gb")
    a = load_profile("h100-sxm-80gb", {"intra_node": {"efficiency": 0.5}})
    b = load_profile("h100-sxm-80gb", {"intra_node": {"efficiency": 0.5}})
    assert a is b


def test_name_and_path_of_the_same_file_share_the_cache():
    assert load_profile("h100-sxm-80gb") is load_profile(str(PROFILES_DIR / "h100-sxm-80gb.yaml"))


def test_different_overrides_give_different_profiles():
    a = load_profile("h100-sxm-80gb", {"intra_node": {"efficiency": 0.5}})
    b = load_profile("h100-sxm-80gb", {"intra_node": {"efficiency": 0.6}})
    assert (a.intra_node.efficiency, b.intra_node.efficiency) == (0.5, 0.6)


def test_an_edited_file_is_read_again(tmp_path):
    data = _datasheet_dict()
    path = _write(tmp_path, "gpu", data)
    assert load_profile(str(path)).memory_bytes == 80.0e9
    _write(tmp_path, "gpu", {**data, "memory_bytes": 82.0e9})  # a different size: a new file version
    assert load_profile(str(path)).memory_bytes == 82.0e9


def test_device_memory_is_what_engines_share_and_an_override_of_memory_drops_it(tmp_path):
    """The serving KV pool is sized from the driver's total (device_memory_bytes) where the profile has it; a
    scenario that gives another memory_bytes describes another device, so the base GPU's total no longer holds."""
    h100 = load_profile("h100-sxm-80gb")
    assert (h100.memory_bytes, h100.device_memory_bytes, h100.engine_memory_bytes) == (80.0e9, 85.03e9, 85.03e9)
    assert "device_memory_bytes" in h100.figures()
    smaller = load_profile("h100-sxm-80gb", {"memory_bytes": 64.0e9})
    assert (smaller.device_memory_bytes, smaller.engine_memory_bytes) == (None, 64.0e9)
    assert "device_memory_bytes" not in smaller.figures() and "device_memory_bytes" not in smaller.figure_sources
    both = load_profile("h100-sxm-80gb", {"memory_bytes": 64.0e9, "device_memory_bytes": 68.0e9})
    assert both.engine_memory_bytes == 68.0e9
    assert load_profile("a100-sxm-80gb").engine_memory_bytes == load_profile("a100-sxm-80gb").memory_bytes
    data = _datasheet_dict()
    path = _write(tmp_path, "gpu", {**data, "memory_bytes": 123.0e9, "device_memory_bytes": 85.0e9})
    with pytest.raises(
        ProfileInvalid, match=r"device_memory_bytes = 8.5e\+10 is not within -10 % / \+20 % of memory_bytes"
    ):
        load_profile(str(path))


def test_errors_are_not_cached(tmp_path):
    data = _datasheet_dict()
    path = _write(tmp_path, "gpu", {k: v for k, v in data.items() if k != "gpus_per_node"})
    with pytest.raises(ProfileInvalid):
        load_profile(str(path))
    _write(tmp_path, "gpu", data)
    assert load_profile(str(path)).gpus_per_node == 8


def test_an_unhashable_override_is_loaded_without_the_cache():
    data = load_profile_dict("h100-sxm-80gb")
    gemm = [list(row) for row in data["calibration"]["gemm"][:2]]
    profile = load_profile("h100-sxm-80gb", {"calibration": {"gemm": gemm}})
    assert len(profile.calibration.gemm) == 2


# ---------------------------------------------------------------------------------------------
# series_interpolate

# One series (key (1.0,)): y = 0.2 at x = 10, 0.8 at x = 10^4, 0.5 at x = 10^3.
SERIES = [(1.0, 10.0, 0.2), (1.0, 1000.0, 0.5), (1.0, 10000.0, 0.8)]


@pytest.mark.parametrize("x, y", [(10.0, 0.2), (1000.0, 0.5), (10000.0, 0.8)])
def test_grid_points_give_their_exact_values(x, y):
    assert series_interpolate(list(SERIES), (1.0,), x) == y


def test_between_two_points_interpolation_is_linear_in_log_x():
    pts = [(1.0, 10.0, 0.2), (1.0, 10000.0, 0.8)]
    # log10(100) is one third of the way from 1 to 4: 0.2 + (0.8 - 0.2) / 3 = 0.4.
    # (Linear in x would give 0.2 + 0.6 * 90 / 9990 = 0.2054.)
    assert series_interpolate(pts, (1.0,), 100.0) == pytest.approx(0.4, rel=1e-12)


def test_between_two_points_off_the_midpoint():
    pts = [(1.0, 10.0, 0.2), (1.0, 1000.0, 0.5)]
    # x = 20: lambda = ln 2 / ln 100 = 0.150515; 0.2 + 0.3 * 0.150515 = 0.2451545
    assert series_interpolate(pts, (1.0,), 20.0) == pytest.approx(0.2 + 0.3 * math.log(2) / math.log(100), rel=1e-12)
    assert series_interpolate(pts, (1.0,), 20.0) == pytest.approx(0.2451545, abs=1e-7)


@pytest.mark.parametrize("x, y", [(1.0, 0.2), (9.999, 0.2), (1e-40, 0.2), (10001.0, 0.8), (1e12, 0.8)])
def test_values_are_held_flat_outside_the_grid(x, y):
    assert series_interpolate(list(SERIES), (1.0,), x) == y


def test_points_given_out_of_order_are_sorted_by_x():
    assert series_interpolate(list(reversed(SERIES)), (1.0,), 100.0) == pytest.approx(0.35, rel=1e-12)


def test_an_exact_key_match_is_used_alone():
    pts = [(32.0, 10.0, 0.2), (128.0, 10.0, 0.9)]
    assert series_interpolate(pts, (32.0,), 10.0) == 0.2
    assert series_interpolate(pts, (128.0,), 10.0) == 0.9


def test_across_series_values_blend_by_inverse_squared_log_distance():
    pts = [(1.0, 10.0, 0.3), (8.0, 10.0, 0.8)]
    # key 2: log distances ln 2 and 2 ln 2, squared 1 : 4, weights 4 : 1 -> (4 * 0.3 + 0.8) / 5 = 0.4
    assert series_interpolate(pts, (2.0,), 10.0) == pytest.approx(0.4, rel=1e-12)


def test_two_part_keys_blend_in_both_dimensions():
    pts = [(1.0, 1.0, 10.0, 0.2), (4.0, 4.0, 10.0, 0.6)]
    # key (2, 2) sits halfway in log space in both parts: equal weights, the mean
    assert series_interpolate(pts, (2.0, 2.0), 10.0) == pytest.approx(0.4, rel=1e-12)


def test_no_points_is_an_error():
    with pytest.raises(ValueError, match="no calibration points"):
        series_interpolate([], (1.0,), 10.0)
