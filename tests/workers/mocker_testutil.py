"""Helpers shared by the mocker tests (no fixtures here: plain functions and classes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import zmq
import zmq.asyncio

from bisllm_workers.kv_events import KVEventBatch, decode_batch
from bisllm_workers.mocker.kv_cache import KVCacheManager
from bisllm_workers.mocker.request import Request, RequestId
from bisllm_workers.mocker.scheduler import Scheduler, SchedulerConfig, StepPlan
from bisllm_workers.mocker.timing import TimingProfile

DATA = Path(__file__).parent / "data"
CAPTURE = DATA / "vllm_kv_events.json"


def load_capture() -> dict[str, Any]:
    return json.loads(CAPTURE.read_text())


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    max_model_len: int = 256,
) -> Scheduler:
    kv = KVCacheManager(num_blocks, block_size)
    cfg = SchedulerConfig(max_num_seqs, max_num_batched_tokens, max_model_len)
    return Scheduler(cfg, kv, lambda r: 1000 + r.num_output_tokens)


def make_request(rid: str, prompt: list[int], max_tokens: int, block_size: int) -> Request:
    return Request(RequestId(rid), list(prompt), max_tokens, block_size, arrival_time=0.0)


class SyncSim:
    """Drives a Scheduler step by step on a virtual clock (no asyncio, fully deterministic)."""

    def __init__(self, sched: Scheduler, profile: TimingProfile | None = None) -> None:
        self.sched = sched
        self.profile = profile
        self.now = 0.0
        self.plans: list[StepPlan] = []
        self.events: list[list[Any]] = []  # one list per step

    def step(self) -> StepPlan:
        plan = self.sched.schedule()
        if self.profile is not None:
            self.now += self.profile.step_time(
                plan.num_prefill_tokens, plan.num_decode_seqs, plan.num_decode_context_tokens
            )
        else:
            self.now += 1.0
        self.sched.update_from_output(plan, self.now)
        self.plans.append(plan)
        self.events.append(self.sched.kv.take_events())
        return plan

    def run(self, max_steps: int = 10_000) -> None:
        for _ in range(max_steps):
            if not self.sched.has_work:
                return
            self.step()
        raise AssertionError("simulation did not finish")


class EventSink:
    """Subscribes to a worker's PUB socket and collects decoded batches with their seq."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.frames: list[list[bytes]] = []
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            self.frames.append(await self.sock.recv_multipart())

    @property
    def batches(self) -> list[tuple[int, KVEventBatch]]:
        return [(int.from_bytes(f[1], "big"), decode_batch(f[2])) for f in self.frames]

    def events(self) -> list[Any]:
        return [e for _, b in self.batches for e in b.events]

    async def wait_for(self, n_batches: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.frames) < n_batches:
                await asyncio.sleep(0.01)

    async def settle(self, quiet: float = 0.2, timeout: float = 5.0) -> None:
        """Wait until no new batch arrived for `quiet` seconds."""
        async with asyncio.timeout(timeout):
            n = -1
            while n != len(self.frames):
                n = len(self.frames)
                await asyncio.sleep(quiet)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.sock.close(linger=0)


async def wait_subscribed(sink: EventSink, delay: float = 0.3) -> None:
    """PUB/SUB slow joiner: give the subscription time to reach the publisher."""
    await asyncio.sleep(delay)


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, raw: bytes | None = None
) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except json.JSONDecodeError:
            return r.status, text


async def stream_events(session: aiohttp.ClientSession, url: str, body: Any) -> AsyncIterator[str]:
    """Yield each SSE `data:` payload as text, [DONE] included."""
    async with session.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                assert ev.startswith(b"data: "), ev
                yield ev[6:].decode()


def sse_payloads(body: str) -> list[str]:
    return [ev[6:] for ev in body.split("\n\n") if ev]
