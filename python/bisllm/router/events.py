"""KV event subscriber: one asyncio task per worker feeding raw vLLM batches to the core.

Wire format (vLLM ``vllm/distributed/kv_events.py``): a ZMQ PUB socket sends
``[topic, seq (8-byte big-endian), payload (msgpack batch)]``; a ROUTER socket
replays buffered batches to a DEALER that sends ``[b"", start_seq]`` and answers
``[b"", topic, seq, payload]`` per batch, then ``[b"", b"", -1, b""]``.

Per worker the subscriber tracks the next expected sequence number:

- ``seq == expected``: apply.
- ``seq > expected`` (a gap, or the first message after connecting, which ZMQ's
  slow-joiner drops): state DEGRADED, replay ``[expected, seq)`` and apply it
  in order. If the replay does not return exactly the missing batches, the
  worker's entries are cleared (a lost ``BlockRemoved`` would leave stale
  entries, and stale entries are worse than missing ones), then streaming
  resumes EXACT from ``seq``.
- ``seq < expected``: the engine restarted its counter: clear, then apply.

Payloads are decoded in Rust (``Core.apply_events``); a malformed message is
counted and dropped, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from enum import StrEnum

import zmq
import zmq.asyncio

from bisllm._core import Core, CoreError

logger = logging.getLogger("bisllm.router.events")

_END_SEQ = -1


class IndexState(StrEnum):
    """How trustworthy a worker's index entries are."""

    EXACT = "exact"  # events flowing, in sequence
    DEGRADED = "degraded"  # gap detected, catching up through replay
    APPROXIMATE = "approximate"  # no events: entries predicted from routing decisions


@dataclass(slots=True)
class EventStats:
    """Counters one subscriber keeps (also exported as metrics)."""

    batches: int = 0
    invalid: int = 0
    gaps: int = 0
    replays_ok: int = 0
    replays_failed: int = 0
    resets: int = 0
    last_seq: int = -1
    last_event_at: float = 0.0  # monotonic time of the last applied batch


class KvEventSubscriber:
    """Subscribes to one worker's KV events and keeps its index entries in the core."""

    def __init__(
        self,
        core: Core,
        worker_id: int,
        endpoint: str,
        replay_endpoint: str | None,
        topic: str,
        context: zmq.asyncio.Context,
        *,
        replay_timeout_s: float = 2.0,
        bind: bool = False,
    ) -> None:
        self.core = core
        self.worker_id = worker_id
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.topic = topic
        self.context = context
        self.replay_timeout_s = replay_timeout_s
        self.bind = bind  # the publisher connects to us (vLLM with a non-wildcard tcp address)
        self.stats = EventStats()
        self.state = IndexState.EXACT
        self._expected: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"kv-events-{self.worker_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _set_state(self, state: IndexState) -> None:
        if state != self.state:
            logger.info("worker %d index %s -> %s", self.worker_id, self.state, state)
            self.state = state

    def mark_silent(self) -> None:
        """The worker served requests but published nothing: predict its entries instead.

        Called by the registry's watchdog. The next batch that arrives switches the
        worker back to exact and rebuilds its entries from the replay buffer.
        """
        if self.state == IndexState.APPROXIMATE:
            return
        self.core.set_approximate(self.worker_id, True)
        self._expected = None
        self._set_state(IndexState.APPROXIMATE)

    async def _run(self) -> None:
        sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt_string(zmq.SUBSCRIBE, self.topic)
        if self.bind:
            sub.bind(self.endpoint)
        else:
            sub.connect(self.endpoint)
        try:
            while True:
                frames = await sub.recv_multipart(copy=False)
                replay = self._handle(frames)
                if replay is not None:
                    await self._catch_up(*replay)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("KV event subscriber of worker %d failed", self.worker_id)
            raise
        finally:
            sub.close(linger=0)

    def _handle(self, frames: list[zmq.Frame]) -> tuple[int, int, bytes] | None:
        """Apply one live message, or return ``(start, seq, payload)`` to replay first."""
        if len(frames) != 3 or len(frames[1].bytes) != 8:
            self._invalid(f"expected 3 frames [topic, seq, payload], got {len(frames)}")
            return None
        seq = int.from_bytes(frames[1].bytes, "big", signed=True)
        payload = frames[2].bytes
        if self.state == IndexState.APPROXIMATE:
            # Events are back: drop the predicted entries, rebuild from events.
            self.core.set_approximate(self.worker_id, False)
            self._set_state(IndexState.DEGRADED)
        expected = self._expected
        if expected is None or seq == expected:
            if expected is None and seq > 0 and self.replay_endpoint:
                # First message after (re)connecting: fetch what was published before.
                return (0, seq, payload)
            self._apply(seq, payload)
        elif seq > expected:
            self.stats.gaps += 1
            self._set_state(IndexState.DEGRADED)
            if self.replay_endpoint:
                return (expected, seq, payload)
            self.core.clear_worker(self.worker_id)
            self._apply(seq, payload)
        else:
            logger.warning(
                "worker %d event sequence reset (%d after %d): clearing its entries",
                self.worker_id,
                seq,
                expected - 1,
            )
            self.stats.resets += 1
            self.core.clear_worker(self.worker_id)
            self._apply(seq, payload)
        return None

    def _apply(self, seq: int, payload: bytes) -> bool:
        try:
            self.core.apply_events(self.worker_id, payload)
        except CoreError as exc:
            self._invalid(str(exc))
            self._expected = seq + 1
            return False
        self._expected = seq + 1
        self.stats.batches += 1
        self.stats.last_seq = seq
        self.stats.last_event_at = time.monotonic()
        if self.state != IndexState.EXACT:
            self._set_state(IndexState.EXACT)
        return True

    def _invalid(self, why: str) -> None:
        self.stats.invalid += 1
        logger.warning("worker %d: dropped a malformed KV event message: %s", self.worker_id, why)

    async def _catch_up(self, start: int, live_seq: int, live_payload: bytes) -> None:
        """Replay ``[start, live_seq)`` then apply the live batch; clear on a failed replay."""
        batches = await self._replay(start)
        wanted = [(s, p) for s, p in batches if start <= s < live_seq]
        complete = [s for s, _ in wanted] == list(range(start, live_seq))
        if complete:
            self.stats.replays_ok += 1
            for seq, payload in wanted:
                self._apply(seq, payload)
        else:
            self.stats.replays_failed += 1
            logger.warning(
                "worker %d: replay of [%d, %d) incomplete (%d batches): clearing its entries",
                self.worker_id,
                start,
                live_seq,
                len(wanted),
            )
            self.core.clear_worker(self.worker_id)
        self._apply(live_seq, live_payload)

    async def _replay(self, start: int) -> list[tuple[int, bytes]]:
        """Ask the worker's replay socket for every buffered batch from ``start``."""
        assert self.replay_endpoint is not None
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.replay_endpoint)
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + self.replay_timeout_s
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big", signed=True)])
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not await dealer.poll(int(remaining * 1000)):
                    logger.warning("worker %d: replay timed out", self.worker_id)
                    return out
                frames = await dealer.recv_multipart()
                if len(frames) != 4 or len(frames[2]) != 8:
                    self._invalid("malformed replay frame")
                    return out
                seq = int.from_bytes(frames[2], "big", signed=True)
                if seq == _END_SEQ:
                    return out
                out.append((seq, frames[3]))
        finally:
            dealer.close(linger=0)
