"""The mocker's HTTP API, KV-event sockets and metrics, through real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio
from mocker_testutil import (
    EventSink,
    load_capture,
    post,
    sse_payloads,
    stream_events,
    wait_subscribed,
)

from bisllm_workers.kv_events import END_SEQ, BlockStored, decode_batch
from bisllm_workers.mocker.fleet import FleetConfig, MockerFleet
from bisllm_workers.mocker.model import ModelInfo, load_model

CAPTURE = load_capture()
HTTP = CAPTURE["http"]


@pytest.fixture(scope="module")
def tiny() -> ModelInfo:
    return load_model(None)


@pytest.fixture
async def fleet(tiny: ModelInfo) -> AsyncIterator[MockerFleet]:
    cfg = FleetConfig(
        workers=2,
        served_model_name="tiny",
        block_size=16,
        num_blocks=256,
        max_model_len=512,
        speedup=100.0,
    )
    async with MockerFleet(cfg, model=tiny) as f:
        yield f


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


def shape(obj: Any) -> Any:
    """Structure of a JSON value: ordered keys and value kinds, values themselves ignored."""
    if isinstance(obj, dict):
        return [(k, shape(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [shape(x) for x in obj[:1]]
    if obj is None:
        return None
    return (
        "number"
        if isinstance(obj, int | float) and not isinstance(obj, bool)
        else type(obj).__name__
    )


def captured(path: str, pred: Any) -> dict[str, Any]:
    for h in HTTP:
        if h["path"] == path and h["request"] is not None and pred(json.loads(h["request"])):
            return h
    raise LookupError(path)


def test_capture_has_http_samples() -> None:
    assert {h["path"] for h in HTTP} >= {
        "/v1/completions",
        "/v1/chat/completions",
        "/tokenize",
        "/v1/models",
    }


@pytest.mark.parametrize(
    ("path", "stream", "usage"),
    [
        ("/v1/completions", False, False),
        ("/v1/completions", True, True),
        ("/v1/chat/completions", False, False),
        ("/v1/chat/completions", True, True),
    ],
)
async def test_response_shapes_match_vllm(
    fleet: MockerFleet, session: aiohttp.ClientSession, path: str, stream: bool, usage: bool
) -> None:
    ref = captured(
        path,
        lambda b: (
            bool(b.get("stream")) == stream
            and ("stream_options" in b) == usage
            and isinstance(b.get("prompt", ""), str)
        ),
    )
    body = json.loads(ref["request"])
    url = fleet.workers[0].url + path
    if not stream:
        status, resp = await post(session, url, body)
        assert status == 200
        assert shape(resp) == shape(json.loads(ref["body"]))
        assert resp["usage"]["completion_tokens"] == body["max_tokens"]
        return
    ours = [p async for p in stream_events(session, url, body)]
    theirs = sse_payloads(ref["body"])
    assert len(ours) == len(theirs)
    assert ours[-1] == theirs[-1] == "[DONE]"
    for a, b in zip(ours[:-1], theirs[:-1], strict=True):
        assert shape(json.loads(a)) == shape(json.loads(b))


async def test_stream_without_usage_and_token_id_prompt(
    fleet: MockerFleet, session: aiohttp.ClientSession
) -> None:
    ref = captured("/v1/completions", lambda b: isinstance(b.get("prompt"), list))
    body = json.loads(ref["request"])
    ours = [p async for p in stream_events(session, fleet.workers[0].url + "/v1/completions", body)]
    theirs = sse_payloads(ref["body"])
    assert [shape(json.loads(x)) for x in ours[:-1]] == [shape(json.loads(x)) for x in theirs[:-1]]
    text = "".join(json.loads(x)["choices"][0]["text"] for x in ours[:-1])
    # Deterministic output: the same request gives the same text, streamed or not.
    _, full = await post(
        session, fleet.workers[1].url + "/v1/completions", {**body, "stream": False}
    )
    assert full["choices"][0]["text"] == text


async def test_tokenize_matches_vllm_tokens(
    fleet: MockerFleet, session: aiohttp.ClientSession
) -> None:
    for h in HTTP:
        if h["path"] != "/tokenize":
            continue
        status, resp = await post(
            session, fleet.workers[0].url + "/tokenize", json.loads(h["request"])
        )
        want = json.loads(h["body"])
        assert status == 200
        assert resp["tokens"] == want["tokens"]
        assert resp["count"] == want["count"]
        assert resp["max_model_len"] == want["max_model_len"]


async def test_chat_prompt_tokens_match_vllm(
    fleet: MockerFleet, session: aiohttp.ClientSession
) -> None:
    ref = captured("/v1/chat/completions", lambda b: not b.get("stream"))
    _, resp = await post(
        session, fleet.workers[0].url + "/v1/chat/completions", json.loads(ref["request"])
    )
    assert resp["usage"]["prompt_tokens"] == json.loads(ref["body"])["usage"]["prompt_tokens"]


async def test_bad_requests_get_vllm_errors(
    fleet: MockerFleet, session: aiohttp.ClientSession
) -> None:
    url = fleet.workers[0].url
    errors = [h for h in HTTP if h["status"] == 400]
    assert len(errors) >= 5
    for h in errors:
        raw = h["request"].encode()
        status, resp = await post(session, url + h["path"], None, raw=raw)
        want = json.loads(h["body"])["error"]
        assert status == 400, (h["request"], resp)
        assert resp["error"]["type"] == want["type"]
        assert resp["error"]["param"] == want["param"]
        assert resp["error"]["code"] == 400
        assert isinstance(resp["error"]["message"], str)
    for body in (
        [1, 2],
        {"prompt": 5},
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "max_tokens": 600},
        {"prompt": "x", "stream": "yes"},
        {"prompt": [1, -3]},
        {"prompt": "x", "stream_options": {"include_usage": True}},
    ):
        status, resp = await post(session, url + "/v1/completions", body)
        assert status == 400, body
        assert set(resp["error"]) == {"message", "type", "param", "code"}
    status, resp = await post(session, url + "/v1/completions", {"model": "other", "prompt": "x"})
    assert status == 404 and resp["error"]["type"] == "NotFoundError"


async def test_info_models_health_metrics(
    fleet: MockerFleet, session: aiohttp.ClientSession
) -> None:
    w = fleet.workers[1]
    async with session.get(w.url + "/bisllm/worker") as r:
        info = await r.json()
    assert info == {
        "model": "tiny",
        "role": "aggregated",
        "block_size": 16,
        "kv_events_endpoint": w.publisher.endpoint,  # type: ignore[union-attr]
        "kv_replay_endpoint": w.publisher.replay_endpoint,  # type: ignore[union-attr]
        "kv_events_topic": "kv",
        "data_parallel_size": 1,
        "kv_capacity_blocks": 256,
        "max_model_len": 512,
        "engine": "mocker",
    }
    assert info["kv_events_endpoint"].startswith("tcp://127.0.0.1:")
    async with session.get(w.url + "/health") as r:
        assert r.status == 200
    async with session.get(w.url + "/v1/models") as r:
        models = await r.json()
    ref = next(h for h in HTTP if h["path"] == "/v1/models")
    assert shape(models) == shape(json.loads(ref["body"]))
    assert models["data"][0]["id"] == "tiny"
    async with session.get(w.url + "/kv_event_sources") as r:
        assert (await r.json())["0"]["endpoint"] == info["kv_events_endpoint"]
    await post(session, w.url + "/v1/completions", {"prompt": "Hello world", "max_tokens": 3})
    async with session.get(w.url + "/metrics") as r:
        text = await r.text()
    ref_metrics = next(h for h in HTTP if h["path"] == "/metrics")["body"]
    for line in ref_metrics.splitlines():
        if line.startswith(("# HELP", "# TYPE")) and "_created" not in line and "by_" not in line:
            assert line in text, line
    assert 'vllm:generation_tokens_total{engine="0",model_name="tiny"} 3.0' in text
    assert 'vllm:prompt_tokens_total{engine="0",model_name="tiny"} 5.0' in text
    assert 'vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 1.0' in text


async def test_prefix_reuse_over_http_and_events(
    fleet: MockerFleet, session: aiohttp.ClientSession
) -> None:
    w = fleet.workers[0]
    ctx = zmq.asyncio.Context()
    sink = EventSink(ctx, w.info.kv_events_endpoint or "")
    try:
        await wait_subscribed(sink)
        base = list(range(100, 180))  # 80 tokens = 5 blocks of 16
        _, r1 = await post(session, w.url + "/v1/completions", {"prompt": base, "max_tokens": 2})
        await sink.settle(quiet=0.05)
        first = sink.events()
        _, r2 = await post(
            session,
            w.url + "/v1/completions",
            {"prompt": [*base, *range(300, 340)], "max_tokens": 2},
        )
        await sink.settle(quiet=0.05)
        second = sink.events()[len(first) :]
    finally:
        await sink.close()
        ctx.term()
    assert r1["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert r2["usage"]["prompt_tokens_details"]["cached_tokens"] == 80
    s1 = [e for e in first if isinstance(e, BlockStored)]
    s2 = [e for e in second if isinstance(e, BlockStored)]
    assert sum(len(e.block_hashes) for e in s1) == 5
    # Second request: 120 tokens = 7 full blocks; the 5 cached ones are not announced again.
    assert [len(e.block_hashes) for e in s2] == [2]
    assert s2[0].parent_block_hash == s1[0].block_hashes[4]
    assert s2[0].token_ids == list(range(300, 332))


async def test_replay_socket_returns_buffered_batches(
    fleet: MockerFleet, session: aiohttp.ClientSession
) -> None:
    w = fleet.workers[1]
    for i in range(3):
        await post(session, w.url + "/v1/completions", {"prompt": [7 + i] * 40, "max_tokens": 1})
    ctx = zmq.asyncio.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(w.info.kv_replay_endpoint or "")
        await dealer.send_multipart([b"", (1).to_bytes(8, "big")])
        msgs = []
        async with asyncio.timeout(5):
            while True:
                msg = await dealer.recv_multipart()
                msgs.append(msg)
                if msg[2] == END_SEQ:
                    break
    finally:
        dealer.close(linger=0)
        ctx.term()
    *batches, end = msgs
    assert end == [b"", b"", END_SEQ, b""]
    assert [int.from_bytes(m[2], "big") for m in batches] == [1, 2]
    assert all(m[0] == b"" and m[1] == b"kv" for m in batches)
    assert all(isinstance(decode_batch(m[3]).events[0], BlockStored) for m in batches)


async def test_client_disconnect_aborts_the_request(
    tiny: ModelInfo, session: aiohttp.ClientSession
) -> None:
    # Slow engine (speedup 1, 70B profile: ~15 ms/step) so the request is still running.
    cfg = FleetConfig(workers=1, profile="h100-llama3-70b-tp4", num_blocks=64, max_model_len=1024)
    async with MockerFleet(cfg, model=tiny) as f:
        w = f.workers[0]
        body = {"prompt": "Hello there", "max_tokens": 500, "stream": True}
        async with session.post(w.url + "/v1/completions", json=body) as r:
            await r.content.readuntil(b"\n\n")
            assert w.engine.num_running == 1
            assert w.engine.kv.usage > 0
        # Leaving the block closes the connection mid-stream.
        async with asyncio.timeout(5):
            while w.engine.num_running or w.engine.kv.usage:
                await asyncio.sleep(0.02)
        assert w.engine.scheduler.stats.generation_tokens < 500


async def test_ttft_grows_with_uncached_tokens_and_shrinks_with_hits(
    tiny: ModelInfo, session: aiohttp.ClientSession
) -> None:
    # 70B TP4 profile at real speed: prefill 79 µs/token → ~300 ms for 3800 tokens vs ~15 ms.
    cfg = FleetConfig(workers=1, profile="h100-llama3-70b-tp4", num_blocks=1024, max_model_len=4096)
    async with MockerFleet(cfg, model=tiny) as f:
        url = f.workers[0].url + "/v1/completions"

        async def ttft(prompt: list[int]) -> float:
            t0 = time.perf_counter()
            async with session.post(
                url, json={"prompt": prompt, "max_tokens": 2, "stream": True}
            ) as r:
                await r.content.readuntil(b"\n\n")
                dt = time.perf_counter() - t0
                await r.read()
            return dt

        short = await ttft(list(range(10, 110)))
        long = await ttft(list(range(10, 3810)))
        hit = await ttft([*range(10, 3810), 5, 6])
    assert long > short + 0.2
    assert hit < long / 3
