"""A worker killed under load loses no request that had not started streaming."""

from __future__ import annotations

import asyncio
import json

import httpx
from router_harness import start_mocker, start_router


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
