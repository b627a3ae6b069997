"""Workloads: Mooncake-format traces, their scaling, and hash-id → token expansion.

A workload is a list of :class:`TraceRequest` in *trace units*: arrival times in
seconds, lengths in tokens, and ``hash_ids`` naming the prompt's blocks of
``TRACE_BLOCK_TOKENS`` (512) tokens. Two requests with the same id at the same
position share that block and every block before it. Synthetic generators
(:mod:`bench.replay.synthetic`) produce the same shape, so every workload goes
through one scaling and one expansion path.

To run on a 2-core machine, :func:`scale` divides token counts (a 512-token block
becomes ``512 / length_scale`` tokens) and compresses time (``rate_multiplier``);
:class:`BlockExpander` then turns each id into a fixed pseudo-random run of token
ids seeded by the id, so the prompts sent share exactly the prefixes the trace
says they share — no more (ids never collide by accident) and no less.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

#: Tokens per hash id in the Mooncake trace format.
TRACE_BLOCK_TOKENS = 512
#: Token ids below this are left out of expanded prompts: they are the special tokens
#: of Llama-style vocabularies (BOS, EOS, headers, pad), which an engine may treat
#: specially.
DEFAULT_MIN_TOKEN_ID = 16


@dataclass(slots=True, frozen=True)
class TraceRequest:
    """One request of a workload, in trace units (before or after :func:`scale`)."""

    arrival_s: float  # seconds from the start of the workload
    input_length: int  # prompt tokens
    output_length: int  # tokens to generate (sent as max_tokens, EOS ignored)
    hash_ids: tuple[int, ...]  # prompt blocks; block i covers tokens [i*B, (i+1)*B)


@dataclass(slots=True, frozen=True)
class Workload:
    """Requests plus the block size their ``hash_ids`` refer to."""

    requests: list[TraceRequest]
    block_tokens: int  # tokens per hash id
    name: str = "workload"

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s if self.requests else 0.0

    @property
    def mean_rate(self) -> float:
        """Mean arrival rate (req/s) over the workload's span."""
        span = self.duration_s
        return len(self.requests) / span if span > 0 else math.inf


class TraceFormatError(ValueError):
    """A trace line is not a valid Mooncake request."""


