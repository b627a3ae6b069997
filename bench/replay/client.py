"""The open-loop load generator: send each request at its arrival time, stream, time it.

Open loop (arrivals follow the workload's clock, never wait for earlier answers)
is what makes saturation visible: a closed-loop client slows down with the server
and hides queueing. Every request streams (``stream_options.include_usage``) so
time-to-first-token is measured at the client, and the final usage chunk gives
the engine's ``cached_tokens``. While it runs, a sampler scrapes the router's
``/metrics`` for per-worker in-flight tokens (the load-over-time plot).

Times here are wall-clock seconds from the run's start; :mod:`bench.replay.report`
converts them to simulated time (x the mocker's speedup).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from bench.replay.trace import BlockExpander, TraceRequest

#: HTTP statuses that mean "not admitted now" (load shedding) rather than failure.
SHED_STATUSES = frozenset({429, 503})


@dataclass(slots=True)
class RequestResult:
    """What the client saw for one request (wall seconds from the run's start)."""

    index: int
    scheduled_s: float  # arrival time the workload asked for
    input_length: int
    max_tokens: int
    sent_s: float | None = None  # when the POST actually went out (client lag = sent - scheduled)
    first_token_s: float | None = None
    end_s: float | None = None
    token_times: list[float] = field(default_factory=list)  # arrival of every token chunk
    outcome: str = "pending"  # ok | error | shed | timeout
    status: int | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    worker: str | None = None  # x-bisllm-worker
    overlap_blocks: int | None = None  # x-bisllm-overlap-blocks (router's credited overlap)
    prompt_blocks: int | None = None  # x-bisllm-prompt-blocks

    @property
    def ttft_s(self) -> float | None:
        """Scheduled arrival → first token: includes any client lag, as a user would see."""
        if self.first_token_s is None:
            return None
        return self.first_token_s - self.scheduled_s

    @property
    def e2e_s(self) -> float | None:
        if self.end_s is None:
            return None
        return self.end_s - self.scheduled_s

    def itls(self) -> list[float]:
        """Gaps between consecutive token chunks."""
        t = self.token_times
        return [b - a for a, b in itertools.pairwise(t)]


@dataclass(slots=True)
class LoadSample:
    """One scrape of the router's per-worker load."""

    t_s: float
    in_flight_tokens: dict[str, float]  # worker url -> uncached prefill + decode tokens
    requests: dict[str, float]  # worker url -> requests booked (prefill + decode)


_METRIC_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, value))
    return out


def metric_value(
    samples: Sequence[tuple[str, dict[str, str], float]], name: str, **labels: str
) -> float | None:
    """Sum of the samples called ``name`` (or ``name_total``) whose labels match."""
    total = None
    for n, lab, v in samples:
        if n != name and n != name + "_total":
            continue
        if all(lab.get(k) == val for k, val in labels.items()):
            total = (total or 0.0) + v
    return total


def load_sample(t_s: float, text: str) -> LoadSample:
    """Per-worker load out of one router /metrics scrape."""
    tokens: dict[str, float] = {}
    reqs: dict[str, float] = {}
    for name, labels, value in parse_prometheus(text):
        worker = labels.get("worker")
        if worker is None:
            continue
        if name == "worker_in_flight_tokens":
            tokens[worker] = tokens.get(worker, 0.0) + value
        elif name == "worker_requests":
            reqs[worker] = reqs.get(worker, 0.0) + value
    return LoadSample(t_s, tokens, reqs)


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: dict[str, Any] | None = None


class _Chunk(msgspec.Struct):
    choices: list[dict[str, Any]] = []
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


@dataclass(slots=True)
class ClientConfig:
    """How the client talks to the router."""

    base_url: str  # router, e.g. http://127.0.0.1:8000
    model: str  # served model name
    speedup: float = 1.0  # simulated seconds per wall second: arrivals are divided by it
    drain_timeout_s: float = 60.0  # wall seconds to wait for stragglers after the last arrival
    max_wall_s: float | None = None  # hard cap on the whole run (wall)
    sample_interval_s: float = 0.25  # wall seconds between /metrics scrapes
    request_timeout_s: float = 120.0  # per request (wall)


