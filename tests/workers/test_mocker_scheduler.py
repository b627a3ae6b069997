"""Mocker KV cache and scheduler, driven synchronously on a virtual clock (no HTTP, no ZMQ)."""

from __future__ import annotations

import pytest
from mocker_testutil import SyncSim, make_request, make_scheduler

from bisllm_workers.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from bisllm_workers.mocker.kv_cache import KVCacheManager
from bisllm_workers.mocker.request import hash_block
from bisllm_workers.mocker.timing import PROFILES

BS = 4


def stored(events: list) -> list[BlockStored]:
    return [e for e in events if isinstance(e, BlockStored)]


def test_prefix_reuse_reports_cached_tokens_and_stores_only_new_blocks() -> None:
    sched = make_scheduler(block_size=BS)
    sim = SyncSim(sched)
    a = make_request("a", list(range(10, 22)), 1, BS)  # 12 tokens = 3 full blocks
    sched.add_request(a)
    sim.run()
    first = [e for step in sim.events for e in step]
    assert a.num_cached_tokens == 0
    assert len(stored(first)) == 1 and len(stored(first)[0].block_hashes) == 3
    assert stored(first)[0].parent_block_hash is None
    assert stored(first)[0].token_ids == list(range(10, 22))

    b = make_request("b", [*range(10, 22), 50, 51, 52, 53, 54], 1, BS)  # shares 3 blocks
    sched.add_request(b)
    sim.events.clear()
    sim.run()
    second = [e for step in sim.events for e in step]
    assert b.num_cached_tokens == 12
    (ev,) = stored(second)
    assert ev.token_ids == [50, 51, 52, 53]  # only the new full block
    assert ev.parent_block_hash == stored(first)[0].block_hashes[-1]
    assert ev.block_hashes == [hash_block(ev.parent_block_hash, [50, 51, 52, 53])]
    assert sched.stats.prefix_cache_queries == 12 + 17
    assert sched.stats.prefix_cache_hits == 12


def test_fully_cached_prompt_recomputes_its_last_block_like_vllm() -> None:
    sched = make_scheduler(block_size=BS)
    sim = SyncSim(sched)
    sched.add_request(make_request("a", list(range(8)), 1, BS))
    sim.run()
    sim.events.clear()
    b = make_request("b", list(range(8)), 1, BS)  # 2 blocks, both cached
    sched.add_request(b)
    sim.run()
    # At most num_tokens - 1 tokens can hit: block 1 is computed again and, as in vLLM, its
    # new physical copy is cached and announced again (same hash, parent = block 0).
    assert b.num_cached_tokens == 4
    (ev,) = stored([e for s in sim.events for e in s])
    assert ev.token_ids == [4, 5, 6, 7]


def test_decode_fills_blocks_with_generated_tokens() -> None:
    sched = make_scheduler(block_size=BS)
    sim = SyncSim(sched)
    r = make_request("r", [1, 2, 3], 6, BS)
    sched.add_request(r)
    sim.run()
    evs = stored([e for s in sim.events for e in s])
    # 3 prompt + 6 generated = 9 tokens, the last never computed: 8 computed = 2 blocks,
    # each announced in the step that computed its last token.
    assert [e.token_ids for e in evs] == [[1, 2, 3, 1000], [1001, 1002, 1003, 1004]]
    assert r.output_token_ids == [1000, 1001, 1002, 1003, 1004, 1005]


def test_eviction_emits_block_removed_tail_first_in_lru_order() -> None:
    # 6 usable blocks. Request a caches 2 blocks, b caches 2 more; c needs 4 fresh blocks.
    sched = make_scheduler(num_blocks=6, block_size=BS, max_model_len=24)
    sim = SyncSim(sched)
    a = make_request("a", list(range(100, 109)), 1, BS)  # 9 tokens: 2 full + 1 partial block
    sched.add_request(a)
    sim.run()
    b = make_request("b", list(range(200, 208)), 1, BS)  # 8 tokens: 2 full (1 recomputable)
    sched.add_request(b)
    sim.run()
    ha = stored(sim.events[0])[0].block_hashes
    hb = [h for s in sim.events[1:] for e in stored(s) for h in e.block_hashes]
    sim.events.clear()
    c = make_request("c", list(range(300, 315)), 1, BS)  # 15 tokens: 4 blocks
    sched.add_request(c)
    sim.run()
    removed = [e.block_hashes[0] for s in sim.events for e in s if isinstance(e, BlockRemoved)]
    # Free queue: [2 hash-less][a's blocks tail-first][b's blocks tail-first]; 4 pops evict
    # the hash-less ones first, then a's tail, then a's head.
    assert removed == [ha[1], ha[0]]
    assert all(h not in removed for h in hb)


