"""Layout sweep: enumeration, screening, executors (serial, processes, Dask), ranking, reports."""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import pytest
import yaml
from conftest import TINY_MOE, make_scenario

from simulator.cli import main
from simulator.config import ParallelSpec, ScenarioError, load_scenario, parse_scenario, with_layout
from simulator.memory import kv_cache_bytes_per_gpu, weight_bytes_per_gpu
from simulator.report.pareto import pareto_front
from simulator.sweep import (
    COST_CLASSES,
    LayoutResult,
    SerialExecutor,
    TargetVerdict,
    enumerate_layouts,
    make_executor,
    rank_results,
    run_sweep,
    screen_memory,
    simulate_layout,
)

# TINY_MOE: 4 layers, 4 heads, 4 KV heads, 4 experts (expert FFN 128), batch 4, on 4 GPUs.
# Written out by hand: pp*dp*tp = 4; ep | 4 experts; ep*etp | dp*tp; batch 4 % (dp*mb) == 0.
_STAGE4 = [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (4, 1)]  # (ep, etp) on 4 GPUs per stage
_STAGE2 = [(1, 1), (1, 2), (2, 1)]  # on 2 GPUs per stage
TINY_LAYOUTS_MB12 = (
    [ParallelSpec.of_degrees(1, 4, 1, ep, etp, 1) for ep, etp in _STAGE4]  # dp=4: batch 4 allows 1 microbatch only
    + [ParallelSpec.of_degrees(1, 2, 2, ep, etp, mb) for ep, etp in _STAGE4 for mb in (1, 2)]
    + [ParallelSpec.of_degrees(1, 1, 4, ep, etp, mb) for ep, etp in _STAGE4 for mb in (1, 2)]
    + [ParallelSpec.of_degrees(2, 2, 1, ep, etp, mb) for ep, etp in _STAGE2 for mb in (1, 2)]
    + [ParallelSpec.of_degrees(2, 1, 2, ep, etp, mb) for ep, etp in _STAGE2 for mb in (1, 2)]
    + [ParallelSpec.of_degrees(4, 1, 1, 1, 1, mb) for mb in (1, 2)]
)


def _small(**sections):
    """Tiny MoE with 2 layers, quick to simulate."""
    base = {"model": {**TINY_MOE["model"], "num_layers": 2}, "parallel": {"tp": 2, "ep": 2, "pp": 2}}
    base.update(sections)
    return make_scenario(TINY_MOE, **base)


def _few(s):
    """One layout per (pp, dp, tp) with ep = etp = 1, and the scenario's own: 6 for _small()."""
    own = s.parallel.without_split()
    return [lay for lay in enumerate_layouts(s, microbatches=(1,)) if (lay.ep == lay.etp == 1) or lay == own]


def _comparable(results):
    return [
        (r.index, r.layout, r.status, r.error, r.ttft_max_s, r.tpot_s, r.throughput, r.targets, r.cost_shares)
        for r in results
    ]


# ---------------------------------------------------------------------------------------------
# Enumeration


def test_enumeration_matches_hand_made_list(tiny_moe):
    layouts = enumerate_layouts(tiny_moe, microbatches=(1, 2))
    assert sorted(layouts) == sorted(TINY_LAYOUTS_MB12)
    assert len(layouts) == len(set(layouts))


def test_enumeration_has_no_invalid_layout_and_misses_no_valid_one(tiny_moe):
    layouts = set(enumerate_layouts(tiny_moe, microbatches=(1, 2)))
    for pp, dp, tp, ep, etp, mb in itertools.product((1, 2, 4), (1, 2, 4), (1, 2, 4), (1, 2, 4), (1, 2, 4), (1, 2)):
        if pp * dp * tp != 4:
            continue
        try:
            data = tiny_moe.model_dump(exclude_none=True)  # parsed anew: the loader's path, not the sweep's
            data["parallel"] = {"pp": pp, "dp": dp, "tp": tp, "ep": ep, "etp": etp, "microbatches": mb}
            data["cluster"]["num_gpus"] = 4
            parse_scenario(data, "test")
            valid = True
        except ScenarioError:
            valid = False
        assert (ParallelSpec.of_degrees(pp, dp, tp, ep, etp, mb) in layouts) == valid, (pp, dp, tp, ep, etp, mb)