async def _one(
    session: aiohttp.ClientSession,
    cfg: ClientConfig,
    req: TraceRequest,
    result: RequestResult,
    expander: BlockExpander,
    t0: float,
) -> None:
    """Send one request at its scheduled time and fill ``result`` from its stream."""
    delay = t0 + result.scheduled_s - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    body = {
        "model": cfg.model,
        "prompt": expander.prompt(req).tolist(),
        "max_tokens": req.output_length,
        "min_tokens": req.output_length,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result.sent_s = time.perf_counter() - t0
    try:
        async with session.post(
            cfg.base_url + "/v1/completions",
            data=msgspec.json.encode(body),
            headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=cfg.request_timeout_s),
        ) as resp:
            result.status = resp.status
            h = resp.headers
            result.worker = h.get("x-bisllm-worker")
            if "x-bisllm-overlap-blocks" in h:
                result.overlap_blocks = int(h["x-bisllm-overlap-blocks"])
            if "x-bisllm-prompt-blocks" in h:
                result.prompt_blocks = int(h["x-bisllm-prompt-blocks"])
            if resp.status != 200:
                text = (await resp.text())[:300]
                result.outcome = "shed" if resp.status in SHED_STATUSES else "error"
                result.error = f"HTTP {resp.status}: {text}"
                return
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                now = time.perf_counter() - t0
                try:
                    chunk = _decode_chunk(data)
                except msgspec.DecodeError:
                    result.outcome, result.error = "error", f"bad SSE chunk: {data[:100]!r}"
                    return
                if chunk.error is not None:
                    result.outcome, result.error = "error", f"stream error: {chunk.error}"
                    return
                if chunk.choices:
                    if result.first_token_s is None:
                        result.first_token_s = now
                    result.token_times.append(now)
                if chunk.usage is not None:
                    u = chunk.usage
                    result.prompt_tokens = u.prompt_tokens
                    result.completion_tokens = u.completion_tokens
                    details = u.prompt_tokens_details or {}
                    cached = details.get("cached_tokens")
                    result.cached_tokens = cached if isinstance(cached, int) else None
            result.end_s = time.perf_counter() - t0
            if result.first_token_s is None:
                result.outcome, result.error = "error", "stream ended without a token"
            else:
                result.outcome = "ok"
    except asyncio.CancelledError:
        result.outcome, result.error = "timeout", "cancelled at the run's deadline"
        raise
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        result.outcome, result.error = "error", f"{type(exc).__name__}: {exc}"


async def _sampler(
    session: aiohttp.ClientSession,
    url: str,
    interval: float,
    t0: float,
    out: list[LoadSample],
    stop: asyncio.Event,
) -> None:
    """Scrape router /metrics every ``interval`` until ``stop``; failures are skipped."""
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                text = await resp.text()
            out.append(load_sample(time.perf_counter() - t0, text))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def _notify(
    on_done: Callable[[RequestResult], None], result: RequestResult, _task: asyncio.Task[None]
) -> None:
    on_done(result)


@dataclass(slots=True)
class ClientRun:
    """Everything one replay produced at the client."""

    results: list[RequestResult]
    samples: list[LoadSample]
    wall_s: float
    final_metrics: str  # router /metrics text after the run


async def replay(
    requests: Sequence[TraceRequest],
    expander: BlockExpander,
    cfg: ClientConfig,
    on_done: Callable[[RequestResult], None] | None = None,
) -> ClientRun:
    """Replay ``requests`` open loop against the router; bounded by the config's timeouts.

    Arrival ``a`` (simulated seconds) is sent at wall time ``a / speedup``. After the
    last arrival the run waits ``drain_timeout_s`` for stragglers, then cancels them
    (they count as ``timeout``); ``max_wall_s`` caps the whole run.
    """
    results = [
        RequestResult(i, r.arrival_s / cfg.speedup, r.input_length, r.output_length)
        for i, r in enumerate(requests)
    ]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    samples: list[LoadSample] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        t0 = time.perf_counter()
        sampler = asyncio.create_task(
            _sampler(session, cfg.base_url + "/metrics", cfg.sample_interval_s, t0, samples, stop)
        )
        tasks = []
        for req, res in zip(requests, results, strict=True):
            task = asyncio.create_task(_one(session, cfg, req, res, expander, t0))
            if on_done is not None:
                task.add_done_callback(functools.partial(_notify, on_done, res))
            tasks.append(task)
        last_arrival = results[-1].scheduled_s if results else 0.0
        budget = last_arrival + cfg.drain_timeout_s
        if cfg.max_wall_s is not None:
            budget = min(budget, cfg.max_wall_s)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=max(0.0, budget))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for res in results:
            if res.outcome == "pending":  # never sent: the deadline came first
                res.outcome, res.error = "timeout", "not sent before the run's deadline"
        wall = time.perf_counter() - t0
        stop.set()
        await sampler
        final = ""
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(
                cfg.base_url + "/metrics", timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                final = await resp.text()
    return ClientRun(results, samples, wall, final)
