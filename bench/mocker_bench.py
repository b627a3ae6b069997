"""How many simulated workers one mocker process sustains, and at what request rate.

Starts `bisllm-mocker` as a separate process (N workers, KV events on), subscribes to every
worker's KV-event PUB socket, then drives an open-loop Poisson load at a target rate with a
bounded number of requests and a bounded duration: streaming completions (stream_options.
include_usage) to uniformly random workers, prompts sharing one of a few long prefixes so the
prefix cache and the event stream are exercised. Reports achieved rate, errors, TTFT and
end-to-end latency percentiles, KV-event batches received, the mocker's CPU use and how far its
engines fell behind simulated time.

    .venv/bin/python bench/mocker_bench.py --workers 256 --rate 200 --duration 30 --speedup 10

Both processes share the machine: the load generator's own CPU is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import zmq
import zmq.asyncio

_TEXT = (
    "the model router sends each request to a worker whose cache holds the longest prefix of "
    "its prompt while keeping load balanced across the fleet so that time to first token stays "
    "low and throughput stays high under bursty traffic from many users"
)
WORDS = _TEXT.split()


@dataclass
class Result:
    ok: int = 0
    errors: int = 0
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    tokens: int = 0
    cached_tokens: int = 0
    prompt_tokens: int = 0
    error_samples: list[str] = field(default_factory=list)


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_prompts(n_prefixes: int, prefix_words: int, rng: random.Random) -> list[str]:
    return [
        f"System prompt {i}: " + " ".join(rng.choice(WORDS) for _ in range(prefix_words))
        for i in range(n_prefixes)
    ]


async def one_request(
    session: aiohttp.ClientSession, url: str, body: dict, res: Result, timeout: float
) -> None:
    t0 = time.perf_counter()
    first = None
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, json=body) as r:
                if r.status != 200:
                    res.errors += 1
                    if len(res.error_samples) < 5:
                        res.error_samples.append(f"{r.status} {(await r.text())[:200]}")
                    return
                n = 0
                usage = None
                async for line in r.content:
                    if not line.startswith(b"data: "):
                        continue
                    if first is None:
                        first = time.perf_counter()
                    payload = line[6:].strip()
                    if payload == b"[DONE]":
                        break
                    chunk = json.loads(payload)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    elif chunk["choices"]:
                        n += 1
        if usage is None or n != body["max_tokens"]:
            res.errors += 1
            if len(res.error_samples) < 5:
                res.error_samples.append(f"bad stream: {n} chunks, usage={usage}")
            return
        res.ok += 1
        res.tokens += n
        res.prompt_tokens += usage["prompt_tokens"]
        res.cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]
        res.ttft.append((first or t0) - t0)
        res.e2e.append(time.perf_counter() - t0)
    except (TimeoutError, aiohttp.ClientError) as exc:
        res.errors += 1
        if len(res.error_samples) < 5:
            res.error_samples.append(repr(exc))


async def fetch_stats(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url + "/bisllm/mocker/stats") as r:
        return await r.json()


async def count_events(sock: zmq.asyncio.Socket, counter: list[int]) -> None:
    while True:
        await sock.recv_multipart()
        counter[0] += 1


async def drive(args: argparse.Namespace, workers: list[dict]) -> dict:
    rng = random.Random(args.seed)
    prefixes = make_prompts(args.prefixes, args.prefix_words, rng)
    urls = [w["url"] + "/v1/completions" for w in workers]
    ctx = zmq.asyncio.Context()
    ctx.set(zmq.MAX_SOCKETS, 4096)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 1_000_000)
    for w in workers:
        sub.connect(w["kv_events_endpoint"])
    events = [0]
    ev_task = asyncio.create_task(count_events(sub, events))
    await asyncio.sleep(0.5)
    res = Result()
    conn = aiohttp.TCPConnector(limit=args.max_in_flight, limit_per_host=0, force_close=False)
    total = int(args.rate * args.duration)
    sem = asyncio.Semaphore(args.max_in_flight)
    tasks: set[asyncio.Task] = set()
    dropped = 0
    async with aiohttp.ClientSession(connector=conn) as session:
        t_start = time.perf_counter()
        next_t = t_start
        for _ in range(total):
            next_t += rng.expovariate(args.rate)
            delay = next_t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() - t_start > args.duration * 1.5:
                break  # the generator itself fell behind: stop offering load
            if sem.locked():
                dropped += 1  # bounded in-flight: count as not sent
                continue
            prompt = (
                rng.choice(prefixes)
                + " "
                + " ".join(rng.choice(WORDS) for _ in range(rng.randint(*args.suffix_words)))
            )
            body = {
                "prompt": prompt,
                "max_tokens": rng.randint(*args.output_tokens),
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": True,
            }
            await sem.acquire()
            t = asyncio.create_task(one_request(session, rng.choice(urls), body, res, args.timeout))
            t.add_done_callback(lambda _t: sem.release())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        offered_s = time.perf_counter() - t_start
        if tasks:
            await asyncio.wait(tasks, timeout=args.timeout + 5)
        wall = time.perf_counter() - t_start
        stats = await asyncio.gather(*(fetch_stats(session, w["url"]) for w in workers))
    await asyncio.sleep(0.3)
    ev_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ev_task
    sub.close(linger=0)
    ctx.term()
    return {
        "requested": total,
        "dropped_at_in_flight_limit": dropped,
        "ok": res.ok,
        "errors": res.errors,
        "error_samples": res.error_samples,
        "offered_s": offered_s,
        "wall_s": wall,
        "achieved_rps": res.ok / wall,
        "output_tok_s": res.tokens / wall,
        "ttft_p50_ms": 1e3 * pct(res.ttft, 50),
        "ttft_p90_ms": 1e3 * pct(res.ttft, 90),
        "ttft_p99_ms": 1e3 * pct(res.ttft, 99),
        "e2e_p50_ms": 1e3 * pct(res.e2e, 50),
        "e2e_p99_ms": 1e3 * pct(res.e2e, 99),
        "cache_hit_rate": res.cached_tokens / max(res.prompt_tokens, 1),
        "kv_event_batches": events[0],
        "engine_lag_s_total": sum(x["lag_s"] for x in stats),
        "engine_lag_s_max": max(x["lag_s"] for x in stats),
        "engine_busy_steps": sum(x["busy_steps"] for x in stats),
        "engine_preemptions": sum(x["num_preemptions"] for x in stats),
    }


def start_mocker(args: argparse.Namespace) -> tuple[subprocess.Popen, list[dict], list[str]]:
    cmd = [
        *(["taskset", "-c", args.mocker_cpus] if args.mocker_cpus else []),
        sys.executable, "-m", "bisllm_workers.mocker.cli",
        "--workers", str(args.workers), "--base-port", "0",
        "--profile", args.profile, "--speedup", str(args.speedup),
        "--min-step-ms", str(args.min_step_ms), "--json",
    ]  # fmt: skip
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    workers = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"mocker exited: {proc.wait()}")
        if line.startswith("ready"):
            break
        workers.append(json.loads(line))
    return proc, workers, cmd


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", type=int, default=256)
    p.add_argument("--rate", type=float, default=200.0, help="offered requests/s (Poisson)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of offered load")
    p.add_argument("--speedup", type=float, default=10.0)
    p.add_argument("--profile", default="h100-llama3-8b")
    p.add_argument("--mocker-cpus", default=None, help="pin the mocker with taskset -c CPUS")
    p.add_argument("--min-step-ms", type=float, default=0.0, help="mocker step quantum (wall ms)")
    p.add_argument("--model", default=None, help="model dir for the tokenizer (default: embedded)")
    p.add_argument("--prefixes", type=int, default=16, help="distinct shared prompt prefixes")
    p.add_argument("--prefix-words", type=int, default=400)
    p.add_argument("--suffix-words", type=int, nargs=2, default=(20, 200))
    p.add_argument("--output-tokens", type=int, nargs=2, default=(16, 64))
    p.add_argument("--max-in-flight", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None, help="also write the result JSON here")
    p.add_argument(
        "--attach",
        default=None,
        help="drive an already running mocker: a file of its `--json` worker lines (for profiling)",
    )
    args = p.parse_args()

    if args.attach:
        workers = [
            json.loads(ln)
            for ln in Path(args.attach).read_text().splitlines()
            if ln.startswith("{")
        ]
        out = asyncio.run(drive(args, workers))
        print(json.dumps(out, indent=1))
        return 0
    t0 = time.perf_counter()
    proc, workers, _cmd = start_mocker(args)
    startup = time.perf_counter() - t0
    try:
        cpu0, me0 = cpu_seconds(proc.pid), time.process_time()
        try:
            import uvloop

            out = uvloop.run(drive(args, workers))
        except ImportError:
            out = asyncio.run(drive(args, workers))
        out["mocker_cpu_s"] = cpu_seconds(proc.pid) - cpu0
        out["loadgen_cpu_s"] = time.process_time() - me0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    out.update(
        workers=len(workers),
        speedup=args.speedup,
        min_step_ms=args.min_step_ms,
        mocker_cpus=args.mocker_cpus,
        profile=args.profile,
        rate=args.rate,
        duration=args.duration,
        mocker_startup_s=startup,
        mocker_cpu_util=out["mocker_cpu_s"] / out["wall_s"],
        loadgen_cpu_util=out["loadgen_cpu_s"] / out["wall_s"],
        command=" ".join(sys.argv),
    )
    print(json.dumps(out, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")
    return 0 if out["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
