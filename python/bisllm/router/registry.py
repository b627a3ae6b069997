"""Workers: discovery, registration, health checks and their KV event subscribers.

A worker is known by its base URL and gets a stable integer id for the core.
Discovery asks, in order:

1. ``GET /bisllm/worker`` (bisllm-worker and the mocker): model, role, block
   size, event endpoints, data-parallel size, KV capacity, max model length.
2. ``GET /kv_event_sources`` (a plain vLLM server started with
   ``--kv-events-config``) plus vLLM's ``/metrics`` ``cache_config_info`` for the
   block size.
3. Whatever the command line spelled out (``--worker-events URL=ENDPOINT``).

A worker with no events endpoint is indexed APPROXIMATE: the core predicts its
cache from routing decisions, with a TTL.

Health: every ``health_interval_s`` each worker's ``/health`` is probed;
``unhealthy_after`` consecutive failures (or a connection failure seen by the
proxy) take it out of routing and drop its index entries. It is re-discovered and
re-added when it answers again. Requests already booked on it are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import zmq.asyncio

from bisllm._core import Core, UnknownWorkerError
from bisllm.router.events import IndexState, KvEventSubscriber

logger = logging.getLogger("bisllm.router.registry")


class WorkerStatus(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # failing health checks: out of routing
    PENDING = "pending"  # registered, not yet discovered


class DiscoveryError(RuntimeError):
    """A worker could not be discovered (unreachable, or incompatible with the pool)."""


@dataclass(slots=True)
class WorkerInfo:
    """What a worker says about itself (``GET /bisllm/worker``)."""

    model: str
    role: str = "aggregated"
    block_size: int = 16
    kv_events_endpoint: str | None = None
    kv_replay_endpoint: str | None = None
    kv_events_topic: str = "kv"
    data_parallel_size: int = 1
    kv_capacity_blocks: int | None = None
    max_model_len: int | None = None
    engine: str = "unknown"
    # True when the publisher CONNECTS (vLLM with a plain tcp://host:port endpoint), so the
    # router must bind. Never part of /bisllm/worker, whose endpoints are connect addresses.
    subscriber_binds: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerInfo:
        if not isinstance(data.get("model"), str):
            raise DiscoveryError("worker info has no 'model' string")
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        info = cls(**known)
        if not isinstance(info.block_size, int) or info.block_size < 1:
            raise DiscoveryError(f"worker reports an invalid block_size {info.block_size!r}")
        return info


@dataclass(slots=True)
class Worker:
    """One registered worker and its routing state."""

    worker_id: int
    url: str
    status: WorkerStatus = WorkerStatus.PENDING
    info: WorkerInfo | None = None
    events_override: str | None = None  # --worker-events for plain vLLM
    subscriber: KvEventSubscriber | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    # Set when a request that must have stored blocks finished; cleared by events.
    awaiting_events_since: float | None = None
    added_at: float = field(default_factory=time.monotonic)

    @property
    def index_state(self) -> IndexState:
        if self.subscriber is None:
            return IndexState.APPROXIMATE
        return self.subscriber.state


def _publisher_binds(endpoint: str) -> bool:
    """vLLM's rule: its publisher binds ipc:// and wildcard tcp endpoints, else connects."""
    return endpoint.startswith("ipc://") or "*" in endpoint or "::" in endpoint


def _connect_address(endpoint: str, worker_url: str) -> str:
    """Turn a bind address a worker reports (``tcp://*:5557``) into one to connect to."""
    host = re.sub(r"^https?://", "", worker_url).split("/")[0].rsplit(":", 1)[0]
    return re.sub(r"^tcp://(\*|0\.0\.0\.0|\[::\]|::)(?=:)", f"tcp://{host}", endpoint)