def test_scenario_layout_is_always_included(tiny_moe):
    assert tiny_moe.parallel.without_split() in enumerate_layouts(tiny_moe, microbatches=(2,))  # its microbatches: 1
    odd = make_scenario(TINY_MOE, parallel={"microbatches": 4})  # not among the options asked for
    assert odd.parallel.without_split() in enumerate_layouts(odd, microbatches=(1,))


def test_other_gpu_counts(tiny_moe):
    layouts = enumerate_layouts(tiny_moe, num_gpus=2, microbatches=(1,))
    assert layouts and all(layout.num_gpus == 2 for layout in layouts)
    assert tiny_moe.parallel.without_split() not in layouts


def test_layout_scenario_names_the_broken_rule(tiny_moe):
    with pytest.raises(ScenarioError, match="parallel.tp"):
        with_layout(tiny_moe, ParallelSpec.of_degrees(1, 1, 8, 1, 1, 1))


# ---------------------------------------------------------------------------------------------
# Running


def test_serial_and_process_pool_give_identical_results():
    s = _small()
    layouts = _few(s)
    serial = run_sweep(s, layouts, SerialExecutor(), decode_sample=0)
    with ProcessPoolExecutor(max_workers=2) as pool:
        parallel = run_sweep(s, layouts, pool, decode_sample=0)
    assert _comparable(serial) == _comparable(parallel)
    assert [r.layout for r in serial] == layouts


def fail_on_tp2(index, own, scenario, decode_sample):
    """A simulate function (module level: picklable) that breaks on every TP=2 layout."""
    if scenario.parallel.tp == 2:
        raise RuntimeError("boom on tp=2")
    return simulate_layout(index, own, scenario, decode_sample)


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_a_failing_layout_is_recorded_and_the_sweep_goes_on(executor):
    s = _small()
    layouts = _few(s)
    with make_executor(executor, jobs=2) as ex:
        results = run_sweep(s, layouts, ex, decode_sample=0, simulate=fail_on_tp2)
    failed = [r for r in results if r.status == "failed"]
    assert failed and all(r.layout.tp == 2 for r in failed)
    assert all("RuntimeError: boom on tp=2" in r.error for r in failed)
    assert all(r.status == "ok" for r in results if r.layout.tp != 2)
    ranked = rank_results(results)
    assert all(r.rank is None for r in ranked[-len(failed) :])


def test_an_error_inside_the_simulation_becomes_a_failed_row(tiny_moe):
    broken = tiny_moe.model_copy(update={"hardware": tiny_moe.hardware.model_copy(update={"profile": "no-such-gpu"})})
    result = simulate_layout(3, False, broken, 0)
    assert result.status == "failed" and result.index == 3
    assert result.error.startswith("ScenarioError:") and "no-such-gpu" in result.error


def test_dask_cluster_gives_the_serial_results():
    """--executor dask://HOST:PORT against a LocalCluster (in-process workers, TCP scheduler)."""
    distributed = pytest.importorskip("distributed")
    s = _small()
    layouts = _few(s)[:4]
    serial = run_sweep(s, layouts, SerialExecutor(), decode_sample=0)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address.removeprefix("tcp://")
        with make_executor(f"dask://{address}") as executor:
            dask_results = run_sweep(s, layouts, executor, decode_sample=0)
    assert _comparable(dask_results) == _comparable(serial)


def test_unknown_executor_is_a_one_line_error():
    with pytest.raises(ScenarioError, match="--executor"):
        with make_executor("mpi://x"):
            pass


calls: list[ParallelSpec] = []


def record_calls(index, own, scenario, decode_sample):
    calls.append(scenario.parallel.without_split())
    return simulate_layout(index, own, scenario, decode_sample)


