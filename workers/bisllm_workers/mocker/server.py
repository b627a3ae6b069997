"""HTTP front end of one mock worker: the subset of vLLM's OpenAI server the router uses.

Response bodies reproduce vLLM 0.32's JSON shapes key for key (the captured samples in
tests/workers/data/vllm_kv_events.json are compared in the tests), including its quirks: the
chat role chunk goes out with the first token (so the first SSE event still marks TTFT), the
finish chunk carries `system_fingerprint` only when no usage chunk follows, and schema errors are
typed "Bad Request" while value errors are typed "BadRequestError".

A worker is an aiohttp Application on its own loopback socket; one process hosts many of them
(one AppRunner each, sharing the event loop). Handlers run with `handler_cancellation=True`, so a
client that disconnects cancels its handler, and the `finally` aborts the request in the engine,
freeing its KV blocks, as vLLM does.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bisllm_workers.kv_events import KVEventPublisher
from bisllm_workers.mocker.engine import TTFT_BUCKETS, MockEngine
from bisllm_workers.mocker.request import Request, RequestId, RequestStatus

__all__ = ["MockWorker", "WorkerInfo"]

VLLM_VERSION = "0.32.0"
SYSTEM_FINGERPRINT = f"vllm-{VLLM_VERSION}-mocker"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


class ApiError(Exception):
    """An OpenAI-style error response (vLLM's ErrorResponse)."""

    def __init__(
        self, message: str, param: str | None, err_type: str = "BadRequestError", code: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.err_type = err_type
        self.code = code

    def response(self) -> web.Response:
        body = {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.code,
            }
        }
        return web.Response(
            status=self.code, body=_json_encode(body), content_type="application/json"
        )


def _schema_error(field: str, kind: str, msg: str, value: Any) -> ApiError:
    """Shape of vLLM's pydantic validation errors ("Bad Request", param body.<field>)."""
    detail = {"type": kind, "loc": f"body.{field}", "msg": msg, "input": value}
    return ApiError(f"1 validation error:\n  {detail}", f"body.{field}", "Bad Request")


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise _schema_error(key, "int_parsing", "Input should be a valid integer", v)
    return v


def _opt_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _schema_error(key, "bool_parsing", "Input should be a valid boolean", v)
    return v


@dataclass(slots=True)
class WorkerInfo:
    """What GET /bisllm/worker reports (the router's discovery document)."""

    model: str
    block_size: int
    kv_events_endpoint: str | None
    kv_replay_endpoint: str | None
    kv_events_topic: str | None
    kv_capacity_blocks: int
    max_model_len: int
    role: str = "aggregated"
    data_parallel_size: int = 1
    engine: str = "mocker"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "role": self.role,
            "block_size": self.block_size,
            "kv_events_endpoint": self.kv_events_endpoint,
            "kv_replay_endpoint": self.kv_replay_endpoint,
            "kv_events_topic": self.kv_events_topic,
            "data_parallel_size": self.data_parallel_size,
            "kv_capacity_blocks": self.kv_capacity_blocks,
            "max_model_len": self.max_model_len,
            "engine": self.engine,
        }


class _EngineCollector(Collector):
    """Reads the engine's counters at scrape time (no per-token metric updates on the hot
    path). Names, help texts, labels and buckets are vLLM 0.32's."""

    def __init__(self, engine: MockEngine, model_name: str) -> None:
        self._engine = engine
        self._labels = ["engine", "model_name"]
        self._values = ["0", model_name]

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=self._labels)
        g.add_metric(self._values, value)
        return g

    def _counter(self, name: str, doc: str, value: float, created: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=self._labels)
        c.add_metric(self._values, value, created=created)
        return c

    def collect(self) -> Iterator[Metric]:
        e = self._engine
        st = e.scheduler.stats
        es = e.stats
        created = es.created
        yield self._gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            e.num_running,
        )
        yield self._gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            e.num_waiting,
        )
        yield self._gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv.usage
        )
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            st.prefix_cache_queries,
            created,
        )
        yield self._counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            st.prefix_cache_hits,
            created,
        )
        yield self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", st.prompt_tokens, created
        )
        yield self._counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            st.generation_tokens,
            created,
        )
        yield self._counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            st.num_preemptions,
            created,
        )
        h = HistogramMetricFamily(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels=self._labels,
        )
        cum = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip((*TTFT_BUCKETS, float("inf")), es.ttft_bucket_counts, strict=True):
            cum += n
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cum))
        h.add_metric(self._values, buckets, es.ttft_sum_s)
        yield h