def test_reset_prefix_cache_clears_and_emits_all_blocks_cleared() -> None:
    kv = KVCacheManager(8, BS)
    sched = make_scheduler(block_size=BS)
    sched.kv = kv
    sim = SyncSim(sched)
    sched.add_request(make_request("a", list(range(9)), 1, BS))
    sim.run()
    kv.take_events()
    assert kv.num_cached_blocks == 2
    assert kv.reset_prefix_cache()
    assert isinstance(kv.take_events()[0], AllBlocksCleared)
    assert kv.num_cached_blocks == 0 and kv.num_free_blocks == 8


def test_max_num_seqs_and_token_budget_hold() -> None:
    sched = make_scheduler(num_blocks=512, block_size=BS, max_num_seqs=3, max_num_batched_tokens=10)
    sim = SyncSim(sched)
    for i in range(8):
        sched.add_request(make_request(f"r{i}", [i + 1] * (5 + i), 4, BS))
    sim.run()
    assert sched.stats.max_running_seen == 3
    assert sched.stats.max_step_tokens_seen == 10
    for plan in sim.plans:
        assert len(plan.scheduled) <= 3
        assert plan.num_scheduled_tokens <= 10
    assert sched.stats.generation_tokens == 8 * 4


def test_chunked_prefill_interleaves_with_decode() -> None:
    sched = make_scheduler(
        num_blocks=512, block_size=BS, max_num_batched_tokens=16, max_model_len=512
    )
    sim = SyncSim(sched)
    d = make_request("decoder", [1, 2, 3], 40, BS)
    sched.add_request(d)
    sim.step()
    sim.step()  # d is decoding now
    long = make_request("long", list(range(5, 105)), 2, BS)  # 100 tokens
    sched.add_request(long)
    plans = [sim.step() for _ in range(8)]
    for plan in plans[:6]:
        reqs = {r.request_id: n for r, n in plan.scheduled}
        # Every step: the decoder's 1 token first, then a 15-token chunk of the long prompt.
        assert reqs == {"decoder": 1, "long": 15}
        assert plan.num_decode_seqs == 1 and plan.num_prefill_tokens == 15
    assert long.first_token_time is not None  # 100 tokens = 6 chunks of 15 + 10
    assert d.num_output_tokens == 2 + 8  # one token per step throughout


def test_preemption_recomputes_and_output_is_unchanged() -> None:
    # 8 blocks of 4 = 32 tokens for two requests that each grow to 24 tokens.
    sched = make_scheduler(num_blocks=8, block_size=BS, max_num_batched_tokens=64, max_model_len=32)
    sim = SyncSim(sched)
    a = make_request("a", list(range(1, 13)), 12, BS)
    b = make_request("b", list(range(40, 52)), 12, BS)
    sched.add_request(a)
    sched.add_request(b)
    sim.run()
    assert sched.stats.num_preemptions >= 1
    assert b.num_preemptions >= 1 and a.num_preemptions == 0  # the last running is the victim
    assert a.num_output_tokens == b.num_output_tokens == 12
    # Output tokens are a function of the position only: recomputation does not change them.
    assert b.output_token_ids == [1000 + i for i in range(12)]
    assert b.num_cached_tokens == 0  # first scheduling's value, not the resumed one
    assert sched.kv.num_free_blocks == 8


def test_ttft_grows_with_uncached_tokens_and_shrinks_with_hits() -> None:
    profile = PROFILES["h100-llama3-8b"]

    def ttft(prompt: list[int], warm: list[int] | None = None) -> float:
        sched = make_scheduler(
            num_blocks=4096, block_size=16, max_num_batched_tokens=8192, max_model_len=8192
        )
        sim = SyncSim(sched, profile)
        if warm is not None:
            sched.add_request(make_request("warm", warm, 1, 16))
            sim.run()
        start = sim.now
        r = make_request("r", prompt, 1, 16)
        sched.add_request(r)
        sim.run()
        assert r.first_token_time is not None
        return r.first_token_time - start

    short, long = ttft(list(range(100))), ttft(list(range(4000)))
    assert long > short + 3000 * profile.prefill_token_s * 0.9
    cached = ttft(list(range(4000)), warm=list(range(3990)))
    assert cached < short * 1.5 < long
    assert cached == pytest.approx(profile.step_time(4000 - 3984, 0, 0))
