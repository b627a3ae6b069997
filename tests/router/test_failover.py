"""A worker killed under load loses no request that had not started streaming."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
from process_harness import start_mocker, start_router


async def test_worker_killed_under_load(tiny_model, log_dir):
    # Real-time mockers (speedup 1): requests stay in flight long enough to be cut.
    workers = [start_mocker(tiny_model, log_dir, f"slow{i}", "--speedup", "1") for i in range(3)]
    router = start_router(
        tiny_model, log_dir, [w.url for w in workers], "--max-retries", "3", name="router-kill"
    )
    try:
        victim = workers[0]
        results: list[tuple[str, int, str]] = []

        async def non_streaming(client: httpx.AsyncClient, i: int) -> None:
            body = {"model": "tiny", "prompt": f"request {i} " * 20, "max_tokens": 60}
            r = await client.post(router.url + "/v1/completions", json=body)
            results.append(("plain", r.status_code, r.headers.get("x-bisllm-worker", "")))
            if r.status_code == 200:
                assert r.json()["usage"]["completion_tokens"] == 60

        streamed: list[tuple[bool, bool]] = []  # (completed, ended with an error event)

        async def streaming(client: httpx.AsyncClient, i: int) -> None:
            body = {
                "model": "tiny",
                "prompt": f"stream {i} " * 20,
                "max_tokens": 60,
                "stream": True,
            }
            async with client.stream("POST", router.url + "/v1/completions", json=body) as r:
                assert r.status_code == 200
                events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
            errored = any("error" in json.loads(e[6:]) for e in events if e != "data: [DONE]")
            streamed.append((events[-1] == "data: [DONE]", errored))

        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [asyncio.create_task(non_streaming(client, i)) for i in range(24)]
            tasks += [asyncio.create_task(streaming(client, i)) for i in range(6)]
            await asyncio.sleep(0.4)  # requests are now queued and decoding on every worker
            victim.kill()
            await asyncio.wait_for(asyncio.gather(*tasks), 90)

            # Every non-streaming request was answered, some after a re-route.
            assert len(results) == 24
            assert all(status == 200 for _, status, _ in results), results
            assert all(worker != victim.url for _, _, worker in results)
            # Streams that had started on the victim end with an error event, then [DONE].
            assert all(done for done, _ in streamed)
            # Afterwards the victim is out of routing and everything lands elsewhere.
            for i in range(6):
                r = await client.post(
                    router.url + "/v1/completions",
                    json={"model": "tiny", "prompt": f"after {i}", "max_tokens": 2},
                )
                assert r.status_code == 200 and r.headers["x-bisllm-worker"] != victim.url
        metrics = httpx.get(router.url + "/metrics").text
        assert "upstream_retries_total" in metrics
    finally:
        router.stop()
        for w in workers:
            w.stop()


async def test_client_disconnect_aborts_the_upstream_request(tiny_model, log_dir):
    worker = start_mocker(tiny_model, log_dir, "abortable", "--speedup", "1")
    router = start_router(tiny_model, log_dir, [worker.url], name="router-abort")

    def engine_running() -> int:
        return httpx.get(worker.url + "/bisllm/mocker/stats").json()["num_running"]

    def booked_tokens() -> int:
        workers = httpx.get(router.url + "/admin/workers").json()["workers"]
        return sum(rank["in_flight_tokens"] for w in workers for rank in w["load"])

    async def wait_until(predicate, what: str) -> None:
        for _ in range(100):
            if predicate():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(what)

    try:
        async with httpx.AsyncClient(timeout=30) as client:
            # Streaming: read the first event, then hang up.
            body = {"model": "tiny", "prompt": "a long story", "max_tokens": 2000, "stream": True}
            async with client.stream("POST", router.url + "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        break
                assert engine_running() == 1 and booked_tokens() > 0
            await wait_until(lambda: engine_running() == 0, "stream not aborted in the engine")
            await wait_until(lambda: booked_tokens() == 0, "stream load not freed")

            # Non-streaming: give up while the worker is still generating.
            body = {"model": "tiny", "prompt": "another long story", "max_tokens": 2000}
            task = asyncio.create_task(client.post(router.url + "/v1/completions", json=body))
            await wait_until(lambda: engine_running() == 1, "request never started")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await wait_until(lambda: engine_running() == 0, "request not aborted in the engine")
            await wait_until(lambda: booked_tokens() == 0, "request load not freed")
    finally:
        router.stop()
        worker.stop()
