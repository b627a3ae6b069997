"""The OpenAI-compatible router: parse, tokenize, route, proxy, account.

One request's life (see DESIGN.md):

1. read the body (size-limited), validate what the router reads, reject bad input
   with an OpenAI error body;
2. tokenize with the model's tokenizer and chat template (exactly the ids the
   worker will see); prompts longer than the context are rejected before routing;
3. ``core.route`` hashes blocks, matches the prefix index, scores workers, books
   the load and returns the decision;
4. the client's own request is forwarded to the chosen worker's same endpoint
   (streams ask for usage so the real cache hit rate is measured); if the worker
   refuses or fails before the first byte, the request is re-routed to the next
   best worker (bounded by ``max_retries``), so no accepted request is lost;
5. SSE is passed through event by event; the scoreboard hears first token,
   progress and finish; a client disconnect closes the upstream request (vLLM
   aborts it) and frees its load.

A stream cut mid-way (worker died after the first byte) cannot be retried
transparently (the client has seen tokens): it ends with an OpenAI-style error
event ``data: {"error": {...}}`` followed by ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from bisllm._core import CoreError
from bisllm.router.metrics import RouterMetrics, StateCollector
from bisllm.router.protocol import (
    RequestError,
    decode_json_object,
    encode_json,
    error_body,
    sse_error_event,
    validate_chat,
    validate_completion,
    validate_embedding,
)
from bisllm.router.registry import CoreHolder, DiscoveryError, Worker, WorkerRegistry
from bisllm.router.tokenize import PromptTokenizer, TokenizeError

logger = logging.getLogger("bisllm.router")

# Prompts at least this long are tokenized off the event loop.
_TOKENIZE_INLINE_MAX_CHARS = 8192
_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass(slots=True)
class RouterConfig:
    """Everything the router is started with (see ``bisllm-router --help``)."""

    workers: list[str] = field(default_factory=list)
    model: str | None = None  # local model dir: tokenizer + chat template
    served_model_name: str | None = None
    policy: str = "kv_aware"
    overlap_weight: float = 1.0
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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
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
        return self.config.max_model_len or self.registry.max_model_len()

    # -- request path -------------------------------------------------------------------

    async def read_body(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        limit = self.config.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return decode_json_object(b"".join(chunks))

    def check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        served = self.served_model
        if model is not None and served is not None and model != served:
            raise RequestError(404, f"The model `{model}` does not exist.", param="model")

    async def prompt_ids(self, endpoint: str, body: dict[str, Any]) -> Any:
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise RequestError(500, "the router was started without --model: it cannot tokenize")
        start = time.perf_counter()
        try:
            if endpoint == "chat":
                text = tokenizer.render_chat(body)
                add_special = bool(body.get("add_special_tokens", False))
                if len(text) > _TOKENIZE_INLINE_MAX_CHARS:
                    ids = await asyncio.to_thread(tokenizer.encode_text, text, add_special)
                else:
                    ids = tokenizer.encode_text(text, add_special)
            else:
                prompt = body["prompt"]
                if isinstance(prompt, str) and len(prompt) > _TOKENIZE_INLINE_MAX_CHARS:
                    ids = await asyncio.to_thread(tokenizer.completion_ids, body)
                else:
                    ids = tokenizer.completion_ids(body)
        except TokenizeError as exc:
            raise RequestError(400, str(exc)) from None
        self.metrics.tokenize_seconds.observe(time.perf_counter() - start)
        return ids

    async def handle_generate(self, request: Request, endpoint: str) -> Response:
        """POST /v1/chat/completions and /v1/completions."""
        try:
            body = await self.read_body(request)
            if endpoint == "chat":
                validate_chat(body)
            else:
                validate_completion(body)
            self.check_model(body)
            ids = await self.prompt_ids(endpoint, body)
            max_len = self.max_model_len()
            if max_len is not None and len(ids) > max_len:
                raise RequestError(
                    400,
                    f"This model's maximum context length is {max_len} tokens. However, your "
                    f"request has {len(ids)} input tokens. Please reduce the length of the input.",
                    param="messages" if endpoint == "chat" else "prompt",
                )
        except RequestError as exc:
            self.metrics.requests.labels(endpoint, "rejected").inc()
            return _error(exc.status, exc.message, exc.param)
        stream = bool(body.get("stream", False))
        client_wants_usage = True
        if stream:
            options = body.get("stream_options") or {}
            client_wants_usage = bool(options.get("include_usage", False))
            if not client_wants_usage:
                body["stream_options"] = {**options, "include_usage": True}
        payload = encode_json(body)
        path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
        return await self.forward(
            request, path, endpoint, payload, ids, stream=stream, strip_usage=not client_wants_usage
        )

    async def forward(
        self,
        request: Request,
        path: str,
        endpoint: str,
        payload: bytes,
        ids: Any,
        *,
        stream: bool,
        strip_usage: bool,
    ) -> Response:
        """Route, send upstream with bounded retries, then stream or return the answer."""
        assert self.session is not None and self.registry is not None
        core = self.cores.core
        if core is None or not self.registry.healthy():
            self.metrics.requests.labels(endpoint, "no_worker").inc()
            return _error(503, "no healthy worker is available")
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        booking_id = f"{request_id}:{uuid.uuid4().hex[:8]}"
        excluded: list[tuple[int, int]] = []
        started = time.perf_counter()
        last_error = "no eligible worker"
        for attempt in range(self.config.max_retries + 1):
            t0 = time.perf_counter()
            try:
                decision = core.route(booking_id, ids, exclude=excluded)
            except CoreError as exc:
                last_error = str(exc)
                break
            self.metrics.routing_seconds.observe(time.perf_counter() - t0)
            worker = self.registry.workers.get(decision.worker_id)
            if worker is None:  # removed between route and now
                core.on_finish(booking_id)
                excluded.append((decision.worker_id, decision.dp_rank))
                continue
            headers = {
                "content-type": "application/json",
                "x-request-id": request_id,
            }
            if worker.info is not None and worker.info.data_parallel_size > 1:
                headers["x-data-parallel-rank"] = str(decision.dp_rank)
            try:
                upstream = await self.session.post(worker.url + path, data=payload, headers=headers)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                core.on_finish(booking_id)
                excluded.append((decision.worker_id, decision.dp_rank))
                last_error = f"worker {worker.url} failed: {type(exc).__name__}: {exc}"
                logger.warning("attempt %d: %s", attempt + 1, last_error)
                self.metrics.retries.inc()
                self._spawn(self.registry.report_failure(worker.worker_id, last_error))
                continue
            if upstream.status >= 500:
                detail = (await upstream.read())[:200]
                upstream.release()
                core.on_finish(booking_id)
                excluded.append((decision.worker_id, decision.dp_rank))
                last_error = f"worker {worker.url} answered {upstream.status}: {detail!r}"
                logger.warning("attempt %d: %s", attempt + 1, last_error)
                self.metrics.retries.inc()
                continue
            out_headers = {
                "x-bisllm-worker": worker.url,
                "x-bisllm-worker-id": str(decision.worker_id),
                "x-bisllm-dp-rank": str(decision.dp_rank),
                "x-bisllm-overlap-blocks": str(decision.overlap_blocks),
                "x-bisllm-prompt-blocks": str(decision.prompt_blocks),
                "x-request-id": request_id,
            }
            ctx = _RequestContext(
                router=self,
                endpoint=endpoint,
                booking_id=booking_id,
                worker=worker,
                prompt_tokens=len(ids),
                overlap_tokens=decision.overlap_blocks * core.block_size,
                best_tokens=decision.best_overlap_blocks * core.block_size,
                prefill_blocks=decision.prompt_blocks - decision.overlap_blocks,
                started=started,
            )
            if upstream.status != 200:
                # A 4xx is the client's problem: pass the worker's answer through.
                data = await upstream.read()
                upstream.release()
                ctx.finish("upstream_error")
                return Response(
                    data, upstream.status, headers=out_headers, media_type=upstream.content_type
                )
            # Nothing has reached the client until the first chunk (stream) or the whole
            # answer (non-stream) is in hand: a failure up to here is retried elsewhere.
            try:
                if stream:
                    first = await _unless_disconnected(request, upstream.content.readany())
                    if not first:
                        raise aiohttp.ClientPayloadError("empty stream")
                else:
                    data = await _unless_disconnected(request, upstream.read())
            except _ClientGone:
                upstream.close()
                ctx.finish("client_disconnected")
                return Response(status_code=499)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                upstream.close()
                core.on_finish(booking_id)
                excluded.append((decision.worker_id, decision.dp_rank))
                last_error = f"worker {worker.url} failed before answering: {exc!r}"
                logger.warning("attempt %d: %s", attempt + 1, last_error)
                self.metrics.retries.inc()
                self._spawn(self.registry.report_failure(worker.worker_id, last_error))
                continue
            if stream:
                return StreamingResponse(
                    ctx.relay_stream(upstream, first, strip_usage),
                    media_type="text/event-stream",
                    headers={**out_headers, "cache-control": "no-cache"},
                )
            upstream.close()
            return ctx.respond(data, out_headers)
        self.metrics.requests.labels(endpoint, "no_worker").inc()
        return _error(503, f"no worker could take the request: {last_error}")

    async def handle_embeddings(self, request: Request) -> Response:
        """POST /v1/embeddings: routed by load (no prompt cache to reuse), then proxied."""
        try:
            body = await self.read_body(request)
            validate_embedding(body)
            self.check_model(body)
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.param)
        text = body["input"]
        first = text if isinstance(text, str) else text[0]
        if isinstance(first, str):
            ids: Any = self.tokenizer.encode_text(first, True) if self.tokenizer else []
        else:
            ids = first if isinstance(first, list) else text
        response = await self.forward(
            request,
            "/v1/embeddings",
            "embeddings",
            encode_json(body),
            ids,
            stream=False,
            strip_usage=False,
        )
        if response.status_code in (400, 404) and b"embedding" not in bytes(response.body).lower():
            return _error(
                400,
                f"the workers serving `{self.served_model}` do not serve embeddings "
                f"(worker answered {response.status_code})",
            )
        return response


@dataclass(slots=True)
class _RequestContext:
    """One routed request's accounting: scoreboard transitions and metrics."""

    router: Router
    endpoint: str
    booking_id: str
    worker: Worker
    prompt_tokens: int
    overlap_tokens: int
    best_tokens: int
    prefill_blocks: int
    started: float
    first_token_at: float | None = None
    completion_tokens: int = 0
    cached_tokens: int | None = None
    finished: bool = False

    def __post_init__(self) -> None:
        self.router.metrics.concurrent_requests.inc()

    def first_token(self) -> None:
        self.first_token_at = time.perf_counter()
        core = self.router.cores.core
        assert core is not None
        with contextlib.suppress(CoreError):
            core.on_first_token(self.booking_id)
        self.router.metrics.time_to_first_token.observe(self.first_token_at - self.started)

    def read_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        completion = usage.get("completion_tokens")
        if isinstance(completion, int):
            self.completion_tokens = completion
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            self.cached_tokens = details["cached_tokens"]

    def finish(self, outcome: str) -> None:
        if self.finished:
            return
        self.finished = True
        router = self.router
        router.metrics.concurrent_requests.dec()
        core = router.cores.core
        if core is not None:
            with contextlib.suppress(CoreError):
                core.on_finish(self.booking_id)
        m = router.metrics
        m.requests.labels(self.endpoint, outcome).inc()
        if outcome != "ok":
            return
        m.input_tokens.inc(self.prompt_tokens)
        m.output_tokens.inc(self.completion_tokens)
        m.input_tokens_per_request.observe(self.prompt_tokens)
        m.output_tokens_per_request.observe(self.completion_tokens)
        end = time.perf_counter()
        if self.first_token_at is not None and self.completion_tokens > 1:
            elapsed = end - self.first_token_at
            if elapsed > 0:
                m.tps_per_request.observe((self.completion_tokens - 1) / elapsed)
        if self.cached_tokens is not None:
            m.observe_cache(
                self.prompt_tokens, self.cached_tokens, self.overlap_tokens, self.best_tokens
            )
        assert router.registry is not None
        router.registry.note_request_finished(self.worker.worker_id, self.prefill_blocks)

    async def relay_stream(
        self, upstream: aiohttp.ClientResponse, first: bytes, strip_usage: bool
    ) -> AsyncIterator[bytes]:
        """Pass SSE through event by event, accounting tokens; never raises to the client."""
        core = self.router.cores.core
        assert core is not None
        buffer = b""
        outcome = "ok"
        try:
            async for chunk in _prepend(first, upstream.content.iter_any()):
                buffer += chunk
                out: list[bytes] = []
                while True:
                    end = buffer.find(b"\n\n")
                    if end < 0:
                        break
                    event = buffer[: end + 2]
                    buffer = buffer[end + 2 :]
                    if self._account_event(event, core) or not strip_usage:
                        out.append(event)
                if out:
                    yield b"".join(out)
            if buffer:
                yield buffer
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            outcome = "cut"
            logger.warning("stream from %s cut mid-way: %s", self.worker.url, exc)
            yield (
                sse_error_event(
                    502, f"the worker serving this request failed mid-stream: {type(exc).__name__}"
                )
                + b"data: [DONE]\n\n"
            )
        except asyncio.CancelledError:
            outcome = "client_disconnected"
            raise
        finally:
            upstream.close()  # unread data: the connection closes and vLLM aborts the request
            self.finish(outcome)

    def _account_event(self, event: bytes, core: Any) -> bool:
        """Update accounting from one SSE event; False if it is the injected usage chunk."""
        if not event.startswith(b"data: {"):
            return True
        if b'"usage":{' in event or b'"usage": {' in event:
            try:
                data = msgspec.json.decode(event[6:])
            except msgspec.DecodeError:
                return True
            self.read_usage(data.get("usage"))
            if not data.get("choices"):
                return False  # usage-only final chunk
        if self.first_token_at is None:
            self.first_token()
        else:
            with contextlib.suppress(CoreError):
                core.on_tokens(self.booking_id, 1)
        return True

    def respond(self, data: bytes, headers: dict[str, str]) -> Response:
        """Non-streaming: the whole answer is in hand; account it and return it."""
        self.first_token()
        with contextlib.suppress(msgspec.DecodeError, AttributeError):
            self.read_usage(msgspec.json.decode(data).get("usage"))
        self.finish("ok")
        return Response(data, 200, headers=headers, media_type="application/json")