def test_layouts_that_cannot_fit_are_screened_without_simulating():
    s = _small()
    layouts = _few(s)
    need = {
        lay: max(weight_bytes_per_gpu(v, g) + kv_cache_bytes_per_gpu(v, g) for g in range(4))
        + v.runtime.memory_reserve_bytes
        for lay in layouts
        for v in [with_layout(s, lay)]
    }
    capacity = sorted(set(need.values()))[-2]  # the most replicated layout no longer fits
    small = _small(hardware={"profile": "h100-sxm-80gb", "memory_bytes": capacity})
    calls.clear()
    results = run_sweep(small, layouts, SerialExecutor(), decode_sample=0, simulate=record_calls)
    screened = [r for r in results if r.status == "screened"]
    assert screened and {r.layout for r in screened} == {lay for lay, n in need.items() if n > capacity}
    assert not set(calls) & {r.layout for r in screened}
    assert len(calls) == len(layouts) - len(screened)
    for r in screened:
        assert r.memory_bytes_per_gpu == pytest.approx(need[r.layout]) and not r.fits
        assert "GB" in r.error


def test_decode_sampling_keeps_the_ranking_and_figures_within_1_percent():
    s = _small(workload={"batch_size": 4, "input_len_tokens": 16, "output_len_tokens": 24})
    layouts = [
        s.parallel.without_split(),
        ParallelSpec.of_degrees(1, 2, 2, 2, 1, 1),
        ParallelSpec.of_degrees(2, 2, 1, 1, 1, 2),
        ParallelSpec.of_degrees(1, 1, 4, 4, 1, 1),
    ]
    full = rank_results(run_sweep(s, layouts, SerialExecutor(), decode_sample=0))
    sampled = rank_results(run_sweep(s, layouts, SerialExecutor(), decode_sample=4))
    own_full = next(r for r in full if r.own)
    own_sampled = next(r for r in sampled if r.own)
    assert own_sampled.rank == own_full.rank
    for attr in ("ttft_max_s", "ttft_mean_s", "tpot_s", "output_tput", "memory_bytes_per_gpu"):
        assert getattr(own_sampled, attr) == pytest.approx(getattr(own_full, attr), rel=0.01), attr


# ---------------------------------------------------------------------------------------------
# Ranking and dominant cost


def _row(index, tput, ttft, tpot, mem, met=True, status="ok", cap=100.0):
    return LayoutResult(
        index=index,
        layout=ParallelSpec.of_degrees(1, 1, 4, 1, 1, index + 1),
        own=False,
        status=status,
        ttft_mean_s=ttft,
        ttft_max_s=ttft,
        tpot_s=tpot,
        throughput={  # every figure a simulated layout has (resume refuses a record without one)
            "output_tokens_per_ms_per_gpu": tput,
            "prefill_tokens_per_ms_per_gpu": 8 * tput,
            "total_tokens_per_ms_per_gpu": 9 * tput,
        },
        memory_bytes_per_gpu=mem,
        capacity_bytes=cap,
        targets=(TargetVerdict("ttft_s", "max", 1.0, ttft, met),) if status == "ok" else (),
    )


ROWS = [
    _row(0, tput=5.0, ttft=0.9, tpot=0.020, mem=50.0, met=False),
    _row(1, tput=3.0, ttft=0.2, tpot=0.030, mem=40.0),
    _row(2, tput=4.0, ttft=0.5, tpot=0.010, mem=60.0),
    _row(3, tput=9.0, ttft=0.1, tpot=0.001, mem=30.0, status="screened"),
    _row(4, tput=9.0, ttft=0.1, tpot=0.001, mem=130.0),  # simulated, but does not fit
    _row(5, tput=math.nan, ttft=math.nan, tpot=math.nan, mem=math.nan, status="failed"),
]


@pytest.mark.parametrize(
    "objective, order",
    [
        ("targets", [2, 1, 0, 4, 3, 5]),
        ("throughput", [0, 2, 1, 4, 3, 5]),
        ("ttft", [1, 2, 0, 4, 3, 5]),
        ("tpot", [2, 0, 1, 4, 3, 5]),
        ("memory", [1, 0, 2, 4, 3, 5]),
    ],
)
def test_ranking_by_objective(objective, order):
    ranked = rank_results(ROWS, objective)
    assert [r.index for r in ranked] == order
    assert [r.rank for r in ranked] == [1, 2, 3, 4, None, None]