def bind_loopback(port: int) -> socket.socket:
    """A listening-ready TCP socket on 127.0.0.1:port (0 = ephemeral)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class MockWorker:
    """One mock vLLM worker: engine + event publisher + HTTP app on its own port."""

    def __init__(
        self,
        engine: MockEngine,
        served_model_name: str,
        publisher: KVEventPublisher | None,
        index: int = 0,
    ) -> None:
        self.engine = engine
        self.model = engine.model
        self.served_model_name = served_model_name
        self.publisher = publisher
        self.index = index
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(engine, served_model_name))
        self.info = WorkerInfo(
            model=served_model_name,
            block_size=engine.config.block_size,
            kv_events_endpoint=publisher.endpoint if publisher else None,
            kv_replay_endpoint=publisher.replay_endpoint if publisher else None,
            kv_events_topic=publisher.topic if publisher else None,
            kv_capacity_blocks=engine.config.num_blocks,
            max_model_len=engine.config.max_model_len,
        )
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._created = int(time.time())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_get("/bisllm/worker", self.worker_info)
        app.router.add_get("/bisllm/mocker/stats", self.mocker_stats)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/kv_event_sources", self.kv_event_sources)
        app.router.add_post("/reset_prefix_cache", self.reset_prefix_cache)
        return app

    async def start(self, sock: socket.socket) -> None:
        self.engine.start()
        self._runner = web.AppRunner(
            self.make_app(), handle_signals=False, access_log=None, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.SockSite(self._runner, sock, shutdown_timeout=0.5)
        await site.start()
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        await self.engine.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.publisher is not None:
            await self.publisher.close()

    # ---- simple endpoints ----------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def worker_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.info.to_json())

    async def mocker_stats(self, request: web.Request) -> web.Response:
        """Simulator internals (not a vLLM endpoint): how far the step loop lagged, etc."""
        e = self.engine
        st = e.scheduler.stats
        return web.json_response(
            {
                "busy_steps": e.stats.busy_steps,
                "simulated_s": e.stats.simulated_s,
                "lag_s": e.stats.lag_s,
                "num_preemptions": st.num_preemptions,
                "prefix_cache_queries": st.prefix_cache_queries,
                "prefix_cache_hits": st.prefix_cache_hits,
                "generation_tokens": st.generation_tokens,
                "num_running": e.num_running,
                "num_waiting": e.num_waiting,
                "kv_cache_usage": e.kv.usage,
                "kv_cached_blocks": e.kv.num_cached_blocks,
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": "text/plain; version=1.0.0; charset=utf-8"},
        )

    async def kv_event_sources(self, request: web.Request) -> web.Response:
        if self.publisher is None:
            return web.json_response({})
        return web.json_response(
            {
                "0": {
                    "enable_kv_cache_events": True,
                    "publisher": "zmq",
                    "endpoint": self.publisher.endpoint,
                    "replay_endpoint": self.publisher.replay_endpoint,
                    "buffer_steps": 10_000,
                    "hwm": 100_000,
                    "max_queue_size": 100_000,
                    "topic": self.publisher.topic,
                }
            }
        )

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        if not self.engine.reset_prefix_cache():
            return ApiError("Failed to reset prefix cache: blocks are in use", None).response()
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        perm = {
            "id": f"modelperm-{secrets.token_hex(8)}",
            "object": "model_permission",
            "created": self._created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        card = {
            "id": self.served_model_name,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm",
            "root": self.model.root,
            "parent": None,
            "max_model_len": self.engine.config.max_model_len,
            "permission": [perm],
        }
        return web.json_response({"object": "list", "data": [card]})

    # ---- request parsing -----------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = _json_decode(raw)
        except msgspec.DecodeError as exc:
            raise _schema_error("1", "json_invalid", "JSON decode error", str(exc)) from None
        if not isinstance(body, dict):
            raise _schema_error("", "model_attributes_type", "Input should be an object", body)
        model = body.get("model")
        if model is not None and model != self.served_model_name:
            raise ApiError(f"The model `{model}` does not exist.", "model", "NotFoundError", 404)
        n = _opt_int(body, "n")
        if n is not None and n != 1:
            raise ApiError("The mocker supports only n=1.", "n")
        return body

    def _check_lengths(self, num_prompt: int, max_tokens: int | None) -> int:
        """vLLM's frontend checks; returns the effective max_tokens."""
        limit = self.engine.config.max_model_len
        if num_prompt == 0:
            raise ApiError("The prompt cannot be empty.", "prompt")
        # A prompt must leave room for at least one output token.
        if num_prompt >= limit:
            raise ApiError(
                f"This model's maximum context length is {limit} tokens. However, your prompt "
                f"contains {num_prompt} input tokens, which exceeds this limit even without any "
                f"output tokens. Please reduce the length of the input prompt. "
                f"(parameter=input_tokens, value={num_prompt})",
                "input_tokens",
            )
        if max_tokens is None:
            return limit - num_prompt
        if max_tokens < 1:
            raise ApiError(
                f"max_tokens must be at least 1, got {max_tokens}. "
                f"(parameter=max_tokens, value={max_tokens})",
                "max_tokens",
            )
        if num_prompt + max_tokens > limit:
            raise ApiError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{max_tokens} output tokens and your prompt contains {num_prompt} input tokens, "
                f"for a total of {num_prompt + max_tokens} tokens. Please reduce the length of "
                f"the input prompt or the number of requested output tokens. "
                f"(parameter=max_tokens, value={max_tokens})",
                "max_tokens",
            )
        return max_tokens

    def _prompt_ids(self, prompt: Any) -> list[int]:
        """A completion prompt: a string, a list of token ids, or a one-element list of
        either (batched prompts are not simulated)."""
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return self.model.encode_prompt(prompt, add_special_tokens=True)
        if isinstance(prompt, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            vocab = self.model.vocab_size
            for t in prompt:
                if t < 0 or t >= vocab:
                    raise ApiError(f"Token id {t} is out of vocabulary", "prompt")
            return list(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
            raise ApiError("The mocker supports one prompt per request.", "prompt")
        raise _schema_error("prompt", "string_type", "Input should be a valid string", prompt)

    def _chat_ids(self, body: dict[str, Any]) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise _schema_error("messages", "list_type", "Input should be a valid list", messages)
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _schema_error(
                    f"messages.{i}", "model_type", "Input should be a message object", m
                )
            content = m.get("content")
            if content is not None and not isinstance(content, str | list):
                raise _schema_error(
                    f"messages.{i}.content",
                    "string_type",
                    "Input should be a valid string",
                    content,
                )
        add_gen = _opt_bool(body, "add_generation_prompt", True)
        try:
            return self.model.encode_chat(messages, add_generation_prompt=add_gen)
        except Exception as exc:  # template errors are the client's (bad roles, ...)
            raise ApiError(str(exc), "messages") from None

    # ---- generation --------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            if "prompt" not in body:
                raise _schema_error("prompt", "missing", "Field required", None)
            ids = self._prompt_ids(body["prompt"])
            mt = _opt_int(body, "max_tokens")
            max_tokens = self._check_lengths(len(ids), 16 if mt is None else mt)
            stream, include_usage = self._stream_opts(body)
        except ApiError as err:
            return err.response()
        rid = RequestId(f"cmpl-{secrets.token_hex(8)}")
        return await self._generate(
            request, rid, ids, max_tokens, stream, include_usage, chat=False
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            ids = self._chat_ids(body)
            mt = _opt_int(body, "max_completion_tokens")
            if mt is None:
                mt = _opt_int(body, "max_tokens")
            max_tokens = self._check_lengths(len(ids), mt)
            stream, include_usage = self._stream_opts(body)
        except ApiError as err:
            return err.response()
        rid = RequestId(f"chatcmpl-{secrets.token_hex(8)}")
        return await self._generate(request, rid, ids, max_tokens, stream, include_usage, chat=True)

    @staticmethod
    def _stream_opts(body: dict[str, Any]) -> tuple[bool, bool]:
        stream = _opt_bool(body, "stream", False)
        opts = body.get("stream_options")
        include_usage = False
        if opts is not None:
            if not isinstance(opts, dict):
                raise _schema_error(
                    "stream_options", "model_type", "Input should be an object", opts
                )
            if not stream:
                raise ApiError(
                    "Stream options can only be defined when `stream=True`.", "stream_options"
                )
            include_usage = _opt_bool(opts, "include_usage", False)
        return stream, include_usage

    async def _generate(
        self,
        request: web.Request,
        rid: RequestId,
        ids: list[int],
        max_tokens: int,
        stream: bool,
        include_usage: bool,
        chat: bool,
    ) -> web.StreamResponse:
        engine = self.engine
        req = engine.add_request(rid, ids, max_tokens)
        try:
            if stream:
                return await self._stream(request, req, include_usage, chat)
            wakeup = req.wakeup
            assert wakeup is not None
            while not req.released_finished and req.status != RequestStatus.FINISHED_ABORTED:
                await wakeup.wait()
                wakeup.clear()
            if req.status == RequestStatus.FINISHED_ABORTED:
                return ApiError(
                    "The engine aborted the request.", None, "InternalServerError", 500
                ).response()
            return web.Response(
                body=_json_encode(self._full_response(req, chat)), content_type="application/json"
            )
        finally:
            if not req.released_finished:
                engine.abort(rid)

    def _usage(self, req: Request, full: bool, chat: bool) -> dict[str, Any]:
        n_out = req.num_output_tokens
        cached = max(req.num_cached_tokens, 0)
        details: dict[str, Any] = {"cached_tokens": cached}
        if chat or full:
            bs = self.engine.config.block_size
            created = (req.num_prompt_tokens // bs) * bs - cached if chat else None
            details["created_cache_tokens"] = max(created, 0) if created is not None else None
        if full:
            details["multimodal_tokens"] = None
        usage: dict[str, Any] = {
            "prompt_tokens": req.num_prompt_tokens,
            "total_tokens": req.num_prompt_tokens + n_out,
            "completion_tokens": n_out,
            "prompt_tokens_details": details,
        }
        if full:
            usage["completion_tokens_details"] = None
        return usage

    def _full_response(self, req: Request, chat: bool) -> dict[str, Any]:
        text = "".join(self.model.token_text(t) for t in req.output_token_ids)
        created = int(time.time())
        if chat:
            message = {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            }
            return {
                "id": req.request_id,
                "object": "chat.completion",
                "created": created,
                "model": self.served_model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "length",
                        "stop_reason": None,
                        "token_ids": None,
                        "routed_experts": None,
                    }
                ],
                "service_tier": None,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "usage": self._usage(req, True, True),
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "prompt_text": None,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        return {
            "id": req.request_id,
            "object": "text_completion",
            "created": created,
            "model": self.served_model_name,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": "length",
                    "stop_reason": None,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": self._usage(req, True, False),
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }

    async def _stream(
        self, request: web.Request, req: Request, include_usage: bool, chat: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        created = int(time.time())
        # Chunks are the same JSON with one text field changing: format the constant parts
        # once. json.dumps gives the escaped string literal for the text.
        model = json.dumps(self.served_model_name)
        if chat:
            head = (
                f'data: {{"id":"{req.request_id}","object":"chat.completion.chunk",'
                f'"created":{created},"model":{model},"choices":[{{"index":0,'
            )
            role_chunk = (
                head + '"delta":{"role":"assistant","content":""},"logprobs":null,'
                '"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'
            )
            mid = '"delta":{"content":'
            tail = '},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
            last_tail = (
                '},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}]'
            )
        else:
            head = (
                f'data: {{"id":"{req.request_id}","object":"text_completion",'
                f'"created":{created},"model":{model},"choices":[{{"index":0,'
            )
            role_chunk = ""
            mid = '"text":'
            tail = ',"logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}\n\n'
            last_tail = ',"logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_token_ids":null,"token_ids":null}]'
        fp = f',"system_fingerprint":"{SYSTEM_FINGERPRINT}"'
        token_json = self.model.token_json
        wakeup = req.wakeup
        assert wakeup is not None
        sent = 0
        first = True
        while True:
            await wakeup.wait()
            wakeup.clear()
            if req.status == RequestStatus.FINISHED_ABORTED:
                break
            p0 = req.num_prompt_tokens
            out = req.all_token_ids[p0 + sent : p0 + req.num_released]
            finished = req.released_finished
            parts: list[str] = []
            if out and first and chat:
                parts.append(role_chunk)
            if out:
                first = False
            last_i = len(out) - 1
            for i, tok in enumerate(out):
                text = token_json(tok)
                if finished and i == last_i:
                    parts.append(
                        head + mid + text + last_tail + ("}\n\n" if include_usage else fp + "}\n\n")
                    )
                else:
                    parts.append(head + mid + text + tail)
            sent += len(out)
            if finished and include_usage:
                usage = _json_encode(self._usage(req, False, chat)).decode()
                parts.append(
                    f'data: {{"id":"{req.request_id}","object":"'
                    f'{"chat.completion.chunk" if chat else "text_completion"}",'
                    f'"created":{created},"model":{model},"choices":[],"usage":{usage}{fp}}}\n\n'
                )
            if finished:
                parts.append("data: [DONE]\n\n")
            if parts:
                await resp.write("".join(parts).encode())
            if finished:
                break
        await resp.write_eof()
        return resp

    # ---- tokenize ----------------------------------------------------------------------------

    async def tokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            if "messages" in body:
                ids = self._chat_ids(body)
                if _opt_bool(body, "add_special_tokens", False):
                    ids = self.model.encode_prompt(self.model.render_chat(body["messages"]), True)
            elif "prompt" in body:
                prompt = body["prompt"]
                if not isinstance(prompt, str):
                    raise _schema_error(
                        "prompt", "string_type", "Input should be a valid string", prompt
                    )
                ids = self.model.encode_prompt(prompt, _opt_bool(body, "add_special_tokens", True))
            else:
                raise _schema_error("prompt", "missing", "Field required", None)
        except ApiError as err:
            return err.response()
        return web.json_response(
            {
                "count": len(ids),
                "max_model_len": self.engine.config.max_model_len,
                "tokens": ids,
                "token_strs": None,
            }
        )
