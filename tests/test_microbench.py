"""simulator.calibration.microbench (and calibration.e2e): the grids and format of shared/calibration/h200_micro.json,
the error messages without torch or a GPU, a CPU --quick smoke run, and the decode MoE dispatch."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from simulator.calibration import e2e as microbench_e2e
from simulator.calibration import microbench

HAS_TORCH = importlib.util.find_spec("torch") is not None
# The repository's copy of ../shared/calibration/h200_micro.json (hardware_profiles/measurements/README.md)
SHARED_MICRO = Path(__file__).resolve().parents[1] / "hardware_profiles" / "measurements" / "h200_micro.json"

#: Entry fields of each section of h200_micro.json (e2e_dev holds two kinds of entry).
FIELDS = {
    "gemm": [{"M", "K", "N", "dtype", "s", "tflops", "gbps"}],
    "bmm": [{"E", "C", "K", "N", "s", "tflops"}],
    "sdpa_prefill": [{"B", "H", "S", "D", "causal", "s", "tflops"}],
    "sdpa_decode": [{"B", "H", "L", "D", "s", "gbps"}],
    "elementwise": [{"op", "shape", "s", "bytes_in"}],
    "copy": [{"bytes", "s", "gbps_rw"}],
    "launch": [{"op", "s"}],
    "e2e_dev": [
        {"case", "impl", "phase", "batch", "seq", "layers", "s"},
        {"case", "phase", "layers", "batch", "kv_len", "s_eager", "s_cuda_graph"},
    ],
    "kernel_breakdown": [
        {"case", "impl", "phase", "batch", "seq", "layers", "wall_s", "kernel_total_s", "top_kernels"}
    ],
}
ENV_FIELDS = {"device", "torch", "python", "name", "sm_count", "mem_bytes", "cuda", "cudnn"}


def _field_sets(section: list[dict]) -> list[set]:
    unique: list[set] = []
    for entry in section:
        if set(entry) not in unique:
            unique.append(set(entry))
    return unique


@pytest.mark.skipif(not SHARED_MICRO.exists(), reason="hardware_profiles/measurements/h200_micro.json missing")
def test_expected_fields_are_those_of_the_shared_file():
    data = json.loads(SHARED_MICRO.read_text())
    assert set(data) == {"env", *FIELDS}
    assert set(data["env"]) == ENV_FIELDS
    for key, fields in FIELDS.items():
        assert sorted(map(sorted, _field_sets(data[key]))) == sorted(map(sorted, fields)), key


@pytest.mark.skipif(not SHARED_MICRO.exists(), reason="hardware_profiles/measurements/h200_micro.json missing")
def test_default_grids_are_those_of_the_shared_file():
    data = json.loads(SHARED_MICRO.read_text())
    grids = microbench.GRIDS
    assert [(g["M"], g["K"], g["N"]) for g in data["gemm"]] == list(grids["gemm"])
    assert [(g["E"], g["C"], g["K"], g["N"]) for g in data["bmm"]] == [
        (e, c, k, n) for e, k, n, capacities in grids["bmm"] for c in capacities
    ]
    # plus MLA's decompressed prefill at head dim 192, which the shared file does not measure
    assert [(a["B"], a["H"], a["S"], a["D"]) for a in data["sdpa_prefill"]] == [
        x for x in grids["sdpa_prefill"] if x[3] != 192
    ]
    assert [(a["B"], a["H"], a["L"], a["D"]) for a in data["sdpa_decode"]] == list(grids["sdpa_decode"])
    # plus index_add (the sorted MoE's combine), which the shared file does not measure
    assert [(e["op"], tuple(e["shape"])) for e in data["elementwise"]] == [
        x for x in grids["elementwise"] if x[0] != "index_add"
    ]
    assert [c["bytes"] for c in data["copy"]] == list(grids["copy"])
    assert [e["op"] for e in data["launch"]] == list(grids["launch"])
    cases = [(m.name, "prefill", b, s, m.num_layers) for m, b, s in microbench_e2e.E2E_PREFILL]
    cases += [(m.name, "decode_step", b, kv, m.num_layers) for m, b, kv in microbench_e2e.E2E_DECODE]
    assert [
        (e["case"], e["phase"], e["batch"], e.get("seq", e.get("kv_len")), e["layers"]) for e in data["e2e_dev"]
    ] == cases


def test_missing_torch_is_one_clear_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(
        RuntimeError, match=r"^PyTorch is not installed: pip install 'moesim\[torch\]' \(needs a CUDA GPU\)$"
    ):
        microbench.run_microbenchmarks(device="cpu", quick=True)
    assert microbench.main(["--out", str(tmp_path / "raw.json")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_cuda_without_gpu_is_one_clear_line(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"^no CUDA GPU visible: moesim calibrate --device cuda must run"):
        microbench.run_microbenchmarks(device="cuda")


@pytest.fixture(scope="module")
def cpu_quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("microbench") / "raw.json"
    assert microbench.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_cpu_quick_run_has_the_shared_format(cpu_quick):
    assert set(cpu_quick) == {"env", *FIELDS}
    assert set(cpu_quick["env"]) == ENV_FIELDS
    for key, fields in FIELDS.items():
        assert cpu_quick[key], key
        assert sorted(map(sorted, _field_sets(cpu_quick[key]))) == sorted(map(sorted, fields)), key


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_cpu_quick_run_times_are_positive_and_rates_consistent(cpu_quick):
    for key in ("gemm", "bmm", "sdpa_prefill", "sdpa_decode", "elementwise", "copy", "launch"):
        assert all(e["s"] > 0 for e in cpu_quick[key]), key
    g = cpu_quick["gemm"][0]
    assert g["tflops"] == pytest.approx(2 * g["M"] * g["K"] * g["N"] / g["s"] / 1e12)
    assert g["gbps"] == pytest.approx((g["M"] * g["K"] + g["K"] * g["N"] + g["M"] * g["N"]) * 2 / g["s"] / 1e9)
    e = cpu_quick["elementwise"][0]
    assert e["bytes_in"] == e["shape"][0] * e["shape"][1] * 2
    decode = [x for x in cpu_quick["e2e_dev"] if x["phase"] == "decode_step"]
    assert decode and decode[0]["s_eager"] > 0 and decode[0]["s_cuda_graph"] is None  # no graphs on CPU
    rows = cpu_quick["kernel_breakdown"][0]["top_kernels"]
    assert rows and all(isinstance(n, str) and c >= 1 and t >= 0 for n, c, t in rows)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_capacity_decode_matches_the_sorted_moe(monkeypatch):
    """With capacity large enough that no token is dropped, both dispatches compute the same block."""
    from dataclasses import replace

    import torch

    model = replace(
        microbench_e2e.SEED,
        num_layers=1,
        hidden_size=64,
        num_heads=4,
        head_dim=16,
        num_kv_heads=4,
        num_experts=4,
        expert_ffn_size=32,
    )
    torch.manual_seed(0)
    with torch.inference_mode():
        lw = {k: v.float() for k, v in microbench_e2e.layer_weights(torch, model, "cpu").items()}
        x = torch.randn(8, 1, model.hidden_size)
        cache = tuple(torch.zeros(8, model.num_kv_heads, 1, model.head_dim) for _ in range(2))
        monkeypatch.setattr(microbench_e2e, "CAPACITY_FACTOR", float(model.num_experts))  # every token fits
        decoded = microbench_e2e.decode_block(torch, model, lw, cache, x)
        # One cached position, overwritten by the new token: attention is the token's own V, as in
        # a causal prefill of length 1 per sequence.
        prefilled = microbench_e2e.prefill_block(torch, model, lw, x)
    torch.testing.assert_close(decoded, prefilled, rtol=1e-4, atol=1e-4)