def test_unknown_objective_is_rejected():
    with pytest.raises(ScenarioError, match="--objective"):
        rank_results(ROWS, "latency")


def test_cost_shares_sum_to_one_and_pipeline_bubbles_dominate_a_deep_pipeline():
    deep = simulate_layout(0, False, with_layout(make_scenario(TINY_MOE), ParallelSpec.of_degrees(4, 1, 1, 1, 1, 1)), 0)
    assert set(deep.cost_shares) == set(COST_CLASSES)
    assert sum(deep.cost_shares.values()) == pytest.approx(1.0)
    assert deep.dominant == "pipeline bubbles"


def test_pareto_front():
    points = [(1.0, 1.0), (2.0, 3.0), (1.5, 0.5), (3.0, 3.0), (4.0, 5.0), (0.5, 0.2)]
    assert pareto_front(points) == [5, 0, 1, 4]


# ---------------------------------------------------------------------------------------------
# Command line and files


@pytest.fixture
def small_file(tmp_path):
    # 2 experts and an odd expert FFN width (no etp > 1): 10 layouts on 4 GPUs
    data = {**TINY_MOE, "model": {**TINY_MOE["model"], "num_layers": 2, "num_experts": 2, "expert_ffn_size": 63}}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_compare_writes_every_file_and_best_yaml_loads(small_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            str(small_file),
            "--out",
            str(out),
            "--jobs",
            "1",
            "--microbatches",
            "1",
            "--objective",
            "ttft",
            "--set",
            "targets={ttft_s: {max: 100}}",
        ]
    )
    assert code == 0
    for name in ("comparison.csv", "comparison.md", "pareto.png", "best.yaml"):
        assert (out / name).is_file(), name
    best = load_scenario(out / "best.yaml")
    csv_lines = (out / "comparison.csv").read_text().splitlines()
    first = dict(zip(csv_lines[0].split(","), csv_lines[1].split(",")))
    assert first["rank"] == "1"
    assert best.parallel.tp == int(first["tp"]) and best.parallel.pp == int(first["pp"])
    assert best.declared is None
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "(scenario)" in printed and "simulated" in printed
    assert "(scenario)" in (out / "comparison.md").read_text()


def test_compare_bad_microbatches_is_exit_2(small_file, tmp_path, capsys):
    assert main(["compare", str(small_file), "--out", str(tmp_path / "x"), "--microbatches", "two"]) == 2
    assert "--microbatches" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# Ctrl-C and --resume


def _compare(small_file, out, *extra):
    return main(["compare", str(small_file), "--out", str(out), "--jobs", "1", "--microbatches", "1", *extra])


def _interrupt_after(monkeypatch, n):
    """Make the per-layout simulation raise KeyboardInterrupt (as Ctrl-C would) after n layouts."""
    import simulator.sweep.run as sweep_run

    real, count = sweep_run.simulate_layout, [0]

    def simulate(*args):
        if count[0] == n:
            raise KeyboardInterrupt
        count[0] += 1
        return real(*args)

    monkeypatch.setattr(sweep_run, "simulate_layout", simulate)
    return real


