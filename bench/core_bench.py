"""Python-side bench of `bisllm._core`: what the router pays per call through the bindings.

Run with: .venv/bin/python bench/core_bench.py   (or `make bench-python`)

1. `Core.route()` with an `array('I')` of 16K tokens against 64 workers (target ≤ 60 µs),
   the same with a list of ints (the slow, per-integer path), and `hash_blocks` alone.
2. `Core.apply_events()` on raw payloads encoded exactly like vLLM's (msgspec structs,
   array batch with tagged-map events): stored and removed blocks per second.

The index is filled through apply_events with a realistic shape (shared prefixes + per-
conversation tails, see router-core/benches/common); fixed seeds throughout.
"""

from __future__ import annotations

import argparse
import statistics
import time
from array import array
from typing import Any

import msgspec
import numpy as np

from bisllm._core import Core, hash_blocks

BLOCK = 16
VOCAB = 151_936


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: str | None


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


ENC = msgspec.msgpack.Encoder()


def stored_payload(hashes: list[int], parent: int | None, tokens: list[int]) -> bytes:
    events: list[Any] = []
    for i in range(0, len(hashes), 16):  # one event per 256-token prefill chunk
        chunk = hashes[i : i + 16]
        events.append(
            BlockStored(
                block_hashes=chunk,
                parent_block_hash=parent if i == 0 else hashes[i - 1],
                token_ids=tokens[i * BLOCK : (i + len(chunk)) * BLOCK],
                block_size=BLOCK,
                lora_id=None,
                medium="GPU",
                lora_name=None,
            )
        )
    return ENC.encode(KVEventBatch(ts=time.time(), events=events, data_parallel_rank=0))


def removed_payload(hashes: list[int]) -> bytes:
    events = [BlockRemoved(block_hashes=[h], medium="GPU") for h in reversed(hashes)]
    return ENC.encode(KVEventBatch(ts=time.time(), events=events, data_parallel_rank=0))


def fill(core: Core, rng: np.random.Generator, workers: int, convs: int) -> list[list[int]]:
    """Each worker caches `convs` conversations: a shared prefix + its own tail."""
    prefixes = [rng.integers(0, VOCAB, rng.integers(64, 513) * BLOCK).tolist() for _ in range(32)]
    prompts = []
    next_hash = 1
    for w in range(workers):
        core.add_worker(w)
        for _ in range(convs):
            p = prefixes[int(len(prefixes) * rng.random() ** 3)]  # popular prefixes
            toks = p + rng.integers(0, VOCAB, rng.integers(32, 385) * BLOCK).tolist()
            n = len(toks) // BLOCK
            hashes = list(range(next_hash, next_hash + n))
            next_hash += n
            core.apply_events(w, stored_payload(hashes, None, toks))
            prompts.append(toks)
    return prompts


def timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=5000)
    args = ap.parse_args()
    rng = np.random.default_rng(0x5EED)

    core = Core(BLOCK, seed=1)
    t0 = time.perf_counter()
    prompts = fill(core, rng, workers=64, convs=8)
    fill_s = time.perf_counter() - t0

    rows: list[tuple[str, float, float, str]] = []
    reqs = []
    for i in range(64):
        toks = (prompts[(i * 37) % len(prompts)] + rng.integers(0, VOCAB, 16_384).tolist())[:16_384]
        reqs.append((array("I", toks), toks))
    counter = iter(range(10**9))

    def route(buf: Any) -> None:
        rid = str(next(counter))
        core.route(rid, buf)
        core.on_finish(rid)

    n = args.iterations
    for name, pick, target in (
        ("route(), array('I') 16K tokens, 64 workers", 0, "≤ 60 µs"),
        ("route(), list[int] 16K tokens, 64 workers", 1, "-"),
    ):
        timed(lambda p=pick: route(reqs[0][p]), 200)  # warm-up
        it = iter(range(10**9))
        lat = timed(lambda p=pick, it=it: route(reqs[next(it) % 64][p]), n)
        rows.append((name, statistics.median(lat), np.percentile(lat, 99), target))
    lat = timed(lambda: hash_blocks(reqs[0][0], BLOCK), n)
    rows.append(
        (
            "hash_blocks(), array('I') 16K tokens",
            statistics.median(lat),
            np.percentile(lat, 99),
            "-",
        )
    )

    # Ingest: store 1,024 fresh blocks, then remove them (vLLM: one hash per BlockRemoved).
    toks = rng.integers(0, VOCAB, 1024 * BLOCK).tolist()
    hashes = list(range(10**12, 10**12 + 1024))
    stored, removed = stored_payload(hashes, None, toks), removed_payload(hashes)
    timed(lambda: (core.apply_events(0, stored), core.apply_events(0, removed)), 50)
    lat = timed(lambda: (core.apply_events(0, stored), core.apply_events(0, removed)), 500)
    med = statistics.median(lat)
    rows.append(
        (
            f"apply_events() store+remove 1,024 blocks ({2048 / med:.1f}M blocks/s)",
            med,
            np.percentile(lat, 99),
            "≥ 10M blocks/s in Rust",
        )
    )

    print(
        f"index: {core.index_size():,} (block, worker) entries over 64 workers, filled in {fill_s:.1f} s"
    )
    print("| what | p50 µs | p99 µs | target |")
    print("|---|---|---|---|")
    for name, p50, p99, target in rows:
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {target} |")


if __name__ == "__main__":
    main()
