"""The request hot path as raw ASGI: parse, tokenize, route, proxy, account.

One request's life (see DESIGN.md):

1. read the body (size-limited), validate what the router reads, reject bad input
   with an OpenAI error body;
2. tokenize with the model's tokenizer and chat template (exactly the ids the
   worker will see); prompts longer than the context are rejected before routing;
3. ``core.route`` hashes blocks, matches the prefix index, scores workers, books
   the load and returns the decision;
4. the client's own request is forwarded to the chosen worker's same endpoint
   (streams ask for usage so the real cache hit rate is measured). Until the first
   streamed chunk (or, without streaming, the whole answer) is in hand nothing has
   reached the client, so a worker that refuses, answers 5xx or dies before then
   gets the request re-routed to the next-best worker (bounded by
   ``max_retries``): no accepted request is lost;
5. SSE is passed through event by event; the scoreboard hears first token,
   progress and finish; a client disconnect closes the upstream connection (vLLM
   aborts the request) and frees its load.

A stream cut after tokens were sent cannot be retried transparently (the client
has seen them): it ends with an OpenAI-style error event ``data: {"error": ...}``
followed by ``data: [DONE]``.

Why raw ASGI rather than FastAPI routes here: the framework layers (request
objects, dependency resolution, ``StreamingResponse``'s task group, HTTP
middleware) cost more CPU per request than everything the router itself does;
measured with py-spy under load, they were most of the router's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import msgspec

from bisllm._core import CoreError
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
from bisllm.router.tokenize import TokenizeError

if TYPE_CHECKING:
    from bisllm.router.app import Router
    from bisllm.router.registry import Worker

logger = logging.getLogger("bisllm.router")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

# Prompts at least this long are tokenized off the event loop.
_TOKENIZE_INLINE_MAX_CHARS = 8192
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_UPSTREAM_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
_booking_seq = itertools.count()


async def send_response(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    length = (b"content-length", str(len(body)).encode())
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, length, *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, status: int, message: str, param: str | None = None) -> None:
    await send_response(send, status, error_body(status, message, param))


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class ClientGone(Exception):
    """The client disconnected while the router was waiting on the worker."""


class DisconnectWatch:
    """Notices the client going away, with one task per request (not one per chunk)."""

    def __init__(self, receive: Receive) -> None:
        self._task = asyncio.ensure_future(self._wait(receive))

    @staticmethod
    async def _wait(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    @property
    def gone(self) -> bool:
        return self._task.done()

    async def race(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` unless the client disconnects first (then raise ClientGone)."""
        work = asyncio.ensure_future(awaitable)

        def on_gone(_: object) -> None:
            work.cancel()

        self._task.add_done_callback(on_gone)
        try:
            return await work
        except asyncio.CancelledError:
            if self._task.done() and work.cancelled():
                raise ClientGone from None
            raise
        finally:
            self._task.remove_done_callback(on_gone)

    def close(self) -> None:
        self._task.cancel()


async def read_body(scope: Scope, receive: Receive, limit: int) -> dict[str, Any]:
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return decode_json_object(b"".join(chunks))