@pytest.fixture
def uninterrupted(small_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "cmp"
    assert _compare(small_file, out) == 0
    return out


def _interrupted(small_file, out, monkeypatch, capsys, n=3):
    real = _interrupt_after(monkeypatch, n)
    assert _compare(small_file, out) == 130
    err = capsys.readouterr().err.strip()
    monkeypatch.setattr("simulator.sweep.run.simulate_layout", real)
    return err


def test_an_interrupted_sweep_keeps_its_layouts_and_resumes_to_the_same_files(
    small_file, tmp_path, uninterrupted, monkeypatch, capsys
):
    out = tmp_path / "cmp"
    err = _interrupted(small_file, out, monkeypatch, capsys, n=3)
    assert err == "moesim: interrupted after 3 of 10 layouts; rerun with --resume to continue"
    assert not out.exists()
    journal = tmp_path / "cmp.progress.jsonl"
    assert len(journal.read_text().splitlines()) == 1 + 3  # header + one line per finished layout
    calls.clear()
    real = simulate_layout
    monkeypatch.setattr("simulator.sweep.run.simulate_layout", record_calls)
    assert _compare(small_file, out, "--resume") == 0
    monkeypatch.setattr("simulator.sweep.run.simulate_layout", real)
    assert len(calls) == 10 - 3  # only the layouts the interrupted run had not finished
    for name in ("comparison.csv", "comparison.md", "best.yaml"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    assert not journal.exists()


def test_resume_drops_a_truncated_last_line(small_file, tmp_path, uninterrupted, monkeypatch, capsys):
    out = tmp_path / "cmp"
    _interrupted(small_file, out, monkeypatch, capsys, n=4)
    journal = tmp_path / "cmp.progress.jsonl"
    text = journal.read_text()
    journal.write_text(text[:-40])  # the last layout's line cut short, as a kill mid-write leaves it
    assert _compare(small_file, out, "--resume") == 0
    assert (out / "comparison.csv").read_bytes() == (uninterrupted / "comparison.csv").read_bytes()


@pytest.mark.parametrize(
    "change, names",
    [
        (["--set", "workload.batch_size=8"], "different scenario"),
        (["--decode-sample", "2"], "--decode-sample 8, not 2"),
        (["--gpus", "2"], "--gpus 4, not 2"),
    ],
)
def test_resume_with_changed_inputs_is_refused_in_one_line(small_file, tmp_path, monkeypatch, capsys, change, names):
    out = tmp_path / "cmp"
    _interrupted(small_file, out, monkeypatch, capsys)
    assert _compare(small_file, out, "--resume", *change) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err and "rerun without --resume" in err
    assert (tmp_path / "cmp.progress.jsonl").exists() and not out.exists()


def test_a_sweep_without_resume_starts_afresh(small_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    _interrupted(small_file, out, monkeypatch, capsys)
    calls.clear()
    monkeypatch.setattr("simulator.sweep.run.simulate_layout", record_calls)
    assert _compare(small_file, out) == 0
    assert len(calls) == 10
    assert not (tmp_path / "cmp.progress.jsonl").exists()


def test_resume_without_a_progress_file_is_a_one_line_error(small_file, tmp_path, capsys):
    assert _compare(small_file, tmp_path / "cmp", "--resume") == 2
    assert "no progress file" in capsys.readouterr().err


def test_progress_records_round_trip_exactly_with_nan_and_targets():
    import json

    from simulator.sweep.resume import from_record, to_record

    for r in ROWS:
        line = json.dumps(to_record(r), allow_nan=False)  # strict JSON: NaN is written as null
        assert repr(from_record(json.loads(line))) == repr(replace(r, rank=None))


def test_screening_one_gpu_per_stage_equals_every_gpu(seed):
    """screen_memory reads one GPU per stage: every layout of the seed agrees with all GPUs."""
    for lay in enumerate_layouts(seed, microbatches=(1,)):
        v = with_layout(seed, lay)
        every = max(weight_bytes_per_gpu(v, g) + kv_cache_bytes_per_gpu(v, g) for g in range(v.num_gpus))
        assert screen_memory(v, 0.0) == every + v.runtime.memory_reserve_bytes


def test_a_sweep_whose_every_layout_failed_writes_nothing(small_file, tmp_path, monkeypatch, capsys):
    """A sweep in which every layout failed (e.g. workers that cannot read the profile) is one line, exit 2,
    with no table of failures and no progress file left behind."""
    from simulator.sweep.results import failed_result

    def fail(index, own, scenario, decode_sample):
        return failed_result(index, scenario.parallel.without_split(), own, OSError("profile not found"))

    monkeypatch.setattr("simulator.sweep.run.simulate_layout", fail)
    out = tmp_path / "cmp"
    assert main(["compare", str(small_file), "--out", str(out), "--jobs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every layout failed" in err[0] and "OSError: profile not found" in err[0]
    assert not out.exists()
    assert not list(tmp_path.glob("*progress*")) and not list(out.parent.glob(".cmp*"))
