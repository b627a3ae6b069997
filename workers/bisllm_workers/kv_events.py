"""vLLM's KV-event wire format and an asyncio ZMQ publisher for it.

The structs mirror `vllm/distributed/kv_events.py` of vLLM 0.32 field for field and in the same
order: msgspec encodes a Struct's fields in declaration order, so the same order gives the same
bytes. `tests/workers/test_mocker_vllm_compat.py` decodes our frames with vLLM's own classes and
re-encodes them to prove it.

Frames on the PUB socket: `[topic, seq (8 bytes, big-endian, from 0), payload]`, where payload is
the msgpack *array* `[ts, [events...], data_parallel_rank]` (`array_like=True`), each event a msgpack
*map* tagged `"type"`. Fields that have a default and hold it are omitted (`omit_defaults=True`);
fields without a default (`lora_id`, `medium`, `lora_name`, `parent_block_hash`) are always sent,
even as nil, exactly like vLLM.

Replay (ROUTER, always bound): a DEALER sends `[b"", start_seq]`; it receives
`[b"", topic, seq, payload]` for every buffered batch with seq >= start_seq, then the end marker
`[b"", b"", (-1) as signed 8 bytes, b""]`.

This module imports nothing from vLLM (the mocker must run without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import msgspec
import zmq
import zmq.asyncio

__all__ = [
    "END_SEQ",
    "MEDIUM_GPU",
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "KVCacheEvent",
    "KVEventBatch",
    "KVEventPublisher",
    "decode_batch",
    "encode_batch",
]

log = logging.getLogger(__name__)

MEDIUM_GPU = "GPU"
# The replay end marker: seq -1 as a signed 8-byte big-endian integer.
END_SEQ = (-1).to_bytes(8, "big", signed=True)


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):  # type: ignore[call-arg]
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):  # type: ignore[call-arg]
    """Base of the tagged union; the tag is the class name (`"type": "BlockStored"`)."""


class BlockStored(KVCacheEvent):
    """Full blocks newly cached by one request in one step (a chain: each block's parent is the
    previous one; the first block's parent is `parent_block_hash`, None at the sequence start)."""

    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]  # len(block_hashes) * block_size token ids, in order
    block_size: int
    lora_id: int | None  # deprecated in vLLM, still always sent
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None  # one entry per block
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None


class BlockRemoved(KVCacheEvent):
    """One evicted block (vLLM sends one event per block, each with a one-element list)."""

    block_hashes: list[int | bytes]
    medium: str | None
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksCleared(KVCacheEvent):
    """The whole prefix cache was reset."""


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


_ENCODER = msgspec.msgpack.Encoder()
# Plain ints: pyzmq's Flag enums cost an Enum construction per `|`.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_DECODER = msgspec.msgpack.Decoder(KVEventBatch)


def encode_batch(batch: KVEventBatch) -> bytes:
    return _ENCODER.encode(batch)


def decode_batch(payload: bytes) -> KVEventBatch:
    return _DECODER.decode(payload)


class KVEventPublisher:
    """One engine's PUB socket + replay ROUTER socket + bounded replay buffer.

    Unlike vLLM's publisher there is no thread: the mocker hosts hundreds of engines in one
    asyncio loop, so `publish` sends synchronously with NOBLOCK on a plain (non-asyncio) PUB
    socket (a PUB socket never blocks; at the high-water mark it drops, as vLLM's does; the
    asyncio socket wrapper would add a Future per frame) and replay requests are served by one
    small asyncio task per publisher on a ROUTER socket, idle until a request arrives.

    `ctx` is a plain `zmq.Context`; the ROUTER socket comes from an asyncio shadow of it.

    Both sockets are *bound* (the mocker owns its endpoints). A tcp endpoint with port `*`
    (`tcp://127.0.0.1:*`) binds an ephemeral port; `endpoint` / `replay_endpoint` then report
    the address subscribers connect to.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        replay_endpoint: str | None,
        topic: str = "kv",
        buffer_steps: int = 10_000,
        hwm: int = 100_000,
        data_parallel_rank: int = 0,
    ) -> None:
        self._topic = topic.encode()
        self._dp_rank = data_parallel_rank
        # (seq, payload) of the last `buffer_steps` batches, for replay.
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._seq = 0
        self._pub = ctx.socket(zmq.PUB)
        self._pub.set_hwm(hwm)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(endpoint)
        self.endpoint: str = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._replay: zmq.asyncio.Socket | None = None
        self.replay_endpoint: str | None = None
        self._replay_task: asyncio.Task[None] | None = None
        if replay_endpoint is not None:
            self._replay = zmq.asyncio.Context.shadow(ctx.underlying).socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self._replay.bind(replay_endpoint)
            self.replay_endpoint = self._replay.getsockopt_string(zmq.LAST_ENDPOINT)
            self._replay_task = asyncio.get_running_loop().create_task(
                self._serve_replay(), name=f"kv-replay {self.replay_endpoint}"
            )

    @property
    def topic(self) -> str:
        return self._topic.decode()

    @property
    def next_seq(self) -> int:
        return self._seq

    def publish(self, events: list[BlockStored | BlockRemoved | AllBlocksCleared]) -> int:
        """Send one batch (one engine step's events); returns its sequence number."""
        payload = _ENCODER.encode(
            KVEventBatch(ts=time.time(), events=events, data_parallel_rank=self._dp_rank)
        )
        seq = self._seq
        self._seq += 1
        pub = self._pub
        with contextlib.suppress(zmq.Again):
            pub.send(self._topic, _SNDMORE_NOBLOCK)
            pub.send(seq.to_bytes(8, "big"), _SNDMORE_NOBLOCK)
            pub.send(payload, _NOBLOCK)
        self._buffer.append((seq, payload))
        return seq

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        sock = self._replay
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 3:
                log.warning("invalid replay request with %d frames", len(frames))
                continue
            client, _, start = frames
            start_seq = int.from_bytes(start, "big")
            # Snapshot first: publish() may append while we await the sends below.
            for seq, payload in list(self._buffer):
                if seq >= start_seq:
                    await sock.send_multipart(
                        (client, b"", self._topic, seq.to_bytes(8, "big"), payload)
                    )
            await sock.send_multipart((client, b"", b"", END_SEQ, b""))

    async def close(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        if self._replay is not None:
            self._replay.close(linger=0)
        self._pub.close(linger=0)
