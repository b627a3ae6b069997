"""Trace parsing, scaling and hash-id expansion (bench/replay/trace.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.replay.trace import (
    BlockExpander,
    TraceFormatError,
    TraceRequest,
    Workload,
    ideal_hit_rate,
    load_trace,
    parse_trace_line,
    scale,
    select,
    summarize,
    with_rate,
)

SHARED_TRACE = Path(__file__).resolve().parents[3] / "shared/traces/mooncake_synthetic_trace.jsonl"


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_parse_line() -> None:
    r = parse_trace_line(
        '{"timestamp": 1500, "input_length": 600, "output_length": 7, "hash_ids": [3, 4]}'
    )
    assert r == TraceRequest(1.5, 600, 7, (3, 4))


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[1, 2]",
        '{"timestamp": 0, "input_length": 5}',
        '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": "x"}',
        '{"timestamp": 0, "input_length": 0, "output_length": 1, "hash_ids": []}',
    ],
)
def test_parse_line_rejects(line: str) -> None:
    with pytest.raises(TraceFormatError):
        parse_trace_line(line)


def test_load_sorts_and_checks_block_count(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 2000, "input_length": 1024, "output_length": 1, "hash_ids": [0, 1]},
        {"timestamp": 0, "input_length": 513, "output_length": 2, "hash_ids": [0, 2]},
    ]
    w = load_trace(_write(tmp_path, rows))
    assert [r.arrival_s for r in w.requests] == [0.0, 2.0]
    assert w.block_tokens == 512
    bad = [{"timestamp": 0, "input_length": 1025, "output_length": 1, "hash_ids": [0, 1]}]
    with pytest.raises(TraceFormatError, match="expected 3 blocks"):
        load_trace(_write(tmp_path, bad))


def test_select_window_rebases() -> None:
    reqs = [TraceRequest(float(t), 512, 1, (t,)) for t in range(10)]
    w = select(Workload(reqs, 512), start_s=3, duration_s=4, max_requests=3)
    assert [r.hash_ids for r in w.requests] == [(3,), (4,), (5,)]
    assert w.requests[0].arrival_s == 0.0


def test_scale_lengths_keep_sharing() -> None:
    w = Workload([TraceRequest(10.0, 1100, 100, (1, 2, 3))], 512)
    s = scale(w, rate_multiplier=2, length_scale=32, output_scale=8)
    r = s.requests[0]
    assert s.block_tokens == 16
    assert r.arrival_s == 5.0
    assert r.input_length == 35  # ceil(1100 / 32)
    assert r.hash_ids == (1, 2, 3)  # still three blocks: 16 + 16 + 3 tokens
    assert r.output_length == 12  # round(100 / 8)
    t = scale(w, length_scale=32, max_input_tokens=20, max_output_tokens=5).requests[0]
    assert (t.input_length, t.hash_ids, t.output_length) == (20, (1, 2), 5)
    with pytest.raises(ValueError):
        scale(w, length_scale=3)


def test_with_rate() -> None:
    reqs = [TraceRequest(float(t), 512, 1, (t,)) for t in range(11)]  # 11 req over 10 s
    w = with_rate(Workload(reqs, 512), 11.0)
    assert w.requests[-1].arrival_s == pytest.approx(1.0)


def test_expansion_is_deterministic_and_seeded() -> None:
    a = BlockExpander(16, 4096)
    b = BlockExpander(16, 4096)
    assert np.array_equal(a.block(12345), b.block(12345))
    assert not np.array_equal(a.block(1), a.block(2))
    assert not np.array_equal(a.block(1), BlockExpander(16, 4096, seed=1).block(1))
    blk = a.block(7)
    assert blk.dtype == np.uint32 and len(blk) == 16
    assert blk.min() >= 16 and blk.max() < 4096
    # A fixed value, so a numpy upgrade cannot silently change every benchmark's prompts.
    assert a.block(0)[:4].tolist() == [3169, 915, 575, 52]
    assert a.block(123456789)[:4].tolist() == [2907, 2971, 1308, 1566]


def test_prompts_share_exactly_the_declared_prefix() -> None:
    e = BlockExpander(16, 4096)
    p1 = e.prompt(TraceRequest(0, 40, 1, (1, 2, 3)))
    p2 = e.prompt(TraceRequest(0, 48, 1, (1, 2, 9)))
    p3 = e.prompt(TraceRequest(0, 48, 1, (5, 2, 3)))
    assert len(p1) == 40 and len(p2) == 48
    assert np.array_equal(p1[:32], p2[:32])
    assert not np.array_equal(p1[32:40], p2[32:40])
    # Same id at a later position but a different first block: no shared prefix at all.
    assert not np.array_equal(p1[:16], p3[:16])


def test_ideal_hit_rate() -> None:
    reqs = [
        TraceRequest(0, 32, 1, (1, 2)),
        TraceRequest(1, 32, 1, (1, 2)),  # full hit
        TraceRequest(2, 40, 1, (1, 3, 4)),  # first block only
        TraceRequest(3, 16, 1, (2,)),  # id 2 seen, but never as a first block
    ]
    assert ideal_hit_rate(reqs, 16) == pytest.approx((0 + 32 + 16 + 0) / (32 + 32 + 40 + 16))


@pytest.mark.skipif(not SHARED_TRACE.exists(), reason="shared Mooncake trace not present")
def test_mooncake_trace_loads() -> None:
    w = load_trace(SHARED_TRACE)
    assert len(w.requests) == 3993
    s = summarize(scale(w, length_scale=32))
    assert 0.6 < s["ideal_hit_rate"] < 0.7
