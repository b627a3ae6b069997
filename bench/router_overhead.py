"""Router overhead: latency the router adds over going straight to a worker.

Run with: .venv/bin/python bench/router_overhead.py [--rates 50,100,200,400] [--duration 10]

Starts one mocker process with several workers and one router in front of them
(all on 127.0.0.1), then measures, for the same open-loop streaming load sent
(a) directly to the workers (round robin) and (b) through the router:

- time to first token (first SSE event) and end-to-end latency, p50/p99;
- added latency = router percentile - direct percentile, per rate;
- streamed first-token latency on a single kept-alive connection, sequential
  requests (this is where Nagle + delayed ACK would add ~40 ms per token);
- the highest offered rate at which the added p99 stays under 5 ms.

The client, the router and the mocker share this machine's cores, so the figures
include their contention; the JSON written under bench/results/ records the host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class Sample:
    ttft: float
    e2e: float
    ok: bool


async def one_request(
    session: aiohttp.ClientSession, url: str, prompt: list[int], max_tokens: int
) -> Sample:
    body = {
        "model": "tiny",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = float("nan")
    try:
        async with session.post(url + "/v1/completions", json=body) as resp:
            if resp.status != 200:
                await resp.read()
                return Sample(float("nan"), float("nan"), False)
            async for _chunk in resp.content.iter_any():
                if ttft != ttft:  # first bytes of the first event
                    ttft = time.perf_counter() - start
        return Sample(ttft, time.perf_counter() - start, True)
    except (aiohttp.ClientError, OSError):
        return Sample(float("nan"), float("nan"), False)


async def open_loop(
    urls: list[str], rate: float, duration: float, prompt_len: int, max_tokens: int, seed: int
) -> list[Sample]:
    """Poisson arrivals at ``rate`` for ``duration`` seconds (bounded), round robin over urls."""
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm the keep-alive pool.
        await asyncio.gather(*(one_request(session, u, [1, 2, 3], 1) for u in urls * 4))
        tasks: list[asyncio.Task[Sample]] = []
        start = time.perf_counter()
        next_at = 0.0
        i = 0
        max_requests = int(rate * duration * 1.5) + 10
        while next_at < duration and i < max_requests:
            delay = start + next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            prompt = [rng.randrange(10, 1000) for _ in range(prompt_len)]
            tasks.append(
                asyncio.create_task(one_request(session, urls[i % len(urls)], prompt, max_tokens))
            )
            i += 1
            next_at += rng.expovariate(rate)
        return list(await asyncio.gather(*tasks))


async def sequential_ttft(url: str, count: int, max_tokens: int) -> list[float]:
    """First-token latency of back-to-back streams on ONE kept-alive connection."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        out = []
        for i in range(count):
            sample = await one_request(session, url, [5 + i % 50, 6, 7, 8] * 8, max_tokens)
            if sample.ok:
                out.append(sample.ttft)
        return out


