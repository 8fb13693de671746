"""Serving memory stage: a paged KV cache of one replica (vLLM's block manager, counted in blocks).

A sequence holds ceil(kv_tokens / block_size_tokens) blocks; it grows block by block and frees all of
them when it finishes or is preempted. Used blocks never exceed the capacity: a request that does not fit
is refused (the scheduler then waits or preempts).
"""

from __future__ import annotations


class PagedKVCache:
    """Block accounting for one replica's KV cache."""

    def __init__(self, capacity_blocks: int, block_size_tokens: int) -> None:
        if capacity_blocks < 1 or block_size_tokens < 1:
            raise ValueError("capacity_blocks and block_size_tokens must be >= 1")
        self.capacity_blocks = capacity_blocks
        self.block_size_tokens = block_size_tokens
        self.used_blocks = 0
        self.peak_used_blocks = 0
        self._held: dict[int, int] = {}  # sequence id -> blocks held

    def blocks_for(self, kv_tokens: int) -> int:
        """Blocks that hold kv_tokens tokens."""
        return -(-kv_tokens // self.block_size_tokens)

    @property
    def free_blocks(self) -> int:
        return self.capacity_blocks - self.used_blocks

    def held(self, seq_id: int) -> int:
        """Blocks sequence seq_id holds (0 when none)."""
        return self._held.get(seq_id, 0)

    def extra_blocks(self, seq_id: int, kv_tokens: int) -> int:
        """Blocks seq_id still needs to hold kv_tokens tokens."""
        return max(0, self.blocks_for(kv_tokens) - self._held.get(seq_id, 0))

    def grow(self, seq_id: int, kv_tokens: int) -> bool:
        """Make seq_id hold kv_tokens tokens; False (and nothing allocated) when the free blocks do not suffice."""
        held = self._held.get(seq_id, 0)
        extra = -(-kv_tokens // self.block_size_tokens) - held
        if extra <= 0:
            return True
        if extra > self.capacity_blocks - self.used_blocks:
            return False
        self._held[seq_id] = held + extra
        self.used_blocks += extra
        if self.used_blocks > self.peak_used_blocks:
            self.peak_used_blocks = self.used_blocks
        return True

    def free(self, seq_id: int) -> int:
        """Release every block of seq_id; returns how many."""
        blocks = self._held.pop(seq_id, 0)
        self.used_blocks -= blocks
        return blocks
