"""Prefix caching of a shared prompt prefix (workload.shared_prefix, scheduler.prefix_caching): hand-computed
schedules with and without the cache, its blocks, eviction, the refusals, the engines' defaults and the outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.config import load_scenario
from simulator.config.serving import ServingError, SharedPrefixSpec
from simulator.report.serving_summary import prefix_cache_line, serving_summary_dict
from simulator.serving.kvcache import PagedKVCache
from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import summarize
from simulator.serving.workload import Request
from tests.serving.conftest import make_spec
from tests.serving.test_adp_balance import balanced_specs
from tests.serving.test_fast_forward import same_either_way
from tests.serving.test_properties import specs
from tests.serving.test_simulate import conservation_holds

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

# Every use of the scheduler's kept count of unreferenced cached units checks it against a recount (conftest).
pytestmark = pytest.mark.usefixtures("recount_unreferenced")


def cached_spec(caching: bool, tokens: int = 32, groups: int = 1, **scheduler):
    # BASE: chunked_prefill, 4 sequences, 64 tokens an iteration, blocks of 16 tokens, 64 blocks
    return make_spec(
        workload={
            "arrivals": {"kind": "poisson", "rate_per_s": 1.0},
            "shared_prefix": {"tokens": tokens, "groups": groups},
        },
        scheduler={"prefix_caching": caching, **scheduler},
    )


# LinearPricer(0.25, 1/16, 1/128): an iteration costs 0.25 + new tokens / 16 + context tokens / 128.
def test_a_cached_prefix_is_not_computed_again(pricer):
    requests = [Request(0, 0.0, 40, 2), Request(1, 2.0, 40, 2)]
    cold = simulate_serving(cached_spec(False), pricer, requests)
    warm = simulate_serving(cached_spec(True), pricer, requests)
    # R0's prompt 0 -> 2.75 (0.25 + 40/16); R1 (arrived at 2.0) joins R0's decode at 2.75. Without the cache its
    # whole prompt: 0.25 + 41/16 + 40/128 = 3.125; with it the two cached blocks (32 tokens) are read and 8
    # computed: 0.25 + 9/16 + (40 + 32)/128 = 1.375. Then R1's decode at context 40: 0.25 + 1/16 + 40/128.
    assert cold.records[0].token_times_s.tolist() == [2.75, 5.875]
    assert warm.records[0].token_times_s.tolist() == [2.75, 4.125]
    assert cold.records[1].token_times_s.tolist() == [5.875, 6.5]
    assert warm.records[1].token_times_s.tolist() == [4.125, 4.75]
    assert [r.first_scheduled_s for r in warm.records] == [0.0, 2.75]
    # KV: R0 held 3 blocks (41 tokens), R1 as many without the cache; with it R1 takes 1 of its own beside the
    # 2 cached ones R0 handed over, which stay after both finish
    assert cold.peak_kv_blocks == (6,)
    assert warm.peak_kv_blocks == (4,)
    assert cold.prefix_cache is None
    assert warm.prefix_cache == (32, 80)


def test_each_group_caches_its_own_prefix(pricer):
    # R0 group 0, R1 group 1 (both cold), R2 group 0 (warm), R3 group 1 (warm), one at a time
    requests = [Request(i, 10.0 * i, 40, 1) for i in range(4)]
    run = simulate_serving(cached_spec(True, groups=2), pricer, requests)
    assert run.prefix_cache == (64, 160)
    cold_s, warm_s = 0.25 + 40 / 16, 0.25 + 8 / 16 + 32 / 128
    assert [r.token_times_s[0] - r.arrival_s for r in run.records] == [cold_s, cold_s, warm_s, warm_s]
    # a one-token request finishes in the iteration that computed its prefix: the cache keeps its 2 blocks
    assert run.peak_kv_blocks == (2 + 2 + 1,)


def test_the_last_prompt_token_is_always_computed(pricer):
    # prompts of 32 tokens, all shared: a warm one still computes its last block's tokens (whole blocks only,
    # short of the last token): 16 read, 16 computed
    requests = [Request(0, 0.0, 32, 1), Request(1, 10.0, 32, 1)]
    run = simulate_serving(cached_spec(True), pricer, requests)
    assert run.prefix_cache == (16, 64)
    assert run.records[1].token_times_s[0] - 10.0 == 0.25 + 16 / 16 + 16 / 128


def test_an_unused_prefix_is_evicted_when_its_blocks_are_needed(pricer):
    # 5 blocks in all. R0 (group 0) leaves its prefix's 2 blocks cached; R1 (group 1, 64 tokens + 1) needs 5
    # blocks: the unused prefix is evicted for it. R2 (group 0) then finds nothing cached.
    spec = cached_spec(True, groups=2, kv_cache={"block_size_tokens": 16, "capacity_blocks": 5})
    requests = [Request(0, 0.0, 40, 1), Request(1, 10.0, 64, 2), Request(2, 20.0, 40, 1)]
    run = simulate_serving(spec, pricer, requests)
    assert run.prefix_cache == (0, 144)
    assert run.peak_kv_blocks == (5,)
    assert all(r.finish_s > 0 for r in run.records)


def test_the_kv_cache_counts_pinned_blocks_once():
    kv = PagedKVCache(10, 16)
    assert kv.grow(1, 40)  # 3 blocks
    kv.pin(1, 2)  # two of them become the prefix cache's
    assert (kv.used_units, kv.pinned_units, kv.tokens_held(1)) == (3, 2, 48)
    kv.share(2, 2)
    assert kv.grow(2, 40) and kv.held(2) == 1  # the second takes one block of its own
    assert kv.free(1) == 1 and kv.free(2) == 1
    assert (kv.used_units, kv.pinned_units) == (2, 2)
    kv.unpin(2)
    assert kv.used_units == 0


@st.composite
def cached_specs(draw):
    """specs() (no static batches) with shared prefixes of 1-3 groups and prefix caching on."""
    spec = draw(specs(max_output_tokens=20))
    if spec.scheduler.policy == "static":
        spec = spec.model_copy(update={"scheduler": spec.scheduler.model_copy(update={"policy": "continuous"})})
    return with_cached_prefixes(draw, spec)


def with_cached_prefixes(draw, spec):
    """spec with shared prefixes of 1-24 tokens in 1-3 groups and prefix caching on."""
    prefix = SharedPrefixSpec(tokens=draw(st.integers(1, 24)), groups=draw(st.integers(1, 3)))
    return spec.model_copy(
        update={
            "workload": spec.workload.model_copy(update={"shared_prefix": prefix}),
            "scheduler": spec.scheduler.model_copy(update={"prefix_caching": True}),
        }
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cached_specs())
def test_with_the_cache_every_request_finishes_and_decode_runs_change_nothing(spec):
    fast, slow = same_either_way(spec)
    conservation_holds(slow)
    hit, admitted = fast.prefix_cache
    assert 0 <= hit < admitted or admitted == 0


def test_a_static_batch_cannot_cache_prefixes():
    with pytest.raises(ServingError, match=r"prefix_caching: a static batch computes every prompt whole"):
        make_spec(scheduler={"policy": "static", "prefix_caching": True})


def test_the_engines_cache_prefixes_by_default():
    path = SCENARIOS / "qwen3_30b_a3b_fp8_1xh100_vllm.yaml"
    for engine, cached in (("vllm-v1", True), ("sglang-0.5", True), ("trtllm-1.0", True), ("vllm", None)):
        s = load_scenario(path, [f"serving.engine={engine}"])
        assert s.serving.scheduler.prefix_caching is cached, engine
    static = load_scenario(path, ["serving.scheduler.policy=static"])  # not filled in for a static batch
    assert static.serving.scheduler.prefix_caching is None
    own = load_scenario(path, ["serving.scheduler.prefix_caching=false"])
    assert own.serving.scheduler.prefix_caching is False


@pytest.mark.parametrize(
    ("scenario", "overrides", "message"),
    [
        (
            "gpt_oss_20b_1xh200_vllm.yaml",
            [],
            "serving.scheduler.prefix_caching: not modelled for a model with sliding-window layers",
        ),
        (
            "seed_moe_4gpu_disagg.yaml",
            ["serving.scheduler.prefix_caching=true"],
            "serving.disaggregation.prefill.scheduler.prefix_caching: not modelled for disaggregated pools",
        ),
    ],
)
def test_serve_refuses_prefix_caching_where_it_is_not_modelled(tmp_path, capsys, scenario, overrides, message):
    from simulator.cli import main

    sets = [a for o in [*overrides, "serving.workload.shared_prefix.tokens=64"] for a in ("--set", o)]
    code = main(["serve", str(SCENARIOS / scenario), *sets, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_serve_tells_what_the_cache_read(pricer):
    run = simulate_serving(cached_spec(True), pricer, [Request(0, 0.0, 40, 2), Request(1, 2.0, 40, 2)])
    doc = serving_summary_dict("t", run, summarize(run), "p")
    assert doc["prefix_cache"] == {
        "shared_prefix_tokens": 32,
        "groups": 1,
        "prompt_tokens_admitted": 80,
        "prompt_tokens_from_cache": 32,
        "hit_fraction": 0.4,
    }
    assert prefix_cache_line(doc) == (
        "prefix cache: 32 of 80 prompt tokens read from the cache (40.0 %), a shared prefix of 32 tokens in 1 group"
    )
    cold = simulate_serving(cached_spec(False), pricer, [Request(0, 0.0, 40, 2)])
    assert "prefix_cache" not in serving_summary_dict("t", cold, summarize(cold), "p")


@st.composite
def balanced_cached_specs(draw):
    """test_adp_balance's lockstep groups (TensorRT-LLM's scheduler, its balance and queue) with cached prefixes."""
    return with_cached_prefixes(draw, draw(balanced_specs()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(balanced_cached_specs())
def test_a_balanced_lockstep_group_with_the_cache_finishes_everything_alike_step_by_step(spec):
    fast, slow = same_either_way(spec)
    conservation_holds(slow)
    assert fast.preemptions == 0  # admission reserve, as TensorRT-LLM's scheduler


def test_serve_prints_and_writes_the_prefix_cache_line(tmp_path, capsys):
    from simulator.cli import main

    out = tmp_path / "out"
    sets = [
        "serving.workload.shared_prefix={tokens: 512}",
        "serving.workload.num_requests=20",
        "serving.workload.arrivals={kind: poisson, rate_per_s: 10}",
    ]
    argv = ["serve", str(SCENARIOS / "qwen3_30b_a3b_fp8_1xh100_vllm.yaml"), "--out", str(out)]
    assert main([*argv, *(a for o in sets for a in ("--set", o))]) == 0
    line = "of 20,480 prompt tokens read from the cache"
    assert f"prefix cache: 9,728 {line}" in capsys.readouterr().out  # 19 requests x 512 (the first computes it)
    assert f"Prefix cache: 9,728 {line}" in (out / "summary.md").read_text()
    assert f"Prefix cache: 9,728 {line}" in (out / "index.html").read_text()
