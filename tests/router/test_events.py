"""The KV event subscriber against a real ZMQ publisher speaking vLLM's wire format."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from bisllm._core import Core, hash_blocks
from bisllm.router.events import IndexState, KvEventSubscriber

BLOCK = 4


# vLLM's event classes (vllm/distributed/kv_events.py), mirrored for the test publisher.
class BlockStored(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None


class BlockRemoved(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    block_hashes: list[int]


class AllBlocksCleared(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    pass


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


_encoder = msgspec.msgpack.Encoder()


class FakeEngine:
    """A publisher with vLLM's PUB + replay ROUTER sockets and a replay buffer."""

    def __init__(self, ctx: zmq.asyncio.Context, tmp: str) -> None:
        self.endpoint = f"ipc://{tmp}/pub"
        self.replay_endpoint = f"ipc://{tmp}/replay"
        self.pub = ctx.socket(zmq.PUB)
        self.pub.bind(self.endpoint)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.bind(self.replay_endpoint)
        self.buffer: list[tuple[int, bytes]] = []
        self.seq = 0
        self.replay_task = asyncio.create_task(self._serve_replay())

    async def _serve_replay(self) -> None:
        while True:
            ident, _, start = await self.router.recv_multipart()
            first = int.from_bytes(start, "big")
            for seq, payload in self.buffer:
                if seq >= first:
                    await self.router.send_multipart(
                        [ident, b"", b"kv", seq.to_bytes(8, "big"), payload]
                    )
            await self.router.send_multipart(
                [ident, b"", b"", (-1).to_bytes(8, "big", signed=True), b""]
            )

    async def publish(self, *events: Any, send: bool = True, seq: int | None = None) -> None:
        payload = _encoder.encode(KVEventBatch(time.time(), list(events)))
        seq = self.seq if seq is None else seq
        self.seq = seq + 1
        self.buffer.append((seq, payload))
        if send:
            await self.pub.send_multipart([b"kv", seq.to_bytes(8, "big"), payload])

    async def close(self) -> None:
        self.replay_task.cancel()
        self.pub.close(0)
        self.router.close(0)


def stored(engine_hashes: list[int], parent: int | None, tokens: list[int]) -> BlockStored:
    return BlockStored(engine_hashes, parent, tokens, BLOCK)


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def setup(tmp_path):
    ctx = zmq.asyncio.Context()
    engine = FakeEngine(ctx, str(tmp_path))
    core = Core(BLOCK)
    core.add_worker(1)
    sub = KvEventSubscriber(core, 1, engine.endpoint, engine.replay_endpoint, "kv", ctx)
    sub.start()
    # Let the subscription propagate (ZMQ slow joiner), then start publishing.
    await asyncio.sleep(0.2)
    yield engine, core, sub
    await sub.stop()
    await engine.close()
    ctx.term()


TOKENS = list(range(100, 116))  # 4 blocks of 4


def overlap(core: Core, tokens: list[int] = TOKENS) -> int:
    return core.find_matches(hash_blocks(tokens, BLOCK)).get((1, 0), 0)


async def test_in_order_events_build_the_index(setup):
    engine, core, sub = setup
    await engine.publish(stored([11, 12], None, TOKENS[:8]))
    await wait_for(lambda: overlap(core) == 2)
    await engine.publish(stored([13], 12, TOKENS[8:12]))
    await wait_for(lambda: overlap(core) == 3)
    await engine.publish(BlockRemoved([12]))
    await wait_for(lambda: overlap(core) == 1)
    assert sub.state == IndexState.EXACT
    assert sub.stats.batches == 3 and sub.stats.gaps == 0


async def test_gap_is_filled_by_replay(setup):
    engine, core, sub = setup
    await engine.publish(stored([11], None, TOKENS[:4]))
    await wait_for(lambda: overlap(core) == 1)
    # Two batches the subscriber never sees live; the replay socket still has them.
    await engine.publish(stored([12], 11, TOKENS[4:8]), send=False)
    await engine.publish(stored([13], 12, TOKENS[8:12]), send=False)
    await engine.publish(stored([14], 13, TOKENS[12:16]))
    await wait_for(lambda: overlap(core) == 4)
    assert sub.stats.gaps == 1 and sub.stats.replays_ok == 1
    assert sub.state == IndexState.EXACT


async def test_failed_replay_clears_the_worker(setup):
    engine, core, sub = setup
    await engine.publish(stored([11, 12], None, TOKENS[:8]))
    await wait_for(lambda: overlap(core) == 2)
    # A lost batch that the replay buffer no longer holds (e.g. a lost BlockRemoved).
    await engine.publish(BlockRemoved([12]), send=False)
    engine.buffer.pop()
    await engine.publish(stored([21], None, [1, 2, 3, 4]))
    await wait_for(lambda: sub.stats.replays_failed == 1)
    await wait_for(lambda: overlap(core, [1, 2, 3, 4]) == 1)
    assert overlap(core) == 0  # stale entries dropped rather than trusted


async def test_sequence_reset_clears(setup):
    engine, core, sub = setup
    await engine.publish(stored([11, 12], None, TOKENS[:8]))
    await engine.publish(stored([13], 12, TOKENS[8:12]))
    await wait_for(lambda: overlap(core) == 3)
    await engine.publish(stored([31], None, [5, 6, 7, 8]), seq=0)  # engine restarted
    await wait_for(lambda: sub.stats.resets == 1)
    assert overlap(core) == 0
    assert overlap(core, [5, 6, 7, 8]) == 1


async def test_garbage_is_counted_and_survived(setup):
    engine, core, sub = setup
    await engine.pub.send_multipart([b"kv", (0).to_bytes(8, "big"), b"\xc1garbage"])
    await engine.pub.send_multipart([b"kv", b"short"])
    engine.seq = 1
    await engine.publish(stored([11], None, TOKENS[:4]))
    await wait_for(lambda: overlap(core) == 1)
    assert sub.stats.invalid == 2


async def test_silent_worker_goes_approximate_and_back(setup):
    engine, core, sub = setup
    await engine.publish(stored([11], None, TOKENS[:4]))
    await wait_for(lambda: overlap(core) == 1)
    sub.mark_silent()
    assert sub.state == IndexState.APPROXIMATE
    assert overlap(core) == 0  # switching source drops the event-built entries
    decision = core.route("r1", TOKENS)
    core.on_finish("r1")
    assert decision.worker_id == 1
    assert overlap(core) == 4  # predicted from the routing decision
    # Events resume: predicted entries go, the index is rebuilt from the replay buffer.
    await engine.publish(stored([12], 11, TOKENS[4:8]))
    await wait_for(lambda: sub.state == IndexState.EXACT)
    await wait_for(lambda: overlap(core) == 2)
