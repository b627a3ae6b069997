"""Fit a `TimingProfile` to a running OpenAI-compatible server (vLLM, or anything else).

    python -m bisllm_workers.mocker.calibrate http://127.0.0.1:8000 --model NAME --name my-gpu

Measures, with token-id prompts that never hit the prefix cache (random ids, fresh each time):
- time to first token of single requests with prompts of several lengths (one prefill step);
- inter-token latency of B concurrent streams at two context lengths (decode steps).
Then solves, by least squares,

    TTFT(L)      ≈ step_overhead + prefill_token x L + ttft_extra
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
) -> list[tuple[float, int]]:
    """(arrival time, tokens in the chunk) of each content chunk, (t0, 0) first. Asks for
    `return_token_ids` (vLLM) to count tokens of merged chunks; a chunk without ids counts 1."""
    body: dict = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0,
        "return_token_ids": True,
    }
    if model:
        body["model"] = model
    times = [(time.perf_counter(), 0)]
    async with session.post(url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                now = time.perf_counter()
                choices = json.loads(line[6:]).get("choices") or [{}]
                ids = choices[0].get("token_ids")
                times.append((now, len(ids) if ids else 1))
    return times


def _decode_time_per_token(runs: list[list[tuple[float, int]]]) -> float:
    """Per-token decode time once *every* stream has its first token (no prefill left in the
    batch): median over streams of span / tokens after that moment."""
    t_all = max(r[1][0] for r in runs)
    rates = []
    for r in runs:
        after = [(t, n) for t, n in r[1:] if t > t_all]
        if len(after) >= 2:
            rates.append((after[-1][0] - after[0][0]) / sum(n for _, n in after[1:]))
    if not rates:
        raise RuntimeError("streams too short to measure decode; raise --decode-tokens")
    return statistics.median(rates)


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
                samples.append(t[1][0] - t[0][0])
            points.append(Point("ttft", n, 1, 0.0, min(samples)))
        for ctx in contexts:
            for b in batches:
                per_rep = []
                for _ in range(repeats):
                    runs = await asyncio.gather(
                        *(_stream(s, url, model, prompt(ctx), decode_tokens) for _ in range(b))
                    )
                    per_rep.append(_decode_time_per_token(list(runs)))
                points.append(Point("itl", ctx, b, ctx + decode_tokens / 2, min(per_rep)))
    return points


def fit(points: list[Point]) -> tuple[float, float, float, float, float]:
    """Least squares for (step_overhead, prefill_token, decode_seq, decode_ctx_token,
    ttft_extra) >= 0. `ttft_extra` absorbs what only TTFT pays (HTTP round trip, tokenization,
    scheduling latency), so the step overhead comes from the decode measurements."""
    rows, ys = [], []
    for p in points:
        if p.kind == "ttft":
            rows.append([1.0, p.prompt_len, 0.0, 0.0, 1.0])
        else:
            rows.append([1.0, 0.0, p.batch, p.batch * p.context, 0.0])
        ys.append(p.seconds)
    a, y = np.array(rows), np.array(ys)
    # Scale columns so the solver is well conditioned, then clip (all costs are >= 0).
    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
    coef, *_ = np.linalg.lstsq(a / scale, y, rcond=None)
    c = np.maximum(coef / scale, 0.0)
    return float(c[0]), float(c[1]), float(c[2]), float(c[3]), float(c[4])


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
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
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
    overhead, prefill, seq, ctx, extra = fit(points)
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
    print(f"# TTFT-only overhead (HTTP, tokenization, queueing): {extra * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