def parse_trace_line(line: str, lineno: int = 0) -> TraceRequest:
    """Parse one Mooncake JSON line (``timestamp`` ms, lengths, ``hash_ids``)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"line {lineno}: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise TraceFormatError(f"line {lineno}: expected an object")
    try:
        ts = float(obj["timestamp"])
        inp = int(obj["input_length"])
        out = int(obj["output_length"])
        ids = obj["hash_ids"]
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceFormatError(f"line {lineno}: missing or bad field: {exc}") from None
    if not isinstance(ids, list) or not all(isinstance(h, int) for h in ids):
        raise TraceFormatError(f"line {lineno}: hash_ids must be a list of ints")
    if inp < 1 or out < 0 or ts < 0:
        raise TraceFormatError(f"line {lineno}: negative or empty lengths/timestamp")
    return TraceRequest(ts / 1000.0, inp, out, tuple(ids))


def load_trace(path: str | Path, *, block_tokens: int = TRACE_BLOCK_TOKENS) -> Workload:
    """Load a Mooncake-format JSONL trace, sorted by arrival time.

    Lines are validated: ``hash_ids`` must cover the prompt
    (``len(hash_ids) == ceil(input_length / block_tokens)``), otherwise the prefix
    semantics would be ambiguous.
    """
    requests: list[TraceRequest] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            req = parse_trace_line(line, lineno)
            need = math.ceil(req.input_length / block_tokens)
            if len(req.hash_ids) != need:
                raise TraceFormatError(
                    f"line {lineno}: {len(req.hash_ids)} hash_ids for {req.input_length} "
                    f"tokens (expected {need} blocks of {block_tokens})"
                )
            requests.append(req)
    requests.sort(key=lambda r: r.arrival_s)
    return Workload(requests, block_tokens, name=Path(path).stem)


def select(
    workload: Workload,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    max_requests: int | None = None,
) -> Workload:
    """A window of the workload: arrivals in ``[start_s, start_s + duration_s)``,
    at most ``max_requests``, re-based so the first kept arrival is at 0."""
    out: list[TraceRequest] = []
    for r in workload.requests:
        if r.arrival_s < start_s:
            continue
        if duration_s is not None and r.arrival_s >= start_s + duration_s:
            break
        out.append(r)
        if max_requests is not None and len(out) >= max_requests:
            break
    if out:
        t0 = out[0].arrival_s
        out = [replace(r, arrival_s=r.arrival_s - t0) for r in out]
    return Workload(out, workload.block_tokens, workload.name)


def scale(
    workload: Workload,
    *,
    rate_multiplier: float = 1.0,
    length_scale: int = 1,
    output_scale: float = 1.0,
    max_input_tokens: int | None = None,
    max_output_tokens: int | None = None,
) -> Workload:
    """Compress time and shrink lengths so a trace runs on a small machine.

    ``rate_multiplier`` divides arrival times (2.0 = twice the request rate).
    ``length_scale`` divides prompt lengths *and* the block size, so each hash id
    still covers the same fraction of the prompt and sharing is unchanged; it must
    divide the block size. ``output_scale`` divides output lengths (at least 1 token).
    ``max_input_tokens`` truncates prompts (keeping their prefix, so sharing
    semantics hold); ``max_output_tokens`` caps generation.
    """
    if rate_multiplier <= 0:
        raise ValueError("rate_multiplier must be > 0")
    if length_scale < 1 or workload.block_tokens % length_scale:
        raise ValueError(
            f"length_scale {length_scale} must divide the block size {workload.block_tokens}"
        )
    if output_scale <= 0:
        raise ValueError("output_scale must be > 0")
    block = workload.block_tokens // length_scale
    out: list[TraceRequest] = []
    for r in workload.requests:
        inp = max(1, math.ceil(r.input_length / length_scale))
        if max_input_tokens is not None:
            inp = min(inp, max_input_tokens)
        n_blocks = math.ceil(inp / block)
        gen = max(1, round(r.output_length / output_scale))
        if max_output_tokens is not None:
            gen = min(gen, max_output_tokens)
        out.append(TraceRequest(r.arrival_s / rate_multiplier, inp, gen, r.hash_ids[:n_blocks]))
    return Workload(out, block, workload.name)


def with_rate(workload: Workload, rate: float) -> Workload:
    """Rescale arrival times so the mean arrival rate is ``rate`` req/s."""
    native = workload.mean_rate
    if not math.isfinite(native):
        return workload
    return scale(workload, rate_multiplier=rate / native)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorized SplitMix64 finalizer: a fixed, version-independent bit mixer
    (numpy's Generator streams may change between releases; this never does)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class BlockExpander:
    """Turns hash ids into token ids: same id → same tokens, different ids → different.

    Token ``j`` of block ``h`` is ``min_id + splitmix64(mix(seed, h) + j) % (vocab - min_id)``.
    With ~4K usable ids and 16+ tokens per block, two different ids produce the
    same block with probability < 1e-57, so the only prefixes prompts share are
    the ones the workload says they share. Blocks are cached (a trace reuses ids).
    """

    def __init__(
        self,
        block_tokens: int,
        vocab_size: int,
        *,
        seed: int = 0,
        min_token_id: int = DEFAULT_MIN_TOKEN_ID,
    ) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be >= 1")
        if vocab_size - min_token_id < 2:
            raise ValueError("vocabulary too small")
        self.block_tokens = block_tokens
        self.vocab_size = vocab_size
        self.min_token_id = min_token_id
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}
        self._offsets = np.arange(block_tokens, dtype=np.uint64)
        self._seed_key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))

    def block(self, hash_id: int) -> np.ndarray:
        """The ``block_tokens`` token ids (uint32) of one hash id."""
        cached = self._cache.get(hash_id)
        if cached is not None:
            return cached
        key = np.array([hash_id & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) ^ self._seed_key
        base = _splitmix64(key)
        with np.errstate(over="ignore"):
            words = _splitmix64(self._offsets + base)
        span = np.uint64(self.vocab_size - self.min_token_id)
        tokens = (words % span + np.uint64(self.min_token_id)).astype(np.uint32)
        tokens.setflags(write=False)
        self._cache[hash_id] = tokens
        return tokens

    def prompt(self, request: TraceRequest) -> np.ndarray:
        """The prompt's token ids: its blocks in order, cut to ``input_length``."""
        if not request.hash_ids:
            return np.zeros(0, dtype=np.uint32)
        tokens = np.concatenate([self.block(h) for h in request.hash_ids])
        return tokens[: request.input_length]


def ideal_hit_rate(requests: Iterable[TraceRequest], block_tokens: int) -> float:
    """Prompt-token hit rate of one infinite cache that has seen every earlier request.

    The upper bound on any router's hit rate for this workload (a fleet splits the
    cache, so the real bound is lower): a request hits the leading run of its
    blocks whose prefix an earlier request already had.
    """
    # A trie of every prefix seen so far: (parent node, hash id) -> node.
    trie: dict[tuple[int, int], int] = {}
    hit = total = 0
    for r in requests:
        node, n, matching = 0, 0, True
        for h in r.hash_ids:
            child = trie.get((node, h))
            if child is None:
                child = trie[(node, h)] = len(trie) + 1
                matching = False
            elif matching:
                n += 1
            node = child
        # Only full blocks are cacheable; the last block may be partial.
        hit += min(n, r.input_length // block_tokens) * block_tokens
        total += r.input_length
    return hit / total if total else 0.0


def summarize(workload: Workload) -> dict[str, float]:
    """Headline numbers of a workload (after scaling), for the report."""
    reqs: Sequence[TraceRequest] = workload.requests
    if not reqs:
        return {"requests": 0}
    inp = np.array([r.input_length for r in reqs], dtype=np.float64)
    out = np.array([r.output_length for r in reqs], dtype=np.float64)
    return {
        "requests": len(reqs),
        "duration_s": workload.duration_s,
        "mean_rate": workload.mean_rate if math.isfinite(workload.mean_rate) else 0.0,
        "block_tokens": workload.block_tokens,
        "input_mean": float(inp.mean()),
        "input_p50": float(np.percentile(inp, 50)),
        "input_max": float(inp.max()),
        "output_mean": float(out.mean()),
        "ideal_hit_rate": ideal_hit_rate(reqs, workload.block_tokens),
    }
