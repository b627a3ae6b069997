"""The router service: process state, the ASGI entry point and the non-hot endpoints.

Requests to ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` go
straight to the raw-ASGI hot path in ``proxy.py``; everything else (``/v1/models``,
``/health``, ``/metrics``, ``/admin/workers``) is an ordinary FastAPI app. One outer
ASGI callable dispatches between them and checks API and admin keys first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import time
from collections.abc import AsyncIterator, Coroutine, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from bisllm.router.metrics import RouterMetrics, StateCollector
from bisllm.router.protocol import RequestError, encode_json, error_body
from bisllm.router.proxy import (
    ClientGone,
    ProxyEndpoint,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_error,
)
from bisllm.router.registry import CoreHolder, DiscoveryError, WorkerRegistry
from bisllm.router.tokenize import PromptTokenizer

logger = logging.getLogger("bisllm.router")


@dataclass(slots=True)
class RouterConfig:
    """Everything the router is started with (see ``bisllm-router --help``)."""

    workers: list[str] = field(default_factory=list)
    model: str | None = None  # local model dir: tokenizer + chat template
    served_model_name: str | None = None
    policy: str = "kv_aware"
    overlap_weight: float = 8.0  # measured default: bench/results/README.md
    temperature: float = 0.0
    seed: int | None = None
    block_size: int | None = None
    max_model_len: int | None = None
    api_keys: list[str] = field(default_factory=list)
    admin_key: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_retries: int = 2
    connect_timeout_s: float = 5.0
    health_interval_s: float = 2.0
    unhealthy_after: int = 2
    events_silence_s: float = 10.0
    approx_ttl_s: float = 120.0
    worker_events: dict[str, str] = field(default_factory=dict)  # url -> events endpoint


def _error(status: int, message: str, param: str | None = None) -> Response:
    return Response(error_body(status, message, param), status, media_type="application/json")


class Router:
    """Process-wide router state, shared by the HTTP handlers."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.tokenizer = PromptTokenizer(config.model) if config.model else None
        self.cores = CoreHolder(
            policy=config.policy,
            overlap_weight=config.overlap_weight,
            temperature=config.temperature,
            seed=config.seed,
            approx_ttl_secs=config.approx_ttl_s,
        )
        if config.block_size is not None:
            self.cores.get_or_create(config.block_size)
        self.metrics = RouterMetrics()
        self.session: aiohttp.ClientSession | None = None
        self.registry: WorkerRegistry | None = None
        # Fire-and-forget tasks (failure probes), referenced so they aren't collected mid-run.
        self._background: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s),
            auto_decompress=False,
        )
        self.registry = WorkerRegistry(
            self.cores,
            self.session,
            health_interval_s=self.config.health_interval_s,
            unhealthy_after=self.config.unhealthy_after,
            events_silence_s=self.config.events_silence_s,
            served_model=self.config.served_model_name,
        )
        self.metrics.registry.register(StateCollector(self.registry))
        await asyncio.gather(
            *(
                self.registry.add(url, self.config.worker_events.get(url))
                for url in self.config.workers
            )
        )
        self.registry.start()

    async def stop(self) -> None:
        if self.registry is not None:
            await self.registry.stop()
        if self.session is not None:
            await self.session.close()

    @property
    def served_model(self) -> str | None:
        if self.config.served_model_name:
            return self.config.served_model_name
        assert self.registry is not None
        for worker in self.registry.workers.values():
            if worker.info is not None:
                return worker.info.model
        return None

    def max_model_len(self) -> int | None:
        assert self.registry is not None
        return self.config.max_model_len or self.registry.max_model_len


