"""Type stub for the Rust router core (router-core/src/python). Checked by mypy.stubtest.

The core keeps three things behind one lock-free-for-Python object (`Core`):
the radix-tree KV prefix index, the per-worker token-load scoreboard and the
dispatch policy. Hot calls (`route`, `apply_events`, `hash_blocks`) release the GIL.

A worker is keyed by ``(worker_id, dp_rank)``: vLLM data-parallel ranks of one
server are separate caches and separate load.
"""

from collections.abc import Sequence
from typing import Final, final

from typing_extensions import Buffer

__all__ = [
    "POLICIES",
    "Core",
    "CoreError",
    "EventDecodeError",
    "EventsSummary",
    "RouteDecision",
    "UnknownRequestError",
    "UnknownWorkerError",
    "WorkerLoad",
    "__version__",
    "hash_blocks",
    "lora_salt",
]

__version__: Final[str]

#: Names accepted by ``Core(policy=...)``.
POLICIES: Final[tuple[str, ...]]

#: Token ids: a list of ints, or any buffer of native-endian uint32 (array('I'),
#: numpy uint32, bytes/bytearray/memoryview whose length is a multiple of 4).
TokenInput = Sequence[int] | Buffer

class CoreError(ValueError):
    """Base class of every error the core raises."""

class EventDecodeError(CoreError):
    """A KV event payload is not a valid vLLM msgpack batch; the index is unchanged."""

class UnknownWorkerError(CoreError, KeyError):
    """The worker (id, dp_rank) was never added or was removed."""

class UnknownRequestError(CoreError, KeyError):
    """The request id is not booked on the scoreboard (never routed, or already freed)."""

def hash_blocks(tokens: TokenInput, block_size: int, salt: int = 0) -> list[int]:
    """Chained xxh3-64 hashes of every full block of ``tokens``.

    Block i hashes ``le_bytes(h_{i-1}) || le_u32(tokens of block i)`` with seed ``salt``;
    the trailing partial block is not hashed.
    """

def lora_salt(lora_name: str) -> int:
    """The ``salt`` of requests to a LoRA adapter: ``xxh3_64(lora_name.encode())``.

    ``apply_events`` hashes blocks stored with a ``lora_name`` under this salt, so pass
    the same value to ``route(..., salt=...)`` for requests to that adapter.
    """

@final
class RouteDecision:
    """What ``Core.route`` chose and why."""

    worker_id: int
    dp_rank: int
    #: Blocks of this prompt the chosen worker already holds (router's index).
    overlap_blocks: int
    #: The largest overlap any eligible worker had (the best-prefix bound).
    best_overlap_blocks: int
    #: Full blocks in the prompt.
    prompt_blocks: int
    prompt_tokens: int
    #: Uncached prompt tokens booked as prefill load on the worker.
    prefill_tokens: int
    #: Cost terms of the chosen worker (kv_aware; 0.0 for other policies).
    cost: float
    prefill_blocks: float
    decode_blocks: float
    #: Name of the policy that decided.
    policy: str

@final
class WorkerLoad:
    """One worker's scoreboard row."""

    worker_id: int
    dp_rank: int
    #: Uncached prompt tokens of requests still in prefill.
    prefill_tokens: int
    #: Prompt + generated tokens of requests decoding.
    decode_tokens: int
    #: prefill_tokens + decode_tokens: the autoscaling signal.
    in_flight_tokens: int
    prefill_requests: int
    decode_requests: int
    #: KV blocks held by active requests (prefill + decode).
    active_blocks: int
    #: (block, worker) entries in the prefix index for this worker.
    indexed_blocks: int
    #: True while the worker's index entries are predicted from routing, not events.
    approximate: bool

@final
class EventsSummary:
    """What one ``apply_events`` call did."""

    dp_rank: int
    stored_blocks: int
    removed_blocks: int
    cleared: bool
    #: Stored blocks whose parent was unknown (chain broken; indexed as roots of nothing).
    orphaned_blocks: int

@final
class Core:
    """Prefix index + scoreboard + dispatch for one model served by a pool of workers.

    Args:
        block_size: tokens per KV block; every worker of this core must use it.
        policy: one of ``POLICIES``.
        overlap_weight: kv_aware weight of prefill blocks against decode blocks.
        temperature: kv_aware softmax temperature; 0 takes the minimum cost.
        seed: RNG seed for random, power_of_two and temperature sampling.
        approx_ttl_secs: lifetime of entries predicted for approximate workers.
    """

    def __new__(
        cls,
        block_size: int,
        *,
        policy: str = "kv_aware",
        overlap_weight: float = 1.0,
        temperature: float = 0.0,
        seed: int | None = None,
        approx_ttl_secs: float = 120.0,
    ) -> Core: ...
    @property
    def block_size(self) -> int: ...
    @property
    def policy(self) -> str: ...
    def add_worker(self, worker_id: int, dp_rank: int = 0, *, approximate: bool = False) -> None:
        """Register a worker (idempotent). Approximate workers get predicted index entries."""
    def remove_worker(self, worker_id: int, dp_rank: int | None = None) -> None:
        """Drop a worker (all dp ranks when None): its index entries, and stop routing to it.

        Requests already booked on it stay on the scoreboard until finished or cancelled.
        Raises UnknownWorkerError if no such worker.
        """
    def set_approximate(
        self, worker_id: int, approximate: bool, dp_rank: int | None = None
    ) -> None:
        """Switch a worker between event-driven (exact) and predicted (approximate) entries.

        Switching clears the worker's index entries: the two sources never mix.
        """
    def workers(self) -> list[tuple[int, int]]:
        """Registered (worker_id, dp_rank) keys, sorted."""
    def apply_events(self, worker_id: int, payload: Buffer) -> EventsSummary:
        """Decode one raw vLLM KV event batch (msgpack ``[ts, [events], dp_rank]``) and apply it.

        Raises EventDecodeError (index unchanged) on a malformed payload and
        UnknownWorkerError if (worker_id, dp_rank of the batch) is not registered.
        """
    def clear_worker(self, worker_id: int, dp_rank: int | None = None) -> None:
        """Drop every index entry of a worker (all dp ranks when None), keep it routable."""
    def find_matches(self, block_hashes: Sequence[int]) -> dict[tuple[int, int], int]:
        """Per worker, how many leading blocks of ``block_hashes`` it holds (workers with 0 omitted)."""
    def route(
        self,
        request_id: str,
        tokens: TokenInput,
        *,
        salt: int = 0,
        exclude: Sequence[tuple[int, int]] = (),
        expected_output_tokens: int = 0,
    ) -> RouteDecision:
        """Hash, match, score, choose and book one request; GIL released.

        ``exclude`` removes workers (e.g. one that just failed) from this choice.
        Raises CoreError if no eligible worker, or if request_id is already booked.
        """
    def on_first_token(self, request_id: str) -> None:
        """Move a request from prefill to decode."""
    def on_tokens(self, request_id: str, num_tokens: int) -> None:
        """Account ``num_tokens`` newly generated tokens of a decoding request."""
    def on_finish(self, request_id: str) -> None:
        """Free a request (completed, failed or cancelled)."""
    def loads(self) -> list[WorkerLoad]:
        """Scoreboard rows of every registered worker, sorted by key."""
    def in_flight_tokens(self) -> int:
        """Sum of in-flight tokens over all workers: the autoscaling signal."""
    def num_requests(self) -> int:
        """Requests currently booked."""
    def index_size(self) -> int:
        """(block, worker) entries in the prefix index."""
    def prune_expired(self) -> int:
        """Drop expired approximate entries now; returns how many. (route also prunes lazily.)"""
