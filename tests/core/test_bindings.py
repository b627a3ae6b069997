"""Tests of the `bisllm._core` bindings: hashing against a pure-Python reference, vLLM
payloads encoded the way vLLM encodes them, errors, and thread safety."""

from __future__ import annotations

import threading
import time
from array import array
from typing import Any

import msgspec
import numpy as np
import pytest
import xxhash

from bisllm import _core
from bisllm._core import (
    Core,
    CoreError,
    EventDecodeError,
    UnknownRequestError,
    UnknownWorkerError,
    hash_blocks,
)

BS = 4
#: h_{-1} of router-core/src/hashing.rs (ROOT_PARENT_HASH).
ROOT = 0x6269_736C_6C6D_0001


def ref_hash_blocks(tokens: list[int], block_size: int, salt: int = 0) -> list[int]:
    """The documented scheme: h_i = xxh3_64(le64(h_{i-1}) || le32(block i), seed=salt)."""
    out, prev = [], ROOT
    for i in range(len(tokens) // block_size):
        block = tokens[i * block_size : (i + 1) * block_size]
        data = prev.to_bytes(8, "little") + b"".join(t.to_bytes(4, "little") for t in block)
        prev = xxhash.xxh3_64_intdigest(data, seed=salt)
        out.append(prev)
    return out


# --- vLLM's wire types (vllm/distributed/kv_events.py), mirrored field for field ------


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    """Base class of the tagged union (events are maps with a "type" key)."""


class BlockStored(KVCacheEvent):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int | bytes]
    medium: str | None
    group_idx: int | None = None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


