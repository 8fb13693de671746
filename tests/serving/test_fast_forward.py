"""Runs of pure decode steps applied at once (ServingModel.decode_runs, Scheduler.decode_run / finish_run) give
exactly what scheduling and completing every sequence every iteration gives: the same batches priced in the same
order, the same records (every token time), rows, preemptions, KV peaks, launch and host tallies."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.config.serving import SlidingKVSpec, parse_serving_spec
from simulator.serving.engine_pricing import EnginePricer
from simulator.serving.pricing import CachedPricer, LinearPricer
from simulator.serving.scheduler import Scheduler
from simulator.serving.simulate import simulate_serving
from tests.serving.conftest import RecordingPricer, make_spec
from tests.serving.test_engine_pricing import EAGER, GRAPH, profile
from tests.serving.test_properties import specs


def assert_same_run(fast, slow) -> None:
    assert fast.end_s == slow.end_s
    assert fast.num_iterations == slow.num_iterations
    assert fast.preemptions == slow.preemptions
    assert fast.peak_kv_blocks == slow.peak_kv_blocks
    assert np.array_equal(fast.mean_in_system, slow.mean_in_system, equal_nan=True)
    assert fast.launches == slow.launches
    assert fast.host == slow.host
    assert fast.timeseries.keys() == slow.timeseries.keys()
    for name, column in slow.timeseries.items():
        assert np.array_equal(fast.timeseries[name], column), name
    for a, b in zip(fast.records, slow.records, strict=True):
        for field in dataclasses.fields(a):
            x, y = getattr(a, field.name), getattr(b, field.name)
            assert np.array_equal(x, y, equal_nan=True) if field.name != "token_times_s" else np.array_equal(x, y)


def same_either_way(spec):
    """Serve spec with decode runs applied at once and step by step (RecordingPricer): the same batches priced
    in the same order and the same run; returns (fast, slow)."""
    fast, slow, fp, sp = both(spec, RecordingPricer)
    assert fp.batches == sp.batches  # the same batches, in the same order
    assert_same_run(fast, slow)
    return fast, slow


def both(spec, make_pricer, requests=None):
    fast_pricer, slow_pricer = make_pricer(), make_pricer()
    fast = simulate_serving(spec, fast_pricer, requests)
    slow = simulate_serving(spec, slow_pricer, requests, fast_forward=False)
    return fast, slow, fast_pricer, slow_pricer


@st.composite
def with_layers(draw):
    """specs() with outputs up to 60 tokens, half with whole prompts, a third with sliding-window layers (every
    layer sliding in some: a sequence stops taking blocks once its window's are held)."""
    spec = draw(specs(max_output_tokens=60))
    if draw(st.booleans()):  # TensorRT-LLM's whole prompts (the budget holds every prompt: specs() sees to it)
        spec = spec.model_copy(update={"scheduler": spec.scheduler.model_copy(update={"split_prompts": False})})
    if draw(st.integers(0, 2)):
        return spec
    sliding = SlidingKVSpec(
        window_tokens=draw(st.integers(1, 24)),
        full_layers=draw(st.integers(0, 2)),
        sliding_layers=draw(st.integers(1, 3)),
    )
    kv = spec.scheduler.kv_cache.model_copy(update={"sliding": sliding})
    return spec.model_copy(update={"scheduler": spec.scheduler.model_copy(update={"kv_cache": kv})})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(with_layers())
def test_fast_forward_changes_nothing_on_random_specs(spec):
    same_either_way(spec)


def long_decodes(**scheduler):
    """6 requests of 4-12 + 20-40 tokens, 3 at a time, chunked prefill on 18 blocks of 4 tokens: on demand, the
    decodes take blocks every 4 tokens and run out (4 preemptions)."""
    base = {"policy": "chunked_prefill", "kv_cache": {"block_size_tokens": 4, "capacity_blocks": 18}}
    return make_spec(
        workload={
            "arrivals": {"kind": "closed_loop", "concurrency": 3},
            "num_requests": 6,
            "input_len": {"kind": "uniform", "min_tokens": 4, "max_tokens": 12},
            "output_len": {"kind": "uniform", "min_tokens": 20, "max_tokens": 40},
        },
        scheduler={**base, **scheduler},
    )


def test_decode_runs_take_blocks_and_stop_before_a_preemption():
    spec = long_decodes()
    fast, slow, fp, sp = both(spec, RecordingPricer)
    assert slow.preemptions == 4  # the case does preempt
    assert fp.batches == sp.batches
    assert_same_run(fast, slow)


def test_decode_runs_with_sliding_window_layers_take_no_block_inside_a_run():
    sliding = SlidingKVSpec(window_tokens=6, full_layers=1, sliding_layers=3)
    base = long_decodes()
    kv = base.scheduler.kv_cache.model_copy(update={"sliding": sliding, "capacity_blocks": 12})
    spec = base.model_copy(update={"scheduler": base.scheduler.model_copy(update={"kv_cache": kv})})
    fast, slow, fp, sp = both(spec, RecordingPricer)
    assert slow.preemptions == 4
    assert fp.batches == sp.batches
    assert_same_run(fast, slow)


def test_engine_launch_and_host_tallies_are_the_same():
    spec = long_decodes(admission="reserve", policy="continuous")
    host = profile(True, 2**-6, 2**-10, True)
    fast, slow, _, _ = both(spec, lambda: CachedPricer(EnginePricer(host, GRAPH, lambda: EAGER, (1, 2, 4))))
    assert fast.launches is not None and fast.host is not None
    assert_same_run(fast, slow)


def test_a_lockstep_group_runs_its_idle_replicas_dummy_passes_too():
    spec = parse_serving_spec(
        {
            "workload": {
                "arrivals": {"kind": "poisson", "rate_per_s": 0.5},
                "num_requests": 5,
                "seed": 3,
                "input_len": {"kind": "fixed", "tokens": 8},
                "output_len": {"kind": "uniform", "min_tokens": 10, "max_tokens": 50},
            },
            "scheduler": {
                "policy": "chunked_prefill",
                "max_num_seqs": 4,
                "max_num_batched_tokens": 64,
                "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 64},
            },
            "replicas": {"count": 3, "lockstep": True},
        }
    )
    fast, slow, fp, sp = both(spec, lambda: RecordingPricer())
    assert () in sp.batches  # idle replicas priced their dummy pass
    assert fp.batches == sp.batches
    assert_same_run(fast, slow)


def test_the_fast_path_skips_the_per_sequence_work(monkeypatch):
    # 3 requests of 8 + 40 decoded together with their whole KV reserved: one prefill, then a run of 39
    # decode steps applied at once, so `complete` is called twice instead of 40 times (and agrees).
    spec = make_spec(
        workload={
            "arrivals": {"kind": "closed_loop", "concurrency": 3},
            "num_requests": 3,
            "output_len": {"kind": "fixed", "tokens": 40},
        },
        scheduler={"policy": "continuous", "admission": "reserve"},
    )
    calls = []
    complete = Scheduler.complete

    def counted(self, step, now_s):
        calls.append(len(step.seqs))
        return complete(self, step, now_s)

    monkeypatch.setattr(Scheduler, "complete", counted)
    fast = simulate_serving(spec, LinearPricer(0.25, 1 / 16, 1 / 128))
    assert calls == [3, 3]
    calls.clear()
    slow = simulate_serving(spec, LinearPricer(0.25, 1 / 16, 1 / 128), fast_forward=False)
    assert calls == [3] * 40
    assert_same_run(fast, slow)
    assert fast.num_iterations == 40


# ---------------------------------------------------------------- a cached pricer inside decode runs


@st.composite
def cached_pricers(draw):
    """A factory of the pricers a serving run is given: a cached recording pricer (exact, or with contexts
    rounded up to a bucket of 2-5 tokens) or a cached engine pricer (CUDA graphs with and without padding, a
    context limit, serial or overlapped host time)."""
    kind = draw(st.sampled_from(["cached", "bucketed", "engine"]))
    if kind == "cached":
        return lambda: CachedPricer(RecordingPricer())
    if kind == "bucketed":
        q = draw(st.integers(2, 5))
        return lambda: CachedPricer(RecordingPricer(), context_bucket_tokens=q)
    engine = profile(True, 2**-8, 2**-10, draw(st.booleans()))
    graphs = engine.cuda_graph.model_copy(
        update={"padding": draw(st.booleans()), "max_context_tokens": draw(st.sampled_from([None, 24, 60]))}
    )
    engine = engine.model_copy(update={"cuda_graph": graphs})
    sizes = draw(st.sampled_from([(1, 2, 4), (1, 2, 3, 4, 8), ()]))
    return lambda: CachedPricer(EnginePricer(engine, GRAPH if sizes else None, lambda: EAGER, sizes))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(with_layers(), cached_pricers())
def test_a_cached_pricer_prices_decode_runs_from_their_contexts_exactly(spec, make_pricer):
    """CachedPricer.price_run (a decode run's key from its sorted contexts, the batch built only for a new price)
    and the engine's launch_decode give what pricing and counting every iteration's batch gives: the same run,
    the same prices looked up, the same batches priced for the first time, in the same order."""
    fast, slow, fp, sp = both(spec, make_pricer)
    assert_same_run(fast, slow)
    assert (fp.hits, fp.misses) == (sp.hits, sp.misses)
    if isinstance(fp.pricer, RecordingPricer):
        assert fp.pricer.batches == sp.pricer.batches


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 3_000), min_size=1, max_size=40),
    st.integers(0, 500),
    st.integers(1, 64),
)
def test_a_runs_key_is_the_key_of_its_batch(contexts, j, bucket):
    from simulator.serving.pricing import SeqWork
    from simulator.serving.scheduler import DecodeRun

    run = DecodeRun([], tuple(SeqWork(1, c) for c in contexts), 10, 0, 0, None)
    for q in (1, bucket):
        cached = CachedPricer(LinearPricer(1.0, 1.0, 1.0), context_bucket_tokens=q)
        assert cached.run_key(run.sorted_contexts, j) == cached.key(run.batch(j))
    assert run.max_context + j == max(c + j for c in contexts)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 100), max_size=12),
    st.sampled_from([(), (1, 2, 4), (1, 2, 3, 4, 8), (4, 16)]),
    st.booleans(),
    st.sampled_from([None, 16, 64]),
)
def test_launch_decode_is_launch_of_a_decode_batch(contexts, sizes, padding, limit):
    from simulator.serving.pricing import SeqWork

    engine = profile(True)
    engine = engine.model_copy(
        update={"cuda_graph": engine.cuda_graph.model_copy(update={"padding": padding, "max_context_tokens": limit})}
    )
    pricer = EnginePricer(engine, GRAPH if sizes else None, lambda: EAGER, sizes)
    batch = tuple(SeqWork(1, c) for c in contexts)
    assert pricer.launch_decode(len(batch), max(contexts, default=-1)) == pricer.launch(batch)
