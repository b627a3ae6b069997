"""One simulated engine: KV cache + scheduler + a step loop paced by the timing model.

The step loop is one asyncio task per engine. An engine with no requests awaits an Event and
costs nothing, so a process can host hundreds of them. A busy engine runs
`schedule → update → sleep(step_time / speedup) → release: publish events, wake handlers`.
A step's effects are applied before its sleep, but handlers only see what has been *released*
(`Request.num_released` / `released_finished`), so no output leaves before its time.

Pacing keeps simulated time honest under timer jitter: each step ends at `previous end + dt`
rather than `now + dt`, so a late wake-up shortens the next sleep instead of stretching the run.
If the process falls more than `max_lag_s` behind (overloaded), the engine restarts its clock
from now and counts the lag in `EngineStats.lag_s` (reported by the benchmark).

KV events generated while scheduling a step are published after that step, one batch per step,
like vLLM's `update_from_output`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from dataclasses import dataclass, field

from bisllm_workers.kv_events import KVEventPublisher
from bisllm_workers.mocker.kv_cache import KVCacheManager, KVEvent
from bisllm_workers.mocker.model import ModelInfo
from bisllm_workers.mocker.request import Request, RequestId, RequestStatus
from bisllm_workers.mocker.scheduler import Scheduler, SchedulerConfig
from bisllm_workers.mocker.timing import TimingProfile

__all__ = ["TTFT_BUCKETS", "EngineConfig", "EngineStats", "MockEngine"]

# vLLM 0.32's vllm:time_to_first_token_seconds buckets.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finalizer: a cheap, well-spread deterministic function of x."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@dataclass(slots=True, frozen=True)
class EngineConfig:
    block_size: int = 16  # vLLM's default on GPU
    num_blocks: int = 16384  # KV capacity in blocks (262k tokens at block size 16)
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 4096
    enable_chunked_prefill: bool = True
    speedup: float = 1.0  # divides every step time
    max_lag_s: float = 0.1  # wall seconds behind schedule before the clock restarts
    # Run steps back to back until they add up to this many wall seconds before sleeping and
    # releasing their outputs. 0 = one sleep per step (exact). A large fleet at a high speedup
    # spends its CPU on per-step wake-ups and per-token writes; a quantum of ~1-2 ms batches
    # them (tokens arrive in small bursts, at most one quantum late).
    min_step_wall_s: float = 0.0

    def __post_init__(self) -> None:
        if self.speedup <= 0:
            raise ValueError("speedup must be > 0")
        if self.max_model_len > self.num_blocks * self.block_size:
            # vLLM refuses to start in this case too: one request could never fit.
            raise ValueError(
                f"max_model_len {self.max_model_len} exceeds the KV cache capacity "
                f"({self.num_blocks} blocks x {self.block_size} = "
                f"{self.num_blocks * self.block_size} tokens)"
            )


@dataclass(slots=True)
class EngineStats:
    """Engine-level observations behind /metrics (the scheduler keeps token counters)."""

    ttft_bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BUCKETS) + 1))
    ttft_sum_s: float = 0.0
    ttft_count: int = 0
    busy_steps: int = 0
    simulated_s: float = 0.0  # sum of step times before speedup
    lag_s: float = 0.0  # total wall seconds the loop ran behind schedule
    created: float = field(default_factory=time.time)


class MockEngine:
    def __init__(
        self,
        config: EngineConfig,
        profile: TimingProfile,
        model: ModelInfo,
        publisher: KVEventPublisher | None = None,
    ) -> None:
        self.config = config
        self.profile = profile
        self.model = model
        self.publisher = publisher
        self.kv = KVCacheManager(config.num_blocks, config.block_size, publisher is not None)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                max_model_len=config.max_model_len,
                enable_chunked_prefill=config.enable_chunked_prefill,
            ),
            self.kv,
            self._next_token,
        )
        self.stats = EngineStats()
        self._out_ids = model.output_token_ids
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._requests: dict[RequestId, Request] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mock-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for rid in list(self._requests):
            self.abort(rid)

    # ---- requests --------------------------------------------------------------------------

    def add_request(
        self, request_id: RequestId, prompt_token_ids: list[int], max_tokens: int
    ) -> Request:
        """Queue a request; the caller awaits `req.wakeup` for output. Prompt length and
        max_tokens are validated by the HTTP layer (as vLLM's frontend does)."""
        req = Request(
            request_id=request_id,
            prompt_token_ids=prompt_token_ids,
            max_tokens=max_tokens,
            block_size=self.config.block_size,
            arrival_time=time.monotonic(),
            wakeup=asyncio.Event(),
        )
        self.scheduler.add_request(req)
        self._requests[request_id] = req
        self._wake.set()
        return req

    def abort(self, request_id: RequestId) -> None:
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        self.scheduler.abort(request_id)
        req.status = RequestStatus.FINISHED_ABORTED
        if req.wakeup is not None:
            req.wakeup.set()

    def reset_prefix_cache(self) -> bool:
        ok = self.kv.reset_prefix_cache()
        if ok and self.publisher is not None:
            # Idle engine: no step will follow soon, so publish the clear now.
            self.publisher.publish(self.kv.take_events())
        return ok

    @property
    def num_running(self) -> int:
        return self.scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting

    # ---- the loop --------------------------------------------------------------------------

    def _next_token(self, req: Request) -> int:
        ids = self._out_ids
        return ids[_mix64(req.prompt_digest + req.num_output_tokens) % len(ids)]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sched = self.scheduler
        kv = self.kv
        profile = self.profile
        stats = self.stats
        speedup = self.config.speedup
        quantum = self.config.min_step_wall_s
        max_lag = self.config.max_lag_s
        next_start = loop.time()
        while True:
            if not sched.has_work:
                self._wake.clear()
                await self._wake.wait()
                next_start = loop.time()
                continue
            # Compute one step, or several back to back until they fill `quantum` wall
            # seconds. Their effects are applied now; outputs and events are released together
            # when the (summed) step time has elapsed.
            batch: list[tuple[list[Request], list[KVEvent]]] = []
            wall = 0.0
            now_mono = time.monotonic()
            while sched.has_work:
                plan = sched.schedule()
                events = kv.take_events()
                if not plan.scheduled:
                    if events:
                        batch.append(([], events))
                    break
                sim_dt = profile.step_time(
                    plan.num_prefill_tokens, plan.num_decode_seqs, plan.num_decode_context_tokens
                )
                wall += sim_dt / speedup
                stats.busy_steps += 1
                stats.simulated_s += sim_dt
                batch.append((sched.update_from_output(plan, now_mono + wall), events))
                if wall >= quantum:
                    break
            if wall == 0.0:
                # Work queued but nothing schedulable (a guard; should not happen since every
                # request fits in an empty cache): release events and wait for a change.
                self._deliver(batch)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.05)
                next_start = loop.time()
                continue
            now = loop.time()
            behind = now - next_start
            if behind > max_lag:
                stats.lag_s += behind
                next_start = now
            end = next_start + wall
            delay = end - now
            await asyncio.sleep(delay if delay > 0 else 0)
            next_start = end
            self._deliver(batch)

    def _deliver(self, batch: list[tuple[list[Request], list[KVEvent]]]) -> None:
        """Publish each step's events (one batch per step, as vLLM) and wake the handlers."""
        publisher = self.publisher
        now = time.monotonic()
        stats = self.stats
        woken: set[int] = set()
        for touched, events in batch:
            if events and publisher is not None:
                publisher.publish(events)
            for req in touched:
                if id(req) in woken:
                    continue
                woken.add(id(req))
                if not req.first_token_delivered:
                    req.first_token_delivered = True
                    ttft = now - req.arrival_time
                    stats.ttft_bucket_counts[bisect.bisect_left(TTFT_BUCKETS, ttft)] += 1
                    stats.ttft_sum_s += ttft
                    stats.ttft_count += 1
                req.num_released = req.num_output_tokens
                if req.is_finished:
                    req.released_finished = True
                    self._requests.pop(req.request_id, None)
                assert req.wakeup is not None
                req.wakeup.set()