class WorkerRegistry:
    """Registers workers with the core, watches their health, runs their event subscribers."""

    def __init__(
        self,
        core_factory: CoreHolder,
        session: aiohttp.ClientSession,
        *,
        health_interval_s: float = 2.0,
        health_timeout_s: float = 1.0,
        unhealthy_after: int = 2,
        events_silence_s: float = 10.0,
        served_model: str | None = None,
    ) -> None:
        self.cores = core_factory
        self.session = session
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.unhealthy_after = unhealthy_after
        self.events_silence_s = events_silence_s
        self.served_model = served_model
        self.workers: dict[int, Worker] = {}
        self._by_url: dict[str, int] = {}
        self._next_id = 1
        self._zmq = zmq.asyncio.Context()
        self._health_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Summaries of the healthy workers, kept current by _refresh_summary.
        self.num_healthy = 0
        self.max_model_len: int | None = None

    # -- registration -------------------------------------------------------------

    async def add(self, url: str, events_endpoint: str | None = None) -> Worker:
        """Register a worker by URL and try to bring it up now (idempotent)."""
        url = url.rstrip("/")
        if not re.match(r"^https?://[^/\s]+$", url):
            raise ValueError(f"invalid worker URL {url!r}: expected http://host:port")
        async with self._lock:
            wid = self._by_url.get(url)
            if wid is None:
                wid = self._next_id
                self._next_id += 1
                self._by_url[url] = wid
                self.workers[wid] = Worker(wid, url, events_override=events_endpoint)
            worker = self.workers[wid]
        if worker.status != WorkerStatus.HEALTHY:
            await self._bring_up(worker)
        return worker

    async def remove(self, worker_id: int) -> Worker:
        async with self._lock:
            worker = self.workers.pop(worker_id, None)
            if worker is None:
                raise KeyError(worker_id)
            self._by_url.pop(worker.url, None)
        await self._take_down(worker, "removed")
        return worker

    def by_url(self, url: str) -> Worker | None:
        wid = self._by_url.get(url.rstrip("/"))
        return None if wid is None else self.workers.get(wid)

    def healthy(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.status == WorkerStatus.HEALTHY]

    def _refresh_summary(self) -> None:
        """Recompute what the request path reads per request, once per membership change."""
        healthy = self.healthy()
        self.num_healthy = len(healthy)
        lens = [w.info.max_model_len for w in healthy if w.info and w.info.max_model_len]
        self.max_model_len = min(lens) if lens else None

    async def _discover(self, worker: Worker) -> WorkerInfo:
        timeout = aiohttp.ClientTimeout(total=self.health_timeout_s * 5)
        try:
            async with self.session.get(worker.url + "/bisllm/worker", timeout=timeout) as resp:
                if resp.status == 200:
                    info = WorkerInfo.from_json(await resp.json(content_type=None))
                    if worker.events_override:
                        info.kv_events_endpoint = worker.events_override
                        info.subscriber_binds = not _publisher_binds(worker.events_override)
                    return self._resolve(info, worker)
            return self._resolve(await self._discover_plain_vllm(worker, timeout), worker)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise DiscoveryError(f"{worker.url}: {type(exc).__name__}: {exc}") from exc

    async def _discover_plain_vllm(
        self, worker: Worker, timeout: aiohttp.ClientTimeout
    ) -> WorkerInfo:
        async with self.session.get(worker.url + "/v1/models", timeout=timeout) as resp:
            if resp.status != 200:
                raise DiscoveryError(f"{worker.url}/v1/models answered {resp.status}")
            models = (await resp.json(content_type=None)).get("data") or []
        if not models:
            raise DiscoveryError(f"{worker.url} serves no model")
        info = WorkerInfo(model=models[0]["id"], engine="vllm")
        info.max_model_len = models[0].get("max_model_len")
        async with self.session.get(worker.url + "/metrics", timeout=timeout) as resp:
            text = await resp.text() if resp.status == 200 else ""
        match = re.search(r'vllm:cache_config_info\{[^}]*block_size="(\d+)"', text)
        if match:
            info.block_size = int(match.group(1))
        match = re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', text)
        if match:
            info.kv_capacity_blocks = int(match.group(1))
        if worker.events_override:
            info.kv_events_endpoint = worker.events_override
        else:
            async with self.session.get(worker.url + "/kv_event_sources", timeout=timeout) as resp:
                if resp.status == 200:
                    sources = await resp.json(content_type=None)
                    _apply_event_sources(info, sources)
        if info.kv_events_endpoint:
            info.subscriber_binds = not _publisher_binds(info.kv_events_endpoint)
        return info

    def _resolve(self, info: WorkerInfo, worker: Worker) -> WorkerInfo:
        if info.kv_events_endpoint and not info.subscriber_binds:
            info.kv_events_endpoint = _connect_address(info.kv_events_endpoint, worker.url)
        if info.kv_replay_endpoint:
            info.kv_replay_endpoint = _connect_address(info.kv_replay_endpoint, worker.url)
        return info

    async def _bring_up(self, worker: Worker) -> None:
        try:
            info = await self._discover(worker)
            if self.served_model is not None and info.model != self.served_model:
                raise DiscoveryError(
                    f"{worker.url} serves model {info.model!r}, the router serves "
                    f"{self.served_model!r}"
                )
            core = self.cores.get_or_create(info.block_size)
            if core.block_size != info.block_size:
                raise DiscoveryError(
                    f"{worker.url} uses block size {info.block_size}, the pool uses "
                    f"{core.block_size}: all workers of a model must share one block size"
                )
        except DiscoveryError as exc:
            worker.last_error = str(exc)
            worker.status = WorkerStatus.PENDING if worker.info is None else WorkerStatus.UNHEALTHY
            logger.warning("worker %s not added: %s", worker.url, exc)
            return
        worker.info = info
        approximate = not info.kv_events_endpoint
        for rank in range(max(1, info.data_parallel_size)):
            core.add_worker(worker.worker_id, rank, approximate=approximate)
        if not approximate:
            assert info.kv_events_endpoint is not None
            worker.subscriber = KvEventSubscriber(
                core,
                worker.worker_id,
                info.kv_events_endpoint,
                info.kv_replay_endpoint,
                info.kv_events_topic,
                self._zmq,
                bind=info.subscriber_binds,
            )
            worker.subscriber.start()
        worker.status = WorkerStatus.HEALTHY
        self._refresh_summary()
        worker.consecutive_failures = 0
        worker.last_error = None
        worker.awaiting_events_since = None
        logger.info(
            "worker %d %s up: model=%s block_size=%d events=%s",
            worker.worker_id,
            worker.url,
            info.model,
            info.block_size,
            info.kv_events_endpoint or "none (approximate)",
        )

    async def _take_down(self, worker: Worker, why: str) -> None:
        if worker.subscriber is not None:
            await worker.subscriber.stop()
            worker.subscriber = None
        core = self.cores.core
        if core is not None:
            with contextlib.suppress(UnknownWorkerError):
                core.remove_worker(worker.worker_id)
        if worker.status == WorkerStatus.HEALTHY:
            logger.warning("worker %d %s out of routing: %s", worker.worker_id, worker.url, why)
        worker.status = WorkerStatus.UNHEALTHY
        self._refresh_summary()

    # -- health ---------------------------------------------------------------------

    def start(self) -> None:
        self._health_task = asyncio.create_task(self._health_loop(), name="health-checks")

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for worker in list(self.workers.values()):
            if worker.subscriber is not None:
                await worker.subscriber.stop()
                worker.subscriber = None
        self._zmq.term()

    async def report_failure(self, worker_id: int, error: str) -> None:
        """The proxy could not reach a worker: probe it now instead of at the next tick."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.status != WorkerStatus.HEALTHY:
            return
        worker.last_error = error
        if not await self._probe(worker):
            await self._take_down(worker, error)

    def note_request_finished(self, worker_id: int, stored_blocks: int) -> None:
        """A request that must have stored ``stored_blocks`` new blocks finished on a worker.

        If no event arrives within ``events_silence_s``, the watchdog switches the
        worker's index to approximate.
        """
        worker = self.workers.get(worker_id)
        if worker is None or worker.subscriber is None or stored_blocks <= 0:
            return
        if worker.awaiting_events_since is None:
            worker.awaiting_events_since = time.monotonic()

    async def _probe(self, worker: Worker) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=self.health_timeout_s)
            async with self.session.get(worker.url + "/health", timeout=timeout) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def check_once(self) -> None:
        """One round of health checks and the event-silence watchdog."""
        workers = list(self.workers.values())
        results = await asyncio.gather(*(self._probe(w) for w in workers))
        for worker, ok in zip(workers, results, strict=True):
            if ok:
                worker.consecutive_failures = 0
                if worker.status != WorkerStatus.HEALTHY:
                    await self._bring_up(worker)
            else:
                worker.consecutive_failures += 1
                if (
                    worker.status == WorkerStatus.HEALTHY
                    and worker.consecutive_failures >= self.unhealthy_after
                ):
                    await self._take_down(worker, "health checks failed")
            self._watch_events(worker)

    def _watch_events(self, worker: Worker) -> None:
        sub = worker.subscriber
        since = worker.awaiting_events_since
        if sub is None or since is None:
            return
        if sub.stats.last_event_at >= since:
            worker.awaiting_events_since = None
        elif time.monotonic() - since > self.events_silence_s:
            logger.warning(
                "worker %d published no KV events for %.0fs after serving requests: "
                "switching its index to approximate",
                worker.worker_id,
                self.events_silence_s,
            )
            sub.mark_silent()
            worker.awaiting_events_since = None

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:
                logger.exception("health check round failed")
            await asyncio.sleep(self.health_interval_s)


def _apply_event_sources(info: WorkerInfo, sources: Any) -> None:
    """Read vLLM's ``GET /kv_event_sources``: ``{dp_rank: KVEventsConfig}``.

    Only rank 0's publisher is subscribed: sequence numbers are per engine process,
    so each rank would need its own subscriber (not implemented yet).
    """
    if not isinstance(sources, dict) or not sources:
        return
    ranks = sorted(sources, key=lambda k: int(k) if str(k).isdigit() else 1 << 30)
    cfg = sources[ranks[0]]
    if isinstance(cfg, dict) and cfg.get("enable_kv_cache_events", True) and cfg.get("endpoint"):
        info.kv_events_endpoint = cfg["endpoint"]
        info.kv_replay_endpoint = cfg.get("replay_endpoint")
        info.kv_events_topic = cfg.get("topic") or ""


class CoreHolder:
    """Owns the ``Core``, created when the block size is known (flag or first worker)."""

    def __init__(self, **core_kwargs: Any) -> None:
        self._kwargs = core_kwargs
        self.core: Core | None = None

    def get_or_create(self, block_size: int) -> Core:
        if self.core is None:
            self.core = Core(block_size, **self._kwargs)
        return self.core