class ProxyEndpoint:
    """An ASGI app for one OpenAI endpoint: ``chat``, ``completions`` or ``embeddings``."""

    def __init__(self, router: Router, endpoint: str) -> None:
        self.router = router
        self.endpoint = endpoint
        self.path = {
            "chat": "/v1/chat/completions",
            "completions": "/v1/completions",
            "embeddings": "/v1/embeddings",
        }[endpoint]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await send_error(send, 405, f"{self.path} accepts POST only")
            return
        router = self.router
        try:
            body = await read_body(scope, receive, router.config.max_body_bytes)
            ids = await self.prepare(body)
        except RequestError as exc:
            router.metrics.requests.labels(self.endpoint, "rejected").inc()
            await send_error(send, exc.status, exc.message, exc.param)
            return
        except ClientGone:
            return
        stream = bool(body.get("stream", False)) and self.endpoint != "embeddings"
        strip_usage = False
        if stream:
            options = body.get("stream_options") or {}
            if not options.get("include_usage", False):
                body["stream_options"] = {**options, "include_usage": True}
                strip_usage = True  # the client didn't ask: don't pass the usage chunk on
        watch = DisconnectWatch(receive)
        try:
            await self.forward(scope, send, watch, encode_json(body), ids, stream, strip_usage)
        finally:
            watch.close()

    async def prepare(self, body: dict[str, Any]) -> Any:
        """Validate and tokenize; returns the prompt's token ids (for routing only)."""
        router = self.router
        if self.endpoint == "chat":
            validate_chat(body)
        elif self.endpoint == "completions":
            validate_completion(body)
        else:
            validate_embedding(body)
        model = body.get("model")
        served = router.served_model
        if model is not None and served is not None and model != served:
            raise RequestError(404, f"The model `{model}` does not exist.", param="model")
        ids = await self.prompt_ids(body)
        max_len = router.max_model_len()
        if max_len is not None and len(ids) > max_len:
            raise RequestError(
                400,
                f"This model's maximum context length is {max_len} tokens. However, your "
                f"request has {len(ids)} input tokens. Please reduce the length of the input.",
                param="messages" if self.endpoint == "chat" else "prompt",
            )
        return ids

    async def prompt_ids(self, body: dict[str, Any]) -> Sequence[int]:
        tokenizer = self.router.tokenizer
        if tokenizer is None:
            raise RequestError(500, "the router was started without --model: it cannot tokenize")
        start = time.perf_counter()
        ids: Sequence[int]
        try:
            if self.endpoint == "chat":
                text = tokenizer.render_chat(body)
                add_special = bool(body.get("add_special_tokens", False))
                if len(text) > _TOKENIZE_INLINE_MAX_CHARS:
                    ids = await asyncio.to_thread(tokenizer.encode_text, text, add_special)
                else:
                    ids = tokenizer.encode_text(text, add_special)
            elif self.endpoint == "completions":
                prompt = body["prompt"]
                if isinstance(prompt, str) and len(prompt) > _TOKENIZE_INLINE_MAX_CHARS:
                    ids = await asyncio.to_thread(tokenizer.completion_ids, body)
                else:
                    ids = tokenizer.completion_ids(body)
            else:
                first = body["input"] if isinstance(body["input"], str) else body["input"][0]
                if isinstance(first, str):
                    ids = tokenizer.encode_text(first, True)
                elif isinstance(first, int):
                    ids = body["input"]
                else:
                    ids = first
        except TokenizeError as exc:
            raise RequestError(400, str(exc)) from None
        self.router.metrics.tokenize_seconds.observe(time.perf_counter() - start)
        return ids

    async def forward(
        self,
        scope: Scope,
        send: Send,
        watch: DisconnectWatch,
        payload: bytes,
        ids: Any,
        stream: bool,
        strip_usage: bool,
    ) -> None:
        """Route, send upstream with bounded retries, then stream or return the answer."""
        router = self.router
        registry = router.registry
        core = router.cores.core
        assert router.session is not None and registry is not None
        if core is None or not registry.num_healthy:
            router.metrics.requests.labels(self.endpoint, "no_worker").inc()
            await send_error(send, 503, "no healthy worker is available")
            return
        request_id = header(scope, b"x-request-id") or uuid.uuid4().hex
        # Unique per attempt chain even when clients reuse x-request-id.
        booking_id = f"{request_id}#{next(_booking_seq)}"
        excluded: list[tuple[int, int]] = []
        started = time.perf_counter()
        last_error = "no eligible worker"
        for attempt in range(router.config.max_retries + 1):
            t0 = time.perf_counter()
            try:
                decision = core.route(booking_id, ids, exclude=excluded)
            except CoreError as exc:
                last_error = str(exc)
                break
            router.metrics.routing_seconds.observe(time.perf_counter() - t0)
            worker = registry.workers.get(decision.worker_id)
            key = (decision.worker_id, decision.dp_rank)
            if worker is None:  # removed between route and now
                core.on_finish(booking_id)
                excluded.append(key)
                continue
            headers = {"content-type": "application/json", "x-request-id": request_id}
            if worker.info is not None and worker.info.data_parallel_size > 1:
                headers["x-data-parallel-rank"] = str(decision.dp_rank)
            ctx = RequestContext(
                router=router,
                endpoint=self.endpoint,
                booking_id=booking_id,
                worker=worker,
                prompt_tokens=len(ids),
                overlap_tokens=decision.overlap_blocks * core.block_size,
                best_tokens=decision.best_overlap_blocks * core.block_size,
                prefill_blocks=decision.prompt_blocks - decision.overlap_blocks,
                started=started,
            )
            upstream: aiohttp.ClientResponse | None = None
            try:
                upstream = await watch.race(
                    router.session.post(worker.url + self.path, data=payload, headers=headers)
                )
                if upstream.status >= 500:
                    detail = (await upstream.read())[:200]
                    raise aiohttp.ClientResponseError(
                        upstream.request_info, (), status=upstream.status, message=repr(detail)
                    )
                if upstream.status != 200:
                    # A 4xx is the client's problem: pass the worker's answer through.
                    data = await watch.race(upstream.read())
                    ctx.finish("upstream_error")
                    await self.send_upstream_error(send, upstream.status, data)
                    return
                # Nothing reached the client yet: failures up to here are retried.
                if stream:
                    first = await watch.race(upstream.content.readany())
                    if not first:
                        raise aiohttp.ClientPayloadError("the worker closed an empty stream")
                else:
                    data = await watch.race(upstream.read())
            except ClientGone:
                if upstream is not None:
                    upstream.close()
                ctx.finish("client_disconnected")
                return
            except _UPSTREAM_ERRORS as exc:
                if upstream is not None:
                    upstream.close()
                ctx.abandon()
                excluded.append(key)
                last_error = f"worker {worker.url} failed before answering: {exc!r}"
                logger.warning("attempt %d: %s", attempt + 1, last_error)
                router.metrics.retries.inc()
                if not isinstance(exc, aiohttp.ClientResponseError):
                    router.spawn(registry.report_failure(worker.worker_id, last_error))
                continue
            out_headers = [
                (b"x-bisllm-worker", worker.url.encode()),
                (b"x-bisllm-worker-id", str(decision.worker_id).encode()),
                (b"x-bisllm-dp-rank", str(decision.dp_rank).encode()),
                (b"x-bisllm-overlap-blocks", str(decision.overlap_blocks).encode()),
                (b"x-bisllm-prompt-blocks", str(decision.prompt_blocks).encode()),
                (b"x-request-id", request_id.encode()),
            ]
            if stream:
                await ctx.relay_stream(send, watch, upstream, first, strip_usage, out_headers)
            else:
                upstream.close()
                ctx.account_body(data)
                await send_response(send, 200, data, out_headers)
            return
        router.metrics.requests.labels(self.endpoint, "no_worker").inc()
        await send_error(send, 503, f"no worker could take the request: {last_error}")

    async def send_upstream_error(self, send: Send, status: int, data: bytes) -> None:
        if self.endpoint == "embeddings" and status in (400, 404) and b"embed" not in data.lower():
            await send_error(
                send,
                400,
                f"the workers serving `{self.router.served_model}` do not serve embeddings "
                f"(worker answered {status})",
            )
            return
        await send_response(send, status, data)


