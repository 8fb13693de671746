"""Paged KV cache accounting."""

from __future__ import annotations

from simulator.serving.kvcache import PagedKVCache


def test_grow_allocates_whole_blocks():
    kv = PagedKVCache(capacity_blocks=4, block_size_tokens=16)
    assert kv.grow(1, 17)
    assert (kv.held(1), kv.used_blocks, kv.free_blocks) == (2, 2, 2)


def test_grow_within_held_blocks_allocates_nothing():
    kv = PagedKVCache(4, 16)
    kv.grow(1, 17)
    assert kv.grow(1, 32)
    assert kv.used_blocks == 2


def test_grow_past_capacity_is_refused_and_allocates_nothing():
    kv = PagedKVCache(4, 16)
    kv.grow(1, 48)
    assert not kv.grow(2, 17)
    assert (kv.used_blocks, kv.held(2)) == (3, 0)


def test_free_returns_every_block_and_peak_is_kept():
    kv = PagedKVCache(4, 16)
    kv.grow(1, 64)
    assert kv.free(1) == 4
    assert (kv.used_blocks, kv.peak_used_blocks) == (0, 4)