# Newer vLLM main encodes the batch as a map; older releases encoded events as arrays.
class MapBatch(msgspec.Struct, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class OldBlockStored(msgspec.Struct, array_like=True, gc=False, tag="BlockStored"):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None


ENC = msgspec.msgpack.Encoder()


def stored(hashes: list[Any], parent: Any, tokens: list[int], **kw: Any) -> BlockStored:
    return BlockStored(
        block_hashes=hashes,
        parent_block_hash=parent,
        token_ids=tokens,
        block_size=kw.pop("block_size", BS),
        lora_id=None,
        medium="GPU",
        lora_name=kw.pop("lora_name", None),
        **kw,
    )


def batch(*events: Any, dp: int | None = 0) -> bytes:
    return ENC.encode(KVEventBatch(ts=time.time(), events=list(events), data_parallel_rank=dp))


def toks(seed: int, n_blocks: int) -> list[int]:
    return [seed * 10_000 + i for i in range(n_blocks * BS)]


@pytest.fixture
def core() -> Core:
    c = Core(BS, seed=7)
    c.add_worker(1)
    c.add_worker(2)
    return c


# --- hashing ------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 4, 16, 128])
@pytest.mark.parametrize("salt", [0, 1, 2**64 - 1])
def test_hash_blocks_matches_python_reference(block_size: int, salt: int) -> None:
    tokens = [(i * 7919) % 152_000 for i in range(3 * block_size + block_size // 2 + 1)]
    assert hash_blocks(tokens, block_size, salt) == ref_hash_blocks(tokens, block_size, salt)
    assert hash_blocks(tokens, block_size, salt=salt) == hash_blocks(
        array("I", tokens), block_size, salt
    )


def test_buffers_and_lists_agree() -> None:
    tokens = list(range(1000, 1100))
    want = hash_blocks(tokens, 16)
    assert len(want) == 6
    a = array("I", tokens)
    for buf in (
        a,
        np.asarray(tokens, dtype=np.uint32),
        a.tobytes(),
        bytearray(a.tobytes()),
        memoryview(a),
        memoryview(a.tobytes()),
        tuple(tokens),
        np.asarray(tokens, dtype=np.int64),  # not uint32: per-item path, same result
        np.repeat(np.asarray(tokens, dtype=np.uint32), 2)[::2],  # strided view
    ):
        assert hash_blocks(buf, 16) == want, type(buf)


def test_token_argument_errors() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        hash_blocks(b"\x00" * 6, 1)
    with pytest.raises(TypeError):
        hash_blocks("abcd", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hash_blocks([1.5, 2.0], 1)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        hash_blocks(None, 1)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        hash_blocks([-1], 1)
    with pytest.raises(OverflowError):
        hash_blocks([2**32], 1)
    with pytest.raises(CoreError):
        hash_blocks([1], 0)


def test_lora_salt_is_xxh3_of_the_name() -> None:
    assert _core.lora_salt("my-adapter") == xxhash.xxh3_64_intdigest(b"my-adapter")


def test_module_surface() -> None:
    assert _core.__version__ == "0.1.0"
    assert _core.POLICIES == ("kv_aware", "round_robin", "random", "least_tokens", "power_of_two")
    assert issubclass(CoreError, ValueError)
    assert issubclass(EventDecodeError, CoreError)
    for cls in (UnknownWorkerError, UnknownRequestError):
        assert issubclass(cls, CoreError) and issubclass(cls, KeyError)
        assert cls.__module__ == "bisllm._core"
    assert str(UnknownRequestError("plain")) == "plain"


# --- events -------------------------------------------------------------------------


def test_apply_events_vllm_encoding(core: Core) -> None:
    t = toks(1, 3)
    s = core.apply_events(1, batch(stored([11, 12], None, t[: 2 * BS])))
    assert (s.stored_blocks, s.removed_blocks, s.cleared, s.orphaned_blocks) == (2, 0, False, 0)
    core.apply_events(1, batch(stored([13], 12, t[2 * BS :], group_idx=0, extra_keys=[None])))
    q = ref_hash_blocks(t, BS)
    assert core.find_matches(q) == {(1, 0): 3}
    assert core.index_size() == 3
    # Another worker with other engine hashes (other seed) for the same tokens.
    core.apply_events(2, batch(stored([2**64 - 5, 2**63], None, t[: 2 * BS])))
    assert core.find_matches(q) == {(1, 0): 3, (2, 0): 2}
    # Child removed before parent; unknown hashes are ignored.
    s = core.apply_events(1, batch(BlockRemoved(block_hashes=[13, 999], medium="GPU")))
    assert s.removed_blocks == 2
    assert core.find_matches(q) == {(1, 0): 2, (2, 0): 2}
    d = core.route("r", array("I", t))
    assert d.best_overlap_blocks == 2 and d.overlap_blocks == 2 and d.prompt_blocks == 3
    assert d.prefill_tokens == BS
    s = core.apply_events(2, batch(AllBlocksCleared()))
    assert s.cleared
    assert core.find_matches(q) == {(1, 0): 2}


def test_other_encodings_bytes_hashes_lora_and_dp_rank(core: Core) -> None:
    t = toks(2, 2)
    q = ref_hash_blocks(t, BS)
    core.apply_events(1, ENC.encode(MapBatch(ts=1.0, events=[stored([5], None, t[:BS])])))
    core.apply_events(
        1, ENC.encode(EventBatch(ts=1.0, events=[OldBlockStored([6], 5, t[BS:], BS, None)]))
    )
    assert core.find_matches(q) == {(1, 0): 2}
    # Bytes engine hashes (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0), on dp rank 1.
    with pytest.raises(UnknownWorkerError):
        core.apply_events(2, batch(stored([b"\x01" * 32], None, t[:BS]), dp=1))
    core.add_worker(2, 1)
    core.apply_events(2, batch(stored([b"\x01" * 32], None, t[:BS]), dp=1))
    core.apply_events(2, batch(stored([b"\x02" * 32], b"\x01" * 32, t[BS:]), dp=1))
    assert core.find_matches(q)[(2, 1)] == 2
    core.apply_events(2, batch(BlockRemoved(block_hashes=[b"\x02" * 32], medium=None), dp=1))
    assert core.find_matches(q)[(2, 1)] == 1
    # LoRA blocks live under lora_salt(name); base-model queries do not see them.
    core.apply_events(2, batch(stored([7], None, t[:BS], lora_name="ad")))
    assert (2, 0) not in core.find_matches(q)
    assert core.find_matches(ref_hash_blocks(t, BS, _core.lora_salt("ad"))) == {(2, 0): 1}


def test_orphans_are_counted_not_indexed(core: Core) -> None:
    t = toks(3, 2)
    s = core.apply_events(1, batch(stored([31, 32], 30, t)))
    assert s.orphaned_blocks == 2
    assert core.index_size() == 0
    core.apply_events(1, batch(BlockRemoved(block_hashes=[32, 31], medium=None)))
    assert core.index_size() == 0


def _malformed_payloads(valid: bytes) -> list[bytes]:
    out = [b"", b"\xc1", b"garbage!", b"\x93\x01\x02\x03", valid + b"\x00"]
    out += [valid[:cut] for cut in range(len(valid))]
    out.append(ENC.encode([1.0, [{"type": "BlockStored", "block_hashes": [1]}], 0]))
    out.append(ENC.encode([1.0, [{"type": "Nope"}], 0]))
    out.append(ENC.encode([1.0, [{"block_hashes": [1]}], 0]))
    out.append(ENC.encode([1.0, "events", 0]))
    out.append(ENC.encode([1.0, [{"type": "BlockRemoved", "block_hashes": "x"}], 0]))
    bad_tokens = {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None}
    out.append(ENC.encode([1.0, [bad_tokens | {"token_ids": "abcd", "block_size": BS}], 0]))
    out.append(ENC.encode([1.0, [bad_tokens | {"token_ids": [1, 2, 3], "block_size": BS}], 0]))
    out.append(ENC.encode([1.0, [bad_tokens | {"token_ids": [-1] * BS, "block_size": BS}], 0]))
    out.append(ENC.encode([1.0, [bad_tokens | {"token_ids": [1] * 8, "block_size": 8}], 0]))
    return out


def test_malformed_payloads_raise_and_leave_the_index_unchanged(core: Core) -> None:
    t = toks(4, 2)
    core.apply_events(1, batch(stored([41], None, t[:BS])))
    q = ref_hash_blocks(t, BS)
    before = (core.index_size(), core.find_matches(q))
    # A valid first event followed by a bad one: nothing of the batch may be applied.
    valid = batch(stored([42], 41, t[BS:]), BlockRemoved(block_hashes=[41], medium="GPU"))
    for payload in _malformed_payloads(valid):
        with pytest.raises(EventDecodeError):
            core.apply_events(1, payload)
        assert (core.index_size(), core.find_matches(q)) == before, payload
    core.apply_events(1, memoryview(valid))
    # Block 42 stays cached, but its parent is gone: no match from the root.
    assert core.index_size() == 1
    assert core.find_matches(q) == {}


def test_wrong_argument_types(core: Core) -> None:
    with pytest.raises(TypeError):
        core.apply_events(1, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        core.apply_events("1", b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        core.route(1, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        core.route("r", [1], salt="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        core.route("r", [1], 0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Core("16")  # type: ignore[arg-type]
    with pytest.raises(CoreError, match="unknown policy"):
        Core(16, policy="nope")
    with pytest.raises(CoreError):
        Core(0)
    with pytest.raises(CoreError):
        Core(16, temperature=-1.0)
    for ttl in (0.0, -1.0, float("nan"), float("inf"), 1e30):
        with pytest.raises(CoreError):
            Core(16, approx_ttl_secs=ttl)
    with pytest.raises(CoreError):
        Core(2**40)
    assert hash_blocks([1, 2, 3], 2**40) == []
    assert core.num_requests() == 0


# --- scoreboard and routing ---------------------------------------------------------


def test_request_lifecycle_and_errors(core: Core) -> None:
    d = core.route("a", list(range(10)), expected_output_tokens=6)
    assert d.policy == "kv_aware" and d.prompt_tokens == 10 and d.prefill_tokens == 10
    assert d.prefill_blocks == 3.0 and d.decode_blocks == 4.0 and d.cost == 7.0
    row = next(r for r in core.loads() if (r.worker_id, r.dp_rank) == (d.worker_id, d.dp_rank))
    assert (row.prefill_tokens, row.prefill_requests, row.active_blocks) == (10, 1, 3)
    core.on_first_token("a")
    core.on_tokens("a", 3)
    row = next(r for r in core.loads() if r.worker_id == d.worker_id)
    assert (row.decode_tokens, row.decode_requests, row.in_flight_tokens) == (13, 1, 13)
    assert core.in_flight_tokens() == 13
    with pytest.raises(CoreError):
        core.on_first_token("a")
    with pytest.raises(CoreError, match="already booked"):
        core.route("a", [1])
    core.on_finish("a")
    for call in (core.on_finish, core.on_first_token):
        with pytest.raises(UnknownRequestError):
            call("a")
    with pytest.raises(KeyError):
        core.on_tokens("a", 1)
    assert core.num_requests() == 0 and core.in_flight_tokens() == 0


def test_workers_exclude_and_removal(core: Core) -> None:
    assert core.workers() == [(1, 0), (2, 0)]
    d = core.route("a", [1, 2, 3, 4], exclude=[(1, 0)])
    assert (d.worker_id, d.dp_rank) == (2, 0)
    with pytest.raises(CoreError, match="no eligible worker"):
        core.route("b", [1], exclude=[(1, 0), (2, 0)])
    core.remove_worker(2)
    with pytest.raises(UnknownWorkerError):
        core.remove_worker(2)
    with pytest.raises(UnknownWorkerError):
        core.clear_worker(3)
    with pytest.raises(UnknownWorkerError):
        core.set_approximate(3, True)
    assert core.workers() == [(1, 0)]
    assert core.in_flight_tokens() == 4  # still booked on the removed worker
    core.on_finish("a")
    assert core.in_flight_tokens() == 0


def test_approximate_workers_predict_and_expire() -> None:
    core = Core(BS, seed=1, approx_ttl_secs=0.05)
    core.add_worker(1, approximate=True)
    t = toks(5, 4)
    core.route("a", t)
    assert core.index_size() == 4
    assert core.find_matches(ref_hash_blocks(t, BS)) == {(1, 0): 4}
    assert core.loads()[0].approximate and core.loads()[0].indexed_blocks == 4
    time.sleep(0.1)
    assert core.prune_expired() == 4
    assert core.index_size() == 0
    core.route("b", t)
    core.set_approximate(1, False)
    assert core.index_size() == 0 and not core.loads()[0].approximate


@pytest.mark.parametrize("policy", _core.POLICIES)
def test_every_policy_routes(policy: str) -> None:
    core = Core(16, policy=policy, seed=3)
    for w in range(4):
        core.add_worker(w)
    seen = {core.route(f"r{i}", array("I", range(64))).worker_id for i in range(40)}
    assert core.policy == policy and core.block_size == 16
    assert len(seen) > 1
    assert core.num_requests() == 40


def test_temperature_sampling_is_seedable() -> None:
    def run(seed: int) -> list[int]:
        core = Core(BS, temperature=1.0, seed=seed)
        for w in range(8):
            core.add_worker(w)
        picks = []
        for i in range(50):
            picks.append(core.route(f"r{i}", toks(i, 2)).worker_id)
            core.on_finish(f"r{i}")
        return picks

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_concurrent_routes_and_events_from_threads() -> None:
    core = Core(16, seed=5)
    for w in range(16):
        core.add_worker(w)
    prompt = array("I", range(4096))
    errors: list[BaseException] = []

    def router(tid: int) -> None:
        try:
            for i in range(200):
                core.route(f"{tid}-{i}", prompt)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def events(w: int) -> None:
        try:
            for i in range(100):
                h = w * 1_000_000 + i
                tokens = list(range(i * 16, (i + 1) * 16))
                core.apply_events(w, batch(stored([h], None, tokens, block_size=16)))
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=router, args=(t,)) for t in range(6)]
    threads += [threading.Thread(target=events, args=(w,)) for w in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert core.num_requests() == 1200
    assert sum(r.prefill_requests for r in core.loads()) == 1200
    assert core.index_size() == 200
    for t in range(6):
        for i in range(200):
            core.on_finish(f"{t}-{i}")
    assert core.in_flight_tokens() == 0
