"""The iteration pricer protocol's analytic pricer and the cache."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.serving.pricing import CachedPricer, LinearPricer, SeqWork


def test_linear_pricer_is_base_plus_tokens_plus_context():
    pricer = LinearPricer(0.25, 1 / 16, 1 / 128)
    assert pricer((SeqWork(4, 0), SeqWork(1, 10))) == 0.25 + 5 / 16 + 10 / 128


def test_linear_pricer_prices_an_empty_batch_at_base():
    assert LinearPricer(0.25, 1 / 16)(()) == 0.25


def test_linear_pricer_rejects_a_zero_base():
    with pytest.raises(ValueError, match="base_s = 0"):
        LinearPricer(0.0, 1.0)


def test_cache_prices_each_multiset_once_and_passes_it_sorted():
    seen = []

    def pricer(batch):
        seen.append(batch)
        return 1.0

    cached = CachedPricer(pricer)
    assert cached((SeqWork(1, 9), SeqWork(5, 0))) == 1.0
    assert cached((SeqWork(5, 0), SeqWork(1, 9))) == 1.0
    assert seen == [(SeqWork(1, 9), SeqWork(5, 0))]
    assert (cached.hits, cached.misses) == (1, 1)


def test_cache_with_buckets_rounds_contexts_up():
    seen = []
    cached = CachedPricer(lambda b: seen.append(b) or 1.0, context_bucket_tokens=16)
    cached((SeqWork(1, 17),))
    cached((SeqWork(1, 30),))
    assert seen == [(SeqWork(1, 32),)]
    assert cached.hits == 1


def test_cache_gives_the_wrapped_price_exactly():
    linear = LinearPricer(0.25, 1 / 16, 1 / 128)
    batch = (SeqWork(1, 100), SeqWork(1, 7), SeqWork(30, 2))
    assert CachedPricer(linear)(batch) == linear(batch)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 5_000), st.integers(0, 2**31)), max_size=40),
    st.integers(1, 64),
)
def test_the_batch_a_cache_passes_on_is_its_canonical_form(pairs, bucket):
    """CachedPricer unpacks the batch it prices from its sorted key: the sorted batch, contexts rounded up."""
    batch = tuple(SeqWork(n, c) for n, c in pairs)
    for q in (1, bucket):
        seen = []
        cached = CachedPricer(lambda b: seen.append(b) or 1.0, context_bucket_tokens=q)
        cached(batch)
        rounded = [SeqWork(n, -(-c // q) * q) for n, c in batch]
        assert seen == [tuple(sorted(rounded))] == [cached.canonical(batch)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3_000), st.integers(0, 100)), max_size=30))
def test_a_mixed_batchs_padding_is_read_from_its_tokens(pairs):
    from simulator.serving.engine_pricing import batch_tokens, mixed_plan, padded_size

    batch = tuple(SeqWork(n, c) for n, c in pairs)
    sizes = (1, 2, 4, 8, 16, 512, 2048)
    tokens = sum(n for n, _ in pairs)
    assert batch_tokens(batch) == tokens
    prefill = any(n > 1 for n, _ in pairs)
    assert mixed_plan(batch, sizes) == (padded_size(tokens, sizes) if prefill else None)
