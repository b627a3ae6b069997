"""A simulated request: its tokens, its place in the KV cache and its output channel.

Block hashes are kept per request (like vLLM's `Request.block_hashes`): one chained 64-bit
hash per *full* block of `all_token_ids` (prompt and generated tokens), appended as tokens
arrive, so prefix lookups and caching never rehash.
"""

from __future__ import annotations

import asyncio
import enum
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NewType

import xxhash

if TYPE_CHECKING:
    from bisllm_workers.mocker.kv_cache import KVBlock

__all__ = ["BlockHash", "Request", "RequestId", "RequestStatus", "hash_block", "hash_prompt"]

# Engine-side request id (the OpenAI response id). A NewType so it is not confused with the
# many other strings passed around the server.
RequestId = NewType("RequestId", str)
# A block's chained 64-bit hash. Opaque to the router (it rehashes token ids itself); published
# as an unsigned int like vLLM's default `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`.
BlockHash = NewType("BlockHash", int)

# Parent of the first block. Any fixed value works: only equality inside one engine matters.
_ROOT_HASH = 0x6B69_7465_6D6F_636B
_HASH_SEED = 0xB15_11A


def hash_block(parent: BlockHash | None, token_ids: list[int]) -> BlockHash:
    """xxh3-64 over the parent hash and the block's token ids (u32 little-endian)."""
    h = xxhash.xxh3_64(seed=_HASH_SEED)
    h.update((_ROOT_HASH if parent is None else parent).to_bytes(8, "little"))
    h.update(array("I", token_ids).tobytes())
    return BlockHash(h.intdigest())


def hash_prompt(token_ids: list[int]) -> int:
    """Digest of the whole prompt; seeds the deterministic output tokens."""
    return xxhash.xxh3_64_intdigest(array("I", token_ids).tobytes())


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # back in the waiting queue, its blocks freed, to be recomputed
    FINISHED_LENGTH = 3  # max_tokens or max_model_len reached
    FINISHED_ABORTED = 4  # client went away or the engine stopped


@dataclass(slots=True, eq=False)
class Request:
    """One request inside a simulated engine. Mutated only by the engine's scheduler."""

    request_id: RequestId
    prompt_token_ids: list[int]
    max_tokens: int  # generated tokens to produce (the mocker never stops early at EOS)
    block_size: int
    arrival_time: float  # wall clock (time.monotonic()) when added to the engine
    # prompt + generated tokens, in order
    all_token_ids: list[int] = field(default_factory=list)
    # chained hash of every full block of all_token_ids
    block_hashes: list[BlockHash] = field(default_factory=list)
    # tokens whose KV is computed (prefix-cache hits included); reset to 0 on preemption
    num_computed_tokens: int = 0
    # prompt tokens found in the prefix cache at first scheduling; -1 until then (vLLM semantics:
    # a later preemption does not change it)
    num_cached_tokens: int = -1
    # physical blocks held, in sequence order
    blocks: list[KVBlock] = field(default_factory=list)
    # how many leading entries of `blocks` are registered in the prefix cache
    num_cached_blocks: int = 0
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    first_token_time: float | None = None
    first_token_delivered: bool = False  # TTFT recorded (when the first output reached the handler)
    # Output released to the HTTP handler: the engine applies a step before sleeping for its
    # duration, so handlers read these instead of all_token_ids' length / status.
    num_released: int = 0
    released_finished: bool = False
    finish_time: float | None = None
    # seeds the deterministic output tokens
    prompt_digest: int = 0
    # set whenever new output tokens (or the end) are available to the HTTP handler
    wakeup: asyncio.Event | None = None

    def __post_init__(self) -> None:
        if not self.all_token_ids:
            self.all_token_ids = list(self.prompt_token_ids)
        self.prompt_digest = hash_prompt(self.prompt_token_ids)
        self._extend_block_hashes()

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[len(self.prompt_token_ids) :]

    @property
    def is_finished(self) -> bool:
        return self.status >= RequestStatus.FINISHED_LENGTH

    def append_output_token(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)
        if len(self.all_token_ids) % self.block_size == 0:
            self._extend_block_hashes()

    def _extend_block_hashes(self) -> None:
        bs = self.block_size
        hashes = self.block_hashes
        toks = self.all_token_ids
        while (len(hashes) + 1) * bs <= len(toks):
            i = len(hashes)
            hashes.append(hash_block(hashes[-1] if hashes else None, toks[i * bs : (i + 1) * bs]))
