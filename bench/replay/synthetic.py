"""Synthetic workloads in the trace format, each isolating one sharing pattern.

Every generator returns a :class:`~bench.replay.trace.Workload` whose ``hash_ids``
name blocks of ``block_tokens`` tokens (512 by default, like Mooncake), so they go
through the same :func:`~bench.replay.trace.scale` and expansion as real traces.
Arrivals are Poisson at ``rate`` req/s; everything is seeded, so the same
arguments give the same workload.

- ``shared_prefix``: a few long system prompts (Zipf-popular) + a unique question:
  the case where routing to the holder of the system prompt matters most.
- ``multi_turn``: chats where turn t's prompt extends turn t-1's (history grows):
  a conversation should stay on the worker that holds its history.
- ``rag``: a system prompt + k documents from a Zipf-popular pool + a question:
  sharing beyond the system prompt only when the first document matches.
- ``unique``: no sharing at all: KV-aware routing can only match a load balancer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from bench.replay.trace import TRACE_BLOCK_TOKENS, TraceRequest, Workload

# Disjoint id ranges per generator so mixing workloads never creates accidental sharing.
_ID_SPACE = 1 << 40


class _Ids:
    """Fresh hash ids from a private range."""

    def __init__(self, namespace: int) -> None:
        self._next = itertools.count(namespace * _ID_SPACE)

    def take(self, n: int) -> tuple[int, ...]:
        return tuple(next(self._next) for _ in range(n))


def _arrivals(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Poisson arrival times (s) of ``n`` requests at ``rate`` req/s, starting at 0."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    gaps = rng.exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def _zipf_choice(rng: np.random.Generator, n_items: int, s: float, size: int) -> np.ndarray:
    """Indices in [0, n_items) with P(i) ∝ 1/(i+1)^s (s=0: uniform)."""
    weights = 1.0 / np.arange(1, n_items + 1) ** s
    return rng.choice(n_items, size=size, p=weights / weights.sum())


def _out_len(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def shared_prefix(
    n: int,
    rate: float,
    *,
    n_prefixes: int = 8,
    prefix_blocks: int = 8,
    suffix_blocks: int = 2,
    output: tuple[int, int] = (64, 256),
    zipf_s: float = 1.0,
    seed: int = 0,
    block_tokens: int = TRACE_BLOCK_TOKENS,
) -> Workload:
    """System-prompt sharing: each request = one of ``n_prefixes`` prefixes + unique blocks."""
    rng = np.random.default_rng(seed)
    ids = _Ids(1)
    prefixes = [ids.take(prefix_blocks) for _ in range(n_prefixes)]
    which = _zipf_choice(rng, n_prefixes, zipf_s, n)
    reqs = []
    for t, p in zip(_arrivals(rng, n, rate), which, strict=True):
        hashes = prefixes[p] + ids.take(suffix_blocks)
        reqs.append(
            TraceRequest(float(t), len(hashes) * block_tokens, _out_len(rng, *output), hashes)
        )
    return Workload(reqs, block_tokens, "shared_prefix")


def multi_turn(
    n: int,
    rate: float,
    *,
    turns: tuple[int, int] = (2, 8),
    system_blocks: int = 2,
    user_blocks: tuple[int, int] = (1, 3),
    think_s: float = 5.0,
    output: tuple[int, int] = (64, 256),
    seed: int = 0,
    block_tokens: int = TRACE_BLOCK_TOKENS,
) -> Workload:
    """Multi-turn chats: conversations start at ``rate``/mean-turns per second; each
    turn re-sends the whole history (system + earlier turns) plus a new message,
    after an exponential think time of mean ``think_s``. Truncated to ``n`` requests."""
    rng = np.random.default_rng(seed)
    ids = _Ids(2)
    system = ids.take(system_blocks)  # one shared system prompt, as chat apps have
    mean_turns = (turns[0] + turns[1]) / 2
    reqs: list[TraceRequest] = []
    n_convs = max(1, int(np.ceil(n / mean_turns * 1.5)))
    starts = _arrivals(rng, n_convs, rate / mean_turns)
    for start in starts:
        history = system
        t = float(start)
        for _ in range(int(rng.integers(turns[0], turns[1] + 1))):
            # The history the client re-sends includes the previous answer; as blocks it
            # is just more conversation-private ids after the earlier prompt.
            history = history + ids.take(int(rng.integers(user_blocks[0], user_blocks[1] + 1)))
            out = _out_len(rng, *output)
            reqs.append(TraceRequest(t, len(history) * block_tokens, out, history))
            history = history + ids.take(max(1, out // block_tokens))
            t += float(rng.exponential(think_s))
    reqs.sort(key=lambda r: r.arrival_s)
    return Workload(reqs[:n], block_tokens, "multi_turn")


def rag(
    n: int,
    rate: float,
    *,
    n_docs: int = 200,
    doc_blocks: int = 4,
    docs_per_query: int = 3,
    system_blocks: int = 2,
    question_blocks: int = 1,
    output: tuple[int, int] = (64, 256),
    zipf_s: float = 1.1,
    seed: int = 0,
    block_tokens: int = TRACE_BLOCK_TOKENS,
) -> Workload:
    """Retrieval-augmented prompts: system + ``docs_per_query`` distinct documents drawn
    from a Zipf-popular pool (in retrieval order) + a unique question."""
    rng = np.random.default_rng(seed)
    ids = _Ids(3)
    system = ids.take(system_blocks)
    docs = [ids.take(doc_blocks) for _ in range(n_docs)]
    weights = 1.0 / np.arange(1, n_docs + 1) ** zipf_s
    weights /= weights.sum()
    reqs = []
    for t in _arrivals(rng, n, rate):
        chosen = rng.choice(n_docs, size=min(docs_per_query, n_docs), replace=False, p=weights)
        hashes = system + tuple(itertools.chain.from_iterable(docs[d] for d in chosen))
        hashes += ids.take(question_blocks)
        reqs.append(
            TraceRequest(float(t), len(hashes) * block_tokens, _out_len(rng, *output), hashes)
        )
    return Workload(reqs, block_tokens, "rag")


def unique(
    n: int,
    rate: float,
    *,
    input_blocks: tuple[int, int] = (4, 16),
    output: tuple[int, int] = (64, 256),
    seed: int = 0,
    block_tokens: int = TRACE_BLOCK_TOKENS,
) -> Workload:
    """No sharing at all: every block of every prompt is new."""
    rng = np.random.default_rng(seed)
    ids = _Ids(4)
    reqs = []
    for t in _arrivals(rng, n, rate):
        hashes = ids.take(int(rng.integers(input_blocks[0], input_blocks[1] + 1)))
        reqs.append(
            TraceRequest(float(t), len(hashes) * block_tokens, _out_len(rng, *output), hashes)
        )
    return Workload(reqs, block_tokens, "unique")


#: Generators by CLI name; each takes (n, rate, seed=...) plus its own keywords.
GENERATORS: dict[str, Callable[..., Workload]] = {
    "shared_prefix": shared_prefix,
    "multi_turn": multi_turn,
    "rag": rag,
    "unique": unique,
}