@dataclass(slots=True)
class RequestContext:
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
            core.on_tokens(self.booking_id, 1)  # on_first_token moves phase, counts nothing
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

    def abandon(self) -> None:
        """This attempt failed and will be retried: free its booking, count nothing."""
        self.finished = True
        self.router.metrics.concurrent_requests.dec()
        core = self.router.cores.core
        if core is not None:
            with contextlib.suppress(CoreError):
                core.on_finish(self.booking_id)

    def finish(self, outcome: str) -> None:
        if self.finished:
            return
        self.abandon()
        router = self.router
        m = router.metrics
        m.requests.labels(self.endpoint, outcome).inc()
        if outcome != "ok":
            return
        m.input_tokens.inc(self.prompt_tokens)
        m.output_tokens.inc(self.completion_tokens)
        m.input_tokens_per_request.observe(self.prompt_tokens)
        m.output_tokens_per_request.observe(self.completion_tokens)
        if self.first_token_at is not None and self.completion_tokens > 1:
            elapsed = time.perf_counter() - self.first_token_at
            if elapsed > 0:
                m.tps_per_request.observe((self.completion_tokens - 1) / elapsed)
        if self.cached_tokens is not None:
            m.observe_cache(
                self.prompt_tokens, self.cached_tokens, self.overlap_tokens, self.best_tokens
            )
        assert router.registry is not None
        router.registry.note_request_finished(self.worker.worker_id, self.prefill_blocks)

    def account_body(self, data: bytes) -> None:
        """Non-streaming: the whole answer is in hand."""
        self.first_token()
        with contextlib.suppress(msgspec.DecodeError, AttributeError):
            self.read_usage(msgspec.json.decode(data).get("usage"))
        self.finish("ok")

    async def relay_stream(
        self,
        send: Send,
        watch: DisconnectWatch,
        upstream: aiohttp.ClientResponse,
        first: bytes,
        strip_usage: bool,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Pass SSE through event by event, accounting tokens; never raises to the client."""
        core = self.router.cores.core
        assert core is not None
        await send(
            {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + headers}
        )
        buffer = b""
        outcome = "ok"
        chunk = first
        try:
            while chunk:
                buffer += chunk
                out: list[bytes] = []
                while (end := buffer.find(b"\n\n")) >= 0:
                    event = buffer[: end + 2]
                    buffer = buffer[end + 2 :]
                    if self._account_event(event, core) or not strip_usage:
                        out.append(event)
                if out:
                    await send(
                        {"type": "http.response.body", "body": b"".join(out), "more_body": True}
                    )
                if watch.gone:
                    outcome = "client_disconnected"
                    break
                chunk = await upstream.content.readany()
            if buffer and outcome == "ok":
                await send({"type": "http.response.body", "body": buffer, "more_body": True})
        except _UPSTREAM_ERRORS as exc:
            outcome = "cut"
            logger.warning("stream from %s cut mid-way: %r", self.worker.url, exc)
            error = sse_error_event(
                502, f"the worker serving this request failed mid-stream: {type(exc).__name__}"
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": error + b"data: [DONE]\n\n",
                    "more_body": True,
                }
            )
        finally:
            upstream.close()  # unread data: the connection closes and vLLM aborts the request
            self.finish(outcome)
        await send({"type": "http.response.body", "body": b""})

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
