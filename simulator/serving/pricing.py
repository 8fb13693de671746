"""Serving cost stage: the interface that prices one scheduler iteration, an analytic pricer, and a cache.

The serving simulation asks an `IterationPricer` how long one iteration of a ragged batch takes; the
operator-level pricing through moesim's DAG plugs in here by implementing the same protocol.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np


class SeqWork(NamedTuple):
    """One sequence's share of one scheduler iteration.

    A NamedTuple rather than a frozen dataclass: it is made once per sequence per iteration (the hot loop),
    and a tuple is built, hashed and sorted several times faster while staying immutable.
    """

    new_tokens: int  # tokens computed this iteration: a prefill chunk's length, or 1 for a decode step
    context_tokens: int  # tokens already in this sequence's KV cache before this iteration


Batch = tuple[SeqWork, ...]


class IterationPricer(Protocol):
    """Seconds one iteration of this ragged batch takes on one replica.

    Contract: a pure function of the batch's multiset of (new_tokens, context_tokens) (the order of the
    sequences does not matter); an empty batch is the dummy iteration an idle replica of a lockstep
    expert-parallel group runs to join the group's collectives; the result is > 0.
    """

    def __call__(self, batch: Batch) -> float: ...


class LinearPricer:
    """Analytic test pricer: base_s + per_token_s * sum(new_tokens) + per_context_token_s * sum(context_tokens).

    Every iteration pays base_s (launch, weights read); every computed token pays per_token_s (GEMMs);
    every sequence reads its KV cache once (memory-bound attention). Prefill attention's quadratic term is
    left out on purpose: times stay hand-computable. With dyadic figures (0.25, 2**-6, ...) times are exact.
    """

    def __init__(self, base_s: float, per_token_s: float, per_context_token_s: float = 0.0) -> None:
        if not base_s > 0:
            raise ValueError(f"base_s = {base_s} must be > 0 (an iteration always takes time)")
        if per_token_s < 0 or per_context_token_s < 0:
            raise ValueError("per_token_s and per_context_token_s must be >= 0")
        self.base_s = base_s
        self.per_token_s = per_token_s
        self.per_context_token_s = per_context_token_s

    def __call__(self, batch: Batch) -> float:
        new_tokens = 0
        context_tokens = 0
        for work in batch:
            new_tokens += work.new_tokens
            context_tokens += work.context_tokens
        return self.base_s + self.per_token_s * new_tokens + self.per_context_token_s * context_tokens

    def __repr__(self) -> str:
        return f"LinearPricer({self.base_s}, {self.per_token_s}, {self.per_context_token_s})"


class CachedPricer:
    """Prices each distinct batch shape once: the key is the sorted multiset of (new_tokens, context_tokens),
    and the wrapped pricer sees that canonical (sorted) batch. Token counts must be < 2**32.

    context_bucket_tokens > 1 rounds every context up to a multiple of it before pricing, so decode batches
    whose contexts differ by a few tokens share one price (an approximation bounded by one bucket of KV
    reads per sequence; 1 keeps prices exact). max_entries bounds memory: the cache is cleared when full.
    """

    def __init__(self, pricer: IterationPricer, context_bucket_tokens: int = 1, max_entries: int = 100_000) -> None:
        if context_bucket_tokens < 1:
            raise ValueError(f"context_bucket_tokens = {context_bucket_tokens} must be >= 1")
        self.pricer = pricer
        self.context_bucket_tokens = context_bucket_tokens
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._cache: dict[bytes, float] = {}

    def key(self, batch: Batch) -> bytes:
        """Canonical form: each (new_tokens, context_tokens rounded up to the bucket) packed into one int
        (new << 32 | context: sorting these sorts the pairs), sorted, as 8 bytes each. Ints sort faster
        than tuples, and bytes keep a cached key at 8 bytes per sequence."""
        return array("q", self.packed(batch)).tobytes()

    def packed(self, batch: Batch) -> list[int]:
        """key()'s sorted packed ints."""
        q = self.context_bucket_tokens
        if q == 1:
            packed = [n << 32 | c for n, c in batch]
        else:
            packed = [n << 32 | -(-c // q) * q for n, c in batch]
        packed.sort()
        return packed

    def run_key(self, sorted_contexts: np.ndarray, j: int) -> bytes:
        """key() of a pure decode batch whose contexts are `sorted_contexts` + j (a decode run's iteration j,
        Scheduler.DecodeRun), computed on the array: adding j and rounding up keep the order, so the packed
        values are already sorted; the same bytes as key() of that batch."""
        return (self.run_contexts(sorted_contexts, j) + _DECODE_ROW).tobytes()

    def run_contexts(self, sorted_contexts: np.ndarray, j: int) -> np.ndarray:
        """A decode run's iteration-j contexts as the wrapped pricer sees them (rounded up to the bucket)."""
        q = self.context_bucket_tokens
        return sorted_contexts + j if q == 1 else -(-(sorted_contexts + j) // q) * q

    def price_run(self, sorted_contexts: np.ndarray, j: int, make_batch: Callable[[int], Batch]) -> float:
        """__call__ of a decode run's iteration j (contexts `sorted_contexts` + j), without building the batch:
        a price not seen before comes from the wrapped pricer's decode_latency(contexts) where it has one (the
        same figure as pricing the batch: DagPricer, EnginePricer), else from the batch make_batch(j) builds."""
        contexts = self.run_contexts(sorted_contexts, j)
        key = (contexts + _DECODE_ROW).tobytes()  # run_key
        price = self._hit(key)
        if price is not None:
            return price
        decode = getattr(self.pricer, "decode_latency", None)
        if decode is None:
            return self._miss(key, make_batch(j))
        return self._keep(key, float(decode(contexts)))

    def _hit(self, key: bytes) -> float | None:
        price = self._cache.get(key)
        if price is not None:
            self.hits += 1
        return price

    def _miss(self, key: bytes, batch: Batch) -> float:
        """Price the batch (canonical) and keep it under key."""
        return self._keep(key, float(self.pricer(self.canonical(batch))))

    def _keep(self, key: bytes, price: float) -> float:
        """Keep a price just computed under key, clearing the cache when full."""
        self.misses += 1
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key] = price
        return price

    def canonical(self, batch: Batch) -> Batch:
        """The batch the wrapped pricer sees: sorted, contexts rounded up to the bucket."""
        q = self.context_bucket_tokens
        if q == 1:
            return tuple(sorted(batch))
        return tuple(sorted([_new(SeqWork, (n, -(-c // q) * q)) for n, c in batch]))

    def __call__(self, batch: Batch) -> float:
        packed = self.packed(batch)
        key = array("q", packed).tobytes()
        price = self._hit(key)
        if price is not None:
            return price
        # canonical(batch), unpacked from the sorted key: the same tuples in the same order, without a sort
        canonical = tuple([_new(SeqWork, (p >> 32, p & _LOW_32)) for p in packed])
        return self._keep(key, float(self.pricer(canonical)))


_new = tuple.__new__  # SeqWork without NamedTuple's Python-level __new__ (hot loop)
_LOW_32 = (1 << 32) - 1  # a packed key's context_tokens
_DECODE_ROW = np.int64(1 << 32)  # a decode row's new_tokens (1) in CachedPricer's packed key
