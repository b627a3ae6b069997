"""Fit a `TimingProfile` to a running OpenAI-compatible server (vLLM, or anything else).

    python -m bisllm_workers.mocker.calibrate http://127.0.0.1:8000 --model NAME --name my-gpu

Measures, with token-id prompts that never hit the prefix cache (random ids, fresh each time):
- time to first token of single requests with prompts of several lengths (one prefill step);
- inter-token latency of B concurrent streams at two context lengths (decode steps).
Then solves, by least squares,

    TTFT(L)      ≈ step_overhead + prefill_token x L
    ITL(B, ctx)  ≈ step_overhead + decode_seq x B + decode_ctx_token x B x ctx

and prints the fitted `TimingProfile(...)` to paste into timing.py, with the raw points. TTFT
includes one HTTP round trip, which the overhead term absorbs; the fit is only as good as the
machine is quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass

import aiohttp
import numpy as np

__all__ = ["Point", "fit", "main"]


@dataclass(slots=True)
class Point:
    kind: str  # "ttft" or "itl"
    prompt_len: int
    batch: int
    context: float  # mean context of the decoding sequences (itl only)
    seconds: float


async def _stream(
    session: aiohttp.ClientSession, url: str, model: str | None, prompt: list[int], max_tokens: int
) -> list[float]:
    """Arrival times (perf_counter) of each content chunk, t0 first."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0,
    }
    if model:
        body["model"] = model
    times = [time.perf_counter()]
    async with session.post(url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                times.append(time.perf_counter())
    return times


async def measure(
    url: str,
    model: str | None,
    vocab: int,
    prompt_lens: list[int],
    batches: list[int],
    contexts: list[int],
    repeats: int,
    decode_tokens: int,
    seed: int,
) -> list[Point]:
    rng = random.Random(seed)

    def prompt(n: int) -> list[int]:
        return [rng.randrange(10, vocab) for _ in range(n)]

    points: list[Point] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        await _stream(s, url, model, prompt(8), 2)  # warm-up
        # Minimum over repeats: on a shared machine, noise only ever adds time.
        for n in prompt_lens:
            samples = []
            for _ in range(repeats):
                t = await _stream(s, url, model, prompt(n), 1)
                samples.append(t[1] - t[0])
            points.append(Point("ttft", n, 1, 0.0, min(samples)))
        for ctx in contexts:
            for b in batches:
                per_rep = []
                for _ in range(repeats):
                    runs = await asyncio.gather(
                        *(_stream(s, url, model, prompt(ctx), decode_tokens) for _ in range(b))
                    )
                    # Decode time per token of each stream, first chunk to last: robust to a
                    # server merging several tokens into one chunk when the client lags.
                    per_rep.append(
                        statistics.median((t[-1] - t[1]) / (decode_tokens - 1) for t in runs)
                    )
                points.append(Point("itl", ctx, b, ctx + decode_tokens / 2, min(per_rep)))
    return points


def fit(points: list[Point]) -> tuple[float, float, float, float]:
    """Least squares for (step_overhead, prefill_token, decode_seq, decode_ctx_token) >= 0."""
    rows, ys = [], []
    for p in points:
        if p.kind == "ttft":
            rows.append([1.0, p.prompt_len, 0.0, 0.0])
        else:
            rows.append([1.0, 0.0, p.batch, p.batch * p.context])
        ys.append(p.seconds)
    a, y = np.array(rows), np.array(ys)
    # Scale columns so the solver is well conditioned, then clip (all costs are >= 0).
    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
    coef, *_ = np.linalg.lstsq(a / scale, y, rcond=None)
    c = np.maximum(coef / scale, 0.0)
    return float(c[0]), float(c[1]), float(c[2]), float(c[3])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="model name to send (default: none)")
    p.add_argument("--name", default="calibrated", help="profile name to print")
    p.add_argument("--vocab", type=int, default=2000, help="draw prompt ids from [10, VOCAB)")
    p.add_argument("--prompt-lens", type=int, nargs="+", default=[16, 256, 512, 1024, 2048])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--contexts", type=int, nargs="+", default=[32, 1024])
    p.add_argument("--decode-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    points = asyncio.run(
        measure(
            args.url.rstrip("/"),
            args.model,
            args.vocab,
            args.prompt_lens,
            args.batches,
            args.contexts,
            args.repeats,
            args.decode_tokens,
            args.seed,
        )
    )
    overhead, prefill, seq, ctx = fit(points)
    for pt in points:
        print(
            json.dumps(
                {
                    "kind": pt.kind,
                    "prompt_len": pt.prompt_len,
                    "batch": pt.batch,
                    "ms": round(pt.seconds * 1e3, 3),
                }
            )
        )
    print(
        f"TimingProfile(name={args.name!r}, step_overhead_s={overhead:.3g}, "
        f"prefill_token_s={prefill:.3g}, decode_seq_s={seq:.3g}, decode_ctx_token_s={ctx:.3g}, ...)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
