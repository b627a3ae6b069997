"""Synthetic workload generators (bench/replay/synthetic.py)."""

from __future__ import annotations

import itertools

import pytest

from bench.replay.synthetic import GENERATORS, multi_turn, rag, shared_prefix, unique
from bench.replay.trace import ideal_hit_rate


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_seeded_sorted_and_valid(name: str) -> None:
    a = GENERATORS[name](60, 5.0, seed=3)
    b = GENERATORS[name](60, 5.0, seed=3)
    c = GENERATORS[name](60, 5.0, seed=4)
    assert a.requests == b.requests
    assert a.requests != c.requests
    assert len(a.requests) == 60
    times = [r.arrival_s for r in a.requests]
    assert times == sorted(times) and times[0] >= 0
    for r in a.requests:
        assert len(r.hash_ids) * a.block_tokens >= r.input_length > 0
        assert r.output_length >= 1


def test_shared_prefix_shares_only_system_prompts() -> None:
    w = shared_prefix(200, 10.0, n_prefixes=4, prefix_blocks=6, suffix_blocks=2)
    firsts = {r.hash_ids[:6] for r in w.requests}
    assert len(firsts) <= 4
    suffixes = [r.hash_ids[6:] for r in w.requests]
    assert len(set(suffixes)) == len(suffixes)  # the question part never repeats
    # Almost every request after the first few reuses 6 of its 8 blocks.
    assert ideal_hit_rate(w.requests, w.block_tokens) > 0.7


def test_multi_turn_histories_extend() -> None:
    w = multi_turn(300, 10.0, turns=(3, 3), think_s=1.0)
    by_first_user_block: dict[int, list[tuple[int, ...]]] = {}
    for r in w.requests:
        by_first_user_block.setdefault(r.hash_ids[2], []).append(r.hash_ids)
    for turns in by_first_user_block.values():
        for prev, nxt in itertools.pairwise(turns):
            assert nxt[: len(prev)] == prev  # each turn re-sends the whole history


def test_rag_and_unique_sharing() -> None:
    assert ideal_hit_rate(unique(100, 5.0).requests, 512) == 0.0
    w = rag(300, 5.0, n_docs=50, docs_per_query=3, doc_blocks=4, system_blocks=2)
    assert all(len(r.hash_ids) == 2 + 12 + 1 for r in w.requests)
    assert 0.1 < ideal_hit_rate(w.requests, 512) < 0.9
