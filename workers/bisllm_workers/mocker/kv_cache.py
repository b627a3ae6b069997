"""Paged KV cache with prefix caching, modelled on vLLM v1's `BlockPool` + `KVCacheManager`.

What the router can observe (cached_tokens, the KV event stream, kv_cache_usage) depends on the
exact cache discipline, so this follows vLLM 0.32 rule for rule; the captured real-engine stream
in tests/workers/data/vllm_kv_events.json is reproduced event for event:

- Blocks live in a free queue. Allocation pops from the front; a popped block that still holds
  a cached hash is evicted then (one `BlockRemoved` per block).
- A finished or preempted request frees its blocks in *reverse* order: blocks without a hash go
  to the front of the queue (reused first), cached blocks to the back (LRU), so a sequence's
  tail is evicted before its prefix.
- A prefix hit `touch`es blocks: reference count + 1, out of the free queue.
- A block is cached once it is full of computed tokens (generated tokens included). Each
  request's newly cached blocks of one step become one `BlockStored` whose parent is the
  request's previous block.
- Duplicates are not merged: when two physical blocks get the same hash (e.g. vLLM recomputes
  the last block of a fully cached prompt) both are indexed and both emit events, exactly as
  vLLM's `BlockHashToBlockMap` does.
- The lookup caps the hit at `num_tokens - 1` tokens: the engine must compute at least one
  token to produce logits.

Block ids are internal (never published). Unlike vLLM there is no "null block": `num_blocks` are all usable (vLLM's
`--num-gpu-blocks-override N` gives N - 1 usable blocks).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bisllm_workers.kv_events import (
    MEDIUM_GPU,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
)
from bisllm_workers.mocker.request import BlockHash, Request

__all__ = ["KVBlock", "KVCacheManager", "KVEvent"]

KVEvent = BlockStored | BlockRemoved | AllBlocksCleared
# vLLM tags every event of a plain decoder with KV-cache group 0 of kind full attention.
_GROUP_IDX = 0
_SPEC_KIND = "full_attention"


@dataclass(slots=True, eq=False)
class KVBlock:
    block_id: int  # index in KVCacheManager.blocks
    ref_cnt: int = 0  # requests holding it; 0 means it sits in the free queue
    block_hash: BlockHash | None = None  # set while registered in the prefix cache


class KVCacheManager:
    """Blocks, the free queue, the prefix-cache index and the pending event list.

    The free queue is kept in two parts. In vLLM's queue every block without a hash sits in
    front of every block with one (uncached blocks are prepended, cached ones appended, and a
    block only loses its hash when it leaves the queue or on a full reset), and hash-less
    blocks are interchangeable. So the queue is a stack of hash-less blocks followed by an LRU
    `OrderedDict` of cached ones, and block objects are created lazily: memory follows the
    blocks actually used, not the capacity, which matters with hundreds of engines of 25k
    blocks each.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_events: bool = True) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_events = enable_events
        self._num_never_used = num_blocks  # blocks not instantiated yet (free, hash-less)
        self._free_plain: list[KVBlock] = []  # free hash-less blocks (front of the queue)
        # free cached blocks, least recently freed first (back of the queue)
        self._free_cached: OrderedDict[int, KVBlock] = OrderedDict()
        # hash -> physical blocks carrying it (usually one; see the duplicates note above)
        self._cached: dict[BlockHash, dict[int, KVBlock]] = {}
        self._events: list[KVEvent] = []

    # ---- state ---------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return self._num_never_used + len(self._free_plain) + len(self._free_cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (vllm:kv_cache_usage_perc)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered in the prefix cache (held or free)."""
        return sum(len(v) for v in self._cached.values())

    def cached_hashes(self) -> set[BlockHash]:
        return set(self._cached)

    def take_events(self) -> list[KVEvent]:
        events, self._events = self._events, []
        return events

    # ---- request-level operations (vLLM's KVCacheManager) ---------------------------------

    def get_computed_blocks(self, req: Request) -> list[KVBlock]:
        """Longest cached prefix of `req`, in full blocks, leaving at least one token to
        compute. Does not take references; `allocate_slots` does."""
        max_blocks = (req.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        cached = self._cached
        for h in req.block_hashes[:max_blocks]:
            found = cached.get(h)
            if not found:
                break
            hits.append(next(iter(found.values())))
        return hits

    def allocate_slots(
        self, req: Request, num_new_tokens: int, new_computed_blocks: Sequence[KVBlock] = ()
    ) -> bool:
        """Give `req` the blocks to compute `num_new_tokens` more tokens (after any prefix hit
        `new_computed_blocks`), and cache the blocks that this step fills. False (and no
        change) when the free queue is too short; the scheduler then preempts or waits."""
        bs = self.block_size
        num_computed = req.num_computed_tokens + len(new_computed_blocks) * bs
        num_required = -(-(num_computed + num_new_tokens) // bs)
        num_new_blocks = num_required - len(req.blocks) - len(new_computed_blocks)
        # Hit blocks with no holder sit in the free queue: taking them shrinks it too.
        num_evictable_hits = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        if max(num_new_blocks, 0) + num_evictable_hits > self.num_free_blocks:
            return False
        if new_computed_blocks:
            self._touch(new_computed_blocks)
            req.blocks.extend(new_computed_blocks)
            req.num_cached_blocks = len(req.blocks)
        if num_new_blocks > 0:
            req.blocks.extend(self._pop_free(num_new_blocks))
        num_full = min(num_computed + num_new_tokens, req.num_tokens) // bs
        if num_full > req.num_cached_blocks:
            self._cache_full_blocks(req, req.num_cached_blocks, num_full)
            req.num_cached_blocks = num_full
        return True

    def free(self, req: Request) -> None:
        """Release a finished, aborted or preempted request's blocks (tail first)."""
        if req.blocks:
            self._free_blocks(reversed(req.blocks))
        req.blocks = []
        req.num_cached_blocks = 0

    def reset_prefix_cache(self) -> bool:
        """Drop every cached hash (vLLM's /reset_prefix_cache). Refused while any block is
        held by a request, as in vLLM."""
        if self.num_free_blocks != self.num_blocks:
            return False
        for b in self._free_cached.values():
            b.block_hash = None
            self._free_plain.append(b)
        self._free_cached.clear()
        self._cached.clear()
        if self.enable_events:
            self._events.append(AllBlocksCleared())
        return True

    # ---- block-level operations (vLLM's BlockPool) ---------------------------------------

    def _touch(self, blocks: Iterable[KVBlock]) -> None:
        free_cached = self._free_cached
        for b in blocks:
            if b.ref_cnt == 0:
                del free_cached[b.block_id]  # a hit block always has a hash
            b.ref_cnt += 1

    def _pop_free(self, n: int) -> list[KVBlock]:
        out: list[KVBlock] = []
        removed: list[BlockHash] = []
        plain = self._free_plain
        for _ in range(n):
            if plain:
                b = plain.pop()
            elif self._num_never_used:
                b = KVBlock(self.num_blocks - self._num_never_used)
                self._num_never_used -= 1
            else:
                # Evict the least recently freed cached block.
                _, b = self._free_cached.popitem(last=False)
                h = b.block_hash
                assert h is not None
                holders = self._cached[h]
                del holders[b.block_id]
                if not holders:
                    del self._cached[h]
                b.block_hash = None
                removed.append(h)
            b.ref_cnt = 1
            out.append(b)
        if removed and self.enable_events:
            self._events.extend(
                BlockRemoved(block_hashes=[h], medium=MEDIUM_GPU, group_idx=_GROUP_IDX)
                for h in removed
            )
        return out

    def _free_blocks(self, ordered: Iterable[KVBlock]) -> None:
        free_cached = self._free_cached
        plain = self._free_plain
        for b in ordered:
            b.ref_cnt -= 1
            if b.ref_cnt == 0:
                if b.block_hash is None:
                    plain.append(b)
                else:
                    free_cached[b.block_id] = b  # back of the queue: LRU

    def _cache_full_blocks(self, req: Request, start: int, end: int) -> None:
        bs = self.block_size
        hashes = req.block_hashes[start:end]
        for blk, h in zip(req.blocks[start:end], hashes, strict=True):
            blk.block_hash = h
            self._cached.setdefault(h, {})[blk.block_id] = blk
        if self.enable_events:
            self._events.append(
                BlockStored(
                    block_hashes=list(hashes),
                    parent_block_hash=req.block_hashes[start - 1] if start > 0 else None,
                    token_ids=req.all_token_ids[start * bs : end * bs],
                    block_size=bs,
                    lora_id=None,
                    medium=MEDIUM_GPU,
                    lora_name=None,
                    extra_keys=[None] * (end - start),
                    group_idx=_GROUP_IDX,
                    kv_cache_spec_kind=_SPEC_KIND,
                )
            )