class RouterApp:
    """The ASGI entry point: key checks, then the hot path or the FastAPI app."""

    def __init__(self, router: Router, api: FastAPI) -> None:
        self.router = router
        self.api = api
        self.hot = {
            "/v1/chat/completions": ProxyEndpoint(router, "chat"),
            "/v1/completions": ProxyEndpoint(router, "completions"),
            "/v1/embeddings": ProxyEndpoint(router, "embeddings"),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            denied = self.check_keys(scope)
            if denied is not None:
                await send_error(send, *denied)
                return
            endpoint = self.hot.get(scope["path"])
            if endpoint is not None:
                await self.guarded(endpoint, scope, receive, send)
                return
        await self.api(scope, receive, send)

    def check_keys(self, scope: Scope) -> tuple[int, str] | None:
        config = self.router.config
        path: str = scope["path"]
        if path.startswith("/v1/") and config.api_keys:
            if not _key_ok(_bearer(scope), config.api_keys):
                return 401, "invalid or missing API key (Authorization: Bearer ...)"
        elif path.startswith("/admin"):
            if config.admin_key is not None:
                if not _key_ok(_bearer(scope), [config.admin_key]):
                    return 401, "invalid or missing admin key (Authorization: Bearer ...)"
            else:
                client = scope.get("client")
                if client is None or client[0] not in ("127.0.0.1", "::1"):
                    return 403, "admin API without --admin-key is open to loopback only"
        return None

    @staticmethod
    async def guarded(endpoint: ProxyEndpoint, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the hot path; an unexpected error becomes a 500, never a dead connection."""
        started = False

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await endpoint(scope, receive, tracking_send)
        except ClientGone:
            pass
        except Exception as exc:
            logger.exception("unhandled error on %s", scope["path"])
            if not started:
                await send_error(send, 500, f"internal router error: {type(exc).__name__}")


def _bearer(scope: Scope) -> str | None:
    auth = header(scope, b"authorization") or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def _key_ok(given: str | None, keys: list[str]) -> bool:
    return given is not None and any(hmac.compare_digest(given, k) for k in keys)


def create_app(config: RouterConfig) -> RouterApp:
    """Build the router; it starts and stops with the ASGI lifespan."""
    router = Router(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await router.start()
        try:
            yield
        finally:
            await router.stop()

    app = FastAPI(
        title="bisllm router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.router = router

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal router error: {type(exc).__name__}")

    @app.get("/v1/models")
    async def models() -> Response:
        served = router.served_model
        data = []
        if served is not None:
            data.append(
                {
                    "id": served,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "bisllm",
                    "root": served,
                    "parent": None,
                    "max_model_len": router.max_model_len(),
                }
            )
        return Response(
            encode_json({"object": "list", "data": data}), media_type="application/json"
        )

    @app.get("/health")
    async def health() -> Response:
        assert router.registry is not None
        if router.registry.num_healthy:
            return Response(status_code=200)
        return _error(503, "no healthy worker")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(router.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/admin/workers")
    async def list_workers() -> Response:
        assert router.registry is not None
        core = router.cores.core
        loads = {(ld.worker_id, ld.dp_rank): ld for ld in core.loads()} if core else {}
        rows = []
        for w in router.registry.workers.values():
            info = w.info
            ranks = [
                {
                    "dp_rank": key[1],
                    "in_flight_tokens": ld.in_flight_tokens,
                    "prefill_tokens": ld.prefill_tokens,
                    "decode_tokens": ld.decode_tokens,
                    "prefill_requests": ld.prefill_requests,
                    "decode_requests": ld.decode_requests,
                    "active_blocks": ld.active_blocks,
                    "indexed_blocks": ld.indexed_blocks,
                }
                for key, ld in loads.items()
                if key[0] == w.worker_id
            ]
            stats = w.subscriber.stats if w.subscriber else None
            rows.append(
                {
                    "worker_id": w.worker_id,
                    "url": w.url,
                    "status": w.status.value,
                    "index_state": w.index_state.value,
                    "last_error": w.last_error,
                    "info": dataclasses.asdict(info) if info else None,
                    "events": (
                        {
                            "batches": stats.batches,
                            "invalid": stats.invalid,
                            "gaps": stats.gaps,
                            "replays_ok": stats.replays_ok,
                            "replays_failed": stats.replays_failed,
                            "last_seq": stats.last_seq,
                        }
                        if stats
                        else None
                    ),
                    "load": ranks,
                }
            )
        return Response(encode_json({"workers": rows}), media_type="application/json")

    @app.post("/admin/workers")
    async def add_worker(request: Request) -> Response:
        assert router.registry is not None
        try:
            body = await read_body(request.scope, request.receive, config.max_body_bytes)
        except RequestError as exc:
            return _error(exc.status, exc.message)
        url = body.get("url")
        events = body.get("kv_events_endpoint")
        if not isinstance(url, str) or (events is not None and not isinstance(events, str)):
            return _error(400, 'body must be {"url": str, "kv_events_endpoint"?: str}', "url")
        try:
            worker = await router.registry.add(url, events)
        except (ValueError, DiscoveryError) as exc:
            return _error(400, str(exc), "url")
        status = 201 if worker.status.value == "healthy" else 202
        return Response(
            encode_json(
                {
                    "worker_id": worker.worker_id,
                    "url": worker.url,
                    "status": worker.status.value,
                    "last_error": worker.last_error,
                }
            ),
            status,
            media_type="application/json",
        )

    @app.delete("/admin/workers/{worker_id}")
    async def remove_worker(worker_id: int) -> Response:
        assert router.registry is not None
        try:
            worker = await router.registry.remove(worker_id)
        except KeyError:
            return _error(404, f"no worker with id {worker_id}")
        return Response(
            encode_json({"worker_id": worker.worker_id, "url": worker.url, "status": "removed"}),
            media_type="application/json",
        )

    return RouterApp(router, app)