def summarize(samples: list[Sample]) -> dict[str, float]:
    ok = [s for s in samples if s.ok]
    return {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "ttft_p50_ms": percentile([s.ttft for s in ok], 50) * 1e3,
        "ttft_p99_ms": percentile([s.ttft for s in ok], 99) * 1e3,
        "e2e_p50_ms": percentile([s.e2e for s in ok], 50) * 1e3,
        "e2e_p99_ms": percentile([s.e2e for s in ok], 99) * 1e3,
    }


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=str(REPO / ".cache" / "tiny-llama"))
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rates", default="50,100,200,400")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--speedup", type=float, default=100.0)
    p.add_argument("--profile", default="h100-llama3-8b")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "router_overhead.json"))
    args = p.parse_args()

    router_port = free_port()
    logs = REPO / "bench" / "results" / "tmp"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def spawn(cmd: list[str], name: str) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        # Ephemeral ports, read back from the mocker's --json lines (no port races).
        mocker = subprocess.Popen(
            [
                str(BIN / "bisllm-mocker"), "--workers", str(args.workers), "--base-port", "0",
                "--json", "--model", args.model, "--served-model-name", "tiny",
                "--profile", args.profile, "--speedup", str(args.speedup),
            ],
            stdout=subprocess.PIPE, stderr=open(logs / "mocker.log", "wb"),  # noqa: SIM115
            start_new_session=True,
        )  # fmt: skip
        procs.append(mocker)
        assert mocker.stdout is not None
        worker_urls = [json.loads(mocker.stdout.readline())["url"] for _ in range(args.workers)]
        for url in worker_urls:
            wait_ready(url + "/health", mocker)
        router = spawn(
            [
                str(BIN / "bisllm-router"),
                "--model",
                args.model,
                "--port",
                str(router_port),
                "--workers",
                ",".join(worker_urls),
                "--log-level",
                "warning",
            ],
            "router",
        )
        router_url = f"http://127.0.0.1:{router_port}"
        wait_ready(router_url + "/health", router)

        results: dict[str, object] = {
            "host": {
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "python": platform.python_version(),
            },
            "args": vars(args),
        }
        seq_direct = asyncio.run(sequential_ttft(worker_urls[0], 200, args.max_tokens))
        seq_router = asyncio.run(sequential_ttft(router_url, 200, args.max_tokens))
        results["keepalive_sequential_ttft_ms"] = {
            "direct_p50": percentile(seq_direct, 50) * 1e3,
            "direct_p99": percentile(seq_direct, 99) * 1e3,
            "router_p50": percentile(seq_router, 50) * 1e3,
            "router_p99": percentile(seq_router, 99) * 1e3,
            "added_p50": (percentile(seq_router, 50) - percentile(seq_direct, 50)) * 1e3,
        }
        rows = []
        router_ps = psutil.Process(router.pid)
        for rate in [float(r) for r in args.rates.split(",")]:
            load = (args.duration, args.prompt_len, args.max_tokens)
            direct = summarize(asyncio.run(open_loop(worker_urls, rate, *load, seed=1)))
            cpu0 = router_ps.cpu_times()
            routed_samples = asyncio.run(open_loop([router_url], rate, *load, seed=1))
            cpu1 = router_ps.cpu_times()
            routed = summarize(routed_samples)
            # Router CPU per request: robust to other load on the machine, unlike latency.
            cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            routed["router_cpu_us_per_request"] = cpu_s / max(1, len(routed_samples)) * 1e6
            row = {
                "rate": rate,
                "direct": direct,
                "router": routed,
                "added_ttft_p50_ms": routed["ttft_p50_ms"] - direct["ttft_p50_ms"],
                "added_ttft_p99_ms": routed["ttft_p99_ms"] - direct["ttft_p99_ms"],
                "added_e2e_p50_ms": routed["e2e_p50_ms"] - direct["e2e_p50_ms"],
                "added_e2e_p99_ms": routed["e2e_p99_ms"] - direct["e2e_p99_ms"],
            }
            rows.append(row)
            print(
                f"rate {rate:6.0f}/s  added TTFT p50 {row['added_ttft_p50_ms']:6.2f} ms "
                f"p99 {row['added_ttft_p99_ms']:6.2f} ms | added e2e p50 "
                f"{row['added_e2e_p50_ms']:6.2f} ms p99 {row['added_e2e_p99_ms']:6.2f} ms | "
                f"errors direct {direct['errors']} router {routed['errors']} | router CPU "
                f"{routed['router_cpu_us_per_request']:.0f} us/request",
                flush=True,
            )
        results["rates"] = rows
        under = [
            r["rate"] for r in rows if r["added_e2e_p99_ms"] < 5.0 and r["router"]["errors"] == 0
        ]
        results["max_rate_added_p99_under_5ms"] = max(under) if under else None
        seq = results["keepalive_sequential_ttft_ms"]
        print(f"keep-alive sequential TTFT: {json.dumps(seq)}")
        print(f"highest rate with added p99 < 5 ms: {results['max_rate_added_p99_under_5ms']}")
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