class _ClientGone(Exception):
    """The client disconnected while the router was waiting on the worker."""


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


async def _unless_disconnected(request: Request, awaitable: Awaitable[bytes]) -> bytes:
    """Await ``awaitable`` unless the client disconnects first (then raise _ClientGone)."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not work.done():
        work.cancel()
        raise _ClientGone
    return work.result()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def _key_ok(given: str | None, keys: list[str]) -> bool:
    return given is not None and any(hmac.compare_digest(given, k) for k in keys)


def create_app(config: RouterConfig) -> FastAPI:
    """Build the FastAPI app; the router starts and stops with the app's lifespan."""
    router = Router(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await router.start()
        try:
            yield
        finally:
            await router.stop()

    app = FastAPI(
        title="bisllm router",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.router = router

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal router error: {type(exc).__name__}")

    @app.middleware("http")
    async def authenticate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if (
            path.startswith("/v1/")
            and config.api_keys
            and not _key_ok(_bearer(request), config.api_keys)
        ):
            return _error(401, "invalid or missing API key (Authorization: Bearer ...)")
        if path.startswith("/admin"):
            if config.admin_key is not None:
                if not _key_ok(_bearer(request), [config.admin_key]):
                    return _error(401, "invalid or missing admin key (Authorization: Bearer ...)")
            elif request.client is None or request.client.host not in ("127.0.0.1", "::1"):
                return _error(403, "admin API without --admin-key is open to loopback only")
        return await call_next(request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await router.handle_generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await router.handle_generate(request, "completions")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await router.handle_embeddings(request)

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
        if router.registry.healthy():
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
            body = await router.read_body(request)
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

    return app
