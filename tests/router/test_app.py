"""The router service end to end against a fleet of mocker workers (separate processes)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from process_harness import start_mocker, start_router, wait_http

ADMIN = {"Authorization": "Bearer secret-admin"}
SHARED_PREFIX = " ".join(f"w{i}" for i in range(300))  # a few hundred tokens: many blocks


def completion(router_url: str, prompt, **kw) -> httpx.Response:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": kw.pop("max_tokens", 4), **kw}
    return httpx.post(router_url + "/v1/completions", json=body, timeout=30)


def admin_workers(router_url: str) -> list[dict]:
    return httpx.get(router_url + "/admin/workers", headers=ADMIN, timeout=5).json()["workers"]


def wait_indexed(router_url: str, at_least: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = sum(rank["indexed_blocks"] for w in admin_workers(router_url) for rank in w["load"])
        if total >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"index never reached {at_least} entries")


def test_shared_prefix_lands_on_the_worker_that_holds_it(router):
    first = completion(router.url, SHARED_PREFIX + " first question")
    assert first.status_code == 200, first.text
    owner = first.headers["x-bisllm-worker"]
    prompt_blocks = int(first.headers["x-bisllm-prompt-blocks"])
    assert prompt_blocks >= 10
    wait_indexed(router.url, prompt_blocks - 1)
    for suffix in ("second", "third", "fourth"):
        again = completion(router.url, SHARED_PREFIX + f" {suffix} question")
        assert again.status_code == 200
        assert again.headers["x-bisllm-worker"] == owner
        overlap = int(again.headers["x-bisllm-overlap-blocks"])
        assert overlap >= prompt_blocks - 2
        # The engine agrees: it served the shared blocks from its cache.
        cached = again.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached >= overlap * 16 - 16


async def test_unrelated_prompts_spread_by_load(router):
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> str:
            body = {"model": "tiny", "prompt": f"unrelated {i} " * 40, "max_tokens": 64}
            r = await client.post(router.url + "/v1/completions", json=body)
            assert r.status_code == 200, r.text
            return r.headers["x-bisllm-worker"]

        chosen = await asyncio.gather(*(one(i) for i in range(12)))
    assert len(set(chosen)) == 3, chosen


def test_openai_sdk_sync_chat_and_completions(router):
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello there"}], max_tokens=5
    )
    assert chat.choices[0].message.content
    assert chat.usage.completion_tokens == 5
    comp = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=3)
    assert comp.choices[0].text and comp.usage.prompt_tokens > 0
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_openai_sdk_streaming_chat(router):
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Stream me"}],
        max_tokens=6,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The client did not ask for usage: the router's injected usage chunk is not passed on.
    assert all(c.choices for c in chunks)
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Stream me"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    last = list(stream)[-1]
    assert last.usage is not None and last.usage.completion_tokens == 6


async def test_openai_sdk_async_streaming_completions(router):
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    stream = await client.completions.create(
        model="tiny", prompt="Async streaming", max_tokens=4, stream=True
    )
    texts = [c.choices[0].text async for c in stream if c.choices]
    assert len(texts) >= 1
    await client.close()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        (json.dumps({"model": "tiny", "prompt": 12}).encode(), 400),
        (json.dumps({"model": "tiny", "prompt": [5, -1]}).encode(), 400),
        (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": "many"}).encode(), 400),
        (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": -1}).encode(), 400),
        (json.dumps({"model": "nope", "prompt": "x"}).encode(), 404),
        (json.dumps({"model": "tiny", "prompt": "x " * 100_000}).encode(), 400),
    ],
)
def test_bad_input_gets_openai_errors(router, body, status):
    r = httpx.post(
        router.url + "/v1/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status and error["message"] and error["type"]


def test_bad_chat_messages(router):
    r = httpx.post(
        router.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"content": "no role"}]},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_unknown_route_is_openai_404(router):
    r = httpx.get(router.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_embeddings_to_generative_workers_is_a_clear_error(router):
    r = httpx.post(router.url + "/v1/embeddings", json={"model": "tiny", "input": "hello"})
    assert r.status_code == 400
    assert "embeddings" in r.json()["error"]["message"]


def test_admin_requires_the_key(router):
    assert httpx.get(router.url + "/admin/workers").status_code == 401
    workers = admin_workers(router.url)
    assert len(workers) == 3
    assert {w["status"] for w in workers} == {"healthy"}
    assert {w["index_state"] for w in workers} == {"exact"}
    assert all(w["info"]["block_size"] == 16 for w in workers)


def test_admin_add_and_remove(router, tiny_model, log_dir):
    extra = start_mocker(tiny_model, log_dir, "extra")
    try:
        bad = httpx.post(router.url + "/admin/workers", headers=ADMIN, json={"url": 5})
        assert bad.status_code == 400
        added = httpx.post(
            router.url + "/admin/workers", headers=ADMIN, json={"url": extra.url}, timeout=10
        )
        assert added.status_code == 201, added.text
        wid = added.json()["worker_id"]
        assert len(admin_workers(router.url)) == 4
        gone = httpx.delete(router.url + f"/admin/workers/{wid}", headers=ADMIN)
        assert gone.status_code == 200
        assert len(admin_workers(router.url)) == 3
        assert httpx.delete(router.url + "/admin/workers/999", headers=ADMIN).status_code == 404
    finally:
        extra.stop()


def test_metrics_use_bis_llm_names(router):
    completion(router.url, "metrics please")
    text = httpx.get(router.url + "/metrics").text
    for name in (
        "concurrent_requests",
        "input_tokens_total",
        "output_tokens_total",
        "input_tokens_per_request_bucket",
        "output_tokens_per_request_bucket",
        "tps_per_request_bucket",
        "kv_cache_hit_rate",
        "kv_cache_best_prefix_hit_rate",
        "kv_cache_hit_rate_skew",
        "kv_cache_hit_rate_efficiency",
        "routing_decision_seconds_bucket",
        "kv_events_batches_applied_total",
        "worker_in_flight_tokens",
        'replica_count_by_status{status="healthy"} 3.0',
        'kv_index_state{state="exact"',
    ):
        assert name in text, name


def test_body_limit_and_api_keys(tiny_model, log_dir, mockers):
    router = start_router(
        tiny_model,
        log_dir,
        [mockers[0].url],
        "--api-key",
        "k1",
        "--max-body-bytes",
        "1000",
        name="router-keys",
    )
    try:
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
        assert httpx.post(router.url + "/v1/completions", json=body).status_code == 401
        wrong = {"Authorization": "Bearer k2"}
        r = httpx.post(router.url + "/v1/completions", json=body, headers=wrong)
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"
        ok = {"Authorization": "Bearer k1"}
        assert httpx.post(router.url + "/v1/completions", json=body, headers=ok).status_code == 200
        big = {**body, "prompt": "x" * 2000}
        r = httpx.post(router.url + "/v1/completions", json=big, headers=ok)
        assert r.status_code == 413
        assert httpx.get(router.url + "/health").status_code == 200  # not behind the key
    finally:
        router.stop()


def test_worker_without_events_falls_back_to_approximate(tiny_model, log_dir, mockers):
    # The events endpoint points nowhere: the worker serves requests, no event ever comes.
    url = mockers[1].url
    router = start_router(
        tiny_model,
        log_dir,
        [url],
        "--worker-events",
        f"{url}=ipc:///tmp/bisllm-test-nowhere-{time.monotonic_ns()}",
        "--events-silence",
        "0.5",
        name="router-silent",
    )
    try:
        completion(router.url, SHARED_PREFIX + " silent")
        deadline = time.monotonic() + 10
        while admin_workers(router.url)[0]["index_state"] != "approximate":
            assert time.monotonic() < deadline, "never fell back to approximate"
            time.sleep(0.1)
        # From now on routing decisions predict the cache: the next request's blocks are
        # recorded, and the one after it is credited with the shared prefix.
        first = completion(router.url, SHARED_PREFIX + " silent again")
        assert int(first.headers["x-bisllm-overlap-blocks"]) == 0
        second = completion(router.url, SHARED_PREFIX + " and once more")
        assert int(second.headers["x-bisllm-overlap-blocks"]) >= 10
    finally:
        router.stop()


def test_router_health_reflects_workers(tiny_model, log_dir):
    worker = start_mocker(tiny_model, log_dir, "lonely")
    router = start_router(tiny_model, log_dir, [worker.url], name="router-health")
    try:
        worker.kill()
        deadline = time.monotonic() + 10
        while httpx.get(router.url + "/health").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        r = completion(router.url, "anyone there?")
        assert r.status_code == 503 and "error" in r.json()
        # Back up on the same port: re-added by the health checks.
        port = int(worker.url.rsplit(":", 1)[1])
        revived = start_mocker(tiny_model, log_dir, "lonely2", port=port)
        try:
            wait_http(router.url + "/health", 15)
            assert completion(router.url, "back again").status_code == 200
        finally:
            revived.stop()
    finally:
        router.stop()
        worker.stop()
