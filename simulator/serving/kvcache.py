"""Serving memory stage: a paged KV cache of one replica (vLLM's block manager, counted in blocks).

A sequence holds ceil(kv_tokens / block_size_tokens) blocks; it grows block by block and frees all of
them when it finishes or is preempted. Used blocks never exceed the capacity: a request that does not fit
is refused (the scheduler then waits or preempts).

A model with sliding-window layers (config.serving.SlidingKVSpec) is counted in layer blocks, one layer's
block each (a block of every layer is full_layers + sliding_layers of them): a full layer holds a block per
block_size_tokens positions, a sliding layer at most the blocks its window reaches (kv_layer_blocks), as
vLLM's hybrid KV cache manager keeps one block pool for its full and sliding-window groups. Capacity, free
and used figures are still told in blocks of every layer.

With prefix caching (scheduler.prefix_caching) a sequence may also refer to shared blocks: those of a cached
prompt prefix (`pinned`: held by the cache, not by any sequence, and never freed), which count towards what
the sequence holds but not towards what it frees. Full-attention models only.
"""

from __future__ import annotations

import math

from simulator.config.serving import SlidingKVSpec, kv_layer_blocks, layers_per_block


class PagedKVCache:
    """Block accounting for one replica's KV cache."""

    def __init__(self, capacity_blocks: int, block_size_tokens: int, sliding: SlidingKVSpec | None = None) -> None:
        if capacity_blocks < 1 or block_size_tokens < 1:
            raise ValueError("capacity_blocks and block_size_tokens must be >= 1")
        self.capacity_blocks = capacity_blocks
        self.block_size_tokens = block_size_tokens
        self.sliding = sliding
        self.per_block = layers_per_block(sliding)  # units (layer blocks) per block of every layer
        self.capacity_units = capacity_blocks * self.per_block
        self.used_units = 0
        self.peak_used_units = 0
        self._held: dict[int, int] = {}  # sequence id -> units held
        self._shared: dict[int, int] = {}  # sequence id -> pinned units it refers to (prefix caching)
        self.pinned_units = 0  # units of cached prefixes

    def blocks_for(self, kv_tokens: int) -> int:
        """Units (blocks, or layer blocks with sliding layers) that hold kv_tokens tokens."""
        return kv_layer_blocks(kv_tokens, self.block_size_tokens, self.sliding)

    @property
    def used_blocks(self) -> int:
        """Blocks of every layer in use (their layer blocks, rounded up)."""
        return -(-self.used_units // self.per_block)

    @property
    def peak_used_blocks(self) -> int:
        return -(-self.peak_used_units // self.per_block)

    @property
    def free_blocks(self) -> int:
        """Whole blocks of every layer free."""
        return (self.capacity_units - self.used_units) // self.per_block

    def held(self, seq_id: int) -> int:
        """Units sequence seq_id holds (0 when none)."""
        return self._held.get(seq_id, 0)

    def tokens_held(self, seq_id: int) -> int | float:
        """Positions seq_id's units hold: growing past them needs a unit (inf when it never will: every layer
        slides and its window's blocks are held)."""
        held, size = self._held.get(seq_id, 0), self.block_size_tokens
        s = self.sliding
        if s is None:
            return (held + self._shared.get(seq_id, 0)) * size
        window = s.window_blocks(size)
        if not s.full_layers and held >= self.per_block * window:  # every layer slides and holds its window
            return math.inf
        if held <= self.per_block * window:  # every layer still grows a block per block_size_tokens
            return held // self.per_block * size
        return (held - s.sliding_layers * window) // s.full_layers * size

    def extra_blocks(self, seq_id: int, kv_tokens: int) -> int:
        """Units seq_id still needs to hold kv_tokens tokens."""
        return max(0, self.blocks_for(kv_tokens) - self._held.get(seq_id, 0) - self._shared.get(seq_id, 0))

    def grow(self, seq_id: int, kv_tokens: int) -> bool:
        """Make seq_id hold kv_tokens tokens; False (and nothing allocated) when the free units do not suffice."""
        held = self._held.get(seq_id, 0)
        if self.sliding is None:  # blocks_for's arithmetic inline: the scheduler's hot path
            extra = -(-kv_tokens // self.block_size_tokens) - held
            if self._shared:
                extra -= self._shared.get(seq_id, 0)
        else:
            extra = self.blocks_for(kv_tokens) - held
        if extra <= 0:
            return True
        if extra > self.capacity_units - self.used_units:
            return False
        self._held[seq_id] = held + extra
        self.used_units += extra
        if self.used_units > self.peak_used_units:
            self.peak_used_units = self.used_units
        return True

    def free(self, seq_id: int) -> int:
        """Release every unit of seq_id (not the pinned ones it refers to); returns how many."""
        units = self._held.pop(seq_id, 0)
        self.used_units -= units
        if self._shared:
            self._shared.pop(seq_id, None)
        return units

    def shared(self, seq_id: int) -> int:
        """Pinned units seq_id refers to."""
        return self._shared.get(seq_id, 0)

    def share(self, seq_id: int, units: int) -> None:
        """Make seq_id (holding nothing yet) refer to `units` pinned units: a cached prefix's blocks."""
        assert self.sliding is None and units <= self.pinned_units and not self._held.get(seq_id)
        if units:
            self._shared[seq_id] = units
        else:
            self._shared.pop(seq_id, None)

    def keep(self, units: int) -> None:
        """Pin `units` just freed (by a sequence that finished in the iteration that computed them)."""
        assert self.sliding is None and units <= self.capacity_units - self.used_units
        self.used_units += units
        self.pinned_units += units

    def unpin(self, units: int) -> None:
        """Evict `units` pinned units no sequence refers to."""
        assert units <= self.pinned_units
        self.pinned_units -= units
        self.used_units -= units

    def pin(self, seq_id: int, units: int) -> None:
        """Hand `units` of seq_id's own units to the prefix cache: they stay in use when it frees its own, and
        it refers to them as shared ones."""
        assert self.sliding is None and 0 < units <= self._held.get(seq_id, 0)
        self._held[seq_id] -= units
        self._shared[seq_id] = self._shared.get(seq_id, 0) + units
        self.pinned_units += units
